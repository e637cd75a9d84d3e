"""Bindings: XSUAA and Credential Store credentials, wherever they come from.

A *binding* is the credentials block SAP BTP hands an application. It arrives
as a mapping, as JSON text, as a service-key file (`cf service-key` output, with
or without the ``{"credentials": {...}}`` wrapper), as an entry of
`VCAP_SERVICES`, or as a Kubernetes binding directory (one file per credential,
described by ``.metadata``, or the legacy ``credentials.json``/``binding.json``
under ``/etc/secrets/sapbtp/<service>/<instance>/``).

`parse_credentials` recognises the two shapes mTLS needs and says plainly what
is wrong with the others::

    XSUAA x509           clientid, certificate, key, certurl (or url), credential-type
    Credential Store     username, certificate, key, oauth_token_url, url,
    (oauth:mtls)         expires_at, encryption.{client_private_key,server_public_key}

`BindingSource` remembers where a binding came from, so a file or directory can
be checked cheaply (one stat per file) and re-read when it changes: Kubernetes
replaces the whole secret at once by swapping the ``..data`` symlink.

No message here ever contains a credential value: errors name fields, files and
instance names only.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import ssl
import stat
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

from ._errors import BindingError

__all__ = [
    "Binding",
    "BindingInput",
    "BindingSource",
    "Redacted",
    "discover_token_endpoint",
    "parse_credentials",
    "select_vcap_service",
]

logger = logging.getLogger("mtls_auth")

#: What `from_binding` accepts.
BindingInput = Union[Mapping[str, Any], str, "os.PathLike[str]", "Redacted"]

_FRACTION = re.compile(r"^(.*?)\.(\d+)(.*)$")
_X509_TYPES = {"x509", "x509_generated", "x509_provided"}
_SECRET_TYPES = {"binding-secret", "instance-secret"}
_MAX_FILE_BYTES = 1 << 20
_LEGACY_ROOTS = ("/etc/secrets/sapbtp", "/etc/secrets/sapcp")


@dataclass(frozen=True)
class Binding:
    """The parts of a binding that mTLS token retrieval needs.

    `kind` is ``"xsuaa"``, ``"credstore"`` or ``"generic"``. `certificate` and
    `key` are PEM text; `encryption` holds the Credential Store payload keys.
    None of the secret fields shows in the repr.
    """

    kind: str
    client_id: str
    token_url: str
    certificate: str = field(repr=False)
    key: str = field(repr=False)
    url: str | None = None
    expires_at: datetime.datetime | None = None
    encryption: Mapping[str, str] = field(default_factory=dict, repr=False)
    source: str = "mapping"

    @property
    def needs_namespace(self) -> bool:
        return self.kind == "credstore"

    def __reduce__(self) -> Any:
        raise TypeError("a Binding holds a private key and cannot be pickled")


# -- recognising the shapes -------------------------------------------------------------


def _text(credentials: Mapping[str, Any], name: str) -> str | None:
    value = credentials.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BindingError(f"binding field {name!r} must be a string, not {type(value).__name__}")
    return value


def _require(credentials: Mapping[str, Any], names: list[str], what: str, where: str) -> None:
    missing = [name for name in names if not _text(credentials, name)]
    if missing:
        raise BindingError(f"{what} in {where} lacks {', '.join(repr(n) for n in missing)}")


def _unwrap(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The credentials block of a service key, VCAP entry or binding.json."""
    inner = data.get("credentials")
    if isinstance(inner, Mapping) and not (
        "clientid" in data or "oauth_token_url" in data or "certificate" in data
    ):
        return inner
    return data


def _cert_token_url(credentials: Mapping[str, Any], where: str) -> str:
    certurl = _text(credentials, "certurl")
    if certurl:
        return certurl.rstrip("/") + "/oauth/token"
    url = _text(credentials, "url")
    if not url:
        raise BindingError(
            f"XSUAA binding in {where} has neither 'certurl' nor 'url': "
            "cannot tell the token endpoint"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise BindingError(f"XSUAA binding in {where} has an unparseable 'url'") from None
    if not host:
        raise BindingError(f"XSUAA binding in {where} has a 'url' without a host")
    if ".authentication.cert." not in f".{host}" and ".authentication." in f".{host}":
        host = host.replace("authentication.", "authentication.cert.", 1)
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit(("https", netloc, parts.path.rstrip("/") + "/oauth/token", "", ""))


def _parse_xsuaa(credentials: Mapping[str, Any], where: str) -> Binding:
    kind = (_text(credentials, "credential-type") or "").strip()
    lowered = kind.lower()
    if lowered in _SECRET_TYPES or (
        not kind and credentials.get("clientsecret") and not credentials.get("key")
    ):
        raise BindingError(
            f"XSUAA binding in {where} uses a client secret (credential-type "
            f"{kind or 'binding-secret'!r}); mTLS needs an x509 binding. Create one with "
            "`cf bind-service APP XSUAA -c '{\"credential-type\": \"x509\"}'` or a service key "
            "`cf create-service-key XSUAA KEY -c '{\"credential-type\": \"x509\"}'` "
            "(Kubernetes: parameters: {credential-type: x509} in the ServiceBinding), "
            "and enable x509 in xs-security.json (oauth2-configuration.credential-types)"
        )
    if lowered == "x509_attested":
        raise BindingError(
            f"XSUAA binding in {where} is X509_ATTESTED: it carries no private key "
            "('key' is missing), so the certificate must come from the platform's "
            "attestation; pass certificate= and key= yourself or use credential-type x509"
        )
    if kind and lowered not in _X509_TYPES:
        raise BindingError(
            f"XSUAA binding in {where} has credential-type {kind!r}, which mtls-auth "
            "does not know; expected x509, X509_GENERATED or X509_PROVIDED"
        )
    _require(credentials, ["clientid", "certificate", "key"], "XSUAA x509 binding", where)
    return Binding(
        kind="xsuaa",
        client_id=_text(credentials, "clientid") or "",
        token_url=_cert_token_url(credentials, where),
        certificate=_text(credentials, "certificate") or "",
        key=_text(credentials, "key") or "",
        url=_text(credentials, "url"),
        source=where,
    )


def _parse_expires_at(value: str | None, where: str) -> datetime.datetime | None:
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.9's fromisoformat wants 0, 3 or 6 fraction digits ("09:24:03.3Z").
    fraction = _FRACTION.match(text)
    if fraction is not None:
        head, digits, zone = fraction.groups()
        text = f"{head}.{(digits + '000000')[:6]}{zone}"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        logger.warning("Credential Store binding in %s: unreadable expires_at", where)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _parse_credstore(credentials: Mapping[str, Any], where: str) -> Binding:
    if credentials.get("password") and not credentials.get("key"):
        raise BindingError(
            f"Credential Store binding in {where} uses basic authentication "
            "('password'); mTLS needs a binding created with authentication type "
            "oauth:mtls (the instance's 'authentication': {'type': 'oauth:mtls'})"
        )
    _require(
        credentials,
        ["username", "certificate", "key", "oauth_token_url"],
        "Credential Store oauth:mtls binding",
        where,
    )
    encryption = credentials.get("encryption")
    keys: dict[str, str] = {}
    if isinstance(encryption, Mapping):
        for name in ("client_private_key", "server_public_key"):
            value = encryption.get(name)
            if isinstance(value, str) and value:
                keys[name] = value
    expires_at = _parse_expires_at(_text(credentials, "expires_at"), where)
    if expires_at is not None and expires_at <= datetime.datetime.now(datetime.timezone.utc):
        logger.warning(
            "Credential Store binding in %s expired at %s: its certificate is no longer "
            "accepted; rebind the service or recreate the service key",
            where,
            expires_at.isoformat(),
        )
    return Binding(
        kind="credstore",
        client_id=_text(credentials, "username") or "",
        token_url=_text(credentials, "oauth_token_url") or "",
        certificate=_text(credentials, "certificate") or "",
        key=_text(credentials, "key") or "",
        url=_text(credentials, "url"),
        expires_at=expires_at,
        encryption=keys,
        source=where,
    )


def _parse_generic(credentials: Mapping[str, Any], where: str) -> Binding:
    _require(credentials, ["client_id", "certificate", "key"], "binding", where)
    token_url = _text(credentials, "token_url") or _text(credentials, "tokenurl")
    if not token_url:
        raise BindingError(f"binding in {where} lacks 'token_url'")
    return Binding(
        kind="generic",
        client_id=_text(credentials, "client_id") or "",
        token_url=token_url,
        certificate=_text(credentials, "certificate") or "",
        key=_text(credentials, "key") or "",
        url=_text(credentials, "url"),
        source=where,
    )


def parse_credentials(data: Mapping[str, Any], where: str = "mapping") -> Binding:
    """Recognise an XSUAA, Credential Store or generic mTLS binding."""
    if not isinstance(data, Mapping):
        raise BindingError(f"binding in {where} must be a JSON object, not {type(data).__name__}")
    credentials = _unwrap(data)
    if "oauth_token_url" in credentials or (
        "username" in credentials and "clientid" not in credentials
    ):
        return _parse_credstore(credentials, where)
    if "clientid" in credentials:
        return _parse_xsuaa(credentials, where)
    if "client_id" in credentials:
        return _parse_generic(credentials, where)
    fields = ", ".join(sorted(str(k) for k in credentials)[:12]) or "nothing"
    raise BindingError(
        f"binding in {where} is neither XSUAA (clientid) nor Credential Store "
        f"(username, oauth_token_url); it has: {fields}"
    )


# -- reading files and directories ---------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise BindingError(f"cannot read binding file {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_FILE_BYTES:
        raise BindingError(f"binding file {path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        # utf-8-sig: files saved by Windows editors start with a BOM.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Outside the except clause: UnicodeDecodeError.object is the file's bytes.
    raise BindingError(f"binding file {path} is not UTF-8 text")


def _loads(text: str, where: str) -> Any:
    failure: str | None = None
    try:
        return json.loads(text)
    except ValueError as exc:
        # The position is safe to show; the text around it may be a key.
        failure = f"line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')}"
    except RecursionError:
        failure = "nested too deeply"
    # Raised outside the except clause: JSONDecodeError.doc holds the whole
    # text, key included, and would stay reachable as __context__.
    raise BindingError(f"{where} is not valid JSON ({failure})")


def _read_directory(directory: Path) -> dict[str, Any]:
    """Credentials from a Kubernetes binding directory, new or legacy layout."""
    where = str(directory)
    for name in ("credentials.json", "binding.json"):
        candidate = directory / name
        if candidate.is_file():
            data = _loads(_read_text(candidate), str(candidate))
            if not isinstance(data, dict):
                raise BindingError(f"{candidate} must hold a JSON object")
            return dict(_unwrap(data))
    metadata_path = directory / ".metadata"
    if metadata_path.is_file():
        return _read_with_metadata(directory, metadata_path)
    credentials: dict[str, Any] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        text = _read_text(entry)
        value: Any = text
        stripped = text.strip()
        if stripped.startswith("{") and entry.name != "certificate" and entry.name != "key":
            try:
                value = json.loads(stripped)
            except ValueError:
                value = text
        credentials[entry.name] = value
    if not credentials:
        raise BindingError(f"binding directory {where} holds no credential files")
    return credentials


def _read_with_metadata(directory: Path, metadata_path: Path) -> dict[str, Any]:
    metadata = _loads(_read_text(metadata_path), str(metadata_path))
    if not isinstance(metadata, dict):
        raise BindingError(f"{metadata_path} must hold a JSON object")
    properties = metadata.get("credentialProperties")
    if not isinstance(properties, list):
        raise BindingError(f"{metadata_path} lacks a 'credentialProperties' list")
    credentials: dict[str, Any] = {}
    for prop in properties:
        if not isinstance(prop, dict) or not isinstance(prop.get("name"), str):
            raise BindingError(f"{metadata_path}: each credentialProperties entry needs a name")
        name = prop["name"]
        if "/" in name or "\0" in name or name.startswith(".") or len(name) > 255:
            raise BindingError(f"{metadata_path}: property name {name[:80]!r} is not a file name")
        path = directory / name
        try:
            present = path.is_file()
        except OSError:
            present = False
        if not present:
            raise BindingError(f"binding directory {directory} lacks the file {name!r}")
        text = _read_text(path)
        if prop.get("format") == "json":
            value = _loads(text, str(path))
            if prop.get("container") and isinstance(value, dict):
                credentials.update(value)
                continue
            credentials[name] = value
        else:
            credentials[name] = text
    extra = metadata.get("metaDataProperties") or []
    for prop in extra if isinstance(extra, list) else []:
        if isinstance(prop, dict) and prop.get("name") == "type":
            type_path = directory / "type"
            if type_path.is_file():
                credentials.setdefault("type", _read_text(type_path).strip())
    return credentials


class Redacted:
    """A binding on its way in (mapping or text); its repr shows nothing.

    The public `from_binding` wraps its argument at once, so frames captured by
    error reporters show ``<binding redacted>`` instead of a private key.
    """

    __slots__ = ("value",)
    value: Any

    def __init__(self, value: Any) -> None:
        self.value = value.value if isinstance(value, Redacted) else value

    def __repr__(self) -> str:
        return "<binding redacted>"

    def __reduce__(self) -> Any:
        raise TypeError("a binding holds a private key and cannot be pickled")


def _json_in_text(text: str) -> dict[str, Any] | None:
    """The JSON object in `text`: plain, after a BOM, or inside `cf service-key` output.

    `cf service-key APP KEY` prints a "Getting key ..." line before the JSON.
    Returns None when the text does not look like JSON at all (a path).
    """
    stripped = text.lstrip("\ufeff").strip()
    if not stripped.startswith("{"):
        start = stripped.find("\n{")
        if start < 0:
            return None
        stripped = stripped[start + 1 :]
    data = _loads(stripped, "binding JSON text")
    if not isinstance(data, dict):
        raise BindingError("binding JSON text must be an object")
    return data


def _fingerprint(path: Path) -> tuple[Any, ...]:
    """A cheap identity of a file or directory's current content."""
    try:
        if path.is_dir():
            parts: list[Any] = []
            data_link = path / "..data"
            if data_link.is_symlink():
                parts.append(os.readlink(data_link))
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.name == "..data" or (
                    entry.name.startswith("..") and entry.is_dir(follow_symlinks=False)
                ):
                    continue
                try:
                    info = entry.stat()
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    parts.append((entry.name, info.st_ino, info.st_size, info.st_mtime_ns))
            return tuple(parts)
        info = path.stat()
        return (info.st_ino, info.st_size, info.st_mtime_ns)
    except OSError:
        return ("missing",)


class BindingSource:
    """Where a binding came from, and whether it has changed since it was read."""

    def __init__(self, path: Path | None, data: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self._data = data
        self._fingerprint: tuple[Any, ...] | None = None

    @classmethod
    def from_input(cls, binding: BindingInput) -> BindingSource:
        if isinstance(binding, Redacted):
            binding = binding.value
        if isinstance(binding, Mapping):
            return cls(None, binding)
        if isinstance(binding, (str, os.PathLike)):
            text = os.fspath(binding)
            if not isinstance(text, str):
                raise BindingError("a binding path must be text, not bytes")
            data = _json_in_text(text)
            if data is not None:
                return cls(None, data)
            # Never echo the input: pasted text may hold a private key.
            shape = f"a text of {len(text)} characters"
            if "\n" in text or len(text) > 4096 or "-----BEGIN" in text:
                raise BindingError(
                    f"binding is {shape} that is neither a JSON object nor a path"
                )
            try:
                path = Path(text).expanduser()
                exists = path.exists()
            except (OSError, ValueError, RuntimeError):  # RuntimeError: ~unknown-user
                exists = False
            if not exists:
                raise BindingError(
                    f"binding is {shape} that is neither a JSON object nor an existing "
                    "service-key file or binding directory"
                )
            return cls(path)
        raise BindingError(
            "binding must be a mapping, JSON text, or a path to a service-key file or "
            f"binding directory, not {type(binding).__name__}"
        )

    @property
    def rereadable(self) -> bool:
        return self.path is not None

    def read(self) -> Binding:
        """Read (or re-read) and parse the binding."""
        if self.path is None:
            assert self._data is not None
            return parse_credentials(self._data, "mapping")
        fingerprint = _fingerprint(self.path)
        if self.path.is_dir():
            credentials = _read_directory(self.path)
        else:
            data = _loads(_read_text(self.path), f"service key {self.path}")
            if not isinstance(data, dict):
                raise BindingError(f"service key {self.path} must hold a JSON object")
            credentials = data
        binding = parse_credentials(credentials, str(self.path))
        self._fingerprint = fingerprint
        return binding

    def changed(self) -> bool:
        """One stat per file: has the binding changed since the last read?"""
        if self.path is None:
            return False
        return _fingerprint(self.path) != self._fingerprint

    def __repr__(self) -> str:
        return f"<BindingSource {self.path or 'mapping'}>"


# -- Cloud Foundry -------------------------------------------------------------------------


def select_vcap_service(
    label: str, name: str | None = None, vcap_services: str | None = None
) -> Mapping[str, Any]:
    """The credentials of one service instance from `VCAP_SERVICES`."""
    raw = vcap_services if vcap_services is not None else os.environ.get("VCAP_SERVICES")
    if not raw:
        raise BindingError("VCAP_SERVICES is not set: not running on Cloud Foundry?")
    services = _loads(raw, "VCAP_SERVICES")
    if not isinstance(services, dict):
        raise BindingError("VCAP_SERVICES must be a JSON object of label -> instances")
    group = services.get(label)
    instances = [i for i in group if isinstance(i, dict)] if isinstance(group, list) else []
    if not instances:
        # Also look for instances that carry the label as a tag (user-provided).
        instances = [
            i
            for group in services.values()
            if isinstance(group, list)
            for i in group
            if isinstance(i, dict)
            and isinstance(i.get("tags"), list)
            and label in i["tags"]
        ]
    names = [str(i.get("name")) for i in instances]
    if name is not None:
        instances = [i for i in instances if i.get("name") == name]
    if not instances:
        labels = ", ".join(sorted(services)) or "none"
        found = ", ".join(names) or "none"
        raise BindingError(
            f"no {label!r} service instance"
            f"{' named ' + repr(name) if name else ''} in VCAP_SERVICES "
            f"(instances with that label: {found}; labels present: {labels})"
        )
    if len(instances) > 1:
        raise BindingError(
            f"{len(instances)} {label!r} service instances in VCAP_SERVICES "
            f"({', '.join(names)}); pass name= to choose one"
        )
    credentials = instances[0].get("credentials")
    if not isinstance(credentials, dict):
        raise BindingError(f"the {label!r} instance {names[0]!r} has no credentials object")
    return credentials


def kubernetes_binding_path(name: str | None = None, label: str | None = None) -> Path:
    """The directory of a Kubernetes service binding, new layout or legacy."""
    root = os.environ.get("SERVICE_BINDING_ROOT")
    candidates: list[Path] = []
    if root and Path(root).is_dir():
        for entry in sorted(Path(root).iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if name is not None and entry.name != name:
                continue
            if label is not None:
                kind = entry / "type"
                label_file = entry / "label"
                tags = {
                    _read_text(p).strip() for p in (kind, label_file) if p.is_file()
                }
                if label not in tags:
                    continue
            candidates.append(entry)
    for legacy in _LEGACY_ROOTS:
        service_dirs = [Path(legacy) / label] if label else []
        if not label and Path(legacy).is_dir():
            service_dirs = [p for p in Path(legacy).iterdir() if p.is_dir()]
        for service in service_dirs:
            if not service.is_dir():
                continue
            for instance in sorted(service.iterdir()):
                if instance.is_dir() and (name is None or instance.name == name):
                    candidates.append(instance)
    if not candidates:
        raise BindingError(
            "no Kubernetes service binding found"
            f"{' named ' + repr(name) if name else ''}"
            f"{' of type ' + repr(label) if label else ''} under "
            f"$SERVICE_BINDING_ROOT ({root or 'unset'}) or {', '.join(_LEGACY_ROOTS)}"
        )
    if len(candidates) > 1:
        raise BindingError(
            f"{len(candidates)} Kubernetes bindings match "
            f"({', '.join(str(c) for c in candidates)}); pass name= to choose one"
        )
    return candidates[0]


# -- discovery -------------------------------------------------------------------------------


def discover_token_endpoint(
    base_url: str, context: ssl.SSLContext, *, timeout: float = 10.0
) -> str:
    """The mTLS token endpoint from ``/.well-known/openid-configuration``.

    Prefers ``mtls_endpoint_aliases.token_endpoint`` (RFC 8705 section 5) and
    falls back to ``token_endpoint``.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "https":
        raise BindingError(f"discovery needs an https:// URL, not {base_url!r}")
    path = parts.path.rstrip("/") + "/.well-known/openid-configuration"
    url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    # https only (checked above), so S310's file:// concern does not apply.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            body = response.read(_MAX_FILE_BYTES)
    except OSError as exc:
        raise BindingError(f"OpenID discovery at {url} failed: {exc}") from exc
    document = _loads(body.decode("utf-8", errors="replace"), f"OpenID configuration at {url}")
    if not isinstance(document, dict):
        raise BindingError(f"OpenID configuration at {url} is not a JSON object")
    aliases = document.get("mtls_endpoint_aliases")
    endpoint = aliases.get("token_endpoint") if isinstance(aliases, dict) else None
    endpoint = endpoint or document.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
        raise BindingError(f"OpenID configuration at {url} names no https token endpoint")
    return endpoint
