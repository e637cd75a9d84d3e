"""`mtls-auth request`: a curl-like call authenticated with a binding's token."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from typing import Any

from .. import check_binding, credstore
from ._common import binding_input, for_tenant, integration, verify_option

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """`mtls-auth request`: the response body on stdout; exit 1 for HTTP >= 400."""
    binding, _ = binding_input(args)
    library = integration()
    verify = verify_option(args)
    body: bytes | None = None
    if args.data is not None:
        if args.data.startswith("@"):
            with open(args.data[1:], "rb") as handle:
                body = handle.read()
        else:
            body = args.data.encode("utf-8")
    headers: dict[str, str] = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header {header!r} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    if body is not None and not any(h.lower() == "content-type" for h in headers):
        headers["Content-Type"] = "application/json"
    method = (args.method or ("POST" if body is not None else "GET")).upper()

    base = library.MtlsOAuth2.from_binding(binding, namespace=args.namespace, verify=verify)
    auth = for_tenant(base, args)
    cipher = None
    if not args.no_decrypt and check_binding(binding)[0].payload_encryption:
        if credstore.available():
            cipher = credstore.PayloadCipher.from_binding(binding)
        else:
            print(
                "mtls-auth request: note: install mtls-auth[credstore] to decrypt "
                "Credential Store payloads; showing them as sent",
                file=sys.stderr,
            )
    with auth:
        status, reason, response_headers, content = _send(
            library, auth, method, args.url, headers, body, args.cert_bound, verify, cipher
        )
    if args.include:
        print(f"HTTP {status} {reason}")
        for name, value in response_headers:
            print(f"{name}: {value}")
        print()
        sys.stdout.flush()  # the text above, before the bytes below (one ordered stream)
    sys.stdout.buffer.write(content)
    if content and not content.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0 if status < 400 else 1


def _send(
    library: Any,
    auth: Any,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    cert_bound: bool,
    verify: Any,
    cipher: Any,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    if library.__name__.endswith(".requests"):
        import requests

        from ..credstore.requests import CredstoreAdapter

        session = requests.Session()
        session.auth = auth
        if cipher is not None:
            session.mount(
                "https://", CredstoreAdapter(auth.certificate, cipher=cipher, verify=verify)
            )
        elif cert_bound:
            session.mount("https://", auth.adapter())
        with session:
            # verify= per request: requests lets REQUESTS_CA_BUNDLE override
            # session.verify, but not an explicit argument.
            response = session.request(
                method, url, headers=headers, data=body, timeout=30, verify=verify
            )
            return (
                response.status_code,
                response.reason or "",
                list(response.headers.items()),
                response.content,
            )
    import httpx

    from ..credstore.httpx import CredstoreTransport

    transport: Any = auth.transport() if cert_bound or cipher is not None else None
    if cipher is not None:
        transport = CredstoreTransport(transport, cipher)
    client_verify: Any = True if verify is True else _server_trust(verify)
    with httpx.Client(auth=auth, transport=transport, verify=client_verify, timeout=30) as client:
        answer = client.request(method, url, headers=headers, content=body)
        return (
            answer.status_code,
            answer.reason_phrase,
            list(answer.headers.items()),
            answer.content,
        )


def _server_trust(verify: str) -> ssl.SSLContext:
    """Trust exactly the CA bundle file or directory, or the CA PEM text, in `verify`."""
    # PROTOCOL_TLS_CLIENT: hostname checked, certificate required, no CA loaded
    # until we load the given ones (create_default_context would add the system's).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(**_trust_source(verify))
    return context


def _trust_source(verify: str) -> dict[str, str]:
    if "-----BEGIN" in verify:
        return {"cadata": verify.replace("\\n", "\n")}
    if os.path.isdir(verify):
        return {"capath": verify}
    return {"cafile": verify}
