"""When to refresh a token, and making sure only one caller does.

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

The same cache serves threads and coroutines, on any number of event loops,
at once. Its state is guarded by a `threading.Lock` that is only ever held for a
few attribute updates, never across I/O, an `await` or a `yield`. Coroutines
wait on an `asyncio.Future` of their own loop that the flight resolves with
`call_soon_threadsafe`; the async fetch itself runs in a task of its own, so a
cancelled caller (httpx closing the auth generator, a request timeout) never
strands the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass
from typing import Callable

from ._errors import TokenError, TokenRequestError
from ._token import Token

__all__ = ["Freshness", "RefreshPolicy", "TokenCache"]

logger = logging.getLogger("mtls_auth")


class Freshness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


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
        "_callbacks",
        "_done",
        "_event",
        "_lock",
        "deadline",
        "error",
        "key",
        "loop",
        "task",
        "token",
    )

    def __init__(
        self, key: Hashable, loop: asyncio.AbstractEventLoop | None, deadline: float
    ) -> None:
        self.key = key
        self.loop = loop
        #: time.monotonic() after which the fetch counts as abandoned.
        self.deadline = deadline
        self.task: asyncio.Future[Token] | None = None
        self.token: Token | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._done = False
        self._callbacks: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Token]]] = []

    def finish(self, token: Token | None = None, error: BaseException | None = None) -> None:
        if error is not None and not isinstance(error, Exception):
            # KeyboardInterrupt, CancelledError: the fetch was abandoned. Waiters
            # get an ordinary error and the next caller starts a new fetch.
            interrupted = TokenRequestError(
                "the token fetch this request was waiting for was interrupted"
            )
            interrupted.__cause__ = None
            error = interrupted
        with self._lock:
            self.token, self.error, self._done = token, error, True
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        for loop, future in callbacks:
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, token, error)

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
        return loop is not None and (loop.is_closed() or not loop.is_running())

    def wait(self, timeout: float) -> Token:
        if not self._event.wait(timeout):
            raise TokenRequestError(
                f"gave up after {timeout:.0f}s waiting for a token fetch in progress elsewhere"
            )
        return self.result()

    async def wait_async(self, timeout: float) -> Token:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._done:
                future: asyncio.Future[Token] = loop.create_future()
                self._callbacks.append((loop, future))
            else:
                return self.result()
        # A waiter cancelled here only drops its own future; the fetch goes on.
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TokenRequestError(
                f"gave up after {timeout:.0f}s waiting for a token fetch in progress elsewhere"
            ) from None


def _resolve(
    future: asyncio.Future[Token], token: Token | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(token)  # type: ignore[arg-type]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class TokenCache:
    """The token of one auth object, and the single-flight fetch that renews it.

    `key` (token URL, client id, namespace, scope, certificate thumbprint)
    identifies what the token was fetched for; a token stored under one key is
    never handed out for another. `clock` is a monotonic seconds reading,
    injectable for tests.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: RefreshPolicy | None = None,
        wait_timeout: float = 60.0,
    ) -> None:
        self.clock = clock
        self.policy = policy or RefreshPolicy()
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        # (key, token, refresh_at) replaced as a whole, so the lock-free read in
        # the hot path always sees a consistent triple.
        self._entry: tuple[Hashable, Token, float] | None = None
        self._flight: _Flight | None = None
        self._stale_retry_at = 0.0

    # -- reading -----------------------------------------------------------------

    def current(self, key: Hashable) -> Token | None:
        """The fresh token for `key`, or None. Never blocks, never fetches."""
        entry = self._entry
        if entry is not None and entry[0] == key and self.clock() < entry[2]:
            return entry[1]
        return None

    def freshness(self) -> tuple[Freshness, float] | None:
        """The state of the stored token and seconds until it expires, for repr."""
        entry = self._entry
        if entry is None:
            return None
        now = self.clock()
        return self.policy.freshness(entry[1], now), entry[1].expires_at - now

    # -- the sync path -----------------------------------------------------------------

    def get(self, key: Hashable, fetch: Callable[[], Token]) -> Token:
        """A usable token for `key`, fetching it with `fetch` if needed (threads)."""
        entry = self._entry
        if entry is not None and entry[0] == key and self.clock() < entry[2]:
            return entry[1]
        while True:
            action, flight, fallback = self._decide(key, None)
            if action == "use":
                assert fallback is not None
                return fallback
            assert flight is not None
            if action == "wait":
                if flight.loop is not None and flight.loop is _running_loop():
                    # A sync client used inside the very event loop that runs the
                    # fetch: waiting would block that loop forever. Fetch alone.
                    return fetch()
                try:
                    token = flight.wait(self.wait_timeout)
                except TokenRequestError:
                    self._drop_if_current(flight)
                    if flight.key == key:
                        raise
                    continue
                except Exception:
                    if flight.key == key:
                        raise
                    continue  # another key's fetch failed: not ours to report
                if flight.key == key:
                    return token
                continue
            return self._run_sync(flight, key, fetch, fallback)

    def _run_sync(
        self, flight: _Flight, key: Hashable, fetch: Callable[[], Token], fallback: Token | None
    ) -> Token:
        try:
            token = fetch()
        except BaseException as exc:  # noqa: BLE001 - re-raised by _failed; waiters must hear of it
            return self._failed(flight, exc, fallback)
        self._store(flight, key, token)
        return token

    # -- the async path ----------------------------------------------------------------

    async def aget(self, key: Hashable, fetch: Callable[[], Awaitable[Token]]) -> Token:
        """A usable token for `key`, fetching it with `fetch` if needed (coroutines)."""
        entry = self._entry
        if entry is not None and entry[0] == key and self.clock() < entry[2]:
            return entry[1]
        loop = asyncio.get_running_loop()
        while True:
            action, flight, fallback = self._decide(key, loop)
            if action == "use":
                assert fallback is not None
                return fallback
            assert flight is not None
            if action == "wait":
                try:
                    token = await flight.wait_async(self.wait_timeout)
                except TokenRequestError:
                    self._drop_if_current(flight)
                    if flight.key == key:
                        raise
                    continue
                except Exception:
                    if flight.key == key:
                        raise
                    continue  # another key's fetch failed: not ours to report
                if flight.key == key:
                    return token
                continue
            # The fetch runs as its own task: if this caller is cancelled, the
            # others still get their token. shield() keeps our cancellation
            # from reaching it.
            task = loop.create_task(self._run_async(flight, key, fetch, fallback))
            flight.task = task
            # A task cancelled before its first step never runs _run_async's
            # except clause (asyncio.run cancels leftovers on exit): settle the
            # flight from here, or every later caller would wait on it.
            task.add_done_callback(functools.partial(self._settle, flight))
            return await asyncio.shield(task)

    async def _run_async(
        self,
        flight: _Flight,
        key: Hashable,
        fetch: Callable[[], Awaitable[Token]],
        fallback: Token | None,
    ) -> Token:
        try:
            token = await fetch()
        except BaseException as exc:  # noqa: BLE001 - re-raised by _failed; waiters must hear of it
            return self._failed(flight, exc, fallback)
        self._store(flight, key, token)
        return token

    # -- shared bookkeeping --------------------------------------------------------------

    def _decide(
        self, key: Hashable, loop: asyncio.AbstractEventLoop | None
    ) -> tuple[str, _Flight | None, Token | None]:
        """Under the lock: use a token, wait for a flight, or start one."""
        with self._lock:
            now = self.clock()
            entry = self._entry
            token = entry[1] if entry is not None and entry[0] == key else None
            state = self.policy.freshness(token, now) if token is not None else None
            if state is Freshness.FRESH:
                return "use", None, token
            flight = self._flight
            if flight is not None and flight.abandoned(time.monotonic()):
                # Its loop stopped, or it overran every deadline: release whoever
                # waits on it, and let this caller start afresh.
                self._flight = None
                flight.finish(
                    error=TokenRequestError(
                        "the token fetch this request waited for was abandoned "
                        "(its event loop stopped or it overran its deadline)"
                    )
                )
                flight = None
            if state is Freshness.STALE:
                if flight is not None or now < self._stale_retry_at:
                    return "use", None, token
                self._flight = self._new_flight(key, loop)
                logger.debug("token is stale; refreshing while others keep using it")
                return "fetch", self._flight, token
            if flight is not None:
                return "wait", flight, None
            self._flight = self._new_flight(key, loop)
            return "fetch", self._flight, None

    def _drop_if_current(self, flight: _Flight) -> None:
        """A waiter gave up on `flight`: if it is still running, it is abandoned."""
        with self._lock:
            if self._flight is flight and not flight.done:
                self._flight = None

    def _settle(self, flight: _Flight, task: asyncio.Future[Token]) -> None:
        if flight.done:
            return
        with self._lock:
            if self._flight is flight:
                self._flight = None
        flight.finish(error=asyncio.CancelledError() if task.cancelled() else task.exception())

    def _new_flight(self, key: Hashable, loop: asyncio.AbstractEventLoop | None) -> _Flight:
        return _Flight(key, loop, time.monotonic() + self.wait_timeout)

    def _store(self, flight: _Flight, key: Hashable, token: Token) -> None:
        with self._lock:
            self._entry = (key, token, self.policy.refresh_at(token))
            self._stale_retry_at = 0.0
            if self._flight is flight:
                self._flight = None
        flight.finish(token=token)
        logger.debug("new token cached; valid for %.0fs", token.lifetime)

    def _failed(self, flight: _Flight, exc: BaseException, fallback: Token | None) -> Token:
        with self._lock:
            if self._flight is flight:
                self._flight = None
            if fallback is not None:
                self._stale_retry_at = self.clock() + self.policy.retry_stale_after
        flight.finish(error=exc)
        if (
            fallback is not None
            and isinstance(exc, TokenError)
            and self.clock() < fallback.expires_at
        ):
            logger.warning(
                "token refresh failed (%s); using the current token, valid %.0fs more",
                exc, fallback.expires_at - self.clock(),
            )
            return fallback
        raise exc

    # -- invalidation ----------------------------------------------------------------------

    def invalidate(self, token: Token | None = None) -> bool:
        """Forget `token` (if it is still the current one), or any token if None.

        A 401 from the resource names the token that was used; if another caller
        has already replaced it, the newer token stays.
        """
        with self._lock:
            entry = self._entry
            if entry is not None and (token is None or entry[1] is token):
                self._entry = None
                self._stale_retry_at = 0.0
                return True
        return False

    def clear(self) -> None:
        self.invalidate(None)
