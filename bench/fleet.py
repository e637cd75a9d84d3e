"""h. A fleet of worker processes: token requests and per-request cost, with and without a store.

`workers` processes (8, forked, as gunicorn and Celery make workers) use
mtls-auth against the loopback server, each with auth objects of its own, as
a fleet does. Three set-ups: no store (each process on its own, as before), the
file store (a directory of this host) and the Redis store (a redis-server on
loopback started for the run, `mtls_auth.testing.RedisServer`; left out when
none is installed). Each phase starts from an empty store.

Token requests, counted at the server:

* **cold start**: every process makes a new auth and `threads` threads each
  send one request at once; the token endpoint answers after `delay` seconds
  (as in b), so all arrive while the first fetch runs. Goal with a store:
  exactly 1 for the fleet (without: one per process).
* **expiry under load**: tokens live `lifetime` seconds (2, as in c); `threads`
  threads per process send requests back to back for `duration` seconds.
  Goal with a store: no more token requests than one process alone needs (c's
  goal, one per refresh interval: at most 4 in 6 s), and no errors.

**Per-request cost** with a cached token, in every process at once (family by
family): blocks of `block` calls of four candidates that share one adapter or
transport, hence one connection: the fixed header (baseline), mtls-auth
without a store, with the file store and with the Redis store, in an order
rotated every round (as in a). Each block is timed twice: in the process's
CPU time (`time.thread_time`: what the request costs the client, leaving out
the time spent waiting for a core or for the server, which 8 processes and the
server on a few cores make the larger part of the wall time) and in wall time.
A candidate's ratio is the median, over the rounds of all processes, of its
block time over the baseline's block in the same round of the same process.
The store is read only on a miss: with a cached token, an auth with a store
should cost what one without costs. Goal: the median of its block's CPU time
over the no-store auth's block in the same round at most 1.02 (the bootstrap
95% interval, the range of the per-process medians and the wall-time figure
show the noise).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import multiprocessing
import queue
import random
import shutil
import statistics
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import Any, Callable

from candidates import FAMILIES, Setup, maybe_await
from loopback import LoopbackServer
from per_request import _orders, bootstrap_median_ci

STORES = ("none", "file", "redis")


class Stores:
    """The ``token_store=`` of each set-up, each phase starting from an empty store."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="mtls-auth-bench-")
        self.redis: Any = None
        self._phase = 0
        if importlib.util.find_spec("redis") is not None:
            from mtls_auth.testing import RedisServer

            if RedisServer.find() is not None:
                self.redis = RedisServer().start()

    @property
    def kinds(self) -> list[str]:
        return [kind for kind in STORES if kind != "redis" or self.redis is not None]

    def fresh(self) -> dict[str, str | None]:
        """Empty stores for the next phase: a new directory, a flushed Redis."""
        self._phase += 1
        urls: dict[str, str | None] = {
            "none": None,
            "file": f"file://{self.directory}/phase-{self._phase}",
        }
        if self.redis is not None:
            import redis

            client = redis.Redis.from_url(self.redis.url)
            client.flushall()
            client.close()
            urls["redis"] = self.redis.url
        return urls

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _fleet(
    count: int, work: Callable[[int, Callable[[], None]], dict[str, Any]], timeout: float = 120
) -> list[dict[str, Any]]:
    """``work(index, go)`` in `count` forked processes, released together by ``go()``."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(count)
    results: Any = context.Queue()

    def main(index: int) -> None:
        try:
            outcome = work(index, lambda: barrier.wait(timeout))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        results.put((index, outcome))

    processes = [context.Process(target=main, args=(i,), daemon=True) for i in range(count)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        for process in processes:
            process.start()
    collected: dict[int, dict[str, Any]] = {}
    try:
        for _ in processes:
            try:
                index, outcome = results.get(timeout=timeout)
            except queue.Empty:
                break
            collected[index] = outcome
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    outcomes = [collected.get(i, {"error": "no result"}) for i in range(count)]
    failed = [o for o in outcomes if "error" in o]
    if failed:
        raise RuntimeError(f"{len(failed)} worker(s) failed: {failed[0]}")
    return outcomes


def _hammer(client: Any, threads: int, until: Callable[[], bool]) -> tuple[int, int]:
    """`threads` threads calling ``client.get()`` while `until()` is false: (requests, errors)."""
    done = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads)

    def one(index: int) -> None:
        start.wait()
        while True:
            try:
                if client.get() != 200:
                    errors[index] += 1
            except Exception:  # noqa: BLE001 - counted, as in c
                errors[index] += 1
            done[index] += 1
            if until():
                return

    runners = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    return sum(done), sum(errors)


def _token_phase(
    setup: Setup,
    server: LoopbackServer,
    urls: dict[str, str | None],
    kind: str,
    workers: int,
    threads: int,
    duration: float | None,
) -> dict[str, Any]:
    """Workers with a fresh auth each, sending requests: one each (cold) or for `duration`."""
    server.clear()

    def work(index: int, go: Callable[[], None]) -> dict[str, Any]:
        client = setup.build("ours", "requests", cold=True, pool=threads, token_store=urls[kind])
        go()
        if duration is None:
            done, errors = _hammer(client, threads, lambda: True)
        else:
            deadline = time.monotonic() + duration
            done, errors = _hammer(client, threads, lambda: time.monotonic() >= deadline)
        client.close()
        return {"requests": done, "errors": errors}

    outcomes = _fleet(workers, work)
    return {
        "token_requests": server.token_request_count,
        "requests": sum(o["requests"] for o in outcomes),
        "errors": sum(o["errors"] for o in outcomes),
    }


def _measure_sync(clients: dict[str, Any], rounds: int, block: int) -> dict[str, Any]:
    """Each block's wall time and this thread's CPU time, per candidate."""
    labels = list(clients)
    wall: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    perf, used = time.perf_counter, time.thread_time
    for order in _orders(labels, rounds):
        for label in order:
            get = clients[label].get
            start, start_cpu = perf(), used()
            for _ in range(block):
                if get() != 200:
                    raise RuntimeError(f"{label}: a request failed")
            cpu[label].append(used() - start_cpu)
            wall[label].append(perf() - start)
    return {"wall": wall, "cpu": cpu}


async def _measure_async(clients: dict[str, Any], rounds: int, block: int) -> dict[str, Any]:
    """`_measure_sync` for the async family (one thread: the event loop's)."""
    labels = list(clients)
    wall: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    perf, used = time.perf_counter, time.thread_time
    for order in _orders(labels, rounds):
        for label in order:
            get = clients[label].get
            start, start_cpu = perf(), used()
            for _ in range(block):
                if await get() != 200:
                    raise RuntimeError(f"{label}: a request failed")
            cpu[label].append(used() - start_cpu)
            wall[label].append(perf() - start)
    return {"wall": wall, "cpu": cpu}


def _cost_phase(
    setup: Setup,
    server: LoopbackServer,
    urls: dict[str, str | None],
    kinds: list[str],
    family: str,
    workers: int,
    calls: int,
    block: int,
    warmup: int,
) -> dict[str, Any]:
    """Blocks of the baseline and of ours with each store, in every process at once."""
    server.clear()
    # Whole cycles of the rotated orders: every candidate in every position equally often.
    cycle = 2 * (len(kinds) + 1)
    rounds = max(1, round(calls / block / cycle)) * cycle

    def work(index: int, go: Callable[[], None]) -> dict[str, Any]:
        # Built in another order in each process: where objects land in memory
        # moves timings by a percent or so, and must not favour one candidate.
        order = ["baseline", *kinds]
        random.Random(index).shuffle(order)
        with setup.sharing():
            built = {
                label: setup.build("baseline", family)
                if label == "baseline"
                else setup.build("ours", family, token_store=urls[label])
                for label in order
            }
        clients = {label: built[label] for label in ["baseline", *kinds]}
        if family == "httpx-async":

            async def main() -> dict[str, Any]:
                try:
                    for _ in range(warmup):
                        for client in clients.values():
                            await client.get()
                    go()
                    return await _measure_async(clients, rounds, block)
                finally:
                    for client in clients.values():
                        await maybe_await(client.close())

            return asyncio.run(main())
        try:
            for _ in range(warmup):
                for client in clients.values():
                    client.get()
            go()
            return _measure_sync(clients, rounds, block)
        finally:
            for client in clients.values():
                client.close()

    outcomes = _fleet(workers, work)
    base_blocks = sorted(t for o in outcomes for t in o["cpu"]["baseline"])
    result: dict[str, Any] = {
        "baseline_cpu_us_per_call": base_blocks[len(base_blocks) // 4] / block * 1e6,
        "calls": rounds * block,
        "rounds": rounds * workers,
        "token_requests_in_warmup": server.token_request_count,
    }
    for kind in kinds:
        result[kind] = {clock: _paired(outcomes, clock, kind) for clock in ("cpu", "wall")}
    return result


def _paired(outcomes: list[dict[str, Any]], clock: str, kind: str) -> dict[str, Any]:
    """Block ratios of `kind`, paired within a round of one process, pooled over processes.

    Adjacent blocks on the same connection: what else runs on the machine hits
    both alike (and CPU time leaves out waiting for a core or for the server).
    """
    times = [o[clock] for o in outcomes]
    ratios = [t / b for o in times for t, b in zip(o[kind], o["baseline"])]
    versus = [t / n for o in times for t, n in zip(o[kind], o["none"])]
    by_worker = [statistics.median(t / n for t, n in zip(o[kind], o["none"])) for o in times]
    return {
        "ratio": statistics.median(ratios),
        "vs_none": statistics.median(versus),
        "vs_none_ci": list(bootstrap_median_ci(versus)),
        "vs_none_workers": [min(by_worker), max(by_worker)],
    }


def run(
    setup: Setup,
    server: LoopbackServer,
    *,
    workers: int = 8,
    threads: int = 8,
    delay: float = 0.2,
    lifetime: float = 2.0,
    duration: float = 6.0,
    calls: int = 1000,
    block: int = 20,
    warmup: int = 20,
    families: tuple[str, ...] = FAMILIES,
) -> dict[str, Any]:
    """Every phase, for every store set-up; the raw figures."""
    _ = setup.fixed_token  # fetched here once, before the counts start
    stores = Stores()
    try:
        kinds = stores.kinds
        out: dict[str, Any] = {
            "workers": workers,
            "threads": threads,
            "stores": kinds,
            "lifetime": lifetime,
            "duration": duration,
            "cold": {},
            "expiry": {},
            "per_request": {},
        }
        server.set_token_lifetime(3600)
        for kind in kinds:
            server.clear()
            server.delay_tokens(delay)
            out["cold"][kind] = _token_phase(
                setup, server, stores.fresh(), kind, workers, threads, None
            )
        server.clear()
        server.set_token_lifetime(lifetime)
        for kind in kinds:
            out["expiry"][kind] = _token_phase(
                setup, server, stores.fresh(), kind, workers, max(1, threads // 2), duration
            )
        server.set_token_lifetime(3600)
        for family in families:
            out["per_request"][family] = _cost_phase(
                setup, server, stores.fresh(), kinds, family, workers, calls, block, warmup
            )
        server.clear()
        return out
    finally:
        with contextlib.suppress(Exception):
            server.set_token_lifetime(3600)
        stores.close()


@contextlib.contextmanager
def _standalone() -> Iterator[tuple[Setup, LoopbackServer]]:
    with LoopbackServer() as server:
        assert server.endpoint is not None
        yield Setup(server.endpoint), server


if __name__ == "__main__":
    import json
    import sys

    with _standalone() as (made, running):
        quick = "--quick" in sys.argv
        figures = run(made, running, calls=200 if quick else 1000, duration=6.0)
    print(json.dumps(figures, indent=2))
