"""The authorization code flow's browser half: the login URL with PKCE (S256), and its callback.

`new_request` makes an `AuthorizationRequest`: the URL to send the browser to
(``response_type=code``, ``client_id``, ``redirect_uri``, a random ``state``,
``code_challenge`` = BASE64URL(SHA-256(verifier)), ``code_challenge_method=S256``
and ``scope`` when given), with the ``state``, ``redirect_uri`` and the secret
``code_verifier`` to keep in the application's session until the callback.
`code_from_callback` checks the callback URL the browser came back to (the
``state`` must match, an ``error`` is raised as `TokenResponseError`) and
returns the code, sealed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from ._errors import ArgumentError, TokenResponseError, clean_text
from ._redact import Secret, safe_repr
from ._urls import https_url, is_loopback

__all__ = ["AuthorizationRequest", "code_from_callback", "new_request"]

_STATE_BYTES = 24
_VERIFIER_BYTES = 64  # 86 characters: RFC 7636 wants 43 to 128


@safe_repr
class AuthorizationRequest:
    """A login in progress: where the browser goes, and what the callback must match.

    Made by ``auth.authorization_request(redirect_uri)``. Keep it in the
    application's session store between the redirect and the callback with
    `as_dict` / `from_dict` (plain JSON values; the dict holds the PKCE code
    verifier, so the session store must be private to the user, as a signed or
    server-side session is). `code_verifier` never shows in `repr`.
    """

    __slots__ = ("_verifier", "redirect_uri", "scope", "state", "url")

    def __init__(
        self,
        url: str,
        state: str,
        redirect_uri: str,
        code_verifier: str | Secret,
        scope: str | None = None,
    ) -> None:
        self.url = url
        self.state = state
        self.redirect_uri = redirect_uri
        self.scope = scope
        self._verifier: Secret = (
            code_verifier if isinstance(code_verifier, Secret) else Secret(code_verifier)
        )

    @property
    def code_verifier(self) -> str:
        """The PKCE code verifier (secret: it proves the callback's code is ours)."""
        verifier: str = self._verifier.value
        return verifier

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values, for the application's session store."""
        return {
            "url": self.url,
            "state": self.state,
            "redirect_uri": self.redirect_uri,
            "code_verifier": self.code_verifier,
            "scope": self.scope,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorizationRequest:
        """The request `as_dict` made, checked (`ArgumentError` for anything else)."""
        if not isinstance(data, Mapping):
            raise ArgumentError("an AuthorizationRequest is restored from the dict as_dict made")
        values = {name: data.get(name) for name in ("url", "state", "redirect_uri")}
        verifier = data.get("code_verifier")
        scope = data.get("scope")
        if not all(isinstance(v, str) and v for v in values.values()) or not (
            isinstance(verifier, str) and 43 <= len(verifier) <= 128
        ):
            raise ArgumentError(
                "this is not an AuthorizationRequest's as_dict(): url, state, redirect_uri "
                "and code_verifier (43 to 128 characters) are required"
            )
        if scope is not None and not isinstance(scope, str):
            raise ArgumentError("an AuthorizationRequest's scope is a string or None")
        url, state, redirect_uri = (str(values[n]) for n in ("url", "state", "redirect_uri"))
        return cls(url, state, redirect_uri, Secret(verifier), scope)

    def __repr__(self) -> str:
        return f"<AuthorizationRequest redirect_uri={self.redirect_uri!r} state={self.state!r}>"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("an AuthorizationRequest holds a code verifier: store as_dict() instead")


def check_redirect_uri(redirect_uri: object) -> str:
    """An absolute https redirect URI (http only to loopback), without a fragment."""
    if not isinstance(redirect_uri, str) or not redirect_uri:
        raise ArgumentError("redirect_uri must be an absolute URL")
    shown = clean_text(redirect_uri, 120)
    try:
        parts = urlsplit(redirect_uri)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ArgumentError(f"redirect_uri {shown!r} is not a valid URL") from None
    if parts.fragment or not host:
        raise ArgumentError(f"redirect_uri {shown!r} must be absolute and without a fragment")
    if parts.scheme == "http" and is_loopback(host):
        return redirect_uri
    https_url(redirect_uri, "redirect_uri")
    return redirect_uri


def new_request(
    authorize_url: str,
    client_id: str,
    redirect_uri: str,
    *,
    scope: str | None = None,
    state: str | None = None,
) -> AuthorizationRequest:
    """A fresh login: a new PKCE verifier, and a random state unless one is given."""
    redirect_uri = check_redirect_uri(redirect_uri)
    if state is None:
        state = secrets.token_urlsafe(_STATE_BYTES)
    elif not isinstance(state, str) or not state or not state.isprintable():
        raise ArgumentError("state must be a non-empty string of printable characters")
    verifier = Secret(secrets.token_urlsafe(_VERIFIER_BYTES))
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.value.encode("ascii")).digest())
        .rstrip(b"=")
        .decode("ascii")
    )
    query = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
    if scope:
        query.append(("scope", scope))
    base = urlsplit(authorize_url)
    joined = "&".join(part for part in (base.query, urlencode(query)) if part)
    url = urlunsplit((base.scheme, base.netloc, base.path, joined, ""))
    return AuthorizationRequest(url, state, redirect_uri, verifier, scope)


def code_from_callback(request: AuthorizationRequest, callback_url: str) -> Secret:
    """The authorization code in `callback_url`, sealed, after checking it belongs to `request`.

    A ``state`` that does not match is an `ArgumentError` (a forged or stale
    callback: nothing is sent); an ``error`` the authorization server sent back
    is a `TokenResponseError` with its ``error`` and ``error_description``.
    """
    if not isinstance(callback_url, str):
        raise ArgumentError("callback_url must be the full URL the browser came back to")
    try:
        query = parse_qs(urlsplit(callback_url).query, keep_blank_values=True)
    except ValueError:
        raise ArgumentError("callback_url is not a valid URL") from None
    states = query.get("state", [])
    if len(states) != 1 or not hmac.compare_digest(
        states[0].encode("utf-8", "replace"), request.state.encode("utf-8", "replace")
    ):
        raise ArgumentError(
            "the callback's state does not match the authorization request's: a forged, "
            "stale or mixed-up callback; nothing was sent"
        )
    errors = query.get("error")
    if errors:
        error = clean_text(errors[0], 80)
        description = clean_text((query.get("error_description") or [""])[0])
        raise TokenResponseError(
            f"the authorization server answered the login with {error}"
            + (f": {description}" if description else ""),
            error=error,
            error_description=description or None,
        )
    codes = query.get("code", [])
    if len(codes) != 1 or not codes[0]:
        raise ArgumentError("the callback carries no authorization code (nor an error)")
    return Secret(codes[0])
