"""No secret in the frames an error reporter captures, on every error path we can reach.

For each error the library raises, every frame on the traceback of the
exception and of every exception chained to it is scanned (`frames.leaks`):
locals, containers, objects' ``__dict__`` and reprs, and the traceback as
``TracebackException(capture_locals=True)`` renders it. Secrets: each base64
line of the client key (PKCS#1/SEC1 and PKCS#8), Credential Store payload
keys, and every access token the test server issued or was told to send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from frames import key_lines, leaks

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import (
    BindingError,
    CertificateError,
    ClientCertificate,
    MtlsAuthError,
    PayloadError,
    RetryPolicy,
    TokenError,
)
from mtls_auth.credstore import PayloadCipher
from mtls_auth.testing import (
    PKI,
    Credential,
    Fault,
    TokenServer,
    credstore_service_key,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from mtls_auth.testing._credstore_api import CredstoreApi
from mtls_auth.testing.plugin import CLIENT_ID

MODULES = [mrequests, mhttpx]
CLIENTS = ["requests", "httpx-sync", "httpx-async"]
ONE_TRY = RetryPolicy(attempts=1)


def _secrets(credential: Credential, *extra: str) -> list[str]:
    return [*key_lines(credential.private_key), *extra]


def _raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except MtlsAuthError as exc:
        return exc
    raise AssertionError("no error was raised")


def _assert_clean(error: BaseException, secrets: list[str]) -> None:
    found = leaks(error, secrets)
    assert not found, "secrets in captured frames:\n  " + "\n  ".join(found[:20])


# -- bindings that from_binding refuses -------------------------------------------------


def _without(data: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != name}


_KEYS: dict[int, tuple[Credential, dict[str, str], str]] = {}


def _keys(pki: PKI) -> tuple[Credential, dict[str, str], str]:
    """An expired client, a Credential Store encryption block and a stray key: made once.

    RSA key generation is the whole cost of these cases; the server (and so the
    bindings' URLs) is new for each test, the keys need not be.
    """
    if id(pki) not in _KEYS:
        encryption = CredstoreApi().encryption_block()
        _KEYS[id(pki)] = (pki.expired_client("expired"), encryption, pki.mismatched_key())
    return _KEYS[id(pki)]


def _bad_bindings(server: TokenServer, credential: Credential, pki: PKI) -> dict[str, Any]:
    good = xsuaa_service_key(server, credential, CLIENT_ID)
    expired, encryption, stray_key = _keys(pki)
    return {
        "secret credential-type": {**good, "credential-type": "binding-secret"},
        "unknown credential-type": {**good, "credential-type": "x509_attested_v9"},
        "missing clientid": _without(good, "clientid"),
        "missing certificate": _without(good, "certificate"),
        "bad certurl": {**good, "certurl": "https://[::1"},
        "expired credstore": credstore_service_key(
            server, expired, "cs-client", encryption=encryption
        ),
        "credstore without namespace": credstore_service_key(
            server, credential, "cs-client", encryption=encryption
        ),
        "key of another certificate": {**good, "key": stray_key},
    }


@pytest.mark.parametrize("module", MODULES, ids=["requests", "httpx"])
@pytest.mark.parametrize(
    "case",
    [
        "secret credential-type",
        "unknown credential-type",
        "missing clientid",
        "missing certificate",
        "bad certurl",
        "expired credstore",
        "credstore without namespace",
        "key of another certificate",
    ],
)
@pytest.mark.parametrize("form", ["mapping", "json", "file", "directory", "vcap"])
def test_refused_binding_leaves_no_key_in_frames(
    module: Any,
    case: str,
    form: str,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    mtls_pki: PKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    binding = _bad_bindings(mtls_server, mtls_client_certificate, mtls_pki)[case]
    secrets = _secrets(mtls_client_certificate)
    if case == "key of another certificate":
        secrets += [line for line in binding["key"].splitlines() if len(line) > 40]
    if form == "json":
        argument: Any = json.dumps(binding)
    elif form == "file":
        argument = tmp_path / "key.json"
        argument.write_text(json.dumps({"credentials": binding}))
    elif form == "directory":
        argument = write_kubernetes_binding(tmp_path / "binding", binding)
    elif form == "vcap":
        label = "credstore" if "credstore" in case else "xsuaa"
        monkeypatch.setenv("VCAP_SERVICES", vcap_services((label, "instance", binding)))
        error = _raised(lambda: module.MtlsOAuth2.from_vcap_services(label, verify=True))
        _assert_clean(error, secrets)
        return
    else:
        argument = binding
    error = _raised(lambda: module.MtlsOAuth2.from_binding(argument, verify=mtls_server.ca_pem))
    assert isinstance(error, (BindingError, CertificateError))
    _assert_clean(error, secrets)


# -- certificates and keys that are refused ------------------------------------------------


@pytest.mark.parametrize(
    "certificate",
    [
        None,
        "“-----BEGIN CERTIFICATE-----”",
        "not a certificate",
        b"\xff\xfe",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
    ids=["none", "typographic-quotes", "text", "binary", "corrupt"],
)
def test_refused_certificate_leaves_no_key_in_frames(
    certificate: Any, mtls_client_certificate: Credential
) -> None:
    key = mtls_client_certificate.key_pem
    error = _raised(lambda: ClientCertificate.from_pem(certificate, key))
    assert isinstance(error, CertificateError)
    _assert_clean(error, _secrets(mtls_client_certificate))


@pytest.mark.parametrize(
    "make",
    [
        lambda c: mrequests.MtlsOAuth2("https://a.example/t", "c", None, c.key_pem),
        lambda c: mhttpx.MtlsOAuth2("https://a.example/t", "c", c.chain_pem + "x", c.key_pem[5:]),
        lambda c: mrequests.MtlsAdapter("“cert”", c.key_pem),
        lambda c: mhttpx.MtlsTransport(c.chain_pem, c.key_pem, verify="/no/such/bundle"),
        lambda c: mhttpx.AsyncMtlsTransport(c.chain_pem, c.key_pem_encrypted(b"pw")),
    ],
    ids=["oauth-none", "oauth-broken", "adapter", "transport-verify", "async-transport"],
)
def test_refused_constructor_leaves_no_key_in_frames(
    make: Callable[[Credential], Any], mtls_client_certificate: Credential
) -> None:
    error = _raised(lambda: make(mtls_client_certificate))
    _assert_clean(error, _secrets(mtls_client_certificate))


# -- Credential Store payload keys -------------------------------------------------------------


def test_ec_client_private_key_leaves_no_key_in_frames(
    mtls_credstore_binding: dict[str, Any],
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    der = ec_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encoded = base64.b64encode(der).decode("ascii")
    block = {**mtls_credstore_binding["encryption"], "client_private_key": encoded}
    secrets = [*key_lines(ec_key), encoded[:60], encoded[-60:]]
    for call in (
        lambda: PayloadCipher.from_encryption(block),
        lambda: PayloadCipher(block["server_public_key"], encoded),
        lambda: PayloadCipher.from_binding({**mtls_credstore_binding, "encryption": block}),
    ):
        error = _raised(call)
        assert isinstance(error, PayloadError)
        _assert_clean(error, secrets)


# -- the token endpoint misbehaving -------------------------------------------------------------

_LIVE = "eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(b'{"sub":"live-token"}').decode()


def _gzip_garbage() -> Fault:
    return Fault(
        "body",
        payload=b"\x1f\x8b\x08\x00garbage-" + _LIVE.encode(),
        content_type="application/json",
        headers=(("Content-Encoding", "gzip"),),
    )


FAULTS: dict[str, Callable[[], Fault]] = {
    "cut body": lambda: Fault.reset_mid_body(
        json.dumps({"access_token": _LIVE + "." + "s" * 60, "expires_in": 60})
    ),
    "reset": Fault.reset,
    "bad json": lambda: Fault.body('{"access_token": "' + _LIVE + '.sig", "expires_in": '),
    "gzip garbage": _gzip_garbage,
    "bad token type": lambda: Fault.body(
        json.dumps({"access_token": _LIVE + ".sig", "token_type": "mac", "expires_in": 60})
    ),
    "bad expires_in": lambda: Fault.body(
        json.dumps({"access_token": _LIVE + ".sig", "expires_in": "soon"})
    ),
    "401 invalid_client": lambda: Fault.status(401),
    "500": lambda: Fault.status(500),
}


def _fetch(client: str, auth: Any, server: TokenServer) -> BaseException:
    if client == "requests":
        with requests.Session() as session:
            session.mount(server.url, auth.adapter())
            return _raised(lambda: session.get(server.resource_url, auth=auth, timeout=10))
    if client == "httpx-sync":
        with httpx.Client(auth=auth, transport=auth.transport()) as http:
            return _raised(lambda: http.get(server.resource_url))

    async def main() -> BaseException:
        async with httpx.AsyncClient(auth=auth, transport=auth.async_transport()) as http:
            try:
                await http.get(server.resource_url)
            except MtlsAuthError as exc:
                return exc
            finally:
                await auth.aclose()
        raise AssertionError("no error was raised")

    return asyncio.run(main())


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_token_endpoint_fault_leaves_no_secret_in_frames(
    client: str,
    fault: str,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
    mtls_client_certificate: Credential,
) -> None:
    module = mrequests if client == "requests" else mhttpx
    auth = module.MtlsOAuth2.from_binding(
        mtls_xsuaa_binding, retry=ONE_TRY, timeout=5.0, **mtls_auth_kwargs
    )
    mtls_server.inject(FAULTS[fault]())
    error = _fetch(client, auth, mtls_server)
    assert isinstance(error, TokenError)
    _assert_clean(error, _secrets(mtls_client_certificate, _LIVE, *mtls_server._tokens))
    auth.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_refresh_after_401_failing_leaves_no_secret_in_frames(
    client: str,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
    mtls_client_certificate: Credential,
) -> None:
    """A resource 401 revokes the token; the refresh the library starts then fails."""
    module = mrequests if client == "requests" else mhttpx
    auth = module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, retry=ONE_TRY, **mtls_auth_kwargs)
    auth.token_info()  # a live token in the cache
    mtls_server.revoke_all()
    mtls_server.inject(Fault.status(400, body={"error": "invalid_grant"}))
    error = _fetch(client, auth, mtls_server)
    assert isinstance(error, TokenError)
    _assert_clean(error, _secrets(mtls_client_certificate, *mtls_server._tokens))
    auth.close()


def test_scrubbing_leaves_the_callers_own_exception_alone(
    mtls_client_certificate: Credential,
) -> None:
    """An error raised while the caller handles its own exception: theirs keeps its locals."""

    def users_code() -> None:
        users_local = "the caller's own state"  # noqa: F841 - inspected below
        raise KeyError("theirs")

    theirs: BaseException | None = None
    error: BaseException | None = None
    try:
        users_code()
    except KeyError as exc:
        theirs = exc
        error = _raised(lambda: ClientCertificate.from_pem(None, "x"))  # type: ignore[arg-type]
    assert theirs is not None
    assert error is not None
    assert error.__context__ is theirs
    tb = theirs.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != "users_code":
        tb = tb.tb_next
    assert tb is not None
    assert tb.tb_frame.f_locals.get("users_local") == "the caller's own state"


def test_the_scanner_finds_what_it_looks_for(mtls_client_certificate: Credential) -> None:
    """The scanner itself: a key line kept deep in a library-like frame is found."""
    secret_line = key_lines(mtls_client_certificate.private_key)[3]
    namespace: dict[str, Any] = {}
    library_like = (
        "class Box:\n"
        "    def __init__(self, kept):\n"
        "        self.kept = kept\n"
        "def leaky(secret):\n"
        "    holder = {'nested': [Box(secret)]}\n"
        "    raise ValueError('boom')\n"
    )
    # A file of the library: its frames are searched deeply.
    where = os.path.join(os.sep, "site-packages", "mtls_auth", "leaky.py")
    exec(compile(library_like, where, "exec"), namespace)
    try:
        namespace["leaky"](secret_line)
    except ValueError as exc:
        found = leaks(exc, [secret_line])
    assert any("leaky.py:leaky: holder" in place for place in found), found


def test_other_libraries_frames_are_checked_as_reporters_render_them(
    mtls_client_certificate: Credential,
) -> None:
    """An HTTP library's frame: not searched deeply (it holds the request it
    sends, as for any auth), but what a reporter renders (each local's repr) is."""
    secret_line = key_lines(mtls_client_certificate.private_key)[3]
    namespace: dict[str, Any] = {}
    code = (
        "class Request:\n"
        "    def __init__(self, header):\n"
        "        self.header = header\n"
        "    def __repr__(self):\n"
        "        return '<Request>'\n"
        "def send(request, note):\n"
        "    raise ValueError('boom')\n"
    )
    where = os.path.join(os.sep, "site-packages", "httplib", "client.py")
    exec(compile(code, where, "exec"), namespace)
    for note, expected in (("", []), (secret_line, ["rendered send: secret #0"])):
        try:
            # The request keeps the header deep; its repr never shows it.
            namespace["send"](namespace["Request"](secret_line), note)
        except ValueError as exc:
            error = exc
        assert leaks(error, [secret_line]) == expected
