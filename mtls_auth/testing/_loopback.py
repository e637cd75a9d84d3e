"""`loopback_names`: make the test kit's host names (or any others) resolve to 127.0.0.1.

The token server answers for tenants under reserved ``.test`` names (RFC 6761:
they never resolve publicly), so a test has to make them resolve to the loopback
address. `loopback_names` wraps `socket.getaddrinfo`, which every client the kit
is meant for ends up calling: requests and urllib3, httpx's sync transport
(`socket.create_connection`) and its async one (asyncio's and trio's resolvers
through anyio run `socket.getaddrinfo` in a worker thread, looked up at call
time). Names equal to or under the given domains resolve to ``127.0.0.1``
(IPv4 only: the server listens there); every other name goes to the real
resolver, untouched.

Entering is re-entrant and thread-safe: nested or concurrent uses add up, and
the original `socket.getaddrinfo` is put back when the last one exits (unless
something else replaced it in the meantime, in which case the wrapper stays
where that code expects it and passes every lookup through).
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any, Callable

from .._redact import safe_repr
from ._tenants import IAS_DOMAIN, LOGIN_DOMAIN, TENANT_DOMAIN

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["LoopbackNames", "loopback_names"]

_LOOPBACK = "127.0.0.1"
#: The resolver found at import: the last resort when a wrapper chain loops back to us.
_SYSTEM_GETADDRINFO: Callable[..., Any] = socket.getaddrinfo


class _State:
    """The installed wrapper's bookkeeping, shared by every `LoopbackNames`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: domain -> how many active entries asked for it
        self.counts: dict[str, int] = {}
        #: the domains resolved to loopback right now (replaced whole, read without the lock)
        self.domains: tuple[str, ...] = ()
        #: what the wrapper passes other lookups to
        self.original: Callable[..., Any] = _SYSTEM_GETADDRINFO
        self.inside = threading.local()


_STATE = _State()


def _host_name(host: object) -> str | None:
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(host, str):
        return None
    return host.lower().rstrip(".")


def _wanted(name: str | None, domains: tuple[str, ...]) -> bool:
    return name is not None and any(name == d or name.endswith("." + d) for d in domains)


def _getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> Any:
    """`socket.getaddrinfo`, with the active domains answered by 127.0.0.1."""
    if _wanted(_host_name(host), _STATE.domains):
        if family not in (socket.AF_UNSPEC, socket.AF_INET):
            raise socket.gaierror(socket.EAI_NONAME, "loopback_names resolves to IPv4 only")
        host, family = _LOOPBACK, socket.AF_INET
    # A wrapper installed over ours that calls us back, and that we were told
    # to call: break the loop with the system resolver.
    if getattr(_STATE.inside, "active", False):
        return _SYSTEM_GETADDRINFO(host, port, family, type, proto, flags)
    _STATE.inside.active = True
    try:
        return _STATE.original(host, port, family, type, proto, flags)
    finally:
        _STATE.inside.active = False


def _normalise(domain: str) -> str:
    if not isinstance(domain, str):
        raise TypeError(f"a domain must be a string, not {type(domain).__name__}")
    name = domain.strip().strip(".").lower()
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


@safe_repr
class LoopbackNames:
    """A context manager resolving names equal to or under `domains` to 127.0.0.1.

    Made by `loopback_names`. It may be entered several times (also from
    several threads); each exit undoes one entry.
    """

    def __init__(self, domains: tuple[str, ...]) -> None:
        self.domains = domains

    def __enter__(self) -> LoopbackNames:
        state = _STATE
        with state.lock:
            if not state.counts and socket.getaddrinfo is not _getaddrinfo:
                state.original = socket.getaddrinfo
                socket.getaddrinfo = _getaddrinfo
            for domain in self.domains:
                state.counts[domain] = state.counts.get(domain, 0) + 1
            state.domains = tuple(state.counts)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = _STATE
        with state.lock:
            for domain in self.domains:
                left = state.counts.get(domain, 0) - 1
                if left > 0:
                    state.counts[domain] = left
                else:
                    state.counts.pop(domain, None)
            state.domains = tuple(state.counts)
            if not state.counts and socket.getaddrinfo is _getaddrinfo:
                socket.getaddrinfo = state.original

    def resolves(self, host: str) -> bool:
        """Whether `host` is one of this object's names (active or not)."""
        return _wanted(_host_name(host), self.domains)

    def __repr__(self) -> str:
        return f"loopback_names({', '.join(map(repr, self.domains))})"


def loopback_names(*domains: str) -> LoopbackNames:
    """Resolve every host name equal to or under `domains` to 127.0.0.1 while entered.

    Default: the kit's three domains, `TENANT_DOMAIN`
    (``authentication.cert.mtls.test``), `LOGIN_DOMAIN`
    (``authentication.mtls.test``) and `IAS_DOMAIN` (``accounts.mtls.test``)::

        with loopback_names():
            requests.get(server.tenant_url("customer-a") + "/resource", ...)

    Other names resolve normally. The ``mtls_server`` fixture enters it for the
    whole test; ``mtls_loopback_names`` does so for a test with its own server.
    """
    chosen = domains or (TENANT_DOMAIN, LOGIN_DOMAIN, IAS_DOMAIN)
    return LoopbackNames(tuple(dict.fromkeys(_normalise(d) for d in chosen)))
