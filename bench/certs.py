"""e. Parsing a certificate and key, and building an SSLContext from them.

For an RSA-2048 and a P-256 client certificate (PEM as bindings carry them:
leaf plus intermediate, PKCS#1 / SEC1 key), interleaved, `n` times each:

* parse: `ClientCertificate.from_pem` (validation included), next to the floor
  of loading the same PEM with `cryptography` alone;
* build: `ClientCertificate.ssl_context(verify)`, next to the usual temp-file
  approach: the same context shell (TLS client, TLS 1.2 minimum, the same trust
  anchors), the PEM chain and the *plaintext* key written to a
  ``NamedTemporaryFile``, ``load_cert_chain``, unlink.

`verify` is the private CA (one certificate: what the goal is judged on,
because there the key handling is nearly all of the work) and, for context,
the system trust store, whose loading dominates both approaches.
"""

from __future__ import annotations

import os
import ssl
import statistics
import tempfile
import time
from typing import Any, Callable

from mtls_auth import ClientCertificate
from mtls_auth.testing import PKI


def tempfile_context(chain_pem: bytes, key_pem: bytes, verify: Any) -> ssl.SSLContext:
    """The temp-file approach: plaintext PEM in a named temp file, loaded, unlinked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify is True:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.load_verify_locations(cadata=verify)
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as handle:
        handle.write(chain_pem + key_pem)
    try:
        context.load_cert_chain(handle.name)
    finally:
        os.unlink(handle.name)
    return context


def _fresh_parse(chain: bytes, key: bytes) -> ClientCertificate:
    """`from_pem` with its per-process memory of parsed PEM emptied first."""
    from mtls_auth import _certificate

    _certificate._parsed.clear()
    return ClientCertificate.from_pem(chain, key)


def _crypto_parse(chain_pem: bytes, key_pem: bytes) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    load_pem_private_key(key_pem, None)
    x509.load_pem_x509_certificates(chain_pem)


def _interleaved(
    a: Callable[[], Any], b: Callable[[], Any], n: int
) -> tuple[list[float], list[float]]:
    perf = time.perf_counter
    times_a: list[float] = []
    times_b: list[float] = []
    for i in range(n):
        pair = ((a, times_a), (b, times_b)) if i % 2 == 0 else ((b, times_b), (a, times_a))
        for fn, bucket in pair:
            start = perf()
            fn()
            bucket.append(perf() - start)
    return times_a, times_b


def _stats(ours: list[float], other: list[float]) -> dict[str, Any]:
    paired = sorted(x / y for x, y in zip(ours, other))
    return {
        "ours_ms": statistics.median(ours) * 1e3,
        "other_ms": statistics.median(other) * 1e3,
        "ratio": statistics.median(ours) / statistics.median(other),
        "paired_ratio": statistics.median(paired),
        "n": len(ours),
    }


def run(n: int) -> dict[str, Any]:
    """{key_type: {parse: ..., build_private_ca: ..., build_system_store: ...}}."""
    pki = PKI()
    ca = pki.root_pem
    results: dict[str, Any] = {}
    for key_type, label in (("rsa", "RSA-2048"), ("ec", "P-256")):
        credential = pki.issue_client("bench-certs", key_type=key_type)
        chain = credential.chain_pem.encode("ascii")
        key = credential.key_pem.encode("ascii")
        cert = ClientCertificate.from_pem(chain, key)
        for _ in range(5):  # warm: imports, OpenSSL tables
            cert.ssl_context(ca)
            tempfile_context(chain, key, ca)
        entry: dict[str, Any] = {}
        entry["parse"] = _stats(
            *_interleaved(
                # A fresh parse each time: from_pem remembers what it parsed.
                lambda chain=chain, key=key: _fresh_parse(chain, key),
                lambda chain=chain, key=key: _crypto_parse(chain, key),
                n,
            )
        )
        entry["build_private_ca"] = _stats(
            *_interleaved(
                lambda cert=cert: cert.ssl_context(ca),
                lambda chain=chain, key=key: tempfile_context(chain, key, ca),
                n,
            )
        )
        entry["build_system_store"] = _stats(
            *_interleaved(
                lambda cert=cert: cert.ssl_context(True),
                lambda chain=chain, key=key: tempfile_context(chain, key, True),
                max(10, n // 5),
            )
        )
        results[label] = entry
    return results
