"""MtlsOAuth2 on requests, httpx sync and httpx async: caching, 401s, faults, where tokens go.

Most tests run for the three clients (the shared `client` fixture) against the
test kit's `mtls_server`. Time is the kit's `mtls_clock`, shared by the
server and every auth: the client's token cache and the server's expiry checks
read the same clock, so nothing sleeps to wait for time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import threading
import time

import httpx
import pytest
from clients import Client, Result

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import (
    InsecureTransportError,
    MtlsAuthError,
    TokenRequestError,
    TokenResponseError,
)
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import PKI, Credential, FakeClock, Fault, TokenServer
from mtls_auth.testing.plugin import CLIENT_ID

FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05, max_retry_after=0.2)

pytestmark = pytest.mark.mtls_server(token_lifetime=1800)


@pytest.fixture
def client(client: Client) -> Client:
    """The shared three-client harness, with a fast retry policy and a 5 s deadline."""
    return client.bind(retry=FAST_RETRY, timeout=5.0)


def ok(results: list[Result]) -> None:
    errors = [r.error for r in results if r.error is not None]
    assert not errors, errors[:3]
    assert {r.status for r in results} == {200}, [r.status for r in results]


# -- caching and stampedes ---------------------------------------------------------------


def test_fifty_calls_one_token_request(client: Client, mtls_server: TokenServer) -> None:
    auth = client.auth()
    ok(client.call_many(auth, [mtls_server.resource_url] * 50, 1))
    assert len(mtls_server.token_requests) == 1
    assert len(mtls_server.resource_requests) == 50


@pytest.mark.parametrize("workers", [32])
def test_cold_start_stampede_one_token_request(
    client: Client, mtls_server: TokenServer, workers: int
) -> None:
    # Threads for the sync clients, coroutines for the async one (200 of them).
    count = 200 if client.is_async else workers
    mtls_server.inject(Fault.delay(0.3))  # keep the first fetch in flight while all arrive
    auth = client.auth()
    ok(client.call_many(auth, [mtls_server.resource_url] * count, count))
    assert len(mtls_server.token_requests) == 1


def test_expired_token_replaced_without_a_401(
    client: Client, mtls_server: TokenServer, mtls_clock: FakeClock
) -> None:
    auth = client.auth()
    ok([client.call(auth)])
    mtls_clock.advance(1800 + 1)
    result = client.call(auth)
    assert result.status == 200
    assert result.history == []  # never saw a 401
    assert len(mtls_server.token_requests) == 2
    assert all(r.status == 200 for r in mtls_server.resource_requests)


def test_stale_window_one_refresh_while_others_proceed(
    client: Client, mtls_server: TokenServer, mtls_clock: FakeClock
) -> None:
    auth = client.auth()
    ok([client.call(auth)])
    mtls_clock.advance(1800 - 30)  # inside the 60 s leeway, still valid
    mtls_server.inject(Fault.delay(30))  # the refresh hangs at the server until released
    refresher_done = threading.Event()
    outcome: list[Result] = []

    def refresh() -> None:
        outcome.append(client.call(auth))
        refresher_done.set()

    thread = threading.Thread(target=refresh)
    thread.start()
    # Wait (on events, not time) until the refresh request has reached the server.
    deadline = time.monotonic() + 5
    while len(mtls_server.token_requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(mtls_server.token_requests) == 2
    others = client.call_many(auth, [mtls_server.resource_url] * 10, 1)
    proceeded_during_refresh = not refresher_done.is_set()
    mtls_server.release_delays()
    thread.join(10)
    ok(others)
    ok(outcome)
    assert proceeded_during_refresh, "callers waited for the stale refresh"
    assert len(mtls_server.token_requests) == 2  # exactly one refresh
    indexes = [r.token_index for r in mtls_server.resource_requests]
    assert indexes.count(1) >= 10  # the others used the old, still valid token


# -- 401 from the resource ----------------------------------------------------------------


def test_revoked_token_retried_once_caller_sees_200(
    client: Client, mtls_server: TokenServer
) -> None:
    auth = client.auth()
    ok([client.call(auth)])
    mtls_server.revoke_all()
    result = client.call(auth)
    assert result.status == 200
    assert result.history == [401]
    assert len(mtls_server.token_requests) == 2
    assert [r.status for r in mtls_server.resource_requests] == [200, 401, 200]


def test_always_401_is_retried_only_once(client: Client, mtls_server: TokenServer) -> None:
    auth = client.auth()
    result = client.call(auth, mtls_server.url + "/resource/always-401")
    assert result.status == 401
    assert len(mtls_server.resource_requests) == 2
    assert len(mtls_server.token_requests) == 2


# -- the token request on the wire ---------------------------------------------------------------


def test_namespace_arrives_exactly(client: Client, mtls_server: TokenServer) -> None:
    namespace = "ns/1 &x=y+z"
    auth = client.auth(token_url=mtls_server.credstore_token_url, namespace=namespace, scope="a b")
    ok([client.call(auth)])
    (seen,) = mtls_server.token_requests
    assert seen.namespace == namespace
    assert seen.path == "/api/v1/token"
    assert seen.form["grant_type"] == "client_credentials"
    assert seen.form["client_id"] == CLIENT_ID
    assert seen.form["scope"] == "a b"
    assert "client_secret" not in seen.form


def test_client_id_with_base64_characters_arrives_exactly(
    client: Client, mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    client_id = "0fcb3a97-7b67.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="
    mtls_server.register_client(client_id, mtls_client_certificate)
    auth = client.auth(
        token_url=mtls_server.credstore_token_url, client_id=client_id, namespace="n"
    )
    ok([client.call(auth)])
    assert mtls_server.token_requests[0].client_id == client_id


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
    client: Client, mtls_server: TokenServer, fault: Fault, times: int
) -> None:
    mtls_server.inject(fault, times=times)
    auth = client.auth()
    ok([client.call(auth)])
    assert len(mtls_server.token_requests) == times + 1


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
    client: Client, mtls_server: TokenServer, fault: Fault, error: type[Exception], text: str
) -> None:
    mtls_server.inject(fault)
    auth = client.auth()
    result = client.call(auth)
    assert isinstance(result.error, error), result
    assert text in str(result.error)
    assert mtls_server.token_url in str(result.error)
    assert len(mtls_server.token_requests) == 1


def test_persistent_5xx_gives_up_after_bounded_attempts(
    client: Client, mtls_server: TokenServer
) -> None:
    mtls_server.inject(Fault.status(503), times=100)
    auth = client.auth()
    result = client.call(auth)
    assert isinstance(result.error, TokenResponseError)
    assert result.error.status_code == 503
    assert "4 attempts" in str(result.error)
    assert len(mtls_server.token_requests) == FAST_RETRY.attempts


def test_timeout_is_a_token_request_error_within_the_deadline(
    client: Client, mtls_server: TokenServer
) -> None:
    mtls_server.inject(Fault.delay(3), times=10)
    auth = client.auth(timeout=0.5)
    started = time.monotonic()
    result = client.call(auth)
    elapsed = time.monotonic() - started
    assert isinstance(result.error, TokenRequestError), result
    assert "timed out" in str(result.error)
    assert elapsed < 3  # returned well before the server would have answered
    assert len(mtls_server.token_requests) <= 2


def test_rejected_certificate_names_url_and_subject(
    client: Client, mtls_server: TokenServer, mtls_pki: PKI
) -> None:
    stranger = mtls_pki.untrusted_client("stranger")
    auth = client.auth(certificate=stranger.chain_pem, key=stranger.key_pem)
    result = client.call(auth)
    assert isinstance(result.error, TokenRequestError), result
    message = str(result.error)
    assert mtls_server.token_url in message
    assert "CN=stranger" in message
    assert len(mtls_server.token_requests) == 0  # never got past the handshake


def test_wrong_client_id_for_certificate(client: Client, mtls_server: TokenServer) -> None:
    auth = client.auth(client_id="someone-else")
    result = client.call(auth)
    assert isinstance(result.error, TokenResponseError)
    assert result.error.status_code == 401
    assert result.error.error == "invalid_client"


# -- where the token may go ---------------------------------------------------------------


def test_plain_http_is_refused(client: Client, mtls_server: TokenServer) -> None:
    auth = client.auth()
    result = client.call(auth, f"http://localhost:{mtls_server.port}/resource")
    assert isinstance(result.error, InsecureTransportError), result
    assert "plain http" in str(result.error)
    assert len(mtls_server.token_requests) == 0


def test_allowed_hosts_is_enforced(client: Client, mtls_server: TokenServer) -> None:
    auth = client.auth(allowed_hosts=["api.example.com"])
    result = client.call(auth)
    assert isinstance(result.error, InsecureTransportError), result
    assert "allowed_hosts" in str(result.error)
    allowed = client.auth(allowed_hosts=["localhost"])
    ok([client.call(allowed)])


# -- secrets ---------------------------------------------------------------


def _issued_tokens(mtls_server: TokenServer) -> list[str]:
    return list(mtls_server._tokens)


def test_secret_canary(
    client: Client,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = client.auth()
    ok(client.call_many(auth, [mtls_server.resource_url] * 3, 1))
    mtls_server.revoke_all()
    ok([client.call(auth)])
    mtls_server.inject(Fault.status(400, body={"error": "invalid_client"}))
    failing = client.auth(token_url=mtls_server.credstore_token_url, namespace="x")
    error = client.call(failing).error
    assert error is not None

    secrets = _issued_tokens(mtls_server)
    assert len(secrets) == 2
    key_lines = [
        line
        for line in mtls_client_certificate.key_pem.splitlines()
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
    assert mtls_server.token_url in repr(auth)
    assert "fresh" in repr(auth)


def test_auth_objects_refuse_to_pickle(client: Client) -> None:
    auth = client.auth()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(auth)


def test_errors_are_mtls_auth_errors(client: Client, mtls_server: TokenServer) -> None:
    mtls_server.inject(Fault.status(400))
    result = client.call(client.auth())
    assert isinstance(result.error, MtlsAuthError)


# -- the event loop ---------------------------------------------------------------


def test_async_refresh_does_not_block_the_event_loop(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    delay = 0.6
    mtls_server.inject(Fault.delay(delay))
    auth = mhttpx.MtlsOAuth2(
        mtls_server.token_url,
        CLIENT_ID,
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
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
            mtls_client_certificate.chain_pem,
            mtls_client_certificate.key_pem,
            verify=mtls_server.ca_pem,
        )
        tick = asyncio.create_task(ticker())
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            response = await client.get(mtls_server.resource_url)
            assert response.status_code == 200
        stop.set()
        await tick
        await auth.aclose()
        return worst

    worst = asyncio.run(main())
    # Blocking would show as a lag close to the endpoint's delay.
    assert worst < delay / 4, f"event loop stalled for {worst:.3f}s"


def test_cancelled_request_does_not_strand_other_waiters(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    mtls_server.inject(Fault.delay(0.5))
    auth = mhttpx.MtlsOAuth2(
        mtls_server.token_url,
        CLIENT_ID,
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
    )

    async def main() -> list[int]:
        transport = mhttpx.AsyncMtlsTransport(
            mtls_client_certificate.chain_pem,
            mtls_client_certificate.key_pem,
            verify=mtls_server.ca_pem,
        )
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            first = asyncio.create_task(client.get(mtls_server.resource_url))
            await asyncio.sleep(0.1)  # let it start the fetch
            others = [asyncio.create_task(client.get(mtls_server.resource_url)) for _ in range(5)]
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            responses = await asyncio.wait_for(asyncio.gather(*others), 10)
        await auth.aclose()
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 5
    assert len(mtls_server.token_requests) == 1


def test_one_auth_object_serves_client_and_async_client(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    auth = mhttpx.MtlsOAuth2(
        mtls_server.token_url,
        CLIENT_ID,
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
    )
    transport = mhttpx.MtlsTransport(
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
    )
    with httpx.Client(auth=auth, transport=transport) as client:
        assert client.get(mtls_server.resource_url).status_code == 200

    async def main() -> int:
        async_transport = mhttpx.AsyncMtlsTransport(
            mtls_client_certificate.chain_pem,
            mtls_client_certificate.key_pem,
            verify=mtls_server.ca_pem,
        )
        async with auth, httpx.AsyncClient(auth=auth, transport=async_transport) as client:
            return (await client.get(mtls_server.resource_url)).status_code

    assert asyncio.run(main()) == 200
    assert asyncio.run(main()) == 200  # a second event loop gets its own internal client
    assert len(mtls_server.token_requests) == 1


def test_internal_token_client_reuses_its_connection(
    mtls_server: TokenServer, mtls_client_certificate: Credential, mtls_clock: FakeClock
) -> None:
    auth = mrequests.MtlsOAuth2(
        mtls_server.token_url,
        CLIENT_ID,
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
        clock=mtls_clock,
    )
    with auth:
        for _ in range(3):
            auth._client.cache.clear()
            auth.token_info()
        session = auth._client.sender._sessions.get()
        manager = session.get_adapter(mtls_server.token_url).poolmanager
        (pool,) = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118 - no __iter__
        assert pool.num_connections == 1  # three fetches, one TLS connection
    assert len(mtls_server.token_requests) == 3
    assert len({r.thumbprint for r in mtls_server.token_requests}) == 1
