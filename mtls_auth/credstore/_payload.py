"""Credential Store payload encryption: JWE compact, RSA-OAEP-256 and A256GCM.

With an ``oauth:mtls`` binding, SAP Credential Store encrypts payloads by
default. Request bodies go out as JWE compact serialisations encrypted to the
service's `server_public_key` (base64 DER SubjectPublicKeyInfo), with
``Content-Type: application/jose``; responses come back encrypted to the
client's key, whose private half is the binding's `client_private_key`
(base64 DER PKCS#8), or the caller's own key when the binding was created
with a client-supplied public key. The protected header carries ``iat``; a
payload issued more than `max_age` seconds ago (the service uses 2 minutes),
or that far in the future, is rejected.

The JOSE work is done by `joserfc` (the ``credstore`` extra), with the
algorithms pinned to exactly RSA-OAEP-256 and A256GCM: a payload with any other
``alg`` or ``enc`` is refused. Errors are `PayloadError`s and never contain a
plaintext payload or key material.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Union

from .._errors import PayloadError
from .._redact import guarded, safe_repr
from .._x509 import signs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["JOSE_CONTENT_TYPE", "PayloadCipher", "available", "open_response", "seal_request"]

JOSE_CONTENT_TYPE = "application/jose"
_ALG = "RSA-OAEP-256"
_ENC = "A256GCM"

KeyInput = Union[str, bytes, "rsa.RSAPublicKey", "rsa.RSAPrivateKey"]


#: joserfc before 1.7.2 computes the AES-GCM additional data from a re-encoded
#: protected header instead of the header as received, so a payload from any
#: other JOSE implementation fails to decrypt. 1.7.2 needs Python 3.10.
_JOSERFC_MIN = (1, 7, 2)


class JoseMissing(PayloadError, ImportError):
    """joserfc (the ``credstore`` extra) is missing or too old for payload encryption."""


def _joserfc() -> Any:
    try:
        import joserfc
        from joserfc import jwe
    except ImportError:
        raise JoseMissing(
            "Credential Store payload encryption needs joserfc 1.7.2 or newer (Python 3.10+): "
            "pip install mtls-auth[credstore]"
        ) from None
    version = tuple(int(p) for p in re.findall(r"\d+", getattr(joserfc, "__version__", "0"))[:3])
    if version < _JOSERFC_MIN:
        raise JoseMissing(
            f"Credential Store payload encryption needs joserfc >= 1.7.2 (found "
            f"{getattr(joserfc, '__version__', 'unknown')}, which cannot decrypt payloads from "
            "other JOSE implementations); it needs Python 3.10 or newer"
        )
    return jwe


def available() -> bool:
    """Whether payload encryption can work here (joserfc >= 1.7.2 installed)."""
    try:
        _joserfc()
    except ImportError:
        return False
    return True


def _der_or_pem(value: str | bytes, what: str) -> tuple[bytes, bool]:
    """Key bytes and whether they are PEM (else DER from base64)."""
    data = value.encode("ascii", errors="replace") if isinstance(value, str) else bytes(value)
    if b"-----BEGIN" in data:
        return data.replace(b"\\n", b"\n"), True
    try:
        return base64.b64decode(b"".join(data.split()), validate=True), False
    except (binascii.Error, ValueError):
        raise PayloadError(f"the {what} is neither PEM nor base64 DER") from None


def _public_key(value: KeyInput) -> rsa.RSAPublicKey:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        load_der_public_key,
        load_pem_public_key,
    )

    if isinstance(value, rsa.RSAPublicKey):
        return value
    if isinstance(value, rsa.RSAPrivateKey):
        return value.public_key()
    data, pem = _der_or_pem(value, "server public key")
    try:
        key = load_pem_public_key(data) if pem else load_der_public_key(data)
    except ValueError:
        raise PayloadError(
            "the server public key (encryption.server_public_key) could not be decoded"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PayloadError("the server public key is not an RSA key (RSA-OAEP-256 needs one)")
    return key


def _private_key(value: KeyInput) -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        load_der_private_key,
        load_pem_private_key,
    )

    if isinstance(value, rsa.RSAPrivateKey):
        return value
    if isinstance(value, rsa.RSAPublicKey):
        raise PayloadError("a public key was given where the client private key is needed")
    data, pem = _der_or_pem(value, "client private key")
    key: object = None
    try:
        # Not cryptography's full RSA check (primality of p and q, about 40 ms
        # for each binding loaded): this key is the binding's own, not a
        # stranger's, and `signs` proves with one private operation (the one
        # decryption also uses) that its parts fit together.
        load = load_pem_private_key if pem else load_der_private_key
        loaded = load(data, None, unsafe_skip_rsa_key_validation=True)
        if not isinstance(loaded, rsa.RSAPrivateKey) or signs(loaded):
            key = loaded
        del loaded
    except (ValueError, TypeError):
        # Outside the except clause's message: cryptography's text stays out.
        pass
    if key is None:
        raise PayloadError(
            "the client private key (encryption.client_private_key) could not be decoded"
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PayloadError("the client private key is not an RSA key (RSA-OAEP-256 needs one)")
    return key


@safe_repr
class PayloadCipher:
    """Encrypts request payloads and decrypts responses for one Credential Store binding.

    `server_public_key` encrypts what is sent; `client_private_key` decrypts
    what comes back (both base64 DER as in the binding, PEM, or `cryptography`
    RSA key objects). Without `client_private_key` the cipher can only encrypt.
    `max_age` is the accepted age of a response's ``iat`` in seconds, in both
    directions; `clock` (seconds since the epoch) is injectable for tests.
    """

    __slots__ = ("_clock", "_private", "_public", "_registry", "max_age")

    @guarded
    def __init__(
        self,
        server_public_key: KeyInput,
        client_private_key: KeyInput | None = None,
        *,
        max_age: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        jwe = _joserfc()
        from joserfc.jwk import RSAKey

        self._public = RSAKey.import_key(_public_key(server_public_key))
        self._private = (
            None
            if client_private_key is None
            else RSAKey.import_key(_private_key(client_private_key))
        )
        # Algorithms pinned; header parameters we do not know (jti, exp, private
        # ones) are ignored as RFC 7516 section 4 requires, and iat is checked
        # here rather than typed by the registry (RFC 7519 allows a fraction).
        self._registry = jwe.JWERegistry(algorithms=[_ALG, _ENC], strict_check_header=False)
        self.max_age = max_age
        self._clock = clock

    @classmethod
    @guarded
    def from_encryption(
        cls,
        encryption: Mapping[str, str],
        *,
        client_private_key: KeyInput | None = None,
        **kwargs: Any,
    ) -> PayloadCipher:
        """A cipher from a binding's ``encryption`` block (or the caller's own key)."""
        public = encryption.get("server_public_key")
        if not public:
            raise PayloadError(
                "the binding has no encryption.server_public_key: payload encryption "
                "is off for this instance, or the binding is incomplete"
            )
        private = client_private_key or encryption.get("client_private_key")
        if not private:
            raise PayloadError(
                "the binding has no encryption.client_private_key (the instance was "
                "created with your own public key): pass client_private_key= with "
                "your private key"
            )
        return cls(public, private, **kwargs)

    @classmethod
    @guarded
    def from_binding(
        cls, binding: Any, *, client_private_key: KeyInput | None = None, **kwargs: Any
    ) -> PayloadCipher:
        """A cipher from a Credential Store binding (mapping, JSON text, file or directory)."""
        from .._redact import redact
        from .._sources import BindingSource

        parsed = BindingSource.from_input(redact(binding)).read()
        return cls.from_encryption(
            parsed.encryption, client_private_key=client_private_key, **kwargs
        )

    @property
    def can_decrypt(self) -> bool:
        """Whether this cipher holds the private key, so it can decrypt (not only encrypt)."""
        return self._private is not None

    @guarded
    def encrypt(self, plaintext: bytes) -> bytes:
        """`plaintext` as a JWE compact serialisation for the service."""
        jwe = _joserfc()
        header = {"alg": _ALG, "enc": _ENC, "iat": int(self._clock())}
        try:
            compact: str = jwe.encrypt_compact(
                header, plaintext, self._public, registry=self._registry
            )
        except Exception as exc:  # noqa: BLE001 - joserfc has no common base; message is generic
            raise PayloadError(
                f"the request payload could not be encrypted ({type(exc).__name__})"
            ) from None
        return compact.encode("ascii")

    @guarded
    def decrypt(self, payload: bytes | str) -> bytes:
        """The plaintext of a JWE compact payload from the service, freshness checked."""
        if self._private is None:
            raise PayloadError("cannot decrypt: no client private key (pass client_private_key=)")
        jwe = _joserfc()
        from joserfc.errors import JoseError

        data = payload.strip() if isinstance(payload, bytes) else payload.strip().encode()
        if data.count(b".") != 4:
            raise PayloadError(
                "expected an encrypted payload (JWE compact, application/jose) but the "
                f"body is not one ({len(data)} bytes)"
            )
        failure: str | None = None
        try:
            result = jwe.decrypt_compact(data, self._private, registry=self._registry)
        except JoseError as exc:
            failure = _explain(exc)
        except (ValueError, TypeError, binascii.Error) as exc:
            failure = f"it is malformed ({type(exc).__name__})"
        if failure is not None:
            raise PayloadError(f"the encrypted payload could not be decrypted: {failure}")
        self._check_iat(result.protected.get("iat"))
        plaintext: bytes = result.plaintext
        return plaintext

    def _check_iat(self, iat: object) -> None:
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise PayloadError(
                "the encrypted payload has no numeric iat in its protected header; "
                "its freshness cannot be checked"
            )
        seconds = float(iat) / 1000.0 if iat > 1e11 else float(iat)  # milliseconds, too
        age = self._clock() - seconds
        if age > self.max_age:
            raise PayloadError(
                f"the encrypted payload is {age:.0f}s old (iat), more than the "
                f"{self.max_age:.0f}s allowed: a replay, or a clock that is off"
            )
        if -age > self.max_age:
            raise PayloadError(
                f"the encrypted payload's iat is {-age:.0f}s in the future, more than the "
                f"{self.max_age:.0f}s allowed: check the system clock"
            )

    def __repr__(self) -> str:
        mode = "encrypt+decrypt" if self._private is not None else "encrypt only"
        return f"<PayloadCipher {_ALG}/{_ENC} {mode} max_age={self.max_age:.0f}s>"

    def __reduce__(self) -> Any:
        raise TypeError("PayloadCipher holds a private key and cannot be pickled")


def _explain(exc: Exception) -> str:
    name = type(exc).__name__
    description = str(getattr(exc, "description", "") or "")
    if name == "DecodeError" and "decryption failed" in description.lower():
        return "it was encrypted for another key (wrong client private key?)"
    if name == "DecodeError":
        return "it was tampered with or truncated (authentication failed)"
    if name in ("UnsupportedAlgorithmError", "UnsupportedHeaderError", "MissingAlgorithmError"):
        return f"it does not use exactly {_ALG} with {_ENC} ({name})"
    return name


# -- what the transports do with a request and a response -----------------------------


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def seal_request(cipher: PayloadCipher, body: bytes, content_type: str | None) -> bytes | None:
    """The encrypted body to send, or None when the request goes out as it is.

    An empty body, or one already marked `application/jose`, is left alone.
    """
    if not body or _media(content_type) == JOSE_CONTENT_TYPE:
        return None
    return cipher.encrypt(body)


def open_response(
    cipher: PayloadCipher,
    status: int,
    content_type: str | None,
    body: bytes,
    *,
    require_encrypted: bool = True,
) -> bytes | None:
    """The decrypted body of a response, or None when it is passed through as it is.

    `application/jose` bodies are decrypted (and must decrypt). A successful
    response with a body in any other type is refused when `require_encrypted`
    (a plaintext answer where the service encrypts is a sign of something in
    the middle). Error responses (4xx/5xx) in plain JSON pass through.
    """
    if _media(content_type) == JOSE_CONTENT_TYPE:
        return cipher.decrypt(body)
    if require_encrypted and 200 <= status < 300 and body.strip():
        raise PayloadError(
            f"expected an encrypted (application/jose) response but got HTTP {status} "
            f"{_media(content_type) or 'without a content type'} ({len(body)} bytes); "
            "if this endpoint answers in plaintext on purpose, pass require_encrypted=False"
        )
    return None
