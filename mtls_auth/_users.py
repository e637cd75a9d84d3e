"""Token requests for users: a user's JWT to exchange, a login's code, a stored session.

The public methods (`for_user`, `authorization_request`,
`for_authorization_code`, `for_refresh_token`, `for_password`) live on
`AuthFacade`; what they decide lives here: which tenant a user's token belongs
to, where the browser logs in, what the code exchange and the session that
follows it ask for. Nothing here sends anything.
"""

from __future__ import annotations

from ._authorize import AuthorizationRequest, code_from_callback, new_request
from ._client import ClientState
from ._errors import ArgumentError
from ._grants import AuthorizationCode, JwtBearer, RefreshToken, UserSession
from ._jwt import unverified_claims
from ._redact import Secret
from ._request import TokenRequest
from ._tenant import Tenant

__all__ = ["code_exchange", "exchange_request", "login_request", "session_request"]


def is_ias(state: ClientState) -> bool:
    """Whether the client talks to SAP Identity Services (``/oauth2/token``)."""
    if state.binding is not None:
        return state.binding.kind == "ias"
    return state.token_url.split("?", 1)[0].rstrip("/").endswith("/oauth2/token")


def exchange_request(base: TokenRequest, grant: JwtBearer, state: ClientState) -> TokenRequest:
    """The jwt-bearer request for `grant`, routed to the user's tenant.

    Unless `base` already names a tenant, XSUAA gets the assertion's ``zid``
    (header ``x-zid``) and Identity Services its ``app_tid`` (form field). The
    claims are read without verifying the signature, only to route: the
    authorization server verifies the assertion.
    """
    tenant = base.tenant
    if tenant is None:
        claims = unverified_claims(grant.assertion.value) or {}
        name = "app_tid" if is_ias(state) else "zid"
        value = claims.get(name)
        if isinstance(value, str) and value:
            tenant = (
                Tenant.create(app_tid=value) if name == "app_tid" else Tenant.create(zone_id=value)
            )
    return base.replace(grant=grant, tenant=tenant)


def login_request(
    base: TokenRequest,
    state: ClientState,
    redirect_uri: str,
    *,
    scope: str | None,
    login_state: str | None,
) -> AuthorizationRequest:
    """Where the browser logs in: the authorization endpoint, routed to the tenant."""
    endpoint = state.authorization_url
    if endpoint is None:
        raise ArgumentError(
            "no authorization endpoint is known for this client: pass authorization_url= "
            "to the constructor, or use a binding with a url, or from_binding(discover=True)"
        )
    tenant = base.tenant
    if tenant is not None:
        if tenant.subdomain is None:
            raise ArgumentError(
                "a tenant given by zone id or app_tid has no login page of its own: "
                "use for_tenant(subdomain) for logins"
            )
        endpoint = tenant.token_url(endpoint)
    return new_request(endpoint, state.client_id, redirect_uri, scope=scope, state=login_state)


def code_exchange(
    base: TokenRequest, login: AuthorizationRequest, callback_url: Secret
) -> tuple[TokenRequest, TokenRequest]:
    """The code exchange for a login's callback, and the session request that follows it.

    Both share one cache key (the new session's id): the token the exchange
    gets is the session's first token; later ones come with its refresh token.
    """
    if not isinstance(login, AuthorizationRequest):
        raise ArgumentError(
            "pass the AuthorizationRequest authorization_request() made "
            "(or AuthorizationRequest.from_dict of its as_dict())"
        )
    code = code_from_callback(login, callback_url.value)
    session = UserSession(None)
    grant = AuthorizationCode(code, login.redirect_uri, Secret(login.code_verifier), session)
    return base.replace(grant=grant), session_request(base, session)


def session_request(base: TokenRequest, session: UserSession) -> TokenRequest:
    """The request that renews `session`'s token with its refresh token."""
    return base.replace(grant=RefreshToken.of(session))
