"""Arguments that cannot work fail at construction with an MtlsAuthError that is a ValueError.

Malformed token URLs (an unclosed IPv6 bracket, a port over 65535, no host,
spaces or control characters, credentials in the URL), a malformed ``certurl``
in a binding, and timeouts, intervals and retry settings that are not finite
positive numbers. Property-based: any URL text or number gives an auth object
or an `ArgumentError`, never another exception and never a hang.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import (
    ArgumentError,
    BindingError,
    ClientCertificate,
    MtlsAuthError,
    RetryPolicy,
)
from mtls_auth._destinations import Destinations
from mtls_auth._urls import https_url
from mtls_auth.testing import PKI

MODULES = pytest.mark.parametrize("module", [mrequests, mhttpx], ids=["requests", "httpx"])

_PKI = PKI()
_CREDENTIAL = _PKI.issue_client("arguments")
CERT = ClientCertificate.from_pem(_CREDENTIAL.chain_pem, _CREDENTIAL.key_pem)
GOOD_URL = "https://auth.example.com/oauth/token"

BAD_URLS = [
    "https://[::1",
    "https://[::1/oauth/token",
    "https://auth.example.com:99999/oauth/token",
    "https://auth.example.com:-1/oauth/token",
    "https://auth.example.com:port/oauth/token",
    "https:///oauth/token",
    "https://",
    "https://auth.example.com/oauth token",
    "https://auth.example.com/oauth/token\r\nX-Injected: 1",
    "https://auth.example.com/\x00",
    "https://auth\x7f.example.com/",
    " https://auth.example.com/oauth/token",
    "https://user:password@auth.example.com/oauth/token",
    "https://auth.example.com\\@evil.example/",
    "http://auth.example.com/oauth/token",
    "ftp://auth.example.com/",
    "auth.example.com/oauth/token",
    "",
]


@MODULES
@pytest.mark.parametrize("url", BAD_URLS)
def test_malformed_token_urls_are_refused_at_construction(module: Any, url: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        module.MtlsOAuth2(url, "client", CERT)
    error = caught.value
    assert isinstance(error, MtlsAuthError)
    assert isinstance(error, ValueError)
    assert "token_url" in str(error)


@MODULES
@pytest.mark.parametrize(
    "certurl",
    ["https://[::1", "https://auth.example.com:70000", "https://auth.example.com/a b", "http://x"],
)
def test_malformed_certurl_in_a_binding_is_a_binding_error(
    module: Any, certurl: str, mtls_xsuaa_binding: dict[str, Any]
) -> None:
    binding = {**mtls_xsuaa_binding, "certurl": certurl}
    with pytest.raises(BindingError, match="certurl"):
        module.MtlsOAuth2.from_binding(binding)


@MODULES
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", math.inf),
        ("timeout", math.nan),
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", "10"),
        ("timeout", True),
        ("leeway", math.inf),
        ("leeway", -5),
        ("check_interval", math.nan),
        ("check_interval", -0.5),
        ("allow_http_loopback", "yes"),
        ("retry", {"attempts": 3}),
        ("clock", 5.0),
        ("allowed_hosts", [b"api.example.com"]),
    ],
)
def test_unusable_options_are_refused_at_construction(module: Any, option: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=option.split("_")[0]):
        module.MtlsOAuth2(GOOD_URL, "client", CERT, **{option: value})


@pytest.mark.parametrize(
    "settings",
    [
        {"attempts": 0},
        {"attempts": 1.5},
        {"attempts": True},
        {"attempts": 10_000},
        {"backoff": math.inf},
        {"max_backoff": -1},
        {"max_retry_after": math.nan},
    ],
)
def test_unusable_retry_policies_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ArgumentError, match="RetryPolicy"):
        RetryPolicy(**settings)


def test_client_id_must_be_printable_text() -> None:
    for client_id in ("", "a\r\nb", 5):
        with pytest.raises(ArgumentError):
            mrequests.MtlsOAuth2(GOOD_URL, client_id, CERT)


@given(st.text(max_size=80))
def test_any_token_url_text_gives_an_auth_or_an_argument_error(text: str) -> None:
    try:
        auth = mrequests.MtlsOAuth2(text, "client", CERT)
    except ArgumentError:
        return
    assert https_url(auth.token_url, "token_url").parts.scheme == "https"


@given(
    st.sampled_from(["https://", "http://", "https://user@", ""]),
    st.text(max_size=30),
    st.one_of(st.none(), st.integers(-10, 200_000), st.text(max_size=6)),
    st.text(max_size=20),
)
def test_any_url_shape_is_checked_without_surprises(
    scheme: str, host: str, port: Any, path: str
) -> None:
    url = scheme + host + ("" if port is None else f":{port}") + "/" + path
    try:
        checked = https_url(url, "url")
    except ArgumentError:
        return
    assert checked.parts.scheme == "https"
    assert checked.host
    assert checked.port is None or 0 <= checked.port <= 65535


@given(st.one_of(st.floats(allow_nan=True), st.integers(-(10**20), 10**20), st.text(max_size=5)))
def test_any_timeout_gives_an_auth_or_an_argument_error(value: Any) -> None:
    try:
        mhttpx.MtlsOAuth2(GOOD_URL, "client", CERT, timeout=value)
    except ArgumentError:
        return
    assert isinstance(value, (int, float))
    assert math.isfinite(value)
    assert value > 0


@given(st.text(max_size=60))
def test_any_resource_url_is_allowed_or_refused_with_an_mtls_auth_error(url: str) -> None:
    destinations = Destinations(["api.example.com"], allow_http_loopback=False)
    try:
        destinations.check_url(url)
    except MtlsAuthError:
        return
