"""Certificates that rotate under a running client: files and Kubernetes directories.

A binding on disk holds certificate A (the kit's client certificate); the tests
replace it with B (``rotated_certificate``: same subject, new key) and check
what the clients do: the kubelet's ``..data`` symlink swap is noticed and
followed; a broken binding keeps A (with a WARNING that shows no key) until a
valid one arrives; tokens bound to A are dropped at once; a request in flight
during the swap finishes on A's connection; a certificate the token endpoint
refuses in the handshake forces the binding to be re-read. The tests that run
for several clients use the shared `client` fixture, presenting the auth's own
certificate through its adapter or transport (`rotating.follow`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import urllib3
from clients import Client
from rotating import (
    DEADLINE,
    FAST,
    KubeletDirectory,
    ServiceKeyFile,
    cert_of,
    follow,
    make_binding,
    wait_until,
    xsuaa_credentials,
)

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import ClientCertificate, TokenError
from mtls_auth._sources import BindingSource
from mtls_auth.testing import (
    PKI,
    Credential,
    Fault,
    TokenServer,
    rotate_kubernetes_binding,
    write_kubernetes_binding,
)

Binding = Any  # rotating.ServiceKeyFile | rotating.KubeletDirectory


# -- 2. the Kubernetes ..data symlink swap ----------------------------------------------------


def test_kubernetes_data_symlink_swap_is_detected(
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    kube = KubeletDirectory(tmp_path / "bindings" / "xsuaa")
    kube.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    source = BindingSource.from_input(kube.path)
    first = source.read()
    assert (
        ClientCertificate.from_pem(first.certificate, first.key).thumbprint
        == mtls_client_certificate.thumbprint
    )
    assert not source.changed()
    assert not source.changed()  # a stat is not a change
    links = kube.visible_links()
    data_before = os.readlink(kube.path / "..data")

    kube.write(xsuaa_credentials(mtls_server, rotated_certificate))

    # The kubelet never touches the visible names: only ..data moved.
    assert kube.visible_links() == links
    assert os.readlink(kube.path / "..data") != data_before
    assert source.changed()
    second = source.read()
    assert ClientCertificate.from_pem(second.certificate, second.key).thumbprint == (
        rotated_certificate.thumbprint
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
    ("client", "layout"),
    [("requests", name) for name in KUBERNETES_LAYOUTS] + [("httpx-sync", "metadata-text")],
    indirect=["client"],
)
def test_kubernetes_swap_is_followed_by_a_running_client(
    client: Client,
    layout: str,
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    options, inside = KUBERNETES_LAYOUTS[layout]
    directory = tmp_path / "bindings" / "xsuaa"
    write_kubernetes_binding(
        directory, xsuaa_credentials(mtls_server, mtls_client_certificate), **options
    )
    path = directory / inside if inside else directory
    get, auth = follow(client, path, mtls_server)
    assert get() == 200
    assert cert_of(auth) == mtls_client_certificate.thumbprint
    rotate_kubernetes_binding(
        directory, xsuaa_credentials(mtls_server, rotated_certificate), **options
    )
    statuses: list[int] = []
    assert wait_until(
        lambda: cert_of(auth) == rotated_certificate.thumbprint, lambda: statuses.append(get())
    )
    assert set(statuses) == {200}
    assert get() == 200
    assert mtls_server.resource_requests[-1].thumbprint == rotated_certificate.thumbprint
    assert mtls_server.token_requests[-1].thumbprint == rotated_certificate.thumbprint


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
@pytest.mark.parametrize("client", ["requests"], indirect=True)
def test_broken_binding_keeps_the_old_certificate_until_a_valid_one_arrives(
    client: Client,
    kind: str,
    how: str,
    tmp_path: Path,
    mtls_pki: PKI,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mtls_auth")
    binding = make_binding(kind, tmp_path)
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    get, auth = follow(client, binding.path, mtls_server)
    assert get() == 200
    secret = broken_write(binding, how, mtls_server, rotated_certificate, mtls_pki)
    statuses: list[int] = []

    def complained() -> bool:
        return any(
            r.levelno == logging.WARNING and "keeping the current one" in r.getMessage()
            for r in caplog.records
        )

    assert wait_until(complained, lambda: statuses.append(get())), caplog.text
    assert set(statuses) == {200}
    assert cert_of(auth) == mtls_client_certificate.thumbprint
    assert mtls_server.resource_requests[-1].thumbprint == mtls_client_certificate.thumbprint
    for leaked in (
        key_body(secret),
        key_body(mtls_client_certificate.key_pem),
        key_body(rotated_certificate.key_pem),
    ):
        assert leaked not in caplog.text

    # A later valid write is picked up.
    binding.write(xsuaa_credentials(mtls_server, rotated_certificate))
    assert wait_until(
        lambda: cert_of(auth) == rotated_certificate.thumbprint, lambda: statuses.append(get())
    )
    assert set(statuses) == {200}
    assert get() == 200
    assert mtls_server.resource_requests[-1].thumbprint == rotated_certificate.thumbprint
    assert mtls_server.token_requests[-1].thumbprint == rotated_certificate.thumbprint


# -- 4. tokens of the old certificate are dropped -------------------------------------------------


def test_tokens_of_the_old_certificate_are_dropped_at_rotation(
    client: Client,
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    mtls_server.token_lifetime = 3600  # the old token has lots of lifetime left
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    get, auth = follow(client, binding.path, mtls_server)
    statuses = [get(), get()]
    binding.write(xsuaa_credentials(mtls_server, rotated_certificate))
    wait_until(
        lambda: cert_of(auth) == rotated_certificate.thumbprint, lambda: statuses.append(get())
    )
    statuses.append(get())

    assert set(statuses) == {200}
    assert cert_of(auth) == rotated_certificate.thumbprint
    tokens = mtls_server.token_requests
    # One token for A, then exactly one for B, requested with B's certificate.
    assert [t.thumbprint for t in tokens] == [
        mtls_client_certificate.thumbprint,
        rotated_certificate.thumbprint,
    ]
    # A's token had almost an hour left. (The server's clock is the test's
    # mtls_clock, which nothing moves here: B's token cannot be due to expiry.)
    assert tokens[1].time - tokens[0].time < 60
    resources = mtls_server.resource_requests
    first_b = next(
        i for i, r in enumerate(resources) if r.thumbprint == rotated_certificate.thumbprint
    )
    assert all(
        r.token_index == 1 and r.thumbprint == mtls_client_certificate.thumbprint
        for r in resources[:first_b]
    )
    # The very request that noticed the swap already used the new token; A's
    # token was never sent again.
    assert all(r.token_index == 2 for r in resources[first_b:])
    assert all(r.thumbprint == rotated_certificate.thumbprint for r in resources[first_b:])


# -- 7. requests in flight finish across a rotation ---------------------------------------------


@pytest.mark.parametrize("client", ["requests", "httpx-sync"], indirect=True)
def test_in_flight_request_finishes_across_a_rotation(
    client: Client,
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    mtls_server.cert_bound = True
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    get, auth = follow(client, binding.path, mtls_server)
    outcome: dict[str, Any] = {}

    def slow() -> None:
        try:
            outcome["status"] = get()
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    assert get() == 200  # token and a pooled connection with A
    mtls_server.inject(Fault.delay(30), path="/resource")  # held until released
    in_flight = threading.Thread(target=slow, daemon=True)
    in_flight.start()
    assert wait_until(lambda: mtls_server.pending_faults == 0)  # the server holds it now
    binding.write(xsuaa_credentials(mtls_server, rotated_certificate))
    statuses: list[int] = []
    # Another thread, same session / client: the swap happens under the slow request.
    assert wait_until(
        lambda: cert_of(auth) == rotated_certificate.thumbprint, lambda: statuses.append(get())
    )
    assert set(statuses) == {200}
    assert in_flight.is_alive()  # still held at the server, across the swap
    mtls_server.release_delays()
    in_flight.join(5)
    assert not in_flight.is_alive()
    assert outcome == {"status": 200}
    resources = mtls_server.resource_requests
    # The slow request finished last, on A's connection, with A's token.
    assert resources[-1].thumbprint == mtls_client_certificate.thumbprint
    assert resources[-1].status == 200
    assert resources[-2].thumbprint == rotated_certificate.thumbprint


#: urllib3 < 1.26.16 (and early 2.0) close every pool on PoolManager.clear()
#: (later releases stopped that); mtls-auth requires urllib3 >= 1.26.16 and no
#: longer clears the replaced PoolManager.
URLLIB3_CLOSES_CLEARED_POOLS = (
    getattr(urllib3.PoolManager().pools, "dispose_func", None) is not None
)


def test_request_routed_to_a_pool_before_the_adapter_swap_still_succeeds(
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    """One Session shared by two threads: the swap lands between pool lookup and send."""
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    auth = mrequests.MtlsOAuth2.from_binding(
        binding.path, verify=mtls_server.ca_pem, check_interval=FAST
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
            outcome["status"] = session.get(mtls_server.resource_url, timeout=10).status_code
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    try:
        assert session.get(mtls_server.resource_url, timeout=10).status_code == 200
        thread = threading.Thread(target=early, name="routed-before-swap", daemon=True)
        thread.start()
        assert routed.wait(5)
        binding.write(xsuaa_credentials(mtls_server, rotated_certificate))
        statuses: list[int] = []
        assert wait_until(
            lambda: cert_of(auth) == rotated_certificate.thumbprint,
            lambda: statuses.append(session.get(mtls_server.resource_url, timeout=10).status_code),
        )
        assert set(statuses) == {200}
        assert (
            adapter.certificate.thumbprint == rotated_certificate.thumbprint
        )  # the adapter swapped
        swapped.set()
        thread.join(5)
    finally:
        swapped.set()
        session.close()
        auth.close()
    assert outcome == {"status": 200}


def test_in_flight_async_request_finishes_across_a_rotation(
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    rotated_certificate: Credential,
) -> None:
    mtls_server.cert_bound = True
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    auth = mhttpx.MtlsOAuth2.from_binding(
        binding.path, verify=mtls_server.ca_pem, check_interval=FAST
    )

    async def main() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(
            auth=auth, transport=auth.async_transport(), timeout=10
        ) as client:
            assert (await client.get(mtls_server.resource_url)).status_code == 200
            mtls_server.inject(Fault.delay(30), path="/resource")  # held until released
            slow = asyncio.ensure_future(client.get(mtls_server.resource_url))
            deadline = loop.time() + DEADLINE
            while mtls_server.pending_faults and loop.time() < deadline:
                await asyncio.sleep(0.01)
            await loop.run_in_executor(
                None, binding.write, xsuaa_credentials(mtls_server, rotated_certificate)
            )
            statuses = []
            while cert_of(auth) != rotated_certificate.thumbprint and loop.time() < deadline:
                await asyncio.sleep(0.02)
                statuses.append((await client.get(mtls_server.resource_url)).status_code)
            assert not slow.done()
            mtls_server.release_delays()
            first = (await slow).status_code
        await auth.aclose()
        return first, statuses

    slow_status, statuses = asyncio.run(main())
    assert slow_status == 200
    assert set(statuses) == {200}
    assert cert_of(auth) == rotated_certificate.thumbprint
    resources = mtls_server.resource_requests
    assert resources[-1].thumbprint == mtls_client_certificate.thumbprint
    assert resources[-1].status == 200
    assert resources[-2].thumbprint == rotated_certificate.thumbprint


def test_tls_handshake_rejection_at_the_token_endpoint_forces_a_re_read(
    client: Client,
    tmp_path: Path,
    mtls_pki: PKI,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    client_common_name: str,
) -> None:
    """The token endpoint refuses the certificate in the handshake (its CA is not trusted
    any more): the binding is re-read at once, not after check_interval."""
    # Same subject, CA the server rejects.
    distrusted = mtls_pki.untrusted_client(client_common_name)
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, distrusted))
    get, auth = follow(client, binding.path, mtls_server, check_interval=5.0)
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    assert get() == 200
    assert cert_of(auth) == mtls_client_certificate.thumbprint
    assert mtls_server.handshake_failures  # the first attempt was refused in the handshake
    assert [t.thumbprint for t in mtls_server.token_requests] == [
        mtls_client_certificate.thumbprint
    ]
    assert mtls_server.resource_requests[-1].thumbprint == mtls_client_certificate.thumbprint


@pytest.mark.parametrize("client", ["requests"], indirect=True)
def test_rejected_certificate_without_a_new_one_is_still_an_error(
    client: Client,
    tmp_path: Path,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
) -> None:
    """The forced re-check finds nothing new: the caller hears of the rejection."""
    binding = ServiceKeyFile(tmp_path / "service-key.json")
    binding.write(xsuaa_credentials(mtls_server, mtls_client_certificate))
    get, auth = follow(client, binding.path, mtls_server, check_interval=5.0)
    assert get() == 200
    mtls_server.revoke_certificate(mtls_client_certificate.thumbprint)
    with pytest.raises(TokenError, match="invalid_client"):
        get()
    assert cert_of(auth) == mtls_client_certificate.thumbprint
