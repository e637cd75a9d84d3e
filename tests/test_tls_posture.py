"""TLS posture: what the library's connections trust, and what cannot be turned off.

- Server certificate verification cannot be disabled by ``verify=False`` (or
  None): every public constructor refuses with `InsecureTransportError`. The one
  way is the loudly named `INSECURE_SKIP_VERIFY`, which works against a server
  whose CA was not given and logs a WARNING.
- TLS 1.2 is the minimum: every context says so, a TLS 1.1-only server is
  refused (checked live where this OpenSSL can still speak TLS 1.1 at all, with
  a control client proving the server works), and hostname and expiry checks
  survive being handed to urllib3 and httpcore.
- The private CA given as ``verify`` stays the only trust anchor even with
  ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE`` and ``CURL_CA_BUNDLE`` pointing at a
  bundle (certifi's plus a second CA) that trusts an impostor localhost server,
  and with ``verify=False`` on the requests session or the request.
- ``SSLKEYLOGFILE`` is not honoured: no TLS secrets of the library's
  connections are written out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from clients import Client

import mtls_auth
import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import (
    INSECURE_SKIP_VERIFY,
    ClientCertificate,
    InsecureTransportError,
    MtlsAuthError,
    TokenRequestError,
)
from mtls_auth._retry import RetryPolicy
from mtls_auth._tls import build_ssl_context
from mtls_auth.testing import PKI, Credential, TokenServer
from mtls_auth.testing._server import _load_cert_chain
from mtls_auth.testing.plugin import CLIENT_ID

ONE_TRY = RetryPolicy(attempts=1)
DISCOVERY = "/.well-known/openid-configuration"  # served without a bearer token


@pytest.fixture(scope="module")
def impostor_pki() -> PKI:
    """A second, unrelated CA hierarchy with its own localhost server certificate."""
    return PKI()


@pytest.fixture
def impostor(
    mtls_pki: PKI, impostor_pki: PKI, mtls_client_certificate: Credential
) -> Iterator[TokenServer]:
    """A localhost server presenting a certificate of the impostor CA.

    It does not insist on a client certificate, so a plain client that trusts
    the impostor CA gets through: the controls below prove the environment's
    bundle is in effect.
    """
    with TokenServer(
        mtls_pki, server_credential=impostor_pki.server, require_client_cert=False
    ) as srv:
        srv.register_client(CLIENT_ID, mtls_client_certificate)
        yield srv


@pytest.fixture
def client(client: Client) -> Client:
    """The shared three-client harness: one attempt per token fetch, a 5 s deadline."""
    return client.bind(retry=ONE_TRY, timeout=5.0)


_TLS_FAILURES = (requests.exceptions.SSLError, httpx.ConnectError, ssl.SSLError)


def _get(client: Client, url: str, trust: Any, **options: Any) -> int:
    """GET `url` (no auth) through the client's MtlsAdapter / (Async)MtlsTransport trusting
    `trust`; `options` as for `Client.call`. Returns the status code, raises what it raised."""
    return client.call(None, url, verify=trust, **options).unwrap()


def _fetch_token(client: Client, token_url: str, verify: Any) -> None:
    """One token fetch from `token_url` through a new auth's own client, trusting `verify`."""
    client.fetch_token(client.auth(token_url=token_url, verify=verify))


# -- verification cannot be switched off ------------------------------------------------------


@pytest.mark.parametrize("verify", [False, None])
def test_verify_false_is_refused_everywhere(
    verify: Any, certificate: ClientCertificate, mtls_client_certificate: Credential
) -> None:
    chain, key = mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    makers = {
        "build_ssl_context": lambda: build_ssl_context(verify),
        "ClientCertificate.ssl_context": lambda: certificate.ssl_context(verify),
        "MtlsAdapter": lambda: mrequests.MtlsAdapter(chain, key, verify=verify),
        "MtlsAdapter(ClientCertificate)": lambda: mrequests.MtlsAdapter(certificate, verify=verify),
        "MtlsTransport": lambda: mhttpx.MtlsTransport(chain, key, verify=verify),
        "AsyncMtlsTransport": lambda: mhttpx.AsyncMtlsTransport(chain, key, verify=verify),
    }
    for name, make in makers.items():
        with pytest.raises(InsecureTransportError, match="INSECURE_SKIP_VERIFY") as info:
            make()
        assert "verify=False" in str(info.value), name


@pytest.mark.parametrize("construct", ["requests", "httpx", "requests-binding", "httpx-binding"])
def test_verify_false_is_refused_by_the_auth_constructors(
    construct: str,
    mtls_server: TokenServer,
    mtls_client_certificate: Credential,
    mtls_xsuaa_binding: dict[str, Any],
) -> None:
    binding = mtls_xsuaa_binding
    cls = mrequests.MtlsOAuth2 if construct.startswith("requests") else mhttpx.MtlsOAuth2

    def construct_it() -> object:
        if construct.endswith("binding"):
            return cls.from_binding(binding, verify=False)
        return cls(
            mtls_server.token_url,
            CLIENT_ID,
            mtls_client_certificate.chain_pem,
            mtls_client_certificate.key_pem,
            verify=False,
        )

    with pytest.raises(InsecureTransportError):
        construct_it()


@pytest.mark.parametrize("verify", [False, None])
def test_verify_false_auth_never_sends_a_token_request(
    client: Client, verify: Any, mtls_server: TokenServer
) -> None:
    # Whenever the refusal comes, it comes before anything leaves unverified.
    def fetch() -> None:
        _fetch_token(client, mtls_server.token_url, verify)

    def transport() -> object:
        # auth.adapter() / auth.transport() / auth.async_transport()
        return client.presenter(client.auth(verify=verify))

    with pytest.raises(InsecureTransportError, match="INSECURE_SKIP_VERIFY"):
        fetch()
    assert mtls_server.token_request_count == 0
    assert mtls_server.handshake_failures == []  # not even a TLS handshake
    with pytest.raises(InsecureTransportError):
        transport()


def test_insecure_skip_verify_is_one_loud_object() -> None:
    assert mtls_auth.INSECURE_SKIP_VERIFY is INSECURE_SKIP_VERIFY
    assert repr(INSECURE_SKIP_VERIFY) == "INSECURE_SKIP_VERIFY"
    assert type(INSECURE_SKIP_VERIFY)() is INSECURE_SKIP_VERIFY
    import pickle

    assert pickle.loads(pickle.dumps(INSECURE_SKIP_VERIFY)) is INSECURE_SKIP_VERIFY
    for spelling in ("false", "False", "0", "no", "off", "", "INSECURE_SKIP_VERIFY"):
        # Strings from configuration files are paths or PEM, never a switch.
        with pytest.raises(MtlsAuthError):
            build_ssl_context(spelling)


def test_insecure_skip_verify_context_and_warning(
    certificate: ClientCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    context = certificate.ssl_context(INSECURE_SKIP_VERIFY)
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    warned = [
        r
        for r in caplog.records
        if r.name.startswith("mtls_auth.")
        and r.levelno == logging.WARNING
        and "INSECURE_SKIP_VERIFY" in r.getMessage()
    ]
    assert len(warned) == 1
    assert "NOT verified" in warned[0].getMessage()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_insecure_skip_verify_reaches_a_server_whose_ca_is_not_given(
    client: Client,
    impostor: TokenServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_auth")
    # Without the switch (system trust) the server is refused...
    with pytest.raises(TokenRequestError) as info:
        _fetch_token(client, impostor.token_url, True)
    assert info.value.kind == "tls_server"
    with pytest.raises(_TLS_FAILURES):
        _get(client, impostor.url + DISCOVERY, True)
    assert not any("INSECURE_SKIP_VERIFY" in r.getMessage() for r in caplog.records)
    # ...with it, the token fetch and the transport get through, loudly.
    _fetch_token(client, impostor.token_url, INSECURE_SKIP_VERIFY)
    assert impostor.tokens_issued == 1
    status = _get(client, impostor.url + DISCOVERY, INSECURE_SKIP_VERIFY)
    assert status == 200
    warned = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "INSECURE_SKIP_VERIFY" in r.getMessage()
    ]
    assert len(warned) >= 2  # one per context: the token client's and the transport's


# -- hardening of every context ---------------------------------------------------------------


def _assert_hardened(context: ssl.SSLContext) -> None:
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.minimum_version != ssl.TLSVersion.MINIMUM_SUPPORTED
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & getattr(ssl, "OP_NO_RENEGOTIATION", 0) == getattr(
        ssl, "OP_NO_RENEGOTIATION", 0
    )


@pytest.mark.parametrize("verify", ["ca_pem", "ca_file", "system"])
def test_every_context_is_hardened(
    verify: str, certificate: ClientCertificate, mtls_pki: PKI, tmp_path: Path
) -> None:
    trust: Any = {"ca_pem": mtls_pki.root_pem, "system": True}.get(verify)
    if verify == "ca_file":
        trust = tmp_path / "ca.pem"
        trust.write_text(mtls_pki.root_pem)
    for context in (certificate.ssl_context(trust), build_ssl_context(trust)):
        _assert_hardened(context)
        assert context.check_hostname is True
        assert context.protocol == ssl.PROTOCOL_TLS_CLIENT


def test_contexts_stay_hardened_after_urllib3_and_httpcore_used_them(
    mtls_server: TokenServer, mtls_client_certificate: Credential
) -> None:
    server = mtls_server
    chain, key = mtls_client_certificate.chain_pem, mtls_client_certificate.key_pem
    adapter = mrequests.MtlsAdapter(chain, key, verify=server.ca_pem)
    with requests.Session() as session:
        session.mount("https://", adapter)
        assert session.get(server.url + DISCOVERY, timeout=10).status_code == 200
        (pool,) = adapter.poolmanager.pools._container.values()
        context = (
            pool.conn_kw.get("ssl_context") or adapter.poolmanager.connection_pool_kw["ssl_context"]
        )
        _assert_hardened(context)
        connection = pool.pool.queue[-1] if pool.pool is not None else None
        if connection is not None and connection.sock is not None:
            assert connection.sock.version() in ("TLSv1.2", "TLSv1.3")
    transport = mhttpx.MtlsTransport(chain, key, verify=server.ca_pem)
    with httpx.Client(transport=transport) as client:
        response = client.get(server.url + DISCOVERY)
        assert response.status_code == 200
        assert response.extensions["network_stream"].get_extra_info("ssl_object").version() in (
            "TLSv1.2",
            "TLSv1.3",
        )
        _assert_hardened(transport._transports.get()._pool._ssl_context)


# -- TLS versions on the wire -----------------------------------------------------------------


class _BareTLSServer:
    """Accepts TLS with a given server context and answers any request with 200."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.versions: list[str | None] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self.versions.append(conn.version())
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                body = b'{"ok": true}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        except (OSError, ssl.SSLError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            raw.close()

    def close(self) -> None:
        self._stop.set()
        # Wake the accept() at once (rather than at its 0.2 s timeout).
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            pass
        self._thread.join(5)
        self.listener.close()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


def _server_context(pki: PKI, maximum: ssl.TLSVersion | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if maximum is not None and maximum < ssl.TLSVersion.TLSv1_2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
    elif maximum is not None:
        context.maximum_version = maximum
    _load_cert_chain(context, pki.server.chain_pem, pki.server.private_key)
    return context


@contextlib.contextmanager
def bare_tls_server(pki: PKI, maximum: ssl.TLSVersion | None) -> Iterator[_BareTLSServer]:
    server = _BareTLSServer(_server_context(pki, maximum))
    try:
        yield server
    finally:
        server.close()


def _handshake(context: ssl.SSLContext, port: int) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        return conn.version()


@pytest.fixture
def tls11_server(mtls_pki: PKI) -> Iterator[_BareTLSServer]:
    """A server that speaks TLS 1.0/1.1 only, with a control proving it does."""
    try:
        server_cm = bare_tls_server(mtls_pki, ssl.TLSVersion.TLSv1_1)
        server = server_cm.__enter__()
    except (ssl.SSLError, ValueError) as exc:
        pytest.skip(f"this OpenSSL cannot run a TLS 1.1 server at all: {exc}")
    try:
        control = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        control.load_verify_locations(cadata=mtls_pki.root_pem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            control.set_ciphers("DEFAULT:@SECLEVEL=0")
            control.minimum_version = ssl.TLSVersion.TLSv1
        try:
            version = _handshake(control, server.port)
        except (ssl.SSLError, OSError) as exc:
            pytest.skip(
                f"TLS 1.1 is disabled in this OpenSSL build even at @SECLEVEL=0 ({exc}); "
                "only the contexts' minimum_version is checked (test_every_context_is_hardened)"
            )
        assert version in ("TLSv1", "TLSv1.1")
        deadline = time.monotonic() + 5
        while not server.versions and time.monotonic() < deadline:
            time.sleep(0.01)  # the server thread records the control's handshake
        assert server.versions == [version]
        server.versions.clear()
        server.failures.clear()
        yield server
    finally:
        server_cm.__exit__(None, None, None)


def test_tls_1_1_server_is_refused_by_the_context_itself(
    tls11_server: _BareTLSServer, certificate: ClientCertificate, mtls_pki: PKI
) -> None:
    context = certificate.ssl_context(mtls_pki.root_pem)
    # Lower the cipher security level as far as the control client: only the
    # context's minimum_version is left to refuse.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as info:
        _handshake(context, tls11_server.port)
    assert "VERSION" in str(info.value).upper() or "PROTOCOL" in str(info.value).upper()


def test_tls_1_1_server_is_refused_by_every_client(
    client: Client, tls11_server: _BareTLSServer, mtls_pki: PKI
) -> None:
    with pytest.raises(_TLS_FAILURES):
        _get(client, tls11_server.url + "/", mtls_pki.root_pem)
    with pytest.raises(TokenRequestError) as info:
        _fetch_token(client, tls11_server.url + "/oauth/token", mtls_pki.root_pem)
    assert info.value.kind == "other", (info.value.kind, str(info.value))  # not retried
    assert tls11_server.versions == []  # no handshake ever completed


def test_tls_1_2_only_server_is_fine(client: Client, mtls_pki: PKI) -> None:
    with bare_tls_server(mtls_pki, ssl.TLSVersion.TLSv1_2) as server:
        assert _get(client, server.url + "/", mtls_pki.root_pem) == 200
        assert server.versions == ["TLSv1.2"]


# -- only the given CA ------------------------------------------------------------------------


@pytest.fixture
def hostile_env(impostor_pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """REQUESTS_CA_BUNDLE, SSL_CERT_FILE, CURL_CA_BUNDLE: certifi's CAs plus the impostor's."""
    certifi = pytest.importorskip("certifi")
    bundle = tmp_path / "hostile-bundle.pem"
    bundle.write_text(
        Path(certifi.where()).read_text() + impostor_pki.root_pem + impostor_pki.intermediate_pem
    )
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return bundle


def test_hostile_bundle_is_in_effect_for_plain_clients(
    hostile_env: Path, impostor: TokenServer
) -> None:
    # The controls: a client that honours the environment trusts the impostor.
    assert requests.get(impostor.url + DISCOVERY, timeout=10).status_code == 200
    with httpx.Client() as client:
        assert client.get(impostor.url + DISCOVERY).status_code == 200
    assert _handshake(ssl.create_default_context(), impostor.port) in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("client", ["requests"], indirect=True)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"library_verify": False},
        {"request_options": {"verify": False}},
        {"request_options": {"verify": "bundle"}},
    ],
    ids=["plain", "session.verify=False", "request-verify=False", "request-verify=bundle"],
)
def test_requests_adapter_trusts_only_its_ca(
    client: Client,
    options: dict[str, Any],
    hostile_env: Path,
    impostor: TokenServer,
    mtls_server: TokenServer,
) -> None:
    # library_verify is Session.verify; request_options go to session.request().
    if options.get("request_options", {}).get("verify") == "bundle":
        options = {"request_options": {"verify": str(hostile_env)}}
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(client, impostor.url + DISCOVERY, mtls_server.ca_pem, **options)
    assert _get(client, mtls_server.url + DISCOVERY, mtls_server.ca_pem, **options) == 200


@pytest.mark.parametrize("client", ["httpx-sync", "httpx-async"], indirect=True)
@pytest.mark.parametrize("client_verify", [None, False], ids=["plain", "client-verify=False"])
def test_httpx_transport_trusts_only_its_ca(
    client: Client,
    client_verify: Any,
    hostile_env: Path,
    impostor: TokenServer,
    mtls_server: TokenServer,
) -> None:
    # library_verify is httpx.Client(verify=...) / httpx.AsyncClient(verify=...).
    options = {} if client_verify is None else {"library_verify": client_verify}
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(client, impostor.url + DISCOVERY, mtls_server.ca_pem, **options)
    assert _get(client, mtls_server.url + DISCOVERY, mtls_server.ca_pem, **options) == 200


def test_token_fetch_trusts_only_its_ca(
    client: Client,
    hostile_env: Path,
    impostor: TokenServer,
    mtls_server: TokenServer,
) -> None:
    with pytest.raises(TokenRequestError) as info:
        _fetch_token(client, impostor.token_url, mtls_server.ca_pem)
    assert info.value.kind == "tls_server"
    assert impostor.token_request_count == 0
    assert impostor.tokens_issued == 0
    _fetch_token(client, mtls_server.token_url, mtls_server.ca_pem)
    assert mtls_server.tokens_issued == 1


def test_ca_file_given_as_verify_is_the_only_anchor(
    client: Client,
    hostile_env: Path,
    impostor: TokenServer,
    mtls_server: TokenServer,
    tmp_path: Path,
) -> None:
    ca_file = tmp_path / "private-ca.pem"
    ca_file.write_text(mtls_server.ca_pem)
    with pytest.raises(TokenRequestError) as info:
        _fetch_token(client, impostor.token_url, str(ca_file))
    assert info.value.kind == "tls_server"
    with pytest.raises(_TLS_FAILURES):
        _get(client, impostor.url + DISCOVERY, ca_file)
    assert _get(client, mtls_server.url + DISCOVERY, ca_file) == 200


# -- hostname and expiry survive the HTTP libraries -------------------------------------------


@pytest.mark.parametrize("bad", ["wrong-host", "expired"])
def test_bad_server_certificates_are_refused(
    client: Client,
    bad: str,
    mtls_pki: PKI,
    mtls_client_certificate: Credential,
) -> None:
    credential = mtls_pki.wrong_host_server() if bad == "wrong-host" else mtls_pki.expired_server()
    with TokenServer(mtls_pki, server_credential=credential) as bad_server:
        bad_server.register_client(CLIENT_ID, mtls_client_certificate)
        with pytest.raises(_TLS_FAILURES):
            _get(client, bad_server.url + DISCOVERY, mtls_pki.root_pem)
        with pytest.raises(_TLS_FAILURES):
            # requests' Session.verify, httpx's Client(verify=False)
            _get(client, bad_server.url + DISCOVERY, mtls_pki.root_pem, library_verify=False)
        with pytest.raises(TokenRequestError) as info:
            _fetch_token(client, bad_server.token_url, mtls_pki.root_pem)
        assert info.value.kind == "tls_server"
        assert bad_server.token_request_count == 0


# -- no key log -------------------------------------------------------------------------------


def test_sslkeylogfile_is_not_honoured(
    client: Client,
    mtls_server: TokenServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = mtls_server
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    _fetch_token(client, server.token_url, server.ca_pem)
    assert _get(client, server.url + DISCOVERY, server.ca_pem) == 200
    assert not keylog.exists() or keylog.read_text() == ""
    # The control: a context made the usual way would have written the secrets.
    assert _handshake(_with_ca(ssl.create_default_context(), server.ca_pem), server.port) in (
        "TLSv1.2",
        "TLSv1.3",
    )
    assert keylog.exists()
    assert "CLIENT_" in keylog.read_text()


def _with_ca(context: ssl.SSLContext, ca_pem: str) -> ssl.SSLContext:
    context.load_verify_locations(cadata=ca_pem)
    return context
