"""The token endpoint fault matrix: every row for requests, httpx sync and httpx async.

Each row of `ROWS` is one thing that goes wrong at (or on the way to) the token
endpoint of a real loopback mTLS server. For every row and every client the test
makes one ordinary resource request through the auth object and checks

- the outcome: the error type (and its `kind` or `status_code`), or success;
- the message: it names the token URL, a row-specific fragment and, where the
  server refused our certificate, its subject;
- no retry storm: exactly the expected number of attempts, seen by the server
  (``token_requests``) and by the client (its "retry" warnings);
- backoff: the server's arrival times of the attempts are spaced by at least the
  policy's smallest delay (or the capped Retry-After);
- the deadline: the call returns within the auth's ``timeout`` plus a margin.

The README's fault table is generated from `ROWS`::

    python tests/test_fault_matrix.py
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import pytest
from clients import CLIENT_NAMES, Client

from mtls_auth import TokenRequestError, TokenResponseError
from mtls_auth._http import MAX_RESPONSE_BYTES
from mtls_auth._retry import RetryPolicy
from mtls_auth._token import MAX_LIFETIME
from mtls_auth.testing import PKI, Credential, Fault, TokenServer
from mtls_auth.testing.plugin import CLIENT_ID

POLICY = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2, max_retry_after=0.2)
#: Default deadline of one token fetch (the auth's ``timeout=``), and the slack allowed.
TIMEOUT = 2.0
MARGIN = 1.0
#: Clock granularity and scheduling slack when comparing attempt spacing.
EPSILON = 0.005
#: Retried rows fail every attempt: the fault is queued this many times.
ALWAYS = 100


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


# -- the rows -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the fault matrix (and of the README table)."""

    id: str
    #: README: the row's name and what the server (or the network) does.
    title: str
    happens: str
    #: The expected outcome: an error type (None: a token, the call succeeds).
    error: type[Exception] | None
    #: A fragment of the error message (besides the token URL, always checked).
    fragment: str = ""
    #: `TokenRequestError.kind` / `TokenResponseError.status_code` expected.
    kind: str | None = None
    status: int | None = None
    #: Token requests the client makes, and how many of them reach the HTTP layer.
    attempts: int = 1
    server_sees: int | None = None  # None: same as attempts
    #: The fault queued for the token endpoint (built at run time: HTTP dates).
    fault: Callable[[], Fault] | None = None
    times: int = 1
    #: How the scene is set: "refused", "untrusted_client", "unknown_ca",
    #: "expired_server", "wrong_host" or "" (the normal server).
    scene: str = ""
    #: The message names the client certificate's subject.
    names_subject: bool = False
    #: Server Retry-After, in seconds, that spaces the attempts (None: backoff).
    retry_after: float | None = None
    #: The auth's timeout= for this row (the deadline of the whole fetch).
    timeout: float = TIMEOUT
    #: Success rows: the token's lifetime as the cache believes it.
    lifetime: float | None = None
    #: client name -> bug description; the row is a strict xfail for that client.
    bugs: dict[str, str] = field(default_factory=dict)

    @property
    def seen(self) -> int:
        return self.attempts if self.server_sees is None else self.server_sees

    @property
    def outcome(self) -> str:
        if self.error is None:
            return "success"
        if self.kind:
            return f"`{self.error.__name__}` (kind `{self.kind}`)"
        if self.status:
            return f"`{self.error.__name__}` (HTTP {self.status})"
        return f"`{self.error.__name__}`"


def _token_body(**fields: Any) -> Callable[[], Fault]:
    body = {"access_token": "eyJhbGciOiJub25lIn0.e30.x", "token_type": "bearer"}
    body.update(fields)
    for name, value in list(body.items()):
        if value is None:
            del body[name]
    raw = json.dumps(body)
    return lambda: Fault.body(raw)


ROWS: list[Row] = [
    # -- connection and TLS ------------------------------------------------------------
    Row(
        "refused",
        "refused connection",
        "nothing listens on the token URL's port",
        TokenRequestError,
        "connection refused",
        kind="connect",
        attempts=3,
        server_sees=0,
        scene="refused",
    ),
    Row(
        "tls-client-rejected",
        "TLS handshake rejected",
        "the server does not trust the client certificate's CA and aborts the handshake",
        TokenRequestError,
        "rejected the client certificate",
        kind="tls_client",
        server_sees=0,
        scene="untrusted_client",
        names_subject=True,
    ),
    Row(
        "unknown-ca",
        "unknown CA",
        "the server's certificate does not chain to `verify=`",
        TokenRequestError,
        "could not verify the TLS certificate",
        kind="tls_server",
        server_sees=0,
        scene="unknown_ca",
    ),
    Row(
        "expired-server-cert",
        "expired server certificate",
        "the server presents a certificate that expired yesterday",
        TokenRequestError,
        "certificate has expired",
        kind="tls_server",
        server_sees=0,
        scene="expired_server",
    ),
    Row(
        "hostname-mismatch",
        "hostname mismatch",
        "the server's certificate is for `wrong-host.invalid`, not `localhost`",
        TokenRequestError,
        "Hostname mismatch",
        kind="tls_server",
        server_sees=0,
        scene="wrong_host",
    ),
    # -- transport during the response -------------------------------------------------
    Row(
        "slow-loris",
        "slow loris",
        "status line, then one header byte every 0.05 s; the headers never end",
        TokenRequestError,
        "timed out",
        kind="timeout",
        # The server gives up after `total`: a client without a deadline for the
        # whole response returns then, later than its timeout.
        fault=lambda: Fault.slow_headers(interval=0.05, total=3.0),
        timeout=0.5,
    ),
    Row(
        "reset-mid-body",
        "reset mid-body",
        "headers with Content-Length, half the body, then TCP RST (every attempt)",
        TokenRequestError,
        "failed",
        kind="connect",
        attempts=3,
        fault=Fault.reset_mid_body,
        times=ALWAYS,
    ),
    Row(
        "1gb-body",
        "1 GB body",
        "200 announcing and streaming 1 GiB of JSON",
        TokenRequestError,
        f"over {MAX_RESPONSE_BYTES} bytes",
        kind="too_large",
        fault=Fault.huge_body,
        timeout=1.0,
    ),
    # -- server errors: retried --------------------------------------------------------
    Row(
        "500",
        "500",
        "HTTP 500 `server_error` on every attempt",
        TokenResponseError,
        "HTTP 500 (server_error",
        status=500,
        attempts=3,
        fault=lambda: Fault.status(500),
        times=ALWAYS,
    ),
    Row(
        "502",
        "502",
        "HTTP 502 on every attempt",
        TokenResponseError,
        "HTTP 502",
        status=502,
        attempts=3,
        fault=lambda: Fault.status(502),
        times=ALWAYS,
    ),
    Row(
        "503-retry-after-seconds",
        "503, Retry-After in seconds",
        "HTTP 503 with `Retry-After: 1` on every attempt (capped to max_retry_after 0.2 s)",
        TokenResponseError,
        "HTTP 503 (temporarily_unavailable",
        status=503,
        attempts=3,
        fault=lambda: Fault.status(503, retry_after="1"),
        times=ALWAYS,
        retry_after=0.2,
    ),
    Row(
        "503-retry-after-date",
        "503, Retry-After as HTTP date",
        "HTTP 503 with `Retry-After: <now + 10 s as IMF-fixdate>` (capped to 0.2 s)",
        TokenResponseError,
        "HTTP 503 (temporarily_unavailable",
        status=503,
        attempts=3,
        fault=lambda: Fault.status(503, retry_after=_http_date(10)),
        times=ALWAYS,
        retry_after=0.2,
    ),
    Row(
        "429",
        "429",
        "HTTP 429 `temporarily_unavailable` on every attempt",
        TokenResponseError,
        "HTTP 429 (temporarily_unavailable",
        status=429,
        attempts=3,
        fault=lambda: Fault.status(429),
        times=ALWAYS,
    ),
    # -- OAuth errors: not retried -----------------------------------------------------
    Row(
        "400-invalid_client",
        "400 `invalid_client`",
        'HTTP 400 `{"error": "invalid_client"}`',
        TokenResponseError,
        "HTTP 400 (invalid_client",
        status=400,
        fault=lambda: Fault.status(400, body={"error": "invalid_client"}),
    ),
    Row(
        "401",
        "401",
        "HTTP 401 `invalid_client`",
        TokenResponseError,
        "HTTP 401 (invalid_client",
        status=401,
        fault=lambda: Fault.status(401),
    ),
    # -- bad token responses: not retried ----------------------------------------------
    Row(
        "invalid-json",
        "invalid JSON",
        "200 with truncated JSON",
        TokenResponseError,
        "body that is not JSON",
        fault=Fault.malformed_json,
    ),
    Row(
        "json-not-object",
        "JSON that is not an object",
        "200 with `[1, 2]`",
        TokenResponseError,
        "JSON that is not an object (a list)",
        fault=lambda: Fault.body(b"[1, 2]"),
    ),
    Row(
        "missing-access_token",
        "missing `access_token`",
        '200 with `{"token_type": "bearer", "expires_in": 3600}`',
        TokenResponseError,
        "without an access_token",
        fault=_token_body(access_token=None, expires_in=3600),
    ),
    Row(
        "token_type-not-bearer",
        "`token_type` not bearer",
        '200 with `"token_type": "mac"`',
        TokenResponseError,
        "of type 'mac'; only bearer tokens are supported",
        fault=_token_body(token_type="mac", expires_in=3600),
    ),
    Row(
        "expires_in-negative",
        "negative `expires_in`",
        '200 with `"expires_in": -5`',
        TokenResponseError,
        "unusable expires_in (int '-5')",
        fault=_token_body(expires_in=-5),
    ),
    Row(
        "expires_in-huge",
        "huge `expires_in`",
        '200 with `"expires_in": 10**12`',
        None,
        f"token lifetime clamped to {MAX_LIFETIME:.0f} s",
        fault=_token_body(expires_in=10**12),
        lifetime=MAX_LIFETIME,
    ),
    Row(
        "expires_in-string-number",
        '`expires_in` "3600"',
        '200 with `"expires_in": "3600"` (a string)',
        None,
        "accepted as 3600 s",
        fault=_token_body(expires_in="3600"),
        lifetime=3600.0,
    ),
    Row(
        "expires_in-string-word",
        '`expires_in` "soon"',
        '200 with `"expires_in": "soon"`',
        TokenResponseError,
        "unusable expires_in (str 'soon')",
        fault=_token_body(expires_in="soon"),
    ),
]


def markdown_table(rows: list[Row] = ROWS) -> str:
    """The README's fault table: one line per row of the matrix."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| fault | what happens | outcome | message contains | attempts |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        fragment = "token URL" + (f", `{row.fragment}`" if row.fragment else "")
        if row.error is None:
            fragment = row.fragment
        elif row.names_subject:
            fragment += ", certificate subject"
        if row.error is not None and row.attempts > 1:
            fragment += f", `gave up after {row.attempts} attempts`"
        if row.retry_after is not None:
            attempts = f"{row.attempts}, {row.retry_after:g} s apart"
        elif row.attempts > 1:
            attempts = f"{row.attempts}, with backoff"
        else:
            attempts = str(row.attempts)
        if row.seen != row.attempts:
            attempts += f" (server sees {row.seen})"
        outcome = row.outcome
        if row.bugs:
            outcome += f" — **not yet within the deadline on {', '.join(row.bugs)}**"
        lines.append(
            f"| {cell(row.title)} | {cell(row.happens)} | {cell(outcome)} "
            f"| {cell(fragment)} | {attempts} |"
        )
    return "\n".join(lines)


# -- fixtures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenery:
    """Credentials made once per module: RSA key generation is the slow part."""

    expired_server: Credential
    wrong_host_server: Credential
    stranger: Credential


@pytest.fixture(scope="module")
def scenery(mtls_pki: PKI) -> Scenery:
    return Scenery(
        mtls_pki.expired_server(),
        mtls_pki.wrong_host_server(),
        mtls_pki.untrusted_client("stranger"),
    )


@pytest.fixture
def mtls_server(
    row: Row, mtls_pki: PKI, mtls_client_certificate: Credential, scenery: Scenery
) -> Iterator[TokenServer]:
    """Overrides the kit's server for this module: one per row, on the wall clock.

    Built from the kit's `TokenServer` as the ``mtls_server`` fixture builds
    it, with the row's server certificate and, where the server rejects the
    client's certificate, a lingering close. Its clock is the wall clock (not
    ``mtls_clock``): the arrival times of the attempts are what the backoff
    checks measure.
    """
    server_credential = {
        "expired_server": scenery.expired_server,
        "wrong_host": scenery.wrong_host_server,
    }.get(row.scene)
    # With TLS 1.3 the client sends its request before the server has checked
    # its certificate; an immediate close then resets the connection and the
    # alert can be lost (see test_lost_tls_alert_is_tls_closed_on_httpx_async).
    # The lingering close makes "the server rejected the handshake" deterministic.
    linger = 1.0 if row.scene == "untrusted_client" else 0.0
    with TokenServer(
        mtls_pki, server_credential=server_credential, handshake_linger=linger
    ) as server:
        server.register_client(CLIENT_ID, mtls_client_certificate)
        yield server


@pytest.fixture
def client(client: Client) -> Client:
    """The shared three-client harness with the matrix's retry policy and deadline."""
    return client.bind(retry=POLICY, timeout=TIMEOUT)


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then closed at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[float]]:
    """When (time.monotonic) the client announced each retry ("retry n/m in ...")."""
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    started_wall, started_mono = time.time(), time.monotonic()

    def retries() -> list[float]:
        return [
            record.created - started_wall + started_mono
            for record in caplog.records
            if record.name.startswith("mtls_auth.") and "; retry " in record.getMessage()
        ]

    return retries


def _cases() -> list[Any]:
    """(row, client) pairs with the ids ``<row>-<client>``; a row's known bugs are strict xfails."""
    cases = []
    for row in ROWS:
        for name in CLIENT_NAMES:
            marks = []
            if name in row.bugs:
                marks.append(pytest.mark.xfail(reason=f"BUG: {row.bugs[name]}", strict=True))
            cases.append(pytest.param(row, name, id=f"{row.id}-{name}", marks=marks))
    return cases


# -- the matrix ---------------------------------------------------------------------------


def _min_gap(row: Row, attempt: int) -> float:
    """The smallest pause the policy may take after failed attempt `attempt` (1-based)."""
    if row.retry_after is not None:
        return min(row.retry_after, POLICY.max_retry_after)
    return min(POLICY.max_backoff, POLICY.backoff * 2 ** (attempt - 1)) / 2


def _wait_for(predicate: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize(("row", "client"), _cases(), indirect=["client"])
def test_fault_matrix(
    row: Row,
    client: Client,
    mtls_server: TokenServer,
    mtls_pki: PKI,
    mtls_client_certificate: Credential,
    scenery: Scenery,
    retry_log: Callable[[], list[float]],
) -> None:
    overrides: dict[str, Any] = {"timeout": row.timeout}
    subject = mtls_client_certificate.subject
    if row.scene == "refused":
        overrides["token_url"] = f"https://localhost:{_closed_port()}/oauth/token"
    elif row.scene == "untrusted_client":
        overrides["certificate"] = scenery.stranger.chain_pem
        overrides["key"] = scenery.stranger.key_pem
        subject = scenery.stranger.subject
    elif row.scene == "unknown_ca":
        overrides["verify"] = mtls_pki.untrusted_root.cert_pem
    if row.fault is not None:
        mtls_server.inject(row.fault(), times=row.times)
    if row.error is None:
        # The token is made up: the resource answers 200 whatever it carries.
        mtls_server.inject(Fault.body(b'{"ok": true}'), path="/resource")
    auth = client.auth(**overrides)
    token_url = overrides.get("token_url", mtls_server.token_url)

    outcome = client.call(auth)

    # 1. every call returns within its deadline
    assert outcome.elapsed < row.timeout + MARGIN, (
        f"{client.name} took {outcome.elapsed:.2f}s with timeout={row.timeout}"
    )
    # 2. the outcome and its message
    if row.error is None:
        assert outcome.error is None, repr(outcome.error)
        assert outcome.status == 200
        token = auth._client.cache.current(auth._key())
        assert token is not None
        assert token.lifetime == row.lifetime
    else:
        error = outcome.error
        assert type(error) is row.error, repr(error)
        message = str(error)
        assert token_url in message
        assert row.fragment in message
        if row.names_subject:
            assert subject in message
        if row.kind is not None:
            assert isinstance(error, TokenRequestError)
            # A connection cut mid-TLS-record is "tls_closed" for some stacks
            # (anyio on Python 3.9): the same retryable family as "connect".
            same = {"connect", "tls_closed"} if row.kind == "connect" else {row.kind}
            assert error.kind in same
        if row.status is not None:
            assert isinstance(error, TokenResponseError)
            assert error.status_code == row.status
        if row.attempts > 1:
            assert f"gave up after {row.attempts} attempts" in message
    # 3. no retry storm: exactly the expected attempts, seen from both ends
    retries = retry_log()
    assert len(retries) == row.attempts - 1, f"{len(retries)} retries logged"
    requests_seen = mtls_server.token_requests
    assert len(requests_seen) == row.seen
    # 4. backoff observed, at the server (arrival times) or at the client
    times = [r.time for r in requests_seen]
    if row.seen > 1:
        for attempt, (earlier, later) in enumerate(zip(times, times[1:]), start=1):
            assert later - earlier >= _min_gap(row, attempt) - EPSILON, times
    elif row.attempts > 1:
        minimum = sum(_min_gap(row, n) for n in range(1, row.attempts))
        assert outcome.elapsed >= minimum - EPSILON
    # 5. streamed faults: the server stopped as soon as the client went away
    if row.id in ("1gb-body", "slow-loris"):
        assert _wait_for(lambda: len(mtls_server.fault_streams) == 1), mtls_server.fault_streams
        (stream,) = mtls_server.fault_streams
        assert stream.ended == "client", stream
        if row.id == "1gb-body":
            # The client stopped at its cap, plus what was in flight.
            assert stream.bytes_sent < MAX_RESPONSE_BYTES * 16, stream
    if row.scene == "untrusted_client":
        assert _wait_for(lambda: bool(mtls_server.handshake_failures)), "no handshake refused"


def test_lost_tls_alert_is_tls_closed_on_httpx_async() -> None:
    """A rejected certificate whose TLS 1.3 alert was lost, as httpx async reports it.

    Seen on about half of the handshakes the loopback server rejects without
    `handshake_linger`: httpcore ignores the failed write of the request, and
    anyio's TLS stream, already broken, raises a bare BrokenResourceError on the
    read that follows. requests sees ssl.SSLEOFError there (kind "tls_closed").
    """
    import anyio
    import httpcore

    from mtls_auth._http import classify_failure

    def raised() -> BaseException:
        try:
            try:
                try:
                    raise anyio.BrokenResourceError
                except anyio.BrokenResourceError as exc:
                    raise httpcore.ReadError("") from exc
            except httpcore.ReadError as exc:
                raise httpx.ReadError("") from exc
        except httpx.ReadError as exc:
            return exc
        raise AssertionError("unreachable")

    failure = classify_failure(raised())
    assert failure.kind == "tls_closed", failure


def test_rejected_2xx_bodies_report_the_status_code_alike() -> None:
    """Every 200 whose body is not a usable token carries the same `status_code`."""
    from mtls_auth._http import HttpResponse
    from mtls_auth._token import parse_token_response

    bodies = [
        b'{"access_token": "t", "expires_in": ',
        b"[1, 2]",
        b'{"token_type": "bearer"}',
        b'{"access_token": "t", "token_type": "mac"}',
        b'{"access_token": "t", "expires_in": -5}',
        b'{"access_token": "t", "expires_in": "soon"}',
    ]
    codes = []
    for body in bodies:
        response = HttpResponse(200, {"content-type": "application/json"}, body)
        with pytest.raises(TokenResponseError) as caught:
            parse_token_response(response, "https://uaa.example/oauth/token", sent_at=0.0)
        codes.append(caught.value.status_code)
    assert len(set(codes)) == 1, codes


def test_retry_after_http_date_is_honoured() -> None:
    """Retry-After as an HTTP date reaches the client verbatim and is parsed."""
    from mtls_auth._retry import parse_retry_after

    header = _http_date(10)
    assert Fault.status(503, retry_after=header).headers == (("Retry-After", header),)
    wait = parse_retry_after(header)
    assert wait is not None
    assert 8.0 <= wait <= 10.0


def test_markdown_table_has_every_row() -> None:
    table = markdown_table()
    assert len(table.splitlines()) == len(ROWS) + 2
    for row in ROWS:
        assert row.title.replace("|", "\\|") in table


if __name__ == "__main__":
    print(markdown_table())
