"""Connection pools sized for concurrency: the adapters and transports take the pool options.

`auth.adapter(pool_maxsize=N, pool_block=True)` (requests) and
`auth.transport(limits=...)` / `auth.async_transport(limits=...)` (httpx)
reach the HTTP library's pool. requests: 24 threads through a pool of 4 open at
most 4 connections to the resource, however many requests they send (its
default, 10 connections without blocking, would let every thread open its
own). httpx: limits that keep no idle connection make every request open its
own (its default keeps 20), which only the options can cause. (httpx's pool
with fewer connections than concurrent callers sometimes fails requests with
"Server disconnected" on a loaded machine, with or without this library: not
a setting to test with.)
"""

from __future__ import annotations

from typing import Any

import pytest
from clients import Client

from mtls_auth.testing import TokenServer

THREADS = 24
POOL = 4
REQUESTS = 96
HTTPX_TASKS = 8
HTTPX_REQUESTS = 32


def _presenter(client: Client, auth: Any) -> Any:
    if client.name == "requests":
        return client.presenter(auth, pool_connections=1, pool_maxsize=POOL, pool_block=True)
    import httpx

    limits = httpx.Limits(max_connections=HTTPX_TASKS, max_keepalive_connections=0)
    return client.presenter(auth, limits=limits)


def test_pool_options_reach_the_http_librarys_pool(
    client: Client, mtls_server: TokenServer
) -> None:
    auth = client.auth()
    assert client.fetch_token(auth) is not None  # the token first: its connection is apart
    before = mtls_server.connections_accepted
    presenter = _presenter(client, auth)
    if client.name == "requests":
        assert presenter._pool_maxsize == POOL
    session = client.adopt(_raw(client, auth, presenter), auth)
    count, concurrency = (
        (REQUESTS, THREADS) if client.name == "requests" else (HTTPX_REQUESTS, HTTPX_TASKS)
    )
    results = session.call_many([mtls_server.resource_url] * count, concurrency=concurrency)
    assert [r.unwrap() for r in results] == [200] * count
    opened = mtls_server.connections_accepted - before
    if client.name == "requests":
        assert 1 <= opened <= POOL  # threads waited for the 4 pooled connections
    else:
        assert opened == count  # no connection kept: each request made its own


def _raw(client: Client, auth: Any, presenter: Any) -> Any:
    if client.name == "requests":
        import requests

        session = requests.Session()
        session.auth = auth
        session.mount("https://", presenter)
        return session
    import httpx

    if client.is_async:
        return httpx.AsyncClient(auth=auth, transport=presenter, timeout=10)
    return httpx.Client(auth=auth, transport=presenter, timeout=10)


@pytest.mark.parametrize("option", ["pool_block", "max_retries"])
def test_other_adapter_options_reach_requests(option: str, mtls_server: TokenServer) -> None:
    pytest.importorskip("requests")
    from mtls_auth.requests import MtlsOAuth2
    from mtls_auth.testing import PKI

    pki = mtls_server.pki
    assert isinstance(pki, PKI)
    credential = pki.issue_client("pool options")
    auth = MtlsOAuth2(
        mtls_server.token_url,
        "pool-options",
        credential.chain_pem,
        credential.key_pem,
        verify=mtls_server.ca_pem,
    )
    with auth:
        value: Any = True if option == "pool_block" else 3
        adapter = auth.adapter(**{option: value})
        seen = adapter._pool_block if option == "pool_block" else adapter.max_retries.total
        assert seen == value
