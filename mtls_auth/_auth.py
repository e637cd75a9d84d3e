"""What both `MtlsOAuth2` classes share: construction, derivation, facts and repr.

An `MtlsOAuth2` is a `TokenClient` (who asks: certificate, endpoints, policies,
cache, sender) plus a `TokenRequest` (what it asks for). `AuthFacade` is that
pair for both integrations: the one constructor and its options, the
constructors from bindings, `_derive` for another token request on the same
client, the token lookups the integrations' signing code calls, the public
non-secret facts, repr and the refusal to pickle. An integration adds how a
request is signed and sent (`mtls_auth.requests`, `mtls_auth.httpx`) and the
`Sender` its client talks to the token endpoint with (`_sender`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
import types
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

from . import _users as users
from ._authorize import AuthorizationRequest
from ._certificate import CertificateProvider, CertificateSource, ClientCertificate
from ._client import ClientState, Sender, Settings, TokenClient
from ._discovery import discover as discover_endpoints
from ._errors import ArgumentError, BindingError
from ._grants import JwtBearer, Password, UserSession
from ._redact import Secret, aguarded, guarded, redact
from ._request import TokenRequest
from ._retry import RetryPolicy
from ._sources import BindingFeed, BindingInput, kubernetes_binding_path, select_vcap_service
from ._tenant import Tenant
from ._tls import Verify
from ._token import Token, TokenInfo

if TYPE_CHECKING:
    from ._store import TokenStore

__all__ = ["AuthFacade"]

_Auth = TypeVar("_Auth", bound="AuthFacade")

#: Derived auths remembered per auth object (see `AuthFacade._derived`).
#: Remembered derived auths per kind without a cache bucket of its own.
_MEMO_LIMIT = 10_000


class AuthFacade:
    """The shared half of `mtls_auth.requests.MtlsOAuth2` and `mtls_auth.httpx.MtlsOAuth2`.

    Subclasses implement `_new_sender`: the `Sender` their client talks to the
    token endpoint with.
    """

    _client: TokenClient | None = None
    _request: TokenRequest
    _keyed: tuple[ClientState, tuple[Any, ...]] | None = None
    _memo: dict[str, dict[Hashable, AuthFacade]] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The public methods live here, but a user calls MtlsOAuth2: Python names
        # the function's class in argument errors ("...__init__() got an
        # unexpected keyword argument"), so each subclass gets copies under its
        # own name.
        for name, member in AuthFacade.__dict__.items():
            if name.startswith("_") and name != "__init__":
                continue
            if name in cls.__dict__:
                continue
            if isinstance(member, classmethod):
                setattr(cls, name, classmethod(_named(member.__func__, cls.__name__)))
            elif inspect.isfunction(member):
                setattr(cls, name, _named(member, cls.__name__))

    @guarded
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
        resource: str | Iterable[str] | None = None,
        verify: Verify = True,
        timeout: float = 10.0,
        leeway: float = 60.0,
        allowed_hosts: Collection[str] | None = None,
        allow_http_loopback: bool = False,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] | None = None,
        check_interval: float = 5.0,
        max_tenants: int = 10_000,
        max_users: int = 10_000,
        authorization_url: str | None = None,
        token_store: str | TokenStore | None = None,
    ) -> None:
        key, password = redact(key), redact(password)  # no key in captured frames
        if token_store is not None:
            # A Redis URL may carry a password: sealed at once, as keys are.
            token_store = _as_store(redact(token_store))
        settings = Settings(
            verify=verify,
            timeout=timeout,
            leeway=leeway,
            allowed_hosts=allowed_hosts,
            allow_http_loopback=allow_http_loopback,
            retry=retry or RetryPolicy(),
            clock=clock or time.monotonic,
            check_interval=check_interval,
            max_tenants=max_tenants,
            max_users=max_users,
            token_store=token_store,
        )
        request = TokenRequest.create(
            scope=scope, namespace=namespace, params=params, resource=resource
        )
        client = TokenClient(
            token_url,
            client_id,
            certificate,
            key,
            password,
            settings,
            type(self)._new_sender,
            authorization_url=authorization_url,
        )
        self._bind(client, request)

    @classmethod
    def _new_sender(cls, client: TokenClient) -> Sender:
        """The integration's `Sender` for a new client."""
        raise NotImplementedError(f"{cls.__name__} does not say how to reach the token endpoint")

    def _bind(self, client: TokenClient, request: TokenRequest) -> None:
        self._client = client
        self._request = request
        self._keyed = None
        self._memo = None

    def _derive(self: _Auth, request: TokenRequest) -> _Auth:
        """Another auth of this class for `request`, sharing this one's client.

        Cheap by design: no SSLContext, pool, watch or thread is made.
        """
        derived = object.__new__(type(self))
        derived._bind(self._live(), request)
        return derived

    def _remembered(self: _Auth, memo_key: tuple[Any, ...]) -> _Auth | None:
        """The auth derived earlier for `memo_key`, if remembered (see `_remember`)."""
        memo = self._memo
        if memo is None:
            return None
        kind = memo.get(memo_key[0])
        return None if kind is None else cast("_Auth | None", kind.get(memo_key))

    def _remember(self: _Auth, memo_key: tuple[Any, ...], request: TokenRequest) -> _Auth:
        """`_derive(request)`, remembered under `memo_key` (its first item: the kind).

        Asking for a tenant's or a user's auth on every incoming request is the
        intended use: after the first time it is one dict lookup, and the object
        keeps its cache key, so its requests cost what the first auth's cost.
        Each kind is bounded like its tokens (`max_tenants` for tenants,
        `max_users` for users' auths), the oldest going first; what it forgets is
        only rebuilt, the tokens stay in the client's cache.
        """
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        kind = memo.setdefault(memo_key[0], {})
        derived = self._derive(request)
        limits = self._live().cache.limits
        limit = limits.get("tenant" if memo_key[0] == "tenant" else "user", _MEMO_LIMIT)
        while len(kind) >= max(1, limit):
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del kind[next(iter(kind))]
        kind[memo_key] = derived
        return derived

    # -- tokens for others ------------------------------------------------------------

    @guarded
    def for_tenant(
        self: _Auth,
        subdomain: str | None = None,
        *,
        zone_id: str | None = None,
        app_tid: str | None = None,
    ) -> _Auth:
        """The auth for a subscriber tenant: give exactly one of the three.

        `subdomain` replaces the first DNS label of the token URL's host
        (``provider.authentication.cert.eu10...`` becomes
        ``customer-a.authentication.cert.eu10...``), scheme, port and path kept;
        it must be one DNS label. `zone_id` sends the header ``x-zid`` to the same
        token URL; `app_tid` (SAP Identity Services) the form field ``app_tid``.
        The result is an auth of the same class sharing this one's certificate,
        connections, rotation and policies, with its own cached token; the same
        tenant again gives the same object, so calling this per request is cheap.
        A bad value raises an `ArgumentError` (also a `ValueError`) and sends
        nothing; a routed host outside `allowed_hosts` (when they are set) an
        `InsecureTransportError`. At most `max_tenants` tenant tokens are cached.
        """
        memo_key = ("tenant", subdomain, zone_id, app_tid)
        known = self._remembered(memo_key)
        if known is not None:
            return known
        request = self._request.replace(
            tenant=Tenant.create(subdomain, zone_id=zone_id, app_tid=app_tid)
        )
        client = self._live()
        client.route(request, client.state)  # fails now, before anything is sent
        return self._remember(memo_key, request)

    # -- constructors from bindings ----------------------------------------------------

    @classmethod
    @guarded
    def from_binding(
        cls: type[_Auth],
        binding: BindingInput,
        *,
        namespace: str | None = None,
        verify: Verify = True,
        discover: bool = False,
        **kwargs: Any,
    ) -> _Auth:
        """An auth configured from an XSUAA, Credential Store or generic mTLS binding.

        `binding` is a mapping, JSON text, or the path of a service-key file or
        a Kubernetes binding directory; a file or directory is re-read when it
        changes, so a rotated certificate is picked up without a restart.
        `namespace` is required for Credential Store. `discover=True` resolves
        the token endpoint from ``/.well-known/openid-configuration``
        (``mtls_endpoint_aliases``). Other keyword arguments are those of the
        constructor.
        """
        binding = redact(binding)  # frames captured on error show no key
        feed = BindingFeed.read(binding)
        parsed = feed.binding
        if parsed.needs_namespace and not namespace:
            raise BindingError(
                f"the Credential Store binding in {parsed.source} needs namespace=: tokens "
                "are issued per namespace (the form field credstore_namespace)"
            )
        token_url = parsed.token_url
        if discover:
            base = parsed.url or token_url.rsplit("/oauth/token", 1)[0]
            found = discover_endpoints(
                base,
                feed.certificate.ssl_context(verify),
                domains=parsed.domains,
                timeout=kwargs.get("timeout", 10.0),
            )
            token_url = feed.token_url_override = found.token_endpoint
            feed.authorization_url_override = found.authorization_endpoint
        return cls(token_url, parsed.client_id, feed, namespace=namespace, verify=verify, **kwargs)

    @classmethod
    @guarded
    def from_vcap_services(
        cls: type[_Auth], label: str = "xsuaa", name: str | None = None, **kwargs: Any
    ) -> _Auth:
        """An auth from the `label` instance (named `name`) in `VCAP_SERVICES`."""
        return cls.from_binding(redact(select_vcap_service(label, name)), **kwargs)

    @classmethod
    @guarded
    def from_kubernetes(
        cls: type[_Auth], name: str | None = None, label: str | None = None, **kwargs: Any
    ) -> _Auth:
        """An auth from a Kubernetes binding under `$SERVICE_BINDING_ROOT` (or legacy)."""
        return cls.from_binding(kubernetes_binding_path(name, label), **kwargs)

    # -- tokens, for the integrations' signing code ------------------------------------

    def _live(self) -> TokenClient:
        client = self._client
        if client is None:
            raise RuntimeError(f"{type(self).__name__} was not fully constructed")
        return client

    def _key(self) -> tuple[Any, ...]:
        """This auth's cache key in the client's current state (built once per state)."""
        client = self._live()
        state = client.state
        keyed = self._keyed
        if keyed is None or keyed[0] is not state:
            keyed = self._keyed = (state, client.key(self._request, state))
        return keyed[1]

    def _fresh(self) -> Token | None:
        """The cached token if it is fresh: the hot path, one lookup and no lock."""
        client = self._client
        keyed = self._keyed
        if client is None or keyed is None or keyed[0] is not client.state:
            return None
        return client.fresh(keyed[1])

    def _token(self) -> Token:
        """A usable token (threads): the cached one on the hot path."""
        token = self._fresh()
        if token is None:
            client = self._live()
            self._key()  # the key of the state the fetch starts in
            token = client.token(self._request)
        return token

    async def _atoken(self) -> Token:
        """A usable token (coroutines): the cached one on the hot path."""
        token = self._fresh()
        if token is None:
            client = self._live()
            self._key()
            token = await client.atoken(self._request)
        return token

    def token_info(self) -> TokenInfo:
        """Facts about this auth's token, fetching one if needed: never the token itself.

        Useful to warm the cache at start-up and to check a binding end to end
        (`mtls-auth check --fetch` uses it). Raises `TokenError` like a request would.
        """
        client = self._live()
        token = self._token()
        return token.info(client.cache.clock(), client.state.certificate.thumbprint)

    async def atoken_info(self) -> TokenInfo:
        """`token_info` for coroutines: the fetch never blocks the event loop."""
        client = self._live()
        token = await self._atoken()
        return token.info(client.cache.clock(), client.state.certificate.thumbprint)

    @guarded
    def for_user(self: _Auth, assertion: str | Secret) -> _Auth:
        """The auth acting for a user: their JWT exchanged over mTLS (jwt-bearer, RFC 7523).

        Pass the incoming request's user token (``Authorization: Bearer <jwt>``);
        calling this per request is the intended use: the same token gives the
        same object and one exchange, cached by the token's SHA-256 (never the
        token itself), at most `max_users` of them. The exchanged token is
        renewed by a new exchange as it nears expiry, while the user's token is
        valid; once that has expired, a `TokenError` says so and nothing is
        sent. XSUAA gets the ``x-zid`` of the token's ``zid`` claim, Identity
        Services its ``app_tid`` (read unverified, only to route). Not a JWT:
        an `ArgumentError` (also a `ValueError`).
        """
        sealed: Secret = redact(assertion)
        del assertion  # no user token in this frame from here on
        if isinstance(sealed.value, str):
            # The same token again (every request of a user): its digest finds
            # the remembered auth without decoding the token once more.
            known = self._remembered(("user", JwtBearer.digest_of(sealed.value)))
            if known is not None:
                return known
        grant = JwtBearer.of(sealed)
        grant.usable()
        memo_key = ("user", grant.digest)
        request = users.exchange_request(self._request, grant, self._live().state)
        return self._remember(memo_key, request)

    @guarded
    def authorization_request(
        self, redirect_uri: str, *, scope: str | None = None, state: str | None = None
    ) -> AuthorizationRequest:
        """Start a user's login: the authorization code flow with PKCE (S256).

        Returns an `AuthorizationRequest`: send the browser to its ``url`` and
        keep it (``as_dict()``) in the user's session until the callback. The
        authorization endpoint is the browser-facing one: the binding's ``url``
        (XSUAA ``/oauth/authorize``, Identity Services ``/oauth2/authorize`` or the
        binding's ``authorization_endpoint``), discovery's, or
        ``authorization_url=``; a tenant's auth (``for_tenant(subdomain)``) sends
        the user to the tenant's own login page.
        """
        return users.login_request(
            self._request, self._live().state, redirect_uri, scope=scope, login_state=state
        )

    @guarded
    def for_authorization_code(
        self: _Auth, request: AuthorizationRequest, callback_url: str
    ) -> _Auth:
        """Finish a login: exchange the code the browser came back with, over mTLS.

        `callback_url` is the full URL of the callback request. A ``state``
        that does not match `request`'s raises `ArgumentError` and sends
        nothing; an ``error`` in it raises `TokenResponseError` (``.error``,
        ``.error_description``). Returns the user's auth, which renews its
        token with the refresh token before it expires (keeping the newest the
        server sends); when the server refuses that, `LoginRequiredError`.
        """
        exchange, session = users.code_exchange(self._request, request, redact(callback_url))
        del callback_url  # it holds the code
        self._live().token(exchange)
        return self._derive(session)

    @aguarded
    async def afor_authorization_code(
        self: _Auth, request: AuthorizationRequest, callback_url: str
    ) -> _Auth:
        """`for_authorization_code` for coroutines: the exchange never blocks the loop."""
        exchange, session = users.code_exchange(self._request, request, redact(callback_url))
        del callback_url
        await self._live().atoken(exchange)
        return self._derive(session)

    @guarded
    def for_refresh_token(self: _Auth, refresh_token: str | Secret) -> _Auth:
        """Resume a user session the application stored: its token comes from `refresh_token`.

        Store ``user.refresh_token.reveal()`` after the user's requests (the
        server may have rotated it); a refused one raises `LoginRequiredError`.
        """
        sealed: Secret = redact(refresh_token)
        del refresh_token
        if not isinstance(sealed.value, str) or not sealed.value:
            raise ArgumentError("refresh_token must be a non-empty string")
        memo_key = ("refresh", hashlib.sha256(sealed.value.encode("utf-8")).hexdigest())
        known = self._remembered(memo_key)
        if known is not None:
            return known
        return self._remember(memo_key, users.session_request(self._request, UserSession(sealed)))

    @guarded
    def for_password(self: _Auth, username: str, password: str | Secret) -> _Auth:
        """The password grant (legacy: for tests and tooling, never for production logins).

        The user's password goes to the token endpoint with every token it asks
        for; prefer `authorization_request` for people and `for_user` for tokens
        you already have.
        """
        grant = Password.of(username, redact(password))
        del password
        memo_key = ("password", grant.digest)
        known = self._remembered(memo_key)
        if known is not None:
            return known
        return self._remember(memo_key, self._request.replace(grant=grant))

    @property
    def refresh_token(self) -> Secret | None:
        """A user session's current refresh token, sealed (``.reveal()``), else None."""
        session = getattr(self._request.grant, "session", None)
        return session.refresh_token if isinstance(session, UserSession) else None

    # -- public, non-secret facts --------------------------------------------------

    @property
    def client_id(self) -> str:
        """The OAuth client id sent with every token request."""
        return self._live().state.client_id

    @property
    def token_url(self) -> str:
        """The token endpoint this auth asks (over mTLS); a tenant's auth shows its own."""
        return self._request.token_url(self._live().state.token_url)

    @property
    def namespace(self) -> str | None:
        """The Credential Store namespace (form field ``credstore_namespace``), if any."""
        return self._request.namespace

    @property
    def certificate(self) -> ClientCertificate:
        """The client certificate presented now (it follows rotations)."""
        return self._live().state.certificate

    def close(self) -> None:
        """Close the connections to the token endpoint (opened again when needed).

        Derived objects share them with the object they came from.
        """
        client = self._client
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        client = self._client
        if client is None:
            return f"<{name} (not constructed)>"
        try:
            state = client.state
            request = self._request.describe()
            return (
                f"<{name} client_id={state.client_id!r} token_url={self.token_url!r}"
                f"{' ' + request if request else ''} token={client.describe_token(self._key())}>"
            )
        except Exception as exc:  # noqa: BLE001 - repr must never raise
            return f"<{name} (repr failed: {type(exc).__name__})>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{type(self).__name__} holds a private key and an access token and cannot be "
            "pickled; build a new one in the other process"
        )


def _as_store(sealed: Secret) -> TokenStore:
    """``token_store=`` (sealed) as a store: itself, or the store its URL names."""
    from ._store import TokenStore

    if isinstance(sealed.value, TokenStore):
        return sealed.value
    from .stores import open_store

    return open_store(sealed)


def _named(function: Callable[..., Any], owner: str) -> Callable[..., Any]:
    """A copy of `function` (and of the guard around it) named as a method of `owner`."""
    inner = getattr(function, "__wrapped__", None)
    target = inner if inner is not None else function
    copy = types.FunctionType(
        target.__code__,
        target.__globals__,
        target.__name__,
        target.__defaults__,
        target.__closure__,
    )
    copy.__kwdefaults__ = target.__kwdefaults__
    copy.__qualname__ = f"{owner}.{target.__name__}"
    copy.__doc__ = target.__doc__
    copy.__module__ = target.__module__
    copy.__annotations__ = target.__annotations__
    if inner is None:
        return copy
    return aguarded(copy) if inspect.iscoroutinefunction(target) else guarded(copy)
