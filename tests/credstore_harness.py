"""Credential Store clients for the payload tests, on the shared three-client harness.

`open_session(client, binding, namespace, verify)` is the library's one-call
constructor for the client's library (``credstore_session``,
``credstore_client``, ``async_credstore_client``), wrapped by `Client.adopt`; with
``tamper=`` or ``before=`` it is a hand-built stack with a tampering layer under
the encryption, on the wire side. JWE helpers build and take apart compact
JWEs with raw `cryptography` primitives, independent of the library's JOSE code.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Callable

import httpx
import requests
from clients import Client, Session
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth.credstore import PayloadCipher

JOSE = "application/jose"

Tamper = Callable[[bytes], bytes]


# -- keys and JWE helpers ----------------------------------------------------------------


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pkcs8_der_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode("ascii")


def pkcs8_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def spki_der_b64(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("ascii")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwe_header(compact: bytes | str) -> dict[str, Any]:
    if isinstance(compact, str):
        compact = compact.encode("ascii")
    header: dict[str, Any] = json.loads(unb64url(compact.split(b".")[0]))
    return header


def hand_built_jwe(
    header: dict[str, Any],
    plaintext: bytes,
    public_key: rsa.RSAPublicKey,
    *,
    oaep_hash: hashes.HashAlgorithm | None = None,
) -> bytes:
    """JWE compact with any header, the key wrapped with RSA-OAEP over `oaep_hash`."""
    algorithm = oaep_hash or hashes.SHA256()
    protected = b64url(json.dumps(header).encode())
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    wrapped = public_key.encrypt(
        cek, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)
    )
    parts = [protected, b64url(wrapped), b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])]
    return ".".join(parts).encode("ascii")


def flip(index: int) -> Tamper:
    """A tamper that flips one bit in JWE segment `index` (3 ciphertext, 4 tag)."""

    def tamper(body: bytes) -> bytes:
        parts = body.split(b".")
        raw = unb64url(parts[index])
        parts[index] = b64url(bytes([raw[0] ^ 0x01]) + raw[1:]).encode("ascii")
        return b".".join(parts)

    return tamper


def not_jwe(body: bytes) -> bytes:
    return json.dumps({"name": "db", "value": "plain"}).encode()


# -- one synchronous facade over the three clients -------------------------------------------


class _TamperingMtlsAdapter(mrequests.MtlsAdapter):
    """Alters `application/jose` response bodies as they come off the wire."""

    tamper: Tamper | None = None
    before: Callable[[Any], Any] | None = None

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        outgoing = request if self.before is None else self.before(request)
        response = super().send(outgoing, *args, **kwargs)
        response.request = request  # what the session and the auth's hook know
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        if self.tamper is not None and media == JOSE:
            response._content = self.tamper(response.content)
        return response


class _TamperingCredstoreAdapter(mrequests.CredstoreAdapter, _TamperingMtlsAdapter):
    """CredstoreAdapter whose `super().send` is the tampering one (by the MRO)."""


def _tampered(response: httpx.Response, request: httpx.Request, tamper: Tamper) -> httpx.Response:
    media = response.headers.get("Content-Type", "").split(";")[0].strip()
    body = response.content
    if media == JOSE:
        body = tamper(body)
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-length"]
    return httpx.Response(response.status_code, headers=headers, content=body, request=request)


class _TamperingTransport(httpx.BaseTransport):
    def __init__(
        self, inner: httpx.BaseTransport, tamper: Tamper, before: Callable[[Any], Any] | None
    ) -> None:
        self.inner, self.tamper, self.before = inner, tamper, before

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = request if self.before is None else self.before(request)
        response = self.inner.handle_request(outgoing)
        try:
            response.read()
        finally:
            response.close()
        return _tampered(response, request, self.tamper)

    def close(self) -> None:
        self.inner.close()


class _AsyncTamperingTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        tamper: Tamper,
        before: Callable[[Any], Any] | None,
    ) -> None:
        self.inner, self.tamper, self.before = inner, tamper, before

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = request if self.before is None else self.before(request)
        response = await self.inner.handle_async_request(outgoing)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _tampered(response, request, self.tamper)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}/"


def open_session(
    client: Client,
    binding: dict[str, Any],
    namespace: str,
    verify: str,
    *,
    tamper: Tamper | None = None,
    before: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Session:
    """The one-call constructor of `client`'s library, or a hand-built one with a tampering layer.

    The layer sits under the encryption, on the wire side: `tamper` alters
    `application/jose` response bodies, `before` sees each request as it is
    about to be sent and returns the one to send instead (a copy, so the
    clients' own request objects are left as they made them). The session and
    its auth are closed when `client`'s fixture ends.
    """
    if tamper is None and before is None:
        make = {
            "requests": mrequests.credstore_session,
            "httpx-sync": mhttpx.credstore_client,
            "httpx-async": mhttpx.async_credstore_client,
        }[client.name]
        made = make(binding, namespace=namespace, verify=verify, **kwargs)
        return client.adopt(made, made.auth)
    tamper = tamper or (lambda body: body)
    require = kwargs.pop("require_encrypted", True)
    cipher = PayloadCipher.from_encryption(binding["encryption"], **kwargs)
    base_url = binding["url"].rstrip("/") + "/"
    auth = client.from_binding(binding, namespace=namespace, verify=verify)
    if client.name == "requests":
        session = mrequests.CredstoreSession(binding["url"])
        session.auth = auth
        adapter = _TamperingCredstoreAdapter(
            auth.certificate, cipher=cipher, verify=verify, require_encrypted=require
        )
        adapter.tamper, adapter.before = tamper, before
        session.mount(_origin(binding["url"]), adapter)
        return client.adopt(session, auth)
    if not client.is_async:
        transport = mhttpx.CredstoreTransport(
            _TamperingTransport(client.presenter(auth), tamper, before),
            cipher,
            require_encrypted=require,
        )
        raw = httpx.Client(auth=auth, base_url=base_url, transport=transport)
        return client.adopt(raw, auth)
    atransport = mhttpx.AsyncCredstoreTransport(
        _AsyncTamperingTransport(client.presenter(auth), tamper, before),
        cipher,
        require_encrypted=require,
    )
    raw = httpx.AsyncClient(auth=auth, base_url=base_url, transport=atransport)
    return client.adopt(raw, auth)
