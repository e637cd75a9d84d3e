"""Shared fixtures: a PKI generated at test time and a real loopback mTLS token server.

No private key is ever committed or written to disk: `PKI` makes keys in memory,
and `TokenServer` loads its own through an anonymous memory file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mtls_auth.testing import PKI, Credential, TokenServer

#: The client id `token_server` accepts for `client_credential` (an XSUAA-style id).
CLIENT_ID = "sb-client!t1"


@pytest.fixture(scope="session")
def pki() -> PKI:
    """Root CA, intermediate CA and a localhost server certificate, made once."""
    return PKI()


@pytest.fixture(scope="session")
def client_credential(pki: PKI) -> Credential:
    """An RSA 2048 client certificate issued by the intermediate, valid for 7 days."""
    return pki.issue_client("sb-client!t1", key_type="rsa")


@pytest.fixture(scope="session")
def client_id() -> str:
    """The client id `token_server` binds to `client_credential`'s subject."""
    return CLIENT_ID


@pytest.fixture
def token_server(pki: PKI, client_credential: Credential) -> Iterator[TokenServer]:
    """A started mTLS token server that trusts only the root; `CLIENT_ID` is registered."""
    with TokenServer(pki) as server:
        server.register_client(CLIENT_ID, client_credential)
        yield server
