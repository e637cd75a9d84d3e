"""The OAuth grants mtls-auth asks for: adding a grant is one class in this module.

A grant says what the token request form carries besides ``grant_type`` and
``client_id`` (every request carries those; the client authenticates with its
certificate, never with a secret), what identifies its token in the cache (never
a secret itself: digests or random ids), which cache bucket its tokens live in
(each kind of token has its own bound), and, where it has to, when it can no
longer be used, what to keep from an answer and what a refusal means. Grants
are small frozen dataclasses: hashable, comparable, safe to print; their
secrets sit in `Secret` holders.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ._errors import ArgumentError, LoginRequiredError, TokenError, TokenResponseError
from ._jwt import looks_like_jwt, number_claim, unverified_claims
from ._redact import Secret, redact, safe_repr

if TYPE_CHECKING:
    from ._token import Token

__all__ = [
    "CLIENT_CREDENTIALS",
    "AuthorizationCode",
    "ClientCredentials",
    "Grant",
    "JwtBearer",
    "Password",
    "RefreshToken",
    "UserSession",
]


class Grant:
    """What to put in the form for one way of obtaining a token.

    Subclasses set `grant_type`, and override `fields` (form fields besides
    ``grant_type`` and ``client_id``) and `key` (what tells their tokens apart:
    digests of secrets, never the secrets) when they carry data. `bucket` names
    the cache bucket, whose size limit the client configures.
    """

    grant_type: ClassVar[str]
    bucket: ClassVar[str] = "client"
    #: Form fields the grant sets itself; `params=` may not set them.
    reserved: ClassVar[frozenset[str]] = frozenset()
    #: Whether its tokens may be shared through a token store (``token_store=``):
    #: not a user session's, whose refresh token belongs to this process alone.
    shared: ClassVar[bool] = True

    def fields(self) -> list[tuple[str, str]]:
        return []

    @property
    def key(self) -> tuple[str, ...]:
        return (self.grant_type,)

    def describe(self) -> str:
        """A short, non-secret description for repr."""
        return self.grant_type

    def usable(self) -> None:
        """Raise a `TokenError` if this grant can no longer get a token (nothing is sent)."""

    def received(self, token: Token) -> None:
        """Keep what this grant needs from a token the endpoint issued for it."""

    def refused(self, error: TokenResponseError) -> TokenError:
        """The error to raise when the endpoint refused this grant."""
        return error


@safe_repr
@dataclass(frozen=True)
class ClientCredentials(Grant):
    """The technical token of the client itself (RFC 6749 section 4.4)."""

    grant_type: ClassVar[str] = "client_credentials"


#: The one client-credentials grant (it carries no data).
CLIENT_CREDENTIALS = ClientCredentials()


def _digest(*parts: str) -> str:
    """A cache identity for secrets, never the secrets: SHA-256 of the parts."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogatepass"))
        hasher.update(b"\0")
    return hasher.hexdigest()


@safe_repr
@dataclass(frozen=True)
class JwtBearer(Grant):
    """A user's JWT exchanged for a token of this client (RFC 7523, jwt-bearer).

    Cached per assertion: the key is the assertion's SHA-256. Once the
    assertion's ``exp`` has passed (wall clock), nothing more is sent.
    """

    grant_type: ClassVar[str] = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    bucket: ClassVar[str] = "user"
    reserved: ClassVar[frozenset[str]] = frozenset({"assertion"})

    digest: str
    assertion: Secret = field(compare=False, repr=False)
    #: The assertion's ``exp`` (seconds since the epoch), when it has one.
    expires_at: float | None = field(default=None, compare=False)

    @classmethod
    def of(cls, assertion: object) -> JwtBearer:
        """The grant for `assertion`, a JWT (`ArgumentError`, also a `ValueError`, if not)."""
        sealed = redact(assertion)
        value = sealed.value
        if not isinstance(value, str) or not looks_like_jwt(value):
            shape = "a string of another shape" if isinstance(value, str) else type(value).__name__
            raise ArgumentError(
                "the user's token must be a JWT (three base64url parts separated by dots), "
                f"not {shape}"
            )
        claims = unverified_claims(value)
        if claims is None:
            raise ArgumentError("the user's token is not a JWT: its payload is not a JSON object")
        return cls(cls.digest_of(value), sealed, number_claim(claims, "exp"))

    @staticmethod
    def digest_of(assertion: str) -> str:
        """The SHA-256 (hex) that stands for `assertion` in cache keys and memos."""
        return hashlib.sha256(assertion.encode("utf-8", "surrogatepass")).hexdigest()

    def fields(self) -> list[tuple[str, str]]:
        return [("assertion", self.assertion.value)]

    @property
    def key(self) -> tuple[str, ...]:
        return ("jwt-bearer", self.digest)

    def describe(self) -> str:
        return "jwt-bearer"

    def usable(self) -> None:
        if self.expires_at is not None and time.time() >= self.expires_at:
            raise TokenError(
                "the user's token expired (its exp has passed): it cannot be exchanged any "
                "more; the user needs a fresh token (log in again)"
            )


class UserSession:
    """A user's refresh token, replaced by each newer one the endpoint sends (thread-safe)."""

    __slots__ = ("_lock", "_refresh", "id")

    def __init__(self, refresh_token: Secret | None) -> None:
        #: A random identity for the cache key: the refresh token itself may rotate.
        self.id = secrets.token_hex(16)
        self._refresh = refresh_token
        self._lock = threading.Lock()

    @property
    def refresh_token(self) -> Secret | None:
        return self._refresh

    def keep(self, token: Token) -> None:
        """Keep the refresh token that came with `token`, if any: the newest wins."""
        if token.refresh_token is not None:
            with self._lock:
                self._refresh = token.refresh_token

    def __repr__(self) -> str:
        return "<UserSession refresh_token=<redacted>>"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a user session holds a refresh token and cannot be pickled")


@safe_repr
@dataclass(frozen=True)
class RefreshToken(Grant):
    """A user session renewed with its refresh token (RFC 6749 section 6).

    The session keeps the newest refresh token the endpoint sent; a refresh the
    endpoint refuses with ``invalid_grant`` raises `LoginRequiredError`.
    """

    grant_type: ClassVar[str] = "refresh_token"
    bucket: ClassVar[str] = "user"
    reserved: ClassVar[frozenset[str]] = frozenset({"refresh_token"})
    shared: ClassVar[bool] = False

    session: UserSession = field(compare=False, repr=False)
    session_id: str = ""

    @classmethod
    def of(cls, session: UserSession) -> RefreshToken:
        return cls(session, session.id)

    def fields(self) -> list[tuple[str, str]]:
        current = self.session.refresh_token
        return [] if current is None else [("refresh_token", current.value)]

    @property
    def key(self) -> tuple[str, ...]:
        return ("session", self.session_id)

    def describe(self) -> str:
        return "refresh_token"

    def usable(self) -> None:
        if self.session.refresh_token is None:
            raise LoginRequiredError(
                "this user session has no refresh token to renew its token with: "
                "the user needs to log in again",
                error="invalid_grant",
            )

    def received(self, token: Token) -> None:
        self.session.keep(token)

    def refused(self, error: TokenResponseError) -> TokenError:
        if error.error == "invalid_grant":
            return LoginRequiredError(
                f"the refresh token was refused ({error}): the user needs to log in again",
                status_code=error.status_code,
                error=error.error,
                error_description=error.error_description,
            )
        return error


@safe_repr
@dataclass(frozen=True)
class AuthorizationCode(Grant):
    """An authorization code (with its PKCE verifier) exchanged once, for a user session.

    Its token and refresh token go to the session; later tokens come from
    `RefreshToken` on that session.
    """

    grant_type: ClassVar[str] = "authorization_code"
    bucket: ClassVar[str] = "user"
    reserved: ClassVar[frozenset[str]] = frozenset({"code", "redirect_uri", "code_verifier"})
    shared: ClassVar[bool] = False

    code: Secret = field(compare=False, repr=False)
    redirect_uri: str = ""
    code_verifier: Secret = field(default_factory=lambda: Secret(""), compare=False, repr=False)
    session: UserSession = field(default_factory=lambda: UserSession(None), compare=False)

    def fields(self) -> list[tuple[str, str]]:
        return [
            ("code", self.code.value),
            ("redirect_uri", self.redirect_uri),
            ("code_verifier", self.code_verifier.value),
        ]

    @property
    def key(self) -> tuple[str, ...]:
        return ("session", self.session.id)

    def describe(self) -> str:
        return "authorization_code"

    def received(self, token: Token) -> None:
        self.session.keep(token)


@safe_repr
@dataclass(frozen=True)
class Password(Grant):
    """The resource owner password grant: legacy, for tests and tooling only.

    Each token is a new password grant; the key is a digest of user and password.
    """

    grant_type: ClassVar[str] = "password"
    bucket: ClassVar[str] = "user"
    reserved: ClassVar[frozenset[str]] = frozenset({"username", "password"})

    username: str = field(repr=False)
    password: Secret = field(compare=False, repr=False)
    digest: str = ""

    @classmethod
    def of(cls, username: object, password: object) -> Password:
        sealed = redact(password)
        if not isinstance(username, str) or not username:
            raise ArgumentError("username must be a non-empty string")
        if not isinstance(sealed.value, str) or not sealed.value:
            raise ArgumentError("password must be a non-empty string")
        return cls(username, sealed, _digest(username, sealed.value))

    def fields(self) -> list[tuple[str, str]]:
        return [("username", self.username), ("password", self.password.value)]

    @property
    def key(self) -> tuple[str, ...]:
        return ("password", self.digest)

    def describe(self) -> str:
        return "password"
