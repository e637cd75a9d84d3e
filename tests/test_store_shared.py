"""The token store below the in-process cache, through requests, httpx sync and httpx async.

Each auth object made here stands for a process: two of them share nothing
but the store (each has its own client, cache, single flight and connections),
as two workers do; ``test_store_fleet.py`` runs real processes. The stores are
real (a directory, a real redis-server), and so is the token server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from clients import Client
from frames import leaks
from store_harness import CallLog, RawStore, entry_name

from mtls_auth import ClientCertificate, TokenError
from mtls_auth._store import RETRY_AFTER
from mtls_auth._store_crypto import StoreKeys
from mtls_auth._token import Token
from mtls_auth.stores import FileTokenStore
from mtls_auth.testing import PKI, Credential, FakeClock, Fault, TokenServer, xsuaa_service_key
from mtls_auth.testing.plugin import CLIENT_ID

#: The store fixtures (redis_server, store_dir, store_url, raw_store...).
pytest_plugins = ["store_fixtures"]

CALLBACK = "https://app.example.com/callback"


@pytest.fixture
def file_store_url(store_dir: str) -> str:
    """The file store, for behaviour that does not depend on the kind of store."""
    return "file://" + store_dir


@pytest.fixture
def file_raw_store(file_store_url: str) -> Iterator[RawStore]:
    raw = RawStore(file_store_url)
    yield raw
    raw.close()


def provider(client: Client, server: TokenServer, **options: Any) -> Any:
    """An auth on the provider's tenant token URL, so that `for_tenant` can route."""
    return client.auth(token_url=server.tenant_token_url("provider"), **options)


def test_a_second_process_takes_the_token_from_the_store(
    client: Client, mtls_server: TokenServer, store_url: str
) -> None:
    first = client.auth(token_store=store_url)
    second = client.auth(token_store=store_url)  # another process: its own cache and pools
    assert client.call(first).unwrap() == 200
    assert client.call(second).unwrap() == 200
    assert mtls_server.token_request_count == 1
    assert {r.token_index for r in mtls_server.resource_requests} == {1}


def test_tenant_and_user_tokens_are_shared_per_tenant_and_user(
    client: Client,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
    file_store_url: str,
) -> None:
    made = provider(client, mtls_server, token_store=file_store_url)
    binding = {**mtls_xsuaa_binding, "certurl": mtls_server.tenant_url("provider")}
    bound = client.from_binding(binding, token_store=file_store_url, **mtls_auth_kwargs)
    assertion = mtls_server.mint_user_token("carol", subdomain="customer-a")
    for auth in (made, bound):
        for derived in (
            auth.for_tenant("customer-a"),
            auth.for_tenant("customer-b"),
            auth.for_user(assertion),
        ):
            assert client.call(derived).unwrap() == 200
    # One token per tenant and user, for both "processes": derived auths share the store.
    requests = mtls_server.token_requests
    assert len(requests) == 3
    assert sorted((r.subdomain, r.grant_type) for r in requests) == [
        ("customer-a", "client_credentials"),
        ("customer-a", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("customer-b", "client_credentials"),
    ]


@pytest.mark.mtls_server(jwt_tokens=True)
def test_nothing_readable_goes_into_the_store(
    client: Client,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    store_url: str,
    raw_store: RawStore,
) -> None:
    auth = provider(client, mtls_server, token_store=store_url)
    zone = mtls_server.zone_id_of("customer-z")
    assertion = mtls_server.mint_user_token("alice-in-the-store", subdomain="customer-a")
    for each in (
        auth,
        auth.for_tenant("customer-a"),
        auth.for_tenant(zone_id=zone),
        auth.for_user(assertion),
    ):
        assert client.call(each).unwrap() == 200
    entries = raw_store.entries()
    assert len(entries) == 4
    assert all(re.fullmatch("[0-9a-f]{64}", name) for name in entries)
    everything = raw_store.everything()
    held = b"\0".join(name.encode() + b"\0" + value for name, value in everything.items())
    tokens = list(mtls_server._tokens)
    assert len(tokens) == 4
    readable = [
        CLIENT_ID,
        "customer-a",
        zone,
        "alice-in-the-store",
        mtls_server.token_url,
        mtls_client_certificate.thumbprint,
        *(part for jwt in (*tokens, assertion) for part in jwt.split(".") if len(part) >= 16),
    ]
    assert [word for word in readable if word.encode() in held] == []


def _foreign_entry(pki: PKI, name: str) -> bytes:
    """An entry for `name` sealed with another client's key (a forger without ours)."""
    other = pki.issue_client("another client")
    keys = StoreKeys.derive(ClientCertificate.from_pem(other.chain_pem, other.key_pem))
    forged = Token("forged-token", token_type="bearer", issued_at=0.0, lifetime=3600.0)
    return keys.seal(name, forged, time.time() + 3600)


def test_damaged_entries_are_ignored_logged_without_content_and_replaced(
    client: Client,
    mtls_server: TokenServer,
    mtls_pki: PKI,
    store_url: str,
    raw_store: RawStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tampered, truncated, sealed with another client's key, or another key's entry moved."""
    first = provider(client, mtls_server, token_store=store_url)
    assert client.call(first).unwrap() == 200
    assert client.call(first.for_tenant("customer-a")).unwrap() == 200
    name = entry_name(first)
    (moved,) = (value for key, value in raw_store.entries().items() if key != name)
    caplog.set_level(logging.DEBUG, logger="mtls_auth")
    for damage in ("tampered", "truncated", "foreign", "moved"):
        entry = raw_store.entries()[name]
        if damage == "tampered":
            bad = entry[:30] + bytes([entry[30] ^ 0x01]) + entry[31:]
        elif damage == "truncated":
            bad = entry[:-1]
        elif damage == "foreign":
            bad = _foreign_entry(mtls_pki, name)
        else:  # the tenant's entry, sealed by us, copied under this key
            bad = moved
        raw_store.put(name, bad)
        before = mtls_server.token_request_count
        caplog.clear()

        second = provider(client, mtls_server, token_store=store_url)
        assert client.call(second).unwrap() == 200, damage
        assert mtls_server.token_request_count == before + 1, damage  # not taken: fetched
        messages = [r.getMessage() for r in caplog.records]
        assert any("ignored an entry of the token store" in m for m in messages), damage
        shown = "\n".join(messages)
        assert bad.hex()[:32] not in shown
        assert entry.hex()[:32] not in shown
        assert raw_store.entries()[name] != bad, damage  # the new holder replaced it

        third = provider(client, mtls_server, token_store=store_url)
        assert client.call(third).unwrap() == 200
        assert mtls_server.token_request_count == before + 1, damage  # it took the new one


@pytest.mark.mtls_server(token_lifetime=600)
def test_an_entry_is_shared_until_the_refresh_point_only(
    client: Client, mtls_server: TokenServer, file_store_url: str, mtls_clock: FakeClock
) -> None:
    first = client.auth(token_store=file_store_url)
    assert client.call(first).unwrap() == 200
    mtls_clock.advance(545)  # past the refresh point (600 - 60 s): stale, still valid
    second = client.auth(token_store=file_store_url)
    assert client.call(second).unwrap() == 200
    assert mtls_server.token_request_count == 2  # it did not take a token due for refresh
    # The first process refreshes its stale token from the store: the second's.
    assert client.call(first).unwrap() == 200
    assert mtls_server.token_request_count == 2
    assert [r.token_index for r in mtls_server.resource_requests] == [1, 2, 2]


def test_a_token_refused_by_the_resource_is_not_taken_again_from_the_store(
    client: Client, mtls_server: TokenServer, file_store_url: str
) -> None:
    first = client.auth(token_store=file_store_url)
    second = client.auth(token_store=file_store_url)
    assert client.call(first).unwrap() == 200
    assert client.call(second).unwrap() == 200
    mtls_server.revoke_all()  # both processes hold a token the resource now refuses
    refused = client.call(first)
    assert (refused.unwrap(), refused.history) == (200, [401])
    assert mtls_server.token_request_count == 2  # a new token, not the store's refused one
    again = client.call(second)
    assert (again.unwrap(), again.history) == (200, [401])
    assert mtls_server.token_request_count == 2  # the second takes the first's new token


def test_the_hot_path_never_touches_the_store(
    client: Client, mtls_server: TokenServer, store_dir: str
) -> None:
    log = CallLog(FileTokenStore(store_dir))
    auth = client.auth(token_store=log)
    with client.session(auth) as session:
        assert session.call().unwrap() == 200
        # A cold fetch: look, lease, look again, fetch, put, release.
        assert log.methods() == ["get", "lease", "get", "set", "release"]
        for _ in range(20):
            assert session.call().unwrap() == 200
    assert len(log.calls) == 5


def test_a_user_session_stays_in_its_process(
    client: Client,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    mtls_clock: FakeClock,
    store_dir: str,
) -> None:
    """A login's tokens renew with this process's refresh token: never shared."""
    log = CallLog(FileTokenStore(store_dir))
    binding = xsuaa_service_key(
        mtls_server, mtls_client_certificate, CLIENT_ID, subdomain="provider"
    )
    auth = client.from_binding(
        binding, verify=mtls_server.ca_pem, clock=mtls_clock, token_store=log
    )
    request = auth.authorization_request(CALLBACK, scope="openid")
    user = client.track(auth.for_authorization_code(request, mtls_server.login(request.url)))
    assert client.call(user).unwrap() == 200
    mtls_clock.advance(mtls_server.token_lifetime)  # renewed with the refresh token
    assert client.call(user).unwrap() == 200
    assert [r.grant_type for r in mtls_server.token_requests] == [
        "authorization_code",
        "refresh_token",
    ]
    assert log.calls == []


def test_a_store_that_fails_never_fails_a_request(
    client: Client,
    mtls_server: TokenServer,
    store_dir: str,
    mtls_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The directory vanishes: one WARNING, requests go on; it is back: one INFO."""
    auth = provider(client, mtls_server, token_store="file://" + store_dir)
    assert client.call(auth).unwrap() == 200
    caplog.set_level(logging.INFO, logger="mtls_auth")
    shutil.rmtree(store_dir)
    for tenant in ("customer-a", "customer-b", "customer-c"):
        assert client.call(auth.for_tenant(tenant)).unwrap() == 200
    assert not os.path.exists(store_dir)  # nothing recreated it behind our back
    os.mkdir(store_dir, 0o700)
    mtls_clock.advance(RETRY_AFTER + 1)
    assert client.call(auth.for_tenant("customer-d")).unwrap() == 200
    store_logs = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name.startswith("mtls_auth") and r.levelno >= logging.INFO and "token store" in r.msg
    ]
    assert [level for level, _ in store_logs] == ["WARNING", "INFO"], store_logs
    assert "FileTokenStore" in store_logs[0][1]
    assert "answers again" in store_logs[1][1]
    assert mtls_server.token_request_count == 5
    assert "customer-d" not in str(os.listdir(store_dir))  # the entry is there, by digest
    assert len(os.listdir(store_dir)) >= 1


def test_a_failed_fetch_behind_the_store_leaves_no_token_or_entry_in_frames(
    client: Client, mtls_server: TokenServer, file_store_url: str, file_raw_store: RawStore
) -> None:
    auth = client.auth(token_store=file_store_url)
    assert client.call(auth).unwrap() == 200
    entry = file_raw_store.entries()[entry_name(auth)]
    (token,) = list(mtls_server._tokens)
    mtls_server.revoke_all()
    mtls_server.inject(Fault.status(400))  # the refresh behind the 401 fails
    result = client.call(auth)
    assert isinstance(result.error, TokenError)
    assert leaks(result.error, [token, entry.decode("latin-1")]) == []


@pytest.mark.parametrize("client", ["httpx-async"], indirect=True)
def test_waiting_for_another_process_s_lease_never_blocks_the_event_loop(
    client: Client, mtls_server: TokenServer, store_dir: str
) -> None:
    store = FileTokenStore(store_dir)
    auth = client.auth(token_store=store)
    name = entry_name(auth)
    assert store.lease(name, "another-process", 10.0)  # a live holder elsewhere
    session = client.session(auth)

    async def main() -> tuple[int, float, float]:
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.005)
                lags.append(loop.time() - before - 0.005)

        ticking = asyncio.ensure_future(ticker())
        loop.call_later(0.3, store.release, name, "another-process")
        started = loop.time()
        response = await session.raw.get(mtls_server.resource_url)
        elapsed = loop.time() - started
        done.set()
        await ticking
        return response.status_code, elapsed, max(lags)

    status, elapsed, lag = session.run(main())
    assert status == 200
    assert elapsed >= 0.3  # it waited for the holder...
    assert lag < 0.1  # ...without blocking the loop
    assert mtls_server.token_request_count == 1


def test_under_trio_the_lease_wait_and_the_store_work_the_same(
    mtls_server: TokenServer, mtls_client_certificate: Credential, store_dir: str
) -> None:
    trio = pytest.importorskip("trio")
    import mtls_auth.httpx as mhttpx

    store = FileTokenStore(store_dir)
    first, second = (
        mhttpx.MtlsOAuth2(
            mtls_server.token_url,
            CLIENT_ID,
            mtls_client_certificate.chain_pem,
            mtls_client_certificate.key_pem,
            verify=mtls_server.ca_pem,
            token_store=store,
        )
        for _ in range(2)
    )
    name = entry_name(first)
    assert store.lease(name, "another-process", 10.0)
    waited: list[float] = []

    async def main() -> None:
        async def release_later() -> None:
            await trio.sleep(0.2)
            store.release(name, "another-process")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            started = trio.current_time()
            await first.atoken_info()  # waits out the lease on trio, then fetches
            waited.append(trio.current_time() - started)
        await second.atoken_info()  # another process: from the store
        await first.aclose()
        await second.aclose()

    trio.run(main)
    assert waited[0] >= 0.2
    assert mtls_server.token_request_count == 1
