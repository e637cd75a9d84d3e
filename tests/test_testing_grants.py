"""The test kit's tenants, user grants and login, without any socket.

`TokenApp` is called directly with plain values, as in tests/test_testing_app.py:
tenant routing (``x-zid``, IAS ``app_tid``, host) and strict tenants, RFC 8707
resources, the jwt-bearer, authorization code (PKCE), refresh token and
password grants, the authorization endpoint and ``login``, discovery per
tenant, the records and their reprs. Also `loopback_names` against a fake
resolver, the registry, the bindings and the server certificate's names.
tests/test_testing_tenants.py runs the same over real TLS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from mtls_auth.testing import (
    IAS_DOMAIN,
    LOGIN_DOMAIN,
    PKI,
    TENANT_DOMAIN,
    TEST_PASSWORD,
    TEST_USER,
    Credential,
    FakeClock,
)
from mtls_auth.testing._app import TokenApp
from mtls_auth.testing._claims import mint_user_token
from mtls_auth.testing._grants import GRANTS, JWT_BEARER, pkce_challenge
from mtls_auth.testing._oauth import IAS_TOKEN_PATH, XSUAA_TOKEN_PATH, Peer
from mtls_auth.testing._tenants import TenantHint, TenantRegistry, UnknownTenant
from mtls_auth.testing._wire import Response

CLIENT_ID = "sb-app-client!t1"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BASE = "https://localhost:8443"
REDIRECT = "https://app.example/callback"
VERIFIER = "v" * 43 + "-verifier"


# -- helpers -------------------------------------------------------------------------------


def post(
    app: TokenApp,
    peer: Peer | None,
    fields: dict[str, str] | list[tuple[str, str]],
    path: str = XSUAA_TOKEN_PATH,
    host: str | None = None,
    **headers: str,
) -> Response:
    sent = {**FORM, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if host is not None:
        sent["Host"] = host
    items = list(fields.items()) if isinstance(fields, dict) else fields
    items = [("client_id", CLIENT_ID), *items]
    return app.handle_token(path, sent, urlencode(items).encode(), peer)


def ok(response: Response) -> dict:
    assert response.status == 200, response.json()
    return response.json()


def refused(response: Response, status: int = 400, error: str = "invalid_grant") -> str:
    body = response.json()
    assert (response.status, body["error"]) == (status, error), body
    return body["error_description"]


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def on(subdomain: str, domain: str = TENANT_DOMAIN) -> str:
    return f"{subdomain}.{domain}:8443"


def resource(app: TokenApp, token: str, peer: Peer) -> dict:
    response = app.handle_resource("GET", "/resource", f"Bearer {token}", peer, 0)
    return ok(response)


def authorize_url(
    base: str = BASE, path: str = "/oauth/authorize", verifier: str = VERIFIER, **params: str
) -> str:
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "state": "st-1",
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
        **params,
    }
    return f"{base}{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"


def callback_params(callback: str) -> dict[str, str]:
    parts = urlsplit(callback)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def code_for(app: TokenApp, url: str | None = None, user: str = TEST_USER) -> str:
    return callback_params(app.login(url or authorize_url(), user))["code"]


def redeem(
    app: TokenApp,
    peer: Peer,
    code: str,
    verifier: str = VERIFIER,
    *,
    path: str = XSUAA_TOKEN_PATH,
    host: str | None = None,
    redirect_uri: str = REDIRECT,
) -> Response:
    fields = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    return post(app, peer, fields, path, host)


def refresh(
    app: TokenApp,
    peer: Peer,
    token: str,
    *,
    path: str = XSUAA_TOKEN_PATH,
    host: str | None = None,
    **headers: str,
) -> Response:
    fields = {"grant_type": "refresh_token", "refresh_token": token}
    return post(app, peer, fields, path, host, **headers)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def peer(mtls_client_certificate: Credential) -> Peer:
    return Peer.of(mtls_client_certificate)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(mtls_client_certificate: Credential, clock: FakeClock) -> TokenApp:
    app = TokenApp(clock=clock, base_url=BASE, jwt_tokens=True)
    app.register_client(CLIENT_ID, mtls_client_certificate)
    return app


# -- tenant routing ------------------------------------------------------------------------


def test_the_host_names_the_tenant(app, peer):
    token = ok(post(app, peer, {"grant_type": "client_credentials"}, host=on("Customer-A")))
    zone = app.tenants.zone_id_of("customer-a")
    assert zone == str(uuid.uuid5(uuid.NAMESPACE_DNS, f"customer-a.{TENANT_DOMAIN}"))
    claims = claims_of(token["access_token"])
    assert claims["zid"] == zone
    assert claims["ext_attr"] == {"zdn": "customer-a"}
    assert claims["iss"] == f"https://customer-a.{TENANT_DOMAIN}:8443/oauth/token"
    assert "app_tid" not in claims
    info = app.token_info(token["access_token"])
    assert (info["subdomain"], info["zone_id"], info["app_tid"]) == ("customer-a", zone, None)
    answer = resource(app, token["access_token"], peer)
    assert (answer["subdomain"], answer["zone_id"], answer["user"]) == ("customer-a", zone, None)
    assert answer["grant_type"] == "client_credentials"
    # The login host of the same tenant routes the same way.
    again = ok(
        post(app, peer, {"grant_type": "client_credentials"}, host=on("customer-a", LOGIN_DOMAIN))
    )
    assert claims_of(again["access_token"])["zid"] == zone


def test_localhost_is_the_provider_as_before(app, peer):
    token = ok(post(app, peer, {"grant_type": "client_credentials"}, host="localhost:8443"))
    claims = claims_of(token["access_token"])
    assert "zid" not in claims
    assert "ext_attr" not in claims
    assert claims["iss"] == app.issuer
    info = app.token_info(token["access_token"])
    assert (info["subdomain"], info["zone_id"]) == (None, None)
    # Hosts elsewhere, deeper or of the other shape name no tenant.
    for host in (f"a.b.{TENANT_DOMAIN}", "a.example.com", on("x", IAS_DOMAIN), "[::1]:8443"):
        assert "zid" not in claims_of(
            ok(post(app, peer, {"grant_type": "client_credentials"}, host=host))["access_token"]
        )


def test_x_zid_comes_first(app, peer):
    app.tenants.add("customer-b", "zone-b")
    token = ok(
        post(app, peer, {"grant_type": "client_credentials"}, host=on("customer-a"), x_zid="zone-b")
    )
    claims = claims_of(token["access_token"])
    assert (claims["zid"], claims["ext_attr"]) == ("zone-b", {"zdn": "customer-b"})
    # An unknown zone id is a tenant of its own, without a subdomain.
    other = ok(post(app, peer, {"grant_type": "client_credentials"}, x_zid="zone-new"))
    claims = claims_of(other["access_token"])
    assert claims["zid"] == "zone-new"
    assert "ext_attr" not in claims
    assert app.tenants.by_zone("zone-new").subdomain is None


def test_ias_routes_by_app_tid_then_host(app, peer):
    grant = {"grant_type": "client_credentials"}
    by_host = ok(post(app, peer, grant, IAS_TOKEN_PATH, host=on("mtls-test", IAS_DOMAIN)))
    zone = app.tenants.zone_id_of("mtls-test")
    claims = claims_of(by_host["access_token"])
    assert (claims["app_tid"], claims["zid"]) == (zone, zone)
    assert claims["iss"] == f"https://mtls-test.{IAS_DOMAIN}:8443"
    assert by_host.get("scope") is None  # IAS has no default scope
    by_tid = ok(
        post(
            app,
            peer,
            {**grant, "app_tid": "tid-9"},
            IAS_TOKEN_PATH,
            host=on("mtls-test", IAS_DOMAIN),
        )
    )
    assert claims_of(by_tid["access_token"])["app_tid"] == "tid-9"
    # x-zid beats app_tid; XSUAA ignores app_tid.
    both = ok(post(app, peer, {**grant, "app_tid": "tid-9"}, IAS_TOKEN_PATH, x_zid="zone-z"))
    assert claims_of(both["access_token"])["app_tid"] == "zone-z"
    xsuaa = ok(post(app, peer, {**grant, "app_tid": "tid-9"}))
    assert "zid" not in claims_of(xsuaa["access_token"])
    # Without a tenant the IAS issuer is the server itself.
    plain = ok(post(app, peer, grant, IAS_TOKEN_PATH))
    assert claims_of(plain["access_token"])["iss"] == BASE


def test_ias_issuer_is_the_host_and_a_default_zone_takes_its_label(app, peer):
    host = on("mtls-test", IAS_DOMAIN)
    zone = app.tenants.zone_id_of("mtls-test")
    grant = {"grant_type": "client_credentials", "app_tid": zone}
    claims = claims_of(ok(post(app, peer, grant, IAS_TOKEN_PATH, host))["access_token"])
    assert (claims["app_tid"], claims["ext_attr"]) == (zone, {"zdn": "mtls-test"})
    assert claims["iss"] == f"https://mtls-test.{IAS_DOMAIN}:8443"
    other = {"grant_type": "client_credentials", "app_tid": "zone-x"}
    claims = claims_of(ok(post(app, peer, other, IAS_TOKEN_PATH, host))["access_token"])
    assert (claims["app_tid"], claims["iss"]) == ("zone-x", f"https://mtls-test.{IAS_DOMAIN}:8443")
    assert "ext_attr" not in claims
    # A zone first seen by id alone gets its name when a request on its host names it.
    late = app.tenants.zone_id_of("late")
    assert app.tenants.resolve(TenantHint(zone_id=late)).subdomain is None
    named = app.tenants.resolve(TenantHint("late", late, "x-zid"))
    assert named.subdomain == "late"
    assert app.tenants.by_zone(late) == named


def test_credstore_has_no_tenants(app, peer):
    app.jwt_tokens = False
    token = ok(post(app, peer, {"grant_type": "client_credentials"}, "/api/v1/token", x_zid="z"))
    assert app.token_info(token["access_token"])["zone_id"] is None


def test_strict_tenants(app, peer):
    app.strict_tenants = True
    grant = {"grant_type": "client_credentials"}
    assert (
        refused(post(app, peer, grant, host=on("nobody")), 401, "invalid_client")
        == "unknown tenant"
    )
    assert (
        refused(post(app, peer, grant, x_zid="nozone"), 401, "invalid_client") == "unknown tenant"
    )
    assert refused(
        post(app, peer, {**grant, "app_tid": "t"}, IAS_TOKEN_PATH), 401, "invalid_client"
    )
    zone = app.tenants.add("nobody")
    assert claims_of(ok(post(app, peer, grant, host=on("nobody")))["access_token"])["zid"] == zone
    assert claims_of(ok(post(app, peer, grant, x_zid=zone))["access_token"])["zid"] == zone
    ok(post(app, peer, grant))  # the provider needs no registration
    assert app.tenants.by_zone("nozone") is None  # nothing was made


def test_tenant_registry():
    registry = TenantRegistry()
    zone = registry.add("Acme")
    assert registry.add("acme") == zone == registry.zone_id_of("ACME")
    assert registry.add("custom", "zone-1") == "zone-1" == registry.zone_id_of("custom")
    with pytest.raises(ValueError, match="already has zone id"):
        registry.add("custom", "zone-2")
    with pytest.raises(ValueError, match="already belongs"):
        registry.add("other", "zone-1")
    for bad in ("", "-a", "a.b", "a_b", "x" * 64):
        with pytest.raises(ValueError, match="not a subdomain"):
            registry.add(bad)
    # A zone first seen by id gets its subdomain once added.
    assert registry.resolve(TenantHint(zone_id=registry.zone_id_of("late"))).subdomain is None
    assert registry.add("late") == registry.zone_id_of("late")
    assert registry.by_zone(registry.zone_id_of("late")).subdomain == "late"
    assert registry.peek(TenantHint(subdomain="unseen")).zone_id == registry.zone_id_of("unseen")
    assert registry.by_zone(registry.zone_id_of("unseen")) is None
    registry.strict = True
    with pytest.raises(UnknownTenant):
        registry.resolve(TenantHint(subdomain="unseen"))
    assert registry.resolve(TenantHint()) is None
    assert "tenants=" in repr(registry)


# -- resources and records -----------------------------------------------------------------


def test_resources_repeat_and_join_aud(app, peer):
    fields = [("grant_type", "client_credentials"), ("resource", "urn:a"), ("resource", "urn:b")]
    token = ok(post(app, peer, fields))
    assert claims_of(token["access_token"])["aud"] == [CLIENT_ID, "urn:a", "urn:b"]
    assert resource(app, token["access_token"], peer)["resources"] == ["urn:a", "urn:b"]
    assert app.token_info(token["access_token"])["resources"] == ["urn:a", "urn:b"]
    twice = [("grant_type", "client_credentials"), ("scope", "a"), ("scope", "b")]
    assert refused(post(app, peer, twice), 400, "invalid_request") == "scope given more than once"


def test_token_request_records_tenant_host_resources_and_hide_secrets(app, peer):
    body = urlencode(
        [
            ("grant_type", "password"),
            ("client_id", CLIENT_ID),
            ("username", TEST_USER),
            ("password", TEST_PASSWORD),
            ("resource", "urn:x"),
            ("resource", "urn:y"),
        ]
    ).encode()
    headers = {"Host": on("customer-a")}
    record = app.record_token_request(XSUAA_TOKEN_PATH, body, peer, headers)
    assert (record.host, record.subdomain, record.grant_type) == (
        on("customer-a"),
        "customer-a",
        "password",
    )
    assert record.zone_id == app.tenants.zone_id_of("customer-a")
    assert record.app_tid is None
    assert record.resources == ("urn:x", "urn:y")
    assert record.form["password"] == TEST_PASSWORD  # readable for assertions...
    assert TEST_PASSWORD not in repr(record) + str(record) + repr(record.form)  # ...never shown
    assert "'password': '<redacted>'" in repr(record)
    assert app.tenants.by_zone(record.zone_id) is None  # recording registers nothing
    ias = app.record_token_request(
        IAS_TOKEN_PATH, b"grant_type=client_credentials&app_tid=t-1", None, {"HOST": "x"}
    )
    assert (ias.zone_id, ias.app_tid, ias.subdomain, ias.host) == ("t-1", "t-1", None, "x")
    secret_form = "&".join(
        f"{name}=s3cret-{name}" for name in ("assertion", "code", "code_verifier", "refresh_token")
    )
    shown = repr(app.record_token_request(XSUAA_TOKEN_PATH, secret_form.encode(), None))
    assert "s3cret" not in shown


def test_resource_records_name_the_token(app, peer):
    app.jwt_tokens = False
    token = ok(
        post(
            app,
            peer,
            {"grant_type": "password", "username": TEST_USER, "password": TEST_PASSWORD},
            host=on("cust"),
        )
    )
    answer = resource(app, token["access_token"], peer)
    assert (answer["user"], answer["subdomain"], answer["grant_type"]) == (
        TEST_USER,
        "cust",
        "password",
    )
    (record,) = app.resource_requests
    assert (record.user, record.subdomain, record.zone_id, record.grant_type) == (
        TEST_USER,
        "cust",
        app.tenants.zone_id_of("cust"),
        "password",
    )
    assert "." not in token["access_token"]  # opaque: the record knows the user


# -- jwt-bearer ----------------------------------------------------------------------------


def bearer_grant(assertion: str) -> dict[str, str]:
    return {"grant_type": JWT_BEARER, "assertion": assertion}


def test_jwt_bearer_issues_a_user_token(app, peer, clock):
    assertion = mint_user_token(app, "alice", subdomain="customer-a")
    minted = claims_of(assertion)
    zone = app.tenants.zone_id_of("customer-a")
    assert (minted["sub"], minted["user_name"], minted["zid"], minted["app_tid"]) == (
        "alice",
        "alice",
        zone,
        zone,
    )
    assert minted["ext_attr"] == {"zdn": "customer-a"}
    assert minted["iss"] == f"https://customer-a.{TENANT_DOMAIN}:8443/oauth/token"
    # A user's JWT lives in wall-clock time, whatever clock the server's tokens use.
    assert minted["exp"] - minted["iat"] == 600
    assert abs(minted["iat"] - time.time()) < 60
    assert app.users.signer.verify(assertion) == minted
    assert isinstance(app.signer.verify(assertion), str)  # not the access-token key
    token = ok(post(app, peer, bearer_grant(assertion), host=on("customer-a")))
    assert "refresh_token" not in token
    claims = claims_of(token["access_token"])
    assert (claims["sub"], claims["user_name"], claims["grant_type"]) == (
        "alice",
        "alice",
        JWT_BEARER,
    )
    assert (claims["zid"], claims["client_id"]) == (zone, CLIENT_ID)
    assert claims["cnf"] == {"x5t#S256": peer.thumbprint}
    # Without a tenant in the request, the assertion's is the token's.
    again = ok(post(app, peer, bearer_grant(assertion)))
    assert claims_of(again["access_token"])["zid"] == zone


@pytest.mark.parametrize(
    ("make", "host", "description"),
    [
        (lambda app: "not-a-jwt", None, "the assertion is not a JWT"),
        (lambda app: "a.b.c", None, "the assertion is not a JWT"),
        (lambda app: app.signer.sign({"sub": "u", "exp": 2e9}), None, "not signed by a key"),
        (
            lambda app: app.users.signer.sign({"sub": "u", "exp": 2e9}).replace(".", ".x", 1),
            None,
            "the assertion is not a JWT",
        ),
        (lambda app: mint_user_token(app, exp=1.0), None, "the assertion has expired"),
        (lambda app: mint_user_token(app, extra={"exp": None}), None, "the assertion has no exp"),
        (
            lambda app: mint_user_token(app, extra={"sub": None, "user_name": None}),
            None,
            "names no user",
        ),
        (
            lambda app: mint_user_token(app, subdomain="customer-a"),
            on("customer-b"),
            "zid is not the tenant of the request",
        ),
    ],
)
def test_jwt_bearer_refusals(app, peer, make, host, description):
    response = post(app, peer, bearer_grant(make(app)), host=host)
    assert description in refused(response)
    assert app.tokens_issued == 0


def test_jwt_bearer_checks_app_tid_at_ias_and_needs_an_assertion(app, peer, clock):
    assertion = mint_user_token(app, app_tid="tid-1")
    claims = claims_of(assertion)
    assert claims["iss"] == BASE  # only an app_tid: the IAS issuer of no tenant
    assert claims["zid"] == claims["app_tid"] == "tid-1"
    ias = on("mtls-test", IAS_DOMAIN)
    response = post(app, peer, bearer_grant(assertion), IAS_TOKEN_PATH, host=ias)
    assert "app_tid is not the tenant" in refused(response)
    token = ok(post(app, peer, {**bearer_grant(assertion), "app_tid": "tid-1"}, IAS_TOKEN_PATH))
    assert claims_of(token["access_token"])["app_tid"] == "tid-1"
    assert refused(post(app, peer, {"grant_type": JWT_BEARER}), 400, "invalid_request") == (
        "assertion is required"
    )
    assert refused(post(app, None, bearer_grant(assertion)), 401, "invalid_client")
    expired = mint_user_token(app, app_tid="tid-1", exp=time.time() - 1)
    assert refused(post(app, peer, bearer_grant(expired), IAS_TOKEN_PATH)) == (
        "the assertion has expired"
    )


def test_jwt_bearer_unknown_assertion_tenant_with_strict_tenants(app, peer):
    app.strict_tenants = True
    assertion = mint_user_token(app, zid="zone-unknown")
    assert (
        refused(post(app, peer, bearer_grant(assertion)))
        == "the assertion's zid is an unknown tenant"
    )


def test_mint_user_token_options(app, clock):
    claims = claims_of(
        mint_user_token(app, zid="z1", app_tid="t1", lifetime=5, extra={"email": "a@b"})
    )
    assert (claims["zid"], claims["app_tid"], claims["exp"] - claims["iat"], claims["email"]) == (
        "z1",
        "t1",
        5,
        "a@b",
    )
    assert claims["sub"] == TEST_USER
    assert "ext_attr" not in claims
    assert claims_of(mint_user_token(app, exp=12.5))["exp"] == 12.5
    provider = claims_of(mint_user_token(app))
    assert provider["iss"] == app.issuer
    assert "zid" not in provider
    assert "app_tid" not in provider
    app.tenants.add("known", "zk")
    assert claims_of(mint_user_token(app, zid="zk"))["ext_attr"] == {"zdn": "known"}
    with app.users.lock:
        assert list(app.users.secrets.values()).count("user token") == 4


# -- authorization code --------------------------------------------------------------------


def test_login_then_code_then_refresh(app, peer):
    url = authorize_url(f"https://customer-a.{LOGIN_DOMAIN}:8443", scope="read")
    params = callback_params(app.login(url, "alice"))
    assert params["state"] == "st-1"
    token = ok(redeem(app, peer, params["code"]))
    assert token["scope"] == "read"
    claims = claims_of(token["access_token"])
    assert (claims["sub"], claims["grant_type"], claims["ext_attr"]) == (
        "alice",
        "authorization_code",
        {"zdn": "customer-a"},
    )
    assert token["refresh_token"]
    assert "." not in token["refresh_token"]
    with app.users.lock:
        kinds = {app.users.secrets[params["code"]], app.users.secrets[token["refresh_token"]]}
    assert kinds == {"authorization code", "refresh token"}
    renewed = ok(refresh(app, peer, token["refresh_token"], host=on("customer-a")))
    assert claims_of(renewed["access_token"])["sub"] == "alice"
    assert claims_of(renewed["access_token"])["grant_type"] == "refresh_token"
    assert renewed["scope"] == "read"


def test_the_code_is_single_use_and_expires(app, peer, clock):
    code = code_for(app)
    ok(redeem(app, peer, code))
    assert refused(redeem(app, peer, code)) == "the authorization code has already been used"
    late = code_for(app)
    clock.advance(60)
    assert refused(redeem(app, peer, late)) == "the authorization code has expired"
    assert refused(redeem(app, peer, "never-issued")) == "unknown authorization code"
    assert refused(post(app, peer, {"grant_type": "authorization_code"}), 400, "invalid_request")


@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"verifier": "w" * 43}, "code_verifier does not match the code_challenge (PKCE)"),
        ({"verifier": ""}, "code_verifier is required (PKCE)"),
        ({"redirect_uri": "https://app.example/other"}, "redirect_uri is not the one"),
        ({"path": IAS_TOKEN_PATH}, "issued for another token endpoint"),
        ({"host": on("customer-b")}, "the authorization code was issued for another tenant"),
    ],
)
def test_code_redemption_refusals(app, peer, change, description):
    code = code_for(app, authorize_url(f"https://customer-a.{LOGIN_DOMAIN}"))
    verifier = change.pop("verifier", VERIFIER)
    assert description in refused(redeem(app, peer, code, verifier, **change))
    ok(redeem(app, peer, code))  # a refused redemption does not use the code up


def test_a_code_is_for_its_client(app, peer, pki_other):
    other_peer, other_id = pki_other
    app.register_client(other_id, other_peer.subject)
    code = code_for(app)
    response = app.handle_token(
        XSUAA_TOKEN_PATH,
        FORM,
        urlencode(
            {
                "grant_type": "authorization_code",
                "client_id": other_id,
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": VERIFIER,
            }
        ).encode(),
        other_peer,
    )
    assert refused(response) == "the authorization code was issued to another client"


@pytest.fixture
def pki_other(mtls_pki: PKI) -> tuple[Peer, str]:
    return Peer.of(mtls_pki.issue_client("another app")), "sb-other!t9"


@pytest.mark.parametrize(
    ("params", "error", "description"),
    [
        ({"response_type": "token"}, "unsupported_response_type", "only response_type=code"),
        ({"response_type": None}, "invalid_request", "response_type is required"),
        ({"client_id": "unknown"}, "unauthorized_client", "unknown client_id"),
        ({"client_id": None}, "invalid_request", "client_id is required"),
        ({"code_challenge_method": None}, "invalid_request", "are required"),
        ({"code_challenge": None}, "invalid_request", "are required"),
        ({"code_challenge_method": "plain"}, "invalid_request", "must be S256"),
        ({"code_challenge": "short"}, "invalid_request", "not a valid S256 challenge"),
    ],
)
def test_authorization_errors_go_back_to_the_client(app, params, error, description):
    params = callback_params(app.login(authorize_url(**params)))
    assert (params["error"], params["state"]) == (error, "st-1")
    assert description in params["error_description"]
    assert "code" not in params


def test_authorization_errors_without_a_usable_redirect_uri(app):
    for redirect in (None, "", "/relative", "ftp://x/y", "https://app.example/cb#frag"):
        with pytest.raises(ValueError, match="redirect_uri is missing or not an absolute"):
            app.login(authorize_url(redirect_uri=redirect))
    response = app.handle_authorize("/oauth/authorize", "client_id=x", None)
    assert refused(response, 400, "invalid_request")
    with pytest.raises(ValueError, match="not an authorization URL"):
        app.login(f"{BASE}/oauth/token?x=1")
    twice = authorize_url() + "&redirect_uri=https%3A%2F%2Fevil.example%2F"
    with pytest.raises(ValueError, match="given more than once"):
        app.login(twice)
    again = callback_params(app.login(authorize_url() + "&state=other"))
    assert again["error_description"] == "state given more than once"


def test_http_authorize_answers_a_redirect(app, peer):
    query = urlsplit(authorize_url(state=None)).query
    host = on("mtls-test", IAS_DOMAIN)
    response = app.handle_authorize("/oauth2/authorize", query, host)
    assert response.status == 302
    assert response.header("Cache-Control") == "no-store"
    params = callback_params(response.header("Location"))
    assert set(params) == {"code"}  # no state was sent, none comes back
    assert params["code"] not in repr(response)
    token = ok(redeem(app, peer, params["code"], path=IAS_TOKEN_PATH, host=host))
    claims = claims_of(token["access_token"])
    assert (claims["sub"], claims["app_tid"]) == (TEST_USER, app.tenants.zone_id_of("mtls-test"))


def test_redirect_uri_query_is_kept(app):
    url = authorize_url(redirect_uri="https://app.example/callback?keep=1")
    parts = urlsplit(app.login(url))
    assert parse_qs(parts.query)["keep"] == ["1"]
    assert "code" in parse_qs(parts.query)


def test_deny_next_login_and_strict_tenants_at_login(app):
    app.users.deny_next_login("access_denied")
    app.users.deny_next_login("temporarily_unavailable")
    bad = app.login(authorize_url(response_type="token"))  # refused before the login: not used up
    assert callback_params(bad)["error"] == "unsupported_response_type"
    assert callback_params(app.login(authorize_url()))["error"] == "access_denied"
    assert callback_params(app.login(authorize_url()))["error"] == "temporarily_unavailable"
    assert "code" in callback_params(app.login(authorize_url()))
    app.strict_tenants = True
    denied = callback_params(app.login(authorize_url(f"https://nobody.{LOGIN_DOMAIN}")))
    assert (denied["error"], denied["error_description"]) == ("invalid_request", "unknown tenant")


# -- refresh tokens and passwords ----------------------------------------------------------


def password_grant(username: str = TEST_USER, password: str = TEST_PASSWORD) -> dict[str, str]:
    return {"grant_type": "password", "username": username, "password": password}


def test_refresh_tokens_rotate(app, peer):
    first = ok(post(app, peer, password_grant()))["refresh_token"]
    second = ok(refresh(app, peer, first))["refresh_token"]
    assert second != first
    assert (
        refused(refresh(app, peer, first)) == "the refresh token has been replaced by a newer one"
    )
    third = ok(refresh(app, peer, second))["refresh_token"]
    app.users.rotate_refresh_tokens = False
    assert ok(refresh(app, peer, third))["refresh_token"] == third
    assert ok(refresh(app, peer, third))["refresh_token"] == third
    assert refused(refresh(app, peer, "unknown")) == "unknown refresh token"
    assert refused(post(app, peer, {"grant_type": "refresh_token"}), 400, "invalid_request")


def test_revoke_refresh_tokens(app, peer):
    old = ok(post(app, peer, password_grant()))["refresh_token"]
    app.users.revoke_refresh_tokens()
    assert refused(refresh(app, peer, old)) == "the refresh token has been revoked"
    new = ok(post(app, peer, password_grant()))["refresh_token"]
    ok(refresh(app, peer, new))


def test_refresh_tokens_keep_to_their_client_tenant_and_endpoint(app, peer, pki_other):
    token = ok(post(app, peer, password_grant(), host=on("customer-a")))["refresh_token"]
    assert refused(refresh(app, peer, token, host=on("customer-b"))) == (
        "the refresh token was issued for another tenant"
    )
    assert "another tenant" in refused(refresh(app, peer, token, x_zid="zz"))
    assert "another token endpoint" in refused(refresh(app, peer, token, path=IAS_TOKEN_PATH))
    other_peer, other_id = pki_other
    app.register_client(other_id, other_peer.subject)
    response = app.handle_token(
        XSUAA_TOKEN_PATH,
        FORM,
        urlencode(
            {"grant_type": "refresh_token", "client_id": other_id, "refresh_token": token}
        ).encode(),
        other_peer,
    )
    assert refused(response) == "the refresh token was issued to another client"
    renewed = ok(refresh(app, peer, token))  # no tenant in the request: the token's own
    assert claims_of(renewed["access_token"])["ext_attr"] == {"zdn": "customer-a"}


def test_password_grant(app, peer):
    token = ok(post(app, peer, {**password_grant(), "scope": "s1"}))
    assert token["scope"] == "s1"
    assert token["refresh_token"]
    assert claims_of(token["access_token"])["user_name"] == TEST_USER
    assert (
        refused(post(app, peer, password_grant(password="wrong"))) == "wrong username or password"
    )
    assert refused(post(app, peer, password_grant("nobody"))) == "wrong username or password"
    app.users.add_user("bob", "pw-bob")
    assert (
        claims_of(ok(post(app, peer, password_grant("bob", "pw-bob")))["access_token"])["sub"]
        == "bob"
    )
    assert refused(
        post(app, peer, {"grant_type": "password", "username": "bob"}), 400, "invalid_request"
    )
    assert refused(post(app, None, password_grant()), 401, "invalid_client")
    with pytest.raises(ValueError):
        app.users.add_user("", "x")


def test_grant_handlers_see_a_redacted_form(app, peer):
    seen = []

    def spy(app, call):
        seen.append(call)
        return GRANTS["password"](app, call)

    app.grants = {**GRANTS, "password": spy}
    ok(post(app, peer, password_grant(), host=on("x")))
    (call,) = seen
    assert call.form["password"] == TEST_PASSWORD
    assert TEST_PASSWORD not in repr(call)
    assert call.tenant.subdomain == "x"


def test_grant_table_and_discovery(app):
    assert list(GRANTS) == [
        "client_credentials",
        JWT_BEARER,
        "authorization_code",
        "refresh_token",
        "password",
    ]
    config = app.handle_document("GET", "/.well-known/openid-configuration").json()
    assert config["grant_types_supported"] == list(GRANTS)
    assert config["authorization_endpoint"] == f"{BASE}/oauth/authorize"
    assert config["code_challenge_methods_supported"] == ["S256"]
    tenant = app.handle_document(
        "GET", "/.well-known/openid-configuration", on("customer-a", LOGIN_DOMAIN)
    ).json()
    assert tenant["token_endpoint"] == f"https://customer-a.{TENANT_DOMAIN}:8443/oauth/token"
    assert tenant["mtls_endpoint_aliases"] == {"token_endpoint": tenant["token_endpoint"]}
    assert (
        tenant["authorization_endpoint"]
        == f"https://customer-a.{LOGIN_DOMAIN}:8443/oauth/authorize"
    )
    ias = app.handle_document(
        "GET", "/.well-known/openid-configuration", on("t1", IAS_DOMAIN)
    ).json()
    assert ias["issuer"] == f"https://t1.{IAS_DOMAIN}:8443"
    assert ias["token_endpoint"] == f"https://t1.{IAS_DOMAIN}:8443/oauth2/token"
    assert ias["authorization_endpoint"] == f"https://t1.{IAS_DOMAIN}:8443/oauth2/authorize"
    assert ias["jwks_uri"] == f"https://t1.{IAS_DOMAIN}:8443/oauth2/certs"
    assert app.handle_document("GET", "/oauth2/certs").json() == app.signer.jwks()
    assert app.route("/oauth/authorize") == app.route("/oauth2/authorize") == "authorize"
    assert app.route("/oauth2/token") == "token"


def test_pkce_challenge_is_rfc_7636():
    # RFC 7636 appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    digest = hashlib.sha256(verifier.encode()).digest()
    assert pkce_challenge(verifier) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
