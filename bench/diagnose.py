"""Where the time goes: measurements that explain what run.py reports.

    python bench/diagnose.py ssl       # ssl_context(), step by step, and alternatives
    python bench/diagnose.py hotpath   # the auth hook alone, per call, without a network
    python bench/diagnose.py parts     # real requests, auth variants leaving out one step each
    python bench/diagnose.py profile   # cProfile of 20,000 requests through MtlsOAuth2
    python bench/diagnose.py lag       # stacks holding the event loop when a tick is late

Unlike run.py this reaches into mtls_auth's private functions (to time each
step of the real code path) and re-implements candidate changes locally, so a
change can be judged before it is made. It changes nothing in the library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import os
import pstats
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)

from mtls_auth import ClientCertificate
from mtls_auth._tls import _readable_paths, build_ssl_context
from mtls_auth.testing import PKI


def _interleaved_us(fns: list[Callable[[], Any]], n: int) -> list[float]:
    """Median µs of each of `fns`, run round-robin so drift hits them alike."""
    perf = time.perf_counter
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, bucket in zip(fns, times):
            start = perf()
            fn()
            bucket.append(perf() - start)
    return [statistics.median(bucket) * 1e6 for bucket in times]


def _table(rows: list[tuple[str, float]], unit: str = "µs") -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:9.1f} {unit}")


# -- ssl ---------------------------------------------------------------------------------


def diagnose_ssl(n: int) -> None:
    pki = PKI()
    ca = pki.root_pem
    for key_type in ("rsa", "ec"):
        _ssl_for(pki.issue_client("diag", key_type=key_type), ca, n)


def _ssl_for(credential: Any, ca: str, n: int) -> None:
    chain = credential.chain_pem.encode()
    key_pem = credential.key_pem.encode()
    cert = ClientCertificate.from_pem(chain, key_pem)
    private_key = cert._key
    passphrase = secrets.token_urlsafe(32).encode()
    pkcs8 = private_key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase)
    )
    traditional = private_key.private_bytes(
        Encoding.PEM, PrivateFormat.TraditionalOpenSSL, BestAvailableEncryption(passphrase)
    )

    def load(key: bytes, password: bytes | None) -> None:
        context = build_ssl_context(ca)
        with _readable_paths(chain, key) as (cert_path, key_path):
            context.load_cert_chain(cert_path, key_path, password=password)

    def memfd_only() -> None:
        with _readable_paths(chain, pkcs8):
            pass

    def tempfile_approach() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cadata=ca)
        with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as handle:
            handle.write(chain + key_pem)
        try:
            context.load_cert_chain(handle.name)
        finally:
            os.unlink(handle.name)

    def traditional_full() -> None:
        # A fresh one-time passphrase and the legacy PEM encryption (DEK-Info
        # AES-256-CBC, one MD5 pass to derive the key).
        password = secrets.token_urlsafe(32).encode()
        encrypted = private_key.private_bytes(
            Encoding.PEM, PrivateFormat.TraditionalOpenSSL, BestAvailableEncryption(password)
        )
        load(encrypted, password)

    def pkcs8_full() -> None:
        # The same with PKCS#8, whose PBKDF2 runs 2048 HMAC-SHA256 rounds each way.
        password = secrets.token_urlsafe(32).encode()
        encrypted = private_key.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password)
        )
        load(encrypted, password)

    steps = [
        ("ClientCertificate.ssl_context(ca), the library", lambda: cert.ssl_context(ca)),
        ("temp-file approach", tempfile_approach),
        ("legacy PEM, end to end (encrypt + load)", traditional_full),
        ("PKCS#8 + PBKDF2, end to end (encrypt + load)", pkcs8_full),
        ("  build_ssl_context(ca): context shell + CA", lambda: build_ssl_context(ca)),
        ("  bare SSLContext + load_verify_locations(ca)", lambda: _bare(ca)),
        ("  two memfds written and closed", memfd_only),
        ("  shell + load of the plaintext key via memfd", lambda: load(key_pem, None)),
        (
            "  legacy PEM re-encryption (private_bytes)",
            lambda: private_key.private_bytes(
                Encoding.PEM, PrivateFormat.TraditionalOpenSSL, BestAvailableEncryption(passphrase)
            ),
        ),
        ("  shell + load of the legacy-PEM encrypted key", lambda: load(traditional, passphrase)),
        (
            "  PKCS#8 + PBKDF2 re-encryption (private_bytes)",
            lambda: private_key.private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase)
            ),
        ),
        ("  shell + load of the PKCS#8 encrypted key", lambda: load(pkcs8, passphrase)),
    ]
    for _, fn in steps:  # warm
        fn()
    print(f"\n{credential.key_type}: median of {n} runs, interleaved")
    values = _interleaved_us([fn for _, fn in steps], n)
    rows = [(name, value) for (name, _), value in zip(steps, values)]
    _table(rows)
    temp = values[1]
    print(
        f"  ratios to the temp file: library {values[0] / temp:.2f}, "
        f"legacy PEM {values[2] / temp:.2f}, PKCS#8 {values[3] / temp:.2f}"
    )


def _bare(ca: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca)


# -- the hot path, in isolation ---------------------------------------------------------


def diagnose_hotpath(n: int) -> None:
    """Microseconds per call of each auth hook alone, on an already prepared request."""
    import httpx
    import requests
    from candidates import _fixed_httpx_auth, _fixed_requests_auth

    from mtls_auth._token import Token
    from mtls_auth.httpx import MtlsOAuth2 as HttpxAuth
    from mtls_auth.requests import MtlsOAuth2 as RequestsAuth

    pki = PKI()
    credential = pki.issue_client("diag")
    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)
    url = "https://api.example.com/resource"
    token_url = "https://auth.example.com/oauth/token"

    def seeded(auth: Any) -> Any:
        # A fresh token straight into the cache, as after a first fetch.
        cache = auth._client.cache
        token = Token("x" * 43, token_type="bearer", issued_at=time.monotonic(), lifetime=3600)
        cache._store(cache._new_flight(auth._key(), None), token)
        return auth

    ours_requests = seeded(RequestsAuth(token_url, "client", cert))
    base_requests = _fixed_requests_auth("Bearer " + "x" * 43)
    prepared = requests.Request("GET", url).prepare()
    response = requests.Response()
    response.status_code = 200

    def fresh() -> Any:
        # PreparedRequest.copy() shares the hooks dict; a session makes a new one
        # per request, and so must we, or registered hooks pile up.
        request = prepared.copy()
        request.hooks = requests.hooks.default_hooks()
        return request

    def call_requests(auth: Any) -> Callable[[], Any]:
        def once() -> Any:
            signed = auth(fresh())
            return requests.hooks.dispatch_hook("response", signed.hooks, response)

        return once

    def copy_only() -> Any:
        return requests.hooks.dispatch_hook("response", fresh().hooks, response)

    ours_httpx = seeded(HttpxAuth(token_url, "client", cert))
    base_httpx = _fixed_httpx_auth("Bearer " + "x" * 43)
    request = httpx.Request("GET", url)
    hresponse = httpx.Response(200, request=request)

    def call_httpx(auth: Any) -> Callable[[], Any]:
        def once() -> Any:
            flow = auth.sync_auth_flow(request)
            next(flow)
            with contextlib.suppress(StopIteration):
                flow.send(hresponse)

        return once

    def call_httpx_async(auth: Any) -> Callable[[], Any]:
        async def once() -> Any:
            flow = auth.async_auth_flow(request)
            await flow.__anext__()
            with contextlib.suppress(StopAsyncIteration):
                await flow.asend(hresponse)

        loop = asyncio.new_event_loop()
        return lambda: loop.run_until_complete(once())

    client = ours_requests._client
    token = ours_requests._fresh()
    parts = [
        ("  destinations.check_url(url)", lambda: client.destinations.check_url(url)),
        ("  auth._fresh()", ours_requests._fresh),
        ("  token.authorization()", token.authorization),
        ("  cache.current(key)", lambda: client.cache.current(ours_requests._key())),
        ("  fresh() + register_hook()", lambda: fresh().register_hook("response", _noop)),
        ("  fresh() alone", fresh),
    ]
    cases = [
        ("requests: PreparedRequest.copy() + hooks, no auth", copy_only),
        ("requests: fixed-header AuthBase", call_requests(base_requests)),
        ("requests: mtls_auth MtlsOAuth2", call_requests(ours_requests)),
        *parts,
        ("httpx sync: fixed-header Auth.auth_flow", call_httpx(base_httpx)),
        ("httpx sync: mtls_auth MtlsOAuth2", call_httpx(ours_httpx)),
        ("httpx async: fixed-header Auth.auth_flow", call_httpx_async(base_httpx)),
        ("httpx async: mtls_auth MtlsOAuth2", call_httpx_async(ours_httpx)),
    ]
    for _, fn in cases:
        for _ in range(1000):
            fn()
    print(f"auth hook alone, median µs per call over {n} calls (no network)")
    per_round = 100
    values = _interleaved_us([_repeat(fn, per_round) for _, fn in cases], max(1, n // per_round))
    _table([(name, value / per_round) for (name, _), value in zip(cases, values)])


def _noop(response: Any, **kwargs: Any) -> Any:
    return response


def _repeat(fn: Callable[[], Any], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()

    return run


# -- the hot path's parts, in real requests -----------------------------------------------


def diagnose_parts(rounds: int, block: int = 20, repeats: int = 6) -> None:
    """Real keep-alive requests with variants of the auth that each leave one step out.

    Interleaved like run.py's measurement a; each variant's median per-round
    ratio to the fixed-header hook says what that step costs inside a real
    request (code that is cheap in a tight loop costs more amid the HTTP
    library's own work: caches and branch predictors are cold for it).
    """
    import httpx
    import requests
    from candidates import Setup
    from loopback import LoopbackServer

    from mtls_auth.httpx import MtlsOAuth2 as HttpxAuth
    from mtls_auth.requests import MtlsAdapter
    from mtls_auth.requests import MtlsOAuth2 as RequestsAuth

    with LoopbackServer() as server:
        assert server.endpoint is not None
        ep = server.endpoint
        setup = Setup(ep)
        header = "Bearer " + setup.fixed_token
        args = (ep.token_url, ep.client_id, setup.cert)

        class Fixed(requests.auth.AuthBase):
            def __call__(self, request: Any) -> Any:
                request.headers["Authorization"] = header
                return request

        class FixedWithHook(Fixed):
            def __call__(self, request: Any) -> Any:
                request.headers["Authorization"] = header
                request.hooks["response"].append(self._hook)
                return request

            def _hook(self, response: Any, **kwargs: Any) -> Any:
                return response

        # The variants below mirror MtlsOAuth2.__call__ (mtls_auth/requests.py)
        # with one step left out each.

        class NoDestinationCheck(RequestsAuth):
            def __call__(self, request: Any) -> Any:
                token = self._token()
                request.headers["Authorization"] = token.authorization()
                request.hooks["response"].append(functools.partial(self._handle_401, token))
                return request

        class NoHook(RequestsAuth):
            def __call__(self, request: Any) -> Any:
                self._live().destinations.check_url(request.url or "")
                request.headers["Authorization"] = self._token().authorization()
                return request

        def requests_variants() -> dict[str, Any]:
            adapter = MtlsAdapter(setup.cert, verify=ep.ca_pem)  # one connection for all

            def session(auth: Any) -> Any:
                s = requests.Session()
                s.mount("https://", adapter)
                s.auth = auth
                return s

            return {
                "fixed header": session(Fixed()),
                "fixed header + per-request response hook": session(FixedWithHook()),
                "mtls-auth": session(RequestsAuth(*args, verify=ep.ca_pem)),
                "mtls-auth without destination check": session(
                    NoDestinationCheck(*args, verify=ep.ca_pem)
                ),
                "mtls-auth without response hook": session(NoHook(*args, verify=ep.ca_pem)),
            }

        _interleave("requests", requests_variants, setup.urls(), rounds, block, repeats)

        class FixedX(httpx.Auth):
            def auth_flow(self, request: Any) -> Any:
                request.headers["Authorization"] = header
                yield request

        class NoCheckX(HttpxAuth):
            def sync_auth_flow(self, request: Any) -> Any:
                request.headers["Authorization"] = self._token().authorization()
                yield request

        def httpx_variants() -> dict[str, Any]:
            transport = httpx.HTTPTransport(verify=setup.context())  # one connection for all

            def client(auth: Any) -> Any:
                return httpx.Client(auth=auth, transport=transport)

            return {
                "fixed header": client(FixedX()),
                "mtls-auth": client(HttpxAuth(*args, verify=ep.ca_pem)),
                "mtls-auth without destination check and 401 follow-up": client(
                    NoCheckX(*args, verify=ep.ca_pem)
                ),
            }

        _interleave("httpx sync", httpx_variants, setup.urls(), rounds, block, repeats)


def _interleave(
    title: str,
    build: Callable[[], dict[str, Any]],
    urls: Iterator[str],
    rounds: int,
    block: int,
    repeats: int,
) -> None:
    """`repeats` times: fresh clients, warm-up, then `rounds` interleaved rounds."""
    ratios: dict[str, list[float]] = {}
    per_repeat: dict[str, list[float]] = {}
    base_times: list[float] = []
    perf = time.perf_counter
    for _ in range(repeats):
        clients = build()
        names = list(clients)
        for client in clients.values():
            for _ in range(200):
                assert client.get(next(urls)).status_code == 200
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            shift = r % len(names)
            order = names[shift:] + names[:shift]
            if (r // len(names)) % 2:
                order.reverse()
            for name in order:
                get = clients[name].get
                start = perf()
                for _ in range(block):
                    get(next(urls))
                times[name].append(perf() - start)
        base = times[names[0]]
        base_times += base
        for name in names:
            mine = [t / b for t, b in zip(times[name], base)]
            ratios.setdefault(name, []).extend(mine)
            per_repeat.setdefault(name, []).append(statistics.median(mine))
        for client in clients.values():
            client.close()
    quiet_base = sorted(base_times)[len(base_times) // 4] / block * 1e6
    print(
        f"\n{title}: {repeats} x {rounds} rounds of {block} requests; median ratio to "
        f"the first, range over repetitions, and the extra µs per request"
    )
    for name, values in ratios.items():
        ratio = statistics.median(values)
        low, high = min(per_repeat[name]), max(per_repeat[name])
        print(
            f"  {name:<55} {ratio:.4f} ({low:.3f} to {high:.3f})  "
            f"{(ratio - 1) * quiet_base:+5.1f} µs"
        )


# -- a profile of the real thing ---------------------------------------------------------


def diagnose_profile(n: int) -> None:
    from candidates import Setup
    from loopback import LoopbackServer

    with LoopbackServer() as server:
        assert server.endpoint is not None
        setup = Setup(server.endpoint)
        for family in ("requests", "httpx"):
            for lib in ("baseline", "ours"):
                client = setup.build(lib, family)
                for _ in range(500):
                    client.get()
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(n):
                    client.get()
                profiler.disable()
                client.close()
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                total = stats.total_tt  # type: ignore[attr-defined]
                each = total / n * 1e6
                print(f"\n== {family} / {lib}: {n} requests, {each:.0f} µs each under cProfile")
                stats.sort_stats("tottime").print_stats(r"mtls_auth|candidates", 15)
                print("\n".join(out.getvalue().splitlines()[6:30]))


# -- event-loop lag attribution -----------------------------------------------------------


def diagnose_lag(delay: float, lib: str = "ours", repeats: int = 5) -> None:
    """Which code holds the event loop when a tick is late, during refreshes.

    A sampler thread looks at the loop thread's stack every 0.5 ms whenever the
    ticker is more than 3 ms late and counts the stacks it sees. A stall spent
    in ``select`` means the loop was idle but the process did not get the CPU
    (another process ran): machine noise, not code on the loop.
    """
    import threading
    import traceback
    from collections import Counter

    from candidates import Setup, maybe_await
    from loop_lag import Ticker
    from loopback import LoopbackServer

    stalls: Counter[str] = Counter()
    watching = threading.Event()
    loop_thread = threading.get_ident()
    last_tick = [time.perf_counter()]

    def sampler() -> None:
        while True:
            time.sleep(0.0005)
            if watching.is_set() and time.perf_counter() - last_tick[0] > 0.003:
                frame = sys._current_frames().get(loop_thread)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-10:]
                    stalls[
                        " <- ".join(
                            f"{f.name} ({Path(f.filename).name}:{f.lineno})"
                            for f in reversed(stack)
                        )
                    ] += 1

    threading.Thread(target=sampler, daemon=True).start()

    class MarkingTicker(Ticker):
        async def _run(self) -> None:
            perf = time.perf_counter
            while not self._stop:
                last_tick[0] = start = perf()
                await asyncio.sleep(self.tick)
                self.worst = max(self.worst, perf() - start - self.tick)

    with LoopbackServer() as server:
        assert server.endpoint is not None
        setup = Setup(server.endpoint)
        _ = setup.fixed_token
        server.set_token_lifetime(1)
        server.delay_tokens(delay)

        async def main() -> None:
            warm = setup.build("baseline", "httpx-async")
            await warm.get()
            await maybe_await(warm.close())
            ticker = MarkingTicker()
            ticker.start()
            for _ in range(repeats):
                client = setup.build(lib, "httpx-async", cold=True)
                for phase in ("cold", "refresh"):
                    if phase == "refresh":
                        await asyncio.sleep(1.2)
                    ticker.reset()
                    watching.set()
                    await client.get()
                    await asyncio.sleep(0.01)
                    watching.clear()
                    print(f"{lib} {phase}: largest lag {ticker.worst * 1e3:.2f} ms")
                await maybe_await(client.close())
            await ticker.stop()

        asyncio.run(main())
    samples = sum(stalls.values())
    print(f"\nstacks of the loop thread while a tick was over 3 ms late ({samples} samples):")
    for stack, count in stalls.most_common(8):
        print(f"{count:5d}  {stack}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("ssl", "hotpath", "parts", "profile", "lag"))
    parser.add_argument("-n", type=int, default=0, help="iterations")
    parser.add_argument("--lib", default="ours", help="candidate for lag (ours, authlib, ...)")
    args = parser.parse_args()
    if args.what == "ssl":
        diagnose_ssl(args.n or 300)
    elif args.what == "hotpath":
        diagnose_hotpath(args.n or 20_000)
    elif args.what == "parts":
        diagnose_parts(args.n or 150)
    elif args.what == "profile":
        diagnose_profile(args.n or 20_000)
    else:
        diagnose_lag(0.5, args.lib, args.n or 5)


if __name__ == "__main__":
    main()
