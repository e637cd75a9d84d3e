"""The test infrastructure itself: generated PKI and the loopback mTLS token server.

Only stdlib clients (`ssl` + `http.client`) here, so these tests prove the
server independently of the library under test.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pickle
import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509 import verification

from mtls_auth.testing import PKI, Credential, Fault, TokenRequest, TokenServer

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="these tests load client keys via memfd"
)

CLIENT_ID = "sb-test-client!t1"


# -- client side helpers -------------------------------------------------------------


def client_context(mtls_pki: PKI, credential: Credential | None = None, *, chain: bool = True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=mtls_pki.root_pem)
    if credential is not None:
        load_client_cert(
            ctx, credential.chain_pem if chain else credential.cert_pem, credential.key_pem
        )
    return ctx


def load_client_cert(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    fd = os.memfd_create("test-client", os.MFD_CLOEXEC)
    try:
        os.write(fd, (cert_pem + key_pem).encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=b"unused")
    finally:
        os.close(fd)


def connect(server: TokenServer, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=5)


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response, data


def token_request(conn, path="/oauth/token", **form):
    form.setdefault("grant_type", "client_credentials")
    form.setdefault("client_id", CLIENT_ID)
    form = {k: v for k, v in form.items() if v is not None}
    return request(
        conn,
        "POST",
        path,
        body=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def get_token(conn, **form) -> str:
    response, data = token_request(conn, **form)
    assert response.status == 200, data
    return json.loads(data)["access_token"]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(mtls_pki) -> Credential:
    return mtls_pki.issue_client()


@pytest.fixture(scope="module")
def client_ctx(mtls_pki, client) -> ssl.SSLContext:
    return client_context(mtls_pki, client)


@pytest.fixture
def server(mtls_pki, client):
    with TokenServer(mtls_pki) as srv:
        srv.register_client(CLIENT_ID, client)
        yield srv


@pytest.fixture
def conn(server, client_ctx):
    c = connect(server, client_ctx)
    yield c
    c.close()


# -- PKI -----------------------------------------------------------------------------


def _verify_client_chain(mtls_pki: PKI, credential: Credential) -> None:
    if not hasattr(verification, "ExtensionPolicy"):
        # cryptography 42 to 44 (the core's floor is 42) verify server chains only.
        pytest.skip("client-chain verification by cryptography needs cryptography >= 45")
    # The web-PKI profile demands a SAN on client certificates; SAP's have none.
    ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
    )
    store = verification.Store([mtls_pki.root.certificate])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        .build_client_verifier()
    )
    chain = x509.load_pem_x509_certificates(credential.chain_pem.encode())
    verifier.verify(chain[0], chain[1:])


def test_pki_hierarchy_passes_strict_rfc5280_verification(mtls_pki, client):
    store = verification.Store([mtls_pki.root.certificate])
    server_chain = x509.load_pem_x509_certificates(mtls_pki.server.chain_pem.encode())
    verifier = (
        verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("localhost"))
    )
    verifier.verify(server_chain[0], server_chain[1:])
    _verify_client_chain(mtls_pki, client)
    assert len(server_chain) == 2
    assert mtls_pki.root_pem == mtls_pki.ca_pem
    assert mtls_pki.intermediate_pem not in mtls_pki.root_pem
    assert mtls_pki.root_pem not in client.chain_pem
    for cert in (
        mtls_pki.root.certificate,
        mtls_pki.intermediate.certificate,
        mtls_pki.server.certificate,
        client.certificate,
    ):
        ext = cert.extensions
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)
        ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
        ext.get_extension_for_class(x509.KeyUsage)
        ext.get_extension_for_class(x509.ExtendedKeyUsage)
        assert ext.get_extension_for_class(x509.BasicConstraints).critical


@pytest.mark.parametrize("key_type", ["rsa", "rsa4096", "ec", "ec384", "ed25519"])
def test_issue_client_key_types(mtls_pki, key_type):
    cred = mtls_pki.issue_client("typed", key_type=key_type, organizational_unit=["a", "b"])
    _verify_client_chain(mtls_pki, cred)
    assert cred.subject == "CN=typed,OU=b,OU=a,O=mtls-auth testing,C=DE"
    assert cred.key_pem_pkcs8().startswith("-----BEGIN PRIVATE KEY-----")
    assert cred.key_pem_encrypted(b"pw").startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    if key_type.startswith("rsa"):
        assert cred.key_pem == cred.key_pem_pkcs1()
        assert cred.key_pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
        with pytest.raises(TypeError):
            cred.key_pem_sec1()
    elif key_type.startswith("ec"):
        assert cred.key_pem == cred.key_pem_sec1()
        assert cred.key_pem.startswith("-----BEGIN EC PRIVATE KEY-----")
        with pytest.raises(TypeError):
            cred.key_pem_pkcs1()
    else:
        assert cred.key_pem == cred.key_pem_pkcs8()
    # The key really belongs to the certificate, in every format.
    for pem in (cred.key_pem, cred.key_pem_pkcs8()):
        key = serialization.load_pem_private_key(pem.encode(), None)
        assert key.public_key() == cred.certificate.public_key()
    key = serialization.load_pem_private_key(cred.key_pem_encrypted(b"pw").encode(), b"pw")
    assert key.public_key() == cred.certificate.public_key()


def test_credential_fields_and_repr(mtls_pki, client):
    der = client.certificate.public_bytes(serialization.Encoding.DER)
    expected = (
        base64.urlsafe_b64encode(__import__("hashlib").sha256(der).digest()).rstrip(b"=").decode()
    )
    assert client.thumbprint == expected
    assert client.subject == client.certificate.subject.rfc4514_string()
    assert client.chain_pem == client.cert_pem + mtls_pki.intermediate_pem
    assert client.not_after - client.not_before == timedelta(days=7, hours=1)
    text = repr(client) + str(client)
    assert "PRIVATE" not in text
    assert client.key_pem.splitlines()[1] not in text
    assert client.thumbprint in text
    with pytest.raises(TypeError):
        pickle.dumps(client)


def test_pki_fault_credentials(mtls_pki):
    now = datetime.now(timezone.utc)
    assert mtls_pki.expired_client().not_after < now - timedelta(hours=23)
    assert mtls_pki.expired_server().not_after < now
    wrong = mtls_pki.wrong_host_server()
    san = wrong.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["wrong-host.invalid"]
    untrusted = mtls_pki.untrusted_client()
    assert untrusted.chain_pem == untrusted.cert_pem
    with pytest.raises(verification.VerificationError):
        _verify_client_chain(mtls_pki, untrusted)
    mismatched = mtls_pki.mismatched_key()
    assert mismatched.startswith("-----BEGIN RSA PRIVATE KEY-----")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(ssl.SSLError):
        load_client_cert(ctx, mtls_pki.issue_client().chain_pem, mismatched)
    root_issued = mtls_pki.issue_client(issuer="root")
    assert root_issued.chain_pem == root_issued.cert_pem


def test_pki_now_anchors_validity():
    then = datetime(2030, 1, 1, tzinfo=timezone.utc)
    pki = PKI(now=then)
    cred = pki.issue_client(key_type="ec")
    assert cred.not_before == then - timedelta(hours=1)
    assert cred.not_after == then + timedelta(days=7)


# -- handshake ---------------------------------------------------------------------


def test_handshake_without_client_certificate_fails(server, mtls_pki):
    c = connect(server, client_context(mtls_pki))
    with pytest.raises(OSError):
        token_request(c)
    c.close()
    wait_for(lambda: server.handshake_failures)
    assert server.token_request_count == 0


def test_untrusted_ca_client_rejected_at_handshake(server, mtls_pki):
    rogue = mtls_pki.untrusted_client()
    server.register_client(CLIENT_ID, rogue)  # same subject anyway
    c = connect(server, client_context(mtls_pki, rogue))
    with pytest.raises(OSError):
        token_request(c)
    c.close()
    wait_for(lambda: server.handshake_failures)
    assert "certificate" in server.handshake_failures[0].lower()
    assert server.token_request_count == 0


def test_expired_client_rejected_at_handshake(server, mtls_pki):
    c = connect(server, client_context(mtls_pki, mtls_pki.expired_client()))
    with pytest.raises(OSError):
        token_request(c)
    c.close()
    wait_for(lambda: server.handshake_failures)


def test_leaf_without_intermediate_rejected(server, mtls_pki, client):
    c = connect(server, client_context(mtls_pki, client, chain=False))
    with pytest.raises(OSError):
        token_request(c)
    c.close()
    wait_for(lambda: server.handshake_failures)


@pytest.mark.parametrize("key_type", ["ec", "ed25519"])
def test_non_rsa_client_accepted(server, mtls_pki, key_type):
    cred = mtls_pki.issue_client("other", key_type=key_type)
    server.register_client("other", cred)
    c = connect(server, client_context(mtls_pki, cred))
    assert get_token(c, client_id="other")
    c.close()


@pytest.mark.parametrize("which", ["expired", "wrong_host"])
def test_bad_server_certificates_fail_client_verification(mtls_pki, client_ctx, which):
    credential = mtls_pki.expired_server() if which == "expired" else mtls_pki.wrong_host_server()
    with TokenServer(mtls_pki, server_credential=credential) as srv:
        c = connect(srv, client_ctx)
        with pytest.raises(ssl.SSLCertVerificationError):
            c.connect()
        c.close()


def test_stalled_client_does_not_block_others(server, client_ctx):
    raw = socket.create_connection(("127.0.0.1", server.port))  # never handshakes
    try:
        c = connect(server, client_ctx)
        assert get_token(c)
        c.close()
    finally:
        raw.close()


# -- token endpoint ------------------------------------------------------------------


def test_token_and_resource_over_one_keep_alive_connection(server, conn, client):
    response, data = token_request(conn, scope="read write")
    assert response.status == 200
    assert response.getheader("Cache-Control") == "no-store"
    body = json.loads(data)
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    token = body["access_token"]
    sock = conn.sock
    for method in ("GET", "POST", "PUT", "DELETE"):
        response, data = request(
            conn, method, "/resource/items/1", body=b"x" * 10, headers=bearer(token)
        )
        assert response.status == 200, data
        assert json.loads(data) == {
            "ok": True,
            "client_id": CLIENT_ID,
            "namespace": None,
            "method": method,
            "path": "/resource/items/1",
            "body_length": 10,
        }
    assert conn.sock is sock
    assert server.connections_accepted == 1
    assert server.tokens_issued == 1
    info = server.token_info(token)
    assert info["thumbprint"] == client.thumbprint
    assert info["client_id"] == CLIENT_ID
    assert not info["revoked"]
    records = server.resource_requests
    assert [r.method for r in records] == ["GET", "POST", "PUT", "DELETE"]
    assert all(r.had_authorization and r.thumbprint == client.thumbprint for r in records)
    assert all(r.token_index == 1 and r.status == 200 for r in records)
    assert token not in repr(records) + repr(server.token_requests) + repr(server)


def test_chunked_and_expect_continue_bodies_are_read(server, conn):
    token = get_token(conn)
    conn.putrequest("POST", "/resource")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for part in (b"hello", b" ", b"world!"):
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert json.loads(response.read())["body_length"] == 12
    response, data = request(
        conn, "PUT", "/resource", body=b"abc", headers={**bearer(token), "Expect": "100-continue"}
    )
    assert json.loads(data)["body_length"] == 3
    assert server.connections_accepted == 1


def test_credstore_endpoint_records_namespace_exactly(server, conn):
    namespace = "ns/1 &x=y+z"
    response, data = token_request(conn, "/api/v1/token", credstore_namespace=namespace)
    assert response.status == 200
    body = json.loads(data)
    assert "scope" not in body
    (record,) = server.token_requests
    assert isinstance(record, TokenRequest)
    assert record.path == "/api/v1/token"
    assert record.namespace == namespace
    assert record.form == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "credstore_namespace": namespace,
    }
    response, data = request(conn, "GET", "/resource", headers=bearer(body["access_token"]))
    assert json.loads(data)["namespace"] == namespace
    assert server.token_info(body["access_token"])["namespace"] == namespace


def test_client_secret_rejected(server, conn):
    response, data = token_request(conn, client_secret="s3cret")
    assert response.status == 401
    assert json.loads(data) == {
        "error": "invalid_client",
        "error_description": "client_secret is not accepted with mTLS",
    }
    assert server.tokens_issued == 0


def test_wrong_client_id_rejected(server, conn, mtls_pki):
    response, data = token_request(conn, client_id="sb-someone-else")
    assert response.status == 401
    assert json.loads(data)["error"] == "invalid_client"
    other = mtls_pki.issue_client("another-client")
    server.register_client("another", other)
    response, data = token_request(conn, client_id="another")  # registered to other subject
    assert response.status == 401
    assert json.loads(data)["error"] == "invalid_client"
    response, data = token_request(conn, client_id=None)
    assert response.status == 400


@pytest.mark.parametrize(
    ("grant_type", "error"),
    [
        ("device_code", "unsupported_grant_type"),
        ("password", "invalid_request"),  # a known grant: username and password are missing
        ("", "invalid_request"),
        (None, "invalid_request"),
    ],
)
def test_grant_type_checked(conn, grant_type, error):
    form = {"grant_type": grant_type} if grant_type is not None else {}
    if grant_type is None:
        response, data = request(
            conn,
            "POST",
            "/oauth/token",
            body=urlencode({"client_id": CLIENT_ID}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        response, data = token_request(conn, **form)
    assert response.status == 400
    assert json.loads(data)["error"] == error


def test_form_encoding_and_duplicates_checked(conn):
    body = f"grant_type=client_credentials&client_id={CLIENT_ID}"
    response, data = request(
        conn, "POST", "/oauth/token", body=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    response, data = request(
        conn,
        "POST",
        "/oauth/token",
        body=body + "&client_id=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 400
    assert "more than once" in json.loads(data)["error_description"]
    response, _ = request(conn, "GET", "/oauth/token")
    assert response.status == 405


def test_rotated_certificate_with_same_subject_keeps_working(server, mtls_pki, client):
    rotated = mtls_pki.issue_client()
    assert rotated.subject == client.subject
    assert rotated.thumbprint != client.thumbprint
    c = connect(server, client_context(mtls_pki, rotated))
    token = get_token(c)
    assert server.token_info(token)["thumbprint"] == rotated.thumbprint
    c.close()


def test_revoke_certificate(server, conn, client):
    token = get_token(conn)
    server.revoke_certificate(client.thumbprint)
    response, data = token_request(conn)
    assert response.status == 401
    assert json.loads(data)["error"] == "invalid_client"
    response, _ = request(conn, "GET", "/resource", headers=bearer(token))
    assert response.status == 401
    assert server.token_info(token)["revoked"]


def test_openid_configuration_and_jwt_tokens(mtls_pki, client, client_ctx):
    with TokenServer(mtls_pki, jwt_tokens=True) as srv:
        srv.register_client(CLIENT_ID, client)
        c = connect(srv, client_ctx)
        response, data = request(c, "GET", "/.well-known/openid-configuration")
        config = json.loads(data)
        assert config["token_endpoint"] == srv.url + "/oauth/token"
        assert config["mtls_endpoint_aliases"]["token_endpoint"] == srv.url + "/oauth/token"
        assert config["issuer"]
        token = get_token(c, scope="a b")
        head, claims, signature = token.split(".")

        def decode(part):
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        srv.jwt_public_key.verify(
            decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        header, payload = json.loads(decode(head)), json.loads(decode(claims))
        assert header["alg"] == "RS256"
        assert header["kid"] == srv.jwks["keys"][0]["kid"]
        assert payload["sub"] == payload["client_id"] == CLIENT_ID
        assert payload["scope"] == ["a", "b"]
        assert payload["cnf"] == {"x5t#S256": client.thumbprint}
        assert payload["exp"] - payload["iat"] == 3600
        assert payload["iss"] == config["issuer"]
        assert payload["jti"]
        response, data = request(c, "GET", "/token_keys")
        assert json.loads(data) == srv.jwks
        # Credential Store stays opaque.
        assert get_token(c, path="/api/v1/token").count(".") == 0
        response, _ = request(c, "GET", "/resource", headers=bearer(token))
        assert response.status == 200
        c.close()


def test_optional_client_cert_mode(mtls_pki, client):
    with TokenServer(mtls_pki, require_client_cert=False) as srv:
        srv.register_client(CLIENT_ID, client)
        c = connect(srv, client_context(mtls_pki))
        response, data = token_request(c)
        assert response.status == 401
        assert json.loads(data)["error"] == "invalid_client"
        (record,) = srv.token_requests
        assert record.thumbprint is None
        c2 = connect(srv, client_context(mtls_pki, client))
        token = get_token(c2)
        response, _ = request(c, "GET", "/resource", headers=bearer(token))
        assert response.status == 200
        srv.cert_bound = True
        response, _ = request(c, "GET", "/resource", headers=bearer(token))
        assert response.status == 401
        c.close()
        c2.close()


# -- faults --------------------------------------------------------------------------


def test_status_faults_fifo_then_normal(server, conn):
    server.inject(Fault.status(503, retry_after="2"))
    server.inject(Fault.status(429, retry_after="1"), times=2)
    server.inject(Fault.status(500))
    server.inject(Fault.status(400, body={"error": "invalid_client"}))
    assert server.pending_faults == 5
    seen = []
    for _ in range(5):
        response, data = token_request(conn)
        seen.append((response.status, response.getheader("Retry-After"), json.loads(data)["error"]))
    assert seen == [
        (503, "2", "temporarily_unavailable"),
        (429, "1", "temporarily_unavailable"),
        (429, "1", "temporarily_unavailable"),
        (500, None, "server_error"),
        (400, None, "invalid_client"),
    ]
    assert get_token(conn)
    assert server.token_request_count == 6
    assert server.tokens_issued == 1
    assert server.connections_accepted == 1


def test_fault_restricted_to_path(server, conn):
    server.inject(Fault.status(500), path="/api/v1/token")
    assert get_token(conn)  # XSUAA path unaffected
    response, _ = token_request(conn, "/api/v1/token")
    assert response.status == 500
    server.inject(Fault.status(502), path="/resource")
    response, _ = request(conn, "GET", "/resource")
    assert response.status == 502
    assert server.pending_faults == 0


def test_delay_fault(server, conn):
    server.inject(Fault.delay(0.3))
    started = time.monotonic()
    assert get_token(conn)
    assert time.monotonic() - started >= 0.3


def test_delay_fault_cut_short_by_stop(mtls_pki, client, client_ctx):
    srv = TokenServer(mtls_pki).start()
    srv.register_client(CLIENT_ID, client)
    srv.inject(Fault.delay(30))
    c = connect(srv, client_ctx)
    outcome = []

    def call():
        try:
            outcome.append(token_request(c))
        except OSError as exc:
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: srv.token_request_count == 1)
    started = time.monotonic()
    srv.stop()
    t.join(5)
    assert time.monotonic() - started < 3
    assert isinstance(outcome[0], OSError)  # dropped, not answered
    c.close()


def test_release_delays_answers_held_requests_at_once(server, client_ctx):
    server.inject(Fault.delay(30), times=2)
    conns = [connect(server, client_ctx) for _ in range(2)]
    answers = []
    threads = [threading.Thread(target=lambda c=c: answers.append(get_token(c))) for c in conns]
    for t in threads:
        t.start()
    wait_for(lambda: server.token_request_count == 2)
    assert answers == []  # both held at the server
    started = time.monotonic()
    server.release_delays()
    for t in threads:
        t.join(5)
    assert time.monotonic() - started < 3
    assert len(answers) == 2
    assert all(answers)  # answered normally, with tokens
    # A delay that starts after the release waits its full time again.
    server.inject(Fault.delay(0.2))
    started = time.monotonic()
    assert get_token(conns[0])
    assert time.monotonic() - started >= 0.2
    for c in conns:
        c.close()


def test_malformed_json_fault(server, conn):
    server.inject(Fault.malformed_json())
    response, data = token_request(conn)
    assert response.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)


def test_reset_fault(server, client_ctx):
    server.inject(Fault.reset())
    c = connect(server, client_ctx)
    with pytest.raises(OSError):  # ConnectionResetError / RemoteDisconnected / SSL EOF
        token_request(c)
    c.close()
    c = connect(server, client_ctx)
    assert get_token(c)
    c.close()
    assert server.token_request_count == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2, 3]",
        b'{"token_type": "bearer", "expires_in": 60}',
        b'{"access_token": "t", "token_type": "mac", "expires_in": 60}',
        b'{"access_token": "t", "token_type": "bearer", "expires_in": -5}',
        b'{"access_token": "t", "token_type": "bearer", "expires_in": "soon"}',
    ],
)
def test_body_fault(server, conn, raw):
    server.inject(Fault.body(raw))
    response, data = token_request(conn)
    assert response.status == 200
    assert data == raw
    assert response.getheader("Content-Type") == "application/json"


def test_body_fault_with_status_and_type(server, conn):
    server.inject(Fault.body("<html>bad gateway</html>", content_type="text/html", status=502))
    response, data = token_request(conn)
    assert (response.status, data) == (502, b"<html>bad gateway</html>")
    assert response.getheader("Content-Type") == "text/html"


# -- resource --------------------------------------------------------------------------


def test_missing_and_unknown_tokens(server, conn):
    response, _ = request(conn, "GET", "/resource")
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == "Bearer"
    response, _ = request(conn, "GET", "/resource", headers=bearer("nope"))
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Bearer error="invalid_token"'
    records = server.resource_requests
    assert [r.had_authorization for r in records] == [False, True]
    assert all(r.token_index is None for r in records)


def test_always_401(server, conn):
    token = get_token(conn)
    response, _ = request(conn, "GET", "/resource/always-401", headers=bearer(token))
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Bearer error="invalid_token"'


def test_revoke_all(server, conn):
    token = get_token(conn)
    assert request(conn, "GET", "/resource", headers=bearer(token))[0].status == 200
    server.revoke_all()
    response, _ = request(conn, "GET", "/resource", headers=bearer(token))
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Bearer error="invalid_token"'
    fresh = get_token(conn)
    assert request(conn, "GET", "/resource", headers=bearer(fresh))[0].status == 200


def test_clock_injection_expires_tokens(mtls_pki, client, client_ctx):
    now = [1_000_000.0]
    with TokenServer(mtls_pki, token_lifetime=60, clock=lambda: now[0]) as srv:
        srv.register_client(CLIENT_ID, client)
        c = connect(srv, client_ctx)
        response, data = token_request(c)
        assert json.loads(data)["expires_in"] == 60
        token = json.loads(data)["access_token"]
        assert srv.token_info(token)["expires_at"] == 1_000_060.0
        now[0] += 59
        assert request(c, "GET", "/resource", headers=bearer(token))[0].status == 200
        now[0] += 1
        response, _ = request(c, "GET", "/resource", headers=bearer(token))
        assert response.status == 401
        assert response.getheader("WWW-Authenticate") == 'Bearer error="invalid_token"'
        srv.token_lifetime = 5
        response, data = token_request(c)
        assert json.loads(data)["expires_in"] == 5
        assert srv.token_requests[-1].time == now[0]
        c.close()


def test_cert_bound_mode(server, mtls_pki, conn, client):
    token = get_token(conn)
    other = mtls_pki.issue_client()  # same subject, different certificate
    c2 = connect(server, client_context(mtls_pki, other))
    assert request(c2, "GET", "/resource", headers=bearer(token))[0].status == 200
    server.cert_bound = True
    response, _ = request(c2, "GET", "/resource", headers=bearer(token))
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert request(conn, "GET", "/resource", headers=bearer(token))[0].status == 200
    c2.close()


def test_clear_resets_records_not_tokens(server, conn):
    token = get_token(conn)
    request(conn, "GET", "/resource", headers=bearer(token))
    server.inject(Fault.status(500))
    server.clear()
    assert server.token_requests == []
    assert server.resource_requests == []
    assert server.pending_faults == 0
    assert server.tokens_issued == 1
    assert request(conn, "GET", "/resource", headers=bearer(token))[0].status == 200


def test_unknown_path_404(conn):
    assert request(conn, "GET", "/nope")[0].status == 404


# -- lifecycle -------------------------------------------------------------------------


def test_stop_closes_keep_alive_connections_and_leaks_no_threads(mtls_pki, client, client_ctx):
    def ours():
        return [t for t in threading.enumerate() if t.name.startswith("mtls-auth-testing")]

    before = ours()
    srv = TokenServer(mtls_pki).start()
    srv.register_client(CLIENT_ID, client)
    conns = [connect(srv, client_ctx) for _ in range(3)]
    for c in conns:
        assert get_token(c)  # idle keep-alive connections stay open
    assert len(ours()) > len(before)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 1
    assert ours() == before
    for c in conns:
        c.close()
    srv.stop()  # idempotent
    # The URL stays known after stop, which makes "server is down" tests easy.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)
    with pytest.raises(RuntimeError):
        _ = TokenServer(mtls_pki).url


def test_concurrent_clients(server, client_ctx):
    errors = []

    def worker():
        try:
            c = connect(server, client_ctx)
            for _ in range(5):
                token = get_token(c)
                assert request(c, "GET", "/resource", headers=bearer(token))[0].status == 200
            c.close()
        except (OSError, AssertionError) as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.tokens_issued == 40
    assert server.connections_accepted == 8
