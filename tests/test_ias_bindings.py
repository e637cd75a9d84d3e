"""SAP Cloud Identity Services (IAS, label ``identity``) bindings: shapes, URLs and refusals.

The token URL is ``<url>/oauth2/token`` or the binding's ``token_endpoint``;
the browser-facing authorization URL ``<url>/oauth2/authorize`` or its
``authorization_endpoint``. X509_ATTESTED bindings (no key: zero-trust
identity) and secret-only ones are refused with a `BindingError` that says
what to use instead. `mtls-auth check` recognises IAS bindings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import BindingError, check_binding
from mtls_auth._binding import parse_credentials
from mtls_auth.cli import main as cli_main
from mtls_auth.testing import PKI, vcap_services

MODULES = pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx"])
_PKI = PKI()
_CREDENTIAL = _PKI.issue_client("ias-app")


def ias(**changes: Any) -> dict[str, Any]:
    binding = {
        "clientid": "7e4c0b9a-ias-client",
        "url": "https://mytenant.accounts.ondemand.com",
        "certificate": _CREDENTIAL.chain_pem,
        "key": _CREDENTIAL.key_pem,
        "credential-type": "X509_GENERATED",
        "app_tid": "5a9e8f2d-app-tid",
        "domains": ["accounts.ondemand.com"],
    }
    binding.update(changes)
    return {k: v for k, v in binding.items() if v is not None}


def test_ias_shape_and_urls() -> None:
    parsed = parse_credentials(ias(), "test")
    assert parsed.kind == "ias"
    assert parsed.client_id == "7e4c0b9a-ias-client"
    assert parsed.token_url == "https://mytenant.accounts.ondemand.com/oauth2/token"
    assert parsed.authorization_url == "https://mytenant.accounts.ondemand.com/oauth2/authorize"
    assert parsed.app_tid == "5a9e8f2d-app-tid"
    assert "accounts.ondemand.com" in parsed.domains
    assert not parsed.needs_namespace


def test_ias_endpoints_from_the_binding_win() -> None:
    parsed = parse_credentials(
        ias(
            token_endpoint="https://mytenant.accounts.ondemand.com/custom/token",
            authorization_endpoint="https://login.example.com/authorize",
        ),
        "test",
    )
    assert parsed.token_url == "https://mytenant.accounts.ondemand.com/custom/token"
    assert parsed.authorization_url == "https://login.example.com/authorize"


@pytest.mark.parametrize("credential_type", ["X509_GENERATED", "X509_PROVIDED", None])
def test_x509_credential_types_are_accepted(credential_type: str | None) -> None:
    assert parse_credentials(ias(**{"credential-type": credential_type}), "t").kind == "ias"


def test_recognised_by_host_without_ias_only_fields() -> None:
    minimal = ias(app_tid=None, domains=None)
    assert parse_credentials(minimal, "t").kind == "ias"
    xsuaa_like = {**minimal, "url": "https://x.authentication.eu10.hana.ondemand.com"}
    assert parse_credentials({**xsuaa_like, "uaadomain": "x"}, "t").kind == "xsuaa"


def test_x509_attested_says_what_is_missing_and_what_to_use() -> None:
    attested = ias(**{"credential-type": "X509_ATTESTED", "key": None})
    with pytest.raises(BindingError, match="X509_ATTESTED") as caught:
        parse_credentials(attested, "test")
    message = str(caught.value)
    assert "no private key" in message
    assert "X509_GENERATED" in message


@pytest.mark.parametrize(
    "secret_only",
    [
        {"credential-type": "SECRET", "clientsecret": "s3cr3t", "key": None},
        {"credential-type": None, "clientsecret": "s3cr3t", "key": None, "certificate": None},
        {"credential-type": "binding-secret", "clientsecret": "s3cr3t"},
    ],
)
def test_secret_only_ias_binding_is_refused(secret_only: dict[str, Any]) -> None:
    with pytest.raises(BindingError, match="client secret") as caught:
        parse_credentials(ias(**secret_only), "test")
    assert "s3cr3t" not in str(caught.value)


def test_unknown_credential_type_and_missing_fields() -> None:
    with pytest.raises(BindingError, match="does not know"):
        parse_credentials(ias(**{"credential-type": "X509_SOMETHING"}), "t")
    with pytest.raises(BindingError, match="'key'"):
        parse_credentials(ias(key=None), "t")
    with pytest.raises(BindingError, match="neither 'url' nor 'token_endpoint'"):
        parse_credentials(ias(url=None, app_tid="x"), "t")


@MODULES
def test_from_binding_and_from_vcap_services_identity(
    module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = module.MtlsOAuth2.from_binding(ias())
    assert auth.token_url == "https://mytenant.accounts.ondemand.com/oauth2/token"
    assert auth.client_id == "7e4c0b9a-ias-client"
    monkeypatch.setenv("VCAP_SERVICES", vcap_services(("identity", "my-ias", ias())))
    from_vcap = module.MtlsOAuth2.from_vcap_services(
        "identity", resource="urn:sap:identity:application:provider:name:orders"
    )
    assert from_vcap.token_url == auth.token_url
    assert "resource=['urn:sap:identity:application:provider:name:orders']" in repr(from_vcap)
    # A tenant of the IAS application: app_tid on the same token URL.
    tenant = from_vcap.for_tenant(app_tid="0d4e-other-tenant")
    assert tenant.token_url == auth.token_url


def test_check_recognises_ias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, parsed = check_binding(ias())
    assert parsed is not None
    assert report.kind == "ias"
    assert report.token_url == "https://mytenant.accounts.ondemand.com/oauth2/token"
    path = tmp_path / "ias-key.json"
    path.write_text(json.dumps(ias()))
    assert cli_main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ias" in out
    assert "/oauth2/token" in out
