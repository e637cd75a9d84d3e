"""Retries of the token request, sans I/O: Retry-After and the fetch_flow generator.

`parse_retry_after` reads delta-seconds and every HTTP date form. `fetch_flow`
is driven by a hand-written `Driver` that answers each yielded `HttpRequest`
from a script and "sleeps" by advancing the test kit's `FakeClock`: what is
retried (5xx, 429, connection failures) and what fails at once (OAuth errors,
bad 200s, a rejected client certificate), bounded attempts, backoff with
jitter, Retry-After honoured and capped, and a deadline no sleep or request
passes.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from collections.abc import Generator
from datetime import datetime, timezone
from typing import Union
from urllib.parse import parse_qs

import pytest
from wire import CANARY, CREDSTORE_CLIENT_ID, SECRET, SUBJECT, URL, all_messages, response

from mtls_auth._errors import TokenError, TokenRequestError, TokenResponseError
from mtls_auth._http import HttpRequest, HttpResponse, TransportFailure
from mtls_auth._request import TokenRequest
from mtls_auth._retry import RetryPolicy, fetch_flow, parse_retry_after
from mtls_auth._token import Token
from mtls_auth.testing import FakeClock

# -- parse_retry_after -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0", 0.0), (" 120 ", 120.0)])
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date_future_and_past() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    header = email.utils.format_datetime(moment, usegmt=True)
    assert header == "Wed, 02 Jan 2030 03:04:05 GMT"
    assert parse_retry_after(header, now=moment.timestamp() - 30) == pytest.approx(30.0)
    assert parse_retry_after(header, now=moment.timestamp() + 30) == 0.0
    # Without `now`, the wall clock: a date in 2030 is in the future, 1994 in the past.
    assert parse_retry_after(header) > 0  # type: ignore[operator]
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0
    # The obsolete RFC 850 form.
    assert parse_retry_after(
        "Sunday, 06-Nov-94 08:49:37 GMT", now=784111777.0 - 10
    ) == pytest.approx(10.0)


def test_retry_after_asctime_date() -> None:
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", now=784111777.0 - 10) == 10.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-1",
        "1.5",
        "2 seconds",
        "Wed, 99 Foo 2030 25:61:61 GMT",
        "Wed, 02 Jan 2030 03:04:05",
    ],
)
def test_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_superscript_is_garbage() -> None:
    assert parse_retry_after("\u00b2") is None


# -- fetch_flow ----------------------------------------------------------------------


Reply = Union[HttpResponse, TransportFailure]


class Driver:
    """Runs `fetch_flow`: answers requests from `replies`, sleeps on the fake timer."""

    def __init__(
        self,
        replies: list[Reply],
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        request_cost: float = 0.0,
    ) -> None:
        self.replies = list(replies)
        self.timer = FakeClock(50.0)
        self.clock = FakeClock(7000.0)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.request_cost = request_cost
        self.requests: list[HttpRequest] = []
        self.sleeps: list[float] = []
        self.steps: list[object] = []
        #: (request.timeout, time left before the deadline when it was yielded)
        self.budgets: list[tuple[float, float]] = []

    def flow(self) -> Generator[object, object, Token]:
        request = TokenRequest.create(namespace="ns/1 &x=y+z")
        return fetch_flow(
            request.http_request(URL, CREDSTORE_CLIENT_ID),
            timeout=self.timeout,
            retry=self.retry,
            clock=self.clock,
            subject=lambda: SUBJECT,
            timer=self.timer,
        )

    def run(self) -> Token:
        start = self.timer()
        flow = self.flow()
        try:
            step = next(flow)
            while True:
                self.steps.append(step)
                if isinstance(step, HttpRequest):
                    self.requests.append(step)
                    self.budgets.append((step.timeout, start + self.timeout - self.timer()))
                    self.timer.advance(self.request_cost)
                    self.clock.advance(self.request_cost)
                    step = flow.send(self.replies.pop(0))
                else:
                    assert isinstance(step, float)
                    self.sleeps.append(step)
                    self.timer.advance(step)
                    self.clock.advance(step)
                    step = flow.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


def ok(lifetime: int = 1800) -> HttpResponse:
    return response(200, {"access_token": SECRET, "token_type": "bearer", "expires_in": lifetime})


def unavailable(status: int = 503, retry_after: str | None = None) -> HttpResponse:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return response(status, {"error": "temporarily_unavailable", "debug": CANARY}, headers)


def test_flow_success_first_try() -> None:
    driver = Driver([ok()])
    token = driver.run()
    assert token.matches(f"Bearer {SECRET}")
    assert token.issued_at == 7000.0
    assert token.expires_at == 8800.0
    assert len(driver.requests) == 1
    assert driver.sleeps == []
    request = driver.requests[0]
    assert request.method == "POST"
    assert request.url == URL
    assert 0 < request.timeout <= 10.0
    form = parse_qs(request.body.decode("ascii"))
    assert form["client_id"] == [CREDSTORE_CLIENT_ID]
    assert form["credstore_namespace"] == ["ns/1 &x=y+z"]


def test_flow_503_twice_then_ok(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mtls_auth")
    retry = RetryPolicy(attempts=4, backoff=0.25, max_backoff=4.0)
    driver = Driver([unavailable(), unavailable(502), ok()], retry=retry)
    token = driver.run()
    assert token.lifetime == 1800
    assert len(driver.requests) == 3
    assert len(driver.sleeps) == 2
    assert all(isinstance(s, float) for s in driver.sleeps)
    assert [type(s).__name__ for s in driver.steps] == [
        "HttpRequest",
        "float",
        "HttpRequest",
        "float",
        "HttpRequest",
    ]
    # Exponential backoff with jitter floored at half the ceiling.
    assert 0.125 <= driver.sleeps[0] <= 0.25
    assert 0.25 <= driver.sleeps[1] <= 0.5
    # Same request every time.
    assert len({r.body for r in driver.requests}) == 1
    # The retry warnings name the URL and never carry the body.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert URL in warnings[0].getMessage()
    assert CANARY not in caplog.text
    assert SECRET not in caplog.text
    # The token's lifetime counts from when the successful request was sent.
    assert token.issued_at == pytest.approx(7000.0 + sum(driver.sleeps))


def test_backoff_bounds_grow_and_cap() -> None:
    policy = RetryPolicy(backoff=0.25, max_backoff=1.0)
    for attempt, (low, high) in enumerate(
        [(0.125, 0.25), (0.25, 0.5), (0.5, 1.0), (0.5, 1.0), (0.5, 1.0)], start=1
    ):
        for _ in range(50):
            assert low <= policy.delay(attempt, None) <= high


def test_flow_429_retry_after_honoured() -> None:
    driver = Driver([unavailable(429, "2"), ok()])
    driver.run()
    assert driver.sleeps == [2.0]
    assert len(driver.requests) == 2


def test_flow_retry_after_http_date(monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    monkeypatch.setattr(time, "time", lambda: moment.timestamp() - 3)
    driver = Driver([unavailable(503, email.utils.format_datetime(moment, usegmt=True)), ok()])
    driver.run()
    assert driver.sleeps == [pytest.approx(3.0)]


def test_flow_retry_after_capped() -> None:
    retry = RetryPolicy(max_retry_after=30.0)
    driver = Driver([unavailable(503, "3600"), ok()], timeout=100.0, retry=retry)
    driver.run()
    assert driver.sleeps == [30.0]


def test_flow_oauth_error_fails_at_once() -> None:
    body = {"error": "invalid_client", "error_description": "bad cert", "debug": CANARY}
    driver = Driver([response(400, body), ok()])
    with pytest.raises(TokenResponseError) as info:
        driver.run()
    assert len(driver.requests) == 1
    assert driver.sleeps == []
    assert info.value.status_code == 400
    assert info.value.error == "invalid_client"
    assert CANARY not in all_messages(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408])
def test_flow_other_4xx_not_retried(status: int) -> None:
    driver = Driver([response(status, {"error": "nope"}), ok()])
    with pytest.raises(TokenResponseError):
        driver.run()
    assert len(driver.requests) == 1


def test_flow_bad_200_not_retried() -> None:
    driver = Driver([response(200, raw=b"<html>"), ok()])
    with pytest.raises(TokenResponseError):
        driver.run()
    assert len(driver.requests) == 1


@pytest.mark.parametrize("kind", ["connect", "timeout"])
def test_flow_transport_failure_retried(kind: str) -> None:
    driver = Driver([TransportFailure(kind, "connection refused"), ok()])
    token = driver.run()
    assert token.lifetime == 1800
    assert len(driver.requests) == 2
    assert len(driver.sleeps) == 1


def test_flow_tls_client_rejection_not_retried() -> None:
    cause = ssl.SSLError(1, "alert")
    failure = TransportFailure(
        "tls_client", "server sent TLS alert TLSV13_ALERT_CERTIFICATE_REQUIRED", cause
    )
    driver = Driver([failure, ok()])
    with pytest.raises(TokenRequestError) as info:
        driver.run()
    assert len(driver.requests) == 1
    assert driver.sleeps == []
    message = str(info.value)
    assert URL in message
    assert SUBJECT in message
    assert "TLSV13_ALERT_CERTIFICATE_REQUIRED" in message
    assert info.value.__cause__ is cause


@pytest.mark.parametrize("kind", ["tls_server", "too_large", "other"])
def test_flow_other_transport_failures_not_retried(kind: str) -> None:
    driver = Driver([TransportFailure(kind, "detail"), ok()])
    with pytest.raises(TokenRequestError) as info:
        driver.run()
    assert len(driver.requests) == 1
    assert URL in str(info.value)


def test_flow_attempts_bounded_http() -> None:
    driver = Driver([unavailable()] * 10, retry=RetryPolicy(attempts=3), timeout=60.0)
    with pytest.raises(TokenResponseError) as info:
        driver.run()
    assert len(driver.requests) == 3
    assert len(driver.sleeps) == 2
    assert "3 attempts" in str(info.value)
    assert info.value.status_code == 503
    assert info.value.error == "temporarily_unavailable"
    assert CANARY not in all_messages(info.value)


def test_flow_attempts_bounded_transport() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    failures: list[Reply] = [TransportFailure("connect", "connection refused", refused)] * 10
    driver = Driver(failures, retry=RetryPolicy(attempts=4), timeout=60.0)
    with pytest.raises(TokenRequestError) as info:
        driver.run()
    assert len(driver.requests) == 4
    assert len(driver.sleeps) == 3
    assert "4 attempts" in str(info.value)
    assert URL in str(info.value)
    assert info.value.__cause__ is refused


def test_flow_single_attempt_policy() -> None:
    driver = Driver([unavailable(), ok()], retry=RetryPolicy(attempts=1))
    with pytest.raises(TokenError, match="1 attempts"):
        driver.run()
    assert len(driver.requests) == 1
    assert driver.sleeps == []


def test_flow_gives_up_rather_than_sleep_past_deadline() -> None:
    # 2 s of budget, the request took 0.5 s, Retry-After asks for 5 s.
    driver = Driver([unavailable(503, "5"), ok()], timeout=2.0, request_cost=0.5)
    with pytest.raises(TokenResponseError, match="deadline") as info:
        driver.run()
    assert driver.sleeps == []
    assert len(driver.requests) == 1
    assert info.value.status_code == 503


def test_flow_backoff_never_passes_deadline() -> None:
    # Backoff of 1 s (jitter floor 0.5 s) and 0.5 s left after the first attempt.
    retry = RetryPolicy(attempts=10, backoff=1.0, max_backoff=1.0)
    driver = Driver(
        [TransportFailure("timeout", "slow")] * 10, timeout=1.0, retry=retry, request_cost=0.5
    )
    with pytest.raises(TokenRequestError, match="deadline"):
        driver.run()
    assert driver.sleeps == []
    assert len(driver.requests) == 1


def test_flow_total_time_within_deadline() -> None:
    retry = RetryPolicy(attempts=50, backoff=0.2, max_backoff=1.0)
    driver = Driver([unavailable()] * 50, timeout=5.0, retry=retry, request_cost=0.3)
    with pytest.raises(TokenResponseError, match="deadline"):
        driver.run()
    assert len(driver.requests) > 2
    # Every request left before the deadline, and no sleep ran past it.
    assert all(remaining > 0 for _, remaining in driver.budgets)
    assert sum(driver.sleeps) + 0.3 * len(driver.requests) <= 5.0 + 0.3


def test_flow_request_timeout_is_remaining_budget() -> None:
    retry = RetryPolicy(attempts=5, backoff=0.5, max_backoff=0.5)
    driver = Driver(
        [unavailable(), unavailable(), unavailable(), ok()],
        timeout=10.0,
        retry=retry,
        request_cost=1.5,
    )
    driver.run()
    assert len(driver.budgets) == 4
    assert driver.budgets[0][0] == pytest.approx(10.0)
    for timeout, remaining in driver.budgets:
        assert 0 < timeout <= remaining + 1e-9
    # Each attempt gets less than the one before.
    timeouts = [t for t, _ in driver.budgets]
    assert timeouts == sorted(timeouts, reverse=True)
    assert timeouts[-1] < 10.0 - 3 * 1.5


def test_flow_rejects_a_reply_of_the_wrong_type() -> None:
    flow = Driver([]).flow()
    assert isinstance(next(flow), HttpRequest)
    with pytest.raises(TypeError):
        flow.send(None)
