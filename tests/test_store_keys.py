"""Sealing and naming store entries: `StoreKeys`, derived from the client's private key.

Entries open only with the keys of the same private key, under the store key
they were written to, unaltered and whole: every single-byte change, every
truncation, another key's entry and an entry sealed by another client is
refused, and the DEBUG line saying so shows nothing of it. Store keys are
HMAC digests of the whole cache key: every part of it changes the name, and
nothing in the name says which client, tenant or user it is for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import mtls_auth.requests as mrequests
from mtls_auth import ClientCertificate
from mtls_auth._store_crypto import MAX_ENTRY, StoreKeys
from mtls_auth._token import MAX_LIFETIME, Token
from mtls_auth.testing import Credential

TOKEN_URL = "https://provider.authentication.cert.example.com/oauth/token"
NAME = "0f" * 32


def _load(credential: Credential) -> ClientCertificate:
    return ClientCertificate.from_pem(credential.chain_pem, credential.key_pem)


@pytest.fixture(scope="module")
def keys(mtls_client_certificate: Credential) -> StoreKeys:
    return StoreKeys.derive(_load(mtls_client_certificate))


def _token(value: str = "a-token.with~b64token+chars/==", lifetime: float = 600.0) -> Token:
    return Token(value, token_type="bearer", issued_at=100.0, lifetime=lifetime)


def test_a_sealed_token_opens_with_its_expiry_on_the_readers_clock(keys: StoreKeys) -> None:
    token = _token()  # expires at 700 on the writer's clock
    entry = keys.seal(NAME, token, expires_at=1_000_500.0)  # the store's timeline
    assert token.authorization().encode() not in entry
    # Read 100 s later on the store's timeline, by a process whose clock reads 50.
    opened = keys.open_entry(NAME, entry, now=1_000_100.0, clock_now=50.0)
    assert opened is not None
    assert opened.authorization() == token.authorization()
    assert (opened.lifetime, opened.expires_at) == (600.0, 450.0)
    assert opened.refresh_token is None
    assert keys.open_entry(NAME, bytearray(entry), 1_000_100.0, 50.0) is not None
    assert keys.open_entry(NAME, entry, now=1_000_500.0, clock_now=50.0) is None  # expired


def test_every_altered_truncated_or_misplaced_entry_is_refused_saying_nothing_of_it(
    keys: StoreKeys, mtls_pki: Any, caplog: pytest.LogCaptureFixture
) -> None:
    entry = keys.seal(NAME, _token(), expires_at=2_000.0)
    caplog.set_level(logging.DEBUG, logger="mtls_auth")
    for index in range(len(entry)):
        for flip in (0x01, 0x80):
            bad = entry[:index] + bytes([entry[index] ^ flip]) + entry[index + 1 :]
            assert keys.open_entry(NAME, bad, 1_000.0, 0.0) is None, index
    for length in range(len(entry)):
        assert keys.open_entry(NAME, entry[:length], 1_000.0, 0.0) is None, length
    assert keys.open_entry(NAME, entry + b"\0", 1_000.0, 0.0) is None
    assert keys.open_entry("1f" * 32, entry, 1_000.0, 0.0) is None  # moved under another key
    other = StoreKeys.derive(_load(mtls_pki.issue_client("someone else")))
    assert other.open_entry(NAME, entry, 1_000.0, 0.0) is None  # another client's key
    for junk in ("text", 42, None, b"\x01" * (MAX_ENTRY + 1)):
        assert keys.open_entry(NAME, junk, 1_000.0, 0.0) is None
    shown = "\n".join(r.getMessage() for r in caplog.records)
    assert "ignored an entry of the token store" in shown
    assert entry.hex()[:16] not in shown
    assert "a-token" not in shown


def test_an_entry_with_unusable_contents_is_refused(keys: StoreKeys) -> None:
    absurd = keys.seal(NAME, _token(lifetime=MAX_LIFETIME * 10), expires_at=2_000.0)
    assert keys.open_entry(NAME, absurd, 1_000.0, 0.0) is None
    bad_value = keys.seal(NAME, _token(value="not a b64token"), expires_at=2_000.0)
    assert keys.open_entry(NAME, bad_value, 1_000.0, 0.0) is None


def _cache_keys(credential: Credential, other_client: str) -> dict[str, Any]:
    auth = mrequests.MtlsOAuth2(TOKEN_URL, "sb-client!t1", credential.chain_pem, credential.key_pem)
    user = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsInppZCI6InoxIn0.c2ln"
    variants = {
        "client": auth,
        "scope": mrequests.MtlsOAuth2(
            TOKEN_URL, "sb-client!t1", credential.chain_pem, credential.key_pem, scope="read"
        ),
        "resource": mrequests.MtlsOAuth2(
            TOKEN_URL,
            "sb-client!t1",
            credential.chain_pem,
            credential.key_pem,
            resource="urn:sap:identity:application:provider:name:app",
        ),
        "namespace": mrequests.MtlsOAuth2(
            TOKEN_URL, "sb-client!t1", credential.chain_pem, credential.key_pem, namespace="ns"
        ),
        "client id": mrequests.MtlsOAuth2(
            TOKEN_URL, other_client, credential.chain_pem, credential.key_pem
        ),
        "tenant": auth.for_tenant("customer-a"),
        "zone": auth.for_tenant(zone_id="zone-1"),
        "user": auth.for_user(user),
        "password grant": auth.for_password("alice", "wonderland"),
    }
    return {name: each._key() for name, each in variants.items()}


def test_every_part_of_the_cache_key_changes_the_store_key_and_none_shows(
    keys: StoreKeys, mtls_client_certificate: Credential
) -> None:
    cache_keys = _cache_keys(mtls_client_certificate, "sb-other!t2")
    names = {what: keys.name(key) for what, key in cache_keys.items()}
    assert len(set(names.values())) == len(names)
    for name in names.values():
        assert len(name) == 64
        assert int(name, 16) >= 0
    for readable in ("sb-client", "customer-a", "zone-1", "alice", "example.com", "read"):
        assert not any(readable in name for name in names.values())
    # The same certificate in another process derives the same names.
    again = StoreKeys.derive(_load(mtls_client_certificate))
    assert again.name(cache_keys["user"]) == names["user"]


def test_another_private_key_has_other_names_and_cannot_open(
    keys: StoreKeys, key_type_credentials: dict[str, Credential]
) -> None:
    cache_key = ("client", ("client_credentials",), None, None, (), None, (), TOKEN_URL, "c", "t")
    for key_type, credential in key_type_credentials.items():
        derived = StoreKeys.derive(_load(credential))
        if key_type == "rsa":
            assert derived.name(cache_key) == keys.name(cache_key)
            continue
        assert derived.name(cache_key) != keys.name(cache_key), key_type
        entry = derived.seal(NAME, _token(), 2_000.0)
        assert derived.open_entry(NAME, entry, 1_000.0, 0.0) is not None
        assert keys.open_entry(NAME, entry, 1_000.0, 0.0) is None


def test_the_keys_are_the_documented_hkdf_of_the_private_key(
    keys: StoreKeys, mtls_client_certificate: Credential
) -> None:
    """HKDF-SHA256 over the PKCS#8 DER, salt and info as the module says (a stable format)."""
    private = serialization.load_pem_private_key(
        mtls_client_certificate.key_pem.encode(), password=None
    )
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    name_key = HKDF(
        hashes.SHA256(), 32, b"mtls-auth token store v1", b"mtls-auth/token-store/v1/name-key"
    ).derive(der)
    cache_key = ("client", ("client_credentials",), None)
    text = json.dumps(cache_key, separators=(",", ":"))
    expected = hmac.new(name_key, text.encode(), hashlib.sha256).hexdigest()
    assert keys.name(cache_key) == expected


def test_store_keys_show_nothing_and_stay_in_the_process(keys: StoreKeys) -> None:
    assert repr(keys) == f"<StoreKeys x5t#S256={keys.thumbprint}>"
    assert not hasattr(keys, "__dict__")
    held = [getattr(keys, slot) for slot in StoreKeys.__slots__]
    assert not [value for value in held if isinstance(value, (bytes, bytearray))]
    assert "redacted" in repr(keys._name_key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)
    with pytest.raises(TypeError, match="derive"):
        StoreKeys()
    assert repr(object.__new__(StoreKeys)) == "<StoreKeys (incomplete)>"
