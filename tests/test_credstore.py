"""Credential Store payload encryption end to end, for requests, httpx and httpx async.

The server side is `mtls_auth.testing`'s Credential Store-shaped API, whose JWE
is written on raw `cryptography` primitives, independent of the JOSE library
the client uses: a round trip here is interoperability, not a library agreeing
with itself. Most tests run for the three clients (the `flavor` parameter)
through a small synchronous facade, `Caller`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mtls_auth import credstore as _credstore

if not _credstore.available():  # pragma: no cover - Python 3.9
    pytest.skip(
        "Credential Store payloads need joserfc >= 1.7.2 (Python 3.10+)", allow_module_level=True
    )

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import MtlsAuthError, PayloadError
from mtls_auth.credstore import PayloadCipher, open_response, seal_request
from mtls_auth.testing import PKI, Credential, TokenServer
from mtls_auth.testing._credstore_api import jwe_decrypt, jwe_encrypt

#: A Credential Store client id with the characters that need form-encoding.
CS_CLIENT_ID = "sb-credstore/inst+42=="
FLAVORS = ["requests", "httpx", "httpx-async"]
JOSE = "application/jose"

Tamper = Callable[[bytes], bytes]


# -- keys and JWE helpers ----------------------------------------------------------------


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs8_der_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode("ascii")


def _pkcs8_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _spki_der_b64(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("ascii")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _header(compact: bytes | str) -> dict[str, Any]:
    if isinstance(compact, str):
        compact = compact.encode("ascii")
    header: dict[str, Any] = json.loads(_unb64url(compact.split(b".")[0]))
    return header


def _hand_built_jwe(
    header: dict[str, Any],
    plaintext: bytes,
    public_key: rsa.RSAPublicKey,
    *,
    oaep_hash: hashes.HashAlgorithm | None = None,
) -> bytes:
    """JWE compact with any header, the key wrapped with RSA-OAEP over `oaep_hash`."""
    algorithm = oaep_hash or hashes.SHA256()
    protected = _b64url(json.dumps(header).encode())
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    wrapped = public_key.encrypt(
        cek, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)
    )
    parts = [protected, _b64url(wrapped), _b64url(iv), _b64url(sealed[:-16]), _b64url(sealed[-16:])]
    return ".".join(parts).encode("ascii")


def _flip(index: int) -> Tamper:
    """A tamper that flips one bit in JWE segment `index` (3 ciphertext, 4 tag)."""

    def tamper(body: bytes) -> bytes:
        parts = body.split(b".")
        raw = _unb64url(parts[index])
        parts[index] = _b64url(bytes([raw[0] ^ 0x01]) + raw[1:]).encode("ascii")
        return b".".join(parts)

    return tamper


def _not_jwe(body: bytes) -> bytes:
    return json.dumps({"name": "db", "value": "plain"}).encode()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return _new_key()


@pytest.fixture(scope="module")
def my_key() -> rsa.RSAPrivateKey:
    return _new_key()


def _reset(server: TokenServer) -> None:
    api = server.credstore
    api.encrypt, api.max_age, api.response_iat_offset = True, 120.0, 0.0
    api.requests.clear()


@pytest.fixture(scope="module")
def shared_server(pki: PKI, client_credential: Credential) -> Iterator[TokenServer]:
    """One server for the module (its keys cost time); tests use their own namespace."""
    with TokenServer(pki) as server:
        server.register_client(CS_CLIENT_ID, client_credential)
        yield server


@pytest.fixture
def server(shared_server: TokenServer) -> Iterator[TokenServer]:
    """The shared server with its Credential Store switches and request log reset."""
    _reset(shared_server)
    yield shared_server
    _reset(shared_server)


def _expires_at() -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def binding(server: TokenServer, client_credential: Credential) -> dict[str, Any]:
    return {
        "username": CS_CLIENT_ID,
        "oauth_token_url": server.credstore_token_url,
        "url": server.credentials_url,
        "certificate": client_credential.chain_pem,
        "key": client_credential.key_pem,
        "encryption": server.credstore.encryption_block(),
        "expires_at": _expires_at(),
    }


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    flavor: str = request.param
    return flavor


# -- one synchronous facade over the three clients -------------------------------------------


class _TamperingMtlsAdapter(mrequests.MtlsAdapter):
    """Alters `application/jose` response bodies as they come off the wire."""

    tamper: Tamper | None = None
    before: Callable[[Any], Any] | None = None

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        outgoing = request if self.before is None else self.before(request)
        response = super().send(outgoing, *args, **kwargs)
        response.request = request  # what the session and the auth's hook know
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        if self.tamper is not None and media == JOSE:
            response._content = self.tamper(response.content)
        return response


class _TamperingCredstoreAdapter(mrequests.CredstoreAdapter, _TamperingMtlsAdapter):
    """CredstoreAdapter whose `super().send` is the tampering one (by the MRO)."""


def _tampered(response: httpx.Response, request: httpx.Request, tamper: Tamper) -> httpx.Response:
    media = response.headers.get("Content-Type", "").split(";")[0].strip()
    body = response.content
    if media == JOSE:
        body = tamper(body)
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-length"]
    return httpx.Response(response.status_code, headers=headers, content=body, request=request)


class _TamperingTransport(httpx.BaseTransport):
    def __init__(
        self, inner: httpx.BaseTransport, tamper: Tamper, before: Callable[[Any], Any] | None
    ) -> None:
        self.inner, self.tamper, self.before = inner, tamper, before

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = request if self.before is None else self.before(request)
        response = self.inner.handle_request(outgoing)
        try:
            response.read()
        finally:
            response.close()
        return _tampered(response, request, self.tamper)

    def close(self) -> None:
        self.inner.close()


class _AsyncTamperingTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        tamper: Tamper,
        before: Callable[[Any], Any] | None,
    ) -> None:
        self.inner, self.tamper, self.before = inner, tamper, before

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = request if self.before is None else self.before(request)
        response = await self.inner.handle_async_request(outgoing)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _tampered(response, request, self.tamper)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Caller:
    """`request(method, path, ...)` through a requests session, httpx or httpx async client."""

    def __init__(self, flavor: str, client: Any) -> None:
        self.flavor = flavor
        self.client = client
        self._loop = asyncio.new_event_loop() if flavor == "httpx-async" else None

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | str | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        kwargs: dict[str, Any] = {"params": params, "json": json}
        kwargs["data" if self.flavor == "requests" else "content"] = body
        if self._loop is not None:
            return self._loop.run_until_complete(self.client.request(method, path, **kwargs))
        return self.client.request(method, path, **kwargs)

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, document: Any) -> Any:
        return self.request("POST", path, json=document)

    def close(self) -> None:
        auth = self.client.auth
        if self._loop is not None:
            self._loop.run_until_complete(self.client.aclose())
            self._loop.run_until_complete(auth.aclose())
            self._loop.close()
        else:
            self.client.close()
            auth.close()


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}/"


def open_caller(
    flavor: str,
    binding: dict[str, Any],
    namespace: str,
    verify: str,
    *,
    tamper: Tamper | None = None,
    before: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Caller:
    """The one-call constructor for `flavor`, or a hand-built one with a tampering layer.

    The layer sits under the encryption, on the wire side: `tamper` alters
    `application/jose` response bodies, `before` sees each request as it is
    about to be sent and returns the one to send instead (a copy, so the
    clients' own request objects are left as they made them).
    """
    if tamper is None and before is None:
        make = {
            "requests": mrequests.credstore_session,
            "httpx": mhttpx.credstore_client,
            "httpx-async": mhttpx.async_credstore_client,
        }[flavor]
        return Caller(flavor, make(binding, namespace=namespace, verify=verify, **kwargs))
    tamper = tamper or (lambda body: body)
    require = kwargs.pop("require_encrypted", True)
    cipher = PayloadCipher.from_encryption(binding["encryption"], **kwargs)
    base_url = binding["url"].rstrip("/") + "/"
    if flavor == "requests":
        auth = mrequests.MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify)
        session = mrequests.CredstoreSession(binding["url"])
        session.auth = auth
        adapter = _TamperingCredstoreAdapter(
            auth.certificate, cipher=cipher, verify=verify, require_encrypted=require
        )
        adapter.tamper, adapter.before = tamper, before
        session.mount(_origin(binding["url"]), adapter)
        return Caller(flavor, session)
    hauth = mhttpx.MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify)
    if flavor == "httpx":
        transport = mhttpx.CredstoreTransport(
            _TamperingTransport(hauth.transport(), tamper, before),
            cipher,
            require_encrypted=require,
        )
        return Caller(flavor, httpx.Client(auth=hauth, base_url=base_url, transport=transport))
    atransport = mhttpx.AsyncCredstoreTransport(
        _AsyncTamperingTransport(hauth.async_transport(), tamper, before),
        cipher,
        require_encrypted=require,
    )
    return Caller(flavor, httpx.AsyncClient(auth=hauth, base_url=base_url, transport=atransport))


@pytest.fixture
def connect(server: TokenServer, namespace: str) -> Iterator[Callable[..., Caller]]:
    """`connect(flavor, binding, namespace=..., tamper=..., **kwargs)`; closed after the test."""
    opened: list[Caller] = []

    def make(
        flavor: str, binding: dict[str, Any], *, namespace: str = namespace, **kwargs: Any
    ) -> Caller:
        caller = open_caller(flavor, binding, namespace, server.ca_pem, **kwargs)
        opened.append(caller)
        return caller

    yield make
    for caller in opened:
        caller.close()


def _plain_session(binding: dict[str, Any], namespace: str, verify: str) -> requests.Session:
    """A plain requests.Session with the auth and the mTLS adapter: no payload handling."""
    auth = mrequests.MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify)
    session = requests.Session()
    session.auth = auth
    session.mount("https://", auth.adapter())
    return session


def _posts(server: TokenServer) -> list[tuple[str, str, str | None]]:
    return [entry for entry in server.credstore.requests if entry[0] in ("POST", "PUT")]


def _is_plain_json(response: Any) -> None:
    assert response.headers["Content-Type"].split(";")[0] == "application/json"


# -- round trips ---------------------------------------------------------------------------


def test_password_round_trip(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    caller = connect(flavor, binding)
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

    # The POST reached the server encrypted, the server decrypted it and stored the value.
    assert _posts(server) == [("POST", "/api/v1/credentials/password", JOSE)]


def test_key_round_trip(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    caller = connect(flavor, binding)
    value = base64.b64encode(os.urandom(32)).decode("ascii")
    created = caller.post("key", {"name": "aes", "value": value, "format": "binary"})
    assert created.status_code == 201
    read = caller.get("key", name="aes").json()
    assert (read["type"], read["value"], read["format"]) == ("key", value, "binary")
    assert _posts(server) == [("POST", "/api/v1/credentials/key", JOSE)]


def test_keyring_with_two_versions(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any]
) -> None:
    caller = connect(flavor, binding)
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
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any]
) -> None:
    caller = connect(flavor, binding)
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
    flavor: str,
    connect: Callable[..., Caller],
    binding: dict[str, Any],
    server: TokenServer,
    namespace: str,
) -> None:
    value = f"pw-{uuid.uuid4().hex}"
    connect(flavor, binding).post("password", {"name": "db", "value": value})

    with _plain_session(binding, namespace, server.ca_pem) as raw:
        response = raw.get(server.credentials_url + "/password", params={"name": "db"})
        raw.auth.close()  # type: ignore[union-attr]
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JOSE
    body = response.content
    segments = body.split(b".")
    assert len(segments) == 5
    assert all(segment and _unb64url(segment) for segment in segments)
    assert all(
        set(segment) <= set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for segment in segments
    )
    header = _header(body)
    assert set(header) == {"alg", "enc", "iat"}
    assert (header["alg"], header["enc"]) == ("RSA-OAEP-256", "A256GCM")
    assert abs(header["iat"] - time.time()) < 30
    assert value.encode() not in body
    # And it is the same document the clients see decrypted.
    cipher = PayloadCipher.from_encryption(binding["encryption"])
    assert json.loads(cipher.decrypt(body))["value"] == value


def test_namespaces_isolate(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], namespace: str
) -> None:
    ns1 = connect(flavor, binding, namespace=namespace + "-1")
    ns2 = connect(flavor, binding, namespace=namespace + "-2")
    assert ns1.post("password", {"name": "db", "value": "only-in-ns1"}).status_code == 201
    missing = ns2.get("password", name="db")
    assert missing.status_code == 404
    _is_plain_json(missing)  # errors come back plain and pass through
    assert ns2.get("passwords").json() == []
    assert ns1.get("password", name="db").json()["value"] == "only-in-ns1"


def test_binding_without_encryption_block_talks_plain(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    server.credstore.encrypt = False
    plain = {k: v for k, v in binding.items() if k != "encryption"}
    caller = connect(flavor, plain)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    assert caller.get("password", name="db").json()["value"] == "v"
    assert _posts(server) == [("POST", "/api/v1/credentials/password", "application/json")]


# -- freshness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "words"), [(-600, ("s old", "120s")), (600, ("in the future", "120s"))]
)
def test_response_iat_outside_window_is_refused(
    flavor: str,
    connect: Callable[..., Caller],
    binding: dict[str, Any],
    server: TokenServer,
    offset: float,
    words: tuple[str, str],
) -> None:
    caller = connect(flavor, binding)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    server.credstore.response_iat_offset = offset
    with pytest.raises(PayloadError) as info:
        caller.get("password", name="db")
    assert isinstance(info.value, MtlsAuthError)
    message = str(info.value)
    assert "iat" in message
    for word in words:
        assert word in message


def test_response_iat_within_window_is_accepted(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    caller = connect(flavor, binding)
    server.credstore.response_iat_offset = -60
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    assert caller.get("password", name="db").json()["value"] == "v"


# -- tampering, wrong keys, bodies that are not JWE ----------------------------------------------


@pytest.mark.parametrize("segment", [3, 4], ids=["ciphertext", "tag"])
def test_tampered_response_is_refused(
    flavor: str,
    connect: Callable[..., Caller],
    binding: dict[str, Any],
    server: TokenServer,
    segment: int,
) -> None:
    caller = connect(flavor, binding, tamper=_flip(segment))
    with pytest.raises(PayloadError, match="tampered"):
        caller.post("password", {"name": "db", "value": "v"})
    # The request itself was fine: the server stored the value.
    assert _posts(server) == [("POST", "/api/v1/credentials/password", JOSE)]
    with pytest.raises(PayloadError, match="tampered"):
        caller.get("password", name="db")


def test_untampered_path_through_tampering_layer_works(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any]
) -> None:
    """The hand-built stack itself is sound: an identity tamper round trips."""
    caller = connect(flavor, binding, tamper=lambda body: body)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    assert caller.get("password", name="db").json()["value"] == "v"


def test_response_for_another_key_is_refused(
    flavor: str,
    connect: Callable[..., Caller],
    binding: dict[str, Any],
    other_key: rsa.RSAPrivateKey,
) -> None:
    wrong = dict(binding)
    wrong["encryption"] = {
        **binding["encryption"],
        "client_private_key": _pkcs8_der_b64(other_key),
    }
    caller = connect(flavor, wrong)
    with pytest.raises(PayloadError, match="another key"):
        caller.post("password", {"name": "db", "value": "v"})


def test_plain_2xx_where_jose_expected(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    seed = connect(flavor, binding)
    assert seed.post("password", {"name": "db", "value": "v"}).status_code == 201
    server.credstore.encrypt = False

    strict = connect(flavor, binding)
    with pytest.raises(PayloadError, match="expected an encrypted") as info:
        strict.get("password", name="db")
    assert "require_encrypted=False" in str(info.value)

    lenient = connect(flavor, binding, require_encrypted=False)
    read = lenient.get("password", name="db")
    _is_plain_json(read)
    assert read.json()["value"] == "v"


def test_require_encrypted_false_still_decrypts(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any]
) -> None:
    caller = connect(flavor, binding, require_encrypted=False)
    assert caller.post("password", {"name": "db", "value": "v"}).status_code == 201
    read = caller.get("password", name="db")
    _is_plain_json(read)
    assert read.json()["value"] == "v"


def test_jose_labelled_body_that_is_not_jwe(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any]
) -> None:
    caller = connect(flavor, binding, tamper=_not_jwe)
    with pytest.raises(PayloadError, match="not one"):
        caller.get("passwords")


# -- the request side ----------------------------------------------------------------------------


def test_server_rejects_plaintext_post(
    binding: dict[str, Any], server: TokenServer, namespace: str
) -> None:
    with _plain_session(binding, namespace, server.ca_pem) as raw:
        response = raw.post(server.credentials_url + "/password", json={"name": "db", "value": "v"})
        raw.auth.close()  # type: ignore[union-attr]
    assert response.status_code == 400
    assert "application/jose" in response.json()["message"]
    assert _posts(server) == [("POST", "/api/v1/credentials/password", "application/json")]


@pytest.mark.parametrize("kind", ["str", "bytes", "json"])
def test_client_encrypts_every_body_kind(
    flavor: str,
    connect: Callable[..., Caller],
    binding: dict[str, Any],
    server: TokenServer,
    kind: str,
) -> None:
    caller = connect(flavor, binding)
    document = {"name": "db", "value": "välue-" + kind}
    text = json.dumps(document)
    if kind == "json":
        response = caller.request("POST", "password", json=document)
    else:
        body: str | bytes = text if kind == "str" else text.encode("utf-8")
        response = caller.request("POST", "password", body=body)
    assert response.status_code == 201, response.text
    assert response.json()["value"] == document["value"]
    assert _posts(server) == [("POST", "/api/v1/credentials/password", JOSE)]
    assert caller.get("password", name="db").json()["value"] == document["value"]


def test_requests_streamed_body_is_refused(
    connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    session = connect("requests", binding).client

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "db", '
        yield b'"value": "v"}'

    with pytest.raises(PayloadError, match="streamed"):
        session.post("password", data=chunks())
    assert _posts(server) == []


def test_seal_request_leaves_empty_and_jose_bodies_alone() -> None:
    cipher = PayloadCipher(_new_key())
    assert seal_request(cipher, b"", "application/json") is None
    assert seal_request(cipher, b"a.b.c.d.e", "application/jose; charset=utf-8") is None
    sealed = seal_request(cipher, b"{}", None)
    assert sealed is not None
    assert sealed.count(b".") == 4


def test_open_response_rules() -> None:
    client = _new_key()
    cipher = PayloadCipher(_new_key(), client)
    jwe = jwe_encrypt(b'{"a": 1}', client.public_key(), iat=time.time())
    assert open_response(cipher, 200, "application/jose; charset=utf-8", jwe) == b'{"a": 1}'
    assert open_response(cipher, 404, "application/json", b'{"message": "x"}') is None
    assert open_response(cipher, 204, "application/json", b"") is None
    assert open_response(cipher, 200, "application/json", b"{}", require_encrypted=False) is None
    with pytest.raises(PayloadError):
        open_response(cipher, 200, "application/json", b"{}")
    with pytest.raises(PayloadError):
        open_response(cipher, 200, None, b"{}")


# -- a binding without client_private_key ---------------------------------------------------------


@pytest.fixture(scope="module")
def own_key_server(
    pki: PKI, client_credential: Credential, my_key: rsa.RSAPrivateKey
) -> Iterator[TokenServer]:
    """An instance created with the client's own public key."""
    with TokenServer(pki) as server:
        server.register_client(CS_CLIENT_ID, client_credential)
        server.credstore.use_client_public_key(my_key.public_key())
        yield server


@pytest.fixture
def own_key_binding(binding: dict[str, Any], own_key_server: TokenServer) -> dict[str, Any]:
    """A binding whose encryption block has no client_private_key (as the service sends it)."""
    block = own_key_server.credstore.encryption_block()
    assert "client_private_key" not in block
    return {
        **binding,
        "oauth_token_url": own_key_server.credstore_token_url,
        "url": own_key_server.credentials_url,
        "encryption": block,
    }


def test_own_key_binding_needs_client_private_key(
    flavor: str,
    connect: Callable[..., Caller],
    own_key_binding: dict[str, Any],
    my_key: rsa.RSAPrivateKey,
) -> None:
    assert "client_private_key" not in own_key_binding["encryption"]
    with pytest.raises(PayloadError, match="client_private_key=") as info:
        connect(flavor, own_key_binding)
    assert isinstance(info.value, MtlsAuthError)
    assert _pkcs8_der_b64(my_key)[40:80] not in str(info.value)


@pytest.mark.parametrize(
    ("flavor", "form"),
    [
        ("requests", "der-b64"),
        ("httpx", "der-b64"),
        ("httpx-async", "der-b64"),
        ("requests", "pem"),
        ("httpx", "pem-escaped"),
        ("httpx-async", "bytes-pem"),
    ],
)
def test_own_key_binding_round_trips_with_client_private_key(
    flavor: str,
    connect: Callable[..., Caller],
    own_key_binding: dict[str, Any],
    my_key: rsa.RSAPrivateKey,
    form: str,
) -> None:
    key: str | bytes = {
        "der-b64": _pkcs8_der_b64(my_key),
        "pem": _pkcs8_pem(my_key),
        "pem-escaped": _pkcs8_pem(my_key).replace("\n", "\\n"),
        "bytes-pem": _pkcs8_pem(my_key).encode("ascii"),
    }[form]
    caller = connect(flavor, own_key_binding, client_private_key=key)
    assert caller.post("password", {"name": "db", "value": "mine"}).status_code == 201
    read = caller.get("password", name="db")
    _is_plain_json(read)
    assert read.json()["value"] == "mine"


def test_own_key_binding_with_a_different_key_is_refused(
    flavor: str,
    connect: Callable[..., Caller],
    own_key_binding: dict[str, Any],
    other_key: rsa.RSAPrivateKey,
) -> None:
    caller = connect(flavor, own_key_binding, client_private_key=_pkcs8_der_b64(other_key))
    with pytest.raises(PayloadError, match="another key"):
        caller.get("passwords")


# -- interoperability with the raw-cryptography JWE -------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """(server key, client key)."""
    return _new_key(), _new_key()


def test_cipher_encrypt_decrypts_with_raw_jwe(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(_spki_der_b64(server_key.public_key()), _pkcs8_der_b64(client_key))
    compact = cipher.encrypt(b'{"value": "s3cret"}')
    assert compact.count(b".") == 4
    header = _header(compact)
    assert set(header) == {"alg", "enc", "iat"}
    assert (header["alg"], header["enc"]) == ("RSA-OAEP-256", "A256GCM")
    assert isinstance(header["iat"], int)
    assert abs(header["iat"] - time.time()) < 5
    plain = jwe_decrypt(compact, server_key, now=time.time(), max_age=120)
    assert plain == b'{"value": "s3cret"}'
    # Fresh CEK and IV every time.
    assert cipher.encrypt(b"x") != cipher.encrypt(b"x")


def test_raw_jwe_decrypts_with_cipher(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    assert cipher.can_decrypt
    compact = jwe_encrypt(b'{"a": "b"}', client_key.public_key(), iat=time.time())
    assert cipher.decrypt(compact) == b'{"a": "b"}'
    assert cipher.decrypt(compact.decode("ascii") + "\n") == b'{"a": "b"}'


def test_iat_in_milliseconds_is_accepted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    compact = jwe_encrypt(b"{}", client_key.public_key(), iat=time.time() * 1000)
    assert cipher.decrypt(compact) == b"{}"
    stale = jwe_encrypt(b"{}", client_key.public_key(), iat=(time.time() - 600) * 1000)
    with pytest.raises(PayloadError, match="old"):
        cipher.decrypt(stale)


def test_iat_window_edges_with_injected_clock(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    now = 1_800_000_000.0
    cipher = PayloadCipher(server_key.public_key(), client_key, max_age=120, clock=lambda: now)
    public = client_key.public_key()
    for iat in (now - 120, now, now + 120):
        assert cipher.decrypt(jwe_encrypt(b"{}", public, iat=iat)) == b"{}"
    with pytest.raises(PayloadError, match="old"):
        cipher.decrypt(jwe_encrypt(b"{}", public, iat=now - 122))
    with pytest.raises(PayloadError, match="future"):
        cipher.decrypt(jwe_encrypt(b"{}", public, iat=now + 122))
    assert _header(cipher.encrypt(b"{}"))["iat"] == int(now)


@pytest.mark.parametrize(
    ("header", "oaep_hash"),
    [
        ({"alg": "RSA-OAEP", "enc": "A256GCM"}, hashes.SHA1()),
        ({"alg": "RSA-OAEP-256", "enc": "A128GCM"}, None),
        ({"alg": "RSA-OAEP-384", "enc": "A256GCM"}, hashes.SHA384()),
        ({"alg": "dir", "enc": "A256GCM"}, None),
    ],
    ids=["RSA-OAEP-sha1", "A128GCM", "RSA-OAEP-384", "dir"],
)
def test_other_algorithms_are_refused(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    header: dict[str, Any],
    oaep_hash: hashes.HashAlgorithm | None,
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    compact = _hand_built_jwe(
        {**header, "iat": int(time.time())}, b"{}", client_key.public_key(), oaep_hash=oaep_hash
    )
    with pytest.raises(PayloadError, match="RSA-OAEP-256"):
        cipher.decrypt(compact)


def test_hand_built_rsa_oaep_256_is_accepted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    """The hand-built path is right: with the pinned algorithms it decrypts."""
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(time.time())}
    assert cipher.decrypt(_hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


@pytest.mark.parametrize("scale", [1, 1000], ids=["seconds", "milliseconds"])
def test_fractional_iat_is_accepted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], scale: int
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": time.time() * scale + 0.25}
    assert cipher.decrypt(_hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


@pytest.mark.parametrize("extra", [{"typ": "JOSE"}, {"kid": "k1"}, {"cty": "application/json"}])
def test_registered_extra_header_parameters_are_fine(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], extra: dict[str, str]
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(time.time()), **extra}
    assert cipher.decrypt(_hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


@pytest.mark.parametrize("extra", [{"jti": "abc"}, {"x-request-id": "r1"}], ids=["jti", "private"])
def test_unknown_header_parameters_are_ignored(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], extra: dict[str, str]
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(time.time()), **extra}
    assert cipher.decrypt(_hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


def test_missing_iat_is_refused(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    with pytest.raises(PayloadError, match="iat"):
        cipher.decrypt(_hand_built_jwe(header, b"{}", client_key.public_key()))


@pytest.mark.parametrize(
    "payload",
    [b"", b"{}", b"a.b.c.d.e", b"....", b"!!.!!.!!.!!.!!", "\u00e9.\u00e9.\u00e9.\u00e9.\u00e9"],
    ids=["empty", "json", "letters", "dots", "bang", "non-ascii"],
)
def test_garbage_is_a_payload_error(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], payload: bytes | str
) -> None:
    server_key, client_key = keys
    with pytest.raises(PayloadError):
        PayloadCipher(server_key.public_key(), client_key).decrypt(payload)


def test_decrypt_without_private_key(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key())
    assert not cipher.can_decrypt
    assert "encrypt only" in repr(cipher)
    compact = jwe_encrypt(b"{}", client_key.public_key(), iat=time.time())
    with pytest.raises(PayloadError, match="client_private_key="):
        cipher.decrypt(compact)


def test_from_encryption_needs_server_public_key(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    _, client_key = keys
    with pytest.raises(PayloadError, match="server_public_key"):
        PayloadCipher.from_encryption({"client_private_key": _pkcs8_der_b64(client_key)})


def test_unusable_keys_are_payload_errors(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    public = _spki_der_b64(server_key.public_key())
    private = _pkcs8_der_b64(client_key)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_der = base64.b64encode(
        ec_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    ).decode()
    cases: list[tuple[Any, Any]] = [
        ("not base64 !!", private),
        (base64.b64encode(b"not a key").decode(), private),
        (public, "not base64 !!"),
        (public, private[: len(private) // 2]),
        (public, client_key.public_key()),
        (public, ec_der),
        (_spki_der_b64(ec_key.public_key()), private),
    ]
    for server_public, client_private in cases:
        with pytest.raises(PayloadError) as info:
            PayloadCipher(server_public, client_private)
        assert private[40:100] not in str(info.value)


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
    flavor: str,
    connect: Callable[..., Caller],
    binding: dict[str, Any],
    server: TokenServer,
    client_credential: Credential,
    other_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    value = f"pw-{uuid.uuid4().hex}-never-shown"
    private_b64 = binding["encryption"]["client_private_key"]
    fragments = [value, *_fragments(private_b64, client_credential.key_pem)]
    texts: list[str] = []

    caller = connect(flavor, binding)
    caller.post("password", {"name": "db", "value": value})
    assert caller.get("password", name="db").json()["value"] == value
    texts.append(repr(caller.client))
    texts.append(repr(getattr(caller.client, "_transport", None)))
    if flavor == "requests":
        texts.append(repr(caller.client.get_adapter(server.credentials_url)))

    def failure(action: Callable[[], object]) -> None:
        with pytest.raises(MtlsAuthError) as info:
            action()
        texts.append(_error_text(info.value))

    server.credstore.response_iat_offset = -600
    failure(lambda: caller.get("password", name="db"))
    server.credstore.response_iat_offset = 600
    failure(lambda: caller.get("password", name="db"))
    server.credstore.response_iat_offset = 0
    for tamper in (_flip(3), _flip(4), _not_jwe):
        tampered = connect(flavor, binding, tamper=tamper)
        failure(lambda tampered=tampered: tampered.get("password", name="db"))
    wrong = {**binding, "encryption": {**binding["encryption"]}}
    wrong["encryption"]["client_private_key"] = _pkcs8_der_b64(other_key)
    failure(lambda: connect(flavor, wrong).get("password", name="db"))
    no_private = {**binding, "encryption": {**binding["encryption"]}}
    del no_private["encryption"]["client_private_key"]
    failure(lambda: connect(flavor, no_private))
    failure(lambda: connect(flavor, binding, client_private_key=private_b64[:-12]))
    server.credstore.encrypt = False
    failure(lambda: caller.get("password", name="db"))

    for record in caplog.records:
        texts.append(record.getMessage())
    texts.append(caplog.text)
    for text in texts:
        _assert_clean(text, fragments)


def test_cipher_and_transports_repr_and_pickle(
    binding: dict[str, Any], client_credential: Credential
) -> None:
    private_b64 = binding["encryption"]["client_private_key"]
    fragments = _fragments(private_b64, client_credential.key_pem)
    cipher = PayloadCipher.from_encryption(binding["encryption"])
    assert repr(cipher) == "<PayloadCipher RSA-OAEP-256/A256GCM encrypt+decrypt max_age=120s>"
    with pytest.raises(TypeError):
        pickle.dumps(cipher)
    adapter = mrequests.CredstoreAdapter(
        client_credential.chain_pem, client_credential.key_pem, cipher=cipher
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
    """Replaces the first request's bearer token with an unknown one: the server says 401."""

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
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    spoil = _SpoilFirstToken()
    caller = connect(flavor, binding, before=spoil)
    resources_before = len(server.resource_requests)
    tokens_before = server.token_request_count

    response = caller.post("keyring", {"name": "ring", "value": "k1", "format": "b"})
    assert response.status_code == 201
    _is_plain_json(response)
    assert response.json()["value"] == "k1"
    # The first attempt was refused, the auth fetched a new token and sent again.
    assert server.token_request_count == tokens_before + 2
    statuses = [r.status for r in server.resource_requests[resources_before:]]
    assert statuses == [401, 201]
    # Both attempts carried the sealed JWE of the same document.
    assert [content_type for content_type, _ in spoil.sent] == [JOSE, JOSE]
    plains = [
        jwe_decrypt(body, server.credstore.server_private_key, now=time.time(), max_age=120)
        for _, body in spoil.sent
    ]
    assert plains[0] == plains[1]
    assert json.loads(plains[0])["value"] == "k1"
    # Stored exactly once: the keyring holds one version.
    keys = caller.get("keyring", name="ring").json()["keys"]
    assert [k["value"] for k in keys] == ["k1"]
    assert _posts(server) == [("POST", "/api/v1/credentials/keyring", JOSE)]


def test_401_retry_after_revoke_all(
    flavor: str, connect: Callable[..., Caller], binding: dict[str, Any], server: TokenServer
) -> None:
    caller = connect(flavor, binding)
    assert caller.get("passwords").status_code == 200  # a token is cached
    resources_before = len(server.resource_requests)
    server.revoke_all()

    response = caller.post("keyring", {"name": "ring", "value": "k1", "format": "b"})
    assert response.status_code == 201
    assert response.json()["value"] == "k1"
    statuses = [r.status for r in server.resource_requests[resources_before:]]
    assert statuses == [401, 201]
    keys = caller.get("keyring", name="ring").json()["keys"]
    assert [k["value"] for k in keys] == ["k1"]
