"""Test helpers: a generated PKI and a real loopback mTLS token server.

The public, documented testing API arrives with the pytest plugin.
"""

from __future__ import annotations

from ._pki import PKI, Credential
from ._server import Fault, ResourceRequest, TokenRequest, TokenServer

__all__ = [
    "PKI",
    "Credential",
    "Fault",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
]
