"""Tenant routing and resources in the token request, without a network.

`for_tenant(subdomain)` replaces the first DNS label of the token URL's host;
`zone_id` adds the ``x-zid`` header; `app_tid` the form field. Bad values are
an `ArgumentError` (an `MtlsAuthError` and a `ValueError`) and nothing is sent.
`resource=` adds one RFC 8707 ``resource`` field per value. Each tenant and each
resource set has its own cache key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import ArgumentError, ClientCertificate, InsecureTransportError, MtlsAuthError
from mtls_auth._request import TokenRequest
from mtls_auth._tenant import Tenant
from mtls_auth.testing import PKI

MODULES = pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx"])
PROVIDER = "https://provider.authentication.cert.eu10.hana.ondemand.com/oauth/token"
_PKI = PKI()
_CREDENTIAL = _PKI.issue_client("tenants")
CERT = ClientCertificate.from_pem(_CREDENTIAL.chain_pem, _CREDENTIAL.key_pem)


def _form(request: TokenRequest, url: str = PROVIDER) -> dict[str, list[str]]:
    return parse_qs(request.http_request(url, "sb-app!t1").body.decode("ascii"))


@pytest.mark.parametrize(
    ("base", "subdomain", "routed"),
    [
        (PROVIDER, "customer-a", PROVIDER.replace("provider.", "customer-a.")),
        (
            "https://provider.authentication.cert.eu10.hana.ondemand.com:8443/oauth/token",
            "Customer-B",
            "https://customer-b.authentication.cert.eu10.hana.ondemand.com:8443/oauth/token",
        ),
        (
            "https://tenant.accounts.ondemand.com/oauth2/token",
            "other",
            "https://other.accounts.ondemand.com/oauth2/token",
        ),
        ("https://a.b.c/x?y=1", "z9", "https://z9.b.c/x?y=1"),
    ],
)
def test_subdomain_replaces_the_first_label_only(base: str, subdomain: str, routed: str) -> None:
    request = TokenRequest.create().replace(tenant=Tenant.create(subdomain))
    sent = request.http_request(base, "client")
    assert sent.url == routed
    assert "x-zid" not in sent.headers
    assert request.token_url(base) == routed


INVALID_SUBDOMAINS = [
    "",
    "a.b",
    "a/b",
    "a@b",
    "a:1",
    "a b",
    "-a",
    "a-",
    "ä",
    "a" * 64,
    "a\nb",
    "a_b",
    "..",
]


@MODULES
@pytest.mark.parametrize("subdomain", INVALID_SUBDOMAINS)
def test_invalid_subdomains_are_refused_before_anything_is_sent(
    module: Any, subdomain: str
) -> None:
    auth = module.MtlsOAuth2(PROVIDER, "client", CERT)
    with pytest.raises(ArgumentError, match="subdomain") as caught:
        auth.for_tenant(subdomain)
    assert isinstance(caught.value, MtlsAuthError)
    assert isinstance(caught.value, ValueError)


@MODULES
@pytest.mark.parametrize(
    "token_url",
    [
        "https://127.0.0.1:8443/oauth/token",
        "https://[::1]/oauth/token",
        "https://localhost/oauth/token",
        "https://auth.example/oauth/token",
    ],
)
def test_a_token_url_that_cannot_be_routed_by_subdomain(module: Any, token_url: str) -> None:
    auth = module.MtlsOAuth2(token_url, "client", CERT)
    with pytest.raises(ArgumentError, match="three labels or more"):
        auth.for_tenant("customer-a")
    # zone id and app_tid need no routing by host
    assert auth.for_tenant(zone_id="z1").token_url == token_url


@MODULES
def test_exactly_one_tenant_argument(module: Any) -> None:
    auth = module.MtlsOAuth2(PROVIDER, "client", CERT)
    with pytest.raises(TypeError, match="exactly one"):
        auth.for_tenant()
    with pytest.raises(TypeError, match="exactly one"):
        auth.for_tenant("a", zone_id="b")
    with pytest.raises(TypeError, match="exactly one"):
        auth.for_tenant(zone_id="b", app_tid="c")


@pytest.mark.parametrize("value", ["", "a b", "a\r\nb", "z" * 129, "ünï"])
def test_zone_ids_and_app_tids_are_validated(value: str) -> None:
    with pytest.raises(ArgumentError, match="zone_id"):
        Tenant.create(zone_id=value)
    with pytest.raises(ArgumentError, match="app_tid"):
        Tenant.create(app_tid=value)


def test_zone_id_header_and_app_tid_field() -> None:
    zoned = TokenRequest.create().replace(tenant=Tenant.create(zone_id="2c1e-zone"))
    sent = zoned.http_request(PROVIDER, "client")
    assert sent.url == PROVIDER
    assert sent.headers["x-zid"] == "2c1e-zone"
    assert "app_tid" not in _form(zoned)
    ias = TokenRequest.create().replace(tenant=Tenant.create(app_tid="9f1b-app"))
    assert _form(ias)["app_tid"] == ["9f1b-app"]
    assert "x-zid" not in ias.http_request(PROVIDER, "client").headers


def test_resources_are_one_field_each_and_part_of_the_key() -> None:
    one = TokenRequest.create(resource="urn:sap:identity:application:provider:name:orders")
    two = TokenRequest.create(resource=["urn:a", "urn:b"])
    assert _form(one)["resource"] == ["urn:sap:identity:application:provider:name:orders"]
    assert _form(two)["resource"] == ["urn:a", "urn:b"]
    keys = {r.cache_key(PROVIDER, "c", "t") for r in (one, two, TokenRequest.create())}
    assert len(keys) == 3
    for bad in ("", ["urn:a", ""], [5], "a\nb"):
        with pytest.raises(ArgumentError, match="resource"):
            TokenRequest.create(resource=bad)  # type: ignore[arg-type]


def test_each_tenant_has_its_own_key_and_bucket() -> None:
    base = TokenRequest.create()
    requests = [
        base,
        base.replace(tenant=Tenant.create("a")),
        base.replace(tenant=Tenant.create("b")),
        base.replace(tenant=Tenant.create(zone_id="a")),
        base.replace(tenant=Tenant.create(app_tid="a")),
    ]
    keys = [r.cache_key(PROVIDER, "c", "t") for r in requests]
    assert len(set(keys)) == len(keys)
    assert [k[0] for k in keys] == ["client"] + ["tenant"] * 4


@MODULES
def test_the_same_tenant_gives_the_same_object(module: Any) -> None:
    auth = module.MtlsOAuth2(PROVIDER, "client", CERT, scope="read")
    first = auth.for_tenant("customer-a")
    assert auth.for_tenant("customer-a") is first
    assert auth.for_tenant("CUSTOMER-A") is not None
    assert auth.for_tenant("customer-b") is not first
    assert type(first) is type(auth)
    assert first._client is auth._client
    assert first.token_url == PROVIDER.replace("provider.", "customer-a.")
    assert auth.token_url == PROVIDER
    assert "tenant='customer-a'" in repr(first)
    assert "scope='read'" in repr(first)  # the rest of the request stays
    assert auth.for_tenant(zone_id="zone-1") is auth.for_tenant(zone_id="zone-1")


@MODULES
def test_a_routed_host_outside_allowed_hosts_is_refused(module: Any) -> None:
    auth = module.MtlsOAuth2(PROVIDER, "client", CERT, allowed_hosts=["api.example.com"])
    with pytest.raises(InsecureTransportError, match="allowed_hosts"):
        auth.for_tenant("customer-a")
    allowed = module.MtlsOAuth2(
        PROVIDER, "client", CERT, allowed_hosts=["*.authentication.cert.eu10.hana.ondemand.com"]
    )
    assert allowed.for_tenant("customer-a").token_url.startswith("https://customer-a.")


@given(st.text(max_size=70))
def test_any_subdomain_text_routes_or_is_refused(text: str) -> None:
    try:
        tenant = Tenant.create(text)
    except ArgumentError:
        return
    routed = tenant.token_url(PROVIDER)
    assert routed.endswith(".authentication.cert.eu10.hana.ondemand.com/oauth/token")
    assert routed.count(".") == PROVIDER.count(".")


@MODULES
def test_max_tenants_is_validated(module: Any) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ArgumentError, match="max_tenants"):
            module.MtlsOAuth2(PROVIDER, "client", CERT, max_tenants=bad)
