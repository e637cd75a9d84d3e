"""g. Memory growth over many requests with a cached token.

mtls-auth's `MtlsOAuth2` on `family` (requests or httpx sync) sends `warmup`
requests, then `n` more. Over those `n`: the process RSS and the number of
objects the garbage collector tracks, after minus before (each after
``gc.collect()``). Then, after `n`/20 requests to let bounded caches turn over
under tracing, `n`/10 more with `tracemalloc` (one frame): the traced Python
heap after minus before, the part of it allocated in mtls_auth's own files,
and the lines that grew most. The goal (< 1 MiB over `n`) is checked on
the RSS and on the traced growth scaled up to `n` requests.
"""

from __future__ import annotations

import gc
import os
import resource
import tracemalloc
from typing import Any

from candidates import Setup


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(setup: Setup, n: int, *, family: str = "requests", warmup: int = 2000) -> dict[str, Any]:
    client = setup.build("ours", family)
    errors = 0
    traced_n = max(1000, n // 10)
    try:
        get = client.get
        for _ in range(warmup):
            if get() != 200:
                errors += 1
        gc.collect()
        rss_before = rss_bytes()
        objects_before = len(gc.get_objects())
        for _ in range(n):
            if get() != 200:
                errors += 1
        gc.collect()
        rss_after = rss_bytes()
        objects_after = len(gc.get_objects())

        # tracemalloc slows every allocation down several times: it traces a
        # tenth of the run, for the size and the place of any growth. Bounded
        # caches (the stdlib's urlsplit cache, say) replace entries made before
        # tracing began with traced ones, which would look like growth: a first
        # stretch under tracing turns them over before the "before" snapshot.
        tracemalloc.start(1)
        for _ in range(traced_n // 2):
            if get() != 200:
                errors += 1
        gc.collect()
        traced_before = tracemalloc.get_traced_memory()[0]
        snapshot_before = tracemalloc.take_snapshot()
        for _ in range(traced_n):
            if get() != 200:
                errors += 1
        gc.collect()
        traced_after = tracemalloc.get_traced_memory()[0]
        snapshot_after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        client.close()
    diff = snapshot_after.compare_to(snapshot_before, "lineno")
    ours = sum(
        stat.size_diff
        for stat in diff
        if any("mtls_auth" in frame.filename for frame in stat.traceback)
    )
    top = [
        {
            "where": f"{os.path.relpath(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
            "size_diff": stat.size_diff,
            "count_diff": stat.count_diff,
        }
        for stat in sorted(diff, key=lambda s: s.size_diff, reverse=True)[:6]
    ]
    return {
        "family": family,
        "requests": n,
        "errors": errors,
        "rss_growth_bytes": rss_after - rss_before,
        "gc_objects_growth": objects_after - objects_before,
        "traced_requests": traced_n,
        "traced_growth_bytes": traced_after - traced_before,
        "traced_growth_in_mtls_auth_bytes": ours,
        "traced_growth_scaled_bytes": (traced_after - traced_before) * n // traced_n,
        "top_growth": top,
    }
