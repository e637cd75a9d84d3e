"""The `mtls-auth` command itself: `demo`, ``--version``, usage errors and runtime errors.

Every test runs the command in-process through `mtls_auth.cli.main` (with
capsys) and as ``python -m mtls_auth`` in a real subprocess; a smoke subset
(`also_as_console_script`) also runs the ``mtls-auth`` console script when it
is installed next to the interpreter (skipped otherwise). The runner, the
shared loopback server and the bindings are ``cli_harness.py``'s; nothing any
command prints may contain key PEM material or a token value.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

import pytest
from cli_harness import (
    BASE64URL_RUN,
    Env,
    Runner,
    also_as_console_script,
    assert_no_secrets,
    assert_one_line_error,
    parametrize_run,
)

import mtls_auth
from mtls_auth import cli
from mtls_auth import credstore as _credstore
from mtls_auth.testing import TokenServer

pytest_generate_tests = parametrize_run


# -- mtls-auth demo -----------------------------------------------------------------------


class RecordingTokenServer(TokenServer):
    instances: ClassVar[list[TokenServer]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordingTokenServer.instances.append(self)


@pytest.fixture
def recorded_servers(monkeypatch: pytest.MonkeyPatch) -> list[TokenServer]:
    from mtls_auth.cli import demo as _demo

    RecordingTokenServer.instances = []
    monkeypatch.setattr(_demo, "TokenServer", RecordingTokenServer)
    return RecordingTokenServer.instances


@also_as_console_script
def test_demo(run: Runner, recorded_servers: list[TokenServer]) -> None:
    calls = 20 if run.mode == "inprocess" else 3
    args = ["demo"] if run.mode == "inprocess" else ["demo", "--calls", str(calls)]
    started = time.monotonic()
    result = run(*args)
    elapsed = time.monotonic() - started

    assert result.code == 0, result.text
    assert result.err == ""
    assert elapsed < 15
    out = result.out

    # a numbered timeline, 1..N without gaps
    numbers = [int(n) for n in re.findall(r"^\s*(\d+)\. ", out, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 9

    assert re.search(
        r"binding parsed: XSUAA x509 service key, client id \S+, token URL https://", out
    )
    cert = re.search(
        r"certificate (CN=[^\n]*?), issued by (CN=[^\n]*?), [^\n]*expires "
        r"(\d{4}-\d\d-\d\d) \((\d+) days\), x5t#S256 ([A-Za-z0-9_-]{43})",
        out,
    )
    assert cert, out
    thumbprint = cert.group(5)
    succeeded = re.search(r"requests: (\d+)/(\d+) calls succeeded", out)
    assert succeeded
    assert succeeded.group(1) == succeeded.group(2) == str(calls)
    assert "the token itself is never shown" in out
    assert re.search(rf"refresh observed: .*; 1 refresh, {calls}/{calls} calls succeeded", out)
    assert f"cnf x5t#S256 {thumbprint} matches the client certificate" in out
    assert f"httpx sync: {calls}/{calls} calls succeeded" in out
    assert f"httpx async: {2 * calls}/{2 * calls} concurrent calls succeeded" in out
    assert re.search(r"namespace '[^']+' sent as credstore_namespace \(arrived exactly\)", out)
    if _credstore.available():
        assert "the password went out as application/jose" in out
        assert "came back decrypted: ok" in out
    else:  # Python 3.9
        assert "encryption needs joserfc >= 1.7.2" in out
    assert "MISMATCH" not in out
    assert "does NOT match" not in out
    done = re.search(r"Done in (\d+\.\d)s\. Next, with a real binding:", out)
    assert done
    assert float(done.group(1)) < 10
    assert "mtls-auth check " in out
    assert "mtls-auth request " in out

    # no token, no key: every long base64url run is the certificate thumbprint
    assert "PRIVATE KEY" not in out
    assert "-----BEGIN" not in out
    assert set(BASE64URL_RUN.findall(out)) == {thumbprint}
    if run.mode == "inprocess":
        assert len(recorded_servers) == 1
        server = recorded_servers[0]
        with server._lock:
            tokens = list(server._tokens)
        assert len(tokens) >= 3  # XSUAA, its refresh, Credential Store
        for token in tokens:
            assert token not in out
            for part in token.split("."):
                assert part not in out


# -- errors -------------------------------------------------------------------------------


@also_as_console_script
def test_request_missing_binding_file(run: Runner, cli_env: Env) -> None:
    result = run(
        "request", cli_env.server.resource_url, "--binding", str(cli_env.dir / "nope.json")
    )
    assert result.code == 2
    assert_one_line_error(result, "request")
    assert "nope.json" in result.err or "existing service-key file" in result.err
    assert result.out == ""


def test_check_missing_binding_file(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.dir / "nope.json"))
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "no service-key file or binding directory at" in result.err
    assert "nope.json" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["request", "URL", "-H", "no-colon-here"], "is not 'Name: value'"),
        (["request", "URL", "-d", "@MISSING"], "No such file or directory"),
        (["check", "GOOD", "--vcap", "xsuaa"], "either a binding or --vcap"),
    ],
)
def test_runtime_errors_are_one_line(
    run: Runner, cli_env: Env, args: list[str], message: str
) -> None:
    replace = {
        "URL": cli_env.server.resource_url,
        "@MISSING": f"@{cli_env.dir / 'missing-body.txt'}",
        "GOOD": str(cli_env.good),
    }
    args = [replace.get(a, a) for a in args]
    if args[0] == "request":
        args += ["--binding", str(cli_env.good), "--verify", str(cli_env.ca)]
    result = run(*args, env={"VCAP_SERVICES": cli_env.vcap})
    # Both a binding and --vcap is a usage error (3); the others are runtime errors.
    assert result.code == (3 if "--vcap" in args else 2)
    assert_one_line_error(result, args[0])
    assert message in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--warn-hours", "abc", "x.json"],
        ["check", "--bogus"],
        ["frobnicate"],
        ["request"],
        ["demo", "--calls", "many"],
    ],
)
def test_usage_errors_exit_3(run: Runner, args: list[str]) -> None:
    result = run(*args)
    assert result.code == 3
    assert "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1].startswith("mtls-auth")
    assert "error: " in result.err.strip().splitlines()[-1]
    assert result.out == ""


def test_no_command_prints_help_and_exits_3(run: Runner) -> None:
    result = run()
    assert result.code == 3
    assert "demo" in result.err
    assert "check" in result.err
    assert "request" in result.err
    assert "Traceback" not in result.err


@also_as_console_script
def test_version(run: Runner) -> None:
    result = run("--version")
    assert result.code == 0
    assert result.out.strip() == f"mtls-auth {mtls_auth.__version__}"


@pytest.mark.parametrize("args", [["check"], ["request", "https://localhost:1/"]])
def test_no_binding_is_one_line_error(run: Runner, args: list[str]) -> None:
    result = run(*args, env={"VCAP_SERVICES": None})
    assert result.code != 0
    assert_one_line_error(result, args[0])
    assert "a binding (service-key file or directory) or --vcap is required" in result.err


@pytest.mark.parametrize("args", [["check"], ["request", "https://localhost:1/"]])
def test_no_binding_is_a_usage_error(run_inprocess: Runner, args: list[str]) -> None:
    result = run_inprocess(*args, env={"VCAP_SERVICES": None})
    assert result.code == 3


def test_debug_shows_the_traceback(run: Runner, cli_env: Env) -> None:
    args = [
        "--debug",
        "request",
        cli_env.server.resource_url,
        "--binding",
        str(cli_env.dir / "nope.json"),
    ]
    if run.mode == "inprocess":
        with pytest.raises(FileNotFoundError):
            cli.main(args)
        return
    result = run(*args)
    assert result.code != 0
    assert "Traceback" in result.err
    assert "nope.json" in result.err or "existing service-key file" in result.err


def test_debug_check_still_prints_no_secrets(run: Runner, cli_env: Env) -> None:
    result = run("--debug", "check", str(cli_env.good), "--fetch", "--verify", str(cli_env.ca))
    assert result.code == 0, result.text
    assert_no_secrets(result, cli_env)
