"""User tokens end to end, for requests, httpx sync and httpx async, against the test kit.

The user's JWT exchanged (jwt-bearer, routed by its ``zid``), a login with the
authorization code flow and PKCE followed by refreshes that keep the newest
refresh token until the server refuses one (`LoginRequiredError`), a stored
session resumed, and the password grant. Each user's token stays their own:
the resource answers whose token it got. No secret of these flows (assertion,
code, verifier, refresh token, password) shows in the frames of an error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from clients import Client
from frames import leaks

from mtls_auth import LoginRequiredError, TokenError, TokenResponseError
from mtls_auth.testing import TEST_PASSWORD, TEST_USER, Credential, TokenServer, xsuaa_service_key
from mtls_auth.testing.plugin import CLIENT_ID

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CALLBACK = "https://app.example.com/callback"
LIFETIME = 600


@pytest.fixture
def provider(
    client: Client,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    mtls_clock: Any,
) -> Any:
    binding = xsuaa_service_key(
        mtls_server, mtls_client_certificate, CLIENT_ID, subdomain="provider"
    )
    return client.from_binding(binding, verify=mtls_server.ca_pem, clock=mtls_clock)


def _log_in(client: Client, auth: Any, server: TokenServer, user: str = TEST_USER) -> Any:
    request = auth.authorization_request(CALLBACK, scope="openid")
    callback = server.login(request.url, user=user)
    if not client.is_async:
        return client.track(auth.for_authorization_code(request, callback))

    async def finish() -> Any:
        try:
            return await auth.afor_authorization_code(request, callback)
        finally:
            await auth.aclose()

    return client.track(asyncio.run(finish()))


@pytest.mark.mtls_server(token_lifetime=LIFETIME)
def test_the_users_token_is_exchanged_once_and_routed_to_their_zone(
    client: Client, provider: Any, mtls_server: TokenServer, mtls_clock: Any
) -> None:
    alice = mtls_server.mint_user_token("alice", subdomain="customer-a")
    bob = mtls_server.mint_user_token("bob", subdomain="customer-b")
    for _ in range(3):  # per incoming request, as an application would
        for token, user, zone in ((alice, "alice", "customer-a"), (bob, "bob", "customer-b")):
            result = client.call(provider.for_user(token))
            assert result.unwrap() == 200
            body = result.body
            # routed by the assertion's zone id (header x-zid), not by a guessed host
            expected = (user, mtls_server.zone_id_of(zone), JWT_BEARER)
            assert (body["user"], body["zone_id"], body["grant_type"]) == expected
    exchanges = mtls_server.token_requests
    assert [r.grant_type for r in exchanges] == [JWT_BEARER, JWT_BEARER]
    assert [r.zone_id for r in exchanges] == [
        mtls_server.zone_id_of("customer-a"),
        mtls_server.zone_id_of("customer-b"),
    ]
    assert all(alice not in repr(r) and bob not in repr(r) for r in exchanges)
    # Near expiry a new exchange, while the user's token is still valid.
    mtls_clock.advance(LIFETIME - 10)
    assert client.call(provider.for_user(alice)).unwrap() == 200
    assert mtls_server.token_request_count == 3
    # The provider's own token is another one, never a user's.
    assert client.call(provider).body.get("user") is None


def test_an_expired_user_token_sends_nothing(
    client: Client, provider: Any, mtls_server: TokenServer
) -> None:
    expired = mtls_server.mint_user_token("alice", subdomain="customer-a", exp=time.time() - 1)
    with pytest.raises(TokenError, match="user's token expired"):
        provider.for_user(expired)
    assert mtls_server.token_request_count == 0


@pytest.mark.mtls_server(token_lifetime=LIFETIME)
def test_login_refresh_and_login_required(
    client: Client, provider: Any, mtls_server: TokenServer, mtls_clock: Any
) -> None:
    user = _log_in(client, provider, mtls_server)
    first_refresh = user.refresh_token.reveal()
    result = client.call(user)
    assert result.unwrap() == 200
    assert (result.body["user"], result.body["grant_type"]) == (TEST_USER, "authorization_code")
    code_exchange = mtls_server.token_requests[-1]
    assert code_exchange.grant_type == "authorization_code"
    assert code_exchange.form["redirect_uri"] == CALLBACK
    assert len(code_exchange.form["code_verifier"]) >= 43
    # Before expiry the session renews itself with its refresh token, keeping the newest.
    mtls_clock.advance(LIFETIME - 10)
    assert client.call(user).unwrap() == 200
    assert mtls_server.token_requests[-1].grant_type == "refresh_token"
    second_refresh = user.refresh_token.reveal()
    assert second_refresh != first_refresh
    assert first_refresh not in repr(user)
    assert second_refresh not in str(user.refresh_token)
    # The application stores the newest; a resumed session works with it.
    resumed = provider.for_refresh_token(second_refresh)
    assert client.call(resumed).unwrap() == 200
    # The server ends the sessions: the next refresh asks for a new login.
    mtls_server.revoke_refresh_tokens()
    mtls_clock.advance(LIFETIME + 1)
    failed = client.call(user)
    assert isinstance(failed.error, LoginRequiredError), failed.error
    assert failed.error.error == "invalid_grant"
    secrets = list(mtls_server._grant_secrets) + list(mtls_server._tokens)
    assert not leaks(failed.error, secrets)


def test_a_denied_login_and_a_forged_callback(
    client: Client, provider: Any, mtls_server: TokenServer
) -> None:
    request = provider.authorization_request(CALLBACK)
    mtls_server.deny_next_login("access_denied")
    callback = mtls_server.login(request.url)
    with pytest.raises(TokenResponseError) as denied:
        provider.for_authorization_code(request, callback)
    assert denied.value.error == "access_denied"
    good = mtls_server.login(request.url)
    forged = good.replace(f"state={request.state}", "state=forged")
    with pytest.raises(ValueError, match="state does not match"):
        provider.for_authorization_code(request, forged)
    assert mtls_server.token_request_count == 0  # nothing was sent


def test_a_code_is_used_once(client: Client, provider: Any, mtls_server: TokenServer) -> None:
    request = provider.authorization_request(CALLBACK)
    callback = mtls_server.login(request.url)
    provider.for_authorization_code(request, callback)
    with pytest.raises(TokenResponseError) as replayed:
        provider.for_authorization_code(request, callback)
    assert replayed.value.error == "invalid_grant"


def test_password_grant(client: Client, provider: Any, mtls_server: TokenServer) -> None:
    user = provider.for_password(TEST_USER, TEST_PASSWORD)
    result = client.call(user)
    assert result.unwrap() == 200
    assert (result.body["user"], result.body["grant_type"]) == (TEST_USER, "password")
    wrong = client.call(provider.for_password(TEST_USER, "wrong"))
    assert isinstance(wrong.error, TokenResponseError)
    assert TEST_PASSWORD not in repr(user)
    assert not leaks(wrong.error, [TEST_PASSWORD, "wrong-password-x"])


def test_users_and_tenants_never_share_a_token(
    client: Client, provider: Any, mtls_server: TokenServer
) -> None:
    alice = mtls_server.mint_user_token("alice", subdomain="customer-a")
    auths = [
        provider,
        provider.for_tenant("customer-a"),
        provider.for_user(alice),
        provider.for_password(TEST_USER, TEST_PASSWORD),
    ]
    indexes = [client.call(who).body for who in auths]
    users = [body.get("user") for body in indexes]
    assert users == [None, None, "alice", TEST_USER]
    assert len({r.token_index for r in mtls_server.resource_requests}) == 4


def test_remembered_user_auths_are_bounded_like_their_tokens(
    client: Client, mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    binding = xsuaa_service_key(
        mtls_server, mtls_client_certificate, CLIENT_ID, subdomain="provider"
    )
    auth = client.from_binding(binding, verify=mtls_server.ca_pem, max_users=3, max_tenants=2)
    tokens = [mtls_server.mint_user_token(f"user-{n}") for n in range(5)]
    users = [auth.for_user(token) for token in tokens]
    assert auth.for_user(tokens[-1]) is users[-1]  # the same token, the same object
    tenants = [auth.for_tenant(f"tenant-{n}") for n in range(4)]
    assert auth.for_tenant("tenant-3") is tenants[-1]
    assert auth._memo is not None
    assert len(auth._memo["user"]) == 3
    assert len(auth._memo["tenant"]) == 2
