"""Redirects never carry the bearer token to another host or to plain http.

For requests, httpx sync and httpx async (the shared `client` fixture): a
redirect (301, 302, 303, 307, 308) to another host, or to plain http, never
carries the bearer, and a 401 from the redirect target does not get the token
put back (a regression test for a fixed bug); a redirect within the origin
keeps it (the control). The redirector is `loopback.redirect_server`: HTTPS with
the test PKI's localhost certificate, and a second one speaking plain http.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import requests
from clients import Client
from loopback import RedirectServer, redirect_server

from mtls_auth import MtlsAuthError
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import PKI, TokenServer

FAST_RETRY = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02, max_retry_after=0.1)


@pytest.fixture
def client(client: Client) -> Client:
    """The shared three-client harness: fast retries; requests ignores the environment;
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
def https_redirector(mtls_pki: PKI) -> Iterator[RedirectServer]:
    with redirect_server(mtls_pki) as srv:
        yield srv


@pytest.fixture
def http_target() -> Iterator[RedirectServer]:
    with redirect_server(None) as srv:
        yield srv


def _is_token(server: TokenServer, authorization: str | None) -> bool:
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and server.token_info(value.strip()) is not None


# -- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_another_host_drops_the_bearer(
    client: Client,
    code: int,
    mtls_server: TokenServer,
    https_redirector: RedirectServer,
) -> None:
    port = https_redirector.port
    # localhost -> 127.0.0.1: the same listening socket, a different host.
    target = f"https://127.0.0.1:{port}/landing"
    url = f"https://localhost:{port}/redirect?code={code}&to={target}"
    auth = client.auth()
    outcome = client.call(auth, url)
    assert outcome.error is None, outcome.error
    assert outcome.status == 200
    assert outcome.history == [code]
    first, landing = https_redirector.seen
    assert first.host == f"localhost:{port}"
    assert _is_token(mtls_server, first.authorization)  # the origin that was asked for gets it
    assert landing.host == f"127.0.0.1:{port}"
    assert landing.path == "/landing"
    assert landing.authorization is None


@pytest.mark.parametrize("code", [302, 307])
@pytest.mark.parametrize("target_host", ["localhost", "127.0.0.1"])
def test_redirect_to_plain_http_drops_the_bearer(
    client: Client,
    code: int,
    target_host: str,
    mtls_server: TokenServer,
    https_redirector: RedirectServer,
    http_target: RedirectServer,
) -> None:
    target = f"http://{target_host}:{http_target.port}/landing"
    url = f"https://localhost:{https_redirector.port}/redirect?code={code}&to={target}"
    auth = client.auth()
    outcome = client.call(auth, url)
    assert outcome.error is None, outcome.error
    assert outcome.status == 200
    assert _is_token(mtls_server, https_redirector.seen[0].authorization)
    (landing,) = http_target.seen
    assert landing.path == "/landing"
    assert landing.authorization is None


def test_redirect_to_http_on_the_same_host_and_port_drops_the_bearer(
    client: Client,
    mtls_server: TokenServer,
    https_redirector: RedirectServer,
) -> None:
    # Same host and port, scheme downgraded: the https mtls_server cannot answer plain
    # http, so whatever happens the bearer must not leave in cleartext. Watch the
    # bytes with a raw listener standing in for the downgraded URL instead.
    with contextlib.closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        received: list[bytes] = []

        def accept() -> None:
            listener.settimeout(10)
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    data = conn.recv(65536)
                    received.append(data)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        url = (
            f"https://localhost:{https_redirector.port}/redirect?code=307"
            f"&to=http://localhost:{port}/landing"
        )
        auth = client.auth()
        outcome = client.call(auth, url)
        thread.join(10)
    assert outcome.error is None, outcome.error
    assert received, "the redirect was not followed"
    assert b"authorization" not in received[0].lower()
    issued = list(mtls_server._tokens)
    assert issued
    assert not any(token.encode() in received[0] for token in issued)


def test_401_from_the_redirect_target_does_not_get_the_token_back(
    client: Client,
    mtls_server: TokenServer,
    https_redirector: RedirectServer,
) -> None:
    """Regression: requests' response hook used to re-sign the redirected request.

    The hook registered by `MtlsOAuth2` travels with the request through
    redirects; a 401 from the other host must not make it fetch a new token and
    send it there.
    """
    port = https_redirector.port
    url = f"https://localhost:{port}/redirect?code=302&to=https://127.0.0.1:{port}/401"
    auth = client.auth()
    outcome = client.call(auth, url)
    assert outcome.error is None, outcome.error
    assert outcome.status == 401
    targets = [s for s in https_redirector.seen if s.host == f"127.0.0.1:{port}"]
    assert targets, https_redirector.seen
    assert all(s.authorization is None for s in targets)
    assert len(targets) == 1  # not retried there
    # The token was not dropped for a 401 that did not concern it.
    assert len(mtls_server.token_requests) == 1


def test_same_origin_redirect_keeps_the_bearer(
    client: Client,
    mtls_server: TokenServer,
    https_redirector: RedirectServer,
) -> None:
    # The control: a redirect within the origin keeps the token (so the tests
    # above prove stripping, not a redirect that never happens).
    port = https_redirector.port
    url = f"https://localhost:{port}/redirect?code=307&to=https://localhost:{port}/landing"
    auth = client.auth()
    outcome = client.call(auth, url)
    assert outcome.status == 200, outcome.error
    assert [s.path for s in https_redirector.seen] == ["/redirect", "/landing"]
    assert all(_is_token(mtls_server, s.authorization) for s in https_redirector.seen)
