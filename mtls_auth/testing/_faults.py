"""Fault injection for the token server: `Fault`, the queue of faults and `FaultStream` records."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._redact import safe_repr
from ._wire import JSON_TYPE, json_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "HUGE_BODY_CHUNK",
    "HUGE_BODY_PREFIX",
    "HUGE_BODY_SUFFIX",
    "STREAMED_KINDS",
    "Fault",
    "FaultKind",
    "FaultQueue",
    "FaultStream",
]

FaultKind = Literal[
    "status",
    "delay",
    "malformed_json",
    "reset",
    "body",
    "slow_headers",
    "reset_mid_body",
    "huge_body",
]
#: Fault kinds the transport writes itself, byte by byte or chunk by chunk.
STREAMED_KINDS = frozenset({"slow_headers", "reset_mid_body", "huge_body"})
HUGE_BODY_PREFIX = b'{"access_token":"'
HUGE_BODY_SUFFIX = b'","token_type":"bearer","expires_in":3600}'
HUGE_BODY_CHUNK = 1 << 16


def _default_error(code: int) -> str:
    if code in (429, 503):
        return "temporarily_unavailable"
    if code >= 500:
        return "server_error"
    if code == 401:
        return "invalid_client"
    return "invalid_request"


@safe_repr
@dataclass(frozen=True)
class Fault:
    """Something to go wrong with a token request, built by the class methods.

    Queue it with `TokenServer.inject`. Faults act before the request is
    authenticated, the way a gateway in front of the real service would.

    Kinds:

    ``status``
        `Fault.status`: an HTTP error with a JSON body and optional
        ``Retry-After`` (delta-seconds or an HTTP date, sent verbatim).
    ``delay``
        `Fault.delay`: wait, then answer normally (`TokenServer.release_delays`
        ends the wait early).
    ``malformed_json``
        `Fault.malformed_json`: 200 with truncated JSON.
    ``reset``
        `Fault.reset`: TCP RST instead of any response.
    ``body``
        `Fault.body`: exactly the given bytes as the body.
    ``slow_headers``
        `Fault.slow_headers`: a slow loris; the status line, then one header
        byte every `interval` seconds, never ending the headers, for at most
        `seconds` (then the connection is closed) or until the client goes away.
    ``reset_mid_body``
        `Fault.reset_mid_body`: headers with a Content-Length, half the body,
        then a TCP RST.
    ``huge_body``
        `Fault.huge_body`: a 200 announcing `size` bytes of JSON and streaming
        them in 64 KiB chunks without ever holding them in memory, until done,
        the client goes away or the server stops.

    The streamed kinds (the last three) are recorded in
    `TokenServer.fault_streams` once the handler is done with them.
    """

    kind: FaultKind
    status_code: int = 200
    payload: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    #: ``slow_headers``: seconds between two header bytes.
    interval: float = 0.0
    #: ``huge_body``: the announced and streamed body length in bytes.
    size: int = 0

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Fault:
        """Answer with HTTP `code` and a JSON error body.

        `body` defaults to an RFC 6749 error object fitting the code
        (``server_error``, ``temporarily_unavailable`` for 429/503,
        ``invalid_client`` for 401, ``invalid_request`` otherwise).
        `retry_after` is sent verbatim as the ``Retry-After`` header.
        """
        if body is None:
            body = {"error": _default_error(code), "error_description": "injected fault"}
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls("status", status_code=code, payload=json_bytes(body), headers=headers)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep `seconds` on the server, then answer normally.

        `TokenServer.release_delays` ends the sleep early; ``stop`` drops the request.
        """
        return cls("delay", seconds=float(seconds))

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 with a truncated JSON body."""
        return cls(
            "malformed_json",
            payload=b'{"access_token": "truncated", "token_type": "bearer", "expires_in": ',
        )

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection abruptly (TCP RST, SO_LINGER 0) without any response."""
        return cls("reset")

    @classmethod
    def body(
        cls, raw: bytes | str, content_type: str = "application/json", status: int = 200
    ) -> Fault:
        """Answer with exactly `raw` as the body (for odd-but-parseable responses)."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        return cls("body", status_code=status, payload=raw, content_type=content_type)

    @classmethod
    def slow_headers(cls, interval: float = 0.1, total: float = 10.0) -> Fault:
        """A slow loris: the status line, then one header byte every `interval` seconds.

        The headers never end: after `total` seconds the server closes the
        connection; it stops earlier when the client goes away or the server stops.
        """
        if interval <= 0 or total <= 0:
            raise ValueError("interval and total must be positive")
        return cls("slow_headers", seconds=float(total), interval=float(interval))

    @classmethod
    def reset_mid_body(cls, raw: bytes | str | None = None) -> Fault:
        """Headers with a Content-Length, the first half of the body, then a TCP RST.

        `raw` is the full body announced (default: a well-formed token response).
        """
        if raw is None:
            raw = json_bytes({"access_token": "x" * 64, "token_type": "bearer", "expires_in": 3600})
        elif isinstance(raw, str):
            raw = raw.encode("utf-8")
        return cls("reset_mid_body", payload=raw)

    @classmethod
    def huge_body(cls, size: int = 1 << 30) -> Fault:
        """A 200 announcing `size` bytes (default 1 GiB) and streaming them.

        The body is a token response whose access_token fills it, so a client
        without a size cap would read it all (and even parse it). Nothing that
        size is ever allocated; streaming stops as soon as the client goes away.
        """
        minimum = len(HUGE_BODY_PREFIX) + len(HUGE_BODY_SUFFIX)
        if size < minimum:
            raise ValueError(f"size must be at least {minimum} bytes")
        return cls("huge_body", size=int(size))


@safe_repr
@dataclass(frozen=True)
class FaultStream:
    """What became of one streamed fault (`Fault.slow_headers`, ``reset_mid_body``, ``huge_body``).

    `bytes_sent` counts what the handler wrote after the status line (header
    bytes for a slow loris, body bytes otherwise); `ended` is ``"done"`` (all
    of it went out, or the slow loris reached its total), ``"client"`` (the
    client went away: a write failed) or ``"stopped"`` (the server stopped);
    `seconds` is how long the handler spent on it.
    """

    kind: FaultKind
    bytes_sent: int
    ended: Literal["done", "client", "stopped"]
    seconds: float


class _QueuedFault:
    __slots__ = ("fault", "path", "remaining")

    def __init__(self, fault: Fault, remaining: int, path: str | None) -> None:
        self.fault = fault
        self.remaining = remaining
        self.path = path


class FaultQueue:
    """Faults waiting for their requests, first in, first out, and how streamed ones ended.

    Thread-safe: tests queue faults while handler threads take them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_QueuedFault] = []
        self._streams: list[FaultStream] = []

    def inject(self, fault: Fault, times: int = 1, path: str | None = None) -> None:
        """Apply `fault` to the next `times` matching requests, after earlier faults.

        With `path` None the fault matches requests to any token endpoint;
        otherwise only requests to exactly that path.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._queue.append(_QueuedFault(fault, times, path))

    @property
    def pending_faults(self) -> int:
        """How many fault applications are still queued."""
        with self._lock:
            return sum(q.remaining for q in self._queue)

    def take(self, path: str, *, token_endpoint: bool) -> Fault | None:
        """The first queued fault matching a request to `path`, used up once; None if none.

        `token_endpoint` says whether `path` is a token endpoint (which faults
        queued without a path match).
        """
        with self._lock:
            for index, queued in enumerate(self._queue):
                if queued.path == path or (queued.path is None and token_endpoint):
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        del self._queue[index]
                    return queued.fault
        return None

    def record_stream(self, stream: FaultStream) -> None:
        """Note how a streamed fault ended (the transport calls this)."""
        with self._lock:
            self._streams.append(stream)

    @property
    def fault_streams(self) -> list[FaultStream]:
        """How each streamed fault ended, oldest first (a copy)."""
        with self._lock:
            return list(self._streams)

    def clear(self) -> None:
        """Drop every queued fault and every stream record."""
        with self._lock:
            self._queue.clear()
            self._streams.clear()
