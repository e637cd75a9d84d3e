"""The authorization endpoint: a login that always succeeds (unless told otherwise), without I/O.

``GET /oauth/authorize`` (XSUAA) and ``GET /oauth2/authorize`` (IAS) take
``response_type=code``, ``client_id``, ``redirect_uri``, ``state``,
``code_challenge`` and ``code_challenge_method=S256`` (and an optional
``scope``) and answer 302 to ``redirect_uri?code=...&state=...`` for the
logged-in user. Errors go back to the redirect URI as ``error``,
``error_description`` and ``state``; a redirect URI that cannot be used (none,
not an absolute http(s) URL, or with a fragment) is a 400 instead. The tenant is
the first label of the host (``<subdomain>.authentication.mtls.test`` or
``<tenant>.accounts.mtls.test``), as at the token endpoint.

`login` runs the same logic on an authorization URL, without HTTP: that is how
a test completes a login without a browser.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit, urlunsplit

from ._oauth import AUTHORIZE_PATHS, NO_STORE, TOKEN_SHAPES, oauth_error, parse_form_lists
from ._tenants import TenantHint, UnknownTenant, label_under
from ._users import CODE_LIFETIME, AuthorizationCode
from ._wire import Response

if TYPE_CHECKING:
    from ._app import TokenApp

__all__ = ["authorize", "login"]

#: RFC 7636: 43 to 128 characters of the unreserved set (S256 gives 43).
_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def _usable(redirect_uri: str) -> bool:
    try:
        parts = urlsplit(redirect_uri)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment


def _redirect(redirect_uri: str, params: dict[str, str]) -> Response:
    parts = urlsplit(redirect_uri)
    query = urlencode(params)
    if parts.query:
        query = f"{parts.query}&{query}"
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return Response(302, b"", "text/plain", headers=(("Location", location), *NO_STORE))


def authorize(app: TokenApp, path: str, query: str, host: str | None, user: str) -> Response:
    """Answer an authorization request to `path` (with `query`) on `host`, logged in as `user`.

    A 302 to the redirect URI (a code, or an error), or a 400 when there is no
    usable redirect URI. Denials queued with `UserStore.deny_next_login` are
    used up here, by requests that would otherwise have succeeded.
    """
    token_path = AUTHORIZE_PATHS.get(path)
    if token_path is None:
        return oauth_error(404, "invalid_request", "not an authorization endpoint")
    lists = parse_form_lists(query)
    params = {name: values[0] for name, values in lists.items()}
    redirect_uri = params.get("redirect_uri", "")
    if not _usable(redirect_uri):
        return oauth_error(
            400,
            "invalid_request",
            "redirect_uri is missing or not an absolute http(s) URL without a fragment",
        )
    if len(lists["redirect_uri"]) > 1:
        return oauth_error(400, "invalid_request", "redirect_uri given more than once")
    state = params.get("state")

    def error(code: str, description: str) -> Response:
        answer = {"error": code, "error_description": description}
        if state is not None:
            answer["state"] = state
        return _redirect(redirect_uri, answer)

    repeated = next((name for name, values in lists.items() if len(values) > 1), None)
    if repeated is not None:
        return error("invalid_request", f"{repeated} given more than once")
    response_type = params.get("response_type")
    if not response_type:
        return error("invalid_request", "response_type is required")
    if response_type != "code":
        return error("unsupported_response_type", "only response_type=code is supported")
    client_id = params.get("client_id")
    if not client_id:
        return error("invalid_request", "client_id is required")
    if not app.is_registered(client_id):
        return error("unauthorized_client", "unknown client_id")
    method = params.get("code_challenge_method")
    if not params.get("code_challenge") or not method:
        return error("invalid_request", "code_challenge and code_challenge_method are required")
    if method != "S256":
        return error("invalid_request", "code_challenge_method must be S256")
    challenge = params["code_challenge"]
    if not _CHALLENGE.fullmatch(challenge):
        return error("invalid_request", "code_challenge is not a valid S256 challenge")
    shape = TOKEN_SHAPES[token_path]
    label = label_under(host, shape.tenant_domains)
    try:
        tenant = app.tenants.resolve(TenantHint(subdomain=label, source="host"))
    except UnknownTenant:
        return error("invalid_request", "unknown tenant")
    denial = app.users.take_denial()
    if denial is not None:
        return error(denial, "the login was denied")
    code = app.users.new_code(
        AuthorizationCode(
            client_id=client_id,
            redirect_uri=redirect_uri,
            code_challenge=challenge,
            user=user,
            tenant=tenant,
            token_path=token_path,
            scope=params.get("scope") or None,
            expires_at=app.clock() + CODE_LIFETIME,
        )
    )
    answer = {"code": code}
    if state is not None:
        answer["state"] = state
    return _redirect(redirect_uri, answer)


def login(app: TokenApp, authorization_url: str, user: str) -> str:
    """The callback URL a browser would be sent to after logging in as `user`.

    `authorization_url` is a full URL to an authorization endpoint of the app
    (any host: its first label names the tenant, as over HTTP). An error the
    endpoint sends back to the client is in the callback URL; ValueError when
    there is no callback to go to (a bad redirect URI, not an authorization URL).
    """
    try:
        parts = urlsplit(authorization_url)
    except ValueError:
        raise ValueError("not a URL") from None
    if parts.path not in AUTHORIZE_PATHS:
        raise ValueError(
            f"not an authorization URL of the test server: the path must be one of "
            f"{', '.join(AUTHORIZE_PATHS)}"
        )
    response = authorize(app, parts.path, parts.query, parts.netloc, user)
    location = response.header("Location")
    if location is None:
        description = response.json().get("error_description", "refused")
        raise ValueError(f"the authorization request was refused: {description}")
    return location
