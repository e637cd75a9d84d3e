"""Running ``mtls-auth`` as a user does, and the server and bindings it runs against.

A pytest plugin (registered in ``conftest.py``) shared by the ``test_cli*``
modules. `Runner` runs the command in-process through `mtls_auth.cli.main`
(with capsys), as ``python -m mtls_auth`` in a real subprocess, or through the
``mtls-auth`` console script; a CLI test module opts into that parametrization
of its ``run`` fixture with ``pytest_generate_tests = parametrize_run``, and
`also_as_console_script` adds the console script to a smoke subset. The
subprocesses talk to a real loopback server in this test process, `cli_env`:
the kit's `TokenServer` (JWT tokens) and the bindings written for it, built
once per session (its credentials and Credential Store keys take time), so
the server's records can be checked after each command.

Nothing any command prints may contain key PEM material or a token value:
`assert_no_secrets` scans every output for the PEM markers, the body lines of
the private keys involved and every token the server has issued.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from mtls_auth import cli
from mtls_auth import credstore as _credstore
from mtls_auth.testing import (
    PKI,
    Credential,
    TokenServer,
    credstore_service_key,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)

__all__ = [
    "BASE64URL_RUN",
    "CLIENT_SECRET",
    "CREDSTORE_ID",
    "NAMESPACE",
    "NEEDS_JOSERFC",
    "XSUAA_ID",
    "Env",
    "Result",
    "Runner",
    "also_as_console_script",
    "assert_no_secrets",
    "assert_one_line_error",
    "parametrize_run",
    "write_json",
]

NEEDS_JOSERFC = pytest.mark.skipif(
    not _credstore.available(), reason="payload encryption needs joserfc >= 1.7.2 (Python 3.10+)"
)

REPO = Path(__file__).resolve().parents[1]
XSUAA_ID = "sb-cli-test!t7"
CREDSTORE_ID = "0fcb3a97-cli0-4c1e-9f6a-test.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="
NAMESPACE = "ns1"
CLIENT_SECRET = "binding-secret-value-that-must-never-be-printed"
SCRIPT = Path(sys.executable).parent / ("mtls-auth.exe" if os.name == "nt" else "mtls-auth")
BASE64URL_RUN = re.compile(r"[A-Za-z0-9_-]{41,}")


# -- running the command ------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class Runner:
    """Runs `mtls-auth ARGS` in one of three ways; `env` entries of None are unset."""

    mode: str
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def __call__(
        self, *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 30
    ) -> Result:
        env = dict(env or {})
        if self.mode == "inprocess":
            return self._in_process(list(args), env)
        command = [sys.executable, "-m", "mtls_auth"] if self.mode == "module" else [str(SCRIPT)]
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p
        )
        for name, value in env.items():
            if value is None:
                child_env.pop(name, None)
            else:
                child_env[name] = value
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def _in_process(self, args: list[str], env: dict[str, str | None]) -> Result:
        with self.monkeypatch.context() as patch:
            for name, value in env.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            self.capsys.readouterr()  # drop anything printed before
            try:
                code = cli.main(args)
            except SystemExit as exc:  # argparse: --help, --version and usage errors
                code = exc.code if isinstance(exc.code, int) else 1
            captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


def also_as_console_script(test: Callable[..., None]) -> Callable[..., None]:
    """Run this test through the ``mtls-auth`` console script too, not just in-process
    and as ``python -m mtls_auth`` (a smoke subset keeps the file well under 40 s)."""
    test.also_as_console_script = True  # type: ignore[attr-defined]
    return test


def parametrize_run(metafunc: pytest.Metafunc) -> None:
    """A CLI module's ``pytest_generate_tests``: each test that takes ``run`` runs in-process
    and as ``python -m mtls_auth`` (and through the console script if marked)."""
    if "run" in metafunc.fixturenames:
        modes = ["inprocess", "module"]
        if getattr(metafunc.function, "also_as_console_script", False):
            modes.append("script")
        metafunc.parametrize("run", modes, indirect=True)


@pytest.fixture
def run(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Runner:
    if request.param == "script" and not SCRIPT.exists():
        pytest.skip(f"the mtls-auth console script is not installed ({SCRIPT})")
    return Runner(request.param, capsys, monkeypatch)


@pytest.fixture
def run_inprocess(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Runner:
    return Runner("inprocess", capsys, monkeypatch)


# -- the server and the bindings ----------------------------------------------------------


def _key_lines(*pems: str) -> list[str]:
    return [
        line
        for pem in pems
        for line in pem.splitlines()
        if line.strip() and not line.startswith("-----")
    ]


@dataclass
class Env:
    pki: PKI
    credential: Credential
    server: TokenServer
    dir: Path
    ca: Path
    good: Path
    soon: Path
    expired: Path
    mismatch: Path
    secret: Path
    missing: Path
    unregistered: Path
    credstore: Path
    credstore_binding: dict[str, Any]
    k8s_xsuaa: Path
    k8s_credstore: Path
    vcap: str
    secrets: list[str]

    def tokens(self) -> list[str]:
        with self.server._lock:
            return list(self.server._tokens)


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cli_env(
    mtls_pki: PKI, mtls_client_certificate: Credential, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """The server (the kit's, JWT tokens, shared by the CLI modules) and bindings for it."""
    pki, client_credential = mtls_pki, mtls_client_certificate
    directory = tmp_path_factory.mktemp("cli")
    with TokenServer(pki, jwt_tokens=True) as server:
        server.register_client(XSUAA_ID, client_credential)
        server.register_client(CREDSTORE_ID, client_credential)
        ca = directory / "ca.pem"
        ca.write_text(server.ca_pem, encoding="ascii")

        good = xsuaa_service_key(server, client_credential, XSUAA_ID)
        soon_credential = pki.issue_client(
            "sb-cli-test!t7", not_after=datetime.now(timezone.utc) + timedelta(hours=5)
        )
        expired_credential = pki.expired_client("sb-cli-test!t7")
        mismatched_key = pki.mismatched_key()
        secret = {k: v for k, v in good.items() if k not in ("certificate", "key")}
        secret["credential-type"] = "binding-secret"
        secret["clientsecret"] = CLIENT_SECRET
        credstore = credstore_service_key(
            server,
            client_credential,
            CREDSTORE_ID,
            encryption=server.credstore.encryption_block(),
        )
        k8s_xsuaa = write_kubernetes_binding(directory / "k8s-xsuaa", good)
        k8s_credstore = write_kubernetes_binding(
            directory / "k8s-credstore", credstore, metadata="json", binding_type="credstore"
        )
        yield Env(
            pki=pki,
            credential=client_credential,
            server=server,
            dir=directory,
            ca=ca,
            good=write_json(directory / "good.json", good),
            soon=write_json(
                directory / "soon.json", xsuaa_service_key(server, soon_credential, XSUAA_ID)
            ),
            expired=write_json(
                directory / "expired.json",
                xsuaa_service_key(server, expired_credential, XSUAA_ID),
            ),
            mismatch=write_json(directory / "mismatch.json", {**good, "key": mismatched_key}),
            secret=write_json(directory / "secret.json", secret),
            missing=write_json(
                directory / "missing.json",
                {k: v for k, v in good.items() if k not in ("certificate", "key")},
            ),
            unregistered=write_json(
                directory / "unregistered.json",
                xsuaa_service_key(server, client_credential, "sb-nobody!t7"),
            ),
            credstore=write_json(directory / "credstore.json", credstore),
            credstore_binding=credstore,
            k8s_xsuaa=k8s_xsuaa,
            k8s_credstore=k8s_credstore,
            vcap=vcap_services(
                ("xsuaa", "my-xsuaa", good), ("credstore", "my-credstore", credstore)
            ),
            secrets=[
                CLIENT_SECRET,
                *_key_lines(
                    client_credential.key_pem,
                    soon_credential.key_pem,
                    expired_credential.key_pem,
                    mismatched_key,
                ),
                *(value[40:100] for value in credstore["encryption"].values()),
            ],
        )


def assert_no_secrets(result: Result, env: Env) -> None:
    """No PEM marker, key body line, Credential Store key part or issued token in the output."""
    text = result.text
    assert "PRIVATE KEY" not in text
    assert "-----BEGIN" not in text
    for secret in env.secrets:
        assert secret not in text
    tokens = env.tokens()
    for token in tokens:
        assert token not in text
        for part in token.split(".")[1:]:  # a JWT's claims and signature
            assert part not in text


def assert_one_line_error(result: Result, command: str) -> None:
    assert result.code != 0
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"mtls-auth {command}: "), lines[0]
