"""The token server's users and their grants' state: passwords, codes, refresh tokens, user JWTs.

`UserStore` is plain state behind one lock, without any I/O: the grant
handlers (`._grants`) and the authorization endpoint (`._authorize`) ask it.
Every secret it hands out (authorization codes, refresh tokens, minted user
tokens) is also a key of `UserStore.secrets`, a live dict that only grows, so a
test suite can check that none of them ever leaks. The records kept here
never hold the secret itself.
"""

from __future__ import annotations

import hmac
import secrets as _random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .._redact import safe_repr
from ._signing import JwtSigner

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._tenants import Tenant

__all__ = [
    "CODE_LIFETIME",
    "TEST_PASSWORD",
    "TEST_USER",
    "AuthorizationCode",
    "RefreshGrant",
    "UserStore",
]

#: The user logged in at the authorization endpoint, and the default password-grant user.
TEST_USER = "test-user"
#: `TEST_USER`'s password for the password grant.
TEST_PASSWORD = "test-password"  # noqa: S105 (a well-known test password, by design)
#: Seconds an authorization code may be redeemed after it was issued (server clock).
CODE_LIFETIME = 60.0


@dataclass(frozen=True)
class AuthorizationCode:
    """What an authorization code stands for (never the code itself)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    user: str
    tenant: Tenant | None
    #: The token endpoint path it is redeemed at.
    token_path: str
    scope: str | None
    expires_at: float


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for (never the token itself)."""

    number: int
    client_id: str
    user: str | None
    tenant: Tenant | None
    token_path: str
    scope: str | None


@safe_repr
class UserStore:
    """Users, authorization codes, refresh tokens and the user-token signing key.

    `rotate_refresh_tokens` (default True): each refresh answers a new refresh
    token and invalidates the old one. Thread-safe: `lock` (the app's, so that
    one lock guards `secrets` and the app's live token dict) is never held
    while calling out, except into the pure checks of `redeem_code` and
    `use_refresh_token`.
    """

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        #: Signs user tokens (`mint`) and verifies jwt-bearer assertions; not the access-token key.
        self.signer = JwtSigner(kid="mtls-auth-testing-users-1")
        self.rotate_refresh_tokens = True
        #: Every code, refresh token and minted user token handed out -> what it is (only grows).
        self.secrets: dict[str, str] = {}
        self._users: dict[str, str] = {TEST_USER: TEST_PASSWORD}
        self._codes: dict[str, AuthorizationCode] = {}
        self._used_codes: set[str] = set()
        self._refresh: dict[str, RefreshGrant] = {}
        self._replaced: set[str] = set()
        self._refresh_issued = 0
        self._refresh_revoked_up_to = 0
        self._denials: list[str] = []

    def __repr__(self) -> str:
        with self.lock:
            counts = (len(self._users), len(self._codes), len(self._refresh))
        return "UserStore(users={}, codes={}, refresh_tokens={})".format(*counts)

    def _secret(self, kind: str) -> str:
        # Under self.lock.
        value = _random.token_urlsafe(32)
        self.secrets[value] = kind
        return value

    # -- users --

    def add_user(self, username: str, password: str) -> None:
        """Let `username` log in with `password` (password grant); replaces an earlier one."""
        if not isinstance(username, str) or not username:
            raise ValueError("username must be a non-empty string")
        if not isinstance(password, str):
            raise TypeError("password must be a string")
        with self.lock:
            self._users[username] = password

    def check_password(self, username: str, password: str) -> bool:
        """Whether `password` is `username`'s (compared in constant time)."""
        with self.lock:
            known = self._users.get(username)
        return known is not None and hmac.compare_digest(known.encode(), password.encode())

    # -- logins and codes --

    def deny_next_login(self, error: str) -> None:
        """Make the next login answer `error` instead of a code (queued, one per call)."""
        with self.lock:
            self._denials.append(error)

    def take_denial(self) -> str | None:
        """The error the next login must answer, used up; None: let it succeed."""
        with self.lock:
            return self._denials.pop(0) if self._denials else None

    def new_code(self, code: AuthorizationCode) -> str:
        """A fresh authorization code for `code`."""
        with self.lock:
            value = self._secret("authorization code")
            self._codes[value] = code
        return value

    def redeem_code(
        self, value: str, now: float, check: Callable[[AuthorizationCode], str | None]
    ) -> AuthorizationCode | str:
        """The code's grant, used up; or why not. `check` adds the caller's checks.

        The code must be known, unused and not expired at `now`; then `check`
        (returning an error description or None) decides. Only a redemption
        that passes every check uses the code up.
        """
        with self.lock:
            code = self._codes.get(value)
            if code is None:
                return "unknown authorization code"
            if value in self._used_codes:
                return "the authorization code has already been used"
            if now >= code.expires_at:
                return "the authorization code has expired"
            problem = check(code)
            if problem is not None:
                return problem
            self._used_codes.add(value)
        return code

    # -- refresh tokens --

    def new_refresh_token(
        self,
        client_id: str,
        user: str | None,
        tenant: Tenant | None,
        token_path: str,
        scope: str | None,
    ) -> str:
        """A fresh refresh token for that client, user, tenant, endpoint and scope."""
        with self.lock:
            self._refresh_issued += 1
            value = self._secret("refresh token")
            self._refresh[value] = RefreshGrant(
                self._refresh_issued, client_id, user, tenant, token_path, scope
            )
        return value

    def use_refresh_token(
        self, value: str, check: Callable[[RefreshGrant], str | None]
    ) -> RefreshGrant | str:
        """The refresh token's grant (replaced by a new one when rotating), or why not."""
        with self.lock:
            grant = self._refresh.get(value)
            if grant is None:
                return "unknown refresh token"
            if grant.number <= self._refresh_revoked_up_to:
                return "the refresh token has been revoked"
            if value in self._replaced:
                return "the refresh token has been replaced by a newer one"
            problem = check(grant)
            if problem is not None:
                return problem
            if self.rotate_refresh_tokens:
                self._replaced.add(value)
        return grant

    def revoke_refresh_tokens(self) -> None:
        """Make every refresh token issued so far fail (later ones are unaffected)."""
        with self.lock:
            self._refresh_revoked_up_to = self._refresh_issued

    # -- user tokens --

    def mint(self, claims: Mapping[str, Any]) -> str:
        """`claims` signed with the user key, remembered as a secret."""
        token = self.signer.sign(claims)
        with self.lock:
            self.secrets[token] = "user token"
        return token
