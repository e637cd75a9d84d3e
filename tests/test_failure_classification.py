"""How a failed token request is classified: classify_failure and TransportFailure.

Exceptions as the HTTP libraries raise them (wrapped, chained by cause,
context or args, with cycles) map to one kind: ``tls_server`` (the server's
certificate), ``tls_client`` (ours was rejected), ``tls_closed``, ``connect``,
``timeout``, ``too_large`` or ``other``; the kind decides whether it is retried.
"""

from __future__ import annotations

import socket
import ssl

import pytest
from wire import CANARY

from mtls_auth._http import TransportFailure, classify_failure

# -- classify_failure -----------------------------------------------------------------


def ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1000)")
    error.reason = reason  # type: ignore[misc]
    error.library = "SSL"  # type: ignore[misc]
    return error


def cert_verification_error() -> ssl.SSLCertVerificationError:
    error = ssl_error("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError)
    assert isinstance(error, ssl.SSLCertVerificationError)
    error.verify_code = 20  # type: ignore[misc]
    error.verify_message = "unable to get local issuer certificate"  # type: ignore[misc]
    return error


def chained(inner: BaseException, wrapper: type[Exception] = RuntimeError) -> Exception:
    """`inner` as the cause of a library-style wrapper, raised for real."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise wrapper("wrapped by an HTTP library") from exc
    except wrapper as outer:
        return outer


def test_classify_server_certificate_verification() -> None:
    error = cert_verification_error()
    for exc in (error, chained(error)):
        failure = classify_failure(exc)
        assert failure.kind == "tls_server"
        assert "unable to get local issuer certificate" in failure.detail
        assert not failure.retryable
        assert failure.exception is exc


def test_classify_python_built_ssl_errors() -> None:
    hostname = ssl.CertificateError("hostname 'a.example' doesn't match 'b.example'")
    assert classify_failure(chained(hostname)).kind == "tls_server"
    handshake = ssl.SSLError("bad handshake: Error([('SSL routines', '', 'alert')])")
    # No OpenSSL reason to go by: treated as a broken connection, retried within bounds.
    assert classify_failure(chained(handshake)).kind in ("tls_client", "other", "connect")


@pytest.mark.parametrize(
    "reason",
    [
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    ],
)
def test_classify_client_certificate_rejected(reason: str) -> None:
    error = ssl_error(reason)
    for exc in (error, chained(error), RuntimeError("connect failed", error)):
        failure = classify_failure(exc)
        assert failure.kind == "tls_client", exc
        assert reason in failure.detail
        assert not failure.retryable


def test_classify_other_tls_error() -> None:
    failure = classify_failure(chained(ssl_error("WRONG_VERSION_NUMBER")))
    assert failure.kind == "other"
    assert "WRONG_VERSION_NUMBER" in failure.detail
    assert not failure.retryable


def test_classify_tls_closed_early_is_retryable_tls_closed() -> None:
    failure = classify_failure(ssl.SSLEOFError(8, "EOF"))
    assert failure.kind == "tls_closed"
    assert failure.retryable


@pytest.mark.parametrize(
    ("inner", "detail"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "reset"),
        (BrokenPipeError(32, "Broken pipe"), "reset"),
        (socket.gaierror(-2, "Name or service not known"), "resolved"),
    ],
)
def test_classify_connection_errors(inner: OSError, detail: str) -> None:
    via_cause = chained(inner)
    via_double_cause = chained(chained(inner), wrapper=ValueError)
    via_args = RuntimeError("Max retries exceeded", inner)
    via_nested_args = RuntimeError("outer", ValueError("middle", inner))

    class WithReason(Exception):
        def __init__(self, reason: BaseException) -> None:
            super().__init__("urllib3-style")
            self.reason = reason

    via_reason = WithReason(inner)
    for exc in (inner, via_cause, via_double_cause, via_args, via_nested_args, via_reason):
        failure = classify_failure(exc)
        assert failure.kind == "connect", exc
        assert detail in failure.detail
        assert failure.retryable
        assert failure.exception is exc


def _reset_then_fail() -> None:
    try:
        raise ConnectionResetError(104, "reset")
    except ConnectionResetError:
        raise RuntimeError("during handling")  # noqa: B904 - an implicit __context__


def test_classify_implicit_context() -> None:
    with pytest.raises(RuntimeError) as info:
        _reset_then_fail()
    assert classify_failure(info.value).kind == "connect"


@pytest.mark.parametrize("inner", [socket.timeout("timed out"), TimeoutError("timed out")])
def test_classify_timeout(inner: OSError) -> None:
    for exc in (inner, chained(inner), RuntimeError("read", inner)):
        failure = classify_failure(exc)
        assert failure.kind == "timeout"
        assert failure.retryable


def test_classify_unknown_uses_library_verdict() -> None:
    exc = RuntimeError("something")
    assert classify_failure(exc).kind == "connect"
    assert classify_failure(exc, timed_out=True).kind == "timeout"
    assert classify_failure(exc).exception is exc


def test_classify_survives_cycles() -> None:
    a = RuntimeError("a")
    b = ValueError("b")
    a.__cause__ = b
    b.__context__ = a
    b.args = (a, b)
    assert classify_failure(a).kind == "connect"


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        ("connect", True),
        ("timeout", True),
        ("tls_server", False),
        ("tls_client", False),
        ("too_large", False),
        ("other", False),
    ],
)
def test_transport_failure_retryable(kind: str, retryable: bool) -> None:
    assert TransportFailure(kind, "d").retryable is retryable


def test_transport_failure_repr_hides_exception() -> None:
    failure = TransportFailure("connect", "refused", RuntimeError(CANARY))
    assert CANARY not in repr(failure)
