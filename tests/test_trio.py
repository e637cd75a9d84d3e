"""The async path under trio: httpx's AsyncClient runs there, and so must the auth.

Each test runs its own ``trio.run`` against the kit's real token server, for
httpx and (on Python 3.11+) httpx2: single flight across tasks, a cancelled
fetcher that strands nobody, the loop kept responsive while a token is
fetched, refresh after expiry and after a 401, a sync caller sharing a fetch a
trio task started, and a clear error outside any event loop. The asyncio side
of the same guarantees is tested through the three-client fixture.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Awaitable
from types import ModuleType
from typing import Any, Callable

import pytest

from mtls_auth import MtlsAuthError
from mtls_auth.testing import Credential, FakeClock, Fault, TokenServer

trio = pytest.importorskip("trio")

CLIENT_ID = "sb-mtls-test!t1"


def _libraries() -> list[Any]:
    params: list[Any] = [pytest.param(("httpx", "mtls_auth.httpx"), id="httpx")]
    params.append(
        pytest.param(
            ("httpx2", "mtls_auth.httpx2"),
            id="httpx2",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("httpx2") is None, reason="httpx2 needs Python 3.11+"
            ),
        )
    )
    return params


class Trio:
    """One library (httpx or httpx2) and its mtls-auth module, driven under trio."""

    def __init__(self, names: tuple[str, str], server: TokenServer, credential: Credential):
        self.library: ModuleType = importlib.import_module(names[0])
        self.module: ModuleType = importlib.import_module(names[1])
        self.server = server
        self.credential = credential

    def auth(self, **kwargs: Any) -> Any:
        return self.module.MtlsOAuth2(
            self.server.token_url,
            CLIENT_ID,
            self.credential.chain_pem,
            self.credential.key_pem,
            verify=self.server.ca_pem,
            **kwargs,
        )

    def client(self, auth: Any) -> Any:
        return self.library.AsyncClient(auth=auth, transport=auth.async_transport(), timeout=10.0)

    def run(self, main: Callable[[], Awaitable[Any]]) -> Any:
        return trio.run(main)


@pytest.fixture(params=_libraries())
def under_trio(
    request: pytest.FixtureRequest, mtls_server: TokenServer, mtls_client_certificate: Credential
) -> Trio:
    return Trio(request.param, mtls_server, mtls_client_certificate)


def test_concurrent_tasks_share_one_token_fetch(under_trio: Trio) -> None:
    auth = under_trio.auth()
    statuses: list[int] = []

    async def main() -> None:
        async with under_trio.client(auth) as client:

            async def one() -> None:
                response = await client.get(under_trio.server.resource_url)
                statuses.append(response.status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(one)
        await auth.aclose()

    under_trio.run(main)
    assert statuses == [200] * 40
    assert under_trio.server.token_request_count == 1


def test_a_cancelled_fetcher_strands_none_of_the_waiters(under_trio: Trio) -> None:
    server = under_trio.server
    server.inject(Fault.delay(0.3))
    auth = under_trio.auth()
    outcomes: list[str] = []

    async def main() -> None:
        async with under_trio.client(auth) as client:

            async def waiter() -> None:
                response = await client.get(server.resource_url)
                outcomes.append(str(response.status_code))

            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as first:
                    # The first caller starts the fetch; it is cancelled while
                    # the token endpoint is still answering.
                    nursery.start_soon(_cancel_soon, first)
                    await client.get(server.resource_url)
                outcomes.append("cancelled" if first.cancelled_caught else "done")
                for _ in range(5):
                    nursery.start_soon(waiter)
        await auth.aclose()

    under_trio.run(main)
    assert outcomes[0] == "cancelled"
    assert sorted(outcomes[1:]) == ["200"] * 5
    # The cancelled caller's fetch went on, detached: the waiters used its token.
    assert server.token_request_count == 1


async def _cancel_soon(scope: Any) -> None:
    await trio.sleep(0.05)
    scope.cancel()


def test_the_loop_keeps_running_while_a_token_is_fetched(under_trio: Trio) -> None:
    server = under_trio.server
    server.inject(Fault.delay(0.3))
    auth = under_trio.auth()
    ticks: list[int] = []

    async def main() -> None:
        async with under_trio.client(auth) as client:
            done = trio.Event()

            async def heartbeat() -> None:
                while not done.is_set():
                    ticks.append(1)
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(heartbeat)
                response = await client.get(server.resource_url)
                done.set()
            assert response.status_code == 200
        await auth.aclose()

    under_trio.run(main)
    # A loop blocked by the 0.3 s token request would tick once or twice; a free
    # one ticks about 30 times. A third of that leaves room for a loaded machine.
    assert len(ticks) >= 10, ticks


def test_expired_and_refused_tokens_are_replaced(under_trio: Trio, mtls_clock: FakeClock) -> None:
    server = under_trio.server
    auth = under_trio.auth(clock=mtls_clock)
    statuses: list[int] = []

    async def main() -> None:
        async with under_trio.client(auth) as client:
            statuses.append((await client.get(server.resource_url)).status_code)
            mtls_clock.advance(server.token_lifetime)  # expired on both sides
            statuses.append((await client.get(server.resource_url)).status_code)
            server.revoke_all()  # the resource now answers 401 to that token
            response = await client.get(server.resource_url)
            statuses.append(response.status_code)
        await auth.aclose()

    under_trio.run(main)
    assert statuses == [200, 200, 200]
    assert server.token_request_count == 3


def test_a_thread_shares_the_fetch_a_trio_task_started(under_trio: Trio) -> None:
    server = under_trio.server
    server.inject(Fault.delay(0.3))
    auth = under_trio.auth()
    seen: list[str] = []

    async def main() -> None:
        def from_thread() -> None:
            seen.append(auth.token_info().format)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fetch, auth, seen)
            await trio.sleep(0.05)  # the task's fetch is in flight
            thread = threading.Thread(target=from_thread)
            thread.start()
            await trio.to_thread.run_sync(thread.join)
        await auth.aclose()

    under_trio.run(main)
    assert len(seen) == 2  # both got a token...
    assert server.token_request_count == 1  # ...from the one request the task made


async def _fetch(auth: Any, seen: list[str]) -> None:
    seen.append((await auth.atoken_info()).format)


def test_outside_any_event_loop_the_error_says_so(under_trio: Trio) -> None:
    auth = under_trio.auth()
    coroutine = auth.atoken_info()
    with pytest.raises(MtlsAuthError, match="outside an asyncio or trio event loop"):
        coroutine.send(None)  # driven by hand: neither asyncio nor trio runs it
    coroutine.close()
    auth.close()
