"""One token per fleet: forked worker processes share one token through a real store.

Real processes (multiprocessing's fork start method, as gunicorn, uvicorn and
Celery prefork make workers), each with real threads or coroutines, in front of
the test kit's token server, with a real store: a directory of this host, or
a real redis-server on loopback. Each process runs the whole stack: its own
cache with single flight, then the store and its lease. The only waits are
those of real processes on real locks, and each is bounded.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from clients import Client
from store_harness import STORE_KINDS, fork_workers

from mtls_auth.testing import Fault, TokenServer

#: The store fixtures (redis_server, store_dir, store_url, raw_store...).
pytest_plugins = ["store_fixtures"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

WORKERS = 8
CONCURRENCY = 32
#: The token request timeout of the auths here: their lease lives 2 s. A fresh
#: worker's first fetch (its first TLS handshake) must fit in it on a loaded machine.
TIMEOUT = 1.0
LEASE = TIMEOUT + 1.0


def _statuses(results: list[Any]) -> dict[str, Any]:
    return {
        "statuses": sorted({r.status for r in results}, key=str),
        "errors": [type(r.error).__name__ for r in results if r.error is not None],
    }


def _tokens_at_once(caller: Client, auth: Any, count: int) -> list[str]:
    """`count` threads (sync) or coroutines (async) asking `auth` for its token at once;
    the kinds of error they got, if any."""
    if caller.is_async:

        async def main() -> list[Any]:
            try:
                return await asyncio.gather(
                    *(auth.atoken_info() for _ in range(count)), return_exceptions=True
                )
            finally:
                await auth.aclose()

        outcomes = asyncio.run(main())
    else:
        barrier = threading.Barrier(count)

        def one(_: int) -> Any:
            barrier.wait(10)
            try:
                return auth.token_info()
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                return exc

        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(one, range(count)))
    return [type(o).__name__ for o in outcomes if isinstance(o, BaseException)]


@pytest.mark.parametrize("store_url", STORE_KINDS, indirect=True)
def test_a_cold_fleet_of_8_processes_by_32_asks_for_exactly_one_token(
    client: Client, mtls_server: TokenServer, store_url: str
) -> None:
    """8 workers of 32 threads (requests, httpx sync) or 32 coroutines (httpx async)."""
    # The first token request takes 0.3 s: every process arrives while it runs.
    mtls_server.inject(Fault.delay(0.3))
    # As with gunicorn --preload: half the workers inherit an auth made before the fork.
    preloaded = client.auth(token_store=store_url)

    def work(index: int, go: Callable[[], None]) -> dict[str, Any]:
        auth = preloaded if index % 2 else client.auth(token_store=store_url)
        go()
        errors = _tokens_at_once(client, auth, CONCURRENCY)
        # ...and the token works: one request to the resource with it.
        return {"errors": errors, **_statuses([client.call(auth)])}

    outcomes = fork_workers(WORKERS, work)
    assert outcomes == [{"errors": [], "statuses": [200]}] * WORKERS
    assert mtls_server.token_request_count == 1
    assert {r.token_index for r in mtls_server.resource_requests} == {1}
    assert len(mtls_server.resource_requests) == WORKERS


@pytest.mark.parametrize("store_url", STORE_KINDS, indirect=True)
def test_a_lease_holder_killed_mid_fetch_delays_the_others_by_at_most_the_lease(
    clients: list[Client], mtls_server: TokenServer, store_url: str
) -> None:
    """SIGKILL while the holder's token request is at the server; requests, httpx sync and
    async workers then all get their token: from a new holder, never an error."""
    mtls_server.inject(Fault.delay(30))  # the holder's request hangs (the server stops it)
    first = clients[0]

    def holder(index: int, go: Callable[[], None]) -> dict[str, Any]:
        go()
        return _statuses([first.call(first.auth(token_store=store_url, timeout=TIMEOUT))])

    def kill_when_fetching(processes: list[Any]) -> None:
        deadline = time.monotonic() + 10
        while mtls_server.token_request_count == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # until its request is at the server: it holds the lease
        assert mtls_server.token_request_count == 1
        processes[0].kill()

    (killed,) = fork_workers(1, holder, started=kill_when_fetching)
    assert killed == {"exitcode": -9}

    def others(index: int, go: Callable[[], None]) -> dict[str, Any]:
        caller = clients[index]
        auth = caller.auth(token_store=store_url, timeout=TIMEOUT)
        go()
        started = time.monotonic()
        outcome = _statuses([caller.call(auth)])
        return {**outcome, "seconds": time.monotonic() - started}

    outcomes = fork_workers(len(clients), others)
    assert [o.get("statuses") for o in outcomes] == [[200]] * len(clients), outcomes
    # The file store sees at once that the holder's process is gone; Redis waits
    # for the lease to expire. Either way, one more token request, for everyone.
    bound = 1.0 if store_url.startswith("file:") else LEASE + 1.0
    assert max(o["seconds"] for o in outcomes) < bound, outcomes
    assert mtls_server.token_request_count == 2
