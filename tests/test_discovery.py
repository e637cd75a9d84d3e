"""OpenID discovery of the token endpoint: mtls_endpoint_aliases, fallbacks, bad documents.

`from_binding(..., discover=True)` asks the server's
``/.well-known/openid-configuration`` (over mTLS) for the token endpoint and
prefers its ``mtls_endpoint_aliases``; the document is decided per test
(conftest's `discovery_server`), and the found endpoint is used for a real token
request and resource call, for requests, httpx sync and httpx async.
"""

from __future__ import annotations

from typing import Any

import pytest
from clients import Client

from mtls_auth import BindingError, ClientCertificate
from mtls_auth._discovery import discover_token_endpoint
from mtls_auth.testing import Credential, TokenServer, xsuaa_service_key
from mtls_auth.testing._server import CREDSTORE_TOKEN_PATH
from mtls_auth.testing.plugin import CLIENT_ID


@pytest.fixture
def mtls_server(discovery_server: TokenServer) -> TokenServer:
    """In this module the kit's server is conftest's `discovery_server` (document settable)."""
    return discovery_server


def resource(client: Client, auth: Any) -> dict[str, Any]:
    """One GET of the protected resource through the auth's own adapter / transport."""
    result = client.call(auth, present="auth")
    assert result.status == 200, result
    body: dict[str, Any] = result.body
    return body


def test_discover_uses_mtls_endpoint_aliases(
    client: Client,
    discovery_server: Any,
    mtls_client_certificate: Credential,
) -> None:
    key = xsuaa_service_key(discovery_server, mtls_client_certificate, CLIENT_ID)
    # Without discovery this certurl would lead to a 404.
    key["certurl"] = discovery_server.url + "/not-here"
    discovery_server.document = {
        "issuer": discovery_server.issuer,
        "token_endpoint": discovery_server.token_url,
        "mtls_endpoint_aliases": {"token_endpoint": discovery_server.credstore_token_url},
    }
    auth = client.from_binding(key, verify=discovery_server.ca_pem, discover=True)
    assert auth.token_url == discovery_server.credstore_token_url
    resource(client, auth)
    (request,) = discovery_server.token_requests
    assert request.path == CREDSTORE_TOKEN_PATH


def test_discover_with_the_default_document(
    client: Client, mtls_xsuaa_binding: dict, mtls_server: TokenServer
) -> None:
    key = {**mtls_xsuaa_binding, "certurl": mtls_server.url + "/not-here"}
    auth = client.from_binding(key, verify=mtls_server.ca_pem, discover=True)
    assert auth.token_url == mtls_server.token_url
    assert resource(client, auth)["client_id"] == mtls_xsuaa_binding["clientid"]


@pytest.mark.parametrize("client", ["requests"], indirect=True)
def test_discover_falls_back_to_token_endpoint(
    client: Client, discovery_server: Any, mtls_client_certificate: Credential
) -> None:
    discovery_server.document = {
        "issuer": discovery_server.issuer,
        "token_endpoint": discovery_server.credstore_token_url,
    }
    context = client_credential_context(mtls_client_certificate, discovery_server)
    assert discover_token_endpoint(discovery_server.url, context) == (
        discovery_server.credstore_token_url
    )
    discovery_server.document["mtls_endpoint_aliases"] = {"other": "x"}
    assert discover_token_endpoint(discovery_server.url + "/", context) == (
        discovery_server.credstore_token_url
    )
    key = xsuaa_service_key(discovery_server, mtls_client_certificate, CLIENT_ID)
    auth = client.from_binding(key, verify=discovery_server.ca_pem, discover=True)
    assert auth.token_url == discovery_server.credstore_token_url
    assert resource(client, auth)["client_id"] == CLIENT_ID


def client_credential_context(credential: Credential, server: TokenServer) -> Any:
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
    document: Any, discovery_server: Any, mtls_client_certificate: Credential
) -> None:
    discovery_server.document = document
    context = client_credential_context(mtls_client_certificate, discovery_server)
    with pytest.raises(BindingError, match="OpenID configuration"):
        discover_token_endpoint(discovery_server.url, context)


def test_discover_needs_https_and_a_reachable_server(
    discovery_server: Any, mtls_client_certificate: Credential
) -> None:
    context = client_credential_context(mtls_client_certificate, discovery_server)
    with pytest.raises(BindingError, match="https"):
        discover_token_endpoint("http://localhost:1", context)
    with pytest.raises(BindingError, match="discovery"):
        discover_token_endpoint(discovery_server.url + "/missing", context)
