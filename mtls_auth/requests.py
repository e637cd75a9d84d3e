"""mtls-auth for `requests`: `MtlsOAuth2` signs requests, `MtlsAdapter` presents the certificate.

::

    import requests
    from mtls_auth.requests import MtlsOAuth2, MtlsAdapter

    session = requests.Session()
    session.auth = MtlsOAuth2(token_url, client_id, certificate_pem, key_pem)
    # for resources that only accept certificate-bound tokens (RFC 8705):
    session.mount("https://api.example/", MtlsAdapter(certificate_pem, key_pem))

Tokens are fetched over mTLS with an internal, pooled session, cached, and
refreshed before they expire by exactly one thread while the others go on.
"""

from __future__ import annotations

try:
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter
except ImportError as exc:  # pragma: no cover - exercised by the core-only tox env
    raise ImportError(
        "mtls_auth.requests needs requests and urllib3: pip install mtls-auth[requests]"
    ) from exc

import threading
import urllib.parse
from typing import Any

from ._auth import (
    AuthCore,
    AuthFacade,
    AuthState,
    CertificateSource,
    coerce_certificate,
)
from ._binding import BindingInput, Redacted
from ._certificate import Secret, Verify, redact
from ._credstore import JOSE_CONTENT_TYPE, PayloadCipher, open_response, seal_request
from ._errors import BindingError, PayloadError
from ._token import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, TransportFailure
from ._token import classify_failure as _classify
from ._watchdog import SocketRegistry, watchdog

__all__ = [
    "CredstoreAdapter",
    "CredstoreSession",
    "MtlsAdapter",
    "MtlsOAuth2",
    "credstore_session",
]


class MtlsAdapter(HTTPAdapter):
    """An `HTTPAdapter` whose connections present a client certificate.

    `verify` (True for the system store, a CA bundle path or CA PEM text) is the
    only trust anchor: requests' own `verify=`, `REQUESTS_CA_BUNDLE`,
    `CURL_CA_BUNDLE` and certifi are ignored for URLs this adapter serves, so a
    private CA is never widened to the public ones, and `verify=False` on a
    request cannot turn verification off. Works through proxies: the tunnel's
    TLS to the origin presents the certificate; the proxy never sees it.
    """

    def __init__(
        self,
        certificate: CertificateSource,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        self.certificate = coerce_certificate(certificate, key, password)
        self._verify = verify
        # One context per adapter: urllib3 mutates the context it is given.
        self._ssl_context = self.certificate.ssl_context(verify)
        self._follow: AuthCore | None = None
        self._generation = 0
        self._swap_lock = threading.Lock()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **pool_kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        follow = self._follow
        if follow is not None and follow.generation != self._generation:
            self._follow_rotation(follow)
        return super().send(request, *args, **kwargs)

    def _follow_rotation(self, follow: AuthCore) -> None:
        with self._swap_lock:
            state = follow.state  # one read: certificate and generation agree
            if state.generation == self._generation:
                return
            generation, certificate = state.generation, state.certificate
            self.certificate = certificate
            self._ssl_context = certificate.ssl_context(self._verify)
            # New pools with the new context. The old manager is not cleared:
            # a request another thread already routed to one of its pools must
            # finish there (older urllib3 closes pools on clear()); it goes with
            # the garbage collector.
            self.init_poolmanager(
                self._pool_connections,  # type: ignore[attr-defined]
                self._pool_maxsize,  # type: ignore[attr-defined]
                block=self._pool_block,  # type: ignore[attr-defined]
            )
            self.proxy_manager = {}
            self._generation = generation

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests would set ca_certs/cert_reqs on the pool from verify= and the
        # environment; the adapter's SSLContext already says everything.
        return None

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        # No ca_certs / cert_reqs / cert_file: the pool keeps our ssl_context.
        return host_params, {}

    def __repr__(self) -> str:
        return f"<MtlsAdapter certificate={self.certificate!r}>"

    def __getstate__(self) -> Any:
        raise TypeError("MtlsAdapter holds a private key and cannot be pickled")


class _TokenAdapter(MtlsAdapter):
    """The internal token session's adapter: records its sockets for the watchdog."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sockets = SocketRegistry()
        super().__init__(*args, **kwargs)

    def _record(self, manager: Any) -> Any:
        registry = self.sockets
        base_pool = manager.pool_classes_by_scheme["https"]

        class _Connection(base_pool.ConnectionCls):  # type: ignore[misc, name-defined]
            def connect(self) -> None:
                super().connect()
                registry.add(self.sock)

        class _Pool(base_pool):  # type: ignore[misc, valid-type]
            ConnectionCls = _Connection

        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _Pool}
        return manager

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        super().init_poolmanager(*args, **pool_kwargs)
        self._record(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        fresh = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        return self._record(manager) if fresh else manager


class MtlsOAuth2(AuthFacade, requests.auth.AuthBase):
    """OAuth2 client credentials over mTLS, as a requests `auth=`.

    `certificate` is PEM text (then `key` is the PEM private key) or a
    `ClientCertificate`. `namespace` becomes the Credential Store form field
    `credstore_namespace`; `scope` and `params` are added to the token request.
    `verify` is the trust for the token endpoint. `timeout` bounds one token
    fetch, retries included. `leeway` is how early a token is refreshed (clamped
    for short lifetimes). The bearer token only goes over https, to any host or
    only to `allowed_hosts`; `allow_http_loopback=True` also permits plain http
    to localhost, for local development.

    On a 401 the token that was used is dropped and the request is sent once
    more with a new one, when its body can be replayed.
    """

    def _setup(self, core: AuthCore) -> None:
        self._core = core
        self._session_lock = threading.Lock()
        self._session: tuple[int, requests.Session] | None = None
        self._retired: list[requests.Session] = []

    def adapter(self, **kwargs: Any) -> MtlsAdapter:
        """An `MtlsAdapter` presenting this auth's certificate, following its rotations."""
        adapter = MtlsAdapter(self._core.certificate, verify=self._core.verify, **kwargs)
        adapter._follow, adapter._generation = self._core, self._core.generation
        return adapter

    # -- signing -------------------------------------------------------------------

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self._core.destinations.check_url(request.url or "")
        token = self._core.fresh_token() or self._core.token(self._send)
        request.headers["Authorization"] = token.authorization()
        # Which token this request carries. PreparedRequest.copy() (used for
        # redirects) does not keep it, so a redirected request never has it.
        request._mtls_auth_token = token  # type: ignore[attr-defined]
        request._mtls_auth_owner = self._core  # type: ignore[attr-defined]
        # hooks["response"] is the list register_hook() appends to, without its
        # isinstance(hook, Callable) ABC check on every request.
        request.hooks["response"].append(self._handle_401)
        return request

    def _handle_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        sent = response.request
        used = getattr(sent, "_mtls_auth_token", None)
        # Only the request we signed, still carrying our token: a redirect to
        # another host (which requests stripped of Authorization) answering 401
        # must not get the token put back, and a request another auth object
        # signed last is that object's business.
        if (
            used is None
            or getattr(sent, "_mtls_auth_owner", None) is not self._core
            or not used.matches(sent.headers.get("Authorization"))
        ):
            return response
        if getattr(sent, "_mtls_auth_retried", False):
            return response
        if not self._core.invalidate_token(used) or not _rewind(sent):
            return response
        # Let the connection go back to the pool before the second attempt.
        _ = response.content
        response.close()
        retry = sent.copy()
        retry._mtls_auth_retried = True  # type: ignore[attr-defined]
        requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
            retry._cookies, sent, response.raw  # type: ignore[attr-defined]
        )
        retry.prepare_cookies(retry._cookies)  # type: ignore[attr-defined]
        self._core.destinations.check_url(retry.url or "")
        token = self._core.token(self._send)
        retry.headers["Authorization"] = token.authorization()
        retry._mtls_auth_token = token  # type: ignore[attr-defined]
        retry._mtls_auth_owner = self._core  # type: ignore[attr-defined]
        second = response.connection.send(retry, **kwargs)
        if second.status_code == 401:
            self._core.refused_after_retry(token)
        second.history.append(response)
        second.request = retry
        return second

    # -- the token endpoint ----------------------------------------------------------

    def _token_session(self, state: AuthState) -> requests.Session:
        generation = state.generation
        current = self._session
        if current is None or current[0] != generation:
            with self._session_lock:
                current = self._session
                if current is None or current[0] != generation:
                    if current is not None:
                        # A fetch may still be using it; closed with the auth.
                        self._retired.append(current[1])
                    session = requests.Session()
                    # No netrc, no REQUESTS_CA_BUNDLE: the adapter's context is the
                    # whole TLS configuration. Proxies still come from the
                    # environment, NO_PROXY respected.
                    session.trust_env = False
                    session.proxies.update(
                        requests.utils.get_environ_proxies(self._core.spec.token_url)
                    )
                    adapter = _TokenAdapter(state.certificate, verify=self._core.verify)
                    session.mount("https://", adapter)
                    session.mount("http://", HTTPAdapter(max_retries=0))
                    current = self._session = (generation, session)
        return current[1]

    def _send(self, request: HttpRequest, state: AuthState) -> HttpResponse | TransportFailure:
        session = self._token_session(state)
        adapter = session.get_adapter("https://")
        registry = adapter.sockets if isinstance(adapter, _TokenAdapter) else SocketRegistry()
        # The whole attempt, headers and body, within request.timeout: a
        # watchdog severs the connection of a server that drips bytes.
        with watchdog(registry, request.timeout) as fired:
            outcome = self._exchange(session, request)
        if fired.is_set():
            return TransportFailure("timeout", f"no complete answer within {request.timeout:.1f}s")
        return outcome

    @staticmethod
    def _exchange(
        session: requests.Session, request: HttpRequest
    ) -> HttpResponse | TransportFailure:
        try:
            response = session.request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=request.timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout as exc:
            return _classify(exc, timed_out=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return _classify(exc)
        with response:
            try:
                body = _read_capped(response)
            except requests.Timeout as exc:
                return _classify(exc, timed_out=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                return _classify(exc)
            if body is None:
                return TransportFailure("too_large", f"over {MAX_RESPONSE_BYTES} bytes")
            headers = {k.lower(): v for k, v in response.headers.items()}
            return HttpResponse(response.status_code, headers, body)

    # -- lifecycle and presentation -------------------------------------------------------

    def close(self) -> None:
        """Close the internal session used for the token endpoint."""
        with self._session_lock:
            current, self._session = self._session, None
            sessions, self._retired = list(self._retired), []
        if current is not None:
            sessions.append(current[1])
        for session in sessions:
            session.close()

    def __enter__(self) -> MtlsOAuth2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()



def _read_capped(response: requests.Response) -> bytes | None:
    chunks = []
    size = 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _rewind(request: requests.PreparedRequest) -> bool:
    """Whether the request body can be sent again (rewinding a file body)."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    position = getattr(request, "_body_position", None)
    if isinstance(position, int) and hasattr(body, "seek"):
        try:
            requests.utils.rewind_body(request)
        except requests.exceptions.UnrewindableBodyError:
            return False
        return True
    return False


# -- Credential Store -----------------------------------------------------------------


class CredstoreAdapter(MtlsAdapter):
    """An `MtlsAdapter` that encrypts and decrypts Credential Store payloads.

    Request bodies leave as JWE (`application/jose`) encrypted with the
    `cipher`'s server key; `application/jose` responses are decrypted, so the
    caller sees `application/json` and `response.json()` just works. A
    successful response that is not encrypted raises `PayloadError` unless
    `require_encrypted=False`.
    """

    def __init__(
        self,
        certificate: CertificateSource,
        key: str | bytes | None = None,
        *,
        cipher: PayloadCipher,
        password: str | bytes | None = None,
        verify: Verify = True,
        require_encrypted: bool = True,
        **kwargs: Any,
    ) -> None:
        self.cipher = cipher
        self.require_encrypted = require_encrypted
        super().__init__(certificate, key, password=password, verify=verify, **kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        body = request.body
        if body is not None and not isinstance(body, (bytes, str)):
            raise PayloadError(
                "a streamed or file request body cannot be encrypted for Credential Store: "
                "pass bytes, str or json="
            )
        raw = body.encode("utf-8") if isinstance(body, str) else (body or b"")
        sealed = seal_request(self.cipher, raw, request.headers.get("Content-Type"))
        if sealed is not None:
            request.body = sealed
            request.headers["Content-Type"] = JOSE_CONTENT_TYPE
            request.headers["Content-Length"] = str(len(sealed))
        response = super().send(request, *args, **kwargs)
        opened = open_response(
            self.cipher,
            response.status_code,
            response.headers.get("Content-Type"),
            response.content,
            require_encrypted=self.require_encrypted,
        )
        if opened is not None:
            response._content = opened
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(opened))
            response.headers.pop("Content-Encoding", None)
            response.encoding = "utf-8"
        return response

    def __repr__(self) -> str:
        return f"<CredstoreAdapter certificate={self.certificate!r} cipher={self.cipher!r}>"


class CredstoreSession(requests.Session):
    """A `requests.Session` whose relative URLs resolve against `base_url`.

    Made by `credstore_session`: ``session.get("password", params={"name": "db"})``
    calls ``<base_url>/password``.
    """

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/") + "/"

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, bytes):
            url = url.decode("ascii")
        if "://" not in url:
            url = self.base_url + url.lstrip("/")
        return super().request(method, url, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<CredstoreSession {self.base_url} auth={self.auth!r}>"


def credstore_session(
    binding: BindingInput,
    *,
    namespace: str,
    verify: Verify = True,
    client_private_key: str | bytes | None = None,
    require_encrypted: bool = True,
    **kwargs: Any,
) -> CredstoreSession:
    """A session for the Credential Store credentials API in one call.

    From an ``oauth:mtls`` binding: the auth (tokens for `namespace`), payload
    encryption from the binding's ``encryption`` block (`client_private_key`
    when the instance was created with your own public key), and the binding's
    ``url`` as the base for relative URLs::

        with credstore_session("credstore-key.json", namespace="ns1") as s:
            s.post("password", json={"name": "db", "value": "s3cret"})
            s.get("password", params={"name": "db"}).json()["value"]
    """
    binding = Redacted(binding)  # frames captured on error show no key
    auth = MtlsOAuth2.from_binding(binding, namespace=namespace, verify=verify, **kwargs)
    parsed = auth._core.binding
    if parsed is None or parsed.kind != "credstore" or not parsed.url:
        raise BindingError(
            "credstore_session needs a Credential Store oauth:mtls binding with a url"
        )
    session = CredstoreSession(parsed.url)
    session.auth = auth
    if parsed.encryption or client_private_key is not None:
        cipher = PayloadCipher.from_encryption(
            parsed.encryption, client_private_key=client_private_key
        )
        adapter: MtlsAdapter = CredstoreAdapter(
            auth.certificate, cipher=cipher, verify=verify, require_encrypted=require_encrypted
        )
    else:
        adapter = MtlsAdapter(auth.certificate, verify=verify)
    adapter._follow, adapter._generation = auth._core, auth._core.generation
    session.mount(_origin(parsed.url), adapter)
    return session


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"
