"""The three HTTP clients the library serves, as one harness: requests, httpx sync, httpx async.

A `Client` drives any auth object through the real HTTP library the way a user
wires it. The ``client`` fixture (``conftest.py``) gives one per library, with
the ids ``requests``, ``httpx-sync`` and ``httpx-async``::

    def test_something(client, mtls_server):
        auth = client.auth()                    # MtlsOAuth2 of the right class
        result = client.call(auth)              # GET mtls_server.resource_url
        assert result.status == 200 and result.history == []
        results = client.call_many(auth, [url] * 32, concurrency=32)

`call` and `call_many` accept any auth object (made here, from a binding, or
derived from another auth for another tenant or user) or None. What the
connection presents: by default the client's own `Credential` through an
``MtlsAdapter`` / ``(Async)MtlsTransport`` built from its PEM (the server asks
every connection for a certificate); with ``present="auth"`` the auth's own
``auth.adapter()`` / ``auth.transport()`` / ``auth.async_transport()``, which
follow its certificate through rotations. Sync clients run concurrent calls in
threads, the async client with ``asyncio.gather`` on one event loop.

A `Result` reports the status, the statuses of the history (redirects and 401
retries), the JSON body, the time taken and the exception instead of raising
it (`Result.unwrap` raises it again). `Client.session` keeps one library
client open across calls (a persistent event loop for httpx async), and
`Client.adopt` wraps one made elsewhere (the Credential Store's ready-made
sessions). Everything a `Client` opens, auths included, is closed when its
fixture ends.

The HTTP libraries are imported when a `Client` is made, not with this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from mtls_auth.testing import Credential, TokenServer

__all__ = ["CLIENT_NAMES", "Client", "Result", "Session"]

#: The ids of the ``client`` fixture, one per HTTP library (and mode).
CLIENT_NAMES = ("requests", "httpx-sync", "httpx-async")
#: Seconds any request of the harness may take (the libraries' own timeout).
TIMEOUT = 10.0

T = TypeVar("T")


@dataclass
class Result:
    """What one request through a client came to."""

    status: int | None = None
    #: Status codes of the responses before the last one: redirects, 401 retries.
    history: list[int] = field(default_factory=list)
    error: BaseException | None = None
    #: The response body as JSON, when it is JSON.
    body: Any = None
    elapsed: float = 0.0

    def unwrap(self) -> int:
        """The status code, or the exception the request raised."""
        if self.error is not None:
            raise self.error
        assert self.status is not None
        return self.status


def _json(response: Any) -> Any:
    try:
        return response.json()
    except Exception:  # noqa: BLE001 - not JSON: no body to show
        return None


def _result(response: Any, started: float) -> Result:
    """The `Result` of a response (of any of the libraries) to a request started then."""
    return Result(
        response.status_code,
        [r.status_code for r in response.history],
        body=_json(response),
        elapsed=time.monotonic() - started,
    )


def _outcome(make: Callable[[], Any], catch: tuple[type[BaseException], ...]) -> Result:
    """Run a request: its `Result`, or one reporting the exception (of `catch`) it raised."""
    started = time.monotonic()
    try:
        response = make()
    except catch as exc:
        return Result(error=exc, elapsed=time.monotonic() - started)
    return _result(response, started)


async def _aoutcome(
    make: Callable[[], Coroutine[Any, Any, Any]], catch: tuple[type[BaseException], ...]
) -> Result:
    """`_outcome` of an async request."""
    started = time.monotonic()
    try:
        response = await make()
    except catch as exc:
        return Result(error=exc, elapsed=time.monotonic() - started)
    return _result(response, started)


class _Loop:
    """A private event loop for an async session, shut down as `asyncio.run` does."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        loop = self.loop
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


class Session:
    """One library client (requests.Session, httpx.Client or httpx.AsyncClient) kept open.

    `request` returns the library's response (and raises what it raises);
    `call` returns a `Result`. Closing it closes the library client and, for
    httpx async, the auth's clients of the session's event loop.
    """

    def __init__(
        self,
        name: str,
        raw: Any,
        auth: Any = None,
        *,
        loop: _Loop | None = None,
        request_options: dict[str, Any] | None = None,
        catch: tuple[type[BaseException], ...] = (Exception,),
        default_url: str | None = None,
    ) -> None:
        self.name = name
        self.raw = raw
        self.auth = auth
        self._loop = loop
        self._request_options = dict(request_options or {})
        self._catch = catch
        self._default_url = default_url
        self.closed = False

    @property
    def is_async(self) -> bool:
        return self._loop is not None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on this async session's event loop (where ``raw`` lives)."""
        assert self._loop is not None, "a sync session has no event loop"
        return self._loop.run(coroutine)

    def request(
        self, method: str, url: str, *, body: bytes | str | None = None, **kwargs: Any
    ) -> Any:
        """`method url` through the library client; `body` is requests' data, httpx's content."""
        kwargs = {**self._request_options, **kwargs}
        if body is not None:
            kwargs["data" if self.name == "requests" else "content"] = body
        if self.name == "requests":
            kwargs.setdefault("timeout", TIMEOUT)
        if self._loop is not None:
            return self._loop.run(self.raw.request(method, url, **kwargs))
        return self.raw.request(method, url, **kwargs)

    def get(self, url: str, **params: str) -> Any:
        return self.request("GET", url, params=params or None)

    def post(self, url: str, document: Any) -> Any:
        return self.request("POST", url, json=document)

    def call(self, url: str | None = None, *, method: str = "GET", **kwargs: Any) -> Result:
        """One request, its outcome as a `Result` (exceptions of `catch` included)."""
        target = url or self._default_url
        assert target is not None, "no URL and no server to default to"
        return _outcome(lambda: self.request(method, target, **kwargs), self._catch)

    def call_many(self, urls: list[str], concurrency: int) -> list[Result]:
        """GET every URL through this one library client, `concurrency` at a time:
        threads sharing it (sync), or ``asyncio.gather`` on its loop (async)."""
        if self._loop is None:
            with ThreadPoolExecutor(concurrency) as pool:
                return list(pool.map(lambda url: self.call(url), urls))

        async def one(url: str) -> Result:
            return await _aoutcome(
                lambda: self.raw.request("GET", url, **self._request_options), self._catch
            )

        async def gather() -> list[Result]:
            if concurrency == 1:
                return [await one(url) for url in urls]
            return list(await asyncio.gather(*(one(url) for url in urls)))

        return self._loop.run(gather())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is None:
            self.raw.close()
            return

        async def aclose() -> None:
            try:
                await self.raw.aclose()
            finally:
                if self.auth is not None and hasattr(self.auth, "aclose"):
                    await self.auth.aclose()

        try:
            self._loop.run(aclose())
        finally:
            self._loop.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Resources:
    """What the `Client` views of one fixture opened: closed, newest first, at the end."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.auths: list[Any] = []
        self._lock = threading.Lock()

    def add_session(self, session: Session) -> Session:
        with self._lock:
            self.sessions.append(session)
        return session

    def add_auth(self, auth: Any) -> Any:
        with self._lock:
            if auth is not None and not any(auth is known for known in self.auths):
                self.auths.append(auth)
        return auth

    def close(self) -> None:
        for session in reversed(self.sessions):
            session.close()
        for auth in reversed(self.auths):
            auth.close()


class Client:
    """One HTTP library (`name` in `CLIENT_NAMES`) driving auth objects against `server`.

    `credential` is the certificate the client presents by default and the one
    its auths carry; `auth_defaults` are keyword arguments for every `auth`
    (token URL, client id, certificate and key, ``verify`` and ``clock`` of the
    server unless given). `call_options` are defaults for every `session`,
    `call` and `call_many` (see `session`).
    """

    def __init__(
        self,
        name: str,
        server: TokenServer | None = None,
        credential: Credential | None = None,
        *,
        call_options: dict[str, Any] | None = None,
        _resources: _Resources | None = None,
        **auth_defaults: Any,
    ) -> None:
        if name not in CLIENT_NAMES:
            raise ValueError(f"unknown client {name!r}; one of {', '.join(CLIENT_NAMES)}")
        self.name = name
        self.server = server
        self.credential = credential
        self.auth_defaults = auth_defaults
        self.call_options = dict(call_options or {})
        self._resources = _resources or _Resources()
        if name == "requests":
            import mtls_auth.requests as module
        else:
            import mtls_auth.httpx as module
        self.module: ModuleType = module

    def __repr__(self) -> str:
        return f"<Client {self.name}>"

    @property
    def is_async(self) -> bool:
        return self.name == "httpx-async"

    @property
    def auth_class(self) -> Any:
        """``mtls_auth.requests.MtlsOAuth2`` or ``mtls_auth.httpx.MtlsOAuth2``."""
        return self.module.MtlsOAuth2

    def bind(
        self,
        server: TokenServer | None = None,
        credential: Credential | None = None,
        *,
        call_options: dict[str, Any] | None = None,
        **auth_defaults: Any,
    ) -> Client:
        """The same library for another server, credential or defaults; closed with this one."""
        return Client(
            self.name,
            server if server is not None else self.server,
            credential if credential is not None else self.credential,
            call_options={**self.call_options, **(call_options or {})},
            _resources=self._resources,
            **{**self.auth_defaults, **auth_defaults},
        )

    # -- auth objects ----------------------------------------------------------------------

    def auth_kwargs(self, **overrides: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.server is not None:
            kwargs["token_url"] = self.server.token_url
            kwargs["verify"] = self.server.ca_pem
        if self.credential is not None:
            kwargs["certificate"] = self.credential.chain_pem
            kwargs["key"] = self.credential.key_pem
        kwargs.update(self.auth_defaults)
        kwargs.update(overrides)
        return kwargs

    def auth(self, **overrides: Any) -> Any:
        """An ``MtlsOAuth2`` of this library with the defaults and `overrides`."""
        return self.track(self.auth_class(**self.auth_kwargs(**overrides)))

    def from_binding(self, binding: Any, **kwargs: Any) -> Any:
        """``MtlsOAuth2.from_binding(binding, **kwargs)`` of this library, closed at the end."""
        return self.track(self.auth_class.from_binding(binding, **kwargs))

    def track(self, auth: T) -> T:
        """Close `auth` (made elsewhere) when the fixture ends; returns it."""
        return self._resources.add_auth(auth)  # type: ignore[no-any-return]

    def token_infos(self, *auths: Any) -> list[Any]:
        """Fetch each auth's token through its own client, in order (one event loop if async)."""
        for auth in auths:
            self.track(auth)
        if not self.is_async:
            return [auth.token_info() for auth in auths]

        async def main() -> list[Any]:
            try:
                return [await auth.atoken_info() for auth in auths]
            finally:
                for auth in auths:
                    await auth.aclose()

        return asyncio.run(main())

    def fetch_token(self, auth: Any) -> Any:
        """One token fetch through the auth's own client; raises what it raises."""
        return self.token_infos(auth)[0]

    def presenter(self, auth: Any, **kwargs: Any) -> Any:
        """What presents the auth's certificate in this library, following its rotations:
        ``auth.adapter()``, ``auth.transport()`` or ``auth.async_transport()``."""
        if self.name == "requests":
            return auth.adapter(**kwargs)
        if self.is_async:
            return auth.async_transport(**kwargs)
        return auth.transport(**kwargs)

    # -- requests --------------------------------------------------------------------------

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.call_options, **options}
        unknown = set(merged) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown call options: {', '.join(sorted(unknown))}")
        return merged

    def _raw(
        self,
        auth: Any,
        *,
        present: str = "credential",
        verify: Any = None,
        proxy: str | None = None,
        follow_redirects: bool = True,
        trust_env: bool = True,
        library_verify: Any = None,
        **_ignored: Any,
    ) -> Any:
        """The library client of one session, presenting the chosen certificate."""
        if verify is None and self.server is not None:
            verify = self.server.ca_pem
        module = self.module
        if present not in ("credential", "auth"):
            raise ValueError(f"present= is 'credential' or 'auth', not {present!r}")
        extra = {} if proxy is None else {"proxy": proxy}
        if self.name == "requests":
            import requests

            session = requests.Session()
            session.auth = auth
            session.trust_env = trust_env
            if present == "auth":
                adapter = self.presenter(auth)
            else:
                assert self.credential is not None
                adapter = module.MtlsAdapter(
                    self.credential.chain_pem, self.credential.key_pem, verify=verify
                )
            session.mount("https://", adapter)
            if proxy is not None:
                session.proxies = {"https": proxy, "http": proxy}
            if library_verify is not None:
                session.verify = library_verify
            return session

        import httpx

        kwargs: dict[str, Any] = {"follow_redirects": follow_redirects, "timeout": TIMEOUT}
        if library_verify is not None:
            kwargs["verify"] = library_verify
        if self.is_async:
            if present == "auth":
                transport = self.presenter(auth, **extra)
            else:
                assert self.credential is not None
                transport = module.AsyncMtlsTransport(
                    self.credential.chain_pem, self.credential.key_pem, verify=verify, **extra
                )
            return httpx.AsyncClient(auth=auth, transport=transport, **kwargs)
        if present == "auth":
            transport = self.presenter(auth, **extra)
        else:
            assert self.credential is not None
            transport = module.MtlsTransport(
                self.credential.chain_pem, self.credential.key_pem, verify=verify, **extra
            )
        return httpx.Client(auth=auth, transport=transport, **kwargs)

    def _request_options(self, options: dict[str, Any]) -> dict[str, Any]:
        request_options = dict(options.get("request_options") or {})
        if self.name == "requests":
            request_options.setdefault("allow_redirects", options.get("follow_redirects", True))
        return request_options

    def session(self, auth: Any = None, **options: Any) -> Session:
        """A library client with `auth`, open until closed (or the fixture ends).

        Options: ``present`` ("credential", the default, or "auth"); ``verify``
        (trust of the presenting adapter or transport, default the server's
        CA); ``proxy`` (for the requests); ``follow_redirects`` (True);
        ``trust_env`` (requests' ``Session.trust_env``, True); ``library_verify``
        (the library's own switch: requests' ``Session.verify``, httpx's
        ``Client(verify=)``); ``request_options`` (more keyword arguments for
        each request, e.g. requests' per-request ``verify``); ``catch`` (the
        exceptions a `Result` reports instead of raising, default Exception).
        """
        options = self._options(options)
        self.track(auth)
        loop = _Loop() if self.is_async else None
        raw = self._raw(auth, **options)
        return self._resources.add_session(
            Session(
                self.name,
                raw,
                auth,
                loop=loop,
                request_options=self._request_options(options),
                catch=options.get("catch", (Exception,)),
                default_url=None if self.server is None else self.server.resource_url,
            )
        )

    def adopt(self, raw: Any, auth: Any = None) -> Session:
        """Wrap a library client made elsewhere (of this library); closed with the fixture."""
        self.track(auth)
        loop = _Loop() if self.is_async else None
        return self._resources.add_session(Session(self.name, raw, auth, loop=loop))

    def call(self, auth: Any = None, url: str | None = None, **options: Any) -> Result:
        """One request (default: GET the server's resource) through a fresh library client.

        `options` as for `session`, plus ``method`` (GET).
        """
        method = options.pop("method", "GET")
        with self.session(auth, **options) as session:
            return session.call(url, method=method)

    def call_many(
        self, auth: Any, urls: list[str], concurrency: int, **options: Any
    ) -> list[Result]:
        """GET every URL, `concurrency` at a time: threads (sync) or coroutines (async).

        requests: a session per thread (the threads all wait until every one
        has its session); httpx sync: one client shared by the threads; httpx
        async: one AsyncClient, ``asyncio.gather`` (in order when concurrency
        is 1), the auth's clients of the loop closed at the end.
        """
        options = self._options(options)
        catch = options.get("catch", (Exception,))
        request_options = self._request_options(options)
        self.track(auth)
        if self.name == "requests":
            local = threading.local()
            barrier = threading.Barrier(min(concurrency, len(urls)))
            opened: list[Any] = []
            lock = threading.Lock()

            def one(url: str) -> Result:
                session = getattr(local, "session", None)
                if session is None:
                    session = local.session = self._raw(auth, **options)
                    with lock:
                        opened.append(session)
                    with contextlib.suppress(threading.BrokenBarrierError):
                        barrier.wait(timeout=5)
                return _outcome(
                    lambda: session.request("GET", url, timeout=TIMEOUT, **request_options), catch
                )

            try:
                with ThreadPoolExecutor(concurrency) as pool:
                    return list(pool.map(one, urls))
            finally:
                for session in opened:
                    session.close()

        if not self.is_async:
            barrier = threading.Barrier(min(concurrency, len(urls)))
            with self._raw(auth, **options) as client:

                def one_sync(url: str) -> Result:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        barrier.wait(timeout=0.5)
                    return _outcome(lambda: client.request("GET", url, **request_options), catch)

                with ThreadPoolExecutor(concurrency) as pool:
                    return list(pool.map(one_sync, urls))

        async def main() -> list[Result]:
            try:
                async with self._raw(auth, **options) as client:

                    async def one_async(url: str) -> Result:
                        return await _aoutcome(
                            lambda: client.request("GET", url, **request_options), catch
                        )

                    if concurrency == 1:
                        return [await one_async(url) for url in urls]
                    return list(await asyncio.gather(*(one_async(url) for url in urls)))
            finally:
                if auth is not None:
                    await auth.aclose()

        return asyncio.run(main())

    def close(self) -> None:
        self._resources.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_OPTIONS = {
    "present",
    "verify",
    "proxy",
    "follow_redirects",
    "trust_env",
    "library_verify",
    "request_options",
    "catch",
}


@contextlib.contextmanager
def every_client(
    server: TokenServer | None = None, credential: Credential | None = None, **auth_defaults: Any
) -> Iterator[list[Client]]:
    """The three clients at once, for a test that compares them or needs them all."""
    made = [Client(name, server, credential, **auth_defaults) for name in CLIENT_NAMES]
    try:
        yield made
    finally:
        for client in made:
            client.close()
