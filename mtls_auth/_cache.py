"""The token cache: tokens by key, when to refresh them, and making sure only one caller does.

A cached token is in one of three states (google-auth calls them fresh, stale
and invalid)::

    issued ───── fresh ─────┬──── stale ────┬── expired ──>
                        refresh_at      expires_at
                  (expires_at - leeway)

* fresh: every caller uses it; this is the hot path, one attribute read and one
  clock reading, no lock.
* stale: still valid, but inside the refresh window. Exactly one caller
  refreshes; every other caller goes on using the still-valid token. If the
  refresh fails, the old token is kept and the next attempt waits
  `RefreshPolicy.retry_stale_after` seconds.
* expired, or no token yet: callers cannot proceed without a new token, so they
  all wait on one shared fetch (a `_Flight`): N threads or N coroutines cause
  one token request, and its outcome, token or error, is handed to all of them.

Tokens are stored by key (what was asked for, by which client, with which
certificate): the client's own token, one per tenant, one per user, each with
its own state and its own single flight. Keys start with a *bucket* name, and
each bucket holds at most its limit of tokens, the least recently used going
first, so a service that sees many tenants or users keeps a bounded cache.

The same cache serves threads and coroutines, on any number of event loops,
at once. Its state is guarded by a `threading.Lock` that is only ever held for a
few attribute updates, never across I/O, an `await` or a `yield`. Coroutines
wait on a `Pending` of their own loop (asyncio or trio, see `_aio`) that the
flight resolves with `call_soon_threadsafe`; the async fetch itself runs
detached from its caller (an asyncio task, a trio system task), so a cancelled
caller (httpx closing the auth generator, a request timeout) never strands the
others.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from . import _after_fork as after_fork
from . import _aio as aio
from ._errors import TokenError, TokenRequestError
from ._redact import safe_repr
from ._token import Token

__all__ = ["Freshness", "RefreshPolicy", "TokenCache"]

logger = logging.getLogger(__name__)


class Freshness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


@safe_repr
@dataclass(frozen=True)
class RefreshPolicy:
    """When a token counts as stale.

    A token turns stale `leeway` seconds before it expires, but never earlier
    than `fraction` of its lifetime before: a 2-second token is refreshed 0.2 s
    before expiry, not 60 s before (which would mean a fetch per request).
    """

    leeway: float = 60.0
    fraction: float = 0.1
    #: After a failed refresh of a still-valid token, wait this long before the next.
    retry_stale_after: float = 5.0

    def refresh_at(self, token: Token) -> float:
        return token.expires_at - min(self.leeway, token.lifetime * self.fraction)

    def freshness(self, token: Token, now: float) -> Freshness:
        if now >= token.expires_at:
            return Freshness.EXPIRED
        if now >= self.refresh_at(token):
            return Freshness.STALE
        return Freshness.FRESH


class _Flight:
    """One token fetch in progress, awaited by threads and coroutines alike."""

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_done",
        "_event",
        "_lock",
        "deadline",
        "epoch",
        "error",
        "key",
        "loop",
        "task",
        "token",
    )

    def __init__(self, key: Hashable, loop: aio.Loop | None, deadline: float) -> None:
        self.key = key
        #: The event loop running the fetch (None: a thread runs it).
        self.loop = loop
        #: time.monotonic() after which the fetch counts as abandoned.
        self.deadline = deadline
        self.epoch = 0
        #: The asyncio task running the fetch, if asyncio runs it.
        self.task: Any = None
        self.token: Token | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._done = False
        self._callbacks: list[tuple[aio.Loop, aio.Pending[None]]] = []

    def finish(self, token: Token | None = None, error: BaseException | None = None) -> None:
        if error is not None and not isinstance(error, Exception):
            # KeyboardInterrupt, CancelledError: the fetch was abandoned. Waiters
            # get an ordinary error and the next caller starts a new fetch.
            error = _interrupted()
        with self._lock:
            self.token, self.error, self._done = token, error, True
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        for loop, pending in callbacks:
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(pending.resolve, None, None)

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> Token:
        if self.error is not None:
            # Each waiter gets its own copy (chained to the original), so
            # threads and loops never share one traceback being extended.
            try:
                own = copy.copy(self.error)
            except Exception:  # noqa: BLE001 - an uncopyable error is raised as it is
                raise self.error from None
            raise own from self.error
        assert self.token is not None
        return self.token

    def abandoned(self, now: float) -> bool:
        """Past its deadline, or owned by an event loop that can no longer run it."""
        if now > self.deadline:
            return True
        loop = self.loop
        return loop is not None and not loop.alive()

    def wait(self, timeout: float) -> Token:
        if not self._event.wait(timeout):
            raise TokenRequestError(
                f"gave up after {timeout:.0f}s waiting for a token fetch in progress elsewhere"
            )
        return self.result()

    async def wait_async(self, timeout: float) -> Token:
        loop = aio.current()
        with self._lock:
            if self._done:
                return self.result()
            pending: aio.Pending[None] = loop.pending()
            self._callbacks.append((loop, pending))
        # A waiter cancelled here only drops its own wait; the fetch goes on.
        try:
            await pending.wait(timeout)
        except TimeoutError:
            raise TokenRequestError(
                f"gave up after {timeout:.0f}s waiting for a token fetch in progress elsewhere"
            ) from None
        return self.result()


def _interrupted() -> TokenRequestError:
    error = TokenRequestError("the token fetch this request was waiting for was interrupted")
    error.__cause__ = None
    return error


class _Entry:
    """A stored token, when it turns stale, and when a failed refresh may be retried."""

    __slots__ = ("refresh_at", "stale_retry_at", "token")

    def __init__(self, token: Token, refresh_at: float) -> None:
        self.token = token
        self.refresh_at = refresh_at
        self.stale_retry_at = 0.0


#: Tokens a bucket without a configured limit holds.
DEFAULT_BUCKET_LIMIT = 1024

_USE, _WAIT, _FETCH = "use", "wait", "fetch"


class TokenCache:
    """Tokens by key, and the single-flight fetch that renews each one.

    A key is a tuple whose first item names its bucket; a token stored under
    one key is never handed out for another. `limits` maps bucket names to the
    most tokens each holds (`DEFAULT_BUCKET_LIMIT` for others). `clock` is a
    monotonic seconds reading, injectable for tests.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: RefreshPolicy | None = None,
        wait_timeout: float = 60.0,
        limits: Mapping[Hashable, int] | None = None,
    ) -> None:
        self.clock = clock
        self.policy = policy or RefreshPolicy()
        self.wait_timeout = wait_timeout
        self.limits: dict[Hashable, int] = dict(limits or {})
        self._lock = threading.Lock()
        # The entries of each bucket in use order, least recent first (evicted
        # first). One table per bucket holds both, so a bucket churning at its
        # bound resizes one table, not two. Read without the lock on the hot
        # path: entries are replaced whole, and OrderedDict operations are
        # atomic under the GIL.
        self._buckets: dict[Hashable, OrderedDict[Hashable, _Entry]] = {}
        self._flights: dict[Hashable, _Flight] = {}
        self._mru: Hashable = None
        #: Bumped by `clear`: fetches started before it do not store their token.
        self._epoch = 0
        after_fork.register(self)

    def _after_fork(self) -> None:
        # In a forked child: the threads that held the lock or ran the fetches
        # are not here. Tokens still valid are kept.
        self._lock = threading.Lock()
        self._flights = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in list(self._buckets.values()))

    def _entry(self, key: Hashable) -> _Entry | None:
        entries = self._buckets.get(_bucket(key))
        return None if entries is None else entries.get(key)

    # -- reading -----------------------------------------------------------------

    def current(self, key: Hashable) -> Token | None:
        """The fresh token for `key`, or None. Never blocks, never fetches."""
        # The per-request path: the bucket is looked up once, for reading and
        # for the use order. Lock-free: an OrderedDict operation is atomic under
        # the GIL, and a key evicted meanwhile is simply not there any more.
        entries = self._buckets.get(_bucket(key))
        if entries is None:
            return None
        entry = entries.get(key)
        if entry is not None and self.clock() < entry.refresh_at:
            if key is not self._mru:
                self._mru = key
                with contextlib.suppress(KeyError):
                    entries.move_to_end(key)
            return entry.token
        return None

    def quiet_for(self) -> float | None:
        """Seconds until the first stored token turns stale (None: no tokens)."""
        entries = [e for bucket in list(self._buckets.values()) for e in list(bucket.values())]
        if not entries:
            return None
        return min(entry.refresh_at for entry in entries) - self.clock()

    def freshness(self, key: Hashable) -> tuple[Freshness, float] | None:
        """The state of the token stored for `key` and seconds until it expires."""
        entry = self._entry(key)
        if entry is None:
            return None
        now = self.clock()
        return self.policy.freshness(entry.token, now), entry.token.expires_at - now

    # -- the sync path -----------------------------------------------------------------

    def get(self, key: Hashable, fetch: Callable[[], Token]) -> Token:
        """A usable token for `key`, fetching it with `fetch` if needed (threads)."""
        token = self.current(key)
        if token is not None:
            return token
        action, flight, fallback = self._decide(key, None)
        if action == _USE:
            assert fallback is not None
            return fallback
        assert flight is not None
        if action == _FETCH:
            try:
                token = fetch()
            except BaseException as exc:  # noqa: BLE001 - re-raised by _failed; waiters must hear of it
                return self._failed(flight, exc, fallback)
            return self._store(flight, token)
        running = aio.current_or_none() if flight.loop is not None else None
        if running is not None and flight.loop is not None and flight.loop.ident is running.ident:
            # A sync client used inside the very event loop that runs the
            # fetch: waiting would block that loop forever. Fetch alone.
            return fetch()
        try:
            return flight.wait(self.wait_timeout)
        except TokenRequestError:
            self._drop_if_current(flight)
            raise

    # -- the async path ----------------------------------------------------------------

    async def aget(self, key: Hashable, fetch: Callable[[], Awaitable[Token]]) -> Token:
        """A usable token for `key`, fetching it with `fetch` if needed (coroutines)."""
        token = self.current(key)
        if token is not None:
            return token
        loop = aio.current()
        action, flight, fallback = self._decide(key, loop)
        if action == _USE:
            assert fallback is not None
            return fallback
        assert flight is not None
        if action == _WAIT:
            try:
                return await flight.wait_async(self.wait_timeout)
            except TokenRequestError:
                self._drop_if_current(flight)
                raise
        # The fetch runs detached (an asyncio task, a trio system task): if this
        # caller is cancelled, the others still get their token, and this caller
        # awaits its own outcome like a waiter. A task cancelled before its
        # first step never runs _run_async's except clause (asyncio.run cancels
        # leftovers on exit): _settle, run when it ends by any path, releases
        # the flight.
        outcome: aio.Pending[Token] = loop.pending()
        try:
            flight.task = loop.spawn_detached(
                functools.partial(self._run_async, flight, fetch, fallback, outcome),
                functools.partial(self._settle, flight, outcome),
            )
        except BaseException as exc:  # noqa: BLE001 - a loop refusing new tasks (shutting down)
            return self._failed(flight, exc, fallback)  # waiters hear of it; raises
        return await outcome.wait(None)

    async def _run_async(
        self,
        flight: _Flight,
        fetch: Callable[[], Awaitable[Token]],
        fallback: Token | None,
        outcome: aio.Pending[Token],
    ) -> None:
        try:
            try:
                token = await fetch()
            except BaseException as exc:  # noqa: BLE001 - re-raised by _failed; waiters must hear of it
                token = self._failed(flight, exc, fallback)
            else:
                token = self._store(flight, token)
        except Exception as exc:  # noqa: BLE001 - the caller gets it through `outcome`
            outcome.resolve(None, exc)
        except BaseException:
            # Cancelled (the loop shutting down): the caller hears of an
            # interruption, and the cancellation goes on to the runtime.
            outcome.resolve(None, _interrupted())
            raise
        else:
            outcome.resolve(token, None)

    # -- shared bookkeeping --------------------------------------------------------------

    def _decide(
        self, key: Hashable, loop: aio.Loop | None
    ) -> tuple[str, _Flight | None, Token | None]:
        """Under the lock: use a token, wait for a flight, or start one."""
        with self._lock:
            now = self.clock()
            entry = self._entry(key)
            token = entry.token if entry is not None else None
            state = self.policy.freshness(token, now) if token is not None else None
            if state is Freshness.FRESH:
                return _USE, None, token
            flight = self._flights.get(key)
            if flight is not None and flight.abandoned(time.monotonic()):
                # Its loop stopped, or it overran every deadline: release whoever
                # waits on it, and let this caller start afresh.
                del self._flights[key]
                flight.finish(
                    error=TokenRequestError(
                        "the token fetch this request waited for was abandoned "
                        "(its event loop stopped or it overran its deadline)"
                    )
                )
                flight = None
            if state is Freshness.STALE:
                assert entry is not None
                if flight is not None or now < entry.stale_retry_at:
                    return _USE, None, token
                logger.debug("token is stale; refreshing while others keep using it")
                return _FETCH, self._new_flight(key, loop), token
            if flight is not None:
                return _WAIT, flight, None
            return _FETCH, self._new_flight(key, loop), None

    def _new_flight(self, key: Hashable, loop: aio.Loop | None) -> _Flight:
        flight = _Flight(key, loop, time.monotonic() + self.wait_timeout)
        flight.epoch = self._epoch
        self._flights[key] = flight
        return flight

    def _drop_if_current(self, flight: _Flight) -> None:
        """A waiter gave up on `flight`: if it is still running, it is abandoned."""
        with self._lock:
            if self._flights.get(flight.key) is flight and not flight.done:
                del self._flights[flight.key]

    def _settle(self, flight: _Flight, outcome: aio.Pending[Token]) -> None:
        """The detached fetch ended: if it never finished its flight, it was cancelled."""
        outcome.resolve(None, _interrupted())  # ignored if it already has its outcome
        if flight.done:
            return
        with self._lock:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
        flight.finish(error=_interrupted())

    def _store(self, flight: _Flight, token: Token) -> Token:
        key = flight.key
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if flight.epoch == self._epoch:
                self._remember(key, _Entry(token, self.policy.refresh_at(token)))
        flight.finish(token=token)
        logger.debug("new token cached; valid for %.0fs", token.lifetime)
        return token

    def _failed(self, flight: _Flight, exc: BaseException, fallback: Token | None) -> Token:
        with self._lock:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            entry = self._entry(flight.key)
            if fallback is not None and entry is not None and entry.token is fallback:
                entry.stale_retry_at = self.clock() + self.policy.retry_stale_after
        flight.finish(error=exc)
        if (
            fallback is not None
            and isinstance(exc, TokenError)
            and self.clock() < fallback.expires_at
        ):
            logger.warning(
                "token refresh failed (%s); using the current token, valid %.0fs more",
                exc,
                fallback.expires_at - self.clock(),
            )
            return fallback
        raise exc

    # -- use order and bounds (under the lock) ------------------------------------------

    def _remember(self, key: Hashable, entry: _Entry) -> None:
        bucket = _bucket(key)
        entries = self._buckets.get(bucket)
        if entries is None:
            entries = self._buckets[bucket] = OrderedDict()
        entries[key] = entry
        entries.move_to_end(key)
        self._mru = key
        limit = self.limits.get(bucket, DEFAULT_BUCKET_LIMIT)
        while len(entries) > limit:
            entries.popitem(last=False)

    # -- invalidation ----------------------------------------------------------------------

    def invalidate(self, key: Hashable, token: Token | None = None) -> bool:
        """Forget the token of `key` if it is `token` (or any token if None).

        A 401 from the resource names the token that was used; if another caller
        has already replaced it, the newer token stays.
        """
        with self._lock:
            entries = self._buckets.get(_bucket(key))
            entry = None if entries is None else entries.get(key)
            if (
                entries is not None
                and entry is not None
                and (token is None or entry.token is token)
            ):
                del entries[key]
                return True
        return False

    def clear(self) -> None:
        """Forget every token; fetches already running hand theirs to their waiters only."""
        with self._lock:
            self._buckets = {}
            self._mru = None
            self._epoch += 1


def _bucket(key: Hashable) -> Hashable:
    return key[0] if isinstance(key, tuple) and key else None
