"""The token server's OAuth behaviour (`TokenApp`) and fault queue, without any socket.

`TokenApp` takes requests as plain values (path, headers, body, the verified
client certificate as a `Peer`) and answers with a `Response`; these tests
call it directly. tests/test_testing_server.py covers the same server over
real TLS connections.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from mtls_auth.testing import PKI, Credential, FakeClock, Fault, TokenServer
from mtls_auth.testing._app import TokenApp
from mtls_auth.testing._faults import FaultQueue, FaultStream
from mtls_auth.testing._grants import GRANTS
from mtls_auth.testing._oauth import (
    CREDSTORE_TOKEN_PATH,
    TOKEN_SHAPES,
    XSUAA_TOKEN_PATH,
    Grant,
    Peer,
    ResourceRequest,
    TokenCall,
    TokenRequest,
)
from mtls_auth.testing._wire import Response

CLIENT_ID = "sb-app-client!t1"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# -- helpers -------------------------------------------------------------------------------


def form(**fields: str | None) -> bytes:
    fields.setdefault("grant_type", "client_credentials")
    fields.setdefault("client_id", CLIENT_ID)
    return urlencode({k: v for k, v in fields.items() if v is not None}).encode()


def token(
    app: TokenApp,
    peer: Peer | None,
    path: str = XSUAA_TOKEN_PATH,
    headers: dict[str, str] | None = None,
    **fields: str | None,
) -> Response:
    return app.handle_token(path, FORM if headers is None else headers, form(**fields), peer)


def issue(app: TokenApp, peer: Peer, path: str = XSUAA_TOKEN_PATH, **fields: str | None) -> str:
    response = token(app, peer, path, **fields)
    assert response.status == 200, response.json()
    return response.json()["access_token"]


def resource(
    app: TokenApp, access_token: str | None, peer: Peer | None, path: str = "/resource"
) -> Response:
    authorization = None if access_token is None else f"Bearer {access_token}"
    return app.handle_resource("GET", path, authorization, peer, 0)


def error_of(response: Response) -> tuple[int, str]:
    return response.status, response.json()["error"]


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(mtls_pki: PKI) -> Credential:
    return mtls_pki.issue_client()


@pytest.fixture
def peer(client: Credential) -> Peer:
    return Peer.of(client)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(client: Credential, clock: FakeClock) -> TokenApp:
    app = TokenApp(clock=clock, base_url="https://localhost:8443")
    app.register_client(CLIENT_ID, client)
    return app


# -- issuing -------------------------------------------------------------------------------


def test_registered_client_gets_a_token(app, peer, clock, client):
    response = token(app, peer, scope="read write")
    assert response.status == 200
    assert response.header("Cache-Control") == "no-store"
    assert response.header("pragma") == "no-cache"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    assert app.tokens_issued == 1
    info = app.token_info(body["access_token"])
    assert info == {
        "index": 1,
        "path": XSUAA_TOKEN_PATH,
        "client_id": CLIENT_ID,
        "namespace": None,
        "scope": "read write",
        "thumbprint": client.thumbprint,
        "subject": client.subject,
        "issued_at": clock(),
        "expires_at": clock() + 3600,
        "revoked": False,
        "subdomain": None,
        "zone_id": None,
        "app_tid": None,
        "user": None,
        "grant_type": "client_credentials",
        "resources": [],
    }
    assert body["access_token"] not in repr(response) + repr(app)
    assert app.token_info("never-issued") is None


def test_xsuaa_default_scope_and_credstore_namespace(app, peer):
    xsuaa = token(app, peer).json()
    assert xsuaa["scope"] == "uaa.resource"
    credstore = token(app, peer, CREDSTORE_TOKEN_PATH, credstore_namespace="ns/1 &x").json()
    assert "scope" not in credstore
    info = app.token_info(credstore["access_token"])
    assert (info["path"], info["namespace"], info["index"]) == (CREDSTORE_TOKEN_PATH, "ns/1 &x", 2)


def test_the_live_token_dict_holds_every_token_in_issue_order(app, peer):
    issued = [issue(app, peer) for _ in range(3)]
    with app.lock:
        assert list(app.tokens) == issued
    assert [record.index for record in app.tokens.values()] == [1, 2, 3]


def test_tokens_are_opaque_and_unique(app, peer):
    tokens = {issue(app, peer) for _ in range(20)}
    assert len(tokens) == 20
    assert all("." not in t and len(t) >= 32 for t in tokens)


def test_lifetime_changes_apply_to_the_next_token(app, peer, clock):
    app.token_lifetime = 5
    response = token(app, peer)
    assert response.json()["expires_in"] == 5
    assert app.token_info(response.json()["access_token"])["expires_at"] == clock() + 5


# -- refusals ------------------------------------------------------------------------------


def test_unknown_client_refused(app, peer):
    response = token(app, peer, client_id="sb-someone-else")
    assert error_of(response) == (401, "invalid_client")
    assert response.json()["error_description"] == (
        "client_id is not bound to the presented certificate"
    )
    assert app.tokens_issued == 0


def test_wrong_certificate_subject_refused(app, mtls_pki, client):
    other = mtls_pki.issue_client("another-subject")
    assert other.subject != client.subject
    assert error_of(token(app, Peer.of(other))) == (401, "invalid_client")
    app.register_client("another", other.subject)  # by subject string
    assert error_of(token(app, Peer.of(client), client_id="another")) == (401, "invalid_client")
    assert issue(app, Peer.of(other), client_id="another")
    app.register_client("another", client)  # a second accepted subject
    assert issue(app, Peer.of(client), client_id="another")


def test_rotated_certificate_with_the_same_subject_is_accepted(app, mtls_pki, client):
    rotated = mtls_pki.issue_client()
    assert (rotated.subject, rotated.thumbprint != client.thumbprint) == (client.subject, True)
    access_token = issue(app, Peer.of(rotated))
    assert app.token_info(access_token)["thumbprint"] == rotated.thumbprint


def test_unregistered_client_refused(app, peer):
    assert issue(app, peer)
    app.unregister_client(CLIENT_ID)
    app.unregister_client(CLIENT_ID)  # twice is fine
    assert error_of(token(app, peer)) == (401, "invalid_client")


def test_client_secret_refused(app, peer):
    response = token(app, peer, client_secret="s3cret")
    assert response.status == 401
    assert response.json() == {
        "error": "invalid_client",
        "error_description": "client_secret is not accepted with mTLS",
    }
    assert app.tokens_issued == 0


def test_no_certificate_and_no_client_id(app, peer):
    response = token(app, None)
    assert error_of(response) == (401, "invalid_client")
    assert response.json()["error_description"] == "a client certificate is required"
    assert error_of(token(app, peer, client_id=None)) == (400, "invalid_request")
    assert error_of(token(app, peer, client_id="")) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("grant_type", "status", "error"),
    [
        ("device_code", 400, "unsupported_grant_type"),
        ("password", 400, "invalid_request"),  # known now: username is missing
        ("", 400, "invalid_request"),
        (None, 400, "invalid_request"),
    ],
)
def test_grant_type_checked(app, peer, grant_type, status, error):
    fields = {"client_id": CLIENT_ID}
    if grant_type is not None:
        fields["grant_type"] = grant_type
    response = app.handle_token(XSUAA_TOKEN_PATH, FORM, urlencode(fields).encode(), peer)
    assert error_of(response) == (status, error)
    if error == "unsupported_grant_type":
        assert response.json()["error_description"] == (
            "only client_credentials, urn:ietf:params:oauth:grant-type:jwt-bearer, "
            "authorization_code, refresh_token, password are supported"
        )
        app.grants = {"client_credentials": GRANTS["client_credentials"]}
        response = app.handle_token(XSUAA_TOKEN_PATH, FORM, urlencode(fields).encode(), peer)
        assert response.json()["error_description"] == "only client_credentials is supported"


def test_duplicate_form_parameters_refused(app, peer):
    body = form() + b"&client_id=x"
    response = app.handle_token(XSUAA_TOKEN_PATH, FORM, body, peer)
    assert error_of(response) == (400, "invalid_request")
    assert response.json()["error_description"] == "client_id given more than once"
    assert app.tokens_issued == 0


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "application/json"}, 400),
        ({}, 400),
        ({"content-type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8"}, 200),
        ({"CONTENT-TYPE": "application/x-www-form-urlencoded"}, 200),
    ],
)
def test_form_content_type_checked(app, peer, headers, status):
    assert token(app, peer, headers=headers).status == status


def test_only_token_paths_issue(app, peer):
    assert app.handle_token("/oauth/other", FORM, form(), peer).status == 404
    assert app.tokens_issued == 0


# -- the grant table and token shapes -----------------------------------------------------


def test_token_paths_are_data():
    assert set(TOKEN_SHAPES) == {XSUAA_TOKEN_PATH, CREDSTORE_TOKEN_PATH, "/oauth2/token"}
    assert TOKEN_SHAPES[XSUAA_TOKEN_PATH].jwt
    assert not TOKEN_SHAPES[CREDSTORE_TOKEN_PATH].jwt
    assert TOKEN_SHAPES[CREDSTORE_TOKEN_PATH].credentials_api
    with pytest.raises(TypeError):
        TOKEN_SHAPES["/oauth3/token"] = TOKEN_SHAPES[XSUAA_TOKEN_PATH]  # type: ignore[index]


def test_a_grant_is_one_entry_in_the_table(app, peer, client):
    seen: list[TokenCall] = []

    def refresh(app: TokenApp, call: TokenCall) -> Grant | Response:
        seen.append(call)
        client = app.authenticate_client(call)
        if isinstance(client, Response):
            return client
        return Grant(client[0], client[1], scope="refreshed", claims={"ext_attr": {"x": 1}})

    app.grants = {"client_credentials": GRANTS["client_credentials"], "refresh_token": refresh}
    app.jwt_tokens = True
    headers = {**FORM, "X-Zid": "tenant-1"}
    response = token(app, peer, headers=headers, grant_type="refresh_token", refresh_token="r")
    assert response.status == 200
    (call,) = seen
    assert (call.grant_type, call.form["refresh_token"], call.headers["x-zid"]) == (
        "refresh_token",
        "r",
        "tenant-1",
    )
    assert call.shape is TOKEN_SHAPES[XSUAA_TOKEN_PATH]
    claims = json.loads(b64decode(response.json()["access_token"].split(".")[1]))
    assert claims["grant_type"] == "refresh_token"
    assert claims["scope"] == ["refreshed"]
    assert claims["ext_attr"] == {"x": 1}
    assert app.openid_configuration()["grant_types_supported"] == [
        "client_credentials",
        "refresh_token",
    ]
    # The common client authentication still applies to the new grant.
    refused = token(app, None, grant_type="refresh_token")
    assert error_of(refused) == (401, "invalid_client")
    assert error_of(token(app, peer, grant_type="password")) == (400, "unsupported_grant_type")


# -- revocation ----------------------------------------------------------------------------


def test_revoke_all_invalidates_earlier_tokens_only(app, peer):
    old = issue(app, peer)
    assert resource(app, old, peer).status == 200
    app.revoke_all()
    response = resource(app, old, peer)
    assert response.status == 401
    assert response.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert response.json()["error_description"] == "the token has been revoked"
    assert app.token_info(old)["revoked"]
    fresh = issue(app, peer)
    assert resource(app, fresh, peer).status == 200
    assert not app.token_info(fresh)["revoked"]


def test_revoke_certificate(app, peer, mtls_pki):
    other = Peer.of(mtls_pki.issue_client())  # same subject, another certificate
    mine, theirs = issue(app, peer), issue(app, other)
    app.revoke_certificate(peer.thumbprint)
    response = token(app, peer)
    assert error_of(response) == (401, "invalid_client")
    assert response.json()["error_description"] == "the certificate has been revoked"
    assert resource(app, mine, peer).status == 401
    assert app.token_info(mine)["revoked"]
    assert resource(app, theirs, other).status == 200
    assert issue(app, other)


# -- the protected resource ----------------------------------------------------------------


def test_resource_answers_and_records(app, peer, clock):
    access_token = issue(app, peer)
    response = app.handle_resource("PUT", "/resource/items/1", f"Bearer {access_token}", peer, 10)
    assert response.status == 200
    assert response.json() == {
        "ok": True,
        "client_id": CLIENT_ID,
        "namespace": None,
        "method": "PUT",
        "path": "/resource/items/1",
        "body_length": 10,
    }  # a provider's client-credentials token: the answer it always had
    (record,) = app.resource_requests
    assert record == ResourceRequest(
        method="PUT",
        path="/resource/items/1",
        had_authorization=True,
        thumbprint=peer.thumbprint,
        time=clock(),
        status=200,
        client_id=CLIENT_ID,
        token_index=1,
        grant_type="client_credentials",
    )
    assert access_token not in repr(record)


@pytest.mark.parametrize(
    ("authorization", "challenge", "description"),
    [
        (None, "Bearer", "a bearer token is required"),
        ("Basic abc", "Bearer", "a bearer token is required"),
        ("Bearer ", "Bearer", "a bearer token is required"),
        ("Bearer nope", 'Bearer error="invalid_token"', "unknown token"),
    ],
)
def test_missing_and_unknown_tokens(app, peer, authorization, challenge, description):
    response = app.handle_resource("GET", "/resource", authorization, peer, 0)
    assert response.status == 401
    assert response.header("WWW-Authenticate") == challenge
    assert response.json()["error_description"] == description
    (record,) = app.resource_requests
    assert (record.had_authorization, record.token_index) == (authorization is not None, None)


def test_bearer_scheme_is_case_insensitive(app, peer):
    access_token = issue(app, peer)
    assert (
        app.handle_resource("GET", "/resource", f"bearer  {access_token} ", peer, 0).status == 200
    )


def test_always_401(app, peer):
    access_token = issue(app, peer)
    response = resource(app, access_token, peer, "/resource/always-401")
    assert response.status == 401
    assert response.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert app.resource_requests[-1].token_index == 1


def test_expiry_follows_the_injected_clock(app, peer, clock):
    app.token_lifetime = 60
    access_token = issue(app, peer)
    clock.advance(59)
    assert resource(app, access_token, peer).status == 200
    clock.advance(1)
    response = resource(app, access_token, peer)
    assert response.status == 401
    assert response.json()["error_description"] == "the token has expired"
    assert [r.time for r in app.resource_requests] == [clock() - 1, clock()]


def test_cert_bound_mode(app, peer, mtls_pki):
    access_token = issue(app, peer)
    other = Peer.of(mtls_pki.issue_client())  # same subject, different certificate
    assert resource(app, access_token, other).status == 200
    assert resource(app, access_token, None).status == 200
    app.cert_bound = True
    response = resource(app, access_token, other)
    assert response.status == 401
    assert response.json()["error_description"] == "the token is bound to another certificate"
    assert resource(app, access_token, None).status == 401
    assert resource(app, access_token, peer).status == 200


def test_record_resource_for_faulted_requests(app, peer):
    record = app.record_resource("GET", "/resource", "Bearer x", peer, 502)
    assert app.resource_requests == [record]
    assert (record.status, record.token_index, record.had_authorization) == (502, None, True)


# -- records -------------------------------------------------------------------------------


def test_record_token_request(app, peer, clock):
    body = form(credstore_namespace="ns1", scope="a") + b"&scope=b"
    record = app.record_token_request(CREDSTORE_TOKEN_PATH, body, peer)
    assert record == TokenRequest(
        path=CREDSTORE_TOKEN_PATH,
        form={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "credstore_namespace": "ns1",
            "scope": "a",
        },
        client_id=CLIENT_ID,
        namespace="ns1",
        thumbprint=peer.thumbprint,
        subject=peer.subject,
        time=clock(),
        grant_type="client_credentials",
    )
    anonymous = app.record_token_request(XSUAA_TOKEN_PATH, b"", None)
    assert (anonymous.thumbprint, anonymous.subject, anonymous.client_id) == (None, None, None)
    assert app.token_requests == [record, anonymous]
    assert app.token_request_count == 2


def test_handle_token_records_nothing_and_clear_keeps_tokens(app, peer):
    access_token = issue(app, peer)
    assert app.token_requests == []
    resource(app, access_token, peer)
    app.record_token_request(XSUAA_TOKEN_PATH, form(), peer)
    app.clear_records()
    assert (app.token_requests, app.resource_requests) == ([], [])
    assert app.tokens_issued == 1
    assert resource(app, access_token, peer).status == 200


def test_peer_from_der(client):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(client.cert_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    assert Peer.from_der(der) == Peer.of(client) == Peer(client.thumbprint, client.subject)


# -- JWT, discovery and routing ------------------------------------------------------------


def test_jwt_claims_and_signature(app, peer, clock):
    app.jwt_tokens = True
    access_token = issue(app, peer, scope="a b")
    head, claims, signature = access_token.split(".")
    app.signer.public_key.verify(
        b64decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    header, payload = json.loads(b64decode(head)), json.loads(b64decode(claims))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": app.signer.jwks()["keys"][0]["kid"]}
    assert payload["iss"] == app.issuer == "https://localhost:8443/oauth/token"
    for name in ("sub", "client_id", "cid", "azp"):
        assert payload[name] == CLIENT_ID
    assert payload["aud"] == [CLIENT_ID]
    assert payload["grant_type"] == "client_credentials"
    assert payload["scope"] == ["a", "b"]
    assert payload["cnf"] == {"x5t#S256": peer.thumbprint}
    assert (payload["iat"], payload["exp"]) == (int(clock()), int(clock()) + 3600)
    assert len(payload["jti"]) == 32
    assert json.loads(b64decode(issue(app, peer).split(".")[1]))["jti"] != payload["jti"]
    assert resource(app, access_token, peer).status == 200
    # Credential Store tokens stay opaque.
    assert "." not in issue(app, peer, CREDSTORE_TOKEN_PATH)


def test_jwks(app):
    (key,) = app.signer.jwks()["keys"]
    numbers = app.signer.public_key.public_numbers()
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert int.from_bytes(b64decode(key["n"]), "big") == numbers.n
    assert int.from_bytes(b64decode(key["e"]), "big") == numbers.e


def test_documents(app):
    response = app.handle_document("GET", "/.well-known/openid-configuration")
    assert response.status == 200
    config = response.json()
    assert config == app.openid_configuration()
    assert config["issuer"] == config["token_endpoint"] == "https://localhost:8443/oauth/token"
    assert config["mtls_endpoint_aliases"] == {"token_endpoint": config["token_endpoint"]}
    assert config["jwks_uri"] == "https://localhost:8443/token_keys"
    assert config["grant_types_supported"] == list(GRANTS)
    assert config["authorization_endpoint"] == "https://localhost:8443/oauth/authorize"
    assert app.openid_configuration("https://x:1")["token_endpoint"] == "https://x:1/oauth/token"
    assert app.handle_document("GET", "/token_keys").json() == app.signer.jwks()
    assert app.handle_document("POST", "/token_keys").status == 404
    assert app.handle_document("GET", "/nope").json() == {"error": "not_found"}
    app.documents["/.well-known/openid-configuration"] = lambda: {"issuer": "elsewhere"}
    app.documents["/extra"] = lambda: [1]
    assert app.handle_document("GET", "/.well-known/openid-configuration").json() == {
        "issuer": "elsewhere"
    }
    assert app.handle_document("GET", "/extra").json() == [1]


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/oauth/token", "token"),
        ("/api/v1/token", "token"),
        ("/oauth/token/x", "document"),
        ("/resource", "resource"),
        ("/resource/always-401", "resource"),
        ("/resources", "document"),
        ("/api/v1/credentials", "credentials"),
        ("/api/v1/credentials/password", "credentials"),
        ("/token_keys", "document"),
        ("/", "document"),
    ],
)
def test_route(app, path, route):
    assert app.route(path) == route


# -- Credential Store credentials API ------------------------------------------------------


def credentials(
    app: TokenApp, method: str, access_token: str, peer: Peer, body: dict | None = None
) -> Response:
    path = "/api/v1/credentials/password"
    query = "" if body is not None else "name=db"
    content = json.dumps(body).encode() if body is not None else b""
    authorization = f"Bearer {access_token}"
    return app.handle_credentials(
        method, path, query, "application/json", content, authorization, peer
    )


def test_credentials_api_per_namespace(app, peer):
    app.credstore.encrypt = False
    ns1 = issue(app, peer, CREDSTORE_TOKEN_PATH, credstore_namespace="ns1")
    ns2 = issue(app, peer, CREDSTORE_TOKEN_PATH, credstore_namespace="ns2")
    created = credentials(app, "POST", ns1, peer, {"name": "db", "value": "pw"})
    assert created.status == 201
    assert credentials(app, "GET", ns1, peer).json()["value"] == "pw"
    assert credentials(app, "GET", ns2, peer).status == 404
    records = app.resource_requests
    assert [(r.status, r.token_index) for r in records] == [(201, 1), (200, 1), (404, 2)]


def test_credentials_api_needs_a_namespaced_credstore_token(app, peer):
    xsuaa = issue(app, peer)
    bare = issue(app, peer, CREDSTORE_TOKEN_PATH)
    for access_token in (xsuaa, bare):
        response = credentials(app, "GET", access_token, peer)
        assert response.status == 401
        assert response.json()["error_description"] == (
            "not a Credential Store token with a namespace"
        )
    assert credentials(app, "GET", "unknown", peer).json()["error_description"] == "unknown token"
    assert [r.token_index for r in app.resource_requests] == [1, 2, None]
    assert app.credstore.requests == []  # refused before reaching the API


def test_credstore_api_is_made_once(app):
    assert app.credstore is app.credstore


# -- the facade keeps the app's live records ----------------------------------------------


def test_token_server_shares_the_app_lock_and_token_dict(mtls_pki, client, peer):
    clock = FakeClock()
    server = TokenServer(mtls_pki, clock=clock, token_lifetime=60, jwt_tokens=True)
    assert server._tokens is server._app.tokens
    assert server._lock is server._app.lock
    assert (server.clock, server.token_lifetime, server.jwt_tokens) == (clock, 60, True)
    server.register_client(CLIENT_ID, client)
    server.cert_bound = True
    server.token_lifetime = 30
    assert (server._app.cert_bound, server._app.token_lifetime) == (True, 30)
    access_token = issue(server._app, peer)
    assert list(server._tokens) == [access_token]
    assert server.tokens_issued == 1
    assert server.token_info(access_token)["expires_at"] == clock() + 30
    with pytest.raises(RuntimeError):
        _ = server.openid_configuration  # no URL before the server was started


# -- fault queue ---------------------------------------------------------------------------


def test_fault_queue_fifo_times_and_paths():
    queue = FaultQueue()
    first, second, on_resource = Fault.status(503), Fault.status(500), Fault.status(502)
    queue.inject(first)
    queue.inject(on_resource, path="/resource")
    queue.inject(second, times=2)
    assert queue.pending_faults == 4
    assert queue.take("/resource", token_endpoint=False) is on_resource
    assert queue.take("/resource", token_endpoint=False) is None  # token faults skip it
    assert queue.take(XSUAA_TOKEN_PATH, token_endpoint=True) is first
    assert queue.take(CREDSTORE_TOKEN_PATH, token_endpoint=True) is second
    assert queue.take(XSUAA_TOKEN_PATH, token_endpoint=True) is second
    assert queue.take(XSUAA_TOKEN_PATH, token_endpoint=True) is None
    assert queue.pending_faults == 0


def test_fault_queue_path_restriction_streams_and_clear():
    queue = FaultQueue()
    queue.inject(Fault.reset(), times=3, path=CREDSTORE_TOKEN_PATH)
    assert queue.take(XSUAA_TOKEN_PATH, token_endpoint=True) is None
    assert queue.take(CREDSTORE_TOKEN_PATH, token_endpoint=True) == Fault.reset()
    stream = FaultStream("huge_body", 1024, "client", 0.5)
    queue.record_stream(stream)
    assert queue.fault_streams == [stream]
    queue.clear()
    assert (queue.pending_faults, queue.fault_streams) == (0, [])
    with pytest.raises(ValueError, match="times"):
        queue.inject(Fault.reset(), times=0)
