"""`RedisTokenStore` against a real redis-server on loopback: commands, URLs, fork, outages.

The store's four operations as Redis sees them (``PX`` lifetimes, ``NX``
leases, compare-and-delete release), its URL checks (a password never shows),
a forked worker opening its own connections, and the fleet's promise that a
store that stops or hangs never fails a request: through requests, httpx sync
and httpx async, with one WARNING when it goes and one INFO when it is back.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

import pytest
from clients import Client
from frames import leaks
from store_harness import fork_workers, redis_client

from mtls_auth import TokenStoreError
from mtls_auth._store import RETRY_AFTER
from mtls_auth.stores import RedisTokenStore, open_store
from mtls_auth.testing import FakeClock, RedisServer, TokenServer

#: The store fixtures (redis_server, redis_store_url, ...).
pytest_plugins = ["store_fixtures"]

KEY = "ab" * 32


@pytest.fixture
def store(redis_store_url: str) -> Any:
    made = RedisTokenStore(redis_store_url)
    yield made
    made.close()


def test_entries_and_leases_are_redis_keys_with_their_lifetimes(
    store: RedisTokenStore, redis_server: RedisServer
) -> None:
    raw = redis_client(redis_server)
    assert store.get(KEY) is None
    store.set(KEY, b"\x01sealed", 30.0)
    assert store.get(KEY) == b"\x01sealed"
    assert 29_000 < raw.pttl("mtls-auth:tok:" + KEY) <= 30_000
    assert store.lease(KEY, "holder-a", 2.5)
    assert not store.lease(KEY, "holder-b", 2.5)  # NX: one holder at a time
    assert raw.get("mtls-auth:lease:" + KEY) == b"holder-a"
    assert 2_000 < raw.pttl("mtls-auth:lease:" + KEY) <= 2_500
    assert store.get(KEY) == b"\x01sealed"  # lease and entry are two keys
    store.release(KEY, "holder-b")  # not the holder: nothing happens
    assert raw.get("mtls-auth:lease:" + KEY) == b"holder-a"
    store.release(KEY, "holder-a")
    assert raw.get("mtls-auth:lease:" + KEY) is None
    assert store.lease(KEY, "holder-b", 2.5)
    raw.close()


def test_a_lease_that_expired_and_changed_hands_is_not_released_by_its_first_holder(
    store: RedisTokenStore, redis_server: RedisServer
) -> None:
    raw = redis_client(redis_server)
    assert store.lease(KEY, "slow-holder", 0.05)
    raw.set("mtls-auth:lease:" + KEY, "next-holder", px=5_000)  # as if it expired, then retaken
    store.release(KEY, "slow-holder")
    assert raw.get("mtls-auth:lease:" + KEY) == b"next-holder"
    raw.close()


def test_a_prefix_keeps_applications_apart(redis_store_url: str) -> None:
    one = RedisTokenStore(redis_store_url, prefix="app-one:")
    two = RedisTokenStore(redis_store_url, prefix="app-two:")
    one.set(KEY, b"one", 10)
    assert two.get(KEY) is None
    assert two.lease(KEY, "x", 1)
    assert one.lease(KEY, "y", 1)
    one.close()
    two.close()


def test_a_password_in_the_url_works_and_never_shows(redis_server: RedisServer) -> None:
    with RedisServer(redis_server.executable, password="hunter2-redis-secret") as locked:
        store = open_store(locked.url)
        store.set(KEY, b"v", 5)
        assert store.get(KEY) == b"v"
        assert "hunter2" not in repr(store)
        assert (
            repr(store)
            == f"<RedisTokenStore redis://127.0.0.1:{locked.port}/0 prefix='mtls-auth:'>"
        )
        with pytest.raises(TypeError, match="cannot be pickled"):
            store.__reduce__()
        store.close()


_BAD_URLS = [
    ("redis://:hunter2@", "names no host"),
    ("redis://:hunter2@cache:notaport/0", "cannot be parsed"),
    ("redis://:hunter2@cache:6379/db-one", "database number"),
    ("rediss://:hunter2@cache:6379/0 extra", "spaces or control"),
    ("redis:/:hunter2@", "names no host"),
    ("rediss://:hunter2@cache:6379/0?ssl_cert_reqs=none", "not accepted"),
    ("rediss://:hunter2@cache/0?ssl_check_hostname=false", "not accepted"),
    ("redis://:hunter2@cache/0?socket_timeout=60", "not accepted"),
    ("redis://:hunter2@cache/0?sockettimeout=1", "not accepted"),
]


@pytest.mark.parametrize(
    ("make", "url", "message"),
    [
        *[("open_store", url, message) for url, message in _BAD_URLS],
        ("open_store", "memcached://:hunter2@cache", "not known"),
        *[("RedisTokenStore", url, message) for url, message in _BAD_URLS],
    ],
)
def test_a_bad_url_fails_at_once_without_showing_its_password(
    make: str, url: str, message: str
) -> None:
    with pytest.raises(TokenStoreError, match=message) as caught:
        open_store(url) if make == "open_store" else RedisTokenStore(url)
    assert "hunter2" not in str(caught.value)
    assert leaks(caught.value, ["hunter2"]) == []  # nor in any frame's locals


def test_tls_to_redis_verifies_the_chain_and_the_host_name() -> None:
    store = RedisTokenStore("rediss://:hunter2@cache.example:6380/0?ssl_ca_certs=/etc/ca.pem")
    client, _ = store._connection()  # made, not connected: no server is needed
    options = client.connection_pool.connection_kwargs
    assert options["ssl_cert_reqs"] == "required"
    assert options["ssl_check_hostname"] is True
    assert options["ssl_ca_certs"] == "/etc/ca.pem"
    store.close()


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if it were not installed
    with pytest.raises(TokenStoreError, match=r"pip install 'mtls-auth\[redis\]'"):
        RedisTokenStore("redis://127.0.0.1:6379/0")


def test_a_forked_worker_opens_its_own_connections(store: RedisTokenStore) -> None:
    store.set(KEY, b"before the fork", 30)  # the parent's pool is open
    parent_client = store._client
    assert parent_client is not None

    def child(index: int, go: Callable[[], None]) -> dict[str, Any]:
        go()
        dropped = store._client is None
        value = store.get(KEY)
        return {"dropped": dropped, "value": value.decode() if value else None}

    assert fork_workers(1, child) == [{"dropped": True, "value": "before the fork"}]
    assert store._client is parent_client  # the parent's own pool is untouched
    assert store.get(KEY) == b"before the fork"


def _provider(client: Client, server: TokenServer, **options: Any) -> Any:
    return client.auth(token_url=server.tenant_token_url("provider"), **options)


def _store_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.name == "mtls_auth._store" and r.levelno >= logging.INFO
    ]


def test_redis_stopped_mid_run_requests_keep_succeeding(
    client: Client,
    mtls_server: TokenServer,
    redis_server: RedisServer,
    redis_store_url: str,
    mtls_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = _provider(client, mtls_server, token_store=redis_store_url)
    other = _provider(client, mtls_server, token_store=redis_store_url)  # another process
    assert client.call(auth).unwrap() == 200
    assert client.call(other).unwrap() == 200
    assert mtls_server.token_request_count == 1
    caplog.set_level(logging.INFO, logger="mtls_auth")

    redis_server.stop()
    for tenant in ("customer-a", "customer-b", "customer-c"):
        assert client.call(auth.for_tenant(tenant)).unwrap() == 200
    assert client.call(auth).unwrap() == 200  # its cached token, as ever
    assert mtls_server.token_request_count == 4
    assert _store_logs(caplog) == [
        "WARNING token store <RedisTokenStore "
        f"redis://127.0.0.1:{redis_server.port}/0 prefix='mtls-auth:'> failed (ConnectionError); "
        "tokens come from this process's cache and the token endpoint until it answers again"
    ]

    redis_server.start()  # back, on the same port
    mtls_clock.advance(RETRY_AFTER + 1)
    assert client.call(auth.for_tenant("customer-d")).unwrap() == 200
    assert len(_store_logs(caplog)) == 2
    assert _store_logs(caplog)[1].startswith("INFO token store <RedisTokenStore")
    assert _store_logs(caplog)[1].endswith("answers again; tokens are shared again")
    # Shared again: the other process takes the new tenant's token from the store.
    assert client.call(other.for_tenant("customer-d")).unwrap() == 200
    assert mtls_server.token_request_count == 5


def test_a_hung_redis_costs_one_timeout_then_is_left_alone(
    client: Client,
    mtls_server: TokenServer,
    redis_server: RedisServer,
    redis_store_url: str,
    mtls_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RedisTokenStore(redis_store_url, timeout=0.2)
    auth = _provider(client, mtls_server, token_store=store)
    assert client.call(auth).unwrap() == 200  # connected
    caplog.set_level(logging.INFO, logger="mtls_auth")
    redis_server.pause()  # SIGSTOP: connections open, no answers
    try:
        started = time.monotonic()
        assert client.call(auth.for_tenant("customer-a")).unwrap() == 200
        first = time.monotonic() - started
        started = time.monotonic()
        assert client.call(auth.for_tenant("customer-b")).unwrap() == 200
        second = time.monotonic() - started
    finally:
        redis_server.resume()
    assert first < 0.2 * 3 + 1.0  # the store's timeout, then the fetch
    assert second < 0.2  # left alone during the outage: no timeout paid again
    assert [line.split(" ", 1)[0] for line in _store_logs(caplog)] == ["WARNING"]
    assert "(TimeoutError)" in _store_logs(caplog)[0]
    mtls_clock.advance(RETRY_AFTER + 1)
    assert client.call(auth.for_tenant("customer-c")).unwrap() == 200
    assert [line.split(" ", 1)[0] for line in _store_logs(caplog)] == ["WARNING", "INFO"]
