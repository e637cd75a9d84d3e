"""A throw-away PKI generated in memory at run time.

`PKI` draws a small certificate hierarchy the way XSUAA and Credential Store
bindings look in real life::

    root CA  (trust anchor: the only certificate a verifier should trust)
    └── intermediate CA
        ├── server  (DNS localhost and the kit's tenant domains, IP 127.0.0.1 and ::1)
        └── clients (`PKI.issue_client`)

Every certificate carries the extensions OpenSSL's ``X509_V_FLAG_X509_STRICT``
(on by default in Python 3.13's `ssl.create_default_context`) insists on:
SubjectKeyIdentifier, AuthorityKeyIdentifier, a critical BasicConstraints,
KeyUsage and ExtendedKeyUsage. Nothing is ever written to disk: keys live as
`cryptography` objects and are rendered to PEM on demand, in the format the
caller asks for.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable, Literal, NoReturn, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from collections.abc import Sequence

from .._redact import safe_repr
from ._tenants import IAS_DOMAIN, LOGIN_DOMAIN, TENANT_DOMAIN

__all__ = ["PKI", "SERVER_DNS_NAMES", "Credential", "IssuerName", "KeyType", "PrivateKey"]

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
KeyType = Literal["rsa", "rsa4096", "ec", "ec384", "ed25519"]
IssuerName = Literal["intermediate", "root"]

_PEM = serialization.Encoding.PEM
_ORGANIZATION = "mtls-auth testing"
_CLIENT_LIFETIME = timedelta(days=7)
_SERVER_LIFETIME = timedelta(days=365)
_CA_LIFETIME = timedelta(days=3650)
_BACKDATE = timedelta(hours=1)

#: The DNS names of `PKI.server`: localhost, and every tenant under the kit's
#: domains (`TENANT_DOMAIN`, `LOGIN_DOMAIN`, `IAS_DOMAIN`; one label each).
SERVER_DNS_NAMES = (
    "localhost",
    f"*.{TENANT_DOMAIN}",
    f"*.{LOGIN_DOMAIN}",
    f"*.{IAS_DOMAIN}",
)


def generate_key(key_type: KeyType = "rsa") -> PrivateKey:
    """Generate a fresh private key of `key_type`.

    ``"rsa"`` is RSA 2048 (what SAP bindings carry), ``"rsa4096"`` RSA 4096,
    ``"ec"`` P-256, ``"ec384"`` P-384 and ``"ed25519"`` Ed25519.
    """
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key_type {key_type!r}")


def thumbprint_of(certificate: x509.Certificate) -> str:
    """The x5t#S256 of `certificate`: base64url (no padding) SHA-256 of its DER."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return thumbprint_of_der(der)


def thumbprint_of_der(der: bytes) -> str:
    """The x5t#S256 of a DER-encoded certificate."""
    digest = hashlib.sha256(der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _cert_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(_PEM).decode("ascii")


def _key_kind(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC-{key.curve.name}"
    return "Ed25519"


@safe_repr
@dataclass(frozen=True, eq=False, repr=False)
class Credential:
    """A certificate with its private key, rendered every way a binding may carry it.

    `cert_pem` is the leaf alone; `chain_pem` is the leaf followed by the
    issuing intermediate(s), never the root, which is what a client must send
    when the server trusts only the root. `thumbprint` is the RFC 8705
    ``x5t#S256`` of the leaf and `subject` its RFC 4514 subject DN.

    The repr names the subject and thumbprint only; key material never appears
    in it, and the object refuses to pickle.
    """

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    cert_pem: str
    chain_pem: str
    thumbprint: str
    subject: str

    @classmethod
    def _build(
        cls,
        certificate: x509.Certificate,
        private_key: PrivateKey,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> Credential:
        leaf = _cert_pem(certificate)
        return cls(
            certificate=certificate,
            private_key=private_key,
            cert_pem=leaf,
            chain_pem=leaf + "".join(_cert_pem(c) for c in intermediates),
            thumbprint=thumbprint_of(certificate),
            subject=certificate.subject.rfc4514_string(),
        )

    @property
    def not_before(self) -> datetime:
        """Start of validity, timezone-aware UTC."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        """End of validity, timezone-aware UTC."""
        return self.certificate.not_valid_after_utc

    @property
    def key_type(self) -> str:
        """``RSA-2048``, ``EC-secp256r1``, ``Ed25519`` and so on."""
        return _key_kind(self.private_key)

    @property
    def key_pem(self) -> str:
        """The key in its natural binding format.

        PKCS#1 ``RSA PRIVATE KEY`` for RSA (as SAP bindings carry it), SEC1
        ``EC PRIVATE KEY`` for EC and PKCS#8 ``PRIVATE KEY`` for Ed25519.
        """
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.key_pem_pkcs1()
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.key_pem_sec1()
        return self.key_pem_pkcs8()

    def key_pem_pkcs1(self) -> str:
        """``-----BEGIN RSA PRIVATE KEY-----`` (RSA keys only)."""
        if not isinstance(self.private_key, rsa.RSAPrivateKey):
            raise TypeError(f"PKCS#1 needs an RSA key, this one is {self.key_type}")
        return self._private_bytes(serialization.PrivateFormat.TraditionalOpenSSL)

    def key_pem_pkcs8(self) -> str:
        """``-----BEGIN PRIVATE KEY-----`` (any key type)."""
        return self._private_bytes(serialization.PrivateFormat.PKCS8)

    def key_pem_sec1(self) -> str:
        """``-----BEGIN EC PRIVATE KEY-----`` (EC keys only)."""
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"SEC1 needs an EC key, this one is {self.key_type}")
        return self._private_bytes(serialization.PrivateFormat.TraditionalOpenSSL)

    def key_pem_encrypted(self, password: bytes) -> str:
        """``-----BEGIN ENCRYPTED PRIVATE KEY-----``: PKCS#8 under `password`."""
        return self.private_key.private_bytes(
            _PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        ).decode("ascii")

    def _private_bytes(self, fmt: serialization.PrivateFormat) -> str:
        return self.private_key.private_bytes(_PEM, fmt, serialization.NoEncryption()).decode(
            "ascii"
        )

    def __repr__(self) -> str:
        return (
            f"Credential(subject={self.subject!r}, thumbprint={self.thumbprint!r}, "
            f"key={self.key_type}, not_after={self.not_after.isoformat()})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("Credential holds a private key and cannot be pickled")


def _name(common_name: str, organizational_unit: str | Sequence[str] | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
    ]
    if isinstance(organizational_unit, str):
        organizational_unit = [organizational_unit]
    for unit in organizational_unit or ():
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs the message itself; every other key type signs SHA-256.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _sign(
    *,
    subject: x509.Name,
    key: PrivateKey,
    issuer: Credential | None,
    not_before: datetime,
    not_after: datetime,
    ca: bool,
    path_length: int | None = None,
    server: bool = False,
    client: bool = False,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    """Build and sign one certificate; `issuer` None means self-signed."""
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    if issuer is None:
        issuer_name, signing_key = subject, key
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        issuer_name, signing_key = issuer.certificate.subject, issuer.private_key
        issuer_ski = issuer.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)

    usages: list[x509.ObjectIdentifier] = []
    if server or ca:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client or ca:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # Only RSA keys encipher (TLS 1.2 RSA key exchange); EC/EdDSA only sign.
                key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, _signature_hash(signing_key))


@safe_repr
class PKI:
    """A root CA, an intermediate CA and a localhost server credential, made on demand.

    Nothing is generated until first used; the root, the intermediate, the
    server credential and the untrusted CA are then cached for the life of the
    instance, so one `PKI` per test session keeps RSA key generation cheap.
    `now` (timezone-aware, naive means UTC) anchors every validity period;
    it defaults to the wall clock at construction.

    Trust only `root_pem`: clients must send `Credential.chain_pem` (leaf plus
    intermediate) for verification to succeed.
    """

    def __init__(self, now: datetime | None = None) -> None:
        if now is None:
            now = datetime.now(timezone.utc)
        elif now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        self.now = now
        self._lock = threading.RLock()
        self._cache: dict[str, Credential] = {}

    def __repr__(self) -> str:
        return f"PKI(now={self.now.isoformat()})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("PKI holds private keys and cannot be pickled")

    # -- the fixed hierarchy --------------------------------------------------

    def _cached(self, name: str, make: Callable[[], Credential]) -> Credential:
        with self._lock:
            credential = self._cache.get(name)
            if credential is None:
                credential = make()
                self._cache[name] = credential
            return credential

    def _make_ca(self, common_name: str, issuer: Credential | None) -> Credential:
        key = generate_key("rsa")
        certificate = _sign(
            subject=_name(common_name),
            key=key,
            issuer=issuer,
            not_before=self.now - timedelta(days=1),
            not_after=self.now + _CA_LIFETIME,
            ca=True,
            path_length=None if issuer is None else 0,
        )
        return Credential._build(certificate, key)

    @property
    def root(self) -> Credential:
        """The root CA (self-signed, the trust anchor)."""
        return self._cached("root", lambda: self._make_ca("mtls-auth Test Root CA", None))

    @property
    def intermediate(self) -> Credential:
        """The intermediate CA, signed by the root; it issues servers and clients."""
        return self._cached(
            "intermediate",
            lambda: self._make_ca("mtls-auth Test Intermediate CA", self.root),
        )

    @property
    def root_pem(self) -> str:
        """PEM of the root CA certificate alone: the only trust anchor."""
        return self.root.cert_pem

    @property
    def ca_pem(self) -> str:
        """Alias of `root_pem`, for ``verify=`` arguments."""
        return self.root_pem

    @property
    def intermediate_pem(self) -> str:
        """PEM of the intermediate CA certificate."""
        return self.intermediate.cert_pem

    @property
    def server(self) -> Credential:
        """Server credential for ``localhost``, ``127.0.0.1``, ``::1`` and the tenant names.

        Its DNS names are `SERVER_DNS_NAMES`: ``localhost`` and the wildcards
        ``*.authentication.cert.mtls.test``, ``*.authentication.mtls.test`` and
        ``*.accounts.mtls.test``. Its `chain_pem` includes the intermediate.
        """
        return self._cached("server", lambda: self.issue_server(SERVER_DNS_NAMES))

    @property
    def untrusted_root(self) -> Credential:
        """A self-made CA that nothing trusts, for negative tests."""
        return self._cached(
            "untrusted", lambda: self._make_ca("mtls-auth Untrusted Rogue CA", None)
        )

    # -- issuing ----------------------------------------------------------------

    def _issuer(self, issuer: IssuerName) -> tuple[Credential, list[x509.Certificate]]:
        if issuer == "intermediate":
            ca = self.intermediate
            return ca, [ca.certificate]
        if issuer == "root":
            return self.root, []
        raise ValueError(f"issuer must be 'intermediate' or 'root', not {issuer!r}")

    def _validity(
        self, not_before: datetime | None, not_after: datetime | None, lifetime: timedelta
    ) -> tuple[datetime, datetime]:
        start = not_before if not_before is not None else self.now - _BACKDATE
        end = not_after if not_after is not None else self.now + lifetime
        return start, end

    def issue_client(
        self,
        common_name: str = "mtls-client",
        *,
        key_type: KeyType = "rsa",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        issuer: IssuerName = "intermediate",
        organizational_unit: str | Sequence[str] | None = None,
    ) -> Credential:
        """Issue a fresh client credential (ExtendedKeyUsage clientAuth).

        Validity defaults to one hour before `now` until seven days after it,
        like an XSUAA-managed certificate. Each call makes a new key and
        certificate; two calls with the same arguments give the same `subject`
        (a rotated certificate) but different thumbprints.
        """
        ca, chain = self._issuer(issuer)
        start, end = self._validity(not_before, not_after, _CLIENT_LIFETIME)
        key = generate_key(key_type)
        certificate = _sign(
            subject=_name(common_name, organizational_unit),
            key=key,
            issuer=ca,
            not_before=start,
            not_after=end,
            ca=False,
            client=True,
        )
        return Credential._build(certificate, key, chain)

    def issue_server(
        self,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
        *,
        common_name: str | None = None,
        key_type: KeyType = "rsa",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        issuer: IssuerName = "intermediate",
    ) -> Credential:
        """Issue a server credential (ExtendedKeyUsage serverAuth) for the given names."""
        ca, chain = self._issuer(issuer)
        start, end = self._validity(not_before, not_after, _SERVER_LIFETIME)
        key = generate_key(key_type)
        if common_name is None:
            common_name = dns_names[0] if dns_names else "mtls-auth test server"
        certificate = _sign(
            subject=_name(common_name),
            key=key,
            issuer=ca,
            not_before=start,
            not_after=end,
            ca=False,
            server=True,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        return Credential._build(certificate, key, chain)

    # -- ready-made faults ------------------------------------------------------

    def expired_client(self, common_name: str = "mtls-client") -> Credential:
        """A client credential whose validity ended a day before `now`."""
        return self.issue_client(
            common_name,
            not_before=self.now - timedelta(days=8),
            not_after=self.now - timedelta(days=1),
        )

    def untrusted_client(self, common_name: str = "mtls-client") -> Credential:
        """A client credential issued by `untrusted_root`, which the server does not trust.

        Its subject equals a normal client's, so only the signature tells them apart.
        """
        rogue = self.untrusted_root
        key = generate_key("rsa")
        certificate = _sign(
            subject=_name(common_name),
            key=key,
            issuer=rogue,
            not_before=self.now - _BACKDATE,
            not_after=self.now + _CLIENT_LIFETIME,
            ca=False,
            client=True,
        )
        return Credential._build(certificate, key)

    def mismatched_key(self, key_type: KeyType = "rsa") -> str:
        """PEM of a fresh key that belongs to no certificate (PKCS#1 for RSA)."""
        key = generate_key(key_type)
        fmt = (
            serialization.PrivateFormat.PKCS8
            if isinstance(key, ed25519.Ed25519PrivateKey)
            else serialization.PrivateFormat.TraditionalOpenSSL
        )
        return key.private_bytes(_PEM, fmt, serialization.NoEncryption()).decode("ascii")

    def expired_server(self) -> Credential:
        """A localhost server credential whose validity ended a day before `now`."""
        return self.issue_server(
            not_before=self.now - timedelta(days=30),
            not_after=self.now - timedelta(days=1),
        )

    def wrong_host_server(self, hostname: str = "wrong-host.invalid") -> Credential:
        """A valid server credential for `hostname` only (no localhost, no IPs)."""
        return self.issue_server((hostname,), ())
