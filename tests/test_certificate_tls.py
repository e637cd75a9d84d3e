"""`ClientCertificate.ssl_context`: trust, hardening, the key never on disk, real handshakes.

Every context is new and hardened (TLS 1.2 minimum, the given CA as the only
anchor); ``verify=False`` is refused. The private key reaches OpenSSL only
encrypted under a one-time passphrase (a memory file, a pipe, or an
encrypted temp file removed at once), checked with patched file functions
and under ``strace``. Real mTLS handshakes against the test kit's server, for
every key type, with requests and httpx given the bare context.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from leaks import all_key_pems, secret_lines
from requests.adapters import HTTPAdapter

import mtls_auth._tls as _tls
from mtls_auth import (
    CertificateError,
    ClientCertificate,
    InsecureTransportError,
    MtlsAuthError,
)
from mtls_auth.testing import PKI, Credential, TokenServer
from mtls_auth.testing.plugin import CLIENT_ID

# -- ssl_context ----------------------------------------------------------------------


def test_ssl_context_is_new_on_every_call_and_hardened(
    certificate: ClientCertificate, mtls_pki: PKI
) -> None:
    first = certificate.ssl_context(verify=mtls_pki.root_pem)
    second = certificate.ssl_context(verify=mtls_pki.root_pem)

    assert first is not second
    for context in (first, second):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        assert context.options & ssl.OP_NO_COMPRESSION


def test_verify_true_uses_the_system_trust_store(certificate: ClientCertificate) -> None:
    context = certificate.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert certificate.ssl_context(verify=True).minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    "kind", ["path-str", "pathlib", "pem-str", "pem-bytes", "pem-escaped-newlines"]
)
def test_verify_with_a_private_ca_trusts_only_that_ca(
    certificate: ClientCertificate, mtls_pki: PKI, tmp_path: Path, kind: str
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(mtls_pki.root_pem)  # CA certificates are public
    verify: Any = {
        "path-str": str(bundle),
        "pathlib": bundle,
        "pem-str": mtls_pki.root_pem,
        "pem-bytes": mtls_pki.root_pem.encode("ascii"),
        "pem-escaped-newlines": mtls_pki.root_pem.replace("\n", "\\n"),
    }[kind]

    context = certificate.ssl_context(verify=verify)

    anchors = context.get_ca_certs(binary_form=True)
    assert anchors == [ssl.PEM_cert_to_DER_cert(mtls_pki.root_pem)]


@pytest.mark.parametrize("verify", [False, None])
def test_verify_false_is_refused(certificate: ClientCertificate, verify: Any) -> None:
    with pytest.raises(InsecureTransportError) as info:
        certificate.ssl_context(verify=verify)
    assert isinstance(info.value, MtlsAuthError)
    assert not isinstance(info.value, CertificateError)


@pytest.mark.parametrize(
    ("make_verify", "message"),
    [
        pytest.param(lambda tmp: str(tmp / "missing.pem"), r"does not exist", id="missing-path"),
        pytest.param(
            lambda tmp: (tmp / "junk.pem").write_text("junk") and str(tmp / "junk.pem"),
            r"could not be loaded",
            id="file-without-certificates",
        ),
        pytest.param(
            lambda tmp: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            r"no CERTIFICATE block",
            id="pem-without-certificate",
        ),
        pytest.param(
            lambda tmp: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            r"could not be loaded",
            id="corrupt-pem",
        ),
    ],
)
def test_bad_verify_raises_certificate_error(
    certificate: ClientCertificate, tmp_path: Path, make_verify: Callable[[Path], Any], message: str
) -> None:
    with pytest.raises(CertificateError, match=message):
        certificate.ssl_context(verify=make_verify(tmp_path))


# -- the key never reaches a filesystem in plaintext ----------------------------------

_WRITE_MODE = re.compile(r"[wax+]")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_NOT_A_FILE = ("/proc/self/fd/", "/dev/fd/")


class FileSpy:
    """Records every way Python code could open or create a file."""

    def __init__(self) -> None:
        self.opens: list[tuple[str, str]] = []
        self.temp_files: list[str] = []
        self.memfds = 0
        self.pipes = 0
        self.real_open = builtins.open
        self.real_os_open = os.open
        self.real_memfd = getattr(os, "memfd_create", None)
        self.real_pipe = os.pipe

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def spy_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            self.opens.append((os.fsdecode(file) if not isinstance(file, int) else "", mode))
            return self.real_open(file, mode, *args, **kwargs)

        def spy_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            mode = "w" if flags & _WRITE_FLAGS else "r"
            self.opens.append((os.fsdecode(path), mode))
            return self.real_os_open(path, flags, *args, **kwargs)

        def forbidden(name: str) -> Callable[..., Any]:
            def refuse(*args: Any, **kwargs: Any) -> Any:
                self.temp_files.append(name)
                raise AssertionError(f"tempfile.{name} called")

            return refuse

        def spy_pipe() -> tuple[int, int]:
            self.pipes += 1
            return self.real_pipe()

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(io, "open", spy_open)
        monkeypatch.setattr(os, "open", spy_os_open)
        monkeypatch.setattr(os, "pipe", spy_pipe)
        for name in ("mkstemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
            monkeypatch.setattr(tempfile, name, forbidden(name))
        if self.real_memfd is not None and hasattr(os, "memfd_create"):
            real_memfd = self.real_memfd

            def spy_memfd(*args: Any, **kwargs: Any) -> int:
                self.memfds += 1
                return real_memfd(*args, **kwargs)

            monkeypatch.setattr(os, "memfd_create", spy_memfd)

    def written_files(self) -> list[str]:
        return [
            path
            for path, mode in self.opens
            if _WRITE_MODE.search(mode) and not path.startswith(_NOT_A_FILE)
        ]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Capture what `load_cert_chain` is handed (reading a pipe would consume it)."""
    seen: list[dict[str, Any]] = []
    real = ssl.SSLContext.load_cert_chain
    real_open = builtins.open

    def spy(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        record: dict[str, Any] = {"certfile": certfile, "keyfile": keyfile, "password": password}
        if keyfile is not None and not str(keyfile).startswith("/dev/fd/"):
            with real_open(keyfile, "rb") as handle:
                record["key"] = handle.read()
            record["key_mode"] = os.stat(keyfile).st_mode
        seen.append(record)
        real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    return seen


def _assert_encrypted_key(record: dict[str, Any], credential: Credential) -> None:
    assert isinstance(record["password"], bytes)
    assert len(record["password"]) >= 32
    key = record["key"]
    assert _is_encrypted_pem(key.decode("ascii"))
    for secret in secret_lines(*all_key_pems(credential)):
        assert secret.encode() not in key


def test_ssl_context_opens_no_file_for_writing(
    monkeypatch: pytest.MonkeyPatch, mtls_client_certificate: Credential, mtls_pki: PKI
) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    spy = FileSpy()
    with monkeypatch.context() as patch:
        patch.setattr(_tls, "_PROC_FD_USABLE", None)  # run the probe under the spy
        spy.install(patch)
        context = cert.ssl_context(verify=mtls_pki.root_pem)

    assert isinstance(context, ssl.SSLContext)
    assert spy.written_files() == []
    assert spy.temp_files == []
    if spy.real_memfd is not None and sys.platform == "linux":
        assert spy.memfds >= 2  # chain and key each in an anonymous memory file
        assert all(path.startswith("/proc/self/fd/") for path, _ in spy.opens)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")
def test_key_handed_to_openssl_is_encrypted_under_a_one_time_passphrase(
    loads: list[dict[str, Any]], mtls_client_certificate: Credential, mtls_pki: PKI
) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    cert.ssl_context(verify=mtls_pki.root_pem)
    cert.ssl_context(verify=mtls_pki.root_pem)

    assert len(loads) == 2
    for record in loads:
        assert str(record["keyfile"]).startswith("/proc/self/fd/")
        _assert_encrypted_key(record, mtls_client_certificate)
    assert loads[0]["password"] != loads[1]["password"]
    assert loads[0]["key"] != loads[1]["key"]


@pytest.mark.skipif(not os.path.isdir("/dev/fd") or sys.platform == "win32", reason="no /dev/fd")
def test_pipe_fallback_without_memfd(
    monkeypatch: pytest.MonkeyPatch, mtls_client_certificate: Credential, mtls_pki: PKI
) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    spy = FileSpy()
    with monkeypatch.context() as patch:
        if hasattr(os, "memfd_create"):
            patch.delattr(os, "memfd_create")
        spy.install(patch)
        context = cert.ssl_context(verify=mtls_pki.root_pem)

    assert isinstance(context, ssl.SSLContext)
    assert spy.pipes == 2
    assert spy.written_files() == []
    assert spy.temp_files == []


def test_tempfile_fallback_holds_only_the_encrypted_key_and_is_removed(
    monkeypatch: pytest.MonkeyPatch,
    loads: list[dict[str, Any]],
    mtls_client_certificate: Credential,
    mtls_pki: PKI,
) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    created: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        created.append(path)
        return fd, path

    with monkeypatch.context() as patch:
        if hasattr(os, "memfd_create"):
            patch.delattr(os, "memfd_create")
        patch.setattr(sys, "platform", "win32")  # no /dev/fd either: the last resort
        patch.setattr(tempfile, "mkstemp", recording_mkstemp)
        context = cert.ssl_context(verify=mtls_pki.root_pem)

    assert isinstance(context, ssl.SSLContext)
    assert len(created) == 2
    assert [os.path.exists(path) for path in created] == [False, False]
    (record,) = loads
    assert record["keyfile"] in created
    if os.name == "posix":
        assert record["key_mode"] & 0o077 == 0  # private to this user
    _assert_encrypted_key(record, mtls_client_certificate)


_STRACE_CHILD = textwrap.dedent(
    """
    import json, sys
    data = json.load(sys.stdin)
    from mtls_auth import ClientCertificate
    cert = ClientCertificate.from_pem(data["certificate"], data["key"])
    cert.ssl_context(verify=data["ca"])
    sys.stdout.write("context built\\n")
    """
)
_PLAINTEXT_MARKERS = ("BEGIN PRIVATE KEY", "BEGIN RSA PRIVATE KEY", "BEGIN EC PRIVATE KEY")


def _is_encrypted_pem(text: str) -> bool:
    """Every private key block in `text` is encrypted: PKCS#8 ENCRYPTED PRIVATE KEY,
    or a traditional RSA/EC block with a `Proc-Type: 4,ENCRYPTED` header."""
    text = text.replace("\\n", "\n")
    blocks = re.findall(r"-----BEGIN ([A-Z ]*PRIVATE KEY)-----\n(.{0,40})", text)
    return bool(blocks) and all(
        label == "ENCRYPTED PRIVATE KEY" or head.startswith("Proc-Type: 4,ENCRYPTED")
        for label, head in blocks
    )


_OPEN_CALL = re.compile(
    r'\b(?:openat\((?:AT_FDCWD|-?\d+), |open\()"((?:[^"\\]|\\.)*)", ([A-Z0-9_|]+)'
)
_WRITE_CALL = re.compile(r"\b(?:write|writev|pwrite64)\(")


@pytest.fixture(scope="module")
def strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed")
    probe = subprocess.run(
        [path, "-f", "-e", "trace=openat", sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"strace cannot trace here (ptrace denied?): {reason[0]}")
    return path


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_strace_shows_no_plaintext_key_written_anywhere(
    strace: str, key_type_credentials: dict[str, Credential], mtls_pki: PKI, key_type: str
) -> None:
    credential = key_type_credentials[key_type]
    syscalls = ["openat", "write", "writev", "pwrite64", "memfd_create", "linkat"]
    if platform.machine() in ("x86_64", "i386", "i686"):
        syscalls += ["open", "creat", "rename", "link"]
    # The PEMs reach the child through a pipe on stdin, never through a file; the
    # trace comes back through a pipe too. `-s` is large so that a key hidden
    # behind a long certificate chain in a single write() would still show.
    command = [strace, "-f", "-e", "trace=" + ",".join(syscalls), "-s", "65536"]
    command += [sys.executable, "-B", "-c", _STRACE_CHILD]
    payload = json.dumps(
        {"certificate": credential.chain_pem, "key": credential.key_pem, "ca": mtls_pki.root_pem}
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        command, input=payload, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    trace = result.stderr
    assert result.returncode == 0, trace[-2000:]
    assert "context built" in result.stdout

    written_paths = [
        (path, flags)
        for path, flags in _OPEN_CALL.findall(trace)
        if re.search(r"O_WRONLY|O_RDWR|O_CREAT", flags) and not path.startswith("/dev/")
    ]
    assert written_paths == []
    assert not re.search(r"\bcreat\(|\brename\(|\blinkat?\(", trace)

    writes = [line for line in trace.splitlines() if _WRITE_CALL.search(line)]
    for line in writes:
        if any(marker in line for marker in _PLAINTEXT_MARKERS):
            # Only encrypted key blocks may ever be written anywhere.
            assert _is_encrypted_pem(line), line[:200]
        for secret in secret_lines(*all_key_pems(credential)):
            assert secret not in line
    if sys.platform == "linux":
        assert "memfd_create(" in trace
        assert any("PRIVATE KEY" in line and _is_encrypted_pem(line) for line in writes)


# -- real mTLS handshakes ---------------------------------------------------------------


class ContextAdapter(HTTPAdapter):
    """The minimal requests adapter that hands urllib3 a prepared SSLContext."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def _token_form(client_id: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id}


def _post_with_requests(
    context: ssl.SSLContext, url: str, client_id: str
) -> tuple[int, dict[str, Any]]:
    with requests.Session() as session:
        session.mount("https://", ContextAdapter(context))
        response = session.post(url, data=_token_form(client_id), timeout=10)
        return response.status_code, response.json()


def _post_with_httpx(
    context: ssl.SSLContext, url: str, client_id: str
) -> tuple[int, dict[str, Any]]:
    with httpx.Client(verify=context, timeout=10) as client:
        response = client.post(url, data=_token_form(client_id))
        return response.status_code, response.json()


def _get_resource_with_httpx(context: ssl.SSLContext, url: str, token: str) -> int:
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code


CLIENTS = {"requests": _post_with_requests, "httpx": _post_with_httpx}
TRANSPORT_ERRORS = {
    "requests": requests.exceptions.ConnectionError,
    "httpx": httpx.TransportError,
}


def _wait_for_handshake_failure(server: TokenServer) -> list[str]:
    deadline = time.monotonic() + 5
    while not server.handshake_failures and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.handshake_failures


@pytest.mark.parametrize("library", CLIENTS)
def test_token_request_over_mtls_sends_the_chain(
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    library: str,
) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    context = cert.ssl_context(verify=mtls_server.ca_pem)

    status, body = CLIENTS[library](context, mtls_server.token_url, CLIENT_ID)

    assert status == 200
    assert body["token_type"] == "bearer"
    assert isinstance(body["access_token"], str)
    assert body["access_token"]
    assert body["expires_in"] > 0
    (seen,) = mtls_server.token_requests
    assert seen.client_id == CLIENT_ID
    assert seen.thumbprint == cert.thumbprint
    assert seen.subject == cert.subject
    assert mtls_server.handshake_failures == []
    resource_context = cert.ssl_context(verify=mtls_server.ca_pem)
    url = mtls_server.resource_url
    assert _get_resource_with_httpx(resource_context, url, body["access_token"]) == 200


@pytest.mark.parametrize("key_type", ["ec", "ec384", "ed25519"])
def test_handshake_with_every_key_type(
    mtls_server: TokenServer, key_type_credentials: dict[str, Credential], key_type: str
) -> None:
    credential = key_type_credentials[key_type]
    mtls_server.register_client(f"client-{key_type}", credential)
    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)

    status, body = _post_with_httpx(
        cert.ssl_context(verify=mtls_server.ca_pem), mtls_server.token_url, f"client-{key_type}"
    )

    assert status == 200
    assert body["access_token"]


@pytest.mark.parametrize("library", CLIENTS)
def test_untrusted_client_certificate_is_rejected(
    mtls_server: TokenServer, mtls_pki: PKI, library: str, client_common_name: str
) -> None:
    rogue = mtls_pki.untrusted_client(client_common_name)  # same subject, wrong CA
    cert = ClientCertificate.from_pem(rogue.chain_pem, rogue.key_pem)
    context = cert.ssl_context(verify=mtls_server.ca_pem)

    with pytest.raises(TRANSPORT_ERRORS[library]):
        CLIENTS[library](context, mtls_server.token_url, CLIENT_ID)

    assert _wait_for_handshake_failure(mtls_server)
    assert mtls_server.token_requests == []


@pytest.mark.parametrize("library", CLIENTS)
def test_leaf_without_its_intermediate_is_rejected(
    mtls_server: TokenServer, mtls_client_certificate: Credential, library: str
) -> None:
    # The server trusts only the root: the intermediate must travel with the leaf.
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.cert_pem, mtls_client_certificate.key_pem
    )
    context = cert.ssl_context(verify=mtls_server.ca_pem)

    with pytest.raises(TRANSPORT_ERRORS[library]):
        CLIENTS[library](context, mtls_server.token_url, CLIENT_ID)

    assert _wait_for_handshake_failure(mtls_server)
    assert mtls_server.token_requests == []


def test_client_refuses_a_server_outside_its_trust_anchors(
    mtls_server: TokenServer, mtls_pki: PKI, mtls_client_certificate: Credential
) -> None:
    # Trusting only an unrelated CA, the client must refuse the server.
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    context = cert.ssl_context(verify=mtls_pki.untrusted_root.cert_pem)

    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        _post_with_httpx(context, mtls_server.token_url, CLIENT_ID)
