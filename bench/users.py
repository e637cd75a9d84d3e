"""j. Users: `for_user(jwt)` on every request, and memory bounded by ``max_users``.

User tokens are JWTs minted by the server's process
(`TokenServer.mint_user_token(sub, subdomain="provider")`, over the pipe:
`LoopbackServer.user_tokens`); the auth comes from the provider tenant's
service key, as in i, inside `mtls_auth.testing.loopback_names`. Each
``for_user(jwt)`` exchanges the JWT once (jwt-bearer, routed by its ``zid``)
and caches the exchanged token.

**Per request**: as in i (`tenants.derived_vs_kept`), with
``auth=auth.for_user(jwt)`` on every call against the kept objects and a fixed
header, cycling through `tenants.CYCLE` users.

**Memory** (`memory_child`, in a fresh interpreter, for each bound): one auth
with ``max_users=bound`` takes ``for_user`` and one exchanged token for `n`
distinct users (`n` = twice the bound), and the memory is read after `warm`
users and then every `step` users (a tenth of the bound): the RSS (one pass,
no tracing) and the Python heap under `tracemalloc` (a second pass, new auth).
Each user's JWT is made a new ``str`` just before use and dropped after, as a
request handler would, so whatever the library keeps of it counts. Memory per
user: the growth from `warm` to `bound` users divided by their number (the
kept user JWT included). Flat past the bound: the traced growth from `bound`
to `n` users stays under 5% of the growth up to the bound. The time
per user of each step shows whether a fetch gets slower as the cache fills.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Hashable
from typing import Any

from isolated import run_isolated
from loopback import Endpoint, LoopbackServer
from memory import rss_bytes
from tenants import CYCLE, FAMILIES, auth_class, derived_vs_kept, growth_lines


def memory_child(
    binding: dict[str, Any],
    ca_pem: str,
    jwts: list[bytes],
    bound: int,
    warm: int,
    step: int,
    family: str = "requests",
) -> Any:
    """In a fresh interpreter: memory after `warm`, then every `step` of ``len(jwts)`` users."""
    from mtls_auth.testing import loopback_names

    with loopback_names():
        rss = _memory_pass(binding, ca_pem, jwts, bound, warm, step, family, traced=False)
        traced = _memory_pass(binding, ca_pem, jwts, bound, warm, step, family, traced=True)
    return {
        "family": family,
        "users": len(jwts),
        "bound": bound,
        "warm": warm,
        "jwt_chars": len(jwts[0]),
        "rss": rss,
        "traced": traced,
    }


def _memory_pass(
    binding: dict[str, Any],
    ca_pem: str,
    jwts: list[bytes],
    bound: int,
    warm: int,
    step: int,
    family: str,
    *,
    traced: bool,
) -> dict[str, Any]:
    auth = auth_class(family).from_binding(binding, verify=ca_pem, max_users=bound)
    if traced:
        tracemalloc.start(1)

    def reading() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if traced else rss_bytes()

    try:
        for i in range(warm):
            auth.for_user(jwts[i].decode("ascii")).token_info()
        base = reading()
        snapshot_base = tracemalloc.take_snapshot() if traced else None
        # Readings go into rows made before the first one is taken: the bench's
        # own bookkeeping does not grow the heap it measures.
        steps = -(-(len(jwts) - warm) // step) + 1
        rows = [[0, 0, 0.0, 0, 0] for _ in range(steps)]
        taken = 0
        snapshot_bound = None
        done = warm
        while done < len(jwts):
            upto = min(len(jwts), (done // step + 1) * step)
            start = time.perf_counter()
            for i in range(done, upto):
                # A new str per request, dropped after: what the library keeps counts.
                auth.for_user(jwts[i].decode("ascii")).token_info()
            row = rows[taken]
            row[2] = (time.perf_counter() - start) / (upto - done) * 1e3
            row[0], row[1] = upto, reading() - base
            row[3], row[4] = len(auth._live().cache), len(auth._memo or {})
            taken += 1
            if traced and upto == bound:
                snapshot_bound = tracemalloc.take_snapshot()
            done = upto
        points = [
            {
                "users": users,
                "growth_bytes": growth,
                "ms_per_user": ms_per_user,
                "cached_tokens": cached,
                "remembered": remembered,
            }
            for users, growth, ms_per_user, cached, remembered in rows[:taken]
        ]
        result: dict[str, Any] = {"points": points}
        if traced and snapshot_base is not None:
            after = tracemalloc.take_snapshot()
            if snapshot_bound is not None:
                result["top_growth_to_bound"] = growth_lines(snapshot_base, snapshot_bound)
                result["top_growth_past_bound"] = growth_lines(snapshot_bound, after)
        return result
    finally:
        if traced:
            tracemalloc.stop()
        auth.close()


def _for_user(auth: Any, jwt: Any) -> Any:
    return auth.for_user(jwt)


def run(
    server: LoopbackServer,
    endpoint: Endpoint,
    *,
    bounds: tuple[int, ...],
    warm: int,
    calls: int,
    block: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """{"memory": [one per bound], "per_request": {family: ...}}."""
    from mtls_auth.testing import loopback_names

    binding = server.tenant_binding("provider")
    results: dict[str, Any] = {"per_request": {}}
    keys: list[Hashable] = list(server.user_tokens("provider", 0, CYCLE))
    with loopback_names():
        for family in FAMILIES:
            results["per_request"][family] = derived_vs_kept(
                binding,
                endpoint,
                family,
                _for_user,
                keys,
                calls=calls,
                block=block,
                warmup=warmup,
                repeats=repeats,
            )
    users = 2 * max(bounds)
    jwts: list[bytes] = []
    while len(jwts) < users:
        count = min(5000, users - len(jwts))
        batch = server.user_tokens("provider", CYCLE + len(jwts), count)
        jwts.extend(jwt.encode("ascii") for jwt in batch)
    results["memory"] = [
        run_isolated(
            memory_child, binding, endpoint.ca_pem, jwts[: 2 * bound], bound, warm, bound // 10
        )
        for bound in bounds
    ]
    return results
