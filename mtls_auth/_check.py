"""Diagnosing a binding without using it: what `mtls-auth check` reports.

`check_binding` reads a binding the way `from_binding` does, but instead of
stopping at the first problem it collects facts (subject, issuer, validity,
key type, token URL, client id) and findings (errors and warnings) into a
`CheckReport`. An expired certificate or a key that does not match is reported,
not raised. Nothing secret is ever put into a report. `mtls-auth check` prints
it; applications can run it in their own health checks.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._binding import Binding
from ._errors import CertificateError, MtlsAuthError
from ._pem import KEY_LABELS, as_pem_bytes, is_encrypted_key, pem_blocks
from ._redact import Secret, guarded, safe_repr
from ._sources import BindingInput, BindingSource
from ._token import TokenInfo
from ._x509 import describe_key, load_key

__all__ = ["CheckReport", "Finding", "check_binding"]

#: Exit codes of `mtls-auth check`, Nagios-style, for scripts and monitoring.
_EXIT_CODES = {"ok": 0, "warning": 1, "error": 2}


@safe_repr
@dataclass(frozen=True)
class Finding:
    """One problem found: `level` is ``"error"`` or ``"warning"``."""

    level: str
    message: str


@safe_repr
@dataclass
class CheckReport:
    """Facts about a binding and the problems found; never a secret."""

    source: str
    kind: str | None = None
    client_id: str | None = None
    token_url: str | None = None
    subject: str | None = None
    issuer: str | None = None
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    key_type: str | None = None
    thumbprint: str | None = None
    chain_length: int | None = None
    binding_expires_at: datetime.datetime | None = None
    #: Credential Store: whether the binding carries payload encryption keys.
    payload_encryption: bool | None = None
    findings: list[Finding] = field(default_factory=list)
    token: dict[str, Any] | None = None
    checked_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )

    def set_token(self, info: TokenInfo) -> None:
        """Record what may be shown of a fetched token (never the token)."""
        facts: dict[str, Any] = {"expires_in": round(info.lifetime), "format": info.format}
        if info.scopes is not None:
            facts["scopes"] = list(info.scopes)
        if info.format == "jwt":
            facts["cnf_x5t#S256"] = info.cnf_thumbprint
            facts["cnf_matches_certificate"] = info.bound_to_certificate
        self.token = facts

    def error(self, message: str) -> None:
        """Add a finding that stops the binding from working."""
        self.findings.append(Finding("error", message))

    def warning(self, message: str) -> None:
        """Add a finding that does not stop the binding from working (yet)."""
        self.findings.append(Finding("warning", message))

    @property
    def days_left(self) -> float | None:
        """Days until the certificate expires (negative: expired); None without a certificate."""
        if self.not_after is None:
            return None
        return (self.not_after - self.checked_at).total_seconds() / 86400

    @property
    def status(self) -> str:
        """``ok``, ``warning`` or ``error``: the worst finding."""
        levels = {f.level for f in self.findings}
        return "error" if "error" in levels else "warning" if "warning" in levels else "ok"

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 error."""
        return _EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``mtls-auth check --json`` prints)."""

        def iso(moment: datetime.datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        days = self.days_left
        return {
            "source": self.source,
            "status": self.status,
            "exit_code": self.exit_code,
            "kind": self.kind,
            "client_id": self.client_id,
            "token_url": self.token_url,
            "certificate": {
                "subject": self.subject,
                "issuer": self.issuer,
                "not_before": iso(self.not_before),
                "not_after": iso(self.not_after),
                "days_left": None if days is None else round(days, 2),
                "key_type": self.key_type,
                "thumbprint": self.thumbprint,
                "chain_length": self.chain_length,
            },
            "binding_expires_at": iso(self.binding_expires_at),
            "findings": [{"level": f.level, "message": f.message} for f in self.findings],
            "token": self.token,
        }


@guarded
def check_binding(
    binding: BindingInput,
    *,
    warn_before: datetime.timedelta = datetime.timedelta(hours=24),
    source: str | None = None,
) -> tuple[CheckReport, Binding | None]:
    """Read and diagnose a binding offline. Returns the report and the binding."""
    report = CheckReport(source=source or _describe_source(binding))
    try:
        parsed = BindingSource.from_input(binding).read()
    except MtlsAuthError as exc:
        report.error(str(exc))
        return report, None
    report.kind = parsed.kind
    report.client_id = parsed.client_id
    report.token_url = parsed.token_url
    report.binding_expires_at = parsed.expires_at
    if parsed.kind == "credstore":
        report.payload_encryption = bool(parsed.encryption)
    _check_certificate(report, parsed, warn_before)
    if parsed.expires_at is not None and parsed.expires_at <= report.checked_at:
        report.error(
            f"the binding's expires_at ({parsed.expires_at.isoformat()}) has passed: "
            "recreate the service key or rebind"
        )
    if (
        parsed.kind == "credstore"
        and parsed.encryption
        and ("client_private_key" not in parsed.encryption)
    ):
        report.warning(
            "encryption.client_private_key is missing: decrypting payloads needs your own "
            "private key (client_private_key=)"
        )
    return report, parsed


def _describe_source(binding: BindingInput) -> str:
    if isinstance(binding, Mapping):
        return "mapping"
    text = str(binding)
    return text if len(text) < 300 and "\n" not in text else "binding text"


def _check_certificate(
    report: CheckReport, parsed: Binding, warn_before: datetime.timedelta
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        certs = x509.load_pem_x509_certificates(as_pem_bytes(parsed.certificate, "certificate"))
    except (ValueError, MtlsAuthError):
        report.error("the binding's certificate is not valid PEM")
        return
    key_bytes = Secret(as_pem_bytes(parsed.key, "private key"))
    # Loaded as from_pem loads it (an RSA key proven by one signature, not by
    # cryptography's 40 ms primality test): what check accepts, the library does.
    blocks = [(label, Secret(b)) for label, b in pem_blocks(key_bytes.value) if label in KEY_LABELS]
    del key_bytes
    failure = None
    if len(blocks) != 1:
        failure = "the binding's private key is not valid PEM"
    elif is_encrypted_key(*blocks[0]):
        failure = "the binding's private key is encrypted (bindings carry plain keys)"
    else:
        try:
            key = load_key(blocks[0][1], blocks[0][0], None)
        except CertificateError:
            failure = "the binding's private key is not valid PEM"
    del blocks
    if failure is not None:
        report.error(failure)
        leaf = certs[0]
    else:
        report.key_type = describe_key(key)
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        matching = [
            c
            for c in certs
            if c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki
        ]
        if not matching:
            report.error(
                "the private key does not match the certificate: they come from different "
                "bindings or rotations"
            )
            leaf = certs[0]
        else:
            leaf = matching[0]
    report.subject = leaf.subject.rfc4514_string()
    report.issuer = leaf.issuer.rfc4514_string()
    report.not_before = leaf.not_valid_before_utc
    report.not_after = leaf.not_valid_after_utc
    report.chain_length = len(certs)
    digest = _sha256(leaf.public_bytes(Encoding.DER))
    report.thumbprint = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    left = report.not_after - report.checked_at
    if left <= datetime.timedelta(0):
        report.error(
            f"the certificate expired on {report.not_after:%Y-%m-%d %H:%M UTC}: rotate the binding"
        )
    elif left <= warn_before:
        hours = left.total_seconds() / 3600
        report.warning(
            f"the certificate expires in {hours:.1f} hours "
            f"({report.not_after:%Y-%m-%d %H:%M UTC}): rotate the binding soon"
        )
    if report.not_before > report.checked_at + datetime.timedelta(minutes=5):
        report.error(f"the certificate is not valid before {report.not_before:%Y-%m-%d %H:%M UTC}")


def _sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()
