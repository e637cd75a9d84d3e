"""No idle token-endpoint socket when no refresh is due soon; kept while fetches come close.

After a fetch, when the next refresh is further away than the idle horizon, the
connection to the token endpoint is closed once the horizon passes without
another fetch; the next fetch opens a new one (the server counts accepted
connections). When a refresh is due within the horizon, the connection stays.
The horizon (30 s in production) is shortened here, and the test waits for the
release itself with a deadline, not for a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import pytest

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth.testing import TokenServer

HORIZON = 0.05


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
@pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx-sync"])
def test_the_connection_goes_when_no_refresh_is_due_soon(
    module: Any,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
) -> None:
    auth = module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    _idle_of(auth).horizon = HORIZON
    auth.token_info()
    assert mtls_server.connections_accepted == 1
    assert _pools(auth)._current is not None
    assert _until(lambda: _pools(auth)._current is None), "the idle connection was kept"
    # The next fetch (another token of the same client) connects again.
    auth._derive(auth._request.replace(scope="other")).token_info()
    assert mtls_server.connections_accepted == 2
    auth.close()


@pytest.mark.mtls_server(token_lifetime=3600)
def test_the_async_connection_goes_too(
    mtls_server: TokenServer, mtls_xsuaa_binding: dict[str, Any], mtls_auth_kwargs: dict[str, Any]
) -> None:
    auth = mhttpx.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)

    async def main() -> bool:
        _idle_of(auth, in_loop=True).horizon = HORIZON
        await auth.atoken_info()
        loop = asyncio.get_running_loop()
        entry = auth._client.sender._loops._entries[id(loop)]
        deadline = time.monotonic() + 5
        while entry[1]._current is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        released = entry[1]._current is None
        await auth._derive(auth._request.replace(scope="other")).atoken_info()
        await auth.aclose()
        return released

    assert asyncio.run(main()), "the loop's idle client was kept"
    assert mtls_server.connections_accepted == 2


@pytest.mark.mtls_server(token_lifetime=1)
@pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx-sync"])
def test_the_connection_stays_while_refreshes_come_close(
    module: Any,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
) -> None:
    """A token refreshed within the horizon: no release is even scheduled."""
    from mtls_auth._idle import _reaper

    auth = module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    idle = _idle_of(auth)
    idle.horizon = 5.0  # the next refresh (0.9 s away) comes sooner
    auth.token_info()
    scheduled = [entry for entry in _reaper()._heap if entry[2]() is idle]
    assert scheduled == []
    assert _pools(auth)._current is not None
    auth.close()


def test_a_fetch_in_progress_is_never_cut() -> None:
    """The release waits for running fetches, and a later fetch moves it."""
    from mtls_auth._idle import IdleRelease

    released: list[int] = []
    idle = IdleRelease(lambda: released.append(1), horizon=10.0)
    idle.begin()
    idle.end(3600)  # planned: released 10 s after this fetch
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
