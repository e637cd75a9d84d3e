"""Keep bearer tokens out of hpack's DEBUG logs when httpx speaks HTTP/2.

httpx's HTTP/2 goes through h2 and hpack, and hpack logs at DEBUG what it
encodes and decodes: every header block (``Encoded header block to <bytes>``,
``Decoding <bytes>``: values only Huffman-coded, which anyone can undo), every
header added (hpack 4.1: ``Adding (b'authorization', b'Bearer ...') to the
header table``; 4.2: ``Adding b'authorization'=b'Bearer ...'`` unless h2 sent
it never-indexed), every header decoded and every table entry evicted
(``Evicting b'cookie': b'...'``, logger ``hpack.table``). An application that
turns on DEBUG logging would write tokens and cookies to its logs.

`guard()`, called when an HTTP/2 transport or an httpx auth is made, adds a
filter to those loggers that rewrites the records: values of
Authorization-like headers become ``<redacted>``, header blocks become their
length. The records stay (what hpack did is still visible); only the secret
goes.
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


#: The loggers hpack writes header values to.
_LOGGERS = ("hpack.hpack", "hpack.table")
#: Messages whose first argument is a whole header block.
_BLOCKS = ("Encoded header block", "Decoding ")


class _RedactHeaderValues(logging.Filter):
    """Rewrites hpack's records so no header value of a sensitive header remains."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        message = str(record.msg)
        if message.startswith(_BLOCKS):
            record.args = tuple(_length(arg) for arg in args)
        elif len(args) >= 2 and _sensitive(args[0]):
            # hpack 4.2's "Adding %s=%s ..." and "Evicting %s: %s": name, value, ...
            record.args = (args[0], "<redacted>", *args[2:])
        else:
            record.args = tuple(_redacted(arg) for arg in args)
        return True


def _length(arg: Any) -> Any:
    return f"<{len(arg)} bytes>" if isinstance(arg, (bytes, bytearray)) else arg


def _sensitive(name: Any) -> bool:
    return isinstance(name, (bytes, str)) and name.lower() in _SENSITIVE


def _redacted(arg: Any) -> Any:
    # hpack 4.1's "Adding %s to the header table" and "Decoded %s": a (name, value) tuple.
    if isinstance(arg, tuple) and len(arg) >= 2 and _sensitive(arg[0]):
        return (arg[0], "<redacted>", *arg[2:])
    return arg


def guard() -> None:
    """Install the filter on hpack's loggers (once each; harmless without hpack)."""
    with _LOCK:
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactHeaderValues) for f in logger.filters):
                logger.addFilter(_RedactHeaderValues())
