"""The token server's OpenID discovery documents and issuers, for the provider and each tenant.

On ``localhost`` the app serves the provider's XSUAA-shaped document. On a
tenant's host it serves that tenant's: XSUAA's on
``<subdomain>.authentication.cert.mtls.test`` and
``<subdomain>.authentication.mtls.test``, SAP Identity Services' on
``<tenant>.accounts.mtls.test`` (token endpoint ``/oauth2/token``, keys at
``/oauth2/certs``). Every document names the endpoints, the grants of the
app's grant table, and ``mtls_endpoint_aliases`` (RFC 8705).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._oauth import (
    IAS_AUTHORIZE_PATH,
    IAS_JWKS_PATH,
    IAS_TOKEN_PATH,
    JWKS_PATH,
    XSUAA_AUTHORIZE_PATH,
    XSUAA_TOKEN_PATH,
)
from ._tenants import IAS_DOMAIN, LOGIN_DOMAIN, TENANT_DOMAIN, host_url, label_under

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["openid_document", "provider_document", "tenant_document"]


def openid_document(
    *,
    issuer: str,
    token_endpoint: str,
    authorization_endpoint: str,
    jwks_uri: str,
    grants: Iterable[str],
) -> dict[str, Any]:
    """One discovery document; the mTLS token endpoint is the token endpoint itself."""
    return {
        "issuer": issuer,
        "token_endpoint": token_endpoint,
        "authorization_endpoint": authorization_endpoint,
        "jwks_uri": jwks_uri,
        "grant_types_supported": list(grants),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": True,
        "mtls_endpoint_aliases": {"token_endpoint": token_endpoint},
    }


def provider_document(base_url: str, grants: Iterable[str]) -> dict[str, Any]:
    """The provider's (XSUAA-shaped) document for the server at `base_url`."""
    token_url = base_url + XSUAA_TOKEN_PATH
    return openid_document(
        issuer=token_url,
        token_endpoint=token_url,
        authorization_endpoint=base_url + XSUAA_AUTHORIZE_PATH,
        jwks_uri=base_url + JWKS_PATH,
        grants=grants,
    )


def tenant_document(
    base_url: str, host: str | None, grants: Iterable[str]
) -> dict[str, Any] | None:
    """The document of the tenant whose host `host` is (Host header), or None if it is none."""
    subdomain = label_under(host, (TENANT_DOMAIN, LOGIN_DOMAIN))
    if subdomain is not None:
        tenant_url = host_url(base_url, f"{subdomain}.{TENANT_DOMAIN}")
        return openid_document(
            issuer=tenant_url + XSUAA_TOKEN_PATH,
            token_endpoint=tenant_url + XSUAA_TOKEN_PATH,
            authorization_endpoint=host_url(base_url, f"{subdomain}.{LOGIN_DOMAIN}")
            + XSUAA_AUTHORIZE_PATH,
            jwks_uri=tenant_url + JWKS_PATH,
            grants=grants,
        )
    ias_tenant = label_under(host, (IAS_DOMAIN,))
    if ias_tenant is not None:
        ias_url = host_url(base_url, f"{ias_tenant}.{IAS_DOMAIN}")
        return openid_document(
            issuer=ias_url,
            token_endpoint=ias_url + IAS_TOKEN_PATH,
            authorization_endpoint=ias_url + IAS_AUTHORIZE_PATH,
            jwks_uri=ias_url + IAS_JWKS_PATH,
            grants=grants,
        )
    return None
