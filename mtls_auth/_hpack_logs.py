"""Keep bearer tokens out of hpack's DEBUG logs when httpx speaks HTTP/2.

httpx's HTTP/2 goes through h2 and hpack, and hpack logs at DEBUG what it
encodes: every header block (``Encoded header block to <bytes>``, the
Authorization value only Huffman-coded, which anyone can undo) and, before
hpack 4.2, every header added (``Adding (b'authorization', b'Bearer ...')``).
An application that turns on DEBUG logging would write the token to its logs.

`guard()`, called when an HTTP/2 transport is built, adds a filter to hpack's
logger that rewrites those records: header values of Authorization-like
headers become ``<redacted>``, encoded header blocks become their length. The
records stay (what hpack did is still visible); only the secret goes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["guard"]

_SENSITIVE = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"}
    | {"authorization", "proxy-authorization", "cookie", "set-cookie"}
)
_LOCK = threading.Lock()


class _RedactHeaderValues(logging.Filter):
    """Rewrites hpack's records so no header value of a sensitive header remains."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if str(record.msg).startswith("Encoded header block"):
                record.args = tuple(_length(arg) for arg in args)
            else:
                record.args = tuple(_redacted(arg) for arg in args)
        return True


def _length(arg: Any) -> Any:
    return f"<{len(arg)} bytes>" if isinstance(arg, (bytes, bytearray)) else arg


def _redacted(arg: Any) -> Any:
    if (
        isinstance(arg, tuple)
        and len(arg) >= 2
        and isinstance(arg[0], (bytes, str))
        and arg[0].lower() in _SENSITIVE
    ):
        return (arg[0], "<redacted>", *arg[2:])
    return arg


def guard() -> None:
    """Install the filter on hpack's logger (once; nothing if hpack is not installed)."""
    logger = logging.getLogger("hpack.hpack")
    with _LOCK:
        if not any(isinstance(f, _RedactHeaderValues) for f in logger.filters):
            logger.addFilter(_RedactHeaderValues())
