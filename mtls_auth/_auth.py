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
import time
from collections.abc import Awaitable, Collection, Generator, Iterable, Mapping
from typing import Callable, Union
from urllib.parse import urlsplit

from ._cache import RefreshPolicy, TokenCache
from ._certificate import ClientCertificate, Verify
from ._errors import CertificateError, InsecureTransportError
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

__all__ = ["AuthCore", "CertificateSource", "coerce_certificate"]

logger = logging.getLogger("mtls_auth")

#: What `certificate=` accepts: PEM text (with `key=`) or a ready ClientCertificate.
CertificateSource = Union[str, bytes, ClientCertificate]

SendSync = Callable[[HttpRequest], Union[HttpResponse, TransportFailure]]
SendAsync = Callable[[HttpRequest], Awaitable[Union[HttpResponse, TransportFailure]]]


def coerce_certificate(
    certificate: CertificateSource,
    key: str | bytes | None,
    password: str | bytes | None,
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
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Destinations:
    """Decides, per scheme and host, whether a request may carry the token."""

    __slots__ = ("_allow_http_loopback", "_allowed", "_seen")

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

    def check(self, scheme: str, host: str) -> None:
        ok = self._seen.get((scheme, host))
        if ok is None:
            ok = self._decide(scheme, host)
            if len(self._seen) < 1024:
                self._seen[(scheme, host)] = ok
        if not ok:
            self._refuse(scheme, host)

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        self.check(parts.scheme.lower(), (parts.hostname or "").lower())

    def _decide(self, scheme: str, host: str) -> bool:
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


class AuthCore:
    """Certificate, token request, cache and destination policy of one auth object."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        certificate: CertificateSource,
        key: str | bytes | None = None,
        *,
        password: str | bytes | None = None,
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
    ) -> None:
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.spec = TokenSpec.create(
            token_url, client_id, namespace=namespace, scope=scope, params=params
        )
        self.certificate = coerce_certificate(certificate, key, password)
        self.verify = verify
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.cache = TokenCache(
            clock=clock or time.monotonic,
            policy=RefreshPolicy(leeway=leeway),
            wait_timeout=self.timeout * 2 + 5,
        )
        self.destinations = _Destinations(allowed_hosts, allow_http_loopback)
        self._key = (self.spec.cache_key, self.certificate.thumbprint)

    # -- tokens ----------------------------------------------------------------------

    def token(self, send: SendSync) -> Token:
        return self.cache.get(self._key, lambda: self._fetch_sync(send))

    async def atoken(self, send: SendAsync) -> Token:
        return await self.cache.aget(self._key, lambda: self._fetch_async(send))

    def fresh_token(self) -> Token | None:
        """The cached token if it is fresh: the lock-free hot path."""
        return self.cache.current(self._key)

    def invalidate(self, authorization: str | None) -> None:
        """Forget the token that produced a 401, if it is still the current one."""
        entry = self.cache._entry
        if entry is not None and entry[1].matches(authorization):
            self.cache.invalidate(entry[1])

    def _flow(self) -> Generator[Step, Reply, Token]:
        logger.debug("requesting a token from %s for %r", self.spec.token_url, self.spec.client_id)
        return fetch_flow(
            self.spec,
            timeout=self.timeout,
            retry=self.retry,
            clock=self.cache.clock,
            subject=self.certificate.subject,
        )

    def _fetch_sync(self, send: SendSync) -> Token:
        flow = self._flow()
        step = next(flow)
        while True:
            if isinstance(step, HttpRequest):
                reply: HttpResponse | TransportFailure | None = send(step)
            else:
                time.sleep(step)
                reply = None
            try:
                step = flow.send(reply)
            except StopIteration as done:
                token: Token = done.value
                return token

    async def _fetch_async(self, send: SendAsync) -> Token:
        flow = self._flow()
        step = next(flow)
        while True:
            if isinstance(step, HttpRequest):
                reply: HttpResponse | TransportFailure | None = await send(step)
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
        namespace = f" namespace={self.spec.namespace!r}" if self.spec.namespace else ""
        return (
            f"client_id={self.spec.client_id!r} token_url={self.spec.token_url!r}"
            f"{namespace} token={token_state}"
        )
