"""An auth derived from another for a different token request shares its client.

The derived object has its own cached token but the same certificate,
SSLContext, token-endpoint connection pool, rotation watch and policies: a
token fetched through it right after the first one opens no new TLS
connection (the server counts accepted connections), for requests, httpx sync
and httpx async.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth.testing import Credential, TokenServer

CLIENTS = ["requests", "httpx-sync", "httpx-async"]


def _auth(client: str, server: TokenServer, credential: Credential, client_id: str) -> Any:
    module = mrequests if client == "requests" else mhttpx
    return module.MtlsOAuth2(
        server.token_url,
        client_id,
        credential.chain_pem,
        credential.key_pem,
        verify=server.ca_pem,
        scope="first",
    )


def _token_infos(client: str, *auths: Any) -> list[Any]:
    if client != "httpx-async":
        return [auth.token_info() for auth in auths]

    async def main() -> list[Any]:
        infos = [await auth.atoken_info() for auth in auths]
        await auths[0].aclose()
        return infos

    return asyncio.run(main())


def _resource_tokens(client: str, server: TokenServer, credential: Credential, *auths: Any) -> None:
    """One resource call per auth, each through the user's own client."""
    if client == "requests":
        for auth in auths:
            with requests.Session() as session:
                session.mount(server.url, auth.adapter())
                assert session.get(server.resource_url, auth=auth).status_code == 200
    elif client == "httpx-sync":
        for auth in auths:
            with httpx.Client(auth=auth, transport=auth.transport()) as http:
                assert http.get(server.resource_url).status_code == 200
    else:

        async def main() -> None:
            for auth in auths:
                async with httpx.AsyncClient(auth=auth, transport=auth.async_transport()) as http:
                    assert (await http.get(server.resource_url)).status_code == 200

        asyncio.run(main())


@pytest.mark.parametrize("client", CLIENTS)
def test_derived_auth_shares_the_client_and_holds_its_own_token(
    client: str, token_server: TokenServer, client_credential: Credential, client_id: str
) -> None:
    auth = _auth(client, token_server, client_credential, client_id)
    threads_before = threading.active_count()
    derived = auth._derive(auth._request.replace(scope="second"))
    assert type(derived) is type(auth)
    # Nothing new: the same client (certificate, SSLContexts, pools, watch, cache).
    assert derived._client is auth._client
    assert threading.active_count() == threads_before

    first, second = _token_infos(client, auth, derived)
    assert token_server.connections_accepted == 1, "the derived fetch opened a new connection"
    requests_seen = token_server.token_requests
    assert [r.form.get("scope") for r in requests_seen] == ["first", "second"]
    assert {r.thumbprint for r in requests_seen} == {client_credential.thumbprint}
    assert first.lifetime == second.lifetime

    # Each holds its own token: the resource sees two different tokens, and
    # asking again fetches nothing.
    _resource_tokens(client, token_server, client_credential, auth, derived, auth, derived)
    indexes = [r.token_index for r in token_server.resource_requests]
    assert indexes == [1, 2, 1, 2]
    assert len(token_server.token_requests) == 2
    assert "scope='second'" in repr(derived)
    assert "scope='first'" in repr(auth)
    auth.close()
