"""MtlsOAuth2 for requests, httpx sync and httpx async against the real mTLS server.

Every test runs for the three clients (the `flavor` fixture). Time is a shared
`FakeClock` that the test advances: the client's token cache and the server's
expiry checks read the same clock, so nothing sleeps to wait for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import pytest
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import (
    InsecureTransportError,
    MtlsAuthError,
    TokenRequestError,
    TokenResponseError,
)
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import PKI, Credential, Fault, TokenServer

CLIENT_ID = "sb-client!t1"
FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, max_retry_after=0.2)


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Result:
    status: int | None
    history: int
    error: BaseException | None = None


class Flavor:
    """One HTTP client library driving MtlsOAuth2 the way a user would."""

    name: str

    def __init__(self, server: TokenServer, credential: Credential) -> None:
        self.server = server
        self.credential = credential
        self._closers: list[Callable[[], Any]] = []

    def auth(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def call_many(self, auth: Any, urls: list[str], concurrency: int) -> list[Result]:
        raise NotImplementedError

    def call(self, auth: Any, url: str | None = None, **kwargs: Any) -> Result:
        return self.call_many(auth, [url or self.server.resource_url], 1)[0]

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "token_url": self.server.token_url,
            "client_id": CLIENT_ID,
            "certificate": self.credential.chain_pem,
            "key": self.credential.key_pem,
            "verify": self.server.ca_pem,
            "retry": FAST_RETRY,
            "timeout": 5.0,
            "clock": self.server.clock,
        }
        defaults.update(kwargs)
        return defaults


class RequestsFlavor(Flavor):
    name = "requests"

    def auth(self, **kwargs: Any) -> mrequests.MtlsOAuth2:
        auth = mrequests.MtlsOAuth2(**self._kwargs(kwargs))
        self._closers.append(auth.close)
        return auth

    def _session(self, auth: Any) -> requests.Session:
        session = requests.Session()
        session.auth = auth
        # The server asks every connection for a certificate.
        session.mount(
            self.server.url,
            mrequests.MtlsAdapter(
                self.credential.chain_pem, self.credential.key_pem, verify=self.server.ca_pem
            ),
        )
        self._closers.append(session.close)
        return session

    def call_many(self, auth: Any, urls: list[str], concurrency: int) -> list[Result]:
        local = threading.local()
        barrier = threading.Barrier(min(concurrency, len(urls)))

        def one(url: str) -> Result:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = self._session(auth)
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=5)
            try:
                response = session.get(url, timeout=10)
            except Exception as exc:  # noqa: BLE001 - reported as a result
                return Result(None, 0, exc)
            return Result(response.status_code, len(response.history))

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, urls))


class HttpxSyncFlavor(Flavor):
    name = "httpx-sync"

    def auth(self, **kwargs: Any) -> mhttpx.MtlsOAuth2:
        auth = mhttpx.MtlsOAuth2(**self._kwargs(kwargs))
        self._closers.append(auth.close)
        return auth

    def call_many(self, auth: Any, urls: list[str], concurrency: int) -> list[Result]:
        transport = mhttpx.MtlsTransport(
            self.credential.chain_pem, self.credential.key_pem, verify=self.server.ca_pem
        )
        barrier = threading.Barrier(min(concurrency, len(urls)))
        with httpx.Client(auth=auth, transport=transport, timeout=10) as client:

            def one(url: str) -> Result:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=0.5)
                try:
                    response = client.get(url)
                except Exception as exc:  # noqa: BLE001 - reported as a result
                    return Result(None, 0, exc)
                return Result(response.status_code, len(response.history))

            with ThreadPoolExecutor(concurrency) as pool:
                return list(pool.map(one, urls))


class HttpxAsyncFlavor(Flavor):
    name = "httpx-async"

    def auth(self, **kwargs: Any) -> mhttpx.MtlsOAuth2:
        auth = mhttpx.MtlsOAuth2(**self._kwargs(kwargs))
        self._closers.append(auth.close)
        return auth

    def call_many(self, auth: Any, urls: list[str], concurrency: int) -> list[Result]:
        async def main() -> list[Result]:
            transport = mhttpx.AsyncMtlsTransport(
                self.credential.chain_pem, self.credential.key_pem, verify=self.server.ca_pem
            )
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(
                auth=auth, transport=transport, timeout=10, limits=limits
            ) as client:

                async def one(url: str) -> Result:
                    try:
                        response = await client.get(url)
                    except Exception as exc:  # noqa: BLE001 - reported as a result
                        return Result(None, 0, exc)
                    return Result(response.status_code, len(response.history))

                if concurrency == 1:
                    return [await one(url) for url in urls]
                results = await asyncio.gather(*(one(url) for url in urls))
                await auth.aclose()
                return list(results)

        return asyncio.run(main())


FLAVORS = [RequestsFlavor, HttpxSyncFlavor, HttpxAsyncFlavor]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(pki: PKI, client_credential: Credential, clock: FakeClock) -> Iterator[TokenServer]:
    with TokenServer(pki, clock=clock, token_lifetime=1800) as srv:
        srv.register_client(CLIENT_ID, client_credential)
        yield srv


@pytest.fixture(params=FLAVORS, ids=lambda f: f.name)
def flavor(
    request: pytest.FixtureRequest, server: TokenServer, client_credential: Credential
) -> Iterator[Flavor]:
    made = request.param(server, client_credential)
    yield made
    made.close()


def ok(results: list[Result]) -> None:
    errors = [r.error for r in results if r.error is not None]
    assert not errors, errors[:3]
    assert {r.status for r in results} == {200}, [r.status for r in results]


# -- caching and stampedes ---------------------------------------------------------------


def test_fifty_calls_one_token_request(flavor: Flavor, server: TokenServer) -> None:
    auth = flavor.auth()
    ok(flavor.call_many(auth, [server.resource_url] * 50, 1))
    assert len(server.token_requests) == 1
    assert len(server.resource_requests) == 50


@pytest.mark.parametrize("workers", [32])
def test_cold_start_stampede_one_token_request(
    flavor: Flavor, server: TokenServer, workers: int
) -> None:
    # Threads for the sync clients, coroutines for the async one (200 of them).
    count = 200 if isinstance(flavor, HttpxAsyncFlavor) else workers
    server.inject(Fault.delay(0.3))  # keep the first fetch in flight while all arrive
    auth = flavor.auth()
    ok(flavor.call_many(auth, [server.resource_url] * count, count))
    assert len(server.token_requests) == 1


def test_expired_token_replaced_without_a_401(
    flavor: Flavor, server: TokenServer, clock: FakeClock
) -> None:
    auth = flavor.auth()
    ok([flavor.call(auth)])
    clock.advance(1800 + 1)
    result = flavor.call(auth)
    assert result.status == 200
    assert result.history == 0  # never saw a 401
    assert len(server.token_requests) == 2
    assert all(r.status == 200 for r in server.resource_requests)


def test_stale_window_one_refresh_while_others_proceed(
    flavor: Flavor, server: TokenServer, clock: FakeClock
) -> None:
    auth = flavor.auth()
    ok([flavor.call(auth)])
    clock.advance(1800 - 30)  # inside the 60 s leeway, still valid
    server.inject(Fault.delay(1.5))  # the refresh hangs at the server for a while
    refresher_done = threading.Event()
    outcome: list[Result] = []

    def refresh() -> None:
        outcome.append(flavor.call(auth))
        refresher_done.set()

    thread = threading.Thread(target=refresh)
    thread.start()
    # Wait (on events, not time) until the refresh request has reached the server.
    deadline = time.monotonic() + 5
    while len(server.token_requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(server.token_requests) == 2
    others = flavor.call_many(auth, [server.resource_url] * 10, 1)
    proceeded_during_refresh = not refresher_done.is_set()
    thread.join(10)
    ok(others)
    ok(outcome)
    assert proceeded_during_refresh, "callers waited for the stale refresh"
    assert len(server.token_requests) == 2  # exactly one refresh
    indexes = [r.token_index for r in server.resource_requests]
    assert indexes.count(1) >= 10  # the others used the old, still valid token


# -- 401 from the resource ----------------------------------------------------------------


def test_revoked_token_retried_once_caller_sees_200(flavor: Flavor, server: TokenServer) -> None:
    auth = flavor.auth()
    ok([flavor.call(auth)])
    server.revoke_all()
    result = flavor.call(auth)
    assert result.status == 200
    assert result.history == 1
    assert len(server.token_requests) == 2
    assert [r.status for r in server.resource_requests] == [200, 401, 200]


def test_always_401_is_retried_only_once(flavor: Flavor, server: TokenServer) -> None:
    auth = flavor.auth()
    result = flavor.call(auth, server.url + "/resource/always-401")
    assert result.status == 401
    assert len(server.resource_requests) == 2
    assert len(server.token_requests) == 2


# -- the token request on the wire ---------------------------------------------------------------


def test_namespace_arrives_exactly(flavor: Flavor, server: TokenServer) -> None:
    namespace = "ns/1 &x=y+z"
    auth = flavor.auth(token_url=server.credstore_token_url, namespace=namespace, scope="a b")
    ok([flavor.call(auth)])
    (seen,) = server.token_requests
    assert seen.namespace == namespace
    assert seen.path == "/api/v1/token"
    assert seen.form["grant_type"] == "client_credentials"
    assert seen.form["client_id"] == CLIENT_ID
    assert seen.form["scope"] == "a b"
    assert "client_secret" not in seen.form


def test_client_id_with_base64_characters_arrives_exactly(
    flavor: Flavor, server: TokenServer, client_credential: Credential
) -> None:
    client_id = "0fcb3a97-7b67.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="
    server.register_client(client_id, client_credential)
    auth = flavor.auth(token_url=server.credstore_token_url, client_id=client_id, namespace="n")
    ok([flavor.call(auth)])
    assert server.token_requests[0].client_id == client_id


# -- token endpoint faults ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "times"),
    [
        (Fault.status(500), 1),
        (Fault.status(502), 2),
        (Fault.status(503, retry_after="0"), 1),
        (Fault.status(429, retry_after="1"), 1),
        (Fault.reset(), 2),
    ],
    ids=["500", "502x2", "503-retry-after", "429-retry-after", "reset"],
)
def test_transient_faults_are_retried(
    flavor: Flavor, server: TokenServer, fault: Fault, times: int
) -> None:
    server.inject(fault, times=times)
    auth = flavor.auth()
    ok([flavor.call(auth)])
    assert len(server.token_requests) == times + 1


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (Fault.status(400, body={"error": "invalid_client"}), TokenResponseError, "invalid_client"),
        (Fault.malformed_json(), TokenResponseError, "not JSON"),
        (Fault.body(b'{"token_type": "bearer"}'), TokenResponseError, "without an access_token"),
        (Fault.body(b"[1, 2]"), TokenResponseError, "not an object"),
    ],
    ids=["400-invalid_client", "malformed-json", "missing-access_token", "not-an-object"],
)
def test_permanent_faults_fail_at_once(
    flavor: Flavor, server: TokenServer, fault: Fault, error: type[Exception], text: str
) -> None:
    server.inject(fault)
    auth = flavor.auth()
    result = flavor.call(auth)
    assert isinstance(result.error, error), result
    assert text in str(result.error)
    assert server.token_url in str(result.error)
    assert len(server.token_requests) == 1


def test_persistent_5xx_gives_up_after_bounded_attempts(
    flavor: Flavor, server: TokenServer
) -> None:
    server.inject(Fault.status(503), times=100)
    auth = flavor.auth()
    result = flavor.call(auth)
    assert isinstance(result.error, TokenResponseError)
    assert result.error.status_code == 503
    assert "4 attempts" in str(result.error)
    assert len(server.token_requests) == FAST_RETRY.attempts


def test_timeout_is_a_token_request_error_within_the_deadline(
    flavor: Flavor, server: TokenServer
) -> None:
    server.inject(Fault.delay(3), times=10)
    auth = flavor.auth(timeout=0.5)
    started = time.monotonic()
    result = flavor.call(auth)
    elapsed = time.monotonic() - started
    assert isinstance(result.error, TokenRequestError), result
    assert "timed out" in str(result.error)
    assert elapsed < 3  # returned well before the server would have answered
    assert len(server.token_requests) <= 2


def test_rejected_certificate_names_url_and_subject(
    flavor: Flavor, server: TokenServer, pki: PKI
) -> None:
    stranger = pki.untrusted_client("stranger")
    auth = flavor.auth(certificate=stranger.chain_pem, key=stranger.key_pem)
    result = flavor.call(auth)
    assert isinstance(result.error, TokenRequestError), result
    message = str(result.error)
    assert server.token_url in message
    assert "CN=stranger" in message
    assert len(server.token_requests) == 0  # never got past the handshake


def test_wrong_client_id_for_certificate(flavor: Flavor, server: TokenServer) -> None:
    auth = flavor.auth(client_id="someone-else")
    result = flavor.call(auth)
    assert isinstance(result.error, TokenResponseError)
    assert result.error.status_code == 401
    assert result.error.error == "invalid_client"


# -- where the token may go ---------------------------------------------------------------


def test_plain_http_is_refused(flavor: Flavor, server: TokenServer) -> None:
    auth = flavor.auth()
    result = flavor.call(auth, f"http://localhost:{server.port}/resource")
    assert isinstance(result.error, InsecureTransportError), result
    assert "plain http" in str(result.error)
    assert len(server.token_requests) == 0


def test_allowed_hosts_is_enforced(flavor: Flavor, server: TokenServer) -> None:
    auth = flavor.auth(allowed_hosts=["api.example.com"])
    result = flavor.call(auth)
    assert isinstance(result.error, InsecureTransportError), result
    assert "allowed_hosts" in str(result.error)
    allowed = flavor.auth(allowed_hosts=["localhost"])
    ok([flavor.call(allowed)])


# -- secrets ---------------------------------------------------------------


def _issued_tokens(server: TokenServer) -> list[str]:
    return list(server._tokens)


def test_secret_canary(
    flavor: Flavor,
    server: TokenServer,
    client_credential: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = flavor.auth()
    ok(flavor.call_many(auth, [server.resource_url] * 3, 1))
    server.revoke_all()
    ok([flavor.call(auth)])
    server.inject(Fault.status(400, body={"error": "invalid_client"}))
    failing = flavor.auth(token_url=server.credstore_token_url, namespace="x")
    error = flavor.call(failing).error
    assert error is not None

    secrets = _issued_tokens(server)
    assert len(secrets) == 2
    key_lines = [
        line
        for line in client_credential.key_pem.splitlines()
        if line and not line.startswith("-----")
    ]
    texts = [caplog.text, repr(auth), str(auth), repr(failing), str(error), repr(error)]
    cause: BaseException | None = error
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    blob = "\n".join(texts)
    for secret in secrets + key_lines[:3]:
        assert secret not in blob
    assert CLIENT_ID in repr(auth)
    assert server.token_url in repr(auth)
    assert "fresh" in repr(auth)


def test_auth_objects_refuse_to_pickle(flavor: Flavor) -> None:
    auth = flavor.auth()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(auth)


def test_errors_are_mtls_auth_errors(flavor: Flavor, server: TokenServer) -> None:
    server.inject(Fault.status(400))
    result = flavor.call(flavor.auth())
    assert isinstance(result.error, MtlsAuthError)


# -- the event loop ---------------------------------------------------------------


def test_async_refresh_does_not_block_the_event_loop(
    server: TokenServer, client_credential: Credential
) -> None:
    delay = 0.6
    server.inject(Fault.delay(delay))
    auth = mhttpx.MtlsOAuth2(
        server.token_url,
        CLIENT_ID,
        client_credential.chain_pem,
        client_credential.key_pem,
        verify=server.ca_pem,
    )

    async def main() -> float:
        worst = 0.0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            loop = asyncio.get_running_loop()
            last = loop.time()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = loop.time()
                worst = max(worst, now - last - 0.005)
                last = now

        transport = mhttpx.AsyncMtlsTransport(
            client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
        )
        tick = asyncio.create_task(ticker())
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            response = await client.get(server.resource_url)
            assert response.status_code == 200
        stop.set()
        await tick
        await auth.aclose()
        return worst

    worst = asyncio.run(main())
    # Blocking would show as a lag close to the endpoint's delay.
    assert worst < delay / 4, f"event loop stalled for {worst:.3f}s"


def test_cancelled_request_does_not_strand_other_waiters(
    server: TokenServer, client_credential: Credential
) -> None:
    server.inject(Fault.delay(0.5))
    auth = mhttpx.MtlsOAuth2(
        server.token_url,
        CLIENT_ID,
        client_credential.chain_pem,
        client_credential.key_pem,
        verify=server.ca_pem,
    )

    async def main() -> list[int]:
        transport = mhttpx.AsyncMtlsTransport(
            client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
        )
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            first = asyncio.create_task(client.get(server.resource_url))
            await asyncio.sleep(0.1)  # let it start the fetch
            others = [asyncio.create_task(client.get(server.resource_url)) for _ in range(5)]
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            responses = await asyncio.wait_for(asyncio.gather(*others), 10)
        await auth.aclose()
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 5
    assert len(server.token_requests) == 1


def test_one_auth_object_serves_client_and_async_client(
    server: TokenServer, client_credential: Credential
) -> None:
    auth = mhttpx.MtlsOAuth2(
        server.token_url,
        CLIENT_ID,
        client_credential.chain_pem,
        client_credential.key_pem,
        verify=server.ca_pem,
    )
    transport = mhttpx.MtlsTransport(
        client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
    )
    with httpx.Client(auth=auth, transport=transport) as client:
        assert client.get(server.resource_url).status_code == 200

    async def main() -> int:
        async_transport = mhttpx.AsyncMtlsTransport(
            client_credential.chain_pem, client_credential.key_pem, verify=server.ca_pem
        )
        async with auth, httpx.AsyncClient(auth=auth, transport=async_transport) as client:
            return (await client.get(server.resource_url)).status_code

    assert asyncio.run(main()) == 200
    assert asyncio.run(main()) == 200  # a second event loop gets its own internal client
    assert len(server.token_requests) == 1


def test_internal_token_client_reuses_its_connection(
    server: TokenServer, client_credential: Credential, clock: FakeClock
) -> None:
    auth = mrequests.MtlsOAuth2(
        server.token_url,
        CLIENT_ID,
        client_credential.chain_pem,
        client_credential.key_pem,
        verify=server.ca_pem,
        clock=clock,
    )
    with auth:
        for _ in range(3):
            auth._client.cache.clear()
            auth.token_info()
        session = auth._client.sender._sessions.get()
        manager = session.get_adapter(server.token_url).poolmanager
        (pool,) = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118 - no __iter__
        assert pool.num_connections == 1  # three fetches, one TLS connection
    assert len(server.token_requests) == 3
    assert len({r.thumbprint for r in server.token_requests}) == 1
