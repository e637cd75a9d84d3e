"""An RSA key whose public half is right and whose private half was edited.

cryptography refuses such a key unless told to skip its full check, which
mtls-auth does for the binding's own keys (the check costs about 40 ms); the
library's one-signature self-test must then refuse it instead.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa


def edited_rsa_key(key: rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    """`key` with its CRT exponents changed: the same public key, wrong signatures."""
    numbers = key.private_numbers()
    edited = rsa.RSAPrivateNumbers(
        p=numbers.p,
        q=numbers.q,
        d=numbers.d ^ 0b10,
        dmp1=numbers.dmp1 ^ 0b10,
        dmq1=numbers.dmq1 ^ 0b10,
        iqmp=numbers.iqmp,
        public_numbers=numbers.public_numbers,
    )
    return edited.private_key(unsafe_skip_rsa_key_validation=True)
