"""Client certificates held in memory: parsed and validated once, never exposing the key.

`ClientCertificate.from_pem` parses and validates a certificate chain and its
private key once: PEM shape, which certificate is the leaf (the one the key
belongs to, wherever it stands in the text), the password, the validity period.
After that the object is immutable and cheap to share between threads.
`ClientCertificate.ssl_context` hands it to OpenSSL (see `_tls`).

Two ways to the same object. The common one, a chain in order with the leaf
first and comfortably valid, is read without cryptography's X.509 stack: the
validity, the Names and the public key come from the DER (`_der`), OpenSSL
decodes every certificate, and the key must match the leaf byte for byte.
Anything else (a chain out of order, a certificate that expires within a day
or is not valid yet, DER the short reader does not know) takes the complete
path through `cryptography.x509`, which orders the chain and names every
problem. The decoded forms (`subject`, `issuer`, `chain`) are built on first
use.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import secrets
import ssl
import weakref
from typing import TYPE_CHECKING, Callable, Union

from ._der import certificate_facts
from ._errors import CertificateError
from ._pem import CERT_LABELS, KEY_LABELS, as_pem_bytes, certificate_der, pem_blocks
from ._redact import Secret, guarded, safe_repr
from ._tls import INSECURE_SKIP_VERIFY, Verify, build_ssl_context, load_client_chain
from ._x509 import describe_key, load_certificates, load_key, order_chain, spki

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

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

_EXPIRY_WARNING = datetime.timedelta(hours=24)
#: How far a certificate's start may lie ahead of this host's clock.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


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
        cert_data = as_pem_bytes(certificate, "certificate")
        key_data = Secret(as_pem_bytes(key, "private key"))
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

        cert_blocks = pem_blocks(cert_data)
        if not cert_blocks:
            raise CertificateError(
                "the certificate is not PEM: no '-----BEGIN CERTIFICATE-----' block found"
            )
        certs_pem = [block for label, block in cert_blocks if label in CERT_LABELS]
        if not certs_pem:
            labels = ", ".join(sorted({label.decode() for label, _ in cert_blocks}))
            raise CertificateError(
                f"no certificate found in the certificate PEM (it holds: {labels})"
            )
        key_blocks = [(label, Secret(block)) for label, block in pem_blocks(key_data.value)]
        if not key_blocks:
            raise CertificateError(
                "the private key is not PEM: no '-----BEGIN ... PRIVATE KEY-----' block found"
            )
        keys_pem = [(label, block) for label, block in key_blocks if label in KEY_LABELS]
        if not keys_pem:
            labels = ", ".join(sorted({label.decode() for label, _ in key_blocks}))
            raise CertificateError(f"no private key found in the key PEM (it holds: {labels})")
        if len(keys_pem) > 1:
            raise CertificateError(
                f"the key PEM holds {len(keys_pem)} private keys; pass exactly one"
            )

        label, block = keys_pem[0]
        private_key = load_key(block, label, secret_password)
        del key_data, key_blocks, keys_pem, block
        built = cls._ordered(certs_pem, private_key) or cls._complete(certs_pem, private_key)
        _parsed[seen] = built
        return built

    @classmethod
    def _ordered(
        cls, certs_pem: list[bytes], private_key: PrivateKeyTypes
    ) -> ClientCertificate | None:
        """The chain as given, if it is in order and needs nothing decoded; else None.

        The leaf first, its public key byte for byte the key's, each further
        certificate the issuer of the one before, every certificate decodable
        by OpenSSL, and the leaf valid now and for more than a day (what
        `_complete` would warn or fail about is said there, with the subject).
        """
        ders = [certificate_der(block) for block in certs_pem]
        facts = [None if der is None else certificate_facts(der) for der in ders]
        leaf = facts[0]
        if leaf is None or leaf.public_key != spki(private_key.public_key()):
            return None
        for child, parent in zip(facts, facts[1:]):
            if child is None or parent is None or child.issuer != parent.subject:
                return None
        now = _now()
        if leaf.not_before > now + _CLOCK_SKEW or leaf.not_after - now <= _EXPIRY_WARNING:
            return None
        checked = [der for der in ders if der is not None]
        try:  # OpenSSL's own decoding, as load_cert_chain will need it
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=b"".join(checked))
        except (ssl.SSLError, ValueError):
            return None
        # The bytes OpenSSL decoded, as the PEM _complete would write: what
        # ssl_context() loads later is exactly what was checked here.
        chain_pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in checked).encode("ascii")
        return cls._make(chain_pem, private_key, leaf.not_before, leaf.not_after, checked[0])

    @classmethod
    def _complete(cls, certs_pem: list[bytes], private_key: PrivateKeyTypes) -> ClientCertificate:
        """Every certificate decoded: the leaf found by its key, the chain put in order."""
        from cryptography.hazmat.primitives.serialization import Encoding

        certs = load_certificates(certs_pem)
        key_spki = spki(private_key.public_key())
        leaf = next((c for c in certs if spki(c.public_key()) == key_spki), None)
        if leaf is None:
            subjects = "; ".join(c.subject.rfc4514_string() or "(empty subject)" for c in certs)
            raise CertificateError(
                "the private key does not match the certificate "
                f"(no certificate in the chain belongs to this key; chain: {subjects})"
            )
        chain = tuple(order_chain(leaf, [c for c in certs if c is not leaf]))
        self = cls._make(
            b"".join(c.public_bytes(Encoding.PEM) for c in chain),
            private_key,
            leaf.not_valid_before_utc,
            leaf.not_valid_after_utc,
            leaf.public_bytes(Encoding.DER),
        )
        object.__setattr__(self, "_chain", chain)
        now = _now()
        if self._not_after <= now:
            raise CertificateError(
                f"the certificate {self.subject!r} expired on {_fmt(self._not_after)}"
            )
        if self._not_before > now + _CLOCK_SKEW:
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

    @classmethod
    def _make(
        cls,
        chain_pem: bytes,
        private_key: PrivateKeyTypes,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
        leaf_der: bytes,
    ) -> ClientCertificate:
        self = object.__new__(cls)
        object.__setattr__(self, "_chain_pem", chain_pem)
        object.__setattr__(self, "_key", private_key)
        object.__setattr__(self, "_key_type", describe_key(private_key))
        object.__setattr__(self, "_not_after", not_after)
        object.__setattr__(self, "_not_before", not_before)
        digest = hashlib.sha256(leaf_der).digest()
        object.__setattr__(
            self, "_thumbprint", base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        )
        return self

    def _decoded_chain(self) -> tuple[x509.Certificate, ...]:
        """The chain as `cryptography.x509` objects, decoded on first use."""
        try:
            return self._chain
        except AttributeError:
            pass
        chain = tuple(load_certificates([block for _, block in pem_blocks(self._chain_pem)]))
        object.__setattr__(self, "_chain", chain)
        return chain

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ClientCertificate is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ClientCertificate is immutable")

    # -- public, non-secret facts ------------------------------------------------

    @property
    def subject(self) -> str:
        """The leaf certificate's subject as an RFC 4514 string."""
        return self._leaf_name("subject")

    @property
    def issuer(self) -> str:
        """The leaf certificate's issuer as an RFC 4514 string."""
        return self._leaf_name("issuer")

    def _leaf_name(self, which: str) -> str:
        try:
            leaf = self._decoded_chain()[0]
        except CertificateError:
            # OpenSSL decodes it but cryptography does not: logs and messages
            # still need a name, and the certificate works.
            return "(a name cryptography cannot decode)"
        name: str = getattr(leaf, which).rfc4514_string()
        return name

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
        return self._decoded_chain()[0]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The leaf followed by the CA certificates that came with it."""
        return self._decoded_chain()

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
        load_client_chain(context, self._chain_pem, self._key, lambda: self.subject)
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
