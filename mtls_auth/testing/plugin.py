"""The mtls-auth pytest plugin: a loopback mTLS token server and bindings that point at it.

Installing mtls-auth registers this module under the ``pytest11`` entry point
``mtls_auth``, so the fixtures below are available in every test without any
import. Where plugin autoloading is off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``),
load it with ``-p mtls_auth.testing.plugin`` or, in the root ``conftest.py``,
``pytest_plugins = ["mtls_auth.testing.plugin"]``.

Fixtures (``pytest --fixtures`` shows their full documentation):

=============================== ========= =====================================================
``mtls_pki``                    session   the generated `PKI` (root, intermediate, server)
``mtls_client_certificate``     session   a client `Credential` issued by the intermediate
``mtls_clock``                  function  a `FakeClock` shared by the server and your auth
``mtls_server``                 function  a started `TokenServer`; see the ``mtls_server`` marker;
                                          the kit's tenant names resolve during the test
``mtls_loopback_names``         function  the kit's tenant names resolve to 127.0.0.1 (for a
                                          test that starts its own `TokenServer`)
``mtls_xsuaa_binding``          function  an XSUAA x509 service key dict pointing at the server
``mtls_xsuaa_service_key_file`` function  that service key as a JSON file under ``tmp_path``
``mtls_ias_binding``            function  an SAP Identity Services (IAS) binding dict, tenant
                                          ``mtls-test`` of the server
``mtls_credstore_binding``      function  a Credential Store ``oauth:mtls`` binding dict
``mtls_auth_kwargs``            function  ``verify=`` and ``clock=`` for `MtlsOAuth2` and friends
=============================== ========= =====================================================

The marker ``@pytest.mark.mtls_server(token_lifetime=..., jwt_tokens=...,
cert_bound=..., strict_tenants=...)`` configures the server of one test (or a
class or module, with ``pytestmark``); the closest marker wins for each option.

Client ids registered on ``mtls_server`` for ``mtls_client_certificate``:
``CLIENT_ID`` (XSUAA, in ``mtls_xsuaa_binding``), ``IAS_CLIENT_ID`` (in
``mtls_ias_binding``) and ``CREDSTORE_CLIENT_ID``. Every one is valid in every
tenant. Tenants (``mtls_server.tenant_token_url("customer-a")``, an ``x-zid``
header, an IAS ``app_tid``), user grants (``mtls_server.mint_user_token()``
for jwt-bearer, ``mtls_server.login(url)`` for the authorization code,
``TEST_USER``/``TEST_PASSWORD`` for the password grant) work with no setup.

This module imports neither requests nor httpx: use whichever your code uses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from ._clock import FakeClock
    from ._loopback import LoopbackNames
    from ._pki import PKI, Credential
    from ._server import TokenServer

# The kit (PKI, server, bindings) is imported inside the fixtures, on first use:
# pytest loads this plugin in every run of every project that has mtls-auth
# installed, and a run that uses none of its fixtures should not pay for it.

__all__ = ["CLIENT_ID", "CREDSTORE_CLIENT_ID", "IAS_CLIENT_ID"]

#: The XSUAA client id `mtls_server` accepts for `mtls_client_certificate`.
CLIENT_ID = "sb-mtls-test!t1"
#: The Credential Store client id (the binding's ``username``) `mtls_server` accepts.
CREDSTORE_CLIENT_ID = "mtls-test-credstore.0.aGVsbG8tbXRscy1hdXRo="
#: The SAP Identity Services client id (a UUID, as IAS makes them) `mtls_server` accepts.
IAS_CLIENT_ID = "12ef6f96-f233-538d-ba3d-80ac93d49af0"

_MARKER = "mtls_server"
_MARKER_HELP = (
    "mtls_server(token_lifetime=3600, jwt_tokens=False, cert_bound=False, "
    "strict_tenants=False): configure the mtls_server fixture of mtls-auth for this test"
)
_BOOL_OPTIONS = ("jwt_tokens", "cert_bound", "strict_tenants")
_OPTIONS = ("token_lifetime", *_BOOL_OPTIONS)
#: The ``pytest11`` entry point name in setup.cfg.
_ENTRY_POINT = "mtls_auth"


class _Alias:
    """Holds this plugin's other name in the plugin manager; has no hooks or fixtures.

    The entry point registers this module as ``mtls_auth``, while
    ``pytest_plugins = ["mtls_auth.testing.plugin"]`` and ``-p`` look it up by
    its module name, and pluggy refuses the same module under a second name
    ("Plugin already registered under a different name"). With the other name
    taken by this placeholder, pytest sees the plugin as loaded and moves on,
    so both ways of loading it work, alone or together.
    """

    def __repr__(self) -> str:
        return f"<alias of {__name__}>"


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    # Runs when this module is registered: give its other name to an `_Alias`.
    if plugin is not sys.modules.get(__name__):
        return
    name = manager.get_name(plugin)
    for other in (_ENTRY_POINT, __name__):
        if other != name and not manager.is_blocked(other) and manager.get_plugin(other) is None:
            manager.register(_Alias(), other)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)


def _server_options(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """The ``mtls_server`` marker options, the closest marker winning for each."""
    options: dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers(_MARKER))):  # farthest first
        if marker.args:
            pytest.fail(
                f"@pytest.mark.mtls_server takes keyword arguments only ({', '.join(_OPTIONS)})",
                pytrace=False,
            )
        unknown = sorted(set(marker.kwargs) - set(_OPTIONS))
        if unknown:
            pytest.fail(
                f"@pytest.mark.mtls_server got unknown option(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(_OPTIONS)}",
                pytrace=False,
            )
        options.update(marker.kwargs)
    lifetime = options.get("token_lifetime")
    if "token_lifetime" in options and (
        isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0
    ):
        pytest.fail(
            f"@pytest.mark.mtls_server(token_lifetime=...) must be a positive number of "
            f"seconds, not {lifetime!r}",
            pytrace=False,
        )
    for name in _BOOL_OPTIONS:
        if name in options and not isinstance(options[name], bool):
            pytest.fail(
                f"@pytest.mark.mtls_server({name}=...) must be True or False",
                pytrace=False,
            )
    return options


@pytest.fixture(scope="session")
def mtls_pki() -> PKI:
    """A throw-away PKI made in memory once per test session.

    A root CA (the only trust anchor), an intermediate CA that issues the
    server and client certificates, and a server certificate for ``localhost``,
    ``127.0.0.1`` and the kit's tenant names (``*.authentication.cert.mtls.test``,
    ``*.authentication.mtls.test``, ``*.accounts.mtls.test``). Use it to issue
    more clients (`PKI.issue_client`) or ready-made bad ones
    (`PKI.expired_client`, `PKI.untrusted_client`, `PKI.mismatched_key`). No
    key is ever written to disk.
    """
    from ._pki import PKI

    return PKI()


@pytest.fixture(scope="session")
def mtls_client_certificate(mtls_pki: PKI) -> Credential:
    """The client certificate the bindings carry (RSA 2048, valid for 7 days).

    Issued by `mtls_pki`'s intermediate; `chain_pem` is leaf plus intermediate,
    `key_pem` the PKCS#1 key, `thumbprint` its RFC 8705 ``x5t#S256``.
    `mtls_server` accepts it for ``CLIENT_ID`` (``"sb-mtls-test!t1"``) and
    ``CREDSTORE_CLIENT_ID``.
    """
    return mtls_pki.issue_client("mtls-auth test client")


@pytest.fixture
def mtls_clock() -> FakeClock:
    """A fresh `FakeClock` for this test, already driving `mtls_server`.

    Pass it to your auth as ``clock=`` (or use `mtls_auth_kwargs`) and call
    ``mtls_clock.advance(seconds)`` to make tokens stale or expired on both
    sides, without sleeping.
    """
    from ._clock import FakeClock

    return FakeClock()


@pytest.fixture
def mtls_server(
    request: pytest.FixtureRequest,
    mtls_pki: PKI,
    mtls_client_certificate: Credential,
    mtls_clock: FakeClock,
) -> Iterator[TokenServer]:
    """A started loopback mTLS token server for this test, stopped afterwards.

    It listens on ``https://localhost:PORT``, requires a client certificate
    chaining to `mtls_pki`'s root, and serves the XSUAA token endpoint
    (``token_url``), the IAS one (``/oauth2/token``), the Credential Store one
    (``credstore_token_url``) with its credentials API (``credentials_url``),
    and a bearer-protected ``resource_url``. ``CLIENT_ID``, ``IAS_CLIENT_ID``
    and ``CREDSTORE_CLIENT_ID`` are registered for `mtls_client_certificate`;
    its clock is `mtls_clock`.

    For the whole test, `loopback_names` is entered: every name under
    ``authentication.cert.mtls.test``, ``authentication.mtls.test`` and
    ``accounts.mtls.test`` resolves to 127.0.0.1 (for requests, httpx sync and
    async alike), so ``tenant_url(subdomain)``, ``tenant_token_url``,
    ``login_url`` and ``ias_url(tenant)`` reach this server, routed to that
    tenant; other names resolve as usual.

    What tests use most:

    - ``token_requests``: every token request received (`TokenRequest`: form,
      client id, namespace, certificate thumbprint, time); ``resource_requests``
      likewise for the resource (`ResourceRequest`, with the HTTP status).
    - ``inject(Fault.status(503), times=1)``: make the next token request(s)
      fail; also `Fault.delay`, `Fault.reset`, `Fault.malformed_json`, `Fault.body`.
    - ``revoke_all()``: the resource refuses every token issued so far (401).
    - ``token_lifetime``: ``expires_in`` of the next tokens (settable).
    - ``ca_pem``: the root CA, for ``verify=``; ``resource_url``, ``token_url``.
    - tenants: ``tenant_token_url("customer-a")``, ``zone_id_of``,
      ``add_tenant``; records and the resource's answer name each token's
      ``subdomain``, ``zone_id``, ``app_tid``, ``user`` and ``grant_type``.
    - users: ``mint_user_token()`` (jwt-bearer assertions), ``login(url)``
      (authorization code with PKCE), ``add_user`` (password grant),
      ``revoke_refresh_tokens()``, ``deny_next_login()``.

    Configure it with ``@pytest.mark.mtls_server(token_lifetime=600,
    jwt_tokens=True, cert_bound=True, strict_tenants=True)``: JWTs carrying
    ``cnf.x5t#S256`` from the XSUAA and IAS endpoints, a resource that accepts
    a token only over a connection presenting the certificate it was issued to
    (RFC 8705), and only tenants added with ``add_tenant``.
    """
    from ._loopback import loopback_names
    from ._server import TokenServer

    options = _server_options(request.node)
    server = TokenServer(mtls_pki, clock=mtls_clock, **options)
    server.register_client(CLIENT_ID, mtls_client_certificate)
    server.register_client(IAS_CLIENT_ID, mtls_client_certificate)
    server.register_client(CREDSTORE_CLIENT_ID, mtls_client_certificate)
    with loopback_names(), server:
        yield server


@pytest.fixture
def mtls_loopback_names() -> Iterator[LoopbackNames]:
    """The kit's tenant names resolve to 127.0.0.1 for this test (`loopback_names`).

    ``mtls_server`` does this by itself; use this fixture in a test that
    starts its own `TokenServer` and calls its ``tenant_url``, ``login_url``
    or ``ias_url``. Other names resolve normally.
    """
    from ._loopback import loopback_names

    with loopback_names() as names:
        yield names


@pytest.fixture
def mtls_xsuaa_binding(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> dict[str, Any]:
    """An XSUAA x509 service key (a dict, as ``cf service-key`` shows it) for `mtls_server`.

    ``clientid`` is ``CLIENT_ID``, ``certificate`` the client chain PEM,
    ``key`` its PKCS#1 key, ``credential-type`` ``X509_GENERATED``, and
    ``certurl`` / ``url`` the server, so ``MtlsOAuth2.from_binding(binding,
    **mtls_auth_kwargs)`` fetches tokens from it. A new dict per test: edit it
    freely to test your handling of broken bindings.
    """
    from ._bindings import xsuaa_service_key

    return xsuaa_service_key(mtls_server, mtls_client_certificate, CLIENT_ID)


@pytest.fixture
def mtls_xsuaa_service_key_file(mtls_xsuaa_binding: dict[str, Any], tmp_path: Path) -> Path:
    """`mtls_xsuaa_binding` written as JSON to ``tmp_path / "xsuaa-service-key.json"``.

    Returns the path, for code that reads a service-key file (owner-only
    permissions; it holds the throw-away test key and lives in the test's
    temporary directory only).
    """
    import json
    import os

    path = tmp_path / "xsuaa-service-key.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(mtls_xsuaa_binding, file, indent=2)
    return path


@pytest.fixture
def mtls_ias_binding(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> dict[str, Any]:
    """An SAP Identity Services (IAS) binding (a dict) for tenant ``mtls-test`` of `mtls_server`.

    ``clientid`` is ``IAS_CLIENT_ID``, ``url`` ``mtls_server.ias_url()``
    (``https://mtls-test.accounts.mtls.test:PORT``), ``certificate`` and
    ``key`` the client's, ``credential-type`` ``X509_GENERATED``, ``app_tid``
    the tenant's zone id (``mtls_server.zone_id_of("mtls-test")``),
    ``domains`` ``["accounts.mtls.test"]``, plus ``token_endpoint`` and
    ``authorization_endpoint``. A new dict per test.
    """
    from ._bindings import ias_service_key

    return ias_service_key(mtls_server, mtls_client_certificate, IAS_CLIENT_ID)


@pytest.fixture
def mtls_credstore_binding(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> dict[str, Any]:
    """A Credential Store ``oauth:mtls`` binding (a dict) for `mtls_server`.

    ``username`` is ``CREDSTORE_CLIENT_ID``, ``oauth_token_url`` the server's
    Credential Store token endpoint, ``url`` its credentials API
    (``mtls_server.credentials_url``), and ``encryption`` the payload keys of
    ``mtls_server.credstore``, so encrypted round trips work::

        with credstore_session(mtls_credstore_binding, namespace="ns1",
                               **mtls_auth_kwargs) as session:
            session.post("password", json={"name": "db", "value": "s3cret"})

    Tokens are issued per namespace. Payload ``iat`` checks on the server use
    the wall clock (as the client's cipher does), while token expiry follows
    `mtls_clock`.
    """
    import time

    from ._bindings import credstore_service_key

    api = mtls_server.credstore
    api.clock = time.time  # JWE iat is wall-clock time on the client side too
    return credstore_service_key(
        mtls_server,
        mtls_client_certificate,
        CREDSTORE_CLIENT_ID,
        encryption=api.encryption_block(),
    )


@pytest.fixture
def mtls_auth_kwargs(mtls_server: TokenServer, mtls_clock: FakeClock) -> dict[str, Any]:
    """Keyword arguments to splat into any mtls-auth constructor aimed at `mtls_server`.

    ``{"verify": mtls_server.ca_pem, "clock": mtls_clock}``: trust the test
    root CA only, and share the test's clock, for ``MtlsOAuth2(...)``,
    ``MtlsOAuth2.from_binding(...)`` (requests and httpx),
    ``credstore_session(...)`` and ``credstore_client(...)``.
    """
    return {"verify": mtls_server.ca_pem, "clock": mtls_clock}
