"""Check the core package on its own: `python tests/check_core.py` (tox -e core).

Meant for an environment with neither requests nor httpx installed (pytest does
not collect this file). It checks that

* `import mtls_auth` works and pulls in neither `requests` nor `httpx`;
* `mtls_auth.testing` (used by the README's first command) works without them;
* `import mtls_auth.requests` / `import mtls_auth.httpx` fail with an ImportError
  that names the extra to install. Those modules are checked only once their file
  exists. Where the HTTP library *is* installed, its import is blocked for the
  check so the script gives the same answer in a full environment.

Exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

HTTP_LIBRARIES = ("requests", "httpx", "urllib3", "httpcore")


def http_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in HTTP_LIBRARIES)


class _Blocker(importlib.abc.MetaPathFinder):
    """Make `import <name>` fail as if the distribution were not installed."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = set(names)

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> None:
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def check_core_import() -> Path:
    import mtls_auth

    loaded = http_modules()
    assert not loaded, f"`import mtls_auth` imported HTTP libraries: {loaded}"
    assert mtls_auth.ClientCertificate is not None
    print(f"ok    import mtls_auth {mtls_auth.__version__} imports no HTTP library")
    return Path(mtls_auth.__file__).resolve().parent


def check_testing_import(package: Path) -> None:
    if not (package / "testing" / "__init__.py").is_file():
        print("skip  mtls_auth.testing: not written yet")
        return
    importlib.import_module("mtls_auth.testing")
    loaded = http_modules()
    assert not loaded, f"`import mtls_auth.testing` imported HTTP libraries: {loaded}"
    print("ok    import mtls_auth.testing imports no HTTP library")


def check_integration(package: Path, name: str) -> None:
    module = f"mtls_auth.{name}"
    if not (package / f"{name}.py").is_file():
        print(f"skip  {module}: {name}.py does not exist yet")
        return
    blocker = None
    if importlib.util.find_spec(name) is not None:
        # Installed here: pretend it is not, and forget anything already imported.
        blocker = _Blocker([name])
        sys.meta_path.insert(0, blocker)
        for loaded in [m for m in sys.modules if m.split(".")[0] == name or m == module]:
            del sys.modules[loaded]
    error: ImportError | None = None
    try:
        importlib.import_module(module)
    except ImportError as exc:
        error = exc
    finally:
        if blocker is not None:
            sys.meta_path.remove(blocker)
        sys.modules.pop(module, None)
    if error is None:
        raise AssertionError(f"import {module} succeeded although {name} is not importable")
    wanted = f"pip install mtls-auth[{name}]"
    assert wanted in str(error), f"ImportError for {module} should say {wanted!r}: {error}"
    print(f"ok    import {module} without {name}: ImportError names {wanted!r}")


def main() -> int:
    package = check_core_import()
    check_testing_import(package)
    for name in ("requests", "httpx"):
        check_integration(package, name)
    print("core checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
