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
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator, Collection, Generator, Iterable, Mapping
from typing import Any, Callable

from ._auth import AuthCore, CertificateSource, coerce_certificate
from ._certificate import ClientCertificate, Verify
from ._token import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, RetryPolicy, TransportFailure
from ._token import classify_failure as _classify

__all__ = ["AsyncMtlsTransport", "MtlsOAuth2", "MtlsTransport"]


class MtlsTransport(httpx.HTTPTransport):
    """An `httpx.HTTPTransport` whose connections present a client certificate.

    `verify` (True for the system store, a CA bundle path or CA PEM text) is the
    only trust anchor. Other keyword arguments (`http2`, `retries`, `limits`,
    `proxy`, ...) go to `httpx.HTTPTransport`.
    """

    def __init__(
        self,
        certificate: CertificateSource,
        key: str | bytes | None = None,
        *,
        password: str | bytes | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        self.certificate = coerce_certificate(certificate, key, password)
        super().__init__(verify=self.certificate.ssl_context(verify), **kwargs)

    def __repr__(self) -> str:
        return f"<MtlsTransport certificate={self.certificate!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("MtlsTransport holds a private key and cannot be pickled")


class AsyncMtlsTransport(httpx.AsyncHTTPTransport):
    """An `httpx.AsyncHTTPTransport` whose connections present a client certificate.

    The async twin of `MtlsTransport`, with the same arguments.
    """

    def __init__(
        self,
        certificate: CertificateSource,
        key: str | bytes | None = None,
        *,
        password: str | bytes | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        self.certificate = coerce_certificate(certificate, key, password)
        super().__init__(verify=self.certificate.ssl_context(verify), **kwargs)

    def __repr__(self) -> str:
        return f"<AsyncMtlsTransport certificate={self.certificate!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("AsyncMtlsTransport holds a private key and cannot be pickled")


class MtlsOAuth2(httpx.Auth):
    """OAuth2 client credentials over mTLS, as an httpx `auth=`, sync and async.

    The arguments are those of `mtls_auth.requests.MtlsOAuth2`. One instance can
    serve a `Client` and any number of `AsyncClient`s, on any event loops, at
    the same time; they share one cached token.

    On a 401 the token that was used is dropped and the request is sent once
    more with a new one, when its body can be replayed.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        token_url: str,
        client_id: str,
        certificate: CertificateSource,
        key: str | bytes | None = None,
        *,
        password: str | bytes | None = None,
        namespace: str | None = None,
        scope: str | Iterable[str] | None = None,
        params: Mapping[str, str] | None = None,
        verify: Verify = True,
        timeout: float = 10.0,
        leeway: float = 60.0,
        allowed_hosts: Collection[str] | None = None,
        allow_http_loopback: bool = False,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._core = AuthCore(
            token_url,
            client_id,
            certificate,
            key,
            password=password,
            namespace=namespace,
            scope=scope,
            params=params,
            verify=verify,
            timeout=timeout,
            leeway=leeway,
            allowed_hosts=allowed_hosts,
            allow_http_loopback=allow_http_loopback,
            retry=retry,
            clock=clock,
        )
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncClient
        ] = weakref.WeakKeyDictionary()

    # -- public, non-secret facts --------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._core.spec.client_id

    @property
    def token_url(self) -> str:
        return self._core.spec.token_url

    @property
    def namespace(self) -> str | None:
        return self._core.spec.namespace

    @property
    def certificate(self) -> ClientCertificate:
        return self._core.certificate

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
        if response.status_code == 401 and _replayable(request):
            core.invalidate(request.headers.get("Authorization"))
            request.headers["Authorization"] = core.token(self._send).authorization()
            yield request

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
        if response.status_code == 401 and _replayable(request):
            core.invalidate(request.headers.get("Authorization"))
            request.headers["Authorization"] = (await core.atoken(self._asend)).authorization()
            yield request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("MtlsOAuth2 drives sync_auth_flow and async_auth_flow directly")

    # -- the token endpoint ----------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        return self._core.certificate.ssl_context(self._core.verify)

    def _token_client(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    client = self._client = httpx.Client(
                        verify=self._ssl_context(), follow_redirects=False
                    )
        return client

    async def _async_token_client(self) -> httpx.AsyncClient:
        # AsyncClient connections belong to the loop that opened them, so each
        # event loop gets its own client. Loading the key and the CA store takes
        # milliseconds of CPU: done in a worker thread, not on the loop.
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            context = await loop.run_in_executor(None, self._ssl_context)
            with self._lock:
                client = self._async_clients.get(loop)
                if client is None:
                    client = httpx.AsyncClient(verify=context, follow_redirects=False)
                    self._async_clients[loop] = client
        return client

    def _send(self, request: HttpRequest) -> HttpResponse | TransportFailure:
        client = self._token_client()
        try:
            with client.stream(
                request.method,
                request.url,
                content=request.body,
                headers=request.headers,
                timeout=request.timeout,
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

    async def _asend(self, request: HttpRequest) -> HttpResponse | TransportFailure:
        client = await self._async_token_client()
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
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the internal clients: the current loop's async one and the sync one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.aclose()
        self.close()

    def __enter__(self) -> MtlsOAuth2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> MtlsOAuth2:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<MtlsOAuth2 {self._core.describe()}>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(
            "MtlsOAuth2 holds a private key and an access token and cannot be pickled; "
            "build a new one in the other process"
        )


def _lower(headers: httpx.Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _replayable(request: httpx.Request) -> bool:
    # Bytes content (including an empty body) is kept in a ByteStream and can be
    # sent again; a generator or file stream was consumed by the first attempt.
    return isinstance(request.stream, httpx.ByteStream)
