"""The token request and response, without I/O.

`TokenSpec` says what to ask for and builds the form body; `parse_token_response`
turns what came back into a `Token` or a `TokenResponseError`; `fetch_flow` is the
retry loop as a plain generator that yields an `HttpRequest` (send it, send back
an `HttpResponse` or a `TransportFailure`) or a float (sleep that long). The sync
and async drivers in the integration modules differ only in `await`, so the
retry, backoff and deadline rules live here once.

A `Token` keeps the access token in a slot that no repr, str, pickle or public
attribute reveals.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import json
import logging
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Callable, Union
from urllib.parse import urlencode, urlsplit

from ._errors import BindingError, TokenRequestError, TokenResponseError

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "RetryPolicy",
    "Token",
    "TokenSpec",
    "TransportFailure",
    "classify_failure",
    "fetch_flow",
    "parse_token_response",
]

logger = logging.getLogger("mtls_auth")

#: Lifetime assumed when the response has neither `expires_in` nor a JWT `exp`.
DEFAULT_LIFETIME = 300.0
#: Longest lifetime believed, whatever the server says: a token is re-fetched at
#: least daily, and an absurd `expires_in` cannot overflow the clock arithmetic.
MAX_LIFETIME = 86400.0
#: Largest token response read; a token endpoint has no reason to send more.
MAX_RESPONSE_BYTES = 1 << 20

_RESERVED_PARAMS = frozenset({"grant_type", "client_id", "client_secret"})
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_SPACES = re.compile(r" {2,}")


def _clean(value: object, limit: int = 200) -> str | None:
    """A server-chosen string made safe for a message: one line, bounded.

    Every non-printable character (C0 and C1 controls, terminal escapes, line
    and paragraph separators, format characters) becomes a space.
    """
    if not isinstance(value, str):
        return None
    text = "".join(c if c.isprintable() else " " for c in value[: limit * 4])
    text = _SPACES.sub(" ", text).strip()
    return text[:limit] + "…" if len(text) > limit else text


# -- what to ask for -----------------------------------------------------------------


@dataclass(frozen=True)
class TokenSpec:
    """Everything that identifies a client-credentials token request.

    Two specs that compare equal may share a token; `cache_key` is exactly the
    token URL, client id, namespace, scope and extra parameters.
    """

    token_url: str
    client_id: str
    namespace: str | None = None
    scope: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def create(
        cls,
        token_url: str,
        client_id: str,
        *,
        namespace: str | None = None,
        scope: str | Iterable[str] | None = None,
        params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> TokenSpec:
        if not isinstance(token_url, str) or not token_url:
            raise BindingError("token_url must be a non-empty https:// URL")
        parts = urlsplit(token_url)
        if parts.scheme != "https" or not parts.hostname:
            raise BindingError(
                f"token_url must be an https:// URL with a host (got {_clean(token_url)!r}): "
                "the client certificate and the token only travel over TLS"
            )
        if not isinstance(client_id, str) or not client_id:
            raise BindingError("client_id must be a non-empty string")
        if scope is not None and not isinstance(scope, str):
            scope = " ".join(scope)
        items = tuple((params.items() if isinstance(params, Mapping) else params) or ())
        for name, value in items:
            if name in _RESERVED_PARAMS:
                raise BindingError(
                    f"params may not set {name!r}: grant_type and client_id are set by "
                    "mtls-auth, and mTLS authentication never sends a client_secret"
                )
            if not isinstance(name, str) or not isinstance(value, str):
                raise BindingError("params must map strings to strings")
        return cls(token_url, client_id, namespace or None, scope or None, tuple(items))

    @property
    def cache_key(self) -> tuple[str, str, str | None, str | None, tuple[tuple[str, str], ...]]:
        return (self.token_url, self.client_id, self.namespace, self.scope, self.params)

    def form(self) -> list[tuple[str, str]]:
        fields = [("grant_type", "client_credentials"), ("client_id", self.client_id)]
        if self.scope is not None:
            fields.append(("scope", self.scope))
        if self.namespace is not None:
            fields.append(("credstore_namespace", self.namespace))
        fields.extend(self.params)
        return fields

    def request(self) -> HttpRequest:
        # urlencode with quote_via=quote_plus: "/", "+", "=", "&", "%" and spaces
        # in a namespace or client id arrive intact (the Credential Store client
        # id is base64 and ends in "=").
        body = urlencode(self.form()).encode("ascii")
        return HttpRequest(
            "POST",
            self.token_url,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            body,
        )

    def __repr__(self) -> str:
        extra = f" namespace={self.namespace!r}" if self.namespace else ""
        return f"<TokenSpec {self.token_url} client_id={self.client_id!r}{extra}>"


@dataclass(frozen=True)
class HttpRequest:
    """A request for a driver to send. `body` is a form body: never log it."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    #: Seconds this attempt may take: what is left of the fetch's deadline.
    timeout: float = 10.0


@dataclass(frozen=True)
class HttpResponse:
    """What a driver got back. `headers` keys are lower-case."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class TransportFailure:
    """A request that produced no response.

    `kind` is "connect" (refused, reset, DNS), "timeout", "tls_server" (the
    server's certificate failed verification), "tls_client" (the server rejected
    our certificate), "too_large" (response over the cap) or "other".
    """

    kind: str
    detail: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    # "tls_closed": the TLS connection dropped before an answer; with TLS 1.3 a
    # rejected client certificate can look like this when the alert is lost.

    @property
    def retryable(self) -> bool:
        return self.kind in ("connect", "timeout", "tls_closed")


# -- the token ---------------------------------------------------------------------


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
        "refused_at",
        "token_type",
    )

    def __init__(
        self, value: str, *, token_type: str, issued_at: float, lifetime: float
    ) -> None:
        # Kept as the ready header value: the hot path does no string work.
        self._value = "Bearer " + value
        self.token_type = token_type
        self.issued_at = issued_at
        self.lifetime = lifetime
        self.expires_at = issued_at + lifetime
        #: A time.monotonic() reading: fetched to answer a 401, and refused too.
        self.refused_at: float | None = None

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


def _jwt_exp(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            return None
        value = float(exp)
    except (ValueError, binascii.Error, RecursionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


class _Redacted:
    """An access token on its way into a `Token`; its repr shows nothing."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)


def _lifetime(
    data: Mapping[str, object], access_token: _Redacted, url: str, status: int
) -> float:
    raw = data.get("expires_in")
    if raw is None:
        exp = _jwt_exp(str(access_token.value))
        if exp is not None:
            return max(0.0, min(exp - time.time(), MAX_LIFETIME))
        logger.debug("token from %s has no expires_in and no JWT exp; assuming %.0fs",
                     url, DEFAULT_LIFETIME)
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
            f"({type(raw).__name__} {_clean(str(raw), 40)!r}): expected seconds >= 0",
            status_code=status,
        )
    return min(value, MAX_LIFETIME)


def parse_token_response(
    response: HttpResponse, url: str, *, sent_at: float
) -> Token:
    """Turn a token endpoint response into a `Token`, or raise `TokenResponseError`.

    `sent_at` is the cache clock's reading when the request left: lifetimes count
    from then, which errs on the early side by one round trip.
    """
    status = response.status_code
    # Server-chosen text that ends up in messages and logs: one clean line.
    content_type = _clean(response.headers.get("content-type", ""), 60) or ""
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
            error = _clean(data.get("error"), 80)
            description = _clean(data.get("error_description"))
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
    value = _Redacted(data.pop("access_token", None))
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
            f"token endpoint {url} issued a token of type {_clean(str(token_type), 40)!r}; "
            "only bearer tokens are supported",
            status_code=status,
        )
    lifetime = _lifetime(data, value, url, status)
    return Token(value.value, token_type="bearer", issued_at=sent_at, lifetime=lifetime)  # noqa: S106


# -- retries -----------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try the token endpoint before giving up.

    At most `attempts` requests, spaced by exponential backoff with full jitter
    (`backoff` * 2**n, at most `max_backoff`) or by the server's `Retry-After`
    (at most `max_retry_after`), all within one deadline: the `timeout` given to
    the auth object. Connection errors, timeouts, 429 and 5xx are retried;
    other 4xx and TLS failures are not.
    """

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 4.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        ceiling = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        # Full jitter, floored at half, so N processes spread out but still back off.
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return 86400.0 if len(value) > 6 else float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        if "," in value:
            return None  # an IMF-fixdate without "GMT" is malformed
        # The asctime form carries no zone; HTTP dates are GMT by definition.
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

Step = Union[HttpRequest, float]
Reply = Union[HttpResponse, TransportFailure, None]


def fetch_flow(
    spec: TokenSpec,
    *,
    timeout: float,
    retry: RetryPolicy,
    clock: Callable[[], float],
    subject: str,
    timer: Callable[[], float] = time.monotonic,
) -> Generator[Step, Reply, Token]:
    """Fetch one token, with retries, as a generator the drivers run.

    Yields an `HttpRequest` (the driver sends it with a per-attempt timeout of
    `remaining(...)` and sends back an `HttpResponse` or `TransportFailure`) or a
    float (the driver sleeps that many seconds and sends back None). Returns the
    `Token`, or raises `TokenRequestError` / `TokenResponseError`.
    """
    deadline = timer() + timeout
    url = spec.token_url
    request = spec.request()
    attempt = 0
    while True:
        attempt += 1
        sent_at = clock()
        reply = yield replace(request, timeout=max(0.001, deadline - timer()))
        retry_after: float | None = None
        error: Exception
        if isinstance(reply, TransportFailure):
            error = _transport_error(reply, url, subject)
            if not reply.retryable:
                raise error
        elif isinstance(reply, HttpResponse):
            if reply.status_code in _RETRY_STATUSES:
                retry_after = parse_retry_after(reply.headers.get("retry-after"))
                try:
                    parse_token_response(reply, url, sent_at=sent_at)
                except TokenResponseError as exc:
                    error = exc
                else:  # pragma: no cover - a 5xx never parses as a token
                    raise AssertionError("unreachable")
            else:
                token = parse_token_response(reply, url, sent_at=sent_at)
                if attempt > 1:
                    logger.info("token from %s obtained after %d attempts", url, attempt)
                return token
        else:
            raise TypeError("fetch_flow expects an HttpResponse or a TransportFailure")

        remaining = deadline - timer()
        if attempt >= retry.attempts:
            raise _final(error, f"gave up after {attempt} attempts")
        wait = retry.delay(attempt, retry_after)
        if wait >= remaining:
            raise _final(
                error, f"waiting {wait:.1f}s more would pass the {timeout:g}s deadline"
            )
        logger.warning(
            "token request to %s failed (%s); retry %d/%d in %.2fs",
            url, _short(error), attempt, retry.attempts - 1, wait,
        )
        yield wait


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 160 else text[:160] + "…"


def _final(error: Exception, why: str) -> Exception:
    if isinstance(error, TokenResponseError):
        final: Exception = TokenResponseError(
            f"{error} ({why})",
            status_code=error.status_code,
            error=error.error,
            error_description=error.error_description,
        )
    else:
        final = TokenRequestError(f"{error} ({why})", kind=getattr(error, "kind", None))
    final.__cause__ = error.__cause__ or error
    return final


def _transport_error(failure: TransportFailure, url: str, subject: str) -> TokenRequestError:
    if failure.kind == "tls_client":
        message = (
            f"token endpoint {url} rejected the client certificate {subject!r} during the "
            f"TLS handshake ({failure.detail}); check that the certificate is the one bound "
            "to this client id, is not expired or revoked, and is issued by a CA the server trusts"
        )
    elif failure.kind == "tls_server":
        message = (
            f"could not verify the TLS certificate of token endpoint {url} "
            f"({failure.detail}); check verify= (CA bundle) and the URL's host name"
        )
    elif failure.kind == "timeout":
        message = f"token request to {url} timed out ({failure.detail})"
    elif failure.kind == "tls_closed":
        message = (
            f"token request to {url} failed: {failure.detail} (the server may have "
            f"rejected the client certificate {subject!r})"
        )
    elif failure.kind == "too_large":
        message = f"token endpoint {url} sent a response over {MAX_RESPONSE_BYTES} bytes"
    else:
        message = f"token request to {url} failed: {failure.detail}"
    error = TokenRequestError(message, kind=failure.kind)
    error.__cause__ = failure.exception
    return error


_CLIENT_REJECTED = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED", "HANDSHAKE_FAILURE")
#: TLS failures that another attempt cannot fix (talking TLS to plain HTTP, no
#: common protocol version or cipher).
_TLS_CONFIG_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "NO_SHARED_CIPHER",
        "HTTP_REQUEST",
    }
)


def classify_failure(exc: BaseException, *, timed_out: bool = False) -> TransportFailure:
    """Sort an HTTP library's exception into a `TransportFailure` kind.

    Searches the cause chain (``__cause__``, ``__context__``, urllib3's
    ``.reason`` and exceptions passed as arguments) for the `ssl` or socket error
    underneath, so requests' and httpx's wrappers classify alike. `timed_out` is
    the library's own verdict, used when nothing more specific is found.
    """
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found = _classify_one(current, exc)
        if found is not None:
            return found
        links = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        links.extend(current.args)
        queue.extend(link for link in links if isinstance(link, BaseException))
    if timed_out:
        return TransportFailure("timeout", "no answer in time", exc)
    return TransportFailure("connect", type(exc).__name__, exc)


def _classify_one(current: BaseException, original: BaseException) -> TransportFailure | None:
    # verify_message and reason exist only on errors raised by the C _ssl
    # module; ssl.CertificateError or pyopenssl's SSLError built in Python lack them.
    if isinstance(current, ssl.SSLCertVerificationError):
        detail = (
            getattr(current, "verify_message", None)
            or getattr(current, "reason", None)
            or "verification failed"
        )
        return TransportFailure("tls_server", str(detail), original)
    if isinstance(
        current,
        (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError,
         ssl.SSLWantWriteError, ssl.SSLSyscallError),
    ):
        # A connection dropped mid-TLS (anyio reports a reset as SSLWantReadError).
        # With TLS 1.3 this is also how a rejected client certificate can look
        # when the server's alert is lost: retried, and a rotation check runs.
        return TransportFailure("tls_closed", "the TLS connection was closed early", original)
    if isinstance(current, ssl.SSLError):
        reason = str(getattr(current, "reason", None) or "")
        if "ALERT" in reason and any(word in reason for word in _CLIENT_REJECTED):
            return TransportFailure("tls_client", f"server sent TLS alert {reason}", original)
        if reason in _TLS_CONFIG_REASONS:
            return TransportFailure("other", f"TLS error {reason}", original)
        # Anything else at the record layer (bad MAC, unexpected EOF, ...) is
        # treated as a broken connection: retried, within the bounded attempts.
        return TransportFailure(
            "connect", f"TLS error {reason or current.__class__.__name__}", original
        )
    if isinstance(current, (socket.timeout, TimeoutError)):
        return TransportFailure("timeout", "no answer in time", original)
    if type(current).__name__ == "BrokenResourceError" and not (
        current.__cause__ or current.__context__
    ):
        # anyio's word for a stream the peer dropped (a lost TLS alert, often).
        return TransportFailure("tls_closed", "the TLS connection was closed early", original)
    if isinstance(current, ConnectionRefusedError):
        return TransportFailure("connect", "connection refused", original)
    if isinstance(current, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return TransportFailure("connect", "connection reset by the server", original)
    if isinstance(current, socket.gaierror):
        return TransportFailure("connect", "host name could not be resolved", original)
    return None
