"""The token server's HTTP request handler: from the wire to the app and the fault queue, and back.

One `_Handler` per connection, run by the transport (`._transport`): it
completes the TLS handshake, reads each request body (Content-Length or
chunked), asks the fault queue whether a fault applies, and otherwise hands
the request to the `TokenApp` as plain values, using only the public methods
of both. Resets and the streamed faults (slow headers, reset mid body, huge
body) are written here, byte by byte.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ._faults import (
    HUGE_BODY_CHUNK,
    HUGE_BODY_PREFIX,
    HUGE_BODY_SUFFIX,
    STREAMED_KINDS,
    Fault,
    FaultStream,
)
from ._oauth import Peer, oauth_error
from ._wire import JSON_TYPE, Response, json_bytes

if TYPE_CHECKING:
    from ._transport import _HTTPSServer

logger = logging.getLogger(__name__)

_MAX_FORM_BYTES = 1 << 20
_READ_CHUNK = 1 << 16


class _ResetConnection(Exception):
    """Raised inside a handler to abort the connection with a reset."""


class _StreamFault(Exception):
    """Raised inside a handler to play a streamed fault (slow loris, huge body, ...)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.kind)
        self.fault = fault


# -- the request handler ----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPSServer
    request: ssl.SSLSocket
    connection: ssl.SSLSocket

    protocol_version = "HTTP/1.1"
    server_version = "mtls-auth-testing/1"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # buffer a whole response; handle_one_request flushes once

    peer: Peer | None
    handshake_ok: bool

    def setup(self) -> None:
        self.peer = None
        self.handshake_ok = False
        listener = self.server.listener
        conn = self.request
        try:
            conn.settimeout(listener.handshake_timeout)
            conn.do_handshake()
            der = conn.getpeercert(binary_form=True)
            if der:
                self.peer = Peer.from_der(der)
            self.handshake_ok = True
        except (OSError, ValueError) as exc:
            listener.record_handshake_failure(exc)
            if listener.handshake_linger > 0:
                self._linger(conn, listener.handshake_linger)
        with contextlib.suppress(OSError):
            conn.settimeout(listener.idle_timeout)  # keep-alive idle limit
        super().setup()

    def _linger(self, conn: ssl.SSLSocket, seconds: float) -> None:
        """After a failed handshake: half-close, then drain what the client still sends.

        The TLS alert is already on its way; closing with unread client data
        (a TLS 1.3 client sends its request straight after its Finished) would
        make the kernel send a RST, which can overtake the alert. Reading on the
        raw socket until the client closes, `seconds` pass or the server stops
        lets the client see the alert.
        """
        stopping = self.server.listener.stopping
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn, socket.SHUT_WR)
        while not stopping.is_set():
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

    # -- from the wire to the app --

    def _dispatch(self) -> None:
        target = urlsplit(self.path)
        path = target.path
        app = self.server.listener.app
        route = app.route(path)
        body = self._read_body(keep=route in ("token", "credentials"))
        if body is None:
            return
        content, length = body
        authorization = self.headers.get("Authorization")
        try:
            if route == "token":
                self._token(path, content)
            elif route == "resource":
                self._resource(path, authorization, length)
            elif route == "authorize":
                self._authorize(path, target.query)
            elif route == "credentials":
                content_type = self.headers.get("Content-Type")
                self._send(
                    app.handle_credentials(
                        self.command,
                        path,
                        target.query,
                        content_type,
                        content,
                        authorization,
                        self.peer,
                    )
                )
            else:
                fault = self.server.listener.faults.take(path, token_endpoint=False)
                canned = self._apply_fault(fault) if fault is not None else None
                host = self.headers.get("Host")
                self._send(canned or app.handle_document(self.command, path, host))
        except _ResetConnection:
            self._reset()
        except _StreamFault as streamed:
            self._stream_fault(streamed.fault)

    def _token(self, path: str, content: bytes) -> None:
        if self.command != "POST":
            self._send(oauth_error(405, "invalid_request", "use POST"), extra=(("Allow", "POST"),))
            return
        listener = self.server.listener
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), value)
        listener.app.record_token_request(path, content, self.peer, headers)
        fault = listener.faults.take(path, token_endpoint=True)
        if fault is not None:
            logger.debug("token request to %s: injected fault %s", path, fault.kind)
            canned = self._apply_fault(fault)
            if canned is not None:
                self._send(canned)
                return
        self._send(listener.app.handle_token(path, headers, content, self.peer))

    def _authorize(self, path: str, query: str) -> None:
        if self.command != "GET":
            self._send(oauth_error(405, "invalid_request", "use GET"), extra=(("Allow", "GET"),))
            return
        listener = self.server.listener
        fault = listener.faults.take(path, token_endpoint=False)
        canned = self._apply_fault(fault) if fault is not None else None
        host = self.headers.get("Host")
        self._send(canned or listener.app.handle_authorize(path, query, host))

    def _resource(self, path: str, authorization: str | None, length: int) -> None:
        listener = self.server.listener
        fault = listener.faults.take(path, token_endpoint=False)
        canned = self._apply_fault(fault) if fault is not None else None
        if canned is None:
            response = listener.app.handle_resource(
                self.command, path, authorization, self.peer, length
            )
        else:
            listener.app.record_resource(
                self.command, path, authorization, self.peer, canned.status
            )
            response = canned
        self._send(response)

    def _apply_fault(self, fault: Fault) -> Response | None:
        """The canned answer for `fault`; None means carry on normally.

        Raises `_ResetConnection` or `_StreamFault` for the faults that take
        over the connection.
        """
        if fault.kind == "delay":
            if self.server.listener.delay(fault.seconds):
                raise _ResetConnection  # stopping: drop the request instead of answering
            return None
        if fault.kind == "reset":
            raise _ResetConnection
        if fault.kind in STREAMED_KINDS:
            raise _StreamFault(fault)
        return Response(fault.status_code, fault.payload, fault.content_type, fault.headers)

    # -- the wire --

    def _send(self, response: Response, extra: tuple[tuple[str, str], ...] = ()) -> None:
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
            Response(status, json_bytes({"error": "invalid_request", "message": message})),
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
        listener = self.server.listener
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
            ended = "stopped" if listener.stopping.is_set() else "client"
        record = FaultStream(fault.kind, progress[0], ended, time.monotonic() - started)
        logger.debug("streamed fault %s ended (%s, %d bytes)", fault.kind, ended, progress[0])
        listener.faults.record_stream(record)

    def _write_now(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _slow_headers(self, fault: Fault, progress: list[int]) -> Literal["done", "stopped"]:
        stopping = self.server.listener.stopping
        self._write_now(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow-Loris: ")
        deadline = time.monotonic() + fault.seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "done"
            if stopping.wait(min(fault.interval, left)):
                return "stopped"
            # One never-ending header value: no header count limit is reached.
            self._write_now(b"a")
            progress[0] += 1

    def _reset_mid_body(self, fault: Fault, progress: list[int]) -> Literal["done", "stopped"]:
        body = fault.payload
        self.send_response(200)
        self.send_header("Content-Type", fault.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        half = body[: len(body) // 2]
        self._write_now(half)
        progress[0] = len(half)
        # Let the client get into the body before the reset arrives.
        stopped = self.server.listener.stopping.wait(0.05)
        self._reset()
        return "stopped" if stopped else "done"

    def _huge_body(self, fault: Fault, progress: list[int]) -> Literal["done", "stopped"]:
        stopping = self.server.listener.stopping
        size = fault.size
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self._write_now(HUGE_BODY_PREFIX)
        progress[0] = len(HUGE_BODY_PREFIX)
        filler = b"a" * HUGE_BODY_CHUNK
        fill_to = size - len(HUGE_BODY_SUFFIX)
        while progress[0] < fill_to:
            if stopping.is_set():
                return "stopped"
            n = min(HUGE_BODY_CHUNK, fill_to - progress[0])
            self.wfile.write(filler if n == HUGE_BODY_CHUNK else filler[:n])
            progress[0] += n
        self._write_now(HUGE_BODY_SUFFIX)
        progress[0] += len(HUGE_BODY_SUFFIX)
        return "done"
