"""cryptography's side of client certificates: decoding and checking keys and chains.

`load_key` decodes the private key (and proves an RSA key signs correctly);
`load_certificates`, `order_chain` and `spki` decode the chain, find the
leaf and put each issuer after its child. `ClientCertificate.from_pem` loads
the key through here on every path, and the certificates only when the cheap
reading in `_der` cannot vouch for them or someone asks for their decoded
form (subject, issuer, the `cryptography.x509` objects): importing the X.509
stack costs a cold start about 20 ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import CertificateError
from ._pem import is_encrypted_key
from ._redact import Secret

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )

__all__ = ["describe_key", "load_certificates", "load_key", "order_chain", "signs", "spki"]


def load_key(block: Secret, label: bytes, password: Secret | None) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    encrypted = is_encrypted_key(label, block)
    if encrypted and password is None:
        raise CertificateError(
            "the private key is encrypted but no password was given: pass password="
        )
    failure: str | None = None
    try:
        # cryptography's full RSA check tests p and q for primality: about 50 ms
        # for a 2048-bit key, most of a cold start. That check guards code that
        # decrypts with keys from strangers; this key is the client's own and
        # only signs its TLS handshakes. What matters is that it signs
        # correctly, and `signs` proves that with one signature (about 1 ms);
        # from_pem then checks that it belongs to the certificate, and OpenSSL
        # checks the pair again in load_cert_chain.
        loaded = load_pem_private_key(
            block.value,
            password.value if encrypted and password is not None else None,
            unsafe_skip_rsa_key_validation=True,
        )
        if signs(loaded):
            return loaded
    except UnsupportedAlgorithm:
        failure = (
            f"the private key uses an algorithm this OpenSSL build cannot load ({label.decode()})"
        )
    except (ValueError, TypeError):
        if encrypted:
            # cryptography says "Bad decrypt. Incorrect password?" for a wrong
            # password; a corrupted encrypted blob fails the same way.
            failure = "the password for the private key is wrong (or the encrypted key is corrupt)"
        else:
            failure = (
                f"the private key is not valid PEM ({label.decode()}): it could not be decoded"
            )
    if failure is None:  # loaded, but its parts do not make a working key
        failure = (
            f"the private key is not valid PEM ({label.decode()}): it could not be decoded "
            "(its parts do not fit together: corrupt or edited)"
        )
    # Raised outside the except clause on purpose: cryptography's exception (and
    # OpenSSL's error queue behind it) stays out of __context__ and tracebacks.
    raise CertificateError(failure)


def signs(key: PrivateKeyTypes) -> bool:
    """Whether an RSA key (loaded without cryptography's check) makes valid signatures."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        return True  # fully checked on load
    message = b"mtls-auth key self-test"
    try:
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def load_certificates(blocks: list[bytes]) -> list[x509.Certificate]:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm

    certs = []
    for index, block in enumerate(blocks, start=1):
        try:
            cert = x509.load_pem_x509_certificate(block)
            # cryptography decodes these lazily: touch them here, where a
            # corrupt field becomes a CertificateError, not later.
            cert.public_key()
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
            raise CertificateError(
                f"certificate #{index} in the certificate PEM could not be decoded: "
                f"{type(exc).__name__}"
            ) from exc
        certs.append(cert)
    return certs


def spki(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def order_chain(leaf: x509.Certificate, others: list[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf first, then each issuer in turn; certificates that fit nowhere last."""
    chain = [leaf]
    rest = list(others)
    current = leaf
    while rest:
        parent = next((c for c in rest if c.subject == current.issuer), None)
        if parent is None or current.issuer == current.subject:
            break
        chain.append(parent)
        rest.remove(parent)
        current = parent
    return chain + rest


def describe_key(key: PrivateKeyTypes) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "Ed448"
    return type(key).__name__
