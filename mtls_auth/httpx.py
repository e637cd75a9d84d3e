"""mtls-auth for `httpx`: one `MtlsOAuth2` for `Client` and `AsyncClient`, and mTLS transports.

::

    import httpx
    from mtls_auth.httpx import MtlsOAuth2, MtlsTransport, AsyncMtlsTransport

    auth = MtlsOAuth2(token_url, client_id, certificate_pem, key_pem)
    httpx.Client(auth=auth)
    httpx.AsyncClient(auth=auth)
    # for resources that only accept certificate-bound tokens (RFC 8705):
    httpx.Client(auth=auth, transport=MtlsTransport(certificate_pem, key_pem))

The sync flow fetches tokens with an internal `httpx.Client`, the async flow with
an internal `httpx.AsyncClient` (one per event loop) and never blocks the loop.
No lock is held across a `yield` of the auth flow: httpx may close the flow's
generator from another task, and a lock held there would stay held. The
Credential Store client (`CredstoreTransport`, `credstore_client`) lives in
`mtls_auth.credstore.httpx`; its names are importable from here too.
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the core-only tox env
    raise ImportError("mtls_auth.httpx needs httpx: pip install mtls-auth[httpx]") from exc

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from . import _after_fork as after_fork
from ._auth import AuthFacade
from ._certificate import CertificateSource, ClientCertificate
from ._client import ClientState, TokenClient
from ._http import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, TransportFailure
from ._http import classify_failure as _classify
from ._idle import IdleRelease
from ._redact import Secret, guarded, redact
from ._rotation import CertificateFeed, PerCertificate, SharedContexts, shared_contexts
from ._tls import Verify
from ._token import Token
from ._watchdog import SocketRegistry, watchdog

if TYPE_CHECKING:
    from .credstore.httpx import AsyncCredstoreTransport as AsyncCredstoreTransport
    from .credstore.httpx import CredstoreTransport as CredstoreTransport
    from .credstore.httpx import async_credstore_client as async_credstore_client
    from .credstore.httpx import credstore_client as credstore_client

__all__ = ["AsyncMtlsTransport", "MtlsOAuth2", "MtlsTransport"]

_CREDSTORE_NAMES = frozenset(
    {"AsyncCredstoreTransport", "CredstoreTransport", "async_credstore_client", "credstore_client"}
)

_T = TypeVar("_T")


def __getattr__(name: str) -> Any:
    # The Credential Store client moved to mtls_auth.credstore.httpx; these
    # names stay importable from here (loaded on first use: it imports us).
    if name in _CREDSTORE_NAMES:
        from .credstore import httpx as credstore_httpx

        return getattr(credstore_httpx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Presenting(Generic[_T]):
    """What both mTLS transports share: the certificate they present, and its rotations.

    The wrapped httpx transport is built per certificate (one SSLContext each:
    httpcore mutates the context it is given) and rebuilt when a followed
    certificate rotates; requests in flight finish on the old one.
    """

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


class MtlsTransport(_Presenting[httpx.HTTPTransport], httpx.BaseTransport):
    """An httpx transport whose connections present a client certificate.

    `certificate` is PEM text (then `key` is the PEM private key) or a
    `ClientCertificate`, presented for the transport's whole life;
    `auth.transport()` makes one that follows `auth`'s certificate through its
    rotations instead. `verify` (True for the system store, a CA bundle path or
    CA PEM text) is the only trust anchor. Other keyword arguments (`http2`,
    `retries`, `limits`, `proxy`, ...) go to the `httpx.HTTPTransport` underneath.
    """

    def _build(self, certificate: ClientCertificate) -> httpx.HTTPTransport:
        return httpx.HTTPTransport(verify=self._contexts.get(self._flavour), **self._kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._transports.get().handle_request(request)

    def close(self) -> None:
        for transport in self._transports.take():
            transport.close()


class AsyncMtlsTransport(_Presenting[httpx.AsyncHTTPTransport], httpx.AsyncBaseTransport):
    """The async `MtlsTransport`, with the same arguments (`auth.async_transport()`)."""

    def _build(self, certificate: ClientCertificate) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(verify=self._contexts.get(self._flavour), **self._kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Building a context loads a key: after a rotation, off the event loop.
        transport = self._transports.ready()
        if transport is None:
            transport = await _off_loop(self._transports.get)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
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

    def __init__(self, contexts: SharedContexts) -> None:
        self._contexts = contexts
        self._after_fork()
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[
            int,
            tuple[weakref.ref[asyncio.AbstractEventLoop], PerCertificate[httpx.AsyncClient], Any],
        ] = {}
        self._idles: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], IdleRelease]] = {}

    def idle(self) -> IdleRelease:
        """What closes this loop's clients when nothing needs them for a while."""
        loop = asyncio.get_running_loop()
        known = self._idles.get(id(loop))
        if known is not None and known[0]() is loop:
            return known[1]
        ref = weakref.ref(loop)
        idle = IdleRelease(lambda: self._release(ref))
        with self._lock:
            self._idles[id(loop)] = (ref, idle)
        return idle

    def _release(self, ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        """From the reaper thread: have the loop close its clients (rebuilt when needed)."""
        loop = ref()
        entry = self._entries.get(id(loop))
        if loop is None or entry is None or entry[0]() is not loop:
            return
        clients = entry[1]

        async def close() -> None:
            for client in clients.take():
                await client.aclose()

        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to close
            loop.call_soon_threadsafe(lambda: loop.create_task(close()))

    def _build(self, certificate: ClientCertificate) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=self._contexts.get("httpcore"), follow_redirects=False)

    async def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is None or entry[0]() is not loop:
            entry = await self._add(loop)
        clients = entry[1]
        # Loading the key and the CA store takes milliseconds of CPU: in a worker
        # thread, not on the loop.
        client = clients.ready()
        if client is None:
            client = await _off_loop(clients.get)
        return client

    async def _add(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[weakref.ref[asyncio.AbstractEventLoop], PerCertificate[httpx.AsyncClient], Any]:
        clients = PerCertificate(self._contexts, self._build)
        keeper = _close_with_loop(clients)
        await keeper.__anext__()  # registers it with the loop's asyncgen hooks
        entry = (weakref.ref(loop), clients, keeper)
        with self._lock:
            self._entries[id(loop)] = entry
            dead = [
                key
                for key, (ref, *_rest) in self._entries.items()
                if (other := ref()) is None or other.is_closed()
            ]
            for key in dead:
                del self._entries[key]
        return entry

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._entries.pop(id(loop), None)
        if entry is not None and entry[0]() is loop:
            await entry[2].aclose()


async def _close_with_loop(
    clients: PerCertificate[httpx.AsyncClient],
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        for client in clients.take():
            await client.aclose()


class _HttpxSender:
    """Talks to the token endpoint of one client: an `httpx.Client`, an `AsyncClient` per loop."""

    def __init__(self, client: TokenClient) -> None:
        contexts = client.contexts
        self._sync = PerCertificate(
            contexts,
            lambda _: httpx.Client(verify=contexts.get("httpcore"), follow_redirects=False),
            httpx.Client.close,
        )
        self._sync_idle = IdleRelease(self._sync.close)
        self._sockets = SocketRegistry()
        self._loops = _LoopClients(contexts)

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
            outcome = _exchange(client, request, trace)
        if fired.is_set():
            return TransportFailure("timeout", f"no complete answer within {request.timeout:.1f}s")
        return outcome

    async def asend(
        self, request: HttpRequest, state: ClientState
    ) -> HttpResponse | TransportFailure:
        client = await self._loops.get()
        try:
            # The whole attempt within request.timeout, not just each read.
            return await asyncio.wait_for(_aexchange(client, request), request.timeout)
        except asyncio.TimeoutError as exc:
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

    def response(self, response: httpx.Response) -> HttpResponse:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return HttpResponse(response.status_code, headers, bytes(self.data))


_TOO_LARGE = TransportFailure("too_large", f"over {MAX_RESPONSE_BYTES} bytes")


def _failure(exc: Exception) -> TransportFailure:
    if isinstance(exc, (httpx.RequestError, OSError)):
        return _classify(exc, timed_out=isinstance(exc, httpx.TimeoutException))
    # Anything else httpx or anyio raised (an ExceptionGroup, a ValueError on a
    # URL it could not handle): still a failed attempt, never a raw error.
    return TransportFailure("other", f"{type(exc).__name__} from httpx", exc)


def _exchange(
    client: httpx.Client, request: HttpRequest, trace: Callable[[str, dict[str, Any]], None]
) -> HttpResponse | TransportFailure:
    try:
        with client.stream(**_stream(request), extensions={"trace": trace}) as response:
            body = _Body()
            if all(body.add(chunk) for chunk in response.iter_bytes()):
                return body.response(response)
            return _TOO_LARGE
    except Exception as exc:  # noqa: BLE001 - translated, see _failure
        return _failure(exc)


async def _aexchange(
    client: httpx.AsyncClient, request: HttpRequest
) -> HttpResponse | TransportFailure:
    try:
        async with client.stream(**_stream(request)) as response:
            body = _Body()
            async for chunk in response.aiter_bytes():
                if not body.add(chunk):
                    return _TOO_LARGE
            return body.response(response)
    except Exception as exc:  # noqa: BLE001 - translated, see _failure
        return _failure(exc)


async def _off_loop(call: Callable[[], _T]) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, call)


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


class MtlsOAuth2(AuthFacade, httpx.Auth):
    """OAuth2 client credentials over mTLS, as an httpx `auth=`, sync and async.

    The arguments are those of `mtls_auth.requests.MtlsOAuth2`. One instance can
    serve a `Client` and any number of `AsyncClient`s, on any event loops, at
    the same time; they share one cached token.

    On a 401 the token that was used is dropped and the request is sent once
    more with a new one, when its body can be replayed.
    """

    @classmethod
    def _new_sender(cls, client: TokenClient) -> _HttpxSender:
        return _HttpxSender(client)

    requires_request_body = False
    requires_response_body = False

    def transport(self, **kwargs: Any) -> MtlsTransport:
        """An `MtlsTransport` presenting this auth's certificate, following its rotations.

        It shares this auth's SSLContext (one trust store load): keyword
        arguments (`http2`, `limits`, `proxy`, ...) go to `httpx.HTTPTransport`.
        """
        return MtlsTransport(self._live().contexts, **kwargs)

    def async_transport(self, **kwargs: Any) -> AsyncMtlsTransport:
        """An `AsyncMtlsTransport` presenting this auth's certificate, following rotations."""
        return AsyncMtlsTransport(self._live().contexts, **kwargs)

    # -- the auth flows ------------------------------------------------------------

    def _signing_flow(
        self, request: httpx.Request
    ) -> Generator[_Ask | _Refused | httpx.Request, Any, None]:
        """Every decision of signing a request, for both drivers below.

        Yields `_TOKEN` (send back a token), a `_Refused` naming the token the
        resource refused (send back whether resending is worth it), or the
        request (send back httpx's response).
        """
        client = self._live()
        client.destinations.check(request.url.scheme, request.url.host)
        token: Token = yield _TOKEN
        request.headers["Authorization"] = token.authorization()
        response: httpx.Response = yield request
        if _retry_401(request, response) and (yield _Refused(token)):
            # The refused token leaves the request before the next one is asked
            # for: if that fails, no frame holding the request shows it.
            del request.headers["Authorization"]
            token = yield _TOKEN
            request.headers["Authorization"] = token.authorization()
            response = yield request
            if response.status_code == 401:
                client.refused_after_retry(token)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
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

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
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

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("MtlsOAuth2 drives sync_auth_flow and async_auth_flow directly")

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the internal clients: the current loop's async ones and the sync one."""
        client = self._client
        if client is not None and isinstance(client.sender, _HttpxSender):
            await client.sender.aclose()

    def __enter__(self) -> MtlsOAuth2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> MtlsOAuth2:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _retry_401(request: httpx.Request, response: httpx.Response) -> bool:
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
    return isinstance(request.stream, httpx.ByteStream)
