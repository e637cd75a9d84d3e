"""After os.fork() the child uses its own connections, locks and fetches; the parent keeps working.

Real forks (as gunicorn --preload, multiprocessing's fork start method and
Celery's prefork pool make them) of a process whose auth is warm: the child
must not reuse the parent's TLS connections to the token endpoint or the
resource, must not wait on a fetch a thread of the parent was running, and may
keep a still-valid cached token. Results come back over a pipe; the child always
leaves with os._exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import httpx
import pytest
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import RetryPolicy
from mtls_auth.testing import FakeClock, Fault, TokenServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CLIENTS = ["requests", "httpx-sync", "httpx-async"]
LIFETIME = 600


class Caller:
    """One auth and the user's own client for it, as an application would hold them."""

    def __init__(self, kind: str, server: TokenServer, binding: dict[str, Any], **options: Any):
        self.kind = kind
        self.server = server
        module = mrequests if kind == "requests" else mhttpx
        self.auth = module.MtlsOAuth2.from_binding(
            binding, retry=RetryPolicy(attempts=2, backoff=0.01), timeout=8.0, **options
        )
        self.session: Any = None
        if kind == "requests":
            self.session = requests.Session()
            self.session.auth = self.auth
            self.session.mount(server.url, self.auth.adapter())
        elif kind == "httpx-sync":
            self.session = httpx.Client(auth=self.auth, transport=self.auth.transport())
        else:
            self.transport = self.auth.async_transport()

    def get(self) -> int:
        url = self.server.resource_url
        if self.kind == "requests":
            return int(self.session.get(url, timeout=10).status_code)
        if self.kind == "httpx-sync":
            return self.session.get(url).status_code

        async def main() -> int:
            async with httpx.AsyncClient(auth=self.auth, transport=self.transport) as client:
                return (await client.get(url)).status_code

        return asyncio.run(main())

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.auth.close()


def _in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` in a forked child; its result (or its error) as a dict."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock:
        # exactly the situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            try:
                result = work()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            os.write(write_fd, json.dumps(result).encode())
        except BaseException:  # noqa: BLE001 - never return into pytest in the child
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 0, status
    return json.loads(b"".join(chunks) or b"{}")


@pytest.fixture
def caller_factory(
    mtls_server: TokenServer, mtls_xsuaa_binding: dict[str, Any], mtls_auth_kwargs: dict[str, Any]
) -> Iterator[Callable[[str], Caller]]:
    made: list[Caller] = []

    def make(kind: str) -> Caller:
        caller = Caller(kind, mtls_server, mtls_xsuaa_binding, **mtls_auth_kwargs)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        caller.close()


@pytest.mark.mtls_server(token_lifetime=LIFETIME, cert_bound=True)
@pytest.mark.parametrize("kind", CLIENTS)
def test_child_of_a_warm_process_uses_its_own_connections(
    kind: str,
    caller_factory: Callable[[str], Caller],
    mtls_server: TokenServer,
    mtls_clock: FakeClock,
) -> None:
    caller = caller_factory(kind)
    assert caller.get() == 200  # warm: a token, and open connections to both endpoints
    tokens_before = mtls_server.token_request_count

    def child() -> dict[str, Any]:
        first = caller.get()  # the cached token, over a new resource connection
        mtls_clock.advance(LIFETIME + 1)  # the child's clock only: its token expires
        second = caller.get()  # a new token, over a new token-endpoint connection
        return {"statuses": [first, second]}

    outcome = _in_child(child)
    assert outcome.get("statuses") == [200, 200], outcome
    # The child asked for exactly one token, and kept the cached one until it expired.
    assert mtls_server.token_request_count == tokens_before + 1
    # The parent's connections were left alone: it goes on working on them.
    for _ in range(3):
        assert caller.get() == 200
    assert mtls_server.token_request_count == tokens_before + 1
    assert not [f for f in mtls_server.handshake_failures if "MAC" in f]


@pytest.mark.parametrize("kind", ["requests", "httpx-sync"])
def test_child_forked_during_a_fetch_does_not_wait_for_it(
    kind: str, caller_factory: Callable[[str], Caller], mtls_server: TokenServer
) -> None:
    caller = caller_factory(kind)
    mtls_server.inject(Fault.delay(30))  # the parent's fetch hangs until released
    parent = threading.Thread(target=caller.get, daemon=True)
    parent.start()
    deadline = time.monotonic() + 5
    while mtls_server.token_request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the parent's fetch is in flight (a fact, not a time)
    assert mtls_server.token_request_count == 1

    def child() -> dict[str, Any]:
        started = time.monotonic()
        status = caller.get()
        return {"status": status, "seconds": time.monotonic() - started}

    outcome = _in_child(child)
    assert outcome.get("status") == 200, outcome
    # Its own fetch, while the parent's is still held at the server: it did not wait.
    assert parent.is_alive()
    assert outcome["seconds"] < 25, outcome
    mtls_server.release_delays()
    parent.join(10)
    assert not parent.is_alive()


def test_locks_held_at_fork_time_are_free_in_the_child(
    caller_factory: Callable[[str], Caller],
) -> None:
    """A lock a thread of the parent held while it forked does not bind the child."""
    caller = caller_factory("requests")
    cache = caller.auth._client.cache
    with cache._lock:  # held by this thread at the moment of the fork

        def child() -> dict[str, Any]:
            return {"acquired": cache._lock.acquire(timeout=1), "flights": len(cache._flights)}

        outcome = _in_child(child)
    assert outcome == {"acquired": True, "flights": 0}, outcome


def test_fork_hook_is_registered() -> None:
    assert "mtls_auth._after_fork" in sys.modules
