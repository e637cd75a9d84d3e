"""The token server's OAuth behaviour as a plain object: no sockets, no threads of its own.

`TokenApp` answers requests handed to it as values (path, headers, body, the
verified client certificate as a `Peer`) with a `Response`. The transport
asks `TokenApp.route` what a path is, then calls one of::

    record_token_request + handle_token    POST to a path in TOKEN_SHAPES
    handle_authorize                       GET  /oauth/authorize, /oauth2/authorize
    handle_resource (or record_resource)   ANY  /resource, /resource/...
    handle_credentials                     ANY  /api/v1/credentials[/...]
    handle_document                        GET  openid configuration, JWKS; else 404

Token endpoints are data (`TOKEN_SHAPES` in `._oauth`: path -> default scope,
JWT or opaque, which API its tokens open, how tenants are routed), and so are
grants (`GRANTS` in `._grants`: ``grant_type`` -> a function turning a
`TokenCall` into a `Grant` or an error). Validating the form, routing the
tenant (`._tenants`), issuing, recording and signing the token is common to
every grant and lives here; users, codes and refresh tokens live in
`._users.UserStore`, the login in `._authorize`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Literal

from .._redact import safe_repr
from ._authorize import authorize, login
from ._claims import access_token_claims, issuer_of
from ._credstore_api import CREDENTIALS_PATH, CredstoreApi
from ._documents import provider_document, tenant_document
from ._grants import GRANTS
from ._oauth import (
    ALWAYS_401_PATH,
    AUTHORIZE_PATHS,
    FORM_TYPE,
    IAS_JWKS_PATH,
    JWKS_PATH,
    NO_STORE,
    OPENID_CONFIGURATION_PATH,
    REPEATABLE_FIELDS,
    RESOURCE_PATH,
    TOKEN_SHAPES,
    XSUAA_TOKEN_PATH,
    Grant,
    IssuedToken,
    Peer,
    RedactedForm,
    ResourceRequest,
    TokenCall,
    TokenRequest,
    TokenShape,
    bearer_error,
    not_found,
    oauth_error,
    parse_form,
    parse_form_lists,
)
from ._pki import Credential
from ._signing import JwtSigner
from ._tenants import Tenant, TenantHint, TenantRegistry, UnknownTenant, tenant_hint
from ._users import TEST_USER, UserStore
from ._wire import Response, json_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._grants import GrantHandler

__all__ = ["Route", "TokenApp"]

logger = logging.getLogger(__name__)

#: What a path is, as far as the transport needs to know (`TokenApp.route`).
Route = Literal["token", "authorize", "resource", "credentials", "document"]


def _lower_names(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)
    return lowered


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base + "/")


def _hint(shape: TokenShape, headers: Mapping[str, str], form: Mapping[str, str]) -> TenantHint:
    if not shape.tenant_domains:
        return TenantHint()
    return tenant_hint(headers, form, shape.tenant_domains, app_tid=shape.app_tid)


# -- the app ------------------------------------------------------------------------------


@safe_repr
class TokenApp:
    """Client registry, token issuing, revocation and bearer checks, without any I/O.

    `token_lifetime` (seconds) and `clock` (like `time.time`) decide
    ``expires_in`` and expiry; with `jwt_tokens`, shapes that allow it issue
    RS256 JWTs carrying ``cnf.x5t#S256``; with `cert_bound` the resource also
    requires the token's own certificate (RFC 8705). `base_url` is where the
    app is served (the issuer is ``base_url + "/oauth/token"``). All of them
    may be changed at any time. `tenants` knows the tenants (`strict_tenants`:
    refuse unknown ones), `users` the users, codes and refresh tokens.

    `lock` guards every record; `tokens` is the live mapping of issued token
    string to `IssuedToken`, in issue order (read it under `lock`). Every
    method is thread-safe.
    """

    def __init__(
        self,
        *,
        token_lifetime: float = 3600,
        clock: Callable[[], float] = time.time,
        jwt_tokens: bool = False,
        cert_bound: bool = False,
        base_url: str = "https://localhost",
        strict_tenants: bool = False,
    ) -> None:
        self.token_lifetime = float(token_lifetime)
        self.clock = clock
        self.jwt_tokens = jwt_tokens
        self.cert_bound = cert_bound
        self.base_url = base_url
        #: grant_type -> handler; `GRANTS` unless replaced for this app.
        self.grants: Mapping[str, GrantHandler] = GRANTS
        self.signer = JwtSigner()
        #: GET path -> a function returning the JSON document served there, in
        #: place of the app's own `openid_configuration()` and JWKS.
        self.documents: dict[str, Callable[[], Any]] = {}
        self.lock = threading.Lock()
        self.tokens: dict[str, IssuedToken] = {}
        self._tokens_issued = 0
        self._clients: dict[str, set[str]] = {}
        self._revoked_thumbprints: set[str] = set()
        self._revoked_up_to = 0  # tokens with index <= this are revoked
        self._token_requests: list[TokenRequest] = []
        self._resource_requests: list[ResourceRequest] = []
        self._credstore: CredstoreApi | None = None
        self.tenants = TenantRegistry(strict=strict_tenants)
        self.users = UserStore(self.lock)

    @property
    def strict_tenants(self) -> bool:
        """Whether unknown tenants are refused (else made on first use); settable."""
        return self.tenants.strict

    @strict_tenants.setter
    def strict_tenants(self, value: bool) -> None:
        self.tenants.strict = value

    def __repr__(self) -> str:
        return f"TokenApp({self.base_url}, tokens_issued={self.tokens_issued})"

    # -- routing --

    def route(self, path: str) -> Route:
        """Which handler a request to `path` goes to."""
        if path in TOKEN_SHAPES:
            return "token"
        if path in AUTHORIZE_PATHS:
            return "authorize"
        if _under(path, RESOURCE_PATH):
            return "resource"
        if _under(path, CREDENTIALS_PATH):
            return "credentials"
        return "document"

    # -- registry and revocation --

    def register_client(self, client_id: str, credential_or_subject: Credential | str) -> None:
        """Let `client_id` authenticate with certificates of the given subject DN."""
        subject = (
            credential_or_subject.subject
            if isinstance(credential_or_subject, Credential)
            else credential_or_subject
        )
        with self.lock:
            self._clients.setdefault(client_id, set()).add(subject)

    def is_registered(self, client_id: str) -> bool:
        """Whether `client_id` is registered (for any certificate subject)."""
        with self.lock:
            return bool(self._clients.get(client_id))

    def unregister_client(self, client_id: str) -> None:
        """Forget `client_id`; its next token request gets 401 ``invalid_client``."""
        with self.lock:
            self._clients.pop(client_id, None)

    def revoke_certificate(self, thumbprint: str) -> None:
        """Refuse that exact certificate from now on and invalidate its tokens."""
        with self.lock:
            self._revoked_thumbprints.add(thumbprint)

    def revoke_all(self) -> None:
        """Invalidate every token issued so far (later tokens are unaffected)."""
        with self.lock:
            self._revoked_up_to = self._tokens_issued

    def _revoked(self, issued: IssuedToken) -> bool:
        # Under self.lock.
        return issued.index <= self._revoked_up_to or issued.thumbprint in self._revoked_thumbprints

    # -- token endpoints --

    def record_token_request(
        self,
        path: str,
        body: bytes,
        peer: Peer | None,
        headers: Mapping[str, str] | None = None,
    ) -> TokenRequest:
        """Record a request that reached a token endpoint, before anything can refuse it.

        With `headers` (any case) the record names the host and the tenant the
        request asks for (registering nothing).
        """
        lists = parse_form_lists(body)
        form = RedactedForm((name, values[0]) for name, values in lists.items())
        lowered = _lower_names(headers or {})
        shape = TOKEN_SHAPES.get(path)
        tenant = self.tenants.peek(_hint(shape, lowered, form)) if shape else None
        record = TokenRequest(
            path=path,
            form=form,
            client_id=form.get("client_id"),
            namespace=form.get("credstore_namespace"),
            thumbprint=peer.thumbprint if peer else None,
            subject=peer.subject if peer else None,
            time=self.clock(),
            host=lowered.get("host"),
            subdomain=tenant.subdomain if tenant else None,
            zone_id=tenant.zone_id if tenant else None,
            app_tid=tenant.zone_id if tenant and shape and shape.app_tid else None,
            resources=tuple(lists.get("resource", ())),
            grant_type=form.get("grant_type"),
        )
        with self.lock:
            self._token_requests.append(record)
        return record

    def handle_token(
        self, path: str, headers: Mapping[str, str], body: bytes, peer: Peer | None
    ) -> Response:
        """Answer a POST to the token endpoint `path` (records nothing: see `record_token_request`).

        `headers` are the request headers (any case), `body` the raw form,
        `peer` the verified client certificate or None.
        """
        shape = TOKEN_SHAPES.get(path)
        if shape is None:
            return not_found()
        headers = _lower_names(headers)
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != FORM_TYPE:
            return oauth_error(400, "invalid_request", f"Content-Type must be {FORM_TYPE}")
        form, duplicate = parse_form(body, REPEATABLE_FIELDS)
        if duplicate is not None:
            return oauth_error(400, "invalid_request", f"{duplicate} given more than once")
        grant_type = form.get("grant_type")
        if not grant_type:
            return oauth_error(400, "invalid_request", "grant_type is required")
        handler = self.grants.get(grant_type)
        if handler is None:
            supported = ", ".join(self.grants)
            verb = "are" if len(self.grants) > 1 else "is"
            return oauth_error(400, "unsupported_grant_type", f"only {supported} {verb} supported")
        try:
            tenant = self.tenants.resolve(_hint(shape, headers, form))
        except UnknownTenant as exc:
            return oauth_error(401, "invalid_client", str(exc))
        resources = tuple(parse_form_lists(body).get("resource", ()))
        call = TokenCall(
            path,
            shape,
            grant_type,
            RedactedForm(form),
            headers,
            peer,
            self.clock(),
            tenant,
            resources,
        )
        outcome = handler(self, call)
        if isinstance(outcome, Response):
            return outcome
        return self._issue(call, outcome)

    def authenticate_client(self, call: TokenCall) -> tuple[str, Peer] | Response:
        """RFC 8705 ``tls_client_auth``: the registered client_id and its certificate.

        The error `Response` when the form carries a client_secret, no client
        certificate was presented, client_id is missing, the certificate was
        revoked or its subject is not registered for that client_id.
        """
        if "client_secret" in call.form:
            return oauth_error(401, "invalid_client", "client_secret is not accepted with mTLS")
        peer = call.peer
        if peer is None:
            return oauth_error(401, "invalid_client", "a client certificate is required")
        client_id = call.form.get("client_id")
        if not client_id:
            return oauth_error(400, "invalid_request", "client_id is required")
        with self.lock:
            if peer.thumbprint in self._revoked_thumbprints:
                return oauth_error(401, "invalid_client", "the certificate has been revoked")
            if peer.subject not in self._clients.get(client_id, ()):
                return oauth_error(
                    401, "invalid_client", "client_id is not bound to the presented certificate"
                )
        return client_id, peer

    def _issue(self, call: TokenCall, grant: Grant) -> Response:
        lifetime = self.token_lifetime
        scope = grant.scope if grant.scope is not None else call.shape.default_scope
        tenant = grant.tenant if grant.tenant is not None else call.tenant
        with self.lock:
            self._tokens_issued += 1
            index = self._tokens_issued
        issued = IssuedToken(
            index=index,
            path=call.path,
            client_id=grant.client_id,
            namespace=grant.namespace,
            scope=scope,
            thumbprint=grant.peer.thumbprint,
            subject=grant.peer.subject,
            issued_at=call.now,
            expires_at=call.now + lifetime,
            grant_type=call.grant_type,
            shape=call.shape,
            tenant=tenant,
            user=grant.user,
            resources=call.resources,
        )
        if self.jwt_tokens and call.shape.jwt:
            token = self._jwt(issued, grant.claims, call.headers.get("host"))
        else:
            token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = issued
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(lifetime),
        }
        if scope is not None:
            body["scope"] = scope
        if grant.refresh:
            body["refresh_token"] = grant.refresh_token or self.users.new_refresh_token(
                grant.client_id, grant.user, tenant, call.path, grant.scope
            )
        logger.debug("issued token #%d to client %s at %s", index, grant.client_id, call.path)
        return Response(200, json_bytes(body), headers=NO_STORE)

    def _jwt(self, issued: IssuedToken, extra: Mapping[str, Any], host: str | None) -> str:
        issuer = self.issuer_of(issued.shape, issued.tenant, host)
        claims = access_token_claims(issued, issuer)
        claims.update(extra)
        return self.signer.sign(claims)

    def issuer_of(self, shape: TokenShape, tenant: Tenant | None, host: str | None = None) -> str:
        """The ``iss`` of tokens of `shape` for `tenant`, asked for on `host` (`._claims`)."""
        return issuer_of(self.base_url, self.issuer, shape, tenant, host)

    # -- logins --

    def handle_authorize(self, path: str, query: str, host: str | None) -> Response:
        """Answer ``GET`` an authorization endpoint (``TEST_USER`` is logged in)."""
        return authorize(self, path, query, host, TEST_USER)

    def login(self, authorization_url: str, user: str = TEST_USER) -> str:
        """The callback URL after `user` logged in at `authorization_url` (no HTTP)."""
        return login(self, authorization_url, user)

    # -- bearer checks --

    def _check_bearer(
        self, path: str, authorization: str | None, peer: Peer | None
    ) -> tuple[IssuedToken | None, Response | None]:
        """The token behind `authorization`, or None and the 401 to send."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, bearer_error(None)
        with self.lock:
            issued = self.tokens.get(token)
            revoked = issued is not None and self._revoked(issued)
        if path == ALWAYS_401_PATH:
            return issued, bearer_error("this resource always refuses")
        if issued is None:
            return None, bearer_error("unknown token")
        if revoked:
            return issued, bearer_error("the token has been revoked")
        if self.clock() >= issued.expires_at:
            return issued, bearer_error("the token has expired")
        if self.cert_bound and (peer is None or peer.thumbprint != issued.thumbprint):
            return issued, bearer_error("the token is bound to another certificate")
        return issued, None

    def handle_resource(
        self,
        method: str,
        path: str,
        authorization: str | None,
        peer: Peer | None,
        body_length: int,
    ) -> Response:
        """Answer and record a request to the protected resource.

        `authorization` is the ``Authorization`` header (None without one);
        `body_length` how many body bytes came with the request.
        """
        issued, refusal = self._check_bearer(path, authorization, peer)
        response: Response
        if refusal is not None or issued is None:
            response = refusal or bearer_error(None)
        else:
            answer: dict[str, Any] = {
                "ok": True,
                "client_id": issued.client_id,
                "namespace": issued.namespace,
                "method": method,
                "path": path,
                "body_length": body_length,
            }
            if issued.beyond_client_credentials:
                answer.update(issued.facts())
            response = Response(200, json_bytes(answer))
        self._record_resource(method, path, authorization, peer, response.status, issued)
        return response

    def record_resource(
        self, method: str, path: str, authorization: str | None, peer: Peer | None, status: int
    ) -> ResourceRequest:
        """Record a resource request answered by something else (an injected fault)."""
        return self._record_resource(method, path, authorization, peer, status, None)

    def _record_resource(
        self,
        method: str,
        path: str,
        authorization: str | None,
        peer: Peer | None,
        status: int,
        issued: IssuedToken | None,
    ) -> ResourceRequest:
        record = ResourceRequest(
            method=method,
            path=path,
            had_authorization=authorization is not None,
            thumbprint=peer.thumbprint if peer else None,
            time=self.clock(),
            status=status,
            client_id=issued.client_id if issued else None,
            token_index=issued.index if issued else None,
            subdomain=issued.subdomain if issued else None,
            zone_id=issued.zone_id if issued else None,
            app_tid=issued.app_tid if issued else None,
            user=issued.user if issued else None,
            grant_type=issued.grant_type if issued else None,
        )
        with self.lock:
            self._resource_requests.append(record)
        return record

    # -- Credential Store credentials API --

    @property
    def credstore(self) -> CredstoreApi:
        """The Credential Store-shaped API at ``/api/v1/credentials`` (made on first use)."""
        with self.lock:
            if self._credstore is None:
                # Payload iat is wall-clock time on both sides, whatever clock
                # decides token expiry here.
                self._credstore = CredstoreApi()
            return self._credstore

    def handle_credentials(
        self,
        method: str,
        path: str,
        query: str,
        content_type: str | None,
        body: bytes,
        authorization: str | None,
        peer: Peer | None,
    ) -> Response:
        """Answer and record a credentials API request, in the namespace of its token."""
        issued, refusal = self._check_bearer(path, authorization, peer)
        if (
            refusal is not None
            or issued is None
            or not issued.shape.credentials_api
            or not issued.namespace
        ):
            response = refusal or bearer_error("not a Credential Store token with a namespace")
        else:
            answer = self.credstore.handle(
                method, path, query, content_type, body, issued.namespace
            )
            response = Response(answer.status, answer.body, answer.content_type)
        self._record_resource(method, path, authorization, peer, response.status, issued)
        return response

    # -- documents --

    @property
    def issuer(self) -> str:
        """The issuer XSUAA advertises (its token endpoint URL)."""
        return self.base_url + XSUAA_TOKEN_PATH

    def openid_configuration(self, base_url: str | None = None) -> dict[str, Any]:
        """The provider's discovery document, for `base_url` (default: the app's)."""
        base = self.base_url if base_url is None else base_url
        return provider_document(base, self.grants)

    def handle_document(self, method: str, path: str, host: str | None = None) -> Response:
        """``GET`` a document (`documents`, else the openid configuration or JWKS); else 404.

        On a tenant's `host` (Host header) the openid configuration is that
        tenant's (XSUAA or IAS), whatever `documents` says.
        """
        if method != "GET":
            return not_found()
        if path == OPENID_CONFIGURATION_PATH:
            document = tenant_document(self.base_url, host, self.grants)
            if document is not None:
                return Response(200, json_bytes(document))
        builtin: dict[str, Callable[[], Any]] = {
            OPENID_CONFIGURATION_PATH: self.openid_configuration,
            JWKS_PATH: self.signer.jwks,
            IAS_JWKS_PATH: self.signer.jwks,
        }
        source = self.documents.get(path, builtin.get(path))
        if source is None:
            return not_found()
        return Response(200, json_bytes(source()))

    # -- observation --

    @property
    def token_requests(self) -> list[TokenRequest]:
        """Every recorded token request, oldest first (a copy)."""
        with self.lock:
            return list(self._token_requests)

    @property
    def token_request_count(self) -> int:
        """``len(token_requests)``, without copying."""
        with self.lock:
            return len(self._token_requests)

    @property
    def resource_requests(self) -> list[ResourceRequest]:
        """Every recorded resource and credentials API request, oldest first (a copy)."""
        with self.lock:
            return list(self._resource_requests)

    @property
    def tokens_issued(self) -> int:
        """Tokens issued since construction (`clear_records` does not reset it)."""
        with self.lock:
            return self._tokens_issued

    def token_info(self, token: str) -> dict[str, Any] | None:
        """What the app knows about `token`, or None if it never issued it."""
        with self.lock:
            issued = self.tokens.get(token)
            if issued is None:
                return None
            revoked = self._revoked(issued)
        return {
            "index": issued.index,
            "path": issued.path,
            "client_id": issued.client_id,
            "namespace": issued.namespace,
            "scope": issued.scope,
            "thumbprint": issued.thumbprint,
            "subject": issued.subject,
            "issued_at": issued.issued_at,
            "expires_at": issued.expires_at,
            "revoked": revoked,
            **issued.facts(),
        }

    def clear_records(self) -> None:
        """Forget recorded requests; issued tokens, registrations and revocations stay."""
        with self.lock:
            self._token_requests.clear()
            self._resource_requests.clear()
