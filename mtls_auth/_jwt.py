"""Reading a JWT's claims without verifying it, for routing and expiry only.

The library never trusts these claims: the authorization server and the
resource verify signatures. It reads them to learn when a token expires (a
response without ``expires_in``), which zone a user's token belongs to, and
what `mtls-auth check` may show about a token (scopes, ``cnf``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

__all__ = ["looks_like_jwt", "number_claim", "unverified_claims"]

#: A JWT larger than this is not read (a header has to fit it anyway).
MAX_JWT_CHARS = 64 * 1024


def looks_like_jwt(token: str) -> bool:
    """Three non-empty dot-separated base64url parts."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts) and len(token) <= MAX_JWT_CHARS


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS as a dict, or None if it is not one."""
    if not isinstance(token, str) or len(token) > MAX_JWT_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (ValueError, binascii.Error, RecursionError, OverflowError):
        return None
    return claims if isinstance(claims, dict) else None


def number_claim(claims: dict[str, Any] | None, name: str) -> float | None:
    """A finite numeric claim (``exp``, ``iat``), or None."""
    if claims is None:
        return None
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
