"""`ClientCertificate.from_pem` and `ClientCertificate.ssl_context`.

Everything runs against a PKI generated at test time; the handshake tests talk to
a real loopback mTLS token server that trusts only the PKI root.
"""

from __future__ import annotations

import base64
import builtins
import copy
import hashlib
import io
import json
import logging
import os
import pickle
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter

import mtls_auth._tls as _tls
from mtls_auth import (
    CertificateError,
    ClientCertificate,
    InsecureTransportError,
    MtlsAuthError,
)
from mtls_auth.testing import PKI, Credential, TokenServer

PASSWORD = "s3cret-pässword"  # non-ASCII on purpose: str passwords are UTF-8 encoded

EXPECTED_KEY_TYPE = {
    "rsa": "RSA 2048",
    "ec": "EC P-256",
    "ec384": "EC P-384",
    "ed25519": "Ed25519",
}


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credentials(pki: PKI, client_credential: Credential) -> dict[str, Credential]:
    """One client credential per key type, issued by the intermediate."""
    made = {"rsa": client_credential}
    for key_type in ("ec", "ec384", "ed25519"):
        made[key_type] = pki.issue_client(f"client-{key_type}", key_type=key_type)
    return made


def legacy_encrypted(credential: Credential, password: bytes) -> str:
    """PKCS#1 / SEC1 with an OpenSSL ``Proc-Type: 4,ENCRYPTED`` header."""
    try:
        pem = credential.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(password),
        )
    except (ValueError, TypeError) as exc:  # pragma: no cover - depends on cryptography
        pytest.skip(f"cryptography cannot write legacy encrypted PEM: {exc}")
    text = pem.decode("ascii")
    assert "Proc-Type: 4,ENCRYPTED" in text
    return text


def secret_lines(*pems: str) -> list[str]:
    """The base64 body lines of private key PEMs: none may ever leave the object."""
    lines = []
    for pem in pems:
        for line in pem.replace("\\n", "\n").splitlines():
            line = line.strip()
            if len(line) >= 16 and not line.startswith("-----") and ":" not in line:
                lines.append(line)
    assert lines
    return lines


def all_key_pems(credential: Credential) -> list[str]:
    pems = [credential.key_pem, credential.key_pem_pkcs8()]
    if credential.key_type.startswith("RSA"):
        pems.append(credential.key_pem_pkcs1())
    return pems


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and everything reachable through `__cause__` and `__context__`."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


def assert_no_secret(exc: BaseException, secrets: list[str]) -> None:
    texts = []
    for link in exception_chain(exc):
        texts += [str(link), repr(link), *(repr(a) for a in link.args)]
    texts.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for text in texts:
        for secret in secrets:
            assert secret not in text, "key material in an exception message"


def thumbprint_of_pem(cert_pem: str) -> str:
    """x5t#S256 computed with the standard library only: SHA-256 of the DER, base64url."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem)
    digest = hashlib.sha256(der).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


# -- accepted key formats -------------------------------------------------------------

# id -> (key type, function returning (key PEM, password))
KeyMaker = Callable[[Credential], "tuple[str, str | bytes | None]"]
KEY_FORMATS: dict[str, tuple[str, KeyMaker]] = {
    "pkcs1-rsa": ("rsa", lambda c: (c.key_pem_pkcs1(), None)),
    "pkcs8-rsa": ("rsa", lambda c: (c.key_pem_pkcs8(), None)),
    "pkcs8-ec": ("ec", lambda c: (c.key_pem_pkcs8(), None)),
    "sec1-ec": ("ec", lambda c: (c.key_pem_sec1(), None)),
    "sec1-ec384": ("ec384", lambda c: (c.key_pem_sec1(), None)),
    "pkcs8-ed25519": ("ed25519", lambda c: (c.key_pem_pkcs8(), None)),
    "encrypted-pkcs8-rsa-str-password": (
        "rsa",
        lambda c: (c.key_pem_encrypted(PASSWORD.encode()), PASSWORD),
    ),
    "encrypted-pkcs8-rsa-bytes-password": (
        "rsa",
        lambda c: (c.key_pem_encrypted(PASSWORD.encode()), PASSWORD.encode()),
    ),
    "encrypted-pkcs8-ec": ("ec", lambda c: (c.key_pem_encrypted(b"pw"), "pw")),
    "legacy-encrypted-pkcs1-rsa": ("rsa", lambda c: (legacy_encrypted(c, b"pw"), "pw")),
    "legacy-encrypted-sec1-ec": ("ec", lambda c: (legacy_encrypted(c, b"pw"), b"pw")),
}


def _as_bytes(text: str) -> bytes:
    return text.encode("ascii")


def _escaped(text: str) -> str:
    # What a JSON service key looks like when its value is pasted verbatim.
    return text.replace("\n", "\\n")


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


ENCODINGS: dict[str, Callable[[str], str | bytes]] = {
    "str": lambda text: text,
    "bytes": _as_bytes,
    "escaped-newlines": _escaped,
    "escaped-newlines-bytes": lambda text: _as_bytes(_escaped(text)),
    "crlf": _crlf,
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("key_format", KEY_FORMATS)
def test_from_pem_accepts_every_key_format(
    credentials: dict[str, Credential], key_format: str, encoding: str
) -> None:
    key_type, make_key = KEY_FORMATS[key_format]
    credential = credentials[key_type]
    key_pem, password = make_key(credential)
    encode = ENCODINGS[encoding]

    cert = ClientCertificate.from_pem(
        encode(credential.chain_pem), encode(key_pem), password=password
    )

    assert cert.key_type == EXPECTED_KEY_TYPE[key_type]
    assert cert.subject == credential.subject
    assert cert.thumbprint == credential.thumbprint
    assert len(cert.chain) == 2


@pytest.mark.parametrize("key_type", EXPECTED_KEY_TYPE)
def test_ssl_context_loads_every_key_type(
    credentials: dict[str, Credential], pki: PKI, key_type: str
) -> None:
    credential = credentials[key_type]
    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)
    context = cert.ssl_context(verify=pki.root_pem)
    assert isinstance(context, ssl.SSLContext)


def test_password_given_for_an_unencrypted_key_is_ignored(client_credential: Credential) -> None:
    cert = ClientCertificate.from_pem(
        client_credential.chain_pem, client_credential.key_pem, password="unused"
    )
    assert cert.thumbprint == client_credential.thumbprint


# -- chain handling and properties ----------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(("leaf", "intermediate"), id="leaf-first"),
        pytest.param(("intermediate", "leaf"), id="leaf-last"),
        pytest.param(("root", "leaf", "intermediate"), id="root-leaf-intermediate"),
        pytest.param(("intermediate", "root", "leaf"), id="intermediate-root-leaf"),
    ],
)
def test_leaf_is_found_by_its_key_and_put_first(
    pki: PKI, client_credential: Credential, order: tuple[str, ...]
) -> None:
    pems = {
        "leaf": client_credential.cert_pem,
        "intermediate": pki.intermediate_pem,
        "root": pki.root_pem,
    }
    cert = ClientCertificate.from_pem(
        "".join(pems[name] for name in order), client_credential.key_pem
    )

    assert cert.chain[0] == client_credential.certificate
    assert cert.certificate == client_credential.certificate
    assert cert.subject == client_credential.subject
    # Then each issuer in turn: leaf, intermediate, root.
    expected = [client_credential.certificate, pki.intermediate.certificate]
    if "root" in order:
        expected.append(pki.root.certificate)
    assert list(cert.chain) == expected
    assert cert.certificate_pem.startswith(client_credential.cert_pem)


def test_leaf_alone_is_a_chain_of_one(client_credential: Credential) -> None:
    cert = ClientCertificate.from_pem(client_credential.cert_pem, client_credential.key_pem)
    assert cert.chain == (client_credential.certificate,)
    assert cert.certificate_pem == client_credential.cert_pem


def test_properties(pki: PKI, client_credential: Credential) -> None:
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)

    assert cert.not_after.tzinfo is not None
    assert cert.not_after.utcoffset() == timedelta(0)
    assert cert.not_after == client_credential.certificate.not_valid_after_utc
    assert cert.not_before == client_credential.certificate.not_valid_before_utc
    assert cert.thumbprint == thumbprint_of_pem(client_credential.cert_pem)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cert.thumbprint)
    assert cert.subject == "CN=sb-client!t1,O=mtls-auth testing,C=DE"
    assert cert.subject == client_credential.subject
    assert cert.issuer == pki.intermediate.subject
    assert cert.key_type == "RSA 2048"
    remaining = cert.expires_in()
    assert timedelta(days=6) < remaining <= timedelta(days=7)
    assert cert.expires_in(cert.not_after) == timedelta(0)


def test_thumbprint_differs_for_a_rotated_certificate_with_the_same_subject(pki: PKI) -> None:
    first, second = pki.issue_client("rotating"), pki.issue_client("rotating")
    a = ClientCertificate.from_pem(first.chain_pem, first.key_pem)
    b = ClientCertificate.from_pem(second.chain_pem, second.key_pem)
    assert a.subject == b.subject
    assert a.thumbprint != b.thumbprint
    assert a != b


def test_equality_follows_the_leaf(client_credential: Credential) -> None:
    a = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
    b = ClientCertificate.from_pem(client_credential.cert_pem, client_credential.key_pem_pkcs8())
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


# -- errors ---------------------------------------------------------------------------


def _corrupt_body(pem: str) -> str:
    lines = pem.splitlines()
    lines[3] = "A" * len(lines[3])
    return "\n".join(lines) + "\n"


def _error_cases() -> list[Any]:
    """(id, builder) pairs; a builder gets (pki, credential) and returns
    (certificate, key, password, expected message regex, key PEMs in play)."""

    def not_pem_certificate(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return ("hello, world", c.key_pem, None, r"certificate is not PEM", [])

    def not_pem_key(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, "not a key at all", None, r"private key is not PEM", [])

    def empty_key(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, "", None, r"private key is not PEM", [])

    def key_as_certificate(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.key_pem, c.key_pem, None, r"no certificate found.*RSA PRIVATE KEY", [])

    def certificate_as_key(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, c.chain_pem, None, r"no private key found.*CERTIFICATE", [])

    def mismatched_key(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = pki.mismatched_key()
        return (c.chain_pem, key, None, r"private key does not match the certificate", [key])

    def two_keys(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = c.key_pem + pki.mismatched_key()
        return (c.chain_pem, key, None, r"holds 2 private keys", [key])

    def corrupt_key(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = _corrupt_body(c.key_pem)
        return (
            c.chain_pem,
            key,
            None,
            r"private key is not valid PEM.*could not be decoded",
            [key],
        )

    def corrupt_certificate(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (
            _corrupt_body(c.cert_pem),
            c.key_pem,
            None,
            r"certificate #1 .*could not be decoded",
            [],
        )

    def password_missing(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = c.key_pem_encrypted(b"pw")
        return (c.chain_pem, key, None, r"encrypted but no password was given", [key])

    def legacy_password_missing(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = legacy_encrypted(c, b"pw")
        return (c.chain_pem, key, None, r"encrypted but no password was given", [key])

    def password_wrong(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = c.key_pem_encrypted(b"right password")
        return (
            c.chain_pem,
            key,
            "Inc0rrect-passw0rd",
            r"password for the private key is wrong",
            [key],
        )

    def legacy_password_wrong(pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = legacy_encrypted(c, b"right password")
        return (
            c.chain_pem,
            key,
            b"N0t-the-passw0rd",
            r"password for the private key is wrong",
            [key],
        )

    def not_text(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, 12345, None, r"must be PEM text \(str or bytes\), not int", [])

    def non_ascii(pki: PKI, c: Credential) -> tuple[Any, ...]:
        return ("-----BEGIN CERTIFICATE-----\nMIIé\n", c.key_pem, None, r"non-ASCII", [])

    cases = [
        not_pem_certificate,
        not_pem_key,
        empty_key,
        key_as_certificate,
        certificate_as_key,
        mismatched_key,
        two_keys,
        corrupt_key,
        corrupt_certificate,
        password_missing,
        legacy_password_missing,
        password_wrong,
        legacy_password_wrong,
        not_text,
        non_ascii,
    ]
    return [pytest.param(case, id=case.__name__.replace("_", "-")) for case in cases]


@pytest.mark.parametrize("case", _error_cases())
def test_from_pem_errors_say_what_is_wrong_and_leak_no_key(
    pki: PKI, client_credential: Credential, case: Callable[..., tuple[Any, ...]]
) -> None:
    certificate, key, password, message, extra_pems = case(pki, client_credential)

    with pytest.raises(CertificateError, match=message) as info:
        ClientCertificate.from_pem(certificate, key, password=password)

    assert isinstance(info.value, MtlsAuthError)
    secrets = secret_lines(*all_key_pems(client_credential), *extra_pems)
    if isinstance(password, (str, bytes)):
        secrets.append(password if isinstance(password, str) else password.decode())
    assert_no_secret(info.value, secrets)


def test_expired_certificate_is_refused_with_its_date(pki: PKI) -> None:
    credential = pki.expired_client()
    expiry = credential.not_after.strftime("%Y-%m-%d")

    with pytest.raises(CertificateError, match=rf"expired on {expiry}") as info:
        ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)

    assert re.search(r"\d{4}-\d{2}-\d{2}", str(info.value))
    assert credential.subject in str(info.value)
    assert_no_secret(info.value, secret_lines(*all_key_pems(credential)))


def test_not_yet_valid_certificate_is_refused(pki: PKI) -> None:
    credential = pki.issue_client(
        "future", not_before=pki.now + timedelta(days=1), not_after=pki.now + timedelta(days=8)
    )
    start = credential.not_before.strftime("%Y-%m-%d")
    with pytest.raises(CertificateError, match=rf"not valid before {start}"):
        ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)


@pytest.mark.parametrize(
    ("lifetime", "warns"),
    [
        pytest.param(timedelta(hours=2), True, id="2-hours"),
        pytest.param(timedelta(hours=23), True, id="23-hours"),
        pytest.param(timedelta(hours=26), False, id="26-hours"),
        pytest.param(timedelta(days=7), False, id="7-days"),
    ],
)
def test_expiry_within_24_hours_logs_a_warning(
    pki: PKI, caplog: pytest.LogCaptureFixture, lifetime: timedelta, warns: bool
) -> None:
    credential = pki.issue_client("short-lived", not_after=pki.now + lifetime)
    caplog.set_level(logging.DEBUG, logger="mtls_auth")

    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)

    warnings = [r for r in caplog.records if r.name == "mtls_auth" and r.levelno == logging.WARNING]
    if warns:
        assert len(warnings) == 1
        text = warnings[0].getMessage()
        assert cert.subject in text
        assert cert.not_after.strftime("%Y-%m-%d") in text
    else:
        assert warnings == []
    for record in caplog.records:
        for secret in secret_lines(*all_key_pems(credential)):
            assert secret not in record.getMessage()


# -- no secrets out -------------------------------------------------------------------


@pytest.fixture
def cert(client_credential: Credential) -> ClientCertificate:
    return ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)


@pytest.mark.parametrize("render", [repr, str, format], ids=["repr", "str", "format"])
def test_repr_shows_subject_and_thumbprint_and_no_key(
    cert: ClientCertificate, client_credential: Credential, render: Callable[[object], str]
) -> None:
    text = render(cert)
    assert client_credential.subject in text
    assert client_credential.thumbprint in text
    assert "PRIVATE KEY" not in text
    for secret in secret_lines(*all_key_pems(client_credential)):
        assert secret not in text


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_refuses_to_pickle(cert: ClientCertificate, protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(cert, protocol=protocol)


def test_copies_are_the_same_object(cert: ClientCertificate) -> None:
    assert copy.copy(cert) is cert
    assert copy.deepcopy(cert) is cert


@pytest.mark.parametrize("name", ["subject", "thumbprint", "not_after", "_key", "_chain", "extra"])
def test_attributes_cannot_be_set(cert: ClientCertificate, name: str) -> None:
    with pytest.raises(AttributeError):
        setattr(cert, name, "changed")
    assert not hasattr(cert, "__dict__")


@pytest.mark.parametrize("name", ["_key", "_thumbprint", "_chain", "subject"])
def test_attributes_cannot_be_deleted(cert: ClientCertificate, name: str) -> None:
    with pytest.raises(AttributeError):
        delattr(cert, name)
    assert cert.thumbprint
    assert cert.subject


def test_constructor_is_closed() -> None:
    with pytest.raises(TypeError, match="from_pem"):
        ClientCertificate()


# -- ssl_context ----------------------------------------------------------------------


def test_ssl_context_is_new_on_every_call_and_hardened(cert: ClientCertificate, pki: PKI) -> None:
    first = cert.ssl_context(verify=pki.root_pem)
    second = cert.ssl_context(verify=pki.root_pem)

    assert first is not second
    for context in (first, second):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        assert context.options & ssl.OP_NO_COMPRESSION


def test_verify_true_uses_the_system_trust_store(cert: ClientCertificate) -> None:
    context = cert.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert cert.ssl_context(verify=True).minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    "kind", ["path-str", "pathlib", "pem-str", "pem-bytes", "pem-escaped-newlines"]
)
def test_verify_with_a_private_ca_trusts_only_that_ca(
    cert: ClientCertificate, pki: PKI, tmp_path: Path, kind: str
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(pki.root_pem)  # CA certificates are public
    verify: Any = {
        "path-str": str(bundle),
        "pathlib": bundle,
        "pem-str": pki.root_pem,
        "pem-bytes": pki.root_pem.encode("ascii"),
        "pem-escaped-newlines": pki.root_pem.replace("\n", "\\n"),
    }[kind]

    context = cert.ssl_context(verify=verify)

    anchors = context.get_ca_certs(binary_form=True)
    assert anchors == [ssl.PEM_cert_to_DER_cert(pki.root_pem)]


@pytest.mark.parametrize("verify", [False, None])
def test_verify_false_is_refused(cert: ClientCertificate, verify: Any) -> None:
    with pytest.raises(InsecureTransportError) as info:
        cert.ssl_context(verify=verify)
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
    cert: ClientCertificate, tmp_path: Path, make_verify: Callable[[Path], Any], message: str
) -> None:
    with pytest.raises(CertificateError, match=message):
        cert.ssl_context(verify=make_verify(tmp_path))


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
    monkeypatch: pytest.MonkeyPatch, client_credential: Credential, pki: PKI
) -> None:
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
    spy = FileSpy()
    with monkeypatch.context() as patch:
        patch.setattr(_tls, "_PROC_FD_USABLE", None)  # run the probe under the spy
        spy.install(patch)
        context = cert.ssl_context(verify=pki.root_pem)

    assert isinstance(context, ssl.SSLContext)
    assert spy.written_files() == []
    assert spy.temp_files == []
    if spy.real_memfd is not None and sys.platform == "linux":
        assert spy.memfds >= 2  # chain and key each in an anonymous memory file
        assert all(path.startswith("/proc/self/fd/") for path, _ in spy.opens)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create")
def test_key_handed_to_openssl_is_encrypted_under_a_one_time_passphrase(
    loads: list[dict[str, Any]], client_credential: Credential, pki: PKI
) -> None:
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
    cert.ssl_context(verify=pki.root_pem)
    cert.ssl_context(verify=pki.root_pem)

    assert len(loads) == 2
    for record in loads:
        assert str(record["keyfile"]).startswith("/proc/self/fd/")
        _assert_encrypted_key(record, client_credential)
    assert loads[0]["password"] != loads[1]["password"]
    assert loads[0]["key"] != loads[1]["key"]


@pytest.mark.skipif(not os.path.isdir("/dev/fd") or sys.platform == "win32", reason="no /dev/fd")
def test_pipe_fallback_without_memfd(
    monkeypatch: pytest.MonkeyPatch, client_credential: Credential, pki: PKI
) -> None:
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
    spy = FileSpy()
    with monkeypatch.context() as patch:
        if hasattr(os, "memfd_create"):
            patch.delattr(os, "memfd_create")
        spy.install(patch)
        context = cert.ssl_context(verify=pki.root_pem)

    assert isinstance(context, ssl.SSLContext)
    assert spy.pipes == 2
    assert spy.written_files() == []
    assert spy.temp_files == []


def test_tempfile_fallback_holds_only_the_encrypted_key_and_is_removed(
    monkeypatch: pytest.MonkeyPatch,
    loads: list[dict[str, Any]],
    client_credential: Credential,
    pki: PKI,
) -> None:
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
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
        context = cert.ssl_context(verify=pki.root_pem)

    assert isinstance(context, ssl.SSLContext)
    assert len(created) == 2
    assert [os.path.exists(path) for path in created] == [False, False]
    (record,) = loads
    assert record["keyfile"] in created
    if os.name == "posix":
        assert record["key_mode"] & 0o077 == 0  # private to this user
    _assert_encrypted_key(record, client_credential)


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
    strace: str, credentials: dict[str, Credential], pki: PKI, key_type: str
) -> None:
    credential = credentials[key_type]
    syscalls = ["openat", "write", "writev", "pwrite64", "memfd_create", "linkat"]
    if platform.machine() in ("x86_64", "i386", "i686"):
        syscalls += ["open", "creat", "rename", "link"]
    # The PEMs reach the child through a pipe on stdin, never through a file; the
    # trace comes back through a pipe too. `-s` is large so that a key hidden
    # behind a long certificate chain in a single write() would still show.
    command = [strace, "-f", "-e", "trace=" + ",".join(syscalls), "-s", "65536"]
    command += [sys.executable, "-B", "-c", _STRACE_CHILD]
    payload = json.dumps(
        {"certificate": credential.chain_pem, "key": credential.key_pem, "ca": pki.root_pem}
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
    token_server: TokenServer,
    client_credential: Credential,
    client_id: str,
    library: str,
) -> None:
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
    context = cert.ssl_context(verify=token_server.ca_pem)

    status, body = CLIENTS[library](context, token_server.token_url, client_id)

    assert status == 200
    assert body["token_type"] == "bearer"
    assert isinstance(body["access_token"], str)
    assert body["access_token"]
    assert body["expires_in"] > 0
    (seen,) = token_server.token_requests
    assert seen.client_id == client_id
    assert seen.thumbprint == cert.thumbprint
    assert seen.subject == cert.subject
    assert token_server.handshake_failures == []
    resource_context = cert.ssl_context(verify=token_server.ca_pem)
    url = token_server.resource_url
    assert _get_resource_with_httpx(resource_context, url, body["access_token"]) == 200


@pytest.mark.parametrize("key_type", ["ec", "ec384", "ed25519"])
def test_handshake_with_every_key_type(
    token_server: TokenServer, credentials: dict[str, Credential], key_type: str
) -> None:
    credential = credentials[key_type]
    token_server.register_client(f"client-{key_type}", credential)
    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)

    status, body = _post_with_httpx(
        cert.ssl_context(verify=token_server.ca_pem), token_server.token_url, f"client-{key_type}"
    )

    assert status == 200
    assert body["access_token"]


@pytest.mark.parametrize("library", CLIENTS)
def test_untrusted_client_certificate_is_rejected(
    token_server: TokenServer, pki: PKI, client_id: str, library: str
) -> None:
    rogue = pki.untrusted_client("sb-client!t1")  # same subject, wrong CA
    cert = ClientCertificate.from_pem(rogue.chain_pem, rogue.key_pem)
    context = cert.ssl_context(verify=token_server.ca_pem)

    with pytest.raises(TRANSPORT_ERRORS[library]):
        CLIENTS[library](context, token_server.token_url, client_id)

    assert _wait_for_handshake_failure(token_server)
    assert token_server.token_requests == []


@pytest.mark.parametrize("library", CLIENTS)
def test_leaf_without_its_intermediate_is_rejected(
    token_server: TokenServer, client_credential: Credential, client_id: str, library: str
) -> None:
    # The server trusts only the root: the intermediate must travel with the leaf.
    cert = ClientCertificate.from_pem(client_credential.cert_pem, client_credential.key_pem)
    context = cert.ssl_context(verify=token_server.ca_pem)

    with pytest.raises(TRANSPORT_ERRORS[library]):
        CLIENTS[library](context, token_server.token_url, client_id)

    assert _wait_for_handshake_failure(token_server)
    assert token_server.token_requests == []


def test_client_refuses_a_server_outside_its_trust_anchors(
    token_server: TokenServer, pki: PKI, client_credential: Credential, client_id: str
) -> None:
    # Trusting only an unrelated CA, the client must refuse the server.
    cert = ClientCertificate.from_pem(client_credential.chain_pem, client_credential.key_pem)
    context = cert.ssl_context(verify=pki.untrusted_root.cert_pem)

    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        _post_with_httpx(context, token_server.token_url, client_id)
