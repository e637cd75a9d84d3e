"""Bindings: XSUAA and Credential Store service keys, VCAP_SERVICES, Kubernetes, discovery.

Every binding is generated at test time by `mtls_auth.testing` (service keys
shaped like real ones, kubelet's exact symlink layout), and every
`from_binding` variant makes a real token request and a real resource call
through the loopback mTLS `token_server`, for requests and for httpx.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import pickle
import re
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtls_auth._sources as binding_module
import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import BindingError, CertificateError, MtlsAuthError
from mtls_auth._binding import Binding, parse_credentials
from mtls_auth._discovery import discover_token_endpoint
from mtls_auth._sources import BindingSource, select_vcap_service
from mtls_auth.testing import (
    PKI,
    Credential,
    TokenServer,
    credstore_service_key,
    rotate_kubernetes_binding,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from mtls_auth.testing._server import CREDSTORE_TOKEN_PATH, XSUAA_TOKEN_PATH

#: A Credential Store client id as the service hands them out: "/", "+" and "=".
CREDSTORE_ID = "0fcb3a97-7b67-4bf8-b7e0-6a6c04cf7d3f.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="
#: A namespace that only arrives intact if the form body is URL-encoded.
NAMESPACE = "ns/1 &x=y+z"

MODULES = [pytest.param(mrequests, id="requests"), pytest.param(mhttpx, id="httpx")]
TIMESTAMP_DIR = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$")


# -- fixtures and helpers -----------------------------------------------------------------


class _KeyOnlyServer:
    """Just enough of a TokenServer to render a Credential Store key's URLs."""

    url = "https://localhost:1"
    credstore_token_url = url + CREDSTORE_TOKEN_PATH


@pytest.fixture(scope="module")
def encryption_keys(client_credential: Credential) -> dict[str, str]:
    """One Credential Store `encryption` block per module: RSA keys are slow to make."""
    key = credstore_service_key(_KeyOnlyServer(), client_credential, "x")  # type: ignore[arg-type]
    encryption: dict[str, str] = key["encryption"]
    return encryption


@pytest.fixture(scope="module")
def shared_server(pki: PKI, client_credential: Credential, client_id: str) -> Iterator[TokenServer]:
    """One server for the module: starting and stopping one per test costs seconds."""
    with TokenServer(pki) as server:
        server.register_client(client_id, client_credential)
        server.register_client(CREDSTORE_ID, client_credential)
        yield server


@pytest.fixture
def token_server(shared_server: TokenServer) -> TokenServer:
    """Overrides conftest's per-test server: the shared one, its records cleared."""
    shared_server.clear()
    return shared_server


@pytest.fixture
def xsuaa_key(token_server: TokenServer, client_credential: Credential, client_id: str) -> dict:
    return xsuaa_service_key(token_server, client_credential, client_id)


@pytest.fixture
def credstore_server(token_server: TokenServer) -> TokenServer:
    """The token server, with `CREDSTORE_ID` bound to `client_credential`."""
    return token_server


@pytest.fixture
def credstore_key(
    credstore_server: TokenServer, client_credential: Credential, encryption_keys: dict[str, str]
) -> dict:
    return credstore_service_key(
        credstore_server, client_credential, CREDSTORE_ID, encryption=encryption_keys
    )


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No VCAP_SERVICES, an empty SERVICE_BINDING_ROOT, legacy roots under tmp_path."""
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    root = tmp_path / "bindings"
    root.mkdir()
    monkeypatch.setenv("SERVICE_BINDING_ROOT", str(root))
    legacy = (str(tmp_path / "etc-secrets-sapbtp"), str(tmp_path / "etc-secrets-sapcp"))
    monkeypatch.setattr(binding_module, "_LEGACY_ROOTS", legacy)
    return root


def call(module: ModuleType, auth: Any, server: TokenServer) -> dict[str, Any]:
    """One GET of the protected resource, the way a user wires each library.

    The server requires a client certificate on every connection, so the
    resource is reached through the auth's own adapter / transport.
    """
    try:
        if module is mrequests:
            with requests.Session() as session:
                session.mount(server.url, auth.adapter())
                response = session.get(server.resource_url, auth=auth, timeout=10)
                status, body = response.status_code, response.json()
        else:
            with httpx.Client(auth=auth, transport=auth.transport(), timeout=10) as client:
                reply = client.get(server.resource_url)
                status, body = reply.status_code, reply.json()
    finally:
        auth.close()
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def secret_fragments(credential: Credential, *extra: str) -> list[str]:
    """Substrings that must never show: key and leaf certificate body lines, other secrets."""
    fragments: list[str] = []
    for pem in (credential.key_pem, credential.cert_pem):
        fragments += [line for line in pem.splitlines() if "-----" not in line and len(line) > 20]
    for value in extra:
        fragments += [value[i : i + 32] for i in range(0, max(len(value) - 32, 1), 97)]
    return fragments


def assert_clean(text: str, fragments: list[str]) -> None:
    leaked = [fragment for fragment in fragments if fragment in text]
    assert not leaked, f"secret material in: {text[:300]!r}"


def assert_clean_error(exc: BaseException, fragments: list[str]) -> None:
    """The message, the repr and the whole printed traceback (causes too) are clean."""
    assert_clean(str(exc), fragments)
    assert_clean(repr(exc), fragments)
    assert_clean("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), fragments)


def escaped(pem: str) -> str:
    return pem.replace("\n", "\\n")


# -- parse_credentials: XSUAA ---------------------------------------------------------------


@pytest.mark.parametrize("credential_type", ["x509", "X509_GENERATED", "X509_PROVIDED", None])
def test_xsuaa_x509_kinds(
    token_server: TokenServer,
    client_credential: Credential,
    client_id: str,
    credential_type: str | None,
) -> None:
    key = xsuaa_service_key(
        token_server, client_credential, client_id, credential_type=credential_type
    )
    assert ("credential-type" in key) == (credential_type is not None)
    parsed = parse_credentials(key)
    assert parsed.kind == "xsuaa"
    assert parsed.client_id == client_id
    assert parsed.token_url == token_server.url + "/oauth/token"
    assert parsed.certificate == client_credential.chain_pem
    assert parsed.key == client_credential.key_pem
    assert not parsed.needs_namespace


def test_xsuaa_service_key_shape(
    token_server: TokenServer, client_credential: Credential, client_id: str
) -> None:
    key = xsuaa_service_key(token_server, client_credential, client_id)
    assert key["credential-type"] == "X509_GENERATED"
    assert key["certurl"] == key["url"] == token_server.url
    assert key["key"].startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    assert key["certificate"].count("BEGIN CERTIFICATE") == 2  # leaf + intermediate
    assert key["xsappname"] == "client!t1"
    for name in ("identityzone", "tenantid", "uaadomain", "clientid"):
        assert key[name]
    assert "verificationkey" not in key
    pasted = xsuaa_service_key(token_server, client_credential, client_id, escape_newlines=True)
    assert "\n" not in pasted["key"]
    assert "\\n" in pasted["key"]
    assert "\n" not in pasted["certificate"]
    wrapped = xsuaa_service_key(token_server, client_credential, client_id, wrap=True)
    assert set(wrapped) == {"credentials"}


@pytest.mark.parametrize(
    ("certurl", "expected"),
    [
        (
            "https://sub.authentication.cert.eu20.hana.ondemand.com",
            "https://sub.authentication.cert.eu20.hana.ondemand.com/oauth/token",
        ),
        (
            "https://sub.authentication.cert.eu20.hana.ondemand.com/",
            "https://sub.authentication.cert.eu20.hana.ondemand.com/oauth/token",
        ),
        ("https://localhost:8443//", "https://localhost:8443/oauth/token"),
    ],
)
def test_xsuaa_token_url_from_certurl(xsuaa_key: dict, certurl: str, expected: str) -> None:
    assert parse_credentials({**xsuaa_key, "certurl": certurl}).token_url == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://sub.authentication.eu20.hana.ondemand.com",
            "https://sub.authentication.cert.eu20.hana.ondemand.com/oauth/token",
        ),
        (
            "https://sub.authentication.eu20.hana.ondemand.com/",
            "https://sub.authentication.cert.eu20.hana.ondemand.com/oauth/token",
        ),
        (
            "https://sub.authentication.cert.eu20.hana.ondemand.com",
            "https://sub.authentication.cert.eu20.hana.ondemand.com/oauth/token",
        ),
        (
            "https://sub.authentication.us10.hana.ondemand.com:443",
            "https://sub.authentication.cert.us10.hana.ondemand.com:443/oauth/token",
        ),
    ],
)
def test_xsuaa_token_url_from_url_without_certurl(xsuaa_key: dict, url: str, expected: str) -> None:
    key = {k: v for k, v in xsuaa_key.items() if k != "certurl"}
    assert parse_credentials({**key, "url": url}).token_url == expected


@pytest.mark.parametrize("credential_type", ["binding-secret", "instance-secret", "BINDING-SECRET"])
def test_xsuaa_secret_binding_explains_x509(xsuaa_key: dict, credential_type: str) -> None:
    key = {**xsuaa_key, "credential-type": credential_type, "clientsecret": "s3cr3t-v4lue"}
    with pytest.raises(BindingError) as info:
        parse_credentials(key)
    message = str(info.value)
    assert "x509" in message
    assert "credential-type" in message
    assert "s3cr3t-v4lue" not in message


def test_xsuaa_secret_binding_without_credential_type(xsuaa_key: dict) -> None:
    key = {k: v for k, v in xsuaa_key.items() if k not in ("credential-type", "key")}
    with pytest.raises(BindingError, match="x509") as info:
        parse_credentials({**key, "clientsecret": "s3cr3t-v4lue"})
    assert "credential-type" in str(info.value)
    assert "s3cr3t-v4lue" not in str(info.value)


def test_xsuaa_x509_attested_says_key_is_missing(xsuaa_key: dict) -> None:
    key = {k: v for k, v in xsuaa_key.items() if k != "key"}
    with pytest.raises(BindingError) as info:
        parse_credentials({**key, "credential-type": "X509_ATTESTED"})
    assert "X509_ATTESTED" in str(info.value)
    assert "'key' is missing" in str(info.value)


def test_xsuaa_unknown_credential_type(xsuaa_key: dict) -> None:
    with pytest.raises(BindingError) as info:
        parse_credentials({**xsuaa_key, "credential-type": "X509_QUANTUM"})
    assert "X509_QUANTUM" in str(info.value)
    assert "x509" in str(info.value)


@pytest.mark.parametrize("missing", [["certificate"], ["key"], ["certificate", "key"]])
def test_xsuaa_missing_fields_are_named(xsuaa_key: dict, missing: list[str]) -> None:
    key = {k: v for k, v in xsuaa_key.items() if k not in missing}
    with pytest.raises(BindingError) as info:
        parse_credentials(key)
    for name in missing:
        assert repr(name) in str(info.value)


def test_xsuaa_without_certurl_or_url(xsuaa_key: dict) -> None:
    key = {k: v for k, v in xsuaa_key.items() if k not in ("certurl", "url")}
    with pytest.raises(BindingError, match=r"'certurl'.*'url'"):
        parse_credentials(key)


def test_field_of_the_wrong_type_is_named(xsuaa_key: dict) -> None:
    with pytest.raises(BindingError, match="'certurl' must be a string, not int"):
        parse_credentials({**xsuaa_key, "certurl": 443})


def test_neither_shape_lists_field_names_only(client_credential: Credential) -> None:
    data = {"certificate": client_credential.chain_pem, "key": client_credential.key_pem}
    with pytest.raises(BindingError, match="certificate, key") as info:
        parse_credentials(data)
    assert_clean_error(info.value, secret_fragments(client_credential))


@pytest.mark.parametrize("data", [[], "text", 5, None])
def test_binding_must_be_an_object(data: Any) -> None:
    with pytest.raises(BindingError, match="JSON object"):
        parse_credentials(data)


def test_binding_is_not_picklable_and_repr_is_clean(
    credstore_key: dict, client_credential: Credential
) -> None:
    parsed = parse_credentials(credstore_key)
    with pytest.raises(TypeError):
        pickle.dumps(parsed)
    fragments = secret_fragments(client_credential, *credstore_key["encryption"].values())
    assert_clean(repr(parsed), fragments)
    assert_clean(str(parsed), fragments)


# -- parse_credentials: Credential Store ------------------------------------------------------


def test_credstore_shape(credstore_key: dict, credstore_server: TokenServer) -> None:
    parsed = parse_credentials(credstore_key)
    assert parsed.kind == "credstore"
    assert parsed.needs_namespace
    assert parsed.client_id == CREDSTORE_ID
    assert parsed.token_url == credstore_server.credstore_token_url
    assert parsed.url == credstore_server.url + "/api/v1/credentials"
    assert parsed.key.startswith("-----BEGIN RSA PRIVATE KEY-----")


def test_credstore_service_key_encryption_is_real_der(
    credstore_server: TokenServer, client_credential: Credential
) -> None:
    key = credstore_service_key(credstore_server, client_credential, CREDSTORE_ID)
    private = serialization.load_der_private_key(
        base64.b64decode(key["encryption"]["client_private_key"]), password=None
    )
    public = serialization.load_der_public_key(
        base64.b64decode(key["encryption"]["server_public_key"])
    )
    assert private.public_key().public_numbers() != public.public_numbers()  # type: ignore[union-attr]
    assert "encryption" not in credstore_service_key(
        credstore_server, client_credential, CREDSTORE_ID, encryption=False
    )


def test_credstore_encryption_kept_but_not_in_repr(
    credstore_key: dict, client_credential: Credential
) -> None:
    parsed = parse_credentials(credstore_key)
    assert dict(parsed.encryption) == credstore_key["encryption"]
    fragments = secret_fragments(client_credential, *credstore_key["encryption"].values())
    assert_clean(repr(parsed), fragments)


def test_credstore_expires_at_default_is_certificate_not_after(
    credstore_key: dict, client_credential: Credential
) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", credstore_key["expires_at"])
    assert parse_credentials(credstore_key).expires_at == client_credential.not_after


def test_credstore_expires_at_in_the_past_is_reported(
    credstore_server: TokenServer,
    client_credential: Credential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = credstore_service_key(
        credstore_server,
        client_credential,
        CREDSTORE_ID,
        expires_at="2022-04-23T09:24:03.3Z",
        encryption=False,
    )
    with caplog.at_level(logging.WARNING, logger="mtls_auth"):
        parsed = parse_credentials(key)
    assert parsed.expires_at == datetime.datetime(
        2022, 4, 23, 9, 24, 3, 300000, tzinfo=datetime.timezone.utc
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "an expired Credential Store binding must be reported"
    assert "expired" in warnings[0].getMessage()
    assert "2022-04-23" in warnings[0].getMessage()


def test_credstore_expires_at_in_the_future_is_quiet(
    credstore_key: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mtls_auth"):
        parse_credentials(credstore_key)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime.datetime(2030, 1, 2, 3, 4, 5)),
        ("2030-01-02T03:04:05.123456789Z", datetime.datetime(2030, 1, 2, 3, 4, 5, 123456)),
        ("2030-01-02T03:04:05+00:00", datetime.datetime(2030, 1, 2, 3, 4, 5)),
        ("2030-01-02T03:04:05", datetime.datetime(2030, 1, 2, 3, 4, 5)),
    ],
)
def test_credstore_expires_at_formats(
    credstore_key: dict, text: str, expected: datetime.datetime
) -> None:
    parsed = parse_credentials({**credstore_key, "expires_at": text})
    assert parsed.expires_at == expected.replace(tzinfo=datetime.timezone.utc)


def test_credstore_unreadable_expires_at_is_a_warning(
    credstore_key: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mtls_auth"):
        parsed = parse_credentials({**credstore_key, "expires_at": "next tuesday"})
    assert parsed.expires_at is None
    assert any("expires_at" in r.getMessage() for r in caplog.records)


def test_credstore_basic_auth_binding_asks_for_oauth_mtls(credstore_key: dict) -> None:
    key = {k: v for k, v in credstore_key.items() if k not in ("key", "oauth_token_url")}
    with pytest.raises(BindingError, match="oauth:mtls") as info:
        parse_credentials({**key, "password": "b4sic-p4ssword"})
    assert "b4sic-p4ssword" not in str(info.value)


@pytest.mark.parametrize("missing", ["oauth_token_url", "certificate", "key"])
def test_credstore_missing_fields_are_named(credstore_key: dict, missing: str) -> None:
    key = {k: v for k, v in credstore_key.items() if k != missing}
    with pytest.raises(BindingError, match=repr(missing)):
        parse_credentials(key)


# -- every error is a clean BindingError ---------------------------------------------------


ErrorCase = Callable[[dict, dict, Path], Any]


def _without(data: dict, *names: str) -> dict:
    return {k: v for k, v in data.items() if k not in names}


def _in_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service-key.json"
    path.write_text(text)
    return path


def _broken_metadata_dir(tmp_path: Path, xsuaa: dict) -> Path:
    directory = write_kubernetes_binding(tmp_path / "broken", xsuaa, kubelet=False)
    (directory / "certificate").unlink()
    return directory


def _empty_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "empty"
    directory.mkdir()
    return directory


ERROR_CASES: dict[str, tuple[ErrorCase, type[MtlsAuthError]]] = {
    "secret-binding": (
        lambda x, c, t: {**x, "credential-type": "binding-secret", "clientsecret": "s"},
        BindingError,
    ),
    "instance-secret": (
        lambda x, c, t: {**x, "credential-type": "instance-secret"},
        BindingError,
    ),
    "x509-attested": (
        lambda x, c, t: {**_without(x, "key"), "credential-type": "X509_ATTESTED"},
        BindingError,
    ),
    "unknown-type": (lambda x, c, t: {**x, "credential-type": "PKCS12"}, BindingError),
    "no-clientid-no-username": (lambda x, c, t: _without(x, "clientid"), BindingError),
    "no-certurl-no-url": (lambda x, c, t: _without(x, "certurl", "url"), BindingError),
    "xsuaa-no-certificate": (lambda x, c, t: _without(x, "certificate"), BindingError),
    "xsuaa-no-key": (lambda x, c, t: _without(x, "key"), BindingError),
    "wrong-type": (lambda x, c, t: {**x, "clientid": ["a"]}, BindingError),
    "credstore-basic": (
        lambda x, c, t: {**_without(c, "key"), "password": "p"},
        BindingError,
    ),
    "credstore-no-token-url": (lambda x, c, t: _without(c, "oauth_token_url"), BindingError),
    "credstore-no-namespace": (lambda x, c, t: c, BindingError),
    "invalid-json-text": (lambda x, c, t: json.dumps(x)[:-40], BindingError),
    "invalid-json-file": (lambda x, c, t: _in_file(t, json.dumps(c)[:-40]), BindingError),
    "json-file-not-object": (lambda x, c, t: _in_file(t, json.dumps([x])), BindingError),
    "json-text-wrong-type": (lambda x, c, t: json.dumps({**x, "key": 5}), BindingError),
    "missing-path": (lambda x, c, t: t / "no-such-service-key.json", BindingError),
    "metadata-file-missing": (lambda x, c, t: _broken_metadata_dir(t, x), BindingError),
    "empty-directory": (lambda x, c, t: _empty_dir(t), BindingError),
    "wrong-input-type": (lambda x, c, t: 42, BindingError),
    "key-does-not-match": (
        lambda x, c, t: {**x, "key": PKI().issue_client("other").key_pem},
        CertificateError,
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_binding_errors_are_clean(
    case: str,
    xsuaa_key: dict,
    credstore_key: dict,
    client_credential: Credential,
    tmp_path: Path,
    token_server: TokenServer,
) -> None:
    build, expected = ERROR_CASES[case]
    binding = build(xsuaa_key, credstore_key, tmp_path)
    with pytest.raises(MtlsAuthError) as info:
        mrequests.MtlsOAuth2.from_binding(binding, verify=token_server.ca_pem)
    assert isinstance(info.value, expected)
    if expected is BindingError:
        assert isinstance(info.value, ValueError)
    fragments = secret_fragments(client_credential, *credstore_key["encryption"].values())
    assert_clean_error(info.value, fragments)


def test_vcap_and_kubernetes_errors_are_clean(
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    xsuaa_key: dict,
    credstore_key: dict,
    client_credential: Credential,
) -> None:
    fragments = secret_fragments(client_credential, *credstore_key["encryption"].values())
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(
            ("xsuaa", "a", xsuaa_key), ("xsuaa", "b", xsuaa_key), ("credstore", "c", credstore_key)
        ),
    )
    write_kubernetes_binding(isolated_env / "one", xsuaa_key)
    write_kubernetes_binding(isolated_env / "two", xsuaa_key)
    for attempt in (
        lambda: mrequests.MtlsOAuth2.from_vcap_services("xsuaa"),
        lambda: mrequests.MtlsOAuth2.from_vcap_services("xsuaa", name="zzz"),
        lambda: mrequests.MtlsOAuth2.from_vcap_services("destination"),
        lambda: mrequests.MtlsOAuth2.from_vcap_services("credstore"),  # no namespace
        lambda: mhttpx.MtlsOAuth2.from_kubernetes(label="xsuaa"),
        lambda: mhttpx.MtlsOAuth2.from_kubernetes(name="three"),
    ):
        with pytest.raises(BindingError) as info:
            attempt()
        assert isinstance(info.value, ValueError)
        assert_clean_error(info.value, fragments)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("pem-key", id="private-key-pem"),
        pytest.param("json-array", id="json-array"),
    ],
)
def test_non_json_binding_text_is_not_echoed(
    text: str, xsuaa_key: dict, client_credential: Credential
) -> None:
    inputs = {
        "pem-key": client_credential.key_pem,
        "json-array": json.dumps([xsuaa_key]),
    }
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_binding(inputs[text])
    assert_clean_error(info.value, secret_fragments(client_credential))


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("\ufeff", id="bom"),
        pytest.param(
            "Getting key my-key for service instance my-xsuaa as admin...\n\n", id="cf-output"
        ),
    ],
)
def test_json_text_with_bom_or_cf_header_is_read(xsuaa_key: dict, prefix: str) -> None:
    binding = BindingSource.from_input(prefix + json.dumps(xsuaa_key)).read()
    assert binding.client_id == xsuaa_key["clientid"]


@pytest.mark.parametrize(
    "url",
    ["https://[sub.authentication.eu10", "https://sub.authentication.eu10:abc", "https://h:99999"],
)
def test_xsuaa_unparseable_url_is_a_binding_error(xsuaa_key: dict, url: str) -> None:
    with pytest.raises(BindingError):
        parse_credentials({**_without(xsuaa_key, "certurl"), "url": url})


# -- hypothesis: nothing but BindingError ---------------------------------------------------


_FIELDS = [
    "clientid",
    "certificate",
    "key",
    "certurl",
    "url",
    "credential-type",
    "clientsecret",
    "username",
    "password",
    "oauth_token_url",
    "expires_at",
    "encryption",
    "client_id",
    "token_url",
    "tokenurl",
    "credentials",
    "client_private_key",
    "server_public_key",
]
_WORDS = [
    "x509",
    "X509_GENERATED",
    "X509_PROVIDED",
    "X509_ATTESTED",
    "binding-secret",
    "instance-secret",
    "https://sub.authentication.eu10.hana.ondemand.com",
    "https://sub.authentication.cert.eu10.hana.ondemand.com/",
    "https://h:8443/x",
    "2022-04-23T09:24:03.3Z",
    "2099-01-01T00:00:00Z",
    "9999-99-99T",
    ".",
    "",
    "Z",
]
# URLs that urlsplit() itself rejects are pinned by the xfail test above; random
# text here avoids "//" so that the property stays about everything else.
_text = st.sampled_from(_WORDS) | st.text(max_size=24).filter(lambda s: "//" not in s)
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=8), _json, max_size=8))
def test_parse_credentials_only_raises_binding_error(data: dict[str, Any]) -> None:
    # Anything but a BindingError propagates and fails the property.
    outcome: Binding | BindingError
    try:
        outcome = parse_credentials(data)
    except BindingError as exc:
        outcome = exc
    if isinstance(outcome, Binding):
        assert outcome.kind in ("xsuaa", "credstore", "generic")
    else:
        assert isinstance(outcome, ValueError)
        assert isinstance(outcome, MtlsAuthError)


# -- from_binding: every input kind, real calls -----------------------------------------------


KeyMaker = Callable[..., dict]
InputKind = Callable[[KeyMaker, Path, str], Any]


def _file_of(tmp_path: Path, data: Any, name: str = "service-key.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


INPUT_KINDS: dict[str, InputKind] = {
    "mapping": lambda make, tmp, kind: make(),
    "json-text": lambda make, tmp, kind: json.dumps(make()),
    "json-text-indented": lambda make, tmp, kind: "\n  " + json.dumps(make(), indent=2),
    "wrapped-mapping": lambda make, tmp, kind: make(wrap=True),
    "wrapped-json-text": lambda make, tmp, kind: json.dumps(make(wrap=True)),
    "escaped-newlines-mapping": lambda make, tmp, kind: make(escape_newlines=True),
    "escaped-newlines-json-text": lambda make, tmp, kind: json.dumps(make(escape_newlines=True)),
    "file-str": lambda make, tmp, kind: str(_file_of(tmp, make())),
    "file-path": lambda make, tmp, kind: _file_of(tmp, make()),
    "file-wrapped": lambda make, tmp, kind: _file_of(tmp, make(wrap=True)),
    "file-escaped-newlines": lambda make, tmp, kind: _file_of(tmp, make(escape_newlines=True)),
    "k8s-kubelet-metadata-text": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), binding_type=kind
    ),
    "k8s-kubelet-metadata-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata="json", binding_type=kind
    ),
    "k8s-plain-metadata-text": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), binding_type=kind, kubelet=False
    ),
    "k8s-dir-as-str": lambda make, tmp, kind: str(
        write_kubernetes_binding(tmp / "b", make(), binding_type=kind)
    ),
    "k8s-flat-legacy": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, binding_type=None, kubelet=False
    ),
    "k8s-kubelet-flat": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, binding_type=kind
    ),
    "k8s-credentials-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, single_file="credentials.json", kubelet=False
    ),
    "k8s-binding-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b",
        make(),
        metadata=None,
        single_file="binding.json",
        kubelet=False,
        binding_type=kind,
    ),
    "k8s-kubelet-binding-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, single_file="binding.json", binding_type=kind
    ),
}


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
@pytest.mark.parametrize("module", MODULES)
def test_from_binding_xsuaa(
    module: ModuleType,
    kind: str,
    token_server: TokenServer,
    client_credential: Credential,
    client_id: str,
    tmp_path: Path,
) -> None:
    def make(**options: Any) -> dict:
        return xsuaa_service_key(token_server, client_credential, client_id, **options)

    binding = INPUT_KINDS[kind](make, tmp_path, "xsuaa")
    auth = module.MtlsOAuth2.from_binding(binding, verify=token_server.ca_pem)
    assert auth.client_id == client_id
    assert auth.token_url == token_server.token_url
    assert auth.namespace is None
    assert auth.certificate.thumbprint == client_credential.thumbprint
    body = call(module, auth, token_server)
    assert body["client_id"] == client_id
    (request,) = token_server.token_requests
    assert request.path == XSUAA_TOKEN_PATH
    assert request.client_id == client_id
    assert request.namespace is None
    assert request.thumbprint == client_credential.thumbprint
    assert "client_secret" not in request.form


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
@pytest.mark.parametrize("module", MODULES)
def test_from_binding_credstore(
    module: ModuleType,
    kind: str,
    credstore_server: TokenServer,
    client_credential: Credential,
    encryption_keys: dict[str, str],
    tmp_path: Path,
) -> None:
    def make(**options: Any) -> dict:
        return credstore_service_key(
            credstore_server,
            client_credential,
            CREDSTORE_ID,
            encryption=encryption_keys,
            **options,
        )

    binding = INPUT_KINDS[kind](make, tmp_path, "credstore")
    auth = module.MtlsOAuth2.from_binding(
        binding, namespace=NAMESPACE, verify=credstore_server.ca_pem
    )
    assert auth.client_id == CREDSTORE_ID
    assert auth.token_url == credstore_server.credstore_token_url
    assert auth.namespace == NAMESPACE
    assert dict(auth._client.state.binding.encryption) == encryption_keys
    fragments = secret_fragments(client_credential, *encryption_keys.values())
    assert_clean(repr(auth), fragments)
    body = call(module, auth, credstore_server)
    assert body["client_id"] == CREDSTORE_ID
    assert body["namespace"] == NAMESPACE
    (request,) = credstore_server.token_requests
    assert request.path == CREDSTORE_TOKEN_PATH
    assert request.client_id == CREDSTORE_ID
    assert request.namespace == NAMESPACE


@pytest.mark.parametrize("module", MODULES)
def test_credstore_namespace_is_required(module: ModuleType, credstore_key: dict) -> None:
    with pytest.raises(BindingError, match="namespace") as info:
        module.MtlsOAuth2.from_binding(credstore_key)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("module", MODULES)
def test_credstore_namespace_is_part_of_the_cache_key(
    module: ModuleType, credstore_key: dict, credstore_server: TokenServer
) -> None:
    first = module.MtlsOAuth2.from_binding(
        credstore_key, namespace="team-a", verify=credstore_server.ca_pem
    )
    second = module.MtlsOAuth2.from_binding(
        credstore_key, namespace=NAMESPACE, verify=credstore_server.ca_pem
    )
    assert first._key() != second._key()
    assert "team-a" in first._key()
    assert NAMESPACE in second._key()
    assert call(module, first, credstore_server)["namespace"] == "team-a"
    assert call(module, second, credstore_server)["namespace"] == NAMESPACE
    assert [r.namespace for r in credstore_server.token_requests] == ["team-a", NAMESPACE]


@pytest.mark.parametrize("module", MODULES)
def test_one_auth_one_token(module: ModuleType, xsuaa_key: dict, token_server: TokenServer) -> None:
    auth = module.MtlsOAuth2.from_binding(xsuaa_key, verify=token_server.ca_pem)
    if module is mrequests:
        with requests.Session() as session:
            session.mount(token_server.url, auth.adapter())
            for _ in range(3):
                assert session.get(token_server.resource_url, auth=auth).status_code == 200
    else:
        with httpx.Client(auth=auth, transport=auth.transport()) as client:
            for _ in range(3):
                assert client.get(token_server.resource_url).status_code == 200
    auth.close()
    assert token_server.token_request_count == 1


def test_pathlike_other_than_path(
    xsuaa_key: dict, token_server: TokenServer, tmp_path: Path
) -> None:
    class Where(os.PathLike):  # type: ignore[type-arg]
        def __init__(self, path: Path) -> None:
            self.path = path

        def __fspath__(self) -> str:
            return str(self.path)

    auth = mrequests.MtlsOAuth2.from_binding(
        Where(_file_of(tmp_path, xsuaa_key)), verify=token_server.ca_pem
    )
    assert call(mrequests, auth, token_server)["client_id"] == xsuaa_key["clientid"]


# -- Cloud Foundry ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_from_vcap_services(
    module: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    xsuaa_key: dict,
    credstore_key: dict,
    credstore_server: TokenServer,
    client_id: str,
) -> None:
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(
            ("xsuaa", "my-xsuaa", xsuaa_key),
            ("credstore", "my-credstore", credstore_key),
            ("credstore", "other-credstore", credstore_key),
        ),
    )
    auth = module.MtlsOAuth2.from_vcap_services(label="xsuaa", verify=credstore_server.ca_pem)
    assert call(module, auth, credstore_server)["client_id"] == client_id
    auth = module.MtlsOAuth2.from_vcap_services(
        label="credstore",
        name="my-credstore",
        namespace=NAMESPACE,
        verify=credstore_server.ca_pem,
    )
    body = call(module, auth, credstore_server)
    assert (body["client_id"], body["namespace"]) == (CREDSTORE_ID, NAMESPACE)
    assert [(r.path, r.client_id, r.namespace) for r in credstore_server.token_requests] == [
        (XSUAA_TOKEN_PATH, client_id, None),
        (CREDSTORE_TOKEN_PATH, CREDSTORE_ID, NAMESPACE),
    ]


def test_vcap_services_shape(xsuaa_key: dict) -> None:
    services = json.loads(
        vcap_services(("xsuaa", "a", {"credentials": xsuaa_key}), ("xsuaa", "b", xsuaa_key))
    )
    assert list(services) == ["xsuaa"]
    first, second = services["xsuaa"]
    assert (first["name"], first["label"], first["plan"]) == ("a", "xsuaa", "application")
    assert first["credentials"] == second["credentials"] == xsuaa_key
    assert "xsuaa" in first["tags"]


def test_vcap_two_instances_need_a_name(
    monkeypatch: pytest.MonkeyPatch, xsuaa_key: dict, client_credential: Credential
) -> None:
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(("xsuaa", "uaa-one", xsuaa_key), ("xsuaa", "uaa-two", xsuaa_key)),
    )
    with pytest.raises(BindingError) as info:
        select_vcap_service("xsuaa")
    message = str(info.value)
    assert "uaa-one" in message
    assert "uaa-two" in message
    assert "name=" in message
    assert xsuaa_key["clientid"] not in message
    assert_clean_error(info.value, secret_fragments(client_credential))
    assert select_vcap_service("xsuaa", "uaa-two")["clientid"] == xsuaa_key["clientid"]


def test_vcap_missing_label_lists_candidates(
    monkeypatch: pytest.MonkeyPatch, xsuaa_key: dict, credstore_key: dict
) -> None:
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(("xsuaa", "uaa-one", xsuaa_key), ("credstore", "cs-one", credstore_key)),
    )
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_vcap_services(label="destination")
    assert "'destination'" in str(info.value)
    assert "credstore" in str(info.value)
    assert "xsuaa" in str(info.value)
    with pytest.raises(BindingError) as info:
        select_vcap_service("xsuaa", name="uaa-two")
    assert "'uaa-two'" in str(info.value)
    assert "uaa-one" in str(info.value)


def test_vcap_instance_found_by_tag(monkeypatch: pytest.MonkeyPatch, xsuaa_key: dict) -> None:
    services = json.loads(vcap_services(("user-provided", "my-ups", xsuaa_key)))
    services["user-provided"][0]["tags"] = ["xsuaa"]
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(services))
    assert select_vcap_service("xsuaa")["clientid"] == xsuaa_key["clientid"]


def test_vcap_services_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    with pytest.raises(BindingError, match="VCAP_SERVICES is not set"):
        mrequests.MtlsOAuth2.from_vcap_services()
    with pytest.raises(BindingError, match="VCAP_SERVICES is not set"):
        mhttpx.MtlsOAuth2.from_vcap_services(label="credstore", namespace="x")


def test_vcap_services_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCAP_SERVICES", '{"xsuaa": [{"credentials": {"key": "SECRETSECRET"')
    with pytest.raises(BindingError, match="VCAP_SERVICES is not valid JSON") as info:
        select_vcap_service("xsuaa")
    assert "SECRETSECRET" not in str(info.value)
    monkeypatch.setenv("VCAP_SERVICES", "[]")
    with pytest.raises(BindingError, match="JSON object"):
        select_vcap_service("xsuaa")


# -- Kubernetes -------------------------------------------------------------------------------


def test_kubelet_layout_is_exact(xsuaa_key: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(tmp_path / "my-xsuaa", xsuaa_key)
    entries = sorted(os.listdir(directory))
    stamps = [e for e in entries if TIMESTAMP_DIR.match(e)]
    assert len(stamps) == 1
    stamp = stamps[0]
    assert (directory / stamp).is_dir()
    assert not (directory / stamp).is_symlink()
    assert os.readlink(directory / "..data") == stamp
    assert "..data_tmp" not in entries
    visible = [e for e in entries if not e.startswith("..")]
    assert sorted(os.listdir(directory / stamp)) == visible
    for name in visible:
        assert os.readlink(directory / name) == f"..data/{name}"
        assert (directory / stamp / name).is_file()
        assert not (directory / stamp / name).is_symlink()
    assert oct((directory / stamp / "key").stat().st_mode & 0o777) == oct(0o644)
    assert (directory / "clientid").read_text() == xsuaa_key["clientid"]
    assert (directory / "type").read_text() == "xsuaa"


def test_metadata_text_format(credstore_key: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(tmp_path / "cs", credstore_key, binding_type="credstore")
    metadata = json.loads((directory / ".metadata").read_text())
    properties = {p["name"]: p for p in metadata["credentialProperties"]}
    assert set(properties) == set(credstore_key)
    assert properties["encryption"]["format"] == "json"
    assert all(p["format"] == "text" for n, p in properties.items() if n != "encryption")
    assert json.loads((directory / "encryption").read_text()) == credstore_key["encryption"]
    meta = {p["name"]: p["format"] for p in metadata["metaDataProperties"]}
    assert {"instance_name", "plan", "label", "type"} <= set(meta)
    assert meta["type"] == "text"
    assert (directory / "instance_name").read_text() == "cs"
    assert (directory / "label").read_text() == "credstore"


def test_metadata_json_container_format(xsuaa_key: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(tmp_path / "x", xsuaa_key, metadata="json")
    metadata = json.loads((directory / ".metadata").read_text())
    assert metadata["credentialProperties"] == [
        {"name": "credentials", "format": "json", "container": True}
    ]
    assert json.loads((directory / "credentials").read_text()) == xsuaa_key
    assert not (directory / "clientid").exists()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="kubelet-metadata-text"),
        pytest.param({"metadata": "json"}, id="kubelet-metadata-json"),
        pytest.param({"kubelet": False}, id="plain-metadata-text"),
        pytest.param({"metadata": None, "kubelet": False}, id="flat"),
        pytest.param({"metadata": None}, id="kubelet-flat"),
        pytest.param({"metadata": None, "single_file": "credentials.json"}, id="credentials.json"),
        pytest.param({"metadata": None, "single_file": "binding.json"}, id="binding.json"),
    ],
)
def test_kubernetes_layouts_read_back(
    options: dict[str, Any], credstore_key: dict, tmp_path: Path
) -> None:
    directory = write_kubernetes_binding(
        tmp_path / "cs", credstore_key, binding_type="credstore", **options
    )
    parsed = BindingSource.from_input(directory).read()
    assert parsed.kind == "credstore"
    assert parsed.client_id == CREDSTORE_ID
    assert parsed.certificate == credstore_key["certificate"]
    assert parsed.key == credstore_key["key"]
    assert dict(parsed.encryption) == credstore_key["encryption"]
    assert parsed.source == str(directory)


def test_writer_rejects_bad_options(xsuaa_key: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single_file"):
        write_kubernetes_binding(tmp_path / "a", xsuaa_key, single_file="credentials.json")
    with pytest.raises(ValueError, match="file name"):
        write_kubernetes_binding(tmp_path / "b", {"../escape": "x"})
    plain = write_kubernetes_binding(tmp_path / "c", xsuaa_key, kubelet=False)
    with pytest.raises(ValueError, match=r"\.\.data"):
        rotate_kubernetes_binding(plain, xsuaa_key)


@pytest.mark.parametrize("module", MODULES)
def test_from_kubernetes(
    module: ModuleType,
    isolated_env: Path,
    xsuaa_key: dict,
    credstore_key: dict,
    credstore_server: TokenServer,
    client_id: str,
) -> None:
    write_kubernetes_binding(isolated_env / "my-xsuaa", xsuaa_key)
    write_kubernetes_binding(isolated_env / "my-credstore", credstore_key, binding_type="credstore")
    verify = credstore_server.ca_pem
    auth = module.MtlsOAuth2.from_kubernetes(name="my-xsuaa", verify=verify)
    assert call(module, auth, credstore_server)["client_id"] == client_id
    auth = module.MtlsOAuth2.from_kubernetes(label="xsuaa", verify=verify)
    assert call(module, auth, credstore_server)["client_id"] == client_id
    auth = module.MtlsOAuth2.from_kubernetes(
        name="my-credstore", label="credstore", namespace=NAMESPACE, verify=verify
    )
    assert call(module, auth, credstore_server)["namespace"] == NAMESPACE
    assert [r.client_id for r in credstore_server.token_requests] == [
        client_id,
        client_id,
        CREDSTORE_ID,
    ]


def test_from_kubernetes_ambiguous_or_missing(isolated_env: Path, xsuaa_key: dict) -> None:
    write_kubernetes_binding(isolated_env / "uaa-one", xsuaa_key)
    write_kubernetes_binding(isolated_env / "uaa-two", xsuaa_key, metadata="json")
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_kubernetes(label="xsuaa")
    assert "uaa-one" in str(info.value)
    assert "uaa-two" in str(info.value)
    assert "name=" in str(info.value)
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_kubernetes()
    assert "2 Kubernetes bindings" in str(info.value)
    with pytest.raises(BindingError, match="no Kubernetes service binding found named 'nope'"):
        mrequests.MtlsOAuth2.from_kubernetes(name="nope")
    with pytest.raises(BindingError, match="of type 'credstore'"):
        mrequests.MtlsOAuth2.from_kubernetes(label="credstore")


def test_from_kubernetes_without_service_binding_root(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERVICE_BINDING_ROOT")
    with pytest.raises(BindingError, match="unset"):
        mrequests.MtlsOAuth2.from_kubernetes()


@pytest.mark.parametrize("legacy", [0, 1], ids=["sapbtp", "sapcp"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"metadata": None, "kubelet": True}, id="flat"),
        pytest.param({"metadata": None, "single_file": "credentials.json"}, id="credentials.json"),
        pytest.param({"metadata": None, "single_file": "binding.json"}, id="binding.json"),
    ],
)
def test_from_kubernetes_legacy_roots(
    isolated_env: Path,
    legacy: int,
    options: dict[str, Any],
    xsuaa_key: dict,
    token_server: TokenServer,
    client_id: str,
) -> None:
    root = Path(binding_module._LEGACY_ROOTS[legacy])
    write_kubernetes_binding(root / "xsuaa" / "my-uaa", xsuaa_key, binding_type=None, **options)
    auth = mhttpx.MtlsOAuth2.from_kubernetes(
        name="my-uaa", label="xsuaa", verify=token_server.ca_pem
    )
    assert call(mhttpx, auth, token_server)["client_id"] == client_id


# -- discovery --------------------------------------------------------------------------------


class ConfigurableServer(TokenServer):
    """A token server whose discovery document a test decides (read per request)."""

    document: dict[str, Any] | None = None

    @property
    def openid_configuration(self) -> dict[str, Any]:
        return super().openid_configuration if self.document is None else self.document


@pytest.fixture
def discovery_server(
    pki: PKI, client_credential: Credential, client_id: str
) -> Iterator[ConfigurableServer]:
    with ConfigurableServer(pki) as server:
        server.register_client(client_id, client_credential)
        yield server


@pytest.mark.parametrize("module", MODULES)
def test_discover_uses_mtls_endpoint_aliases(
    module: ModuleType,
    discovery_server: ConfigurableServer,
    client_credential: Credential,
    client_id: str,
) -> None:
    key = xsuaa_service_key(discovery_server, client_credential, client_id)
    # Without discovery this certurl would lead to a 404.
    key["certurl"] = discovery_server.url + "/not-here"
    discovery_server.document = {
        "issuer": discovery_server.issuer,
        "token_endpoint": discovery_server.token_url,
        "mtls_endpoint_aliases": {"token_endpoint": discovery_server.credstore_token_url},
    }
    auth = module.MtlsOAuth2.from_binding(key, verify=discovery_server.ca_pem, discover=True)
    assert auth.token_url == discovery_server.credstore_token_url
    call(module, auth, discovery_server)
    (request,) = discovery_server.token_requests
    assert request.path == CREDSTORE_TOKEN_PATH


@pytest.mark.parametrize("module", MODULES)
def test_discover_with_the_default_document(
    module: ModuleType, xsuaa_key: dict, token_server: TokenServer
) -> None:
    key = {**xsuaa_key, "certurl": token_server.url + "/not-here"}
    auth = module.MtlsOAuth2.from_binding(key, verify=token_server.ca_pem, discover=True)
    assert auth.token_url == token_server.token_url
    assert call(module, auth, token_server)["client_id"] == xsuaa_key["clientid"]


def test_discover_falls_back_to_token_endpoint(
    discovery_server: ConfigurableServer, client_credential: Credential, client_id: str
) -> None:
    discovery_server.document = {
        "issuer": discovery_server.issuer,
        "token_endpoint": discovery_server.credstore_token_url,
    }
    context = client_credential_context(client_credential, discovery_server)
    assert discover_token_endpoint(discovery_server.url, context) == (
        discovery_server.credstore_token_url
    )
    discovery_server.document["mtls_endpoint_aliases"] = {"other": "x"}
    assert discover_token_endpoint(discovery_server.url + "/", context) == (
        discovery_server.credstore_token_url
    )
    key = xsuaa_service_key(discovery_server, client_credential, client_id)
    auth = mrequests.MtlsOAuth2.from_binding(key, verify=discovery_server.ca_pem, discover=True)
    assert auth.token_url == discovery_server.credstore_token_url
    assert call(mrequests, auth, discovery_server)["client_id"] == client_id


def client_credential_context(credential: Credential, server: TokenServer) -> Any:
    from mtls_auth import ClientCertificate

    certificate = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)
    return certificate.ssl_context(server.ca_pem)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"issuer": "x"}, id="no-endpoint"),
        pytest.param({"token_endpoint": "http://localhost/oauth/token"}, id="plain-http"),
        pytest.param({"mtls_endpoint_aliases": {"token_endpoint": 5}}, id="not-a-string"),
        pytest.param(["not", "an", "object"], id="not-an-object"),
    ],
)
def test_discover_rejects_bad_documents(
    document: Any, discovery_server: ConfigurableServer, client_credential: Credential
) -> None:
    discovery_server.document = document
    context = client_credential_context(client_credential, discovery_server)
    with pytest.raises(BindingError, match="OpenID configuration"):
        discover_token_endpoint(discovery_server.url, context)


def test_discover_needs_https_and_a_reachable_server(
    discovery_server: ConfigurableServer, client_credential: Credential
) -> None:
    context = client_credential_context(client_credential, discovery_server)
    with pytest.raises(BindingError, match="https"):
        discover_token_endpoint("http://localhost:1", context)
    with pytest.raises(BindingError, match="discovery"):
        discover_token_endpoint(discovery_server.url + "/missing", context)


# -- rotation: BindingSource.changed ------------------------------------------------------------


def test_changed_detects_a_rewritten_service_key(
    pki: PKI, xsuaa_key: dict, token_server: TokenServer, tmp_path: Path, client_id: str
) -> None:
    path = _file_of(tmp_path, xsuaa_key)
    source = BindingSource.from_input(path)
    assert source.rereadable
    first = source.read()
    assert not source.changed()
    newer = pki.issue_client(client_id)
    path.write_text(json.dumps(xsuaa_service_key(token_server, newer, client_id)))
    assert source.changed()
    second = source.read()
    assert second.certificate == newer.chain_pem != first.certificate
    assert not source.changed()
    path.unlink()
    assert source.changed()


def test_changed_is_false_for_mappings_and_text(xsuaa_key: dict) -> None:
    for binding in (xsuaa_key, json.dumps(xsuaa_key)):
        source = BindingSource.from_input(binding)
        assert not source.rereadable
        source.read()
        assert not source.changed()


def _file_times(directory: Path) -> dict[str, tuple[int, int]]:
    times = {}
    for name in os.listdir(directory):
        if not name.startswith(".."):
            info = (directory / name).stat()
            times[name] = (info.st_size, info.st_mtime_ns)
    return times


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param("text", id="text"),
        pytest.param("json", id="json"),
        pytest.param(None, id="flat"),
    ],
)
def test_changed_detects_a_kubelet_swap_with_same_sizes_and_mtimes(
    xsuaa_key: dict, tmp_path: Path, metadata: Any
) -> None:
    directory = write_kubernetes_binding(tmp_path / "b", xsuaa_key, metadata=metadata)
    source = BindingSource.from_input(directory)
    assert source.read().client_id == "sb-client!t1"
    assert not source.changed()
    before = _file_times(directory)
    old_stamp = os.readlink(directory / "..data")

    # Same length client id, so every file keeps its size; the instance guid is
    # a fresh uuid4 of the same length too.
    rotate_kubernetes_binding(
        directory, {**xsuaa_key, "clientid": "sb-client!t2"}, metadata=metadata
    )
    for name, (_, mtime_ns) in before.items():
        os.utime(directory / name, ns=(mtime_ns, mtime_ns))
    assert _file_times(directory) == before
    new_stamp = os.readlink(directory / "..data")
    assert new_stamp != old_stamp
    assert not (directory / old_stamp).exists()
    assert not (directory / "..data_tmp").exists()
    assert [e for e in os.listdir(directory) if TIMESTAMP_DIR.match(e)] == [new_stamp]

    assert source.changed()
    assert source.read().client_id == "sb-client!t2"
    assert not source.changed()


def test_rotation_removes_files_that_are_gone(credstore_key: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(tmp_path / "b", credstore_key, binding_type="credstore")
    assert (directory / "encryption").is_symlink()
    rotate_kubernetes_binding(
        directory, _without(credstore_key, "encryption"), binding_type="credstore"
    )
    assert not os.path.lexists(directory / "encryption")
    assert BindingSource.from_input(directory).read().encryption == {}


@pytest.mark.parametrize("module", MODULES)
def test_kubelet_rotation_end_to_end(
    module: ModuleType,
    pki: PKI,
    token_server: TokenServer,
    client_credential: Credential,
    client_id: str,
    tmp_path: Path,
) -> None:
    directory = write_kubernetes_binding(
        tmp_path / "b", xsuaa_service_key(token_server, client_credential, client_id)
    )
    auth = module.MtlsOAuth2.from_binding(directory, verify=token_server.ca_pem, check_interval=0.0)
    newer = pki.issue_client(client_id)  # same subject: still bound to client_id
    try:
        if module is mrequests:
            session = requests.Session()
            session.mount(token_server.url, auth.adapter())

            def get() -> int:
                return session.get(token_server.resource_url, auth=auth, timeout=10).status_code
        else:
            client = httpx.Client(auth=auth, transport=auth.transport(), timeout=10)

            def get() -> int:
                return client.get(token_server.resource_url).status_code

        assert get() == 200
        assert token_server.token_requests[-1].thumbprint == client_credential.thumbprint
        rotate_kubernetes_binding(directory, xsuaa_service_key(token_server, newer, client_id))
        assert get() == 200
        assert auth.certificate.thumbprint == newer.thumbprint
        assert token_server.token_requests[-1].thumbprint == newer.thumbprint
        assert token_server.resource_requests[-1].thumbprint == newer.thumbprint
        assert token_server.token_request_count == 2
    finally:
        (session if module is mrequests else client).close()
        auth.close()


# -- helpers' own shape ---------------------------------------------------------------------


def test_credstore_key_shape(credstore_key: dict, credstore_server: TokenServer) -> None:
    assert credstore_key["username"] == CREDSTORE_ID
    assert credstore_key["oauth_token_url"] == credstore_server.credstore_token_url
    assert credstore_key["url"] == credstore_server.url + "/api/v1/credentials"
    assert credstore_key["key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert set(credstore_key["encryption"]) == {"client_private_key", "server_public_key"}


def test_expires_at_rendering(credstore_server: TokenServer, client_credential: Credential) -> None:
    moment = datetime.datetime(2022, 4, 23, 9, 24, 3, 300000, tzinfo=datetime.timezone.utc)
    key = credstore_service_key(
        credstore_server, client_credential, CREDSTORE_ID, expires_at=moment, encryption=False
    )
    assert key["expires_at"] == "2022-04-23T09:24:03.3Z"


def test_mapping_inputs_are_not_mutated(xsuaa_key: dict, token_server: TokenServer) -> None:
    snapshot = json.dumps(xsuaa_key, sort_keys=True)
    wrapped: Mapping[str, Any] = {"credentials": xsuaa_key}
    mrequests.MtlsOAuth2.from_binding(wrapped, verify=token_server.ca_pem).close()
    assert json.dumps(xsuaa_key, sort_keys=True) == snapshot
