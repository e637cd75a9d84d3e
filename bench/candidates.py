"""The clients being compared, built the same way apart from their auth.

Three families: ``requests``, ``httpx`` (sync ``httpx.Client``) and
``httpx-async`` (``httpx.AsyncClient``). In each, the TLS setup is identical:
``requests`` sessions mount an `mtls_auth.requests.MtlsAdapter` built from the
same `ClientCertificate`; httpx clients get an ``httpx.HTTPTransport`` /
``AsyncHTTPTransport`` with ``verify=cert.ssl_context(ca)``. Inside
`Setup.sharing` they even share that adapter / transport, hence the
connection. Every candidate requests the resource under `PATHS` distinct
paths in turn. Only the auth differs:

``baseline``
    The least an auth hook can do: set a fixed ``Authorization: Bearer <token>``
    header (a valid token fetched once, so the server answers 200 like for the
    others). A ``requests.auth.AuthBase`` subclass / an ``httpx.Auth`` with
    ``auth_flow``.
``ours``
    `mtls_auth.requests.MtlsOAuth2` / `mtls_auth.httpx.MtlsOAuth2`.
``authlib``
    ``OAuth2Session`` (requests) / ``OAuth2Client`` / ``AsyncOAuth2Client``
    (httpx) with ``grant_type="client_credentials"`` and ``token_endpoint``, so
    authlib fetches and renews the token itself (``ensure_active_token``);
    ``token_endpoint_auth_method="none"`` puts the client id in the form body.
``httpx-auth``
    ``httpx_auth.OAuth2ClientCredentials`` whose token requests go through an
    ``httpx.Client(verify=<mTLS SSLContext>)``. It insists on a client secret
    (sent as Basic auth, ignored by the server) and sends the client id only in
    that header, so the id is added to its form data.
``requests-oauthlib``
    ``OAuth2Session(client=BackendApplicationClient(...))``. It has no automatic
    fetch for client credentials: `RequestsOAuthlibUser` does what its docs
    suggest (fetch when there is no token, again on ``TokenExpiredError``;
    optionally `margin` seconds early).

A cold candidate (``cold=True``) starts without a token, so its first request
must fetch one. authlib has no lazy first fetch (``MissingTokenError``); it is
seeded with an already expired token, which sends it down its own renewal path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import sys
import time
import warnings
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, Callable

from loopback import Endpoint

from mtls_auth import ClientCertificate

FAMILIES = ("requests", "httpx", "httpx-async")
PEERS = ("authlib", "httpx-auth", "requests-oauthlib")
#: Which peers serve which family.
SUPPORTS = {
    "baseline": FAMILIES,
    "ours": FAMILIES,
    "authlib": FAMILIES,
    "httpx-auth": ("httpx", "httpx-async"),
    "requests-oauthlib": ("requests",),
}
_MODULES = {
    "authlib": "authlib",
    "httpx-auth": "httpx_auth",
    "requests-oauthlib": "requests_oauthlib",
}

#: Distinct resource paths each candidate cycles through, as a client of an API
#: with ids in its paths does: URL caches (the stdlib's urlsplit cache holds 128)
#: miss as they would in production, for every candidate alike.
PATHS = 1000

#: Refresh margins, in seconds, for the "tuned" peers of the 2-second-token run.
TUNED_MARGIN = 0.5


def installed(lib: str) -> bool:
    module = _MODULES.get(lib)
    return module is None or importlib.util.find_spec(module) is not None


def libraries(family: str) -> list[str]:
    """Candidates for `family` that are installed, baseline and ours first."""
    return [lib for lib, fams in SUPPORTS.items() if family in fams and installed(lib)]


@dataclass
class Client:
    """One candidate: `get()` sends one GET to the resource and returns the status."""

    lib: str
    family: str
    get: Callable[[], Any]  # returns int, or an awaitable of int for httpx-async
    close: Callable[[], Any]  # returns None, or an awaitable for httpx-async
    label: str = ""
    #: Called (and awaited, for httpx-async) once before use: a peer's first fetch.
    prepare: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.lib

    @property
    def is_async(self) -> bool:
        return self.family == "httpx-async"


class Setup:
    """The shared inputs: endpoint, certificate, and one valid token for the baseline."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.cert = ClientCertificate.from_pem(endpoint.cert_pem, endpoint.key_pem)
        self._fixed_token: str | None = None
        self._shared: dict[str, Any] | None = None

    def context(self) -> Any:
        return self.cert.ssl_context(self.endpoint.ca_pem)

    @property
    def fixed_token(self) -> str:
        """A valid access token, fetched once with plain httpx (no auth library)."""
        if self._fixed_token is None:
            import httpx

            ep = self.endpoint
            with httpx.Client(verify=self.context()) as client:
                response = client.post(
                    ep.token_url,
                    data={"grant_type": "client_credentials", "client_id": ep.client_id},
                )
                response.raise_for_status()
                self._fixed_token = response.json()["access_token"]
        return self._fixed_token

    @contextlib.contextmanager
    def sharing(self) -> Iterator[None]:
        """Candidates built meanwhile share one adapter / transport per family.

        They then send over the very same keep-alive connection, served by the
        same server thread: nothing but the auth differs between them. (Built
        separately, each has its own connection, and connections differ by a
        percent or so in speed, which would show up as a difference of auth.)
        """
        self._shared = {}
        try:
            yield
        finally:
            self._shared = None

    def adapter(self, pool: int = 10) -> Any:
        """The requests adapter presenting the client certificate."""
        from mtls_auth.requests import MtlsAdapter

        if self._shared is not None and "requests" in self._shared:
            return self._shared["requests"]
        adapter = MtlsAdapter(
            self.cert, verify=self.endpoint.ca_pem, pool_connections=4, pool_maxsize=pool
        )
        if self._shared is not None:
            self._shared["requests"] = adapter
        return adapter

    def transport(self, family: str, pool: int = 10) -> Any:
        """The httpx transport (async for httpx-async) presenting the certificate."""
        import httpx

        if self._shared is not None and family in self._shared:
            return self._shared[family]
        limits = httpx.Limits(max_connections=max(pool, 100), max_keepalive_connections=pool)
        transport: Any
        if family == "httpx-async":
            transport = httpx.AsyncHTTPTransport(verify=self.context(), limits=limits)
        else:
            transport = httpx.HTTPTransport(verify=self.context(), limits=limits)
        if self._shared is not None:
            self._shared[family] = transport
        return transport

    # -- building candidates --------------------------------------------------------

    def build(
        self,
        lib: str,
        family: str,
        *,
        cold: bool = False,
        margin: float | None = None,
        pool: int = 10,
        token_store: Any = None,
    ) -> Client:
        """Candidate `lib` in `family`.

        `margin` is the refresh margin for peers (authlib ``leeway``, httpx-auth
        ``early_expiry``, requests-oauthlib's early fetch); None keeps the
        library default. `pool` sizes the connection pool (threads share it).
        `token_store` is mtls-auth's ``token_store=`` (ours only).
        """
        builder = getattr(self, "_" + lib.replace("-", "_"))
        options: dict[str, Any] = {} if token_store is None else {"token_store": token_store}
        client: Client = builder(family, cold=cold, margin=margin, pool=pool, **options)
        return client

    def _requests_session(self, pool: int) -> Any:
        import requests

        session = requests.Session()
        session.mount("https://", self.adapter(pool))
        return session

    def _httpx_client(self, family: str, pool: int, **kwargs: Any) -> Any:
        import httpx

        if family == "httpx-async":
            return httpx.AsyncClient(transport=self.transport(family, pool), **kwargs)
        return httpx.Client(transport=self.transport(family, pool), **kwargs)

    def urls(self) -> Iterator[str]:
        """The resource URLs a candidate requests, in turn: `PATHS` distinct ones."""
        base = self.endpoint.resource_url
        return itertools.cycle([f"{base}/items/{i}" for i in range(PATHS)])

    def _wrap(self, lib: str, family: str, client: Any, label: str = "") -> Client:
        urls = self.urls()
        if family == "httpx-async":

            async def aget() -> int:
                response = await client.get(next(urls))
                return int(response.status_code)

            return Client(lib, family, aget, client.aclose, label)

        def get() -> int:
            return int(client.get(next(urls)).status_code)

        return Client(lib, family, get, client.close, label)

    def _baseline(self, family: str, *, cold: bool, margin: float | None, pool: int) -> Client:
        header = "Bearer " + self.fixed_token
        if family == "requests":
            session = self._requests_session(pool)
            session.auth = _fixed_requests_auth(header)
            return self._wrap("baseline", family, session)
        return self._wrap(
            "baseline", family, self._httpx_client(family, pool, auth=_fixed_httpx_auth(header))
        )

    def _ours(
        self,
        family: str,
        *,
        cold: bool,
        margin: float | None,
        pool: int,
        token_store: Any = None,
    ) -> Client:
        ep = self.endpoint
        options = {"verify": ep.ca_pem, "token_store": token_store}
        if family == "requests":
            from mtls_auth.requests import MtlsOAuth2

            session = self._requests_session(pool)
            session.auth = MtlsOAuth2(ep.token_url, ep.client_id, self.cert, **options)
            client = self._wrap("ours", family, session)
            auth = session.auth
            closer = client.close

            def close() -> None:
                closer()
                auth.close()

            client.close = close
            return client
        from mtls_auth.httpx import MtlsOAuth2 as HttpxMtlsOAuth2

        hauth = HttpxMtlsOAuth2(ep.token_url, ep.client_id, self.cert, **options)
        hclient = self._httpx_client(family, pool, auth=hauth)
        client = self._wrap("ours", family, hclient)
        if family == "httpx-async":

            async def aclose() -> None:
                await hclient.aclose()
                await hauth.aclose()

            client.close = aclose
        else:

            def sclose() -> None:
                hclient.close()
                hauth.close()

            client.close = sclose
        return client

    def _authlib(self, family: str, *, cold: bool, margin: float | None, pool: int) -> Client:
        ep = self.endpoint
        kwargs: dict[str, Any] = {
            "client_id": ep.client_id,
            "token_endpoint_auth_method": "none",
            "token_endpoint": ep.token_url,
            "grant_type": "client_credentials",
        }
        if margin is not None:
            kwargs["leeway"] = margin
        if cold:
            # authlib raises MissingTokenError without a token: an expired one
            # makes ensure_active_token fetch a new one (its renewal path).
            kwargs["token"] = {"access_token": "expired", "token_type": "bearer", "expires_at": 1}
        if family == "requests":
            from authlib.integrations.requests_client import OAuth2Session

            session = OAuth2Session(**kwargs)
            session.mount("https://", self.adapter(pool))
            wrapped = self._wrap("authlib", family, session)
            if not cold:
                wrapped.prepare = lambda: session.fetch_token(ep.token_url)
            return wrapped

        with warnings.catch_warnings():
            # authlib 1.7+ says its httpx integration is deprecated in favour of
            # httpx2; it still works with httpx, which is what users have.
            warnings.simplefilter("ignore")
            # authlib builds its clients on httpx2 whenever that is importable
            # (a dev install has it); these arms get httpx transports, so the
            # bench process, which uses no httpx2, hides it from authlib.
            sys.modules.setdefault("httpx2", None)  # type: ignore[arg-type]
            from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client

        if family == "httpx-async":
            aclient = AsyncOAuth2Client(transport=self.transport(family, pool), **kwargs)
            wrapped = self._wrap("authlib", family, aclient)
            if not cold:
                wrapped.prepare = lambda: aclient.fetch_token(ep.token_url)
            return wrapped
        sclient = OAuth2Client(transport=self.transport(family, pool), **kwargs)
        wrapped = self._wrap("authlib", family, sclient)
        if not cold:
            wrapped.prepare = lambda: sclient.fetch_token(ep.token_url)
        return wrapped

    def _httpx_auth(self, family: str, *, cold: bool, margin: float | None, pool: int) -> Client:
        import httpx
        import httpx_auth
        from httpx_auth._oauth2.common import OAuth2

        ep = self.endpoint
        OAuth2.token_cache.clear()  # one process-wide cache: start from nothing
        token_client = httpx.Client(verify=self.context())
        kwargs: dict[str, Any] = {"client": token_client}
        if margin is not None:
            kwargs["early_expiry"] = margin
        auth = httpx_auth.OAuth2ClientCredentials(
            ep.token_url, ep.client_id, "unused-with-mtls", **kwargs
        )
        auth.data["client_id"] = ep.client_id  # the server wants it in the form
        client = self._httpx_client(family, pool, auth=auth)
        wrapped = self._wrap("httpx-auth", family, client)
        inner = wrapped.close
        if family == "httpx-async":

            async def aclose() -> None:
                await inner()
                token_client.close()

            wrapped.close = aclose
        else:

            def sclose() -> None:
                inner()
                token_client.close()

            wrapped.close = sclose
        return wrapped

    def _requests_oauthlib(
        self, family: str, *, cold: bool, margin: float | None, pool: int
    ) -> Client:
        user = RequestsOAuthlibUser(self, margin or 0.0, pool)
        return Client(
            "requests-oauthlib",
            family,
            user.get,
            user.session.close,
            prepare=None if cold else user.fetch,
        )


class RequestsOAuthlibUser:
    """requests-oauthlib used for client credentials the way its docs show.

    The plain cached-token path is ``session.get`` (used by the per-request
    measurement as is); `get` adds the fetch a user must write: when there is no
    token, `margin` seconds before ``expires_at``, and on ``TokenExpiredError``.
    """

    def __init__(self, setup: Setup, margin: float, pool: int) -> None:
        from oauthlib.oauth2 import BackendApplicationClient
        from requests_oauthlib import OAuth2Session

        self.endpoint = setup.endpoint
        self.margin = margin
        self.session = OAuth2Session(
            client=BackendApplicationClient(client_id=setup.endpoint.client_id)
        )
        self.session.mount("https://", setup.adapter(pool))
        self._urls = setup.urls()

    def fetch(self) -> None:
        self.session.fetch_token(self.endpoint.token_url, include_client_id=True)

    def get(self) -> int:
        from oauthlib.oauth2 import TokenExpiredError

        token = self.session.token
        if not token or (self.margin and token.get("expires_at", 0) - self.margin < time.time()):
            self.fetch()
        try:
            return int(self.session.get(next(self._urls)).status_code)
        except TokenExpiredError:
            self.fetch()
            return int(self.session.get(next(self._urls)).status_code)


def _fixed_requests_auth(header: str) -> Any:
    import requests

    class FixedBearer(requests.auth.AuthBase):
        """The minimal requests auth hook: one fixed header."""

        def __call__(self, request: Any) -> Any:
            request.headers["Authorization"] = header
            return request

    return FixedBearer()


def _fixed_httpx_auth(header: str) -> Any:
    import httpx

    class FixedBearer(httpx.Auth):
        """The minimal httpx auth: one fixed header, in ``auth_flow``."""

        def auth_flow(self, request: Any) -> Any:
            request.headers["Authorization"] = header
            yield request

    return FixedBearer()


async def maybe_await(value: Any) -> Any:
    """Await `value` if it is awaitable (closing sync and async candidates alike)."""
    if isinstance(value, Awaitable):
        return await value
    return value
