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
from ._tenants import IAS_DOMAIN, LOGIN_DOMAIN, TENANT_DOMAIN, Tenant
from ._wire import Response, json_bytes

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "ALWAYS_401_PATH",
    "AUTHORIZE_PATHS",
    "CREDSTORE_TOKEN_PATH",
    "FORM_TYPE",
    "IAS_AUTHORIZE_PATH",
    "IAS_JWKS_PATH",
    "IAS_TOKEN_PATH",
    "JWKS_PATH",
    "NO_STORE",
    "OPENID_CONFIGURATION_PATH",
    "REPEATABLE_FIELDS",
    "RESOURCE_PATH",
    "SECRET_FIELDS",
    "TOKEN_SHAPES",
    "XSUAA_AUTHORIZE_PATH",
    "XSUAA_TOKEN_PATH",
    "Grant",
    "IssuedToken",
    "Peer",
    "RedactedForm",
    "ResourceRequest",
    "TokenCall",
    "TokenRequest",
    "TokenShape",
    "bearer_error",
    "not_found",
    "oauth_error",
    "parse_form",
    "parse_form_lists",
]

XSUAA_TOKEN_PATH = "/oauth/token"  # noqa: S105 (a URL path, not a password)
CREDSTORE_TOKEN_PATH = "/api/v1/token"  # noqa: S105 (a URL path, not a password)
IAS_TOKEN_PATH = "/oauth2/token"  # noqa: S105 (a URL path, not a password)
XSUAA_AUTHORIZE_PATH = "/oauth/authorize"
IAS_AUTHORIZE_PATH = "/oauth2/authorize"
RESOURCE_PATH = "/resource"
ALWAYS_401_PATH = "/resource/always-401"
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/token_keys"
IAS_JWKS_PATH = "/oauth2/certs"
FORM_TYPE = "application/x-www-form-urlencoded"

NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))

#: Form fields that may be given more than once (RFC 8707 resource indicators).
REPEATABLE_FIELDS = frozenset({"resource"})
#: Form fields whose values never appear in a record's repr.
SECRET_FIELDS = frozenset(
    {"assertion", "client_secret", "code", "code_verifier", "password", "refresh_token"}
)


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
    #: Hosts ``<label>.<domain>`` route to tenant ``<label>`` (the first domain
    #: names the tenant's issuer); empty: no tenant routing at all.
    tenant_domains: tuple[str, ...] = ()
    #: IAS: the ``app_tid`` form field routes, and tokens carry ``app_tid``.
    app_tid: bool = False
    #: Appended to the tenant's URL to make its issuer (XSUAA: its token endpoint).
    issuer_path: str = ""


#: Token endpoint path -> its shape. A new token path is one more entry.
TOKEN_SHAPES: Mapping[str, TokenShape] = MappingProxyType(
    {
        XSUAA_TOKEN_PATH: TokenShape(
            "xsuaa",
            default_scope="uaa.resource",
            jwt=True,
            tenant_domains=(TENANT_DOMAIN, LOGIN_DOMAIN),
            issuer_path=XSUAA_TOKEN_PATH,
        ),
        CREDSTORE_TOKEN_PATH: TokenShape("credstore", credentials_api=True),
        IAS_TOKEN_PATH: TokenShape("ias", jwt=True, tenant_domains=(IAS_DOMAIN,), app_tid=True),
    }
)

#: Authorization endpoint path -> the token endpoint path its codes are redeemed at.
AUTHORIZE_PATHS: Mapping[str, str] = MappingProxyType(
    {XSUAA_AUTHORIZE_PATH: XSUAA_TOKEN_PATH, IAS_AUTHORIZE_PATH: IAS_TOKEN_PATH}
)


# -- records ----------------------------------------------------------------------------


class RedactedForm(dict[str, str]):
    """A form as a dict, whose repr and str hide the values of `SECRET_FIELDS`.

    ``form["password"]`` still answers the value, for assertions in tests.
    """

    def __repr__(self) -> str:
        shown = {k: "<redacted>" if k in SECRET_FIELDS else v for k, v in self.items()}
        return repr(shown)


@safe_repr
@dataclass(frozen=True)
class TokenRequest:
    """One request that reached a token endpoint, as the server saw it.

    `form` holds the first value of every form parameter (a `RedactedForm`:
    ``assertion``, ``code``, ``code_verifier``, ``refresh_token``, ``password``
    and ``client_secret`` are readable but never in its repr); `client_id`,
    `namespace` (``credstore_namespace``) and `grant_type` are copied out for
    convenience, `resources` holds every ``resource`` value (RFC 8707).
    `thumbprint` and `subject` describe the client certificate presented on the
    connection (None without one); `time` is the server clock. `host` is the
    Host header as sent (port included); `subdomain`, `zone_id` and `app_tid`
    the tenant the request names (``x-zid``, IAS ``app_tid``, or its host),
    registered or not; `app_tid` only at the IAS endpoint. None: the provider.
    """

    path: str
    form: dict[str, str]
    client_id: str | None
    namespace: str | None
    thumbprint: str | None
    subject: str | None
    time: float
    host: str | None = None
    subdomain: str | None = None
    zone_id: str | None = None
    app_tid: str | None = None
    resources: tuple[str, ...] = ()
    grant_type: str | None = None


@safe_repr
@dataclass(frozen=True)
class ResourceRequest:
    """One request to the protected resource; never holds the token itself.

    `token_index` is the 1-based issue number of the token used (None when no
    known token was sent), enough to tell a refreshed token from the old one.
    `subdomain`, `zone_id`, `app_tid`, `user` and `grant_type` are the token's
    (None without a known token, or when it has none).
    """

    method: str
    path: str
    had_authorization: bool
    thumbprint: str | None
    time: float
    status: int
    client_id: str | None
    token_index: int | None
    subdomain: str | None = None
    zone_id: str | None = None
    app_tid: str | None = None
    user: str | None = None
    grant_type: str | None = None


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
    tenant: Tenant | None = None
    #: The user the token was issued for (user grants), None for the client itself.
    user: str | None = None
    resources: tuple[str, ...] = ()

    @property
    def subdomain(self) -> str | None:
        return self.tenant.subdomain if self.tenant else None

    @property
    def zone_id(self) -> str | None:
        return self.tenant.zone_id if self.tenant else None

    @property
    def app_tid(self) -> str | None:
        """The zone id again, for tokens of the IAS shape."""
        return self.tenant.zone_id if self.tenant and self.shape.app_tid else None

    @property
    def beyond_client_credentials(self) -> bool:
        """Whether it has more to say than the provider's client-credentials tokens."""
        return (
            self.tenant is not None
            or self.user is not None
            or bool(self.resources)
            or self.grant_type != "client_credentials"
        )

    def facts(self) -> dict[str, Any]:
        """Tenant, user, grant and resources, as the resource and `token_info` report them."""
        return {
            "subdomain": self.subdomain,
            "zone_id": self.zone_id,
            "app_tid": self.app_tid,
            "user": self.user,
            "grant_type": self.grant_type,
            "resources": list(self.resources),
        }


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
    #: The first value of every form parameter (only ``resource`` may repeat);
    #: its repr hides `SECRET_FIELDS`.
    form: Mapping[str, str]
    #: Request headers, names lower-cased, the first value of each (not in the repr).
    headers: Mapping[str, str] = field(repr=False)
    peer: Peer | None
    #: The app clock when the request arrived.
    now: float
    #: The tenant the request was routed to (``x-zid``, ``app_tid``, host), None: the provider.
    tenant: Tenant | None = None
    #: Every ``resource`` form value (RFC 8707), in order.
    resources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grant:
    """What a grant handler decided: who gets a token, bound to which certificate."""

    client_id: str
    peer: Peer
    scope: str | None = None
    namespace: str | None = None
    #: Claims a JWT carries beyond the common ones (and overriding them).
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: The user the token is for (user grants); None: the client itself.
    user: str | None = None
    #: The token's tenant; None: the tenant of the request (`TokenCall.tenant`).
    tenant: Tenant | None = None
    #: Answer a refresh token too.
    refresh: bool = False
    #: The refresh token to answer (kept when not rotating); None: a new one.
    refresh_token: str | None = field(default=None, repr=False)


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


def parse_form_lists(content: bytes | str) -> dict[str, list[str]]:
    """Every value of every form (or query) parameter, in order."""
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else content
    return parse_qs(text, keep_blank_values=True, strict_parsing=False)


def parse_form(
    content: bytes, repeatable: Collection[str] = ()
) -> tuple[dict[str, str], str | None]:
    """First value of each form parameter, and the name of a repeated one (if any).

    Parameters named in `repeatable` may repeat without being reported.
    """
    parsed = parse_form_lists(content)
    duplicate = next(
        (name for name, values in parsed.items() if len(values) > 1 and name not in repeatable),
        None,
    )
    return {name: values[0] for name, values in parsed.items()}, duplicate
