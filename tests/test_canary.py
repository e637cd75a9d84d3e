"""The secret canary (``canary.py``) and the debug outputs it watches.

With every debug output on (``http.client`` debuglevel, DEBUG for requests,
urllib3, httpx, httpcore and mtls_auth), the library's own requests and the
token endpoint exchange show no secret, for requests, httpx sync and httpx
async; and the canary does catch a secret that leaks into any of its channels
(log records of quiet and disabled loggers, warnings, library exceptions and
their causes, ``http.client``'s print, the repr of a library object), names it
without showing it, and lets the user's own resource trace through.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from clients import Client

import mtls_auth.httpx as mhttpx
from mtls_auth import MtlsAuthError, TokenRequestError
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import Credential, TokenServer

FAST_RETRY = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02, max_retry_after=0.1)


def _bound(client: Client) -> Client:
    """A client of the shared harness with fast retries; requests ignores the environment;
    only the errors a user of the libraries expects are reported, anything else raises."""
    return client.bind(
        retry=FAST_RETRY,
        timeout=5.0,
        call_options={
            "trust_env": False,
            "catch": (MtlsAuthError, requests.RequestException, httpx.HTTPError),
        },
    )


@pytest.fixture
def requests_client(clients: list[Client]) -> Client:
    """The requests client of the shared harness (the canary's own checks use requests)."""
    (made,) = [_bound(client) for client in clients if client.name == "requests"]
    return made


# -- every debug output on --------------------------------------------------------------------


@pytest.fixture
def everything_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("requests", "urllib3", "httpx", "httpcore", "mtls_auth", "hpack", "h11"):
        caplog.set_level(logging.DEBUG, logger=name)
    previous = http.client.HTTPConnection.debuglevel
    http.client.HTTPConnection.debuglevel = 1
    try:
        yield caplog
    finally:
        http.client.HTTPConnection.debuglevel = previous


def test_no_secret_in_any_debug_output(
    everything_at_debug: pytest.LogCaptureFixture,
    secret_canary: Any,
    mtls_server: TokenServer,
    clients: list[Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = mtls_server
    caplog = everything_at_debug
    for client in map(_bound, clients):  # requests, httpx sync, httpx async
        auth = client.auth()
        for _ in range(2):
            outcome = client.call(auth, server.resource_url)
            assert outcome.status == 200, outcome.error
        server.revoke_all()  # a 401, a refresh and a retry, all traced
        outcome = client.call(auth, server.resource_url)
        assert outcome.status == 200, outcome.error
        assert outcome.history == [401]
        # A failing token request (error body and all) is traced too.
        failing = client.auth(client_id="unregistered")
        outcome = client.call(failing, server.resource_url)
        assert isinstance(outcome.error, MtlsAuthError)
        if not client.is_async:
            auth.close()
            failing.close()
    assert server.tokens_issued == 6

    # The channels really carried the traffic...
    names = {r.name.split(".")[0] for r in caplog.records}
    assert {"urllib3", "httpx", "httpcore", "mtls_auth"} <= names, names
    traced = [text for where, text in secret_canary.texts if where.startswith("http.client")]
    assert any("POST /oauth/token" in text for text in traced)
    assert any("GET /resource" in text for text in traced)
    # ...the user's own trace of the resource request shows its bearer (by design;
    # the canary lets exactly that through)...
    printed = capsys.readouterr().out
    assert "Authorization: Bearer " in printed
    # ...and nothing else anywhere shows a secret.
    assert secret_canary.findings() == []
    for token in server._tokens:
        assert token not in caplog.text
        for line in printed.splitlines():
            if token in line:
                assert "GET /resource" in line
                assert f"Bearer {token}" in line


def test_token_endpoint_exchange_in_http_client_trace_carries_no_bearer(
    everything_at_debug: pytest.LogCaptureFixture,
    mtls_server: TokenServer,
    requests_client: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = mtls_server
    auth = requests_client.auth()
    outcome = requests_client.call(auth, server.resource_url)
    assert outcome.status == 200
    server.revoke_all()
    outcome = requests_client.call(auth, server.resource_url)
    assert outcome.status == 200
    auth.close()
    printed = capsys.readouterr().out
    token_sends = [
        line for line in printed.splitlines() if line.startswith("send: b'POST /oauth/token")
    ]
    assert len(token_sends) == 2
    for line in token_sends:
        assert "authorization" not in line.lower()
    bodies = [line for line in printed.splitlines() if "grant_type=client_credentials" in line]
    assert bodies
    assert all("client_secret" not in line and "access_token" not in line for line in bodies)
    assert "access_token" not in printed  # http.client never prints a response body


# -- the canary itself ------------------------------------------------------------------------


def _one_token(server: TokenServer, client: Client) -> str:
    """One resource call through requests; the one token it made the server issue."""
    auth = client.auth()
    outcome = client.call(auth, server.resource_url)
    assert outcome.status == 200
    auth.close()
    (token,) = list(server._tokens)
    return token


@pytest.mark.parametrize(
    "channel",
    [
        "debug-log-of-a-quiet-logger",
        "disabled-logger",
        "exception-in-log",
        "warning",
        "warning-inside-pytest-warns",
        "library-exception",
        "library-exception-cause",
        "http-client-reply",
        "http-client-token-endpoint-authorization",
        "repr",
    ],
)
def test_canary_catches_a_leaked_token(
    channel: str,
    secret_canary: Any,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    requests_client: Client,
) -> None:
    token = _one_token(mtls_server, requests_client)
    assert secret_canary.findings() == []
    quiet = logging.getLogger("tests.canary.quiet")
    quiet.setLevel(logging.CRITICAL)  # nothing below would normally be created
    if channel == "debug-log-of-a-quiet-logger":
        quiet.debug("the token is %s", token)
    elif channel == "disabled-logger":
        quiet.disabled = True
        quiet.critical("token=%s", token)
        quiet.disabled = False
    elif channel == "exception-in-log":
        try:
            raise RuntimeError("Bearer " + token)
        except RuntimeError:
            quiet.exception("request failed")
    elif channel == "warning":
        with warnings.catch_warnings(record=True):  # kept out of pytest's summary
            warnings.simplefilter("always")
            warnings.warn(f"careful: {token}", UserWarning, stacklevel=1)
    elif channel == "warning-inside-pytest-warns":
        with pytest.warns(UserWarning, match="careful"):
            warnings.warn(f"careful: {token}", UserWarning, stacklevel=1)
    elif channel == "library-exception":
        with contextlib.suppress(MtlsAuthError):
            raise TokenRequestError(f"failed with {token}")
    elif channel == "library-exception-cause":
        try:
            try:
                raise ValueError(f"header Bearer {token} rejected")
            except ValueError as exc:
                raise TokenRequestError("failed") from exc
        except TokenRequestError:
            pass
    elif channel == "http-client-reply":
        http.client.print("header:", "X-Echo:", f"Bearer {token}")  # type: ignore[attr-defined]
    elif channel == "http-client-token-endpoint-authorization":
        http.client.print(  # type: ignore[attr-defined]
            "send:", repr(b"POST /oauth/token HTTP/1.1\r\nAuthorization: Bearer " + token.encode())
        )
    elif channel == "repr":

        class LeakyTransport(mhttpx.MtlsTransport):
            leak = ""

            def __repr__(self) -> str:
                return f"<LeakyTransport {self.leak}>"  # a repr that leaks

        transport = LeakyTransport(
            mtls_client_certificate.chain_pem,
            mtls_client_certificate.key_pem,
            verify=mtls_server.ca_pem,
        )
        transport.leak = token
    findings = secret_canary.findings()
    assert findings, channel
    assert all(token not in finding for finding in findings)  # named, never shown
    assert any("access token #1" in finding for finding in findings)
    secret_canary.clear()
    if channel == "repr":
        transport.leak = ""
        transport.close()


def test_canary_lets_the_users_own_resource_trace_through(
    secret_canary: Any, mtls_server: TokenServer, requests_client: Client
) -> None:
    token = _one_token(mtls_server, requests_client)
    http.client.print(  # type: ignore[attr-defined]
        "send:",
        repr(
            f"GET /resource HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        ),
    )
    assert secret_canary.findings() == []


@pytest.mark.parametrize("what", ["key-line-in-log", "pkcs8-of-a-pkcs1-key", "credstore-key"])
def test_canary_catches_a_leaked_key(
    what: str, secret_canary: Any, mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    from cryptography.hazmat.primitives import serialization

    logger = logging.getLogger("tests.canary.keys")
    if what == "key-line-in-log":
        pem = mtls_client_certificate.key_pem
        logger.debug("key: %s", pem.splitlines()[3])
    elif what == "pkcs8-of-a-pkcs1-key":
        assert "RSA PRIVATE KEY" in mtls_client_certificate.key_pem  # PKCS#1 was asked for
        pkcs8 = mtls_client_certificate.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        logger.info("as pkcs8: %r", pkcs8)  # repr: newlines become \n
    else:
        block = mtls_server.credstore.encryption_block()
        logger.warning("encryption: %s", json.dumps(block))
    findings = secret_canary.findings()
    assert findings, what
    secret_canary.clear()


def test_canary_does_not_change_what_logging_delivers(caplog: pytest.LogCaptureFixture) -> None:
    # Records the canary forces into existence reach no handler.
    logger = logging.getLogger("tests.canary.levels")
    logger.setLevel(logging.WARNING)
    logger.debug("invisible")
    logger.info("invisible")
    logger.warning("visible")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["visible"]
    assert logger.getEffectiveLevel() == logging.WARNING
