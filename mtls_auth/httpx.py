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
generator from another task, and a lock held there would stay held.
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the core-only tox env
    raise ImportError("mtls_auth.httpx needs httpx: pip install mtls-auth[httpx]") from exc

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, Generator
from typing import Any, Callable

from ._auth import (
    AuthCore,
    AuthFacade,
    AuthState,
    CertificateSource,
    coerce_certificate,
)
from ._binding import BindingInput, Redacted
from ._certificate import Secret, Verify, redact
from ._credstore import JOSE_CONTENT_TYPE, PayloadCipher, open_response, seal_request
from ._errors import BindingError
from ._token import (
    MAX_RESPONSE_BYTES,
    HttpRequest,
    HttpResponse,
    Token,
    TransportFailure,
)
from ._token import classify_failure as _classify
from ._watchdog import SocketRegistry, watchdog

__all__ = [
    "AsyncCredstoreTransport",
    "AsyncMtlsTransport",
    "CredstoreTransport",
    "MtlsOAuth2",
    "MtlsTransport",
    "async_credstore_client",
    "credstore_client",
]


class MtlsTransport(httpx.BaseTransport):
    """An httpx transport whose connections present a client certificate.

    `verify` (True for the system store, a CA bundle path or CA PEM text) is the
    only trust anchor. Other keyword arguments (`http2`, `retries`, `limits`,
    `proxy`, ...) go to the `httpx.HTTPTransport` underneath. A transport made
    by `MtlsOAuth2.transport()` follows that auth's certificate rotations: new
    connections use the new certificate, requests in flight finish on theirs.
    """

    def __init__(
        self,
        certificate: CertificateSource,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        self.certificate = coerce_certificate(certificate, key, password)
        self._verify = verify
        self._kwargs = kwargs
        self._follow: AuthCore | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._retired: list[httpx.HTTPTransport] = []
        self._transport = self._build()

    def _build(self) -> httpx.HTTPTransport:
        # One SSLContext per transport: httpcore mutates the context it is given.
        context = self.certificate.ssl_context(self._verify)
        return httpx.HTTPTransport(verify=context, **self._kwargs)

    def _current(self) -> httpx.HTTPTransport:
        follow = self._follow
        if follow is not None and follow.generation != self._generation:
            with self._lock:
                state = follow.state  # one read: certificate and generation agree
                if state.generation != self._generation:
                    generation, certificate = state.generation, state.certificate
                    self.certificate = certificate
                    self._retired.append(self._transport)
                    self._transport = self._build()
                    self._generation = generation
        return self._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._current().handle_request(request)

    def close(self) -> None:
        with self._lock:
            transports, self._retired = [*self._retired, self._transport], []
        for transport in transports:
            transport.close()

    def __repr__(self) -> str:
        return f"<MtlsTransport certificate={self.certificate!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("MtlsTransport holds a private key and cannot be pickled")


class AsyncMtlsTransport(httpx.AsyncBaseTransport):
    """An async httpx transport whose connections present a client certificate.

    The async twin of `MtlsTransport`, with the same arguments; made by
    `MtlsOAuth2.async_transport()` it follows the auth's certificate rotations.
    """

    def __init__(
        self,
        certificate: CertificateSource,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        self.certificate = coerce_certificate(certificate, key, password)
        self._verify = verify
        self._kwargs = kwargs
        self._follow: AuthCore | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._retired: list[httpx.AsyncHTTPTransport] = []
        self._transport = self._build()

    def _build(self) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(
            verify=self.certificate.ssl_context(self._verify), **self._kwargs
        )

    async def _current(self) -> httpx.AsyncHTTPTransport:
        follow = self._follow
        if follow is not None and follow.generation != self._generation:
            # Building the context loads a key: keep it off the event loop.
            loop = asyncio.get_running_loop()
            state = follow.state  # one read: certificate and generation agree
            certificate, generation = state.certificate, state.generation
            context = await loop.run_in_executor(None, certificate.ssl_context, self._verify)
            with self._lock:
                if generation != self._generation:
                    self.certificate = certificate
                    self._retired.append(self._transport)
                    self._transport = httpx.AsyncHTTPTransport(verify=context, **self._kwargs)
                    self._generation = generation
        return self._transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await (await self._current()).handle_async_request(request)

    async def aclose(self) -> None:
        with self._lock:
            transports, self._retired = [*self._retired, self._transport], []
        for transport in transports:
            await transport.aclose()

    def __repr__(self) -> str:
        return f"<AsyncMtlsTransport certificate={self.certificate!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("AsyncMtlsTransport holds a private key and cannot be pickled")


class _LoopClients:
    """The internal AsyncClients of one auth, one per event loop and generation.

    An AsyncClient's connections belong to its loop. Each client is paired with
    a suspended async generator registered on that loop: when `asyncio.run()`
    finalises the loop (`shutdown_asyncgens`), the generator's `finally` closes
    the client there, so no socket outlives its loop. Entries of loops closed
    some other way are dropped on the next access.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[
            int, tuple[weakref.ref[asyncio.AbstractEventLoop], int, httpx.AsyncClient, Any]
        ] = {}

    def get(self, loop: asyncio.AbstractEventLoop, generation: int) -> httpx.AsyncClient | None:
        entry = self._entries.get(id(loop))
        if entry is not None and entry[0]() is loop and entry[1] == generation:
            return entry[2]
        return None

    async def put(
        self, loop: asyncio.AbstractEventLoop, generation: int, client: httpx.AsyncClient
    ) -> httpx.AsyncClient:
        keeper = _close_with_loop(client)
        await keeper.__anext__()  # registers it with the loop's asyncgen hooks
        with self._lock:
            old = self._entries.get(id(loop))
            self._entries[id(loop)] = (weakref.ref(loop), generation, client, keeper)
            dead = [
                key
                for key, (ref, *_rest) in self._entries.items()
                if (other := ref()) is None or other.is_closed()
            ]
            for key in dead:
                del self._entries[key]
        if old is not None and old[0]() is loop:
            await old[3].aclose()  # the client of the previous generation
        return client

    async def aclose(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            entry = self._entries.pop(id(loop), None)
        if entry is not None and entry[0]() is loop:
            await entry[3].aclose()


async def _close_with_loop(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


class MtlsOAuth2(AuthFacade, httpx.Auth):
    """OAuth2 client credentials over mTLS, as an httpx `auth=`, sync and async.

    The arguments are those of `mtls_auth.requests.MtlsOAuth2`. One instance can
    serve a `Client` and any number of `AsyncClient`s, on any event loops, at
    the same time; they share one cached token.

    On a 401 the token that was used is dropped and the request is sent once
    more with a new one, when its body can be replayed.
    """

    requires_request_body = False
    requires_response_body = False

    def _setup(self, core: AuthCore) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._client: tuple[int, httpx.Client] | None = None
        self._retired: list[httpx.Client] = []
        self._sockets = SocketRegistry()
        self._async_clients = _LoopClients()

    def transport(self, **kwargs: Any) -> MtlsTransport:
        """An `MtlsTransport` presenting this auth's certificate, following its rotations."""
        transport = MtlsTransport(self._core.certificate, verify=self._core.verify, **kwargs)
        transport._follow, transport._generation = self._core, self._core.generation
        return transport

    def async_transport(self, **kwargs: Any) -> AsyncMtlsTransport:
        """An `AsyncMtlsTransport` presenting this auth's certificate, following rotations."""
        transport = AsyncMtlsTransport(self._core.certificate, verify=self._core.verify, **kwargs)
        transport._follow, transport._generation = self._core, self._core.generation
        return transport

    # -- the auth flows ------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        core = self._core
        url = request.url
        core.destinations.check(url.scheme, url.host)
        token = core.fresh_token() or core.token(self._send)
        request.headers["Authorization"] = token.authorization()
        response = yield request
        if _retry_401(request, response) and core.invalidate_token(token):
            token = core.token(self._send)
            request.headers["Authorization"] = token.authorization()
            response = yield request
            if response.status_code == 401:
                core.refused_after_retry(token)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        core = self._core
        url = request.url
        core.destinations.check(url.scheme, url.host)
        # The token is obtained and every lock released inside this one await;
        # nothing is held across the yield below.
        token = core.fresh_token() or await core.atoken(self._asend)
        request.headers["Authorization"] = token.authorization()
        response = yield request
        if _retry_401(request, response) and await _ainvalidate(core, token):
            token = await core.atoken(self._asend)
            request.headers["Authorization"] = token.authorization()
            response = yield request
            if response.status_code == 401:
                core.refused_after_retry(token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("MtlsOAuth2 drives sync_auth_flow and async_auth_flow directly")

    # -- the token endpoint ----------------------------------------------------------

    def _token_client(self, state: AuthState) -> httpx.Client:
        current = self._client
        if current is None or current[0] != state.generation:
            with self._lock:
                current = self._client
                if current is None or current[0] != state.generation:
                    if current is not None:
                        # A fetch may still be using it; closed with the auth.
                        self._retired.append(current[1])
                    context = state.certificate.ssl_context(self._core.verify)
                    client = httpx.Client(verify=context, follow_redirects=False)
                    current = self._client = (state.generation, client)
        return current[1]

    async def _async_token_client(self, state: AuthState) -> httpx.AsyncClient:
        # AsyncClient connections belong to the loop that opened them, so each
        # event loop gets its own client, closed when asyncio.run() finalises
        # that loop (see _LoopClients). Loading the key and the CA store takes
        # milliseconds of CPU: done in a worker thread, not on the loop.
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop, state.generation)
        if client is None:
            context = await loop.run_in_executor(
                None, state.certificate.ssl_context, self._core.verify
            )
            client = await self._async_clients.put(
                loop, state.generation, httpx.AsyncClient(verify=context, follow_redirects=False)
            )
        return client

    def _send(self, request: HttpRequest, state: AuthState) -> HttpResponse | TransportFailure:
        client = self._token_client(state)
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
            outcome = self._exchange(client, request, trace)
        if fired.is_set():
            return TransportFailure("timeout", f"no complete answer within {request.timeout:.1f}s")
        return outcome

    @staticmethod
    def _exchange(
        client: httpx.Client, request: HttpRequest, trace: Callable[[str, dict[str, Any]], None]
    ) -> HttpResponse | TransportFailure:
        try:
            with client.stream(
                request.method,
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=request.timeout,
                extensions={"trace": trace},
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        return TransportFailure("too_large", f"over {MAX_RESPONSE_BYTES} bytes")
                return HttpResponse(response.status_code, _lower(response.headers), bytes(body))
        except httpx.TimeoutException as exc:
            return _classify(exc, timed_out=True)
        except (httpx.TransportError, OSError) as exc:
            return _classify(exc)

    async def _asend(
        self, request: HttpRequest, state: AuthState
    ) -> HttpResponse | TransportFailure:
        client = await self._async_token_client(state)
        try:
            # The whole attempt within request.timeout, not just each read.
            return await asyncio.wait_for(self._aexchange(client, request), request.timeout)
        except asyncio.TimeoutError as exc:
            return TransportFailure(
                "timeout", f"no complete answer within {request.timeout:.1f}s", exc
            )

    @staticmethod
    async def _aexchange(
        client: httpx.AsyncClient, request: HttpRequest
    ) -> HttpResponse | TransportFailure:
        try:
            async with client.stream(
                request.method,
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=request.timeout,
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        return TransportFailure("too_large", f"over {MAX_RESPONSE_BYTES} bytes")
                return HttpResponse(response.status_code, _lower(response.headers), bytes(body))
        except httpx.TimeoutException as exc:
            return _classify(exc, timed_out=True)
        except (httpx.TransportError, OSError) as exc:
            return _classify(exc)

    # -- lifecycle and presentation -------------------------------------------------------

    def close(self) -> None:
        """Close the internal sync client used for the token endpoint."""
        with self._lock:
            current, self._client = self._client, None
            clients, self._retired = list(self._retired), []
        if current is not None:
            clients.append(current[1])
        for client in clients:
            client.close()

    async def aclose(self) -> None:
        """Close the internal clients: the current loop's async ones and the sync one."""
        await self._async_clients.aclose(asyncio.get_running_loop())
        self.close()

    def __enter__(self) -> MtlsOAuth2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> MtlsOAuth2:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()



def _lower(headers: httpx.Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def _ainvalidate(core: AuthCore, token: Token) -> bool:
    if core.watch is None:
        return core.invalidate_token(token)
    # With a watched binding, invalidation checks the files: off the event loop.
    return await asyncio.get_running_loop().run_in_executor(None, core.invalidate_token, token)


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


# -- Credential Store -----------------------------------------------------------------

_DROP_ON_REWRITE = ("content-length", "content-encoding", "transfer-encoding", "content-type")


def _sealed(request: httpx.Request, cipher: PayloadCipher, body: bytes) -> httpx.Request:
    sealed = seal_request(cipher, body, request.headers.get("Content-Type"))
    if sealed is None:
        return request
    headers = [
        (k, v) for k, v in request.headers.multi_items() if k.lower() not in _DROP_ON_REWRITE
    ]
    headers.append(("Content-Type", JOSE_CONTENT_TYPE))
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        content=sealed,
        extensions=request.extensions,
    )


def _opened(
    response: httpx.Response, request: httpx.Request, cipher: PayloadCipher, strict: bool
) -> httpx.Response:
    opened = open_response(
        cipher,
        response.status_code,
        response.headers.get("Content-Type"),
        response.content,
        require_encrypted=strict,
    )
    if opened is None:
        return response
    headers = [
        (k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROP_ON_REWRITE
    ]
    headers.append(("Content-Type", "application/json"))
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=opened,
        request=request,
        extensions=response.extensions,
    )


class CredstoreTransport(httpx.BaseTransport):
    """Wraps a transport to encrypt and decrypt Credential Store payloads.

    Request bodies leave as JWE (`application/jose`) encrypted with the
    `cipher`'s server key; `application/jose` responses are decrypted, so the
    caller sees `application/json`. A successful response that is not
    encrypted raises `PayloadError` unless `require_encrypted=False`.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport,
        cipher: PayloadCipher,
        *,
        require_encrypted: bool = True,
    ) -> None:
        self.transport = transport
        self.cipher = cipher
        self.require_encrypted = require_encrypted

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sealed = _sealed(request, self.cipher, request.read())
        response = self.transport.handle_request(sealed)
        try:
            response.read()
        finally:
            response.close()
        return _opened(response, sealed, self.cipher, self.require_encrypted)

    def close(self) -> None:
        self.transport.close()

    def __repr__(self) -> str:
        return f"<CredstoreTransport {self.transport!r} cipher={self.cipher!r}>"


class AsyncCredstoreTransport(httpx.AsyncBaseTransport):
    """The async twin of `CredstoreTransport`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        cipher: PayloadCipher,
        *,
        require_encrypted: bool = True,
    ) -> None:
        self.transport = transport
        self.cipher = cipher
        self.require_encrypted = require_encrypted

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sealed = _sealed(request, self.cipher, await request.aread())
        response = await self.transport.handle_async_request(sealed)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _opened(response, sealed, self.cipher, self.require_encrypted)

    async def aclose(self) -> None:
        await self.transport.aclose()

    def __repr__(self) -> str:
        return f"<AsyncCredstoreTransport {self.transport!r} cipher={self.cipher!r}>"


def _credstore_parts(
    binding: BindingInput,
    namespace: str,
    verify: Verify,
    client_private_key: str | bytes | None,
    kwargs: dict[str, Any],
) -> tuple[MtlsOAuth2, str, PayloadCipher | None]:
    binding = Redacted(binding)  # frames captured on error show no key
    auth = MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify, **kwargs)
    parsed = auth._core.binding
    if parsed is None or parsed.kind != "credstore" or not parsed.url:
        raise BindingError(
            "credstore_client needs a Credential Store oauth:mtls binding with a url"
        )
    cipher = None
    if parsed.encryption or client_private_key is not None:
        cipher = PayloadCipher.from_encryption(
            parsed.encryption, client_private_key=client_private_key
        )
    return auth, parsed.url.rstrip("/") + "/", cipher


def credstore_client(
    binding: BindingInput,
    *,
    namespace: str,
    verify: Verify = True,
    client_private_key: str | bytes | None = None,
    require_encrypted: bool = True,
    **kwargs: Any,
) -> httpx.Client:
    """An `httpx.Client` for the Credential Store credentials API in one call.

    The auth (tokens for `namespace`), payload encryption from the binding's
    ``encryption`` block, and the binding's ``url`` as `base_url`::

        with credstore_client("credstore-key.json", namespace="ns1") as client:
            client.post("password", json={"name": "db", "value": "s3cret"})
            client.get("password", params={"name": "db"}).json()["value"]
    """
    auth, base_url, cipher = _credstore_parts(
        binding, namespace, verify, client_private_key, kwargs
    )
    transport: httpx.BaseTransport = auth.transport()
    if cipher is not None:
        transport = CredstoreTransport(transport, cipher, require_encrypted=require_encrypted)
    return httpx.Client(auth=auth, base_url=base_url, transport=transport)


def async_credstore_client(
    binding: BindingInput,
    *,
    namespace: str,
    verify: Verify = True,
    client_private_key: str | bytes | None = None,
    require_encrypted: bool = True,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """The `httpx.AsyncClient` twin of `credstore_client`."""
    auth, base_url, cipher = _credstore_parts(
        binding, namespace, verify, client_private_key, kwargs
    )
    transport: httpx.AsyncBaseTransport = auth.async_transport()
    if cipher is not None:
        transport = AsyncCredstoreTransport(
            transport, cipher, require_encrypted=require_encrypted
        )
    return httpx.AsyncClient(auth=auth, base_url=base_url, transport=transport)
