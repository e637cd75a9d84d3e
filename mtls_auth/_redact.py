"""`Secret`: the one holder for key material, tokens and other secrets in transit.

Error reporters (Sentry, rich tracebacks, ``pytest --showlocals``,
``traceback.TracebackException(capture_locals=True)``) record the local
variables of every frame on a traceback, rendered with `repr`, and walk
containers and objects' ``__dict__``. A secret that only ever lives in a
`Secret` shows as ``<redacted>`` there: the holder has no ``__dict__`` (its one
slot is not walked), its repr and str say nothing, and it refuses to be
pickled or copied out of the process.

Public constructors rebind their secret arguments at once (``key =
redact(key)``), so even their own frame holds no plaintext after the first
line. Code that needs the value reads ``.value`` for the shortest possible time.

What a parser or an HTTP exchange held when it failed is harder to keep track
of: a binding's credentials dict, a half-read response body, JSON text. So the
public entry points are `guarded`: when an exception leaves one, the locals of
every frame it has already left (and of every frame in its ``__cause__`` and
``__context__`` chain) are cleared with `frame.clear`, the traceback's lines
stay. What the error reporter then captures is the entry point's own frame,
whose arguments are redacted, and the frames of the caller.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar, cast

__all__ = ["Secret", "aguarded", "guarded", "redact", "reveal", "safe_repr", "scrub"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
AF = TypeVar("AF", bound=Callable[..., Awaitable[Any]])
C = TypeVar("C", bound=type)


class Secret:
    """A secret value whose repr, str and pickle show nothing of it; `reveal` returns it."""

    __slots__ = ("value",)
    value: Any

    def __init__(self, value: Any) -> None:
        self.value = value

    def reveal(self) -> Any:
        """The value itself: only where it has to be used or stored."""
        return self.value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a secret cannot be pickled: it would leave the process")

    def __eq__(self, other: object) -> bool:
        # Identity only: comparing secrets by value invites timing leaks and
        # puts them into assertion messages.
        return self is other

    __hash__ = object.__hash__


def redact(value: object) -> Any:
    """`value` wrapped in a `Secret` (None stays None, a Secret stays itself).

    Typed loosely on purpose: constructors rebind their own arguments with it.
    """
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value)


def reveal(value: T | Secret) -> T:
    """The plain value of `value`, whether it is wrapped or not."""
    if isinstance(value, Secret):
        revealed: T = value.value
        return revealed
    return value


def scrub(error: BaseException, outer: BaseException | None = None) -> None:
    """Clear the locals of every finished frame on `error`'s traceback and its chain.

    Frames still executing (the caller's, and the one handling `error`) are left
    alone: `frame.clear` refuses them. Exception groups are walked too. The
    chain is not followed into `outer`, the exception the caller was already
    handling when it called us: that one and its frames are the caller's.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if current is outer or id(current) in seen or len(seen) > 64:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            with contextlib.suppress(RuntimeError):  # a frame still executing
                tb.tb_frame.clear()
            tb = tb.tb_next
        pending.extend(
            link for link in (current.__cause__, current.__context__) if link is not None
        )
        pending.extend(getattr(current, "exceptions", ()))


def guarded(function: F) -> F:
    """Scrub (see `scrub`) whatever exception leaves `function`; re-raise it."""

    @functools.wraps(function)
    def entry(*args: Any, **kwargs: Any) -> Any:
        outer = sys.exc_info()[1]
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            del args, kwargs  # this frame stays on the traceback: keep it clean
            scrub(exc, outer)
            raise

    return cast(F, entry)


def aguarded(function: AF) -> AF:
    """`guarded` for a coroutine function."""

    @functools.wraps(function)
    async def entry(*args: Any, **kwargs: Any) -> Any:
        outer = sys.exc_info()[1]
        try:
            return await function(*args, **kwargs)
        except BaseException as exc:
            del args, kwargs
            scrub(exc, outer)
            raise

    return cast(AF, entry)


def safe_repr(cls: C) -> C:
    """Class decorator: `repr` and `str` never raise, even on a half-built object.

    An object whose constructor failed half way still shows up in the frames an
    error reporter captures, and a repr that raises there breaks the report
    itself (``TracebackException(capture_locals=True)`` crashes on it).
    """
    original: Any = cls.__repr__
    name = cls.__name__

    def __repr__(self: object) -> str:
        try:
            text: str = original(self)
        except Exception:  # noqa: BLE001 - whatever is missing, repr answers
            return f"<{name} (incomplete)>"
        return text

    __repr__.__doc__ = original.__doc__
    own_str = cls.__dict__.get("__str__")
    cls.__repr__ = __repr__  # type: ignore[method-assign, assignment]
    if own_str is original:
        cls.__str__ = __repr__  # type: ignore[method-assign, assignment]
    elif own_str is not None:

        def __str__(self: object) -> str:
            try:
                text: str = own_str(self)
            except Exception:  # noqa: BLE001 - whatever is missing, str answers
                return f"<{name} (incomplete)>"
            return text

        cls.__str__ = __str__  # type: ignore[method-assign, assignment]
    return cls
