"""What to ask the token endpoint for: `TokenRequest`, small, immutable and hashable.

The client (`_client.TokenClient`) knows *who* asks: the certificate, the client
id, the token URL. A `TokenRequest` says *what* is asked: the grant (see
`_grants`), the tenant (`_tenant`), scope, RFC 8707 resources, Credential
Store namespace and extra form parameters. Given the client's token URL and
client id it builds the sans-I/O `HttpRequest` and the key its token is cached
under; two requests that compare equal share one token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from ._errors import ArgumentError, BindingError
from ._grants import CLIENT_CREDENTIALS, Grant
from ._http import HttpRequest
from ._redact import safe_repr
from ._tenant import Tenant

__all__ = ["TokenRequest"]

#: Form fields mtls-auth always sets itself: `params=` may not override them.
_RESERVED = frozenset({"grant_type", "client_id", "client_secret"})
_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


@safe_repr
@dataclass(frozen=True)
class TokenRequest:
    """One kind of token: grant, tenant, scope, resources, namespace and extra parameters.

    Build one with `create`, which validates; derive variants with `replace`.
    """

    grant: Grant = CLIENT_CREDENTIALS
    scope: str | None = None
    namespace: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    tenant: Tenant | None = None
    resource: tuple[str, ...] = ()
    #: What tells this request's token apart, built once (the hot path compares it).
    key: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tenant = self.tenant.key if self.tenant is not None else None
        key = (self.bucket, self.grant.key, self.scope, self.namespace, self.params, tenant)
        object.__setattr__(self, "key", (*key, self.resource))

    @property
    def bucket(self) -> str:
        """The cache bucket: the grant's, or ``"tenant"`` for a tenant's technical token."""
        if self.grant.bucket == "client" and self.tenant is not None:
            return "tenant"
        return self.grant.bucket

    @classmethod
    def create(
        cls,
        grant: Grant = CLIENT_CREDENTIALS,
        *,
        scope: str | Iterable[str] | None = None,
        namespace: str | None = None,
        params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        resource: str | Iterable[str] | None = None,
    ) -> TokenRequest:
        """A validated request: `scope` and `resource` may be lists, `params` pairs."""
        if scope is not None and not isinstance(scope, str):
            scope = " ".join(scope)
        resources = _resources(resource)
        items = tuple((params.items() if isinstance(params, Mapping) else params) or ())
        reserved = _RESERVED | grant.reserved
        for name, value in items:
            if name in reserved:
                raise BindingError(
                    f"params may not set {name!r}: grant_type, client_id and the grant's own "
                    "fields are set by mtls-auth, and mTLS authentication never sends a "
                    "client_secret"
                )
            if not isinstance(name, str) or not isinstance(value, str):
                raise BindingError("params must map strings to strings")
        return cls(grant, scope or None, namespace or None, items, resource=resources)

    def replace(self, **changes: Any) -> TokenRequest:
        """This request with some fields changed (the key is rebuilt)."""
        return replace(self, **changes)

    # -- what goes on the wire -------------------------------------------------------

    def form(self, client_id: str) -> list[tuple[str, str]]:
        fields = [("grant_type", self.grant.grant_type), ("client_id", client_id)]
        fields.extend(self.grant.fields())
        if self.scope is not None:
            fields.append(("scope", self.scope))
        if self.namespace is not None:
            fields.append(("credstore_namespace", self.namespace))
        if self.tenant is not None:
            fields.extend(self.tenant.fields())
        fields.extend(("resource", resource) for resource in self.resource)
        fields.extend(self.params)
        return fields

    def token_url(self, base: str) -> str:
        """Where this request goes, given the client's token URL (tenant routing)."""
        return base if self.tenant is None else self.tenant.token_url(base)

    def http_request(self, token_url: str, client_id: str) -> HttpRequest:
        """The POST to send for `client_id`, `token_url` being the client's own."""
        # urlencode with quote_via=quote_plus: "/", "+", "=", "&", "%" and spaces
        # in a namespace or client id arrive intact (the Credential Store client
        # id is base64 and ends in "=").
        body = urlencode(self.form(client_id)).encode("ascii")
        headers = dict(_HEADERS)
        if self.tenant is not None:
            headers.update(self.tenant.headers())
        return HttpRequest("POST", self.token_url(token_url), headers, body)

    def cache_key(self, token_url: str, client_id: str, thumbprint: str) -> tuple[Any, ...]:
        """The cache key of this request's token for one client and certificate.

        Its first item is the bucket (see `TokenCache`); the token URL in it is
        the routed one.
        """
        return (*self.key, self.token_url(token_url), client_id, thumbprint)

    def describe(self) -> str:
        """The non-secret parts, for repr."""
        parts = [] if self.grant.bucket == "client" else [f"grant={self.grant.describe()}"]
        if self.tenant is not None:
            parts.append(self.tenant.describe())
        if self.resource:
            parts.append(f"resource={list(self.resource)!r}")
        if self.namespace:
            parts.append(f"namespace={self.namespace!r}")
        if self.scope:
            parts.append(f"scope={self.scope!r}")
        return " ".join(parts)


def _resources(resource: str | Iterable[str] | None) -> tuple[str, ...]:
    """RFC 8707 resource indicators: one string or several, each sent as its own field."""
    if resource is None:
        return ()
    values = (resource,) if isinstance(resource, str) else tuple(resource)
    for value in values:
        if not isinstance(value, str) or not value or not value.isprintable():
            raise ArgumentError("resource must be a non-empty string or a list of them")
    return values
