"""Client certificates held in memory: parsed and validated once, never exposing the key.

`ClientCertificate.from_pem` parses and validates a certificate chain and its
private key once: PEM shape, which certificate is the leaf (the one the key
belongs to, wherever it stands in the text), the password, the validity period.
After that the object is immutable and cheap to share between threads.
`ClientCertificate.ssl_context` hands it to OpenSSL (see `_tls`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import weakref
from typing import TYPE_CHECKING, Callable, Union

from ._errors import CertificateError
from ._redact import Secret, guarded, safe_repr
from ._tls import INSECURE_SKIP_VERIFY, Verify, build_ssl_context, load_client_chain

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )

__all__ = [
    "INSECURE_SKIP_VERIFY",
    "CertificateProvider",
    "CertificateSource",
    "ClientCertificate",
    "Verify",
    "build_ssl_context",
    "coerce_certificate",
]

logger = logging.getLogger(__name__)

# Markers only: BEGIN and END lines are paired in one linear pass (a single
# regex spanning whole blocks backtracks quadratically on hostile input).
_PEM_MARKER = re.compile(rb"-----(BEGIN|END) ([A-Z0-9 ]{1,64})-----")
#: More PEM than any certificate chain or key needs; larger input is refused.
_MAX_PEM_BYTES = 1 << 20
_CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})
_KEY_LABELS = frozenset(
    {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"}
)
_EXPIRY_WARNING = datetime.timedelta(hours=24)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _as_pem_bytes(value: str | bytes | Secret, what: str) -> bytes:
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
    if len(data) > _MAX_PEM_BYTES:
        raise CertificateError(f"the {what} is larger than {_MAX_PEM_BYTES} bytes")
    if b"\\n" in data:
        # Service keys printed by `cf service-key` or copied from a JSON viewer
        # carry the newlines as two characters.
        data = data.replace(b"\\r\\n", b"\n").replace(b"\\n", b"\n")
    return data.replace(b"\r\n", b"\n").strip() + b"\n"


def _blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(label, whole block) for every well-formed PEM block, in order."""
    blocks: list[tuple[bytes, bytes]] = []
    start: re.Match[bytes] | None = None
    for marker in _PEM_MARKER.finditer(data):
        if marker.group(1) == b"BEGIN":
            start = marker
        elif start is not None and marker.group(2) == start.group(2):
            blocks.append((start.group(2), data[start.start() : marker.end()] + b"\n"))
            start = None
    return blocks


def _load_key(block: Secret, label: bytes, password: Secret | None) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block.value
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
        # correctly, and `_signs` proves that with one signature (about 1 ms);
        # from_pem then checks that it belongs to the certificate, and OpenSSL
        # checks the pair again in load_cert_chain.
        loaded = load_pem_private_key(
            block.value,
            password.value if encrypted and password is not None else None,
            unsafe_skip_rsa_key_validation=True,
        )
        if _signs(loaded):
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


def _signs(key: PrivateKeyTypes) -> bool:
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


def _load_certificates(blocks: list[bytes]) -> list[x509.Certificate]:
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
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertificateError(
                f"certificate #{index} in the certificate PEM could not be decoded: "
                f"{type(exc).__name__}"
            ) from exc
        certs.append(cert)
    return certs


def _spki(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _order_chain(leaf: x509.Certificate, others: list[x509.Certificate]) -> list[x509.Certificate]:
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


def _describe_key(key: PrivateKeyTypes) -> str:
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


@safe_repr
class ClientCertificate:
    """A validated client certificate chain and its private key, held in memory.

    Build one with `ClientCertificate.from_pem`. The object never exposes the
    private key: its repr shows the subject, the expiry and the thumbprint, and it
    refuses to be pickled.
    """

    __slots__ = (
        "__weakref__",
        "_chain",
        "_chain_pem",
        "_key",
        "_key_type",
        "_not_after",
        "_not_before",
        "_thumbprint",
    )

    _chain: tuple[x509.Certificate, ...]
    _chain_pem: bytes
    _key: PrivateKeyTypes
    _key_type: str
    _not_after: datetime.datetime
    _not_before: datetime.datetime
    _thumbprint: str

    def __init__(self) -> None:
        raise TypeError("use ClientCertificate.from_pem(certificate, key, password=...)")

    @classmethod
    @guarded
    def from_pem(
        cls,
        certificate: str | bytes,
        key: str | bytes | Secret,
        *,
        password: str | bytes | Secret | None = None,
    ) -> ClientCertificate:
        """Parse and validate a PEM certificate chain and its private key.

        `certificate` holds the leaf and optionally its CA chain, in any order: the
        leaf is the certificate the key belongs to, and it is put first. `key` is a
        PKCS#1 (`RSA PRIVATE KEY`), PKCS#8 (`PRIVATE KEY`), encrypted PKCS#8
        (`ENCRYPTED PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM block; `password`
        decrypts an encrypted one. Literal ``\\n`` sequences, as pasted from service
        keys, are accepted in both.

        Raises `CertificateError` saying which problem it found: not PEM, no
        certificate, no key, a key that does not match, a missing or wrong
        password, or an expired certificate (with its date). A certificate that
        expires within 24 hours is accepted with a WARNING on the `mtls_auth`
        logger.
        """
        cert_data = _as_pem_bytes(certificate, "certificate")
        key_data = Secret(_as_pem_bytes(key, "private key"))
        if isinstance(password, Secret):
            password = password.value
        secret_password = (
            None
            if password is None
            else Secret(password.encode("utf-8") if isinstance(password, str) else password)
        )
        # From here on the key and the password live only in Secret holders, so
        # a traceback's captured locals show nothing of them.
        del key, password
        # The same PEM parsed before (many auth objects from one binding): the
        # same immutable object, found by a keyed digest of the inputs.
        seen = _seen_digest(cert_data, key_data, secret_password)
        known = _parsed.get(seen)
        if known is not None and known.not_after > _now():
            return known

        cert_blocks = _blocks(cert_data)
        if not cert_blocks:
            raise CertificateError(
                "the certificate is not PEM: no '-----BEGIN CERTIFICATE-----' block found"
            )
        certs_pem = [block for label, block in cert_blocks if label in _CERT_LABELS]
        if not certs_pem:
            labels = ", ".join(sorted({label.decode() for label, _ in cert_blocks}))
            raise CertificateError(
                f"no certificate found in the certificate PEM (it holds: {labels})"
            )
        key_blocks = [(label, Secret(block)) for label, block in _blocks(key_data.value)]
        if not key_blocks:
            raise CertificateError(
                "the private key is not PEM: no '-----BEGIN ... PRIVATE KEY-----' block found"
            )
        keys_pem = [(label, block) for label, block in key_blocks if label in _KEY_LABELS]
        if not keys_pem:
            labels = ", ".join(sorted({label.decode() for label, _ in key_blocks}))
            raise CertificateError(f"no private key found in the key PEM (it holds: {labels})")
        if len(keys_pem) > 1:
            raise CertificateError(
                f"the key PEM holds {len(keys_pem)} private keys; pass exactly one"
            )

        label, block = keys_pem[0]
        private_key = _load_key(block, label, secret_password)
        del key_data, key_blocks, keys_pem, block
        certs = _load_certificates(certs_pem)

        key_spki = _spki(private_key.public_key())
        leaf = next((c for c in certs if _spki(c.public_key()) == key_spki), None)
        if leaf is None:
            subjects = "; ".join(c.subject.rfc4514_string() or "(empty subject)" for c in certs)
            raise CertificateError(
                "the private key does not match the certificate "
                f"(no certificate in the chain belongs to this key; chain: {subjects})"
            )
        chain = _order_chain(leaf, [c for c in certs if c is not leaf])
        built = cls._build(tuple(chain), private_key)
        _parsed[seen] = built
        return built

    @classmethod
    def _build(
        cls, chain: tuple[x509.Certificate, ...], private_key: PrivateKeyTypes
    ) -> ClientCertificate:
        from cryptography.hazmat.primitives.serialization import Encoding

        leaf = chain[0]
        self = object.__new__(cls)
        object.__setattr__(self, "_chain", chain)
        object.__setattr__(
            self, "_chain_pem", b"".join(c.public_bytes(Encoding.PEM) for c in chain)
        )
        object.__setattr__(self, "_key", private_key)
        object.__setattr__(self, "_key_type", _describe_key(private_key))
        object.__setattr__(self, "_not_after", leaf.not_valid_after_utc)
        object.__setattr__(self, "_not_before", leaf.not_valid_before_utc)
        digest = hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest()
        object.__setattr__(
            self, "_thumbprint", base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        )

        now = _now()
        if self._not_after <= now:
            raise CertificateError(
                f"the certificate {self.subject!r} expired on {_fmt(self._not_after)}"
            )
        if self._not_before > now + datetime.timedelta(minutes=5):
            raise CertificateError(
                f"the certificate {self.subject!r} is not valid before {_fmt(self._not_before)}"
            )
        if self._not_after - now <= _EXPIRY_WARNING and _first_warning(self._thumbprint):
            logger.warning(
                "client certificate %r expires on %s (in %s); rotate it",
                self.subject,
                _fmt(self._not_after),
                _fmt_delta(self._not_after - now),
            )
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ClientCertificate is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ClientCertificate is immutable")

    # -- public, non-secret facts ------------------------------------------------

    @property
    def subject(self) -> str:
        """The leaf certificate's subject as an RFC 4514 string."""
        return self._chain[0].subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        """The leaf certificate's issuer as an RFC 4514 string."""
        return self._chain[0].issuer.rfc4514_string()

    @property
    def not_before(self) -> datetime.datetime:
        """Start of the leaf's validity, timezone-aware UTC."""
        return self._not_before

    @property
    def not_after(self) -> datetime.datetime:
        """End of the leaf's validity, timezone-aware UTC."""
        return self._not_after

    @property
    def thumbprint(self) -> str:
        """The RFC 8705 ``x5t#S256``: base64url (no padding) SHA-256 of the leaf DER."""
        return self._thumbprint

    @property
    def key_type(self) -> str:
        """The key algorithm and size, for example ``RSA 2048`` or ``EC P-256``."""
        return self._key_type

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate (a `cryptography.x509.Certificate`)."""
        return self._chain[0]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The leaf followed by the CA certificates that came with it."""
        return self._chain

    @property
    def certificate_pem(self) -> str:
        """The chain as PEM text, leaf first. Public material only."""
        return self._chain_pem.decode("ascii")

    def expires_in(self, now: datetime.datetime | None = None) -> datetime.timedelta:
        """Time left until `not_after` (negative once expired)."""
        return self._not_after - (now or _now())

    # -- the one place the key is used ----------------------------------------------

    def ssl_context(self, verify: Verify = True) -> ssl.SSLContext:
        """A new client `ssl.SSLContext` that presents this certificate chain.

        `verify` is True for the system trust store, the path of a CA bundle file
        (or a hashed CA directory), or CA certificates as PEM text; that CA set is
        then the only trust anchor. Verification cannot be turned off here.
        TLS 1.2 is the minimum and the hostname is checked. Every call returns a
        new context, because HTTP libraries mutate the context they are given.
        """
        context = build_ssl_context(verify)
        load_client_chain(context, self._chain_pem, self._key, self.subject)
        return context

    # -- no secrets out ------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<ClientCertificate subject={self.subject!r} key={self._key_type} "
            f"not_after={_fmt(self._not_after)} x5t#S256={self._thumbprint}>"
        )

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientCertificate):
            return NotImplemented
        # The leaf was matched to the key at construction: the leaf identifies both.
        return self._thumbprint == other._thumbprint

    def __hash__(self) -> int:
        return hash(self._thumbprint)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            "ClientCertificate holds a private key and cannot be pickled; "
            "pass the PEM source to the other process and build it there"
        )

    def __copy__(self) -> ClientCertificate:
        return self

    def __deepcopy__(self, memo: object) -> ClientCertificate:
        return self


#: Certificates parsed in this process, by a keyed digest of their PEM inputs:
#: held weakly (an entry lives as long as something uses the certificate), and
#: never the PEM or the key itself.
_parsed: weakref.WeakValueDictionary[str, ClientCertificate] = weakref.WeakValueDictionary()
#: The digest's key: random per process, so a digest says nothing outside it.
_DIGEST_KEY = secrets.token_bytes(32)


def _seen_digest(cert_data: bytes, key_data: Secret, password: Secret | None) -> str:
    mac = hmac.new(_DIGEST_KEY, cert_data, hashlib.sha256)
    mac.update(b"\0" + key_data.value + b"\0")
    if password is not None:
        mac.update(password.value)
    return mac.hexdigest()


_warned_thumbprints: set[str] = set()


def _first_warning(thumbprint: str) -> bool:
    """Warn once per certificate and process, however often it is loaded."""
    if thumbprint in _warned_thumbprints:
        return False
    if len(_warned_thumbprints) < 4096:
        _warned_thumbprints.add(thumbprint)
    return True


def _fmt(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_delta(delta: datetime.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m"


#: What `certificate=` accepts: PEM text (with `key=`) or a ready ClientCertificate.
CertificateSource = Union[str, bytes, ClientCertificate]
#: A callable returning the current certificate, for custom sources (a vault).
CertificateProvider = Callable[[], ClientCertificate]


def coerce_certificate(
    certificate: CertificateSource,
    key: str | bytes | Secret | None,
    password: str | bytes | Secret | None,
) -> ClientCertificate:
    """A ClientCertificate from either form the public constructors accept."""
    if isinstance(certificate, ClientCertificate):
        if key is not None or password is not None:
            raise CertificateError(
                "key= and password= are taken from the ClientCertificate; omit them"
            )
        return certificate
    if key is None:
        raise CertificateError(
            "key= is required when certificate= is PEM text "
            "(or pass a ClientCertificate built with ClientCertificate.from_pem)"
        )
    return ClientCertificate.from_pem(certificate, key, password=password)
