"""Certificates that rotate without a restart: files, Kubernetes directories, providers.

A binding on disk (a service-key file, or a Kubernetes directory written the way
the kubelet writes secrets: timestamped directories behind a ``..data`` symlink)
holds certificate A. The tests replace it with certificate B (same subject, new
key), revoke A at the real mTLS token server, and check what the clients do:

* the rotation drill: 8 threads (requests and httpx) and, separately, 50
  coroutines keep calling the resource while the binding rotates; no request
  may fail and the server must see B afterwards;
* the ``..data`` symlink swap is noticed; a broken binding keeps A (with a
  WARNING) until a valid one arrives; tokens bound to A are dropped at once;
* a provider callable is asked again near expiry and after a rejection;
* WARNINGs 24 h and 1 h before expiry, once each;
* a request in flight during the swap finishes.

Nothing sleeps to wait for a rotation: the rotation is triggered by an Event
after N successful requests, and waiting for the client to notice is short
polling with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import requests
import urllib3

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import CertificateError, ClientCertificate, TokenError
from mtls_auth._rotation import CertificateWatch, Loaded
from mtls_auth._sources import BindingSource
from mtls_auth.testing import PKI, Credential, Fault, TokenServer
from mtls_auth.testing._bindings import (
    rotate_kubernetes_binding,
    write_kubernetes_binding,
    xsuaa_service_key,
)

CLIENT_ID = "sb-rotation!t4711"
#: The common name of A and B: same subject, so the server's client registration
#: (bound to the subject, as XSUAA does) accepts both.
COMMON_NAME = "rotation-client"

UTC = datetime.timezone.utc
FAST = 0.05  # check_interval for the variants that notice the swap by stat()
DEADLINE = 5.0  # upper bound for any "wait until the client noticed" loop


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_a(pki: PKI) -> Credential:
    return pki.issue_client(COMMON_NAME)


@pytest.fixture(scope="module")
def cert_b(pki: PKI, cert_a: Credential) -> Credential:
    rotated = pki.issue_client(COMMON_NAME)
    assert rotated.subject == cert_a.subject
    assert rotated.thumbprint != cert_a.thumbprint
    return rotated


@pytest.fixture
def server(pki: PKI, cert_a: Credential) -> Iterator[TokenServer]:
    with TokenServer(pki) as started:
        started.register_client(CLIENT_ID, cert_a)  # the subject: B is accepted too
        yield started


# -- bindings on disk -------------------------------------------------------------------------


def xsuaa_credentials(server: TokenServer, credential: Credential) -> dict[str, Any]:
    """The credentials block of an XSUAA x509 service key pointing at `server`."""
    return xsuaa_service_key(server, credential, CLIENT_ID)


class ServiceKeyFile:
    """A `cf service-key` JSON file, replaced atomically (write + rename) on rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, credentials: dict[str, Any]) -> None:
        self.write_text(json.dumps({"credentials": credentials}, indent=2))

    def write_text(self, text: str) -> None:
        scratch = self.path.with_name(self.path.name + ".new")
        scratch.write_text(text, encoding="utf-8")
        os.replace(scratch, self.path)


class KubeletDirectory:
    """A SAP BTP service operator Secret as kubelet mounts it (``..data`` symlink swap).

    The files live in a timestamped directory ``..2026_..._NNNN``; ``..data`` is
    a symlink to it and every visible name (``clientid``, ``.metadata``, ...) is
    a symlink ``name -> ..data/name``. An update writes a new timestamped
    directory, swaps ``..data`` with one rename and deletes the old directory:
    the visible symlinks never change.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, credentials: dict[str, Any]) -> None:
        if (self.path / "..data").is_symlink():
            rotate_kubernetes_binding(self.path, credentials)
        else:
            write_kubernetes_binding(self.path, credentials)

    def visible_links(self) -> dict[str, str]:
        return {
            entry.name: os.readlink(entry.path)
            for entry in os.scandir(self.path)
            if not entry.name.startswith("..")
        }


Binding = Any  # ServiceKeyFile | KubeletDirectory


def make_binding(kind: str, tmp_path: Path) -> Binding:
    if kind == "file":
        return ServiceKeyFile(tmp_path / "service-key.json")
    return KubeletDirectory(tmp_path / "bindings" / "xsuaa")


def cert_of(auth: Any) -> str:
    """The thumbprint of the certificate an auth object currently presents."""
    return str(auth.certificate.thumbprint)


def wait_until(condition: Callable[[], bool], step: Callable[[], None] | None = None) -> bool:
    """Short polling with a deadline: run `step` until `condition` holds."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class FakeTimer:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeNow:
    """A wall clock (aware UTC datetime) that moves only when told to."""

    def __init__(self, moment: datetime.datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime.datetime:
        return self.moment


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
    server: TokenServer,
    cert_a: Credential,
    cert_b: Credential,
) -> None:
    """8 threads (4 requests, 4 httpx) call the resource while A is replaced and revoked."""
    workers, trigger_after, after_each, max_each = 8, 48, 8, 400
    server.cert_bound = cert_bound
    binding = make_binding(kind, tmp_path)
    binding.write(xsuaa_credentials(server, cert_a))

    options: dict[str, Any] = {"verify": server.ca_pem, "check_interval": check_interval}
    auth_r = mrequests.MtlsOAuth2.from_binding(binding.path, **options)
    auth_h = mhttpx.MtlsOAuth2.from_binding(binding.path, **options)
    assert cert_of(auth_r) == cert_of(auth_h) == cert_a.thumbprint
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
        calls.append(lambda s=session: s.get(server.resource_url, timeout=10).status_code)
        calls.append(lambda c=client: c.get(server.resource_url).status_code)

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
            rotate_and_revoke(binding, server, cert_a, cert_b)()
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

    check_drill_outcome(tally, server, cert_a, cert_b, workers=workers, after_each=after_each)
    assert cert_of(auth_r) == cert_of(auth_h) == cert_b.thumbprint


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
    server: TokenServer,
    cert_a: Credential,
    cert_b: Credential,
) -> None:
    """50 coroutines on one httpx.AsyncClient call the resource while A is replaced."""
    workers, trigger_after, after_each, max_each = 50, 80, 3, 200
    server.cert_bound = cert_bound
    binding = make_binding(kind, tmp_path)
    binding.write(xsuaa_credentials(server, cert_a))
    auth = mhttpx.MtlsOAuth2.from_binding(
        binding.path, verify=server.ca_pem, check_interval=check_interval
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
                        response = await client.get(server.resource_url)
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
                await loop.run_in_executor(None, rotate_and_revoke(binding, server, cert_a, cert_b))
                rotated.set()
                return True

            fired, *_ = await asyncio.gather(controller(), *(worker() for _ in range(workers)))
        await auth.aclose()
        return bool(fired)

    fired = asyncio.run(main())
    assert fired, f"only {tally.ok_before} requests succeeded before the rotation"
    check_drill_outcome(tally, server, cert_a, cert_b, workers=workers, after_each=after_each)
    assert cert_of(auth) == cert_b.thumbprint


# -- 2. the Kubernetes ..data symlink swap ----------------------------------------------------


def test_kubernetes_data_symlink_swap_is_detected(
    tmp_path: Path, server: TokenServer, cert_a: Credential, cert_b: Credential
) -> None:
    kube = KubeletDirectory(tmp_path / "bindings" / "xsuaa")
    kube.write(xsuaa_credentials(server, cert_a))
    source = BindingSource.from_input(kube.path)
    first = source.read()
    assert ClientCertificate.from_pem(first.certificate, first.key).thumbprint == cert_a.thumbprint
    assert not source.changed()
    assert not source.changed()  # a stat is not a change
    links = kube.visible_links()
    data_before = os.readlink(kube.path / "..data")

    kube.write(xsuaa_credentials(server, cert_b))

    # The kubelet never touches the visible names: only ..data moved.
    assert kube.visible_links() == links
    assert os.readlink(kube.path / "..data") != data_before
    assert source.changed()
    second = source.read()
    assert ClientCertificate.from_pem(second.certificate, second.key).thumbprint == (
        cert_b.thumbprint
    )
    assert not source.changed()


#: SAP BTP service operator layouts, as kubelet mounts them: (write kwargs, path to bind).
KUBERNETES_LAYOUTS = {
    "metadata-text": ({"metadata": "text"}, ""),
    "metadata-json": ({"metadata": "json"}, ""),
    "legacy-flat": ({"metadata": None}, ""),
    "legacy-credentials.json": ({"metadata": None, "single_file": "credentials.json"}, ""),
    # The file itself (a symlink through ..data) given as the binding path.
    "credentials.json-as-file": (
        {"metadata": None, "single_file": "credentials.json"},
        "credentials.json",
    ),
}


@pytest.mark.parametrize(
    ("library", "layout"),
    [("requests", name) for name in KUBERNETES_LAYOUTS] + [("httpx", "metadata-text")],
)
def test_kubernetes_swap_is_followed_by_a_running_client(
    library: str,
    layout: str,
    tmp_path: Path,
    server: TokenServer,
    cert_a: Credential,
    cert_b: Credential,
) -> None:
    options, inside = KUBERNETES_LAYOUTS[layout]
    directory = tmp_path / "bindings" / "xsuaa"
    write_kubernetes_binding(directory, xsuaa_credentials(server, cert_a), **options)
    path = directory / inside if inside else directory
    get, auth, close = sync_client(library, path, server)
    try:
        assert get() == 200
        assert cert_of(auth) == cert_a.thumbprint
        rotate_kubernetes_binding(directory, xsuaa_credentials(server, cert_b), **options)
        statuses: list[int] = []
        assert wait_until(
            lambda: cert_of(auth) == cert_b.thumbprint, lambda: statuses.append(get())
        )
        assert set(statuses) == {200}
        assert get() == 200
    finally:
        close()
    assert server.resource_requests[-1].thumbprint == cert_b.thumbprint
    assert server.token_requests[-1].thumbprint == cert_b.thumbprint


def sync_client(
    library: str, path: Path, server: TokenServer, **options: Any
) -> tuple[Callable[[], int], Any, Callable[[], None]]:
    """A get() through `library` with a binding-backed auth and an adapter that follows it."""
    options = {"verify": server.ca_pem, "check_interval": FAST, **options}
    if library == "requests":
        auth_r = mrequests.MtlsOAuth2.from_binding(path, **options)
        session = requests.Session()
        session.trust_env = False
        session.auth = auth_r
        session.mount("https://", auth_r.adapter())

        def close_r() -> None:
            session.close()
            auth_r.close()

        return (
            lambda: session.get(server.resource_url, timeout=10).status_code,
            auth_r,
            close_r,
        )
    auth_h = mhttpx.MtlsOAuth2.from_binding(path, **options)
    client = httpx.Client(auth=auth_h, transport=auth_h.transport(), timeout=10)

    def close_h() -> None:
        client.close()
        auth_h.close()

    return lambda: client.get(server.resource_url).status_code, auth_h, close_h


# -- 3. a broken binding mid-rotation ------------------------------------------------------------


def broken_write(binding: Binding, how: str, server: TokenServer, new: Credential, pki: PKI) -> str:
    """Write a broken rotation; return a secret that must never reach a log."""
    credentials = xsuaa_credentials(server, new)
    if how == "invalid-pem":
        credentials["certificate"] = (
            "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
        )
        secret = new.key_pem
    elif how == "key-mismatch":
        credentials["key"] = secret = pki.mismatched_key()
    elif how == "deleted":
        binding.path.unlink()  # a writer that removes the file before writing anew
        return new.key_pem
    elif how == "half-written":
        text = json.dumps({"credentials": credentials}, indent=2)
        binding.write_text(text[: len(text) // 2])
        return new.key_pem
    else:  # pragma: no cover
        raise AssertionError(how)
    binding.write(credentials)
    return secret


def key_body(pem: str) -> str:
    """A line from the middle of a PEM key: a leak of the key would contain it."""
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return lines[len(lines) // 2]


@pytest.mark.parametrize(
    ("kind", "how"),
    [
        ("file", "invalid-pem"),
        ("file", "key-mismatch"),
        ("file", "half-written"),
        ("file", "deleted"),
        ("kubernetes", "invalid-pem"),
        ("kubernetes", "key-mismatch"),
    ],
)
def test_broken_binding_keeps_the_old_certificate_until_a_valid_one_arrives(
    kind: str,
    how: str,
    tmp_path: Path,
    pki: PKI,
    server: TokenServer,
    cert_a: Credential,
    cert_b: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mtls_auth")
    binding = make_binding(kind, tmp_path)
    binding.write(xsuaa_credentials(server, cert_a))
    get, auth, close = sync_client("requests", binding.path, server)
    try:
        assert get() == 200
        secret = broken_write(binding, how, server, cert_b, pki)
        statuses: list[int] = []

        def complained() -> bool:
            return any(
                r.levelno == logging.WARNING and "keeping the current one" in r.getMessage()
                for r in caplog.records
            )

        assert wait_until(complained, lambda: statuses.append(get())), caplog.text
        assert set(statuses) == {200}
        assert cert_of(auth) == cert_a.thumbprint
        assert server.resource_requests[-1].thumbprint == cert_a.thumbprint
        for leaked in (key_body(secret), key_body(cert_a.key_pem), key_body(cert_b.key_pem)):
            assert leaked not in caplog.text

        # A later valid write is picked up.
        binding.write(xsuaa_credentials(server, cert_b))
        assert wait_until(
            lambda: cert_of(auth) == cert_b.thumbprint, lambda: statuses.append(get())
        )
        assert set(statuses) == {200}
        assert get() == 200
    finally:
        close()
    assert server.resource_requests[-1].thumbprint == cert_b.thumbprint
    assert server.token_requests[-1].thumbprint == cert_b.thumbprint


# -- 4. tokens of the old certificate are dropped -------------------------------------------------


@pytest.mark.parametrize("library", ["requests", "httpx", "httpx-async"])
def test_tokens_of_the_old_certificate_are_dropped_at_rotation(
    library: str, tmp_path: Path, server: TokenServer, cert_a: Credential, cert_b: Credential
) -> None:
    server.token_lifetime = 3600  # the old token has lots of lifetime left
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, cert_a))

    if library == "httpx-async":
        auth = mhttpx.MtlsOAuth2.from_binding(
            binding.path, verify=server.ca_pem, check_interval=FAST
        )

        async def main() -> list[int]:
            statuses = []
            async with httpx.AsyncClient(
                auth=auth, transport=auth.async_transport(), timeout=10
            ) as client:
                statuses.append((await client.get(server.resource_url)).status_code)
                statuses.append((await client.get(server.resource_url)).status_code)
                binding.write(xsuaa_credentials(server, cert_b))
                deadline = time.monotonic() + DEADLINE
                while cert_of(auth) != cert_b.thumbprint and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    statuses.append((await client.get(server.resource_url)).status_code)
                statuses.append((await client.get(server.resource_url)).status_code)
            await auth.aclose()
            return statuses

        statuses = asyncio.run(main())
    else:
        get, auth, close = sync_client(library, binding.path, server)
        try:
            statuses = [get(), get()]
            binding.write(xsuaa_credentials(server, cert_b))
            wait_until(lambda: cert_of(auth) == cert_b.thumbprint, lambda: statuses.append(get()))
            statuses.append(get())
        finally:
            close()

    assert set(statuses) == {200}
    assert cert_of(auth) == cert_b.thumbprint
    tokens = server.token_requests
    # One token for A, then exactly one for B, requested with B's certificate.
    assert [t.thumbprint for t in tokens] == [cert_a.thumbprint, cert_b.thumbprint]
    assert tokens[1].time - tokens[0].time < 60  # A's token had almost an hour left
    resources = server.resource_requests
    first_b = next(i for i, r in enumerate(resources) if r.thumbprint == cert_b.thumbprint)
    assert all(
        r.token_index == 1 and r.thumbprint == cert_a.thumbprint for r in resources[:first_b]
    )
    # The very request that noticed the swap already used the new token; A's
    # token was never sent again.
    assert all(r.token_index == 2 for r in resources[first_b:])
    assert all(r.thumbprint == cert_b.thumbprint for r in resources[first_b:])


# -- 5. a provider callable ---------------------------------------------------------------------


class Provider:
    """A certificate source such as a vault: returns whatever `.next` holds."""

    def __init__(self, first: Any) -> None:
        self.next = first
        self.calls = 0
        self.error: BaseException | None = None

    def __call__(self) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.next


def client_certificate(credential: Credential) -> ClientCertificate:
    return ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)


@pytest.fixture(scope="module")
def cert_short(pki: PKI) -> Credential:
    """Same subject, expiring in two hours: inside the 24 h rotate window."""
    return pki.issue_client(
        COMMON_NAME, not_after=datetime.datetime.now(UTC) + datetime.timedelta(hours=2)
    )


def provider_session(
    server: TokenServer, provider: Provider, **options: Any
) -> tuple[mrequests.MtlsOAuth2, requests.Session]:
    auth = mrequests.MtlsOAuth2(
        server.token_url, CLIENT_ID, provider, verify=server.ca_pem, **options
    )
    session = requests.Session()
    session.trust_env = False
    session.auth = auth
    session.mount("https://", auth.adapter())
    return auth, session


def fake_timed_watch(auth: Any, provider: Provider, timer: FakeTimer) -> None:
    """Give the auth's watch a clock the test moves (as TokenClient configures it)."""
    client = auth._client
    assert client.watch is not None
    client.watch = CertificateWatch(
        Loaded(client.state.certificate),
        provider=provider,
        interval=FAST,
        provider_interval=60.0,
        timer=timer,
    )


def test_provider_is_called_again_when_the_certificate_nears_expiry(
    server: TokenServer,
    cert_short: Credential,
    cert_b: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    provider = Provider(client_certificate(cert_short))
    auth, session = provider_session(server, provider, check_interval=FAST)
    timer = FakeTimer()
    fake_timed_watch(auth, provider, timer)
    try:
        assert provider.calls == 1
        assert session.get(server.resource_url).status_code == 200
        timer.advance(1)
        assert session.get(server.resource_url).status_code == 200
        assert provider.calls == 1  # rate-limited: at most once a provider_interval
        assert cert_of(auth) == cert_short.thumbprint

        provider.next = client_certificate(cert_b)
        timer.advance(61)
        assert session.get(server.resource_url).status_code == 200
        assert provider.calls == 2
        assert cert_of(auth) == cert_b.thumbprint
        assert server.token_requests[-1].thumbprint == cert_b.thumbprint
        assert server.resource_requests[-1].thumbprint == cert_b.thumbprint

        timer.advance(121)  # B has 7 days left: no need to ask again
        assert session.get(server.resource_url).status_code == 200
        assert provider.calls == 2
    finally:
        session.close()
        auth.close()
    watch_warnings = [r for r in caplog.records if "watching its binding" in r.getMessage()]
    assert len(watch_warnings) == 1  # the 24 h warning for the short certificate, once
    assert cert_short.subject in watch_warnings[0].getMessage()


@pytest.mark.parametrize("library", ["requests", "httpx-async"])
def test_provider_is_called_again_after_a_rejection(
    library: str, server: TokenServer, cert_a: Credential, cert_b: Credential
) -> None:
    provider = Provider(client_certificate(cert_a))
    if library == "requests":
        auth, session = provider_session(server, provider)
        try:
            assert session.get(server.resource_url).status_code == 200
            provider.next = client_certificate(cert_b)
            server.revoke_certificate(cert_a.thumbprint)
            assert session.get(server.resource_url).status_code == 200
            assert session.get(server.resource_url).status_code == 200
        finally:
            session.close()
            auth.close()
    else:
        auth_h = mhttpx.MtlsOAuth2(server.token_url, CLIENT_ID, provider, verify=server.ca_pem)
        auth = auth_h

        async def main() -> list[int]:
            async with httpx.AsyncClient(
                auth=auth_h, transport=auth_h.async_transport(), timeout=10
            ) as client:
                statuses = [(await client.get(server.resource_url)).status_code]
                provider.next = client_certificate(cert_b)
                server.revoke_certificate(cert_a.thumbprint)
                results = await asyncio.gather(
                    *(client.get(server.resource_url) for _ in range(10))
                )
                statuses += [r.status_code for r in results]
            await auth_h.aclose()
            return statuses

        assert set(asyncio.run(main())) == {200}
    # Once at construction, once after the token endpoint refused A.
    assert provider.calls == 2
    assert cert_of(auth) == cert_b.thumbprint
    assert server.token_requests[-1].thumbprint == cert_b.thumbprint
    assert server.resource_requests[-1].thumbprint == cert_b.thumbprint


def test_provider_returning_something_else_is_a_clear_error(
    server: TokenServer, cert_a: Credential
) -> None:
    with pytest.raises(CertificateError, match=r"must return a ClientCertificate, not str"):
        mrequests.MtlsOAuth2(
            server.token_url, CLIENT_ID, Provider(cert_a.chain_pem), verify=server.ca_pem
        )
    with pytest.raises(CertificateError, match=r"must return a ClientCertificate, not Credential"):
        mhttpx.MtlsOAuth2(server.token_url, CLIENT_ID, Provider(cert_a), verify=server.ca_pem)


def test_provider_returning_something_else_later_keeps_the_certificate(
    server: TokenServer, cert_short: Credential, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    provider = Provider(client_certificate(cert_short))
    auth, session = provider_session(server, provider, check_interval=FAST)
    timer = FakeTimer()
    fake_timed_watch(auth, provider, timer)
    try:
        assert session.get(server.resource_url).status_code == 200
        provider.next = cert_short.chain_pem  # PEM text, not a ClientCertificate
        timer.advance(61)
        assert session.get(server.resource_url).status_code == 200
        assert provider.calls == 2
    finally:
        session.close()
        auth.close()
    assert cert_of(auth) == cert_short.thumbprint
    assert any(
        "must return a ClientCertificate, not str" in r.getMessage()
        and r.levelno == logging.WARNING
        for r in caplog.records
    )


class VaultUnavailable(Exception):
    """What a vault client raises when the vault is sealed or unreachable."""


def test_provider_failing_near_expiry_keeps_the_current_certificate(
    server: TokenServer, cert_short: Credential, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    provider = Provider(client_certificate(cert_short))
    auth, session = provider_session(server, provider, check_interval=FAST)
    timer = FakeTimer()
    fake_timed_watch(auth, provider, timer)
    try:
        assert session.get(server.resource_url).status_code == 200
        provider.error = VaultUnavailable("vault is sealed")
        timer.advance(61)
        # The current certificate has two hours left: the request must not fail.
        assert session.get(server.resource_url).status_code == 200
    finally:
        session.close()
        auth.close()
    assert provider.calls == 2
    assert cert_of(auth) == cert_short.thumbprint
    # The provider's own message may carry its secrets: only the type is logged.
    assert any("VaultUnavailable" in r.getMessage() for r in caplog.records)
    assert not any("vault is sealed" in r.getMessage() for r in caplog.records)


# -- 6. WARNINGs 24 h and 1 h before expiry ---------------------------------------------------


def expiry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mtls_auth" and r.levelno == logging.WARNING and "expires in" in r.getMessage()
    ]


def test_expiry_warnings_at_24h_and_1h_once_each(
    cert_a: Credential, caplog: pytest.LogCaptureFixture
) -> None:
    certificate = client_certificate(cert_a)
    expiry = certificate.not_after
    timer = FakeTimer()
    now = FakeNow(expiry - datetime.timedelta(hours=30))
    watch = CertificateWatch(Loaded(certificate), interval=5.0, timer=timer, now=now)
    caplog.set_level(logging.DEBUG, logger="mtls_auth")

    def poll_at(left: datetime.timedelta) -> list[str]:
        caplog.clear()
        now.moment = expiry - left
        timer.advance(6)
        assert watch.poll() is None
        return expiry_warnings(caplog)

    hours = datetime.timedelta(hours=1)
    assert poll_at(30 * hours) == []
    assert poll_at(25 * hours) == []
    at_24h = poll_at(23 * hours + datetime.timedelta(minutes=59))
    assert len(at_24h) == 1
    assert "23:59:00" in at_24h[0]
    assert cert_a.subject in at_24h[0] or certificate.subject in at_24h[0]
    assert "rotate it and restart" in at_24h[0]  # no binding, no provider to watch
    assert poll_at(23 * hours) == []
    assert poll_at(2 * hours) == []
    assert poll_at(61 * datetime.timedelta(minutes=1)) == []
    at_1h = poll_at(59 * datetime.timedelta(minutes=1))
    assert len(at_1h) == 1
    assert "0:59:00" in at_1h[0]
    assert poll_at(30 * datetime.timedelta(minutes=1)) == []
    assert poll_at(datetime.timedelta(minutes=1)) == []


def test_expiry_warnings_need_no_due_check_and_restart_for_a_new_certificate(
    tmp_path: Path,
    server: TokenServer,
    cert_a: Credential,
    cert_b: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rate limit: not due, no stat, no warning; a rotated certificate is warned about anew."""
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, cert_a))
    source = BindingSource.from_input(binding.path)
    parsed = source.read()
    first = ClientCertificate.from_pem(parsed.certificate, parsed.key)
    timer = FakeTimer()
    now = FakeNow(first.not_after - datetime.timedelta(minutes=30))
    watch = CertificateWatch(
        Loaded(first, parsed), source=source, interval=5.0, timer=timer, now=now
    )
    caplog.set_level(logging.DEBUG, logger="mtls_auth")

    assert not watch.due()
    assert watch.poll() is None  # not due: nothing looked at, nothing logged
    assert expiry_warnings(caplog) == []

    timer.advance(5)
    assert watch.due()
    assert watch.poll() is None
    both = expiry_warnings(caplog)
    assert len(both) == 2  # 24 h and 1 h crossed at once (the process started late)
    assert all("watching its binding for a replacement" in m for m in both)
    # Within an hour of expiry the binding is checked every second.
    timer.advance(1)
    assert watch.due()

    caplog.clear()
    binding.write(xsuaa_credentials(server, cert_b))
    second_expiry = client_certificate(cert_b).not_after
    now.moment = second_expiry - datetime.timedelta(hours=3)
    loaded = watch.poll()
    assert loaded is not None
    assert loaded.certificate.thumbprint == cert_b.thumbprint
    assert any("client certificate rotated" in r.getMessage() for r in caplog.records)
    rotated_warnings = expiry_warnings(caplog)
    assert len(rotated_warnings) == 1  # B is within 24 h (per the fake clock), not 1 h
    timer.advance(6)
    assert watch.poll() is None
    assert len(expiry_warnings(caplog)) == 1


def test_near_expiry_checks_are_never_rarer_than_the_configured_interval(
    cert_a: Credential,
) -> None:
    certificate = client_certificate(cert_a)
    timer = FakeTimer()
    now = FakeNow(certificate.not_after - datetime.timedelta(minutes=30))
    watch = CertificateWatch(Loaded(certificate), interval=FAST, timer=timer, now=now)
    timer.advance(FAST)
    assert watch.due()
    assert watch.poll() is None
    timer.advance(FAST)
    assert watch.due()  # due again after `interval`, as far from expiry


# -- 7. requests in flight finish across a rotation ---------------------------------------------


@pytest.mark.parametrize("library", ["requests", "httpx"])
def test_in_flight_request_finishes_across_a_rotation(
    library: str, tmp_path: Path, server: TokenServer, cert_a: Credential, cert_b: Credential
) -> None:
    server.cert_bound = True
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, cert_a))
    get, auth, close = sync_client(library, binding.path, server)
    outcome: dict[str, Any] = {}

    def slow() -> None:
        try:
            outcome["status"] = get()
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    try:
        assert get() == 200  # token and a pooled connection with A
        server.inject(Fault.delay(0.5), path="/resource")
        in_flight = threading.Thread(target=slow, daemon=True)
        in_flight.start()
        assert wait_until(lambda: server.pending_faults == 0)  # the server holds it now
        binding.write(xsuaa_credentials(server, cert_b))
        statuses: list[int] = []
        # Another thread, same session / client: the swap happens under the slow request.
        assert wait_until(
            lambda: cert_of(auth) == cert_b.thumbprint, lambda: statuses.append(get())
        )
        assert set(statuses) == {200}
        in_flight.join(5)
        assert not in_flight.is_alive()
    finally:
        close()
    assert outcome == {"status": 200}
    resources = server.resource_requests
    # The slow request finished last, on A's connection, with A's token.
    assert resources[-1].thumbprint == cert_a.thumbprint
    assert resources[-1].status == 200
    assert resources[-2].thumbprint == cert_b.thumbprint


#: urllib3 < 1.26.16 (and early 2.0) close every pool on PoolManager.clear()
#: (urllib3 PR #2954 stopped that); mtls-auth requires urllib3 >= 1.26.16 and no
#: longer clears the replaced PoolManager.
URLLIB3_CLOSES_CLEARED_POOLS = (
    getattr(urllib3.PoolManager().pools, "dispose_func", None) is not None
)


def test_request_routed_to_a_pool_before_the_adapter_swap_still_succeeds(
    tmp_path: Path, server: TokenServer, cert_a: Credential, cert_b: Credential
) -> None:
    """One Session shared by two threads: the swap lands between pool lookup and send."""
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, cert_a))
    auth = mrequests.MtlsOAuth2.from_binding(
        binding.path, verify=server.ca_pem, check_interval=FAST
    )
    adapter = auth.adapter()
    session = requests.Session()
    session.trust_env = False
    session.auth = auth
    session.mount("https://", adapter)
    routed, swapped = threading.Event(), threading.Event()
    lookup = adapter.get_connection_with_tls_context

    def paused_lookup(*args: Any, **kwargs: Any) -> Any:
        pool = lookup(*args, **kwargs)
        if threading.current_thread().name == "routed-before-swap":
            routed.set()
            swapped.wait(5)
        return pool

    adapter.get_connection_with_tls_context = paused_lookup  # type: ignore[method-assign]
    outcome: dict[str, Any] = {}

    def early() -> None:
        try:
            outcome["status"] = session.get(server.resource_url, timeout=10).status_code
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    try:
        assert session.get(server.resource_url, timeout=10).status_code == 200
        thread = threading.Thread(target=early, name="routed-before-swap", daemon=True)
        thread.start()
        assert routed.wait(5)
        binding.write(xsuaa_credentials(server, cert_b))
        statuses: list[int] = []
        assert wait_until(
            lambda: cert_of(auth) == cert_b.thumbprint,
            lambda: statuses.append(session.get(server.resource_url, timeout=10).status_code),
        )
        assert set(statuses) == {200}
        assert adapter.certificate.thumbprint == cert_b.thumbprint  # the adapter swapped
        swapped.set()
        thread.join(5)
    finally:
        swapped.set()
        session.close()
        auth.close()
    assert outcome == {"status": 200}


def test_in_flight_async_request_finishes_across_a_rotation(
    tmp_path: Path, server: TokenServer, cert_a: Credential, cert_b: Credential
) -> None:
    server.cert_bound = True
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, cert_a))
    auth = mhttpx.MtlsOAuth2.from_binding(binding.path, verify=server.ca_pem, check_interval=FAST)

    async def main() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(
            auth=auth, transport=auth.async_transport(), timeout=10
        ) as client:
            assert (await client.get(server.resource_url)).status_code == 200
            server.inject(Fault.delay(0.5), path="/resource")
            slow = asyncio.ensure_future(client.get(server.resource_url))
            deadline = loop.time() + DEADLINE
            while server.pending_faults and loop.time() < deadline:
                await asyncio.sleep(0.01)
            await loop.run_in_executor(None, binding.write, xsuaa_credentials(server, cert_b))
            statuses = []
            while cert_of(auth) != cert_b.thumbprint and loop.time() < deadline:
                await asyncio.sleep(0.02)
                statuses.append((await client.get(server.resource_url)).status_code)
            assert not slow.done()
            first = (await slow).status_code
        await auth.aclose()
        return first, statuses

    slow_status, statuses = asyncio.run(main())
    assert slow_status == 200
    assert set(statuses) == {200}
    assert cert_of(auth) == cert_b.thumbprint
    resources = server.resource_requests
    assert resources[-1].thumbprint == cert_a.thumbprint
    assert resources[-1].status == 200
    assert resources[-2].thumbprint == cert_b.thumbprint


@pytest.mark.parametrize("library", ["requests", "httpx", "httpx-async"])
def test_tls_handshake_rejection_at_the_token_endpoint_forces_a_re_read(
    library: str, tmp_path: Path, pki: PKI, server: TokenServer, cert_a: Credential
) -> None:
    """The token endpoint refuses the certificate in the handshake (its CA is not trusted
    any more): the binding is re-read at once, not after check_interval."""
    distrusted = pki.untrusted_client(COMMON_NAME)  # same subject, CA the server rejects
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, distrusted))
    options = {"verify": server.ca_pem, "check_interval": 5.0}
    if library == "httpx-async":
        auth = mhttpx.MtlsOAuth2.from_binding(binding.path, **options)
        binding.write(xsuaa_credentials(server, cert_a))

        async def main() -> int:
            async with httpx.AsyncClient(
                auth=auth, transport=auth.async_transport(), timeout=10
            ) as client:
                status = (await client.get(server.resource_url)).status_code
            await auth.aclose()
            return status

        assert asyncio.run(main()) == 200
    else:
        get, auth, close = sync_client(library, binding.path, server, **options)
        binding.write(xsuaa_credentials(server, cert_a))
        try:
            assert get() == 200
        finally:
            close()
    assert cert_of(auth) == cert_a.thumbprint
    assert server.handshake_failures  # the first attempt was refused in the handshake
    assert [t.thumbprint for t in server.token_requests] == [cert_a.thumbprint]
    assert server.resource_requests[-1].thumbprint == cert_a.thumbprint


def test_rejected_certificate_without_a_new_one_is_still_an_error(
    tmp_path: Path, server: TokenServer, cert_a: Credential
) -> None:
    """The forced re-check finds nothing new: the caller hears of the rejection."""
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(server, cert_a))
    get, auth, close = sync_client("requests", binding.path, server, check_interval=5.0)
    try:
        assert get() == 200
        server.revoke_certificate(cert_a.thumbprint)
        with pytest.raises(TokenError, match="invalid_client"):
            get()
    finally:
        close()
    assert cert_of(auth) == cert_a.thumbprint
