"""The SAP Credential Store client: payload encryption and ready-made sessions.

With an ``oauth:mtls`` binding, Credential Store encrypts payloads (JWE compact,
RSA-OAEP-256 with A256GCM) by default. `PayloadCipher` does that work (on
`joserfc`, the ``credstore`` extra); the per-library modules wrap it around
the HTTP client you use:

* `mtls_auth.credstore.requests`: `CredstoreAdapter`, `CredstoreSession`,
  `credstore_session(binding, namespace=...)`;
* `mtls_auth.credstore.httpx`: `CredstoreTransport`, `AsyncCredstoreTransport`,
  `credstore_client(...)`, `async_credstore_client(...)`.

This package imports neither requests nor httpx; the old import paths
(`mtls_auth.requests.CredstoreAdapter`, ...) keep working.
"""

from __future__ import annotations

from ._payload import (
    JOSE_CONTENT_TYPE,
    PayloadCipher,
    available,
    open_response,
    seal_request,
)

__all__ = ["JOSE_CONTENT_TYPE", "PayloadCipher", "available", "open_response", "seal_request"]
