"""The rotation drill: requests keep succeeding while the binding rotates under them.

A binding on disk (a service-key file, or a Kubernetes directory written the
way the kubelet writes secrets) holds certificate A, the kit's client
certificate; mid-drill it is replaced with B (``rotated_certificate``: same
subject, new key) and A is revoked at the kit's mTLS server. 8 threads
(requests and httpx) and, separately, 50 coroutines on one httpx.AsyncClient
keep calling the resource: no request may fail and the server must see B
afterwards. The rotation is triggered by an Event after N successful requests;
nothing sleeps to wait for it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import requests
from rotating import FAST, cert_of, make_binding, xsuaa_credentials

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth.testing import Credential, TokenServer

Binding = Any  # rotating.ServiceKeyFile | rotating.KubeletDirectory


# -- 1. the rotation drill ----------------------------------------------------------------


class Tally:
    """Thread-safe counts of a drill's outcomes."""

    def __init__(self, trigger_after: int) -> None:
        self.lock = threading.Lock()
        self.trigger_after = trigger_after
        self.ok_before = 0
        self.ok_after = 0
        self.failures: list[str] = []

    def success(self, after: bool) -> bool:
        """Count one 200; True once enough have succeeded to rotate."""
        with self.lock:
            if after:
                self.ok_after += 1
            else:
                self.ok_before += 1
            return self.ok_before + self.ok_after >= self.trigger_after

    def failure(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def rotate_and_revoke(
    binding: Binding, server: TokenServer, old: Credential, new: Credential
) -> Callable[[], None]:
    def rotate() -> None:
        binding.write(xsuaa_credentials(server, new))
        server.revoke_certificate(old.thumbprint)

    return rotate


def check_drill_outcome(
    tally: Tally,
    server: TokenServer,
    old: Credential,
    new: Credential,
    *,
    workers: int,
    after_each: int,
) -> None:
    assert tally.failures == [], f"{len(tally.failures)} failed requests: {tally.failures[:5]}"
    assert tally.ok_before >= tally.trigger_after // 2
    assert tally.ok_after >= workers * after_each
    tokens = server.token_requests
    assert tokens[0].thumbprint == old.thumbprint
    assert any(t.thumbprint == new.thumbprint for t in tokens)
    assert tokens[-1].thumbprint == new.thumbprint, [t.thumbprint for t in tokens]
    resources = server.resource_requests
    last = resources[-min(workers, 8) :]
    assert {r.thumbprint for r in last} == {new.thumbprint}
    assert {r.status for r in last} == {200}
    # Each success the clients counted is one 200 at the server: the 401s for A's
    # revoked (or, with cert_bound, mismatched) tokens were retried transparently.
    assert sum(r.status == 200 for r in resources) == tally.ok_before + tally.ok_after
    assert {r.status for r in resources} <= {200, 401}


DRILL_VARIANTS = [
    pytest.param(kind, interval, bound, id=f"{kind}-interval{interval}-bound{bound}")
    for kind in ("file", "kubernetes")
    for interval in (FAST, 5.0)
    for bound in (False, True)
]


@pytest.mark.parametrize(("kind", "check_interval", "cert_bound"), DRILL_VARIANTS)
def test_rotation_drill_eight_threads(
    kind: str,
    check_interval: float,
    cert_bound: bool,
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    """8 threads (4 requests, 4 httpx) call the resource while A is replaced and revoked."""
    workers, trigger_after, after_each, max_each = 8, 48, 8, 400
    mtls_server.cert_bound = cert_bound
    binding = make_binding(kind, tmp_path)
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))

    options: dict[str, Any] = {"verify": mtls_server.ca_pem, "check_interval": check_interval}
    auth_r = mrequests.MtlsOAuth2.from_binding(binding.path, **options)
    auth_h = mhttpx.MtlsOAuth2.from_binding(binding.path, **options)
    assert cert_of(auth_r) == cert_of(auth_h) == mtls_client_certificate.thumbprint
    # Two requests sessions and two httpx clients, each shared by two threads.
    sessions = []
    for _ in range(2):
        session = requests.Session()
        session.trust_env = False
        session.auth = auth_r
        session.mount("https://", auth_r.adapter())
        sessions.append(session)
    clients = [
        httpx.Client(auth=auth_h, transport=auth_h.transport(), timeout=10) for _ in range(2)
    ]
    calls: list[Callable[[], int]] = []
    for index in range(workers // 2):
        session, client = sessions[index % 2], clients[index % 2]
        calls.append(lambda s=session: s.get(mtls_server.resource_url, timeout=10).status_code)
        calls.append(lambda c=client: c.get(mtls_server.resource_url).status_code)

    tally = Tally(trigger_after)
    trigger, rotated = threading.Event(), threading.Event()
    stop_at = time.monotonic() + 12.0

    def worker(call: Callable[[], int]) -> None:
        done_after = 0
        for _ in range(max_each):
            if time.monotonic() > stop_at:
                tally.failure("drill deadline reached")
                return
            after = rotated.is_set()
            try:
                status = call()
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                tally.failure(f"{'after' if after else 'before'}: {type(exc).__name__}: {exc}")
                continue
            if status != 200:
                tally.failure(f"{'after' if after else 'before'}: HTTP {status}")
                continue
            if tally.success(after):
                trigger.set()
            if after:
                done_after += 1
                if done_after >= after_each:
                    return

    threads = [threading.Thread(target=worker, args=(call,), daemon=True) for call in calls]
    try:
        for thread in threads:
            thread.start()
        fired = trigger.wait(10.0)
        if fired:
            rotate_and_revoke(binding, mtls_server, mtls_client_certificate, rotated_certificate)()
            rotated.set()
        for thread in threads:
            thread.join(15.0)
        assert fired, f"only {tally.ok_before} requests succeeded before the rotation"
        assert not any(thread.is_alive() for thread in threads)
    finally:
        for session in sessions:
            session.close()
        for client in clients:
            client.close()
        auth_r.close()
        auth_h.close()

    check_drill_outcome(
        tally,
        mtls_server,
        mtls_client_certificate,
        rotated_certificate,
        workers=workers,
        after_each=after_each,
    )
    assert cert_of(auth_r) == cert_of(auth_h) == rotated_certificate.thumbprint


#: The coroutine drill costs more (50 TLS connections, rebuilt at the rotation):
#: a pairwise cover, each binding kind with both intervals and both binding modes.
ASYNC_DRILL_VARIANTS = [
    pytest.param(kind, interval, bound, id=f"{kind}-interval{interval}-bound{bound}")
    for kind, interval, bound in (
        ("file", FAST, False),
        ("file", 5.0, True),
        ("kubernetes", FAST, True),
        ("kubernetes", 5.0, False),
    )
]


@pytest.mark.parametrize(("kind", "check_interval", "cert_bound"), ASYNC_DRILL_VARIANTS)
def test_rotation_drill_fifty_coroutines(
    kind: str,
    check_interval: float,
    cert_bound: bool,
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    """50 coroutines on one httpx.AsyncClient call the resource while A is replaced."""
    workers, trigger_after, after_each, max_each = 50, 80, 3, 200
    mtls_server.cert_bound = cert_bound
    binding = make_binding(kind, tmp_path)
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    auth = mhttpx.MtlsOAuth2.from_binding(
        binding.path, verify=mtls_server.ca_pem, check_interval=check_interval
    )
    tally = Tally(trigger_after)

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        trigger, rotated = asyncio.Event(), asyncio.Event()
        stop_at = loop.time() + 12.0
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        transport = auth.async_transport(limits=limits)
        async with httpx.AsyncClient(auth=auth, transport=transport, timeout=10) as client:

            async def worker() -> None:
                done_after = 0
                for _ in range(max_each):
                    if loop.time() > stop_at:
                        tally.failure("drill deadline reached")
                        return
                    after = rotated.is_set()
                    try:
                        response = await client.get(mtls_server.resource_url)
                    except Exception as exc:  # noqa: BLE001 - every failure is reported
                        tally.failure(f"{type(exc).__name__}: {exc}")
                        continue
                    if response.status_code != 200:
                        tally.failure(f"HTTP {response.status_code}")
                        continue
                    if tally.success(after):
                        trigger.set()
                    if after:
                        done_after += 1
                        if done_after >= after_each:
                            return

            async def controller() -> bool:
                try:
                    await asyncio.wait_for(trigger.wait(), 10.0)
                except asyncio.TimeoutError:
                    return False
                # File writes stay off the event loop, like the library's stat().
                await loop.run_in_executor(
                    None,
                    rotate_and_revoke(
                        binding, mtls_server, mtls_client_certificate, rotated_certificate
                    ),
                )
                rotated.set()
                return True

            fired, *_ = await asyncio.gather(controller(), *(worker() for _ in range(workers)))
        await auth.aclose()
        return bool(fired)

    fired = asyncio.run(main())
    assert fired, f"only {tally.ok_before} requests succeeded before the rotation"
    check_drill_outcome(
        tally,
        mtls_server,
        mtls_client_certificate,
        rotated_certificate,
        workers=workers,
        after_each=after_each,
    )
    assert cert_of(auth) == rotated_certificate.thumbprint
