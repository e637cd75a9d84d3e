"""OpenID discovery cannot be redirected, and cannot name a token endpoint elsewhere.

With ``discover=True`` the request to ``/.well-known/openid-configuration``
never follows a redirect (https to http, or to another host), and the token
endpoint it finds must be https and under the binding's own domain
(``uaadomain``, or the host of ``url``/``certurl``); otherwise `BindingError`,
and nothing is sent to the other place.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import BindingError
from mtls_auth.testing import PKI, Credential, Fault, TokenServer
from mtls_auth.testing.plugin import CLIENT_ID

DISCOVERY = "/.well-known/openid-configuration"
MODULES = pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx"])


class _PlainServer:
    """A plain-http server on loopback that counts what reaches it."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = json.dumps({"token_endpoint": "http://attacker.example/token"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.hits = hits
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def plain_server() -> Iterator[_PlainServer]:
    server = _PlainServer()
    yield server
    server.close()


@pytest.fixture
def other_server(mtls_pki: PKI, mtls_client_certificate: Credential) -> Iterator[TokenServer]:
    with TokenServer(mtls_pki) as server:
        server.register_client(CLIENT_ID, mtls_client_certificate)
        yield server


def _redirect(to: str) -> Fault:
    return Fault("body", status_code=302, headers=(("Location", to),), payload=b"")


@MODULES
def test_https_to_http_redirect_is_not_followed(
    module: Any,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    plain_server: _PlainServer,
) -> None:
    mtls_server.inject(_redirect(plain_server.url + DISCOVERY), path=DISCOVERY)
    with pytest.raises(BindingError, match=r"302 \(a redirect .* not followed\)"):
        module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, verify=mtls_server.ca_pem, discover=True)
    assert plain_server.hits == []


@MODULES
def test_redirect_to_another_host_is_not_followed(
    module: Any,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    other_server: TokenServer,
) -> None:
    elsewhere = other_server.url.replace("localhost", "127.0.0.1") + DISCOVERY
    mtls_server.inject(_redirect(elsewhere), path=DISCOVERY)
    with pytest.raises(BindingError, match="not followed"):
        module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, verify=mtls_server.ca_pem, discover=True)
    assert other_server.connections_accepted == 0


@MODULES
@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("https://attacker.example/oauth/token", "outside the binding's own domain"),
        ("https://localhost.attacker.example/oauth/token", "outside the binding's own domain"),
        ("http://localhost/oauth/token", "no https token endpoint"),
        ("https://localhost:99999/oauth/token", "not a valid URL"),
        ("https://user:pw@localhost/oauth/token", "user name or password"),
    ],
)
def test_a_discovered_token_endpoint_must_be_https_and_ours(
    module: Any,
    endpoint: str,
    message: str,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
) -> None:
    document = {"issuer": "x", "mtls_endpoint_aliases": {"token_endpoint": endpoint}}
    mtls_server.inject(Fault.body(json.dumps(document)), path=DISCOVERY)
    with pytest.raises(BindingError, match=message):
        module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, verify=mtls_server.ca_pem, discover=True)
    assert mtls_server.token_request_count == 0


@MODULES
def test_uaadomain_admits_the_zone_s_other_hosts(
    module: Any, mtls_server: TokenServer, mtls_xsuaa_binding: dict[str, Any]
) -> None:
    """A subdomain of ``uaadomain`` is the binding's own: discovery may point there."""
    binding = {**mtls_xsuaa_binding, "uaadomain": "localhost"}
    document = {"mtls_endpoint_aliases": {"token_endpoint": mtls_server.token_url}}
    mtls_server.inject(Fault.body(json.dumps(document)), path=DISCOVERY)
    auth = module.MtlsOAuth2.from_binding(binding, verify=mtls_server.ca_pem, discover=True)
    assert auth.token_url == mtls_server.token_url
    auth.close()
