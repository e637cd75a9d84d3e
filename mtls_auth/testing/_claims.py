"""What the token server's JWTs say: access-token claims, user-token claims, issuers.

Access tokens (`access_token_claims`) carry the client (``client_id``,
``cid``, ``azp``), ``aud`` (the client and every RFC 8707 resource), the
grant, scope, ``cnf.x5t#S256`` (RFC 8705) and, with a tenant, ``zid``,
``ext_attr.zdn`` and at the IAS endpoint ``app_tid``; user tokens ``sub`` and
``user_name``. User tokens minted for the jwt-bearer grant (`user_token_claims`)
carry the user and the tenant. Plain functions over plain values.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from ._oauth import IAS_TOKEN_PATH, TOKEN_SHAPES, XSUAA_TOKEN_PATH
from ._tenants import Tenant, host_url, label_under
from ._users import TEST_USER

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._app import TokenApp
    from ._oauth import IssuedToken, TokenShape

__all__ = [
    "access_token_claims",
    "issuer_of",
    "mint_user_token",
    "tenant_claims",
    "user_token_claims",
]


def issuer_of(
    base_url: str,
    provider_issuer: str,
    shape: TokenShape,
    tenant: Tenant | None,
    host: str | None = None,
) -> str:
    """The ``iss`` of a token of `shape` for `tenant`, asked for on `host` (Host header).

    IAS: the IAS tenant the request went to (``https://<tenant>.accounts.
    mtls.test:PORT``, whatever ``app_tid`` says). Otherwise a tenant with a
    subdomain: its URL under the shape's first tenant domain plus the shape's
    issuer path (XSUAA: ``https://<subdomain>.authentication.cert.mtls.test:
    PORT/oauth/token``). Else the provider's issuer (XSUAA, credstore) or
    `base_url` (IAS).
    """
    if shape.app_tid:
        label = label_under(host, shape.tenant_domains)
        if label is not None:
            return host_url(base_url, f"{label}.{shape.tenant_domains[0]}") + shape.issuer_path
    if tenant is not None and tenant.subdomain is not None and shape.tenant_domains:
        host = f"{tenant.subdomain}.{shape.tenant_domains[0]}"
        return host_url(base_url, host) + shape.issuer_path
    return base_url if shape.app_tid else provider_issuer


def tenant_claims(tenant: Tenant | None, *, app_tid: str | None) -> dict[str, Any]:
    """``zid`` and ``ext_attr.zdn`` of `tenant` (if any), and ``app_tid`` (if given)."""
    claims: dict[str, Any] = {}
    if tenant is not None:
        claims["zid"] = tenant.zone_id
        if tenant.subdomain is not None:
            claims["ext_attr"] = {"zdn": tenant.subdomain}
    if app_tid is not None:
        claims["app_tid"] = app_tid
    return claims


def access_token_claims(issued: IssuedToken, issuer: str) -> dict[str, Any]:
    """The claims of an access token (before a grant's own claims are added)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": issued.user or issued.client_id,
        "client_id": issued.client_id,
        "cid": issued.client_id,
        "azp": issued.client_id,
        "aud": [issued.client_id, *issued.resources],
        "grant_type": issued.grant_type,
        "iat": int(issued.issued_at),
        "exp": int(issued.expires_at),
        "scope": (issued.scope or "").split(),
        "cnf": {"x5t#S256": issued.thumbprint},
        "jti": uuid.uuid4().hex,
    }
    claims.update(tenant_claims(issued.tenant, app_tid=issued.app_tid))
    if issued.user is not None:
        claims["user_name"] = issued.user
    return claims


def user_token_claims(
    sub: str,
    *,
    issuer: str,
    tenant: Tenant | None,
    zid: str | None,
    app_tid: str | None,
    now: float,
    exp: float,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A user token's claims: `sub`/``user_name``, tenant claims, times; `extra` last.

    ``zid`` and ``app_tid`` default to the tenant's zone id; a None value in
    `extra` removes that claim.
    """
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "user_name": sub,
        "iat": int(now),
        "exp": exp,
        "jti": uuid.uuid4().hex,
    }
    zone = tenant.zone_id if tenant is not None else None
    claims.update(tenant_claims(tenant, app_tid=app_tid or zone))
    if zid is not None:
        claims["zid"] = zid
    for name, value in (extra or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def mint_user_token(
    app: TokenApp,
    sub: str = TEST_USER,
    *,
    zid: str | None = None,
    app_tid: str | None = None,
    subdomain: str | None = None,
    lifetime: float = 600,
    exp: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A user's RS256 JWT signed with the user key, as an assertion for jwt-bearer.

    The tenant is `subdomain` (its zone id), else `zid`, else `app_tid`;
    ``zid`` and ``app_tid`` both default to its zone id. ``iss`` is the
    tenant's XSUAA issuer (IAS's when only `app_tid` names it), or the
    provider's. ``iat`` and ``exp`` are wall-clock times (seconds since the
    epoch), as a real identity provider writes them and as clients judge them,
    whatever clock decides access-token expiry: ``exp`` defaults to now plus
    `lifetime`. `extra` claims are added last (a None value removes a claim).
    """
    zone = app.tenants.zone_id_of(subdomain) if subdomain is not None else zid or app_tid
    tenant: Tenant | None = None
    if zone is not None:
        known = app.tenants.by_zone(zone)
        label = subdomain.lower() if subdomain else known.subdomain if known else None
        tenant = Tenant(label, zone)
    ias = app_tid is not None and zid is None and subdomain is None
    shape = TOKEN_SHAPES[IAS_TOKEN_PATH if ias else XSUAA_TOKEN_PATH]
    now = time.time()
    claims = user_token_claims(
        sub,
        issuer=app.issuer_of(shape, tenant),
        tenant=tenant,
        zid=zid,
        app_tid=app_tid,
        now=now,
        exp=int(now + lifetime) if exp is None else exp,
        extra=extra,
    )
    return app.users.mint(claims)
