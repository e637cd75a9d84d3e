"""`FakeClock`: time that moves only when a test says so.

One instance can drive both sides of a test: the `TokenServer` (which decides
``expires_in`` and expiry at the resource with it) and the auth object (its
``clock=`` argument, which decides when a cached token is stale or expired)::

    clock = FakeClock()
    server = TokenServer(pki, clock=clock, token_lifetime=600)
    auth = MtlsOAuth2.from_binding(binding, verify=server.ca_pem, clock=clock)
    ...
    clock.advance(601)  # the cached token has now expired, on both sides

No test ever sleeps to see a token expire.
"""

from __future__ import annotations

import math
import threading

from .._redact import safe_repr

__all__ = ["FakeClock"]


@safe_repr
class FakeClock:
    """A thread-safe, manually advanced clock reading seconds as a float.

    Call it to read the time (``clock()``), as you would `time.time` or
    `time.monotonic`; `advance` moves it forward. It starts at `start`
    (default ``1_000_000.0``, an arbitrary fixed point that makes recorded
    times reproducible) and never goes backwards, so it is a valid monotonic
    clock for the auth objects' ``clock=`` argument.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = _finite(start, "start")
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current reading, in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by `seconds` (>= 0) and return the new reading."""
        step = _finite(seconds, "seconds")
        if step < 0:
            raise ValueError("a FakeClock never goes backwards: seconds must be >= 0")
        with self._lock:
            self._now += step
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self():.3f})"


def _finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, not {number!r}")
    return number
