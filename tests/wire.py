"""The token endpoint's wire, sans I/O, shared by the protocol tests: canned responses, secrets.

`response` builds an `HttpResponse` (a bearer token for `SECRET` by default),
`parse` runs `parse_token_response` on one, `unsigned_jwt` makes a JWT whose
claims the parser reads, and `all_messages` gathers every text an error
exposes (str, repr, args, its cause chain) for the checks that no secret
(`SECRET`, `CANARY`) ever shows.
"""

from __future__ import annotations

import base64
import json

from mtls_auth._http import HttpResponse
from mtls_auth._token import Token, parse_token_response

__all__ = [
    "CANARY",
    "CLIENT_ID",
    "CREDSTORE_CLIENT_ID",
    "SECRET",
    "SUBJECT",
    "URL",
    "all_messages",
    "b64url",
    "parse",
    "response",
    "unsigned_jwt",
]

URL = "https://auth.cert.example.com/oauth/token"
CLIENT_ID = "sb-client!t1"
CREDSTORE_CLIENT_ID = "0fcb3a97.0.q19QcAT/qNjKC2YPrTdwpV+FwMLmZgiEI886PaUsnL8="
SUBJECT = "CN=sb-client!t1,OU=test,O=Example"
CANARY = "CANARY-BODY-123"
SECRET = "eyJ-secret-token-value-4242"


def response(
    status: int = 200,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> HttpResponse:
    if raw is None:
        if body is None:
            body = {"access_token": SECRET, "token_type": "bearer", "expires_in": 1800}
        raw = json.dumps(body).encode()
    merged = {"content-type": "application/json"}
    merged.update(headers or {})
    return HttpResponse(status, merged, raw)


def parse(
    body: object = None,
    *,
    status: int = 200,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    sent_at: float = 0.0,
) -> Token:
    return parse_token_response(response(status, body, headers, raw), URL, sent_at=sent_at)


def b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, object]) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def all_messages(exc: BaseException) -> str:
    """Every text an error exposes: str, repr, args and its cause chain."""
    texts = []
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)
