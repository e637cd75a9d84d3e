"""The cold path's short reading of certificate DER agrees with cryptography, or declines.

`certificate_facts` reads the validity, the issuer and subject Names and the
public key of a certificate without cryptography's X.509 stack. Whatever it
returns must be what cryptography decodes from the same bytes; whatever it
does not understand (truncated, trailing or mutated bytes, random input) must
give None, never an exception, so that the complete path can say what is wrong.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import given
from hypothesis import strategies as st

from mtls_auth._der import certificate_facts
from mtls_auth.testing import PKI, Credential


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def _assert_agrees(certificate: x509.Certificate) -> None:
    facts = certificate_facts(_der(certificate))
    assert facts is not None
    assert facts.not_before == certificate.not_valid_before_utc
    assert facts.not_after == certificate.not_valid_after_utc
    assert facts.issuer == certificate.issuer.public_bytes()
    assert facts.subject == certificate.subject.public_bytes()
    assert facts.public_key == certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("key_type", ["rsa", "ec", "ec384", "ed25519"])
def test_facts_agree_with_cryptography_for_every_key_type(
    key_type_credentials: dict[str, Credential], key_type: str
) -> None:
    _assert_agrees(key_type_credentials[key_type].certificate)


def test_facts_agree_for_the_ca_certificates(mtls_pki: PKI) -> None:
    _assert_agrees(mtls_pki.root.certificate)
    _assert_agrees(mtls_pki.intermediate.certificate)


def test_generalized_time_after_2049(mtls_pki: PKI) -> None:
    # RFC 5280: dates from 2050 on are GeneralizedTime, before that UTCTime.
    far = datetime(2051, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    credential = mtls_pki.issue_client("long-lived", not_after=far)
    facts = certificate_facts(_der(credential.certificate))
    assert facts is not None
    assert facts.not_after == far
    _assert_agrees(credential.certificate)


def test_the_chain_links_by_name(mtls_pki: PKI, mtls_client_certificate: Credential) -> None:
    leaf = certificate_facts(_der(mtls_client_certificate.certificate))
    intermediate = certificate_facts(_der(mtls_pki.intermediate.certificate))
    assert leaf is not None
    assert intermediate is not None
    assert leaf.issuer == intermediate.subject
    assert leaf.subject != intermediate.subject


def test_truncated_or_extended_der_is_declined(mtls_client_certificate: Credential) -> None:
    der = _der(mtls_client_certificate.certificate)
    for cut in (0, 1, 2, 4, 10, len(der) // 2, len(der) - 1):
        assert certificate_facts(der[:cut]) is None
    assert certificate_facts(der + b"\x00") is None


def test_a_time_with_an_offset_or_fraction_is_declined(
    mtls_client_certificate: Credential,
) -> None:
    der = bytearray(_der(mtls_client_certificate.certificate))
    facts = certificate_facts(bytes(der))
    assert facts is not None
    # Replace the notAfter's final "Z" by "+": same length, no longer UTC as RFC 5280 wants.
    stamp = facts.not_after.strftime("%y%m%d%H%M%S").encode() + b"Z"
    at = bytes(der).index(stamp)
    der[at + len(stamp) - 1] = ord("+")
    assert certificate_facts(bytes(der)) is None


@pytest.mark.parametrize("version", [0, 1, 5])
def test_a_version_field_other_than_v3_is_declined(
    mtls_client_certificate: Credential, version: int
) -> None:
    der = bytearray(_der(mtls_client_certificate.certificate))
    at = bytes(der).index(bytes.fromhex("a003020102"))
    der[at + 4] = version
    assert certificate_facts(bytes(der)) is None


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    facts = certificate_facts(data)
    assert facts is None or facts.not_before.tzinfo is timezone.utc


_REAL = _der(PKI(now=datetime(2026, 1, 1, tzinfo=timezone.utc)).issue_client("fuzzed").certificate)


@given(st.lists(st.tuples(st.integers(0, len(_REAL) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_certificates_never_raise_and_never_invent_facts(
    changes: list[tuple[int, int]],
) -> None:
    data = bytearray(_REAL)
    for index, value in changes:
        data[index] = value
    facts = certificate_facts(bytes(data))
    if facts is None:
        return
    # What it reads is always what cryptography reads from the same bytes, if it can.
    try:
        with warnings.catch_warnings():
            # A mutated serial may be zero or negative: cryptography still loads
            # it, with a deprecation warning this comparison does not care about.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            decoded = x509.load_der_x509_certificate(bytes(data))
        not_after = decoded.not_valid_after_utc
    except ValueError:
        return
    assert facts.not_after == not_after
