"""mtls-auth for `httpx2`, the maintained fork of httpx: the classes of `mtls_auth.httpx`.

::

    import httpx2
    from mtls_auth.httpx2 import MtlsOAuth2

    auth = MtlsOAuth2(token_url, client_id, certificate_pem, key_pem)
    httpx2.Client(auth=auth, transport=auth.transport())
    httpx2.AsyncClient(auth=auth, transport=auth.async_transport())

httpx2 keeps httpx's API under another module name, so the implementation is
`mtls_auth.httpx`'s, bound here to httpx2: the same
behaviour, sync and async (asyncio or trio). httpx2 needs Python 3.11 or newer
(``pip install 'mtls-auth[httpx2]'``).
"""

from __future__ import annotations

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - exercised where httpx2 is not installed
    raise ImportError("mtls_auth.httpx2 needs httpx2: pip install mtls-auth[httpx2]") from exc

from typing import Any

from ._httpx_common import AsyncTransport, AuthFlows, SyncTransport

__all__ = ["AsyncMtlsTransport", "MtlsOAuth2", "MtlsTransport"]


class MtlsTransport(SyncTransport, httpx2.BaseTransport):
    """An httpx2 transport whose connections present a client certificate.

    The arguments are those of `mtls_auth.httpx.MtlsTransport`; other keyword
    arguments (`http2`, `retries`, `limits`, `proxy`, ...) go to the
    `httpx2.HTTPTransport` underneath.
    """

    _library = httpx2


class AsyncMtlsTransport(AsyncTransport, httpx2.AsyncBaseTransport):
    """The async `MtlsTransport`, with the same arguments (`auth.async_transport()`)."""

    _library = httpx2


class MtlsOAuth2(AuthFlows, httpx2.Auth):
    """OAuth2 client credentials over mTLS, as an httpx2 `auth=`, sync and async.

    The arguments and behaviour are those of `mtls_auth.httpx.MtlsOAuth2`: one
    instance serves a `Client` and any number of `AsyncClient`s, on any event
    loops, sharing one cached token; a 401 drops the token used and resends
    once with a new one when the body can be replayed.
    """

    _library = httpx2
    requires_request_body = False
    requires_response_body = False

    def transport(self, **kwargs: Any) -> MtlsTransport:
        """An `MtlsTransport` presenting this auth's certificate, following its rotations."""
        return MtlsTransport(self._live().contexts, **kwargs)

    def async_transport(self, **kwargs: Any) -> AsyncMtlsTransport:
        """An `AsyncMtlsTransport` presenting this auth's certificate, following rotations."""
        return AsyncMtlsTransport(self._live().contexts, **kwargs)
