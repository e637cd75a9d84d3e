"""The few facts the cold path needs from a certificate, read from its DER.

A cold start must not pay for importing cryptography's X.509 stack (about
20 ms, as much as the whole hand-written first request) just to learn when a
certificate expires and which certificate issued which. `certificate_facts`
walks the outer structure of an X.509 certificate (RFC 5280, section 4.1) as
far as the subject's public key, and nothing further:

    Certificate ::= SEQUENCE { tbsCertificate TBSCertificate, ... }
    TBSCertificate ::= SEQUENCE {
        version [0] EXPLICIT Version OPTIONAL, serialNumber INTEGER,
        signature AlgorithmIdentifier, issuer Name,
        validity SEQUENCE { notBefore Time, notAfter Time },
        subject Name, subjectPublicKeyInfo SEQUENCE, ... }

It answers None for anything it does not fully understand (indefinite or
non-minimal lengths, a time with fractions or an offset, trailing bytes); the
caller then takes the complete path through cryptography, which checks every
field and names what is wrong. Nothing here decides whether a certificate is
trustworthy: OpenSSL still parses it, matches it to the key and verifies it.
"""

from __future__ import annotations

import datetime
from typing import NamedTuple

__all__ = ["CertificateFacts", "certificate_facts"]

_SEQUENCE = 0x30
_INTEGER = 0x02
_VERSION = 0xA0  # [0] EXPLICIT
#: The only version field a certificate may carry: v3. A v1 certificate omits it
#: (DER leaves a DEFAULT out); cryptography refuses v2 and an explicit v1.
_VERSION_3 = b"\xa0\x03\x02\x01\x02"
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18


class CertificateFacts(NamedTuple):
    """What `certificate_facts` reads: the validity, and three fields as raw DER."""

    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: bytes  # the DER of the Name, compared byte for byte
    subject: bytes
    public_key: bytes  # the DER of the SubjectPublicKeyInfo


def _tlv(data: bytes, offset: int, end: int) -> tuple[int, int, int] | None:
    """(tag, start of the value, end of the value) of the DER element at `offset`."""
    if offset + 2 > end:
        return None
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:  # multi-byte tag numbers: not in these fields
        return None
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > end or data[start] == 0:
            return None  # indefinite, oversized or non-minimal
        length = int.from_bytes(data[start : start + count], "big")
        if length < 0x80:
            return None
        start += count
    if start + length > end:
        return None
    return tag, start, start + length


def _time(data: bytes, element: tuple[int, int, int]) -> datetime.datetime | None:
    tag, start, end = element
    text = data[start:end]
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2]) if text[:2].isdigit() else -1
        year += 1900 if year >= 50 else 2000  # RFC 5280 4.1.2.5.1
        rest = text[2:]
    elif tag == _GENERALIZED_TIME and len(text) == 15:
        year = int(text[:4]) if text[:4].isdigit() else -1
        rest = text[4:]
    else:
        return None
    if year < 0 or not rest.endswith(b"Z") or not rest[:-1].isdigit():
        return None
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    try:
        return datetime.datetime(
            year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc
        )
    except ValueError:
        return None


def certificate_facts(der: bytes) -> CertificateFacts | None:
    """Validity, issuer, subject and public key of a DER certificate; None if not plain DER."""
    outer = _tlv(der, 0, len(der))
    if outer is None or outer[0] != _SEQUENCE or outer[2] != len(der):
        return None
    tbs = _tlv(der, outer[1], outer[2])
    if tbs is None or tbs[0] != _SEQUENCE:
        return None
    fields: list[tuple[tuple[int, int, int], int]] = []
    offset, end = tbs[1], tbs[2]
    while offset < end and len(fields) < 7:  # version (optional) to subjectPublicKeyInfo
        element = _tlv(der, offset, end)
        if element is None:
            return None
        fields.append((element, offset))
        offset = element[2]
    if fields and fields[0][0][0] == _VERSION:
        start = fields[0][1]
        if der[start : fields[0][0][2]] != _VERSION_3:
            return None
        fields = fields[1:]
    if len(fields) < 6:
        return None
    (serial, _), _, (issuer, issuer_at), (validity, _) = fields[:4]
    (subject, subject_at), (spki, spki_at) = fields[4:6]
    if serial[0] != _INTEGER or any(
        tag != _SEQUENCE
        for (tag, _, _), _ in (fields[1], fields[2], fields[3], fields[4], fields[5])
    ):
        return None
    first = _tlv(der, validity[1], validity[2])
    second = None if first is None else _tlv(der, first[2], validity[2])
    if first is None or second is None or second[2] != validity[2]:
        return None
    not_before, not_after = _time(der, first), _time(der, second)
    if not_before is None or not_after is None:
        return None
    return CertificateFacts(
        not_before,
        not_after,
        der[issuer_at : issuer[2]],
        der[subject_at : subject[2]],
        der[spki_at : spki[2]],
    )
