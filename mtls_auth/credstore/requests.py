"""The Credential Store client for `requests`: an encrypting adapter and a ready session.

::

    from mtls_auth.credstore.requests import credstore_session

    with credstore_session("credstore-key.json", namespace="ns1") as session:
        session.post("password", json={"name": "db", "value": "s3cret"})
        session.get("password", params={"name": "db"}).json()["value"]
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import requests

from .._binding import credstore_api_url
from .._certificate import CertificateSource
from .._errors import PayloadError
from .._redact import Secret, guarded, redact, safe_repr
from .._rotation import CertificateFeed
from .._sources import BindingInput
from .._tls import Verify
from ..requests import MtlsAdapter, MtlsOAuth2
from ._payload import JOSE_CONTENT_TYPE, PayloadCipher, open_response, seal_request

__all__ = ["CredstoreAdapter", "CredstoreSession", "credstore_session"]


class CredstoreAdapter(MtlsAdapter):
    """An `MtlsAdapter` that encrypts and decrypts Credential Store payloads.

    Request bodies leave as JWE (`application/jose`) encrypted with the
    `cipher`'s server key; `application/jose` responses are decrypted, so the
    caller sees `application/json` and `response.json()` just works. A
    successful response that is not encrypted raises `PayloadError` unless
    `require_encrypted=False`.
    """

    @guarded
    def __init__(
        self,
        certificate: CertificateSource | CertificateFeed,
        key: str | bytes | Secret | None = None,
        *,
        cipher: PayloadCipher,
        password: str | bytes | Secret | None = None,
        verify: Verify = True,
        require_encrypted: bool = True,
        **kwargs: Any,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        self.cipher = cipher
        self.require_encrypted = require_encrypted
        super().__init__(certificate, key, password=password, verify=verify, **kwargs)

    @guarded  # an error leaves no payload or bearer token in these frames
    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        """Send the request with its JSON payload encrypted, and decrypt the response."""
        body = request.body
        if body is not None and not isinstance(body, (bytes, str)):
            raise PayloadError(
                "a streamed or file request body cannot be encrypted for Credential Store: "
                "pass bytes, str or json="
            )
        raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        sealed = seal_request(self.cipher, raw, request.headers.get("Content-Type"))
        if sealed is not None:
            request.body = sealed
            request.headers["Content-Type"] = JOSE_CONTENT_TYPE
            request.headers["Content-Length"] = str(len(sealed))
        response = super().send(request, *args, **kwargs)
        opened = open_response(
            self.cipher,
            response.status_code,
            response.headers.get("Content-Type"),
            response.content,
            require_encrypted=self.require_encrypted,
        )
        if opened is not None:
            response._content = opened
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(opened))
            response.headers.pop("Content-Encoding", None)
            response.encoding = "utf-8"
        return response

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} cipher={getattr(self, 'cipher', None)!r}>"


@safe_repr
class CredstoreSession(requests.Session):
    """A `requests.Session` whose relative URLs resolve against `base_url`.

    Made by `credstore_session`: ``session.get("password", params={"name": "db"})``
    calls ``<base_url>/password``.
    """

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/") + "/"

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        """`requests.Session.request` on the credentials API: relative URLs join the binding's base
        URL.
        """
        if isinstance(url, bytes):
            url = url.decode("ascii")
        if "://" not in url:
            url = self.base_url + url.lstrip("/")
        return super().request(method, url, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<CredstoreSession {self.base_url} auth={self.auth!r}>"


@guarded
def credstore_session(
    binding: BindingInput,
    *,
    namespace: str,
    verify: Verify = True,
    client_private_key: str | bytes | None = None,
    require_encrypted: bool = True,
    **kwargs: Any,
) -> CredstoreSession:
    """A session for the Credential Store credentials API in one call.

    From an ``oauth:mtls`` binding: the auth (tokens for `namespace`), payload
    encryption from the binding's ``encryption`` block (`client_private_key`
    when the instance was created with your own public key), and the binding's
    ``url`` as the base for relative URLs::

        with credstore_session("credstore-key.json", namespace="ns1") as s:
            s.post("password", json={"name": "db", "value": "s3cret"})
            s.get("password", params={"name": "db"}).json()["value"]
    """
    binding = redact(binding)  # frames captured on error show no key
    auth = MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify, **kwargs)
    binding_used = auth._live().state.binding
    url = credstore_api_url(binding_used, "credstore_session")
    assert binding_used is not None
    session = CredstoreSession(url)
    session.auth = auth
    feed = auth._live().contexts  # the adapter follows the auth's certificate rotations
    if binding_used.encryption or client_private_key is not None:
        cipher = PayloadCipher.from_encryption(
            binding_used.encryption, client_private_key=client_private_key
        )
        adapter: MtlsAdapter = CredstoreAdapter(
            feed, cipher=cipher, verify=verify, require_encrypted=require_encrypted
        )
    else:
        adapter = MtlsAdapter(feed, verify=verify)
    session.mount(_origin(url), adapter)
    return session


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"
