"""i. Tenants: memory per tenant with a cached token, and `for_tenant` on every request.

The auth comes from the provider tenant's XSUAA service key
(`mtls_auth.testing.xsuaa_service_key(..., subdomain="provider")`, made by the
server's process): its token URL is
``https://provider.authentication.cert.mtls.test:PORT/oauth/token`` and
``for_tenant("tenant-7")`` routes to ``tenant-7.authentication.cert.mtls.test``.
Those names resolve to 127.0.0.1 inside `mtls_auth.testing.loopback_names`,
entered in the process that sends the requests; the server (its own process)
serves any subdomain.

**Memory** (`memory_child`, in a fresh interpreter per family): after `warm`
tenants (the pools, bounded caches and lazily imported modules settle),
``auth.for_tenant(f"tenant-{i}")`` and one token each for `n` tenants. Two
passes with a new auth each: the RSS growth (no tracing), and the growth of
the Python heap under `tracemalloc` with the lines that grew most. Per tenant:
the growth divided by `n`, minus the size of the token string the cache keeps
(the ``str`` holding ``Bearer <token>``). The goal is judged on the traced heap;
the RSS figure is reported beside it.

**Per request** (`derived_vs_kept`): one session (requests) or client (httpx
sync, async) over the auth's adapter / transport, hence one keep-alive
connection, and three arms cycling through the same `CYCLE` tenants, each
token cached: ``auth=auth.for_tenant(name)`` on every call (derived),
``auth=tenant_auths[i]`` (kept), and a fixed ``Authorization`` header with the
same tenant's token (floor). Rounds alternate the arms in blocks
(`interleave`); the ratio derived / kept is taken per round.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import sys
import time
import tracemalloc
from collections.abc import Hashable
from typing import Any, Callable

import interleave
from candidates import PATHS, _fixed_httpx_auth, _fixed_requests_auth
from isolated import run_isolated
from loopback import Endpoint, LoopbackServer
from memory import rss_bytes

FAMILIES = ("requests", "httpx", "httpx-async")
#: Tenants (or users) the per-request arms cycle through, each token cached.
CYCLE = 100


def auth_class(family: str) -> Any:
    """The `MtlsOAuth2` of `family`'s integration."""
    if family == "requests":
        from mtls_auth.requests import MtlsOAuth2

        return MtlsOAuth2
    from mtls_auth.httpx import MtlsOAuth2 as HttpxMtlsOAuth2

    return HttpxMtlsOAuth2


async def fetch(derived: Any, family: str) -> None:
    """One token for `derived` (a sync fetch blocks: the loop runs nothing else)."""
    if family == "httpx-async":
        await derived.atoken_info()
    else:
        derived.token_info()


def growth_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[dict[str, Any]]:
    """The eight lines whose traced memory grew most between the snapshots."""
    diff = after.compare_to(before, "lineno")
    return [
        {
            "where": f"{_short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
            "size_diff": stat.size_diff,
            "count_diff": stat.count_diff,
        }
        for stat in sorted(diff, key=lambda s: s.size_diff, reverse=True)[:8]
    ]


def _short(filename: str) -> str:
    for marker in ("site-packages" + os.sep, "lib" + os.sep + "python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return os.path.relpath(filename)


# -- memory per tenant ---------------------------------------------------------------


def memory_child(binding: dict[str, Any], ca_pem: str, family: str, n: int, warm: int) -> Any:
    """In a fresh interpreter: RSS and traced growth for `n` tenants with a token each."""
    from mtls_auth.testing import loopback_names

    with loopback_names():
        rss = asyncio.run(_memory_pass(binding, ca_pem, family, n, warm, traced=False))
        traced = asyncio.run(_memory_pass(binding, ca_pem, family, n, warm, traced=True))
    return {"family": family, "tenants": n, "warm": warm, "rss": rss, "traced": traced}


async def _memory_pass(
    binding: dict[str, Any], ca_pem: str, family: str, n: int, warm: int, *, traced: bool
) -> dict[str, Any]:
    auth = auth_class(family).from_binding(binding, verify=ca_pem)
    if traced:
        tracemalloc.start(1)
    try:
        for i in range(warm):
            await fetch(auth.for_tenant(f"warm-{i}"), family)
        gc.collect()
        if traced:
            before, snapshot_before = (
                tracemalloc.get_traced_memory()[0],
                tracemalloc.take_snapshot(),
            )
        else:
            before = rss_bytes()
        start = time.perf_counter()
        for i in range(n):
            await fetch(auth.for_tenant(f"tenant-{i}"), family)
        seconds = time.perf_counter() - start
        gc.collect()
        result: dict[str, Any] = {"seconds": seconds}
        if traced:
            result["growth_bytes"] = tracemalloc.get_traced_memory()[0] - before
            result["top_growth"] = growth_lines(snapshot_before, tracemalloc.take_snapshot())
        else:
            result["growth_bytes"] = rss_bytes() - before
        token = auth.for_tenant("tenant-0")._fresh()
        result["token_str_bytes"] = sys.getsizeof(token.authorization())
        result["token_chars"] = len(token.authorization()) - len("Bearer ")
        result["cached_tokens"] = len(auth._live().cache)
        return result
    finally:
        if traced:
            tracemalloc.stop()
        if family == "httpx-async":
            await auth.aclose()
        auth.close()


# -- derived on every call against kept -------------------------------------------------


def derived_vs_kept(
    binding: dict[str, Any],
    endpoint: Endpoint,
    family: str,
    derive: Callable[[Any, Any], Any],
    keys: list[Hashable],
    *,
    calls: int,
    block: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """``auth=derive(auth, key)`` on every call against the kept objects and a fixed header.

    Used for tenants (``derive=for_tenant``) and users (``for_user``). Must run
    inside `loopback_names` when `binding` names tenant hosts.
    """
    auth = auth_class(family).from_binding(binding, verify=endpoint.ca_pem)
    kept = [derive(auth, key) for key in keys]

    async def tokens() -> None:
        for derived in kept:
            await fetch(derived, family)

    asyncio.run(tokens())
    headers = [derived._fresh().authorization() for derived in kept]
    rounds = max(1, calls // block // repeats)
    errors: dict[str, int] = {}
    repetitions = []
    try:
        for _ in range(repeats):
            if family == "httpx-async":
                repetitions.append(
                    asyncio.run(
                        _async_repeat(
                            auth,
                            endpoint,
                            derive,
                            keys,
                            kept,
                            headers,
                            rounds,
                            block,
                            warmup,
                            errors,
                        )
                    )
                )
            else:
                repetitions.append(
                    _sync_repeat(
                        auth,
                        endpoint,
                        family,
                        derive,
                        keys,
                        kept,
                        headers,
                        rounds,
                        block,
                        warmup,
                        errors,
                    )
                )
    finally:
        auth.close()
    floor = interleave.summarise(repetitions, "floor", "floor", block)
    return {
        "derived_over_kept": interleave.summarise(repetitions, "derived", "kept", block),
        "kept_over_floor": interleave.summarise(repetitions, "kept", "floor", block),
        "derived_over_floor": interleave.summarise(repetitions, "derived", "floor", block),
        "floor_us_per_call": floor["us_per_call"],
        "cycle": len(keys),
        "errors": errors,
    }


def _pickers(
    auth: Any,
    derive: Callable[[Any, Any], Any],
    keys: list[Hashable],
    kept: list[Any],
    fixed: list[Any],
) -> dict[str, Callable[[int], Any]]:
    return {
        "floor": fixed.__getitem__,
        "kept": kept.__getitem__,
        "derived": lambda i: derive(auth, keys[i]),
    }


def _urls(endpoint: Endpoint) -> list[str]:
    return [f"{endpoint.resource_url}/items/{i}" for i in range(PATHS)]


def _sync_repeat(
    auth: Any,
    endpoint: Endpoint,
    family: str,
    derive: Callable[[Any, Any], Any],
    keys: list[Hashable],
    kept: list[Any],
    headers: list[str],
    rounds: int,
    block: int,
    warmup: int,
    errors: dict[str, int],
) -> dict[str, list[float]]:
    if family == "requests":
        import requests

        client: Any = requests.Session()
        client.mount("https://", auth.adapter())
        fixed = [_fixed_requests_auth(header) for header in headers]
    else:
        import httpx

        client = httpx.Client(transport=auth.transport())
        fixed = [_fixed_httpx_auth(header) for header in headers]
    n = len(keys)
    urls = _urls(endpoint)

    def arm(pick: Callable[[int], Any]) -> Callable[[], int]:
        turn = itertools.count()
        url = itertools.cycle(urls)
        get = client.get

        def call() -> int:
            return int(get(next(url), auth=pick(next(turn) % n)).status_code)

        return call

    arms = {name: arm(pick) for name, pick in _pickers(auth, derive, keys, kept, fixed).items()}
    try:
        for _ in range(warmup):
            for name, call in arms.items():
                if call() != 200:
                    errors[name] = errors.get(name, 0) + 1
        return interleave.sync_rounds(arms, rounds, block, errors)
    finally:
        client.close()
        gc.collect()


async def _async_repeat(
    auth: Any,
    endpoint: Endpoint,
    derive: Callable[[Any, Any], Any],
    keys: list[Hashable],
    kept: list[Any],
    headers: list[str],
    rounds: int,
    block: int,
    warmup: int,
    errors: dict[str, int],
) -> dict[str, list[float]]:
    import httpx

    client = httpx.AsyncClient(transport=auth.async_transport())
    fixed = [_fixed_httpx_auth(header) for header in headers]
    n = len(keys)
    urls = _urls(endpoint)

    def arm(pick: Callable[[int], Any]) -> Callable[[], Any]:
        turn = itertools.count()
        url = itertools.cycle(urls)
        get = client.get

        async def call() -> int:
            response = await get(next(url), auth=pick(next(turn) % n))
            return int(response.status_code)

        return call

    arms = {name: arm(pick) for name, pick in _pickers(auth, derive, keys, kept, fixed).items()}
    try:
        for _ in range(warmup):
            for name, call in arms.items():
                if await call() != 200:
                    errors[name] = errors.get(name, 0) + 1
        return await interleave.async_rounds(arms, rounds, block, errors)
    finally:
        await client.aclose()
        await auth.aclose()
        gc.collect()


# -- the measurement -------------------------------------------------------------------


def _for_tenant(auth: Any, name: Any) -> Any:
    return auth.for_tenant(name)


def run(
    server: LoopbackServer,
    endpoint: Endpoint,
    *,
    tenants: int,
    warm: int,
    calls: int,
    block: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """{"memory": {family: ...}, "per_request": {family: ...}}."""
    from mtls_auth.testing import loopback_names

    binding = server.tenant_binding("provider")
    results: dict[str, Any] = {"memory": {}, "per_request": {}}
    for family in FAMILIES:
        results["memory"][family] = run_isolated(
            memory_child, binding, endpoint.ca_pem, family, tenants, warm
        )
    names: list[Hashable] = [f"tenant-{i}" for i in range(CYCLE)]
    with loopback_names():
        for family in FAMILIES:
            results["per_request"][family] = derived_vs_kept(
                binding,
                endpoint,
                family,
                _for_tenant,
                names,
                calls=calls,
                block=block,
                warmup=warmup,
                repeats=repeats,
            )
    return results
