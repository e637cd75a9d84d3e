"""Where the bearer token may go, checked against real loopback servers.

- A redirect to another host, or to plain http, never carries the bearer
  (requests, httpx sync and httpx async), and a 401 from the redirect target
  does not get the token put back (a regression test for a fixed bug).
- `allowed_hosts` is enforced: exact names, ``*.example`` wildcards, case and
  trailing dots, and URLs built to confuse a URL parser.
- A token fetched by one auth object is only ever sent by that auth object.
- Through an HTTP proxy the token travels inside the CONNECT tunnel's TLS: the
  proxy sees ``CONNECT`` and ciphertext, never the token or an ``Authorization``.
- With every debug output on (``http.client`` debuglevel, DEBUG for requests,
  urllib3, httpx, httpcore and mtls_auth), the library's own requests and the
  token endpoint exchange show no secret; and the secret canary of
  ``conftest.py`` does catch a secret that leaks into any of its channels.

The redirect servers and the proxy below are plain standard library, written
for these tests: the redirector serves HTTPS with the test PKI's localhost
certificate and asks for no client certificate; a second one speaks plain http.
``localhost`` and ``127.0.0.1`` (both on the server certificate) are different
hosts to requests and httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import select
import socket
import socketserver
import ssl
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import InsecureTransportError, MtlsAuthError, TokenRequestError
from mtls_auth._destinations import Destinations
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import PKI, Credential, TokenServer
from mtls_auth.testing._server import _load_cert_chain

CLIENT_ID = "sb-client!t1"
OTHER_CLIENT_ID = "sb-other-client!t2"
FAST_RETRY = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02, max_retry_after=0.1)
LIBRARIES = ["requests", "httpx-sync", "httpx-async"]


# -- a plain redirect server ------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request the redirect server received (the Authorization value kept)."""

    host: str
    path: str
    authorization: str | None


class _RedirectHandler(BaseHTTPRequestHandler):
    server: _RedirectServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path)
        self.server.seen.append(
            Seen(self.headers.get("Host", ""), parts.path, self.headers.get("Authorization"))
        )
        query = parse_qs(parts.query)
        if parts.path == "/redirect":
            self._send(int(query["code"][0]), b"", [("Location", query["to"][0])])
        elif parts.path == "/401":
            self._send(401, b'{"error":"invalid_token"}', [("WWW-Authenticate", "Bearer")])
        else:
            self._send(200, b'{"ok":true}', [])

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer


class _RedirectServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectHandler)
        self.context = context
        self.seen: list[Seen] = []

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.context is not None:
            sock.settimeout(5)
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-handshake are routine here

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def redirect_server(pki: PKI | None) -> Iterator[_RedirectServer]:
    """HTTPS with the PKI's localhost certificate (no client certificate), or plain http."""
    context = None
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_cert_chain(context, pki.server.chain_pem, pki.server.private_key)
    server = _RedirectServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- a CONNECT proxy that keeps what it relays ------------------------------------------------


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _Proxy

    def handle(self) -> None:
        client = self.request
        client.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        self.server.record(b"client->proxy", head)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = request_line.split(" ", 2)
        if method != "CONNECT":
            # A forwarding (plain http) proxy request: refuse it, but keep it.
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.connects.append(target)
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                self.server.record(b"client->origin", rest)
                upstream.sendall(rest)
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        pairs = {client: (upstream, b"client->origin"), upstream: (client, b"origin->client")}
        while True:
            readable, _, _ = select.select(list(pairs), [], [], 10)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                other, direction = pairs[sock]
                self.server.record(direction, data)
                try:
                    other.sendall(data)
                except OSError:
                    return


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.lock = threading.Lock()
        self.relayed: list[tuple[bytes, bytes]] = []
        self.connects: list[str] = []

    def record(self, direction: bytes, data: bytes) -> None:
        with self.lock:
            self.relayed.append((direction, data))

    def everything(self) -> bytes:
        with self.lock:
            return b"".join(data for _, data in self.relayed)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def connect_proxy() -> Iterator[_Proxy]:
    proxy = _Proxy()
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


# -- fixtures and clients ---------------------------------------------------------------------


@pytest.fixture
def server(pki: PKI, client_credential: Credential) -> Iterator[TokenServer]:
    with TokenServer(pki) as srv:
        srv.register_client(CLIENT_ID, client_credential)
        srv.register_client(OTHER_CLIENT_ID, client_credential)
        yield srv


@pytest.fixture
def https_redirector(pki: PKI) -> Iterator[_RedirectServer]:
    with redirect_server(pki) as srv:
        yield srv


@pytest.fixture
def http_target() -> Iterator[_RedirectServer]:
    with redirect_server(None) as srv:
        yield srv


def _auth_kwargs(server: TokenServer, credential: Credential, **extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "token_url": server.token_url,
        "client_id": CLIENT_ID,
        "certificate": credential.chain_pem,
        "key": credential.key_pem,
        "verify": server.ca_pem,
        "retry": FAST_RETRY,
        "timeout": 5.0,
    }
    kwargs.update(extra)
    return kwargs


@dataclass
class Outcome:
    status: int | None = None
    history: list[int] = field(default_factory=list)
    error: BaseException | None = None


def call(
    library: str,
    auth: Any,
    url: str,
    credential: Credential,
    ca_pem: str,
    *,
    proxy: str | None = None,
    follow_redirects: bool = True,
    method: str = "GET",
) -> Outcome:
    """One request the way a user makes it, with the mTLS adapter or transport."""
    outcome = Outcome()
    try:
        if library == "requests":
            with requests.Session() as session:
                session.auth = auth
                session.trust_env = False
                session.mount(
                    "https://",
                    mrequests.MtlsAdapter(credential.chain_pem, credential.key_pem, verify=ca_pem),
                )
                if proxy is not None:
                    session.proxies = {"https": proxy, "http": proxy}
                response = session.request(
                    method, url, timeout=10, allow_redirects=follow_redirects
                )
                outcome.status = response.status_code
                outcome.history = [r.status_code for r in response.history]
        elif library == "httpx-sync":
            transport = mhttpx.MtlsTransport(
                credential.chain_pem, credential.key_pem, verify=ca_pem, proxy=proxy
            )
            with httpx.Client(
                auth=auth, transport=transport, follow_redirects=follow_redirects, timeout=10
            ) as client:
                response = client.request(method, url)
                outcome.status = response.status_code
                outcome.history = [r.status_code for r in response.history]
        else:

            async def main() -> httpx.Response:
                transport = mhttpx.AsyncMtlsTransport(
                    credential.chain_pem, credential.key_pem, verify=ca_pem, proxy=proxy
                )
                async with httpx.AsyncClient(
                    auth=auth, transport=transport, follow_redirects=follow_redirects, timeout=10
                ) as client:
                    response = await client.request(method, url)
                await auth.aclose()
                return response

            response = asyncio.run(main())
            outcome.status = response.status_code
            outcome.history = [r.status_code for r in response.history]
    except (MtlsAuthError, requests.RequestException, httpx.HTTPError) as exc:
        outcome.error = exc
    return outcome


def make_auth(library: str, **kwargs: Any) -> Any:
    cls = mrequests.MtlsOAuth2 if library == "requests" else mhttpx.MtlsOAuth2
    return cls(**kwargs)


@pytest.fixture(params=LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _is_token(server: TokenServer, authorization: str | None) -> bool:
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and server.token_info(value.strip()) is not None


# -- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_drops_the_bearer(
    library: str,
    code: int,
    server: TokenServer,
    https_redirector: _RedirectServer,
    client_credential: Credential,
) -> None:
    port = https_redirector.port
    # localhost -> 127.0.0.1: the same listening socket, a different host.
    target = f"https://127.0.0.1:{port}/landing"
    url = f"https://localhost:{port}/redirect?code={code}&to={target}"
    auth = make_auth(library, **_auth_kwargs(server, client_credential))
    outcome = call(library, auth, url, client_credential, server.ca_pem)
    assert outcome.error is None, outcome.error
    assert outcome.status == 200
    assert outcome.history == [code]
    first, landing = https_redirector.seen
    assert first.host == f"localhost:{port}"
    assert _is_token(server, first.authorization)  # the origin that was asked for gets it
    assert landing.host == f"127.0.0.1:{port}"
    assert landing.path == "/landing"
    assert landing.authorization is None


@pytest.mark.parametrize("code", [302, 307])
@pytest.mark.parametrize("target_host", ["localhost", "127.0.0.1"])
def test_redirect_to_plain_http_drops_the_bearer(
    library: str,
    code: int,
    target_host: str,
    server: TokenServer,
    https_redirector: _RedirectServer,
    http_target: _RedirectServer,
    client_credential: Credential,
) -> None:
    target = f"http://{target_host}:{http_target.port}/landing"
    url = f"https://localhost:{https_redirector.port}/redirect?code={code}&to={target}"
    auth = make_auth(library, **_auth_kwargs(server, client_credential))
    outcome = call(library, auth, url, client_credential, server.ca_pem)
    assert outcome.error is None, outcome.error
    assert outcome.status == 200
    assert _is_token(server, https_redirector.seen[0].authorization)
    (landing,) = http_target.seen
    assert landing.path == "/landing"
    assert landing.authorization is None


def test_redirect_to_http_on_the_same_host_and_port_drops_the_bearer(
    library: str,
    server: TokenServer,
    https_redirector: _RedirectServer,
    client_credential: Credential,
) -> None:
    # Same host and port, scheme downgraded: the https server cannot answer plain
    # http, so whatever happens the bearer must not leave in cleartext. Watch the
    # bytes with a raw listener standing in for the downgraded URL instead.
    with contextlib.closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        received: list[bytes] = []

        def accept() -> None:
            listener.settimeout(10)
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    data = conn.recv(65536)
                    received.append(data)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        url = (
            f"https://localhost:{https_redirector.port}/redirect?code=307"
            f"&to=http://localhost:{port}/landing"
        )
        auth = make_auth(library, **_auth_kwargs(server, client_credential))
        outcome = call(library, auth, url, client_credential, server.ca_pem)
        thread.join(10)
    assert outcome.error is None, outcome.error
    assert received, "the redirect was not followed"
    assert b"authorization" not in received[0].lower()
    issued = list(server._tokens)
    assert issued
    assert not any(token.encode() in received[0] for token in issued)


def test_401_from_the_redirect_target_does_not_get_the_token_back(
    library: str,
    server: TokenServer,
    https_redirector: _RedirectServer,
    client_credential: Credential,
) -> None:
    """Regression: requests' response hook used to re-sign the redirected request.

    The hook registered by `MtlsOAuth2` travels with the request through
    redirects; a 401 from the other host must not make it fetch a new token and
    send it there.
    """
    port = https_redirector.port
    url = f"https://localhost:{port}/redirect?code=302&to=https://127.0.0.1:{port}/401"
    auth = make_auth(library, **_auth_kwargs(server, client_credential))
    outcome = call(library, auth, url, client_credential, server.ca_pem)
    assert outcome.error is None, outcome.error
    assert outcome.status == 401
    targets = [s for s in https_redirector.seen if s.host == f"127.0.0.1:{port}"]
    assert targets, https_redirector.seen
    assert all(s.authorization is None for s in targets)
    assert len(targets) == 1  # not retried there
    # The token was not dropped for a 401 that did not concern it.
    assert len(server.token_requests) == 1


def test_same_origin_redirect_keeps_the_bearer(
    library: str,
    server: TokenServer,
    https_redirector: _RedirectServer,
    client_credential: Credential,
) -> None:
    # The control: a redirect within the origin keeps the token (so the tests
    # above prove stripping, not a redirect that never happens).
    port = https_redirector.port
    url = f"https://localhost:{port}/redirect?code=307&to=https://localhost:{port}/landing"
    auth = make_auth(library, **_auth_kwargs(server, client_credential))
    outcome = call(library, auth, url, client_credential, server.ca_pem)
    assert outcome.status == 200, outcome.error
    assert [s.path for s in https_redirector.seen] == ["/redirect", "/landing"]
    assert all(_is_token(server, s.authorization) for s in https_redirector.seen)


# -- allowed_hosts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        (["api.example"], "api.example", True),
        (["api.example"], "API.Example", True),
        (["api.example"], "api.example.", True),
        (["API.EXAMPLE."], "api.example", True),
        (["api.example"], "www.api.example", False),
        (["api.example"], "api.example.evil", False),
        (["api.example"], "evilapi.example", False),
        (["*.example"], "api.example", True),
        (["*.example"], "a.b.example", True),
        (["*.example"], "API.EXAMPLE.", True),
        (["*.example"], "example", False),
        (["*.example"], "evilexample", False),
        (["*.example"], "api.example.evil", False),
        (["*.EXAMPLE."], "api.example", True),
        (["*.example"], "", False),
        (["api.example"], "", False),
        ("api.example", "api.example", True),  # a lone string is one host, not characters
        ("api.example", "a", False),
        ([], "api.example", False),
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "localhost", False),
        (["::1"], "::1", True),
    ],
)
def test_allowed_hosts_semantics(allowed: Any, host: str, ok: bool) -> None:
    destinations = Destinations(allowed, allow_http_loopback=False)
    if ok:
        destinations.check("https", host)
    else:
        with pytest.raises(InsecureTransportError, match="allowed_hosts"):
            destinations.check("https", host)
    # The decision is cached: asking twice gives the same answer.
    if ok:
        destinations.check("https", host)
    else:
        with pytest.raises(InsecureTransportError):
            destinations.check("https", host)


@pytest.mark.parametrize(
    ("scheme", "host", "loopback_http", "ok"),
    [
        ("https", "api.example", False, True),
        ("http", "api.example", False, False),
        ("http", "api.example", True, False),
        ("http", "localhost", False, False),
        ("http", "localhost", True, True),
        ("http", "127.0.0.1", True, True),
        ("http", "127.9.9.9", True, True),
        ("http", "[::1]", True, True),
        ("http", "localhost.", True, True),
        ("http", "foo.localhost", True, False),  # may resolve through DNS
        ("http", "127.0.0.1.evil.example", True, False),
        ("ws", "api.example", True, False),
        ("ftp", "api.example", True, False),
        ("", "api.example", True, False),
    ],
)
def test_scheme_policy(scheme: str, host: str, loopback_http: bool, ok: bool) -> None:
    destinations = Destinations(None, allow_http_loopback=loopback_http)
    if ok:
        destinations.check(scheme, host)
    else:
        with pytest.raises(InsecureTransportError):
            destinations.check(scheme, host)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example@evil.example/resource",
        "https://api.example:443@evil.example/resource",
        "https://api.example%2F@evil.example/resource",
        "https://evil.example\\@api.example/resource",
        "https://evil.example%5C@api.example/resource",
        "https://evil.example;@api.example/resource",
        "https://evil.example#@api.example/resource",
        "https://evil.example?@api.example/resource",
        "https://evil.example/@api.example",
        "https://evil.example/https://api.example/",
        "https://api.example.evil.example/resource",
        "https://evil.example./resource",
        "HTTPS://EVIL.EXAMPLE/resource",
        "https://api.example/resource",
    ],
)
def test_allowed_hosts_is_checked_against_the_host_actually_contacted(
    library: str,
    url: str,
    server: TokenServer,
    client_credential: Credential,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """URLs built to make a URL parser disagree with the HTTP library's.

    Either the auth refuses before anything is fetched, or the only host the
    library then tries to reach (besides the token server) is the allowed one.
    No name but localhost resolves here: every other lookup is recorded and fails.
    """
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("localhost", "127.0.0.1"):
            looked_up.append(name.lower().rstrip("."))
            raise socket.gaierror(socket.EAI_NONAME, "not resolvable in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    auth = make_auth(
        library, **_auth_kwargs(server, client_credential, allowed_hosts=["api.example"])
    )
    outcome = call(library, auth, url, client_credential, server.ca_pem)
    assert outcome.error is not None
    if isinstance(outcome.error, InsecureTransportError):
        assert "allowed_hosts" in str(outcome.error)
        assert server.token_request_count == 0
        assert looked_up == []
    else:
        # Allowed: the token was fetched, and only api.example was ever contacted.
        assert server.token_request_count == 1
        assert looked_up, outcome
        assert set(looked_up) == {"api.example"}, (looked_up, outcome)


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        (["localhost"], "localhost", True),
        (["LOCALHOST."], "localhost", True),
        (["localhost"], "LOCALHOST", True),
        (["*.localhost"], "localhost", False),
        (["127.0.0.1"], "localhost", False),
        (["api.example"], "localhost", False),
    ],
)
def test_allowed_hosts_end_to_end(
    library: str,
    allowed: list[str],
    host: str,
    ok: bool,
    server: TokenServer,
    client_credential: Credential,
) -> None:
    auth = make_auth(library, **_auth_kwargs(server, client_credential, allowed_hosts=allowed))
    url = f"https://{host}:{server.port}/resource"
    outcome = call(library, auth, url, client_credential, server.ca_pem)
    if ok:
        assert outcome.status == 200, outcome.error
        assert [r.client_id for r in server.resource_requests] == [CLIENT_ID]
    else:
        assert isinstance(outcome.error, InsecureTransportError), outcome
        assert server.token_request_count == 0
        assert server.resource_requests == []


def test_plain_http_refused_even_to_an_allowed_host(
    library: str, server: TokenServer, http_target: _RedirectServer, client_credential: Credential
) -> None:
    auth = make_auth(
        library, **_auth_kwargs(server, client_credential, allowed_hosts=["localhost"])
    )
    outcome = call(
        library, auth, f"http://localhost:{http_target.port}/x", client_credential, server.ca_pem
    )
    assert isinstance(outcome.error, InsecureTransportError), outcome
    assert http_target.seen == []
    assert server.token_request_count == 0


# -- one auth, one token ----------------------------------------------------------------------


def _scopes(server: TokenServer) -> dict[int, str | None]:
    with server._lock:
        return {issued.index: issued.scope for issued in server._tokens.values()}


def test_each_auth_sends_only_its_own_token(
    library: str, server: TokenServer, client_credential: Credential
) -> None:
    first = make_auth(library, **_auth_kwargs(server, client_credential))
    second = make_auth(
        library, **_auth_kwargs(server, client_credential, client_id=OTHER_CLIENT_ID)
    )
    same_id_other_scope = make_auth(
        library, **_auth_kwargs(server, client_credential, scope="other.scope")
    )
    order = [first, second, same_id_other_scope, second, first, same_id_other_scope, first]
    for auth in order:
        outcome = call(library, auth, server.resource_url, client_credential, server.ca_pem)
        assert outcome.status == 200, outcome.error
    # Then every token is revoked: each auth refreshes its own.
    server.revoke_all()
    for auth in order[:3]:
        outcome = call(library, auth, server.resource_url, client_credential, server.ca_pem)
        assert outcome.status == 200, outcome.error

    records = [r for r in server.resource_requests if r.status == 200]
    expected_ids = [a.client_id for a in order + order[:3]]
    assert [r.client_id for r in records] == expected_ids
    scopes = _scopes(server)
    token_of: dict[int, set[int]] = {}
    for auth, record in zip(order + order[:3], records):
        assert record.token_index is not None
        token_of.setdefault(id(auth), set()).add(record.token_index)
        wanted = "other.scope" if auth is same_id_other_scope else "uaa.resource"
        assert scopes[record.token_index] == wanted
    # Disjoint token sets: no token was ever used by two auth objects.
    sets = list(token_of.values())
    for i, one in enumerate(sets):
        for other in sets[i + 1 :]:
            assert not one & other
    # Two tokens each (one before, one after the revocation).
    assert all(len(s) == 2 for s in sets)


def test_concurrent_auths_never_mix_tokens(
    server: TokenServer, client_credential: Credential
) -> None:
    auths = [
        mrequests.MtlsOAuth2(**_auth_kwargs(server, client_credential)),
        mrequests.MtlsOAuth2(**_auth_kwargs(server, client_credential, client_id=OTHER_CLIENT_ID)),
    ]
    adapter = mrequests.MtlsAdapter(
        client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
    )
    local = threading.local()

    def one(i: int) -> tuple[str, int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.mount("https://", adapter)
        auth = auths[i % 2]
        response = session.get(server.resource_url, auth=auth, timeout=10)
        return auth.client_id, response.json()["client_id"]

    with ThreadPoolExecutor(8) as pool:
        pairs = list(pool.map(one, range(80)))
    assert all(sent == seen for sent, seen in pairs), pairs
    by_client: dict[str | None, set[int | None]] = {}
    for record in server.resource_requests:
        by_client.setdefault(record.client_id, set()).add(record.token_index)
    assert set(by_client) == {CLIENT_ID, OTHER_CLIENT_ID}
    assert not by_client[CLIENT_ID] & by_client[OTHER_CLIENT_ID]
    for auth in auths:
        auth.close()


def test_httpx_per_request_auth_overrides_the_client_auth(
    server: TokenServer, client_credential: Credential
) -> None:
    client_auth = mhttpx.MtlsOAuth2(**_auth_kwargs(server, client_credential))
    request_auth = mhttpx.MtlsOAuth2(
        **_auth_kwargs(server, client_credential, client_id=OTHER_CLIENT_ID)
    )
    transport = mhttpx.MtlsTransport(
        client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
    )
    with httpx.Client(auth=client_auth, transport=transport) as client:
        assert client.get(server.resource_url).json()["client_id"] == CLIENT_ID
        assert (
            client.get(server.resource_url, auth=request_auth).json()["client_id"]
            == OTHER_CLIENT_ID
        )
        server.revoke_all()
        response = client.get(server.resource_url, auth=request_auth)
        assert response.json()["client_id"] == OTHER_CLIENT_ID
    assert [r.client_id for r in server.resource_requests] == [
        CLIENT_ID,
        OTHER_CLIENT_ID,
        OTHER_CLIENT_ID,
        OTHER_CLIENT_ID,
    ]
    assert [r.client_id for r in server.token_requests] == [
        CLIENT_ID,
        OTHER_CLIENT_ID,
        OTHER_CLIENT_ID,
    ]


def test_requests_resigned_request_is_retried_only_by_its_signer(
    server: TokenServer, client_credential: Credential
) -> None:
    """A request re-signed by a second auth answers to that auth alone.

    The first auth's 401 hook stays registered on the PreparedRequest; on a 401
    it must not fetch *its* token and resend the request the user gave to the
    second auth. (Regression: it did, until the hook checked who signed last.)
    """
    first = mrequests.MtlsOAuth2(**_auth_kwargs(server, client_credential))
    second = mrequests.MtlsOAuth2(
        **_auth_kwargs(server, client_credential, client_id=OTHER_CLIENT_ID)
    )
    with requests.Session() as session:
        session.mount(
            "https://",
            mrequests.MtlsAdapter(
                client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
            ),
        )
        prepared = session.prepare_request(
            requests.Request("GET", server.url + "/resource/always-401", auth=first)
        )
        second(prepared)  # the user hands the request to the other auth
        session.send(prepared, timeout=10)
    sent_by = [r.client_id for r in server.resource_requests]
    assert CLIENT_ID not in sent_by[1:], sent_by
    assert set(sent_by) <= {OTHER_CLIENT_ID, CLIENT_ID}


# -- proxies ----------------------------------------------------------------------------------


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def _assert_tunnel_only(proxy: _Proxy, server: TokenServer) -> None:
    relayed = proxy.everything()
    assert relayed, "nothing went through the proxy"
    lowered = relayed.lower()
    assert b"authorization" not in lowered
    assert b"bearer" not in lowered
    assert b"client_credentials" not in lowered  # the token request's form body
    assert b"access_token" not in lowered  # the token response
    tokens = list(server._tokens)
    assert tokens
    for token in tokens:
        assert token.encode() not in relayed
    # Every request through the proxy was a CONNECT for the origin.
    heads = [data for direction, data in proxy.relayed if direction == b"client->proxy"]
    assert heads
    assert all(head.startswith(b"CONNECT ") for head in heads), heads


def test_proxy_sees_only_connect_and_ciphertext(
    library: str,
    server: TokenServer,
    client_credential: Credential,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy_env: None,
) -> None:
    with connect_proxy() as proxy:
        # The token fetch finds the proxy in the environment (as a deployment
        # would configure it); the resource request is given it explicitly.
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("https_proxy", proxy.url)
        auth = make_auth(library, **_auth_kwargs(server, client_credential))
        for _ in range(2):
            outcome = call(
                library,
                auth,
                server.resource_url,
                client_credential,
                server.ca_pem,
                proxy=proxy.url,
            )
            assert outcome.status == 200, outcome.error
        if library != "httpx-async":
            auth.close()
    assert server.token_request_count == 1
    assert len(server.resource_requests) == 2
    targets = {f"localhost:{server.port}"}
    assert set(proxy.connects) == targets
    # Both the token fetch and the resource requests went through the tunnel.
    assert len(proxy.connects) >= 2
    _assert_tunnel_only(proxy, server)


def test_proxy_for_the_resource_only(
    library: str, server: TokenServer, client_credential: Credential, no_proxy_env: None
) -> None:
    with connect_proxy() as proxy:
        auth = make_auth(library, **_auth_kwargs(server, client_credential))
        outcome = call(
            library, auth, server.resource_url, client_credential, server.ca_pem, proxy=proxy.url
        )
        assert outcome.status == 200, outcome.error
    assert proxy.connects == [f"localhost:{server.port}"]
    _assert_tunnel_only(proxy, server)


# -- every debug output on --------------------------------------------------------------------


@pytest.fixture
def everything_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("requests", "urllib3", "httpx", "httpcore", "mtls_auth", "hpack", "h11"):
        caplog.set_level(logging.DEBUG, logger=name)
    previous = http.client.HTTPConnection.debuglevel
    http.client.HTTPConnection.debuglevel = 1
    try:
        yield caplog
    finally:
        http.client.HTTPConnection.debuglevel = previous


def test_no_secret_in_any_debug_output(
    everything_at_debug: pytest.LogCaptureFixture,
    secret_canary: Any,
    server: TokenServer,
    client_credential: Credential,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog = everything_at_debug
    for library in LIBRARIES:
        auth = make_auth(library, **_auth_kwargs(server, client_credential))
        for _ in range(2):
            outcome = call(library, auth, server.resource_url, client_credential, server.ca_pem)
            assert outcome.status == 200, outcome.error
        server.revoke_all()  # a 401, a refresh and a retry, all traced
        outcome = call(library, auth, server.resource_url, client_credential, server.ca_pem)
        assert outcome.status == 200, outcome.error
        assert outcome.history == [401]
        # A failing token request (error body and all) is traced too.
        failing = make_auth(
            library, **_auth_kwargs(server, client_credential, client_id="unregistered")
        )
        outcome = call(library, failing, server.resource_url, client_credential, server.ca_pem)
        assert isinstance(outcome.error, MtlsAuthError)
        if library != "httpx-async":
            auth.close()
            failing.close()
    assert server.tokens_issued == 6

    # The channels really carried the traffic...
    names = {r.name.split(".")[0] for r in caplog.records}
    assert {"urllib3", "httpx", "httpcore", "mtls_auth"} <= names, names
    traced = [text for where, text in secret_canary.texts if where.startswith("http.client")]
    assert any("POST /oauth/token" in text for text in traced)
    assert any("GET /resource" in text for text in traced)
    # ...the user's own trace of the resource request shows its bearer (by design;
    # the canary lets exactly that through)...
    printed = capsys.readouterr().out
    assert "Authorization: Bearer " in printed
    # ...and nothing else anywhere shows a secret.
    assert secret_canary.findings() == []
    for token in server._tokens:
        assert token not in caplog.text
        for line in printed.splitlines():
            if token in line:
                assert "GET /resource" in line
                assert f"Bearer {token}" in line


def test_token_endpoint_exchange_in_http_client_trace_carries_no_bearer(
    everything_at_debug: pytest.LogCaptureFixture,
    server: TokenServer,
    client_credential: Credential,
    capsys: pytest.CaptureFixture[str],
) -> None:
    auth = mrequests.MtlsOAuth2(**_auth_kwargs(server, client_credential))
    outcome = call("requests", auth, server.resource_url, client_credential, server.ca_pem)
    assert outcome.status == 200
    server.revoke_all()
    outcome = call("requests", auth, server.resource_url, client_credential, server.ca_pem)
    assert outcome.status == 200
    auth.close()
    printed = capsys.readouterr().out
    token_sends = [
        line for line in printed.splitlines() if line.startswith("send: b'POST /oauth/token")
    ]
    assert len(token_sends) == 2
    for line in token_sends:
        assert "authorization" not in line.lower()
    bodies = [line for line in printed.splitlines() if "grant_type=client_credentials" in line]
    assert bodies
    assert all("client_secret" not in line and "access_token" not in line for line in bodies)
    assert "access_token" not in printed  # http.client never prints a response body


# -- the canary itself ------------------------------------------------------------------------


def _one_token(server: TokenServer, credential: Credential) -> str:
    auth = mrequests.MtlsOAuth2(**_auth_kwargs(server, credential))
    outcome = call("requests", auth, server.resource_url, credential, server.ca_pem)
    assert outcome.status == 200
    auth.close()
    (token,) = list(server._tokens)
    return token


@pytest.mark.parametrize(
    "channel",
    [
        "debug-log-of-a-quiet-logger",
        "disabled-logger",
        "exception-in-log",
        "warning",
        "warning-inside-pytest-warns",
        "library-exception",
        "library-exception-cause",
        "http-client-reply",
        "http-client-token-endpoint-authorization",
        "repr",
    ],
)
def test_canary_catches_a_leaked_token(
    channel: str, secret_canary: Any, server: TokenServer, client_credential: Credential
) -> None:
    token = _one_token(server, client_credential)
    assert secret_canary.findings() == []
    quiet = logging.getLogger("tests.canary.quiet")
    quiet.setLevel(logging.CRITICAL)  # nothing below would normally be created
    if channel == "debug-log-of-a-quiet-logger":
        quiet.debug("the token is %s", token)
    elif channel == "disabled-logger":
        quiet.disabled = True
        quiet.critical("token=%s", token)
        quiet.disabled = False
    elif channel == "exception-in-log":
        try:
            raise RuntimeError("Bearer " + token)
        except RuntimeError:
            quiet.exception("request failed")
    elif channel == "warning":
        with warnings.catch_warnings(record=True):  # kept out of pytest's summary
            warnings.simplefilter("always")
            warnings.warn(f"careful: {token}", UserWarning, stacklevel=1)
    elif channel == "warning-inside-pytest-warns":
        with pytest.warns(UserWarning, match="careful"):
            warnings.warn(f"careful: {token}", UserWarning, stacklevel=1)
    elif channel == "library-exception":
        with contextlib.suppress(MtlsAuthError):
            raise TokenRequestError(f"failed with {token}")
    elif channel == "library-exception-cause":
        try:
            try:
                raise ValueError(f"header Bearer {token} rejected")
            except ValueError as exc:
                raise TokenRequestError("failed") from exc
        except TokenRequestError:
            pass
    elif channel == "http-client-reply":
        http.client.print("header:", "X-Echo:", f"Bearer {token}")  # type: ignore[attr-defined]
    elif channel == "http-client-token-endpoint-authorization":
        http.client.print(  # type: ignore[attr-defined]
            "send:", repr(b"POST /oauth/token HTTP/1.1\r\nAuthorization: Bearer " + token.encode())
        )
    elif channel == "repr":

        class LeakyTransport(mhttpx.MtlsTransport):
            leak = ""

            def __repr__(self) -> str:
                return f"<LeakyTransport {self.leak}>"  # a repr that leaks

        transport = LeakyTransport(
            client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
        )
        transport.leak = token
    findings = secret_canary.findings()
    assert findings, channel
    assert all(token not in finding for finding in findings)  # named, never shown
    assert any("access token #1" in finding for finding in findings)
    secret_canary.clear()
    if channel == "repr":
        transport.leak = ""
        transport.close()


def test_canary_lets_the_users_own_resource_trace_through(
    secret_canary: Any, server: TokenServer, client_credential: Credential
) -> None:
    token = _one_token(server, client_credential)
    http.client.print(  # type: ignore[attr-defined]
        "send:",
        repr(
            f"GET /resource HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        ),
    )
    assert secret_canary.findings() == []


@pytest.mark.parametrize("what", ["key-line-in-log", "pkcs8-of-a-pkcs1-key", "credstore-key"])
def test_canary_catches_a_leaked_key(
    what: str, secret_canary: Any, mtls_server: TokenServer, client_credential: Credential
) -> None:
    from cryptography.hazmat.primitives import serialization

    logger = logging.getLogger("tests.canary.keys")
    if what == "key-line-in-log":
        pem = client_credential.key_pem
        logger.debug("key: %s", pem.splitlines()[3])
    elif what == "pkcs8-of-a-pkcs1-key":
        assert "RSA PRIVATE KEY" in client_credential.key_pem  # PKCS#1 was asked for
        pkcs8 = client_credential.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        logger.info("as pkcs8: %r", pkcs8)  # repr: newlines become \n
    else:
        block = mtls_server.credstore.encryption_block()
        logger.warning("encryption: %s", json.dumps(block))
    findings = secret_canary.findings()
    assert findings, what
    secret_canary.clear()


def test_canary_does_not_change_what_logging_delivers(caplog: pytest.LogCaptureFixture) -> None:
    # Records the canary forces into existence reach no handler.
    logger = logging.getLogger("tests.canary.levels")
    logger.setLevel(logging.WARNING)
    logger.debug("invisible")
    logger.info("invisible")
    logger.warning("visible")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["visible"]
    assert logger.getEffectiveLevel() == logging.WARNING
