"""Where bindings come from: service-key files, Kubernetes directories, VCAP_SERVICES.

A binding arrives as a mapping, as JSON text, as a service-key file (`cf
service-key` output, with or without the ``{"credentials": {...}}`` wrapper),
as an entry of `VCAP_SERVICES`, or as a Kubernetes binding directory (one file
per credential, described by ``.metadata``, or the legacy
``credentials.json``/``binding.json`` under
``/etc/secrets/sapbtp/<service>/<instance>/``).

`BindingSource` remembers where a binding came from, so a file or directory can
be checked cheaply (one stat per file) and re-read when it changes: Kubernetes
replaces the whole secret at once by swapping the ``..data`` symlink.
`BindingFeed` is a binding in use as a client's certificate source.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from ._binding import Binding, loads_json, parse_credentials, unwrap
from ._certificate import ClientCertificate
from ._errors import BindingError
from ._redact import Secret, guarded, safe_repr

__all__ = [
    "BindingFeed",
    "BindingInput",
    "BindingSource",
    "kubernetes_binding_path",
    "select_vcap_service",
]

#: What `from_binding` accepts (a `Secret` holding one of these, too).
BindingInput = Union[Mapping[str, Any], str, "os.PathLike[str]", Secret]

_MAX_FILE_BYTES = 1 << 20
_LEGACY_ROOTS = ("/etc/secrets/sapbtp", "/etc/secrets/sapcp")


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_text(path: Path) -> str:
    """A binding file's text: a regular file of at most 1 MiB, or a BindingError at once.

    Opened without blocking and checked before reading: a FIFO would block the
    open until a writer came, a device would never end.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BindingError(f"cannot read binding file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BindingError(
                f"binding file {path} is {_kind_of(info.st_mode)}: bindings are regular files "
                "(or directories of them)"
            )
        if info.st_size > _MAX_FILE_BYTES:
            raise BindingError(f"binding file {path} is larger than {_MAX_FILE_BYTES} bytes")
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise BindingError(f"cannot read binding file {path}: {exc.strerror or exc}") from None
    finally:
        if fd != -1:
            os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise BindingError(f"binding file {path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        # utf-8-sig: files saved by Windows editors start with a BOM.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Outside the except clause: UnicodeDecodeError.object is the file's bytes.
    raise BindingError(f"binding file {path} is not UTF-8 text")


def _read_directory(directory: Path) -> dict[str, Any]:
    """Credentials from a Kubernetes binding directory, new or legacy layout."""
    where = str(directory)
    for name in ("credentials.json", "binding.json"):
        candidate = directory / name
        if candidate.is_file():
            data = loads_json(_read_text(candidate), str(candidate))
            if not isinstance(data, dict):
                raise BindingError(f"{candidate} must hold a JSON object")
            return dict(unwrap(data))
    metadata_path = directory / ".metadata"
    if metadata_path.is_file():
        return _read_with_metadata(directory, metadata_path)
    credentials: dict[str, Any] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        text = _read_text(entry)  # anything but a regular file is refused here
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
    metadata = loads_json(_read_text(metadata_path), str(metadata_path))
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
            present = path.exists()
        except OSError:
            present = False
        if not present:
            raise BindingError(f"binding directory {directory} lacks the file {name!r}")
        text = _read_text(path)  # anything but a regular file is refused here
        if prop.get("format") == "json":
            value = loads_json(text, str(path))
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


def _json_in_text(text: str, where: str = "binding JSON text") -> dict[str, Any] | None:
    """The JSON object in `text`: plain, after a BOM, or inside `cf service-key` output.

    `cf service-key APP KEY > key.json` writes a "Getting key ... as ..." line
    (and maybe a blank one) before the JSON: a preamble before the first line
    that starts with ``{`` is skipped. Returns None when no line starts with
    ``{`` (the text is not JSON at all: a path, say).
    """
    stripped = text.lstrip("\ufeff").strip()
    if not stripped.startswith("{"):
        start = stripped.find("\n{")
        if start < 0:
            return None
        stripped = stripped[start + 1 :]
    data = loads_json(stripped, where)
    if not isinstance(data, dict):
        raise BindingError(f"{where} must hold a JSON object")
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


@safe_repr
class BindingSource:
    """Where a binding came from, and whether it has changed since it was read."""

    def __init__(self, path: Path | None, data: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self._data = data
        self._fingerprint: tuple[Any, ...] | None = None

    @classmethod
    @guarded  # the binding text may hold a key: no frame keeps it on an error
    def from_input(cls, binding: BindingInput) -> BindingSource:
        if isinstance(binding, Secret):
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
                raise BindingError(f"binding is {shape} that is neither a JSON object nor a path")
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

    @guarded
    def read(self) -> Binding:
        """Read (or re-read) and parse the binding."""
        if self.path is None:
            assert self._data is not None
            return parse_credentials(self._data, "mapping")
        fingerprint = _fingerprint(self.path)
        if self.path.is_dir():
            credentials = _read_directory(self.path)
        else:
            where = f"service key {self.path}"
            found = _json_in_text(_read_text(self.path), where)
            if found is None:
                raise BindingError(
                    f"{where} is not JSON: expected a JSON object (a service key as "
                    "`cf service-key APP KEY` prints it, with or without its 'Getting key' "
                    "line), or a binding directory"
                )
            credentials = found
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


@guarded
def select_vcap_service(
    label: str, name: str | None = None, vcap_services: str | None = None
) -> Mapping[str, Any]:
    """The credentials of one service instance from `VCAP_SERVICES`."""
    raw = vcap_services if vcap_services is not None else os.environ.get("VCAP_SERVICES")
    if not raw:
        raise BindingError("VCAP_SERVICES is not set: not running on Cloud Foundry?")
    services = loads_json(raw, "VCAP_SERVICES")
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
            if isinstance(i, dict) and isinstance(i.get("tags"), list) and label in i["tags"]
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


@guarded
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
                tags = {_read_text(p).strip() for p in (kind, label_file) if p.is_file()}
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


@safe_repr
class BindingFeed:
    """A binding in use as a client's certificate source: what `from_binding` hands on.

    It holds where the binding came from, what was read there, and the
    certificate made of it; the client watches the source and re-reads it when
    it changes. Calling it returns the certificate, so it also serves where a
    certificate provider is expected.
    """

    __slots__ = (
        "authorization_url_override",
        "binding",
        "certificate",
        "source",
        "token_url_override",
    )

    def __init__(
        self, source: BindingSource, binding: Binding, certificate: ClientCertificate
    ) -> None:
        self.source = source
        self.binding = binding
        self.certificate = certificate
        #: Endpoints found by discovery: kept when the binding is re-read.
        self.token_url_override: str | None = None
        self.authorization_url_override: str | None = None

    @classmethod
    @guarded
    def read(cls, binding: BindingInput) -> BindingFeed:
        """Read and parse `binding`, and validate its certificate and key."""
        source = BindingSource.from_input(binding)
        parsed = source.read()
        return cls(source, parsed, ClientCertificate.from_pem(parsed.certificate, parsed.key))

    def __call__(self) -> ClientCertificate:
        return self.certificate

    def __repr__(self) -> str:
        return f"<BindingFeed {self.binding.kind} from {self.binding.source}>"

    def __reduce__(self) -> Any:
        raise TypeError("a binding holds a private key and cannot be pickled")
