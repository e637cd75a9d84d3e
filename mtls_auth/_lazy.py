"""Names a package exports but loads on first use (PEP 562 module ``__getattr__``).

`import mtls_auth` should not pay for cryptography, json or the binding
readers until they are needed, and pytest's plugin loading should not pay for
the test kit: each package lists its lazy names and the module defining each,
and gets its ``__getattr__`` and ``__dir__`` from `lazy_names`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any, Callable

__all__ = ["lazy_names"]


def lazy_names(
    package: str, table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for `package`, loading ``table[name]`` on first use.

    A loaded name is stored in the package, so the next access is a plain
    attribute read.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
