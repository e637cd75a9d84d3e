"""A Flask web application that logs users in over mTLS and calls an API on their behalf.

It shows the two ways an application acts for a user with mtls-auth:

* ``/login`` -> the identity provider -> ``/callback``: the authorization code
  flow with PKCE (`authorization_request`, `for_authorization_code`). The
  user's session lives server-side; the browser only holds a random session id,
  so neither the PKCE verifier nor the refresh token ever reaches it.
* ``/api/orders``: a request that arrives with the user's token (as the SAP
  application router forwards it, ``Authorization: Bearer <jwt>``) calls the
  downstream API with that user's token exchanged over mTLS (`for_user`).

Run it against a binding::

    from mtls_auth.requests import MtlsOAuth2
    auth = MtlsOAuth2.from_binding("xsuaa-service-key.json")
    app = create_app(
        auth, downstream_url="https://orders.example.com/api", secret_key=os.environ["SECRET_KEY"]
    )
    app.config["PREFERRED_URL_SCHEME"] = "https"  # behind TLS: redirect URIs are https
    app.run()

tests/test_example_app.py runs it with Flask's test client against the test
kit's loopback token server.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import requests
from flask import Flask, abort, jsonify, redirect, request, session, url_for

from mtls_auth import AuthorizationRequest, LoginRequiredError, MtlsAuthError
from mtls_auth.requests import MtlsAdapter, MtlsOAuth2

__all__ = ["SessionStore", "create_app"]


class SessionStore:
    """Server-side sessions: the browser's cookie holds only a random id.

    In production use your framework's server-side session store (Redis,
    a database); a login's code verifier and a user's refresh token are
    secrets and do not belong in a client-side cookie.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}

    def of_this_browser(self) -> dict[str, Any]:
        sid = session.get("sid")
        with self._lock:
            if sid is None or sid not in self._data:
                sid = session["sid"] = secrets.token_urlsafe(24)
                self._data[sid] = {}
            return self._data[sid]


def create_app(
    auth: MtlsOAuth2,
    *,
    downstream_url: str,
    secret_key: str,
    downstream: MtlsAdapter | None = None,
) -> Flask:
    """The application: `auth` from a binding, `downstream_url` the API to call for users.

    `downstream` presents the client certificate to the API when it wants one
    (certificate-bound tokens); default: ``auth.adapter()``.
    """
    app = Flask(__name__)
    app.secret_key = secret_key
    store = SessionStore()
    api = requests.Session()
    api.mount(downstream_url, downstream or auth.adapter())

    @app.get("/login")
    def login() -> Any:
        login = auth.authorization_request(url_for("callback", _external=True))
        store.of_this_browser()["login"] = login.as_dict()
        return redirect(login.url)

    @app.get("/callback")
    def callback() -> Any:
        pending = store.of_this_browser().pop("login", None)
        if pending is None:
            abort(400, "no login in progress")
        try:
            user = auth.for_authorization_code(AuthorizationRequest.from_dict(pending), request.url)
        except MtlsAuthError as exc:
            abort(403, f"login failed: {exc}")
        store.of_this_browser()["refresh_token"] = user.refresh_token.reveal()
        return redirect(url_for("me"))

    @app.get("/me")
    def me() -> Any:
        mine = store.of_this_browser()
        if "refresh_token" not in mine:
            return redirect(url_for("login"))
        user = auth.for_refresh_token(mine["refresh_token"])
        try:
            answer = api.get(downstream_url, auth=user, timeout=10)
        except LoginRequiredError:
            mine.pop("refresh_token", None)
            return redirect(url_for("login"))
        # The server may have rotated the refresh token: keep the newest.
        mine["refresh_token"] = user.refresh_token.reveal()
        return jsonify(answer.json()), answer.status_code

    @app.get("/api/orders")
    def orders() -> Any:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            abort(401)
        try:
            answer = api.get(downstream_url, auth=auth.for_user(token), timeout=10)
        except (ValueError, MtlsAuthError) as exc:
            abort(401, str(exc))
        return jsonify(answer.json()), answer.status_code

    return app
