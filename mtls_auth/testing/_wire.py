"""HTTP answers as plain values, shared by the token server's app, faults and transport."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JSON_TYPE", "Response", "json_bytes"]

JSON_TYPE = "application/json;charset=UTF-8"


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status, body, its Content-Type and any further headers.

    The transport adds ``Content-Type`` and ``Content-Length`` itself. The
    body and the header values stay out of the repr: they may carry an access
    token, or an authorization code in a ``Location``.
    """

    status: int
    body: bytes = field(repr=False)
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        names = [name for name, _ in self.headers]
        return (
            f"Response(status={self.status}, content_type={self.content_type!r}, headers={names})"
        )

    def json(self) -> Any:
        """The body parsed as JSON (for tests of the app)."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def json_bytes(obj: Any) -> bytes:
    """`obj` as compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")
