"""Plain standard-library servers for the destination tests: a redirector and a CONNECT proxy.

`redirect_server` serves HTTPS with the test PKI's localhost certificate (no
client certificate asked) or plain http, and answers ``/redirect?code=&to=``
with that redirect, ``/401`` with a 401 and anything else with 200, recording
every request with its Authorization header (`Seen`). `connect_proxy` relays
CONNECT tunnels and keeps every byte it relayed. ``localhost`` and
``127.0.0.1`` (both on the server certificate) are different hosts to requests
and httpx.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mtls_auth.testing import PKI
from mtls_auth.testing._server import _load_cert_chain

__all__ = ["Proxy", "RedirectServer", "Seen", "connect_proxy", "redirect_server"]


# -- a plain redirect server ------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request the redirect server received (the Authorization value kept)."""

    host: str
    path: str
    authorization: str | None


class _RedirectHandler(BaseHTTPRequestHandler):
    server: RedirectServer
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


class RedirectServer(ThreadingHTTPServer):
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
def redirect_server(pki: PKI | None) -> Iterator[RedirectServer]:
    """HTTPS with the PKI's localhost certificate (no client certificate), or plain http."""
    context = None
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_cert_chain(context, pki.server.chain_pem, pki.server.private_key)
    server = RedirectServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.005})
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
    server: Proxy

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


class Proxy(socketserver.ThreadingTCPServer):
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
def connect_proxy() -> Iterator[Proxy]:
    proxy = Proxy()
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.005})
    thread.daemon = True
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)
