"""Assertions that what the library shows (messages, reprs, tracebacks) holds no key material.

Shared by the binding and certificate tests: the fragments are the body lines
of a credential's key (in every PEM form it has) and leaf certificate PEM, and
slices of any other secret value (Credential Store payload keys, binding
secrets).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtls_auth.testing import Credential

__all__ = [
    "all_key_pems",
    "assert_clean",
    "assert_clean_error",
    "secret_fragments",
    "secret_lines",
]


def secret_fragments(credential: Credential, *extra: str) -> list[str]:
    """Substrings that must never show: key and leaf certificate body lines, other secrets."""
    fragments: list[str] = []
    for pem in (credential.key_pem, credential.cert_pem):
        fragments += [line for line in pem.splitlines() if "-----" not in line and len(line) > 20]
    for value in extra:
        fragments += [value[i : i + 32] for i in range(0, max(len(value) - 32, 1), 97)]
    return fragments


def assert_clean(text: str, fragments: list[str]) -> None:
    leaked = [fragment for fragment in fragments if fragment in text]
    assert not leaked, f"secret material in: {text[:300]!r}"


def assert_clean_error(exc: BaseException, fragments: list[str]) -> None:
    """The message, the repr and the whole printed traceback (causes too) are clean."""
    assert_clean(str(exc), fragments)
    assert_clean(repr(exc), fragments)
    assert_clean("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), fragments)


def secret_lines(*pems: str) -> list[str]:
    """The base64 body lines of private key PEMs: none may ever leave the object."""
    lines = []
    for pem in pems:
        for line in pem.replace("\\n", "\n").splitlines():
            line = line.strip()
            if len(line) >= 16 and not line.startswith("-----") and ":" not in line:
                lines.append(line)
    assert lines
    return lines


def all_key_pems(credential: Credential) -> list[str]:
    pems = [credential.key_pem, credential.key_pem_pkcs8()]
    if credential.key_type.startswith("RSA"):
        pems.append(credential.key_pem_pkcs1())
    return pems
