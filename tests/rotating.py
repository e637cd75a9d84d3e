"""Bindings on disk that rotate, and waiting for a client to notice: shared by the rotation tests.

A binding holds certificate A (the kit's client certificate); the tests replace
it with B (the same subject, a new key: conftest's ``rotated_certificate``). A
`ServiceKeyFile` is a ``cf service-key`` JSON file replaced atomically; a
`KubeletDirectory` is written the way the kubelet writes secrets (timestamped
directories behind a ``..data`` symlink). Nothing sleeps to wait for a
rotation: `wait_until` polls briefly with a deadline.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mtls_auth import ClientCertificate
from mtls_auth.testing import (
    Credential,
    TokenServer,
    rotate_kubernetes_binding,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from mtls_auth.testing.plugin import CLIENT_ID

if TYPE_CHECKING:
    from clients import Client

__all__ = [
    "DEADLINE",
    "FAST",
    "KubeletDirectory",
    "ServiceKeyFile",
    "cert_of",
    "client_certificate",
    "follow",
    "make_binding",
    "wait_until",
    "xsuaa_credentials",
]

FAST = 0.05  # check_interval for the variants that notice the swap by stat()
DEADLINE = 5.0  # upper bound for any "wait until the client noticed" loop


def xsuaa_credentials(server: TokenServer, credential: Credential) -> dict[str, Any]:
    """The credentials block of an XSUAA x509 service key pointing at `server`."""
    return xsuaa_service_key(server, credential, CLIENT_ID)


class ServiceKeyFile:
    """A `cf service-key` JSON file, replaced atomically (write + rename) on rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, credentials: dict[str, Any]) -> None:
        self.write_text(json.dumps({"credentials": credentials}, indent=2))

    def write_text(self, text: str) -> None:
        scratch = self.path.with_name(self.path.name + ".new")
        scratch.write_text(text, encoding="utf-8")
        os.replace(scratch, self.path)


class KubeletDirectory:
    """A SAP BTP service operator Secret as kubelet mounts it (``..data`` symlink swap).

    The files live in a timestamped directory ``..2026_..._NNNN``; ``..data`` is
    a symlink to it and every visible name (``clientid``, ``.metadata``, ...) is
    a symlink ``name -> ..data/name``. An update writes a new timestamped
    directory, swaps ``..data`` with one rename and deletes the old directory:
    the visible symlinks never change.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, credentials: dict[str, Any]) -> None:
        if (self.path / "..data").is_symlink():
            rotate_kubernetes_binding(self.path, credentials)
        else:
            write_kubernetes_binding(self.path, credentials)

    def visible_links(self) -> dict[str, str]:
        return {
            entry.name: os.readlink(entry.path)
            for entry in os.scandir(self.path)
            if not entry.name.startswith("..")
        }


Binding = Any  # ServiceKeyFile | KubeletDirectory


def make_binding(kind: str, tmp_path: Path) -> Binding:
    if kind == "file":
        return ServiceKeyFile(tmp_path / "service-key.json")
    return KubeletDirectory(tmp_path / "bindings" / "xsuaa")


def cert_of(auth: Any) -> str:
    """The thumbprint of the certificate an auth object currently presents."""
    return str(auth.certificate.thumbprint)


def client_certificate(credential: Credential) -> ClientCertificate:
    return ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)


def wait_until(condition: Callable[[], bool], step: Callable[[], None] | None = None) -> bool:
    """Short polling with a deadline: run `step` until `condition` holds."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def follow(
    client: Client, path: Path, server: TokenServer, **options: Any
) -> tuple[Callable[[], int], Any]:
    """(get, auth): a binding-backed auth of `client`'s library and a get() through one
    session whose adapter or transport follows the auth's certificate.

    get() returns the status code and raises what the request raised; the
    session and the auth are closed when the client's fixture ends.
    """
    options = {"verify": server.ca_pem, "check_interval": FAST, **options}
    auth = client.from_binding(path, **options)
    session = client.session(auth, present="auth", trust_env=False)
    return (lambda: session.call(server.resource_url).unwrap()), auth
