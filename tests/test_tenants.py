"""Tenant tokens end to end, for requests, httpx sync and httpx async, against the test kit.

The binding is a provider's (``provider.authentication.cert.mtls.test``); the
server routes each token request to the tenant it names (host, ``x-zid`` or
``app_tid``), issues tokens that carry their tenant, and its resource answers
which tenant a token belongs to. Covered: isolation (a tenant's call never
carries another's token), one token request per tenant however many callers
start cold, reuse across ``for_tenant`` calls, one rotation for all tenants,
the Identity Services shape and ``resource`` fields.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from clients import Client

from mtls_auth.testing import (
    PKI,
    Credential,
    TokenServer,
    ias_service_key,
    rotate_kubernetes_binding,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from mtls_auth.testing.plugin import CLIENT_ID, IAS_CLIENT_ID


@pytest.fixture
def provider_binding(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> dict[str, Any]:
    return xsuaa_service_key(mtls_server, mtls_client_certificate, CLIENT_ID, subdomain="provider")


def _subdomains(results: list[Any]) -> list[str | None]:
    return [result.body.get("subdomain") for result in results]


def test_each_tenant_gets_its_own_token(
    client: Client, mtls_server: TokenServer, provider_binding: dict[str, Any], mtls_clock: Any
) -> None:
    auth = client.from_binding(provider_binding, verify=mtls_server.ca_pem, clock=mtls_clock)
    assert auth.token_url == mtls_server.tenant_token_url("provider")
    tenant_a = auth.for_tenant("customer-a")
    tenant_b = auth.for_tenant("customer-b")
    assert tenant_a.token_url == mtls_server.tenant_token_url("customer-a")
    calls = [(auth, "provider"), (tenant_a, "customer-a"), (tenant_b, "customer-b")] * 2
    for who, expected in calls:
        result = client.call(who)
        assert result.unwrap() == 200
        assert result.body.get("subdomain", "provider") == expected
    # One token each: the provider's and every tenant's are never mixed up.
    hosts = sorted(r.subdomain for r in mtls_server.token_requests)
    assert hosts == ["customer-a", "customer-b", "provider"]
    by_tenant: dict[str, set[int | None]] = {}
    for record in mtls_server.resource_requests:
        by_tenant.setdefault(record.subdomain or "provider", set()).add(record.token_index)
    assert all(len(indexes) == 1 for indexes in by_tenant.values())
    assert len({next(iter(i)) for i in by_tenant.values()}) == 3
    # Asking again (per incoming request) gives the same object and no fetch.
    assert auth.for_tenant("customer-a") is tenant_a
    assert client.call(auth.for_tenant("customer-a")).unwrap() == 200
    assert mtls_server.token_request_count == 3
    assert "tenant='customer-a'" in repr(tenant_a)


def test_zone_id_and_app_tid_route_on_the_same_token_url(
    client: Client, mtls_server: TokenServer, provider_binding: dict[str, Any], mtls_clock: Any
) -> None:
    auth = client.from_binding(provider_binding, verify=mtls_server.ca_pem, clock=mtls_clock)
    zone = mtls_server.add_tenant("customer-z")
    result = client.call(auth.for_tenant(zone_id=zone))
    assert result.unwrap() == 200
    assert (result.body["zone_id"], result.body["subdomain"]) == (zone, "customer-z")
    (record,) = mtls_server.token_requests
    assert record.zone_id == zone
    assert record.subdomain == "customer-z"
    assert record.host.startswith("provider.")  # the same token URL, routed by x-zid


def test_identity_services_binding_and_app_tid(
    client: Client,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    mtls_clock: Any,
) -> None:
    binding = ias_service_key(mtls_server, mtls_client_certificate, IAS_CLIENT_ID)
    resource = "urn:sap:identity:application:provider:name:orders"
    auth = client.from_binding(
        binding, verify=mtls_server.ca_pem, clock=mtls_clock, resource=resource
    )
    assert auth.token_url == mtls_server.ias_token_url()
    assert client.call(auth).unwrap() == 200
    tenant = auth.for_tenant(app_tid="0a1b2c3d-tenant")
    result = client.call(tenant)
    assert result.unwrap() == 200
    assert result.body["app_tid"] == "0a1b2c3d-tenant"
    provider_request, tenant_request = mtls_server.token_requests
    assert provider_request.path == tenant_request.path == "/oauth2/token"
    assert tenant_request.app_tid == "0a1b2c3d-tenant"
    assert tenant_request.resources == provider_request.resources == (resource,)


@pytest.mark.parametrize("client", ["requests", "httpx-sync", "httpx-async"], indirect=True)
def test_one_token_request_per_tenant_at_a_cold_start(
    client: Client, mtls_server: TokenServer, provider_binding: dict[str, Any], mtls_clock: Any
) -> None:
    """100 tenants, 10 callers each, all cold: exactly 100 token requests."""
    auth = client.from_binding(provider_binding, verify=mtls_server.ca_pem, clock=mtls_clock)
    tenants = [f"tenant-{i:03d}" for i in range(100)]
    # Each tenant's ten callers next to each other: they run at the same time.
    order = [name for name in tenants for _ in range(10)]
    calls = [auth.for_tenant(name) for name in order]
    url = mtls_server.resource_url
    with client.session() as session:
        if not session.is_async:
            with ThreadPoolExecutor(50) as pool:
                answers = list(pool.map(lambda who: session.request("GET", url, auth=who), calls))
        else:

            async def everyone() -> list[Any]:
                slots = asyncio.Semaphore(50)

                async def one(who: Any) -> Any:
                    async with slots:
                        return await session.raw.get(url, auth=who)

                try:
                    return list(await asyncio.gather(*(one(who) for who in calls)))
                finally:
                    await auth.aclose()

            answers = session._loop.run(everyone())
    assert [a.status_code for a in answers] == [200] * 1000
    assert mtls_server.token_request_count == 100
    assert sorted(r.subdomain for r in mtls_server.token_requests) == tenants
    for answer, name in zip(answers, order):
        assert answer.json()["subdomain"] == name  # never another tenant's token


@pytest.mark.mtls_server(token_lifetime=3600)
def test_rotation_is_shared_by_every_tenant(
    client: Client,
    mtls_server: TokenServer,
    mtls_pki: PKI,
    mtls_client_certificate: Credential,
    provider_binding: dict[str, Any],
    mtls_clock: Any,
    tmp_path: Path,
) -> None:
    directory = write_kubernetes_binding(tmp_path / "xsuaa", provider_binding)
    auth = client.from_binding(
        directory, verify=mtls_server.ca_pem, clock=mtls_clock, check_interval=0
    )
    tenants = [auth.for_tenant("customer-a"), auth.for_tenant("customer-b")]
    for who in (auth, *tenants):
        assert client.call(who, present="auth").unwrap() == 200
    first = {r.thumbprint for r in mtls_server.token_requests}
    assert first == {mtls_client_certificate.thumbprint}
    common_name = mtls_client_certificate.subject.split(",")[0].removeprefix("CN=")
    rotated = mtls_pki.issue_client(common_name)
    new_binding = {**provider_binding, "certificate": rotated.chain_pem, "key": rotated.key_pem}
    rotate_kubernetes_binding(directory, new_binding)
    mtls_server.revoke_certificate(mtls_client_certificate.thumbprint)
    for who in (auth, *tenants):
        assert client.call(who, present="auth").unwrap() == 200
    later = mtls_server.token_requests[3:]
    assert sorted(r.subdomain or "" for r in later) == ["customer-a", "customer-b", "provider"]
    assert {r.thumbprint for r in later} == {rotated.thumbprint}
    assert all(t._client is auth._client for t in tenants)


def test_cli_tenant_options(
    mtls_server: TokenServer,
    provider_binding: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mtls_auth.cli import main

    path = tmp_path / "key.json"
    path.write_text(json.dumps(provider_binding))
    ca = tmp_path / "ca.pem"
    ca.write_text(mtls_server.ca_pem)
    common = ["--binding", str(path), "--verify", str(ca), "--cert-bound"]
    assert main(["request", mtls_server.resource_url, *common, "--tenant", "customer-c"]) == 0
    assert json.loads(capsys.readouterr().out)["subdomain"] == "customer-c"
    zone = mtls_server.add_tenant("customer-d")
    assert main(["request", mtls_server.resource_url, *common, "--zone-id", zone]) == 0
    assert json.loads(capsys.readouterr().out)["subdomain"] == "customer-d"
    assert main(["check", str(path), "--verify", str(ca), "--fetch", "--tenant", "e"]) == 0
    assert mtls_server.token_requests[-1].subdomain == "e"
    with pytest.raises(SystemExit) as usage:  # one tenant option at most
        main(["request", mtls_server.resource_url, *common, "--tenant", "a", "--zone-id", "z"])
    assert usage.value.code == 3
    bad = main(["request", mtls_server.resource_url, *common, "--tenant", "not.one.label"])
    assert bad == 2
    assert "not a single DNS label" in capsys.readouterr().err
