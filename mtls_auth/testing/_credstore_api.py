"""A Credential Store-shaped credentials API for the loopback test server.

It speaks the ``/api/v1/credentials`` REST shape (passwords, keys, keyrings,
each in the namespace the bearer token was issued for) and, like the real
service with an ``oauth:mtls`` binding, encrypts payloads: requests must arrive
as JWE compact (RSA-OAEP-256, A256GCM, ``iat`` in the protected header,
``Content-Type: application/jose``) encrypted to the server key, and responses
go back encrypted to the client's key.

The JWE here is written directly on `cryptography` primitives (RSA-OAEP with
SHA-256, AES-256-GCM), on purpose independent of the JOSE library the client
uses, so the tests prove interoperability rather than a library agreeing with
itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._redact import safe_repr

__all__ = ["CREDENTIALS_PATH", "CredstoreApi", "jwe_decrypt", "jwe_encrypt"]

CREDENTIALS_PATH = "/api/v1/credentials"
JOSE = "application/jose"
_JSON = "application/json"
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_KINDS = {"password": "password", "key": "key", "keyring": "keyring"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JweError(ValueError):
    """A payload the test server refuses (its message goes into a 400 body)."""


def jwe_encrypt(plaintext: bytes, public_key: rsa.RSAPublicKey, *, iat: float) -> bytes:
    """JWE compact, RSA-OAEP-256 + A256GCM, with `iat` in the protected header."""
    header = _b64url(
        json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(iat)}).encode()
    )
    cek = os.urandom(32)
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, header.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:]
    parts = [header, _b64url(public_key.encrypt(cek, _OAEP)), _b64url(iv)]
    parts += [_b64url(ciphertext), _b64url(tag)]
    return ".".join(parts).encode("ascii")


def jwe_decrypt(
    compact: bytes, private_key: rsa.RSAPrivateKey, *, now: float, max_age: float
) -> bytes:
    """Decrypt and check a JWE compact payload; raise JweError with a reason."""
    try:
        header_b64, key_b64, iv_b64, ct_b64, tag_b64 = compact.decode("ascii").strip().split(".")
        header = json.loads(_unb64url(header_b64))
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise JweError("not a JWE compact serialisation") from exc
    if not isinstance(header, dict):
        raise JweError("protected header is not an object")
    if header.get("alg") != "RSA-OAEP-256" or header.get("enc") != "A256GCM":
        raise JweError("alg must be RSA-OAEP-256 and enc A256GCM")
    iat = header.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, (int, float)):
        raise JweError("iat missing from the protected header")
    if abs(now - float(iat)) > max_age:
        raise JweError("iat outside the accepted window")
    try:
        cek = private_key.decrypt(_unb64url(key_b64), _OAEP)
        return AESGCM(cek).decrypt(
            _unb64url(iv_b64), _unb64url(ct_b64) + _unb64url(tag_b64), header_b64.encode()
        )
    except (ValueError, InvalidTag, binascii.Error) as exc:
        raise JweError("decryption failed") from exc


def _der_b64_private(key: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    ).decode("ascii")


def _der_b64_public(key: rsa.RSAPublicKey) -> str:
    return base64.b64encode(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode("ascii")


@dataclass(frozen=True)
class ApiResponse:
    status: int
    content_type: str
    body: bytes


@safe_repr
class CredstoreApi:
    """Stored credentials per namespace, and the payload keys of one instance.

    `encryption_block()` is what a binding carries (base64 DER keys);
    `use_client_public_key` models an instance created with the client's own
    public key (the binding then has no ``client_private_key``). Switches:
    `encrypt` (payload encryption on, as by default), `max_age` for ``iat``,
    and `response_iat_offset` (seconds added to the ``iat`` of responses, to
    test stale or future payloads).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.encrypt = True
        self.max_age = 120.0
        self.response_iat_offset = 0.0
        self._server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._client_key: rsa.RSAPrivateKey | None = rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        self._client_public: rsa.RSAPublicKey = self._client_key.public_key()
        self._lock = threading.Lock()
        self._store: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, content type

    def encryption_block(self) -> dict[str, str]:
        block = {"server_public_key": _der_b64_public(self._server_key.public_key())}
        if self._client_key is not None:
            block["client_private_key"] = _der_b64_private(self._client_key)
        return block

    def use_client_public_key(self, public_key: rsa.RSAPublicKey) -> None:
        """Encrypt responses to this key; the binding will carry no private key."""
        self._client_key = None
        self._client_public = public_key

    @property
    def server_private_key(self) -> rsa.RSAPrivateKey:
        return self._server_key

    # -- the REST API ---------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        content_type: str | None,
        body: bytes,
        namespace: str,
    ) -> ApiResponse:
        with self._lock:
            self.requests.append((method, path, content_type))
        kind = path[len(CREDENTIALS_PATH) :].strip("/")
        if kind.endswith("s") and kind[:-1] in _KINDS and method == "GET":
            return self._reply(200, self._list(namespace, kind[:-1]))
        if kind not in _KINDS:
            return self._error(404, f"unknown credential type {kind!r}")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if method == "GET":
            name = params.get("name")
            if not name:
                return self._error(400, "name is required")
            with self._lock:
                versions = self._store.get((namespace, kind, name))
            if not versions:
                return self._error(404, f"no {kind} named {name!r}")
            if kind == "keyring":
                return self._reply(200, {"name": name, "type": "keyring", "keys": versions})
            return self._reply(200, versions[-1])
        if method == "DELETE":
            name = params.get("name")
            with self._lock:
                found = self._store.pop((namespace, kind, name or ""), None)
            return ApiResponse(204, _JSON, b"") if found else self._error(404, "not found")
        if method in ("POST", "PUT"):
            try:
                document = self._read(content_type, body)
            except JweError as exc:
                return self._error(400, f"payload rejected: {exc}")
            if not isinstance(document, dict) or not isinstance(document.get("name"), str):
                return self._error(400, "a JSON object with a name is required")
            name = document["name"]
            record = {
                "id": str(uuid.uuid4()),
                "name": name,
                "type": kind,
                "value": document.get("value"),
                "username": document.get("username"),
                "format": document.get("format"),
                "metadata": document.get("metadata"),
                "modifiedAt": int(self.clock()),
                "version": 1,
            }
            with self._lock:
                versions = self._store.setdefault((namespace, kind, name), [])
                record["version"] = len(versions) + 1
                if kind == "keyring":
                    versions.append(record)
                else:
                    versions[:] = [record]
            return self._reply(201 if method == "POST" else 200, record)
        return self._error(405, f"{method} not allowed")

    def _list(self, namespace: str, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"name": name, "type": k, "modifiedAt": v[-1]["modifiedAt"]}
                for (ns, k, name), v in sorted(self._store.items())
                if ns == namespace and k == kind
            ]

    def _read(self, content_type: str | None, body: bytes) -> Any:
        media = (content_type or "").split(";")[0].strip().lower()
        if self.encrypt:
            if media != JOSE:
                raise JweError(f"Content-Type must be {JOSE}")
            body = jwe_decrypt(body, self._server_key, now=self.clock(), max_age=self.max_age)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise JweError("the payload is not JSON") from exc

    def _reply(self, status: int, document: Any) -> ApiResponse:
        plain = json.dumps(document).encode("utf-8")
        if not self.encrypt:
            return ApiResponse(status, _JSON, plain)
        iat = self.clock() + self.response_iat_offset
        return ApiResponse(status, JOSE, jwe_encrypt(plain, self._client_public, iat=iat))

    @staticmethod
    def _error(status: int, message: str) -> ApiResponse:
        # Errors are plain JSON, as the service sends them.
        return ApiResponse(status, _JSON, json.dumps({"message": message}).encode())
