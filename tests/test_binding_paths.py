"""Binding paths that are not regular files fail at once: FIFOs, sockets, devices, huge files.

Given as the binding path, or found inside a binding directory (flat files or
with ``.metadata``), each raises `BindingError` without blocking: a FIFO would
otherwise block the open until a writer came, and ``/dev/zero`` never ends.
Every call runs in a thread with a deadline, so a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import BindingError, check_binding
from mtls_auth.cli import main as cli_main
from mtls_auth.testing import write_kubernetes_binding

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")

DEADLINE = 5.0


def _outcome(call: Callable[[], Any]) -> BaseException | Any:
    """What `call` returned or raised, within DEADLINE seconds (else the test fails)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE)
    assert not worker.is_alive(), f"still blocked after {DEADLINE}s"
    return box[0]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket_file(path: Path) -> Path:
    # Bound by a name relative to its directory: a socket's path is limited to
    # 108 bytes, and pytest's temp paths (more so under xdist) can be longer.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        server.bind(path.name)
    finally:
        os.chdir(here)
        server.close()  # the socket file stays
    return path


def _huge(path: Path) -> Path:
    with path.open("wb") as handle:
        handle.truncate(2 << 20)  # 2 MiB, sparse: nothing is written
    return path


SPECIAL: dict[str, Callable[[Path], Path]] = {
    "fifo": _fifo,
    "socket": _socket_file,
    "huge": _huge,
    "dev-zero": lambda _: Path("/dev/zero"),
    "dev-urandom": lambda _: Path("/dev/urandom"),
}


@pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx"])
@pytest.mark.parametrize("special", list(SPECIAL))
def test_a_binding_path_that_is_not_a_regular_file_fails_at_once(
    module: Any, special: str, tmp_path: Path
) -> None:
    path = SPECIAL[special](tmp_path / "service-key.json")
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    outcome = _outcome(lambda: module.MtlsOAuth2.from_binding(path))
    assert isinstance(outcome, BindingError), outcome
    assert str(path) in str(outcome)


@pytest.mark.parametrize("special", ["fifo", "socket", "huge"])
@pytest.mark.parametrize("layout", ["flat", "metadata"])
def test_a_special_file_inside_a_binding_directory_fails_at_once(
    special: str, layout: str, tmp_path: Path, mtls_xsuaa_binding: dict[str, Any]
) -> None:
    directory = tmp_path / "binding"
    if layout == "metadata":
        write_kubernetes_binding(directory, mtls_xsuaa_binding)
        target = (directory / "key").resolve()
        target.unlink()
        SPECIAL[special](target)
    else:
        directory.mkdir()
        for name, value in mtls_xsuaa_binding.items():
            (directory / name).write_text(value if isinstance(value, str) else json.dumps(value))
        (directory / "key").unlink()
        SPECIAL[special](directory / "key")
    outcome = _outcome(lambda: mrequests.MtlsOAuth2.from_binding(directory))
    assert isinstance(outcome, BindingError), outcome
    assert "key" in str(outcome)


def test_check_reports_a_fifo_without_hanging(tmp_path: Path) -> None:
    path = _fifo(tmp_path / "service-key.json")
    report, parsed = _outcome(lambda: check_binding(path))
    assert parsed is None
    assert report.status == "error"
    assert any("FIFO" in finding.message for finding in report.findings)


def test_the_cli_check_exits_on_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _fifo(tmp_path / "service-key.json")
    code = _outcome(lambda: cli_main(["check", str(path)]))
    assert code == 2
    assert "FIFO" in capsys.readouterr().out
