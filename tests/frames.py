"""What an error reporter would capture: secrets in the local variables of traceback frames.

Sentry, rich tracebacks, ``pytest --showlocals`` and
``traceback.TracebackException(capture_locals=True)`` record the locals of every
frame on a traceback, for the exception and every exception chained to it.
`leaks` walks exactly that and looks, deeply (inside containers, objects'
``__dict__`` and their repr), for any of the given secrets. The test's own
frames are left out: they hold what the test passed in, as a caller's do.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

from cryptography.hazmat.primitives import serialization

__all__ = ["chain", "key_lines", "leaks"]

_MAX_DEPTH = 8
_MIN_SECRET = 24
#: Key lines, tokens, codes and verifiers are runs of these characters. When
#: every secret sought is one, a text without such a run of `_MIN_SECRET`
#: characters cannot hold any of them: one regex search instead of a substring
#: search per secret (most locals are short names, numbers and URLs).
_SECRET_CHARS = r"[A-Za-z0-9+/=_.~\-]"
_SECRET_SHAPE = re.compile(_SECRET_CHARS + "+")
_LONG_RUN = re.compile(f"{_SECRET_CHARS}{{{_MIN_SECRET}}}")
#: Where a value was found, built only when a secret is: (parent, step).
_Path = Union[str, tuple["_Path", str, Any]]


def key_lines(private_key: Any) -> list[str]:
    """The base64 body lines of a private key in its PKCS#8 and PKCS#1/SEC1 PEM forms."""
    lines: list[str] = []
    for form in (
        serialization.PrivateFormat.PKCS8,
        serialization.PrivateFormat.TraditionalOpenSSL,
    ):
        try:
            pem = private_key.private_bytes(
                serialization.Encoding.PEM, form, serialization.NoEncryption()
            ).decode("ascii")
        except (ValueError, TypeError):
            continue
        lines += [
            line
            for line in pem.splitlines()
            if len(line) >= _MIN_SECRET and not line.startswith("-----")
        ]
    return lines


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception chained to it (cause, context, groups)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += list(getattr(current, "exceptions", ()))


def _callers(filename: str) -> bool:
    return f"{os.sep}tests{os.sep}" in filename


def _ours(filename: str) -> bool:
    return f"{os.sep}mtls_auth{os.sep}" in filename


def leaks(error: BaseException, secrets: Iterable[str]) -> list[str]:
    """Where a secret shows in the frames captured for `error`: '<frame>: <local>...'."""
    wanted = [s for s in secrets if s]
    contains = _matcher(wanted)
    found: list[str] = []
    for current in chain(error):
        tb = current.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            code = frame.f_code
            # The library's frames are searched deeply. The HTTP libraries'
            # frames hold the request they send, Authorization header included,
            # as for any auth: reporters render those by repr (checked below).
            if _ours(code.co_filename) and not _callers(code.co_filename):
                where = f"{code.co_filename.rsplit(os.sep, 1)[-1]}:{code.co_name}"
                for name, value in list(frame.f_locals.items()):
                    found += [
                        f"{where}: {_render_path(p)}"
                        for p in _find(value, name, 0, set(), contains)
                    ]
            tb = tb.tb_next
    # What a report renders, too: each local's repr, as TracebackException
    # (capture_locals) and Sentry show them; a repr that fails shows nothing
    # (a deeply nested JSON value exceeds the recursion limit, say).
    for current in chain(error):
        for frame, _ in traceback.walk_tb(current.__traceback__):
            if _callers(frame.f_code.co_filename):
                continue
            shown = " ".join(_rendered(value) for value in list(frame.f_locals.values()))
            found += [
                f"rendered {frame.f_code.co_name}: secret #{index}"
                for index, secret in enumerate(wanted)
                if secret in shown
            ]
    return found


def _rendered(value: Any) -> str:
    try:
        return repr(value)
    except (Exception, RecursionError):  # noqa: BLE001 - shown as nothing, as reporters do
        return ""


def _matcher(secrets: list[str]) -> Callable[[str], bool]:
    """A test for "holds one of `secrets`", with the cheap run check when it is exact."""
    if all(len(s) >= _MIN_SECRET and _SECRET_SHAPE.fullmatch(s) for s in secrets):
        return lambda text: (
            _LONG_RUN.search(text) is not None and any(secret in text for secret in secrets)
        )
    return lambda text: any(secret in text for secret in secrets)


def _render_path(path: _Path) -> str:
    steps: list[str] = []
    while isinstance(path, tuple):
        path, step, detail = path
        steps.append(f"[{detail!r}]" if step == "item" else step)
    return path + "".join(reversed(steps))


def _find(
    value: Any, path: _Path, depth: int, seen: set[int], contains: Callable[[str], bool]
) -> Iterator[_Path]:
    if id(value) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("latin-1")
    elif isinstance(value, str):
        text = value
    else:
        text = None
    if text is not None:
        if contains(text):
            yield path
        return
    if isinstance(value, dict):
        for key, item in list(value.items()):
            yield from _find(key, (path, "[key]", None), depth + 1, seen, contains)
            yield from _find(item, (path, "item", key), depth + 1, seen, contains)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(list(value)):
            yield from _find(item, (path, f"[{index}]", None), depth + 1, seen, contains)
        return
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails shows nothing
        shown = ""
    if contains(shown):
        yield (path, " (repr)", None)
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict) and not isinstance(value, type):
        yield from _find(attributes, (path, ".__dict__", None), depth + 1, seen, contains)
