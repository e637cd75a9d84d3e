"""Fuzzing the parsers: only documented errors, never a crash, never a hang.

Targets (one hypothesis property each):

=========================== ==============================================================
``pem``                     `ClientCertificate.from_pem` on garbled PEM text and bytes:
                            mutated valid chains and keys, random blocks and labels,
                            truncated base64, swapped labels, escaped newlines, bit flips
                            inside the DER, passwords of every kind
``binding_mapping``         `parse_credentials` on dicts shaped like (and unlike) XSUAA,
                            Credential Store and generic bindings
``binding_json_text``       `BindingSource.from_input(text).read()` on JSON text, damaged
                            JSON, ``cf service-key`` output and random text
``vcap``                    `select_vcap_service` on VCAP_SERVICES JSON text
``kubernetes_directory``    `BindingSource.from_input(directory).read()` on binding
                            directories with random file names and contents, ``.metadata``
                            included, symlinks and subdirectories
``token_response``          `parse_token_response(HttpResponse(status, headers, body), ...)`
                            with random statuses, headers and bodies, JWTs included
``retry_after``             `parse_retry_after` on random header values
``fetch_flow``              the retry loop driven with random responses and failures
=========================== ==============================================================

The property is the same everywhere: the call returns, or raises an
`MtlsAuthError` subclass (the specific documented one where there is one); any
other exception fails. Error messages never echo a private key line or the
access token. Each example must finish within the profile's ``deadline``.

Profiles (registered in ``conftest.py``): ``ci``, the default, runs 50 examples
per target; ``fuzz`` runs 10,000 per target with a 2 s deadline per example. The
dedicated, non-CI run is::

    HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz.py -p no:cacheprovider -s

Known bugs: a crash the fuzzer already found is reported as a bug and has a
regression test below marked ``xfail(strict=True)``; while that test fails, the
property tolerates exactly that crash (same exception type, same library
function) and counts it, printed at the end of the module (``-s``). When the
library is fixed, the regression test passes, strict xfail turns it red, and
its entry in `KNOWN_BUGS` must go, so a fixed bug cannot come back unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import errno
import json
import math
import os
import re
import shutil
import string
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import assume, example, given, note
from hypothesis import strategies as st

from mtls_auth import ClientCertificate, MtlsAuthError, TokenError, TokenResponseError
from mtls_auth._binding import Binding, parse_credentials
from mtls_auth._http import HttpResponse, TransportFailure
from mtls_auth._request import TokenRequest
from mtls_auth._retry import RetryPolicy, fetch_flow, parse_retry_after
from mtls_auth._sources import BindingSource, select_vcap_service
from mtls_auth._token import MAX_LIFETIME, Token, parse_token_response
from mtls_auth.testing import PKI

# -- material: real certificates and keys, made once per module -------------------------------

_PKI = PKI()
_RSA = _PKI.issue_client("fuzz-rsa", key_type="rsa")
_EC = _PKI.issue_client("fuzz-ec", key_type="ec")
_ED = _PKI.issue_client("fuzz-ed25519", key_type="ed25519")
PASSWORD = "fuzz-password"

#: (certificate PEM, key PEM, password) that belong together.
VALID = [
    (_RSA.chain_pem, _RSA.key_pem_pkcs1(), None),
    (_RSA.cert_pem, _RSA.key_pem_pkcs8(), None),
    (_RSA.chain_pem, _RSA.key_pem_encrypted(PASSWORD.encode()), PASSWORD),
    (_EC.chain_pem, _EC.key_pem_sec1(), None),
    (_EC.chain_pem, _EC.key_pem_pkcs8(), None),
    (_ED.chain_pem, _ED.key_pem_pkcs8(), None),
    # Intermediate first: the leaf is found by its key.
    (_PKI.intermediate_pem + _RSA.cert_pem, _RSA.key_pem_pkcs1(), None),
]
MISMATCHED_KEY = _PKI.mismatched_key()
#: Certificates only: what mutations may splice into bindings, JSON and token responses.
#: A private key pasted into a client id or an error_description is shown where
#: those are shown; only the PEM parser's key argument gets key material.
PUBLIC_PEMS = sorted({c for c, _, _ in VALID} | {_PKI.root_pem})
ALL_PEMS = PUBLIC_PEMS + [k for _, k, _ in VALID] + [MISMATCHED_KEY]
#: Base64 body lines of every key above: never in an error message.
KEY_LINES = {
    line
    for _, key, _ in VALID
    for line in key.splitlines()
    if len(line) >= 32 and not line.startswith("-----") and ":" not in line
}

LABELS = [
    "CERTIFICATE",
    "X509 CERTIFICATE",
    "TRUSTED CERTIFICATE",
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "PUBLIC KEY",
    "DSA PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "CERTIFICATE REQUEST",
]
_BLOCK = re.compile(r"(-----BEGIN [^-]*-----\r?\n)(.*?)(-----END [^-]*-----)", re.DOTALL)


# -- known bugs: tolerated while their strict-xfail regression test fails ---------------------

#: id -> (exception type, library function the exception escapes from, what is wrong)
KNOWN_BUGS: dict[str, tuple[Any, str, str]] = {
    # All the crashes the fuzzer found are fixed; their regression tests below now
    # pass. A new one is added here with its strict-xfail regression test.
}
HITS: collections.Counter[str] = collections.Counter()
EXAMPLES: collections.Counter[str] = collections.Counter()
CALLS: collections.Counter[str] = collections.Counter()


def _innermost_library_function(exc: BaseException) -> str | None:
    """The innermost named mtls_auth function the exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    names = [
        f.name
        for f in frames
        if f"{os.sep}mtls_auth{os.sep}" in f.filename and not f.name.startswith("<")
    ]
    return names[-1] if names else None


def known_bug(exc: BaseException) -> str | None:
    function = _innermost_library_function(exc)
    for bug, (kind, where, _) in KNOWN_BUGS.items():
        if kind and isinstance(exc, kind) and where == function:
            return bug
    return None


def documented(
    target: str, call: Callable[[], Any], expected: type[MtlsAuthError] = MtlsAuthError
) -> Any:
    """Run `call`: its result, or the documented error it raised; anything else fails.

    A crash listed in `KNOWN_BUGS` is counted and returns None.
    """
    CALLS[target] += 1
    try:
        return call()
    except expected as exc:
        return exc
    except Exception as exc:
        bug = known_bug(exc)
        if bug is None:
            raise
        HITS[bug] += 1
        note(f"known bug {bug}: {type(exc).__name__}")
        return None


def assert_no_key_in(error: BaseException, secrets: set[str]) -> None:
    text = f"{error}\n{error!r}"
    cause: BaseException | None = error.__cause__ or error.__context__
    depth = 0
    while cause is not None and depth < 8:
        text += f"\n{cause}"
        cause = cause.__cause__ or cause.__context__
        depth += 1
    for secret in secrets:
        assert secret not in text, "an error message shows secret input"


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    lines = [
        f"{target}: {count} examples, {CALLS[target]} calls"
        for target, count in sorted(EXAMPLES.items())
    ]
    for bug, count in sorted(HITS.items()):
        lines.append(f"known bug {bug} hit {count} times: {KNOWN_BUGS[bug][2]}")
    sys.stderr.write("\n[fuzz] " + "\n[fuzz] ".join(lines) + "\n")


# -- strategies: text -------------------------------------------------------------------------

_B64 = string.ascii_letters + string.digits + "+/="
b64_text = st.text(alphabet=_B64, max_size=200)
any_text = st.text(max_size=300)
ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=300)


def _wrap64(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))


def _pem_block(label: str, body: str, end_label: str | None = None) -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {end_label or label}-----\n"


@st.composite
def random_block(draw: st.DrawFn, material: list[str] = PUBLIC_PEMS) -> str:
    label = draw(
        st.sampled_from(LABELS)
        | st.text(alphabet=string.ascii_uppercase + " 0123456789", max_size=20)
    )
    end = draw(st.none() | st.sampled_from(LABELS))
    body = draw(
        st.one_of(
            b64_text,
            st.binary(max_size=600).map(_wrap64),
            st.sampled_from(material).map(_body),
            any_text,
        )
    )
    return _pem_block(label, body, end)


def _body(pem: str) -> str:
    match = _BLOCK.search(pem)
    return match.group(2).strip() if match else pem


def _at(draw: st.DrawFn, text: str) -> int:
    return draw(st.integers(0, max(0, len(text))))


def _op_truncate(draw: st.DrawFn, text: str, material: list[str]) -> str:
    return text[: _at(draw, text)]


def _op_delete(draw: st.DrawFn, text: str, material: list[str]) -> str:
    start = _at(draw, text)
    return text[:start] + text[start + draw(st.integers(1, 80)) :]


def _op_insert(draw: st.DrawFn, text: str, material: list[str]) -> str:
    at = _at(draw, text)
    piece = draw(
        st.one_of(
            any_text.map(lambda s: s[:40]),
            st.sampled_from(
                [
                    "\n",
                    "\r\n",
                    "\\n",
                    "-----",
                    "-----END CERTIFICATE-----\n",
                    "=",
                    "\x00",
                    "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,"
                    "00112233445566778899AABBCCDDEEFF\n\n",
                    "\u00e9",
                    "\ud7ff",
                    "\t",
                    " ",
                ]
            ),
            random_block(material),
        )
    )
    return text[:at] + piece + text[at:]


def _op_replace_char(draw: st.DrawFn, text: str, material: list[str]) -> str:
    if not text:
        return text
    at = draw(st.integers(0, len(text) - 1))
    return text[:at] + draw(st.characters()) + text[at + 1 :]


def _op_swap_labels(draw: st.DrawFn, text: str, material: list[str]) -> str:
    old = draw(st.sampled_from(LABELS))
    new = draw(st.sampled_from(LABELS))
    if draw(st.booleans()):
        return text.replace(f"BEGIN {old}-", f"BEGIN {new}-")  # BEGIN and END disagree
    return text.replace(old, new)


def _op_newlines(draw: st.DrawFn, text: str, material: list[str]) -> str:
    style = draw(st.sampled_from(["\\n", "\r\n", "\r", "\\r\\n", "", " ", "\n\n"]))
    return text.replace("\n", style)


def _op_duplicate(draw: st.DrawFn, text: str, material: list[str]) -> str:
    return text + draw(st.sampled_from(material) | random_block(material) | st.just(text))


def _op_padding(draw: st.DrawFn, text: str, material: list[str]) -> str:
    return (
        text.replace("=", "") if draw(st.booleans()) else text.replace("\n-----END", "=\n-----END")
    )


def _op_drop_line(draw: st.DrawFn, text: str, material: list[str]) -> str:
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    del lines[draw(st.integers(0, len(lines) - 1))]
    return "\n".join(lines)


def _op_der(draw: st.DrawFn, text: str, material: list[str]) -> str:
    """Edit the DER inside a block: flip, truncate or extend bytes, re-encode cleanly."""
    match = _BLOCK.search(text)
    if match is None:
        return text
    try:
        der = bytearray(base64.b64decode(re.sub(r"\s", "", match.group(2))))
    except (binascii.Error, ValueError):
        return text
    if not der:
        return text
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "byte", "length"]))
    at = draw(st.integers(0, len(der) - 1))
    if kind == "flip":
        der[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del der[at:]
    elif kind == "extend":
        der[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "byte":
        der[at] = draw(st.integers(0, 255))
    else:  # an ASN.1 length byte made huge
        der[min(at, 1)] = draw(st.sampled_from([0x80, 0x84, 0x88, 0xFF]))
    return text[: match.start(2)] + _wrap64(bytes(der)) + "\n" + text[match.end(2) :]


MUTATIONS = [
    _op_truncate,
    _op_delete,
    _op_insert,
    _op_replace_char,
    _op_swap_labels,
    _op_newlines,
    _op_duplicate,
    _op_padding,
    _op_drop_line,
    _op_der,
    _op_der,
]


@st.composite
def mutated(draw: st.DrawFn, base: str, max_ops: int = 3, material: list[str] = PUBLIC_PEMS) -> str:
    text = base
    for _ in range(draw(st.integers(0, max_ops))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text, material)
    return text


@st.composite
def pem_argument(draw: st.DrawFn, base: str) -> str | bytes:
    text = draw(
        st.one_of(
            mutated(base, material=ALL_PEMS),
            mutated(base, material=ALL_PEMS),
            mutated(base, material=ALL_PEMS),
            st.lists(random_block(ALL_PEMS), max_size=3).map("".join),
            any_text,
            st.sampled_from(ALL_PEMS),
        )
    )
    as_bytes = draw(st.booleans())
    if as_bytes:
        return (
            text.encode("utf-8", "surrogatepass")
            if draw(st.booleans())
            else draw(st.binary(max_size=400))
        )
    return text


# -- target: the PEM parser -------------------------------------------------------------------


@given(data=st.data())
@example(data=None)  # the valid pairs, unmutated, once
def test_fuzz_pem(data: Any) -> None:
    EXAMPLES["pem"] += 1
    if data is None:
        for certificate, key, password in VALID:
            assert isinstance(
                ClientCertificate.from_pem(certificate, key, password=password), ClientCertificate
            )
        return
    certificate, key, password = data.draw(st.sampled_from(VALID), label="valid pair")
    certificate_arg = data.draw(pem_argument(certificate), label="certificate")
    key_arg = data.draw(pem_argument(key), label="key")
    password_arg = data.draw(
        st.one_of(
            st.none(), st.just(password), st.just(PASSWORD), any_text, st.binary(max_size=40)
        ),
        label="password",
    )
    outcome = documented(
        "pem", lambda: ClientCertificate.from_pem(certificate_arg, key_arg, password=password_arg)
    )
    if isinstance(outcome, MtlsAuthError):
        assert str(outcome)
        assert_no_key_in(outcome, KEY_LINES)
    elif isinstance(outcome, ClientCertificate):
        assert outcome.not_after.tzinfo is not None
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", outcome.thumbprint)
        for line in KEY_LINES:
            assert line not in repr(outcome)
        if data.draw(st.integers(0, 9), label="build a context") == 0:
            context = documented("pem", lambda: outcome.ssl_context(_PKI.root_pem))
            assert (
                context is None
                or not isinstance(context, Exception)
                or isinstance(context, MtlsAuthError)
            )


# -- strategies: JSON and bindings ------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(any_text.map(lambda s: s[:12]), inner, max_size=4)
    ),
    max_leaves=12,
)
URLS = st.one_of(
    st.sampled_from(
        [
            "https://tenant.authentication.eu10.hana.ondemand.com",
            "https://tenant.authentication.cert.eu10.hana.ondemand.com",
            "https://[::1",
            "https://a:99999/",
            "https://a:-1/",
            "https://:443/",
            "http://authentication.x",
            "https://user:pw@authentication.x:8443/path/",
            "https://\ud800/",
            "https://xn--/",
            "",
            "https://",
            "//no-scheme",
        ]
    ),
    st.builds(
        lambda h, p: f"https://{h}:{p}/", any_text.map(lambda s: s[:20]), st.integers(-5, 70000)
    ),
    any_text,
)
TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00.1234567890123Z",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2024-13-45T99:99:99Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.5+01",
            "",
            "Z",
        ]
    ),
    any_text,
)
FIELDS = {
    "clientid": any_text | st.just("sb-client!t1"),
    "client_id": any_text,
    "username": any_text,
    "password": any_text,
    "clientsecret": any_text,
    "certificate": st.sampled_from([c for c, _, _ in VALID]) | any_text,
    "key": st.sampled_from([k for _, k, _ in VALID]) | any_text,
    "certurl": URLS,
    "url": URLS,
    "token_url": URLS,
    "tokenurl": URLS,
    "oauth_token_url": URLS,
    "credential-type": st.sampled_from(
        [
            "x509",
            "X509_GENERATED",
            "X509_PROVIDED",
            "X509_ATTESTED",
            "binding-secret",
            "instance-secret",
            "",
            "X509",
        ]
    )
    | any_text,
    "expires_at": TIMESTAMPS,
    "encryption": st.dictionaries(
        st.sampled_from(["client_private_key", "server_public_key", "x"]), json_values, max_size=3
    )
    | json_values,
    "identityzone": any_text,
    "type": any_text,
}
field_values = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: st.tuples(st.just(name), FIELDS[name] | json_values)
)


@st.composite
def binding_dicts(draw: st.DrawFn) -> dict[Any, Any]:
    pairs = draw(st.lists(field_values, max_size=10))
    data: dict[Any, Any] = dict(pairs)
    extra = draw(st.dictionaries(any_text.map(lambda s: s[:10]), json_values, max_size=3))
    data.update(extra)
    if draw(st.booleans()):
        data = {
            "credentials": data,
            **draw(
                st.dictionaries(st.sampled_from(["label", "name", "tags"]), json_values, max_size=2)
            ),
        }
    return data


# -- target: parse_credentials on mappings ----------------------------------------------------


@given(
    st.one_of(
        binding_dicts(),
        binding_dicts(),
        json_values,
        st.dictionaries(
            st.integers() | st.none() | st.tuples(st.integers()), json_values, max_size=3
        ),
    )
)
def test_fuzz_binding_mapping(data: Any) -> None:
    EXAMPLES["binding_mapping"] += 1
    outcome = documented("binding_mapping", lambda: parse_credentials(data))
    if isinstance(outcome, Binding):
        assert outcome.kind in ("xsuaa", "credstore", "generic")
        assert isinstance(outcome.client_id, str)
        assert outcome.client_id
        assert isinstance(outcome.token_url, str)
        assert isinstance(outcome.certificate, str)
        assert isinstance(outcome.key, str)
        shown = (outcome.kind, outcome.client_id, outcome.token_url, outcome.url, outcome.source)
        if len(outcome.key) >= 16 and not any(outcome.key in str(v) for v in shown):
            assert outcome.key not in repr(outcome)
    elif outcome is not None:
        assert isinstance(outcome, ValueError)  # BindingError is both
        assert_no_key_in(outcome, KEY_LINES)
    if isinstance(data, dict):
        source = documented("binding_mapping", lambda: BindingSource.from_input(data))
        if isinstance(source, BindingSource):
            documented("binding_mapping", source.read)


# -- target: from_input on JSON text ----------------------------------------------------------


def _names_an_existing_path(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except Exception:  # noqa: BLE001 - whatever fails here, from_input must handle
        return False


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    text = json.dumps(draw(binding_dicts()), indent=draw(st.sampled_from([None, 2])))
    style = draw(st.sampled_from(["plain", "cf", "bom", "mutate", "nest", "trailing", "list"]))
    if style == "cf":
        text = f"Getting key KEY for service instance X as user...\n\n{text}"
    elif style == "bom":
        text = "\ufeff" + text
    elif style == "mutate":
        text = draw(mutated(text))
    elif style == "nest":
        depth = draw(st.integers(1, 3000))
        text = '{"credentials": ' + "[" * depth + "]" * depth + "}"
    elif style == "trailing":
        text += draw(any_text)
    elif style == "list":
        text = json.dumps([json.loads(text)])
    return text


@given(
    st.one_of(json_texts(), json_texts(), any_text, st.from_regex(r"\A\s*\{.*", fullmatch=False))
)
@example("{" + '"a":' * 1 + "[" * 100_000 + "]" * 100_000 + "}")
def test_fuzz_binding_json_text(text: str) -> None:
    EXAMPLES["binding_json_text"] += 1
    assume(not _names_an_existing_path(text))
    source = documented("binding_json_text", lambda: BindingSource.from_input(text))
    if isinstance(source, BindingSource):
        assert source.path is None
        outcome = documented("binding_json_text", source.read)
        if isinstance(outcome, MtlsAuthError):
            assert_no_key_in(outcome, KEY_LINES)
    elif isinstance(source, MtlsAuthError):
        assert_no_key_in(source, KEY_LINES)


# -- target: VCAP_SERVICES --------------------------------------------------------------------

instances = st.fixed_dictionaries(
    {},
    optional={
        "name": any_text.map(lambda s: s[:10]) | json_values,
        "label": st.sampled_from(["xsuaa", "credstore"]) | any_text,
        "tags": st.lists(st.sampled_from(["xsuaa", "credstore", "x"]) | any_text, max_size=3)
        | json_values,
        "credentials": binding_dicts() | json_values,
        "plan": any_text,
    },
)
vcap_documents = st.dictionaries(
    st.sampled_from(["xsuaa", "credstore", "user-provided"]) | any_text.map(lambda s: s[:8]),
    st.lists(instances | json_values, max_size=3) | json_values,
    max_size=4,
)


@given(
    vcap=st.one_of(
        vcap_documents.map(json.dumps), vcap_documents.map(json.dumps).flatmap(mutated), any_text
    ),
    label=st.sampled_from(["xsuaa", "credstore"]) | any_text.map(lambda s: s[:8]),
    name=st.none() | any_text.map(lambda s: s[:10]),
)
def test_fuzz_vcap(vcap: str, label: str, name: str | None) -> None:
    EXAMPLES["vcap"] += 1
    outcome = documented("vcap", lambda: select_vcap_service(label, name, vcap_services=vcap))
    if outcome is not None and not isinstance(outcome, MtlsAuthError):
        assert isinstance(outcome, dict)
        documented("vcap", lambda: parse_credentials(outcome))


# -- target: Kubernetes binding directories ---------------------------------------------------

SPECIAL_NAMES = [
    ".metadata",
    "type",
    "provider",
    "credentials.json",
    "binding.json",
    "clientid",
    "certificate",
    "key",
    "url",
    "certurl",
    "username",
    "oauth_token_url",
    "credential-type",
    "..data",
    "..2024_01_01_00_00_00.000000000",
    ".hidden",
]
file_names = st.sampled_from(SPECIAL_NAMES) | st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=24,
).filter(lambda n: n not in (".", "..") and len(os.fsencode(n)) <= 200)
metadata_names = file_names | st.text(max_size=300) | st.just("a" * 300) | json_values


@st.composite
def metadata_documents(draw: st.DrawFn, names: list[str]) -> str:
    properties = draw(
        st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(names) if names else metadata_names},
                optional={
                    "format": st.sampled_from(["json", "text", "JSON", ""]) | json_values,
                    "container": st.booleans() | json_values,
                    "sourceKey": any_text,
                },
            )
            | json_values,
            max_size=5,
        )
    )
    document: Any = {"credentialProperties": properties}
    if draw(st.booleans()):
        document["metaDataProperties"] = draw(
            st.lists(
                st.fixed_dictionaries({"name": st.just("type") | any_text}) | json_values,
                max_size=3,
            )
            | json_values
        )
    if draw(st.integers(0, 9)) == 0:
        document = draw(json_values)
    text = json.dumps(document)
    return draw(mutated(text, max_ops=1)) if draw(st.integers(0, 7)) == 0 else text


def file_contents(name: str) -> st.SearchStrategy[Any]:
    """What a file may hold: a private key only in the file named ``key``."""
    return st.one_of(
        any_text,
        st.binary(max_size=300),
        json_values.map(json.dumps),
        binding_dicts().map(json.dumps),
        st.sampled_from(ALL_PEMS if name == "key" else PUBLIC_PEMS),
        st.sampled_from(["x509", "xsuaa", "https://auth.example", "\ufeff{}", "{", ""]),
    )


@st.composite
def binding_directories(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """(kind, name, content) entries; kind is file, dir, symlink or dangling."""
    names = draw(st.lists(file_names, max_size=8, unique=True))
    entries: list[tuple[str, str, Any]] = []
    for name in names:
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "dangling"]))
        if name == ".metadata" and kind == "file":
            entries.append(("file", name, draw(metadata_documents(names))))
        elif kind == "file":
            entries.append(("file", name, draw(file_contents(name))))
        elif kind == "symlink" and len([n for n in names if n not in (name, "key")]) > 0:
            # Never to "key": a client id that is a link to the key file shows the key.
            targets = [n for n in names if n not in (name, "key")]
            entries.append(("symlink", name, draw(st.sampled_from(targets))))
        elif kind == "dangling":
            entries.append(("symlink", name, "missing-" + name))
        else:
            entries.append(("dir", name, None))
    if draw(st.booleans()) and ".metadata" not in names:
        entries.append(("file", ".metadata", draw(metadata_documents(names))))
    return entries


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("k8s-fuzz")


def _materialise(root: Path, entries: list[tuple[str, str, Any]]) -> None:
    for kind, name, content in entries:
        path = root / name
        try:
            if kind == "dir":
                path.mkdir()
            elif kind == "symlink":
                os.symlink(content, path)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_bytes(content.encode("utf-8", "surrogatepass"))
        except OSError as exc:
            assume(exc.errno not in (errno.EEXIST, errno.ENAMETOOLONG, errno.EILSEQ))
            raise


@given(entries=binding_directories(), as_path=st.booleans())
def test_fuzz_kubernetes_directory(
    scratch: Path, entries: list[tuple[str, str, Any]], as_path: bool
) -> None:
    EXAMPLES["kubernetes_directory"] += 1
    root = Path(tempfile.mkdtemp(dir=scratch))
    try:
        _materialise(root, entries)
        source = documented(
            "kubernetes_directory", lambda: BindingSource.from_input(root if as_path else str(root))
        )
        if isinstance(source, BindingSource):
            outcome = documented("kubernetes_directory", source.read)
            if isinstance(outcome, MtlsAuthError):
                assert_no_key_in(outcome, KEY_LINES)
            changed = documented("kubernetes_directory", source.changed)
            assert changed in (True, False, None) or isinstance(changed, MtlsAuthError)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- target: the token response ---------------------------------------------------------------

b64token = st.from_regex(r"\A[A-Za-z0-9\-._~+/]{20,80}=*\Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@st.composite
def jwts(draw: st.DrawFn) -> str:
    claims = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "exp": st.one_of(
                    st.integers(min_value=-(10**30), max_value=10**30),
                    st.integers(min_value=10**300, max_value=10**400),
                    st.floats(),
                    any_text,
                    st.booleans(),
                    json_values,
                ),
                "iat": json_values,
                "cnf": json_values,
            },
        )
        | json_values
    )
    payload_text = json.dumps(claims, allow_nan=True)
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(1, 5000))
        payload_text = '{"exp": ' + "[" * depth + "]" * depth + "}"
    payload = draw(st.just(payload_text.encode()) | st.binary(max_size=60))
    header = _b64url(b'{"alg":"RS256","typ":"JWT"}')
    return f"{header}.{_b64url(payload)}.{_b64url(draw(st.binary(max_size=40)))}"


token_fields = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.one_of(b64token, jwts(), any_text, json_values),
        "token_type": st.sampled_from(["bearer", "Bearer", "BEARER", "mac", "DPoP", ""])
        | json_values,
        "expires_in": st.one_of(
            st.integers(min_value=-(10**20), max_value=10**20),
            st.integers(min_value=10**300, max_value=10**4000),
            st.floats(),
            st.from_regex(r"\A\s*[0-9]{1,30}\s*\Z"),
            st.sampled_from(["1e3", "٣", "0x10", "-5", "", " 60 "]),
            json_values,
        ),
        "error": any_text | json_values,
        "error_description": any_text | json_values,
        "scope": any_text,
        "jti": any_text,
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["token", "token", "token", "json", "bytes", "nest", "mutate"]))
    if kind == "token":
        return json.dumps(draw(token_fields), allow_nan=True).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(json_values)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=500))
    if kind == "nest":
        depth = draw(st.integers(1, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode()
    text = json.dumps(draw(token_fields), allow_nan=True)
    return draw(mutated(text, max_ops=2)).encode("utf-8", "surrogatepass")


headers_strategy = st.dictionaries(
    st.sampled_from(["content-type", "retry-after", "www-authenticate", "cache-control"])
    | ascii_text.map(str.lower),
    st.sampled_from(["application/json", "application/json;charset=UTF-8", "text/html", ""])
    | any_text,
    max_size=4,
)
statuses = st.sampled_from([200, 201, 204, 400, 401, 403, 429, 500, 502, 503]) | st.integers(
    -1000, 10_000
)


@given(status=statuses, headers=headers_strategy, body=bodies())
@example(status=200, headers={}, body=b"[" * 100_000)
@example(
    status=200,
    headers={},
    body=json.dumps(
        {"access_token": "e30." + _b64url(b'{"exp": 1' + b"0" * 400 + b"}") + ".c"}
    ).encode(),
)
def test_fuzz_token_response(status: int, headers: dict[str, str], body: bytes) -> None:
    EXAMPLES["token_response"] += 1
    url = "https://auth.example/oauth/token"
    outcome = documented(
        "token_response",
        lambda: parse_token_response(HttpResponse(status, headers, body), url, sent_at=0.0),
        expected=TokenResponseError,
    )
    try:
        sent = json.loads(body)
    except Exception:  # noqa: BLE001 - not JSON (or too deep): no token to look for
        sent = None
    token = sent.get("access_token") if isinstance(sent, dict) else None
    if isinstance(outcome, Token):
        assert 200 <= status < 300
        assert math.isfinite(outcome.lifetime)
        assert 0 <= outcome.lifetime <= MAX_LIFETIME
        assert outcome.token_type == "bearer"
        assert outcome.authorization() == f"Bearer {token}"
        assert re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", str(token))
        if len(str(token)) >= 16:  # a short one ("0") is in any text by chance
            assert str(token) not in repr(outcome)
            assert str(token) not in str(outcome)
    elif isinstance(outcome, TokenResponseError):
        assert outcome.status_code in (status, None)
        message = str(outcome)
        assert message.isprintable(), "a server-chosen control character in the message"
        others = (
            json.dumps({k: v for k, v in sent.items() if k != "access_token"})
            if isinstance(sent, dict)
            else ""
        )
        if isinstance(token, str) and len(token) >= 16 and token not in others:
            assert_no_key_in(outcome, {token})


@given(
    st.one_of(
        any_text,
        st.from_regex(r"\A\s*[0-9]{1,40}\s*\Z"),
        st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
        st.sampled_from(
            [
                "Mon, 01 Jan 0001 00:00:00 GMT",
                "Fri, 31 Dec 9999 23:59:59 GMT",
                "Sun, 06 Nov 1994 08:49:37 +9999",
                "Sun Nov  6 08:49:37 1994",
            ]
        ),
    )
)
def test_fuzz_retry_after(value: str) -> None:
    EXAMPLES["retry_after"] += 1
    outcome = documented("retry_after", lambda: parse_retry_after(value, now=1_700_000_000.0))
    assert outcome is None or (
        isinstance(outcome, float) and math.isfinite(outcome) and outcome >= 0
    )


# -- target: the retry loop -------------------------------------------------------------------

replies = st.one_of(
    st.builds(HttpResponse, statuses, headers_strategy, bodies()),
    st.builds(
        TransportFailure,
        st.sampled_from(
            [
                "connect",
                "timeout",
                "tls_server",
                "tls_client",
                "tls_closed",
                "too_large",
                "other",
                "?",
            ]
        ),
        any_text.map(lambda s: s[:40]),
    ),
)


@given(
    answers=st.lists(replies, min_size=1, max_size=8),
    attempts=st.integers(1, 5),
    timeout=st.floats(0.001, 60),
)
def test_fuzz_fetch_flow(answers: list[Any], attempts: int, timeout: float) -> None:
    EXAMPLES["fetch_flow"] += 1
    policy = RetryPolicy(attempts=attempts, backoff=0.01, max_backoff=0.05, max_retry_after=0.5)
    request = TokenRequest.create().http_request("https://auth.example/oauth/token", "client")
    now = [0.0]

    def drive() -> Token:
        flow = fetch_flow(
            request,
            timeout=timeout,
            retry=policy,
            clock=lambda: now[0],
            subject="CN=x",
            timer=lambda: now[0],
        )
        step = next(flow)
        sent = 0
        queue = list(answers)
        while True:
            if isinstance(step, float):
                assert 0 <= step <= policy.max_retry_after
                now[0] += step
                reply = None
            else:
                sent += 1
                assert sent <= attempts
                assert step.timeout > 0
                reply = queue.pop(0) if queue else answers[-1]
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value

    outcome = documented("fetch_flow", drive, expected=TokenError)
    assert outcome is None or isinstance(outcome, (Token, TokenError))


# -- regression tests for the crashes the fuzzer found ----------------------------------------


def _bug(bug: str) -> Any:
    kind, function, what = KNOWN_BUGS[bug]
    escapes = f" ({kind.__name__} escapes from {function})" if kind else ""
    return pytest.mark.xfail(
        reason=f"BUG ({bug}): {what}{escapes}; "
        "remove it from KNOWN_BUGS in tests/test_fuzz.py once fixed",
        strict=True,
        raises=kind or AssertionError,
    )


def _cert_pem(der: bytes) -> str:
    return f"-----BEGIN CERTIFICATE-----\n{_wrap64(der)}\n-----END CERTIFICATE-----\n"


_RSA_OID = bytes.fromhex("06092A864886F70D010101")  # rsaEncryption, in the leaf's SPKI


def test_regression_certificate_with_unknown_key_algorithm() -> None:
    der = _RSA.certificate.public_bytes(serialization.Encoding.DER)
    assert der.count(_RSA_OID) == 1
    unknown = der.replace(_RSA_OID, _RSA_OID[:-1] + b"\x7f")  # 1.2.840.113549.1.1.127
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(_cert_pem(unknown), _RSA.key_pem_pkcs1())


def test_regression_certificate_with_undecodable_public_key() -> None:
    der = bytearray(_RSA.certificate.public_bytes(serialization.Encoding.DER))
    inside = der.index(_RSA_OID) + len(_RSA_OID) + 2 + 5  # into the key's BIT STRING
    der[inside] ^= 0xFF
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(_cert_pem(bytes(der)), _RSA.key_pem_pkcs1())


def test_regression_certificate_with_undecodable_issuer_name() -> None:
    der = bytearray(_RSA.certificate.public_bytes(serialization.Encoding.DER))
    issuer_cn = der.index(b"mtls-auth Test Intermediate CA")  # the issuer comes first
    der[issuer_cn + 3] = 0xFF  # not UTF-8 any more
    chain = _cert_pem(bytes(der)) + _PKI.intermediate_pem
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(chain, _RSA.key_pem_pkcs1())


@pytest.mark.parametrize("status", [200, 500])
def test_regression_content_type_is_cleaned_in_messages(status: int) -> None:
    headers = {"content-type": "text/html\r\n2024-01-01 INFO forged log line\x1b[2J"}
    with pytest.raises(TokenResponseError) as info:
        parse_token_response(HttpResponse(status, headers, b"<html>"), "https://a/t", sent_at=0)
    assert str(info.value).isprintable()


def test_regression_token_response_deep_nesting() -> None:
    with pytest.raises(TokenResponseError):
        parse_token_response(
            HttpResponse(200, {}, b"[" * 2000 + b"]" * 2000), "https://a/t", sent_at=0
        )


def test_regression_jwt_payload_deep_nesting() -> None:
    payload = _b64url(b'{"exp": ' + b"[" * 2000 + b"]" * 2000 + b"}")
    body = json.dumps({"access_token": f"e30.{payload}.c"}).encode()
    token = parse_token_response(HttpResponse(200, {}, body), "https://a/t", sent_at=0)
    assert token.lifetime > 0


def test_regression_jwt_exp_too_large_for_a_float() -> None:
    payload = _b64url(b'{"exp": 1' + b"0" * 400 + b"}")
    body = json.dumps({"access_token": f"e30.{payload}.c"}).encode()
    token = parse_token_response(HttpResponse(200, {}, body), "https://a/t", sent_at=0)
    assert 0 <= token.lifetime <= MAX_LIFETIME


@pytest.mark.parametrize("where", ["json-text", "vcap"])
def test_regression_binding_json_deep_nesting(where: str) -> None:
    nested = '{"credentials": ' + "[" * 2000 + "]" * 2000 + "}"

    def parse() -> object:
        if where == "json-text":
            return BindingSource.from_input(nested).read()
        return select_vcap_service("xsuaa", vcap_services=nested)

    with pytest.raises(MtlsAuthError):
        parse()


def test_regression_metadata_json_property_deep_nesting(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_text(
        json.dumps({"credentialProperties": [{"name": "credentials", "format": "json"}]})
    )
    (tmp_path / "credentials").write_text("[" * 2000 + "]" * 2000)
    with pytest.raises(MtlsAuthError):
        BindingSource.from_input(tmp_path).read()


@pytest.mark.parametrize("document", [{"xsuaa": 5}, {"xsuaa": True}, {"other": [{"tags": 5}]}])
def test_regression_vcap_odd_shapes(document: dict[str, Any]) -> None:
    with pytest.raises(MtlsAuthError):
        select_vcap_service("xsuaa", vcap_services=json.dumps(document))


def test_regression_metadata_properties_not_a_list(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_text(
        json.dumps({"credentialProperties": [], "metaDataProperties": 5})
    )
    with pytest.raises(MtlsAuthError):
        BindingSource.from_input(tmp_path).read()


def test_regression_metadata_name_too_long(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_text(json.dumps({"credentialProperties": [{"name": "a" * 300}]}))
    with pytest.raises(MtlsAuthError):
        BindingSource.from_input(tmp_path).read()


def test_regression_unknown_home_directory() -> None:
    with pytest.raises(MtlsAuthError):
        BindingSource.from_input("~no-such-user-mtls-auth/service-key.json")


def test_regression_pem_parsing_is_linear() -> None:
    garbage = "-----BEGIN CERTIFICATE-----\n" * 2500  # 70 kB
    started = time.monotonic()
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(garbage, garbage)
    assert time.monotonic() - started < 0.5


def _reachable_text(error: BaseException) -> str:
    """Everything an exception keeps reachable: every chained exception, suppressed
    or not, with the text its attributes hold (UnicodeError.object, JSONDecodeError.doc)."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None and len(parts) < 40:
        parts.append(repr(current))
        for attribute in ("object", "doc"):
            value = getattr(current, attribute, None)
            if isinstance(value, (bytes, bytearray)):
                value = bytes(value).decode("latin-1")
            if isinstance(value, str):
                parts.append(value)
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    "where", ["pem-non-ascii", "binding-file-not-utf8", "binding-json-invalid"]
)
def test_regression_errors_keep_no_key_text_reachable(where: str, tmp_path: Path) -> None:
    key = _RSA.key_pem_pkcs1()
    secret = [line for line in key.splitlines() if len(line) == 64][2]
    binding = {"clientid": "c", "certificate": _RSA.chain_pem, "key": key, "url": "https://a"}
    path = tmp_path / "service-key.json"
    path.write_bytes(json.dumps(binding).encode() + b"\xff")

    def parse() -> object:
        if where == "pem-non-ascii":
            return ClientCertificate.from_pem(_RSA.chain_pem, key + "\u00e9")
        if where == "binding-file-not-utf8":
            return BindingSource.from_input(path).read()
        return BindingSource.from_input(json.dumps(binding)[:-1] + ",}").read()

    with pytest.raises(MtlsAuthError) as info:
        parse()
    assert secret not in str(info.value)  # the message itself is clean...
    assert secret not in _reachable_text(info.value)  # ...and so is what it drags along


def test_known_bugs_each_have_a_regression_test() -> None:
    source = Path(__file__).read_text()
    for bug in KNOWN_BUGS:
        assert f'@_bug("{bug}")' in source, bug
