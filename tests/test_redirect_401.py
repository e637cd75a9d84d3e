"""A 401 from a resource reached through a same-origin redirect still gets its one refresh.

The token is revoked at the server; the resource first redirects (302, same
origin) and then answers 401 for the revoked token. The client must drop the
token, fetch a new one and resend once, for requests (whose redirect handling
copies the request) as for httpx sync and async.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import requests

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth.testing import Fault, TokenServer

START = "/resource/start"


def _redirect(to: str) -> Fault:
    return Fault("body", status_code=302, headers=(("Location", to),), payload=b"")


def _get(kind: str, auth: Any, url: str) -> tuple[int, list[int]]:
    """GET `url` following redirects; the server wants the client certificate too."""
    if kind == "requests":
        with requests.Session() as session:
            session.mount("https://", auth.adapter())
            response = session.get(url, auth=auth, timeout=10)
            return response.status_code, [r.status_code for r in response.history]
    if kind == "httpx-sync":
        with httpx.Client(auth=auth, transport=auth.transport(), follow_redirects=True) as client:
            response = client.get(url)
            return response.status_code, [r.status_code for r in response.history]

    async def main() -> tuple[int, list[int]]:
        transport = auth.async_transport()
        async with httpx.AsyncClient(
            auth=auth, transport=transport, follow_redirects=True
        ) as client:
            response = await client.get(url)
        await auth.aclose()
        return response.status_code, [r.status_code for r in response.history]

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["requests", "httpx-sync", "httpx-async"])
def test_revoked_token_after_a_same_origin_redirect_is_refreshed(
    kind: str,
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
) -> None:
    module = mrequests if kind == "requests" else mhttpx
    auth = module.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    auth.token_info()
    mtls_server.revoke_all()
    mtls_server.inject(_redirect("/resource/after"), times=2, path=START)

    status, history = _get(kind, auth, mtls_server.url + START)

    assert status == 200
    assert mtls_server.token_request_count == 2  # the first token, and one refresh
    seen = [(r.path, r.status) for r in mtls_server.resource_requests]
    if kind == "requests":
        # requests resends the redirected request it got the 401 for.
        assert history[0] == 302
        assert seen == [(START, 302), ("/resource/after", 401), ("/resource/after", 200)]
    else:
        # httpx follows redirects inside each step of the auth flow, so the one
        # resend is the original request, which is redirected again.
        assert seen == [
            (START, 302),
            ("/resource/after", 401),
            (START, 302),
            ("/resource/after", 200),
        ]
    auth.close()


def test_a_cross_origin_redirect_answering_401_gets_no_token(
    mtls_server: TokenServer,
    mtls_xsuaa_binding: dict[str, Any],
    mtls_auth_kwargs: dict[str, Any],
) -> None:
    """requests strips Authorization when the host changes; the hook must not put it back."""
    auth = mrequests.MtlsOAuth2.from_binding(mtls_xsuaa_binding, **mtls_auth_kwargs)
    other_origin = mtls_server.url.replace("localhost", "127.0.0.1") + "/resource/after"
    mtls_server.inject(_redirect(other_origin), path=START)
    with requests.Session() as session:
        session.mount("https://", auth.adapter())
        response = session.get(mtls_server.url + START, auth=auth, timeout=10)
    assert response.status_code == 401
    assert mtls_server.token_request_count == 1
    last = mtls_server.resource_requests[-1]
    assert not last.had_authorization
    auth.close()
