"""Where the bearer token may go: allowed_hosts, one auth per token, proxies.

- `allowed_hosts` is enforced: exact names, ``*.example`` wildcards, case and
  trailing dots, and URLs built to confuse a URL parser; plain http never.
- A token fetched by one auth object is only ever sent by that auth object.
- Through an HTTP proxy the token travels inside the CONNECT tunnel's TLS: the
  proxy sees ``CONNECT`` and ciphertext, never the token or an ``Authorization``.

The end-to-end tests run for requests, httpx sync and httpx async (the shared
`client` fixture) against the test kit's `mtls_server`; the plain-http target
and the proxy are `loopback`'s standard-library servers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import requests
from clients import Client
from loopback import Proxy, RedirectServer, connect_proxy, redirect_server

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import InsecureTransportError, MtlsAuthError
from mtls_auth._destinations import Destinations
from mtls_auth._retry import RetryPolicy
from mtls_auth.testing import Credential, TokenServer
from mtls_auth.testing.plugin import CLIENT_ID

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
def http_target() -> Iterator[RedirectServer]:
    """A plain-http server (`loopback.redirect_server`) that records what reaches it."""
    with redirect_server(None) as srv:
        yield srv


def _auth_kwargs(server: TokenServer, credential: Credential, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of an auth for one library's own tests."""
    kwargs: dict[str, Any] = {
        "token_url": server.token_url,
        "client_id": CLIENT_ID,
        "certificate": credential.chain_pem,
        "key": credential.key_pem,
        "verify": server.ca_pem,
        "retry": FAST_RETRY,
        "timeout": 5.0,
    }
    kwargs.update(extra)
    return kwargs


# -- allowed_hosts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        (["api.example"], "api.example", True),
        (["api.example"], "API.Example", True),
        (["api.example"], "api.example.", True),
        (["API.EXAMPLE."], "api.example", True),
        (["api.example"], "www.api.example", False),
        (["api.example"], "api.example.evil", False),
        (["api.example"], "evilapi.example", False),
        (["*.example"], "api.example", True),
        (["*.example"], "a.b.example", True),
        (["*.example"], "API.EXAMPLE.", True),
        (["*.example"], "example", False),
        (["*.example"], "evilexample", False),
        (["*.example"], "api.example.evil", False),
        (["*.EXAMPLE."], "api.example", True),
        (["*.example"], "", False),
        (["api.example"], "", False),
        ("api.example", "api.example", True),  # a lone string is one host, not characters
        ("api.example", "a", False),
        ([], "api.example", False),
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "localhost", False),
        (["::1"], "::1", True),
    ],
)
def test_allowed_hosts_semantics(allowed: Any, host: str, ok: bool) -> None:
    destinations = Destinations(allowed, allow_http_loopback=False)
    if ok:
        destinations.check("https", host)
    else:
        with pytest.raises(InsecureTransportError, match="allowed_hosts"):
            destinations.check("https", host)
    # The decision is cached: asking twice gives the same answer.
    if ok:
        destinations.check("https", host)
    else:
        with pytest.raises(InsecureTransportError):
            destinations.check("https", host)


@pytest.mark.parametrize(
    ("scheme", "host", "loopback_http", "ok"),
    [
        ("https", "api.example", False, True),
        ("http", "api.example", False, False),
        ("http", "api.example", True, False),
        ("http", "localhost", False, False),
        ("http", "localhost", True, True),
        ("http", "127.0.0.1", True, True),
        ("http", "127.9.9.9", True, True),
        ("http", "[::1]", True, True),
        ("http", "localhost.", True, True),
        ("http", "foo.localhost", True, False),  # may resolve through DNS
        ("http", "127.0.0.1.evil.example", True, False),
        ("ws", "api.example", True, False),
        ("ftp", "api.example", True, False),
        ("", "api.example", True, False),
    ],
)
def test_scheme_policy(scheme: str, host: str, loopback_http: bool, ok: bool) -> None:
    destinations = Destinations(None, allow_http_loopback=loopback_http)
    if ok:
        destinations.check(scheme, host)
    else:
        with pytest.raises(InsecureTransportError):
            destinations.check(scheme, host)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example@evil.example/resource",
        "https://api.example:443@evil.example/resource",
        "https://api.example%2F@evil.example/resource",
        "https://evil.example\\@api.example/resource",
        "https://evil.example%5C@api.example/resource",
        "https://evil.example;@api.example/resource",
        "https://evil.example#@api.example/resource",
        "https://evil.example?@api.example/resource",
        "https://evil.example/@api.example",
        "https://evil.example/https://api.example/",
        "https://api.example.evil.example/resource",
        "https://evil.example./resource",
        "HTTPS://EVIL.EXAMPLE/resource",
        "https://api.example/resource",
    ],
)
def test_allowed_hosts_is_checked_against_the_host_actually_contacted(
    client: Client,
    url: str,
    mtls_server: TokenServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """URLs built to make a URL parser disagree with the HTTP library's.

    Either the auth refuses before anything is fetched, or the only host the
    library then tries to reach (besides the token server) is the allowed one.
    No name but localhost resolves here: every other lookup is recorded and fails.
    """
    looked_up: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("localhost", "127.0.0.1"):
            looked_up.append(name.lower().rstrip("."))
            raise socket.gaierror(socket.EAI_NONAME, "not resolvable in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    auth = client.auth(allowed_hosts=["api.example"])
    outcome = client.call(auth, url)
    assert outcome.error is not None
    if isinstance(outcome.error, InsecureTransportError):
        assert "allowed_hosts" in str(outcome.error)
        assert mtls_server.token_request_count == 0
        assert looked_up == []
    else:
        # Allowed: the token was fetched, and only api.example was ever contacted.
        assert mtls_server.token_request_count == 1
        assert looked_up, outcome
        assert set(looked_up) == {"api.example"}, (looked_up, outcome)


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        (["localhost"], "localhost", True),
        (["LOCALHOST."], "localhost", True),
        (["localhost"], "LOCALHOST", True),
        (["*.localhost"], "localhost", False),
        (["127.0.0.1"], "localhost", False),
        (["api.example"], "localhost", False),
    ],
)
def test_allowed_hosts_end_to_end(
    client: Client,
    allowed: list[str],
    host: str,
    ok: bool,
    mtls_server: TokenServer,
) -> None:
    auth = client.auth(allowed_hosts=allowed)
    url = f"https://{host}:{mtls_server.port}/resource"
    outcome = client.call(auth, url)
    if ok:
        assert outcome.status == 200, outcome.error
        assert [r.client_id for r in mtls_server.resource_requests] == [CLIENT_ID]
    else:
        assert isinstance(outcome.error, InsecureTransportError), outcome
        assert mtls_server.token_request_count == 0
        assert mtls_server.resource_requests == []


def test_plain_http_refused_even_to_an_allowed_host(
    client: Client,
    mtls_server: TokenServer,
    http_target: RedirectServer,
) -> None:
    auth = client.auth(allowed_hosts=["localhost"])
    outcome = client.call(auth, f"http://localhost:{http_target.port}/x")
    assert isinstance(outcome.error, InsecureTransportError), outcome
    assert http_target.seen == []
    assert mtls_server.token_request_count == 0


# -- one auth, one token ----------------------------------------------------------------------


def _scopes(server: TokenServer) -> dict[int, str | None]:
    with server._lock:
        return {issued.index: issued.scope for issued in server._tokens.values()}


def test_each_auth_sends_only_its_own_token(
    client: Client, mtls_server: TokenServer, other_client_id: str
) -> None:
    first = client.auth()
    second = client.auth(client_id=other_client_id)
    same_id_other_scope = client.auth(scope="other.scope")
    order = [first, second, same_id_other_scope, second, first, same_id_other_scope, first]
    for auth in order:
        outcome = client.call(auth, mtls_server.resource_url)
        assert outcome.status == 200, outcome.error
    # Then every token is revoked: each auth refreshes its own.
    mtls_server.revoke_all()
    for auth in order[:3]:
        outcome = client.call(auth, mtls_server.resource_url)
        assert outcome.status == 200, outcome.error

    records = [r for r in mtls_server.resource_requests if r.status == 200]
    expected_ids = [a.client_id for a in order + order[:3]]
    assert [r.client_id for r in records] == expected_ids
    scopes = _scopes(mtls_server)
    token_of: dict[int, set[int]] = {}
    for auth, record in zip(order + order[:3], records):
        assert record.token_index is not None
        token_of.setdefault(id(auth), set()).add(record.token_index)
        wanted = "other.scope" if auth is same_id_other_scope else "uaa.resource"
        assert scopes[record.token_index] == wanted
    # Disjoint token sets: no token was ever used by two auth objects.
    sets = list(token_of.values())
    for i, one in enumerate(sets):
        for other in sets[i + 1 :]:
            assert not one & other
    # Two tokens each (one before, one after the revocation).
    assert all(len(s) == 2 for s in sets)


def test_concurrent_auths_never_mix_tokens(
    mtls_server: TokenServer, mtls_client_certificate: Credential, other_client_id: str
) -> None:
    auths = [
        mrequests.MtlsOAuth2(**_auth_kwargs(mtls_server, mtls_client_certificate)),
        mrequests.MtlsOAuth2(
            **_auth_kwargs(mtls_server, mtls_client_certificate, client_id=other_client_id)
        ),
    ]
    adapter = mrequests.MtlsAdapter(
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
    )
    local = threading.local()

    def one(i: int) -> tuple[str, int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.mount("https://", adapter)
        auth = auths[i % 2]
        response = session.get(mtls_server.resource_url, auth=auth, timeout=10)
        return auth.client_id, response.json()["client_id"]

    with ThreadPoolExecutor(8) as pool:
        pairs = list(pool.map(one, range(80)))
    assert all(sent == seen for sent, seen in pairs), pairs
    by_client: dict[str | None, set[int | None]] = {}
    for record in mtls_server.resource_requests:
        by_client.setdefault(record.client_id, set()).add(record.token_index)
    assert set(by_client) == {CLIENT_ID, other_client_id}
    assert not by_client[CLIENT_ID] & by_client[other_client_id]
    for auth in auths:
        auth.close()


def test_httpx_per_request_auth_overrides_the_client_auth(
    mtls_server: TokenServer, mtls_client_certificate: Credential, other_client_id: str
) -> None:
    client_auth = mhttpx.MtlsOAuth2(**_auth_kwargs(mtls_server, mtls_client_certificate))
    request_auth = mhttpx.MtlsOAuth2(
        **_auth_kwargs(mtls_server, mtls_client_certificate, client_id=other_client_id)
    )
    transport = mhttpx.MtlsTransport(
        mtls_client_certificate.chain_pem,
        mtls_client_certificate.key_pem,
        verify=mtls_server.ca_pem,
    )
    with httpx.Client(auth=client_auth, transport=transport) as client:
        assert client.get(mtls_server.resource_url).json()["client_id"] == CLIENT_ID
        assert (
            client.get(mtls_server.resource_url, auth=request_auth).json()["client_id"]
            == other_client_id
        )
        mtls_server.revoke_all()
        response = client.get(mtls_server.resource_url, auth=request_auth)
        assert response.json()["client_id"] == other_client_id
    assert [r.client_id for r in mtls_server.resource_requests] == [
        CLIENT_ID,
        other_client_id,
        other_client_id,
        other_client_id,
    ]
    assert [r.client_id for r in mtls_server.token_requests] == [
        CLIENT_ID,
        other_client_id,
        other_client_id,
    ]


def test_requests_resigned_request_is_retried_only_by_its_signer(
    mtls_server: TokenServer, mtls_client_certificate: Credential, other_client_id: str
) -> None:
    """A request re-signed by a second auth answers to that auth alone.

    The first auth's 401 hook stays registered on the PreparedRequest; on a 401
    it must not fetch *its* token and resend the request the user gave to the
    second auth. (Regression: it did, until the hook checked who signed last.)
    """
    first = mrequests.MtlsOAuth2(**_auth_kwargs(mtls_server, mtls_client_certificate))
    second = mrequests.MtlsOAuth2(
        **_auth_kwargs(mtls_server, mtls_client_certificate, client_id=other_client_id)
    )
    with requests.Session() as session:
        session.mount(
            "https://",
            mrequests.MtlsAdapter(
                mtls_client_certificate.chain_pem,
                mtls_client_certificate.key_pem,
                verify=mtls_server.ca_pem,
            ),
        )
        prepared = session.prepare_request(
            requests.Request("GET", mtls_server.url + "/resource/always-401", auth=first)
        )
        second(prepared)  # the user hands the request to the other auth
        session.send(prepared, timeout=10)
    sent_by = [r.client_id for r in mtls_server.resource_requests]
    assert CLIENT_ID not in sent_by[1:], sent_by
    assert set(sent_by) <= {other_client_id, CLIENT_ID}


# -- proxies ----------------------------------------------------------------------------------


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def _assert_tunnel_only(proxy: Proxy, server: TokenServer) -> None:
    relayed = proxy.everything()
    assert relayed, "nothing went through the proxy"
    lowered = relayed.lower()
    assert b"authorization" not in lowered
    assert b"bearer" not in lowered
    assert b"client_credentials" not in lowered  # the token request's form body
    assert b"access_token" not in lowered  # the token response
    tokens = list(server._tokens)
    assert tokens
    for token in tokens:
        assert token.encode() not in relayed
    # Every request through the proxy was a CONNECT for the origin.
    heads = [data for direction, data in proxy.relayed if direction == b"client->proxy"]
    assert heads
    assert all(head.startswith(b"CONNECT ") for head in heads), heads


def test_proxy_sees_only_connect_and_ciphertext(
    client: Client,
    mtls_server: TokenServer,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy_env: None,
) -> None:
    with connect_proxy() as proxy:
        # The token fetch finds the proxy in the environment (as a deployment
        # would configure it); the resource request is given it explicitly.
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("https_proxy", proxy.url)
        auth = client.auth()
        for _ in range(2):
            outcome = client.call(
                auth,
                mtls_server.resource_url,
                proxy=proxy.url,
            )
            assert outcome.status == 200, outcome.error
        if not client.is_async:
            auth.close()
    assert mtls_server.token_request_count == 1
    assert len(mtls_server.resource_requests) == 2
    targets = {f"localhost:{mtls_server.port}"}
    assert set(proxy.connects) == targets
    # Both the token fetch and the resource requests went through the tunnel.
    assert len(proxy.connects) >= 2
    _assert_tunnel_only(proxy, mtls_server)


def test_proxy_for_the_resource_only(
    client: Client, mtls_server: TokenServer, no_proxy_env: None
) -> None:
    with connect_proxy() as proxy:
        auth = client.auth()
        outcome = client.call(auth, mtls_server.resource_url, proxy=proxy.url)
        assert outcome.status == 200, outcome.error
    assert proxy.connects == [f"localhost:{mtls_server.port}"]
    _assert_tunnel_only(proxy, mtls_server)
