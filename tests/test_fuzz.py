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

The strategies and the real certificates and keys they mutate are in
``fuzz_strategies.py``.

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

import collections
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import serialization
from fuzz_strategies import (
    FUZZ_PKI,
    KEY_LINES,
    PASSWORD,
    RSA,
    VALID,
    any_text,
    b64url,
    binding_dicts,
    binding_directories,
    bodies,
    headers_strategy,
    json_texts,
    json_values,
    mutated,
    names_an_existing_path,
    pem_argument,
    replies,
    statuses,
    vcap_documents,
    wrap64,
)
from hypothesis import assume, example, given, note
from hypothesis import strategies as st

from mtls_auth import ClientCertificate, MtlsAuthError, TokenError, TokenResponseError
from mtls_auth._binding import Binding, parse_credentials
from mtls_auth._http import HttpResponse
from mtls_auth._request import TokenRequest
from mtls_auth._retry import RetryPolicy, fetch_flow, parse_retry_after
from mtls_auth._sources import BindingSource, select_vcap_service
from mtls_auth._token import MAX_LIFETIME, Token, parse_token_response

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
            context = documented("pem", lambda: outcome.ssl_context(FUZZ_PKI.root_pem))
            assert (
                context is None
                or not isinstance(context, Exception)
                or isinstance(context, MtlsAuthError)
            )


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


@given(
    st.one_of(json_texts(), json_texts(), any_text, st.from_regex(r"\A\s*\{.*", fullmatch=False))
)
@example("{" + '"a":' * 1 + "[" * 100_000 + "]" * 100_000 + "}")
def test_fuzz_binding_json_text(text: str) -> None:
    EXAMPLES["binding_json_text"] += 1
    assume(not names_an_existing_path(text))
    source = documented("binding_json_text", lambda: BindingSource.from_input(text))
    if isinstance(source, BindingSource):
        assert source.path is None
        outcome = documented("binding_json_text", source.read)
        if isinstance(outcome, MtlsAuthError):
            assert_no_key_in(outcome, KEY_LINES)
    elif isinstance(source, MtlsAuthError):
        assert_no_key_in(source, KEY_LINES)


# -- target: VCAP_SERVICES --------------------------------------------------------------------


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


@given(status=statuses, headers=headers_strategy, body=bodies())
@example(status=200, headers={}, body=b"[" * 100_000)
@example(
    status=200,
    headers={},
    body=json.dumps(
        {"access_token": "e30." + b64url(b'{"exp": 1' + b"0" * 400 + b"}") + ".c"}
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
            subject=lambda: "CN=x",
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
    return f"-----BEGIN CERTIFICATE-----\n{wrap64(der)}\n-----END CERTIFICATE-----\n"


_RSA_OID = bytes.fromhex("06092A864886F70D010101")  # rsaEncryption, in the leaf's SPKI


def test_regression_certificate_with_unknown_key_algorithm() -> None:
    der = RSA.certificate.public_bytes(serialization.Encoding.DER)
    assert der.count(_RSA_OID) == 1
    unknown = der.replace(_RSA_OID, _RSA_OID[:-1] + b"\x7f")  # 1.2.840.113549.1.1.127
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(_cert_pem(unknown), RSA.key_pem_pkcs1())


def test_regression_certificate_with_undecodable_public_key() -> None:
    der = bytearray(RSA.certificate.public_bytes(serialization.Encoding.DER))
    inside = der.index(_RSA_OID) + len(_RSA_OID) + 2 + 5  # into the key's BIT STRING
    der[inside] ^= 0xFF
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(_cert_pem(bytes(der)), RSA.key_pem_pkcs1())


def test_regression_certificate_with_undecodable_issuer_name() -> None:
    der = bytearray(RSA.certificate.public_bytes(serialization.Encoding.DER))
    issuer_cn = der.index(b"mtls-auth Test Intermediate CA")  # the issuer comes first
    der[issuer_cn + 3] = 0xFF  # not UTF-8 any more
    chain = _cert_pem(bytes(der)) + FUZZ_PKI.intermediate_pem
    with pytest.raises(MtlsAuthError):
        ClientCertificate.from_pem(chain, RSA.key_pem_pkcs1())


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
    payload = b64url(b'{"exp": ' + b"[" * 2000 + b"]" * 2000 + b"}")
    body = json.dumps({"access_token": f"e30.{payload}.c"}).encode()
    token = parse_token_response(HttpResponse(200, {}, body), "https://a/t", sent_at=0)
    assert token.lifetime > 0


def test_regression_jwt_exp_too_large_for_a_float() -> None:
    payload = b64url(b'{"exp": 1' + b"0" * 400 + b"}")
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
    key = RSA.key_pem_pkcs1()
    secret = [line for line in key.splitlines() if len(line) == 64][2]
    binding = {"clientid": "c", "certificate": RSA.chain_pem, "key": key, "url": "https://a"}
    path = tmp_path / "service-key.json"
    path.write_bytes(json.dumps(binding).encode() + b"\xff")

    def parse() -> object:
        if where == "pem-non-ascii":
            return ClientCertificate.from_pem(RSA.chain_pem, key + "\u00e9")
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
