"""Test your own code against a real mTLS token server, without an SAP account.

`mtls_auth.testing` is the public testing kit of mtls-auth, in the spirit of
respx or pytest-httpserver: a PKI generated in memory, a loopback HTTPS server
that requires and verifies client certificates and speaks the XSUAA and
Credential Store token endpoints, and bindings shaped like the real ones that
point at it. Nothing needs network access beyond ``127.0.0.1``, and no private
key is ever committed or written outside the test's temporary directory.

The pytest plugin
-----------------

Installing mtls-auth registers a pytest plugin (entry point ``mtls_auth``,
module `mtls_auth.testing.plugin`); its fixtures are available at once:

``mtls_pki`` (session)
    The generated `PKI`: root CA, intermediate CA, localhost server certificate.
``mtls_client_certificate`` (session)
    The client `Credential` the bindings carry, issued by the intermediate.
``mtls_clock``
    A `FakeClock` shared by the server and, through ``clock=``, your auth.
``mtls_server``
    A started `TokenServer`, stopped after the test. Configure it with
    ``@pytest.mark.mtls_server(token_lifetime=..., jwt_tokens=..., cert_bound=...)``.
``mtls_xsuaa_binding`` / ``mtls_xsuaa_service_key_file``
    An XSUAA x509 service key dict pointing at the server / the same written
    to a JSON file under ``tmp_path`` (the fixture returns its `Path`).
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

Without pytest, or for other shapes of binding, use the building blocks:
`PKI` and `Credential`, `TokenServer` (a context manager), `FakeClock`, and
the binding helpers `xsuaa_service_key`, `credstore_service_key`,
`vcap_services`, `write_kubernetes_binding` and `rotate_kubernetes_binding`.

This package imports neither requests nor httpx, and importing it does not
import pytest.
"""

from __future__ import annotations

from ._bindings import (
    credstore_service_key,
    rotate_kubernetes_binding,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from ._clock import FakeClock
from ._pki import PKI, Credential
from ._server import Fault, ResourceRequest, TokenRequest, TokenServer

__all__ = [
    "PKI",
    "Credential",
    "FakeClock",
    "Fault",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
    "credstore_service_key",
    "rotate_kubernetes_binding",
    "vcap_services",
    "write_kubernetes_binding",
    "xsuaa_service_key",
]
