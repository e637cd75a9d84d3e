"""Credential Store payload encryption without a server: PayloadCipher and its wire rules.

`PayloadCipher` against JWEs built with raw `cryptography` primitives (the
test kit's and hand-built ones): interoperability both ways, the ``iat``
freshness window, only RSA-OAEP-256 / A256GCM, header parameters, garbage and
unusable keys as `PayloadError`; and which request bodies `seal_request` seals
and which responses `open_response` opens.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mtls_auth import credstore as _credstore

if not _credstore.available():  # pragma: no cover - Python 3.9
    pytest.skip(
        "Credential Store payloads need joserfc >= 1.7.2 (Python 3.10+)", allow_module_level=True
    )

from broken_keys import edited_rsa_key
from credstore_harness import hand_built_jwe, jwe_header, new_key, pkcs8_der_b64, spki_der_b64

from mtls_auth import PayloadError
from mtls_auth.credstore import PayloadCipher, open_response, seal_request
from mtls_auth.testing._credstore_api import jwe_decrypt, jwe_encrypt


def test_seal_request_leaves_empty_and_jose_bodies_alone() -> None:
    cipher = PayloadCipher(new_key())
    assert seal_request(cipher, b"", "application/json") is None
    assert seal_request(cipher, b"a.b.c.d.e", "application/jose; charset=utf-8") is None
    sealed = seal_request(cipher, b"{}", None)
    assert sealed is not None
    assert sealed.count(b".") == 4


def test_open_response_rules() -> None:
    client = new_key()
    cipher = PayloadCipher(new_key(), client)
    jwe = jwe_encrypt(b'{"a": 1}', client.public_key(), iat=time.time())
    assert open_response(cipher, 200, "application/jose; charset=utf-8", jwe) == b'{"a": 1}'
    assert open_response(cipher, 404, "application/json", b'{"message": "x"}') is None
    assert open_response(cipher, 204, "application/json", b"") is None
    assert open_response(cipher, 200, "application/json", b"{}", require_encrypted=False) is None
    with pytest.raises(PayloadError):
        open_response(cipher, 200, "application/json", b"{}")
    with pytest.raises(PayloadError):
        open_response(cipher, 200, None, b"{}")


# -- interoperability with the raw-cryptography JWE -------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """(mtls_server key, client key)."""
    return new_key(), new_key()


def test_cipher_encrypt_decrypts_with_raw_jwe(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(spki_der_b64(server_key.public_key()), pkcs8_der_b64(client_key))
    compact = cipher.encrypt(b'{"value": "s3cret"}')
    assert compact.count(b".") == 4
    header = jwe_header(compact)
    assert set(header) == {"alg", "enc", "iat"}
    assert (header["alg"], header["enc"]) == ("RSA-OAEP-256", "A256GCM")
    assert isinstance(header["iat"], int)
    assert abs(header["iat"] - time.time()) < 5
    plain = jwe_decrypt(compact, server_key, now=time.time(), max_age=120)
    assert plain == b'{"value": "s3cret"}'
    # Fresh CEK and IV every time.
    assert cipher.encrypt(b"x") != cipher.encrypt(b"x")


def test_raw_jwe_decrypts_with_cipher(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    assert cipher.can_decrypt
    compact = jwe_encrypt(b'{"a": "b"}', client_key.public_key(), iat=time.time())
    assert cipher.decrypt(compact) == b'{"a": "b"}'
    assert cipher.decrypt(compact.decode("ascii") + "\n") == b'{"a": "b"}'


def test_iat_in_milliseconds_is_accepted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    compact = jwe_encrypt(b"{}", client_key.public_key(), iat=time.time() * 1000)
    assert cipher.decrypt(compact) == b"{}"
    stale = jwe_encrypt(b"{}", client_key.public_key(), iat=(time.time() - 600) * 1000)
    with pytest.raises(PayloadError, match="old"):
        cipher.decrypt(stale)


def test_iat_window_edges_with_injected_clock(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    now = 1_800_000_000.0
    cipher = PayloadCipher(server_key.public_key(), client_key, max_age=120, clock=lambda: now)
    public = client_key.public_key()
    for iat in (now - 120, now, now + 120):
        assert cipher.decrypt(jwe_encrypt(b"{}", public, iat=iat)) == b"{}"
    with pytest.raises(PayloadError, match="old"):
        cipher.decrypt(jwe_encrypt(b"{}", public, iat=now - 122))
    with pytest.raises(PayloadError, match="future"):
        cipher.decrypt(jwe_encrypt(b"{}", public, iat=now + 122))
    assert jwe_header(cipher.encrypt(b"{}"))["iat"] == int(now)


@pytest.mark.parametrize(
    ("header", "oaep_hash"),
    [
        ({"alg": "RSA-OAEP", "enc": "A256GCM"}, hashes.SHA1()),
        ({"alg": "RSA-OAEP-256", "enc": "A128GCM"}, None),
        ({"alg": "RSA-OAEP-384", "enc": "A256GCM"}, hashes.SHA384()),
        ({"alg": "dir", "enc": "A256GCM"}, None),
    ],
    ids=["RSA-OAEP-sha1", "A128GCM", "RSA-OAEP-384", "dir"],
)
def test_other_algorithms_are_refused(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    header: dict[str, Any],
    oaep_hash: hashes.HashAlgorithm | None,
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    compact = hand_built_jwe(
        {**header, "iat": int(time.time())}, b"{}", client_key.public_key(), oaep_hash=oaep_hash
    )
    with pytest.raises(PayloadError, match="RSA-OAEP-256"):
        cipher.decrypt(compact)


def test_hand_built_rsa_oaep_256_is_accepted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    """The hand-built path is right: with the pinned algorithms it decrypts."""
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(time.time())}
    assert cipher.decrypt(hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


@pytest.mark.parametrize("scale", [1, 1000], ids=["seconds", "milliseconds"])
def test_fractional_iat_is_accepted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], scale: int
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": time.time() * scale + 0.25}
    assert cipher.decrypt(hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


@pytest.mark.parametrize("extra", [{"typ": "JOSE"}, {"kid": "k1"}, {"cty": "application/json"}])
def test_registered_extra_header_parameters_are_fine(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], extra: dict[str, str]
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(time.time()), **extra}
    assert cipher.decrypt(hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


@pytest.mark.parametrize("extra", [{"jti": "abc"}, {"x-request-id": "r1"}], ids=["jti", "private"])
def test_unknown_header_parameters_are_ignored(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], extra: dict[str, str]
) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "iat": int(time.time()), **extra}
    assert cipher.decrypt(hand_built_jwe(header, b"{}", client_key.public_key())) == b"{}"


def test_missing_iat_is_refused(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key(), client_key)
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
    with pytest.raises(PayloadError, match="iat"):
        cipher.decrypt(hand_built_jwe(header, b"{}", client_key.public_key()))


@pytest.mark.parametrize(
    "payload",
    [b"", b"{}", b"a.b.c.d.e", b"....", b"!!.!!.!!.!!.!!", "\u00e9.\u00e9.\u00e9.\u00e9.\u00e9"],
    ids=["empty", "json", "letters", "dots", "bang", "non-ascii"],
)
def test_garbage_is_a_payload_error(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], payload: bytes | str
) -> None:
    server_key, client_key = keys
    with pytest.raises(PayloadError):
        PayloadCipher(server_key.public_key(), client_key).decrypt(payload)


def test_decrypt_without_private_key(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    server_key, client_key = keys
    cipher = PayloadCipher(server_key.public_key())
    assert not cipher.can_decrypt
    assert "encrypt only" in repr(cipher)
    compact = jwe_encrypt(b"{}", client_key.public_key(), iat=time.time())
    with pytest.raises(PayloadError, match="client_private_key="):
        cipher.decrypt(compact)


def test_from_encryption_needs_server_public_key(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    _, client_key = keys
    with pytest.raises(PayloadError, match="server_public_key"):
        PayloadCipher.from_encryption({"client_private_key": pkcs8_der_b64(client_key)})


def test_a_client_key_with_edited_private_parts_is_refused() -> None:
    # Loaded without cryptography's 40 ms primality check; the self-test catches it.
    broken = pkcs8_der_b64(edited_rsa_key(new_key()))
    with pytest.raises(PayloadError, match="could not be decoded"):
        PayloadCipher(new_key(), broken)


def test_unusable_keys_are_payload_errors(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    server_key, client_key = keys
    public = spki_der_b64(server_key.public_key())
    private = pkcs8_der_b64(client_key)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_der = base64.b64encode(
        ec_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    ).decode()
    cases: list[tuple[Any, Any]] = [
        ("not base64 !!", private),
        (base64.b64encode(b"not a key").decode(), private),
        (public, "not base64 !!"),
        (public, private[: len(private) // 2]),
        (public, client_key.public_key()),
        (public, ec_der),
        (spki_der_b64(ec_key.public_key()), private),
    ]
    for server_public, client_private in cases:
        with pytest.raises(PayloadError) as info:
            PayloadCipher(server_public, client_private)
        assert private[40:100] not in str(info.value)
