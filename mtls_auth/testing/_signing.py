"""RS256 signing of the token server's JWTs (access tokens, user tokens), their JWKS and checks."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._wire import json_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["JwtSigner"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class JwtSigner:
    """One RSA signing key (2048 bits, generated on first use) and its key id.

    `sign` turns a claims mapping into a compact RS256 JWT, `verify` checks
    one; `jwks` is the key set a verifier fetches. Thread-safe.
    """

    kid = "mtls-auth-testing-1"

    def __init__(self, kid: str | None = None) -> None:
        if kid is not None:
            self.kid = kid
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None

    def _private_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        """The RSA key that verifies the signatures."""
        return self._private_key().public_key()

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set holding `public_key`."""
        numbers = self.public_key.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": _int_b64url(numbers.n),
                    "e": _int_b64url(numbers.e),
                }
            ]
        }

    def sign(self, claims: Mapping[str, Any]) -> str:
        """`claims` as a compact JWS: header ``{"alg": "RS256", "typ": "JWT", "kid": ...}``."""
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64url(json_bytes(header))}.{_b64url(json_bytes(dict(claims)))}"
        signature = self._private_key().sign(
            signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{_b64url(signature)}"

    def verify(self, token: str) -> dict[str, Any] | str:
        """The claims of `token` if this key signed it (RS256), else why not (no secret in it)."""
        parts = token.split(".")
        if len(parts) != 3:
            return "the assertion is not a JWT"
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            signature = _unb64url(parts[2])
        except (ValueError, binascii.Error):
            return "the assertion is not a JWT"
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "the assertion is not a JWT"
        if header.get("alg") != "RS256":
            return "the assertion must be signed with RS256"
        try:
            self.public_key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, UnicodeEncodeError):
            return "the assertion is not signed by a key this server trusts"
        return claims
