"""The token server's transport: TLS context, listening socket and one thread per connection.

`Listener` serves a `TokenApp` and a `FaultQueue` on ``127.0.0.1``. Each
connection gets its own daemon thread, which also runs the TLS handshake (with
a timeout), so a stalled client never blocks ``accept``; `._handler._Handler`
speaks HTTP/1.1 on it. `Listener.stop` drops open connections and joins every
thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from ._handler import _Handler

if TYPE_CHECKING:
    from ._app import TokenApp
    from ._faults import FaultQueue
    from ._pki import Credential, PrivateKey

__all__ = ["Listener", "server_ssl_context", "shared_server_context"]

logger = logging.getLogger(__name__)


# -- TLS ------------------------------------------------------------------------------------


def server_ssl_context(
    root_pem: str, credential: Credential, *, require_client_cert: bool
) -> ssl.SSLContext:
    """The server side: TLS 1.2+, clients verified against `root_pem` alone, `credential` shown."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Strict RFC 5280 checks, as Python 3.13's default client context applies.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    # The root alone: a client that omits its intermediate must fail.
    context.load_verify_locations(cadata=root_pem)
    _load_cert_chain(context, credential.chain_pem, credential.private_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


#: Server contexts the token servers share, by (credential, root, client certificate
#: required): building one loads and checks the key (about 2 ms), and a test suite
#: starts a server for every test. A few kept; the credential is held so its id stays its own.
_SHARED: dict[tuple[int, str, bool], tuple[Credential, ssl.SSLContext]] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_MAX = 16


def _new_shared_lock() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # a forked child: its holder is not here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_shared_lock)


def shared_server_context(
    root_pem: str, credential: Credential, *, require_client_cert: bool
) -> ssl.SSLContext:
    """`server_ssl_context`, built once per credential and setting; never to be changed."""
    key = (id(credential), root_pem, require_client_cert)
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is not None and entry[0] is credential:
            return entry[1]
    context = server_ssl_context(root_pem, credential, require_client_cert=require_client_cert)
    with _SHARED_LOCK:
        if len(_SHARED) >= _SHARED_MAX:
            del _SHARED[next(iter(_SHARED))]
        _SHARED[key] = (credential, context)
    return context


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


# -- the listener ---------------------------------------------------------------------------


class Listener:
    """Serves `app` and `faults` over TLS on a free port of 127.0.0.1; restartable.

    `handshake_timeout`, `idle_timeout` and `handshake_linger` (seconds) are
    read for every new connection, so they may change at any time. `stopping`
    is set while the listener stops; waits inside handlers watch it.
    """

    def __init__(
        self,
        app: TokenApp,
        faults: FaultQueue,
        *,
        handshake_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        handshake_linger: float = 0.0,
    ) -> None:
        self.app = app
        self.faults = faults
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.handshake_linger = handshake_linger
        self.stopping = threading.Event()
        # `Fault.delay` waits on this; `release_delays` and `stop` end the waits.
        self._delays = threading.Condition()
        self._delay_generation = 0
        #: The last bound port; it stays known after `stop`.
        self.port: int | None = None
        self._lock = threading.Lock()
        self._handshake_failures: list[str] = []
        self._httpd: _HTTPSServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the listener is serving."""
        return self._httpd is not None

    @property
    def accepted(self) -> int:
        """TCP connections accepted since the last start (0 while stopped)."""
        httpd = self._httpd
        return httpd.accepted if httpd is not None else 0

    def start(self, ssl_context: ssl.SSLContext) -> None:
        """Bind a free port, point the app at it, and serve in a daemon thread."""
        if self._httpd is not None:
            return
        self.stopping.clear()
        httpd = _HTTPSServer(self, ssl_context)
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self.app.base_url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            # stop() waits for the loop to notice: a short poll keeps that wait
            # (paid by every test's teardown) at a few milliseconds.
            kwargs={"poll_interval": 0.005},
            name=f"mtls-auth-testing-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def delay(self, seconds: float) -> bool:
        """Wait `seconds`, or until `release_delays` or `stop`; True if stopping."""
        with self._delays:
            generation = self._delay_generation
            self._delays.wait_for(
                lambda: self.stopping.is_set() or self._delay_generation != generation, seconds
            )
        return self.stopping.is_set()

    def release_delays(self) -> None:
        """End every `delay` in progress now; later ones wait their full time."""
        with self._delays:
            self._delay_generation += 1
            self._delays.notify_all()

    def stop(self, timeout: float) -> bool:
        """Stop accepting, drop open connections and join every thread; False if not running."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return False
        self.stopping.set()
        with self._delays:
            self._delays.notify_all()
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
        return True

    def record_handshake_failure(self, exc: BaseException) -> None:
        """Note a failed TLS handshake: exception type and OpenSSL reason."""
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
        text = f"{type(exc).__name__}: {reason or exc}"
        logger.debug("TLS handshake failed: %s", text)
        with self._lock:
            self._handshake_failures.append(text)

    @property
    def handshake_failures(self) -> list[str]:
        """One line per failed TLS handshake, oldest first (a copy)."""
        with self._lock:
            return list(self._handshake_failures)

    def clear_handshake_failures(self) -> None:
        """Forget the recorded handshake failures."""
        with self._lock:
            self._handshake_failures.clear()


class _HTTPSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that wraps each accepted socket for a deferred handshake."""

    daemon_threads = True
    block_on_close = False  # Listener.stop joins our own thread set, with a timeout
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, listener: Listener, ssl_context: ssl.SSLContext) -> None:
        self.listener = listener
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
        # routine here; anything else is a bug in the test kit, so say so loudly.
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
