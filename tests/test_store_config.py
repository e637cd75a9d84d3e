"""Configuring a token store: ``token_store=`` forms, sharing, stores of your own, costs.

``token_store=`` takes a URL or a `TokenStore` on every constructor (and so
on ``from_binding``); bad values fail at construction, naming what is wrong and
never a password; derived auths share their client's store; a store written
by the application works like the shipped ones, and one that raises is an
outage, not an error. ``import mtls_auth`` loads no store code, and a store
loads only its own client library.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import pytest
from clients import Client
from frames import leaks

import mtls_auth
import mtls_auth.httpx as mhttpx
import mtls_auth.requests as mrequests
from mtls_auth import ArgumentError, TokenStore, TokenStoreError
from mtls_auth._store import SharedTokens, lease_seconds
from mtls_auth.stores import FileTokenStore, RedisTokenStore
from mtls_auth.testing import Credential, RedisServer, TokenServer

TOKEN_URL = "https://provider.authentication.cert.example.com/oauth/token"


class DictStore(TokenStore):
    """A store of the application's own: a dict shared by the auths of one test."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.leases: dict[str, str] = {}
        self.lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self.entries[key] = value

    def lease(self, key: str, holder: str, ttl: float) -> bool:
        with self.lock:
            return self.leases.setdefault(key, holder) == holder

    def release(self, key: str, holder: str) -> None:
        with self.lock:
            if self.leases.get(key) == holder:
                del self.leases[key]


class Unfinished(TokenStore):
    """A store whose methods were never written: every call raises."""


@pytest.fixture(params=[mrequests, mhttpx], ids=["requests", "httpx"])
def module(request: pytest.FixtureRequest) -> Any:
    return request.param


def _auth(module: Any, credential: Credential, **options: Any) -> Any:
    return module.MtlsOAuth2(
        TOKEN_URL, "sb-client!t1", credential.chain_pem, credential.key_pem, **options
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "not int"),
        (b"redis://cache", "not bytes"),
        ("sqlite:///tokens.db", "'sqlite' is not known"),
        ("file:tokens", "no absolute path"),
        ("redis://:hunter2@:6379", "names no host"),
    ],
)
def test_a_bad_token_store_fails_at_construction(
    module: Any, mtls_client_certificate: Credential, value: object, message: str
) -> None:
    with pytest.raises(TokenStoreError, match=message) as caught:
        _auth(module, mtls_client_certificate, token_store=value)
    assert isinstance(caught.value, ArgumentError)
    assert "hunter2" not in str(caught.value)
    assert leaks(caught.value, ["hunter2"]) == []


def test_derived_auths_share_their_client_s_store(
    module: Any, mtls_client_certificate: Credential, tmp_path: Any
) -> None:
    auth = _auth(module, mtls_client_certificate, token_store=f"file://{tmp_path}/tokens")
    shared = auth._client.shared
    assert isinstance(shared, SharedTokens)
    assert isinstance(shared.store, FileTokenStore)
    user = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.c2ln"
    for derived in (auth.for_tenant("customer-a"), auth.for_user(user)):
        assert derived._client.shared is shared
    assert _auth(module, mtls_client_certificate)._client.shared is None  # no store: none


def test_the_lease_outlives_the_token_timeout_and_waiters_wait_for_it(
    module: Any, mtls_client_certificate: Credential
) -> None:
    store = DictStore()
    auth = _auth(module, mtls_client_certificate, token_store=store, timeout=4.0)
    client = auth._client
    assert client.shared.lease_ttl == lease_seconds(4.0) == 5.0
    # The cache's own waiters wait for a fetch that may first wait out a lease.
    assert client.cache.wait_timeout == 4.0 * 2 + 5 + 5.0
    assert lease_seconds(10.0) == 12.5


def test_a_store_of_your_own_shares_tokens(client: Client, mtls_server: TokenServer) -> None:
    store = DictStore()
    first = client.auth(token_store=store)
    second = client.auth(token_store=store)
    assert client.call(first).unwrap() == 200
    assert client.call(second).unwrap() == 200
    assert mtls_server.token_request_count == 1
    assert len(store.entries) == 1
    assert store.leases == {}


def test_a_store_that_raises_is_an_outage_not_an_error(
    client: Client, mtls_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    auth = client.auth(token_store=Unfinished())
    assert client.call(auth).unwrap() == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "token store <Unfinished> failed (NotImplementedError); tokens come from this "
        "process's cache and the token endpoint until it answers again"
    ]


def test_half_built_objects_render() -> None:
    for cls in (TokenStore, FileTokenStore, RedisTokenStore, SharedTokens, RedisServer):
        shown = repr(object.__new__(cls))
        assert shown.startswith("<")
        assert cls.__name__ in shown


def test_the_store_names_are_public_and_lazy() -> None:
    assert mtls_auth.TokenStore is TokenStore
    assert "TokenStore" in mtls_auth.__all__
    assert "TokenStoreError" in mtls_auth.__all__
    assert issubclass(TokenStoreError, ArgumentError)


def _loaded_after(statement: str) -> list[str]:
    script = (
        f"import json, sys; {statement}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'redis', 'filelock', 'cryptography'})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout))


def test_store_code_loads_its_client_library_only_when_a_store_is_made(tmp_path: Any) -> None:
    assert _loaded_after("import mtls_auth; mtls_auth.TokenStore") == []
    assert _loaded_after("import mtls_auth.stores") == []
    made = f"from mtls_auth.stores import FileTokenStore; FileTokenStore({str(tmp_path)!r})"
    assert _loaded_after(made) == ["filelock"]
