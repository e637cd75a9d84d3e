"""The grants the token server knows: ``grant_type`` -> a function deciding who gets a token.

A grant handler takes the app and a well-formed `TokenCall` (form checked for
duplicates, ``grant_type`` present, tenant routed, clock read) and returns the
`Grant` to issue a token for, or an error `Response`. The app does the rest:
default scope by endpoint shape, index, expiry, opaque or JWT token, tenant
claims, the refresh token a grant asks for, records.

Adding a grant is one function here and one entry in `GRANTS`. Client
authentication by certificate is `TokenApp.authenticate_client`; users,
codes and refresh tokens live in `TokenApp.users` (`._users.UserStore`).

- ``client_credentials``: a token for the client itself;
- ``urn:ietf:params:oauth:grant-type:jwt-bearer``: a user token for a user JWT
  (``assertion``), no refresh token;
- ``authorization_code`` (PKCE S256 only): a user token and a refresh token;
- ``refresh_token``: a new user token (and refresh token) for the same user;
- ``password``: a user token and a refresh token for a username and password.

User grants fail with 400 ``invalid_grant`` and a description that never
repeats the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable

from ._oauth import Grant, TokenCall, oauth_error
from ._tenants import TenantHint, UnknownTenant
from ._wire import Response

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._app import TokenApp
    from ._tenants import Tenant
    from ._users import AuthorizationCode, RefreshGrant

    GrantHandler = Callable[[TokenApp, TokenCall], Grant | Response]

__all__ = [
    "GRANTS",
    "JWT_BEARER",
    "authorization_code",
    "client_credentials",
    "jwt_bearer",
    "password",
    "pkce_challenge",
    "refresh_token",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _invalid_grant(description: str) -> Response:
    return oauth_error(400, "invalid_grant", description)


def _required(call: TokenCall, *names: str) -> list[str] | Response:
    values = [call.form.get(name) or "" for name in names]
    for name, value in zip(names, values):
        if not value:
            return oauth_error(400, "invalid_request", f"{name} is required")
    return values


def _other_tenant(call: TokenCall, tenant: Tenant | None, what: str) -> str | None:
    """Why `tenant` (of a code or refresh token) is not the request's, if the request names one."""
    if call.tenant is not None and call.tenant != tenant:
        return f"the {what} was issued for another tenant"
    return None


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: ``BASE64URL(SHA256(ASCII(code_verifier)))``."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def client_credentials(app: TokenApp, call: TokenCall) -> Grant | Response:
    """RFC 6749 section 4.4: a token for the authenticated client itself."""
    client = app.authenticate_client(call)
    if isinstance(client, Response):
        return client
    client_id, peer = client
    return Grant(
        client_id,
        peer,
        scope=call.form.get("scope"),
        namespace=call.form.get("credstore_namespace"),
    )


def jwt_bearer(app: TokenApp, call: TokenCall) -> Grant | Response:
    """RFC 7523: a user token for the user JWT in ``assertion`` (signed by the user key).

    The assertion must verify with `TokenServer.mint_user_token`'s key and not
    have expired on the server clock. Its ``zid`` (its ``app_tid`` at the IAS
    endpoint) must be the request's tenant when both are known; without a
    tenant in the request, the assertion's is the token's. No refresh token.
    """
    client = app.authenticate_client(call)
    if isinstance(client, Response):
        return client
    client_id, peer = client
    fields = _required(call, "assertion")
    if isinstance(fields, Response):
        return fields
    claims = app.users.signer.verify(fields[0])
    if isinstance(claims, str):
        return _invalid_grant(claims)
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return _invalid_grant("the assertion has no exp")
    if time.time() >= exp:  # a user's JWT lives in wall-clock time (see mint_user_token)
        return _invalid_grant("the assertion has expired")
    user = claims.get("user_name") or claims.get("sub")
    if not isinstance(user, str) or not user:
        return _invalid_grant("the assertion names no user (sub)")
    claim = "app_tid" if call.shape.app_tid else "zid"
    named = claims.get(claim)
    if named is not None and not isinstance(named, str):
        return _invalid_grant(f"the assertion's {claim} is not a string")
    tenant = call.tenant
    if tenant is not None and named is not None and named != tenant.zone_id:
        return _invalid_grant(f"the assertion's {claim} is not the tenant of the request")
    if tenant is None and named:
        try:
            tenant = app.tenants.resolve(TenantHint(zone_id=named, source=claim))
        except UnknownTenant:
            return _invalid_grant(f"the assertion's {claim} is an unknown tenant")
    return Grant(client_id, peer, scope=call.form.get("scope"), user=user, tenant=tenant)


def authorization_code(app: TokenApp, call: TokenCall) -> Grant | Response:
    """RFC 6749 section 4.1 with PKCE (RFC 7636, S256): a user token and a refresh token.

    The code must be known, unused, at most 60 s old (server clock), issued to
    this client for this ``redirect_uri`` at an authorization endpoint of this
    token endpoint, for the request's tenant (when it names one), and
    ``code_verifier`` must hash to its ``code_challenge``.
    """
    client = app.authenticate_client(call)
    if isinstance(client, Response):
        return client
    client_id, peer = client
    fields = _required(call, "code")
    if isinstance(fields, Response):
        return fields
    redirect_uri = call.form.get("redirect_uri") or ""
    verifier = call.form.get("code_verifier") or ""

    def check(code: AuthorizationCode) -> str | None:
        if code.client_id != client_id:
            return "the authorization code was issued to another client"
        if code.redirect_uri != redirect_uri:
            return "redirect_uri is not the one the authorization code was issued for"
        if code.token_path != call.path:
            return "the authorization code was issued for another token endpoint"
        if not verifier:
            return "code_verifier is required (PKCE)"
        if not hmac.compare_digest(pkce_challenge(verifier), code.code_challenge):
            return "code_verifier does not match the code_challenge (PKCE)"
        return _other_tenant(call, code.tenant, "authorization code")

    redeemed = app.users.redeem_code(fields[0], call.now, check)
    if isinstance(redeemed, str):
        return _invalid_grant(redeemed)
    return Grant(
        client_id,
        peer,
        scope=redeemed.scope,
        user=redeemed.user,
        tenant=redeemed.tenant,
        refresh=True,
    )


def refresh_token(app: TokenApp, call: TokenCall) -> Grant | Response:
    """RFC 6749 section 6: a new token for the refresh token's user, client and tenant.

    While `UserStore.rotate_refresh_tokens` is on (the default) the answer
    carries a new refresh token and the old one stops working; otherwise the
    same one comes back. `TokenServer.revoke_refresh_tokens` fails all earlier ones.
    """
    client = app.authenticate_client(call)
    if isinstance(client, Response):
        return client
    client_id, peer = client
    fields = _required(call, "refresh_token")
    if isinstance(fields, Response):
        return fields

    def check(grant: RefreshGrant) -> str | None:
        if grant.client_id != client_id:
            return "the refresh token was issued to another client"
        if grant.token_path != call.path:
            return "the refresh token was issued by another token endpoint"
        return _other_tenant(call, grant.tenant, "refresh token")

    used = app.users.use_refresh_token(fields[0], check)
    if isinstance(used, str):
        return _invalid_grant(used)
    return Grant(
        client_id,
        peer,
        scope=used.scope,
        user=used.user,
        tenant=used.tenant,
        refresh=True,
        refresh_token=None if app.users.rotate_refresh_tokens else fields[0],
    )


def password(app: TokenApp, call: TokenCall) -> Grant | Response:
    """RFC 6749 section 4.3: a user token and a refresh token for ``username``/``password``."""
    client = app.authenticate_client(call)
    if isinstance(client, Response):
        return client
    client_id, peer = client
    fields = _required(call, "username", "password")
    if isinstance(fields, Response):
        return fields
    username, secret = fields
    if not app.users.check_password(username, secret):
        return _invalid_grant("wrong username or password")
    return Grant(client_id, peer, scope=call.form.get("scope"), user=username, refresh=True)


#: grant_type -> its handler, in the order discovery lists them.
GRANTS: Mapping[str, GrantHandler] = MappingProxyType(
    {
        "client_credentials": client_credentials,
        JWT_BEARER: jwt_bearer,
        "authorization_code": authorization_code,
        "refresh_token": refresh_token,
        "password": password,
    }
)
