"""What importing mtls-auth costs, and what it prints, checked in clean processes.

`import mtls_auth` loads no HTTP library and no cryptography (the certificate
code loads when first used); the pytest plugin, which pytest loads in every
run of a project with mtls-auth installed, loads none of the test kit until a
test asks for one of its fixtures; and the library's warnings reach stderr
only if the application configures logging.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("requests", "httpx", "urllib3", "cryptography", "httpcore", "anyio", "ssl")


def loaded_after(statement: str) -> list[str]:
    script = (
        f"import json, sys; {statement}; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        "or m.startswith('mtls_auth.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(result.stdout))


def test_import_mtls_auth_pulls_in_no_http_library_and_no_cryptography() -> None:
    assert loaded_after("import mtls_auth") == [
        "mtls_auth._errors",
        "mtls_auth._lazy",
        "mtls_auth._redact",
    ]


def test_a_requests_application_never_imports_asyncio() -> None:
    # About 13 ms of a cold start that a synchronous application never uses.
    script = (
        "import sys, requests, mtls_auth.requests; "
        "print('mtls_auth._aio' in sys.modules, 'asyncio' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["True", "False"]


_COLD_CHILD = (
    "import json, sys\n"
    "from mtls_auth import ClientCertificate\n"
    "data = json.load(sys.stdin)\n"
    "cert = ClientCertificate.from_pem(data['chain'], data['key'])\n"
    "cert.ssl_context(verify=data['ca'])\n"
    "facts = [cert.thumbprint, cert.not_after.isoformat(), cert.key_type]\n"
    "print(json.dumps([m for m in sys.modules if m.startswith('cryptography.x509')]))\n"
)


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered-chain", "shuffled-chain"])
def test_an_ordered_chain_is_loaded_without_the_x509_stack(ordered: bool) -> None:
    # Importing cryptography.x509 costs about 20 ms, as much as a whole
    # hand-written first request; an ordered chain needs none of it. A chain
    # out of order takes the complete path (and proves this test can fail).
    from mtls_auth.testing import PKI

    pki = PKI()
    client = pki.issue_client("cold-start")
    chain = client.chain_pem if ordered else pki.intermediate_pem + client.cert_pem
    payload = json.dumps({"chain": chain, "key": client.key_pem, "ca": pki.root_pem})
    result = subprocess.run(
        [sys.executable, "-c", _COLD_CHILD],
        input=payload,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    x509_modules = json.loads(result.stdout)
    if ordered:
        assert x509_modules == []
    else:
        assert "cryptography.x509" in x509_modules


def test_the_pytest_plugin_loads_no_test_kit_until_a_fixture_is_used() -> None:
    loaded = loaded_after("import pytest, mtls_auth.testing.plugin")
    assert [m for m in loaded if m.startswith("mtls_auth.")] == [
        "mtls_auth._errors",
        "mtls_auth._lazy",
        "mtls_auth._redact",
        "mtls_auth.testing",
        "mtls_auth.testing.plugin",
    ]
    assert not [m for m in loaded if m.split(".")[0] in ("cryptography", "ssl")]


@pytest.mark.parametrize(
    "name",
    ["ClientCertificate", "INSECURE_SKIP_VERIFY", "RetryPolicy", "TokenInfo", "check_binding"],
)
def test_lazily_loaded_names_resolve_and_are_listed(name: str) -> None:
    import mtls_auth

    assert getattr(mtls_auth, name) is getattr(mtls_auth, name)
    assert name in dir(mtls_auth)
    assert name in mtls_auth.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    import mtls_auth
    import mtls_auth.testing

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        mtls_auth.nothing_here  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        mtls_auth.testing.nothing_here  # noqa: B018


def test_library_warnings_stay_silent_unless_the_application_configures_logging() -> None:
    script = (
        "import logging; import mtls_auth; "
        "logging.getLogger('mtls_auth._retry').warning('a warning from the library')"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert quiet.stderr == ""  # not printed by Python's last-resort handler
    configured = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(); " + script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "WARNING:mtls_auth._retry:a warning from the library" in configured.stderr
