"""A hard deadline for synchronous token requests.

HTTP libraries apply a timeout to each socket operation, not to a request: a
token endpoint that answers one byte every few hundred milliseconds (a slow
loris) keeps a request alive far past any timeout. Async code can cancel; a
blocked thread cannot. So each synchronous attempt runs under a `watchdog`:
a timer that, when the attempt's time is up, shuts down (`SHUT_RDWR`) the
sockets the internal token client has opened. The blocked read returns at once,
the attempt is reported as a timeout, and the broken connection is discarded
by the pool on its next use.

The sockets come from the integration: a urllib3 pool class that records each
connection it opens (requests), or httpx's ``trace`` extension, which reports
every new TLS stream (httpx).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from collections.abc import Iterator

from . import _after_fork as after_fork

__all__ = ["SocketRegistry", "watchdog"]


class SocketRegistry:
    """The live sockets of one internal token client (held weakly)."""

    def __init__(self) -> None:
        self._after_fork()
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def add(self, sock: object) -> None:
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.add(sock)

    def shutdown_all(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError, ValueError):
                # Plain socket.shutdown: it leaves the SSL object to the thread
                # blocked in it, which then sees the connection end.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextlib.contextmanager
def watchdog(registry: SocketRegistry, seconds: float) -> Iterator[threading.Event]:
    """Shut the registry's sockets down if the block runs past `seconds`.

    Yields an Event that is set if the watchdog fired: the caller then reports
    a timeout, whatever the HTTP library made of the severed connection.
    """
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        registry.shutdown_all()

    timer = threading.Timer(max(0.001, seconds), fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
