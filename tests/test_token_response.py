"""The token response, sans I/O: parse_token_response and the Token it makes.

Lifetimes from ``expires_in`` (or a JWT's ``exp``, clamped), bearer only,
RFC 6749 error responses with cleaned, truncated fields, bodies that are not
JSON or too large; and a `Token` that never shows its value (repr, str,
attributes) and cannot be pickled or copied. No message ever echoes the
response body or the token.
"""

from __future__ import annotations

import copy
import json
import pickle
import time

import pytest
from wire import CANARY, SECRET, URL, all_messages, parse, unsigned_jwt

from mtls_auth._errors import TokenResponseError
from mtls_auth._http import MAX_RESPONSE_BYTES
from mtls_auth._token import DEFAULT_LIFETIME, MAX_LIFETIME, Token

# -- parse_token_response ------------------------------------------------------------


@pytest.mark.parametrize("token_type", ["bearer", "Bearer", "BEARER", "bEaReR"])
def test_bearer_is_case_insensitive(token_type: str) -> None:
    token = parse({"access_token": SECRET, "token_type": token_type, "expires_in": 60})
    assert token.token_type == "bearer"
    assert token.authorization() == "Bearer " + SECRET


def test_missing_token_type_means_bearer() -> None:
    assert parse({"access_token": SECRET, "expires_in": 60}).lifetime == 60


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(1800, 1800.0), (1799.5, 1799.5), ("1800", 1800.0), (" 43199 ", 43199.0), (0, 0.0)],
)
def test_expires_in_forms(expires_in: object, lifetime: float) -> None:
    token = parse({"access_token": SECRET, "expires_in": expires_in}, sent_at=500.0)
    assert token.lifetime == lifetime
    assert token.issued_at == 500.0
    assert token.expires_at == 500.0 + lifetime


def test_missing_expires_in_uses_jwt_exp() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) + 1234, "sub": "x"})
    token = parse({"access_token": jwt, "token_type": "bearer"}, sent_at=10.0)
    assert 1234 - 5 <= token.lifetime <= 1234
    assert token.expires_at == 10.0 + token.lifetime


def test_expires_in_wins_over_jwt_exp() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) + 5000})
    assert parse({"access_token": jwt, "expires_in": 100}).lifetime == 100


def test_jwt_exp_in_the_past_gives_zero_lifetime() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) - 100})
    assert parse({"access_token": jwt}).lifetime == 0.0


def test_jwt_exp_clamped() -> None:
    jwt = unsigned_jwt({"exp": int(time.time()) + 10 * 365 * 86400})
    assert parse({"access_token": jwt}).lifetime == MAX_LIFETIME


@pytest.mark.parametrize(
    "access_token",
    [
        "opaque-token-without-dots",
        unsigned_jwt({"sub": "no exp"}),
        unsigned_jwt({"exp": "tomorrow"}),
        unsigned_jwt({"exp": True}),
        "a.bm90LWpzb24.c",  # base64url of "not-json": no claims to read
        "a.b.c.d",
    ],
)
def test_no_expires_in_and_no_usable_exp_uses_default(access_token: str) -> None:
    assert parse({"access_token": access_token}).lifetime == DEFAULT_LIFETIME


@pytest.mark.parametrize("expires_in", [10**9, 1e12, "99999999999"])
def test_huge_expires_in_clamped(expires_in: object) -> None:
    assert parse({"access_token": SECRET, "expires_in": expires_in}).lifetime == MAX_LIFETIME


def test_astronomically_huge_int_expires_in_clamped() -> None:
    raw = b'{"access_token": "' + SECRET.encode() + b'", "expires_in": 1' + b"0" * 400 + b"}"
    assert parse(raw=raw).lifetime == MAX_LIFETIME


@pytest.mark.parametrize(
    "expires_in",
    [-1, -0.5, "-5", "soon", "", "1e3", "12.5", True, False, [1], {"s": 1}, float("nan")],
)
def test_unusable_expires_in(expires_in: object) -> None:
    raw = json.dumps({"access_token": SECRET, "expires_in": expires_in}).encode()
    with pytest.raises(TokenResponseError, match="expires_in") as info:
        parse(raw=raw)
    assert SECRET not in all_messages(info.value)


def test_expires_in_superscript_digit_is_a_response_error() -> None:
    with pytest.raises(TokenResponseError):
        parse({"access_token": SECRET, "expires_in": "\u00b2"})


@pytest.mark.parametrize("token_type", ["mac", "DPoP", "", 5, None])
def test_non_bearer_token_type(token_type: object) -> None:
    with pytest.raises(TokenResponseError, match="bearer") as info:
        parse({"access_token": SECRET, "token_type": token_type, "expires_in": 60})
    assert SECRET not in all_messages(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "bearer", "expires_in": 60},
        {"access_token": "", "expires_in": 60},
        {"access_token": None},
        {"access_token": 12345},
        {"access_token": ["a"]},
    ],
)
def test_missing_access_token(body: object) -> None:
    with pytest.raises(TokenResponseError, match="access_token") as info:
        parse(body)
    assert info.value.status_code == 200


@pytest.mark.parametrize("body", [[{"access_token": SECRET}], SECRET, 42, 1.5, True, None])
def test_json_not_an_object(body: object) -> None:
    with pytest.raises(TokenResponseError) as info:
        parse(raw=json.dumps(body).encode())
    assert info.value.status_code == 200
    assert SECRET not in all_messages(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"access_token": "' + SECRET.encode() + b'"',
        b"access_token=" + SECRET.encode() + b"&expires_in=60",
        b"\xff\xfe\x00garbage",
    ],
)
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(TokenResponseError, match="not JSON") as info:
        parse(raw=raw, headers={"content-type": "text/plain"})
    assert info.value.status_code == 200
    assert SECRET not in all_messages(info.value)


@pytest.mark.parametrize(
    "value",
    [SECRET + "\r\nX-Injected: 1", SECRET + "\n", "\r" + SECRET, SECRET + "\x00", SECRET + "é"],
)
def test_access_token_unfit_for_a_header(value: str) -> None:
    with pytest.raises(TokenResponseError, match="header") as info:
        parse({"access_token": value, "expires_in": 60})
    assert SECRET not in all_messages(info.value)


def test_rfc6749_error_response() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "Client authentication failed",
        "debug": CANARY,
        "access_token": SECRET,
    }
    with pytest.raises(TokenResponseError) as info:
        parse(body, status=400)
    exc = info.value
    assert exc.status_code == 400
    assert exc.error == "invalid_client"
    assert exc.error_description == "Client authentication failed"
    text = all_messages(exc)
    assert "400" in str(exc)
    assert "invalid_client" in str(exc)
    assert URL in str(exc)
    assert CANARY not in text
    assert SECRET not in text
    assert json.dumps(body) not in text
    # Pickling keeps the fields and still carries no body.
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.status_code, clone.error, clone.error_description) == (
        400,
        "invalid_client",
        "Client authentication failed",
    )
    assert CANARY not in all_messages(clone)


@pytest.mark.parametrize("status", [401, 403, 500, 502])
def test_error_without_oauth_fields_names_status_not_body(status: int) -> None:
    with pytest.raises(TokenResponseError) as info:
        parse({"message": CANARY}, status=status)
    assert str(status) in str(info.value)
    assert info.value.status_code == status
    assert info.value.error is None
    assert CANARY not in all_messages(info.value)


def test_html_error_page() -> None:
    html = (
        f"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        f"<body><h1>Bad Gateway</h1><p>{CANARY}</p></body></html>"
    ).encode()
    with pytest.raises(TokenResponseError) as info:
        parse(raw=html, status=502, headers={"content-type": "text/html; charset=utf-8"})
    exc = info.value
    assert exc.status_code == 502
    assert "502" in str(exc)
    assert "text/html" in str(exc)
    text = all_messages(exc)
    assert "<" not in str(exc)
    assert CANARY not in text
    assert "Bad Gateway" not in text


def test_error_fields_cleaned_and_truncated() -> None:
    description = "line one\r\nFAKE LOG LINE\x1b[31m red\tend\x00\x7f" + "x" * 1000
    body = {"error": "invalid_request\r\ninjected" + "e" * 500, "error_description": description}
    with pytest.raises(TokenResponseError) as info:
        parse(body, status=400)
    exc = info.value
    assert exc.error_description is not None
    assert exc.error is not None
    for text in (exc.error, exc.error_description, str(exc)):
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    assert exc.error_description.startswith("line one FAKE LOG LINE [31m red end")
    assert len(exc.error_description) <= 201
    assert exc.error_description.endswith("…")
    assert len(exc.error) <= 81
    assert len(str(exc)) < 600


def test_error_description_unicode_line_breaks_and_c1_controls_cleaned() -> None:
    description = "one\u0085two\u2028three\u2029four\u009b31m"
    with pytest.raises(TokenResponseError) as info:
        parse({"error": "invalid_client", "error_description": description}, status=401)
    exc = info.value
    for text in (exc.error_description or "", str(exc)):
        assert len(text.splitlines()) == 1
        assert "\u009b" not in text


def test_response_over_the_cap_rejected() -> None:
    raw = b'{"access_token": "' + b"a" * MAX_RESPONSE_BYTES + b'", "expires_in": 60}'
    assert len(raw) > MAX_RESPONSE_BYTES
    with pytest.raises(TokenResponseError, match="larger than") as info:
        parse(raw=raw)
    assert len(str(info.value)) < 300


def test_response_at_the_cap_accepted() -> None:
    prefix, suffix = b'{"expires_in": 60, "access_token": "t", "pad": "', b'"}'
    raw = prefix + b"p" * (MAX_RESPONSE_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(raw) == MAX_RESPONSE_BYTES
    assert parse(raw=raw).lifetime == 60


# -- Token ----------------------------------------------------------------------------


def make_token(value: str = SECRET, lifetime: float = 1800.0) -> Token:
    return Token(value, token_type="bearer", issued_at=100.0, lifetime=lifetime)


def test_token_repr_and_str_hide_the_value() -> None:
    token = make_token()
    for text in (repr(token), str(token), f"{token}", "%s" % (token,), f"{token!r}"):  # noqa: UP031
        assert SECRET not in text
        assert "redacted" in text
    assert token.expires_at == 1900.0


def test_token_public_attributes_do_not_reveal_value() -> None:
    token = make_token()
    for name in dir(token):
        if name.startswith("_"):
            continue
        value = getattr(token, name)
        if not callable(value):
            assert SECRET not in str(value), name
    assert not hasattr(token, "__dict__")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_token_refuses_to_pickle(protocol: int) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(make_token(), protocol=protocol)


def test_token_refuses_to_copy() -> None:
    with pytest.raises(TypeError):
        copy.copy(make_token())


def test_token_matches_and_authorization() -> None:
    token = make_token()
    assert token.authorization() == f"Bearer {SECRET}"
    assert token.matches(f"Bearer {SECRET}")
    assert not token.matches(None)
    assert not token.matches("")
    assert not token.matches(SECRET)
    assert not token.matches(f"Bearer {SECRET}x")
    assert not token.matches("Bearer other")
    assert not make_token("other").matches(f"Bearer {SECRET}")
