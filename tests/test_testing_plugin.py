"""The pytest plugin of `mtls_auth.testing`, used the way a user's project uses it.

Each test writes a small outside test project with `pytester` (no conftest, no
``pytest_plugins`` line unless the test is about that line) and runs pytest on
it, mostly in a subprocess, so the fixtures arrive through the installed
``pytest11`` entry point exactly as they do for users.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading

import pytest

import mtls_auth.testing
from mtls_auth import credstore as _credstore

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="the test server loads its key via memfd"
)

# -- what a user writes ---------------------------------------------------------------------

REQUESTS_USER_TESTS = """
import json
import stat

import pytest
import requests

from mtls_auth.requests import MtlsOAuth2, credstore_session
from mtls_auth.testing import Fault


@pytest.fixture
def session(mtls_server, mtls_xsuaa_binding, mtls_auth_kwargs):
    auth = MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    with requests.Session() as session:
        session.auth = auth
        session.mount(mtls_server.url, auth.adapter())  # the server requires client certs
        yield session
    auth.close()


def test_call_through_the_binding(session, mtls_server, mtls_client_certificate):
    response = session.get(mtls_server.resource_url)
    assert response.status_code == 200
    assert response.json()["client_id"] == "sb-mtls-test!t1"
    (token_request,) = mtls_server.token_requests
    assert token_request.client_id == "sb-mtls-test!t1"
    assert token_request.form["grant_type"] == "client_credentials"
    assert "client_secret" not in token_request.form
    assert token_request.thumbprint == mtls_client_certificate.thumbprint
    assert session.get(mtls_server.resource_url).status_code == 200
    assert len(mtls_server.token_requests) == 1  # cached


def test_token_endpoint_outage_is_retried(session, mtls_server):
    mtls_server.inject(Fault.status(503))
    assert session.get(mtls_server.resource_url).status_code == 200
    assert len(mtls_server.token_requests) == 2
    assert mtls_server.pending_faults == 0


def test_revoked_token_is_replaced(session, mtls_server):
    assert session.get(mtls_server.resource_url).status_code == 200
    mtls_server.revoke_all()
    assert session.get(mtls_server.resource_url).status_code == 200
    assert [r.status for r in mtls_server.resource_requests] == [200, 401, 200]
    assert len(mtls_server.token_requests) == 2


def test_expired_token_is_refreshed(session, mtls_server, mtls_clock):
    start = mtls_clock()
    session.get(mtls_server.resource_url)
    mtls_clock.advance(mtls_server.token_lifetime + 1)
    assert session.get(mtls_server.resource_url).status_code == 200
    times = [r.time for r in mtls_server.token_requests]
    assert times == [start, start + mtls_server.token_lifetime + 1]


@pytest.mark.mtls_server(token_lifetime=120, jwt_tokens=True, cert_bound=True)
def test_marker_configures_the_server(session, mtls_server, mtls_clock):
    assert (mtls_server.token_lifetime, mtls_server.jwt_tokens, mtls_server.cert_bound) == (
        120, True, True
    )
    assert session.get(mtls_server.resource_url).status_code == 200
    mtls_clock.advance(120)
    assert session.get(mtls_server.resource_url).status_code == 200
    assert len(mtls_server.token_requests) == 2


def test_default_server_without_marker(mtls_server):
    assert (mtls_server.token_lifetime, mtls_server.jwt_tokens, mtls_server.cert_bound) == (
        3600, False, False
    )


@pytest.mark.mtls_server(token_lifetime=300, jwt_tokens=True)
class TestClassMarker:
    @pytest.mark.mtls_server(token_lifetime=60)
    def test_closest_marker_wins_per_option(self, mtls_server):
        assert (mtls_server.token_lifetime, mtls_server.jwt_tokens) == (60, True)


def test_service_key_file(mtls_server, mtls_xsuaa_service_key_file, mtls_xsuaa_binding,
                          mtls_auth_kwargs, tmp_path):
    path = mtls_xsuaa_service_key_file
    assert path.parent == tmp_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == mtls_xsuaa_binding
    with MtlsOAuth2.from_binding(path, **mtls_auth_kwargs) as auth, requests.Session() as s:
        s.mount(mtls_server.url, auth.adapter())
        assert s.get(mtls_server.resource_url, auth=auth).status_code == 200


def test_credstore_encrypted_round_trip(mtls_server, mtls_credstore_binding, mtls_auth_kwargs):
    with credstore_session(mtls_credstore_binding, namespace="ns1", **mtls_auth_kwargs) as s:
        created = s.post("password", json={"name": "db", "value": "s3cret"})
        assert created.status_code == 201
        assert s.get("password", params={"name": "db"}).json()["value"] == "s3cret"
    assert mtls_server.token_requests[-1].namespace == "ns1"
    assert ("POST", "/api/v1/credentials/password", "application/jose") in (
        mtls_server.credstore.requests
    )
"""

HTTPX_USER_TESTS = """
import asyncio

import httpx

from mtls_auth.httpx import MtlsOAuth2
from mtls_auth.testing import Fault


def test_httpx_sync(mtls_server, mtls_xsuaa_binding, mtls_auth_kwargs, mtls_clock):
    auth = MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    with httpx.Client(auth=auth, transport=auth.transport()) as client:
        mtls_server.inject(Fault.status(503))
        assert client.get(mtls_server.resource_url).status_code == 200
        mtls_clock.advance(mtls_server.token_lifetime)
        assert client.get(mtls_server.resource_url).status_code == 200
    assert len(mtls_server.token_requests) == 3


def test_httpx_async(mtls_server, mtls_xsuaa_binding, mtls_auth_kwargs):
    auth = MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)

    async def main():
        async with httpx.AsyncClient(auth=auth, transport=auth.async_transport()) as client:
            responses = await asyncio.gather(
                *(client.get(mtls_server.resource_url) for _ in range(5))
            )
            mtls_server.revoke_all()
            responses.append(await client.get(mtls_server.resource_url))
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 6
    assert len(mtls_server.token_requests) == 2  # single flight, then one after revocation
"""

FIXTURE_NAMES = [
    "mtls_pki",
    "mtls_client_certificate",
    "mtls_clock",
    "mtls_server",
    "mtls_xsuaa_binding",
    "mtls_xsuaa_service_key_file",
    "mtls_credstore_binding",
    "mtls_auth_kwargs",
]

ALL_FIXTURES_TEST = """
def test_all_fixtures(mtls_pki, mtls_client_certificate, mtls_clock, mtls_server,
                      mtls_xsuaa_binding, mtls_xsuaa_service_key_file,
                      mtls_credstore_binding, mtls_auth_kwargs):
    assert mtls_server.clock is mtls_clock
    assert mtls_auth_kwargs == {"verify": mtls_server.ca_pem, "clock": mtls_clock}
    assert mtls_xsuaa_binding["certurl"] == mtls_server.url
    assert mtls_credstore_binding["url"] == mtls_server.credentials_url
    assert mtls_credstore_binding["oauth_token_url"] == mtls_server.credstore_token_url
    assert mtls_xsuaa_service_key_file.exists()
"""


@pytest.fixture
def autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin autoloading on, whatever the environment running this suite says."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.usefixtures("autoload")
def test_user_project_requests_and_httpx(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_with_requests=textwrap.dedent(REQUESTS_USER_TESTS),
        test_with_httpx=textwrap.dedent(HTTPX_USER_TESTS),
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    if _credstore.available():
        result.assert_outcomes(passed=11, warnings=0)
    else:  # Python 3.9: no joserfc >= 1.7.2, the encrypted round trip cannot run
        result.assert_outcomes(passed=10, failed=1)


@pytest.mark.usefixtures("autoload")
def test_fixtures_come_from_the_entry_point_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_outside=ALL_FIXTURES_TEST)
    assert not list(pytester.path.rglob("conftest.py"))
    assert "pytest_plugins" not in (pytester.path / "test_outside.py").read_text()

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"plugins: .*mtls-auth-\d"])

    # The listings in this process: the same entry point, without a second interpreter.
    fixtures = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--fixtures")
    text = fixtures.stdout.str()
    for name in FIXTURE_NAMES:
        assert f"{name} " in text or f"{name}\n" in text, name
    fixtures.stdout.fnmatch_lines(["*mtls_server*", "*A started loopback mTLS token server*"])

    markers = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.mtls_server(token_lifetime=3600*"])


@pytest.mark.parametrize(
    ("autoload_on", "where"),
    [
        (True, "conftest"),  # entry point and pytest_plugins both: no double registration
        (True, "test module"),
        (True, "-p"),
        (False, "conftest"),  # PYTEST_DISABLE_PLUGIN_AUTOLOAD: the line is what loads it
        (False, "-p"),
    ],
)
def test_pytest_plugins_line_and_dash_p(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, autoload_on: bool, where: str
) -> None:
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    if autoload_on:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    line = 'pytest_plugins = ["mtls_auth.testing.plugin"]\n'
    args: list[str] = ["-p", "no:cacheprovider"]
    if where == "conftest":
        pytester.makeconftest(line)
        pytester.makepyfile(test_outside=ALL_FIXTURES_TEST)
    elif where == "test module":
        pytester.makepyfile(test_outside=line + ALL_FIXTURES_TEST)
    else:
        pytester.makepyfile(test_outside=ALL_FIXTURES_TEST)
        args += ["-p", "mtls_auth.testing.plugin"]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)


def test_without_autoload_or_line_there_are_no_fixtures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    pytester.makepyfile(test_outside=ALL_FIXTURES_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mtls_pki' not found*"])


@pytest.mark.usefixtures("autoload")
def test_bad_marker_is_a_clear_setup_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_outside="""
        import pytest

        @pytest.mark.mtls_server(tokenlifetime=5)
        def test_typo(mtls_server):
            pass

        @pytest.mark.mtls_server(600)
        def test_positional(mtls_server):
            pass

        @pytest.mark.mtls_server(token_lifetime=None)
        def test_zero(mtls_server):
            pass

        @pytest.mark.mtls_server(cert_bound="yes")
        def test_not_bool(mtls_server):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*unknown option(s) tokenlifetime; it accepts token_lifetime, jwt_tokens, cert_bound*",
            "*takes keyword arguments only*",
            "*token_lifetime=...) must be a positive number of seconds, not None*",
            "*cert_bound=...) must be True or False*",
        ]
    )


@pytest.mark.usefixtures("autoload")
def test_plugin_needs_neither_requests_nor_httpx(pytester: pytest.Pytester) -> None:
    """A project with neither HTTP library installed still gets every fixture."""
    pytester.makepyfile(test_outside=ALL_FIXTURES_TEST)
    pytester.makepyfile(
        run_blocked="""
        import sys

        sys.modules["requests"] = None  # "import requests" now raises ImportError
        sys.modules["httpx"] = None

        import pytest

        sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "test_outside.py"]))
        """
    )
    result = pytester.run(sys.executable, "run_blocked.py")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*"])


def _docstring_example() -> str:
    """The example test in `mtls_auth.testing`'s module docstring, as source."""
    doc = mtls_auth.testing.__doc__ or ""
    after = doc.split("A test as you would write it", 1)[1].split("::\n", 1)[1]
    lines = []
    for line in after.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.usefixtures("autoload")
def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    source = _docstring_example()
    assert "def test_" in source
    pytester.makepyfile(test_example=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fake_clock() -> None:
    clock = mtls_auth.testing.FakeClock()
    assert clock() == 1_000_000.0
    assert clock.advance(2.5) == 1_000_002.5 == clock()
    with pytest.raises(ValueError, match="never goes backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(float("nan"))
    with pytest.raises(TypeError):
        clock.advance("1")  # type: ignore[arg-type]
    assert repr(clock) == "FakeClock(1000002.500)"

    def tick() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock() == 1_000_002.5 + 8000
