"""An auth derived from another for a different token request shares its client.

The derived object has its own cached token but the same certificate,
SSLContext, token-endpoint connection pool, rotation watch and policies: a
token fetched through it right after the first one opens no new TLS
connection (the server counts accepted connections), for requests, httpx sync
and httpx async (the shared `client` fixture).
"""

from __future__ import annotations

import threading

from clients import Client

from mtls_auth.testing import Credential, TokenServer


def test_derived_auth_shares_the_client_and_holds_its_own_token(
    client: Client, mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    auth = client.auth(scope="first")
    threads_before = threading.active_count()
    derived = auth._derive(auth._request.replace(scope="second"))
    assert type(derived) is type(auth)
    # Nothing new: the same client (certificate, SSLContexts, pools, watch, cache).
    assert derived._client is auth._client
    assert threading.active_count() == threads_before

    # The fetches through the auths' own client (on one event loop for httpx
    # async). A lone fetch lets its connection go at once (no refresh is due
    # soon), so a third auth of the client fetches first: then the two fetches
    # come close together and the second reuses the first one's connection.
    warm = auth._derive(auth._request.replace(scope="warm"))
    _, first, second = client.token_infos(warm, auth, derived)
    assert mtls_server.connections_accepted == 2, "the derived fetch opened a new connection"
    requests_seen = mtls_server.token_requests
    assert [r.form.get("scope") for r in requests_seen] == ["warm", "first", "second"]
    assert {r.thumbprint for r in requests_seen} == {mtls_client_certificate.thumbprint}
    assert first.lifetime == second.lifetime

    # Each holds its own token: the resource sees two different tokens, and
    # asking again fetches nothing. One resource call per auth, each through the
    # user's own client presenting the auth's certificate.
    for each in (auth, derived, auth, derived):
        assert client.call(each, present="auth").status == 200
    indexes = [r.token_index for r in mtls_server.resource_requests]
    assert indexes == [2, 3, 2, 3]
    assert len(mtls_server.token_requests) == 3
    assert "scope='second'" in repr(derived)
    assert "scope='first'" in repr(auth)
