"""Refresh policy and single-flight token cache, for threads and coroutines.

The test kit's `FakeClock` decides freshness; threads and coroutines are coordinated with
events, barriers and a count of the cache's decisions, never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from mtls_auth._cache import Freshness, RefreshPolicy, TokenCache
from mtls_auth._errors import TokenError, TokenRequestError, TokenResponseError
from mtls_auth._token import Token
from mtls_auth.testing import FakeClock

KEY = ("https://auth.cert.example.com/oauth/token", "sb-client!t1", None, None, ())
OTHER_KEY = ("https://auth.cert.example.com/oauth/token", "sb-client!t1", "ns2", None, ())
WAIT = 5.0  # seconds any real wait may take before the test calls it a hang


def make_token(issued_at: float = 0.0, lifetime: float = 1800.0, value: str = "t") -> Token:
    return Token(value, token_type="bearer", issued_at=issued_at, lifetime=lifetime)


def value_of(token: Token) -> str:
    return token.authorization().removeprefix("Bearer ")


class CountingCache(TokenCache):
    """A `TokenCache` that records each single-flight decision ("use", "wait", "fetch")."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decisions: list[str] = []
        self._cond = threading.Condition()

    def _decide(
        self, key: Hashable, loop: asyncio.AbstractEventLoop | None
    ) -> tuple[str, Any, Token | None]:
        result = super()._decide(key, loop)
        with self._cond:
            self.decisions.append(result[0])
            self._cond.notify_all()
        return result

    def wait_decisions(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.decisions) >= count, WAIT), (
                f"only {len(self.decisions)} of {count} callers reached the cache"
            )

    async def await_decisions(self, count: int) -> None:
        for _ in range(10_000):
            if len(self.decisions) >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"only {len(self.decisions)} of {count} callers reached the cache")


class SyncFetch:
    """A fetch function for threads: counts calls, can block on a gate or fail."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        lifetime: float = 1800.0,
        gate: threading.Event | None = None,
        error: BaseException | None = None,
        before: Callable[[], None] | None = None,
        name: str = "sync",
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.gate = gate
        self.error = error
        self.before = before
        self.name = name
        self.calls = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> Token:
        with self._lock:
            self.calls += 1
            number = self.calls
        self.started.set()
        if self.before is not None:
            self.before()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        if self.error is not None:
            raise self.error
        return make_token(self.clock(), self.lifetime, f"{self.name}-{number}")


class AsyncFetch:
    """A fetch coroutine function: counts calls, yields to the loop, can wait or fail."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        lifetime: float = 1800.0,
        release: asyncio.Event | None = None,
        error: BaseException | None = None,
        yields: int = 5,
        name: str = "async",
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.release = release
        self.error = error
        self.yields = yields
        self.name = name
        self.calls = 0
        self.started = threading.Event()

    async def __call__(self) -> Token:
        self.calls += 1
        number = self.calls
        self.started.set()
        for _ in range(self.yields):
            await asyncio.sleep(0)
        if self.release is not None:
            await self.release.wait()
        if self.error is not None:
            raise self.error
        return make_token(self.clock(), self.lifetime, f"{self.name}-{number}")


def run_threads(count: int, target: Callable[[], Token]) -> list[Token | BaseException]:
    """Start `count` threads together (a barrier) and collect what each got."""
    results: list[Token | BaseException | None] = [None] * count
    barrier = threading.Barrier(count)

    def worker(index: int) -> None:
        barrier.wait(WAIT)
        try:
            results[index] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a caller hung"
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


class Background:
    """Run `fn` in a thread; `result()` returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Token]) -> None:
        self._value: Token | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Token]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self._error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self) -> Token:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the background caller hung"
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def assert_unlocked(cache: TokenCache) -> None:
    assert not cache._lock.locked()


# -- RefreshPolicy ---------------------------------------------------------------------


def test_policy_default_leeway_for_a_long_token() -> None:
    policy = RefreshPolicy()
    token = make_token(issued_at=0.0, lifetime=1800.0)
    assert policy.refresh_at(token) == 1740.0
    assert policy.freshness(token, 0.0) is Freshness.FRESH
    assert policy.freshness(token, 1739.999) is Freshness.FRESH
    assert policy.freshness(token, 1740.0) is Freshness.STALE
    assert policy.freshness(token, 1799.999) is Freshness.STALE
    assert policy.freshness(token, 1800.0) is Freshness.EXPIRED
    assert policy.freshness(token, 10_000.0) is Freshness.EXPIRED


def test_policy_short_token_clamped_to_fraction() -> None:
    policy = RefreshPolicy()
    token = make_token(issued_at=0.0, lifetime=2.0)
    assert policy.refresh_at(token) == pytest.approx(1.8)
    assert policy.freshness(token, 1.79) is Freshness.FRESH
    assert policy.freshness(token, 1.81) is Freshness.STALE
    assert policy.freshness(token, 1.99) is Freshness.STALE
    assert policy.freshness(token, 2.0) is Freshness.EXPIRED


@pytest.mark.parametrize(
    ("policy", "lifetime", "refresh_at"),
    [
        (RefreshPolicy(), 600.0, 540.0),  # leeway == fraction * lifetime
        (RefreshPolicy(), 300.0, 270.0),
        (RefreshPolicy(leeway=10.0), 1800.0, 1790.0),
        (RefreshPolicy(leeway=120.0, fraction=0.5), 100.0, 50.0),
        (RefreshPolicy(), 0.0, 0.0),
    ],
)
def test_policy_refresh_at(policy: RefreshPolicy, lifetime: float, refresh_at: float) -> None:
    token = make_token(issued_at=100.0, lifetime=lifetime)
    assert policy.refresh_at(token) == pytest.approx(100.0 + refresh_at)


def test_zero_lifetime_token_is_expired_at_once() -> None:
    token = make_token(issued_at=5.0, lifetime=0.0)
    assert RefreshPolicy().freshness(token, 5.0) is Freshness.EXPIRED


# -- get: the sync path -------------------------------------------------------------------


def test_get_fetches_once_while_fresh() -> None:
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)
    fetch = SyncFetch(clock)
    assert cache.current(KEY) is None
    assert cache.freshness(KEY) is None
    first = cache.get(KEY, fetch)
    assert fetch.calls == 1
    assert value_of(first) == "sync-1"
    for step in (0.0, 100.0, 1000.0, 639.999):
        clock.advance(step)
        assert cache.get(KEY, fetch) is first
    assert fetch.calls == 1
    assert cache.current(KEY) is first
    state, left = cache.freshness(KEY)  # type: ignore[misc]
    assert state is Freshness.FRESH
    assert left == pytest.approx(60.001)
    assert_unlocked(cache)


def test_get_stale_refreshes_exactly_once() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    fetch = SyncFetch(clock)
    first = cache.get(KEY, fetch)
    clock.advance(1750.0)  # 10 s after refresh_at, 50 s before expiry
    assert cache.freshness(KEY)[0] is Freshness.STALE  # type: ignore[index]
    assert cache.current(KEY) is None  # current() only hands out fresh tokens
    assert fetch.calls == 1
    second = cache.get(KEY, fetch)
    assert fetch.calls == 2
    assert second is not first
    assert second.issued_at == clock()
    for _ in range(5):
        assert cache.get(KEY, fetch) is second
    assert fetch.calls == 2
    assert_unlocked(cache)


def test_get_stale_others_keep_old_token_while_one_refreshes() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    old = cache.get(KEY, SyncFetch(clock))
    clock.advance(1750.0)

    gate = threading.Event()
    refresh = SyncFetch(clock, gate=gate, name="refresh")
    refresher = Background(lambda: cache.get(KEY, refresh))
    assert refresh.started.wait(WAIT)

    # While the refresh is blocked, everybody else gets the old token at once.
    others = SyncFetch(clock, name="other")
    assert cache.get(KEY, others) is old
    results = run_threads(16, lambda: cache.get(KEY, others))
    assert all(result is old for result in results)
    assert others.calls == 0
    assert not refresher.done()
    assert_unlocked(cache)

    gate.set()
    new = refresher.result()
    assert new is not old
    assert value_of(new) == "refresh-1"
    assert cache.get(KEY, others) is new
    assert refresh.calls == 1
    assert others.calls == 0
    assert_unlocked(cache)


@pytest.mark.parametrize("state", ["absent", "expired"])
def test_get_32_threads_one_fetch(state: str) -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    if state == "expired":
        cache.get(KEY, SyncFetch(clock, name="old"))
        clock.advance(1800.0)
        assert cache.freshness(KEY)[0] is Freshness.EXPIRED  # type: ignore[index]
        cache.decisions.clear()
    # The fetch returns only once all 32 callers have reached the cache.
    fetch = SyncFetch(clock, before=lambda: cache.wait_decisions(32))
    results = run_threads(32, lambda: cache.get(KEY, fetch))
    assert fetch.calls == 1
    assert sorted(cache.decisions) == ["fetch"] + ["wait"] * 31
    assert all(isinstance(result, Token) for result in results)
    assert all(result is results[0] for result in results)
    assert value_of(results[0]) == "sync-1"  # type: ignore[arg-type]
    assert cache.current(KEY) is results[0]
    assert_unlocked(cache)


def test_get_32_threads_shared_failure() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    error = TokenResponseError(
        "token endpoint answered HTTP 401 (invalid_client)", status_code=401, error="invalid_client"
    )
    fetch = SyncFetch(clock, error=error, before=lambda: cache.wait_decisions(32))
    results = run_threads(32, lambda: cache.get(KEY, fetch))
    assert fetch.calls == 1
    assert sorted(cache.decisions) == ["fetch"] + ["wait"] * 31
    assert all(isinstance(result, TokenError) for result in results), results
    assert all(getattr(result, "status_code", None) == 401 for result in results)
    assert cache.current(KEY) is None
    assert_unlocked(cache)
    # The failed flight is gone: the next caller fetches anew.
    retry = SyncFetch(clock, name="retry")
    token = cache.get(KEY, retry)
    assert value_of(token) == "retry-1"
    assert retry.calls == 1
    assert_unlocked(cache)


def test_get_interrupted_fetch_gives_waiters_an_ordinary_error() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    fetch = SyncFetch(clock, error=KeyboardInterrupt(), before=lambda: cache.wait_decisions(4))
    results = run_threads(4, lambda: cache.get(KEY, fetch))
    assert fetch.calls == 1
    assert sum(isinstance(r, KeyboardInterrupt) for r in results) == 1
    assert sum(isinstance(r, TokenRequestError) for r in results) == 3
    assert_unlocked(cache)
    assert value_of(cache.get(KEY, SyncFetch(clock, name="next"))) == "next-1"


def test_get_failed_stale_refresh_keeps_old_token_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mtls_auth")
    clock = FakeClock(1000.0)
    policy = RefreshPolicy(retry_stale_after=5.0)
    cache = TokenCache(clock=clock, policy=policy)
    old = cache.get(KEY, SyncFetch(clock, name="secret-old-value"))
    clock.advance(1745.0)  # stale, 55 s left

    failing = SyncFetch(clock, error=TokenRequestError("token endpoint unreachable"))
    assert cache.get(KEY, failing) is old
    assert failing.calls == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name.startswith("mtls_auth.")
    assert "unreachable" in warnings[0].getMessage()
    assert "secret-old-value" not in caplog.text
    assert_unlocked(cache)

    # No new attempt before retry_stale_after has passed.
    for step in (0.0, 1.0, 2.0, 1.5):
        clock.advance(step)
        assert cache.get(KEY, failing) is old
    assert failing.calls == 1

    clock.advance(0.5)  # exactly retry_stale_after since the failure
    assert cache.get(KEY, failing) is old
    assert failing.calls == 2

    good = SyncFetch(clock, name="good")
    clock.advance(5.0)
    new = cache.get(KEY, good)
    assert value_of(new) == "good-1"
    assert cache.get(KEY, good) is new
    assert good.calls == 1
    assert failing.calls == 2
    assert_unlocked(cache)


def test_get_failed_refresh_after_expiry_raises() -> None:
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)
    cache.get(KEY, SyncFetch(clock))
    clock.advance(1800.0)
    with pytest.raises(TokenRequestError):
        cache.get(KEY, SyncFetch(clock, error=TokenRequestError("down")))
    assert_unlocked(cache)


def test_invalidate_only_the_current_token() -> None:
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)
    fetch = SyncFetch(clock)
    first = cache.get(KEY, fetch)

    cache.invalidate(KEY, make_token(clock(), value="sync-1"))  # equal value, other object
    assert cache.get(KEY, fetch) is first
    assert fetch.calls == 1

    cache.invalidate(KEY, first)
    assert cache.current(KEY) is None
    second = cache.get(KEY, fetch)
    assert second is not first
    assert fetch.calls == 2

    # A late 401 for the old token does not drop the newer one.
    cache.invalidate(KEY, first)
    assert cache.get(KEY, fetch) is second
    assert fetch.calls == 2

    cache.invalidate(KEY)
    assert cache.current(KEY) is None
    cache.get(KEY, fetch)
    assert fetch.calls == 3
    cache.clear()
    assert cache.current(KEY) is None
    assert_unlocked(cache)


def test_invalidate_resets_stale_backoff() -> None:
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)
    old = cache.get(KEY, SyncFetch(clock))
    clock.advance(1750.0)
    assert cache.get(KEY, SyncFetch(clock, error=TokenRequestError("down"))) is old
    cache.invalidate(KEY, old)
    fetch = SyncFetch(clock, name="fresh")
    assert value_of(cache.get(KEY, fetch)) == "fresh-1"


def test_each_key_has_its_own_token() -> None:
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)
    fetch = SyncFetch(clock)
    first = cache.get(KEY, fetch)
    second = cache.get(OTHER_KEY, fetch)
    assert fetch.calls == 2
    assert second is not first
    assert cache.current(KEY) is first
    assert cache.current(OTHER_KEY) is second
    assert cache.get(KEY, fetch) is first
    assert cache.get(OTHER_KEY, fetch) is second
    assert fetch.calls == 2
    assert_unlocked(cache)


def test_key_mismatch_waits_then_fetches_its_own() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    gate = threading.Event()
    fetch_a = SyncFetch(clock, gate=gate, name="a")
    fetch_b = SyncFetch(clock, name="b")
    a = Background(lambda: cache.get(KEY, fetch_a))
    assert fetch_a.started.wait(WAIT)
    b = Background(lambda: cache.get(OTHER_KEY, fetch_b))
    cache.wait_decisions(2)
    gate.set()
    assert value_of(a.result()) == "a-1"
    assert value_of(b.result()) == "b-1"
    assert (fetch_a.calls, fetch_b.calls) == (1, 1)
    assert_unlocked(cache)


def test_key_mismatch_does_not_inherit_another_keys_failure() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    gate = threading.Event()
    fetch_a = SyncFetch(clock, gate=gate, error=TokenRequestError("old certificate revoked"))
    fetch_b = SyncFetch(clock, name="b")
    a = Background(lambda: cache.get(KEY, fetch_a))
    assert fetch_a.started.wait(WAIT)
    b = Background(lambda: cache.get(OTHER_KEY, fetch_b))
    cache.wait_decisions(2)
    gate.set()
    with pytest.raises(TokenRequestError):
        a.result()
    assert_unlocked(cache)
    assert value_of(b.result()) == "b-1"


# -- aget: the async path -------------------------------------------------------------


def test_aget_200_coroutines_one_fetch() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    fetch = AsyncFetch(clock, yields=10)

    async def main() -> list[Token]:
        return await asyncio.gather(*(cache.aget(KEY, fetch) for _ in range(200)))

    tokens = asyncio.run(main())
    assert fetch.calls == 1
    assert sorted(cache.decisions) == ["fetch"] + ["wait"] * 199
    assert all(token is tokens[0] for token in tokens)
    assert value_of(tokens[0]) == "async-1"
    assert cache.current(KEY) is tokens[0]
    assert_unlocked(cache)


def test_aget_fresh_hot_path_and_shared_failure() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    failing = AsyncFetch(clock, error=TokenResponseError("HTTP 400", status_code=400))
    good = AsyncFetch(clock, name="good")

    async def main() -> None:
        results = await asyncio.gather(
            *(cache.aget(KEY, failing) for _ in range(50)), return_exceptions=True
        )
        assert failing.calls == 1
        assert all(isinstance(r, TokenResponseError) for r in results)
        assert_unlocked(cache)
        first = await cache.aget(KEY, good)
        clock.advance(1000.0)
        assert await cache.aget(KEY, good) is first
        assert good.calls == 1

    asyncio.run(main())
    assert_unlocked(cache)


def test_aget_cancelled_initiator_does_not_strand_others() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)

    async def main() -> tuple[list[Token], AsyncFetch]:
        release = asyncio.Event()
        fetch = AsyncFetch(clock, release=release)
        initiator = asyncio.create_task(cache.aget(KEY, fetch))
        await cache.await_decisions(1)
        waiters = [asyncio.create_task(cache.aget(KEY, fetch)) for _ in range(20)]
        await cache.await_decisions(21)
        for _ in range(10):
            await asyncio.sleep(0)
        assert fetch.started.is_set()
        assert not initiator.done()

        initiator.cancel()
        with pytest.raises(asyncio.CancelledError):
            await initiator
        assert_unlocked(cache)
        assert not any(w.done() for w in waiters)

        release.set()
        tokens = await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
        # A later caller gets the same token without another fetch.
        assert await cache.aget(KEY, fetch) is tokens[0]
        return tokens, fetch

    tokens, fetch = asyncio.run(main())
    assert fetch.calls == 1
    assert cache.decisions[:21] == ["fetch"] + ["wait"] * 20
    assert all(token is tokens[0] for token in tokens)
    assert cache.current(KEY) is tokens[0]
    assert_unlocked(cache)


def test_aget_cancelled_waiter_does_not_disturb_others() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)

    async def main() -> None:
        release = asyncio.Event()
        fetch = AsyncFetch(clock, release=release)
        tasks = [asyncio.create_task(cache.aget(KEY, fetch)) for _ in range(5)]
        await cache.await_decisions(5)
        tasks[3].cancel()
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[3], asyncio.CancelledError)
        kept = [r for i, r in enumerate(results) if i != 3]
        assert all(isinstance(r, Token) and r is kept[0] for r in kept)
        assert fetch.calls == 1

    asyncio.run(main())
    assert_unlocked(cache)


def test_aget_cancelled_fetch_task_fails_waiters_and_frees_the_flight() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)

    async def main() -> None:
        release = asyncio.Event()
        fetch = AsyncFetch(clock, release=release)
        tasks = [asyncio.create_task(cache.aget(KEY, fetch)) for _ in range(5)]
        await cache.await_decisions(5)
        for _ in range(20):
            await asyncio.sleep(0)
        assert fetch.started.is_set()
        flight = cache._flights.get(KEY)
        assert flight is not None
        assert flight.task is not None
        flight.task.cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
        waiters = results[1:]
        assert all(isinstance(r, TokenRequestError) for r in waiters), results
        assert_unlocked(cache)
        assert cache._flights.get(KEY) is None
        token = await cache.aget(KEY, AsyncFetch(clock, name="next"))
        assert value_of(token) == "next-1"

    asyncio.run(main())
    assert_unlocked(cache)


def test_aget_stale_others_keep_old_token() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)

    async def main() -> None:
        old = await cache.aget(KEY, AsyncFetch(clock, name="old"))
        clock.advance(1750.0)
        release = asyncio.Event()
        refresh = AsyncFetch(clock, release=release, name="refresh")
        refresher = asyncio.create_task(cache.aget(KEY, refresh))
        for _ in range(20):
            await asyncio.sleep(0)
        assert refresh.started.is_set()

        others = AsyncFetch(clock, name="other")
        results = await asyncio.wait_for(
            asyncio.gather(*(cache.aget(KEY, others) for _ in range(50))), WAIT
        )
        assert all(r is old for r in results)
        assert others.calls == 0
        assert not refresher.done()

        release.set()
        new = await refresher
        assert value_of(new) == "refresh-1"
        assert await cache.aget(KEY, others) is new
        assert refresh.calls == 1
        assert others.calls == 0

    asyncio.run(main())
    assert_unlocked(cache)


def test_aget_failed_stale_refresh_keeps_old_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)

    async def main() -> None:
        old = await cache.aget(KEY, AsyncFetch(clock))
        clock.advance(1750.0)
        failing = AsyncFetch(clock, error=TokenRequestError("down"))
        assert await cache.aget(KEY, failing) is old
        assert await cache.aget(KEY, failing) is old
        assert failing.calls == 1
        clock.advance(5.0)
        assert await cache.aget(KEY, failing) is old
        assert failing.calls == 2

    asyncio.run(main())
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert_unlocked(cache)


def test_thread_waits_for_a_coroutines_fetch_on_another_loop() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:

        async def make_event() -> asyncio.Event:
            return asyncio.Event()

        release = asyncio.run_coroutine_threadsafe(make_event(), loop).result(WAIT)
        afetch = AsyncFetch(clock, release=release)
        future = asyncio.run_coroutine_threadsafe(cache.aget(KEY, afetch), loop)
        assert afetch.started.wait(WAIT)

        sfetch = SyncFetch(clock)
        waiter = Background(lambda: cache.get(KEY, sfetch))
        cache.wait_decisions(2)
        assert cache.decisions == ["fetch", "wait"]
        assert not waiter.done()
        assert_unlocked(cache)

        loop.call_soon_threadsafe(release.set)
        token = future.result(WAIT)
        assert waiter.result() is token
        assert afetch.calls == 1
        assert sfetch.calls == 0
        assert_unlocked(cache)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)
        loop.close()


def test_coroutine_waits_for_a_threads_fetch() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)
    gate = threading.Event()
    sfetch = SyncFetch(clock, gate=gate)
    fetcher = Background(lambda: cache.get(KEY, sfetch))
    assert sfetch.started.wait(WAIT)
    afetch = AsyncFetch(clock)

    async def main() -> Token:
        task = asyncio.create_task(cache.aget(KEY, afetch))
        await cache.await_decisions(2)
        assert cache.decisions == ["fetch", "wait"]
        await asyncio.sleep(0)
        assert not task.done()
        gate.set()  # the thread's fetch completes and resolves our future thread-safely
        return await asyncio.wait_for(task, WAIT)

    try:
        token = asyncio.run(main())
    finally:
        gate.set()
    assert fetcher.result() is token
    assert value_of(token) == "sync-1"
    assert sfetch.calls == 1
    assert afetch.calls == 0
    assert_unlocked(cache)


def test_sync_get_inside_the_loop_running_the_fetch_does_not_deadlock() -> None:
    clock = FakeClock(1000.0)
    cache = CountingCache(clock=clock)

    async def main() -> None:
        release = asyncio.Event()
        afetch = AsyncFetch(clock, release=release)
        task = asyncio.create_task(cache.aget(KEY, afetch))
        await cache.await_decisions(1)
        sfetch = SyncFetch(clock)
        # A sync client called from a coroutine on the same loop must not block it.
        token = cache.get(KEY, sfetch)
        assert value_of(token) == "sync-1"
        release.set()
        assert value_of(await task) == "async-1"

    asyncio.run(main())
    assert_unlocked(cache)


def test_fetch_task_cancelled_before_it_starts_does_not_poison_the_cache() -> None:
    clock = FakeClock(1000.0)
    cache = TokenCache(clock=clock)
    fetch = AsyncFetch(clock)

    async def shut_down_mid_fetch() -> None:
        initiator = asyncio.create_task(cache.aget(KEY, fetch))
        await asyncio.sleep(0)  # the initiator has run one step and created the fetch task
        flight = cache._flights.get(KEY)
        assert flight is not None
        assert flight.task is not None
        flight.task.cancel()  # as the loop's shutdown would, before the task first ran
        # The initiator was not cancelled itself: it hears of an interrupted fetch.
        with pytest.raises(TokenRequestError, match="interrupted"):
            await initiator

    asyncio.run(shut_down_mid_fetch())
    assert fetch.calls == 0
    assert_unlocked(cache)
    assert KEY not in cache._flights, "a dead flight remains: later callers wait on it forever"

    async def later() -> Token:
        return await asyncio.wait_for(cache.aget(KEY, AsyncFetch(clock, name="later")), 1.0)

    assert value_of(asyncio.run(later())) == "later-1"
