"""A real loopback HTTPS token server that requires and verifies client certificates.

`TokenServer` speaks the two token endpoint shapes the library targets and a
protected resource, over real TLS on ``127.0.0.1``::

    POST /oauth/token                      XSUAA (opaque token, or RS256 JWT)
    POST /api/v1/token                     Credential Store (always opaque)
    GET  /.well-known/openid-configuration token_endpoint + mtls_endpoint_aliases
    GET  /token_keys                       JWKS for the JWT signing key
    ANY  /resource, /resource/...          bearer-protected resource
    ANY  /resource/always-401              always 401 invalid_token

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
from ._credstore_api import CREDENTIALS_PATH
from ._faults import Fault, FaultQueue, FaultStream
from ._oauth import (
    CREDSTORE_TOKEN_PATH,
    JWKS_PATH,
    OPENID_CONFIGURATION_PATH,
    RESOURCE_PATH,
    XSUAA_TOKEN_PATH,
    ResourceRequest,
    TokenRequest,
)
from ._transport import Listener, server_ssl_context
from ._transport import _load_cert_chain as _load_cert_chain

if TYPE_CHECKING:
    from types import TracebackType

    from cryptography.hazmat.primitives.asymmetric import rsa

    from ._credstore_api import CredstoreApi
    from ._pki import PKI, Credential

__all__ = [
    "CREDSTORE_TOKEN_PATH",
    "XSUAA_TOKEN_PATH",
    "Fault",
    "FaultStream",
    "ResourceRequest",
    "TokenRequest",
    "TokenServer",
]

logger = logging.getLogger("mtls_auth.testing")


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
    ) -> None:
        self.pki = pki
        self.require_client_cert = require_client_cert
        self.server_credential = server_credential
        self._app = TokenApp(
            token_lifetime=token_lifetime, clock=clock, jwt_tokens=jwt_tokens, cert_bound=cert_bound
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
        context = server_ssl_context(
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
        """Invalidate every token issued so far (later tokens are unaffected)."""
        self._app.revoke_all()

    # -- faults -------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Apply `fault` to the next `times` matching requests, after earlier faults.

        With `path` None the fault matches requests to either token endpoint;
        otherwise only requests to exactly that path: a resource path, or a
        document such as ``"/.well-known/openid-configuration"`` (a 302 there
        tests redirect handling). Queued faults are consumed first-in, first-out.
        """
        self._faults.inject(fault, times, path)

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
