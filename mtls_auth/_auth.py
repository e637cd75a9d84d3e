"""The library-independent half of `MtlsOAuth2`: configuration and policy.

`AuthCore` holds what both integrations share: the client certificate, the
token request (`TokenSpec`), the token cache, where the bearer token may go,
and the drivers that run `fetch_flow` given a library-specific `send`. The
requests and httpx modules add only how a request is sent and signed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Awaitable, Collection, Generator, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, Union
from urllib.parse import urlsplit

from ._binding import (
    Binding,
    BindingInput,
    BindingSource,
    Redacted,
    discover_token_endpoint,
    kubernetes_binding_path,
    select_vcap_service,
)
from ._cache import RefreshPolicy, TokenCache
from ._certificate import ClientCertificate, Secret, Verify, build_ssl_context, redact
from ._errors import (
    BindingError,
    CertificateError,
    InsecureTransportError,
    TokenError,
    TokenRequestError,
    TokenResponseError,
)
from ._rotation import CertificateWatch, Loaded
from ._token import (
    HttpRequest,
    HttpResponse,
    Reply,
    RetryPolicy,
    Step,
    Token,
    TokenSpec,
    TransportFailure,
    fetch_flow,
)

__all__ = [
    "AuthCore",
    "AuthFacade",
    "AuthState",
    "CertificateProvider",
    "CertificateSource",
    "coerce_certificate",
]

logger = logging.getLogger("mtls_auth")

#: What `certificate=` accepts: PEM text (with `key=`) or a ready ClientCertificate.
CertificateSource = Union[str, bytes, ClientCertificate]
#: A callable returning the current certificate, for custom sources (a vault).
CertificateProvider = Callable[[], ClientCertificate]

SendSync = Callable[[HttpRequest, "AuthState"], Union[HttpResponse, TransportFailure]]
SendAsync = Callable[
    [HttpRequest, "AuthState"], Awaitable[Union[HttpResponse, TransportFailure]]
]


def coerce_certificate(
    certificate: CertificateSource,
    key: str | bytes | Secret | None,
    password: str | bytes | Secret | None,
) -> ClientCertificate:
    """A ClientCertificate from either form the public constructors accept."""
    if isinstance(certificate, ClientCertificate):
        if key is not None or password is not None:
            raise CertificateError(
                "key= and password= are taken from the ClientCertificate; omit them"
            )
        return certificate
    if key is None:
        raise CertificateError(
            "key= is required when certificate= is PEM text "
            "(or pass a ClientCertificate built with ClientCertificate.from_pem)"
        )
    return ClientCertificate.from_pem(certificate, key, password=password)


def _is_loopback(host: str) -> bool:
    # Only "localhost" and IP literals: a "*.localhost" name may well be
    # resolved through DNS (glibc with "hosts: files dns").
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_ORIGIN = re.compile(r"[^/?#]*(?://[^/?#]*)?")


class _Destinations:
    """Decides, per scheme and host, whether a request may carry the token."""

    __slots__ = ("_allow_http_loopback", "_allowed", "_origins", "_seen")

    def __init__(self, allowed_hosts: Collection[str] | None, allow_http_loopback: bool) -> None:
        if isinstance(allowed_hosts, str):
            allowed_hosts = [allowed_hosts]
        self._allowed = (
            None
            if allowed_hosts is None
            else frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        )
        self._allow_http_loopback = allow_http_loopback
        # Decisions are cached: the hot path is one dict lookup.
        self._seen: dict[tuple[str, str], bool] = {}
        # ...keyed by the URL's "scheme://netloc" text for check_url, so a URL
        # is parsed once per distinct origin, not once per request.
        self._origins: dict[str, tuple[str, str]] = {}

    def check(self, scheme: str, host: str) -> None:
        ok = self._seen.get((scheme, host))
        if ok is None:
            ok = self._decide(scheme, host)
            if len(self._seen) < 1024:
                self._seen[(scheme, host)] = ok
        if not ok:
            self._refuse(scheme, host)

    def check_url(self, url: str) -> None:
        # The origin text: everything before the path, query or fragment (so
        # userinfo tricks such as "https://a.com@b.com/" stay in the key).
        match = _ORIGIN.match(url)
        origin = match.group() if match else url
        known = self._origins.get(origin)
        if known is None:
            parts = urlsplit(url)
            known = (parts.scheme.lower(), (parts.hostname or "").lower())
            if len(self._origins) < 1024:
                self._origins[origin] = known
        self.check(*known)

    @staticmethod
    def _normal(host: str) -> str:
        return host.lower().rstrip(".")

    def _decide(self, scheme: str, host: str) -> bool:
        host = self._normal(host)  # "API.example.com." is api.example.com
        if scheme == "http":
            if not (self._allow_http_loopback and _is_loopback(host)):
                return False
        elif scheme != "https":
            return False
        if self._allowed is None:
            return True
        return any(
            host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
            for allowed in self._allowed
        )

    def _refuse(self, scheme: str, host: str) -> None:
        if scheme == "http":
            hint = (
                " (allow_http_loopback=True permits http only to localhost/127.0.0.1/::1)"
                if _is_loopback(host)
                else ""
            )
            raise InsecureTransportError(
                f"refusing to send the bearer token over plain http to {host!r}: "
                f"use https{hint}"
            )
        if scheme != "https":
            raise InsecureTransportError(
                f"refusing to send the bearer token over {scheme or 'no scheme'}:// to {host!r}"
            )
        raise InsecureTransportError(
            f"refusing to send the bearer token to {host!r}: it is not in allowed_hosts"
        )


@dataclass(frozen=True)
class AuthState:
    """Everything that changes together when the certificate rotates."""

    certificate: ClientCertificate
    spec: TokenSpec
    generation: int
    #: The token cache key, built once: the hot path compares it on every request.
    key: Hashable = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.spec.cache_key, self.certificate.thumbprint))


class AuthCore:
    """Certificate, token request, cache and destination policy of one auth object.

    `certificate` is PEM text (with `key`), a `ClientCertificate`, or a
    provider callable returning a fresh `ClientCertificate` (a vault, say). A
    core built by `from_binding` on a file or directory re-reads it when it
    changes. The certificate, the token request and the generation number
    change together, in one attribute assignment (`_state`).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        certificate: CertificateSource | CertificateProvider,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        namespace: str | None = None,
        scope: str | Iterable[str] | None = None,
        params: Mapping[str, str] | None = None,
        verify: Verify = True,
        timeout: float = 10.0,
        leeway: float = 60.0,
        allowed_hosts: Collection[str] | None = None,
        allow_http_loopback: bool = False,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        check_interval: float = 5.0,
        _source: BindingSource | None = None,
        _binding: Binding | None = None,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        if verify is False or verify is None:
            # Refused here, not at the first token fetch.
            build_ssl_context(verify)
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        provider: CertificateProvider | None = None
        if callable(certificate) and not isinstance(certificate, ClientCertificate):
            if key is not None or password is not None:
                raise CertificateError("key= and password= do not apply to a provider callable")
            provider = certificate
            first = provider()
            if not isinstance(first, ClientCertificate):
                raise CertificateError(
                    "the certificate provider must return a ClientCertificate, "
                    f"not {type(first).__name__}"
                )
            cert = first
        else:
            cert = coerce_certificate(certificate, key, password)
        self._scope = scope
        self._params = params
        self._namespace = namespace
        self._token_url_override: str | None = None
        spec = TokenSpec.create(
            token_url, client_id, namespace=namespace, scope=scope, params=params
        )
        self._state = AuthState(cert, spec, 0)
        self.verify = verify
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.cache = TokenCache(
            clock=clock or time.monotonic,
            policy=RefreshPolicy(leeway=leeway),
            wait_timeout=self.timeout * 2 + 5,
        )
        self.destinations = _Destinations(allowed_hosts, allow_http_loopback)
        self._rotate_lock = threading.Lock()
        self.watch: CertificateWatch | None = None
        if provider is not None or (_source is not None and _source.rereadable):
            self.watch = CertificateWatch(
                Loaded(cert, _binding),
                source=_source,
                provider=provider,
                interval=check_interval,
                provider_interval=max(check_interval, 60.0),
            )

    @classmethod
    def from_binding(
        cls,
        binding: BindingInput,
        *,
        namespace: str | None = None,
        verify: Verify = True,
        discover: bool = False,
        **kwargs: Any,
    ) -> AuthCore:
        """A core configured from an XSUAA or Credential Store binding."""
        source = BindingSource.from_input(binding)
        parsed = source.read()
        if parsed.needs_namespace and not namespace:
            raise BindingError(
                f"the Credential Store binding in {parsed.source} needs namespace=: tokens "
                "are issued per namespace (the form field credstore_namespace)"
            )
        certificate = ClientCertificate.from_pem(parsed.certificate, parsed.key)
        token_url = parsed.token_url
        if discover:
            base = parsed.url or token_url.rsplit("/oauth/token", 1)[0]
            token_url = discover_token_endpoint(
                base, certificate.ssl_context(verify), timeout=kwargs.get("timeout", 10.0)
            )
        core = cls(
            token_url,
            parsed.client_id,
            certificate,
            namespace=namespace,
            verify=verify,
            _source=source,
            _binding=parsed,
            **kwargs,
        )
        if discover:
            core._token_url_override = token_url
        core.binding = parsed
        return core

    binding: Binding | None = None

    # -- the current state ---------------------------------------------------------

    @property
    def state(self) -> AuthState:
        """Certificate, token request and generation, as one consistent reading."""
        return self._state

    @property
    def certificate(self) -> ClientCertificate:
        return self._state.certificate

    @property
    def spec(self) -> TokenSpec:
        return self._state.spec

    @property
    def generation(self) -> int:
        """Bumped whenever the certificate rotates: internal clients rebuild."""
        return self._state.generation

    def _rotate(self, *, force: bool = False) -> bool:
        """Check for a rotated certificate; True if the state changed."""
        watch = self.watch
        if watch is None:
            return False
        with self._rotate_lock:
            return self._rotate_locked(watch, force)

    def _rotate_locked(self, watch: CertificateWatch, force: bool) -> bool:
        loaded = watch.poll(force=force)
        if loaded is None:
            return False
        state = self._state
        spec = state.spec
        if loaded.binding is not None:
            self.binding = loaded.binding
            spec = TokenSpec.create(
                self._token_url_override or loaded.binding.token_url,
                loaded.binding.client_id,
                namespace=self._namespace,
                scope=self._scope,
                params=self._params,
            )
        self._state = AuthState(loaded.certificate, spec, state.generation + 1)
        # Tokens were bound to the old certificate: drop them. Requests already
        # in flight finish with what they have.
        self.cache.clear()
        return True

    # -- tokens ----------------------------------------------------------------------

    def fresh_token(self) -> Token | None:
        """The cached token if it is fresh and no rotation check is due (hot path)."""
        watch = self.watch
        if watch is not None and watch.due():
            return None
        return self.cache.current(self._state.key)

    def token(self, send: SendSync) -> Token:
        self._rotate()
        state = self._state
        try:
            return self.cache.get(state.key, lambda: self._fetch_sync(send, state))
        except TokenError as exc:
            if not _rejected(exc) or self.watch is None:
                raise
            self._rotate(force=True)
            if self._state is state:
                raise
        state = self._state
        logger.info("retrying the token request with the rotated certificate")
        return self.cache.get(state.key, lambda: self._fetch_sync(send, state))

    async def atoken(self, send: SendAsync) -> Token:
        loop = asyncio.get_running_loop()
        watch = self.watch
        if watch is not None and watch.due():
            # stat() and file reads stay off the event loop.
            await loop.run_in_executor(None, self._rotate)
        state = self._state
        try:
            return await self.cache.aget(state.key, lambda: self._fetch_async(send, state))
        except TokenError as exc:
            if not _rejected(exc) or watch is None:
                raise
            await loop.run_in_executor(None, lambda: self._rotate(force=True))
            if self._state is state:
                raise
        state = self._state
        logger.info("retrying the token request with the rotated certificate")
        return await self.cache.aget(state.key, lambda: self._fetch_async(send, state))

    def invalidate_token(self, token: Token) -> bool:
        """Forget `token` after a 401, if it is still the current one.

        Returns whether resending with a new token is worth it: not when this
        very token was fetched to answer a 401 and was refused too, within the
        last `_401_COOLDOWN` seconds (a resource that refuses every token, say
        for a missing role, would otherwise cost a token request per request).
        """
        refused = token.refused_at
        if refused is not None and time.monotonic() < refused + _401_COOLDOWN:
            return False
        self.cache.invalidate(token)
        if self.watch is not None:
            # A 401 is also what a rotated-and-revoked certificate looks like:
            # look for a new binding now (rate-limited), not at the next check.
            self._rotate(force=True)
        return True

    @staticmethod
    def refused_after_retry(token: Token) -> None:
        """The fresh token fetched for a 401 got a 401 too: stop refreshing for it."""
        token.refused_at = time.monotonic()

    def _flow(self, state: AuthState) -> Generator[Step, Reply, Token]:
        spec = state.spec
        logger.debug("requesting a token from %s for %r", spec.token_url, spec.client_id)
        return fetch_flow(
            state.spec,
            timeout=self.timeout,
            retry=self.retry,
            clock=self.cache.clock,
            subject=state.certificate.subject,
        )

    def _fetch_sync(self, send: SendSync, state: AuthState) -> Token:
        flow = self._flow(state)
        step = next(flow)
        while True:
            if isinstance(step, HttpRequest):
                reply: HttpResponse | TransportFailure | None = send(step, state)
            else:
                time.sleep(step)
                reply = None
            try:
                step = flow.send(reply)
            except StopIteration as done:
                token: Token = done.value
                return token

    async def _fetch_async(self, send: SendAsync, state: AuthState) -> Token:
        flow = self._flow(state)
        step = next(flow)
        while True:
            if isinstance(step, HttpRequest):
                reply: HttpResponse | TransportFailure | None = await send(step, state)
            else:
                await asyncio.sleep(step)
                reply = None
            try:
                step = flow.send(reply)
            except StopIteration as done:
                token: Token = done.value
                return token

    # -- presentation ----------------------------------------------------------------

    def describe(self) -> str:
        state = self.cache.freshness()
        if state is None:
            token_state = "none"  # noqa: S105 - a state name, not a secret
        else:
            freshness, left = state
            token_state = (
                f"{freshness.value}, expires in {left:.0f}s"
                if left > 0
                else f"expired {-left:.0f}s ago"
            )
        spec = self.spec
        namespace = f" namespace={spec.namespace!r}" if spec.namespace else ""
        return (
            f"client_id={spec.client_id!r} token_url={spec.token_url!r}"
            f"{namespace} token={token_state}"
        )


#: Seconds during which a token that was refused right after a 401 refresh is not
#: refreshed again for another 401.
_401_COOLDOWN = 30.0


def _rejected(exc: TokenError) -> bool:
    """Did the token endpoint refuse our certificate (the sign of a rotation)?"""
    if isinstance(exc, TokenRequestError):
        return exc.kind in ("tls_client", "tls_closed")
    if isinstance(exc, TokenResponseError):
        return exc.status_code == 401 or exc.error == "invalid_client"
    return False


_Facade = TypeVar("_Facade", bound="AuthFacade")


class AuthFacade:
    """What both `MtlsOAuth2` classes share above the core: the constructors from
    bindings, the public non-secret facts, and no pickling.

    A subclass builds its `AuthCore` in `__init__` and hands it to `_setup`,
    which sets up its library-specific internal token clients.
    """

    _core: AuthCore

    def __init__(
        self,
        token_url: str,
        client_id: str,
        certificate: CertificateSource | CertificateProvider,
        key: str | bytes | Secret | None = None,
        *,
        password: str | bytes | Secret | None = None,
        namespace: str | None = None,
        scope: str | Iterable[str] | None = None,
        params: Mapping[str, str] | None = None,
        verify: Verify = True,
        timeout: float = 10.0,
        leeway: float = 60.0,
        allowed_hosts: Collection[str] | None = None,
        allow_http_loopback: bool = False,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        check_interval: float = 5.0,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        core = AuthCore(
            token_url,
            client_id,
            certificate,
            key,
            password=password,
            namespace=namespace,
            scope=scope,
            params=params,
            verify=verify,
            timeout=timeout,
            leeway=leeway,
            allowed_hosts=allowed_hosts,
            allow_http_loopback=allow_http_loopback,
            retry=retry,
            clock=clock,
            check_interval=check_interval,
        )
        self._setup(core)

    def _setup(self, core: AuthCore) -> None:
        raise NotImplementedError

    @classmethod
    def from_binding(
        cls: type[_Facade],
        binding: BindingInput,
        *,
        namespace: str | None = None,
        verify: Verify = True,
        discover: bool = False,
        **kwargs: Any,
    ) -> _Facade:
        """An auth configured from an XSUAA or Credential Store binding.

        `binding` is a mapping, JSON text, or the path of a service-key file or
        a Kubernetes binding directory; a file or directory is re-read when it
        changes, so a rotated certificate is picked up without a restart.
        `namespace` is required for Credential Store. `discover=True` resolves
        the token endpoint from ``/.well-known/openid-configuration``
        (``mtls_endpoint_aliases``). Other keyword arguments are those of the
        constructor.
        """
        binding = Redacted(binding)  # frames captured on error show no key
        self = cls.__new__(cls)
        self._setup(
            AuthCore.from_binding(
                binding, namespace=namespace, verify=verify, discover=discover, **kwargs
            )
        )
        return self

    @classmethod
    def from_vcap_services(
        cls: type[_Facade], label: str = "xsuaa", name: str | None = None, **kwargs: Any
    ) -> _Facade:
        """An auth from the `label` instance (named `name`) in `VCAP_SERVICES`."""
        return cls.from_binding(Redacted(select_vcap_service(label, name)), **kwargs)

    @classmethod
    def from_kubernetes(
        cls: type[_Facade], name: str | None = None, label: str | None = None, **kwargs: Any
    ) -> _Facade:
        """An auth from a Kubernetes binding under `$SERVICE_BINDING_ROOT` (or legacy)."""
        return cls.from_binding(kubernetes_binding_path(name, label), **kwargs)

    # -- public, non-secret facts --------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._core.spec.client_id

    @property
    def token_url(self) -> str:
        return self._core.spec.token_url

    @property
    def namespace(self) -> str | None:
        return self._core.spec.namespace

    @property
    def certificate(self) -> ClientCertificate:
        return self._core.certificate

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._core.describe()}>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{type(self).__name__} holds a private key and an access token and cannot be "
            "pickled; build a new one in the other process"
        )
