"""The access token, and reading one from a token endpoint's response, without I/O.

A `Token` keeps the access token in a slot that no repr, str, pickle or public
attribute reveals. `parse_token_response` turns what came back into a `Token`
or a `TokenResponseError` that carries the RFC 6749 error fields, never the body.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ._errors import TokenResponseError, clean_text
from ._http import MAX_RESPONSE_BYTES, HttpResponse
from ._jwt import number_claim, unverified_claims
from ._redact import Secret, safe_repr

__all__ = ["DEFAULT_LIFETIME", "MAX_LIFETIME", "Token", "TokenInfo", "parse_token_response"]

logger = logging.getLogger(__name__)

#: Lifetime assumed when the response has neither `expires_in` nor a JWT `exp`.
DEFAULT_LIFETIME = 300.0
#: Longest lifetime believed, whatever the server says: a token is re-fetched at
#: least daily, and an absurd `expires_in` cannot overflow the clock arithmetic.
MAX_LIFETIME = 86400.0
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


@safe_repr
class Token:
    """An access token and when it stops being usable; the value never shows.

    `expires_at` and `issued_at` are readings of the owning cache's clock.
    """

    __slots__ = (
        "__weakref__",
        "_value",
        "expires_at",
        "issued_at",
        "lifetime",
        "refresh_token",
        "refused_at",
        "token_type",
    )

    def __init__(
        self,
        value: str,
        *,
        token_type: str,
        issued_at: float,
        lifetime: float,
        refresh_token: Secret | None = None,
    ) -> None:
        # Kept as the ready header value: the hot path does no string work.
        self._value = "Bearer " + value
        self.token_type = token_type
        self.issued_at = issued_at
        self.lifetime = lifetime
        self.expires_at = issued_at + lifetime
        #: A time.monotonic() reading: fetched to answer a 401, and refused too.
        self.refused_at: float | None = None
        #: The refresh token that came with it (user grants), sealed.
        self.refresh_token = refresh_token

    def authorization(self) -> str:
        """The Authorization header value. Internal: the integrations call it."""
        return self._value

    def matches(self, authorization: str | None) -> bool:
        """Whether an Authorization header carried this token."""
        return authorization == self._value

    def __repr__(self) -> str:
        return f"<Token {self.token_type} lifetime={self.lifetime:.0f}s value=[redacted]>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("an access token cannot be pickled: it would leave the process")

    def info(self, now: float, thumbprint: str) -> TokenInfo:
        """What may be shown of this token at clock reading `now`: never the token."""
        claims = unverified_claims(self._value[len("Bearer ") :])
        scopes: tuple[str, ...] | None = None
        cnf: str | None = None
        if claims is not None:
            scope = claims.get("scope")
            if isinstance(scope, str):
                scope = scope.split()
            if isinstance(scope, list):
                scopes = tuple(str(s) for s in scope)
            confirmation = claims.get("cnf")
            bound = confirmation.get("x5t#S256") if isinstance(confirmation, dict) else None
            cnf = bound if isinstance(bound, str) else None
        return TokenInfo(
            lifetime=self.lifetime,
            expires_in=self.expires_at - now,
            format="jwt" if claims is not None else "opaque",
            scopes=scopes,
            cnf_thumbprint=cnf,
            bound_to_certificate=None if cnf is None else cnf == thumbprint,
        )


@safe_repr
@dataclass(frozen=True)
class TokenInfo:
    """Facts about an access token that are safe to show: never the token itself.

    `lifetime` is what the server granted (seconds), `expires_in` what is left.
    `format` is ``"jwt"`` or ``"opaque"``; for a JWT, `scopes` and the RFC 8705
    confirmation `cnf_thumbprint` (``cnf.x5t#S256``) are read from its claims
    without verifying it, and `bound_to_certificate` says whether that is the
    thumbprint of the client certificate in use (None when the token is not
    certificate-bound or not a JWT).
    """

    lifetime: float
    expires_in: float
    format: str
    scopes: tuple[str, ...] | None = None
    cnf_thumbprint: str | None = None
    bound_to_certificate: bool | None = None


_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)


def _lifetime(data: Mapping[str, object], access_token: Secret, url: str, status: int) -> float:
    raw = data.get("expires_in")
    if raw is None:
        exp = number_claim(unverified_claims(str(access_token.value)), "exp")
        if exp is not None:
            return max(0.0, min(exp - time.time(), MAX_LIFETIME))
        logger.debug(
            "token from %s has no expires_in and no JWT exp; assuming %.0fs", url, DEFAULT_LIFETIME
        )
        return DEFAULT_LIFETIME
    value: float
    if isinstance(raw, bool):
        value = math.nan
    elif isinstance(raw, int):
        value = float(min(raw, int(MAX_LIFETIME) + 1)) if raw >= 0 else -1.0
    elif isinstance(raw, float):
        value = raw
    elif isinstance(raw, str):
        # Some servers send the number as a string; accept ASCII digits only.
        digits = raw.strip()
        if not _DIGITS.fullmatch(digits):
            value = math.nan
        else:
            # int() refuses > 4300 digits; anything over 12 is "huge" anyway.
            value = MAX_LIFETIME if len(digits) > 12 else float(digits)
    else:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise TokenResponseError(
            f"token endpoint {url} sent an unusable expires_in "
            f"({type(raw).__name__} {clean_text(str(raw), 40)!r}): expected seconds >= 0",
            status_code=status,
        )
    return min(value, MAX_LIFETIME)


def parse_token_response(response: HttpResponse, url: str, *, sent_at: float) -> Token:
    """Turn a token endpoint response into a `Token`, or raise `TokenResponseError`.

    `sent_at` is the cache clock's reading when the request left: lifetimes count
    from then, which errs on the early side by one round trip.
    """
    status = response.status_code
    # Server-chosen text that ends up in messages and logs: one clean line.
    content_type = clean_text(response.headers.get("content-type", ""), 60) or ""
    if len(response.body) > MAX_RESPONSE_BYTES:
        raise TokenResponseError(
            f"token endpoint {url} sent a response larger than {MAX_RESPONSE_BYTES} bytes",
            status_code=status,
        )
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None

    if not 200 <= status < 300:
        error = description = None
        if isinstance(data, dict):
            error = clean_text(data.get("error"), 80)
            description = clean_text(data.get("error_description"))
        if error:
            detail = f"{error}: {description}" if description else error
        else:
            kind = "JSON" if data is not None else (content_type.split(";")[0] or "no content type")
            detail = f"no OAuth error in the {len(response.body)}-byte {kind} body"
        raise TokenResponseError(
            f"token endpoint {url} answered HTTP {status} ({detail})",
            status_code=status,
            error=error,
            error_description=description,
        )

    if data is None:
        raise TokenResponseError(
            f"token endpoint {url} answered HTTP {status} with a body that is not JSON "
            f"({content_type.split(';')[0] or 'no content type'}, {len(response.body)} bytes)",
            status_code=status,
        )
    if not isinstance(data, dict):
        raise TokenResponseError(
            f"token endpoint {url} answered with JSON that is not an object "
            f"(a {type(data).__name__})",
            status_code=status,
        )
    # The token leaves `data` at once and lives only in a holder whose repr is
    # redacted: frames captured by error reporters never show it.
    value: Secret = Secret(data.pop("access_token", None))
    if not isinstance(value.value, str) or not value.value:
        raise TokenResponseError(
            f"token endpoint {url} answered HTTP {status} without an access_token",
            status_code=status,
        )
    if not _B64TOKEN.fullmatch(value.value):
        # RFC 6750 b64token: anything else cannot go in an Authorization header,
        # and HTTP libraries would echo the bad header value in their error.
        raise TokenResponseError(
            f"token endpoint {url} sent an access_token that cannot go in an HTTP "
            "Authorization header (characters outside RFC 6750's b64token)",
            status_code=status,
        )
    token_type = data.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenResponseError(
            f"token endpoint {url} issued a token of type {clean_text(str(token_type), 40)!r}; "
            "only bearer tokens are supported",
            status_code=status,
        )
    lifetime = _lifetime(data, value, url, status)
    refresh = Secret(data.pop("refresh_token", None))
    if refresh.value is not None and (
        not isinstance(refresh.value, str) or not _B64TOKEN.fullmatch(refresh.value)
    ):
        raise TokenResponseError(
            f"token endpoint {url} sent a refresh_token that is not a token string",
            status_code=status,
        )
    return Token(
        value.value,
        token_type="bearer",  # noqa: S106 - a token type, not a secret
        issued_at=sent_at,
        lifetime=lifetime,
        refresh_token=refresh if refresh.value is not None else None,
    )
