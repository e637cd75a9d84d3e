"""What the httpx family shares: transports, the token sender and the auth flows.

`mtls_auth.httpx` and `mtls_auth.httpx2` are thin: each binds the classes here
to its library (`_library`, the imported module) and declares its public
classes with that library's base classes, so one implementation serves
httpx and its fork httpx2 (the same API under another name). Nothing here
imports either library: every library object is reached through `_library`
(or a sender's `lib`), and typed `Any` at this seam.

The sync flow fetches tokens with an internal ``Client``, the async flow with
an internal ``AsyncClient`` (one per event loop, asyncio or trio) and never
blocks the loop. No lock is held across a `yield` of the auth flow: httpx may
close the flow's generator from another task, and a lock held there would
stay held.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Generator
from typing import Any, Callable, Generic, TypeVar

from . import _after_fork as after_fork
from . import _aio as aio
from . import _hpack_logs as hpack_logs
from ._auth import AuthFacade
from ._certificate import CertificateSource, ClientCertificate
from ._client import ClientState, TokenClient
from ._http import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, TransportFailure
from ._http import classify_failure as _classify
from ._idle import IdleRelease
from ._redact import Secret, aguarded, guarded, redact
from ._rotation import CertificateFeed, PerCertificate, SharedContexts, shared_contexts
from ._tls import Verify
from ._token import Token
from ._watchdog import SocketRegistry, watchdog

__all__ = ["AsyncTransport", "AuthFlows", "HttpxSender", "SyncTransport"]

_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="AuthFlows")


class _Presenting(Generic[_T]):
    """What both mTLS transports share: the certificate they present, and its rotations.

    The wrapped httpx transport is built per certificate (one SSLContext each:
    httpcore mutates the context it is given) and rebuilt when a followed
    certificate rotates; requests in flight finish on the old one.
    """

    #: The HTTP library module (httpx or httpx2), set by the public subclass.
    _library: Any
    _transports: PerCertificate[_T]

    @guarded
    def __init__(
        self,
        certificate: CertificateSource | CertificateFeed,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        self._contexts = shared_contexts(certificate, key, password, verify)
        # httpcore sets ALPN on its context: HTTP/2 transports get their own.
        self._flavour = "httpcore-h2" if kwargs.get("http2") else "httpcore"
        if kwargs.get("http2"):
            hpack_logs.guard()
        self._kwargs = kwargs
        self._transports = PerCertificate(self._contexts, self._build)
        self._transports.get()  # a bad certificate or CA fails here, not at a request

    def _build(self, certificate: ClientCertificate) -> _T:
        raise NotImplementedError

    @property
    def certificate(self) -> ClientCertificate:
        """The certificate new connections present."""
        return self._transports.certificate

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} certificate={self.certificate!r}>"
        except Exception:  # noqa: BLE001 - repr must never raise (half-built transport)
            return f"<{type(self).__name__} (not constructed)>"

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} holds a private key and cannot be pickled")


class SyncTransport(_Presenting[Any]):
    """The sync mTLS transport: `handle_request` on the library's `HTTPTransport`."""

    def _build(self, certificate: ClientCertificate) -> Any:
        return self._library.HTTPTransport(verify=self._contexts.get(self._flavour), **self._kwargs)

    @guarded  # an error leaves no bearer token in the frames below
    def handle_request(self, request: Any) -> Any:
        """Send the request over a connection presenting the current certificate."""
        return self._transports.get().handle_request(request)

    def close(self) -> None:
        """Close every transport underneath."""
        for transport in self._transports.take():
            transport.close()


class AsyncTransport(_Presenting[Any]):
    """The async mTLS transport: `handle_async_request` on `AsyncHTTPTransport`."""

    def _build(self, certificate: ClientCertificate) -> Any:
        return self._library.AsyncHTTPTransport(
            verify=self._contexts.get(self._flavour), **self._kwargs
        )

    @aguarded
    async def handle_async_request(self, request: Any) -> Any:
        """Send the request over a connection presenting the current certificate."""
        # Building a context loads a key: after a rotation, off the event loop.
        transport: Any = self._transports.ready()
        if transport is None:
            transport = await aio.off_loop(self._transports.get)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        """Close every transport underneath."""
        for transport in self._transports.take():
            await transport.aclose()


# -- the token endpoint ------------------------------------------------------------------


class _LoopClients:
    """The internal AsyncClients of one token client, one per event loop.

    An AsyncClient's connections belong to its loop. Each loop's clients (one
    per certificate generation) are paired with a suspended async generator
    registered on that loop: when `asyncio.run()` finalises the loop
    (`shutdown_asyncgens`), the generator's `finally` closes them there, so no
    socket outlives its loop. Entries of loops closed some other way are
    dropped on the next access.
    """

    def __init__(self, contexts: SharedContexts, lib: Any) -> None:
        self._contexts = contexts
        self._lib = lib
        self._after_fork()
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        # Keyed by id() of the loop's ident (asyncio loop, trio token), held weakly.
        self._entries: dict[int, tuple[weakref.ref[Any], PerCertificate[Any], Any]]
        self._entries = {}
        self._idles: dict[int, tuple[weakref.ref[Any], IdleRelease]] = {}

    def idle(self) -> IdleRelease:
        """What closes this loop's clients when nothing needs them for a while."""
        loop = aio.current()
        ident = loop.ident
        known = self._idles.get(id(ident))
        if known is not None and known[0]() is ident:
            return known[1]
        # Only a weak reference and the loop's kind: nothing here may keep a
        # finished loop (and its sockets) alive.
        ref, name = weakref.ref(ident), loop.name
        idle = IdleRelease(lambda: self._release(name, ref, idle_ref))
        idle_ref = weakref.ref(idle)
        with self._lock:
            self._idles[id(ident)] = (ref, idle)
            dead = [key for key, (other, _) in self._idles.items() if _finished(other)]
            for key in dead:
                del self._idles[key]
        return idle

    def _release(self, name: str, ref: weakref.ref[Any], idle: weakref.ref[IdleRelease]) -> None:
        """Have the loop close its clients (rebuilt when needed), from any thread."""
        ident = ref()
        entry = self._entries.get(id(ident))
        if ident is None or entry is None or entry[0]() is not ident:
            return
        clients = entry[1]

        async def close() -> None:
            releaser = idle()
            if releaser is not None and releaser.busy:
                return  # a fetch began on this loop since: it plans again when it ends
            pending = clients.take()
            try:
                while pending:
                    await pending[0].aclose()
                    del pending[0]
            finally:
                # Cancelled (the loop shutting down): what is left goes back, and
                # the loop's own close at shutdown closes it.
                clients.give_back(pending)

        loop = aio.Loop(name, ident, sys.modules.get("trio") if name == "trio" else None)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to close
            loop.call_soon_threadsafe(_spawn_quietly, loop, close)

    def _build(self, certificate: ClientCertificate) -> Any:
        return self._lib.AsyncClient(verify=self._contexts.get("httpcore"), follow_redirects=False)

    async def get(self) -> Any:
        ident = aio.current().ident
        entry = self._entries.get(id(ident))
        if entry is None or entry[0]() is not ident:
            entry = await self._add(ident)
        clients = entry[1]
        # Loading the key and the CA store takes milliseconds of CPU: in a worker
        # thread, not on the loop.
        client = clients.ready()
        if client is None:
            client = await aio.off_loop(clients.get)
        return client

    async def _add(self, ident: Any) -> tuple[weakref.ref[Any], PerCertificate[Any], Any]:
        clients = PerCertificate(self._contexts, self._build)
        keeper = _close_with_loop(clients)
        await keeper.__anext__()  # registers it with the loop's asyncgen hooks
        entry = (weakref.ref(ident), clients, keeper)
        with self._lock:
            self._entries[id(ident)] = entry
            dead = [key for key, (ref, *_rest) in self._entries.items() if _finished(ref)]
            for key in dead:
                del self._entries[key]
        return entry

    async def aclose(self) -> None:
        ident = aio.current().ident
        with self._lock:
            entry = self._entries.pop(id(ident), None)
        if entry is not None and entry[0]() is ident:
            await entry[2].aclose()


async def _close_with_loop(
    clients: PerCertificate[Any],
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        for client in clients.take():
            await client.aclose()


class HttpxSender:
    """Talks to the token endpoint of one client: a ``Client``, an ``AsyncClient`` per loop."""

    def __init__(self, client: TokenClient, lib: Any) -> None:
        contexts = client.contexts
        self.lib = lib
        self._sync = PerCertificate(
            contexts,
            lambda _: lib.Client(verify=contexts.get("httpcore"), follow_redirects=False),
            lib.Client.close,
        )
        self._sync_idle = IdleRelease(self._sync.close)
        self._sockets = SocketRegistry()
        self._loops = _LoopClients(contexts, lib)

    def idle_for(self, in_loop: bool) -> IdleRelease:
        return self._loops.idle() if in_loop else self._sync_idle

    def send(self, request: HttpRequest, state: ClientState) -> HttpResponse | TransportFailure:
        client = self._sync.get()
        registry = self._sockets

        def trace(event: str, info: dict[str, Any]) -> None:
            # Every new TLS connection of the token client, for the watchdog.
            if event == "connection.start_tls.complete":
                stream = info.get("return_value")
                if stream is not None:
                    registry.add(stream.get_extra_info("socket"))

        # The whole attempt, headers and body, within request.timeout: a
        # watchdog severs the connection of a server that drips bytes.
        with watchdog(registry, request.timeout) as fired:
            outcome = _exchange(self.lib, client, request, trace)
        if fired.is_set():
            return TransportFailure("timeout", f"no complete answer within {request.timeout:.1f}s")
        return outcome

    async def asend(
        self, request: HttpRequest, state: ClientState
    ) -> HttpResponse | TransportFailure:
        client = await self._loops.get()
        try:
            # The whole attempt within request.timeout, not just each read.
            return await aio.within(request.timeout, lambda: _aexchange(self.lib, client, request))
        except TimeoutError as exc:
            return TransportFailure(
                "timeout", f"no complete answer within {request.timeout:.1f}s", exc
            )

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        await self._loops.aclose()
        self.close()


def _stream(request: HttpRequest) -> dict[str, Any]:
    return {
        "method": request.method,
        "url": request.url,
        "content": request.body,
        "headers": request.headers,
        "timeout": request.timeout,
    }


class _Body:
    """A token response's body, read chunk by chunk up to `MAX_RESPONSE_BYTES`."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> bool:
        self.data += chunk
        return len(self.data) <= MAX_RESPONSE_BYTES

    def response(self, response: Any) -> HttpResponse:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return HttpResponse(response.status_code, headers, bytes(self.data))


_TOO_LARGE = TransportFailure("too_large", f"over {MAX_RESPONSE_BYTES} bytes")


def _failure(lib: Any, exc: Exception) -> TransportFailure:
    if isinstance(exc, (lib.RequestError, OSError)):
        return _classify(exc, timed_out=isinstance(exc, lib.TimeoutException))
    # Anything else httpx or anyio raised (an ExceptionGroup, a ValueError on a
    # URL it could not handle): still a failed attempt, never a raw error.
    return TransportFailure("other", f"{type(exc).__name__} from httpx", exc)


def _exchange(
    lib: Any, client: Any, request: HttpRequest, trace: Callable[[str, dict[str, Any]], None]
) -> HttpResponse | TransportFailure:
    try:
        with client.stream(**_stream(request), extensions={"trace": trace}) as response:
            body = _Body()
            if all(body.add(chunk) for chunk in response.iter_bytes()):
                return body.response(response)
            return _TOO_LARGE
    except Exception as exc:  # noqa: BLE001 - translated, see _failure
        return _failure(lib, exc)


async def _aexchange(
    lib: Any, client: Any, request: HttpRequest
) -> HttpResponse | TransportFailure:
    try:
        async with client.stream(**_stream(request)) as response:
            body = _Body()
            async for chunk in response.aiter_bytes():
                if not body.add(chunk):
                    return _TOO_LARGE
            return body.response(response)
    except Exception as exc:  # noqa: BLE001 - translated, see _failure
        return _failure(lib, exc)


def _nothing() -> None:
    return None


def _finished(ref: weakref.ref[Any]) -> bool:
    """The loop `ref` names is gone or has closed (its trio run ended)."""
    ident = ref()
    return ident is None or aio.gone(ident)


def _spawn_quietly(loop: aio.Loop, make: Callable[[], Any]) -> None:
    # Runs as a loop callback: an error here would end a trio run (a run
    # shutting down refuses new system tasks). Nothing left to close then.
    with contextlib.suppress(RuntimeError):
        loop.spawn_detached(make, _nothing)


# -- signing -------------------------------------------------------------------------------


class _Ask:
    """What the signing flow asks its driver for: a token."""

    __slots__ = ()


class _Refused:
    """What the signing flow asks its driver after a 401: drop `token`, resend?"""

    __slots__ = ("token",)

    def __init__(self, token: Token) -> None:
        self.token = token


_TOKEN = _Ask()


class AuthFlows(AuthFacade):
    """The httpx auth flows, sync and async, on the shared `AuthFacade`."""

    #: The HTTP library module (httpx or httpx2), set by the public subclass.
    _library: Any

    @classmethod
    def _new_sender(cls, client: TokenClient) -> HttpxSender:
        # The requests this auth signs may go over HTTP/2 (a Client(http2=True)
        # of the user's): keep their Authorization out of hpack's DEBUG logs.
        hpack_logs.guard()
        return HttpxSender(client, cls._library)

    requires_request_body = False
    requires_response_body = False

    # -- the auth flows ------------------------------------------------------------

    def _signing_flow(self, request: Any) -> Generator[Any, Any, None]:
        """Every decision of signing a request, for both drivers below.

        Yields `_TOKEN` (send back a token), a `_Refused` naming the token the
        resource refused (send back whether resending is worth it), or the
        request (send back httpx's response).
        """
        client = self._live()
        client.destinations.check(request.url.scheme, request.url.host)
        token: Token = yield _TOKEN
        request.headers["Authorization"] = token.authorization()
        response: Any = yield request
        if _retry_401(self._library, request, response) and (yield _Refused(token)):
            # The refused token leaves the request before the next one is asked
            # for: if that fails, no frame holding the request shows it.
            del request.headers["Authorization"]
            token = yield _TOKEN
            request.headers["Authorization"] = token.authorization()
            response = yield request
            if response.status_code == 401:
                client.refused_after_retry(token)

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        """The flow httpx drives for a ``Client``: a token, then the request (again after a 401)."""
        flow = self._signing_flow(request)
        step = next(flow)
        while True:
            if isinstance(step, _Ask):
                reply: Any = self._token()
            elif isinstance(step, _Refused):
                reply = self._live().invalidate(self._key(), step.token)
            else:
                reply = yield step
            try:
                step = flow.send(reply)
            except StopIteration:
                return

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        """The flow httpx drives for an ``AsyncClient``: a token, then the request.

        The token is fetched without blocking the event loop; after a 401, once more.
        """
        # The token is obtained and every lock released inside one await;
        # nothing is held across the yield below.
        flow = self._signing_flow(request)
        step = next(flow)
        while True:
            if isinstance(step, _Ask):
                reply: Any = await self._atoken()
            elif isinstance(step, _Refused):
                reply = await self._live().ainvalidate(self._key(), step.token)
            else:
                reply = yield step
            try:
                step = flow.send(reply)
            except StopIteration:
                return

    def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        """Not used: httpx calls `sync_auth_flow` or `async_auth_flow`, implemented here."""
        raise RuntimeError("MtlsOAuth2 drives sync_auth_flow and async_auth_flow directly")

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the internal clients: the current loop's async ones and the sync one."""
        client = self._client
        if client is not None and isinstance(client.sender, HttpxSender):
            await client.sender.aclose()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _retry_401(lib: Any, request: Any, response: Any) -> bool:
    """A 401 for the request we signed, whose body can be sent again.

    After a redirect to another origin httpx has stripped our Authorization
    header: a 401 from there says nothing about our token. Bytes content
    (including an empty body) is kept in a ByteStream and can be replayed; a
    generator or file stream was consumed by the first attempt.
    """
    if response.status_code != 401:
        return False
    final = response.request.url
    if (final.scheme, final.host, final.port) != (
        request.url.scheme,
        request.url.host,
        request.url.port,
    ):
        return False
    return isinstance(request.stream, lib.ByteStream)
