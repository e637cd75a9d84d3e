"""Test helpers: a generated PKI and a real loopback mTLS token server.

The public, documented testing API arrives with the pytest plugin.
"""

from __future__ import annotations

from ._bindings import (
    credstore_service_key,
    rotate_kubernetes_binding,
    vcap_services,
    write_kubernetes_binding,
    xsuaa_service_key,
)
from ._pki import PKI, Credential
from ._server import Fault, ResourceRequest, TokenRequest, TokenServer

__all__ = [
    "PKI",
    "Credential",
    "Fault",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
    "credstore_service_key",
    "rotate_kubernetes_binding",
    "vcap_services",
    "write_kubernetes_binding",
    "xsuaa_service_key",
]
