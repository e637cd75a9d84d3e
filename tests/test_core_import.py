"""`import mtls_auth` must not import any HTTP library (checked in a clean process)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = (
    "import json, sys; import mtls_auth; "
    "print(json.dumps(sorted(m for m in sys.modules "
    "if m.split('.')[0] in ('requests', 'httpx', 'urllib3'))))"
)


def test_import_mtls_auth_pulls_in_no_http_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []
