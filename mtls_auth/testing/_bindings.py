"""Bindings shaped like the real ones: service keys, VCAP_SERVICES, Kubernetes directories.

Everything here is generated at run time from a `Credential` and a running
`TokenServer`, so no private key is ever committed::

    xsuaa_service_key(server, credential, client_id)      XSUAA x509 service key
    ias_service_key(server, credential, client_id)        SAP Identity Services (IAS)
    credstore_service_key(server, credential, client_id)  Credential Store oauth:mtls
    vcap_services(("xsuaa", "my-xsuaa", key), ...)        VCAP_SERVICES JSON text
    write_kubernetes_binding(directory, key)              a mounted binding Secret
    rotate_kubernetes_binding(directory, new_key)         kubelet's atomic ..data swap

`write_kubernetes_binding` lays a directory out the way SAP BTP service
operator's Secret arrives in a pod. With ``kubelet=True`` (the default) it is
the exact layout of kubelet's AtomicWriter::

    my-binding/
    ├── ..2026_11_21_10_00_00.123456789/   the real files
    ├── ..data -> ..2026_11_21_10_00_00.123456789
    ├── .metadata -> ..data/.metadata
    ├── clientid -> ..data/clientid
    └── ...

and `rotate_kubernetes_binding` swaps it as kubelet does: a new timestamped
directory, a ``..data_tmp`` symlink to it, ``rename("..data_tmp", "..data")``
(the atomic step), then the old directory is removed.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ._tenants import DEFAULT_IAS_TENANT, IAS_DOMAIN, LOGIN_DOMAIN

if TYPE_CHECKING:
    from ._pki import Credential
    from ._server import TokenServer

__all__ = [
    "MetadataFormat",
    "SingleFile",
    "credstore_service_key",
    "ias_service_key",
    "rotate_kubernetes_binding",
    "vcap_services",
    "write_kubernetes_binding",
    "xsuaa_service_key",
]

#: How `.metadata` describes the credentials: one file each, or one JSON file.
MetadataFormat = Literal["text", "json"]
#: The legacy single-file layouts under ``/etc/secrets/sapbtp/<service>/<instance>/``.
SingleFile = Literal["credentials.json", "binding.json"]

_DATA_LINK = "..data"
_DATA_TMP_LINK = "..data_tmp"
_FILE_MODE = 0o644  # a Secret volume's defaultMode (420)
_DIR_MODE = 0o755
_PLANS = {"xsuaa": "application", "credstore": "standard", "identity": "application"}
_TAGS = {
    "xsuaa": ["xsuaa"],
    "credstore": ["credstore", "securestore", "keystore", "credentials"],
    "identity": ["ias"],
}


# -- service keys -------------------------------------------------------------------


def _pem(text: str, escape_newlines: bool) -> str:
    return text.replace("\n", "\\n") if escape_newlines else text


def _xsappname(client_id: str) -> str:
    # XSUAA client ids are "sb-" + xsappname ("sb-myapp!t123" -> "myapp!t123").
    return client_id[3:] if client_id.startswith("sb-") else client_id


def xsuaa_service_key(
    server: TokenServer,
    credential: Credential,
    client_id: str,
    *,
    credential_type: str | None = "X509_GENERATED",
    escape_newlines: bool = False,
    wrap: bool = False,
    subdomain: str | None = None,
) -> dict[str, Any]:
    """An XSUAA x509 service key whose endpoints all point at `server`.

    `certificate` is the chain PEM (leaf first), `key` the PKCS#1 PEM (the
    natural PEM for non-RSA keys). Without `subdomain`, `certurl` and `url`
    are both ``server.url`` (localhost) and ``uaadomain`` is ``localhost``.
    With it, the binding is the provider tenant `subdomain`'s, like a real
    one: ``url`` is ``server.login_url(subdomain)``, ``certurl``
    ``server.tenant_url(subdomain)``, ``uaadomain`` ``authentication.mtls.test``,
    ``identityzone`` and ``subdomain`` the subdomain, and the zone ids
    ``server.zone_id_of(subdomain)``; those names resolve only inside
    `loopback_names` (the ``mtls_server`` fixture enters it).
    ``credential_type=None`` leaves the ``credential-type`` field out.
    `escape_newlines` writes the PEM newlines as the two characters ``\\n``, as
    in a pasted service key; `wrap` returns ``{"credentials": {...}}``, as
    ``cf service-key`` output and VCAP entries carry it. There is no
    ``verificationkey``.
    """
    instance = str(uuid.uuid4())
    zone = str(uuid.uuid4()) if subdomain is None else server.zone_id_of(subdomain)
    url = server.url if subdomain is None else server.login_url(subdomain)
    credentials: dict[str, Any] = {
        "apiurl": server.url,
        "certificate": _pem(credential.chain_pem, escape_newlines),
        "certurl": server.url if subdomain is None else server.tenant_url(subdomain),
        "clientid": client_id,
        "credential-type": credential_type,
        "identityzone": "mtls-auth-testing" if subdomain is None else subdomain.lower(),
        "identityzoneid": zone,
        "key": _pem(credential.key_pem, escape_newlines),
        "sburl": server.url,
        "serviceInstanceId": instance,
        "subaccountid": zone,
        "tenantid": zone,
        "tenantmode": "dedicated" if subdomain is None else "shared",
        "uaadomain": "localhost" if subdomain is None else LOGIN_DOMAIN,
        "url": url,
        "xsappname": _xsappname(client_id),
        "zoneid": zone,
    }
    if subdomain is not None:
        credentials["subdomain"] = subdomain.lower()
    if credential_type is None:
        del credentials["credential-type"]
    return {"credentials": credentials} if wrap else credentials


def ias_service_key(
    server: TokenServer,
    credential: Credential,
    client_id: str,
    *,
    tenant: str = DEFAULT_IAS_TENANT,
    app_tid: str | None = None,
    credential_type: str = "X509_GENERATED",
    endpoints: bool = True,
    escape_newlines: bool = False,
    wrap: bool = False,
) -> dict[str, Any]:
    """A SAP Identity Services (IAS) binding, as SAP writes it, for IAS tenant `tenant`.

    ``clientid``, ``url`` (``server.ias_url(tenant)``, which resolves inside
    `loopback_names`), ``certificate`` (the chain PEM), ``key``,
    ``credential-type``, ``app_tid`` (default ``server.zone_id_of(tenant)``:
    the tenant's zone id, a deterministic UUID) and ``domains``
    (``["accounts.mtls.test"]``); with `endpoints`, also ``token_endpoint``
    (``server.ias_token_url(tenant)``) and ``authorization_endpoint``.
    ``credential_type="X509_ATTESTED"`` leaves ``key`` out, as SAP's
    zero-trust identity does. `escape_newlines` and `wrap` work as in
    `xsuaa_service_key`.
    """
    url = server.ias_url(tenant)
    credentials: dict[str, Any] = {
        "app_tid": server.zone_id_of(tenant) if app_tid is None else app_tid,
        "certificate": _pem(credential.chain_pem, escape_newlines),
        "clientid": client_id,
        "credential-type": credential_type,
        "domains": [IAS_DOMAIN],
        "url": url,
    }
    if credential_type.upper() != "X509_ATTESTED":
        credentials["key"] = _pem(credential.key_pem, escape_newlines)
    if endpoints:
        credentials["authorization_endpoint"] = url + "/oauth2/authorize"
        credentials["token_endpoint"] = server.ias_token_url(tenant)
    return {"credentials": credentials} if wrap else credentials


def _iso_z(moment: datetime) -> str:
    """``2022-04-23T09:24:03.3Z``: UTC, fraction trimmed to what it needs (>= 1 digit)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    fraction = f"{moment.microsecond:06d}".rstrip("0") or "0"
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction}Z"


def _b64_der_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode("ascii")


def _b64_der_public_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def credstore_service_key(
    server: TokenServer,
    credential: Credential,
    client_id: str,
    *,
    expires_at: datetime | str | None = None,
    encryption: bool | Mapping[str, str] = True,
    escape_newlines: bool = False,
    wrap: bool = False,
) -> dict[str, Any]:
    """A Credential Store ``oauth:mtls`` binding whose endpoints point at `server`.

    `client_id` becomes ``username`` (real ones look like
    ``0fcb3a97-....0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8=``);
    ``oauth_token_url`` is ``server.credstore_token_url`` and ``url`` the
    credentials API. `expires_at` defaults to the certificate's ``not_after``
    and is written like ``2022-04-23T09:24:03.3Z`` (a string is used as given).
    With `encryption`, ``encryption.client_private_key`` is a fresh RSA key as
    base64 DER PKCS#8 and ``encryption.server_public_key`` another fresh RSA key
    as base64 DER SubjectPublicKeyInfo; a mapping is used as the
    ``encryption`` block instead (to reuse keys across many bindings), False
    leaves it out. `escape_newlines` and `wrap` work as in `xsuaa_service_key`.
    """
    when = credential.not_after if expires_at is None else expires_at
    credentials: dict[str, Any] = {
        "certificate": _pem(credential.chain_pem, escape_newlines),
        "expires_at": when if isinstance(when, str) else _iso_z(when),
        "key": _pem(credential.key_pem, escape_newlines),
        "oauth_token_url": server.credstore_token_url,
        "url": server.url + "/api/v1/credentials",
        "username": client_id,
    }
    if isinstance(encryption, Mapping):
        credentials["encryption"] = dict(encryption)
    elif encryption:
        credentials["encryption"] = {
            "client_private_key": _b64_der_private_key(),
            "server_public_key": _b64_der_public_key(),
        }
    return {"credentials": credentials} if wrap else credentials


def _unwrapped(credentials: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = credentials.get("credentials")
    if len(credentials) == 1 and isinstance(inner, Mapping):
        return inner
    return credentials


# -- Cloud Foundry --------------------------------------------------------------------


def vcap_services(*entries: tuple[str, str, Mapping[str, Any]]) -> str:
    """``VCAP_SERVICES`` JSON text for ``(label, instance name, credentials)`` entries.

    Each entry becomes an instance under its label, shaped like Cloud
    Foundry's (``name``, ``instance_name``, ``label``, ``plan``, ``tags``,
    ``instance_guid``, ``binding_guid``, ``credentials``, ...). Two entries with
    the same label make two instances of it.
    """
    services: dict[str, list[dict[str, Any]]] = {}
    for label, name, credentials in entries:
        services.setdefault(label, []).append(
            {
                "binding_guid": str(uuid.uuid4()),
                "binding_name": None,
                "credentials": dict(_unwrapped(credentials)),
                "instance_guid": str(uuid.uuid4()),
                "instance_name": name,
                "label": label,
                "name": name,
                "plan": _PLANS.get(label, "standard"),
                "provider": None,
                "syslog_drain_url": None,
                "tags": list(_TAGS.get(label, [label])),
                "volume_mounts": [],
            }
        )
    return json.dumps(services)


# -- Kubernetes -----------------------------------------------------------------------


def _file_value(value: Any) -> tuple[bytes, str]:
    """A credential as file content and its `.metadata` format."""
    if isinstance(value, str):
        return value.encode("utf-8"), "text"
    return json.dumps(value).encode("utf-8"), "json"


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"{name!r} cannot be a file name in a binding directory")


def _payload(
    directory: Path,
    credentials: Mapping[str, Any],
    *,
    metadata: MetadataFormat | None,
    binding_type: str | None,
    single_file: SingleFile | None,
    instance_name: str | None,
    plan: str | None,
    container_name: str,
) -> dict[str, bytes]:
    """File name -> content, the way SAP BTP service operator fills the Secret."""
    if metadata is not None and single_file is not None:
        raise ValueError("single_file is a legacy layout without .metadata: pass metadata=None")
    if metadata not in (None, "text", "json"):
        raise ValueError(f"metadata must be 'text', 'json' or None, not {metadata!r}")
    credentials = _unwrapped(credentials)
    instance = instance_name or directory.name
    service_plan = plan or _PLANS.get(binding_type or "", "standard")
    files: dict[str, bytes] = {}

    if single_file == "credentials.json":
        files["credentials.json"] = json.dumps(dict(credentials)).encode("utf-8")
    elif single_file == "binding.json":
        entry: dict[str, Any] = {
            "credentials": dict(credentials),
            "instance_name": instance,
            "label": binding_type,
            "name": instance,
            "plan": service_plan,
            "tags": list(_TAGS.get(binding_type or "", [binding_type] if binding_type else [])),
        }
        files["binding.json"] = json.dumps(entry).encode("utf-8")
    elif single_file is not None:
        raise ValueError(
            f"single_file must be 'credentials.json' or 'binding.json', not {single_file!r}"
        )

    if metadata is None:
        if single_file is None:
            for name, value in credentials.items():
                _check_name(name)
                files[name] = _file_value(value)[0]
        if binding_type is not None:
            files["type"] = binding_type.encode("utf-8")
        return files

    credential_properties: list[dict[str, Any]] = []
    if metadata == "json":
        _check_name(container_name)
        files[container_name] = json.dumps(dict(credentials)).encode("utf-8")
        credential_properties.append({"name": container_name, "format": "json", "container": True})
    else:
        for name, value in credentials.items():
            _check_name(name)
            files[name], fmt = _file_value(value)
            credential_properties.append({"name": name, "format": fmt})

    # The operator adds the instance's facts as files of their own (and, like it,
    # they win over a credential of the same name); all but the external name
    # are described in metaDataProperties.
    info: dict[str, str] = {
        "instance_name": instance,
        "instance_external_name": instance,
        "instance_guid": str(uuid.uuid4()),
        "plan": service_plan,
    }
    if binding_type is not None:
        info["label"] = binding_type
        info["type"] = binding_type
    for name, text in info.items():
        files[name] = text.encode("utf-8")
    metadata_properties: list[dict[str, Any]] = [
        {"name": name, "format": "text"} for name in info if name != "instance_external_name"
    ]
    if binding_type is not None:
        files["tags"] = json.dumps(_TAGS.get(binding_type, [binding_type])).encode("utf-8")
        metadata_properties.append({"name": "tags", "format": "json"})
    files[".metadata"] = json.dumps(
        {
            "credentialProperties": credential_properties,
            "metaDataProperties": metadata_properties,
        }
    ).encode("utf-8")
    return files


def _write_file(path: Path, content: bytes, *, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.chmod(path, _FILE_MODE)


def _timestamp_dir(directory: Path) -> str:
    """Create kubelet's ``..2006_01_02_15_04_05.<random>`` directory; return its name."""
    stamp = datetime.now(timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.")
    while True:
        name = stamp + str(secrets.randbits(32))
        try:
            os.mkdir(directory / name, _DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory / name, _DIR_MODE)
        return name


def _atomic_write(directory: Path, files: Mapping[str, bytes]) -> None:
    """kubelet's AtomicWriter.Write, step for step."""
    data_link = directory / _DATA_LINK
    old_dir = os.readlink(data_link) if data_link.is_symlink() else None
    old_names = set(os.listdir(directory / old_dir)) if old_dir else set()

    new_dir = _timestamp_dir(directory)
    for name, content in files.items():
        _write_file(directory / new_dir / name, content, exclusive=True)

    tmp_link = directory / _DATA_TMP_LINK
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(new_dir, tmp_link)
    os.rename(tmp_link, data_link)  # the atomic swap

    for name in files:
        visible = directory / name
        if not visible.is_symlink() and not visible.exists():
            os.symlink(os.path.join(_DATA_LINK, name), visible)
    for name in old_names - set(files):
        visible = directory / name
        if visible.is_symlink():
            visible.unlink()
    if old_dir:
        shutil.rmtree(directory / old_dir)


def write_kubernetes_binding(
    directory: Path | str,
    credentials: Mapping[str, Any],
    *,
    metadata: MetadataFormat | None = "text",
    binding_type: str | None = "xsuaa",
    kubelet: bool = True,
    single_file: SingleFile | None = None,
    instance_name: str | None = None,
    plan: str | None = None,
    container_name: str = "credentials",
) -> Path:
    """Write `credentials` as a mounted Kubernetes binding Secret; return the directory.

    `metadata` picks SAP BTP service operator's format: ``"text"`` writes one
    file per credential (nested objects such as ``encryption`` as JSON) listed
    in ``.metadata`` ``credentialProperties`` with their format; ``"json"``
    writes all credentials as one JSON file `container_name` described as
    ``{"name": "credentials", "format": "json", "container": true}`` (the
    operator's ``secretKey``). Either way the instance facts follow as files
    (``instance_name``, ``instance_guid``, ``plan``, ``label``, ``type``,
    ``tags``) listed in ``metaDataProperties``. ``metadata=None`` is the legacy
    ``/etc/secrets/sapbtp/<service>/<instance>/`` layout: flat credential files,
    or with `single_file` one ``credentials.json`` (the credentials) or
    ``binding.json`` (a VCAP-style entry with ``credentials``). `binding_type`
    (the service offering) is written as ``type`` (and ``label``); None leaves
    them out. `instance_name` defaults to the directory name.

    With `kubelet` the files live in a timestamped directory behind ``..data``,
    exactly as kubelet mounts a Secret; writing into a directory that already
    has ``..data`` rotates it. Without `kubelet` they are plain files, written
    in place.
    """
    directory = Path(directory)
    files = _payload(
        directory,
        credentials,
        metadata=metadata,
        binding_type=binding_type,
        single_file=single_file,
        instance_name=instance_name,
        plan=plan,
        container_name=container_name,
    )
    directory.mkdir(parents=True, exist_ok=True)
    if kubelet:
        _atomic_write(directory, files)
    else:
        for name, content in files.items():
            _write_file(directory / name, content, exclusive=False)
    return directory


def rotate_kubernetes_binding(
    directory: Path | str,
    credentials: Mapping[str, Any],
    *,
    metadata: MetadataFormat | None = "text",
    binding_type: str | None = "xsuaa",
    single_file: SingleFile | None = None,
    instance_name: str | None = None,
    plan: str | None = None,
    container_name: str = "credentials",
) -> Path:
    """Replace a kubelet-written binding's content the way kubelet updates a Secret.

    Writes a new ``..<timestamp>`` directory, points a ``..data_tmp`` symlink
    at it, renames ``..data_tmp`` over ``..data`` (atomic: a reader sees the
    old or the new set of files, never a mix), adds or removes the per-file
    symlinks, and deletes the old timestamped directory. Returns the directory.
    Raises ValueError if `directory` was not written with ``kubelet=True``.
    """
    directory = Path(directory)
    if not (directory / _DATA_LINK).is_symlink():
        raise ValueError(f"{directory} has no {_DATA_LINK} symlink: not a kubelet-written binding")
    files = _payload(
        directory,
        credentials,
        metadata=metadata,
        binding_type=binding_type,
        single_file=single_file,
        instance_name=instance_name,
        plan=plan,
        container_name=container_name,
    )
    _atomic_write(directory, files)
    return directory
