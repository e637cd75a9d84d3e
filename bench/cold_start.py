"""b. Token requests at a cold start, with one shared auth object.

32 threads (requests, httpx sync) or 200 coroutines (httpx async) are released
together against one freshly built candidate that has no token yet; each sends
one request to the resource. The token endpoint answers after `delay` seconds,
so every caller arrives while the first fetch is still in flight. The server
counts the requests that reached its token endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

from candidates import Setup, libraries, maybe_await
from loopback import LoopbackServer


def _outcome(tokens: int, errors: collections.Counter[str], seconds: float) -> dict[str, Any]:
    return {
        "token_requests": tokens,
        "errors": sum(errors.values()),
        "error_types": dict(errors),
        "seconds": seconds,
    }


def threads(
    setup: Setup, server: LoopbackServer, lib: str, family: str, n: int, delay: float
) -> dict[str, Any]:
    server.clear()
    server.delay_tokens(delay)
    client = setup.build(lib, family, cold=True, pool=n)
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1)

    def worker() -> None:
        barrier.wait()
        try:
            status = client.get()
            problem = None if status == 200 else f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - counted and reported
            problem = type(exc).__name__
        if problem is not None:
            with lock:
                errors[problem] += 1

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
    for thread in workers:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in workers:
        thread.join(120)
    seconds = time.perf_counter() - start
    try:
        return _outcome(server.token_request_count, errors, seconds)
    finally:
        client.close()
        server.clear()


async def _coroutines(
    setup: Setup, server: LoopbackServer, lib: str, n: int, delay: float
) -> dict[str, Any]:
    server.clear()
    server.delay_tokens(delay)
    client = setup.build(lib, "httpx-async", cold=True, pool=n)
    errors: collections.Counter[str] = collections.Counter()

    async def one() -> None:
        try:
            status = await client.get()
            if status != 200:
                errors[f"HTTP {status}"] += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[type(exc).__name__] += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(n)))
        seconds = time.perf_counter() - start
        return _outcome(server.token_request_count, errors, seconds)
    finally:
        await maybe_await(client.close())
        server.clear()


def run(
    setup: Setup, server: LoopbackServer, *, n_threads: int, n_coroutines: int, delay: float
) -> dict[str, Any]:
    """{scenario: {lib: {token_requests, errors, seconds}}}."""
    results: dict[str, Any] = {}
    for family in ("requests", "httpx"):
        scenario = f"{family}, {n_threads} threads"
        results[scenario] = {
            lib: threads(setup, server, lib, family, n_threads, delay)
            for lib in libraries(family)
            if lib != "baseline"
        }
    scenario = f"httpx-async, {n_coroutines} coroutines"
    results[scenario] = {
        lib: asyncio.run(_coroutines(setup, server, lib, n_coroutines, delay))
        for lib in libraries("httpx-async")
        if lib != "baseline"
    }
    return results
