"""A real loopback HTTPS token server that requires and verifies client certificates.

`TokenServer` speaks the two token endpoint shapes the library targets and a
protected resource, over real TLS on ``127.0.0.1``::

    POST /oauth/token                      XSUAA (opaque token, or RS256 JWT)
    POST /api/v1/token                     Credential Store (always opaque)
    GET  /.well-known/openid-configuration token_endpoint + mtls_endpoint_aliases
    GET  /token_keys                       JWKS for the JWT signing key
    ANY  /resource, /resource/...          bearer-protected resource
    ANY  /resource/always-401              always 401 invalid_token

It trusts only the PKI root, so clients must send their intermediate. Each
connection gets its own daemon thread, which also runs the TLS handshake (with
a timeout), so a stalled client never blocks ``accept``. Connections are
HTTP/1.1 keep-alive and every response leaves in a single write.

Tests steer it through thread-safe switches: `TokenServer.inject` queues
`Fault` objects for the next token requests, `TokenServer.revoke_all` and
`TokenServer.revoke_certificate` invalidate tokens, `TokenServer.cert_bound`
turns on RFC 8705 certificate binding, and an injectable `clock` decides
expiry. Tokens never appear in logs (logger ``mtls_auth.testing``, DEBUG only)
or in any record's repr.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Literal
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._credstore_api import CREDENTIALS_PATH, CredstoreApi
from ._pki import PKI, Credential, PrivateKey, thumbprint_of_der

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CREDSTORE_TOKEN_PATH",
    "XSUAA_TOKEN_PATH",
    "Fault",
    "FaultStream",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
]

logger = logging.getLogger("mtls_auth.testing")

XSUAA_TOKEN_PATH = "/oauth/token"  # noqa: S105 (a URL path, not a password)
CREDSTORE_TOKEN_PATH = "/api/v1/token"  # noqa: S105 (a URL path, not a password)
_TOKEN_PATHS = (XSUAA_TOKEN_PATH, CREDSTORE_TOKEN_PATH)
_ALWAYS_401_PATH = "/resource/always-401"
_FORM_TYPE = "application/x-www-form-urlencoded"
_JSON_TYPE = "application/json;charset=UTF-8"
_MAX_FORM_BYTES = 1 << 20
_READ_CHUNK = 1 << 16
_DEFAULT_XSUAA_SCOPE = "uaa.resource"


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request that reached a token endpoint, as the server saw it.

    `form` holds the first value of every form parameter; `client_id` and
    `namespace` (``credstore_namespace``) are copied out for convenience.
    `thumbprint` and `subject` describe the client certificate presented on the
    connection (None without one); `time` is the server clock.
    """

    path: str
    form: dict[str, str]
    client_id: str | None
    namespace: str | None
    thumbprint: str | None
    subject: str | None
    time: float


@dataclass(frozen=True)
class ResourceRequest:
    """One request to the protected resource; never holds the token itself.

    `token_index` is the 1-based issue number of the token used (None when no
    known token was sent), enough to tell a refreshed token from the old one.
    """

    method: str
    path: str
    had_authorization: bool
    thumbprint: str | None
    time: float
    status: int
    client_id: str | None
    token_index: int | None


@dataclass(frozen=True)
class _IssuedToken:
    index: int
    path: str
    client_id: str
    namespace: str | None
    scope: str | None
    thumbprint: str
    subject: str
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class _Peer:
    thumbprint: str
    subject: str

    @classmethod
    def from_der(cls, der: bytes) -> _Peer:
        certificate = x509.load_der_x509_certificate(der)
        return cls(thumbprint_of_der(der), certificate.subject.rfc4514_string())


# -- faults ------------------------------------------------------------------------

FaultKind = Literal[
    "status",
    "delay",
    "malformed_json",
    "reset",
    "body",
    "slow_headers",
    "reset_mid_body",
    "huge_body",
]
#: Fault kinds the handler writes itself, byte by byte or chunk by chunk.
_STREAMED_KINDS = frozenset({"slow_headers", "reset_mid_body", "huge_body"})
_HUGE_BODY_PREFIX = b'{"access_token":"'
_HUGE_BODY_SUFFIX = b'","token_type":"bearer","expires_in":3600}'
_HUGE_BODY_CHUNK = 1 << 16


def _default_error(code: int) -> str:
    if code in (429, 503):
        return "temporarily_unavailable"
    if code >= 500:
        return "server_error"
    if code == 401:
        return "invalid_client"
    return "invalid_request"


@dataclass(frozen=True)
class Fault:
    """Something to go wrong with a token request, built by the class methods.

    Queue it with `TokenServer.inject`. Faults act before the request is
    authenticated, the way a gateway in front of the real service would.

    Kinds:

    ``status``
        `Fault.status`: an HTTP error with a JSON body and optional
        ``Retry-After`` (delta-seconds or an HTTP date, sent verbatim).
    ``delay``
        `Fault.delay`: wait, then answer normally.
    ``malformed_json``
        `Fault.malformed_json`: 200 with truncated JSON.
    ``reset``
        `Fault.reset`: TCP RST instead of any response.
    ``body``
        `Fault.body`: exactly the given bytes as the body.
    ``slow_headers``
        `Fault.slow_headers`: a slow loris; the status line, then one header
        byte every `interval` seconds, never ending the headers, for at most
        `seconds` (then the connection is closed) or until the client goes away.
    ``reset_mid_body``
        `Fault.reset_mid_body`: headers with a Content-Length, half the body,
        then a TCP RST.
    ``huge_body``
        `Fault.huge_body`: a 200 announcing `size` bytes of JSON and streaming
        them in 64 KiB chunks without ever holding them in memory, until done,
        the client goes away or the server stops.

    The streamed kinds (the last three) are recorded in
    `TokenServer.fault_streams` once the handler is done with them.
    """

    kind: FaultKind
    status_code: int = 200
    payload: bytes = b""
    content_type: str = _JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    #: ``slow_headers``: seconds between two header bytes.
    interval: float = 0.0
    #: ``huge_body``: the announced and streamed body length in bytes.
    size: int = 0

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Fault:
        """Answer with HTTP `code` and a JSON error body.

        `body` defaults to an RFC 6749 error object fitting the code
        (``server_error``, ``temporarily_unavailable`` for 429/503,
        ``invalid_client`` for 401, ``invalid_request`` otherwise).
        `retry_after` is sent verbatim as the ``Retry-After`` header.
        """
        if body is None:
            body = {"error": _default_error(code), "error_description": "injected fault"}
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls("status", status_code=code, payload=_json_bytes(body), headers=headers)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep `seconds` on the server, then answer normally (``stop`` cuts it short)."""
        return cls("delay", seconds=float(seconds))

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 with a truncated JSON body."""
        return cls(
            "malformed_json",
            payload=b'{"access_token": "truncated", "token_type": "bearer", "expires_in": ',
        )

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection abruptly (TCP RST, SO_LINGER 0) without any response."""
        return cls("reset")

    @classmethod
    def body(
        cls, raw: bytes | str, content_type: str = "application/json", status: int = 200
    ) -> Fault:
        """Answer with exactly `raw` as the body (for odd-but-parseable responses)."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        return cls("body", status_code=status, payload=raw, content_type=content_type)

    @classmethod
    def slow_headers(cls, interval: float = 0.1, total: float = 10.0) -> Fault:
        """A slow loris: the status line, then one header byte every `interval` seconds.

        The headers never end: after `total` seconds the server closes the
        connection; it stops earlier when the client goes away or the server stops.
        """
        if interval <= 0 or total <= 0:
            raise ValueError("interval and total must be positive")
        return cls("slow_headers", seconds=float(total), interval=float(interval))

    @classmethod
    def reset_mid_body(cls, raw: bytes | str | None = None) -> Fault:
        """Headers with a Content-Length, the first half of the body, then a TCP RST.

        `raw` is the full body announced (default: a well-formed token response).
        """
        if raw is None:
            raw = _json_bytes(
                {"access_token": "x" * 64, "token_type": "bearer", "expires_in": 3600}
            )
        elif isinstance(raw, str):
            raw = raw.encode("utf-8")
        return cls("reset_mid_body", payload=raw)

    @classmethod
    def huge_body(cls, size: int = 1 << 30) -> Fault:
        """A 200 announcing `size` bytes (default 1 GiB) and streaming them.

        The body is a token response whose access_token fills it, so a client
        without a size cap would read it all (and even parse it). Nothing that
        size is ever allocated; streaming stops as soon as the client goes away.
        """
        minimum = len(_HUGE_BODY_PREFIX) + len(_HUGE_BODY_SUFFIX)
        if size < minimum:
            raise ValueError(f"size must be at least {minimum} bytes")
        return cls("huge_body", size=int(size))


@dataclass(frozen=True)
class FaultStream:
    """What became of one streamed fault (`Fault.slow_headers`, ``reset_mid_body``, ``huge_body``).

    `bytes_sent` counts what the handler wrote after the status line (header
    bytes for a slow loris, body bytes otherwise); `ended` is ``"done"`` (all
    of it went out, or the slow loris reached its total), ``"client"`` (the
    client went away: a write failed) or ``"stopped"`` (the server stopped);
    `seconds` is how long the handler spent on it.
    """

    kind: FaultKind
    bytes_sent: int
    ended: Literal["done", "client", "stopped"]
    seconds: float


class _QueuedFault:
    __slots__ = ("fault", "path", "remaining")

    def __init__(self, fault: Fault, remaining: int, path: str | None) -> None:
        self.fault = fault
        self.remaining = remaining
        self.path = path


# -- helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


_NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def _oauth_error(status: int, error: str, description: str) -> _Response:
    body = _json_bytes({"error": error, "error_description": description})
    return _Response(status, body, headers=_NO_STORE)


def _bearer_error(description: str | None) -> _Response:
    if description is None:
        challenge = "Bearer"
        body = {"error": "unauthorized", "error_description": "a bearer token is required"}
    else:
        challenge = 'Bearer error="invalid_token"'
        body = {"error": "invalid_token", "error_description": description}
    return _Response(401, _json_bytes(body), headers=(("WWW-Authenticate", challenge),))


def _load_cert_chain(context: ssl.SSLContext, chain_pem: str, key: PrivateKey) -> None:
    """Load `chain_pem` and `key` into `context` without the key touching a disk.

    The key is re-encrypted under a one-time passphrase and handed to OpenSSL
    through an anonymous memory file on Linux; elsewhere the encrypted PEM goes
    to a private temporary file that is removed straight after loading.
    """
    password = secrets.token_urlsafe(32).encode("ascii")
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    data = chain_pem.encode("ascii") + encrypted
    if sys.platform == "linux" and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("mtls-auth-testing", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}", password=password)
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="mtls-auth-testing-", suffix=".pem")
    try:
        _write_all(fd, data)
        os.close(fd)
        fd = -1
        context.load_cert_chain(path, password=password)
    finally:
        if fd != -1:
            os.close(fd)
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the HTTP machinery -------------------------------------------------------------


class _HTTPSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that wraps each accepted socket for a deferred handshake."""

    daemon_threads = True
    block_on_close = False  # stop() joins our own thread set, with a timeout
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, owner: TokenServer, ssl_context: ssl.SSLContext) -> None:
        self.owner = owner
        self.ssl_context = ssl_context
        self.conn_lock = threading.Lock()
        self.connections: set[ssl.SSLSocket] = set()
        self.threads: set[threading.Thread] = set()
        self.accepted = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would do a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.server_address[1]

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        try:
            conn = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            sock.close()
            raise
        with self.conn_lock:
            self.connections.add(conn)
            self.accepted += 1
        return conn, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run_connection,
            args=(request, client_address),
            name=f"mtls-auth-testing-conn-{self.server_port}-{self.accepted}",
            daemon=True,
        )
        with self.conn_lock:
            self.threads.add(thread)
        thread.start()

    def _run_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.threads.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called inside socketserver's except block. Clients hanging up is
        # routine here; anything else is a bug in this module, so say so loudly.
        exc = sys.exc_info()[1]
        # Python 3.9's handler flushes wfile after a reset fault closed it.
        closed_file = isinstance(exc, ValueError) and "closed file" in str(exc)
        if isinstance(exc, OSError) or closed_file:
            logger.debug("connection from %s ended: %r", client_address, exc)
        else:
            logger.error("token server failed serving %s", client_address, exc_info=exc)

    def abort_connections(self) -> None:
        """Shut down every open connection so its handler thread wakes and exits."""
        with self.conn_lock:
            connections = list(self.connections)
        for conn in connections:
            # The plain-socket shutdown: it leaves the SSL object alone for the
            # handler thread that may be inside a read right now.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPSServer
    request: ssl.SSLSocket
    connection: ssl.SSLSocket

    protocol_version = "HTTP/1.1"
    server_version = "mtls-auth-testing/1"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # buffer a whole response; handle_one_request flushes once

    peer: _Peer | None
    handshake_ok: bool

    def setup(self) -> None:
        self.peer = None
        self.handshake_ok = False
        owner = self.server.owner
        conn = self.request
        try:
            conn.settimeout(owner.handshake_timeout)
            conn.do_handshake()
            der = conn.getpeercert(binary_form=True)
            if der:
                self.peer = _Peer.from_der(der)
            self.handshake_ok = True
        except (OSError, ValueError) as exc:
            owner._record_handshake_failure(exc)
            if owner.handshake_linger > 0:
                self._linger(conn, owner.handshake_linger)
        with contextlib.suppress(OSError):
            conn.settimeout(owner.idle_timeout)  # keep-alive idle limit
        super().setup()

    def _linger(self, conn: ssl.SSLSocket, seconds: float) -> None:
        """After a failed handshake: half-close, then drain what the client still sends.

        The TLS alert is already on its way; closing with unread client data
        (a TLS 1.3 client sends its request straight after its Finished) would
        make the kernel send a RST, which can overtake the alert. Reading on the
        raw socket until the client closes, `seconds` pass or the server stops
        lets the client see the alert.
        """
        owner = self.server.owner
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn, socket.SHUT_WR)
        while not owner._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                conn.settimeout(min(0.05, left))
                if not socket.socket.recv(conn, _READ_CHUNK):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def handle(self) -> None:
        if not self.handshake_ok:
            self.close_connection = True
            return
        super().handle()

    def handle_expect_100(self) -> bool:
        ok = super().handle_expect_100()
        self.wfile.flush()  # the client waits for the 100 before it sends the body
        return ok

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # -- plumbing --

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        owner = self.server.owner
        is_token = path in _TOKEN_PATHS
        is_credstore = path == CREDENTIALS_PATH or path.startswith(CREDENTIALS_PATH + "/")
        body = self._read_body(keep=is_token or is_credstore)
        if body is None:
            return
        content, length = body
        try:
            if is_token:
                if self.command != "POST":
                    self._send(
                        _oauth_error(405, "invalid_request", "use POST"),
                        extra=(("Allow", "POST"),),
                    )
                    return
                self._token(owner, path, content)
            elif path == "/resource" or path.startswith("/resource/"):
                self._resource(owner, path, length)
            elif is_credstore:
                self._send(
                    owner._credstore_request(
                        self.command,
                        path,
                        urlsplit(self.path).query,
                        self.headers.get("Content-Type"),
                        content,
                        self.headers.get("Authorization"),
                        self.peer,
                    )
                )
            elif self.command == "GET" and path == "/.well-known/openid-configuration":
                self._send(_Response(200, _json_bytes(owner.openid_configuration)))
            elif self.command == "GET" and path == "/token_keys":
                self._send(_Response(200, _json_bytes(owner.jwks)))
            else:
                self._send(_Response(404, _json_bytes({"error": "not_found"})))
        except _ResetConnection:
            self._reset()
        except _StreamFault as streamed:
            self._stream_fault(streamed.fault)

    def _token(self, owner: TokenServer, path: str, content: bytes) -> None:
        fault = owner._apply_fault_prelude(path, content, self.peer)
        if isinstance(fault, _Response):
            self._send(fault)
        else:
            self._send(owner._issue(path, self.headers, content, self.peer))

    def _resource(self, owner: TokenServer, path: str, length: int) -> None:
        fault = owner._take_fault(path, token_endpoint=False)
        response = owner._fault_response(fault) if fault is not None else None
        authorization = self.headers.get("Authorization")
        if response is None:
            response = owner._authorize(self.command, path, authorization, self.peer, length)
        else:
            owner._record_resource(self.command, path, authorization, self.peer, response, None)
        self._send(response)

    def _send(self, response: _Response, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers + extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _fail_request(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(
            _Response(status, _json_bytes({"error": "invalid_request", "message": message})),
            extra=(("Connection", "close"),),
        )

    def _read_body(self, *, keep: bool) -> tuple[bytes, int] | None:
        """Read the request body; keep its bytes only if `keep`. None: already answered."""
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                self._fail_request(501, f"unsupported Transfer-Encoding {encoding!r}")
                return None
            return self._read_chunked(keep)
        declared = self.headers.get("Content-Length")
        if declared is None:
            return b"", 0
        try:
            length = int(declared)
            if length < 0:
                raise ValueError(declared)
        except ValueError:
            self._fail_request(400, "bad Content-Length")
            return None
        if keep and length > _MAX_FORM_BYTES:
            self._fail_request(413, "token request body too large")
            return None
        parts: list[bytes] = []
        self._read_exact(length, parts if keep else None)
        return b"".join(parts), length

    def _read_chunked(self, keep: bool) -> tuple[bytes, int] | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed during a chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._fail_request(400, "bad chunk size")
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts), total
            total += size
            if keep and total > _MAX_FORM_BYTES:
                self._fail_request(413, "token request body too large")
                return None
            self._read_exact(size, parts if keep else None)
            self._read_exact(2, None)

    def _read_exact(self, length: int, into: list[bytes] | None) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _READ_CHUNK))
            if not chunk:
                raise ConnectionError("client closed before sending the whole body")
            length -= len(chunk)
            if into is not None:
                into.append(chunk)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST and no response."""
        self.close_connection = True
        conn = self.connection
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for stream in (self.rfile, self.wfile):
            with contextlib.suppress(OSError):
                stream.close()
        conn.close()

    # -- streamed faults --

    def _stream_fault(self, fault: Fault) -> None:
        """Play a streamed fault on this connection, then record how it ended."""
        self.close_connection = True
        owner = self.server.owner
        started = time.monotonic()
        progress = [0]
        ended: Literal["done", "client", "stopped"]
        try:
            if fault.kind == "slow_headers":
                ended = self._slow_headers(fault, progress)
            elif fault.kind == "reset_mid_body":
                ended = self._reset_mid_body(fault, progress)
            else:
                ended = self._huge_body(fault, progress)
        except (OSError, ValueError):
            # A write to a client that went away (ValueError: the file was closed).
            ended = "stopped" if owner._stopping.is_set() else "client"
        record = FaultStream(fault.kind, progress[0], ended, time.monotonic() - started)
        logger.debug("streamed fault %s ended (%s, %d bytes)", fault.kind, ended, progress[0])
        with owner._lock:
            owner._fault_streams.append(record)

    def _write_now(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _slow_headers(self, fault: Fault, progress: list[int]) -> Literal["done", "stopped"]:
        owner = self.server.owner
        self._write_now(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow-Loris: ")
        deadline = time.monotonic() + fault.seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "done"
            if owner._stopping.wait(min(fault.interval, left)):
                return "stopped"
            # One never-ending header value: no header count limit is reached.
            self._write_now(b"a")
            progress[0] += 1

    def _reset_mid_body(self, fault: Fault, progress: list[int]) -> Literal["done", "stopped"]:
        owner = self.server.owner
        body = fault.payload
        self.send_response(200)
        self.send_header("Content-Type", fault.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        half = body[: len(body) // 2]
        self._write_now(half)
        progress[0] = len(half)
        # Let the client get into the body before the reset arrives.
        stopped = owner._stopping.wait(0.05)
        self._reset()
        return "stopped" if stopped else "done"

    def _huge_body(self, fault: Fault, progress: list[int]) -> Literal["done", "stopped"]:
        owner = self.server.owner
        size = fault.size
        self.send_response(200)
        self.send_header("Content-Type", _JSON_TYPE)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self._write_now(_HUGE_BODY_PREFIX)
        progress[0] = len(_HUGE_BODY_PREFIX)
        filler = b"a" * _HUGE_BODY_CHUNK
        fill_to = size - len(_HUGE_BODY_SUFFIX)
        while progress[0] < fill_to:
            if owner._stopping.is_set():
                return "stopped"
            n = min(_HUGE_BODY_CHUNK, fill_to - progress[0])
            self.wfile.write(filler if n == _HUGE_BODY_CHUNK else filler[:n])
            progress[0] += n
        self._write_now(_HUGE_BODY_SUFFIX)
        progress[0] += len(_HUGE_BODY_SUFFIX)
        return "done"


class _ResetConnection(Exception):
    """Raised inside a handler to abort the connection with a reset."""


class _StreamFault(Exception):
    """Raised inside a handler to play a streamed fault (slow loris, huge body, ...)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.kind)
        self.fault = fault


# -- the server ----------------------------------------------------------------------


class TokenServer:
    """An mTLS OAuth2 token server and protected resource on ``https://localhost:PORT``.

    The server requires a client certificate chaining to `pki`'s root
    (``require_client_cert=False`` only requests one; token endpoints then still
    answer 401 ``invalid_client`` without it). `token_lifetime` (seconds, also
    settable later) and the injectable `clock` (seconds, like `time.time`)
    decide ``expires_in`` and expiry at the resource. With `jwt_tokens` the
    XSUAA endpoint issues RS256 JWTs carrying ``cnf.x5t#S256``; the Credential
    Store endpoint always issues opaque tokens. With `cert_bound` (settable)
    the resource also requires the presented certificate to be the one the
    token was issued to (RFC 8705). `server_credential` replaces the PKI's
    localhost server certificate, e.g. with `PKI.expired_server`.
    `handshake_linger` (seconds, default 0: close at once) makes the server
    drain the connection after a failed handshake so the client reliably
    reads the TLS alert (with TLS 1.3 an immediate close can reset the
    connection before the client has read it).

    Use it as a context manager or call `start` and `stop`. Every switch is
    safe to flip from the test thread while requests are in flight.
    """

    def __init__(
        self,
        pki: PKI,
        *,
        token_lifetime: float = 3600,
        clock: Callable[[], float] = time.time,
        require_client_cert: bool = True,
        jwt_tokens: bool = False,
        cert_bound: bool = False,
        server_credential: Credential | None = None,
        handshake_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        handshake_linger: float = 0.0,
    ) -> None:
        self.pki = pki
        self.token_lifetime = float(token_lifetime)
        self.clock = clock
        self.require_client_cert = require_client_cert
        self.jwt_tokens = jwt_tokens
        self.cert_bound = cert_bound
        self.server_credential = server_credential
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.handshake_linger = handshake_linger

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPSServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

        self._clients: dict[str, set[str]] = {}
        self._revoked_thumbprints: set[str] = set()
        self._revoked_up_to = 0  # tokens with index <= this are revoked
        self._tokens: dict[str, _IssuedToken] = {}
        self._tokens_issued = 0
        self._faults: list[_QueuedFault] = []
        self._token_requests: list[TokenRequest] = []
        self._resource_requests: list[ResourceRequest] = []
        self._handshake_failures: list[str] = []
        self._fault_streams: list[FaultStream] = []
        self._jwt_key: rsa.RSAPrivateKey | None = None
        self._credstore: CredstoreApi | None = None

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> TokenServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPSServer(self, self._ssl_context())
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mtls-auth-testing-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("token server listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop open connections and join every server thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        if thread is not None:
            thread.join(timeout)
        httpd.abort_connections()
        deadline = time.monotonic() + timeout
        with httpd.conn_lock:
            threads = list(httpd.threads)
        for worker in threads:
            worker.join(max(0.0, deadline - time.monotonic()))
        httpd.server_close()
        self._httpd = None
        self._thread = None
        logger.debug("token server on port %s stopped", self._port)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "stopped"
        return f"TokenServer({where}, tokens_issued={self.tokens_issued})"

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Strict RFC 5280 checks, as Python 3.13's default client context applies.
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        # The root alone: a client that omits its intermediate must fail.
        context.load_verify_locations(cadata=self.pki.root_pem)
        credential = self.server_credential or self.pki.server
        _load_cert_chain(context, credential.chain_pem, credential.private_key)
        context.set_alpn_protocols(["http/1.1"])
        return context

    # -- addresses ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (the server must have been started)."""
        if self._port is None:
            raise RuntimeError("TokenServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``https://localhost:PORT``, matching the server certificate."""
        return f"https://localhost:{self.port}"

    @property
    def token_url(self) -> str:
        """The XSUAA token endpoint, ``url + "/oauth/token"``."""
        return self.url + XSUAA_TOKEN_PATH

    @property
    def credstore_token_url(self) -> str:
        """The Credential Store token endpoint, ``url + "/api/v1/token"``."""
        return self.url + CREDSTORE_TOKEN_PATH

    @property
    def resource_url(self) -> str:
        """The protected resource, ``url + "/resource"``."""
        return self.url + "/resource"

    @property
    def ca_pem(self) -> str:
        """The PKI root, for clients' ``verify=``."""
        return self.pki.root_pem

    @property
    def issuer(self) -> str:
        """The issuer XSUAA advertises (its token endpoint URL)."""
        return self.token_url

    @property
    def openid_configuration(self) -> dict[str, Any]:
        """What ``GET /.well-known/openid-configuration`` answers."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_url,
            "jwks_uri": self.url + "/token_keys",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": True,
            "mtls_endpoint_aliases": {"token_endpoint": self.token_url},
        }

    # -- registry and revocation ------------------------------------------------------

    def register_client(self, client_id: str, credential_or_subject: Credential | str) -> None:
        """Let `client_id` authenticate with certificates of the given subject DN.

        The binding is to the subject (RFC 4514), not the certificate, so a
        rotated certificate with the same subject keeps working, as with
        XSUAA. Registering again adds another accepted subject.
        """
        subject = (
            credential_or_subject.subject
            if isinstance(credential_or_subject, Credential)
            else credential_or_subject
        )
        with self._lock:
            self._clients.setdefault(client_id, set()).add(subject)

    def unregister_client(self, client_id: str) -> None:
        """Forget `client_id`; its next token request gets 401 ``invalid_client``."""
        with self._lock:
            self._clients.pop(client_id, None)

    def revoke_certificate(self, thumbprint: str) -> None:
        """Refuse that exact certificate from now on and invalidate its tokens."""
        with self._lock:
            self._revoked_thumbprints.add(thumbprint)

    def revoke_all(self) -> None:
        """Invalidate every token issued so far (later tokens are unaffected)."""
        with self._lock:
            self._revoked_up_to = self._tokens_issued

    # -- faults -------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Apply `fault` to the next `times` matching requests, after earlier faults.

        With `path` None the fault matches requests to either token endpoint;
        otherwise only requests to exactly that path (``"/resource"`` works
        too). Queued faults are consumed first-in, first-out.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(_QueuedFault(fault, times, path))

    @property
    def pending_faults(self) -> int:
        """How many fault applications are still queued."""
        with self._lock:
            return sum(q.remaining for q in self._faults)

    def _take_fault(self, path: str, *, token_endpoint: bool) -> Fault | None:
        with self._lock:
            for index, queued in enumerate(self._faults):
                if queued.path == path or (queued.path is None and token_endpoint):
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        del self._faults[index]
                    return queued.fault
        return None

    def _fault_response(self, fault: Fault) -> _Response | None:
        """The canned answer for `fault`; None means carry on normally."""
        if fault.kind == "delay":
            if self._stopping.wait(fault.seconds):
                raise _ResetConnection  # stopping: drop the request instead of answering
            return None
        if fault.kind == "reset":
            raise _ResetConnection
        if fault.kind in _STREAMED_KINDS:
            raise _StreamFault(fault)
        return _Response(fault.status_code, fault.payload, fault.content_type, fault.headers)

    # -- token endpoint ----------------------------------------------------------------

    def _apply_fault_prelude(
        self, path: str, content: bytes, peer: _Peer | None
    ) -> _Response | None:
        """Record the token request, then apply a queued fault if there is one."""
        form, _ = _parse_form(content)
        record = TokenRequest(
            path=path,
            form=form,
            client_id=form.get("client_id"),
            namespace=form.get("credstore_namespace"),
            thumbprint=peer.thumbprint if peer else None,
            subject=peer.subject if peer else None,
            time=self.clock(),
        )
        with self._lock:
            self._token_requests.append(record)
        fault = self._take_fault(path, token_endpoint=True)
        if fault is None:
            return None
        logger.debug("token request to %s: injected fault %s", path, fault.kind)
        return self._fault_response(fault)

    def _issue(self, path: str, headers: Any, content: bytes, peer: _Peer | None) -> _Response:
        content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != _FORM_TYPE:
            return _oauth_error(400, "invalid_request", f"Content-Type must be {_FORM_TYPE}")
        form, duplicate = _parse_form(content)
        if duplicate is not None:
            return _oauth_error(400, "invalid_request", f"{duplicate} given more than once")
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "only client_credentials is supported"
            )
        if "client_secret" in form:
            return _oauth_error(401, "invalid_client", "client_secret is not accepted with mTLS")
        if peer is None:
            return _oauth_error(401, "invalid_client", "a client certificate is required")
        client_id = form.get("client_id")
        if not client_id:
            return _oauth_error(400, "invalid_request", "client_id is required")
        namespace = form.get("credstore_namespace")
        scope = form.get("scope")
        now = self.clock()
        lifetime = self.token_lifetime
        with self._lock:
            if peer.thumbprint in self._revoked_thumbprints:
                return _oauth_error(401, "invalid_client", "the certificate has been revoked")
            if peer.subject not in self._clients.get(client_id, ()):
                return _oauth_error(
                    401, "invalid_client", "client_id is not bound to the presented certificate"
                )
            self._tokens_issued += 1
            index = self._tokens_issued
        if path == XSUAA_TOKEN_PATH and scope is None:
            scope = _DEFAULT_XSUAA_SCOPE
        issued = _IssuedToken(
            index=index,
            path=path,
            client_id=client_id,
            namespace=namespace,
            scope=scope,
            thumbprint=peer.thumbprint,
            subject=peer.subject,
            issued_at=now,
            expires_at=now + lifetime,
        )
        if self.jwt_tokens and path == XSUAA_TOKEN_PATH:
            token = self._jwt(issued)
        else:
            token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = issued
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(lifetime),
        }
        if scope is not None:
            body["scope"] = scope
        logger.debug("issued token #%d to client %s at %s", index, client_id, path)
        return _Response(200, _json_bytes(body), headers=_NO_STORE)

    # -- JWT ---------------------------------------------------------------------------

    _JWT_KID = "mtls-auth-testing-1"

    def _signing_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._jwt_key is None:
                self._jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._jwt_key

    @property
    def jwt_public_key(self) -> rsa.RSAPublicKey:
        """The RSA key that verifies the JWTs (generated on first use)."""
        return self._signing_key().public_key()

    @property
    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set served at ``/token_keys``."""
        numbers = self.jwt_public_key.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self._JWT_KID,
                    "n": _int_b64url(numbers.n),
                    "e": _int_b64url(numbers.e),
                }
            ]
        }

    def _jwt(self, issued: _IssuedToken) -> str:
        key = self._signing_key()
        header = {"alg": "RS256", "typ": "JWT", "kid": self._JWT_KID}
        claims = {
            "iss": self.issuer,
            "sub": issued.client_id,
            "client_id": issued.client_id,
            "cid": issued.client_id,
            "azp": issued.client_id,
            "aud": [issued.client_id],
            "grant_type": "client_credentials",
            "iat": int(issued.issued_at),
            "exp": int(issued.expires_at),
            "scope": (issued.scope or "").split(),
            "cnf": {"x5t#S256": issued.thumbprint},
            "jti": uuid.uuid4().hex,
        }
        signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(claims))}"
        signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    # -- Credential Store credentials API ---------------------------------------------

    @property
    def credstore(self) -> CredstoreApi:
        """The Credential Store-shaped API at ``/api/v1/credentials`` (made on first use).

        Its `encryption_block()` is the binding's ``encryption`` object.
        """
        with self._lock:
            if self._credstore is None:
                # Payload iat is wall-clock time on both sides, whatever clock
                # decides token expiry here.
                self._credstore = CredstoreApi()
            return self._credstore

    @property
    def credentials_url(self) -> str:
        """The credentials API base URL, as in a Credential Store binding's ``url``."""
        return self.url + CREDENTIALS_PATH

    def _credstore_request(
        self,
        method: str,
        path: str,
        query: str,
        content_type: str | None,
        content: bytes,
        authorization: str | None,
        peer: _Peer | None,
    ) -> _Response:
        issued, refusal = self._check_bearer(path, authorization, peer)
        if (
            refusal is not None
            or issued is None
            or issued.path != CREDSTORE_TOKEN_PATH
            or not issued.namespace
        ):
            response = refusal or _bearer_error("not a Credential Store token with a namespace")
            self._record_resource(method, path, authorization, peer, response, issued)
            return response
        answer = self.credstore.handle(
            method, path, query, content_type, content, issued.namespace
        )
        response = _Response(answer.status, answer.body, answer.content_type)
        self._record_resource(method, path, authorization, peer, response, issued)
        return response

    # -- resource ----------------------------------------------------------------------

    def _check_bearer(
        self, path: str, authorization: str | None, peer: _Peer | None
    ) -> tuple[_IssuedToken | None, _Response | None]:
        """The token behind `authorization`, or None and the 401 to send."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, _bearer_error(None)
        with self._lock:
            issued = self._tokens.get(token)
            revoked = issued is not None and (
                issued.index <= self._revoked_up_to
                or issued.thumbprint in self._revoked_thumbprints
            )
        if path == _ALWAYS_401_PATH:
            return issued, _bearer_error("this resource always refuses")
        if issued is None:
            return None, _bearer_error("unknown token")
        if revoked:
            return issued, _bearer_error("the token has been revoked")
        if self.clock() >= issued.expires_at:
            return issued, _bearer_error("the token has expired")
        if self.cert_bound and (peer is None or peer.thumbprint != issued.thumbprint):
            return issued, _bearer_error("the token is bound to another certificate")
        return issued, None

    def _authorize(
        self,
        method: str,
        path: str,
        authorization: str | None,
        peer: _Peer | None,
        body_length: int,
    ) -> _Response:
        issued, refusal = self._check_bearer(path, authorization, peer)
        response: _Response
        if refusal is not None or issued is None:
            response = refusal or _bearer_error(None)
        else:
            response = _Response(
                200,
                _json_bytes(
                    {
                        "ok": True,
                        "client_id": issued.client_id,
                        "namespace": issued.namespace,
                        "method": method,
                        "path": path,
                        "body_length": body_length,
                    }
                ),
            )
        self._record_resource(method, path, authorization, peer, response, issued)
        return response

    def _record_resource(
        self,
        method: str,
        path: str,
        authorization: str | None,
        peer: _Peer | None,
        response: _Response,
        issued: _IssuedToken | None,
    ) -> None:
        record = ResourceRequest(
            method=method,
            path=path,
            had_authorization=authorization is not None,
            thumbprint=peer.thumbprint if peer else None,
            time=self.clock(),
            status=response.status,
            client_id=issued.client_id if issued else None,
            token_index=issued.index if issued else None,
        )
        with self._lock:
            self._resource_requests.append(record)

    # -- observation -------------------------------------------------------------------

    def _record_handshake_failure(self, exc: BaseException) -> None:
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
        text = f"{type(exc).__name__}: {reason or exc}"
        logger.debug("TLS handshake failed: %s", text)
        with self._lock:
            self._handshake_failures.append(text)

    @property
    def token_requests(self) -> list[TokenRequest]:
        """Every request that reached a token endpoint, oldest first (a copy)."""
        with self._lock:
            return list(self._token_requests)

    @property
    def token_request_count(self) -> int:
        """``len(token_requests)``, without copying."""
        with self._lock:
            return len(self._token_requests)

    @property
    def resource_requests(self) -> list[ResourceRequest]:
        """Every request to the protected resource, oldest first (a copy)."""
        with self._lock:
            return list(self._resource_requests)

    @property
    def handshake_failures(self) -> list[str]:
        """One line per failed TLS handshake (type and OpenSSL reason)."""
        with self._lock:
            return list(self._handshake_failures)

    @property
    def fault_streams(self) -> list[FaultStream]:
        """How each streamed fault ended, oldest first (a copy).

        A record appears once the handler is done with the fault: poll for it.
        """
        with self._lock:
            return list(self._fault_streams)

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this low)."""
        httpd = self._httpd
        return httpd.accepted if httpd is not None else 0

    @property
    def tokens_issued(self) -> int:
        """Tokens issued since construction (`clear` does not reset it)."""
        with self._lock:
            return self._tokens_issued

    def token_info(self, token: str) -> dict[str, Any] | None:
        """What the server knows about `token`, or None if it never issued it."""
        with self._lock:
            issued = self._tokens.get(token)
            if issued is None:
                return None
            revoked = (
                issued.index <= self._revoked_up_to
                or issued.thumbprint in self._revoked_thumbprints
            )
        return {
            "index": issued.index,
            "path": issued.path,
            "client_id": issued.client_id,
            "namespace": issued.namespace,
            "scope": issued.scope,
            "thumbprint": issued.thumbprint,
            "subject": issued.subject,
            "issued_at": issued.issued_at,
            "expires_at": issued.expires_at,
            "revoked": revoked,
        }

    def clear(self) -> None:
        """Forget recorded requests, handshake failures, queued faults and fault streams.

        Issued tokens, registrations and revocations stay.
        """
        with self._lock:
            self._token_requests.clear()
            self._resource_requests.clear()
            self._handshake_failures.clear()
            self._faults.clear()
            self._fault_streams.clear()


def _parse_form(content: bytes) -> tuple[dict[str, str], str | None]:
    """First value of each parameter, and the name of a repeated one (if any)."""
    parsed = parse_qs(
        content.decode("utf-8", errors="replace"), keep_blank_values=True, strict_parsing=False
    )
    duplicate = next((name for name, values in parsed.items() if len(values) > 1), None)
    return {name: values[0] for name, values in parsed.items()}, duplicate
