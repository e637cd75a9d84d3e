"""Shared fixtures on top of the test kit's pytest plugin, and the hypothesis profiles.

The servers, PKI, clock and bindings come from the public test kit
(`mtls_auth.testing.plugin`, loaded through its entry point): ``mtls_pki``,
``mtls_client_certificate``, ``mtls_clock``, ``mtls_server`` (configured with
``@pytest.mark.mtls_server(...)``), ``mtls_xsuaa_binding``,
``mtls_credstore_binding`` and ``mtls_auth_kwargs``. No private key is ever
committed or written to disk. This file adds what many tests need beyond them:

- ``client``: the three HTTP clients (ids ``requests``, ``httpx-sync``,
  ``httpx-async``) as one `clients.Client` harness, bound to ``mtls_server``;
  ``clients`` gives the three at once.
- ``other_client_id``, ``credstore_id``, ``credstore_binding``: a second
  registered client id, a Credential Store client id that needs form-encoding,
  and the kit's Credential Store binding for it.
- ``module_server`` / ``shared_mtls_server``: one kit server for a whole module,
  for modules that override ``mtls_server`` with it for speed.
- ``rotated_certificate``, ``client_common_name``: the kit's client certificate
  renewed (same subject), and its CN; ``certificate``: it loaded as a
  `ClientCertificate`; ``key_type_credentials``: one credential per key type.
- ``discovery_server``: a server whose OpenID discovery document a test decides.
- ``isolated_env``: no binding in the environment (VCAP_SERVICES, Kubernetes roots).

The ``mtls-auth`` command's runner and its session-wide server and bindings
(``run``, ``run_inprocess``, ``cli_env``) are the plugin module ``cli_harness.py``.

Two things apply to the whole suite:

- **The secret canary** (plugin module ``canary.py``, registered below): every
  test fails if an access token or a private key line it produced shows up in
  a log record, a warning, ``http.client`` debug output, the repr of a library
  object, or an exception message.
- **Hypothesis profiles.** ``dev`` (the default: 20 examples per property, a 2 s
  deadline per example), ``ci`` (50 examples; `.ci/run` sets it) and ``fuzz``
  (10,000 examples per property, same deadline), chosen with the environment
  variable ``HYPOTHESIS_PROFILE``. The dedicated, non-CI fuzzing run is
  ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings

# The suite's helper modules assert too: rewrite them (the plugins below are anyway).
pytest.register_assert_rewrite(
    "clients", "credstore_harness", "fuzz_strategies", "leaks", "loopback", "rotating", "wire"
)

from clients import CLIENT_NAMES, Client, every_client  # noqa: E402

from mtls_auth import ClientCertificate  # noqa: E402
from mtls_auth.testing import PKI, Credential, FakeClock, TokenServer  # noqa: E402
from mtls_auth.testing.plugin import CLIENT_ID, CREDSTORE_CLIENT_ID  # noqa: E402

pytest_plugins = ["canary", "cli_harness"]

#: A second client id, registered by `other_client_id` for the kit's certificate.
OTHER_CLIENT_ID = "sb-other-client!t2"
#: The client id of `credstore_id`.
CREDSTORE_ID = "0fcb3a97-7b67-4bf8-b7e0-6a6c04cf7d3f.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="


# -- the three clients ---------------------------------------------------------------------


@pytest.fixture(params=CLIENT_NAMES)
def client(
    request: pytest.FixtureRequest,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    mtls_clock: FakeClock,
) -> Iterator[Client]:
    """requests, httpx sync or httpx async, calling `mtls_server` the way a user would.

    Its auths default to `mtls_server`'s token URL and CA, ``CLIENT_ID``, the
    kit's client certificate and `mtls_clock`; its connections present that
    certificate. A module adapts it by overriding this fixture with
    ``client.bind(retry=..., call_options=...)``; a test picks libraries with
    ``@pytest.mark.parametrize("client", [...], indirect=True)``.
    """
    with Client(
        request.param,
        mtls_server,
        mtls_client_certificate,
        client_id=CLIENT_ID,
        clock=mtls_clock,
    ) as made:
        yield made


@pytest.fixture
def clients(
    mtls_server: TokenServer, mtls_client_certificate: Credential, mtls_clock: FakeClock
) -> Iterator[list[Client]]:
    """The three clients of `client` at once, for a test that needs them all."""
    with every_client(
        mtls_server, mtls_client_certificate, client_id=CLIENT_ID, clock=mtls_clock
    ) as made:
        yield made


# -- more of what the kit's server knows ------------------------------------------------------


@pytest.fixture(scope="module")
def module_server(mtls_pki: PKI, mtls_client_certificate: Credential) -> Iterator[TokenServer]:
    """The kit's server set up as `mtls_server` is, shared by the tests of one module.

    For a module whose many tests would each pay for a server start (about 50 ms)
    or for its Credential Store keys: it overrides `mtls_server` with
    `shared_mtls_server`. ``@pytest.mark.mtls_server`` options do not apply to it.
    """
    with TokenServer(mtls_pki) as server:
        server.register_client(CLIENT_ID, mtls_client_certificate)
        server.register_client(CREDSTORE_CLIENT_ID, mtls_client_certificate)
        yield server


@pytest.fixture
def shared_mtls_server(module_server: TokenServer, mtls_clock: FakeClock) -> TokenServer:
    """`module_server` for one test: its records cleared, its clock this test's `mtls_clock`.

    Registrations, issued tokens and revocations stay from earlier tests.
    """
    module_server.clear()
    module_server.clock = mtls_clock
    return module_server


@pytest.fixture
def other_client_id(mtls_server: TokenServer, mtls_client_certificate: Credential) -> str:
    """A second client id, registered on `mtls_server` for the kit's client certificate."""
    mtls_server.register_client(OTHER_CLIENT_ID, mtls_client_certificate)
    return OTHER_CLIENT_ID


@pytest.fixture
def credstore_id(mtls_server: TokenServer, mtls_client_certificate: Credential) -> str:
    """A Credential Store client id as the service hands them out, registered on `mtls_server`.

    Its "/", "+" and "=" arrive intact only if the form body is URL-encoded.
    """
    mtls_server.register_client(CREDSTORE_ID, mtls_client_certificate)
    return CREDSTORE_ID


@pytest.fixture
def credstore_binding(mtls_credstore_binding: dict[str, Any], credstore_id: str) -> dict[str, Any]:
    """The kit's Credential Store binding (payload keys included) for `credstore_id`."""
    return {**mtls_credstore_binding, "username": credstore_id}


@pytest.fixture(scope="session")
def client_common_name(mtls_client_certificate: Credential) -> str:
    """The CN of the kit's client certificate: issue others with the same subject."""
    subject = mtls_client_certificate.certificate.subject
    (attribute,) = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attribute.value)


@pytest.fixture(scope="session")
def rotated_certificate(
    mtls_pki: PKI, mtls_client_certificate: Credential, client_common_name: str
) -> Credential:
    """The kit's client certificate renewed: same subject (so still registered), new key."""
    renewed = mtls_pki.issue_client(client_common_name)
    assert renewed.subject == mtls_client_certificate.subject
    assert renewed.thumbprint != mtls_client_certificate.thumbprint
    return renewed


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Where bindings are looked up, emptied: no VCAP_SERVICES, an empty
    SERVICE_BINDING_ROOT (returned), the legacy Kubernetes roots under `tmp_path`."""
    import mtls_auth._sources as sources

    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    root = tmp_path / "bindings"
    root.mkdir()
    monkeypatch.setenv("SERVICE_BINDING_ROOT", str(root))
    legacy = (str(tmp_path / "etc-secrets-sapbtp"), str(tmp_path / "etc-secrets-sapcp"))
    monkeypatch.setattr(sources, "_LEGACY_ROOTS", legacy)
    return root


@pytest.fixture(scope="session")
def key_type_credentials(
    mtls_pki: PKI, mtls_client_certificate: Credential
) -> dict[str, Credential]:
    """One client credential per key type ("rsa" is the kit's), issued by the intermediate."""
    made = {"rsa": mtls_client_certificate}
    for key_type in ("ec", "ec384", "ed25519"):
        made[key_type] = mtls_pki.issue_client(f"client-{key_type}", key_type=key_type)
    return made


@pytest.fixture
def certificate(mtls_client_certificate: Credential) -> ClientCertificate:
    """The kit's client certificate (chain and key) loaded as a `ClientCertificate`."""
    return ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )


class DiscoveryServer(TokenServer):
    """A token server whose discovery document a test decides (read per request)."""

    document: Any = None

    @property
    def openid_configuration(self) -> dict[str, Any]:
        return super().openid_configuration if self.document is None else self.document


@pytest.fixture
def discovery_server(
    mtls_pki: PKI, mtls_client_certificate: Credential, mtls_clock: FakeClock
) -> Iterator[DiscoveryServer]:
    """Like `mtls_server` (``CLIENT_ID`` registered), with a settable ``document``.

    ``document`` None serves the kit's own discovery document; anything else
    is served as it is, JSON that is not an object included.
    """
    with DiscoveryServer(mtls_pki, clock=mtls_clock) as server:
        server.register_client(CLIENT_ID, mtls_client_certificate)
        yield server


# -- hypothesis profiles ------------------------------------------------------------------

_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

for _name, _examples in (("dev", 20), ("ci", 50), ("fuzz", 10_000)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=datetime.timedelta(seconds=2),
        suppress_health_check=_FUZZ_HEALTH,
        print_blob=True,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
