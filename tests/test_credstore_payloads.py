"""Credential Store payload encryption end to end, for requests, httpx sync and httpx async.

The server side is the test kit's Credential Store-shaped API, whose JWE is
written on raw `cryptography` primitives, independent of the JOSE library the
client uses: a round trip here is interoperability, not a library agreeing
with itself. The tests run for the three clients (the shared `client` fixture,
through `connect`): round trips, the wire form, namespaces, freshness of the
response's ``iat``, tampered and foreign responses, every request body kind,
the 401 retry that replays the sealed body, and no secret in any message, repr
or log. The tests share one kit server per module (conftest's `module_server`,
and `own_key_server`): their Credential Store keys take time to make.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pickle
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any, Callable

import httpx
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from mtls_auth import credstore as _credstore

if not _credstore.available():  # pragma: no cover - Python 3.9
    pytest.skip(
        "Credential Store payloads need joserfc >= 1.7.2 (Python 3.10+)", allow_module_level=True
    )

from clients import Client, Session
from credstore_harness import (
    JOSE,
    flip,
    jwe_header,
    new_key,
    not_jwe,
    open_session,
    pkcs8_der_b64,
    pkcs8_pem,
    unb64url,
)

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import MtlsAuthError, PayloadError
from mtls_auth.credstore import PayloadCipher
from mtls_auth.testing import PKI, Credential, TokenServer, credstore_service_key
from mtls_auth.testing._credstore_api import jwe_decrypt


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


def _reset(server: TokenServer) -> None:
    api = server.credstore
    api.encrypt, api.max_age, api.response_iat_offset = True, 120.0, 0.0
    api.requests.clear()


@pytest.fixture
def mtls_server(shared_mtls_server: TokenServer) -> Iterator[TokenServer]:
    """The module's shared kit server (its Credential Store keys cost time: conftest's
    `module_server`), its Credential Store switches and request log reset around each test."""
    _reset(shared_mtls_server)
    yield shared_mtls_server
    _reset(shared_mtls_server)


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def connect(client: Client, mtls_server: TokenServer, namespace: str) -> Callable[..., Session]:
    """`connect(binding, namespace=..., tamper=..., **kwargs)`: a Credential Store session of
    the test's client (`credstore_harness.open_session`), closed after the test."""

    def make(binding: dict[str, Any], *, namespace: str = namespace, **kwargs: Any) -> Session:
        return open_session(client, binding, namespace, mtls_server.ca_pem, **kwargs)

    return make


def _plain_session(binding: dict[str, Any], namespace: str, verify: str) -> requests.Session:
    """A plain requests.Session with the auth and the mTLS adapter: no payload handling."""
    auth = mrequests.MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify)
    session = requests.Session()
    session.auth = auth
    session.mount("https://", auth.adapter())
    return session


def _posts(mtls_server: TokenServer) -> list[tuple[str, str, str | None]]:
    return [entry for entry in mtls_server.credstore.requests if entry[0] in ("POST", "PUT")]


def _is_plain_json(response: Any) -> None:
    assert response.headers["Content-Type"].split(";")[0] == "application/json"


# -- round trips ---------------------------------------------------------------------------


def test_password_round_trip(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    caller = connect(credstore_binding)
    value = f"pw-{uuid.uuid4().hex}"
    created = caller.post("password", {"name": "db", "value": value, "username": "app"})
    assert created.status_code == 201
    _is_plain_json(created)
    assert created.json()["value"] == value

    read = caller.get("password", name="db")
    assert read.status_code == 200
    _is_plain_json(read)
    document = read.json()
    assert (document["name"], document["value"], document["username"]) == ("db", value, "app")

    # The POST reached the mtls_server encrypted, the mtls_server decrypted it and stored the value.
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/password", JOSE)]


def test_key_round_trip(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    caller = connect(credstore_binding)
    value = base64.b64encode(os.urandom(32)).decode("ascii")
    created = caller.post("key", {"name": "aes", "value": value, "format": "binary"})
    assert created.status_code == 201
    read = caller.get("key", name="aes").json()
    assert (read["type"], read["value"], read["format"]) == ("key", value, "binary")
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/key", JOSE)]


def test_keyring_with_two_versions(
    connect: Callable[..., Session], credstore_binding: dict[str, Any]
) -> None:
    caller = connect(credstore_binding)
    first, second = (base64.b64encode(os.urandom(16)).decode() for _ in range(2))
    assert (
        caller.post("keyring", {"name": "ring", "value": first, "format": "b"}).status_code == 201
    )
    again = caller.post("keyring", {"name": "ring", "value": second, "format": "b"})
    assert again.json()["version"] == 2
    ring = caller.get("keyring", name="ring")
    _is_plain_json(ring)
    keys = ring.json()["keys"]
    assert [(k["version"], k["value"]) for k in keys] == [(1, first), (2, second)]


def test_list_and_delete(
    connect: Callable[..., Session], credstore_binding: dict[str, Any]
) -> None:
    caller = connect(credstore_binding)
    for name in ("b", "a"):
        assert caller.post("password", {"name": name, "value": "v-" + name}).status_code == 201
    listed = caller.get("passwords")
    _is_plain_json(listed)
    assert [entry["name"] for entry in listed.json()] == ["a", "b"]

    deleted = caller.request("DELETE", "password", params={"name": "a"})
    assert deleted.status_code == 204
    assert caller.get("password", name="a").status_code == 404
    assert [entry["name"] for entry in caller.get("passwords").json()] == ["b"]


def test_wire_form_is_jwe(
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    mtls_server: TokenServer,
    namespace: str,
) -> None:
    value = f"pw-{uuid.uuid4().hex}"
    connect(credstore_binding).post("password", {"name": "db", "value": value})

    with _plain_session(credstore_binding, namespace, mtls_server.ca_pem) as raw:
        response = raw.get(mtls_server.credentials_url + "/password", params={"name": "db"})
        raw.auth.close()  # type: ignore[union-attr]
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JOSE
    body = response.content
    segments = body.split(b".")
    assert len(segments) == 5
    assert all(segment and unb64url(segment) for segment in segments)
    assert all(
        set(segment) <= set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for segment in segments
    )
    header = jwe_header(body)
    assert set(header) == {"alg", "enc", "iat"}
    assert (header["alg"], header["enc"]) == ("RSA-OAEP-256", "A256GCM")
    assert abs(header["iat"] - time.time()) < 30
    assert value.encode() not in body
    # And it is the same document the clients see decrypted.
    cipher = PayloadCipher.from_encryption(credstore_binding["encryption"])
    assert json.loads(cipher.decrypt(body))["value"] == value


def test_namespaces_isolate(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], namespace: str
) -> None:
    ns1 = connect(credstore_binding, namespace=namespace + "-1")
    ns2 = connect(credstore_binding, namespace=namespace + "-2")
    assert ns1.post("password", {"name": "db", "value": "only-in-ns1"}).status_code == 201
    missing = ns2.get("password", name="db")
    assert missing.status_code == 404
    _is_plain_json(missing)  # errors come back plain and pass through
    assert ns2.get("passwords").json() == []
    assert ns1.get("password", name="db").json()["value"] == "only-in-ns1"


def test_binding_without_encryption_block_talks_plain(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    mtls_server.credstore.encrypt = False
    plain = {k: v for k, v in credstore_binding.items() if k != "encryption"}
    caller = connect(plain)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    assert caller.get("password", name="db").json()["value"] == "v"
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/password", "application/json")]


# -- freshness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "words"), [(-600, ("s old", "120s")), (600, ("in the future", "120s"))]
)
def test_response_iat_outside_window_is_refused(
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    mtls_server: TokenServer,
    offset: float,
    words: tuple[str, str],
) -> None:
    caller = connect(credstore_binding)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    mtls_server.credstore.response_iat_offset = offset
    with pytest.raises(PayloadError) as info:
        caller.get("password", name="db")
    assert isinstance(info.value, MtlsAuthError)
    message = str(info.value)
    assert "iat" in message
    for word in words:
        assert word in message


def test_response_iat_within_window_is_accepted(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    caller = connect(credstore_binding)
    mtls_server.credstore.response_iat_offset = -60
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    assert caller.get("password", name="db").json()["value"] == "v"


# -- tampering, wrong keys, bodies that are not JWE ----------------------------------------------


@pytest.mark.parametrize("segment", [3, 4], ids=["ciphertext", "tag"])
def test_tampered_response_is_refused(
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    mtls_server: TokenServer,
    segment: int,
) -> None:
    caller = connect(credstore_binding, tamper=flip(segment))
    with pytest.raises(PayloadError, match="tampered"):
        caller.post("password", {"name": "db", "value": "v"})
    # The request itself was fine: the mtls_server stored the value.
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/password", JOSE)]
    with pytest.raises(PayloadError, match="tampered"):
        caller.get("password", name="db")


def test_untampered_path_through_tampering_layer_works(
    connect: Callable[..., Session], credstore_binding: dict[str, Any]
) -> None:
    """The hand-built stack itself is sound: an identity tamper round trips."""
    caller = connect(credstore_binding, tamper=lambda body: body)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    assert caller.get("password", name="db").json()["value"] == "v"


def test_response_for_another_key_is_refused(
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    other_key: rsa.RSAPrivateKey,
) -> None:
    wrong = dict(credstore_binding)
    wrong["encryption"] = {
        **credstore_binding["encryption"],
        "client_private_key": pkcs8_der_b64(other_key),
    }
    caller = connect(wrong)
    with pytest.raises(PayloadError, match="another key"):
        caller.post("password", {"name": "db", "value": "v"})


def test_plain_2xx_where_jose_expected(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    seed = connect(credstore_binding)
    assert seed.post("password", {"name": "db", "value": "v"}).status_code == 201
    mtls_server.credstore.encrypt = False

    strict = connect(credstore_binding)
    with pytest.raises(PayloadError, match="expected an encrypted") as info:
        strict.get("password", name="db")
    assert "require_encrypted=False" in str(info.value)

    lenient = connect(credstore_binding, require_encrypted=False)
    read = lenient.get("password", name="db")
    _is_plain_json(read)
    assert read.json()["value"] == "v"


def test_require_encrypted_false_still_decrypts(
    connect: Callable[..., Session], credstore_binding: dict[str, Any]
) -> None:
    caller = connect(credstore_binding, require_encrypted=False)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    read = caller.get("password", name="db")
    _is_plain_json(read)
    assert read.json()["value"] == "v"


def test_jose_labelled_body_that_is_not_jwe(
    connect: Callable[..., Session], credstore_binding: dict[str, Any]
) -> None:
    caller = connect(credstore_binding, tamper=not_jwe)
    with pytest.raises(PayloadError, match="not one"):
        caller.get("passwords")


# -- the request side ----------------------------------------------------------------------------


def test_server_rejects_plaintext_post(
    credstore_binding: dict[str, Any], mtls_server: TokenServer, namespace: str
) -> None:
    with _plain_session(credstore_binding, namespace, mtls_server.ca_pem) as raw:
        response = raw.post(
            mtls_server.credentials_url + "/password", json={"name": "db", "value": "v"}
        )
        raw.auth.close()  # type: ignore[union-attr]
    assert response.status_code == 400
    assert "application/jose" in response.json()["message"]
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/password", "application/json")]


@pytest.mark.parametrize("kind", ["str", "bytes", "json"])
def test_client_encrypts_every_body_kind(
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    mtls_server: TokenServer,
    kind: str,
) -> None:
    caller = connect(credstore_binding)
    document = {"name": "db", "value": "välue-" + kind}
    text = json.dumps(document)
    if kind == "json":
        response = caller.request("POST", "password", json=document)
    else:
        body: str | bytes = text if kind == "str" else text.encode("utf-8")
        response = caller.request("POST", "password", body=body)
    assert response.status_code == 201, response.text
    assert response.json()["value"] == document["value"]
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/password", JOSE)]
    assert caller.get("password", name="db").json()["value"] == document["value"]


@pytest.mark.parametrize("client", ["requests"], indirect=True)
def test_requests_streamed_body_is_refused(
    client: Client,
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    mtls_server: TokenServer,
) -> None:
    session = connect(credstore_binding).raw

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "db", '
        yield b'"value": "v"}'

    with pytest.raises(PayloadError, match="streamed"):
        session.post("password", data=chunks())
    assert _posts(mtls_server) == []


# -- a binding without client_private_key -------------------------------------------------------


@pytest.fixture(scope="module")
def my_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def own_key_server(mtls_pki: PKI, my_key: rsa.RSAPrivateKey) -> Iterator[TokenServer]:
    """An instance created with the client's own public key (the kit's server class),
    shared by the module: its Credential Store keys take time to make."""
    with TokenServer(mtls_pki) as server:
        server.credstore.use_client_public_key(my_key.public_key())
        yield server


@pytest.fixture
def own_key_binding(
    own_key_server: TokenServer, mtls_client_certificate: Credential, credstore_id: str
) -> dict[str, Any]:
    """A binding whose encryption block has no client_private_key (as the service sends it)."""
    own_key_server.register_client(credstore_id, mtls_client_certificate)
    block = own_key_server.credstore.encryption_block()
    assert "client_private_key" not in block
    return credstore_service_key(
        own_key_server, mtls_client_certificate, credstore_id, encryption=block
    )


def test_own_key_binding_needs_client_private_key(
    connect: Callable[..., Session],
    own_key_binding: dict[str, Any],
    my_key: rsa.RSAPrivateKey,
) -> None:
    assert "client_private_key" not in own_key_binding["encryption"]
    with pytest.raises(PayloadError, match="client_private_key=") as info:
        connect(own_key_binding)
    assert isinstance(info.value, MtlsAuthError)
    assert pkcs8_der_b64(my_key)[40:80] not in str(info.value)


@pytest.mark.parametrize(
    ("client", "form"),
    [
        ("requests", "der-b64"),
        ("httpx-sync", "der-b64"),
        ("httpx-async", "der-b64"),
        ("requests", "pem"),
        ("httpx-sync", "pem-escaped"),
        ("httpx-async", "bytes-pem"),
    ],
    indirect=["client"],
)
def test_own_key_binding_round_trips_with_client_private_key(
    client: Client,
    connect: Callable[..., Session],
    own_key_binding: dict[str, Any],
    my_key: rsa.RSAPrivateKey,
    form: str,
) -> None:
    key: str | bytes = {
        "der-b64": pkcs8_der_b64(my_key),
        "pem": pkcs8_pem(my_key),
        "pem-escaped": pkcs8_pem(my_key).replace("\n", "\\n"),
        "bytes-pem": pkcs8_pem(my_key).encode("ascii"),
    }[form]
    caller = connect(own_key_binding, client_private_key=key)
    assert caller.post("password", {"name": "db", "value": "mine"}).status_code == 201
    read = caller.get("password", name="db")
    _is_plain_json(read)
    assert read.json()["value"] == "mine"


def test_own_key_binding_with_a_different_key_is_refused(
    connect: Callable[..., Session],
    own_key_binding: dict[str, Any],
    other_key: rsa.RSAPrivateKey,
) -> None:
    caller = connect(own_key_binding, client_private_key=pkcs8_der_b64(other_key))
    with pytest.raises(PayloadError, match="another key"):
        caller.get("passwords")


# -- secrets never show -----------------------------------------------------------------------


def _fragments(*secrets: str) -> list[str]:
    pieces: list[str] = []
    for secret in secrets:
        lines = [line for line in secret.splitlines() if "-----" not in line]
        if len(lines) > 1:
            pieces += [line for line in lines if len(line) > 20]
        else:
            pieces += [secret[i : i + 24] for i in range(0, max(len(secret) - 24, 1), 24)]
    return pieces


def _assert_clean(text: str, fragments: list[str]) -> None:
    leaked = [fragment for fragment in fragments if fragment in text]
    assert not leaked, f"secret material in: {text[:300]!r}"


def _error_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(type(exc), exc, None))


def test_secrets_never_in_messages_reprs_or_logs(
    client: Client,
    connect: Callable[..., Session],
    credstore_binding: dict[str, Any],
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    other_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    value = f"pw-{uuid.uuid4().hex}-never-shown"
    private_b64 = credstore_binding["encryption"]["client_private_key"]
    fragments = [value, *_fragments(private_b64, mtls_client_certificate.key_pem)]
    texts: list[str] = []

    caller = connect(credstore_binding)
    caller.post("password", {"name": "db", "value": value})
    assert caller.get("password", name="db").json()["value"] == value
    texts.append(repr(caller.raw))
    texts.append(repr(getattr(caller.raw, "_transport", None)))
    if client.name == "requests":
        texts.append(repr(caller.raw.get_adapter(mtls_server.credentials_url)))

    def failure(action: Callable[[], object]) -> None:
        with pytest.raises(MtlsAuthError) as info:
            action()
        texts.append(_error_text(info.value))

    mtls_server.credstore.response_iat_offset = -600
    failure(lambda: caller.get("password", name="db"))
    mtls_server.credstore.response_iat_offset = 600
    failure(lambda: caller.get("password", name="db"))
    mtls_server.credstore.response_iat_offset = 0
    for tamper in (flip(3), flip(4), not_jwe):
        tampered = connect(credstore_binding, tamper=tamper)
        failure(lambda tampered=tampered: tampered.get("password", name="db"))
    wrong = {**credstore_binding, "encryption": {**credstore_binding["encryption"]}}
    wrong["encryption"]["client_private_key"] = pkcs8_der_b64(other_key)
    failure(lambda: connect(wrong).get("password", name="db"))
    no_private = {**credstore_binding, "encryption": {**credstore_binding["encryption"]}}
    del no_private["encryption"]["client_private_key"]
    failure(lambda: connect(no_private))
    failure(lambda: connect(credstore_binding, client_private_key=private_b64[:-12]))
    mtls_server.credstore.encrypt = False
    failure(lambda: caller.get("password", name="db"))

    for record in caplog.records:
        texts.append(record.getMessage())
    texts.append(caplog.text)
    for text in texts:
        _assert_clean(text, fragments)


def test_cipher_and_transports_repr_and_pickle(
    credstore_binding: dict[str, Any], mtls_client_certificate: Credential
) -> None:
    private_b64 = credstore_binding["encryption"]["client_private_key"]
    fragments = _fragments(private_b64, mtls_client_certificate.key_pem)
    cipher = PayloadCipher.from_encryption(credstore_binding["encryption"])
    assert repr(cipher) == "<PayloadCipher RSA-OAEP-256/A256GCM encrypt+decrypt max_age=120s>"
    with pytest.raises(TypeError):
        pickle.dumps(cipher)
    adapter = mrequests.CredstoreAdapter(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem, cipher=cipher
    )
    transport = mhttpx.CredstoreTransport(httpx.HTTPTransport(), cipher)
    atransport = mhttpx.AsyncCredstoreTransport(httpx.AsyncHTTPTransport(), cipher)
    try:
        for thing in (cipher, adapter, transport, atransport):
            _assert_clean(repr(thing) + str(thing), fragments)
        assert "cipher=<PayloadCipher" in repr(adapter)
        assert "cipher=<PayloadCipher" in repr(transport)
        assert "cipher=<PayloadCipher" in repr(atransport)
    finally:
        adapter.close()
        transport.close()
        asyncio.run(atransport.aclose())


# -- 401 retry replays the sealed body ----------------------------------------------------------


class _SpoilFirstToken:
    """Replaces the first request's bearer token with an unknown one: the mtls_server says 401."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | None, bytes]] = []

    def __call__(self, request: Any) -> Any:
        if isinstance(request, requests.PreparedRequest):
            body = request.body
            outgoing = request.copy()
        else:
            body = request.content
            outgoing = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=body,
                extensions=request.extensions,
            )
        self.sent.append((request.headers.get("Content-Type"), bytes(body or b"")))
        if len(self.sent) == 1:
            outgoing.headers["Authorization"] = "Bearer spoiled-token"
        return outgoing


def test_401_retry_replays_encrypted_body(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    spoil = _SpoilFirstToken()
    caller = connect(credstore_binding, before=spoil)
    resources_before = len(mtls_server.resource_requests)
    tokens_before = mtls_server.token_request_count

    response = caller.post("keyring", {"name": "ring", "value": "k1", "format": "b"})
    assert response.status_code == 201
    _is_plain_json(response)
    assert response.json()["value"] == "k1"
    # The first attempt was refused, the auth fetched a new token and sent again.
    assert mtls_server.token_request_count == tokens_before + 2
    statuses = [r.status for r in mtls_server.resource_requests[resources_before:]]
    assert statuses == [401, 201]
    # Both attempts carried the sealed JWE of the same document.
    assert [content_type for content_type, _ in spoil.sent] == [JOSE, JOSE]
    plains = [
        jwe_decrypt(body, mtls_server.credstore.server_private_key, now=time.time(), max_age=120)
        for _, body in spoil.sent
    ]
    assert plains[0] == plains[1]
    assert json.loads(plains[0])["value"] == "k1"
    # Stored exactly once: the keyring holds one version.
    keys = caller.get("keyring", name="ring").json()["keys"]
    assert [k["value"] for k in keys] == ["k1"]
    assert _posts(mtls_server) == [("POST", "/api/v1/credentials/keyring", JOSE)]


def test_401_retry_after_revoke_all(
    connect: Callable[..., Session], credstore_binding: dict[str, Any], mtls_server: TokenServer
) -> None:
    caller = connect(credstore_binding)
    assert caller.get("passwords").status_code == 200  # a token is cached
    resources_before = len(mtls_server.resource_requests)
    mtls_server.revoke_all()

    response = caller.post("keyring", {"name": "ring", "value": "k1", "format": "b"})
    assert response.status_code == 201
    assert response.json()["value"] == "k1"
    statuses = [r.status for r in mtls_server.resource_requests[resources_before:]]
    assert statuses == [401, 201]
    keys = caller.get("keyring", name="ring").json()["keys"]
    assert [k["value"] for k in keys] == ["k1"]
