"""Binding sources: mappings, JSON text, files, Kubernetes directories, VCAP_SERVICES, rotation.

Every binding is generated at test time by the test kit (service keys shaped
like real ones, kubelet's exact symlink layout), and every `from_binding`,
`from_vcap_services` and `from_kubernetes` variant makes a real token request
and a real resource call through the kit's loopback mTLS server, for requests,
httpx sync and httpx async (the shared `client` fixture), presenting the
certificate with the auth's own adapter or transport. `BindingSource.changed`
notices rewritten files and kubelet's ``..data`` swaps. The tests share one kit
server (conftest's `module_server`): a server start per test would cost seconds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import pytest
from clients import Client
from leaks import assert_clean, assert_clean_error, secret_fragments

import mtls_auth._sources as binding_module
import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import BindingError
from mtls_auth._sources import BindingSource, select_vcap_service
from mtls_auth.testing import (
    Credential,
    TokenServer,
    credstore_service_key,
    rotate_kubernetes_binding,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from mtls_auth.testing._server import CREDSTORE_TOKEN_PATH, XSUAA_TOKEN_PATH
from mtls_auth.testing.plugin import CLIENT_ID

#: A namespace that only arrives intact if the form body is URL-encoded.
NAMESPACE = "ns/1 &x=y+z"
TIMESTAMP_DIR = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$")


@pytest.fixture
def mtls_server(shared_mtls_server: TokenServer) -> TokenServer:
    """This module's tests share one kit server, for speed (conftest's `module_server`)."""
    return shared_mtls_server


def resource(client: Client, auth: Any) -> dict[str, Any]:
    """One GET of the protected resource, the way a user wires each library.

    The server requires a client certificate on every connection, so the
    resource is reached through the auth's own adapter / transport.
    """
    result = client.call(auth, present="auth")
    assert result.status == 200, result
    body: dict[str, Any] = result.body
    return body


def _without(data: dict, *names: str) -> dict:
    return {k: v for k, v in data.items() if k not in names}


# -- from_binding: every input kind, real calls -----------------------------------------------


KeyMaker = Callable[..., dict]
InputKind = Callable[[KeyMaker, Path, str], Any]


def _file_of(tmp_path: Path, data: Any, name: str = "service-key.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


INPUT_KINDS: dict[str, InputKind] = {
    "mapping": lambda make, tmp, kind: make(),
    "json-text": lambda make, tmp, kind: json.dumps(make()),
    "json-text-indented": lambda make, tmp, kind: "\n  " + json.dumps(make(), indent=2),
    "wrapped-mapping": lambda make, tmp, kind: make(wrap=True),
    "wrapped-json-text": lambda make, tmp, kind: json.dumps(make(wrap=True)),
    "escaped-newlines-mapping": lambda make, tmp, kind: make(escape_newlines=True),
    "escaped-newlines-json-text": lambda make, tmp, kind: json.dumps(make(escape_newlines=True)),
    "file-str": lambda make, tmp, kind: str(_file_of(tmp, make())),
    "file-path": lambda make, tmp, kind: _file_of(tmp, make()),
    "file-wrapped": lambda make, tmp, kind: _file_of(tmp, make(wrap=True)),
    "file-escaped-newlines": lambda make, tmp, kind: _file_of(tmp, make(escape_newlines=True)),
    "k8s-kubelet-metadata-text": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), binding_type=kind
    ),
    "k8s-kubelet-metadata-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata="json", binding_type=kind
    ),
    "k8s-plain-metadata-text": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), binding_type=kind, kubelet=False
    ),
    "k8s-dir-as-str": lambda make, tmp, kind: str(
        write_kubernetes_binding(tmp / "b", make(), binding_type=kind)
    ),
    "k8s-flat-legacy": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, binding_type=None, kubelet=False
    ),
    "k8s-kubelet-flat": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, binding_type=kind
    ),
    "k8s-credentials-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, single_file="credentials.json", kubelet=False
    ),
    "k8s-binding-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b",
        make(),
        metadata=None,
        single_file="binding.json",
        kubelet=False,
        binding_type=kind,
    ),
    "k8s-kubelet-binding-json": lambda make, tmp, kind: write_kubernetes_binding(
        tmp / "b", make(), metadata=None, single_file="binding.json", binding_type=kind
    ),
}


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_from_binding_xsuaa(
    client: Client,
    kind: str,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    tmp_path: Path,
) -> None:
    def make(**options: Any) -> dict:
        return xsuaa_service_key(mtls_server, mtls_client_certificate, CLIENT_ID, **options)

    binding = INPUT_KINDS[kind](make, tmp_path, "xsuaa")
    auth = client.auth_class.from_binding(binding, verify=mtls_server.ca_pem)
    assert auth.client_id == CLIENT_ID
    assert auth.token_url == mtls_server.token_url
    assert auth.namespace is None
    assert auth.certificate.thumbprint == mtls_client_certificate.thumbprint
    body = resource(client, auth)
    assert body["client_id"] == CLIENT_ID
    (request,) = mtls_server.token_requests
    assert request.path == XSUAA_TOKEN_PATH
    assert request.client_id == CLIENT_ID
    assert request.namespace is None
    assert request.thumbprint == mtls_client_certificate.thumbprint
    assert "client_secret" not in request.form


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_from_binding_credstore(
    client: Client,
    kind: str,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    credstore_id: str,
    credstore_binding: dict,
    tmp_path: Path,
) -> None:
    encryption_keys = credstore_binding["encryption"]

    def make(**options: Any) -> dict:
        return credstore_service_key(
            mtls_server,
            mtls_client_certificate,
            credstore_id,
            encryption=encryption_keys,
            **options,
        )

    binding = INPUT_KINDS[kind](make, tmp_path, "credstore")
    auth = client.auth_class.from_binding(binding, namespace=NAMESPACE, verify=mtls_server.ca_pem)
    assert auth.client_id == credstore_id
    assert auth.token_url == mtls_server.credstore_token_url
    assert auth.namespace == NAMESPACE
    assert dict(auth._client.state.binding.encryption) == encryption_keys
    fragments = secret_fragments(mtls_client_certificate, *encryption_keys.values())
    assert_clean(repr(auth), fragments)
    body = resource(client, auth)
    assert body["client_id"] == credstore_id
    assert body["namespace"] == NAMESPACE
    (request,) = mtls_server.token_requests
    assert request.path == CREDSTORE_TOKEN_PATH
    assert request.client_id == credstore_id
    assert request.namespace == NAMESPACE


def test_credstore_namespace_is_required(client: Client, credstore_binding: dict) -> None:
    with pytest.raises(BindingError, match="namespace") as info:
        client.auth_class.from_binding(credstore_binding)
    assert isinstance(info.value, ValueError)


def test_credstore_namespace_is_part_of_the_cache_key(
    client: Client, credstore_binding: dict, mtls_server: TokenServer
) -> None:
    first = client.auth_class.from_binding(
        credstore_binding, namespace="team-a", verify=mtls_server.ca_pem
    )
    second = client.auth_class.from_binding(
        credstore_binding, namespace=NAMESPACE, verify=mtls_server.ca_pem
    )
    assert first._key() != second._key()
    assert "team-a" in first._key()
    assert NAMESPACE in second._key()
    assert resource(client, first)["namespace"] == "team-a"
    assert resource(client, second)["namespace"] == NAMESPACE
    assert [r.namespace for r in mtls_server.token_requests] == ["team-a", NAMESPACE]


def test_one_auth_one_token(
    client: Client, mtls_xsuaa_binding: dict, mtls_server: TokenServer
) -> None:
    auth = client.from_binding(mtls_xsuaa_binding, verify=mtls_server.ca_pem)
    with client.session(auth, present="auth") as session:
        for _ in range(3):
            assert session.call().status == 200
    auth.close()
    assert mtls_server.token_request_count == 1


@pytest.mark.parametrize("client", ["requests"], indirect=True)
def test_pathlike_other_than_path(
    client: Client, mtls_xsuaa_binding: dict, mtls_server: TokenServer, tmp_path: Path
) -> None:
    class Where(os.PathLike):  # type: ignore[type-arg]
        def __init__(self, path: Path) -> None:
            self.path = path

        def __fspath__(self) -> str:
            return str(self.path)

    auth = mrequests.MtlsOAuth2.from_binding(
        Where(_file_of(tmp_path, mtls_xsuaa_binding)), verify=mtls_server.ca_pem
    )
    assert resource(client, auth)["client_id"] == mtls_xsuaa_binding["clientid"]


# -- Cloud Foundry ----------------------------------------------------------------------------


def test_from_vcap_services(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    mtls_xsuaa_binding: dict,
    credstore_binding: dict,
    credstore_id: str,
    mtls_server: TokenServer,
) -> None:
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(
            ("xsuaa", "my-xsuaa", mtls_xsuaa_binding),
            ("credstore", "my-credstore", credstore_binding),
            ("credstore", "other-credstore", credstore_binding),
        ),
    )
    auth = client.auth_class.from_vcap_services(label="xsuaa", verify=mtls_server.ca_pem)
    assert resource(client, auth)["client_id"] == CLIENT_ID
    auth = client.auth_class.from_vcap_services(
        label="credstore",
        name="my-credstore",
        namespace=NAMESPACE,
        verify=mtls_server.ca_pem,
    )
    body = resource(client, auth)
    assert (body["client_id"], body["namespace"]) == (credstore_id, NAMESPACE)
    assert [(r.path, r.client_id, r.namespace) for r in mtls_server.token_requests] == [
        (XSUAA_TOKEN_PATH, CLIENT_ID, None),
        (CREDSTORE_TOKEN_PATH, credstore_id, NAMESPACE),
    ]


def test_vcap_two_instances_need_a_name(
    monkeypatch: pytest.MonkeyPatch, mtls_xsuaa_binding: dict, mtls_client_certificate: Credential
) -> None:
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(
            ("xsuaa", "uaa-one", mtls_xsuaa_binding), ("xsuaa", "uaa-two", mtls_xsuaa_binding)
        ),
    )
    with pytest.raises(BindingError) as info:
        select_vcap_service("xsuaa")
    message = str(info.value)
    assert "uaa-one" in message
    assert "uaa-two" in message
    assert "name=" in message
    assert mtls_xsuaa_binding["clientid"] not in message
    assert_clean_error(info.value, secret_fragments(mtls_client_certificate))
    assert select_vcap_service("xsuaa", "uaa-two")["clientid"] == mtls_xsuaa_binding["clientid"]


def test_vcap_missing_label_lists_candidates(
    monkeypatch: pytest.MonkeyPatch, mtls_xsuaa_binding: dict, credstore_binding: dict
) -> None:
    monkeypatch.setenv(
        "VCAP_SERVICES",
        vcap_services(
            ("xsuaa", "uaa-one", mtls_xsuaa_binding), ("credstore", "cs-one", credstore_binding)
        ),
    )
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_vcap_services(label="destination")
    assert "'destination'" in str(info.value)
    assert "credstore" in str(info.value)
    assert "xsuaa" in str(info.value)
    with pytest.raises(BindingError) as info:
        select_vcap_service("xsuaa", name="uaa-two")
    assert "'uaa-two'" in str(info.value)
    assert "uaa-one" in str(info.value)


def test_vcap_instance_found_by_tag(
    monkeypatch: pytest.MonkeyPatch, mtls_xsuaa_binding: dict
) -> None:
    services = json.loads(vcap_services(("user-provided", "my-ups", mtls_xsuaa_binding)))
    services["user-provided"][0]["tags"] = ["xsuaa"]
    monkeypatch.setenv("VCAP_SERVICES", json.dumps(services))
    assert select_vcap_service("xsuaa")["clientid"] == mtls_xsuaa_binding["clientid"]


def test_vcap_services_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    with pytest.raises(BindingError, match="VCAP_SERVICES is not set"):
        mrequests.MtlsOAuth2.from_vcap_services()
    with pytest.raises(BindingError, match="VCAP_SERVICES is not set"):
        mhttpx.MtlsOAuth2.from_vcap_services(label="credstore", namespace="x")


def test_vcap_services_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCAP_SERVICES", '{"xsuaa": [{"credentials": {"key": "SECRETSECRET"')
    with pytest.raises(BindingError, match="VCAP_SERVICES is not valid JSON") as info:
        select_vcap_service("xsuaa")
    assert "SECRETSECRET" not in str(info.value)
    monkeypatch.setenv("VCAP_SERVICES", "[]")
    with pytest.raises(BindingError, match="JSON object"):
        select_vcap_service("xsuaa")


# -- Kubernetes -------------------------------------------------------------------------------


def test_kubelet_layout_is_exact(mtls_xsuaa_binding: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(tmp_path / "my-xsuaa", mtls_xsuaa_binding)
    entries = sorted(os.listdir(directory))
    stamps = [e for e in entries if TIMESTAMP_DIR.match(e)]
    assert len(stamps) == 1
    stamp = stamps[0]
    assert (directory / stamp).is_dir()
    assert not (directory / stamp).is_symlink()
    assert os.readlink(directory / "..data") == stamp
    assert "..data_tmp" not in entries
    visible = [e for e in entries if not e.startswith("..")]
    assert sorted(os.listdir(directory / stamp)) == visible
    for name in visible:
        assert os.readlink(directory / name) == f"..data/{name}"
        assert (directory / stamp / name).is_file()
        assert not (directory / stamp / name).is_symlink()
    assert oct((directory / stamp / "key").stat().st_mode & 0o777) == oct(0o644)
    assert (directory / "clientid").read_text() == mtls_xsuaa_binding["clientid"]
    assert (directory / "type").read_text() == "xsuaa"


def test_metadata_text_format(credstore_binding: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(
        tmp_path / "cs", credstore_binding, binding_type="credstore"
    )
    metadata = json.loads((directory / ".metadata").read_text())
    properties = {p["name"]: p for p in metadata["credentialProperties"]}
    assert set(properties) == set(credstore_binding)
    assert properties["encryption"]["format"] == "json"
    assert all(p["format"] == "text" for n, p in properties.items() if n != "encryption")
    assert json.loads((directory / "encryption").read_text()) == credstore_binding["encryption"]
    meta = {p["name"]: p["format"] for p in metadata["metaDataProperties"]}
    assert {"instance_name", "plan", "label", "type"} <= set(meta)
    assert meta["type"] == "text"
    assert (directory / "instance_name").read_text() == "cs"
    assert (directory / "label").read_text() == "credstore"


def test_metadata_json_container_format(mtls_xsuaa_binding: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(tmp_path / "x", mtls_xsuaa_binding, metadata="json")
    metadata = json.loads((directory / ".metadata").read_text())
    assert metadata["credentialProperties"] == [
        {"name": "credentials", "format": "json", "container": True}
    ]
    assert json.loads((directory / "credentials").read_text()) == mtls_xsuaa_binding
    assert not (directory / "clientid").exists()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="kubelet-metadata-text"),
        pytest.param({"metadata": "json"}, id="kubelet-metadata-json"),
        pytest.param({"kubelet": False}, id="plain-metadata-text"),
        pytest.param({"metadata": None, "kubelet": False}, id="flat"),
        pytest.param({"metadata": None}, id="kubelet-flat"),
        pytest.param({"metadata": None, "single_file": "credentials.json"}, id="credentials.json"),
        pytest.param({"metadata": None, "single_file": "binding.json"}, id="binding.json"),
    ],
)
def test_kubernetes_layouts_read_back(
    options: dict[str, Any], credstore_binding: dict, credstore_id: str, tmp_path: Path
) -> None:
    directory = write_kubernetes_binding(
        tmp_path / "cs", credstore_binding, binding_type="credstore", **options
    )
    parsed = BindingSource.from_input(directory).read()
    assert parsed.kind == "credstore"
    assert parsed.client_id == credstore_id
    assert parsed.certificate == credstore_binding["certificate"]
    assert parsed.key == credstore_binding["key"]
    assert dict(parsed.encryption) == credstore_binding["encryption"]
    assert parsed.source == str(directory)


def test_writer_rejects_bad_options(mtls_xsuaa_binding: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single_file"):
        write_kubernetes_binding(tmp_path / "a", mtls_xsuaa_binding, single_file="credentials.json")
    with pytest.raises(ValueError, match="file name"):
        write_kubernetes_binding(tmp_path / "b", {"../escape": "x"})
    plain = write_kubernetes_binding(tmp_path / "c", mtls_xsuaa_binding, kubelet=False)
    with pytest.raises(ValueError, match=r"\.\.data"):
        rotate_kubernetes_binding(plain, mtls_xsuaa_binding)


def test_from_kubernetes(
    client: Client,
    isolated_env: Path,
    mtls_xsuaa_binding: dict,
    credstore_binding: dict,
    credstore_id: str,
    mtls_server: TokenServer,
) -> None:
    write_kubernetes_binding(isolated_env / "my-xsuaa", mtls_xsuaa_binding)
    write_kubernetes_binding(
        isolated_env / "my-credstore", credstore_binding, binding_type="credstore"
    )
    verify = mtls_server.ca_pem
    auth = client.auth_class.from_kubernetes(name="my-xsuaa", verify=verify)
    assert resource(client, auth)["client_id"] == CLIENT_ID
    auth = client.auth_class.from_kubernetes(label="xsuaa", verify=verify)
    assert resource(client, auth)["client_id"] == CLIENT_ID
    auth = client.auth_class.from_kubernetes(
        name="my-credstore", label="credstore", namespace=NAMESPACE, verify=verify
    )
    assert resource(client, auth)["namespace"] == NAMESPACE
    assert [r.client_id for r in mtls_server.token_requests] == [
        CLIENT_ID,
        CLIENT_ID,
        credstore_id,
    ]


def test_from_kubernetes_ambiguous_or_missing(isolated_env: Path, mtls_xsuaa_binding: dict) -> None:
    write_kubernetes_binding(isolated_env / "uaa-one", mtls_xsuaa_binding)
    write_kubernetes_binding(isolated_env / "uaa-two", mtls_xsuaa_binding, metadata="json")
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_kubernetes(label="xsuaa")
    assert "uaa-one" in str(info.value)
    assert "uaa-two" in str(info.value)
    assert "name=" in str(info.value)
    with pytest.raises(BindingError) as info:
        mrequests.MtlsOAuth2.from_kubernetes()
    assert "2 Kubernetes bindings" in str(info.value)
    with pytest.raises(BindingError, match="no Kubernetes service binding found named 'nope'"):
        mrequests.MtlsOAuth2.from_kubernetes(name="nope")
    with pytest.raises(BindingError, match="of type 'credstore'"):
        mrequests.MtlsOAuth2.from_kubernetes(label="credstore")


def test_from_kubernetes_without_service_binding_root(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERVICE_BINDING_ROOT")
    with pytest.raises(BindingError, match="unset"):
        mrequests.MtlsOAuth2.from_kubernetes()


@pytest.mark.parametrize("legacy", [0, 1], ids=["sapbtp", "sapcp"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"metadata": None, "kubelet": True}, id="flat"),
        pytest.param({"metadata": None, "single_file": "credentials.json"}, id="credentials.json"),
        pytest.param({"metadata": None, "single_file": "binding.json"}, id="binding.json"),
    ],
)
@pytest.mark.parametrize("client", ["httpx-sync"], indirect=True)
def test_from_kubernetes_legacy_roots(
    client: Client,
    isolated_env: Path,
    legacy: int,
    options: dict[str, Any],
    mtls_xsuaa_binding: dict,
    mtls_server: TokenServer,
) -> None:
    root = Path(binding_module._LEGACY_ROOTS[legacy])
    write_kubernetes_binding(
        root / "xsuaa" / "my-uaa", mtls_xsuaa_binding, binding_type=None, **options
    )
    auth = client.auth_class.from_kubernetes(
        name="my-uaa", label="xsuaa", verify=mtls_server.ca_pem
    )
    assert resource(client, auth)["client_id"] == CLIENT_ID


# -- rotation: BindingSource.changed ------------------------------------------------------------


def test_changed_detects_a_rewritten_service_key(
    rotated_certificate: Credential,
    mtls_xsuaa_binding: dict,
    mtls_server: TokenServer,
    tmp_path: Path,
) -> None:
    path = _file_of(tmp_path, mtls_xsuaa_binding)
    source = BindingSource.from_input(path)
    assert source.rereadable
    first = source.read()
    assert not source.changed()
    newer = rotated_certificate
    path.write_text(json.dumps(xsuaa_service_key(mtls_server, newer, CLIENT_ID)))
    assert source.changed()
    second = source.read()
    assert second.certificate == newer.chain_pem != first.certificate
    assert not source.changed()
    path.unlink()
    assert source.changed()


def test_changed_is_false_for_mappings_and_text(mtls_xsuaa_binding: dict) -> None:
    for binding in (mtls_xsuaa_binding, json.dumps(mtls_xsuaa_binding)):
        source = BindingSource.from_input(binding)
        assert not source.rereadable
        source.read()
        assert not source.changed()


def _file_times(directory: Path) -> dict[str, tuple[int, int]]:
    times = {}
    for name in os.listdir(directory):
        if not name.startswith(".."):
            info = (directory / name).stat()
            times[name] = (info.st_size, info.st_mtime_ns)
    return times


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param("text", id="text"),
        pytest.param("json", id="json"),
        pytest.param(None, id="flat"),
    ],
)
def test_changed_detects_a_kubelet_swap_with_same_sizes_and_mtimes(
    mtls_xsuaa_binding: dict, tmp_path: Path, metadata: Any
) -> None:
    directory = write_kubernetes_binding(tmp_path / "b", mtls_xsuaa_binding, metadata=metadata)
    source = BindingSource.from_input(directory)
    assert source.read().client_id == CLIENT_ID
    assert not source.changed()
    before = _file_times(directory)
    old_stamp = os.readlink(directory / "..data")

    # Same length client id, so every file keeps its size; the instance guid is
    # a fresh uuid4 of the same length too.
    renamed = CLIENT_ID[:-1] + "2"
    assert renamed != CLIENT_ID
    rotate_kubernetes_binding(
        directory, {**mtls_xsuaa_binding, "clientid": renamed}, metadata=metadata
    )
    for name, (_, mtime_ns) in before.items():
        os.utime(directory / name, ns=(mtime_ns, mtime_ns))
    assert _file_times(directory) == before
    new_stamp = os.readlink(directory / "..data")
    assert new_stamp != old_stamp
    assert not (directory / old_stamp).exists()
    assert not (directory / "..data_tmp").exists()
    assert [e for e in os.listdir(directory) if TIMESTAMP_DIR.match(e)] == [new_stamp]

    assert source.changed()
    assert source.read().client_id == renamed
    assert not source.changed()


def test_rotation_removes_files_that_are_gone(credstore_binding: dict, tmp_path: Path) -> None:
    directory = write_kubernetes_binding(
        tmp_path / "b", credstore_binding, binding_type="credstore"
    )
    assert (directory / "encryption").is_symlink()
    rotate_kubernetes_binding(
        directory, _without(credstore_binding, "encryption"), binding_type="credstore"
    )
    assert not os.path.lexists(directory / "encryption")
    assert BindingSource.from_input(directory).read().encryption == {}


def test_kubelet_rotation_end_to_end(
    client: Client,
    rotated_certificate: Credential,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    tmp_path: Path,
) -> None:
    directory = write_kubernetes_binding(
        tmp_path / "b", xsuaa_service_key(mtls_server, mtls_client_certificate, CLIENT_ID)
    )
    auth = client.from_binding(directory, verify=mtls_server.ca_pem, check_interval=0.0)
    newer = rotated_certificate  # same subject: still bound to CLIENT_ID
    # One session (and pool) across the rotation, presenting the auth's certificate.
    with client.session(auth, present="auth") as session:
        assert session.call().unwrap() == 200
        assert mtls_server.token_requests[-1].thumbprint == mtls_client_certificate.thumbprint
        rotate_kubernetes_binding(directory, xsuaa_service_key(mtls_server, newer, CLIENT_ID))
        assert session.call().unwrap() == 200
        assert auth.certificate.thumbprint == newer.thumbprint
        assert mtls_server.token_requests[-1].thumbprint == newer.thumbprint
        assert mtls_server.resource_requests[-1].thumbprint == newer.thumbprint
        assert mtls_server.token_request_count == 2


def test_mapping_inputs_are_not_mutated(mtls_xsuaa_binding: dict, mtls_server: TokenServer) -> None:
    snapshot = json.dumps(mtls_xsuaa_binding, sort_keys=True)
    wrapped: Mapping[str, Any] = {"credentials": mtls_xsuaa_binding}
    mrequests.MtlsOAuth2.from_binding(wrapped, verify=mtls_server.ca_pem).close()
    assert json.dumps(mtls_xsuaa_binding, sort_keys=True) == snapshot
