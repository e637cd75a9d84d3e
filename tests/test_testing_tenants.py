"""Tenants, IAS and user grants of the test kit, end to end over real TLS.

The kit's fixtures (``mtls_server`` enters `loopback_names`) and plain
requests / httpx clients presenting the kit's client certificate through an
`ssl.SSLContext` built here (not the library's auth objects): tenant hosts
resolve for requests, httpx sync and httpx async; tenants are routed by host,
``x-zid`` and ``app_tid``; the IAS endpoint; each user grant's success and
refusals; PKCE; refresh rotation and revocation; records and the resource's
answer; the canary sees every code and refresh token. Also `loopback_names`
against a fake resolver, the bindings and the server certificate's names.
tests/test_testing_grants.py covers the same logic without sockets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import socket
import ssl
import textwrap
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import requests
from cryptography import x509
from cryptography.x509 import verification
from requests.adapters import HTTPAdapter

import mtls_auth.testing
from mtls_auth.testing import (
    IAS_DOMAIN,
    LOGIN_DOMAIN,
    PKI,
    TENANT_DOMAIN,
    TEST_PASSWORD,
    TEST_USER,
    Credential,
    FakeClock,
    TokenServer,
    _loopback,
    ias_service_key,
    loopback_names,
    vcap_services,
    xsuaa_service_key,
)
from mtls_auth.testing.plugin import CLIENT_ID, IAS_CLIENT_ID

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="the client key is loaded via memfd"
)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REDIRECT = "https://app.example/callback"
KINDS = ["requests", "httpx", "httpx-async"]


# -- plain clients presenting the kit's certificate ----------------------------------------


def tls_context(pki: PKI, credential: Credential) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.root_pem)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    fd = os.memfd_create("client", os.MFD_CLOEXEC)
    try:
        os.write(fd, (credential.chain_pem + credential.key_pem).encode())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class _ContextAdapter(HTTPAdapter):
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


class Http:
    """requests, httpx or httpx async, one call at a time: (status, JSON or None, headers)."""

    def __init__(self, kind: str, context: ssl.SSLContext) -> None:
        self.kind = kind
        self.context = context

    def call(
        self, method: str, url: str, data: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        if self.kind == "requests":
            with requests.Session() as session:
                session.trust_env = False
                session.mount("https://", _ContextAdapter(self.context))
                answer = session.request(
                    method, url, data=data, headers=headers, allow_redirects=False
                )
                return (
                    answer.status_code,
                    _json(answer.content),
                    {k.lower(): v for k, v in answer.headers.items()},
                )
        if self.kind == "httpx":
            with httpx.Client(verify=self.context, trust_env=False) as client:
                reply = client.request(method, url, data=data, headers=headers)
                return (
                    reply.status_code,
                    _json(reply.content),
                    {k.lower(): v for k, v in reply.headers.items()},
                )

        async def run() -> tuple[int, Any, dict[str, str]]:
            async with httpx.AsyncClient(verify=self.context, trust_env=False) as client:
                reply = await client.request(method, url, data=data, headers=headers)
                return (
                    reply.status_code,
                    _json(reply.content),
                    {k.lower(): v for k, v in reply.headers.items()},
                )

        return asyncio.run(run())

    def token(self, url: str, client_id: str = CLIENT_ID, **fields: Any) -> tuple[int, Any]:
        fields.setdefault("grant_type", "client_credentials")
        headers = {"x-zid": fields.pop("x_zid")} if "x_zid" in fields else None
        status, body, _ = self.call("POST", url, {"client_id": client_id, **fields}, headers)
        return status, body

    def resource(self, server: TokenServer, access_token: str, base: str | None = None) -> Any:
        url = (base or server.url) + "/resource"
        status, body, _ = self.call("GET", url, headers={"Authorization": f"Bearer {access_token}"})
        assert status == 200, body
        return body


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_query(challenge: str, client_id: str = CLIENT_ID, **extra: str) -> str:
    return urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "state": "st",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
    )


def code_of(callback: str) -> str:
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == ["st"]
    return params["code"][0]


@pytest.fixture(scope="module")
def context(mtls_pki: PKI, mtls_client_certificate: Credential) -> ssl.SSLContext:
    return tls_context(mtls_pki, mtls_client_certificate)


@pytest.fixture(params=KINDS)
def http(request: pytest.FixtureRequest, context: ssl.SSLContext) -> Http:
    return Http(request.param, context)


@pytest.fixture
def web(context: ssl.SSLContext) -> Http:
    return Http("httpx", context)


# -- names and routing ---------------------------------------------------------------------


@pytest.mark.mtls_server(jwt_tokens=True)
def test_tenant_names_resolve_and_route_for_each_client(http, mtls_server):
    zone = mtls_server.zone_id_of("customer-a")
    status, body = http.token(mtls_server.tenant_token_url("customer-a"), resource="urn:orders")
    assert status == 200, body
    claims = claims_of(body["access_token"])
    assert (claims["zid"], claims["ext_attr"]) == (zone, {"zdn": "customer-a"})
    assert claims["iss"] == mtls_server.tenant_token_url("customer-a")
    assert claims["aud"] == [CLIENT_ID, "urn:orders"]
    answer = http.resource(mtls_server, body["access_token"], mtls_server.tenant_url("customer-a"))
    assert (answer["subdomain"], answer["zone_id"], answer["resources"]) == (
        "customer-a",
        zone,
        ["urn:orders"],
    )
    (record,) = mtls_server.token_requests
    assert record.host == f"customer-a.{TENANT_DOMAIN}:{mtls_server.port}"
    assert (record.subdomain, record.zone_id, record.resources) == (
        "customer-a",
        zone,
        ("urn:orders",),
    )
    (seen,) = mtls_server.resource_requests
    assert (seen.subdomain, seen.zone_id, seen.status) == ("customer-a", zone, 200)
    status, body = http.token(mtls_server.ias_token_url(), client_id=IAS_CLIENT_ID)
    assert status == 200, body
    assert claims_of(body["access_token"])["app_tid"] == mtls_server.zone_id_of("mtls-test")
    document_url = mtls_server.login_url("customer-a") + "/.well-known/openid-configuration"
    status, document, _ = http.call("GET", document_url)
    assert document["token_endpoint"] == mtls_server.tenant_token_url("customer-a")


@pytest.mark.mtls_server(jwt_tokens=True)
def test_x_zid_and_app_tid_route_over_the_wire(web, mtls_server):
    mtls_server.add_tenant("customer-b", "zone-b")
    _, body = web.token(mtls_server.token_url, x_zid="zone-b")
    assert claims_of(body["access_token"])["ext_attr"] == {"zdn": "customer-b"}
    _, body = web.token(mtls_server.tenant_token_url("customer-a"), x_zid="zone-b")  # x-zid first
    assert claims_of(body["access_token"])["zid"] == "zone-b"
    _, body = web.token(mtls_server.ias_token_url(), client_id=IAS_CLIENT_ID, app_tid="zone-b")
    claims = claims_of(body["access_token"])
    assert (claims["app_tid"], claims["iss"]) == ("zone-b", mtls_server.ias_url())
    _, body = web.token(mtls_server.token_url, app_tid="zone-b")  # XSUAA ignores app_tid
    assert "zid" not in claims_of(body["access_token"])
    answer = web.resource(mtls_server, body["access_token"])
    assert set(answer) == {"ok", "client_id", "namespace", "method", "path", "body_length"}
    assert [r.zone_id for r in mtls_server.token_requests] == ["zone-b", "zone-b", "zone-b", None]


@pytest.mark.mtls_server(strict_tenants=True)
def test_strict_tenants_over_the_wire(web, mtls_server):
    status, body = web.token(mtls_server.tenant_token_url("stranger"))
    assert (status, body["error"], body["error_description"]) == (
        401,
        "invalid_client",
        "unknown tenant",
    )
    assert mtls_server.token_requests[-1].subdomain == "stranger"
    zone = mtls_server.add_tenant("stranger")
    status, body = web.token(mtls_server.tenant_token_url("stranger"))
    assert status == 200
    assert mtls_server.token_info(body["access_token"])["zone_id"] == zone
    mtls_server.strict_tenants = False
    assert web.token(mtls_server.tenant_token_url("anyone"))[0] == 200


# -- user grants ---------------------------------------------------------------------------


@pytest.mark.mtls_server(jwt_tokens=True)
def test_jwt_bearer_over_the_wire(web, mtls_server, mtls_clock):
    assertion = mtls_server.mint_user_token("alice", subdomain="customer-a")
    url = mtls_server.tenant_token_url("customer-a")
    status, body = web.token(url, grant_type=JWT_BEARER, assertion=assertion)
    assert status == 200, body
    assert "refresh_token" not in body
    claims = claims_of(body["access_token"])
    assert (claims["sub"], claims["user_name"], claims["grant_type"]) == (
        "alice",
        "alice",
        JWT_BEARER,
    )
    answer = web.resource(mtls_server, body["access_token"])
    assert (answer["user"], answer["subdomain"], answer["grant_type"]) == (
        "alice",
        "customer-a",
        JWT_BEARER,
    )
    assert mtls_server.resource_requests[-1].user == "alice"
    record = mtls_server.token_requests[-1]
    assert record.grant_type == JWT_BEARER
    assert assertion not in repr(record)
    other = mtls_server.tenant_token_url("customer-b")
    status, body = web.token(other, grant_type=JWT_BEARER, assertion=assertion)
    assert (status, body["error"]) == (400, "invalid_grant")
    expired = mtls_server.mint_user_token("alice", subdomain="customer-a", exp=time.time() - 1)
    status, body = web.token(url, grant_type=JWT_BEARER, assertion=expired)
    assert (status, body["error_description"]) == (400, "the assertion has expired")
    forged = mtls_server.mint_user_token().rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    assert web.token(url, grant_type=JWT_BEARER, assertion=forged)[1]["error"] == "invalid_grant"
    assert mtls_server.user_jwks["keys"][0]["kid"] != mtls_server.jwks["keys"][0]["kid"]


def test_authorization_code_refresh_rotation_and_revocation_over_the_wire(web, mtls_server):
    verifier, challenge = pkce()
    login = (
        mtls_server.login_url("customer-a") + "/oauth/authorize?" + authorization_query(challenge)
    )
    # Over HTTP too, for a client with a certificate. (Not with httpx: httpcore's
    # debug log shows response headers, and this Location carries the code.)
    status, _, headers = Http("requests", web.context).call("GET", login)
    assert status == 302
    code = code_of(headers["location"])
    fields = {"grant_type": "authorization_code", "redirect_uri": REDIRECT, "code": code}
    url = mtls_server.tenant_token_url("customer-a")
    status, body = web.token(url, code_verifier="x" * 43, **fields)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert body["error_description"] == "code_verifier does not match the code_challenge (PKCE)"
    status, tokens = web.token(url, code_verifier=verifier, **fields)
    assert status == 200, tokens
    assert web.resource(mtls_server, tokens["access_token"])["user"] == TEST_USER
    status, body = web.token(url, code_verifier=verifier, **fields)
    assert body["error_description"] == "the authorization code has already been used"
    first = tokens["refresh_token"]
    status, renewed = web.token(url, grant_type="refresh_token", refresh_token=first)
    assert status == 200
    assert renewed["refresh_token"] != first
    assert (
        web.token(url, grant_type="refresh_token", refresh_token=first)[1]["error"]
        == "invalid_grant"
    )
    other = mtls_server.tenant_token_url("customer-b")
    assert (
        web.token(other, grant_type="refresh_token", refresh_token=renewed["refresh_token"])[0]
        == 400
    )
    mtls_server.revoke_refresh_tokens()
    status, body = web.token(
        url, grant_type="refresh_token", refresh_token=renewed["refresh_token"]
    )
    assert (status, body["error_description"]) == (400, "the refresh token has been revoked")
    shown = repr(mtls_server.token_requests)
    for secret in (code, verifier, first, renewed["refresh_token"]):
        assert secret not in shown


def test_login_helper_denials_and_ias_authorize(web, mtls_server):
    verifier, challenge = pkce()
    mtls_server.deny_next_login()
    denied = mtls_server.login(
        mtls_server.ias_url() + "/oauth2/authorize?" + authorization_query(challenge, IAS_CLIENT_ID)
    )
    assert parse_qs(urlsplit(denied).query)["error"] == ["access_denied"]
    callback = mtls_server.login(
        mtls_server.ias_url()
        + "/oauth2/authorize?"
        + authorization_query(challenge, IAS_CLIENT_ID),
        user="bob",
    )
    status, tokens = web.token(
        mtls_server.ias_token_url(),
        client_id=IAS_CLIENT_ID,
        grant_type="authorization_code",
        code=code_of(callback),
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assert status == 200, tokens
    answer = web.resource(mtls_server, tokens["access_token"])
    assert (answer["user"], answer["app_tid"]) == ("bob", mtls_server.zone_id_of("mtls-test"))
    with pytest.raises(ValueError, match="redirect_uri"):
        mtls_server.login(mtls_server.url + "/oauth/authorize?client_id=" + CLIENT_ID)


def test_password_grant_over_the_wire(web, mtls_server):
    url = mtls_server.token_url
    status, body = web.token(url, grant_type="password", username=TEST_USER, password=TEST_PASSWORD)
    assert status == 200
    assert body["refresh_token"]
    assert web.resource(mtls_server, body["access_token"])["user"] == TEST_USER
    status, body = web.token(url, grant_type="password", username=TEST_USER, password="wrong")
    assert (status, body["error"]) == (400, "invalid_grant")
    mtls_server.add_user("carol", "pw")
    assert web.token(url, grant_type="password", username="carol", password="pw")[0] == 200
    assert TEST_PASSWORD not in repr(mtls_server.token_requests)
    assert mtls_server.token_requests[0].form["password"] == TEST_PASSWORD


@pytest.mark.mtls_server(jwt_tokens=True)
def test_ias_binding_fixture(web, mtls_server, mtls_ias_binding):
    binding = mtls_ias_binding
    assert binding["url"] == mtls_server.ias_url()
    status, body = web.token(
        binding["token_endpoint"], client_id=binding["clientid"], app_tid=binding["app_tid"]
    )
    assert status == 200, body
    claims = claims_of(body["access_token"])
    assert (claims["app_tid"], claims["iss"]) == (binding["app_tid"], binding["url"])
    status, document, _ = web.call("GET", binding["url"] + "/.well-known/openid-configuration")
    assert document["token_endpoint"] == binding["token_endpoint"]
    assert document["authorization_endpoint"] == binding["authorization_endpoint"]
    status, jwks, _ = web.call("GET", binding["url"] + "/oauth2/certs")
    assert jwks == mtls_server.jwks


def test_own_server_with_mtls_loopback_names(
    mtls_loopback_names, mtls_pki, mtls_client_certificate, web
):
    assert socket.getaddrinfo(f"x.{LOGIN_DOMAIN}", 443)[0][4][0] == "127.0.0.1"
    with TokenServer(mtls_pki, clock=FakeClock()) as server:
        server.register_client(CLIENT_ID, mtls_client_certificate)
        status, body = web.token(server.tenant_token_url("mine"))
        assert status == 200, body
        assert server.token_info(body["access_token"])["subdomain"] == "mine"


def test_the_canary_sees_codes_and_refresh_tokens(web, mtls_server, secret_canary):
    verifier, challenge = pkce()
    code = code_of(
        mtls_server.login(mtls_server.url + "/oauth/authorize?" + authorization_query(challenge))
    )
    _, tokens = web.token(
        mtls_server.token_url,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assertion = mtls_server.mint_user_token()
    # The live dict the canary reads, under the lock it takes.
    assert mtls_server._grant_secrets is mtls_server._app.users.secrets
    assert mtls_server._app.users.lock is mtls_server._lock
    with mtls_server._lock:
        kinds = [mtls_server._grant_secrets[s] for s in (code, tokens["refresh_token"], assertion)]
    assert kinds == ["authorization code", "refresh token", "user token"]
    assert secret_canary.findings() == []
    quiet = logging.getLogger("test_testing_tenants.leak")
    for leaked in (code, tokens["refresh_token"], assertion):
        quiet.debug("leaking %s on purpose", leaked)
        assert secret_canary.findings(), "the canary missed a grant secret"
        secret_canary.clear()


def test_the_documented_user_flow_runs(mtls_server, mtls_client_certificate):
    doc = mtls_auth.testing.__doc__ or ""
    after = doc.split("A user flow as a test would write it", 1)[1].split("::\n", 1)[1]
    lines = []
    for line in after.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent("\n".join(lines)), namespace)
    namespace["test_a_login_gives_a_user_token"](mtls_server, mtls_client_certificate)


# -- loopback_names, against a fake resolver ----------------------------------------------


@pytest.fixture
def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def resolve(host, port, family=0, type=0, proto=0, flags=0):
        calls.append((host, port, family))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(host), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return calls


def test_loopback_names_resolve_and_restore(fake_resolver):
    original = socket.getaddrinfo
    with loopback_names() as names:
        assert socket.getaddrinfo is not original
        socket.getaddrinfo(f"Customer-A.{TENANT_DOMAIN}.", 443)
        socket.getaddrinfo(f"x.{LOGIN_DOMAIN}".encode(), 443, socket.AF_UNSPEC)
        socket.getaddrinfo(IAS_DOMAIN, 443, family=socket.AF_INET)
        socket.getaddrinfo("example.com", 80)
        socket.getaddrinfo("mtls.test.example.com", 80)
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(f"a.{IAS_DOMAIN}", 443, socket.AF_INET6)
        assert names.resolves(f"deep.er.{TENANT_DOMAIN}")
        assert not names.resolves("mtls.test")
    assert socket.getaddrinfo is original
    assert [call[0] for call in fake_resolver] == [
        "127.0.0.1",
        "127.0.0.1",
        "127.0.0.1",
        "example.com",
        "mtls.test.example.com",
    ]
    assert {call[2] for call in fake_resolver[:3]} == {socket.AF_INET}
    socket.getaddrinfo(f"a.{TENANT_DOMAIN}", 1)
    assert fake_resolver[-1][0] == f"a.{TENANT_DOMAIN}"  # not resolved any more


def test_loopback_names_nest_and_take_their_own_domains(fake_resolver):
    original = socket.getaddrinfo
    outer = loopback_names("Example.TEST")
    with outer, outer:
        with loopback_names():
            socket.getaddrinfo(f"a.{TENANT_DOMAIN}", 1)
        socket.getaddrinfo(f"b.{TENANT_DOMAIN}", 1)
        socket.getaddrinfo("api.example.test", 1)
        assert socket.getaddrinfo is not original
    assert socket.getaddrinfo is original
    assert [call[0] for call in fake_resolver] == ["127.0.0.1", f"b.{TENANT_DOMAIN}", "127.0.0.1"]
    assert repr(outer) == "loopback_names('example.test')"
    with pytest.raises(ValueError):
        loopback_names(" ")
    with pytest.raises(TypeError):
        loopback_names(1)  # type: ignore[arg-type]


def test_loopback_names_from_many_threads(fake_resolver):
    original = socket.getaddrinfo
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        try:
            start.wait()
            for _ in range(50):
                with loopback_names():
                    assert socket.getaddrinfo(f"t.{IAS_DOMAIN}", 1)[0][4][0] == "127.0.0.1"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert socket.getaddrinfo is original
    assert _loopback._STATE.counts == {}


def test_loopback_names_under_a_later_wrapper(fake_resolver, monkeypatch):
    """Code that wraps getaddrinfo while the names are active keeps working after they end."""
    with loopback_names():
        ours = socket.getaddrinfo

        def theirs(host, *args, **kwargs):
            return ours(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", theirs)
        assert socket.getaddrinfo(f"a.{TENANT_DOMAIN}", 1)[0][4][0] == "127.0.0.1"
    assert socket.getaddrinfo is theirs  # left alone
    assert theirs(f"a.{TENANT_DOMAIN}", 1)[0][4][0] == f"a.{TENANT_DOMAIN}"  # passes through
    with loopback_names():  # and a new entry works through it, without looping
        assert socket.getaddrinfo(f"a.{TENANT_DOMAIN}", 1)[0][4][0] == "127.0.0.1"


# -- bindings and the server certificate --------------------------------------------------


def test_ias_and_tenant_bindings(mtls_pki, mtls_client_certificate):
    server = TokenServer(mtls_pki)
    server._listener.port = 8443  # the URLs only need a port
    credential = mtls_client_certificate
    key = ias_service_key(server, credential, "ias-client")
    assert key["url"] == f"https://mtls-test.{IAS_DOMAIN}:8443"
    assert key["app_tid"] == server.zone_id_of("mtls-test")
    assert key["domains"] == [IAS_DOMAIN]
    assert key["token_endpoint"] == f"https://mtls-test.{IAS_DOMAIN}:8443/oauth2/token"
    assert key["authorization_endpoint"] == f"https://mtls-test.{IAS_DOMAIN}:8443/oauth2/authorize"
    assert (key["clientid"], key["credential-type"]) == ("ias-client", "X509_GENERATED")
    assert key["certificate"] == credential.chain_pem
    assert key["key"] == credential.key_pem
    attested = ias_service_key(
        server,
        credential,
        "c",
        tenant="other",
        app_tid="t-9",
        credential_type="X509_ATTESTED",
        endpoints=False,
    )
    assert "key" not in attested
    assert "token_endpoint" not in attested
    assert (attested["app_tid"], attested["url"]) == ("t-9", f"https://other.{IAS_DOMAIN}:8443")
    vcap = json.loads(vcap_services(("identity", "my-ias", key)))
    assert vcap["identity"][0]["credentials"] == key
    assert (vcap["identity"][0]["plan"], vcap["identity"][0]["tags"]) == ("application", ["ias"])
    xsuaa = xsuaa_service_key(server, credential, "sb-app!t1", subdomain="Provider")
    assert xsuaa["url"] == server.login_url("provider") == f"https://provider.{LOGIN_DOMAIN}:8443"
    assert xsuaa["certurl"] == server.tenant_url("provider")
    assert (xsuaa["uaadomain"], xsuaa["identityzone"], xsuaa["subdomain"]) == (
        LOGIN_DOMAIN,
        "provider",
        "provider",
    )
    assert xsuaa["zoneid"] == xsuaa["tenantid"] == server.zone_id_of("provider")
    plain = xsuaa_service_key(server, credential, "sb-app!t1")
    assert (plain["url"], plain["uaadomain"]) == ("https://localhost:8443", "localhost")
    assert "subdomain" not in plain
    assert server.tenant_token_url("a") == f"https://a.{TENANT_DOMAIN}:8443/oauth/token"
    assert server.ias_token_url() == f"https://mtls-test.{IAS_DOMAIN}:8443/oauth2/token"
    with pytest.raises(ValueError):
        server.tenant_url("not.one.label")


@pytest.mark.parametrize(
    "name", ["localhost", f"a.{TENANT_DOMAIN}", f"b-2.{LOGIN_DOMAIN}", f"mtls-test.{IAS_DOMAIN}"]
)
def test_server_certificate_names_pass_strict_verification(mtls_pki, name):
    chain = x509.load_pem_x509_certificates(mtls_pki.server.chain_pem.encode())
    store = verification.Store([mtls_pki.root.certificate])
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    verifier.verify(chain[0], chain[1:])
