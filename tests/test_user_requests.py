"""User-token requests without a network: jwt-bearer, the login URL (PKCE), callbacks, sessions.

What is sent and what is refused before anything is sent: a user token that is
not a JWT, or whose ``exp`` has passed; a callback whose ``state`` does not
match; a login with no authorization endpoint. The PKCE challenge is checked
against RFC 7636, and no secret (assertion, code, verifier, refresh token,
password) shows in a repr.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import (
    ArgumentError,
    AuthorizationRequest,
    ClientCertificate,
    Secret,
    TokenError,
    TokenResponseError,
)
from mtls_auth.testing import PKI

MODULES = pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx"])
TOKEN_URL = "https://provider.authentication.cert.eu10.hana.ondemand.com/oauth/token"
LOGIN = "https://provider.authentication.eu10.hana.ondemand.com/oauth/authorize"
_PKI = PKI()
_CREDENTIAL = _PKI.issue_client("users")
CERT = ClientCertificate.from_pem(_CREDENTIAL.chain_pem, _CREDENTIAL.key_pem)


def jwt(**claims: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    body = {"sub": "alice", "exp": time.time() + 600, **claims}
    return f"{part({'alg': 'RS256'})}.{part(body)}.c2lnbmF0dXJlLW9mLXRoZS11c2Vy"


def auth_for(module: Any, **options: Any) -> Any:
    return module.MtlsOAuth2(TOKEN_URL, "sb-app!t1", CERT, authorization_url=LOGIN, **options)


def form_and_headers(auth: Any) -> tuple[dict[str, list[str]], dict[str, str]]:
    client = auth._client
    sent = auth._request.http_request(client.state.token_url, client.state.client_id)
    return parse_qs(sent.body.decode("ascii")), dict(sent.headers)


@MODULES
def test_jwt_bearer_form_routes_by_zid(module: Any) -> None:
    assertion = jwt(zid="zone-of-alice")
    user = auth_for(module).for_user(assertion)
    form, headers = form_and_headers(user)
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert form["assertion"] == [assertion]
    assert form["client_id"] == ["sb-app!t1"]
    assert "client_secret" not in form
    assert headers["x-zid"] == "zone-of-alice"
    assert assertion not in repr(user)
    assert assertion not in repr(user._request)
    assert assertion not in str(user._key())  # the key holds its SHA-256 only
    assert hashlib.sha256(assertion.encode()).hexdigest() in str(user._key())


@MODULES
def test_jwt_bearer_for_identity_services_routes_by_app_tid(module: Any) -> None:
    ias = module.MtlsOAuth2("https://t.accounts.ondemand.com/oauth2/token", "ias-client", CERT)
    form, headers = form_and_headers(ias.for_user(jwt(app_tid="tid-1", zid="ignored")))
    assert form["app_tid"] == ["tid-1"]
    assert "x-zid" not in headers


@MODULES
def test_same_user_token_same_object_other_token_other_object(module: Any) -> None:
    auth = auth_for(module)
    first = jwt(sub="alice")
    assert auth.for_user(first) is auth.for_user(first)
    other = auth.for_user(jwt(sub="bob"))
    assert other is not auth.for_user(first)
    assert other._key() != auth.for_user(first)._key() != auth._key()
    assert auth.for_user(first)._key()[0] == "user"


@MODULES
@pytest.mark.parametrize(
    "not_a_jwt", ["", "opaque-token-value", "a.b", "a..c", "a.b.c.d", "@@@.###.$$$", 17]
)
def test_a_user_token_that_is_not_a_jwt_is_an_argument_error(module: Any, not_a_jwt: Any) -> None:
    with pytest.raises(ArgumentError, match="JWT") as caught:
        auth_for(module).for_user(not_a_jwt)
    assert isinstance(caught.value, ValueError)
    if isinstance(not_a_jwt, str) and len(not_a_jwt) > 3:
        assert not_a_jwt not in str(caught.value)


@MODULES
def test_an_expired_user_token_is_refused_without_sending(module: Any) -> None:
    auth = auth_for(module)
    with pytest.raises(TokenError, match="user's token expired"):
        auth.for_user(jwt(exp=time.time() - 5))


# -- the login URL (authorization code with PKCE) ----------------------------------------------


@MODULES
def test_authorization_request_url_and_pkce(module: Any) -> None:
    request = auth_for(module).authorization_request(
        "https://app.example.com/callback", scope="openid read"
    )
    parts = urlsplit(request.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == LOGIN
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == "sb-app!t1"
    assert query["redirect_uri"] == "https://app.example.com/callback"
    assert query["state"] == request.state
    assert query["code_challenge_method"] == "S256"
    assert query["scope"] == "openid read"
    digest = hashlib.sha256(request.code_verifier.encode("ascii")).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert 43 <= len(request.code_verifier) <= 128
    assert request.code_verifier not in repr(request)
    assert request.code_verifier not in request.url
    assert len(request.state) >= 16


@MODULES
def test_each_login_has_its_own_state_and_verifier(module: Any) -> None:
    auth = auth_for(module)
    first = auth.authorization_request("https://app.example.com/cb")
    second = auth.authorization_request("https://app.example.com/cb")
    assert first.state != second.state
    assert first.code_verifier != second.code_verifier
    fixed = auth.authorization_request("https://app.example.com/cb", state="s-42")
    assert fixed.state == "s-42"


def test_as_dict_round_trip() -> None:
    auth = auth_for(mrequests)
    request = auth.authorization_request("https://app.example.com/cb", scope="openid")
    stored = json.loads(json.dumps(request.as_dict()))
    restored = AuthorizationRequest.from_dict(stored)
    assert (restored.url, restored.state, restored.redirect_uri, restored.scope) == (
        request.url,
        request.state,
        request.redirect_uri,
        request.scope,
    )
    assert restored.code_verifier == request.code_verifier
    for broken in ({}, {**stored, "code_verifier": "short"}, {**stored, "state": 5}, "x"):
        with pytest.raises(ArgumentError):
            AuthorizationRequest.from_dict(broken)  # type: ignore[arg-type]


@MODULES
@pytest.mark.parametrize(
    "redirect_uri",
    ["/callback", "http://app.example.com/cb", "https://app.example.com/cb#frag", "", "x:y"],
)
def test_bad_redirect_uris_are_refused(module: Any, redirect_uri: str) -> None:
    with pytest.raises(ArgumentError, match="redirect_uri"):
        auth_for(module).authorization_request(redirect_uri)


@MODULES
def test_loopback_http_redirect_is_allowed_for_development(module: Any) -> None:
    request = auth_for(module).authorization_request("http://localhost:8000/cb")
    assert request.redirect_uri == "http://localhost:8000/cb"


@MODULES
def test_a_tenant_logs_in_on_its_own_login_page(module: Any) -> None:
    auth = auth_for(module)
    request = auth.for_tenant("customer-a").authorization_request("https://app.example.com/cb")
    assert request.url.startswith(
        "https://customer-a.authentication.eu10.hana.ondemand.com/oauth/authorize?"
    )
    with pytest.raises(ArgumentError, match="no login page"):
        auth.for_tenant(zone_id="zone-1").authorization_request("https://app.example.com/cb")


@MODULES
def test_no_authorization_endpoint_known(module: Any) -> None:
    auth = module.MtlsOAuth2(TOKEN_URL, "sb-app!t1", CERT)
    with pytest.raises(ArgumentError, match="authorization_url="):
        auth.authorization_request("https://app.example.com/cb")


# -- the callback --------------------------------------------------------------------------------


@MODULES
def test_a_callback_with_another_state_sends_nothing(module: Any) -> None:
    auth = auth_for(module)
    request = auth.authorization_request("https://app.example.com/cb")
    for callback in (
        "https://app.example.com/cb?code=abc&state=forged",
        "https://app.example.com/cb?code=abc",
        f"https://app.example.com/cb?code=abc&state={request.state}&state=twice",
    ):
        with pytest.raises(ArgumentError, match="state does not match"):
            auth.for_authorization_code(request, callback)


@MODULES
def test_an_error_callback_is_a_token_response_error(module: Any) -> None:
    auth = auth_for(module)
    request = auth.authorization_request("https://app.example.com/cb")
    callback = (
        f"https://app.example.com/cb?error=access_denied&error_description=User+said+no"
        f"&state={request.state}"
    )
    with pytest.raises(TokenResponseError) as caught:
        auth.for_authorization_code(request, callback)
    assert caught.value.error == "access_denied"
    assert caught.value.error_description == "User said no"
    with pytest.raises(ArgumentError, match="no authorization code"):
        auth.for_authorization_code(request, f"https://app.example.com/cb?state={request.state}")


# -- stored sessions and passwords ----------------------------------------------------------------


@MODULES
def test_for_refresh_token_form_and_hiding(module: Any) -> None:
    auth = auth_for(module)
    user = auth.for_refresh_token("stored-refresh-token-value-123")
    assert auth.for_refresh_token("stored-refresh-token-value-123") is user
    form, _ = form_and_headers(user)
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["stored-refresh-token-value-123"]
    sealed = user.refresh_token
    assert isinstance(sealed, Secret)
    assert sealed.reveal() == "stored-refresh-token-value-123"
    assert "stored-refresh" not in repr(sealed) + str(sealed) + repr(user)
    assert auth.refresh_token is None
    with pytest.raises(ArgumentError):
        auth.for_refresh_token("")


@MODULES
def test_for_password_form_and_hiding(module: Any) -> None:
    auth = auth_for(module)
    user = auth.for_password("tester@example.com", "correct horse battery")
    assert auth.for_password("tester@example.com", "correct horse battery") is user
    assert auth.for_password("tester@example.com", "other") is not user
    form, _ = form_and_headers(user)
    assert form["grant_type"] == ["password"]
    assert form["username"] == ["tester@example.com"]
    assert form["password"] == ["correct horse battery"]
    assert "correct horse" not in repr(user) + repr(user._request) + str(user._key())
    with pytest.raises(ArgumentError):
        auth.for_password("", "x")
