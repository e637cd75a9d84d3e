"""The secret canary: a pytest plugin that fails any test letting a secret it produced out.

Registered by ``conftest.py`` (``pytest_plugins``), so it watches every test of
the suite. Producers of secrets (the test kit's token servers, credentials and
Credential Store APIs) and observers (logging, warnings, http.client's debug
print, library constructors and exceptions) are patched once, when this module
is imported, for the whole session; every patch is a no-op unless a test is
running. The autouse fixture `secret_canary` documents exactly what is watched;
its self-tests are in ``test_canary.py``.
"""

from __future__ import annotations

import builtins
import functools
import http.client
import inspect
import logging
import re
import threading
import warnings
import weakref
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Callable

import pytest
from frames import leaks

import mtls_auth
from mtls_auth.testing import PKI, Credential, TokenServer

# -- the secret canary --------------------------------------------------------------------
#
# Producers of secrets (the test kit's token servers, credentials and Credential
# Store APIs) and observers (logging, warnings, http.client's debug print,
# library constructors and exceptions) are patched once, for the whole session.
# Every patch is a no-op unless a test is running: `_ACTIVE` is that test's
# `SecretCanary`, set and cleared by the autouse fixture below.

_ACTIVE: SecretCanary | None = None
#: Canaries are made only of these characters (base64, base64url, RFC 6750
#: b64token, JWT dots), so each occurrence lies inside one maximal run of them.
_ALPHABET_RUN = re.compile(r"[A-Za-z0-9+/=_.~\-]{32,}")
_MIN_CANARY = 32
_TOKEN_PATHS = ("/oauth/token", "/api/v1/token")
_SEND_LINE = re.compile(r"""^send: b['"]([A-Z]+) (\S+) HTTP/1\.[01]\\r\\n""")
_SEND_AUTHORIZATION = re.compile(r"(\\r\\nauthorization:\s*bearer\s+)[^\\'\"]+", re.IGNORECASE)
#: Library exceptions kept per test before older ones are rendered to text
#: (bounds memory in fuzz runs with thousands of examples).
_KEEP = 512


class _Producers:
    """Secrets made by the test kit, with the canary that was active at the time.

    Entries made outside any test (module-level code, session fixtures) are
    *ambient*: they are canaries in every test.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: (weakref to server, its live `_tokens` dict, canary id at creation)
        self.servers: list[tuple[weakref.ref[TokenServer], dict[str, Any], int]] = []
        #: private key object id -> (key object, canary id or 0 for ambient)
        self.keys: dict[int, tuple[Any, int]] = {}
        self.credstores: list[tuple[Any, int]] = []

    def prune(self) -> None:
        """Forget servers that are gone and keys/credstores of finished tests."""
        with self.lock:
            self.servers = [s for s in self.servers if s[0]() is not None]
            self.keys = {k: v for k, v in self.keys.items() if v[1] == 0}
            self.credstores = [c for c in self.credstores if c[1] == 0]


_PRODUCERS = _Producers()


@functools.lru_cache(maxsize=256)
def _key_lines(private_key: Any) -> tuple[str, ...]:
    """Base64 body lines of `private_key` in every unencrypted PEM format it has.

    Cached per key object (keys are immutable; every test asks for the kit's
    keys again): serialising each key twice per test was a tenth of the suite.
    """
    from cryptography.hazmat.primitives import serialization

    formats = [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
    lines: list[str] = []
    for fmt in formats:
        try:
            pem = private_key.private_bytes(
                serialization.Encoding.PEM, fmt, serialization.NoEncryption()
            ).decode("ascii")
        except (ValueError, TypeError):
            continue
        lines.extend(_pem_body_lines(pem))
    return tuple(lines)


def _pem_body_lines(pem: str) -> list[str]:
    return [
        line.strip()
        for line in pem.replace("\\n", "\n").splitlines()
        if len(line.strip()) >= _MIN_CANARY and not line.startswith("-----") and ":" not in line
    ]


class SecretCanary:
    """What one test produced and what it let out; `findings` compares the two.

    Tests get it as the `secret_canary` fixture: ``findings()`` lists leaks so
    far, ``clear()`` forgets everything observed so far (for a test that leaks on
    purpose to prove the canary works).
    """

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.id = id(self)
        self.objects: list[Callable[[], Any]] = []
        self.errors: list[BaseException] = []
        self.texts: list[tuple[str, str]] = []
        self.recorded_keys: list[str] = []
        self.start_lengths: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- what was produced --

    def canaries(self) -> dict[str, str]:
        """Secret text -> a label naming it without showing it."""
        found: dict[str, str] = {}
        with _PRODUCERS.lock:
            servers = list(_PRODUCERS.servers)
            keys = [k for k, owner in _PRODUCERS.keys.values() if owner in (0, self.id)]
            credstores = [a for a, owner in _PRODUCERS.credstores if owner in (0, self.id)]
        for number, (ref, tokens, _owner) in enumerate(servers, start=1):
            server = ref()
            lock = server._lock if server is not None else threading.Lock()
            with lock:
                issued = list(tokens)
            for index, token in enumerate(issued[self.start_lengths.get(id(tokens), 0) :]):
                found[token] = f"access token #{index + 1} of token server {number}"
                parts = token.split(".")
                if len(parts) == 3 and len(parts[2]) >= _MIN_CANARY:
                    found.setdefault(parts[2], f"signature of JWT #{index + 1}")
        for number, key in enumerate(keys, start=1):
            for line_number, line in enumerate(_key_lines(key), start=1):
                found.setdefault(line, f"line {line_number} of private key {number}")
        for number, pem in enumerate(self.recorded_keys, start=1):
            for line_number, line in enumerate(_pem_body_lines(pem), start=1):
                found.setdefault(line, f"line {line_number} of key PEM {number}")
        for number, api in enumerate(credstores, start=1):
            try:
                private = api.encryption_block().get("client_private_key")
            except Exception:  # noqa: BLE001 - a broken test double is not our concern
                continue
            if private:
                found.setdefault(private, f"Credential Store client_private_key {number}")
                for start in range(0, len(private) - _MIN_CANARY + 1, 64):
                    found.setdefault(
                        private[start : start + 64],
                        f"part {start // 64 + 1} of Credential Store client_private_key {number}",
                    )
        return found

    # -- what was let out --

    def _observed(self, canaries: dict[str, str]) -> Iterator[tuple[str, str]]:
        """(where, text) for everything the test let out."""
        yield from list(self.texts)
        for ref in list(self.objects):
            obj = ref()
            if obj is None:
                continue
            for render in (repr, str):
                try:
                    text = render(obj)
                except Exception:  # noqa: BLE001 - a half-built object
                    continue
                yield f"{render.__name__}() of a {type(obj).__name__}", text
        for error in list(self.errors):
            yield from _exception_texts(error, "exception")
            yield from _frame_texts(error, canaries)

    def findings(self, extra: Iterable[tuple[str, str]] = ()) -> list[str]:
        """One line per leak: where, and which canary (never the secret itself)."""
        canaries = self.canaries()
        if not canaries:
            return []
        results: list[str] = []
        seen: set[tuple[str, str]] = set()
        # A secret made of run characters lies in a run exactly when it lies in
        # the text: one substring search each, the runs split out only for the
        # others (and only for texts that have a run at all).
        plain = [(s, label) for s, label in canaries.items() if _ALPHABET_RUN.fullmatch(s)]
        other = [(s, label) for s, label in canaries.items() if not _ALPHABET_RUN.fullmatch(s)]
        for where, text in [*self._observed(canaries), *extra]:
            if _ALPHABET_RUN.search(text) is None:
                continue
            hits = [(secret, label) for secret, label in plain if secret in text]
            if other:
                runs = _ALPHABET_RUN.findall(text)
                hits += [(s, label) for s, label in other if any(s in run for run in runs)]
            for secret, label in hits:
                if (where, label) not in seen:
                    seen.add((where, label))
                    results.append(f"{label} appears in {where}: {_excerpt(text, secret)}")
        return results

    def clear(self) -> None:
        """Forget everything observed so far (the secrets stay canaries)."""
        self.objects.clear()
        self.errors.clear()
        self.texts.clear()

    # -- recording, called by the patches --

    def track(self, obj: Any) -> None:
        try:
            self.objects.append(weakref.ref(obj))
        except TypeError:
            self.objects.append(lambda obj=obj: obj)

    def track_error(self, error: BaseException) -> None:
        # Kept (not weakly) until teardown: most are dropped by the test long
        # before, and the chain is only complete once the error was raised.
        with self._lock:
            self.errors.append(error)
            if len(self.errors) <= _KEEP:
                return
            # Render the older half to text (their chains are complete by now):
            # holding thousands of tracebacks in fuzz runs costs memory.
            old, self.errors = self.errors[: _KEEP // 2], self.errors[_KEEP // 2 :]
        canaries = self.canaries()
        for item in old:
            self.texts.extend(_exception_texts(item, "exception"))
            self.texts.extend(_frame_texts(item, canaries))


def _excerpt(text: str, secret: str) -> str:
    at = text.find(secret)
    before = text[max(0, at - 60) : at].replace("\n", " ")
    after = text[at + len(secret) : at + len(secret) + 40].replace("\n", " ")
    return f"...{before}<SECRET>{after}..."


def _record_text(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is still text
        text = f"{record.msg!r} % {record.args!r}"
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + "\n".join(t for _, t in _exception_texts(record.exc_info[1], ""))
    if record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


def _exception_texts(error: BaseException, where: str) -> list[tuple[str, str]]:
    """str and repr of `error` and of every exception chained to it.

    The chain is followed as tracebacks, logging and error reporters follow it:
    ``__cause__``, and ``__context__`` unless ``raise ... from`` suppressed it.
    """
    out: list[tuple[str, str]] = []
    queue: list[BaseException] = [error]
    seen: set[int] = set()
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        label = f"{where} {type(current).__name__}".strip()
        for render in (str, repr):
            try:
                out.append((label, render(current)))
            except Exception:  # noqa: BLE001
                continue
        if current.__cause__ is not None:
            queue.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            queue.append(current.__context__)
    return out


def _frame_texts(error: BaseException, canaries: dict[str, str]) -> list[tuple[str, str]]:
    """The canaries found in the local variables of `error`'s traceback frames.

    What Sentry and ``capture_locals`` record (see ``frames.leaks``): each hit
    becomes a (where, the secret) pair, so the finding names the frame and the
    local but never prints the secret. The test's own frames are skipped.
    """
    if not canaries or not leaks(error, list(canaries)):
        return []
    found: list[tuple[str, str]] = []
    for secret in canaries:
        for place in leaks(error, [secret]):
            found.append((f"the locals of a traceback frame ({place})", secret))
    return found


def _http_client_texts(line: str) -> Iterator[tuple[str, str]]:
    """http.client's debug output, minus what the user's own trace legitimately shows.

    The one place a token may appear is the ``Authorization: Bearer`` header of an
    outgoing request to a resource: the user asked http.client to print their
    request, and that request carries the token by design. A request to a token
    endpoint must carry no Authorization header at all, and nothing else (a reply,
    a header the server sent, a body) may ever show a token.
    """
    match = _SEND_LINE.match(line)
    if match is not None:
        path = match.group(2).split("?", 1)[0]
        if path.endswith(_TOKEN_PATHS):
            if re.search(r"\\r\\nauthorization:", line, re.IGNORECASE):
                yield (
                    "http.client debug output (token endpoint request)",
                    "Authorization header sent to the token endpoint: " + line,
                )
            yield "http.client debug output (token endpoint request)", line
            return
        line = _SEND_AUTHORIZATION.sub(r"\1<resource bearer, shown by the user's trace>", line)
    yield "http.client debug output", line


# -- the patches ---------------------------------------------------------------------------

_forced = threading.local()
_original_is_enabled = logging.Logger.isEnabledFor
_original_handle = logging.Logger.handle


def _is_enabled_for(self: logging.Logger, level: int) -> bool:
    if _original_is_enabled(self, level):
        return True
    if _ACTIVE is None:
        return False
    # Not enabled: create the record anyway, for the canary only (see _handle).
    _forced.pending = (self, level)
    return True


def _handle(self: logging.Logger, record: logging.LogRecord) -> None:
    canary = _ACTIVE
    if canary is not None:
        # Rendered now, in the logging thread, as a handler would: nothing is
        # formatted later from another thread, and no record is kept alive.
        canary.texts.append((f"log record {record.name}:{record.levelname}", _record_text(record)))
    pending = getattr(_forced, "pending", None)
    if pending is not None and pending[0] is self and pending[1] == record.levelno:
        _forced.pending = None
        return  # made only because the canary asked: no handler sees it
    _original_handle(self, record)


_original_showwarnmsg = warnings._showwarnmsg  # type: ignore[attr-defined]


def _showwarnmsg(message: Any) -> None:
    canary = _ACTIVE
    if canary is not None:
        category = getattr(message.category, "__name__", "?")
        canary.texts.append(("warning", f"{category}: {message.message}"))
    _original_showwarnmsg(message)


def _http_client_print(*args: Any, **kwargs: Any) -> None:
    canary = _ACTIVE
    if canary is not None:
        canary.texts.extend(_http_client_texts(" ".join(str(a) for a in args)))
    builtins.print(*args, **kwargs)


def _wrap_init(cls: type) -> None:
    original = cls.__dict__.get("__init__")
    if original is None or getattr(original, "_canary", False):
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        canary = _ACTIVE
        if canary is not None:
            canary.track(self)

    __init__._canary = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


def _wrap_classmethod(cls: type, name: str) -> None:
    original = cls.__dict__[name].__func__

    @functools.wraps(original)
    def method(klass: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(klass, *args, **kwargs)
        canary = _ACTIVE
        if canary is not None:
            canary.track(made)
        return made

    setattr(cls, name, classmethod(method))


def _wrap_method_tracking_self(cls: type, name: str) -> None:
    original = cls.__dict__[name]

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        canary = _ACTIVE
        if canary is not None:
            canary.track(self)
        return result

    setattr(cls, name, method)


def _install_error_tracking() -> None:
    root = mtls_auth.MtlsAuthError

    def __init__(self: BaseException, *args: Any, **kwargs: Any) -> None:
        super(root, self).__init__(*args, **kwargs)
        canary = _ACTIVE
        if canary is not None:
            canary.track_error(self)

    root.__init__ = __init__  # type: ignore[method-assign]


def _install_producers() -> None:
    from mtls_auth.testing import _credstore_api, _pki, _server

    server_init = _server.TokenServer.__init__

    @functools.wraps(server_init)
    def token_server_init(self: TokenServer, *args: Any, **kwargs: Any) -> None:
        server_init(self, *args, **kwargs)
        canary = _ACTIVE
        with _PRODUCERS.lock:
            _PRODUCERS.servers.append(
                (weakref.ref(self), self._tokens, canary.id if canary is not None else 0)
            )
            # Authorization codes, refresh tokens and minted user tokens: a live
            # dict that only grows, read like `_tokens`.
            grant_secrets = getattr(self, "_grant_secrets", None)
            if grant_secrets is not None:
                _PRODUCERS.servers.append(
                    (weakref.ref(self), grant_secrets, canary.id if canary is not None else 0)
                )

    _server.TokenServer.__init__ = token_server_init  # type: ignore[method-assign]

    def record_key(credential: Credential) -> None:
        canary = _ACTIVE
        key = credential.private_key
        with _PRODUCERS.lock:
            if id(key) not in _PRODUCERS.keys or _PRODUCERS.keys[id(key)][0] is not key:
                _PRODUCERS.keys[id(key)] = (key, canary.id if canary is not None else 0)

    for name in ("key_pem_pkcs1", "key_pem_pkcs8", "key_pem_sec1", "key_pem_encrypted"):
        original = getattr(_pki.Credential, name)

        def method(self: Credential, *args: Any, _original: Any = original) -> str:
            pem: str = _original(self, *args)
            record_key(self)
            canary = _ACTIVE
            if canary is not None and "ENCRYPTED" in pem:
                canary.recorded_keys.append(pem)
            return pem

        functools.update_wrapper(method, original)
        setattr(_pki.Credential, name, method)
    key_pem = _pki.Credential.key_pem
    assert isinstance(key_pem, property)
    assert key_pem.fget is not None
    original_fget = key_pem.fget

    def key_pem_fget(self: Credential) -> str:
        pem: str = original_fget(self)
        record_key(self)
        return pem

    functools.update_wrapper(key_pem_fget, original_fget)
    _pki.Credential.key_pem = property(key_pem_fget, doc=key_pem.__doc__)  # type: ignore[method-assign]

    original_mismatched = _pki.PKI.mismatched_key

    @functools.wraps(original_mismatched)
    def mismatched_key(self: PKI, *args: Any, **kwargs: Any) -> str:
        pem: str = original_mismatched(self, *args, **kwargs)
        canary = _ACTIVE
        if canary is not None:
            canary.recorded_keys.append(pem)
        return pem

    _pki.PKI.mismatched_key = mismatched_key  # type: ignore[method-assign]

    credstore_init = _credstore_api.CredstoreApi.__init__

    @functools.wraps(credstore_init)
    def credstore_api_init(self: Any, *args: Any, **kwargs: Any) -> None:
        credstore_init(self, *args, **kwargs)
        canary = _ACTIVE
        with _PRODUCERS.lock:
            _PRODUCERS.credstores.append((self, canary.id if canary is not None else 0))

    _credstore_api.CredstoreApi.__init__ = credstore_api_init  # type: ignore[method-assign]


def _library_classes() -> Iterator[type]:
    """Every class defined in a module of the `mtls_auth` package (exceptions aside)."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(mtls_auth.__path__, "mtls_auth."):
        if info.name.endswith("__main__"):
            continue  # runs the command line on import
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # the core-only environment has no requests/httpx
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and not issubclass(cls, BaseException):
                yield cls


def _install() -> None:
    logging.Logger.isEnabledFor = _is_enabled_for  # type: ignore[method-assign]
    logging.Logger.handle = _handle  # type: ignore[method-assign]
    warnings._showwarnmsg = _showwarnmsg  # type: ignore[attr-defined]
    http.client.print = _http_client_print  # type: ignore[attr-defined]
    _install_producers()
    _install_error_tracking()
    from mtls_auth._certificate import ClientCertificate

    for cls in _library_classes():
        _wrap_init(cls)
    _wrap_classmethod(ClientCertificate, "_make")
    # Every MtlsOAuth2, constructed or derived, is bound to its client here.
    from mtls_auth._auth import AuthFacade

    _wrap_method_tracking_self(AuthFacade, "_bind")


_install()

_CANARY_KEY = pytest.StashKey[SecretCanary]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "secret_canary_exempt(reason): this test shows secrets on purpose; "
        "the secret canary reports nothing for it",
    )


@pytest.fixture(autouse=True)
def secret_canary(request: pytest.FixtureRequest) -> Iterator[SecretCanary]:
    """Fail the test if a secret it produced leaks into anything it let out.

    **Secrets (canaries).** Every access token issued during the test by a
    `TokenServer` (its ``_tokens``), and for JWTs their signature alone; every
    base64 body line of the private key of any test-kit `Credential` whose key was
    rendered as PEM (``key_pem`` and friends), in PKCS#8 and traditional form
    whatever form was asked for; key PEMs from ``PKI.mismatched_key`` and
    encrypted ones; the ``client_private_key`` of every Credential Store test API
    (``server.credstore.encryption_block()``), whole and in 64-character parts.
    Keys rendered outside any test (module level, session fixtures) are canaries
    in every test.

    **Watched.** Every log record of every logger at every level, including
    ``requests``, ``urllib3``, ``httpx``, ``httpcore`` and ``mtls_auth`` and
    loggers that are disabled or set above DEBUG: records are created for the
    canary even when logging would not have created them, and only those that
    logging would have created reach the handlers (so ``caplog`` and the report
    see exactly what they saw before). Every warning shown or recorded (also
    inside ``pytest.warns``). ``http.client``'s debug ``print`` output when a
    test sets ``HTTPConnection.debuglevel``. The repr and str of every library
    object made during the test (constructors in ``mtls_auth``, the requests
    and httpx integrations and the test kit, still alive at teardown). Every
    `MtlsAuthError` made during the test, with its chained exceptions as a
    traceback shows them (``__cause__``; ``__context__`` unless suppressed by
    ``raise ... from None``), and the local variables of every frame on their
    tracebacks outside the tests (what Sentry or ``capture_locals`` record,
    searched deeply: containers, objects' ``__dict__`` and repr); and the
    exception a failing test ends with.

    **http.client decision.** With ``HTTPConnection.debuglevel`` on, http.client
    prints the requests the user's own session sends, and a resource request
    carries ``Authorization: Bearer <token>`` by design: that header value of a
    request to a resource is not flagged (the user asked to see their request).
    Everything else is: any ``Authorization`` header on a request to a token
    endpoint (``/oauth/token``, ``/api/v1/token``), a token in a request body,
    in a reply line or a response header. The token endpoint exchange, form body
    and response, must never show a secret.

    Secrets are never printed: a finding names the secret ("access token #2 of
    token server 1") and shows the text around it. Tests that show secrets on
    purpose take ``@pytest.mark.secret_canary_exempt(reason)``; ``xfail`` tests
    (a known bug, perhaps a leak) are not failed by the canary either. A test can
    ask for this fixture to inspect ``findings()`` or ``clear()`` what it leaked on
    purpose.
    """
    global _ACTIVE
    canary = SecretCanary(request.node.nodeid)
    with _PRODUCERS.lock:
        canary.start_lengths = {id(tokens): len(tokens) for _, tokens, _ in _PRODUCERS.servers}
    request.node.stash[_CANARY_KEY] = canary
    _ACTIVE = canary
    try:
        yield canary
    finally:
        _ACTIVE = None
    try:
        findings = canary.findings()
    finally:
        _PRODUCERS.prune()
    node = request.node
    if (
        findings
        and node.get_closest_marker("secret_canary_exempt") is None
        and node.get_closest_marker("xfail") is None
    ):
        shown = "\n  ".join(findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        pytest.fail(f"secret canary: a secret leaked\n  {shown}{more}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    canary = item.stash.get(_CANARY_KEY, None)
    if (
        canary is not None
        and call.when == "call"
        and call.excinfo is not None
        and report.outcome != "skipped"
        and item.get_closest_marker("secret_canary_exempt") is None
    ):
        findings = canary.findings(_exception_texts(call.excinfo.value, "the test's exception"))
        findings = [f for f in findings if "the test's exception" in f]
        if findings:
            report.outcome = "failed"
            report.sections.append(("secret canary", "\n".join(findings)))
    return report
