"""The Flask example (examples/flask_login) works end to end against the test kit.

A browser's login (``/login`` -> the kit's authorization endpoint -> ``/callback``),
the user's page (``/me``: the refresh token turned into a user token for the
downstream API, rotated refresh tokens kept, a revoked one sending the user
back to the login), and a request forwarded with the user's JWT
(``/api/orders``: jwt-bearer exchange). The browser never holds a secret: its
cookie carries a random session id only.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mtls_auth.requests import MtlsAdapter, MtlsOAuth2
from mtls_auth.testing import TEST_USER, Credential, FakeClock, TokenServer, xsuaa_service_key
from mtls_auth.testing.plugin import CLIENT_ID

flask = pytest.importorskip("flask")


def _load_example() -> Any:
    """examples/flask_login/app.py, loaded from its file (examples/ is not installed)."""
    path = Path(__file__).resolve().parent.parent / "examples" / "flask_login" / "app.py"
    spec = importlib.util.spec_from_file_location("flask_login_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


create_app = _load_example().create_app

APP_HOST = "https://app.example"


@pytest.fixture
def auth(
    mtls_server: TokenServer, mtls_client_certificate: Credential, mtls_clock: FakeClock
) -> Any:
    binding = xsuaa_service_key(
        mtls_server, mtls_client_certificate, CLIENT_ID, subdomain="customer-a"
    )
    with MtlsOAuth2.from_binding(binding, verify=mtls_server.ca_pem, clock=mtls_clock) as auth:
        yield auth


@pytest.fixture
def browser(auth: MtlsOAuth2, mtls_server: TokenServer, mtls_client_certificate: Credential) -> Any:
    downstream = MtlsAdapter(
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
    )
    app = create_app(
        auth,
        downstream_url=mtls_server.resource_url,
        secret_key="test-only-cookie-key",
        downstream=downstream,
    )
    app.config["SERVER_NAME"] = urlsplit(APP_HOST).netloc
    app.config["PREFERRED_URL_SCHEME"] = "https"  # redirect URIs must be https
    return app.test_client()


def _log_in(browser: Any, server: TokenServer) -> None:
    to_provider = browser.get("/login")
    assert to_provider.status_code == 302
    callback = server.login(to_provider.headers["Location"])  # the user logs in
    assert callback.startswith(f"{APP_HOST}/callback?")
    back = browser.get(callback.removeprefix(APP_HOST))
    assert (back.status_code, back.headers["Location"]) == (302, "/me")


def _session_cookie(browser: Any) -> dict[str, Any]:
    """The data of Flask's signed session cookie (base64 JSON before the first dot)."""
    cookie = browser.get_cookie("session", domain=urlsplit(APP_HOST).hostname)
    assert cookie is not None, "the application set no session cookie"
    payload = cookie.value.split(".")[0]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def test_a_login_gives_the_user_their_own_token_downstream(
    browser: Any, mtls_server: TokenServer
) -> None:
    _log_in(browser, mtls_server)
    page = browser.get("/me")
    assert page.status_code == 200
    assert (page.json["user"], page.json["subdomain"]) == (TEST_USER, "customer-a")
    grants = [r.grant_type for r in mtls_server.token_requests]
    assert grants == ["authorization_code", "refresh_token"]
    # The cookie holds a signed random id, not a verifier or refresh token.
    assert set(_session_cookie(browser)) == {"sid"}


def test_a_revoked_refresh_token_sends_the_user_back_to_the_login(
    browser: Any, mtls_server: TokenServer, mtls_clock: FakeClock
) -> None:
    _log_in(browser, mtls_server)
    assert browser.get("/me").status_code == 200
    mtls_server.revoke_refresh_tokens()
    mtls_clock.advance(mtls_server.token_lifetime)  # the user token expired too
    again = browser.get("/me")
    assert (again.status_code, again.headers["Location"]) == (302, "/login")


def test_a_forwarded_user_token_is_exchanged_for_the_api(
    browser: Any, mtls_server: TokenServer
) -> None:
    jwt = mtls_server.mint_user_token("alice", subdomain="customer-a")
    answer = browser.get("/api/orders", headers={"Authorization": f"Bearer {jwt}"})
    assert answer.status_code == 200
    assert answer.json["user"] == "alice"
    assert [r.grant_type for r in mtls_server.token_requests] == [
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    ]
    assert browser.get("/api/orders").status_code == 401  # no user token: no call
