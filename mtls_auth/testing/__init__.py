"""Test your own code against a real mTLS token server, without an SAP account.

`mtls_auth.testing` is the public testing kit of mtls-auth, in the spirit of
respx or pytest-httpserver: a PKI generated in memory, a loopback HTTPS server
that requires and verifies client certificates and speaks the XSUAA, SAP
Identity Services (IAS) and Credential Store token endpoints (with tenants and
user grants), and bindings shaped like the real ones that point at it. Nothing
needs network access beyond ``127.0.0.1``, and no private key is ever
committed or written outside the test's temporary directory.

The pytest plugin
-----------------

Installing mtls-auth registers a pytest plugin (entry point ``mtls_auth``,
module `mtls_auth.testing.plugin`); its fixtures are available at once:

``mtls_pki`` (session)
    The generated `PKI`: root CA, intermediate CA, a server certificate for
    localhost and the tenant names below.
``mtls_client_certificate`` (session)
    The client `Credential` the bindings carry, issued by the intermediate.
``mtls_clock``
    A `FakeClock` shared by the server and, through ``clock=``, your auth.
``mtls_server``
    A started `TokenServer`, stopped after the test; the tenant names below
    resolve to it for the whole test (`loopback_names`). Configure it with
    ``@pytest.mark.mtls_server(token_lifetime=..., jwt_tokens=...,
    cert_bound=..., strict_tenants=...)``.
``mtls_loopback_names``
    `loopback_names` entered for the test, for tests that start their own server.
``mtls_xsuaa_binding`` / ``mtls_xsuaa_service_key_file``
    An XSUAA x509 service key dict pointing at the server / the same written
    to a JSON file under ``tmp_path`` (the fixture returns its `Path`).
``mtls_ias_binding``
    An IAS binding dict for the server's IAS tenant ``mtls-test``.
``mtls_credstore_binding``
    A Credential Store ``oauth:mtls`` binding dict, payload encryption included.
``mtls_auth_kwargs``
    ``{"verify": mtls_server.ca_pem, "clock": mtls_clock}``, to splat into
    ``MtlsOAuth2(...)``, ``from_binding(...)``, ``credstore_session(...)``.

A test as you would write it (requests here; httpx works the same way with
``httpx.Client(auth=auth, transport=auth.transport())``)::

    import requests
    from mtls_auth.requests import MtlsOAuth2
    from mtls_auth.testing import Fault

    def test_my_client_survives_a_token_outage(
        mtls_server, mtls_xsuaa_binding, mtls_auth_kwargs, mtls_clock
    ):
        auth = MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
        session = requests.Session()
        session.auth = auth
        session.mount(mtls_server.url, auth.adapter())  # the server wants the cert too

        mtls_server.inject(Fault.status(503))  # the first token request fails...
        assert session.get(mtls_server.resource_url).status_code == 200  # ...and is retried
        assert len(mtls_server.token_requests) == 2

        mtls_clock.advance(mtls_server.token_lifetime)  # the token expires
        assert session.get(mtls_server.resource_url).status_code == 200
        assert mtls_server.token_requests[-1].client_id == auth.client_id

Controlling the server
----------------------

`TokenServer` records every request (``token_requests`` as `TokenRequest`,
``resource_requests`` as `ResourceRequest`; neither ever holds a token),
queues faults for the next token requests with ``inject(Fault.status(503))``,
`Fault.delay`, `Fault.reset`, `Fault.malformed_json` or `Fault.body`,
invalidates tokens with ``revoke_all()`` or ``revoke_certificate(thumbprint)``,
and takes ``token_lifetime``, ``jwt_tokens`` and ``cert_bound`` switches. It
serves ``token_url`` (XSUAA), ``credstore_token_url`` and ``credentials_url``
(Credential Store, JWE payloads), and the bearer-protected ``resource_url``;
``ca_pem`` is the only CA to trust.

Tenants
-------

The server answers on the same port for tenants under reserved ``.test``
names (RFC 6761: they never resolve publicly; `loopback_names` makes them
resolve to 127.0.0.1 by wrapping `socket.getaddrinfo`, which requests, httpx
and httpx's async transports all use; the ``mtls_server`` fixture enters it)::

    TENANT_DOMAIN  https://<subdomain>.authentication.cert.mtls.test:PORT/oauth/token
    LOGIN_DOMAIN   https://<subdomain>.authentication.mtls.test:PORT/oauth/authorize
    IAS_DOMAIN     https://<tenant>.accounts.mtls.test:PORT/oauth2/token (and /oauth2/authorize)

``server.tenant_url(subdomain)``, ``tenant_token_url``, ``login_url`` and
``ias_url(tenant)`` / ``ias_token_url`` build them. A token request's tenant
is its ``x-zid`` header (a zone id), else at the IAS endpoint its ``app_tid``
form field, else the first label of its host; without any it is for the
provider (``localhost``, as before). Unknown tenants are made on first use
(zone id: ``server.zone_id_of(subdomain)``, a UUID5 of the subdomain), unless
``strict_tenants`` is on: then only those given to ``add_tenant`` are known,
others get 401 ``invalid_client``. Every registered client id is valid in
every tenant. JWTs carry ``zid``, ``ext_attr.zdn`` and at IAS ``app_tid``;
``resource`` form fields (RFC 8707) may repeat and join ``aud``. Token
requests are recorded with ``host``, ``subdomain``, ``zone_id``, ``app_tid``,
``resources`` and ``grant_type``; resource requests, the resource's JSON answer
and ``token_info`` name each token's ``subdomain``, ``zone_id``, ``app_tid``,
``user`` and ``grant_type`` (the answer for a provider's client-credentials
token without resources stays as it always was).

Users
-----

Besides client credentials the server knows these grants (the client always
authenticates with its certificate):

- ``urn:ietf:params:oauth:grant-type:jwt-bearer``: ``assertion`` is a user
  token from ``server.mint_user_token(sub, subdomain=...)`` (signed by a user
  key apart from the access-token key, ``server.user_jwks``), not expired on
  the server clock, of the request's tenant when both name one;
- ``authorization_code`` with PKCE S256: ``server.login(authorization_url)``
  logs ``TEST_USER`` in without a browser and returns the callback URL with
  the ``code`` (``deny_next_login()`` makes it an error); codes are single use
  and live 60 seconds; the token answer carries a ``refresh_token``;
- ``refresh_token``: for its client and tenant only; rotated on every use
  (``server.rotate_refresh_tokens``); ``server.revoke_refresh_tokens()``;
- ``password``: ``TEST_USER`` / ``TEST_PASSWORD``, or ``server.add_user``.

Errors are 400 ``invalid_grant`` with a description. No record's repr ever
shows an assertion, code, code verifier, refresh token or password.

A user flow as a test would write it (httpx here; `TEST_USER` logs in, the
code becomes a user token of tenant ``customer-a``)::

    import base64
    import hashlib
    import secrets
    from urllib.parse import parse_qs, urlencode, urlsplit

    import httpx
    from mtls_auth.httpx import MtlsTransport

    def test_a_login_gives_a_user_token(mtls_server, mtls_client_certificate):
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        callback_url = "https://app.example/callback"
        query = urlencode({
            "response_type": "code", "client_id": "sb-mtls-test!t1",
            "redirect_uri": callback_url, "state": "xyz",
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        login = mtls_server.login_url("customer-a") + "/oauth/authorize?" + query
        callback = mtls_server.login(login)  # no browser needed
        code = parse_qs(urlsplit(callback).query)["code"][0]

        credential = mtls_client_certificate
        transport = MtlsTransport(
            credential.chain_pem, credential.key_pem, verify=mtls_server.ca_pem
        )
        with httpx.Client(transport=transport) as client:
            tokens = client.post(mtls_server.tenant_token_url("customer-a"), data={
                "grant_type": "authorization_code", "client_id": "sb-mtls-test!t1",
                "code": code, "redirect_uri": callback_url, "code_verifier": verifier,
            }).json()
            bearer = {"Authorization": "Bearer " + tokens["access_token"]}
            answer = client.get(mtls_server.resource_url, headers=bearer).json()
        assert (answer["user"], answer["subdomain"]) == ("test-user", "customer-a")
        assert tokens["refresh_token"]

Building blocks
---------------

Without pytest, or for other shapes of binding, use the building blocks:
`PKI` and `Credential`, `TokenServer` (a context manager), `FakeClock`,
`loopback_names`, and the binding helpers `xsuaa_service_key` (with
``subdomain=`` for a tenant's binding), `ias_service_key`,
`credstore_service_key`, `vcap_services` (labels ``xsuaa``, ``identity``,
``credstore``), `write_kubernetes_binding` and `rotate_kubernetes_binding`.
`RedisServer` runs a real ``redis-server`` (or ``valkey-server``) on loopback
for tests of a shared token store (``token_store=redis.url``): stop, restart
and pause it to test your service through an outage.

This package imports neither requests nor httpx, and importing it does not
import pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ._bindings import (
        credstore_service_key,
        ias_service_key,
        rotate_kubernetes_binding,
        vcap_services,
        write_kubernetes_binding,
        xsuaa_service_key,
    )
    from ._clock import FakeClock
    from ._loopback import LoopbackNames, loopback_names
    from ._pki import PKI, Credential
    from ._redis import RedisServer
    from ._server import Fault, ResourceRequest, TokenRequest, TokenServer
    from ._tenants import IAS_DOMAIN, LOGIN_DOMAIN, TENANT_DOMAIN
    from ._users import TEST_PASSWORD, TEST_USER

#: Each public name and the module defining it. They load on first use, so the
#: pytest plugin (which every pytest run of a project with mtls-auth installed
#: loads) costs nothing until a test asks for one of its fixtures.
_LAZY = {
    "IAS_DOMAIN": "_tenants",
    "LOGIN_DOMAIN": "_tenants",
    "PKI": "_pki",
    "TENANT_DOMAIN": "_tenants",
    "TEST_PASSWORD": "_users",
    "TEST_USER": "_users",
    "Credential": "_pki",
    "FakeClock": "_clock",
    "Fault": "_server",
    "LoopbackNames": "_loopback",
    "RedisServer": "_redis",
    "ResourceRequest": "_server",
    "TokenRequest": "_server",
    "TokenServer": "_server",
    "credstore_service_key": "_bindings",
    "ias_service_key": "_bindings",
    "loopback_names": "_loopback",
    "rotate_kubernetes_binding": "_bindings",
    "vcap_services": "_bindings",
    "write_kubernetes_binding": "_bindings",
    "xsuaa_service_key": "_bindings",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = [
    "IAS_DOMAIN",
    "LOGIN_DOMAIN",
    "PKI",
    "TENANT_DOMAIN",
    "TEST_PASSWORD",
    "TEST_USER",
    "Credential",
    "FakeClock",
    "Fault",
    "LoopbackNames",
    "RedisServer",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
    "credstore_service_key",
    "ias_service_key",
    "loopback_names",
    "rotate_kubernetes_binding",
    "vcap_services",
    "write_kubernetes_binding",
    "xsuaa_service_key",
]
