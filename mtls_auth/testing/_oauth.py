"""The token server's OAuth vocabulary: paths, token endpoint shapes, records and error answers.

Plain values shared by `TokenApp` (the behaviour), the grant handlers and
the transport; nothing here holds state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from cryptography import x509

from .._redact import safe_repr
from ._pki import Credential, thumbprint_of_der
from ._wire import Response, json_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ALWAYS_401_PATH",
    "CREDSTORE_TOKEN_PATH",
    "FORM_TYPE",
    "JWKS_PATH",
    "NO_STORE",
    "OPENID_CONFIGURATION_PATH",
    "RESOURCE_PATH",
    "TOKEN_SHAPES",
    "XSUAA_TOKEN_PATH",
    "Grant",
    "IssuedToken",
    "Peer",
    "ResourceRequest",
    "TokenCall",
    "TokenRequest",
    "TokenShape",
    "bearer_error",
    "not_found",
    "oauth_error",
    "parse_form",
]

XSUAA_TOKEN_PATH = "/oauth/token"  # noqa: S105 (a URL path, not a password)
CREDSTORE_TOKEN_PATH = "/api/v1/token"  # noqa: S105 (a URL path, not a password)
RESOURCE_PATH = "/resource"
ALWAYS_401_PATH = "/resource/always-401"
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/token_keys"
FORM_TYPE = "application/x-www-form-urlencoded"

NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


# -- token endpoint shapes ------------------------------------------------------------


@dataclass(frozen=True)
class TokenShape:
    """How one token endpoint behaves beyond the grant: see `TOKEN_SHAPES`."""

    name: str
    #: The scope recorded and answered when the request names none.
    default_scope: str | None = None
    #: Issue RS256 JWTs, rather than opaque tokens, while `TokenApp.jwt_tokens` is on.
    jwt: bool = False
    #: Its tokens (with a namespace) open the Credential Store credentials API.
    credentials_api: bool = False


#: Token endpoint path -> its shape. A new token path is one more entry.
TOKEN_SHAPES: Mapping[str, TokenShape] = MappingProxyType(
    {
        XSUAA_TOKEN_PATH: TokenShape("xsuaa", default_scope="uaa.resource", jwt=True),
        CREDSTORE_TOKEN_PATH: TokenShape("credstore", credentials_api=True),
    }
)


# -- records ----------------------------------------------------------------------------


@safe_repr
@dataclass(frozen=True)
class TokenRequest:
    """One request that reached a token endpoint, as the server saw it.

    `form` holds the first value of every form parameter; `client_id` and
    `namespace` (``credstore_namespace``) are copied out for convenience.
    `thumbprint` and `subject` describe the client certificate presented on the
    connection (None without one); `time` is the server clock.
    """

    path: str
    form: dict[str, str]
    client_id: str | None
    namespace: str | None
    thumbprint: str | None
    subject: str | None
    time: float


@safe_repr
@dataclass(frozen=True)
class ResourceRequest:
    """One request to the protected resource; never holds the token itself.

    `token_index` is the 1-based issue number of the token used (None when no
    known token was sent), enough to tell a refreshed token from the old one.
    """

    method: str
    path: str
    had_authorization: bool
    thumbprint: str | None
    time: float
    status: int
    client_id: str | None
    token_index: int | None


@dataclass(frozen=True)
class IssuedToken:
    """What the app remembers about one token it issued (never the token itself)."""

    index: int
    path: str
    client_id: str
    namespace: str | None
    scope: str | None
    thumbprint: str
    subject: str
    issued_at: float
    expires_at: float
    grant_type: str
    shape: TokenShape


@dataclass(frozen=True)
class Peer:
    """The client certificate a connection presented and TLS verified."""

    thumbprint: str
    subject: str

    @classmethod
    def from_der(cls, der: bytes) -> Peer:
        """From the DER certificate, as `ssl.SSLSocket.getpeercert` returns it."""
        certificate = x509.load_der_x509_certificate(der)
        return cls(thumbprint_of_der(der), certificate.subject.rfc4514_string())

    @classmethod
    def of(cls, credential: Credential) -> Peer:
        """The peer a connection authenticated with `credential` would have."""
        return cls(credential.thumbprint, credential.subject)


# -- what grants see and decide --------------------------------------------------------


@dataclass(frozen=True)
class TokenCall:
    """A well-formed token request on its way to a grant handler."""

    path: str
    shape: TokenShape
    grant_type: str
    #: The first value of every form parameter (none was repeated).
    form: Mapping[str, str]
    #: Request headers, names lower-cased, the first value of each.
    headers: Mapping[str, str]
    peer: Peer | None
    #: The app clock when the request arrived.
    now: float


@dataclass(frozen=True)
class Grant:
    """What a grant handler decided: who gets a token, bound to which certificate."""

    client_id: str
    peer: Peer
    scope: str | None = None
    namespace: str | None = None
    #: Claims a JWT carries beyond the common ones (and overriding them).
    claims: Mapping[str, Any] = field(default_factory=dict)


# -- responses ----------------------------------------------------------------------------


def oauth_error(status: int, error: str, description: str) -> Response:
    """An RFC 6749 error response (``error``, ``error_description``), not to be cached."""
    body = json_bytes({"error": error, "error_description": description})
    return Response(status, body, headers=NO_STORE)


def bearer_error(description: str | None) -> Response:
    """A 401 with an RFC 6750 challenge: no token (None) or ``invalid_token``."""
    if description is None:
        challenge = "Bearer"
        body = {"error": "unauthorized", "error_description": "a bearer token is required"}
    else:
        challenge = 'Bearer error="invalid_token"'
        body = {"error": "invalid_token", "error_description": description}
    return Response(401, json_bytes(body), headers=(("WWW-Authenticate", challenge),))


def not_found() -> Response:
    """404 ``{"error": "not_found"}``."""
    return Response(404, json_bytes({"error": "not_found"}))


def parse_form(content: bytes) -> tuple[dict[str, str], str | None]:
    """First value of each form parameter, and the name of a repeated one (if any)."""
    parsed = parse_qs(
        content.decode("utf-8", errors="replace"), keep_blank_values=True, strict_parsing=False
    )
    duplicate = next((name for name, values in parsed.items() if len(values) > 1), None)
    return {name: values[0] for name, values in parsed.items()}, duplicate
