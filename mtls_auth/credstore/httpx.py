"""The Credential Store client for `httpx`: encrypting transports and ready clients.

::

    from mtls_auth.credstore.httpx import credstore_client

    with credstore_client("credstore-key.json", namespace="ns1") as client:
        client.post("password", json={"name": "db", "value": "s3cret"})
        client.get("password", params={"name": "db"}).json()["value"]
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import httpx

from .._binding import credstore_api_url
from .._redact import aguarded, guarded, redact, safe_repr
from .._sources import BindingInput
from .._tls import Verify
from ..httpx import MtlsOAuth2
from ._payload import JOSE_CONTENT_TYPE, PayloadCipher, open_response, seal_request

_T = TypeVar("_T")

__all__ = [
    "AsyncCredstoreTransport",
    "CredstoreTransport",
    "async_credstore_client",
    "credstore_client",
]

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


@safe_repr
class _Sealing(Generic[_T]):
    """What both Credential Store transports hold: the wrapped transport and the cipher."""

    def __init__(
        self, transport: _T, cipher: PayloadCipher, *, require_encrypted: bool = True
    ) -> None:
        self.transport = transport
        self.cipher = cipher
        self.require_encrypted = require_encrypted

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.transport!r} cipher={self.cipher!r}>"


class CredstoreTransport(_Sealing[httpx.BaseTransport], httpx.BaseTransport):
    """Wraps a transport to encrypt and decrypt Credential Store payloads.

    Request bodies leave as JWE (`application/jose`) encrypted with the
    `cipher`'s server key; `application/jose` responses are decrypted, so the
    caller sees `application/json`. A successful response that is not
    encrypted raises `PayloadError` unless `require_encrypted=False`.
    """

    @guarded  # an error leaves no payload or bearer token in these frames
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request with its JSON payload encrypted, and decrypt the response."""
        sealed = _sealed(request, self.cipher, request.read())
        response = self.transport.handle_request(sealed)
        try:
            response.read()
        finally:
            response.close()
        return _opened(response, sealed, self.cipher, self.require_encrypted)

    def close(self) -> None:
        """Close the transport underneath."""
        self.transport.close()


class AsyncCredstoreTransport(_Sealing[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """The async `CredstoreTransport`, with the same arguments."""

    @aguarded
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request with its JSON payload encrypted, and decrypt the response."""
        sealed = _sealed(request, self.cipher, await request.aread())
        response = await self.transport.handle_async_request(sealed)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _opened(response, sealed, self.cipher, self.require_encrypted)

    async def aclose(self) -> None:
        """Close the transport underneath."""
        await self.transport.aclose()


def _credstore_parts(
    binding: BindingInput,
    namespace: str,
    verify: Verify,
    client_private_key: str | bytes | None,
    kwargs: dict[str, Any],
) -> tuple[MtlsOAuth2, str, PayloadCipher | None]:
    binding = redact(binding)  # frames captured on error show no key
    auth = MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify, **kwargs)
    parsed = auth._live().state.binding
    url = credstore_api_url(parsed, "credstore_client")
    assert parsed is not None
    cipher = None
    if parsed.encryption or client_private_key is not None:
        cipher = PayloadCipher.from_encryption(
            parsed.encryption, client_private_key=client_private_key
        )
    return auth, url.rstrip("/") + "/", cipher


@guarded
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


@guarded
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
        transport = AsyncCredstoreTransport(transport, cipher, require_encrypted=require_encrypted)
    return httpx.AsyncClient(auth=auth, base_url=base_url, transport=transport)
