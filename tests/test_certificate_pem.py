"""`ClientCertificate.from_pem`: every key format, chain order, properties, errors, no secret out.

Keys in PKCS#1, PKCS#8, SEC1, encrypted and legacy-encrypted forms, as text,
bytes, with escaped newlines or CRLF; the leaf found by its key and put first;
errors that say what is wrong and never show key material; a certificate
object that cannot be pickled, changed or made to show its key. Everything
runs against the test kit's PKI, generated at test time.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import pickle
import re
import ssl
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from broken_keys import edited_rsa_key
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from leaks import all_key_pems, secret_lines

from mtls_auth import (
    CertificateError,
    ClientCertificate,
    MtlsAuthError,
)
from mtls_auth.testing import PKI, Credential

PASSWORD = "s3cret-pässword"  # non-ASCII on purpose: str passwords are UTF-8 encoded

EXPECTED_KEY_TYPE = {
    "rsa": "RSA 2048",
    "ec": "EC P-256",
    "ec384": "EC P-384",
    "ed25519": "Ed25519",
}


# -- helpers ------------------------------------------------------------------------


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
    key_type_credentials: dict[str, Credential], key_format: str, encoding: str
) -> None:
    key_type, make_key = KEY_FORMATS[key_format]
    credential = key_type_credentials[key_type]
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
    key_type_credentials: dict[str, Credential], mtls_pki: PKI, key_type: str
) -> None:
    credential = key_type_credentials[key_type]
    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)
    context = cert.ssl_context(verify=mtls_pki.root_pem)
    assert isinstance(context, ssl.SSLContext)


def test_password_given_for_an_unencrypted_key_is_ignored(
    mtls_client_certificate: Credential,
) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem, password="unused"
    )
    assert cert.thumbprint == mtls_client_certificate.thumbprint


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
    mtls_pki: PKI, mtls_client_certificate: Credential, order: tuple[str, ...]
) -> None:
    pems = {
        "leaf": mtls_client_certificate.cert_pem,
        "intermediate": mtls_pki.intermediate_pem,
        "root": mtls_pki.root_pem,
    }
    cert = ClientCertificate.from_pem(
        "".join(pems[name] for name in order), mtls_client_certificate.key_pem
    )

    assert cert.chain[0] == mtls_client_certificate.certificate
    assert cert.certificate == mtls_client_certificate.certificate
    assert cert.subject == mtls_client_certificate.subject
    # Then each issuer in turn: leaf, intermediate, root.
    expected = [mtls_client_certificate.certificate, mtls_pki.intermediate.certificate]
    if "root" in order:
        expected.append(mtls_pki.root.certificate)
    assert list(cert.chain) == expected
    assert cert.certificate_pem.startswith(mtls_client_certificate.cert_pem)


def test_an_ordered_chain_and_a_shuffled_one_give_the_same_certificate(
    mtls_pki: PKI, mtls_client_certificate: Credential
) -> None:
    # The first is read without cryptography's X.509 stack, the second is not.
    ordered = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    shuffled = ClientCertificate.from_pem(
        mtls_pki.intermediate_pem + mtls_client_certificate.cert_pem,
        mtls_client_certificate.key_pem,
    )
    assert ordered is not shuffled
    for name in (
        "thumbprint",
        "not_before",
        "not_after",
        "subject",
        "issuer",
        "key_type",
        "certificate_pem",
        "chain",
    ):
        assert getattr(ordered, name) == getattr(shuffled, name), name
    assert repr(ordered) == repr(shuffled)


def _with_version(cert_pem: str, version: int) -> str:
    """`cert_pem` with its TBS version field set to `version` (signature not redone)."""
    der = bytearray(ssl.PEM_cert_to_DER_cert(cert_pem))
    field = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
    at = der.index(field)
    der[at + 4] = version
    return ssl.DER_cert_to_PEM_cert(bytes(der))


@pytest.mark.parametrize("version", [0, 1, 5], ids=["explicit-v1", "v2", "version-5"])
@pytest.mark.parametrize("order", ["leaf-first", "leaf-last"])
def test_a_version_cryptography_refuses_is_a_certificate_error_on_either_path(
    mtls_pki: PKI, mtls_client_certificate: Credential, version: int, order: str
) -> None:
    # OpenSSL decodes these; cryptography does not. The short reader of an
    # ordered chain must refuse them too, and nothing may escape as a raw error.
    leaf = _with_version(mtls_client_certificate.cert_pem, version)
    chain = leaf + mtls_pki.intermediate_pem
    if order == "leaf-last":
        chain = mtls_pki.intermediate_pem + leaf
    with pytest.raises(CertificateError, match="could not be decoded"):
        ClientCertificate.from_pem(chain, mtls_client_certificate.key_pem)


def test_a_blank_line_inside_a_certificate_is_refused_as_before(
    mtls_client_certificate: Credential,
) -> None:
    lines = mtls_client_certificate.cert_pem.splitlines(keepends=True)
    broken = "".join([*lines[:3], "\n", *lines[3:]])
    with pytest.raises(CertificateError):
        ClientCertificate.from_pem(broken, mtls_client_certificate.key_pem)


def test_long_base64_lines_are_read_and_written_back_as_standard_pem(
    mtls_client_certificate: Credential,
) -> None:
    lines = mtls_client_certificate.cert_pem.strip().splitlines()
    one_line = f"{lines[0]}\n{''.join(lines[1:-1])}\n{lines[-1]}\n"
    cert = ClientCertificate.from_pem(one_line, mtls_client_certificate.key_pem)
    assert cert.certificate_pem == mtls_client_certificate.cert_pem
    assert cert.certificate == mtls_client_certificate.certificate


def test_a_key_with_edited_private_parts_is_refused(
    mtls_client_certificate: Credential,
) -> None:
    # Its public half matches the certificate, so only the self-test can tell.
    private_key = mtls_client_certificate.private_key
    assert isinstance(private_key, rsa.RSAPrivateKey)
    edited = edited_rsa_key(private_key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CertificateError, match="parts do not fit together"):
        ClientCertificate.from_pem(mtls_client_certificate.chain_pem, edited)


def test_leaf_alone_is_a_chain_of_one(mtls_client_certificate: Credential) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.cert_pem, mtls_client_certificate.key_pem
    )
    assert cert.chain == (mtls_client_certificate.certificate,)
    assert cert.certificate_pem == mtls_client_certificate.cert_pem


def test_properties(mtls_pki: PKI, mtls_client_certificate: Credential) -> None:
    cert = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )

    assert cert.not_after.tzinfo is not None
    assert cert.not_after.utcoffset() == timedelta(0)
    assert cert.not_after == mtls_client_certificate.certificate.not_valid_after_utc
    assert cert.not_before == mtls_client_certificate.certificate.not_valid_before_utc
    assert cert.thumbprint == thumbprint_of_pem(mtls_client_certificate.cert_pem)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cert.thumbprint)
    assert cert.subject == "CN=mtls-auth test client,O=mtls-auth testing,C=DE"
    assert cert.subject == mtls_client_certificate.subject
    assert cert.issuer == mtls_pki.intermediate.subject
    assert cert.key_type == "RSA 2048"
    remaining = cert.expires_in()
    assert timedelta(days=6) < remaining <= timedelta(days=7)
    assert cert.expires_in(cert.not_after) == timedelta(0)


def test_thumbprint_differs_for_a_rotated_certificate_with_the_same_subject(
    mtls_client_certificate: Credential, rotated_certificate: Credential
) -> None:
    first, second = mtls_client_certificate, rotated_certificate  # same subject, new key
    a = ClientCertificate.from_pem(first.chain_pem, first.key_pem)
    b = ClientCertificate.from_pem(second.chain_pem, second.key_pem)
    assert a.subject == b.subject
    assert a.thumbprint != b.thumbprint
    assert a != b


def test_equality_follows_the_leaf(mtls_client_certificate: Credential) -> None:
    a = ClientCertificate.from_pem(
        mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    )
    b = ClientCertificate.from_pem(
        mtls_client_certificate.cert_pem, mtls_client_certificate.key_pem_pkcs8()
    )
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

    def not_pem_certificate(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return ("hello, world", c.key_pem, None, r"certificate is not PEM", [])

    def not_pem_key(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, "not a key at all", None, r"private key is not PEM", [])

    def empty_key(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, "", None, r"private key is not PEM", [])

    def key_as_certificate(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.key_pem, c.key_pem, None, r"no certificate found.*RSA PRIVATE KEY", [])

    def certificate_as_key(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, c.chain_pem, None, r"no private key found.*CERTIFICATE", [])

    def mismatched_key(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = mtls_pki.mismatched_key()
        return (c.chain_pem, key, None, r"private key does not match the certificate", [key])

    def two_keys(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = c.key_pem + mtls_pki.mismatched_key()
        return (c.chain_pem, key, None, r"holds 2 private keys", [key])

    def corrupt_key(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = _corrupt_body(c.key_pem)
        return (
            c.chain_pem,
            key,
            None,
            r"private key is not valid PEM.*could not be decoded",
            [key],
        )

    def corrupt_certificate(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (
            _corrupt_body(c.cert_pem),
            c.key_pem,
            None,
            r"certificate #1 .*could not be decoded",
            [],
        )

    def password_missing(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = c.key_pem_encrypted(b"pw")
        return (c.chain_pem, key, None, r"encrypted but no password was given", [key])

    def legacy_password_missing(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = legacy_encrypted(c, b"pw")
        return (c.chain_pem, key, None, r"encrypted but no password was given", [key])

    def password_wrong(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = c.key_pem_encrypted(b"right password")
        return (
            c.chain_pem,
            key,
            "Inc0rrect-passw0rd",
            r"password for the private key is wrong",
            [key],
        )

    def legacy_password_wrong(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        key = legacy_encrypted(c, b"right password")
        return (
            c.chain_pem,
            key,
            b"N0t-the-passw0rd",
            r"password for the private key is wrong",
            [key],
        )

    def not_text(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
        return (c.chain_pem, 12345, None, r"must be PEM text \(str or bytes\), not int", [])

    def non_ascii(mtls_pki: PKI, c: Credential) -> tuple[Any, ...]:
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
    mtls_pki: PKI, mtls_client_certificate: Credential, case: Callable[..., tuple[Any, ...]]
) -> None:
    certificate, key, password, message, extra_pems = case(mtls_pki, mtls_client_certificate)

    with pytest.raises(CertificateError, match=message) as info:
        ClientCertificate.from_pem(certificate, key, password=password)

    assert isinstance(info.value, MtlsAuthError)
    secrets = secret_lines(*all_key_pems(mtls_client_certificate), *extra_pems)
    if isinstance(password, (str, bytes)):
        secrets.append(password if isinstance(password, str) else password.decode())
    assert_no_secret(info.value, secrets)


def test_expired_certificate_is_refused_with_its_date(mtls_pki: PKI) -> None:
    credential = mtls_pki.expired_client()
    expiry = credential.not_after.strftime("%Y-%m-%d")

    with pytest.raises(CertificateError, match=rf"expired on {expiry}") as info:
        ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)

    assert re.search(r"\d{4}-\d{2}-\d{2}", str(info.value))
    assert credential.subject in str(info.value)
    assert_no_secret(info.value, secret_lines(*all_key_pems(credential)))


def test_not_yet_valid_certificate_is_refused(mtls_pki: PKI) -> None:
    credential = mtls_pki.issue_client(
        "future",
        not_before=mtls_pki.now + timedelta(days=1),
        not_after=mtls_pki.now + timedelta(days=8),
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
    mtls_pki: PKI, caplog: pytest.LogCaptureFixture, lifetime: timedelta, warns: bool
) -> None:
    credential = mtls_pki.issue_client("short-lived", not_after=mtls_pki.now + lifetime)
    caplog.set_level(logging.DEBUG, logger="mtls_auth")

    cert = ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)

    warnings = [
        r
        for r in caplog.records
        if r.name.startswith("mtls_auth.") and r.levelno == logging.WARNING
    ]
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


@pytest.mark.parametrize("render", [repr, str, format], ids=["repr", "str", "format"])
def test_repr_shows_subject_and_thumbprint_and_no_key(
    certificate: ClientCertificate,
    mtls_client_certificate: Credential,
    render: Callable[[object], str],
) -> None:
    text = render(certificate)
    assert mtls_client_certificate.subject in text
    assert mtls_client_certificate.thumbprint in text
    assert "PRIVATE KEY" not in text
    for secret in secret_lines(*all_key_pems(mtls_client_certificate)):
        assert secret not in text


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_refuses_to_pickle(certificate: ClientCertificate, protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(certificate, protocol=protocol)


def test_copies_are_the_same_object(certificate: ClientCertificate) -> None:
    assert copy.copy(certificate) is certificate
    assert copy.deepcopy(certificate) is certificate


@pytest.mark.parametrize("name", ["subject", "thumbprint", "not_after", "_key", "_chain", "extra"])
def test_attributes_cannot_be_set(certificate: ClientCertificate, name: str) -> None:
    with pytest.raises(AttributeError):
        setattr(certificate, name, "changed")
    assert not hasattr(certificate, "__dict__")


@pytest.mark.parametrize("name", ["_key", "_thumbprint", "_chain", "subject"])
def test_attributes_cannot_be_deleted(certificate: ClientCertificate, name: str) -> None:
    with pytest.raises(AttributeError):
        delattr(certificate, name)
    assert certificate.thumbprint
    assert certificate.subject


def test_constructor_is_closed() -> None:
    with pytest.raises(TypeError, match="from_pem"):
        ClientCertificate()
