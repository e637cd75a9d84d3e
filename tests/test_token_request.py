"""The token request, sans I/O: the form body, its URL-encoding, the endpoint, the cache key.

`TokenRequest.http_request` builds what is sent to the token endpoint:
``grant_type`` and ``client_id`` (never a secret), scope, namespace and extra
parameters, every value percent-encoded so nothing splits into extra fields.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
from wire import CLIENT_ID, CREDSTORE_CLIENT_ID, URL

from mtls_auth import BindingError
from mtls_auth._client import check_endpoint
from mtls_auth._request import TokenRequest

# -- TokenRequest: what is sent ---------------------------------------------------------


def form_of(request: TokenRequest, client_id: str = CLIENT_ID) -> dict[str, list[str]]:
    body = request.http_request(URL, client_id).body
    return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def test_form_minimal() -> None:
    request = TokenRequest.create()
    sent = request.http_request(URL, CLIENT_ID)
    assert sent.method == "POST"
    assert sent.url == URL
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.headers["Accept"] == "application/json"
    assert form_of(request) == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID]}


def test_form_scope_namespace_and_params() -> None:
    request = TokenRequest.create(namespace="ns1", scope="read write", params={"audience": "x"})
    assert form_of(request) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "scope": ["read write"],
        "credstore_namespace": ["ns1"],
        "audience": ["x"],
    }


def test_form_scope_iterable_is_space_joined() -> None:
    request = TokenRequest.create(scope=["a.read", "b.write"])
    assert form_of(request)["scope"] == ["a.read b.write"]


@pytest.mark.parametrize(
    ("client_id", "namespace", "extra"),
    [
        (CREDSTORE_CLIENT_ID, "ns/1 &x=y+z", "100% sure"),
        ("sb-näme!t1", "naïve/ns=ü", "日本語 & = + %2F"),
        ("a+b=c&d", "  spaced  out  ", "%%%"),
    ],
)
def test_form_url_encoding_round_trip(client_id: str, namespace: str, extra: str) -> None:
    request = TokenRequest.create(namespace=namespace, params={"extra": extra})
    body = request.http_request(URL, client_id).body
    body.decode("ascii")  # fully percent-encoded
    assert b" " not in body
    form = form_of(request, client_id)
    assert form["client_id"] == [client_id]
    assert form["credstore_namespace"] == [namespace]
    assert form["extra"] == [extra]
    assert form["grant_type"] == ["client_credentials"]
    # Exactly one of each: a "&" or "=" in a value must not split into extra fields.
    assert sorted(form) == ["client_id", "credstore_namespace", "extra", "grant_type"]


def test_form_never_has_client_secret() -> None:
    request = TokenRequest.create(namespace="ns", scope="s", params={"a": "b"})
    assert "client_secret" not in form_of(request)
    sent = request.http_request(URL, CLIENT_ID)
    assert b"client_secret" not in sent.body
    assert "client_id" not in repr(sent)


@pytest.mark.parametrize("name", ["grant_type", "client_id", "client_secret"])
def test_params_may_not_set_reserved_fields(name: str) -> None:
    with pytest.raises(BindingError, match=name):
        TokenRequest.create(params={name: "x"})
    with pytest.raises(BindingError):
        TokenRequest.create(params=[("ok", "1"), (name, "x")])


def test_params_must_be_strings() -> None:
    with pytest.raises(BindingError):
        TokenRequest.create(params={"n": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "url",
    [
        "http://auth.example.com/oauth/token",
        "HTTP://auth.example.com/oauth/token",
        "ftp://auth.example.com/oauth/token",
        "https:///oauth/token",
        "auth.example.com/oauth/token",
        "",
    ],
)
def test_token_url_must_be_https(url: str) -> None:
    with pytest.raises(BindingError):
        check_endpoint(url, CLIENT_ID)


def test_empty_client_id_rejected() -> None:
    with pytest.raises(BindingError):
        check_endpoint(URL, "")


def test_cache_key() -> None:
    thumbprint = "x5t"
    base = TokenRequest.create(namespace="ns1", scope="s1")
    key = base.cache_key(URL, CLIENT_ID, thumbprint)
    same = TokenRequest.create(namespace="ns1", scope="s1")
    assert same == base
    assert same.cache_key(URL, CLIENT_ID, thumbprint) == key
    assert URL in key
    assert CLIENT_ID in key
    assert thumbprint in key
    assert "ns1" in key
    assert "s1" in key
    others = [
        TokenRequest.create(namespace="ns2", scope="s1").cache_key(URL, CLIENT_ID, thumbprint),
        TokenRequest.create(namespace=None, scope="s1").cache_key(URL, CLIENT_ID, thumbprint),
        TokenRequest.create(namespace="ns1", scope="s2").cache_key(URL, CLIENT_ID, thumbprint),
        base.cache_key(URL, "other-client", thumbprint),
        base.cache_key(URL + "2", CLIENT_ID, thumbprint),
        base.cache_key(URL, CLIENT_ID, "other-certificate"),
    ]
    assert len({key, *others}) == len(others) + 1
    hash(key)
    hash(base)


def test_request_repr_has_no_form_body() -> None:
    request = TokenRequest.create(namespace="ns1")
    assert "ns1" in repr(request)
    assert "grant_type" not in repr(request)
    assert "grant_type" not in repr(request.http_request(URL, CLIENT_ID))
