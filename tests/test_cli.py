"""The `mtls-auth` command: `demo`, `check` and `request`, as a user runs them.

Every test runs the command in-process through `mtls_auth.cli.main` (with
capsys) and as ``python -m mtls_auth`` in a real subprocess; a smoke subset
(`also_as_console_script`) also runs the ``mtls-auth`` console script when it
is installed next to the interpreter (skipped otherwise). The subprocesses
talk to a real loopback `TokenServer` running in this test process, so the
server's records (token requests, Credential Store payloads, issued tokens)
can be checked after each command.

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
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar

import pytest

import mtls_auth
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
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


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(
    pki: PKI, client_credential: Credential, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
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
            good=_write(directory / "good.json", good),
            soon=_write(
                directory / "soon.json", xsuaa_service_key(server, soon_credential, XSUAA_ID)
            ),
            expired=_write(
                directory / "expired.json",
                xsuaa_service_key(server, expired_credential, XSUAA_ID),
            ),
            mismatch=_write(directory / "mismatch.json", {**good, "key": mismatched_key}),
            secret=_write(directory / "secret.json", secret),
            missing=_write(
                directory / "missing.json",
                {k: v for k, v in good.items() if k not in ("certificate", "key")},
            ),
            unregistered=_write(
                directory / "unregistered.json",
                xsuaa_service_key(server, client_credential, "sb-nobody!t7"),
            ),
            credstore=_write(directory / "credstore.json", credstore),
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


# -- mtls-auth check ----------------------------------------------------------------------


@also_as_console_script
def test_check_good_binding(run: Runner, env: Env) -> None:
    result = run("check", str(env.good))
    assert result.code == 0, result.text
    out = result.out
    assert f"binding   {env.good}" in out
    assert re.search(r"kind\s+xsuaa", out)
    assert re.search(rf"client id\s+{re.escape(XSUAA_ID)}", out)
    assert re.search(rf"token URL\s+{re.escape(env.server.token_url)}", out)
    assert re.search(rf"subject\s+{re.escape(env.credential.subject)}", out)
    assert re.search(r"issuer\s+CN=mtls-auth Test Intermediate CA", out)
    expiry = f"{env.credential.not_after:%Y-%m-%d %H:%M} UTC"
    left = re.search(rf"expires\s+{expiry} \((\d+\.\d) days left\)", out)
    assert left, out
    assert 6.0 < float(left.group(1)) <= 7.0
    assert re.search(r"key\s+RSA 2048", out)
    assert f"x5t#S256      {env.credential.thumbprint}" in out
    assert re.search(r"chain\s+2 certificate\(s\)", out)
    assert "WARNING" not in out
    assert "ERROR" not in out
    assert out.rstrip().endswith("status    OK")
    assert_no_secrets(result, env)


@also_as_console_script
def test_check_expiring_within_a_day_warns(run: Runner, env: Env) -> None:
    result = run("check", str(env.soon))
    assert result.code == 1, result.text
    assert re.search(r"WARNING\s+the certificate expires in [45]\.\d hours", result.out)
    assert re.search(r"\(0\.2 days left\)", result.out)
    assert result.out.rstrip().endswith("status    WARNING")
    assert_no_secrets(result, env)


@also_as_console_script
def test_check_expired(run: Runner, env: Env) -> None:
    result = run("check", str(env.expired))
    assert result.code == 2, result.text
    assert re.search(r"ERROR\s+the certificate expired on \d{4}-\d\d-\d\d", result.out)
    assert "expired 1.0 days ago" in result.out
    assert result.out.rstrip().endswith("status    ERROR")
    assert_no_secrets(result, env)


def test_check_mismatched_key(run: Runner, env: Env) -> None:
    result = run("check", str(env.mismatch))
    assert result.code == 2, result.text
    assert "the private key does not match the certificate" in result.out
    assert result.out.rstrip().endswith("status    ERROR")
    assert_no_secrets(result, env)


def test_check_secret_based_binding(run: Runner, env: Env) -> None:
    result = run("check", str(env.secret))
    assert result.code == 2, result.text
    assert "client secret" in result.out
    assert "x509" in result.out
    assert "binding-secret" in result.out
    assert CLIENT_SECRET not in result.text
    assert_no_secrets(result, env)


def test_check_missing_fields_are_named(run: Runner, env: Env) -> None:
    result = run("check", str(env.missing))
    assert result.code == 2, result.text
    assert "lacks 'certificate', 'key'" in result.out
    assert_no_secrets(result, env)


@pytest.mark.parametrize("which", ["k8s_xsuaa", "k8s_credstore"])
def test_check_kubernetes_directory(run: Runner, env: Env, which: str) -> None:
    directory = getattr(env, which)
    result = run("check", str(directory))
    assert result.code == 0, result.text
    kind = "xsuaa" if which == "k8s_xsuaa" else "credstore"
    client_id = XSUAA_ID if kind == "xsuaa" else CREDSTORE_ID
    assert re.search(rf"kind\s+{kind}\n", result.out)
    assert re.search(rf"client id\s+{re.escape(client_id)}", result.out)
    assert env.credential.thumbprint in result.out
    assert_no_secrets(result, env)


@also_as_console_script
def test_check_vcap_by_label(run: Runner, env: Env) -> None:
    result = run("check", "--vcap", "xsuaa", env={"VCAP_SERVICES": env.vcap})
    assert result.code == 0, result.text
    assert "binding   VCAP_SERVICES xsuaa" in result.out
    assert re.search(rf"client id\s+{re.escape(XSUAA_ID)}", result.out)
    assert_no_secrets(result, env)


def test_check_vcap_by_label_and_name_json(run: Runner, env: Env) -> None:
    result = run(
        "check", "--vcap", "credstore:my-credstore", "--json", env={"VCAP_SERVICES": env.vcap}
    )
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["source"] == "VCAP_SERVICES credstore:my-credstore"
    assert report["kind"] == "credstore"
    assert report["client_id"] == CREDSTORE_ID
    assert report["token_url"] == env.server.credstore_token_url
    assert report["binding_expires_at"] is not None
    assert_no_secrets(result, env)


def test_check_vcap_unknown_name(run: Runner, env: Env) -> None:
    result = run("check", "--vcap", "credstore:nope", env={"VCAP_SERVICES": env.vcap})
    assert result.code == 2
    assert_one_line_error(result, "check")
    assert "'nope'" in result.err
    assert "my-credstore" in result.err


def test_check_vcap_not_set(run: Runner) -> None:
    result = run("check", "--vcap", "xsuaa", env={"VCAP_SERVICES": None})
    assert result.code == 2
    assert_one_line_error(result, "check")
    assert "VCAP_SERVICES is not set" in result.err


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("good", "ok", 0), ("soon", "warning", 1), ("expired", "error", 2), ("mismatch", "error", 2)],
)
def test_check_json(run: Runner, env: Env, name: str, status: str, code: int) -> None:
    path = getattr(env, name)
    result = run("check", str(path), "--json")
    assert result.code == code, result.text
    report = json.loads(result.out)
    assert set(report) == {
        "source",
        "status",
        "exit_code",
        "kind",
        "client_id",
        "token_url",
        "certificate",
        "binding_expires_at",
        "findings",
        "token",
    }
    assert report["source"] == str(path)
    assert report["status"] == status
    assert report["exit_code"] == code
    assert report["kind"] == "xsuaa"
    assert report["client_id"] == XSUAA_ID
    assert report["token_url"] == env.server.token_url
    certificate = report["certificate"]
    assert set(certificate) == {
        "subject",
        "issuer",
        "not_before",
        "not_after",
        "days_left",
        "key_type",
        "thumbprint",
        "chain_length",
    }
    assert certificate["key_type"] == "RSA 2048"
    assert certificate["chain_length"] == 2
    assert datetime.fromisoformat(certificate["not_after"]).tzinfo is not None
    assert isinstance(certificate["days_left"], float)
    assert report["token"] is None
    levels = {finding["level"] for finding in report["findings"]}
    assert levels == ({"ok": set(), "warning": {"warning"}, "error": {"error"}}[status])
    assert all(isinstance(finding["message"], str) for finding in report["findings"])
    assert_no_secrets(result, env)


def test_check_json_on_unreadable_binding(run: Runner, env: Env) -> None:
    result = run("check", str(env.secret), "--json")
    assert result.code == 2
    report = json.loads(result.out)
    assert report["status"] == "error"
    assert report["kind"] is None
    assert "x509" in report["findings"][0]["message"]
    assert_no_secrets(result, env)


@also_as_console_script
def test_check_fetch_xsuaa_jwt(run: Runner, env: Env) -> None:
    before = env.server.token_request_count
    result = run("check", str(env.good), "--fetch", "--verify", str(env.ca))
    assert result.code == 0, result.text
    assert re.search(
        r"token\s+fetched over mTLS, expires_in 3600s, jwt, scopes: uaa\.resource, "
        r"cnf matches the certificate",
        result.out,
    )
    requests_made = env.server.token_requests[before:]
    assert [r.client_id for r in requests_made] == [XSUAA_ID]
    assert requests_made[0].thumbprint == env.credential.thumbprint
    assert_no_secrets(result, env)


def test_check_fetch_json(run: Runner, env: Env) -> None:
    result = run("check", str(env.k8s_xsuaa), "--fetch", "--verify", str(env.ca), "--json")
    assert result.code == 0, result.text
    token = json.loads(result.out)["token"]
    assert token == {
        "expires_in": 3600,
        "format": "jwt",
        "scopes": ["uaa.resource"],
        "cnf_x5t#S256": env.credential.thumbprint,
        "cnf_matches_certificate": True,
    }
    assert_no_secrets(result, env)


def test_check_fetch_vcap(run: Runner, env: Env) -> None:
    result = run(
        "check",
        "--vcap",
        "xsuaa",
        "--fetch",
        "--verify",
        str(env.ca),
        env={"VCAP_SERVICES": env.vcap},
    )
    assert result.code == 0, result.text
    assert "cnf matches the certificate" in result.out
    assert_no_secrets(result, env)


def test_check_fetch_credstore_with_namespace(run: Runner, env: Env) -> None:
    before = env.server.token_request_count
    result = run(
        "check",
        str(env.credstore),
        "--fetch",
        "--verify",
        str(env.ca),
        "--namespace",
        NAMESPACE,
        "--json",
    )
    assert result.code == 0, result.text
    assert json.loads(result.out)["token"] == {"expires_in": 3600, "format": "opaque"}
    sent = env.server.token_requests[before:]
    assert [(r.path, r.client_id, r.namespace) for r in sent] == [
        ("/api/v1/token", CREDSTORE_ID, NAMESPACE)
    ]
    assert_no_secrets(result, env)


def test_check_fetch_credstore_without_namespace(run: Runner, env: Env) -> None:
    result = run("check", str(env.credstore), "--fetch", "--verify", str(env.ca))
    assert result.code == 2
    assert re.search(r"ERROR\s+token fetch failed: .*namespace", result.out)
    assert_no_secrets(result, env)


def test_check_fetch_refused(run: Runner, env: Env) -> None:
    result = run("check", str(env.unregistered), "--fetch", "--verify", str(env.ca))
    assert result.code == 2, result.text
    assert re.search(r"ERROR\s+token fetch failed: ", result.out)
    assert "Traceback" not in result.err
    assert_no_secrets(result, env)


def test_check_fetch_untrusted_server(run: Runner, env: Env) -> None:
    # without --verify the system trust store does not know the test PKI
    result = run("check", str(env.good), "--fetch")
    assert result.code == 2, result.text
    assert re.search(
        r"ERROR\s+token fetch failed: could not verify the TLS certificate", result.out
    )
    assert_no_secrets(result, env)


def test_check_fetch_skipped_when_offline_check_fails(run: Runner, env: Env) -> None:
    before = env.server.token_request_count
    result = run("check", str(env.expired), "--fetch", "--verify", str(env.ca))
    assert result.code == 2
    assert "token " not in result.out.replace("token URL", "")
    assert env.server.token_request_count == before


@pytest.mark.parametrize(
    ("name", "hours", "code", "status"),
    [("good", "200", 1, "WARNING"), ("soon", "1", 0, "OK"), ("soon", "24", 1, "WARNING")],
)
def test_check_warn_hours(
    run: Runner, env: Env, name: str, hours: str, code: int, status: str
) -> None:
    result = run("check", str(getattr(env, name)), "--warn-hours", hours)
    assert result.code == code, result.text
    assert result.out.rstrip().endswith(f"status    {status}")


def test_check_help_documents_exit_codes(run: Runner) -> None:
    result = run("check", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "Exit codes: 0 ok, 1 warning (certificate expiring soon), 2 error, 3 usage error" in (
        text
    )


# -- mtls-auth request --------------------------------------------------------------------


def _xsuaa_request(env: Env, url: str, *extra: str) -> list[str]:
    return [
        "request",
        url,
        "--binding",
        str(env.good),
        "--verify",
        str(env.ca),
        "--cert-bound",
        *extra,
    ]


@also_as_console_script
def test_request_get(run: Runner, env: Env) -> None:
    before = len(env.server.resource_requests)
    result = run(*_xsuaa_request(env, env.server.resource_url))
    assert result.code == 0, result.text
    body = json.loads(result.out)
    assert body == {
        "ok": True,
        "client_id": XSUAA_ID,
        "namespace": None,
        "method": "GET",
        "path": "/resource",
        "body_length": 0,
    }
    seen = env.server.resource_requests[before:]
    assert [(r.method, r.status, r.thumbprint) for r in seen] == [
        ("GET", 200, env.credential.thumbprint)
    ]
    assert_no_secrets(result, env)


def test_request_method_header_data_include(run: Runner, env: Env) -> None:
    result = run(
        *_xsuaa_request(
            env,
            env.server.resource_url + "/items/7",
            "-X",
            "put",
            "-H",
            "X-Trace: 1",
            "-H",
            "Content-Type: text/plain",
            "-d",
            "hello",
            "-i",
        )
    )
    assert result.code == 0, result.text
    head, _, body = result.out.partition("\n\n")
    lines = head.splitlines()
    assert lines[0] == "HTTP 200 OK"
    assert any(re.match(r"(?i)content-type: application/json", line) for line in lines[1:])
    assert any(re.match(r"(?i)content-length: \d+", line) for line in lines[1:])
    document = json.loads(body)
    assert (document["method"], document["path"], document["body_length"]) == (
        "PUT",
        "/resource/items/7",
        5,
    )
    assert env.server.resource_requests[-1].method == "PUT"
    assert_no_secrets(result, env)


def test_request_data_from_file_posts(run: Runner, env: Env, tmp_path: Path) -> None:
    payload = tmp_path / "body.json"
    payload.write_bytes(b'{"message": "from a file", "n": 12345}')
    result = run(*_xsuaa_request(env, env.server.resource_url, "-d", f"@{payload}"))
    assert result.code == 0, result.text
    document = json.loads(result.out)
    assert document["method"] == "POST"
    assert document["body_length"] == payload.stat().st_size
    assert_no_secrets(result, env)


def test_request_401_exits_1(run: Runner, env: Env) -> None:
    result = run(*_xsuaa_request(env, env.server.url + "/resource/always-401", "-i"))
    assert result.code == 1, result.text
    assert result.out.startswith("HTTP 401 ")
    assert '"invalid_token"' in result.out
    assert "Traceback" not in result.err
    assert_no_secrets(result, env)


def test_request_404_exits_1(run: Runner, env: Env) -> None:
    result = run(*_xsuaa_request(env, env.server.url + "/nothing-here"))
    assert result.code == 1, result.text
    assert "not_found" in result.out


def _credstore_session(env: Env) -> Any:
    from mtls_auth.requests import credstore_session

    return credstore_session(env.credstore_binding, namespace=NAMESPACE, verify=env.server.ca_pem)


@also_as_console_script
@NEEDS_JOSERFC
def test_request_credstore_get_decrypts(run: Runner, env: Env) -> None:
    name = f"get-{run.mode}"
    with _credstore_session(env) as session:
        stored = session.post("password", json={"name": name, "value": "cli-s3cret"})
        assert stored.status_code == 201
    result = run(
        "request",
        f"{env.server.credentials_url}/password?name={name}",
        "--binding",
        str(env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(env.ca),
    )
    assert result.code == 0, result.text
    document = json.loads(result.out)
    assert (document["name"], document["value"]) == (name, "cli-s3cret")
    assert env.server.credstore.requests[-1][:2] == ("GET", "/api/v1/credentials/password")
    assert_no_secrets(result, env)


@NEEDS_JOSERFC
def test_request_credstore_post_encrypts(run: Runner, env: Env) -> None:
    name = f"post-{run.mode}"
    result = run(
        "request",
        f"{env.server.credentials_url}/password",
        "--binding",
        str(env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(env.ca),
        "-d",
        json.dumps({"name": name, "value": "sent-encrypted"}),
    )
    assert result.code == 0, result.text
    assert env.server.credstore.requests[-1] == (
        "POST",
        "/api/v1/credentials/password",
        "application/jose",
    )
    document = json.loads(result.out)  # the encrypted answer, decrypted
    assert (document["name"], document["value"], document["type"]) == (
        name,
        "sent-encrypted",
        "password",
    )
    with _credstore_session(env) as session:
        assert session.get("password", params={"name": name}).json()["value"] == "sent-encrypted"
    assert_no_secrets(result, env)


@NEEDS_JOSERFC
def test_request_credstore_no_decrypt_shows_the_jwe(run: Runner, env: Env) -> None:
    name = f"raw-{run.mode}"
    with _credstore_session(env) as session:
        session.post("password", json={"name": name, "value": "still-encrypted"})
    result = run(
        "request",
        f"{env.server.credentials_url}/password?name={name}",
        "--binding",
        str(env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(env.ca),
        "--no-decrypt",
        "--cert-bound",
        "-i",
    )
    assert result.code == 0, result.text
    head, _, body = result.out.partition("\n\n")
    assert re.search(r"(?i)content-type: application/jose", head)
    assert len(body.strip().split(".")) == 5  # JWE compact
    assert "still-encrypted" not in result.out
    assert_no_secrets(result, env)


@NEEDS_JOSERFC
def test_request_credstore_no_decrypt_sends_headers_as_given(run: Runner, env: Env) -> None:
    result = run(
        "request",
        f"{env.server.credentials_url}/password",
        "--binding",
        str(env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(env.ca),
        "--no-decrypt",
        "--cert-bound",
        "-H",
        "Content-Type: text/x-cli-test",
        "-d",
        '{"name": "plain", "value": "x"}',
    )
    assert result.code == 1, result.text  # the service wants JWE payloads
    assert env.server.credstore.requests[-1] == (
        "POST",
        "/api/v1/credentials/password",
        "text/x-cli-test",
    )
    assert "payload rejected" in result.out


@pytest.mark.parametrize("kind", ["xsuaa", pytest.param("credstore", marks=NEEDS_JOSERFC)])
def test_request_with_httpx(
    run_inprocess: Runner, env: Env, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The httpx branch, used when requests is not installed."""
    import mtls_auth.httpx as integration
    from mtls_auth.cli import request as request_command

    monkeypatch.setattr(request_command, "integration", lambda: integration)
    if kind == "xsuaa":
        result = run_inprocess(
            *_xsuaa_request(env, env.server.resource_url + "/h", "-X", "PATCH", "-d", "abc", "-i")
        )
        assert result.code == 0, result.text
        head, _, body = result.out.partition("\n\n")
        assert head.startswith("HTTP 200 OK")
        assert json.loads(body)["method"] == "PATCH"
        assert json.loads(body)["body_length"] == 3
    else:
        name = "via-httpx"
        common = [
            "--binding",
            str(env.credstore),
            "--namespace",
            NAMESPACE,
            "--verify",
            str(env.ca),
        ]
        posted = run_inprocess(
            "request",
            f"{env.server.credentials_url}/password",
            *common,
            "-d",
            json.dumps({"name": name, "value": "httpx-value"}),
        )
        assert posted.code == 0, posted.text
        assert env.server.credstore.requests[-1][2] == "application/jose"
        result = run_inprocess(
            "request", f"{env.server.credentials_url}/password?name={name}", *common
        )
        assert result.code == 0, result.text
        assert json.loads(result.out)["value"] == "httpx-value"
    assert_no_secrets(result, env)


@pytest.fixture(scope="module")
def open_server(pki: PKI, client_credential: Credential) -> Iterator[TokenServer]:
    """A server whose resource does not require a client certificate."""
    with TokenServer(pki, require_client_cert=False) as server:
        server.register_client(XSUAA_ID, client_credential)
        yield server


def _plain_request(env: Env, server: TokenServer, tmp_path: Path) -> list[str]:
    binding = _write(tmp_path / "open.json", xsuaa_service_key(server, env.credential, XSUAA_ID))
    return ["request", server.resource_url, "--binding", str(binding), "--verify", str(env.ca)]


def test_request_without_cert_bound_uses_verify(
    run: Runner, env: Env, open_server: TokenServer, tmp_path: Path
) -> None:
    result = run(
        *_plain_request(env, open_server, tmp_path),
        env={"REQUESTS_CA_BUNDLE": None, "CURL_CA_BUNDLE": None},
    )
    assert result.code == 0, result.text
    assert json.loads(result.out)["ok"] is True
    assert open_server.resource_requests[-1].thumbprint is None  # no certificate presented


def test_request_verify_wins_over_requests_ca_bundle(
    run_inprocess: Runner, env: Env, open_server: TokenServer, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(env.pki.untrusted_root.cert_pem, encoding="ascii")
    result = run_inprocess(
        *_plain_request(env, open_server, tmp_path),
        env={"REQUESTS_CA_BUNDLE": str(other_ca), "CURL_CA_BUNDLE": None},
    )
    assert result.code == 0, result.text


def test_request_resource_without_cert_bound_fails_cleanly(run: Runner, env: Env) -> None:
    # the test server requires a client certificate on every connection
    result = run(
        "request", env.server.resource_url, "--binding", str(env.good), "--verify", str(env.ca)
    )
    assert result.code == 2
    assert_one_line_error(result, "request")
    assert_no_secrets(result, env)


# -- errors -------------------------------------------------------------------------------


@also_as_console_script
def test_request_missing_binding_file(run: Runner, env: Env) -> None:
    result = run("request", env.server.resource_url, "--binding", str(env.dir / "nope.json"))
    assert result.code == 2
    assert_one_line_error(result, "request")
    assert "nope.json" in result.err or "existing service-key file" in result.err
    assert result.out == ""


def test_check_missing_binding_file(run: Runner, env: Env) -> None:
    result = run("check", str(env.dir / "nope.json"))
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
def test_runtime_errors_are_one_line(run: Runner, env: Env, args: list[str], message: str) -> None:
    replace = {
        "URL": env.server.resource_url,
        "@MISSING": f"@{env.dir / 'missing-body.txt'}",
        "GOOD": str(env.good),
    }
    args = [replace.get(a, a) for a in args]
    if args[0] == "request":
        args += ["--binding", str(env.good), "--verify", str(env.ca)]
    result = run(*args, env={"VCAP_SERVICES": env.vcap})
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


def test_debug_shows_the_traceback(run: Runner, env: Env) -> None:
    args = ["--debug", "request", env.server.resource_url, "--binding", str(env.dir / "nope.json")]
    if run.mode == "inprocess":
        with pytest.raises(FileNotFoundError):
            cli.main(args)
        return
    result = run(*args)
    assert result.code != 0
    assert "Traceback" in result.err
    assert "nope.json" in result.err or "existing service-key file" in result.err


def test_debug_check_still_prints_no_secrets(run: Runner, env: Env) -> None:
    result = run("--debug", "check", str(env.good), "--fetch", "--verify", str(env.ca))
    assert result.code == 0, result.text
    assert_no_secrets(result, env)
