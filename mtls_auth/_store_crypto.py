"""Tokens at rest in a shared store: sealed, authenticated, and filed under digests.

A token store lies outside the process: a directory other processes can list,
a Redis server an operator can dump or a backup can copy. So nothing readable
goes into one. `StoreKeys` derives two keys from the client's own private key
with HKDF-SHA256 (RFC 5869; the key's PKCS#8 DER is the input key material):

* an **AES-256-GCM** key that seals each entry (the token, its expiry and its
  lifetime) under a fresh 96-bit nonce, with the entry's store key as associated
  data. An entry that was tampered with, truncated, moved under another store
  key or sealed with another client key does not open: it is ignored.
* an **HMAC-SHA256** key that turns a token's cache key (token URL, client id,
  tenant, grant with the digest of a user's assertion, scope, resources,
  namespace, certificate thumbprint) into its store key: 64 hex digits that
  name no client, tenant or user, and that cannot be linked to a client id by
  anyone without the private key.

Only processes holding the same private key (the same client certificate)
derive the same keys: they share tokens; nobody else can read or forge them.
A rotated certificate has a new key, hence new keys and new store keys.

An entry is ``0x01 | nonce (12) | AES-GCM(expires_at, lifetime, token) | tag (16)``.
`expires_at` is a reading of the store's timeline (wall-clock seconds, so that
hosts agree; an injected test clock instead) and is converted to and from the
cache's own clock on the way in and out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import struct
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ._redact import Secret, safe_repr
from ._token import MAX_LIFETIME, Token

if TYPE_CHECKING:
    from ._certificate import ClientCertificate

__all__ = ["StoreKeys"]

logger = logging.getLogger(__name__)

_VERSION = b"\x01"
_NONCE = 12
_TAG = 16
_TIMES = struct.Struct(">dd")
#: The longest entry `open_entry` looks at: a token is at most 1 MiB of response.
MAX_ENTRY = 1 << 20
_SALT = b"mtls-auth token store v1"
_ENTRY_INFO = b"mtls-auth/token-store/v1/entry-key"
_NAME_INFO = b"mtls-auth/token-store/v1/name-key"
_AAD = b"mtls-auth/token-store/v1/entry\0"
#: RFC 6750 b64token, as `parse_token_response` checks it.
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")


@safe_repr
class StoreKeys:
    """The entry key and the name key of one client certificate; never shown, never pickled.

    Build with `derive`. `name` gives a cache key's store key, `seal` and
    `open_entry` turn a token into an entry and back.
    """

    __slots__ = ("_aead", "_name_key", "thumbprint")

    _aead: Any
    _name_key: Secret
    thumbprint: str

    def __init__(self) -> None:
        raise TypeError("use StoreKeys.derive(certificate)")

    @classmethod
    def derive(cls, certificate: ClientCertificate) -> StoreKeys:
        """The keys of `certificate`'s private key (HKDF-SHA256, one call per key)."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        # The one read of the private key outside the TLS code: its DER is the
        # HKDF input and lives in a Secret only for the two derivations.
        material = Secret(
            certificate._key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        entry_key = Secret(HKDF(hashes.SHA256(), 32, _SALT, _ENTRY_INFO).derive(material.value))
        name_key = Secret(HKDF(hashes.SHA256(), 32, _SALT, _NAME_INFO).derive(material.value))
        del material
        self = object.__new__(cls)
        self._aead = AESGCM(entry_key.value)
        self._name_key = name_key
        self.thumbprint = certificate.thumbprint
        return self

    def name(self, cache_key: Hashable) -> str:
        """The store key of `cache_key`: HMAC-SHA256 under the name key, 64 hex digits."""
        text = json.dumps(cache_key, separators=(",", ":"), ensure_ascii=True, default=repr)
        return hmac.new(self._name_key.value, text.encode("ascii"), hashlib.sha256).hexdigest()

    def seal(self, name: str, token: Token, expires_at: float) -> bytes:
        """The entry for `token` under store key `name`; `expires_at` on the store's timeline."""
        value = token.authorization()[len("Bearer ") :].encode("ascii")
        nonce = os.urandom(_NONCE)
        plain = Secret(_TIMES.pack(expires_at, token.lifetime) + value)
        del value
        sealed: bytes = self._aead.encrypt(nonce, plain.value, _AAD + name.encode())
        return _VERSION + nonce + sealed

    def open_entry(self, name: str, entry: object, now: float, clock_now: float) -> Token | None:
        """The token in `entry` (read under `name`), or None if it is unusable.

        `now` is the store timeline's reading, `clock_now` the cache clock's:
        the token comes back with its expiry on the cache's clock. An entry
        that does not open (tampered, truncated, foreign) or has expired is
        None, logged at DEBUG without any of its content.
        """
        if isinstance(entry, (bytearray, memoryview)):
            entry = bytes(entry)
        if not isinstance(entry, bytes):
            return _unreadable(f"the store returned a {type(entry).__name__}, not bytes")
        if len(entry) < 1 + _NONCE + _TAG + _TIMES.size + 1 or len(entry) > MAX_ENTRY:
            return _unreadable(f"{len(entry)} bytes is too short or too long")
        if entry[:1] != _VERSION:
            return _unreadable("not an entry of this version")
        from cryptography.exceptions import InvalidTag

        try:
            plain = Secret(
                self._aead.decrypt(entry[1 : 1 + _NONCE], entry[1 + _NONCE :], _AAD + name.encode())
            )
        except InvalidTag:
            return _unreadable("it does not open with this client's key")
        expires_at, lifetime = _TIMES.unpack_from(plain.value)
        if not _B64TOKEN.fullmatch(plain.value, _TIMES.size):
            return _unreadable("its token is not a bearer token")
        left = expires_at - now
        if not (math.isfinite(left) and 0.0 < lifetime <= MAX_LIFETIME):
            return _unreadable("its times are not usable")
        if left <= 0:
            return None
        left = min(left, lifetime)
        return Token(
            plain.value[_TIMES.size :].decode("ascii"),
            token_type="bearer",  # noqa: S106 - a token type, not a secret
            issued_at=clock_now + left - lifetime,
            lifetime=lifetime,
        )

    def __repr__(self) -> str:
        return f"<StoreKeys x5t#S256={self.thumbprint}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("StoreKeys hold keys derived from a private key and cannot be pickled")

    def __copy__(self) -> StoreKeys:
        return self

    def __deepcopy__(self, memo: object) -> StoreKeys:
        return self


def _unreadable(why: str) -> Token | None:
    """Log why an entry is ignored (never what it holds); None, for `open_entry` to return."""
    logger.debug("ignored an entry of the token store: %s", why)
    return None
