"""mtls-auth benchmark: per-request cost, token traffic, loop lag, TLS setup, imports, memory.

    python bench/run.py              # the full run (several minutes)
    python bench/run.py --quick      # a smoke run of about a minute
    python bench/run.py --only a,d   # some measurements only

Starts the loopback mTLS token server (`mtls_auth.testing.TokenServer`, which
requires client certificates) in a separate process, runs the measurements
a-n (bench/README.md) against mtls-auth and the installed peers (authlib, httpx-auth,
requests-oauthlib), prints a markdown table and writes ``results.md``,
``results.json`` and ``chart.png`` to ``--out`` (default ``bench/results``).
A full run of every measurement also copies the table and the chart to
``bench/RESULTS.md`` and ``bench/chart.png``, for the README.

Never part of CI or the test suite; see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from candidates import PEERS, Setup, installed  # noqa: E402
from loopback import LoopbackServer  # noqa: E402

SECTIONS = "abcdefghijklmn"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for dist in ("requests", "httpx", "cryptography", "Authlib", "httpx_auth", "requests-oauthlib"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    import ssl

    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OpenSSL": ssl.OPENSSL_VERSION,
        "libraries": ", ".join(versions),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": datetime.date.today().isoformat(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory")
    parser.add_argument(
        "--calls", type=int, default=None, help="per-request calls per candidate (default 10000)"
    )
    parser.add_argument("--block", type=int, default=None, help="calls per block (default 20)")
    parser.add_argument(
        "--memory-requests", type=int, default=None, help="requests for g (default 100000)"
    )
    parser.add_argument(
        "--only", default=SECTIONS, help="measurements to run, e.g. 'a,b' (default all)"
    )
    parser.add_argument(
        "--server",
        choices=("token",),
        default="token",
        help="the loopback server: mtls_auth.testing.TokenServer (the only one so far)",
    )
    args = parser.parse_args(argv)
    args.only = "".join(c for c in args.only.lower() if c in SECTIONS)
    quick = args.quick
    args.calls = args.calls or (1000 if quick else 10_000)
    args.block = args.block or 20
    args.warmup = 50 if quick else 100
    args.repeats = 2 if quick else 10
    args.cold_delay = 0.1 if quick else 0.2
    args.lag_delay = 0.5
    args.lag_repeats = 2 if quick else 7
    args.expiry_duration = 6.0
    args.expiry_workers = 8
    args.expiry_peers = not quick
    args.cert_runs = 40 if quick else 300
    args.import_runs = 5 if quick else 15
    args.memory_requests = args.memory_requests or (10_000 if quick else 100_000)
    args.fleet_workers = 8
    args.fleet_threads = 8
    args.fleet_calls = 200 if quick else 2000
    args.tenants = 200 if quick else 1000
    args.user_bounds = (1000,) if quick else (10_000, 1000)
    args.cold_rounds = 3 if quick else 15
    args.footprint_objects = 10 if quick else 40
    args.footprint_rounds = 1 if quick else 3
    args.idle_objects = 100 if quick else 1000
    args.idle_horizon = 1.0 if quick else 2.0
    args.pool_threads = 256
    args.pool_requests = 2560 if quick else 10_240
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "settings": {
            "quick": args.quick,
            "calls": args.calls,
            "block": args.block,
            "repeats": args.repeats,
            "cold_delay": args.cold_delay,
            "lag_delay": args.lag_delay,
            "lag_repeats": args.lag_repeats,
            "expiry_duration": args.expiry_duration,
            "expiry_workers": args.expiry_workers,
            "cert_runs": args.cert_runs,
            "import_runs": args.import_runs,
            "memory_requests": args.memory_requests,
            "fleet_workers": args.fleet_workers,
            "fleet_threads": args.fleet_threads,
            "fleet_calls": args.fleet_calls,
            "tenants": args.tenants,
            "user_bounds": list(args.user_bounds),
            "cold_rounds": args.cold_rounds,
            "footprint_objects": args.footprint_objects,
            "footprint_rounds": args.footprint_rounds,
            "idle_objects": args.idle_objects,
            "idle_horizon": args.idle_horizon,
            "pool_threads": args.pool_threads,
            "pool_requests": args.pool_requests,
            "peers": {peer: installed(peer) for peer in PEERS},
        }
    }
    timings: dict[str, float] = {}
    needs_server = any(s in args.only for s in "abcdghijklmn")
    server = LoopbackServer() if needs_server else None
    try:
        setup = None
        if server is not None:
            _log("starting the loopback mTLS server in a child process")
            setup = Setup(server.start())
        for section in args.only:
            start = time.perf_counter()
            results.update(_section(section, args, setup, server))
            timings[section] = time.perf_counter() - start
    finally:
        if server is not None:
            server.stop()
    results["section_seconds"] = timings
    return results


def _section(
    section: str, args: argparse.Namespace, setup: Setup | None, server: LoopbackServer | None
) -> dict[str, Any]:
    if section == "a":
        import per_request

        assert setup is not None
        _log(
            f"a. per-request cost: {args.calls} calls per candidate in {args.repeats} "
            f"repetitions, blocks of {args.block}"
        )
        return {
            "per_request": per_request.run(setup, args.calls, args.block, args.warmup, args.repeats)
        }
    if section == "b":
        import cold_start

        assert setup is not None
        assert server is not None
        _log(f"b. cold start: 32 threads / 200 coroutines, token endpoint delay {args.cold_delay}s")
        return {
            "cold_start": cold_start.run(
                setup, server, n_threads=32, n_coroutines=200, delay=args.cold_delay
            )
        }
    if section == "c":
        import expiry

        assert setup is not None
        assert server is not None
        _log(
            f"c. 2 s tokens, {args.expiry_workers} workers, {args.expiry_duration:g} s per run"
            + ("" if args.expiry_peers else " (mtls-auth only: --quick)")
        )
        return {
            "expiry": expiry.run(
                setup,
                server,
                lifetime=2.0,
                workers=args.expiry_workers,
                duration=args.expiry_duration,
                peers=args.expiry_peers,
            )
        }
    if section == "d":
        import loop_lag

        assert setup is not None
        assert server is not None
        _log(f"d. event-loop lag, token endpoint delay {args.lag_delay}s")
        return {
            "loop_lag": loop_lag.run(setup, server, delay=args.lag_delay, repeats=args.lag_repeats)
        }
    if section == "e":
        import certs

        _log(f"e. certificate parsing and SSLContext builds, {args.cert_runs} runs each")
        return {"certs": certs.run(args.cert_runs)}
    if section == "f":
        import imports

        from mtls_auth.testing import PKI

        _log(f"f. import times, {args.import_runs} fresh interpreters per case")
        credential = PKI().issue_client("bench-imports")
        return {"imports": imports.run(args.import_runs, credential.chain_pem, credential.key_pem)}
    if section == "g":
        import memory

        assert setup is not None
        assert server is not None
        _log(f"g. memory growth over {args.memory_requests} requests")
        server.clear()
        outcome = memory.run(setup, args.memory_requests)
        server.clear()
        return {"memory": outcome}
    if section == "h":
        import fleet

        assert setup is not None
        assert server is not None
        _log(
            f"h. a fleet of {args.fleet_workers} processes without and with token stores: "
            f"cold start, 2 s tokens, {args.fleet_calls} calls per candidate and process"
        )
        return {
            "fleet": fleet.run(
                setup,
                server,
                workers=args.fleet_workers,
                threads=args.fleet_threads,
                delay=args.cold_delay,
                lifetime=2.0,
                duration=args.expiry_duration,
                calls=args.fleet_calls,
                block=args.block,
                warmup=args.warmup // 5,
            )
        }
    if section in "ijklmn":
        assert server is not None
        return _scale_section(section, args, server)
    raise ValueError(section)


def _scale_section(section: str, args: argparse.Namespace, server: LoopbackServer) -> Any:
    """The measurements i-n: tenants, users, cold path, footprint, idle sockets, pools."""
    endpoint = server.endpoint
    assert endpoint is not None
    if section == "i":
        import tenants

        _log(
            f"i. tenants: memory at {args.tenants} tenants; for_tenant per call, "
            f"{args.calls} calls per arm in {args.repeats} repetitions"
        )
        return {
            "tenants": tenants.run(
                server,
                endpoint,
                tenants=args.tenants,
                warm=20,
                calls=args.calls,
                block=args.block,
                warmup=args.warmup,
                repeats=args.repeats,
            )
        }
    if section == "j":
        import users

        _log(
            f"j. users: for_user per call, {args.calls} calls per arm; memory at twice "
            f"max_users = {', '.join(map(str, args.user_bounds))}"
        )
        return {
            "users": users.run(
                server,
                endpoint,
                bounds=args.user_bounds,
                warm=20,
                calls=args.calls,
                block=args.block,
                warmup=args.warmup,
                repeats=args.repeats,
            )
        }
    if section == "k":
        import cold_path

        _log(f"k. cold first request from PEM, {args.cold_rounds} fresh processes per arm and case")
        return {"cold_path": cold_path.run(endpoint, args.cold_rounds)}
    if section == "l":
        import footprint

        _log(
            f"l. memory per auth object: {args.footprint_objects} per fresh process, "
            f"{args.footprint_rounds} rounds"
        )
        return {
            "footprint": footprint.run(
                server,
                endpoint,
                n=args.footprint_objects,
                rounds=args.footprint_rounds,
                derived=args.footprint_objects,
            )
        }
    if section == "m":
        import idle_sockets

        _log(
            f"m. idle sockets: {args.idle_objects} auth objects / tenants, horizon shortened "
            f"to {args.idle_horizon:g} s"
        )
        return {
            "idle_sockets": idle_sockets.run(
                server, endpoint, n=args.idle_objects, horizon=args.idle_horizon
            )
        }
    import pools

    _log(f"n. pools: {args.pool_requests} requests from {args.pool_threads} threads")
    return {
        "pools": pools.run(server, endpoint, threads=args.pool_threads, total=args.pool_requests)
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine()
    if os.getloadavg()[0] > (os.cpu_count() or 1) * 0.5:
        _log(
            f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other "
            "processes compete for the CPU and widen every interval"
        )
    results = measure(args)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["machine"] = info
    results["total_seconds"] = time.perf_counter() - started
    table = report.rows(results)
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report.markdown(table, results["machine"], command.strip())
    print(text)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(report.finite(results), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    report.chart(results, str(out / "chart.png"))
    _log(f"wrote {out / 'results.md'}, results.json and chart.png")
    if not args.quick and args.only == SECTIONS:
        shutil.copyfile(out / "results.md", HERE / "RESULTS.md")
        if (out / "chart.png").exists():
            shutil.copyfile(out / "chart.png", HERE / "chart.png")
        _log(f"copied the table and chart to {HERE / 'RESULTS.md'} and {HERE / 'chart.png'}")
    failed = [row.metric for row in table if row.ok is False]
    _log(f"done in {results['total_seconds']:.0f} s; goals missed: {len(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
