"""Client certificates held in memory, and the `ssl.SSLContext` built from them.

`ClientCertificate.from_pem` parses and validates a certificate chain and its
private key once: PEM shape, which certificate is the leaf (the one the key
belongs to, wherever it stands in the text), the password, the validity period.
After that the object is immutable and cheap to share between threads.

`ClientCertificate.ssl_context` hands the key to OpenSSL without ever writing it
to a filesystem in plaintext. Python's `ssl` module only loads keys from a path,
so the key is re-encrypted under a fresh random one-time passphrase and the PEM
is exposed through an anonymous memory file (`memfd_create`, read back through
`/proc/self/fd/N`). Where that is missing, a pipe read through `/dev/fd/N` is
used, and as a last resort a private temp file that holds only the *encrypted*
key and is overwritten and unlinked right after loading. The passphrase is always
passed: with `password=None` OpenSSL would prompt on the terminal and hang a
service that has one.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import hashlib
import logging
import os
import re
import secrets
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Union

from ._errors import CertificateError, InsecureTransportError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        PrivateKeyTypes,
        PublicKeyTypes,
    )

__all__ = ["INSECURE_SKIP_VERIFY", "ClientCertificate", "Verify", "build_ssl_context"]

logger = logging.getLogger("mtls_auth")

#: What `verify=` accepts: True for the system trust store, a path to a CA bundle
#: file or a c_rehash directory, or CA certificates as PEM text.
Verify = Union[bool, str, bytes, "os.PathLike[str]", "_InsecureSkipVerify"]

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


def _as_pem_bytes(value: str | bytes | _Secret, what: str) -> bytes:
    """Normalise PEM text as pasted from a service key: bytes, literal ``\\n``."""
    if isinstance(value, _Secret):
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


class _Secret:
    """Key material on its way to cryptography; its repr shows nothing.

    Error reporters that capture frame locals (Sentry, rich tracebacks) see
    `<redacted>` instead of the PEM or the password in mtls-auth's frames.
    """

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("key material cannot be pickled")


def redact(value: str | bytes | _Secret | None) -> Secret | None:
    """Wrap key material handed to a public constructor (None stays None).

    The constructors rebind their `key` and `password` arguments to this at
    once, so tracebacks with captured locals show ``<redacted>``.
    """
    if value is None or isinstance(value, _Secret):
        return value
    return _Secret(value)  # type: ignore[arg-type]


#: Key material wrapped by `redact`.
Secret = _Secret


def _load_key(block: _Secret, label: bytes, password: _Secret | None) -> PrivateKeyTypes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    encrypted = label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block.value
    if encrypted and password is None:
        raise CertificateError(
            "the private key is encrypted but no password was given: pass password="
        )
    failure: str | None = None
    try:
        return load_pem_private_key(
            block.value, password.value if encrypted and password is not None else None
        )
    except UnsupportedAlgorithm:
        failure = (
            "the private key uses an algorithm this OpenSSL build cannot load "
            f"({label.decode()})"
        )
    except (ValueError, TypeError):
        if encrypted:
            # cryptography says "Bad decrypt. Incorrect password?" for a wrong
            # password; a corrupted encrypted blob fails the same way.
            failure = (
                "the password for the private key is wrong (or the encrypted key is corrupt)"
            )
        else:
            failure = (
                f"the private key is not valid PEM ({label.decode()}): it could not be decoded"
            )
    # Raised outside the except clause on purpose: cryptography's exception (and
    # OpenSSL's error queue behind it) stays out of __context__ and tracebacks.
    raise CertificateError(failure)


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
        key_data = _Secret(_as_pem_bytes(key, "private key"))
        if isinstance(password, _Secret):
            password = password.value
        secret_password = (
            None
            if password is None
            else _Secret(password.encode("utf-8") if isinstance(password, str) else password)
        )
        # From here on the key and the password live only in _Secret holders, so
        # a traceback's captured locals show nothing of them.
        del key, password

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
        key_blocks = [(label, _Secret(block)) for label, block in _blocks(key_data.value)]
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
        return cls._build(tuple(chain), private_key)

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
        self._load_into(context)
        return context

    def _load_into(self, context: ssl.SSLContext) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        # The traditional PEM encryption (AES-256-CBC, one-pass key derivation)
        # is about twice as fast to write and to read as PKCS#8's PBKDF2, and
        # the one-time passphrase carries 256 random bits, so the cheap key
        # derivation costs nothing in strength. PKCS#8 for other key types,
        # and as the fallback for an OpenSSL that refuses the legacy format
        # (FIPS mode).
        if isinstance(self._key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            try:
                self._load_encrypted(context, traditional=True)
                return
            except CertificateError:
                pass
        self._load_encrypted(context, traditional=False)

    def _load_encrypted(self, context: ssl.SSLContext, *, traditional: bool) -> None:
        from cryptography.hazmat.primitives.serialization import (
            BestAvailableEncryption,
            Encoding,
            PrivateFormat,
        )

        # Both held in redacting holders: a traceback's captured locals could
        # otherwise rebuild the key from the passphrase and the encrypted PEM.
        passphrase = _Secret(secrets.token_urlsafe(32).encode("ascii"))
        form = PrivateFormat.TraditionalOpenSSL if traditional else PrivateFormat.PKCS8
        encrypted_key = _Secret(
            self._key.private_bytes(Encoding.PEM, form, BestAvailableEncryption(passphrase.value))
        )
        try:
            with _readable_paths(self._chain_pem, encrypted_key.value) as (cert_path, key_path):
                context.load_cert_chain(cert_path, key_path, password=passphrase.value)
        except ssl.SSLError as exc:
            raise CertificateError(
                f"OpenSSL refused the client certificate {self.subject!r}: "
                f"{_explain_ssl_error(exc)}"
            ) from exc
        except OSError as exc:
            raise CertificateError(
                f"could not hand the client certificate {self.subject!r} to OpenSSL: "
                f"{exc.strerror or exc}"
            ) from exc

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


_SSL_REASONS = {
    "EE_KEY_TOO_SMALL": "the key is too small for this OpenSSL's security level",
    "CA_MD_TOO_WEAK": "a certificate is signed with a digest this OpenSSL considers too weak",
    "KEY_VALUES_MISMATCH": "the private key does not match the certificate",
    "BAD_DECRYPT": "the key could not be decrypted",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no usable certificate was found",
    "UNSUPPORTED": "the key or certificate uses an algorithm this OpenSSL does not support",
}


def _explain_ssl_error(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    return _SSL_REASONS.get(reason, reason or exc.__class__.__name__)


# -- the SSLContext shell ------------------------------------------------------------


class _InsecureSkipVerify:
    """The one way to turn server certificate verification off: loudly."""

    _instance: _InsecureSkipVerify | None = None

    def __new__(cls) -> _InsecureSkipVerify:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INSECURE_SKIP_VERIFY"

    def __reduce__(self) -> str:
        return "INSECURE_SKIP_VERIFY"


#: Pass as `verify=` to skip server certificate verification (tests against a
#: server whose CA you cannot get, never production). Every context built with
#: it logs a WARNING. `verify=False` is refused, so it cannot happen by accident.
INSECURE_SKIP_VERIFY = _InsecureSkipVerify()


def build_ssl_context(verify: Verify = True) -> ssl.SSLContext:
    """A hardened client context with the given trust anchors and no certificate.

    Shared by `ClientCertificate.ssl_context` and by transports that verify the
    server without presenting a certificate.
    """
    if verify is False or verify is None:
        raise InsecureTransportError(
            "verify=False would turn off server certificate verification for an mTLS "
            "connection; pass a CA bundle path or CA PEM text instead (or, for a test "
            "server only, verify=mtls_auth.INSECURE_SKIP_VERIFY)"
        )
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname are on by default.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # TLS 1.0 and 1.1 are deprecated (RFC 8996).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Servers such as nginx may ask for the certificate after a TLS 1.3 handshake.
    context.post_handshake_auth = True
    # Compression leaks secrets through length (CRIME); renegotiation is an old
    # attack surface and never needed by a client.
    context.options |= ssl.OP_NO_COMPRESSION
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if verify is True:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    elif verify is INSECURE_SKIP_VERIFY:
        logger.warning(
            "INSECURE_SKIP_VERIFY: server certificates are NOT verified on this connection; "
            "anyone on the path can impersonate the server and take the token"
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        _load_trust(context, verify)  # type: ignore[arg-type]
    return context


def _load_trust(context: ssl.SSLContext, verify: str | bytes | os.PathLike[str]) -> None:
    text: str | None = None
    if isinstance(verify, bytes) and b"-----BEGIN" in verify:
        text = verify.decode("ascii", errors="replace")
    elif isinstance(verify, str) and "-----BEGIN" in verify:
        text = verify
    try:
        if text is not None:
            text = text.replace("\\n", "\n")
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise CertificateError("verify= PEM text holds no CERTIFICATE block")
            context.load_verify_locations(cadata=text)
            return
        path = os.fsdecode(os.fspath(verify))
        if os.path.isdir(path):
            context.load_verify_locations(capath=path)
        elif os.path.isfile(path):
            context.load_verify_locations(cafile=path)
        elif os.path.exists(path):
            raise CertificateError(f"verify= CA bundle {path!r} is not a regular file")
        else:
            raise CertificateError(f"verify= CA bundle {path!r} does not exist")
    except ssl.SSLError as exc:
        raise CertificateError(
            f"the CA certificates given as verify= could not be loaded: {_explain_ssl_error(exc)}"
        ) from exc
    except OSError as exc:
        raise CertificateError(
            f"the CA bundle given as verify= could not be read: {exc.strerror or exc}"
        ) from exc


# -- handing PEM to OpenSSL without a plaintext file -----------------------------------

_PROC_FD_USABLE: bool | None = None
_probe_lock = threading.Lock()


@contextlib.contextmanager
def _readable_paths(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can open that yield `cert_pem` and `key_pem` once each."""
    if hasattr(os, "memfd_create") and _proc_fd_usable():
        with _memfd(cert_pem) as cert_path, _memfd(key_pem) as key_path:
            yield cert_path, key_path
        return
    if sys.platform != "win32" and os.path.isdir("/dev/fd"):
        with _pipe(cert_pem) as cert_path, _pipe(key_pem) as key_path:
            yield cert_path, key_path
        return
    with _wiped_tempfile(cert_pem) as cert_path, _wiped_tempfile(key_pem) as key_path:
        yield cert_path, key_path


def _proc_fd_usable() -> bool:
    global _PROC_FD_USABLE
    if _PROC_FD_USABLE is None:
        with _probe_lock:
            if _PROC_FD_USABLE is None:
                try:
                    with _memfd(b"probe") as path, open(path, "rb") as handle:
                        _PROC_FD_USABLE = handle.read() == b"probe"
                except OSError:
                    _PROC_FD_USABLE = False
    return _PROC_FD_USABLE


@contextlib.contextmanager
def _memfd(data: bytes) -> Iterator[str]:
    # An anonymous file that lives in memory only; MFD_CLOEXEC keeps it out of
    # child processes. Reopening /proc/self/fd/N gives OpenSSL its own offset.
    fd = os.memfd_create("mtls-auth", getattr(os, "MFD_CLOEXEC", 1))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


@contextlib.contextmanager
def _pipe(data: bytes) -> Iterator[str]:
    # The reader (OpenSSL, in this thread) opens /dev/fd/N after the whole PEM is
    # in the pipe buffer, so it must fit: PEM chains are a few KiB, buffers 16-64.
    read_fd, write_fd = os.pipe()
    try:
        try:
            view = memoryview(data)
            os.set_blocking(write_fd, False)
            while view:
                view = view[os.write(write_fd, view) :]
        except BlockingIOError as exc:
            raise CertificateError(
                "the certificate chain is too large to hand to OpenSSL through a pipe"
            ) from exc
        finally:
            os.close(write_fd)
        yield f"/dev/fd/{read_fd}"
    finally:
        os.close(read_fd)


@contextlib.contextmanager
def _wiped_tempfile(data: bytes) -> Iterator[str]:
    # Last resort (Windows): the key PEM handed in is already encrypted under the
    # one-time passphrase; the file is private to this user, overwritten with
    # zeros and unlinked as soon as OpenSSL has read it.
    fd, path = tempfile.mkstemp(prefix="mtls-auth-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError), open(path, "r+b") as handle:
            handle.write(b"\0" * len(data))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.unlink(path)
        except OSError as exc:  # pragma: no cover - Windows file locking
            if exc.errno != errno.ENOENT:
                logger.warning("could not remove temporary encrypted key file %s", path)

