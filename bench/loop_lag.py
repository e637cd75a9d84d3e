"""d. The largest event-loop lag while an async client fetches a token.

A ticker coroutine sleeps `tick` seconds in a loop and records how late it
wakes up: anything that runs on the loop without yielding (a blocking token
request, key loading, a TLS handshake done synchronously) shows up as lag.

Per candidate, in a fresh event loop, with the token endpoint answering after
`delay` seconds and tokens that live `lifetime` seconds: one baseline request
first, so imports are warm (a process's very first request pays for imports
everywhere); then `repeats` times, with a new candidate each time:

* ``cold``: the largest lag during its first request, which must fetch a token
  (mtls-auth also builds its internal token client and opens its connection);
* ``idle``: the largest lag over 0.5 s of doing nothing, as long as a refresh:
  the noise floor of the machine (other processes preempting this one);
* ``refresh``: the largest lag during the request that fetches the next token
  after the first one expired.

Reported: the median over the repeats of each, and the worst. On a busy
machine the idle floor rises; compare the refresh figure with it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from candidates import Setup, libraries, maybe_await
from loopback import LoopbackServer


class Ticker:
    """Measures how late `asyncio.sleep(tick)` wakes up, as a running maximum."""

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self.worst = 0.0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        perf = time.perf_counter
        while not self._stop:
            start = perf()
            await asyncio.sleep(self.tick)
            lag = perf() - start - self.tick
            if lag > self.worst:
                self.worst = lag

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def reset(self) -> None:
        self.worst = 0.0

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            await self._task


async def _one(setup: Setup, lib: str, lifetime: float, repeats: int) -> dict[str, Any]:
    warm = setup.build("baseline", "httpx-async")
    await warm.get()
    await maybe_await(warm.close())

    ticker = Ticker()
    ticker.start()
    idle: list[float] = []
    cold: list[float] = []
    refresh: list[float] = []
    statuses: list[int] = []
    try:
        for _ in range(repeats):
            client = setup.build(lib, "httpx-async", cold=True)
            try:
                await asyncio.sleep(0.05)
                ticker.reset()
                statuses.append(await client.get())  # the first fetch
                await asyncio.sleep(0.01)  # a lag at the very end still gets measured
                cold.append(ticker.worst)

                await asyncio.sleep(lifetime + 0.2 - _IDLE)  # the token expires meanwhile
                ticker.reset()
                await asyncio.sleep(_IDLE)  # as long as a refresh: the noise floor
                idle.append(ticker.worst)

                ticker.reset()
                statuses.append(await client.get())  # fetches the next token
                await asyncio.sleep(0.01)
                refresh.append(ticker.worst)
            finally:
                await maybe_await(client.close())
    finally:
        await ticker.stop()
    return {
        "refresh_ms": statistics.median(refresh) * 1e3,
        "refresh_worst_ms": max(refresh) * 1e3,
        "cold_ms": statistics.median(cold) * 1e3,
        "cold_worst_ms": max(cold) * 1e3,
        "idle_ms": statistics.median(idle) * 1e3,
        "idle_worst_ms": max(idle) * 1e3,
        "repeats": repeats,
        "failed_requests": sum(1 for status in statuses if status != 200),
    }


#: Length of the idle window, about as long as a refresh against the slow endpoint.
_IDLE = 0.5


def run(
    setup: Setup, server: LoopbackServer, *, delay: float, repeats: int, lifetime: float = 1.0
) -> dict[str, Any]:
    """{lib: {idle_ms, cold_ms, refresh_ms, token_requests, ...}} for async candidates."""
    results: dict[str, Any] = {}
    _ = setup.fixed_token  # fetched now, at the normal lifetime and without the delay
    server.set_token_lifetime(lifetime)
    try:
        for lib in libraries("httpx-async"):
            if lib == "baseline":
                continue
            server.clear()
            server.delay_tokens(delay)
            outcome = asyncio.run(_one(setup, lib, lifetime, repeats))
            outcome["token_requests"] = server.token_request_count
            results[lib] = outcome
    finally:
        server.set_token_lifetime(3600)
        server.clear()
    return results
