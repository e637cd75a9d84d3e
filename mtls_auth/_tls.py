"""Client `ssl.SSLContext`s: hardened defaults, trust anchors, and the key kept off disk.

`build_ssl_context` makes the shell every mTLS connection of the library uses:
TLS 1.2 at least, hostname checked, no compression or renegotiation, and
exactly the trust anchors given as `verify` (the system store, a CA bundle, or
CA PEM text). `load_client_chain` puts a client certificate and its private
key into such a context without the key ever reaching a filesystem in
plaintext: Python's `ssl` module only loads keys from a path, so the key is
re-encrypted under a fresh random one-time passphrase and exposed through an
anonymous memory file (`memfd_create`, read back through `/proc/self/fd/N`).
Where that is missing, a pipe read through `/dev/fd/N` is used, and as a last
resort a private temp file that holds only the *encrypted* key and is
overwritten and unlinked right after loading. The passphrase is always passed:
with `password=None` OpenSSL would prompt on the terminal and hang a service.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable, Union

from ._errors import CertificateError, InsecureTransportError
from ._redact import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = ["INSECURE_SKIP_VERIFY", "Verify", "build_ssl_context", "load_client_chain"]

logger = logging.getLogger(__name__)

#: What `verify=` accepts: True for the system trust store, a path to a CA bundle
#: file or a c_rehash directory, or CA certificates as PEM text.
Verify = Union[bool, str, bytes, "os.PathLike[str]", "_InsecureSkipVerify"]

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


INSECURE_SKIP_VERIFY = _InsecureSkipVerify()
"""Pass as ``verify=`` to skip server certificate verification.

For tests against a server whose CA you cannot get, never for production:
anyone on the path could then impersonate the token endpoint and take the
client's tokens. Every SSL context built with it logs a WARNING, and its repr
says what it is. ``verify=False`` (and None) is refused everywhere, so turning
verification off never happens by accident. The client certificate is still
presented.
"""


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


# -- the client certificate --------------------------------------------------------------


def load_client_chain(
    context: ssl.SSLContext, chain_pem: bytes, key: PrivateKeyTypes, subject: Callable[[], str]
) -> None:
    """Load a certificate chain and its private key into `context`, the key off disk.

    The traditional PEM encryption (AES-256-CBC, one-pass key derivation) is
    about twice as fast to write and to read as PKCS#8's PBKDF2, and the
    one-time passphrase carries 256 random bits, so the cheap key derivation
    costs nothing in strength. PKCS#8 for other key types, and as the fallback
    for an OpenSSL that refuses the legacy format (FIPS mode).
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        try:
            _load_encrypted(context, chain_pem, key, subject, traditional=True)
            return
        except CertificateError:
            pass
    _load_encrypted(context, chain_pem, key, subject, traditional=False)


def _load_encrypted(
    context: ssl.SSLContext,
    chain_pem: bytes,
    key: PrivateKeyTypes,
    subject: Callable[[], str],
    *,
    traditional: bool,
) -> None:
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        PrivateFormat,
    )

    # Both held in redacting holders: a traceback's captured locals could
    # otherwise rebuild the key from the passphrase and the encrypted PEM.
    passphrase = Secret(secrets.token_urlsafe(32).encode("ascii"))
    form = PrivateFormat.TraditionalOpenSSL if traditional else PrivateFormat.PKCS8
    encrypted_key = Secret(
        key.private_bytes(Encoding.PEM, form, BestAvailableEncryption(passphrase.value))
    )
    try:
        with _readable_paths(chain_pem, encrypted_key.value) as (cert_path, key_path):
            context.load_cert_chain(cert_path, key_path, password=passphrase.value)
    except ssl.SSLError as exc:
        raise CertificateError(
            f"OpenSSL refused the client certificate {subject()!r}: {_explain_ssl_error(exc)}"
        ) from exc
    except OSError as exc:
        raise CertificateError(
            f"could not hand the client certificate {subject()!r} to OpenSSL: {exc.strerror or exc}"
        ) from exc


# -- handing PEM to OpenSSL without a plaintext file -----------------------------------

_PROC_FD_USABLE: bool | None = None
_probe_lock = threading.Lock()


def _new_probe_lock() -> None:
    global _probe_lock
    _probe_lock = threading.Lock()  # a forked child: its holder is not here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_probe_lock)


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
