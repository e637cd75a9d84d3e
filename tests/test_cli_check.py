"""`mtls-auth check`: a binding's offline diagnosis and, with ``--fetch``, a real token request.

Service-key files (good, expiring, expired, mismatched key, secret-based, with
fields missing), Kubernetes directories and ``VCAP_SERVICES``; the output
(text and ``--json``) and the exit codes 0 (OK), 1 (WARNING) and 2 (ERROR).
Every test runs in-process and as ``python -m mtls_auth`` (a smoke subset also
through the console script) against ``cli_harness``'s session-wide server.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
from cli_harness import (
    CLIENT_SECRET,
    CREDSTORE_ID,
    NAMESPACE,
    XSUAA_ID,
    Env,
    Runner,
    also_as_console_script,
    assert_no_secrets,
    assert_one_line_error,
    parametrize_run,
)

pytest_generate_tests = parametrize_run


# -- mtls-auth check ----------------------------------------------------------------------


@also_as_console_script
def test_check_good_binding(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.good))
    assert result.code == 0, result.text
    out = result.out
    assert f"binding   {cli_env.good}" in out
    assert re.search(r"kind\s+xsuaa", out)
    assert re.search(rf"client id\s+{re.escape(XSUAA_ID)}", out)
    assert re.search(rf"token URL\s+{re.escape(cli_env.server.token_url)}", out)
    assert re.search(rf"subject\s+{re.escape(cli_env.credential.subject)}", out)
    assert re.search(r"issuer\s+CN=mtls-auth Test Intermediate CA", out)
    expiry = f"{cli_env.credential.not_after:%Y-%m-%d %H:%M} UTC"
    left = re.search(rf"expires\s+{expiry} \((\d+\.\d) days left\)", out)
    assert left, out
    assert 6.0 < float(left.group(1)) <= 7.0
    assert re.search(r"key\s+RSA 2048", out)
    assert f"x5t#S256      {cli_env.credential.thumbprint}" in out
    assert re.search(r"chain\s+2 certificate\(s\)", out)
    assert "WARNING" not in out
    assert "ERROR" not in out
    assert out.rstrip().endswith("status    OK")
    assert_no_secrets(result, cli_env)


@also_as_console_script
def test_check_expiring_within_a_day_warns(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.soon))
    assert result.code == 1, result.text
    assert re.search(r"WARNING\s+the certificate expires in [45]\.\d hours", result.out)
    assert re.search(r"\(0\.2 days left\)", result.out)
    assert result.out.rstrip().endswith("status    WARNING")
    assert_no_secrets(result, cli_env)


@also_as_console_script
def test_check_expired(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.expired))
    assert result.code == 2, result.text
    assert re.search(r"ERROR\s+the certificate expired on \d{4}-\d\d-\d\d", result.out)
    assert "expired 1.0 days ago" in result.out
    assert result.out.rstrip().endswith("status    ERROR")
    assert_no_secrets(result, cli_env)


def test_check_mismatched_key(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.mismatch))
    assert result.code == 2, result.text
    assert "the private key does not match the certificate" in result.out
    assert result.out.rstrip().endswith("status    ERROR")
    assert_no_secrets(result, cli_env)


def test_check_secret_based_binding(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.secret))
    assert result.code == 2, result.text
    assert "client secret" in result.out
    assert "x509" in result.out
    assert "binding-secret" in result.out
    assert CLIENT_SECRET not in result.text
    assert_no_secrets(result, cli_env)


def test_check_missing_fields_are_named(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.missing))
    assert result.code == 2, result.text
    assert "lacks 'certificate', 'key'" in result.out
    assert_no_secrets(result, cli_env)


@pytest.mark.parametrize("which", ["k8s_xsuaa", "k8s_credstore"])
def test_check_kubernetes_directory(run: Runner, cli_env: Env, which: str) -> None:
    directory = getattr(cli_env, which)
    result = run("check", str(directory))
    assert result.code == 0, result.text
    kind = "xsuaa" if which == "k8s_xsuaa" else "credstore"
    client_id = XSUAA_ID if kind == "xsuaa" else CREDSTORE_ID
    assert re.search(rf"kind\s+{kind}\n", result.out)
    assert re.search(rf"client id\s+{re.escape(client_id)}", result.out)
    assert cli_env.credential.thumbprint in result.out
    assert_no_secrets(result, cli_env)


@also_as_console_script
def test_check_vcap_by_label(run: Runner, cli_env: Env) -> None:
    result = run("check", "--vcap", "xsuaa", env={"VCAP_SERVICES": cli_env.vcap})
    assert result.code == 0, result.text
    assert "binding   VCAP_SERVICES xsuaa" in result.out
    assert re.search(rf"client id\s+{re.escape(XSUAA_ID)}", result.out)
    assert_no_secrets(result, cli_env)


def test_check_vcap_by_label_and_name_json(run: Runner, cli_env: Env) -> None:
    result = run(
        "check", "--vcap", "credstore:my-credstore", "--json", env={"VCAP_SERVICES": cli_env.vcap}
    )
    assert result.code == 0, result.text
    report = json.loads(result.out)
    assert report["source"] == "VCAP_SERVICES credstore:my-credstore"
    assert report["kind"] == "credstore"
    assert report["client_id"] == CREDSTORE_ID
    assert report["token_url"] == cli_env.server.credstore_token_url
    assert report["binding_expires_at"] is not None
    assert_no_secrets(result, cli_env)


def test_check_vcap_unknown_name(run: Runner, cli_env: Env) -> None:
    result = run("check", "--vcap", "credstore:nope", env={"VCAP_SERVICES": cli_env.vcap})
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
def test_check_json(run: Runner, cli_env: Env, name: str, status: str, code: int) -> None:
    path = getattr(cli_env, name)
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
    assert report["token_url"] == cli_env.server.token_url
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
    assert_no_secrets(result, cli_env)


def test_check_json_on_unreadable_binding(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.secret), "--json")
    assert result.code == 2
    report = json.loads(result.out)
    assert report["status"] == "error"
    assert report["kind"] is None
    assert "x509" in report["findings"][0]["message"]
    assert_no_secrets(result, cli_env)


@also_as_console_script
def test_check_fetch_xsuaa_jwt(run: Runner, cli_env: Env) -> None:
    before = cli_env.server.token_request_count
    result = run("check", str(cli_env.good), "--fetch", "--verify", str(cli_env.ca))
    assert result.code == 0, result.text
    assert re.search(
        r"token\s+fetched over mTLS, expires_in 3600s, jwt, scopes: uaa\.resource, "
        r"cnf matches the certificate",
        result.out,
    )
    requests_made = cli_env.server.token_requests[before:]
    assert [r.client_id for r in requests_made] == [XSUAA_ID]
    assert requests_made[0].thumbprint == cli_env.credential.thumbprint
    assert_no_secrets(result, cli_env)


def test_check_fetch_json(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.k8s_xsuaa), "--fetch", "--verify", str(cli_env.ca), "--json")
    assert result.code == 0, result.text
    token = json.loads(result.out)["token"]
    assert token == {
        "expires_in": 3600,
        "format": "jwt",
        "scopes": ["uaa.resource"],
        "cnf_x5t#S256": cli_env.credential.thumbprint,
        "cnf_matches_certificate": True,
    }
    assert_no_secrets(result, cli_env)


def test_check_fetch_vcap(run: Runner, cli_env: Env) -> None:
    result = run(
        "check",
        "--vcap",
        "xsuaa",
        "--fetch",
        "--verify",
        str(cli_env.ca),
        env={"VCAP_SERVICES": cli_env.vcap},
    )
    assert result.code == 0, result.text
    assert "cnf matches the certificate" in result.out
    assert_no_secrets(result, cli_env)


def test_check_fetch_credstore_with_namespace(run: Runner, cli_env: Env) -> None:
    before = cli_env.server.token_request_count
    result = run(
        "check",
        str(cli_env.credstore),
        "--fetch",
        "--verify",
        str(cli_env.ca),
        "--namespace",
        NAMESPACE,
        "--json",
    )
    assert result.code == 0, result.text
    assert json.loads(result.out)["token"] == {"expires_in": 3600, "format": "opaque"}
    sent = cli_env.server.token_requests[before:]
    assert [(r.path, r.client_id, r.namespace) for r in sent] == [
        ("/api/v1/token", CREDSTORE_ID, NAMESPACE)
    ]
    assert_no_secrets(result, cli_env)


def test_check_fetch_credstore_without_namespace(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.credstore), "--fetch", "--verify", str(cli_env.ca))
    assert result.code == 2
    assert re.search(r"ERROR\s+token fetch failed: .*namespace", result.out)
    assert_no_secrets(result, cli_env)


def test_check_fetch_refused(run: Runner, cli_env: Env) -> None:
    result = run("check", str(cli_env.unregistered), "--fetch", "--verify", str(cli_env.ca))
    assert result.code == 2, result.text
    assert re.search(r"ERROR\s+token fetch failed: ", result.out)
    assert "Traceback" not in result.err
    assert_no_secrets(result, cli_env)


def test_check_fetch_untrusted_server(run: Runner, cli_env: Env) -> None:
    # without --verify the system trust store does not know the test PKI
    result = run("check", str(cli_env.good), "--fetch")
    assert result.code == 2, result.text
    assert re.search(
        r"ERROR\s+token fetch failed: could not verify the TLS certificate", result.out
    )
    assert_no_secrets(result, cli_env)


def test_check_fetch_skipped_when_offline_check_fails(run: Runner, cli_env: Env) -> None:
    before = cli_env.server.token_request_count
    result = run("check", str(cli_env.expired), "--fetch", "--verify", str(cli_env.ca))
    assert result.code == 2
    assert "token " not in result.out.replace("token URL", "")
    assert cli_env.server.token_request_count == before


@pytest.mark.parametrize(
    ("name", "hours", "code", "status"),
    [("good", "200", 1, "WARNING"), ("soon", "1", 0, "OK"), ("soon", "24", 1, "WARNING")],
)
def test_check_warn_hours(
    run: Runner, cli_env: Env, name: str, hours: str, code: int, status: str
) -> None:
    result = run("check", str(getattr(cli_env, name)), "--warn-hours", hours)
    assert result.code == code, result.text
    assert result.out.rstrip().endswith(f"status    {status}")


def test_check_help_documents_exit_codes(run: Runner) -> None:
    result = run("check", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "Exit codes: 0 ok, 1 warning (certificate expiring soon), 2 error, 3 usage error" in (
        text
    )
