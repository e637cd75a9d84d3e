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

import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Callable, TypeVar

from ._certificate import CertificateProvider, CertificateSource, ClientCertificate
from ._client import ClientState, Sender, Settings, TokenClient
from ._discovery import discover_token_endpoint
from ._errors import BindingError
from ._redact import Secret, guarded, redact
from ._request import TokenRequest
from ._retry import RetryPolicy
from ._sources import BindingFeed, BindingInput, kubernetes_binding_path, select_vcap_service
from ._tls import Verify
from ._token import Token, TokenInfo

__all__ = ["AuthFacade"]

_Auth = TypeVar("_Auth", bound="AuthFacade")


class AuthFacade:
    """The shared half of `mtls_auth.requests.MtlsOAuth2` and `mtls_auth.httpx.MtlsOAuth2`.

    Subclasses implement `_new_sender`: the `Sender` their client talks to the
    token endpoint with.
    """

    _client: TokenClient | None = None
    _request: TokenRequest
    _keyed: tuple[ClientState, tuple[Any, ...]] | None = None

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
        settings = Settings(
            verify=verify,
            timeout=timeout,
            leeway=leeway,
            allowed_hosts=allowed_hosts,
            allow_http_loopback=allow_http_loopback,
            retry=retry or RetryPolicy(),
            clock=clock or time.monotonic,
            check_interval=check_interval,
        )
        request = TokenRequest.create(scope=scope, namespace=namespace, params=params)
        client = TokenClient(
            token_url, client_id, certificate, key, password, settings, type(self)._new_sender
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

    def _derive(self: _Auth, request: TokenRequest) -> _Auth:
        """Another auth of this class for `request`, sharing this one's client.

        Cheap by design: no SSLContext, pool, watch or thread is made.
        """
        derived = object.__new__(type(self))
        derived._bind(self._live(), request)
        return derived

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
            token_url = discover_token_endpoint(
                base,
                feed.certificate.ssl_context(verify),
                domains=parsed.domains,
                timeout=kwargs.get("timeout", 10.0),
            )
            feed.token_url_override = token_url
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

    # -- public, non-secret facts --------------------------------------------------

    @property
    def client_id(self) -> str:
        """The OAuth client id sent with every token request."""
        return self._live().state.client_id

    @property
    def token_url(self) -> str:
        """The token endpoint this auth asks (over mTLS)."""
        return self._live().state.token_url

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
                f"<{name} client_id={state.client_id!r} token_url={state.token_url!r}"
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
