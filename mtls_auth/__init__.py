"""mtls-auth: OAuth2 client credentials over mutual TLS for requests and httpx.

The core (this package) knows nothing of any HTTP library: it parses client
certificates, builds SSL contexts with the key kept off disk, and raises the
errors below. The integrations live in `mtls_auth.requests` and
`mtls_auth.httpx`, each importing its own library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._certificate import INSECURE_SKIP_VERIFY, ClientCertificate
from ._errors import (
    BindingError,
    CertificateError,
    InsecureTransportError,
    MtlsAuthError,
    PayloadError,
    TokenError,
    TokenRequestError,
    TokenResponseError,
)

if TYPE_CHECKING:
    from ._token import RetryPolicy

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RetryPolicy lives with the token protocol, whose imports (json, email,
    # random) `import mtls_auth` should not pay for until a token is fetched.
    if name == "RetryPolicy":
        from ._token import RetryPolicy

        return RetryPolicy
    raise AttributeError(f"module 'mtls_auth' has no attribute {name!r}")

__all__ = [
    "INSECURE_SKIP_VERIFY",
    "BindingError",
    "CertificateError",
    "ClientCertificate",
    "InsecureTransportError",
    "MtlsAuthError",
    "PayloadError",
    "RetryPolicy",
    "TokenError",
    "TokenRequestError",
    "TokenResponseError",
    "__version__",
]
