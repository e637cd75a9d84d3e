"""PEM text as bindings carry it: normalised, split into blocks, certificates to DER.

Nothing here imports cryptography: the cold path reads a certificate chain and
finds its key block with these, and leaves decoding to OpenSSL and `_der`.
"""

from __future__ import annotations

import base64
import binascii
import re

from ._errors import CertificateError
from ._redact import Secret

__all__ = [
    "CERT_LABELS",
    "KEY_LABELS",
    "MAX_PEM_BYTES",
    "as_pem_bytes",
    "certificate_der",
    "is_encrypted_key",
    "pem_blocks",
]

# Markers only: BEGIN and END lines are paired in one linear pass (a single
# regex spanning whole blocks backtracks quadratically on hostile input).
PEM_MARKER = re.compile(rb"-----(BEGIN|END) ([A-Z0-9 ]{1,64})-----")
#: One line of a plain base64 body.
_BASE64_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
#: More PEM than any certificate chain or key needs; larger input is refused.
MAX_PEM_BYTES = 1 << 20
CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})
KEY_LABELS = frozenset(
    {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}
)


def as_pem_bytes(value: str | bytes | Secret, what: str) -> bytes:
    """Normalise PEM text as pasted from a service key: bytes, literal ``\\n``."""
    if isinstance(value, Secret):
        value = value.value
    if isinstance(value, str):
        if not value.isascii():
            # Checked, not caught: a UnicodeEncodeError would carry the text
            # (its .object) into the error's context.
            del value
            raise CertificateError(f"the {what} is not PEM: it contains non-ASCII text")
        data = value.encode("ascii")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise CertificateError(
            f"the {what} must be PEM text (str or bytes), not {type(value).__name__}"
        )
    if len(data) > MAX_PEM_BYTES:
        raise CertificateError(f"the {what} is larger than {MAX_PEM_BYTES} bytes")
    if b"\\n" in data:
        # Service keys printed by `cf service-key` or copied from a JSON viewer
        # carry the newlines as two characters.
        data = data.replace(b"\\r\\n", b"\n").replace(b"\\n", b"\n")
    return data.replace(b"\r\n", b"\n").strip() + b"\n"


def pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for every well-formed PEM block, in order."""
    blocks: list[tuple[bytes, bytes]] = []
    start: re.Match[bytes] | None = None
    for marker in PEM_MARKER.finditer(data):
        if marker.group(1) == b"BEGIN":
            start = marker
        elif start is not None and marker.group(2) == start.group(2):
            blocks.append((start.group(2), data[start.start() : marker.end()] + b"\n"))
            start = None
    return blocks


def certificate_der(block: bytes) -> bytes | None:
    """The DER inside a plain ``CERTIFICATE`` block; None for anything less plain.

    Only lines of base64 and nothing else (no headers, blank lines or
    indentation): text that any PEM reader takes the same way. The rest goes
    to cryptography, which decides and says what is wrong.
    """
    lines = block.strip().split(b"\n")
    if len(lines) < 3 or lines[0] != b"-----BEGIN CERTIFICATE-----":
        return None
    body = lines[1:-1]
    if not all(_BASE64_LINE.fullmatch(line) for line in body):
        return None
    try:
        return base64.b64decode(b"".join(body), validate=True)
    except (binascii.Error, ValueError):
        return None


def is_encrypted_key(label: bytes, block: Secret) -> bool:
    """Whether a private key block needs a password: PKCS#8 or traditional encryption."""
    return label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block.value
