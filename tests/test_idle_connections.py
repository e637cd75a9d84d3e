"""No idle token-endpoint socket when no refresh is due soon; kept while fetches come close.

After a fetch, when the next refresh is further away than the idle horizon, the
connection to the token endpoint is closed: at once after a lone fetch (no
other ended within the horizon before it), else once the horizon passes
without another fetch; the next fetch opens a new one (the server counts
accepted connections). When a refresh is due within the horizon, the
connection stays. The horizon (30 s in production) is shortened here, and the
tests wait for a release itself with a deadline, not for a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth.testing import TokenServer


@pytest.fixture(params=[mrequests, mhttpx], ids=["requests", "httpx-sync"])
def sync_auth(
    request: pytest.FixtureRequest,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
) -> Iterator[Any]:
    """An auth of requests or httpx (used synchronously) on the kit's binding."""
    auth = request.param.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    yield auth
    auth.close()


@pytest.fixture
def async_auth(mtls_xsuaa_binding: dict[str, Any], mtls_auth_kwargs: dict[str, Any]) -> Any:
    """An httpx auth, for use inside an event loop (each test closes it there)."""
    return mhttpx.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)


def _idle_of(auth: Any, in_loop: bool = False) -> Any:
    return auth._client.sender.idle_for(in_loop)


def _pools(auth: Any) -> Any:
    sender = auth._client.sender
    return sender._sessions if hasattr(sender, "_sessions") else sender._sync


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.mark.mtls_server(token_lifetime=3600)
def test_a_lone_fetch_lets_the_connection_go_at_once(
    sync_auth: Any, mtls_server: TokenServer
) -> None:
    """An application's first token, with no refresh due for an hour: no socket kept."""
    auth = sync_auth
    auth.token_info()
    assert mtls_server.connections_accepted == 1
    assert _pools(auth)._current is None, "the connection of a lone fetch was kept"


@pytest.mark.mtls_server(token_lifetime=3600)
def test_fetches_close_together_keep_the_connection_until_the_horizon_passes(
    sync_auth: Any, mtls_server: TokenServer
) -> None:
    auth = sync_auth
    _idle_of(auth).horizon = 1.0  # the fetches below follow each other well within it

    def fetch(scope: str) -> None:
        auth._derive(auth._request.replace(scope=scope)).token_info()

    fetch("first")  # lone: its connection goes at once
    fetch("second")  # close after it: a new connection, kept
    fetch("third")  # and reused
    assert mtls_server.connections_accepted == 2
    assert _pools(auth)._current is not None
    assert _until(lambda: _pools(auth)._current is None), "the idle connection was kept"
    # After the horizon without a fetch, the next one is lone again: it connects.
    fetch("fourth")
    assert mtls_server.connections_accepted == 3


@pytest.mark.mtls_server(token_lifetime=3600)
def test_the_async_connection_goes_too(async_auth: Any, mtls_server: TokenServer) -> None:
    auth = async_auth

    async def released(clients: Any) -> bool:
        deadline = time.monotonic() + 5
        while clients._current is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return clients._current is None

    async def main() -> list[bool]:
        _idle_of(auth, in_loop=True).horizon = 1.0
        await auth.atoken_info()  # lone: the loop closes its client at once
        loop = asyncio.get_running_loop()
        clients = auth._client.sender._loops._entries[id(loop)][1]
        lone = await released(clients)
        for scope in ("second", "third"):  # close together: kept, then let go
            await auth._derive(auth._request.replace(scope=scope)).atoken_info()
        kept = clients._current is not None
        later = await released(clients)
        await auth.aclose()
        return [lone, kept, later]

    assert asyncio.run(main()) == [True, True, True]
    assert mtls_server.connections_accepted == 2


@pytest.mark.mtls_server(token_lifetime=3600)
def test_a_fetch_beginning_before_the_loop_closes_keeps_its_client(
    async_auth: Any, mtls_server: TokenServer
) -> None:
    """The loop's close is asked for from another thread (the reaper): if a fetch
    began on the loop before the close runs, the close leaves the client alone."""
    auth = async_auth

    async def main() -> bool:
        idle = _idle_of(auth, in_loop=True)
        idle.horizon = 3600.0  # nothing planned by the reaper during the test
        await auth._derive(auth._request.replace(scope="warm")).atoken_info()
        loop = asyncio.get_running_loop()
        clients = auth._client.sender._loops._entries[id(loop)][1]
        for _ in range(5):  # the lone fetch's close has run
            await asyncio.sleep(0)
        await auth.atoken_info()  # close after it (within the hour): kept
        assert clients._current is not None
        idle._release()  # what the reaper does when the time comes...
        idle.begin()  # ...while a fetch starts on the loop
        for _ in range(5):
            await asyncio.sleep(0)
        kept = clients._current is not None
        idle.end(None)
        await auth.aclose()
        return kept

    assert asyncio.run(main()), "the close cut the client of a fetch that had begun"


@pytest.mark.mtls_server(token_lifetime=1)
def test_the_connection_stays_while_refreshes_come_close(
    sync_auth: Any, mtls_server: TokenServer
) -> None:
    """A token refreshed within the horizon: no release is even scheduled."""
    from mtls_auth._idle import _reaper

    auth = sync_auth
    idle = _idle_of(auth)
    idle.horizon = 5.0  # the next refresh (0.9 s away) comes sooner
    auth.token_info()
    scheduled = [entry for entry in _reaper()._heap if entry[2]() is idle]
    assert scheduled == []
    assert _pools(auth)._current is not None


def test_a_fetch_in_progress_is_never_cut() -> None:
    """The release waits for running fetches, and a later fetch moves it."""
    from mtls_auth._idle import IdleRelease

    released: list[int] = []
    idle = IdleRelease(lambda: released.append(1), horizon=10.0)
    idle.begin()
    idle.end(3600)  # a lone fetch: released at once
    assert released == [1]
    assert idle._due is None
    released.clear()
    idle.begin()
    idle.end(3600)  # close after it: planned, released 10 s after this fetch
    assert released == []
    due = idle._due
    assert due is not None
    idle.begin()  # another fetch starts: nothing may be cut under it
    assert idle.fire(due + 1) is None
    assert released == []
    idle.end(3600)  # it ends: planned again from now
    later = idle._due
    assert later is not None
    assert later >= due
    assert idle.fire(later - 1) == later  # not yet: look again then
    assert released == []
    assert idle.fire(later) is None
    assert released == [1]
    assert idle.fire(later + 100) is None  # once
    assert released == [1]


def test_many_fetches_keep_one_reaper_entry() -> None:
    """However many fetches a sender makes, the reaper holds one entry for it."""
    from mtls_auth._idle import IdleRelease, _reaper

    idle = IdleRelease(lambda: None, horizon=3600.0)
    for _ in range(100):
        idle.begin()
        idle.end(86400)
    assert len([entry for entry in _reaper()._heap if entry[2]() is idle]) == 1


def test_finished_event_loops_are_not_kept_alive(
    mtls_xsuaa_binding: dict[str, Any], mtls_auth_kwargs: dict[str, Any]
) -> None:
    """One auth used by many asyncio.run() calls (one per job): the finished loops go."""
    import gc
    import weakref

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def job(auth: Any) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await auth.atoken_info()
        auth._client.cache.clear()  # the next job fetches again, on its own loop

    with mhttpx.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs) as auth:
        for _ in range(5):
            asyncio.run(job(auth))
        gc.collect()
        # The newest loop's clients are released when the next loop comes.
        assert len([ref for ref in loops if ref() is not None]) <= 1
        assert len(auth._client.sender._loops._idles) <= 1


def test_a_failing_release_never_replaces_the_fetch_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Closing is housekeeping: the fetch that ended still returns its token."""
    from mtls_auth._idle import IdleRelease

    def release() -> None:
        raise OSError("the socket would not close")

    idle = IdleRelease(release, horizon=10.0)
    with caplog.at_level("DEBUG", logger="mtls_auth"):
        idle.begin()
        idle.end(3600)  # a lone fetch: released at once, and the error stays here
    assert "closing an idle token-endpoint connection failed: OSError" in caplog.text
    assert not idle.busy


@pytest.mark.mtls_server(token_lifetime=3600)
def test_a_loop_shutting_down_mid_release_still_closes_the_client(
    async_auth: Any, mtls_server: TokenServer
) -> None:
    """asyncio.run cancels the release's close at shutdown: what it had not closed
    goes back, and the loop's own close at shutdown closes it."""
    auth = async_auth
    calls: list[int] = []
    seen: list[Any] = []

    async def main() -> None:
        await auth.atoken_info()  # lone: the loop's close is on its way
        loop = asyncio.get_running_loop()
        clients = auth._client.sender._loops._entries[id(loop)][1]
        client = clients._current[1]
        original = client.aclose

        async def first_close_hangs() -> None:
            calls.append(1)
            if len(calls) == 1:
                await asyncio.sleep(3600)  # until asyncio.run cancels it
            await original()

        client.aclose = first_close_hangs
        seen.append(client)
        for _ in range(5):  # the release's close starts, and waits
            await asyncio.sleep(0)
        assert calls == [1]

    asyncio.run(main())
    assert len(calls) == 2, "the client the cancelled close held was never closed"
    assert seen[0].is_closed
