"""c. Token requests and errors with a 2-second token lifetime.

The server issues tokens that live `lifetime` seconds (``expires_in`` 2, and it
refuses them at the resource once expired). `workers` threads (requests, httpx
sync) or coroutines (httpx async) share one candidate, which starts without a
token, and send requests back to back for `duration` seconds. Counted: token
requests reaching the server, requests done, and errors (an exception or a
status other than 200).

Peers run twice: with their default refresh margin (authlib ``leeway`` 60 s,
httpx-auth ``early_expiry`` 30 s, requests-oauthlib none) and tuned to
`TUNED_MARGIN` seconds. mtls-auth has one setting: its default.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

from candidates import TUNED_MARGIN, Setup, libraries, maybe_await
from loopback import LoopbackServer


def _result(
    tokens: int, done: int, errors: collections.Counter[str], seconds: float, margin: float | None
) -> dict[str, Any]:
    return {
        "token_requests": tokens,
        "requests": done,
        "errors": sum(errors.values()),
        "error_types": dict(errors),
        "seconds": seconds,
        "margin": margin,
    }


def _sync(
    setup: Setup,
    server: LoopbackServer,
    lib: str,
    family: str,
    margin: float | None,
    workers: int,
    duration: float,
) -> dict[str, Any]:
    client = setup.build(lib, family, cold=True, margin=margin, pool=workers)
    errors: collections.Counter[str] = collections.Counter()
    counts = [0] * workers
    lock = threading.Lock()
    barrier = threading.Barrier(workers + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        barrier.wait()
        get = client.get
        while time.monotonic() < deadline[0]:
            try:
                status = get()
                problem = None if status == 200 else f"HTTP {status}"
            except Exception as exc:  # noqa: BLE001 - counted and reported
                problem = type(exc).__name__
            counts[index] += 1
            if problem is not None:
                with lock:
                    errors[problem] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    server.clear()
    deadline[0] = time.monotonic() + duration
    start = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join(duration + 60)
    seconds = time.perf_counter() - start
    tokens = server.token_request_count
    client.close()
    return _result(tokens, sum(counts), errors, seconds, margin)


async def _async(
    setup: Setup,
    server: LoopbackServer,
    lib: str,
    margin: float | None,
    workers: int,
    duration: float,
) -> dict[str, Any]:
    client = setup.build(lib, "httpx-async", cold=True, margin=margin, pool=workers)
    errors: collections.Counter[str] = collections.Counter()
    counts = [0] * workers
    server.clear()
    deadline = time.monotonic() + duration

    async def worker(index: int) -> None:
        while time.monotonic() < deadline:
            try:
                status = await client.get()
                if status != 200:
                    errors[f"HTTP {status}"] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors[type(exc).__name__] += 1
            counts[index] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    seconds = time.perf_counter() - start
    tokens = server.token_request_count
    await maybe_await(client.close())
    return _result(tokens, sum(counts), errors, seconds, margin)


def run(
    setup: Setup,
    server: LoopbackServer,
    *,
    lifetime: float,
    workers: int,
    duration: float,
    peers: bool = True,
) -> dict[str, Any]:
    """{family: {label: result}}; labels "ours", "<peer> default", "<peer> tuned"."""
    results: dict[str, Any] = {}
    server.set_token_lifetime(lifetime)
    try:
        for family in ("requests", "httpx", "httpx-async"):
            runs: list[tuple[str, str, float | None]] = [("ours", "ours", None)]
            if peers:
                for lib in libraries(family):
                    if lib not in ("baseline", "ours"):
                        runs.append((f"{lib} default", lib, None))
                        runs.append((f"{lib} tuned", lib, TUNED_MARGIN))
            family_results: dict[str, Any] = {}
            for label, lib, margin in runs:
                if family == "httpx-async":
                    outcome = asyncio.run(_async(setup, server, lib, margin, workers, duration))
                else:
                    outcome = _sync(setup, server, lib, family, margin, workers, duration)
                family_results[label] = outcome
            results[family] = family_results
    finally:
        server.set_token_lifetime(3600)
        server.clear()
    return results
