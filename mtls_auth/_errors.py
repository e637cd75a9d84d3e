"""The exceptions mtls-auth raises.

Every error the library raises on purpose is an `MtlsAuthError`, so one
`except MtlsAuthError` covers them all::

    MtlsAuthError
    ├── CertificateError          bad PEM, key/certificate mismatch, password, expiry,
    │                             a CA bundle or key OpenSSL refuses
    ├── ArgumentError (ValueError) an argument that cannot work: a malformed URL, a
    │   │                         timeout that is not a positive finite number, ...
    │   ├── BindingError          a service key, VCAP_SERVICES entry or binding
    │   │                         directory that cannot be used for mTLS
    │   └── TokenStoreError       a token store that cannot be used as configured: a
    │                             bad URL, an unsafe directory, a missing client library
    ├── InsecureTransportError    a bearer token would leave over plain http, to a
    │                             host outside `allowed_hosts`, or TLS verification
    │                             was turned off without saying so loudly
    ├── PayloadError              a Credential Store payload could not be encrypted
    │                             or decrypted (wrong key, tampered, stale iat)
    └── TokenError                no token could be obtained
        ├── TokenRequestError     transport or TLS failure talking to the token URL
        └── TokenResponseError    the token endpoint answered, but not with a token
            └── LoginRequiredError  a user's refresh token was refused: log in again

Lower-level errors (`ssl.SSLError`, `OSError`, the HTTP library's own errors) are
translated at the boundary with ``raise ... from exc`` so the cause stays
inspectable. Messages name the URL, the certificate subject or the expiry date
involved, and never contain a token, a private key or a response body.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "ArgumentError",
    "BindingError",
    "CertificateError",
    "InsecureTransportError",
    "LoginRequiredError",
    "MtlsAuthError",
    "PayloadError",
    "TokenError",
    "TokenRequestError",
    "TokenResponseError",
    "TokenStoreError",
    "check_seconds",
    "clean_text",
]

_SPACES = re.compile(r" {2,}")


def clean_text(value: object, limit: int = 200) -> str | None:
    """A server-chosen or user-given string made safe for a message: one line, bounded.

    Every non-printable character (C0 and C1 controls, terminal escapes, line
    and paragraph separators, format characters) becomes a space. Not a
    string: None.
    """
    if not isinstance(value, str):
        return None
    text = "".join(c if c.isprintable() else " " for c in value[: limit * 4])
    text = _SPACES.sub(" ", text).strip()
    return text[:limit] + "…" if len(text) > limit else text


class MtlsAuthError(Exception):
    """Root of every error raised by mtls-auth."""


class CertificateError(MtlsAuthError):
    """A client certificate, private key or CA bundle cannot be used."""


class ArgumentError(MtlsAuthError, ValueError):
    """An argument that cannot work, refused before anything is sent.

    A malformed or non-https URL, a timeout or interval that is not a positive
    finite number, a value of the wrong type. Also a `ValueError`, so code that
    validates its own input with ``except ValueError`` keeps working.
    """


class BindingError(ArgumentError):
    """A binding (service key, VCAP_SERVICES entry, binding directory) is unusable."""


class TokenStoreError(ArgumentError):
    """A token store (``token_store=``) that cannot be used as configured, refused at once.

    A URL of an unknown scheme or without a host, a relative path, a directory
    that other users could read or write, or a store whose client library is
    not installed (the message names the extra). A store that fails *while in
    use* never raises: the library falls back to its in-process cache.
    """


class InsecureTransportError(MtlsAuthError):
    """A request would expose the bearer token or run without TLS verification."""


class PayloadError(MtlsAuthError):
    """A Credential Store payload could not be encrypted or decrypted.

    A wrong key, a tampered ciphertext, a body that is not JOSE where JOSE was
    expected, or an ``iat`` outside the accepted window. Messages never contain
    the plaintext or a key.
    """


class TokenError(MtlsAuthError):
    """No access token could be obtained from the token endpoint."""


class TokenRequestError(TokenError):
    """The token endpoint could not be reached: connection, timeout or TLS failure.

    `kind` says which: ``"connect"``, ``"timeout"``, ``"tls_server"`` (the
    server's certificate failed verification), ``"tls_client"`` (the server
    rejected ours), ``"tls_closed"`` (the TLS connection dropped: often a
    rejected certificate whose alert was lost), ``"too_large"`` or ``"other"``;
    None when not known.
    """

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_request_error, (str(self), self.kind))


class TokenResponseError(TokenError):
    """The token endpoint answered with an error or with something that is not a token.

    `status_code` is the HTTP status the endpoint answered with (also for a 2xx
    whose body was not a usable token). `error` and `error_description` are the RFC 6749
    section 5.2 fields when the server sent them; they are server-chosen strings
    and are shortened and stripped of control characters before being kept.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.error_description = error_description

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_response_error,
            (str(self), self.status_code, self.error, self.error_description),
        )


class LoginRequiredError(TokenResponseError):
    """A user's session cannot be renewed: its refresh token was refused (``invalid_grant``).

    The user has to log in again: send them to `authorization_request`'s URL.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_login_required,
            (str(self), self.status_code, self.error, self.error_description),
        )


def _rebuild_login_required(
    message: str, status_code: int | None, error: str | None, error_description: str | None
) -> LoginRequiredError:
    return LoginRequiredError(
        message, status_code=status_code, error=error, error_description=error_description
    )


def _rebuild_response_error(
    message: str, status_code: int | None, error: str | None, error_description: str | None
) -> TokenResponseError:
    return TokenResponseError(
        message, status_code=status_code, error=error, error_description=error_description
    )


def _rebuild_request_error(message: str, kind: str | None) -> TokenRequestError:
    return TokenRequestError(message, kind=kind)


def check_seconds(value: object, what: str, *, zero: bool = False) -> float:
    """A number of seconds that can work: finite, positive (or zero where `zero`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"{what} must be a number of seconds, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        limit = ">= 0" if zero else "> 0"
        raise ArgumentError(f"{what} must be a finite number of seconds {limit}, not {number!r}")
    return number
