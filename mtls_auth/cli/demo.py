"""`mtls-auth demo`: the whole flow on loopback, in a few seconds, no account needed.

A throwaway PKI is generated in memory and the same mTLS token server the test
suite uses is started on 127.0.0.1 (XSUAA `/oauth/token` and Credential Store
`/api/v1/token` shapes, verifying client certificates). Then requests, httpx
sync and httpx async call a protected resource through `MtlsOAuth2`, built
with `from_binding` on a generated service key, and the timeline is printed.
Tokens are never printed; only facts about them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Callable

from .. import credstore as payloads
from ..testing import PKI, FakeClock, TokenServer, credstore_service_key, xsuaa_service_key

__all__ = ["run_demo"]

XSUAA_CLIENT_ID = "sb-mtls-auth-demo!t1"
CREDSTORE_CLIENT_ID = "6e2f1c3a-0b1d-4c1e-9f6a-demo.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI8="
NAMESPACE = "demo/ns 1"


def run_demo(*, calls: int = 20, out: Callable[[str], None] | None = None) -> int:
    say = out or (lambda text: print(text, flush=True))
    started = time.monotonic()
    step = 0

    def tick(text: str) -> None:
        nonlocal step
        step += 1
        say(f"{step:>2}. {text}")

    say("mtls-auth demo: OAuth2 client credentials over mutual TLS, end to end on loopback")
    say("    (a throwaway PKI and a local token server: no account, no network)\n")

    pki = PKI()
    credential = pki.issue_client("mtls-auth demo client")
    tick(
        "PKI generated in memory: root CA, intermediate CA, a localhost server certificate "
        f"and a client certificate ({credential.key_type}); no key touches the disk"
    )
    clock = FakeClock(time.time())
    with TokenServer(pki, clock=clock, token_lifetime=1800, jwt_tokens=True) as server:
        server.register_client(XSUAA_CLIENT_ID, credential)
        server.register_client(CREDSTORE_CLIENT_ID, credential)
        tick(
            f"token server on {server.url}: XSUAA /oauth/token and Credential Store "
            "/api/v1/token; it requires and verifies client certificates"
        )
        service_key = xsuaa_service_key(
            server, credential, XSUAA_CLIENT_ID, escape_newlines=True, wrap=True
        )
        results = _run_clients(server, service_key, clock, calls, tick)
        if results != 0:
            return results
        _credstore(server, credential, clock, tick)

    elapsed = time.monotonic() - started
    say(f"\nDone in {elapsed:.1f}s. Next, with a real binding:")
    say("  mtls-auth check path/to/service-key.json            # offline diagnosis")
    say("  mtls-auth check path/to/service-key.json --fetch    # and a token over mTLS")
    say("  mtls-auth request https://your-api.example.com/ --binding path/to/service-key.json")
    say("  in code: MtlsOAuth2.from_binding('service-key.json')  (see the README)")
    return 0


def _run_clients(
    server: TokenServer,
    service_key: dict[str, Any],
    clock: FakeClock,
    calls: int,
    tick: Callable[[str], None],
) -> int:
    try:
        from .. import requests as mrequests
    except ImportError:
        mrequests = None  # type: ignore[assignment]
    try:
        from .. import httpx as mhttpx
    except ImportError:
        mhttpx = None  # type: ignore[assignment]
    if mrequests is None and mhttpx is None:
        print(
            "mtls-auth demo: install an HTTP library first: pip install 'mtls-auth[all]'",
            file=sys.stderr,
        )
        return 2
    options: dict[str, Any] = {"verify": server.ca_pem, "clock": clock}
    server.cert_bound = True  # the resource accepts a token only with its certificate

    auth: Any = None
    if mrequests is not None:
        import requests

        auth = mrequests.MtlsOAuth2.from_binding(service_key, **options)
        cert = auth.certificate
        tick(
            f"binding parsed: XSUAA x509 service key, client id {auth.client_id}, "
            f"token URL {auth.token_url}"
        )
        tick(
            f"certificate {cert.subject}, issued by {cert.issuer}, {cert.key_type}, expires "
            f"{cert.not_after:%Y-%m-%d} ({cert.expires_in().days} days), x5t#S256 "
            f"{cert.thumbprint}"
        )
        with requests.Session() as session:
            session.auth = auth
            session.mount(server.url, auth.adapter())
            codes = [session.get(server.resource_url).status_code for _ in range(calls)]
            ok = codes.count(200)
            tick(
                f"requests: {ok}/{calls} calls succeeded with {server.token_request_count} "
                "token request (the token itself is never shown)"
            )
            if ok != calls:
                return 1
            before = server.token_request_count
            clock.advance(1800 - 30)  # into the refresh window, still valid
            codes = [session.get(server.resource_url).status_code for _ in range(calls)]
            tick(
                f"refresh observed: the clock moved into the 60 s refresh window; "
                f"{server.token_request_count - before} refresh, {codes.count(200)}/{calls} "
                "calls succeeded meanwhile"
            )
        info = auth.token_info()  # the cached token: facts only, never the token
        if info.cnf_thumbprint is not None:
            bound = info.cnf_thumbprint
            match = "matches" if info.bound_to_certificate else "does NOT match"
            tick(
                f"certificate-bound token (RFC 8705): cnf x5t#S256 {bound} {match} the client "
                "certificate; the resource checked it on every call"
            )
        auth.close()

    if mhttpx is not None:
        import httpx

        hauth = mhttpx.MtlsOAuth2.from_binding(service_key, **options)
        before = server.token_request_count
        with httpx.Client(auth=hauth, transport=hauth.transport()) as client:
            codes = [client.get(server.resource_url).status_code for _ in range(calls)]
        tick(f"httpx sync: {codes.count(200)}/{calls} calls succeeded")

        async def many() -> list[int]:
            async with httpx.AsyncClient(auth=hauth, transport=hauth.async_transport()) as client:
                responses = await asyncio.gather(
                    *(client.get(server.resource_url) for _ in range(calls * 2))
                )
            await hauth.aclose()
            return [r.status_code for r in responses]

        codes = asyncio.run(many())
        tick(
            f"httpx async: {codes.count(200)}/{len(codes)} concurrent calls succeeded; the "
            f"same auth object served Client and AsyncClient with "
            f"{server.token_request_count - before} token request"
        )
        hauth.close()
    return 0


def _credstore(
    server: TokenServer, credential: Any, clock: FakeClock, tick: Callable[[str], None]
) -> None:
    try:
        from .. import requests as mrequests
        from ..credstore.requests import credstore_session
    except ImportError:
        return

    binding = credstore_service_key(
        server,
        credential,
        CREDSTORE_CLIENT_ID,
        encryption=server.credstore.encryption_block(),
    )
    options: dict[str, Any] = {"verify": server.ca_pem, "clock": clock}
    value = None
    if payloads.available():
        with credstore_session(binding, namespace=NAMESPACE, **options) as session:
            session.post("password", json={"name": "db", "value": "demo-password"})
            value = session.get("password", params={"name": "db"}).json().get("value")
    else:
        with mrequests.MtlsOAuth2.from_binding(binding, namespace=NAMESPACE, **options) as auth:
            auth.token_info()
    sent = [r for r in server.token_requests if r.path == "/api/v1/token"][-1]
    tick(
        f"Credential Store: namespace {sent.namespace!r} sent as credstore_namespace "
        f"(arrived {'exactly' if sent.namespace == NAMESPACE else 'CHANGED'}); client id "
        "with '/+=' arrived intact"
    )
    if not payloads.available():
        tick(
            "Credential Store payloads: encryption needs joserfc >= 1.7.2 (Python 3.10+, "
            "pip install 'mtls-auth[credstore]'); skipped"
        )
        return
    wire = [c for m, _, c in server.credstore.requests if m == "POST"][-1]
    tick(
        f"Credential Store payloads: the password went out as {wire} (JWE RSA-OAEP-256 + "
        f"A256GCM) and came back decrypted: {'ok' if value == 'demo-password' else 'MISMATCH'}"
    )
