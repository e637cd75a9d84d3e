"""mtls-auth for `httpx`: one `MtlsOAuth2` for `Client` and `AsyncClient`, and mTLS transports.

::

    import httpx
    from mtls_auth.httpx import MtlsOAuth2, MtlsTransport, AsyncMtlsTransport

    auth = MtlsOAuth2(token_url, client_id, certificate_pem, key_pem)
    httpx.Client(auth=auth)
    httpx.AsyncClient(auth=auth)
    # for resources that only accept certificate-bound tokens (RFC 8705):
    httpx.Client(auth=auth, transport=MtlsTransport(certificate_pem, key_pem))

Async code runs under asyncio or trio. The implementation is shared with
`mtls_auth.httpx2`; this module binds it to httpx.
The Credential Store client (`CredstoreTransport`, `credstore_client`) lives
in `mtls_auth.credstore.httpx`; its names are importable from here too.
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the core-only tox env
    raise ImportError("mtls_auth.httpx needs httpx: pip install mtls-auth[httpx]") from exc

from typing import TYPE_CHECKING, Any

from ._httpx_common import AsyncTransport, AuthFlows, SyncTransport

if TYPE_CHECKING:
    from .credstore.httpx import AsyncCredstoreTransport as AsyncCredstoreTransport
    from .credstore.httpx import CredstoreTransport as CredstoreTransport
    from .credstore.httpx import async_credstore_client as async_credstore_client
    from .credstore.httpx import credstore_client as credstore_client

__all__ = ["AsyncMtlsTransport", "MtlsOAuth2", "MtlsTransport"]

_CREDSTORE_NAMES = frozenset(
    {"AsyncCredstoreTransport", "CredstoreTransport", "async_credstore_client", "credstore_client"}
)


def __getattr__(name: str) -> Any:
    # The Credential Store client moved to mtls_auth.credstore.httpx; these
    # names stay importable from here (loaded on first use: it imports us).
    if name in _CREDSTORE_NAMES:
        from .credstore import httpx as credstore_httpx

        return getattr(credstore_httpx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MtlsTransport(SyncTransport, httpx.BaseTransport):
    """An httpx transport whose connections present a client certificate.

    `certificate` is PEM text (then `key` is the PEM private key) or a
    `ClientCertificate`, presented for the transport's whole life;
    `auth.transport()` makes one that follows `auth`'s certificate through its
    rotations instead. `verify` (True for the system store, a CA bundle path or
    CA PEM text) is the only trust anchor. Other keyword arguments (`http2`,
    `retries`, `limits`, `proxy`, ...) go to the `httpx.HTTPTransport` underneath.
    """

    _library = httpx


class AsyncMtlsTransport(AsyncTransport, httpx.AsyncBaseTransport):
    """The async `MtlsTransport`, with the same arguments (`auth.async_transport()`)."""

    _library = httpx


class MtlsOAuth2(AuthFlows, httpx.Auth):
    """OAuth2 client credentials over mTLS, as an httpx `auth=`, sync and async.

    The arguments are those of `mtls_auth.requests.MtlsOAuth2`. One instance can
    serve a `Client` and any number of `AsyncClient`s, on any event loops
    (asyncio or trio), at the same time; they share one cached token.

    On a 401 the token that was used is dropped and the request is sent once
    more with a new one, when its body can be replayed.
    """

    _library = httpx
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
