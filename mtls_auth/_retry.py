"""Fetching one token with bounded retries, as a generator the I/O drivers run.

`fetch_flow` yields an `HttpRequest` (send it, send back an `HttpResponse` or a
`TransportFailure`) or a float (sleep that long). The sync and async drivers
differ only in `await`, so the retry, backoff, `Retry-After` and deadline rules
live here once.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import random
import re
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Callable, Union

from ._errors import ArgumentError, TokenRequestError, TokenResponseError, check_seconds
from ._http import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, TransportFailure
from ._redact import safe_repr
from ._token import Token, parse_token_response

__all__ = ["Reply", "RetryPolicy", "Step", "fetch_flow", "parse_retry_after"]

logger = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


@safe_repr
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

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ArgumentError("RetryPolicy attempts must be a whole number >= 1")
        if not 1 <= self.attempts <= 100:
            raise ArgumentError(f"RetryPolicy attempts must be 1 to 100, not {self.attempts}")
        for name in ("backoff", "max_backoff", "max_retry_after"):
            check_seconds(getattr(self, name), f"RetryPolicy {name}", zero=True)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt` + 1.

        The server's Retry-After (capped), else jittered exponential backoff.
        """
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
    request: HttpRequest,
    *,
    timeout: float,
    retry: RetryPolicy,
    clock: Callable[[], float],
    subject: Callable[[], str],
    timer: Callable[[], float] = time.monotonic,
) -> Generator[Step, Reply, Token]:
    """Fetch one token with `request`, retried, as a generator the drivers run.

    Yields the `HttpRequest` with each attempt's share of the deadline as its
    timeout (the driver sends it and sends back an `HttpResponse` or `TransportFailure`) or a
    float (the driver sleeps that many seconds and sends back None). Returns the
    `Token`, or raises `TokenRequestError` / `TokenResponseError`. `subject`
    gives the client certificate's subject, asked for only to word an error.
    """
    deadline = timer() + timeout
    url = request.url
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
                    # Kept for the final message, without its traceback: that
                    # would hold this frame, whose `reply` becomes the next
                    # attempt's answer, token included.
                    error = exc.with_traceback(None)
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
            raise _final(error, f"waiting {wait:.1f}s more would pass the {timeout:g}s deadline")
        # The error's own text names the URL and what failed: say it once.
        logger.warning(
            "%s; retry %d/%d in %.2fs",
            _short(error),
            attempt,
            retry.attempts - 1,
            wait,
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


def _transport_error(
    failure: TransportFailure, url: str, subject: Callable[[], str]
) -> TokenRequestError:
    if failure.kind == "tls_client":
        message = (
            f"token endpoint {url} rejected the client certificate {subject()!r} during the "
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
            f"rejected the client certificate {subject()!r})"
        )
    elif failure.kind == "too_large":
        message = f"token endpoint {url} sent a response over {MAX_RESPONSE_BYTES} bytes"
    else:
        message = f"token request to {url} failed: {failure.detail}"
    error = TokenRequestError(message, kind=failure.kind)
    error.__cause__ = failure.exception
    return error
