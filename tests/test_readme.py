"""Every README code block runs as pasted, against the test kit, or says it is a fragment.

A ```python block whose first line is ``# fragment: ...`` needs code around it
(the comment says what) and is only compiled. Every other block is a whole
program: it runs in a fresh namespace, in a temporary working directory that
holds what the README's examples read (``client.crt``, ``client.key``, service
keys, ``VCAP_SERVICES``, Kubernetes binding directories), against a loopback
token server of the test kit that answers for the README's client id. The
README's example URLs and absolute binding paths are mapped to that server and
that directory (the table below): nothing else is changed. A block that
defines ``test_*`` functions is a pytest example: they are called with the
kit's fixtures.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtls_auth.testing import (
    Credential,
    FakeClock,
    TokenServer,
    credstore_service_key,
    ias_service_key,
    loopback_names,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from mtls_auth.testing.plugin import CLIENT_ID, CREDSTORE_CLIENT_ID, IAS_CLIENT_ID

README = Path(__file__).resolve().parent.parent / "README.md"
#: The client id the README's examples use.
README_CLIENT_ID = "sb-my-app!t123"
FRAGMENT = "# fragment:"


def _blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block of the README."""
    blocks = []
    lines = README.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start : number - 1]) + "\n"))
            start = None
    assert start is None, f"README.md: the ```python block at line {start} is never closed"
    return blocks


BLOCKS = _blocks()
RUNNABLE = [(line, code) for line, code in BLOCKS if not code.startswith(FRAGMENT)]


def test_the_readme_has_runnable_blocks_and_fragments() -> None:
    assert len(RUNNABLE) >= 10
    assert len(BLOCKS) > len(RUNNABLE)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line-{line}" for line, _ in BLOCKS])
def test_every_block_is_valid_python(line: int, code: str) -> None:
    if code.startswith(FRAGMENT):
        # Fragments may use `await`, `return` or `...` outside their context:
        # compiled as the body of an async function.
        body = "".join(f"    {row}\n" for row in code.splitlines())
        compile(f"async def _fragment():\n{body}", f"README.md:{line}", "exec")
    else:
        compile(code, f"README.md:{line}", "exec")


class Readme:
    """The world the README's examples expect, built around one kit server."""

    def __init__(
        self, server: TokenServer, credential: Credential, root: Path, clock: FakeClock
    ) -> None:
        self.server = server
        self.root = root
        self.clock = clock
        xsuaa = xsuaa_service_key(server, credential, README_CLIENT_ID)
        api = server.credstore
        api.clock = time.time  # payload iat is wall-clock time on both sides
        credstore = credstore_service_key(
            server, credential, CREDSTORE_CLIENT_ID, encryption=api.encryption_block()
        )
        ias = ias_service_key(server, credential, IAS_CLIENT_ID)
        self.files = {
            "client.crt": credential.chain_pem,
            "client.key": credential.key_pem,
            "xsuaa-service-key.json": json.dumps(xsuaa),
            "xsuaa-key.json": json.dumps(xsuaa),
            "credstore-key.json": json.dumps(credstore),
            "ca.pem": server.ca_pem,
        }
        for name, text in self.files.items():
            (root / name).write_text(text, encoding="utf-8")
        bindings = root / "bindings"
        write_kubernetes_binding(bindings / "my-xsuaa", xsuaa)
        write_kubernetes_binding(bindings / "my-credstore", credstore, binding_type="credstore")
        write_kubernetes_binding(
            root / "etc" / "secrets" / "sapbtp" / "xsuaa" / "my-xsuaa", xsuaa, metadata=None
        )
        self.environment = {
            "VCAP_SERVICES": vcap_services(
                ("xsuaa", "my-xsuaa", xsuaa),
                ("credstore", "my-credstore", credstore),
                ("identity", "my-identity", ias),
            ),
            "SERVICE_BINDING_ROOT": str(bindings),
            # The README trusts the system store; here the kit's root is that store.
            "SSL_CERT_FILE": str(root / "ca.pem"),
            "REQUESTS_CA_BUNDLE": str(root / "ca.pem"),
        }
        #: README text -> what it means here.
        self.replacements = {
            "https://my-sub.authentication.cert.eu20.hana.ondemand.com/oauth/token": (
                server.token_url
            ),
            "https://my-api.example.com/orders": server.resource_url,
            "https://my-api.example.com/": server.url + "/",
            "https://orders.example.com/api": server.resource_url,
            '"/bindings/': f'"{bindings}/',
            '"/etc/secrets/': f'"{root}/etc/secrets/',
        }

    def source(self, code: str) -> str:
        for text, meant in self.replacements.items():
            code = code.replace(text, meant)
        return code


@pytest.fixture
def readme(
    mtls_pki: Any,
    mtls_client_certificate: Credential,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Readme]:
    clock = FakeClock()
    # Resources the README calls without presenting a certificate (plain
    # bearer tokens) must be reachable: the token endpoints still demand one.
    server = TokenServer(mtls_pki, clock=clock, require_client_cert=False)
    for client_id in (README_CLIENT_ID, CLIENT_ID, IAS_CLIENT_ID, CREDSTORE_CLIENT_ID):
        server.register_client(client_id, mtls_client_certificate)
    root, library = logging.getLogger(), logging.getLogger("mtls_auth")
    handlers, level = list(root.handlers), library.level
    with loopback_names(), server:
        world = Readme(server, mtls_client_certificate, tmp_path, clock)
        monkeypatch.chdir(tmp_path)
        for name, value in world.environment.items():
            monkeypatch.setenv(name, value)
        try:
            yield world
        finally:  # the debugging example configures logging: undo it
            for handler in set(root.handlers) - set(handlers):
                root.removeHandler(handler)
            library.setLevel(level)


def _needs(code: str) -> str | None:
    """Why this machine cannot run `code` (None: it can)."""
    if "credstore" in code and "credstore_" in code and importlib.util.find_spec("joserfc") is None:
        return "Credential Store payload encryption needs joserfc (Python 3.10+)"
    if "mtls_auth.httpx2" in code and importlib.util.find_spec("httpx2") is None:
        return "httpx2 needs Python 3.11+"
    return None


@pytest.mark.parametrize(("line", "code"), RUNNABLE, ids=[f"line-{line}" for line, _ in RUNNABLE])
def test_every_runnable_block_runs_as_pasted(
    line: int,
    code: str,
    readme: Readme,
    mtls_client_certificate: Credential,
) -> None:
    reason = _needs(code)
    if reason is not None:
        pytest.skip(reason)
    namespace: dict[str, Any] = {"__name__": f"readme_line_{line}"}
    exec(compile(readme.source(code), f"README.md:{line}", "exec"), namespace)
    tests = {n: f for n, f in namespace.items() if n.startswith("test_") and callable(f)}
    fixtures = {
        "mtls_server": readme.server,
        "mtls_xsuaa_binding": xsuaa_service_key(readme.server, mtls_client_certificate, CLIENT_ID),
        "mtls_auth_kwargs": {"verify": readme.server.ca_pem, "clock": readme.clock},
        "mtls_clock": readme.clock,
    }
    for name, function in tests.items():
        wanted = inspect.signature(function).parameters
        missing = set(wanted) - set(fixtures)
        assert not missing, f"README.md:{line}: {name} wants fixtures this test lacks: {missing}"
        function(**{parameter: fixtures[parameter] for parameter in wanted})


def test_the_docs_import_no_private_module() -> None:
    # Logger names (mtls_auth._retry) are fine; imports of private modules are not.
    private = re.compile(r"(?:from|import)\s+mtls_auth(?:\.\w+)*\._\w+")
    for page in [README, *sorted((README.parent / "docs").rglob("*.md"))]:
        assert not private.findall(page.read_text(encoding="utf-8")), page.name


def test_python_version_of_the_blocks_is_the_supported_floor() -> None:
    # Blocks must run on the oldest supported Python too: no 3.10+ syntax.
    assert sys.version_info >= (3, 9)
    for line, code in RUNNABLE:
        assert "match " not in code.split("#")[0], f"README.md:{line}: match needs 3.10"
