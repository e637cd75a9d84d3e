"""The documentation stays true: every public name has a docstring, every log line is explained.

The API reference (mkdocs with mkdocstrings, built by CI with warnings as
errors) renders the docstrings; a name without one would be silently missing.
docs/debugging.md explains each line the library logs; a new log call must be
added there.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = [
    "mtls_auth",
    "mtls_auth.requests",
    "mtls_auth.httpx",
    "mtls_auth.httpx2",
    "mtls_auth.credstore",
    "mtls_auth.credstore.requests",
    "mtls_auth.credstore.httpx",
    "mtls_auth.stores",
    "mtls_auth.testing",
]


def _public_members(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    members: list[tuple[str, object]] = []
    for name in module.__all__:
        value = getattr(module, name)
        members.append((f"{module_name}.{name}", value))
        if not inspect.isclass(value):
            continue
        for attribute in dir(value):
            if attribute.startswith("_"):
                continue
            owner = next((k for k in value.__mro__ if attribute in vars(k)), None)
            if owner is None or not owner.__module__.startswith("mtls_auth"):
                continue  # inherited from requests, httpx or object: theirs to document
            member = vars(owner)[attribute]
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if callable(member) or isinstance(member, property):
                members.append((f"{module_name}.{name}.{attribute}", member))
    return members


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name: str) -> None:
    if module_name.endswith("httpx2") and importlib.util.find_spec("httpx2") is None:
        pytest.skip("httpx2 needs Python 3.11+")
    if module_name == "mtls_auth.stores" and importlib.util.find_spec("mtls_auth.stores") is None:
        pytest.skip("no token stores in this version")
    missing = [
        name
        for name, member in _public_members(module_name)
        if (inspect.isclass(member) or callable(member) or isinstance(member, property))
        and not (member.__doc__ or "").strip()
    ]
    assert missing == []


def _log_messages() -> list[tuple[str, str]]:
    """(file, message) of every logger call in the library (the test kit excepted)."""
    found = []
    for path in sorted((ROOT / "mtls_auth").rglob("*.py")):
        if "testing" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"
                and node.func.attr in ("debug", "info", "warning", "error", "log")
            ):
                continue
            args = node.args[1:] if node.func.attr == "log" else node.args
            parts = []
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                parts.append(args[0].value)
            elif args and isinstance(args[0], ast.JoinedStr):
                parts.extend(v.value for v in args[0].values if isinstance(v, ast.Constant))
            assert parts, f"{path.name}:{node.lineno}: log with a non-literal message"
            found.append((f"{path.name}:{node.lineno}", str(parts[0])))
    return found


def test_every_log_line_is_explained_in_the_debugging_page() -> None:
    page = (ROOT / "docs" / "debugging.md").read_text(encoding="utf-8")
    messages = _log_messages()
    assert len(messages) > 20  # the scan finds the library's calls
    unexplained = []
    for where, message in messages:
        # The fixed words of the message, up to its first placeholder or clause.
        fixed = re.split(r"%|; ", message)[0].strip(" (;:")
        if fixed and fixed not in page:
            unexplained.append(f"{where}: {message!r}")
    assert unexplained == []
