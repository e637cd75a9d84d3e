"""Soak: mixed sync and async traffic through rotation, expiry and faults.

    python bench/soak.py                 # 60 s
    python bench/soak.py --seconds 300

Opt-in and bounded, never part of CI. One loopback mTLS token server (the test
server, in this process), one service-key file, and for `--seconds`:

* 4 threads on requests and 4 on httpx sync, and 50 coroutines on httpx async,
  each calling the certificate-bound resource in a loop;
* tokens that live 3 seconds, so they expire and refresh all the time;
* the binding file rotated to a new certificate every 10 seconds, the old
  certificate revoked at the server 2 seconds later;
* a fault injected at the token endpoint every second (503 with Retry-After,
  429, connection reset, 500, a 0.3 s delay), round robin.

It reports requests done, errors by type and token requests. Nothing may be
lost: every request either succeeds or raises a documented error (an
`MtlsAuthError`); anything else is counted as "undocumented" and makes the
exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import MtlsAuthError
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import PKI, Fault, TokenServer
from mtls_auth.testing._bindings import xsuaa_service_key

CLIENT_ID = "sb-soak!t1"
RETRY = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.5, max_retry_after=1.0)
FAULTS = [
    Fault.status(503, retry_after="1"),
    Fault.status(429, retry_after="0"),
    Fault.reset(),
    Fault.status(500),
    Fault.delay(0.3),
]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.undocumented: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()

    def status(self, code: int) -> None:
        with self.lock:
            if code == 200:
                self.ok += 1
            else:
                self.statuses[code] += 1

    def error(self, exc: BaseException) -> None:
        with self.lock:
            name = type(exc).__name__
            if isinstance(exc, MtlsAuthError):
                self.errors[name] += 1
            else:
                self.undocumented[f"{name}: {str(exc)[:80]}"] += 1


def write_key(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # atomic, like a mounted secret update


def sync_worker(
    kind: str, auth: Any, server: TokenServer, stop: threading.Event, tally: Tally
) -> None:
    if kind == "requests":
        session = requests.Session()
        session.auth = auth
        session.mount(server.url, auth.adapter())
        call = lambda: session.get(server.resource_url, timeout=10).status_code  # noqa: E731
        closer = session.close
    else:
        client = httpx.Client(auth=auth, transport=auth.transport(), timeout=10)
        call = lambda: client.get(server.resource_url).status_code  # noqa: E731
        closer = client.close
    try:
        while not stop.is_set():
            try:
                tally.status(call())
            except Exception as exc:  # noqa: BLE001 - classified by the tally
                tally.error(exc)
    finally:
        closer()


async def async_workers(
    auth: Any, server: TokenServer, stop: threading.Event, tally: Tally, count: int
) -> None:
    async with httpx.AsyncClient(
        auth=auth,
        transport=auth.async_transport(),
        timeout=10,
        limits=httpx.Limits(max_connections=count),
    ) as client:

        async def one() -> None:
            while not stop.is_set():
                try:
                    response = await client.get(server.resource_url)
                    tally.status(response.status_code)
                except Exception as exc:  # noqa: BLE001 - classified by the tally
                    tally.error(exc)

        await asyncio.gather(*(one() for _ in range(count)))
    await auth.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=4, help="per sync client library")
    parser.add_argument("--coroutines", type=int, default=50)
    parser.add_argument("--rotate-every", type=float, default=10.0)
    args = parser.parse_args()

    pki = PKI()
    current = pki.issue_client("soak-client")
    tally = Tally()
    stop = threading.Event()
    with (
        TokenServer(pki, token_lifetime=3, cert_bound=True) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server.register_client(CLIENT_ID, current)
        key_file = Path(tmp) / "service-key.json"
        write_key(key_file, xsuaa_service_key(server, current, CLIENT_ID))
        options: dict[str, Any] = {"verify": server.ca_pem, "retry": RETRY, "timeout": 5.0}
        rauth = mrequests.MtlsOAuth2.from_binding(key_file, **options)
        hauth = mhttpx.MtlsOAuth2.from_binding(key_file, **options)
        aauth = mhttpx.MtlsOAuth2.from_binding(key_file, **options)

        threads = [
            threading.Thread(target=sync_worker, args=("requests", rauth, server, stop, tally))
            for _ in range(args.threads)
        ] + [
            threading.Thread(target=sync_worker, args=("httpx", hauth, server, stop, tally))
            for _ in range(args.threads)
        ]
        threads.append(
            threading.Thread(
                target=lambda: asyncio.run(
                    async_workers(aauth, server, stop, tally, args.coroutines)
                )
            )
        )
        started = time.monotonic()
        for thread in threads:
            thread.start()

        rotations = 0
        next_rotation = started + args.rotate_every
        next_fault = started + 1.0
        revoke_at: tuple[float, str] | None = None
        fault_index = 0
        while (now := time.monotonic()) < started + args.seconds:
            if now >= next_fault:
                server.inject(FAULTS[fault_index % len(FAULTS)])
                fault_index += 1
                next_fault += 1.0
            if now >= next_rotation:
                old = current
                current = pki.issue_client("soak-client")  # same subject, new key
                write_key(key_file, xsuaa_service_key(server, current, CLIENT_ID))
                revoke_at = (now + 2.0, old.thumbprint)
                rotations += 1
                next_rotation += args.rotate_every
            if revoke_at is not None and now >= revoke_at[0]:
                server.revoke_certificate(revoke_at[1])
                revoke_at = None
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started
        for auth in (rauth, hauth, aauth):
            auth.close()

        total = (
            tally.ok
            + sum(tally.statuses.values())
            + sum(tally.errors.values())
            + sum(tally.undocumented.values())
        )
        report = {
            "seconds": round(elapsed, 1),
            "requests": total,
            "succeeded": tally.ok,
            "non_200_statuses": dict(tally.statuses),
            "documented_errors": dict(tally.errors),
            "undocumented_errors": dict(tally.undocumented),
            "token_requests": server.token_request_count,
            "tokens_issued": server.tokens_issued,
            "rotations": rotations,
            "faults_injected": fault_index,
            "last_token_thumbprint_is_current": (
                server.token_requests[-1].thumbprint == current.thumbprint
                if server.token_requests
                else None
            ),
        }
    print(json.dumps(report, indent=2))
    return 1 if tally.undocumented else 0


if __name__ == "__main__":
    sys.exit(main())
