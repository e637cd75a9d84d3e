"""n. Connection pools under 256 threads: how many requests open a new mTLS connection.

`threads` threads, released together, share one session (requests) or one
``httpx.Client`` and send `total` GETs to the resource between them, with the
token already cached. The server counts the TCP connections it accepted
meanwhile (`TokenServer.connections_accepted`); each is a full mTLS handshake.
Arms, each with a fresh pool:

``ours, default pool``
    ``auth.adapter()`` (requests: 10 pooled connections, no blocking) /
    ``auth.transport()`` (httpx: 100 connections, 20 kept alive).
``ours, sized pool``
    ``auth.adapter(pool_maxsize=threads)`` /
    ``auth.transport(limits=httpx.Limits(max_connections=threads))``.
``floor, sized pool`` and ``authlib, sized pool``
    A plain ``requests.Session`` with ``HTTPAdapter(pool_maxsize=threads)`` and
    ``cert=`` temp files and a fixed header / ``OAuth2Session`` with that
    adapter; httpx: ``httpx.Client`` / ``OAuth2Client`` with the same limits
    (authlib's client is an httpx2 one when httpx2 is installed: the pool
    semantics are the same).

The token's own connection is made before counting starts (authlib's goes
back to the pool the resource requests use: it may serve one of them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from loopback import Endpoint, LoopbackServer


@contextlib.contextmanager
def _pem_files(endpoint: Endpoint) -> Iterator[tuple[str, str, str]]:
    paths = []
    try:
        for text in (endpoint.cert_pem, endpoint.key_pem, endpoint.ca_pem):
            handle, path = tempfile.mkstemp(suffix=".pem")
            with os.fdopen(handle, "w") as file:
                file.write(text)
            paths.append(path)
        yield paths[0], paths[1], paths[2]
    finally:
        for path in paths:
            os.unlink(path)


def _drive(get: Any, threads: int, total: int) -> tuple[int, float]:
    """`total` GETs from `threads` threads released together: (failures, seconds)."""
    per_thread = total // threads
    failures = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        bad = 0
        for _ in range(per_thread):
            try:
                if get() != 200:
                    bad += 1
            except Exception:  # noqa: BLE001 - counted
                bad += 1
        with lock:
            failures[0] += bad

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join(600)
    return failures[0], time.perf_counter() - start


def _requests_arm(
    arm: str, endpoint: Endpoint, files: tuple[str, str, str], threads: int
) -> tuple[Any, Any]:
    """(get, close) for a requests arm, its token already fetched."""
    import requests
    from requests.adapters import HTTPAdapter

    from mtls_auth.requests import MtlsOAuth2

    url = endpoint.resource_url
    crt, key, ca = files
    if arm.startswith("ours"):
        auth = MtlsOAuth2(
            endpoint.token_url,
            endpoint.client_id,
            endpoint.cert_pem,
            endpoint.key_pem,
            verify=endpoint.ca_pem,
        )
        auth.token_info()
        session = requests.Session()
        session.auth = auth
        sized = arm.endswith("sized pool")
        session.mount("https://", auth.adapter(pool_maxsize=threads) if sized else auth.adapter())

        def close_ours() -> None:
            session.close()
            auth.close()

        return (lambda: session.get(url, timeout=30).status_code), close_ours
    if arm.startswith("floor"):
        answer = requests.post(
            endpoint.token_url,
            data={"grant_type": "client_credentials", "client_id": endpoint.client_id},
            cert=(crt, key),
            verify=ca,
            timeout=10,
        )
        header = {"Authorization": "Bearer " + answer.json()["access_token"]}
        session = requests.Session()
        session.mount("https://", HTTPAdapter(pool_maxsize=threads))
        return (
            lambda: (
                session.get(url, headers=header, cert=(crt, key), verify=ca, timeout=30).status_code
            )
        ), session.close
    from authlib.integrations.requests_client import OAuth2Session

    oauth = OAuth2Session(endpoint.client_id, token_endpoint_auth_method="none")
    oauth.mount("https://", HTTPAdapter(pool_maxsize=threads))
    oauth.cert = (crt, key)
    oauth.fetch_token(endpoint.token_url, grant_type="client_credentials", verify=ca, timeout=10)
    return (lambda: oauth.get(url, verify=ca, timeout=30).status_code), oauth.close


def _httpx_arm(
    arm: str, endpoint: Endpoint, files: tuple[str, str, str], threads: int
) -> tuple[Any, Any]:
    """(get, close) for an httpx arm, its token already fetched."""
    import ssl

    import httpx

    from mtls_auth.httpx import MtlsOAuth2

    url = endpoint.resource_url
    crt, key, ca = files
    limits = httpx.Limits(max_connections=threads)
    if arm.startswith("ours"):
        auth = MtlsOAuth2(
            endpoint.token_url,
            endpoint.client_id,
            endpoint.cert_pem,
            endpoint.key_pem,
            verify=endpoint.ca_pem,
        )
        auth.token_info()
        sized = arm.endswith("sized pool")
        transport = auth.transport(limits=limits) if sized else auth.transport()
        client = httpx.Client(auth=auth, transport=transport, timeout=30)

        def close_ours() -> None:
            client.close()
            auth.close()

        return (lambda: client.get(url).status_code), close_ours
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(crt, key)
    if arm.startswith("floor"):
        plain = httpx.Client(verify=context, limits=limits, timeout=30)
        answer = plain.post(
            endpoint.token_url,
            data={"grant_type": "client_credentials", "client_id": endpoint.client_id},
        )
        header = {"Authorization": "Bearer " + answer.json()["access_token"]}
        return (lambda: plain.get(url, headers=header).status_code), plain.close
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.integrations.httpx_client import OAuth2Client

    oauth = OAuth2Client(
        endpoint.client_id,
        token_endpoint_auth_method="none",
        verify=context,
        limits=limits,
        timeout=30,
    )
    oauth.fetch_token(endpoint.token_url, grant_type="client_credentials")
    return (lambda: oauth.get(url).status_code), oauth.close


def arms() -> list[str]:
    import importlib.util

    names = ["ours, default pool", "ours, sized pool", "floor, sized pool"]
    if importlib.util.find_spec("authlib") is not None:
        names.append("authlib, sized pool")
    return names


def run(server: LoopbackServer, endpoint: Endpoint, *, threads: int, total: int) -> dict[str, Any]:
    """{family: {arm: {requests, new_connections, share, failures, seconds}}}."""
    results: dict[str, Any] = {}
    quiet = logging.getLogger("urllib3.connectionpool")
    level = quiet.level
    # A full pool makes urllib3 log a warning per discarded connection.
    quiet.setLevel(logging.ERROR)
    try:
        with _pem_files(endpoint) as files:
            for family in ("requests", "httpx"):
                build = _requests_arm if family == "requests" else _httpx_arm
                for arm in arms():
                    get, close = build(arm, endpoint, files, threads)
                    try:
                        before = server.connections_accepted
                        failures, seconds = _drive(get, threads, total)
                        opened = server.connections_accepted - before
                    finally:
                        close()
                    sent = total // threads * threads
                    results.setdefault(family, {})[arm] = {
                        "requests": sent,
                        "threads": threads,
                        "new_connections": opened,
                        "share": opened / sent,
                        "failures": failures,
                        "seconds": seconds,
                    }
    finally:
        quiet.setLevel(level)
    return results
