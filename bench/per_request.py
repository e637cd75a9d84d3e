"""a. Per-request cost with a cached token, as a ratio to a fixed-header hook.

For each family (requests, httpx sync, httpx async) the installed candidates
share one adapter / transport, hence one keep-alive connection to the loopback
server: only the auth differs. After a
warm-up (token fetched, connection open, caches hot), `calls` requests per
candidate are sent in blocks of `block` (small blocks, so a burst of load from
other processes spoils few of them): round r runs one block of every
candidate, in an order rotated by r (and reversed every other round), so each
candidate runs in each position equally often and slow drift of the machine
hits all of them alike. A candidate's ratio is the median, over rounds, of its
block time divided by the baseline's block time in the same round.

The rounds are split over `repeats` repetitions, each with freshly built
clients: a new connection and server thread, new objects (whose placement in
memory alone moves timings by a percent or so). Rounds within one repetition
share those, so their spread understates the run-to-run spread; the medians
of the separate repetitions show it.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from typing import Any

from candidates import Client, Setup, libraries, maybe_await


def _orders(libs: list[str], rounds: int) -> list[list[str]]:
    orders = []
    for r in range(rounds):
        shift = r % len(libs)
        order = libs[shift:] + libs[:shift]
        if (r // len(libs)) % 2:
            order.reverse()
        orders.append(order)
    return orders


def bootstrap_median_ci(
    values: list[float], rounds: int = 2000, seed: int = 7
) -> tuple[float, float]:
    """A 95% bootstrap interval for the median of `values`."""
    if len(values) < 3:
        return (min(values), max(values))
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(rounds * 0.025)], medians[int(rounds * 0.975) - 1]


def _summarise(
    libs: list[str],
    times: list[dict[str, list[float]]],
    block: int,
    errors: dict[str, int],
) -> dict[str, Any]:
    """Pool the rounds of every repetition; keep each repetition's median too."""
    out: dict[str, Any] = {}
    for lib in libs:
        per_repeat = [sorted(t / b for t, b in zip(rep[lib], rep["baseline"])) for rep in times]
        ratios = sorted(r for rep in per_repeat for r in rep)
        blocks = sorted(t for rep in times for t in rep[lib])
        q = len(ratios) // 4
        out[lib] = {
            "ratio": statistics.median(ratios),
            "ratio_ci": list(bootstrap_median_ci(ratios)),
            "repeat_ratios": [statistics.median(rep) for rep in per_repeat],
            "ratio_iqr": [ratios[q], ratios[-q - 1]] if q else [ratios[0], ratios[-1]],
            # The lower quartile of block times: what a quiet machine gives. (Under
            # load block times are bimodal and their median jumps between modes;
            # the ratio, taken within a round, is what is robust.)
            "us_per_call": blocks[len(blocks) // 4] / block * 1e6,
            "blocks": len(ratios),
            "calls": len(ratios) * block,
            "repeats": len(times),
            "errors": errors[lib],
        }
    return out


def _sync_repeat(
    setup: Setup,
    family: str,
    libs: list[str],
    rounds: int,
    block: int,
    warmup: int,
    errors: dict[str, int],
) -> dict[str, list[float]]:
    with setup.sharing():
        clients = {lib: setup.build(lib, family) for lib in libs}
    try:
        for client in clients.values():
            if client.prepare is not None:
                client.prepare()
        for _ in range(warmup):
            for lib, client in clients.items():
                if client.get() != 200:
                    errors[lib] += 1
        times: dict[str, list[float]] = {lib: [] for lib in libs}
        perf = time.perf_counter
        for order in _orders(libs, rounds):
            for lib in order:
                get = clients[lib].get
                bad = 0
                start = perf()
                for _ in range(block):
                    if get() != 200:
                        bad += 1
                times[lib].append(perf() - start)
                errors[lib] += bad
        return times
    finally:
        for client in clients.values():
            client.close()
        gc.collect()


async def _async_repeat(
    setup: Setup,
    family: str,
    libs: list[str],
    rounds: int,
    block: int,
    warmup: int,
    errors: dict[str, int],
) -> dict[str, list[float]]:
    with setup.sharing():
        clients: dict[str, Client] = {lib: setup.build(lib, family) for lib in libs}
    try:
        for client in clients.values():
            if client.prepare is not None:
                await maybe_await(client.prepare())
        for _ in range(warmup):
            for lib, client in clients.items():
                if await client.get() != 200:
                    errors[lib] += 1
        times: dict[str, list[float]] = {lib: [] for lib in libs}
        perf = time.perf_counter
        for order in _orders(libs, rounds):
            for lib in order:
                get = clients[lib].get
                bad = 0
                start = perf()
                for _ in range(block):
                    if await get() != 200:
                        bad += 1
                times[lib].append(perf() - start)
                errors[lib] += bad
        return times
    finally:
        for client in clients.values():
            await maybe_await(client.close())
        gc.collect()


def run_family(
    setup: Setup, family: str, calls: int, block: int, warmup: int, repeats: int
) -> dict[str, Any]:
    """`calls` per candidate, split over `repeats` repetitions with fresh clients."""
    libs = libraries(family)
    rounds = max(1, calls // block // repeats)
    errors = dict.fromkeys(libs, 0)
    times = []
    for _ in range(repeats):
        if family == "httpx-async":
            times.append(
                asyncio.run(_async_repeat(setup, family, libs, rounds, block, warmup, errors))
            )
        else:
            times.append(_sync_repeat(setup, family, libs, rounds, block, warmup, errors))
    return _summarise(libs, times, block, errors)


def run(setup: Setup, calls: int, block: int, warmup: int, repeats: int) -> dict[str, Any]:
    """{family: {lib: {ratio, us_per_call, ...}}} for the three families."""
    return {
        family: run_family(setup, family, calls, block, warmup, repeats)
        for family in ("requests", "httpx", "httpx-async")
    }
