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
The Credential Store client (`CredstoreAdapter`, `credstore_session`) lives in
`mtls_auth.credstore.requests`; its names are importable from here too.
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

import functools
import ssl
import threading
from typing import TYPE_CHECKING, Any

from . import _after_fork as after_fork
from . import _aio as aio
from ._auth import AuthFacade
from ._certificate import CertificateSource, ClientCertificate
from ._client import ClientState, TokenClient
from ._http import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, TransportFailure
from ._http import classify_failure as _classify
from ._idle import IdleRelease
from ._redact import Secret, guarded, redact
from ._rotation import CertificateFeed, PerCertificate, SharedContexts, shared_contexts
from ._tls import Verify
from ._token import Token
from ._watchdog import SocketRegistry, watchdog

if TYPE_CHECKING:
    from .credstore.requests import CredstoreAdapter as CredstoreAdapter
    from .credstore.requests import CredstoreSession as CredstoreSession
    from .credstore.requests import credstore_session as credstore_session

__all__ = ["MtlsAdapter", "MtlsOAuth2"]

_CREDSTORE_NAMES = frozenset({"CredstoreAdapter", "CredstoreSession", "credstore_session"})


def __getattr__(name: str) -> Any:
    # The Credential Store client moved to mtls_auth.credstore.requests; these
    # names stay importable from here (loaded on first use: it imports us).
    if name in _CREDSTORE_NAMES:
        from .credstore import requests as credstore_requests

        return getattr(credstore_requests, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: urllib3 1.x wraps sockets without a server name when the host is an IP
#: address, which a context with check_hostname on refuses ("check_hostname
#: requires server_hostname"); it matches host names (and IP addresses) against
#: the certificate itself whenever the context does not. urllib3 2 passes the
#: name and leaves the check to the context.
_URLLIB3_MATCHES_HOSTNAMES = getattr(urllib3, "__version__", "2").split(".")[0] == "1"


def _for_urllib3(context: ssl.SSLContext) -> None:
    if _URLLIB3_MATCHES_HOSTNAMES:
        # Still verified: CERT_REQUIRED stays, and urllib3 1.x compares the
        # certificate's names with the host after every handshake.
        context.check_hostname = False


def urllib3_context(contexts: SharedContexts) -> ssl.SSLContext:
    """The "urllib3" context of `contexts`, as this urllib3 version needs it."""
    return contexts.get("urllib3", _for_urllib3)


class MtlsAdapter(HTTPAdapter):
    """An `HTTPAdapter` whose connections present a client certificate.

    `certificate` is PEM text (then `key` is the PEM private key) or a
    `ClientCertificate`: the adapter presents that certificate for its whole
    life. `auth.adapter()` makes one that follows `auth`'s certificate instead,
    through every rotation: new connections use the new certificate, requests
    in flight finish on theirs.

    `verify` (True for the system store, a CA bundle path or CA PEM text) is the
    only trust anchor: requests' own `verify=`, `REQUESTS_CA_BUNDLE`,
    `CURL_CA_BUNDLE` and certifi are ignored for URLs this adapter serves, so a
    private CA is never widened to the public ones, and `verify=False` on a
    request cannot turn verification off. Works through proxies: the tunnel's
    TLS to the origin presents the certificate; the proxy never sees it.
    """

    @guarded
    def __init__(
        self,
        certificate: CertificateSource | CertificateFeed,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        verify: Verify = True,
        **kwargs: Any,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        # urllib3 sets verify mode and ALPN on the context it is given, always
        # alike: adapters of one auth share its "urllib3" context.
        self._contexts = shared_contexts(certificate, key, password, verify)
        self._ssl_context = urllib3_context(self._contexts)
        self._swap_lock = threading.Lock()
        super().__init__(**kwargs)
        after_fork.register(self)

    def _after_fork(self) -> None:
        # The parent's pooled connections are forgotten, never reused here.
        self._swap_lock = threading.Lock()
        self.init_poolmanager(
            self._pool_connections,  # type: ignore[attr-defined]
            self._pool_maxsize,  # type: ignore[attr-defined]
            block=self._pool_block,  # type: ignore[attr-defined]
        )
        self.proxy_manager = {}

    @property
    def certificate(self) -> ClientCertificate:
        """The certificate new connections present."""
        return self._contexts.certificate

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        """Pools built on this adapter's SSLContext (requests calls this; not needed by users)."""
        pool_kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **pool_kwargs)

    @guarded  # an error leaves no bearer token in the frames below
    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        """Send the request over a connection presenting the current certificate.

        After a rotation, new connections present the new certificate.
        """
        context = urllib3_context(self._contexts)
        if context is not self._ssl_context:
            self._use(context)
        return super().send(request, *args, **kwargs)

    def _use(self, context: Any) -> None:
        """Switch to pools built on `context` (the certificate rotated)."""
        with self._swap_lock:
            if context is self._ssl_context:
                return
            self._ssl_context = context
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

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """A proxy manager whose tunnelled TLS to the origin presents the certificate."""
        proxy_kwargs["ssl_context"] = self._ssl_context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Keep the adapter's own trust.

        requests' ``verify=`` and ``cert=`` can neither replace nor disable it.
        """
        # requests would set ca_certs/cert_reqs on the pool from verify= and the
        # environment; the adapter's SSLContext already says everything.
        return None

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        """The pool key of a request: the adapter's SSLContext.

        So a pool built for another certificate is never reused.
        """
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        # No ca_certs / cert_reqs / cert_file: the pool keeps our ssl_context.
        return host_params, {}

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} certificate={self.certificate!r}>"
        except Exception:  # noqa: BLE001 - repr must never raise (half-built adapter)
            return f"<{type(self).__name__} (not constructed)>"

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


class _RequestsSender:
    """Talks to the token endpoint of one client with a pooled `requests.Session`."""

    def __init__(self, client: TokenClient) -> None:
        self._contexts = client.contexts
        self._token_url = client.state.token_url
        self._sessions = PerCertificate(client, self._session, requests.Session.close)
        self._idle = IdleRelease(self._sessions.close)

    def idle_for(self, in_loop: bool) -> IdleRelease:
        return self._idle  # async fetches run the sync exchange in a thread

    def _session(self, certificate: ClientCertificate) -> requests.Session:
        session = requests.Session()
        # No netrc, no REQUESTS_CA_BUNDLE: the adapter's context is the whole
        # TLS configuration. Proxies still come from the environment, NO_PROXY
        # respected.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(self._token_url))
        session.mount("https://", _TokenAdapter(self._contexts))
        session.mount("http://", HTTPAdapter(max_retries=0))
        return session

    def send(self, request: HttpRequest, state: ClientState) -> HttpResponse | TransportFailure:
        session = self._sessions.get()
        adapter = session.get_adapter("https://")
        registry = adapter.sockets if isinstance(adapter, _TokenAdapter) else SocketRegistry()
        # The whole attempt, headers and body, within request.timeout: a
        # watchdog severs the connection of a server that drips bytes.
        with watchdog(registry, request.timeout) as fired:
            outcome = _exchange(session, request)
        if fired.is_set():
            return TransportFailure("timeout", f"no complete answer within {request.timeout:.1f}s")
        return outcome

    async def asend(
        self, request: HttpRequest, state: ClientState
    ) -> HttpResponse | TransportFailure:
        # requests has no async API: the blocking exchange runs in a worker thread.
        return await aio.off_loop(functools.partial(self.send, request, state))

    def close(self) -> None:
        self._sessions.close()


def _exchange(session: requests.Session, request: HttpRequest) -> HttpResponse | TransportFailure:
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
    except Exception as exc:  # noqa: BLE001 - translated, see _failure
        return _failure(exc)
    # A body cut short of its Content-Length is a broken connection, not a
    # short answer: urllib3 2 says so by default, urllib3 1.x only when told.
    raw = getattr(response, "raw", None)
    if raw is not None and hasattr(raw, "enforce_content_length"):
        raw.enforce_content_length = True
    with response:
        try:
            body = _read_capped(response)
        except Exception as exc:  # noqa: BLE001 - translated, see _failure
            return _failure(exc)
        if body is None:
            return TransportFailure("too_large", f"over {MAX_RESPONSE_BYTES} bytes")
        headers = {k.lower(): v for k, v in response.headers.items()}
        return HttpResponse(response.status_code, headers, body)


def _failure(exc: Exception) -> TransportFailure:
    if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError, OSError)):
        return _classify(exc, timed_out=isinstance(exc, requests.Timeout))
    # Anything else requests or urllib3 raised (a ValueError on a URL it could
    # not handle): still a failed attempt, never a raw error.
    return TransportFailure("other", f"{type(exc).__name__} from requests", exc)


def _read_capped(response: requests.Response) -> bytes | None:
    chunks = []
    size = 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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

    @classmethod
    def _new_sender(cls, client: TokenClient) -> _RequestsSender:
        return _RequestsSender(client)

    def adapter(self, **kwargs: Any) -> MtlsAdapter:
        """An `MtlsAdapter` presenting this auth's certificate, following its rotations."""
        return MtlsAdapter(self._live().contexts, **kwargs)

    # -- signing -------------------------------------------------------------------

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self._live().destinations.check_url(request.url or "")
        token = self._token()
        request.headers["Authorization"] = token.authorization()
        # The 401 hook carries the token it goes with. requests hands the hooks
        # (and nothing else of ours) on to the copy it makes for a redirect, so
        # a 401 after a same-origin redirect is still seen as ours. hooks
        # ["response"] is the list register_hook() appends to, without its
        # isinstance(hook, Callable) ABC check on every request.
        request.hooks["response"].append(functools.partial(self._handle_401, token))
        return request

    def _handle_401(
        self, used: Token, response: requests.Response, **kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401:
            return response
        sent = response.request
        # Only a request still carrying the token this hook signed it with: a
        # redirect to another host (which requests stripped of Authorization)
        # answering 401 must not get the token put back, a request another auth
        # object signed last is that object's business, and the one resend
        # below carries another token, so it is never resent again.
        if not used.matches(sent.headers.get("Authorization")):
            return response
        client = self._live()
        if not client.invalidate(self._key(), used) or not _rewind(sent):
            return response
        # The refused token leaves the request before the next one is asked
        # for: if that fails, no frame holding the request shows it.
        del sent.headers["Authorization"]
        client.destinations.check_url(sent.url or "")
        token = client.token(self._request)
        # Let the connection go back to the pool before the second attempt.
        _ = response.content
        response.close()
        retry = sent.copy()
        requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
            retry._cookies,  # type: ignore[attr-defined]
            sent,
            response.raw,
        )
        retry.prepare_cookies(retry._cookies)  # type: ignore[attr-defined]
        retry.headers["Authorization"] = token.authorization()
        second = response.connection.send(retry, **kwargs)
        if second.status_code == 401:
            client.refused_after_retry(token)
        second.history.append(response)
        second.request = retry
        return second

    def __enter__(self) -> MtlsOAuth2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
