"""The token store fixtures, a pytest plugin: ``pytest_plugins = ["store_fixtures"]``.

- ``redis_server`` (module): a real ``redis-server`` on loopback
  (`mtls_auth.testing.RedisServer`); the tests that need it skip, saying why,
  only where neither the server nor redis-py can be had (``.ci/run`` installs
  both). ``MTLS_AUTH_TEST_REDIS_SERVER=/path/to/valkey-server`` runs them
  against another server (Valkey, an older Redis). ``redis_store_url`` gives
  its URL with the server running and its database emptied (a test before may
  have stopped or paused it).
- ``store_dir``: a path under ``tmp_path`` that does not exist yet (the file
  store creates it, mode 0700).
- ``store_url``: parametrized over both stores, ids ``file`` and ``redis``;
  ``raw_store``: a `store_harness.RawStore` view of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_harness import STORE_KINDS, RawStore, redis_client, redis_missing

from mtls_auth.testing import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 and a free port, for the tests of one module."""
    executable = os.environ.get("MTLS_AUTH_TEST_REDIS_SERVER") or None
    missing = redis_missing() if executable is None else None
    if missing is not None:
        pytest.skip(missing)
    with RedisServer(executable) as server:
        yield server


@pytest.fixture
def redis_store_url(redis_server: RedisServer) -> Iterator[str]:
    """`redis_server`'s URL, the server running and its database empty for this test."""
    redis_server.resume()
    redis_server.start()
    client = redis_client(redis_server)
    try:
        client.flushall()
        yield redis_server.url
    finally:
        client.close()


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    """A store directory path that does not exist yet (the file store creates it)."""
    return str(tmp_path / "token-store")


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, store_dir: str) -> str:
    """The ``token_store=`` URL of each store: ``file:///...`` and ``redis://...``."""
    if request.param == "file":
        return "file://" + store_dir
    url: str = request.getfixturevalue("redis_store_url")
    return url


@pytest.fixture
def raw_store(store_url: str) -> Iterator[RawStore]:
    """A `RawStore` view of `store_url`'s store."""
    raw = RawStore(store_url)
    try:
        yield raw
    finally:
        raw.close()
