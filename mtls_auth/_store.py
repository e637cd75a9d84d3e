"""The shared token store: one token per fleet of processes, below the in-process cache.

Single flight (`_cache`) makes one process ask for a token once per lifetime;
gunicorn, uvicorn and Celery run many processes, on several hosts. A
`TokenStore` is the second level they share::

    memory (TokenCache) ──miss──> store ──miss──> lease ──held──> token endpoint
                                    ^               │               │
                                    │            not held           put, release
                                    └── wait (bounded) ─┘

On a miss of the in-process cache (one caller per process and key, thanks to
the cache's own single flight), `SharedTokens` looks in the store. Absent
there, it asks for the *lease* of that key (a short-lived lock whose value is
a random holder id): only the holder fetches from the token endpoint, puts
the sealed token in the store, and releases the lease. The others look again
with a growing pause (20 ms to 200 ms) until the token is there, or the lease
is free again (then one of them takes it: a holder whose fetch failed, or that
died, delays them by at most the lease time), or the lease time has passed
(then each fetches for itself). A lease lives for the token request timeout
plus a margin (`lease_seconds`), so a holder killed mid-fetch blocks nobody
for longer than that. Entries live until the token's refresh point, so a
reader never gets a token its own cache would refresh at once.

Entries are sealed and named by `_store_crypto.StoreKeys`: nothing readable,
and no client id, tenant or user, goes into a store.

**A store never fails a request.** Every store call that raises counts as an
outage: the fetch goes on without the store (this process's cache and the
token endpoint, as without a store), one WARNING is logged, the store is left
alone for `RETRY_AFTER` seconds (of the cache's clock), and one INFO is
logged when it answers again.

`_flow` holds every decision as a generator that yields store calls, pauses and
the one fetch; `SharedTokens.fetch` (threads) and `SharedTokens.afetch`
(coroutines, asyncio or trio: store calls in a worker thread, pauses on the
loop, which is never blocked) only carry them out.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Generator, Hashable
from typing import TYPE_CHECKING, Any, Callable, Union

from . import _after_fork as after_fork
from . import _aio as aio
from ._redact import safe_repr
from ._token import Token

if TYPE_CHECKING:
    from ._cache import RefreshPolicy
    from ._certificate import ClientCertificate
    from ._store_crypto import StoreKeys

__all__ = ["RETRY_AFTER", "SharedTokens", "TokenStore", "lease_seconds"]

logger = logging.getLogger(__name__)

#: Seconds (of the cache's clock) a store that failed is left alone before it is tried again.
RETRY_AFTER = 5.0
#: The first and the longest pause between two looks at the store while another process fetches.
POLL_FIRST = 0.02
POLL_MAX = 0.2
#: Refused tokens remembered per client (see `SharedTokens.refuse`).
_REFUSED_LIMIT = 1024


def lease_seconds(timeout: float) -> float:
    """How long a lease lives: the token request timeout, plus a quarter of it (1 s at least)."""
    return timeout + max(1.0, timeout / 4)


@safe_repr
class TokenStore:
    """Where the processes of a fleet share their tokens; subclass it for a store of your own.

    mtls-auth ships `mtls_auth.stores.FileTokenStore` (the workers of one host)
    and `mtls_auth.stores.RedisTokenStore` (many hosts; Redis 6+ or Valkey).
    A store of your own implements the four methods below; mtls-auth calls them
    from any thread (for async callers from a worker thread, never on the event
    loop), only when a process's own cache misses:

    - `get(key)`: the value stored under `key`, or None;
    - `set(key, value, ttl)`: store `value` under `key` for `ttl` seconds,
      replacing what was there;
    - `lease(key, holder, ttl)`: atomically, if nobody holds the lease of
      `key`, take it for `ttl` seconds in the name of `holder` and return True;
      else return False (Redis: ``SET lease-key holder NX PX ttl``);
    - `release(key, holder)`: end the lease of `key` if `holder` still holds it
      (compare and delete: a lease that expired and was taken by another holder
      stays theirs).

    Keys are 64 lower-case hex digits (digests); values are opaque bytes of a
    few hundred bytes to a few KiB, already encrypted and authenticated; `ttl`
    is a positive float. A lease and an entry named by the same key are two
    different things and must not overwrite each other. Any exception a method
    raises counts as an outage of the store, never as a failed request. A store
    is used by many threads at once, and must not use, after ``os.fork()``, a
    connection or lock it opened before (see `mtls_auth.stores.RedisTokenStore`).
    `close` lets go of connections; the store must work again afterwards.
    """

    def get(self, key: str) -> bytes | None:
        """The value stored under `key`, or None."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get")

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds."""
        raise NotImplementedError(f"{type(self).__name__} does not implement set")

    def lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take the lease of `key` for `holder` for `ttl` seconds, if nobody holds it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lease")

    def release(self, key: str, holder: str) -> None:
        """End the lease of `key` if `holder` still holds it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement release")

    def close(self) -> None:
        """Let go of connections (the store opens them again when used)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


# -- the steps of the flow ---------------------------------------------------------------


class _Call:
    """Run this blocking store call; send back its result, or `_FAILED`."""

    __slots__ = ("call",)

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call


class _Pause:
    """Wait this many seconds (real time: other processes are at work)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class _Fetch:
    """Fetch from the token endpoint; send back a `_Fetched`."""

    __slots__ = ()


class _Fetched:
    """The outcome of the fetch: a token or the error it raised."""

    __slots__ = ("error", "token")

    def __init__(self, token: Token | None, error: BaseException | None) -> None:
        self.token = token
        self.error = error

    def unwrap(self) -> Token:
        if self.error is not None:
            raise self.error
        assert self.token is not None
        return self.token


class _Failed:
    """What a store call that raised (or was skipped during an outage) sends back."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<store call failed>"


_FETCH = _Fetch()
_FAILED: Any = _Failed()

Step = Union[_Call, _Pause, _Fetch]
Flow = Generator[Step, Any, Token]


@safe_repr
class SharedTokens:
    """A `TokenStore` as the second level of one client's token cache.

    Made by the client when ``token_store=`` is given and shared by every auth
    derived from it. `fetch` and `afetch` wrap the fetch the cache runs on a
    miss; `refuse` is told of tokens a resource answered 401 to.
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        clock: Callable[[], float],
        policy: RefreshPolicy,
        timeout: float,
    ) -> None:
        self.store = store
        #: The cache's clock: token expiry, freshness and the outage pause.
        self.clock = clock
        #: The store's timeline for entry expiry: wall-clock time, shared by hosts,
        #: unless a clock was injected (tests), which then serves both.
        self.timeline: Callable[[], float] = time.time if clock is time.monotonic else clock
        self.policy = policy
        self.lease_ttl = lease_seconds(timeout)
        self._keys: StoreKeys | None = None
        self._down = False
        self._retry_at = 0.0
        self._refused: dict[Hashable, str] = {}
        self._lock = threading.Lock()
        after_fork.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    # -- the drivers ----------------------------------------------------------------------

    def fetch(
        self, cache_key: Hashable, certificate: ClientCertificate, fetch: Callable[[], Token]
    ) -> Token:
        """A token for `cache_key` from the store, or from `fetch` (threads)."""
        flow = self._flow(cache_key, certificate)
        reply: Any = None
        try:
            while True:
                step = flow.send(reply)
                if isinstance(step, _Call):
                    reply = self._call(step.call)
                elif isinstance(step, _Pause):
                    time.sleep(step.seconds)
                    reply = None
                else:
                    try:
                        reply = _Fetched(fetch(), None)
                    except BaseException as exc:  # noqa: BLE001 - the flow releases, then raises it
                        reply = _Fetched(None, exc)
        except StopIteration as done:
            token: Token = done.value
            return token
        finally:
            flow.close()

    async def afetch(
        self,
        cache_key: Hashable,
        certificate: ClientCertificate,
        fetch: Callable[[], Awaitable[Token]],
    ) -> Token:
        """A token for `cache_key` from the store, or from `fetch` (coroutines).

        Store calls run in a worker thread, pauses sleep on the loop: the
        event loop is never blocked.
        """
        flow = self._flow(cache_key, certificate)
        reply: Any = None
        try:
            while True:
                step = flow.send(reply)
                if isinstance(step, _Call):
                    reply = await aio.off_loop(functools.partial(self._call, step.call))
                elif isinstance(step, _Pause):
                    await aio.sleep(step.seconds)
                    reply = None
                else:
                    try:
                        reply = _Fetched(await fetch(), None)
                    except BaseException as exc:  # noqa: BLE001 - the flow releases, then raises it
                        reply = _Fetched(None, exc)
        except StopIteration as done:
            token: Token = done.value
            return token
        finally:
            flow.close()

    # -- the decisions --------------------------------------------------------------------

    def _flow(self, cache_key: Hashable, certificate: ClientCertificate) -> Flow:
        """Look in the store; take the lease and fetch, or wait for the holder's token."""
        if self._skipping():
            return (yield from _fetch_only())
        try:
            keys = self.keys(certificate)
            name = keys.name(cache_key)
        except Exception as exc:  # noqa: BLE001 - no store for this key, never a failed request
            self._failed(exc)
            return (yield from _fetch_only())
        store = self.store
        look = _Call(functools.partial(store.get, name))
        found = self._open(keys, name, cache_key, (yield look))
        if found is not None:
            return found if found is not _FAILED else (yield from _fetch_only())
        holder = secrets.token_urlsafe(18)
        take = _Call(functools.partial(store.lease, name, holder, self.lease_ttl))
        deadline = time.monotonic() + self.lease_ttl + POLL_MAX
        pause = POLL_FIRST
        while True:
            taken = yield take
            if taken is _FAILED:
                return (yield from _fetch_only())
            if taken:
                return (yield from self._hold(keys, name, holder, cache_key))
            left = deadline - time.monotonic()
            if left <= 0:
                logger.debug(
                    "no token in the store after %.1fs of another process's lease; fetching here",
                    self.lease_ttl,
                )
                return (yield from _fetch_only())
            yield _Pause(min(pause, left))
            pause = min(pause * 1.5, POLL_MAX)
            found = self._open(keys, name, cache_key, (yield look))
            if found is not None:
                return found if found is not _FAILED else (yield from _fetch_only())

    def _hold(self, keys: StoreKeys, name: str, holder: str, cache_key: Hashable) -> Flow:
        """The lease is ours: fetch, put the sealed token in the store, release."""
        store = self.store
        # The holder before us may have put its token and released just now.
        found = self._open(keys, name, cache_key, (yield _Call(functools.partial(store.get, name))))
        if found is None or found is _FAILED:
            outcome: _Fetched = yield _FETCH
            found = outcome.token
            if found is not None:
                with self._lock:
                    self._refused.pop(cache_key, None)
                now = self.clock()
                ttl = self.policy.refresh_at(found) - now
                if ttl > 0:
                    entry = keys.seal(name, found, self.timeline() + found.expires_at - now)
                    yield _Call(functools.partial(store.set, name, entry, ttl))
                    del entry
        else:
            outcome = _Fetched(found, None)
        yield _Call(functools.partial(store.release, name, holder))
        return outcome.unwrap()

    def _open(self, keys: StoreKeys, name: str, cache_key: Hashable, entry: object) -> Any:
        """The usable token in what the store answered: a `Token`, None or `_FAILED`."""
        if entry is None or entry is _FAILED:
            return entry
        now = self.clock()
        token = keys.open_entry(name, entry, self.timeline(), now)
        if token is None or now >= self.policy.refresh_at(token):
            return None
        refused = self._refused.get(cache_key)
        if refused is not None and refused == _digest(token):
            logger.debug("the store holds the token a resource refused; fetching a new one")
            return None
        logger.debug("token taken from the token store; valid for %.0fs", token.expires_at - now)
        return token

    # -- keys, refusals, health -------------------------------------------------------------

    def keys(self, certificate: ClientCertificate) -> StoreKeys:
        """The store keys of `certificate` (derived once per certificate)."""
        keys = self._keys
        if keys is None or keys.thumbprint != certificate.thumbprint:
            from ._store_crypto import StoreKeys

            keys = self._keys = StoreKeys.derive(certificate)
        return keys

    def refuse(self, cache_key: Hashable, token: Token) -> None:
        """A resource answered 401 to `token`: the store's copy of it is not taken again."""
        with self._lock:
            if len(self._refused) >= _REFUSED_LIMIT:
                self._refused.clear()
            self._refused[cache_key] = _digest(token)

    def _skipping(self) -> bool:
        return self._down and self.clock() < self._retry_at

    def _call(self, call: Callable[[], Any]) -> Any:
        """Run one store call; an exception is an outage (`_FAILED`), never a failed request."""
        if self._skipping():
            return _FAILED
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, requests go on
            self._failed(exc)
            return _FAILED
        if self._down:
            self._answered()
        return result

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = self.clock() + RETRY_AFTER
        if first:
            # The type only: a client library's message may carry more than it should.
            logger.warning(
                "token store %r failed (%s); tokens come from this process's cache and the "
                "token endpoint until it answers again",
                self.store,
                type(exc).__name__,
            )
        else:
            logger.debug("token store %r still fails (%s)", self.store, type(exc).__name__)

    def _answered(self) -> None:
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.info("token store %r answers again; tokens are shared again", self.store)

    @property
    def down(self) -> bool:
        """Whether the store failed and has not answered since."""
        return self._down

    def close(self) -> None:
        """Close the store's connections (it opens them again when used)."""
        try:
            self.store.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            logger.debug("closing token store %r failed (%s)", self.store, type(exc).__name__)

    def __repr__(self) -> str:
        return f"<SharedTokens store={self.store!r} {'down' if self._down else 'up'}>"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SharedTokens hold keys derived from a private key and cannot be pickled")


def _fetch_only() -> Flow:
    """Without the store: this process fetches, as it would with no store configured."""
    outcome: _Fetched = yield _FETCH
    return outcome.unwrap()


def _digest(token: Token) -> str:
    return hashlib.sha256(token.authorization().encode("ascii")).hexdigest()
