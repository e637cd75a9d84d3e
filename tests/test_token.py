"""The token request and response, sans I/O: form body, parsing, retries, failure kinds.

Pure protocol logic, so no network: `fetch_flow` is driven by a hand-written
driver that answers each yielded `HttpRequest` from a script and "sleeps" by
advancing a fake timer.
"""

from __future__ import annotations

import base64
import copy
import email.utils
import json
import logging
import pickle
import socket
import ssl
import time
from collections.abc import Generator
from datetime import datetime, timezone
from typing import Union
from urllib.parse import parse_qs

import pytest

from mtls_auth import BindingError
from mtls_auth._client import check_endpoint
from mtls_auth._errors import TokenError, TokenRequestError, TokenResponseError
from mtls_auth._http import (
    MAX_RESPONSE_BYTES,
    HttpRequest,
    HttpResponse,
    TransportFailure,
    classify_failure,
)
from mtls_auth._request import TokenRequest
from mtls_auth._retry import RetryPolicy, fetch_flow, parse_retry_after
from mtls_auth._token import DEFAULT_LIFETIME, MAX_LIFETIME, Token, parse_token_response

URL = "https://auth.cert.example.com/oauth/token"
CLIENT_ID = "sb-client!t1"
CREDSTORE_CLIENT_ID = "0fcb3a97.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="
SUBJECT = "CN=sb-client!t1,OU=test,O=Example"
CANARY = "CANARY-BODY-123"
SECRET = "eyJ-secret-token-value-4242"


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def response(
    status: int = 200,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> HttpResponse:
    if raw is None:
        if body is None:
            body = {"access_token": SECRET, "token_type": "bearer", "expires_in": 1800}
        raw = json.dumps(body).encode()
    merged = {"content-type": "application/json"}
    merged.update(headers or {})
    return HttpResponse(status, merged, raw)


def parse(
    body: object = None,
    *,
    status: int = 200,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    sent_at: float = 0.0,
) -> Token:
    return parse_token_response(response(status, body, headers, raw), URL, sent_at=sent_at)


def b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, object]) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def all_messages(exc: BaseException) -> str:
    """Every text an error exposes: str, repr, args and its cause chain."""
    texts = []
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# -- TokenRequest: what is sent ---------------------------------------------------------


def form_of(request: TokenRequest, client_id: str = CLIENT_ID) -> dict[str, list[str]]:
    body = request.http_request(URL, client_id).body
    return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def test_form_minimal() -> None:
    request = TokenRequest.create()
    sent = request.http_request(URL, CLIENT_ID)
    assert sent.method == "POST"
    assert sent.url == URL
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.headers["Accept"] == "application/json"
    assert form_of(request) == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID]}


def test_form_scope_namespace_and_params() -> None:
    request = TokenRequest.create(namespace="ns1", scope="read write", params={"audience": "x"})
    assert form_of(request) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "scope": ["read write"],
        "credstore_namespace": ["ns1"],
        "audience": ["x"],
    }


def test_form_scope_iterable_is_space_joined() -> None:
    request = TokenRequest.create(scope=["a.read", "b.write"])
    assert form_of(request)["scope"] == ["a.read b.write"]


@pytest.mark.parametrize(
    ("client_id", "namespace", "extra"),
    [
        (CREDSTORE_CLIENT_ID, "ns/1 &x=y+z", "100% sure"),
        ("sb-näme!t1", "naïve/ns=ü", "日本語 & = + %2F"),
        ("a+b=c&d", "  spaced  out  ", "%%%"),
    ],
)
def test_form_url_encoding_round_trip(client_id: str, namespace: str, extra: str) -> None:
    request = TokenRequest.create(namespace=namespace, params={"extra": extra})
    body = request.http_request(URL, client_id).body
    body.decode("ascii")  # fully percent-encoded
    assert b" " not in body
    form = form_of(request, client_id)
    assert form["client_id"] == [client_id]
    assert form["credstore_namespace"] == [namespace]
    assert form["extra"] == [extra]
    assert form["grant_type"] == ["client_credentials"]
    # Exactly one of each: a "&" or "=" in a value must not split into extra fields.
    assert sorted(form) == ["client_id", "credstore_namespace", "extra", "grant_type"]


def test_form_never_has_client_secret() -> None:
    request = TokenRequest.create(namespace="ns", scope="s", params={"a": "b"})
    assert "client_secret" not in form_of(request)
    sent = request.http_request(URL, CLIENT_ID)
    assert b"client_secret" not in sent.body
    assert "client_id" not in repr(sent)


@pytest.mark.parametrize("name", ["grant_type", "client_id", "client_secret"])
def test_params_may_not_set_reserved_fields(name: str) -> None:
    with pytest.raises(BindingError, match=name):
        TokenRequest.create(params={name: "x"})
    with pytest.raises(BindingError):
        TokenRequest.create(params=[("ok", "1"), (name, "x")])


def test_params_must_be_strings() -> None:
    with pytest.raises(BindingError):
        TokenRequest.create(params={"n": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "url",
    [
        "http://auth.example.com/oauth/token",
        "HTTP://auth.example.com/oauth/token",
        "ftp://auth.example.com/oauth/token",
        "https:///oauth/token",
        "auth.example.com/oauth/token",
        "",
    ],
)
def test_token_url_must_be_https(url: str) -> None:
    with pytest.raises(BindingError):
        check_endpoint(url, CLIENT_ID)


def test_empty_client_id_rejected() -> None:
    with pytest.raises(BindingError):
        check_endpoint(URL, "")


def test_cache_key() -> None:
    thumbprint = "x5t"
    base = TokenRequest.create(namespace="ns1", scope="s1")
    key = base.cache_key(URL, CLIENT_ID, thumbprint)
    same = TokenRequest.create(namespace="ns1", scope="s1")
    assert same == base
    assert same.cache_key(URL, CLIENT_ID, thumbprint) == key
    assert URL in key
    assert CLIENT_ID in key
    assert thumbprint in key
    assert "ns1" in key
    assert "s1" in key
    others = [
        TokenRequest.create(namespace="ns2", scope="s1").cache_key(URL, CLIENT_ID, thumbprint),
        TokenRequest.create(namespace=None, scope="s1").cache_key(URL, CLIENT_ID, thumbprint),
        TokenRequest.create(namespace="ns1", scope="s2").cache_key(URL, CLIENT_ID, thumbprint),
        base.cache_key(URL, "other-client", thumbprint),
        base.cache_key(URL + "2", CLIENT_ID, thumbprint),
        base.cache_key(URL, CLIENT_ID, "other-certificate"),
    ]
    assert len({key, *others}) == len(others) + 1
    hash(key)
    hash(base)


def test_request_repr_has_no_form_body() -> None:
    request = TokenRequest.create(namespace="ns1")
    assert "ns1" in repr(request)
    assert "grant_type" not in repr(request)
    assert "grant_type" not in repr(request.http_request(URL, CLIENT_ID))


# -- parse_token_response ------------------------------------------------------------


@pytest.mark.parametrize("token_type", ["bearer", "Bearer", "BEARER", "bEaReR"])
def test_bearer_is_case_insensitive(token_type: str) -> None:
    token = parse({"access_token": SECRET, "token_type": token_type, "expires_in": 60})
    assert token.token_type == "bearer"
    assert token.authorization() == "Bearer " + SECRET


def test_missing_token_type_means_bearer() -> None:
    assert parse({"access_token": SECRET, "expires_in": 60}).lifetime == 60


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(1800, 1800.0), (1799.5, 1799.5), ("1800", 1800.0), (" 43199 ", 43199.0), (0, 0.0)],
)
def test_expires_in_forms(expires_in: object, lifetime: float) -> None:
    token = parse({"access_token": SECRET, "expires_in": expires_in}, sent_at=500.0)
    assert token.lifetime == lifetime
    assert token.issued_at == 500.0
    assert token.expires_at == 500.0 + lifetime


def test_missing_expires_in_uses_jwt_exp() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) + 1234, "sub": "x"})
    token = parse({"access_token": jwt, "token_type": "bearer"}, sent_at=10.0)
    assert 1234 - 5 <= token.lifetime <= 1234
    assert token.expires_at == 10.0 + token.lifetime


def test_expires_in_wins_over_jwt_exp() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) + 5000})
    assert parse({"access_token": jwt, "expires_in": 100}).lifetime == 100


def test_jwt_exp_in_the_past_gives_zero_lifetime() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) - 100})
    assert parse({"access_token": jwt}).lifetime == 0.0


def test_jwt_exp_clamped() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) + 10 * 365 * 86400})
    assert parse({"access_token": jwt}).lifetime == MAX_LIFETIME


@pytest.mark.parametrize(
    "access_token",
    [
        "opaque-token-without-dots",
        unsigned_jwt({"sub": "no exp"}),
        unsigned_jwt({"exp": "tomorrow"}),
        unsigned_jwt({"exp": True}),
        "a.bm90LWpzb24.c",  # base64url of "not-json": no claims to read
        "a.b.c.d",
    ],
)
def test_no_expires_in_and_no_usable_exp_uses_default(access_token: str) -> None:
    assert parse({"access_token": access_token}).lifetime == DEFAULT_LIFETIME


@pytest.mark.parametrize("expires_in", [10**9, 1e12, "99999999999"])
def test_huge_expires_in_clamped(expires_in: object) -> None:
    assert parse({"access_token": SECRET, "expires_in": expires_in}).lifetime == MAX_LIFETIME


def test_astronomically_huge_int_expires_in_clamped() -> None:
    raw = b'{"access_token": "' + SECRET.encode() + b'", "expires_in": 1' + b"0" * 400 + b"}"
    assert parse(raw=raw).lifetime == MAX_LIFETIME


@pytest.mark.parametrize(
    "expires_in",
    [-1, -0.5, "-5", "soon", "", "1e3", "12.5", True, False, [1], {"s": 1}, float("nan")],
)
def test_unusable_expires_in(expires_in: object) -> None:
    raw = json.dumps({"access_token": SECRET, "expires_in": expires_in}).encode()
    with pytest.raises(TokenResponseError, match="expires_in") as info:
        parse(raw=raw)
    assert SECRET not in all_messages(info.value)


def test_expires_in_superscript_digit_is_a_response_error() -> None:
    with pytest.raises(TokenResponseError):
        parse({"access_token": SECRET, "expires_in": "\u00b2"})


@pytest.mark.parametrize("token_type", ["mac", "DPoP", "", 5, None])
def test_non_bearer_token_type(token_type: object) -> None:
    with pytest.raises(TokenResponseError, match="bearer") as info:
        parse({"access_token": SECRET, "token_type": token_type, "expires_in": 60})
    assert SECRET not in all_messages(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer", "expires_in": 60},
        {"access_token": "", "expires_in": 60},
        {"access_token": None},
        {"access_token": 12345},
        {"access_token": ["a"]},
    ],
)
def test_missing_access_token(body: object) -> None:
    with pytest.raises(TokenResponseError, match="access_token") as info:
        parse(body)
    assert info.value.status_code == 200


@pytest.mark.parametrize("body", [[{"access_token": SECRET}], SECRET, 42, 1.5, True, None])
def test_json_not_an_object(body: object) -> None:
    with pytest.raises(TokenResponseError) as info:
        parse(raw=json.dumps(body).encode())
    assert info.value.status_code == 200
    assert SECRET not in all_messages(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"access_token": "' + SECRET.encode() + b'"',
        b"access_token=" + SECRET.encode() + b"&expires_in=60",
        b"\xff\xfe\x00garbage",
    ],
)
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(TokenResponseError, match="not JSON") as info:
        parse(raw=raw, headers={"content-type": "text/plain"})
    assert info.value.status_code == 200
    assert SECRET not in all_messages(info.value)


@pytest.mark.parametrize(
    "value",
    [SECRET + "\r\nX-Injected: 1", SECRET + "\n", "\r" + SECRET, SECRET + "\x00", SECRET + "é"],
)
def test_access_token_unfit_for_a_header(value: str) -> None:
    with pytest.raises(TokenResponseError, match="header") as info:
        parse({"access_token": value, "expires_in": 60})
    assert SECRET not in all_messages(info.value)


def test_rfc6749_error_response() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "Client authentication failed",
        "debug": CANARY,
        "access_token": SECRET,
    }
    with pytest.raises(TokenResponseError) as info:
        parse(body, status=400)
    exc = info.value
    assert exc.status_code == 400
    assert exc.error == "invalid_client"
    assert exc.error_description == "Client authentication failed"
    text = all_messages(exc)
    assert "400" in str(exc)
    assert "invalid_client" in str(exc)
    assert URL in str(exc)
    assert CANARY not in text
    assert SECRET not in text
    assert json.dumps(body) not in text
    # Pickling keeps the fields and still carries no body.
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.status_code, clone.error, clone.error_description) == (
        400,
        "invalid_client",
        "Client authentication failed",
    )
    assert CANARY not in all_messages(clone)


@pytest.mark.parametrize("status", [401, 403, 500, 502])
def test_error_without_oauth_fields_names_status_not_body(status: int) -> None:
    with pytest.raises(TokenResponseError) as info:
        parse({"message": CANARY}, status=status)
    assert str(status) in str(info.value)
    assert info.value.status_code == status
    assert info.value.error is None
    assert CANARY not in all_messages(info.value)


def test_html_error_page() -> None:
    html = (
        f"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        f"<body><h1>Bad Gateway</h1><p>{CANARY}</p></body></html>"
    ).encode()
    with pytest.raises(TokenResponseError) as info:
        parse(raw=html, status=502, headers={"content-type": "text/html; charset=utf-8"})
    exc = info.value
    assert exc.status_code == 502
    assert "502" in str(exc)
    assert "text/html" in str(exc)
    text = all_messages(exc)
    assert "<" not in str(exc)
    assert CANARY not in text
    assert "Bad Gateway" not in text


def test_error_fields_cleaned_and_truncated() -> None:
    description = "line one\r\nFAKE LOG LINE\x1b[31m red\tend\x00\x7f" + "x" * 1000
    body = {"error": "invalid_request\r\ninjected" + "e" * 500, "error_description": description}
    with pytest.raises(TokenResponseError) as info:
        parse(body, status=400)
    exc = info.value
    assert exc.error_description is not None
    assert exc.error is not None
    for text in (exc.error, exc.error_description, str(exc)):
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    assert exc.error_description.startswith("line one FAKE LOG LINE [31m red end")
    assert len(exc.error_description) <= 201
    assert exc.error_description.endswith("…")
    assert len(exc.error) <= 81
    assert len(str(exc)) < 600


def test_error_description_unicode_line_breaks_and_c1_controls_cleaned() -> None:
    description = "one\u0085two\u2028three\u2029four\u009b31m"
    with pytest.raises(TokenResponseError) as info:
        parse({"error": "invalid_client", "error_description": description}, status=401)
    exc = info.value
    for text in (exc.error_description or "", str(exc)):
        assert len(text.splitlines()) == 1
        assert "\u009b" not in text


def test_response_over_the_cap_rejected() -> None:
    raw = b'{"access_token": "' + b"a" * MAX_RESPONSE_BYTES + b'", "expires_in": 60}'
    assert len(raw) > MAX_RESPONSE_BYTES
    with pytest.raises(TokenResponseError, match="larger than") as info:
        parse(raw=raw)
    assert len(str(info.value)) < 300


def test_response_at_the_cap_accepted() -> None:
    prefix, suffix = b'{"expires_in": 60, "access_token": "t", "pad": "', b'"}'
    raw = prefix + b"p" * (MAX_RESPONSE_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(raw) == MAX_RESPONSE_BYTES
    assert parse(raw=raw).lifetime == 60


# -- Token ----------------------------------------------------------------------------


def make_token(value: str = SECRET, lifetime: float = 1800.0) -> Token:
    return Token(value, token_type="bearer", issued_at=100.0, lifetime=lifetime)


def test_token_repr_and_str_hide_the_value() -> None:
    token = make_token()
    for text in (repr(token), str(token), f"{token}", "%s" % (token,), f"{token!r}"):  # noqa: UP031
        assert SECRET not in text
        assert "redacted" in text
    assert token.expires_at == 1900.0


def test_token_public_attributes_do_not_reveal_value() -> None:
    token = make_token()
    for name in dir(token):
        if name.startswith("_"):
            continue
        value = getattr(token, name)
        if not callable(value):
            assert SECRET not in str(value), name
    assert not hasattr(token, "__dict__")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_token_refuses_to_pickle(protocol: int) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(make_token(), protocol=protocol)


def test_token_refuses_to_copy() -> None:
    with pytest.raises(TypeError):
        copy.copy(make_token())


def test_token_matches_and_authorization() -> None:
    token = make_token()
    assert token.authorization() == f"Bearer {SECRET}"
    assert token.matches(f"Bearer {SECRET}")
    assert not token.matches(None)
    assert not token.matches("")
    assert not token.matches(SECRET)
    assert not token.matches(f"Bearer {SECRET}x")
    assert not token.matches("Bearer other")
    assert not make_token("other").matches(f"Bearer {SECRET}")


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
            subject=SUBJECT,
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


# -- classify_failure -----------------------------------------------------------------


def ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1000)")
    error.reason = reason  # type: ignore[misc]
    error.library = "SSL"  # type: ignore[misc]
    return error


def cert_verification_error() -> ssl.SSLCertVerificationError:
    error = ssl_error("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError)
    assert isinstance(error, ssl.SSLCertVerificationError)
    error.verify_code = 20  # type: ignore[misc]
    error.verify_message = "unable to get local issuer certificate"  # type: ignore[misc]
    return error


def chained(inner: BaseException, wrapper: type[Exception] = RuntimeError) -> Exception:
    """`inner` as the cause of a library-style wrapper, raised for real."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise wrapper("wrapped by an HTTP library") from exc
    except wrapper as outer:
        return outer


def test_classify_server_certificate_verification() -> None:
    error = cert_verification_error()
    for exc in (error, chained(error)):
        failure = classify_failure(exc)
        assert failure.kind == "tls_server"
        assert "unable to get local issuer certificate" in failure.detail
        assert not failure.retryable
        assert failure.exception is exc


def test_classify_python_built_ssl_errors() -> None:
    hostname = ssl.CertificateError("hostname 'a.example' doesn't match 'b.example'")
    assert classify_failure(chained(hostname)).kind == "tls_server"
    handshake = ssl.SSLError("bad handshake: Error([('SSL routines', '', 'alert')])")
    # No OpenSSL reason to go by: treated as a broken connection, retried within bounds.
    assert classify_failure(chained(handshake)).kind in ("tls_client", "other", "connect")


@pytest.mark.parametrize(
    "reason",
    [
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    ],
)
def test_classify_client_certificate_rejected(reason: str) -> None:
    error = ssl_error(reason)
    for exc in (error, chained(error), RuntimeError("connect failed", error)):
        failure = classify_failure(exc)
        assert failure.kind == "tls_client", exc
        assert reason in failure.detail
        assert not failure.retryable


def test_classify_other_tls_error() -> None:
    failure = classify_failure(chained(ssl_error("WRONG_VERSION_NUMBER")))
    assert failure.kind == "other"
    assert "WRONG_VERSION_NUMBER" in failure.detail
    assert not failure.retryable


def test_classify_tls_closed_early_is_retryable_tls_closed() -> None:
    failure = classify_failure(ssl.SSLEOFError(8, "EOF"))
    assert failure.kind == "tls_closed"
    assert failure.retryable


@pytest.mark.parametrize(
    ("inner", "detail"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "reset"),
        (BrokenPipeError(32, "Broken pipe"), "reset"),
        (socket.gaierror(-2, "Name or service not known"), "resolved"),
    ],
)
def test_classify_connection_errors(inner: OSError, detail: str) -> None:
    via_cause = chained(inner)
    via_double_cause = chained(chained(inner), wrapper=ValueError)
    via_args = RuntimeError("Max retries exceeded", inner)
    via_nested_args = RuntimeError("outer", ValueError("middle", inner))

    class WithReason(Exception):
        def __init__(self, reason: BaseException) -> None:
            super().__init__("urllib3-style")
            self.reason = reason

    via_reason = WithReason(inner)
    for exc in (inner, via_cause, via_double_cause, via_args, via_nested_args, via_reason):
        failure = classify_failure(exc)
        assert failure.kind == "connect", exc
        assert detail in failure.detail
        assert failure.retryable
        assert failure.exception is exc


def _reset_then_fail() -> None:
    try:
        raise ConnectionResetError(104, "reset")
    except ConnectionResetError:
        raise RuntimeError("during handling")  # noqa: B904 - an implicit __context__


def test_classify_implicit_context() -> None:
    with pytest.raises(RuntimeError) as info:
        _reset_then_fail()
    assert classify_failure(info.value).kind == "connect"


@pytest.mark.parametrize("inner", [socket.timeout("timed out"), TimeoutError("timed out")])
def test_classify_timeout(inner: OSError) -> None:
    for exc in (inner, chained(inner), RuntimeError("read", inner)):
        failure = classify_failure(exc)
        assert failure.kind == "timeout"
        assert failure.retryable


def test_classify_unknown_uses_library_verdict() -> None:
    exc = RuntimeError("something")
    assert classify_failure(exc).kind == "connect"
    assert classify_failure(exc, timed_out=True).kind == "timeout"
    assert classify_failure(exc).exception is exc


def test_classify_survives_cycles() -> None:
    a = RuntimeError("a")
    b = ValueError("b")
    a.__cause__ = b
    b.__context__ = a
    b.args = (a, b)
    assert classify_failure(a).kind == "connect"


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        ("connect", True),
        ("timeout", True),
        ("tls_server", False),
        ("tls_client", False),
        ("too_large", False),
        ("other", False),
    ],
)
def test_transport_failure_retryable(kind: str, retryable: bool) -> None:
    assert TransportFailure(kind, "d").retryable is retryable


def test_transport_failure_repr_hides_exception() -> None:
    failure = TransportFailure("connect", "refused", RuntimeError(CANARY))
    assert CANARY not in repr(failure)
