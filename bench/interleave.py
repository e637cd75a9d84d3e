"""Alternating arms in blocks, with ratios taken per round (used by i and j).

Each arm is a callable that sends one request and returns its status (a
coroutine function for httpx async). Round r runs one block of `block` calls
of every arm, in an order rotated by r and reversed every other cycle (as in
`per_request`), so each arm runs in each position equally often and drift of
the machine hits all arms alike. An arm's ratio to another is the median, over
rounds, of its block time divided by the other's block time in the same round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable
from typing import Any, Callable

from per_request import _orders, bootstrap_median_ci


def sync_rounds(
    arms: dict[str, Callable[[], int]], rounds: int, block: int, errors: dict[str, int]
) -> dict[str, list[float]]:
    """Block times per arm, one block of each arm per round."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    perf = time.perf_counter
    for order in _orders(names, rounds):
        for name in order:
            call = arms[name]
            bad = 0
            start = perf()
            for _ in range(block):
                if call() != 200:
                    bad += 1
            times[name].append(perf() - start)
            errors[name] = errors.get(name, 0) + bad
    return times


async def async_rounds(
    arms: dict[str, Callable[[], Awaitable[int]]],
    rounds: int,
    block: int,
    errors: dict[str, int],
) -> dict[str, list[float]]:
    """`sync_rounds` for coroutine arms."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    perf = time.perf_counter
    for order in _orders(names, rounds):
        for name in order:
            call = arms[name]
            bad = 0
            start = perf()
            for _ in range(block):
                if await call() != 200:
                    bad += 1
            times[name].append(perf() - start)
            errors[name] = errors.get(name, 0) + bad
    return times


def summarise(
    repeats: list[dict[str, list[float]]], arm: str, reference: str, block: int
) -> dict[str, Any]:
    """`arm`'s block times over `reference`'s, round by round, pooled over repetitions."""
    per_repeat = [sorted(a / b for a, b in zip(rep[arm], rep[reference])) for rep in repeats]
    ratios = sorted(r for rep in per_repeat for r in rep)
    blocks = sorted(t for rep in repeats for t in rep[arm])
    return {
        "ratio": statistics.median(ratios),
        "ratio_ci": list(bootstrap_median_ci(ratios)),
        "repeat_ratios": [statistics.median(rep) for rep in per_repeat],
        # The lower quartile of block times: what a quiet machine gives.
        "us_per_call": blocks[len(blocks) // 4] / block * 1e6,
        "calls": len(ratios) * block,
        "repeats": len(repeats),
    }
