"""mtls-auth: OAuth2 client credentials over mutual TLS for requests and httpx.

The core (this package) knows nothing of any HTTP library: it parses client
certificates, builds SSL contexts with the key kept off disk, and raises the
errors below. The integrations live in `mtls_auth.requests` and
`mtls_auth.httpx`, each importing its own library; the Credential Store client
in `mtls_auth.credstore`. docs/architecture.md draws the layers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._errors import (
    ArgumentError,
    BindingError,
    CertificateError,
    InsecureTransportError,
    LoginRequiredError,
    MtlsAuthError,
    PayloadError,
    TokenError,
    TokenRequestError,
    TokenResponseError,
    TokenStoreError,
)
from ._lazy import lazy_names
from ._redact import Secret

if TYPE_CHECKING:
    from ._authorize import AuthorizationRequest
    from ._certificate import INSECURE_SKIP_VERIFY, ClientCertificate
    from ._check import CheckReport, Finding, check_binding
    from ._retry import RetryPolicy
    from ._sources import select_vcap_service
    from ._store import TokenStore
    from ._token import TokenInfo

__version__ = "0.1.0"

# A library logs, the application decides where logs go: without this handler,
# Python's last-resort handler would print the library's warnings to stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Names loaded on first use, with the module that defines them: the token
#: protocol and the binding readers import json, email, random, pathlib...,
#: which `import mtls_auth` should not pay for until they are needed.
_LAZY = {
    "INSECURE_SKIP_VERIFY": "_certificate",
    "ClientCertificate": "_certificate",
    "AuthorizationRequest": "_authorize",
    "CheckReport": "_check",
    "Finding": "_check",
    "RetryPolicy": "_retry",
    "TokenInfo": "_token",
    "TokenStore": "_store",
    "check_binding": "_check",
    "select_vcap_service": "_sources",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = [
    "INSECURE_SKIP_VERIFY",
    "ArgumentError",
    "AuthorizationRequest",
    "BindingError",
    "CertificateError",
    "CheckReport",
    "ClientCertificate",
    "Finding",
    "InsecureTransportError",
    "LoginRequiredError",
    "MtlsAuthError",
    "PayloadError",
    "RetryPolicy",
    "Secret",
    "TokenError",
    "TokenInfo",
    "TokenRequestError",
    "TokenResponseError",
    "TokenStore",
    "TokenStoreError",
    "__version__",
    "check_binding",
    "select_vcap_service",
]
