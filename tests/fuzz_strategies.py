"""Hypothesis strategies and material for the fuzz targets of ``test_fuzz.py``.

Real certificates and keys made once (`FUZZ_PKI`, `VALID`, `KEY_LINES`), and
the inputs each target draws from: mutated PEM text and bytes, JSON values and
binding-shaped dicts, JSON text, VCAP_SERVICES documents, Kubernetes binding
directories with ``.metadata``, token responses (JWTs included) and the
replies the retry loop gets. Mutations splice only certificates (never key
material) into what is shown in messages; only the PEM parser's key argument
gets keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import string
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from mtls_auth._http import HttpResponse, TransportFailure
from mtls_auth.testing import PKI

# -- material: real certificates and keys, made once per module -------------------------------

FUZZ_PKI = PKI()
RSA = FUZZ_PKI.issue_client("fuzz-rsa", key_type="rsa")
EC = FUZZ_PKI.issue_client("fuzz-ec", key_type="ec")
ED25519 = FUZZ_PKI.issue_client("fuzz-ed25519", key_type="ed25519")
PASSWORD = "fuzz-password"

#: (certificate PEM, key PEM, password) that belong together.
VALID = [
    (RSA.chain_pem, RSA.key_pem_pkcs1(), None),
    (RSA.cert_pem, RSA.key_pem_pkcs8(), None),
    (RSA.chain_pem, RSA.key_pem_encrypted(PASSWORD.encode()), PASSWORD),
    (EC.chain_pem, EC.key_pem_sec1(), None),
    (EC.chain_pem, EC.key_pem_pkcs8(), None),
    (ED25519.chain_pem, ED25519.key_pem_pkcs8(), None),
    # Intermediate first: the leaf is found by its key.
    (FUZZ_PKI.intermediate_pem + RSA.cert_pem, RSA.key_pem_pkcs1(), None),
]
MISMATCHED_KEY = FUZZ_PKI.mismatched_key()
#: Certificates only: what mutations may splice into bindings, JSON and token responses.
#: A private key pasted into a client id or an error_description is shown where
#: those are shown; only the PEM parser's key argument gets key material.
PUBLIC_PEMS = sorted({c for c, _, _ in VALID} | {FUZZ_PKI.root_pem})
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


# -- strategies: text -------------------------------------------------------------------------

_B64 = string.ascii_letters + string.digits + "+/="
b64_text = st.text(alphabet=_B64, max_size=200)
any_text = st.text(max_size=300)
ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=300)


def wrap64(data: bytes) -> str:
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
            st.binary(max_size=600).map(wrap64),
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
    return text[: match.start(2)] + wrap64(bytes(der)) + "\n" + text[match.end(2) :]


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


def names_an_existing_path(text: str) -> bool:
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


b64token = st.from_regex(r"\A[A-Za-z0-9\-._~+/]{20,80}=*\Z")


def b64url(data: bytes) -> str:
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
    header = b64url(b'{"alg":"RS256","typ":"JWT"}')
    return f"{header}.{b64url(payload)}.{b64url(draw(st.binary(max_size=40)))}"


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
