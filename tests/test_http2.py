"""HTTP/2 to a resource: the auth's transport negotiates h2 when asked, as the README says.

httpx picks the protocol from the transport, not from ``Client(http2=True)``
once a transport is given: ``auth.transport(http2=True)`` offers h2 in ALPN
and speaks it, while ``httpx.Client(http2=True, transport=auth.transport())``
stays on HTTP/1.1 (httpx's own rule, pinned here so the README stays true).

The resource is a minimal HTTP/2 server written with the ``h2`` library on
loopback, requiring the client certificate like the kit's server; it answers
every request with the protocol it was asked over and whether a bearer token
came with it. Tokens come from the kit's token server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mtls_auth.testing import PKI, Credential, TokenServer
from mtls_auth.testing._transport import server_ssl_context

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")

CLIENT_ID = "sb-mtls-test!t1"
#: The name of this test server's threads, to tell its log records from the client's.
SERVER_THREAD = "h2-resource"


class H2Resource:
    """A loopback HTTPS server speaking HTTP/2 (or HTTP/1.1 if that is all a client offers)."""

    def __init__(self, pki: PKI) -> None:
        context = server_ssl_context(pki.root_pem, pki.server, require_client_cert=True)
        context.set_alpn_protocols(["h2", "http/1.1"])
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"https://localhost:{self.port}/resource"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=SERVER_THREAD, daemon=True)

    def __enter__(self) -> H2Resource:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._connection, args=(raw,), name=SERVER_THREAD, daemon=True
            ).start()

    def _connection(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        with contextlib.suppress(OSError), self._context.wrap_socket(raw, server_side=True) as tls:
            if tls.selected_alpn_protocol() == "h2":
                self._http2(tls)
            else:
                self._http11(tls)

    @staticmethod
    def _answer(protocol: str, authorization: str | None) -> bytes:
        bearer = authorization is not None and authorization.startswith("Bearer ")
        return json.dumps({"protocol": protocol, "bearer": bearer}).encode()

    def _http11(self, tls: ssl.SSLSocket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                return
            data += chunk
        lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        authorization = {k.lower(): v for k, v in headers.items()}.get("authorization")
        body = self._answer("HTTP/1.1", authorization)
        tls.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )

    def _http2(self, tls: ssl.SSLSocket) -> None:
        connection = h2_connection.H2Connection(
            config=h2_config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        connection.initiate_connection()
        tls.sendall(connection.data_to_send())
        while True:
            data = tls.recv(65536)
            if not data:
                return
            for event in connection.receive_data(data):
                if isinstance(event, h2_events.RequestReceived):
                    headers = dict(event.headers)
                    body = self._answer("HTTP/2", headers.get("authorization"))
                    connection.send_headers(
                        event.stream_id,
                        [
                            (":status", "200"),
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                        ],
                    )
                    connection.send_data(event.stream_id, body, end_stream=True)
                elif isinstance(event, h2_events.ConnectionTerminated):
                    return
            tls.sendall(connection.data_to_send())


@pytest.fixture
def h2_resource(mtls_pki: PKI) -> Iterator[H2Resource]:
    with H2Resource(mtls_pki) as resource:
        yield resource


def _libraries() -> list[Any]:
    import importlib.util

    params = [pytest.param(("httpx", "mtls_auth.httpx"), id="httpx")]
    params.append(
        pytest.param(
            ("httpx2", "mtls_auth.httpx2"),
            id="httpx2",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("httpx2") is None, reason="httpx2 needs Python 3.11+"
            ),
        )
    )
    return params


@pytest.fixture(params=_libraries())
def library(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    import importlib

    return importlib.import_module(request.param[0]), importlib.import_module(request.param[1])


def _auth(module: Any, server: TokenServer, credential: Credential) -> Any:
    return module.MtlsOAuth2(
        server.token_url,
        CLIENT_ID,
        credential.chain_pem,
        credential.key_pem,
        verify=server.ca_pem,
    )


# hpack logs each header it decodes at DEBUG, values included: this test's own
# server, reading the bearer token, trips the canary. The client's side is
# checked below instead: h2 sends Authorization never-indexed, which hpack logs
# as SENSITIVE_REDACTED.
@pytest.mark.secret_canary_exempt("the test's HTTP/2 server logs the headers it decodes")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_auths_transport_speaks_http2_when_asked(
    library: tuple[Any, Any],
    mode: str,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    h2_resource: H2Resource,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hpack")
    http, module = library
    with _auth(module, mtls_server, mtls_client_certificate) as auth:
        if mode == "sync":
            with http.Client(auth=auth, transport=auth.transport(http2=True)) as client:
                response = client.get(h2_resource.url)
        else:

            async def main() -> Any:
                transport = auth.async_transport(http2=True)
                async with http.AsyncClient(auth=auth, transport=transport) as client:
                    answer = await client.get(h2_resource.url)
                await auth.aclose()
                return answer

            response = asyncio.run(main())
    assert response.http_version == "HTTP/2"
    assert response.json() == {"protocol": "HTTP/2", "bearer": True}
    assert mtls_server.token_request_count == 1
    client_side = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("hpack") and r.threadName != SERVER_THREAD
    ]
    # hpack logs every header block it encodes (the token only Huffman-coded,
    # which anyone can undo) and, before 4.2, each header with its value: the
    # library's filter leaves the records and takes the values out.
    blocks = [m for m in client_side if m.startswith("Encoded header block to <")]
    assert blocks, "the client's header encoding was not logged"
    assert all(m.endswith(" bytes>") for m in blocks)
    assert not [m for m in client_side if "Bearer" in m]
    assert not [m for m in client_side if m.startswith("Encoded header block to b")]


def test_client_http2_flag_does_not_reach_a_given_transport(
    library: tuple[Any, Any],
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    h2_resource: H2Resource,
) -> None:
    # httpx's rule: with transport= given, Client(http2=True) configures nothing.
    http, module = library
    auth = _auth(module, mtls_server, mtls_client_certificate)
    with auth, http.Client(auth=auth, http2=True, transport=auth.transport()) as client:
        response = client.get(h2_resource.url)
    assert response.json() == {"protocol": "HTTP/1.1", "bearer": True}


@pytest.mark.parametrize(
    ("logger", "message", "args", "shown"),
    [
        # hpack 4.1
        (
            "hpack.hpack",
            "Adding %s to the header table, sensitive:%s, huffman:%s",
            ((b"authorization", b"Bearer SECRET-1"), False, True),
            "Adding (b'authorization', '<redacted>') to the header table",
        ),
        # hpack 4.2
        (
            "hpack.hpack",
            "Adding %s=%s to the header table, sensitive:%s, huffman:%s",
            (b"authorization", b"Bearer SECRET-1", False, True),
            "Adding b'authorization'=<redacted> to the header table",
        ),
        ("hpack.table", "Evicting %s: %s from the header table", (b"cookie", b"SECRET-1"), None),
        ("hpack.hpack", "Encoded header block to %s", (b"\x82\x86SECRET-1",), "<10 bytes>"),
        ("hpack.hpack", "Decoding %s", (b"\x88SECRET-1",), "<9 bytes>"),
        ("hpack.hpack", "Decoded %s, consumed %d", ((b"set-cookie", b"SECRET-1"), 12), None),
        ("hpack.hpack", "Adding %s=%s to the header table", (b"accept", b"*/*"), "accept'=b'*/*"),
    ],
)
def test_hpack_records_keep_no_sensitive_header_value(
    logger: str, message: str, args: tuple[Any, ...], shown: str | None
) -> None:
    from mtls_auth import _hpack_logs

    _hpack_logs.guard()
    record = logging.getLogger(logger).makeRecord(
        logger, logging.DEBUG, "hpack.py", 1, message, args, None
    )
    assert logging.getLogger(logger).filter(record)
    text = record.getMessage()
    assert "SECRET-1" not in text
    if shown is not None:
        assert shown in text
