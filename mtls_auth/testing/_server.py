"""A real loopback HTTPS token server that requires and verifies client certificates.

`TokenServer` speaks the token endpoint shapes the library targets and a
protected resource, over real TLS on ``127.0.0.1``::

    POST /oauth/token                      XSUAA (opaque token, or RS256 JWT)
    POST /oauth2/token                     SAP Identity Services (IAS; like XSUAA)
    POST /api/v1/token                     Credential Store (always opaque)
    GET  /oauth/authorize, /oauth2/authorize  login: 302 to the redirect URI with a code
    GET  /.well-known/openid-configuration endpoints, grants, mtls_endpoint_aliases
    GET  /token_keys, /oauth2/certs        JWKS for the JWT signing key
    ANY  /resource, /resource/...          bearer-protected resource
    ANY  /resource/always-401              always 401 invalid_token

The same port answers for tenants under reserved ``.test`` names (resolve
them with `loopback_names`)::

    https://<subdomain>.authentication.cert.mtls.test:PORT   a tenant's token endpoint
    https://<subdomain>.authentication.mtls.test:PORT        a tenant's login
    https://<tenant>.accounts.mtls.test:PORT                 an IAS tenant

A token request's tenant is its ``x-zid`` header (a zone id), else (IAS) its
``app_tid`` form field, else the first label of its host; else it is for the
provider, as on ``localhost``. Tokens carry their tenant (JWT ``zid``,
``ext_attr.zdn``, IAS ``app_tid``). Besides client credentials the server
knows the jwt-bearer, authorization code (PKCE S256), refresh token and
password grants (`._grants`).

It trusts only the PKI root, so clients must send their intermediate. Each
connection gets its own daemon thread, which also runs the TLS handshake (with
a timeout), so a stalled client never blocks ``accept``. Connections are
HTTP/1.1 keep-alive and every response leaves in a single write.

Tests steer it through thread-safe switches: `TokenServer.inject` queues
`Fault` objects for the next token requests, `TokenServer.revoke_all` and
`TokenServer.revoke_certificate` invalidate tokens, `TokenServer.cert_bound`
turns on RFC 8705 certificate binding, and an injectable `clock` decides
expiry. Tokens never appear in logs (logger ``mtls_auth.testing``, DEBUG only)
or in any record's repr.

`TokenServer` is a facade over three parts: the OAuth behaviour without any
sockets (`._app.TokenApp`), the fault queue (`._faults.FaultQueue`) and the
TLS/HTTP plumbing (`._transport.Listener`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from .._redact import safe_repr
from ._app import TokenApp
from ._claims import mint_user_token
from ._credstore_api import CREDENTIALS_PATH
from ._faults import Fault, FaultQueue, FaultStream
from ._oauth import (
    CREDSTORE_TOKEN_PATH,
    IAS_TOKEN_PATH,
    JWKS_PATH,
    OPENID_CONFIGURATION_PATH,
    RESOURCE_PATH,
    XSUAA_TOKEN_PATH,
    ResourceRequest,
    TokenRequest,
)
from ._tenants import (
    DEFAULT_IAS_TENANT,
    IAS_DOMAIN,
    LOGIN_DOMAIN,
    TENANT_DOMAIN,
    check_subdomain,
)
from ._transport import Listener, shared_server_context
from ._transport import _load_cert_chain as _load_cert_chain
from ._users import TEST_USER

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from cryptography.hazmat.primitives.asymmetric import rsa

    from ._credstore_api import CredstoreApi
    from ._pki import PKI, Credential

__all__ = [
    "CREDSTORE_TOKEN_PATH",
    "IAS_TOKEN_PATH",
    "XSUAA_TOKEN_PATH",
    "Fault",
    "FaultStream",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
]

logger = logging.getLogger(__name__)


@safe_repr
class TokenServer:
    """An mTLS OAuth2 token server and protected resource on ``https://localhost:PORT``.

    The server requires a client certificate chaining to `pki`'s root
    (``require_client_cert=False`` only requests one; token endpoints then still
    answer 401 ``invalid_client`` without it). `token_lifetime` (seconds, also
    settable later) and the injectable `clock` (seconds, like `time.time`)
    decide ``expires_in`` and expiry at the resource. With `jwt_tokens` the
    XSUAA endpoint issues RS256 JWTs carrying ``cnf.x5t#S256``; the Credential
    Store endpoint always issues opaque tokens. With `cert_bound` (settable)
    the resource also requires the presented certificate to be the one the
    token was issued to (RFC 8705). `server_credential` replaces the PKI's
    localhost server certificate, e.g. with `PKI.expired_server`.
    `handshake_linger` (seconds, default 0: close at once) makes the server
    drain the connection after a failed handshake so the client reliably
    reads the TLS alert (with TLS 1.3 an immediate close can reset the
    connection before the client has read it).

    Tenants: `strict_tenants` (settable) refuses tenants not added with
    `add_tenant` (401 ``invalid_client``); off, they are made on first use.
    A registered client id is valid in every tenant.

    Use it as a context manager or call `start` and `stop`. Every switch is
    safe to flip from the test thread while requests are in flight.
    """

    def __init__(
        self,
        pki: PKI,
        *,
        token_lifetime: float = 3600,
        clock: Callable[[], float] = time.time,
        require_client_cert: bool = True,
        jwt_tokens: bool = False,
        cert_bound: bool = False,
        server_credential: Credential | None = None,
        handshake_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        handshake_linger: float = 0.0,
        strict_tenants: bool = False,
    ) -> None:
        self.pki = pki
        self.require_client_cert = require_client_cert
        self.server_credential = server_credential
        self._app = TokenApp(
            token_lifetime=token_lifetime,
            clock=clock,
            jwt_tokens=jwt_tokens,
            cert_bound=cert_bound,
            strict_tenants=strict_tenants,
        )
        self._faults = FaultQueue()
        self._listener = Listener(
            self._app,
            self._faults,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            handshake_linger=handshake_linger,
        )
        # The app's lock and its live dict of issued tokens (token -> record),
        # under the names the test suite's secret canary reads.
        self._lock = self._app.lock
        self._tokens = self._app.tokens
        # Every authorization code, refresh token and minted user token handed
        # out (secret -> what it is): a live dict that only grows, for the canary.
        self._grant_secrets = self._app.users.secrets

    # -- switches (the app and the listener read them on every request) -------------

    @property
    def token_lifetime(self) -> float:
        """Seconds a new token lives (``expires_in``); settable."""
        return self._app.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: float) -> None:
        self._app.token_lifetime = value

    @property
    def clock(self) -> Callable[[], float]:
        """The clock deciding token times and expiry, like `time.time`; settable."""
        return self._app.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self._app.clock = value

    @property
    def jwt_tokens(self) -> bool:
        """Whether the XSUAA endpoint issues RS256 JWTs; settable."""
        return self._app.jwt_tokens

    @jwt_tokens.setter
    def jwt_tokens(self, value: bool) -> None:
        self._app.jwt_tokens = value

    @property
    def cert_bound(self) -> bool:
        """Whether the resource requires the token's own certificate (RFC 8705); settable."""
        return self._app.cert_bound

    @cert_bound.setter
    def cert_bound(self, value: bool) -> None:
        self._app.cert_bound = value

    @property
    def strict_tenants(self) -> bool:
        """Whether unknown tenants get 401 ``invalid_client`` ("unknown tenant"); settable.

        Off (the default), an unknown subdomain or zone id is a new tenant on
        first use (a subdomain's zone id: `zone_id_of`).
        """
        return self._app.strict_tenants

    @strict_tenants.setter
    def strict_tenants(self, value: bool) -> None:
        self._app.strict_tenants = value

    @property
    def rotate_refresh_tokens(self) -> bool:
        """Whether each refresh answers a new refresh token and voids the old one; settable.

        Default True; off, the same refresh token comes back and stays valid.
        """
        return self._app.users.rotate_refresh_tokens

    @rotate_refresh_tokens.setter
    def rotate_refresh_tokens(self, value: bool) -> None:
        self._app.users.rotate_refresh_tokens = value

    @property
    def handshake_timeout(self) -> float:
        """Seconds a new connection has to complete its TLS handshake; settable."""
        return self._listener.handshake_timeout

    @handshake_timeout.setter
    def handshake_timeout(self, value: float) -> None:
        self._listener.handshake_timeout = value

    @property
    def idle_timeout(self) -> float:
        """Seconds an idle keep-alive connection stays open; settable."""
        return self._listener.idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, value: float) -> None:
        self._listener.idle_timeout = value

    @property
    def handshake_linger(self) -> float:
        """Seconds to drain a connection after a failed handshake (0: close at once); settable."""
        return self._listener.handshake_linger

    @handshake_linger.setter
    def handshake_linger(self, value: float) -> None:
        self._listener.handshake_linger = value

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> TokenServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._listener.running:
            return self
        credential = self.server_credential or self.pki.server
        context = shared_server_context(
            self.pki.root_pem, credential, require_client_cert=self.require_client_cert
        )
        # Serve this object's documents, so that a subclass overriding them is
        # heard. The references keep the server alive while it serves, and are
        # dropped on stop.
        self._app.documents = {
            OPENID_CONFIGURATION_PATH: lambda: self.openid_configuration,
            JWKS_PATH: lambda: self.jwks,
        }
        self._listener.start(context)
        logger.debug("token server listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop open connections and join every server thread."""
        if self._listener.stop(timeout):
            self._app.documents = {}
            logger.debug("token server on port %s stopped", self._listener.port)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._listener.running else "stopped"
        return f"TokenServer({where}, tokens_issued={self.tokens_issued})"

    # -- addresses ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (the server must have been started)."""
        port = self._listener.port
        if port is None:
            raise RuntimeError("TokenServer is not started")
        return port

    @property
    def url(self) -> str:
        """``https://localhost:PORT``, matching the server certificate."""
        return f"https://localhost:{self.port}"

    @property
    def token_url(self) -> str:
        """The XSUAA token endpoint, ``url + "/oauth/token"``."""
        return self.url + XSUAA_TOKEN_PATH

    @property
    def credstore_token_url(self) -> str:
        """The Credential Store token endpoint, ``url + "/api/v1/token"``."""
        return self.url + CREDSTORE_TOKEN_PATH

    @property
    def resource_url(self) -> str:
        """The protected resource, ``url + "/resource"``."""
        return self.url + RESOURCE_PATH

    def _on(self, host: str) -> str:
        return f"https://{host}:{self.port}"

    def tenant_url(self, subdomain: str) -> str:
        """``https://<subdomain>.authentication.cert.mtls.test:PORT``: a tenant's cert host."""
        return self._on(f"{check_subdomain(subdomain)}.{TENANT_DOMAIN}")

    def tenant_token_url(self, subdomain: str) -> str:
        """The tenant's XSUAA token endpoint, ``tenant_url(subdomain) + "/oauth/token"``."""
        return self.tenant_url(subdomain) + XSUAA_TOKEN_PATH

    def login_url(self, subdomain: str) -> str:
        """``https://<subdomain>.authentication.mtls.test:PORT``: the tenant's login host.

        Its authorization endpoint is ``login_url(subdomain) + "/oauth/authorize"``.
        """
        return self._on(f"{check_subdomain(subdomain)}.{LOGIN_DOMAIN}")

    def ias_url(self, tenant: str = DEFAULT_IAS_TENANT) -> str:
        """``https://<tenant>.accounts.mtls.test:PORT``: an IAS tenant (and its issuer)."""
        return self._on(f"{check_subdomain(tenant)}.{IAS_DOMAIN}")

    def ias_token_url(self, tenant: str = DEFAULT_IAS_TENANT) -> str:
        """The IAS token endpoint, ``ias_url(tenant) + "/oauth2/token"``."""
        return self.ias_url(tenant) + IAS_TOKEN_PATH

    @property
    def ca_pem(self) -> str:
        """The PKI root, for clients' ``verify=``."""
        return self.pki.root_pem

    @property
    def issuer(self) -> str:
        """The issuer XSUAA advertises (its token endpoint URL)."""
        return self.token_url

    @property
    def openid_configuration(self) -> dict[str, Any]:
        """What ``GET /.well-known/openid-configuration`` answers."""
        return self._app.openid_configuration(self.url)

    # -- registry and revocation ------------------------------------------------------

    def register_client(self, client_id: str, credential_or_subject: Credential | str) -> None:
        """Let `client_id` authenticate with certificates of the given subject DN.

        The binding is to the subject (RFC 4514), not the certificate, so a
        rotated certificate with the same subject keeps working, as with
        XSUAA. Registering again adds another accepted subject.
        """
        self._app.register_client(client_id, credential_or_subject)

    def unregister_client(self, client_id: str) -> None:
        """Forget `client_id`; its next token request gets 401 ``invalid_client``."""
        self._app.unregister_client(client_id)

    def revoke_certificate(self, thumbprint: str) -> None:
        """Refuse that exact certificate from now on and invalidate its tokens."""
        self._app.revoke_certificate(thumbprint)

    def revoke_all(self) -> None:
        """Invalidate every access token issued so far (later tokens are unaffected)."""
        self._app.revoke_all()

    def revoke_refresh_tokens(self) -> None:
        """Make every refresh token issued so far fail with 400 ``invalid_grant``."""
        self._app.users.revoke_refresh_tokens()

    # -- tenants -------------------------------------------------------------------------

    def add_tenant(self, subdomain: str, zone_id: str | None = None) -> str:
        """Register tenant `subdomain` (zone id default: `zone_id_of`); its zone id.

        Adding it again returns the same zone id. Needed only with `strict_tenants`.
        """
        return self._app.tenants.add(subdomain, zone_id)

    def zone_id_of(self, subdomain: str) -> str:
        """The zone id of `subdomain`: the registered one, else the one it gets on first use.

        Unless given to `add_tenant`, a deterministic UUID5 of the subdomain
        (the same in every run).
        """
        return self._app.tenants.zone_id_of(subdomain)

    # -- users and logins ---------------------------------------------------------------

    def add_user(self, username: str, password: str) -> None:
        """Let `username` use the password grant with `password`.

        `TEST_USER` (``"test-user"``) with `TEST_PASSWORD` (``"test-password"``)
        is there from the start.
        """
        self._app.users.add_user(username, password)

    def login(self, authorization_url: str, user: str = TEST_USER) -> str:
        """Log `user` in at `authorization_url`; the callback URL the browser would go to.

        `authorization_url` is what the client sends a browser to:
        ``login_url(subdomain) + "/oauth/authorize?..."`` (XSUAA),
        ``ias_url(tenant) + "/oauth2/authorize?..."`` (IAS) or the same on
        ``url``, with ``response_type=code``, ``client_id``, ``redirect_uri``,
        ``state``, ``code_challenge`` and ``code_challenge_method=S256``. The
        answer is ``redirect_uri?code=...&state=...`` (or ``?error=...``), as
        over HTTP, but without any: the server requires client certificates on
        every connection (a browser has none), so this is the supported way to
        complete a login in a test. ``GET`` on the endpoints works too, for
        clients with a certificate, logged in as `TEST_USER`. Raises
        ValueError when there is no callback to send an error to (a missing
        or unusable ``redirect_uri``, or not an authorization URL).
        """
        return self._app.login(authorization_url, user)

    def deny_next_login(self, error: str = "access_denied") -> None:
        """Make the next login answer ``error`` (in the callback URL) instead of a code."""
        self._app.users.deny_next_login(error)

    def mint_user_token(
        self,
        sub: str = TEST_USER,
        *,
        zid: str | None = None,
        app_tid: str | None = None,
        subdomain: str | None = None,
        lifetime: float = 600,
        exp: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A user's token (RS256 JWT) that the jwt-bearer grant accepts as ``assertion``.

        Signed with the user key (`user_jwks`), not the access-token key. Its
        claims: ``iss`` (the tenant's issuer), ``sub`` and ``user_name``
        (`sub`), ``zid``, ``app_tid`` and ``ext_attr.zdn`` of the tenant
        (`subdomain`, else `zid`, else `app_tid`; ``zid`` and ``app_tid``
        default to its zone id), ``iat``, ``exp`` (wall clock + `lifetime`,
        or `exp`) and ``jti``; `extra` last (a None value removes a claim).
        """
        return mint_user_token(
            self._app,
            sub,
            zid=zid,
            app_tid=app_tid,
            subdomain=subdomain,
            lifetime=lifetime,
            exp=exp,
            extra=extra,
        )

    @property
    def user_jwks(self) -> dict[str, Any]:
        """The JWKS of the user-token key (which `mint_user_token` signs with)."""
        return self._app.users.signer.jwks()

    # -- faults -------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Apply `fault` to the next `times` matching requests, after earlier faults.

        With `path` None the fault matches requests to either token endpoint;
        otherwise only requests to exactly that path: a resource path, or a
        document such as ``"/.well-known/openid-configuration"`` (a 302 there
        tests redirect handling). Queued faults are consumed first-in, first-out.
        """
        self._faults.inject(fault, times, path)

    def release_delays(self) -> None:
        """Let every `Fault.delay` now in progress answer at once.

        A test holds a request at the server with a long delay, checks what
        happens meanwhile, and releases it: it waits for the fact, not for
        the time. Delays that start later wait their full time.
        """
        self._listener.release_delays()

    @property
    def pending_faults(self) -> int:
        """How many fault applications are still queued."""
        return self._faults.pending_faults

    # -- JWT ---------------------------------------------------------------------------

    @property
    def jwt_public_key(self) -> rsa.RSAPublicKey:
        """The RSA key that verifies the JWTs (generated on first use)."""
        return self._app.signer.public_key

    @property
    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set served at ``/token_keys``."""
        return self._app.signer.jwks()

    # -- Credential Store credentials API ---------------------------------------------

    @property
    def credstore(self) -> CredstoreApi:
        """The Credential Store-shaped API at ``/api/v1/credentials`` (made on first use).

        Its `encryption_block()` is the binding's ``encryption`` object.
        """
        return self._app.credstore

    @property
    def credentials_url(self) -> str:
        """The credentials API base URL, as in a Credential Store binding's ``url``."""
        return self.url + CREDENTIALS_PATH

    # -- observation -------------------------------------------------------------------

    @property
    def token_requests(self) -> list[TokenRequest]:
        """Every request that reached a token endpoint, oldest first (a copy)."""
        return self._app.token_requests

    @property
    def token_request_count(self) -> int:
        """``len(token_requests)``, without copying."""
        return self._app.token_request_count

    @property
    def resource_requests(self) -> list[ResourceRequest]:
        """Every request to the protected resource, oldest first (a copy)."""
        return self._app.resource_requests

    @property
    def handshake_failures(self) -> list[str]:
        """One line per failed TLS handshake (type and OpenSSL reason)."""
        return self._listener.handshake_failures

    @property
    def fault_streams(self) -> list[FaultStream]:
        """How each streamed fault ended, oldest first (a copy).

        A record appears once the handler is done with the fault: poll for it.
        """
        return self._faults.fault_streams

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this low)."""
        return self._listener.accepted

    @property
    def tokens_issued(self) -> int:
        """Tokens issued since construction (`clear` does not reset it)."""
        return self._app.tokens_issued

    def token_info(self, token: str) -> dict[str, Any] | None:
        """What the server knows about `token`, or None if it never issued it."""
        return self._app.token_info(token)

    def clear(self) -> None:
        """Forget recorded requests, handshake failures, queued faults and fault streams.

        Issued tokens, registrations and revocations stay.
        """
        self._app.clear_records()
        self._listener.clear_handshake_failures()
        self._faults.clear()
