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
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["Secret", "redact", "reveal"]

T = TypeVar("T")


class Secret:
    """A secret value whose repr, str and pickle show nothing of it."""

    __slots__ = ("value",)
    value: Any

    def __init__(self, value: Any) -> None:
        self.value = value

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
