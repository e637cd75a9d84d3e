"""f. Import times, each in a fresh interpreter.

Every case runs `n` times in a new ``python`` process (the same interpreter as
the benchmark); the import is timed with ``time.perf_counter`` around the
statement, after its prerequisites were imported untimed. So
``import mtls_auth.requests`` is measured *after* ``import requests``: what
mtls-auth adds over the HTTP library. The best (minimum) of the runs is the
figure; the median is kept too. ``-X importtime`` shows which modules weigh
most in ``import mtls_auth``. The children read bytecode from a private cache
(``PYTHONPYCACHEPREFIX``), warmed first, as an installed package would.

The core defers `cryptography` until a certificate is parsed; the first
`ClientCertificate.from_pem` in a fresh process pays for that import, which is
measured as well (first call against second call).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

_TIMED = """
import sys, time
{pre}
t = time.perf_counter()
{stmt}
t = time.perf_counter() - t
print(t, int("cryptography" in sys.modules))
"""

_CRYPTO = "import cryptography.x509, cryptography.hazmat.primitives.serialization"

#: name: (untimed prerequisites, timed statement)
CASES = {
    "import mtls_auth": ("", "import mtls_auth"),
    "import mtls_auth.requests (after requests)": ("import requests", "import mtls_auth.requests"),
    "import mtls_auth.httpx (after httpx)": ("import httpx", "import mtls_auth.httpx"),
    "import requests": ("", "import requests"),
    "import httpx": ("", "import httpx"),
    "import cryptography (x509, serialization)": ("", _CRYPTO),
    "import mtls_auth + cryptography eagerly": ("", "import mtls_auth; " + _CRYPTO),
}

_FIRST_PARSE = """
import json, sys, time
data = json.loads(sys.stdin.read())
import mtls_auth
t0 = time.perf_counter()
mtls_auth.ClientCertificate.from_pem(data["cert"], data["key"])
t1 = time.perf_counter()
mtls_auth.ClientCertificate.from_pem(data["cert"], data["key"])
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


_ENV: dict[str, str] = {}


def _python(code: str, stdin: str | None = None, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        env=_ENV or None,
    )


def _importtime_top(module: str, top: int = 8) -> list[dict[str, Any]]:
    """The modules with the largest self time in ``-X importtime`` for `module`."""
    out = _python(f"import {module}", None, "-X", "importtime").stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = (part.strip() for part in line[12:].split("|"))
        rows.append(
            {
                "module": name,
                "self_ms": int(self_us) / 1e3,
                "cumulative_ms": int(cumulative_us) / 1e3,
            }
        )
    rows.sort(key=lambda row: row["self_ms"], reverse=True)
    return rows[:top]


def run(n: int, cert_pem: str, key_pem: str) -> dict[str, Any]:
    # Installed packages come with bytecode; PYTHONDONTWRITEBYTECODE (set in some
    # dev shells) would make every fresh interpreter compile mtls_auth from source
    # and triple its import time. The children get a private bytecode cache
    # instead, warmed by an untimed first run, and nothing lands in the tree.
    cache = tempfile.mkdtemp(prefix="mtls-auth-bench-pyc-")
    _ENV.clear()
    _ENV.update(os.environ)
    _ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    _ENV["PYTHONPYCACHEPREFIX"] = cache
    try:
        return _run(n, cert_pem, key_pem)
    finally:
        _ENV.clear()
        shutil.rmtree(cache, ignore_errors=True)


def _run(n: int, cert_pem: str, key_pem: str) -> dict[str, Any]:
    results: dict[str, Any] = {"cases": {}}
    warm = "import requests, httpx, cryptography.x509, mtls_auth.requests, mtls_auth.httpx"
    _python(_TIMED.format(pre="", stmt=warm))  # bytecode cached before anything is timed
    for name, (pre, stmt) in CASES.items():
        times = []
        crypto = 0
        for _ in range(n):
            seconds, loaded = _python(_TIMED.format(pre=pre, stmt=stmt)).stdout.split()
            times.append(float(seconds))
            crypto = int(loaded)
        results["cases"][name] = {
            "best_ms": min(times) * 1e3,
            "median_ms": statistics.median(times) * 1e3,
            "imports_cryptography": bool(crypto),
            "runs": n,
        }
    firsts, seconds_ = [], []
    payload = json.dumps({"cert": cert_pem, "key": key_pem})
    for _ in range(n):
        first, second = _python(_FIRST_PARSE, payload).stdout.split()
        firsts.append(float(first))
        seconds_.append(float(second))
    results["first_from_pem_ms"] = min(firsts) * 1e3
    results["second_from_pem_ms"] = min(seconds_) * 1e3
    results["importtime_top"] = _importtime_top("mtls_auth")
    return results
