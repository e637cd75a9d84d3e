"""`python -m mtls_auth`: the same as the `mtls-auth` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
