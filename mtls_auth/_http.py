"""The wire between the token protocol and an HTTP library, without I/O.

The sans-I/O core yields an `HttpRequest`; a driver in an integration module
sends it with its library and hands back an `HttpResponse`, or a
`TransportFailure` that `classify_failure` made from the library's exception
(connection refused, timeout, a TLS alert that says our certificate was
rejected, ...), so requests and httpx report the same failure the same way.
"""

from __future__ import annotations

import socket
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._redact import safe_repr

__all__ = [
    "MAX_RESPONSE_BYTES",
    "HttpRequest",
    "HttpResponse",
    "TransportFailure",
    "classify_failure",
]

#: Largest token response read; a token endpoint has no reason to send more.
MAX_RESPONSE_BYTES = 1 << 20


@safe_repr
@dataclass(frozen=True)
class HttpRequest:
    """A request for a driver to send. `body` is a form body: never log it."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    #: Seconds this attempt may take: what is left of the fetch's deadline.
    timeout: float = 10.0


@safe_repr
@dataclass(frozen=True)
class HttpResponse:
    """What a driver got back. `headers` keys are lower-case."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


@safe_repr
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


#: The HTTP libraries' names for a body their content decoder refused.
_DECODING_ERRORS = frozenset({"DecodingError", "ContentDecodingError", "DecodeError"})


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
    if isinstance(current, ValueError) and type(current).__name__ == "CertificateError":
        # urllib3 1.x matches host names itself (ssl_match_hostname.CertificateError);
        # worded as OpenSSL words its own check, whichever made it.
        return TransportFailure("tls_server", f"Hostname mismatch: {current}", original)
    if isinstance(
        current,
        (
            ssl.SSLEOFError,
            ssl.SSLZeroReturnError,
            ssl.SSLWantReadError,
            ssl.SSLWantWriteError,
            ssl.SSLSyscallError,
        ),
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
    if isinstance(current, zlib.error) or type(current).__name__ in _DECODING_ERRORS:
        # A compressed body that does not decompress: another try will not help.
        return TransportFailure("other", "the response body could not be decoded", original)
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
