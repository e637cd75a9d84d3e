"""The client: who asks for tokens, shared by every token it asks for.

A `TokenClient` holds what stays the same whatever token is asked for: the
client certificate and its rotation, the client id and token URL, the trust
for the token endpoint (`verify`), where bearer tokens may go, the retry policy
and timeout, the token cache (one entry per `TokenRequest`), and the `Sender`
that talks to the token endpoint with one HTTP library (its connection pools).

Each `MtlsOAuth2` is a client plus a `TokenRequest`. Objects derived from one
(another tenant, a user) share its client: no new SSLContext, pools or watch.

`token` and `atoken` are the two drivers of the same decisions: check for a
rotated certificate, take the token from the cache or fetch it once for all
waiters (`fetch_flow` run with the sender), and, when the token endpoint
rejected the certificate, look for a rotated one and try once more. With a
token store (``token_store=``), the fetch the cache runs on a miss is wrapped
by `_store.SharedTokens`: the store first, then one fetch per fleet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Collection, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

from . import _after_fork as after_fork
from . import _aio as aio
from ._binding import Binding
from ._cache import RefreshPolicy, TokenCache
from ._certificate import (
    CertificateProvider,
    CertificateSource,
    ClientCertificate,
    coerce_certificate,
)
from ._destinations import Destinations
from ._errors import (
    ArgumentError,
    BindingError,
    CertificateError,
    TokenError,
    TokenRequestError,
    TokenResponseError,
    check_seconds,
)
from ._http import HttpRequest, HttpResponse, TransportFailure
from ._idle import IdleRelease
from ._redact import Secret, aguarded, guarded, redact, safe_repr
from ._request import TokenRequest
from ._retry import Reply, RetryPolicy, Step, fetch_flow
from ._rotation import CertificateWatch, Loaded, SharedContexts
from ._sources import BindingFeed
from ._tls import Verify, build_ssl_context
from ._token import Token
from ._urls import https_url

if TYPE_CHECKING:
    # Imported when a store is configured: a client without one does not load them.
    from ._store import SharedTokens, TokenStore

__all__ = ["ClientState", "Sender", "Settings", "TokenClient"]

logger = logging.getLogger(__name__)

#: Seconds during which a token that was refused right after a 401 refresh is not
#: refreshed again for another 401.
REFUSED_COOLDOWN = 30.0

Outcome = Union[HttpResponse, TransportFailure]


@safe_repr
@dataclass(frozen=True)
class Settings:
    """A client's options, validated once (the public constructors document them)."""

    verify: Verify
    timeout: float
    leeway: float
    allowed_hosts: Collection[str] | None
    allow_http_loopback: bool
    retry: RetryPolicy
    clock: Callable[[], float]
    check_interval: float
    #: Tokens of subscriber tenants kept at most (least recently used go first).
    max_tenants: int = 10_000
    #: Tokens of users (exchanged, logged in) kept at most, likewise.
    max_users: int = 10_000
    #: Where the processes of a fleet share tokens (None: this process only).
    token_store: TokenStore | None = None

    def __post_init__(self) -> None:
        if self.verify is False or self.verify is None:
            # Refused here, not at the first token fetch.
            build_ssl_context(self.verify)
        check_seconds(self.timeout, "timeout")
        check_seconds(self.leeway, "leeway", zero=True)
        check_seconds(self.check_interval, "check_interval", zero=True)  # 0: every request
        if not isinstance(self.allow_http_loopback, bool):
            raise ArgumentError("allow_http_loopback must be True or False")
        if not isinstance(self.retry, RetryPolicy):
            raise ArgumentError("retry must be a mtls_auth.RetryPolicy")
        if not callable(self.clock):
            raise ArgumentError("clock must be a callable returning seconds")
        for name in ("max_tenants", "max_users"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{name} must be a whole number >= 1, not {value!r}")
        if self.token_store is not None and not _is_store(self.token_store):
            raise ArgumentError(
                "token_store must be a mtls_auth.TokenStore or a URL (redis://, rediss://, "
                f"file:///), not {type(self.token_store).__name__}"
            )


@safe_repr
@dataclass(frozen=True)
class ClientState:
    """Everything that changes together when the certificate rotates, in one reading."""

    certificate: ClientCertificate
    token_url: str
    client_id: str
    generation: int
    binding: Binding | None = None
    #: The browser-facing authorization endpoint, when one is known.
    authorization_url: str | None = None


class Sender(Protocol):
    """Sends the token endpoint's requests with one HTTP library, over mTLS.

    Made by the integration for each client (`sender_factory`); it presents the
    state's certificate, keeps its own pools, and never follows redirects.
    """

    def send(self, request: HttpRequest, state: ClientState) -> Outcome: ...

    async def asend(self, request: HttpRequest, state: ClientState) -> Outcome: ...

    def idle_for(self, in_loop: bool) -> IdleRelease:
        """What lets go of the connections a sync (or this loop's async) fetch used."""
        ...

    def close(self) -> None: ...


def check_endpoint(token_url: object, client_id: object) -> None:
    """Fail fast on a token URL or client id that cannot work."""
    # BindingError (an ArgumentError): what these raised before ArgumentError existed.
    https_url(token_url, "token_url", BindingError)
    if not isinstance(client_id, str) or not client_id or not client_id.isprintable():
        raise BindingError("client_id must be a non-empty string of printable characters")


@safe_repr
class TokenClient:
    """Certificate, endpoints, policies, token cache and sender of one client.

    `certificate` is PEM text (with `key`), a `ClientCertificate`, a provider
    callable returning a fresh `ClientCertificate` (a vault, say), or the
    `BindingFeed` of a binding, which is re-read when it changes (a token URL
    found by discovery stays pinned across re-reads).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        certificate: CertificateSource | CertificateProvider,
        key: str | bytes | Secret | None,
        password: str | bytes | Secret | None,
        settings: Settings,
        sender_factory: Callable[[TokenClient], Sender],
        *,
        authorization_url: str | None = None,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        check_endpoint(token_url, client_id)
        if authorization_url is not None:
            https_url(authorization_url, "authorization_url")
        self.settings = settings
        self._token_url_override: str | None = None
        #: Given to the constructor or found by discovery: kept across re-reads.
        self._authorization_override = authorization_url
        self.watch: CertificateWatch | None = None
        binding: Binding | None = None
        if isinstance(certificate, BindingFeed):
            if key is not None or password is not None:
                raise CertificateError("key= and password= do not apply to a binding")
            cert, binding = certificate.certificate, certificate.binding
            self._token_url_override = certificate.token_url_override
            self._authorization_override = (
                authorization_url or certificate.authorization_url_override
            )
            if certificate.source.rereadable:
                self.watch = CertificateWatch(
                    Loaded(cert, binding),
                    source=certificate.source,
                    interval=settings.check_interval,
                    provider_interval=max(settings.check_interval, 60.0),
                )
        elif callable(certificate) and not isinstance(certificate, ClientCertificate):
            if key is not None or password is not None:
                raise CertificateError("key= and password= do not apply to a provider callable")
            cert = _provided(certificate)
            self.watch = CertificateWatch(
                Loaded(cert),
                provider=certificate,
                interval=settings.check_interval,
                provider_interval=max(settings.check_interval, 60.0),
            )
        else:
            cert = coerce_certificate(certificate, key, password)
        self._state = ClientState(
            cert, token_url, client_id, 0, binding, self._authorization_url(binding)
        )
        self.destinations = Destinations(settings.allowed_hosts, settings.allow_http_loopback)
        store = settings.token_store
        lease = 0.0
        #: The second level below the cache, shared by the processes of a fleet.
        self.shared: SharedTokens | None = None
        if store is not None:
            from ._store import lease_seconds

            # A fetch that first waits out another process's lease takes up to
            # the lease time longer: the cache's own waiters wait that much longer.
            lease = lease_seconds(settings.timeout)
        self.cache = TokenCache(
            clock=settings.clock,
            policy=RefreshPolicy(leeway=settings.leeway),
            wait_timeout=settings.timeout * 2 + 5 + lease,
            limits={"tenant": settings.max_tenants, "user": settings.max_users},
        )
        if store is not None:
            from ._store import SharedTokens

            self.shared = SharedTokens(
                store, clock=settings.clock, policy=self.cache.policy, timeout=settings.timeout
            )
        self._rotate_lock = threading.Lock()
        #: One SSLContext per HTTP-library flavour, for the sender and adapters alike.
        self.contexts = SharedContexts(self, settings.verify)
        self.sender = sender_factory(self)
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._rotate_lock = threading.Lock()

    # -- the current state ---------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Certificate, endpoints and generation, as one consistent reading."""
        return self._state

    def _authorization_url(self, binding: Binding | None) -> str | None:
        if self._authorization_override is not None:
            return self._authorization_override
        return None if binding is None else binding.authorization_url

    def key(self, request: TokenRequest, state: ClientState) -> tuple[Any, ...]:
        """The cache key of `request`'s token for this client in `state`."""
        return request.cache_key(state.token_url, state.client_id, state.certificate.thumbprint)

    def rotate(self, *, force: bool = False) -> bool:
        """Check for a rotated certificate; True if the state changed."""
        watch = self.watch
        if watch is None:
            return False
        with self._rotate_lock:
            loaded = watch.poll(force=force)
            if loaded is None:
                return False
            state = self._state
            token_url, client_id, binding = state.token_url, state.client_id, state.binding
            if loaded.binding is not None:
                binding = loaded.binding
                token_url = self._token_url_override or binding.token_url
                client_id = binding.client_id
            self._state = ClientState(
                loaded.certificate,
                token_url,
                client_id,
                state.generation + 1,
                binding,
                self._authorization_url(binding),
            )
            # Tokens were bound to the old certificate: drop them. Requests already
            # in flight finish with what they have.
            self.cache.clear()
            return True

    # -- tokens ----------------------------------------------------------------------

    def fresh(self, key: tuple[Any, ...]) -> Token | None:
        """The cached token for `key` if it is fresh and no rotation check is due."""
        watch = self.watch
        if watch is not None and watch.due():
            return None
        return self.cache.current(key)

    @guarded
    def token(self, request: TokenRequest) -> Token:
        """A usable token for `request` (threads)."""
        self.rotate()
        state = self._state
        try:
            key = self.key(request, state)
            return self.cache.get(key, self._fetcher(request, state, key))
        except TokenError as exc:
            if self._worth_a_rotation_check(exc):
                self.rotate(force=True)
            state = self._rotated_since(state, exc)
        key = self.key(request, state)
        return self.cache.get(key, self._fetcher(request, state, key))

    @aguarded
    async def atoken(self, request: TokenRequest) -> Token:
        """A usable token for `request` (coroutines); files are read off the loop."""
        watch = self.watch
        if watch is not None and watch.due():
            await aio.off_loop(self.rotate)
        state = self._state
        try:
            key = self.key(request, state)
            return await self.cache.aget(key, self._afetcher(request, state, key))
        except TokenError as exc:
            if self._worth_a_rotation_check(exc):
                await aio.off_loop(lambda: self.rotate(force=True))
            state = self._rotated_since(state, exc)
        key = self.key(request, state)
        return await self.cache.aget(key, self._afetcher(request, state, key))

    def _fetcher(
        self, request: TokenRequest, state: ClientState, key: tuple[Any, ...]
    ) -> Callable[[], Token]:
        """What the cache runs on a miss (threads): the fetch, behind the store if there is one."""
        shared = self.shared
        if shared is None or not request.grant.shared:
            return lambda: self._fetch(request, state)
        return lambda: shared.fetch(key, state.certificate, lambda: self._fetch(request, state))

    def _afetcher(
        self, request: TokenRequest, state: ClientState, key: tuple[Any, ...]
    ) -> Callable[[], Awaitable[Token]]:
        """What the cache runs on a miss (coroutines): the fetch, behind the store if any."""
        shared = self.shared
        if shared is None or not request.grant.shared:
            return lambda: self._afetch(request, state)
        return lambda: shared.afetch(key, state.certificate, lambda: self._afetch(request, state))

    def _rotated_since(self, state: ClientState, exc: TokenError) -> ClientState:
        """After a failed fetch: the new state to try once more with, or raise `exc`."""
        if self._state is state:
            raise exc
        logger.info("retrying the token request with the rotated certificate")
        return self._state

    def _worth_a_rotation_check(self, exc: TokenError) -> bool:
        """Did the token endpoint refuse our certificate (the sign of a rotation)?"""
        if self.watch is None:
            return False
        if isinstance(exc, TokenRequestError):
            return exc.kind in ("tls_client", "tls_closed")
        if isinstance(exc, TokenResponseError):
            return exc.status_code == 401 or exc.error == "invalid_client"
        return False

    def invalidate(self, key: tuple[Any, ...], token: Token) -> bool:
        """Forget `token` after a 401, if it is still the current one.

        Returns whether resending with a new token is worth it: not when this
        very token was fetched to answer a 401 and was refused too, within the
        last `REFUSED_COOLDOWN` seconds (a resource that refuses every token,
        say for a missing role, would otherwise cost a token request per request).
        """
        refused = token.refused_at
        if refused is not None and time.monotonic() < refused + REFUSED_COOLDOWN:
            return False
        self.cache.invalidate(key, token)
        if self.shared is not None:
            # Other processes may have put this very token in the store: not again.
            self.shared.refuse(key, token)
        if self.watch is not None:
            # A 401 is also what a rotated-and-revoked certificate looks like:
            # look for a new binding now (rate-limited), not at the next check.
            self.rotate(force=True)
        return True

    async def ainvalidate(self, key: tuple[Any, ...], token: Token) -> bool:
        """`invalidate` for coroutines: a watched binding is checked off the loop."""
        if self.watch is None:
            return self.invalidate(key, token)
        worth: bool = await aio.off_loop(lambda: self.invalidate(key, token))
        return worth

    @staticmethod
    def refused_after_retry(token: Token) -> None:
        """The fresh token fetched for a 401 got a 401 too: stop refreshing for it."""
        token.refused_at = time.monotonic()

    # -- one fetch, sync and async ----------------------------------------------------

    def route(self, request: TokenRequest, state: ClientState) -> str:
        """The token URL `request` goes to in `state`, checked (tenant routing)."""
        url = request.token_url(state.token_url)
        if url != state.token_url:
            self.destinations.check_routed_token_url(url)
        return url

    def _flow(self, request: TokenRequest, state: ClientState) -> Generator[Step, Reply, Token]:
        """One fetch for `request`: the grant's checks around `fetch_flow`."""
        grant = request.grant
        grant.usable()  # an expired assertion, a session without refresh token: send nothing
        url = self.route(request, state)
        logger.debug("requesting a %s token from %s for %r", grant.describe(), url, state.client_id)
        try:
            token = yield from fetch_flow(
                request.http_request(state.token_url, state.client_id),
                timeout=self.settings.timeout,
                retry=self.settings.retry,
                clock=self.cache.clock,
                subject=lambda: state.certificate.subject,
            )
        except TokenResponseError as exc:
            refused = grant.refused(exc)
            if refused is exc:
                raise
            raise refused from exc
        grant.received(token)
        return token

    def _fetch(self, request: TokenRequest, state: ClientState) -> Token:
        idle = self.sender.idle_for(False)
        idle.begin()
        token: Token | None = None
        try:
            flow = self._flow(request, state)
            step = next(flow)
            while True:
                if isinstance(step, HttpRequest):
                    reply: Reply = self.sender.send(step, state)
                else:
                    time.sleep(step)
                    reply = None
                try:
                    step = flow.send(reply)
                except StopIteration as done:
                    token = done.value
                    return done.value  # type: ignore[no-any-return]
        finally:
            idle.end(self._quiet_after(token))

    async def _afetch(self, request: TokenRequest, state: ClientState) -> Token:
        idle = self.sender.idle_for(True)
        idle.begin()
        token: Token | None = None
        try:
            flow = self._flow(request, state)
            step = next(flow)
            while True:
                if isinstance(step, HttpRequest):
                    reply: Reply = await self.sender.asend(step, state)
                else:
                    await aio.sleep(step)
                    reply = None
                try:
                    step = flow.send(reply)
                except StopIteration as done:
                    token = done.value
                    return done.value  # type: ignore[no-any-return]
        finally:
            idle.end(self._quiet_after(token))

    def _quiet_after(self, token: Token | None) -> float | None:
        """How long after this fetch no token needs refreshing (None: unknown)."""
        cache = self.cache
        soonest = cache.quiet_for()
        if token is None:
            return soonest
        mine = cache.policy.refresh_at(token) - cache.clock()
        return mine if soonest is None else min(mine, soonest)

    # -- presentation ------------------------------------------------------------------

    def describe_token(self, key: tuple[Any, ...]) -> str:
        """The state of `key`'s token for repr: never the token itself."""
        state = self.cache.freshness(key)
        if state is None:
            return "none"
        freshness, left = state
        if left <= 0:
            return f"expired {-left:.0f}s ago"
        return f"{freshness.value}, expires in {left:.0f}s"

    def close(self) -> None:
        """Close the sender's and the token store's connections (opened again when needed)."""
        self.sender.close()
        if self.shared is not None:
            self.shared.close()

    def __repr__(self) -> str:
        state = self._state
        return f"<TokenClient client_id={state.client_id!r} token_url={state.token_url!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a TokenClient holds a private key and cannot be pickled")


def _is_store(value: object) -> bool:
    from ._store import TokenStore

    return isinstance(value, TokenStore)


def _provided(provider: CertificateProvider) -> ClientCertificate:
    first = provider()
    if not isinstance(first, ClientCertificate):
        raise CertificateError(
            f"the certificate provider must return a ClientCertificate, not {type(first).__name__}"
        )
    return first
