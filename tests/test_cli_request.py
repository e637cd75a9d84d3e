"""`mtls-auth request`: one HTTP request with a binding's token, as curl would send it.

GET and other methods, headers, bodies from text and files, ``--include``,
the exit code of 4xx answers, the Credential Store's encrypted payloads (and
``--no-decrypt``), httpx instead of requests, ``--cert-bound`` or ``--verify``
alone. Every test runs in-process and as ``python -m mtls_auth`` (a smoke
subset also through the console script) against ``cli_harness``'s
session-wide server; the server's records show what arrived.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_harness import (
    NAMESPACE,
    NEEDS_JOSERFC,
    XSUAA_ID,
    Env,
    Runner,
    also_as_console_script,
    assert_no_secrets,
    assert_one_line_error,
    parametrize_run,
    write_json,
)

from mtls_auth.testing import PKI, Credential, TokenServer, xsuaa_service_key

pytest_generate_tests = parametrize_run


# -- mtls-auth request --------------------------------------------------------------------


def _xsuaa_request(cli_env: Env, url: str, *extra: str) -> list[str]:
    return [
        "request",
        url,
        "--binding",
        str(cli_env.good),
        "--verify",
        str(cli_env.ca),
        "--cert-bound",
        *extra,
    ]


@also_as_console_script
def test_request_get(run: Runner, cli_env: Env) -> None:
    before = len(cli_env.server.resource_requests)
    result = run(*_xsuaa_request(cli_env, cli_env.server.resource_url))
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
    seen = cli_env.server.resource_requests[before:]
    assert [(r.method, r.status, r.thumbprint) for r in seen] == [
        ("GET", 200, cli_env.credential.thumbprint)
    ]
    assert_no_secrets(result, cli_env)


def test_request_method_header_data_include(run: Runner, cli_env: Env) -> None:
    result = run(
        *_xsuaa_request(
            cli_env,
            cli_env.server.resource_url + "/items/7",
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
    assert cli_env.server.resource_requests[-1].method == "PUT"
    assert_no_secrets(result, cli_env)


def test_request_data_from_file_posts(run: Runner, cli_env: Env, tmp_path: Path) -> None:
    payload = tmp_path / "body.json"
    payload.write_bytes(b'{"message": "from a file", "n": 12345}')
    result = run(*_xsuaa_request(cli_env, cli_env.server.resource_url, "-d", f"@{payload}"))
    assert result.code == 0, result.text
    document = json.loads(result.out)
    assert document["method"] == "POST"
    assert document["body_length"] == payload.stat().st_size
    assert_no_secrets(result, cli_env)


def test_request_401_exits_1(run: Runner, cli_env: Env) -> None:
    result = run(*_xsuaa_request(cli_env, cli_env.server.url + "/resource/always-401", "-i"))
    assert result.code == 1, result.text
    assert result.out.startswith("HTTP 401 ")
    assert '"invalid_token"' in result.out
    assert "Traceback" not in result.err
    assert_no_secrets(result, cli_env)


def test_request_404_exits_1(run: Runner, cli_env: Env) -> None:
    result = run(*_xsuaa_request(cli_env, cli_env.server.url + "/nothing-here"))
    assert result.code == 1, result.text
    assert "not_found" in result.out


def _credstore_session(cli_env: Env) -> Any:
    from mtls_auth.requests import credstore_session

    return credstore_session(
        cli_env.credstore_binding, namespace=NAMESPACE, verify=cli_env.server.ca_pem
    )


@also_as_console_script
@NEEDS_JOSERFC
def test_request_credstore_get_decrypts(run: Runner, cli_env: Env) -> None:
    name = f"get-{run.mode}"
    with _credstore_session(cli_env) as session:
        stored = session.post("password", json={"name": name, "value": "cli-s3cret"})
        assert stored.status_code == 201
    result = run(
        "request",
        f"{cli_env.server.credentials_url}/password?name={name}",
        "--binding",
        str(cli_env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(cli_env.ca),
    )
    assert result.code == 0, result.text
    document = json.loads(result.out)
    assert (document["name"], document["value"]) == (name, "cli-s3cret")
    assert cli_env.server.credstore.requests[-1][:2] == ("GET", "/api/v1/credentials/password")
    assert_no_secrets(result, cli_env)


@NEEDS_JOSERFC
def test_request_credstore_post_encrypts(run: Runner, cli_env: Env) -> None:
    name = f"post-{run.mode}"
    result = run(
        "request",
        f"{cli_env.server.credentials_url}/password",
        "--binding",
        str(cli_env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(cli_env.ca),
        "-d",
        json.dumps({"name": name, "value": "sent-encrypted"}),
    )
    assert result.code == 0, result.text
    assert cli_env.server.credstore.requests[-1] == (
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
    with _credstore_session(cli_env) as session:
        assert session.get("password", params={"name": name}).json()["value"] == "sent-encrypted"
    assert_no_secrets(result, cli_env)


@NEEDS_JOSERFC
def test_request_credstore_no_decrypt_shows_the_jwe(run: Runner, cli_env: Env) -> None:
    name = f"raw-{run.mode}"
    with _credstore_session(cli_env) as session:
        session.post("password", json={"name": name, "value": "still-encrypted"})
    result = run(
        "request",
        f"{cli_env.server.credentials_url}/password?name={name}",
        "--binding",
        str(cli_env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(cli_env.ca),
        "--no-decrypt",
        "--cert-bound",
        "-i",
    )
    assert result.code == 0, result.text
    head, _, body = result.out.partition("\n\n")
    assert re.search(r"(?i)content-type: application/jose", head)
    assert len(body.strip().split(".")) == 5  # JWE compact
    assert "still-encrypted" not in result.out
    assert_no_secrets(result, cli_env)


@NEEDS_JOSERFC
def test_request_credstore_no_decrypt_sends_headers_as_given(run: Runner, cli_env: Env) -> None:
    result = run(
        "request",
        f"{cli_env.server.credentials_url}/password",
        "--binding",
        str(cli_env.credstore),
        "--namespace",
        NAMESPACE,
        "--verify",
        str(cli_env.ca),
        "--no-decrypt",
        "--cert-bound",
        "-H",
        "Content-Type: text/x-cli-test",
        "-d",
        '{"name": "plain", "value": "x"}',
    )
    assert result.code == 1, result.text  # the service wants JWE payloads
    assert cli_env.server.credstore.requests[-1] == (
        "POST",
        "/api/v1/credentials/password",
        "text/x-cli-test",
    )
    assert "payload rejected" in result.out


@pytest.mark.parametrize("kind", ["xsuaa", pytest.param("credstore", marks=NEEDS_JOSERFC)])
def test_request_with_httpx(
    run_inprocess: Runner, cli_env: Env, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The httpx branch, used when requests is not installed."""
    import mtls_auth.httpx as integration
    from mtls_auth.cli import request as request_command

    monkeypatch.setattr(request_command, "integration", lambda: integration)
    if kind == "xsuaa":
        result = run_inprocess(
            *_xsuaa_request(
                cli_env, cli_env.server.resource_url + "/h", "-X", "PATCH", "-d", "abc", "-i"
            )
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
            str(cli_env.credstore),
            "--namespace",
            NAMESPACE,
            "--verify",
            str(cli_env.ca),
        ]
        posted = run_inprocess(
            "request",
            f"{cli_env.server.credentials_url}/password",
            *common,
            "-d",
            json.dumps({"name": name, "value": "httpx-value"}),
        )
        assert posted.code == 0, posted.text
        assert cli_env.server.credstore.requests[-1][2] == "application/jose"
        result = run_inprocess(
            "request", f"{cli_env.server.credentials_url}/password?name={name}", *common
        )
        assert result.code == 0, result.text
        assert json.loads(result.out)["value"] == "httpx-value"
    assert_no_secrets(result, cli_env)


@pytest.fixture(scope="module")
def open_server(mtls_pki: PKI, mtls_client_certificate: Credential) -> Iterator[TokenServer]:
    """A server (the kit's) whose resource does not require a client certificate,
    shared by the module's tests (the commands run in subprocesses against it)."""
    with TokenServer(mtls_pki, require_client_cert=False) as server:
        server.register_client(XSUAA_ID, mtls_client_certificate)
        yield server


def _plain_request(cli_env: Env, server: TokenServer, tmp_path: Path) -> list[str]:
    binding = write_json(
        tmp_path / "open.json", xsuaa_service_key(server, cli_env.credential, XSUAA_ID)
    )
    return ["request", server.resource_url, "--binding", str(binding), "--verify", str(cli_env.ca)]


def test_request_without_cert_bound_uses_verify(
    run: Runner, cli_env: Env, open_server: TokenServer, tmp_path: Path
) -> None:
    result = run(
        *_plain_request(cli_env, open_server, tmp_path),
        env={"REQUESTS_CA_BUNDLE": None, "CURL_CA_BUNDLE": None},
    )
    assert result.code == 0, result.text
    assert json.loads(result.out)["ok"] is True
    assert open_server.resource_requests[-1].thumbprint is None  # no certificate presented


def test_request_verify_wins_over_requests_ca_bundle(
    run_inprocess: Runner, cli_env: Env, open_server: TokenServer, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(cli_env.pki.untrusted_root.cert_pem, encoding="ascii")
    result = run_inprocess(
        *_plain_request(cli_env, open_server, tmp_path),
        env={"REQUESTS_CA_BUNDLE": str(other_ca), "CURL_CA_BUNDLE": None},
    )
    assert result.code == 0, result.text


def test_request_resource_without_cert_bound_fails_cleanly(run: Runner, cli_env: Env) -> None:
    # the test server requires a client certificate on every connection
    result = run(
        "request",
        cli_env.server.resource_url,
        "--binding",
        str(cli_env.good),
        "--verify",
        str(cli_env.ca),
    )
    assert result.code == 2
    assert_one_line_error(result, "request")
    assert_no_secrets(result, cli_env)
