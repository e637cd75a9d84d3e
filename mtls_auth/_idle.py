"""Letting go of token-endpoint connections that nothing will need for a while.

A token lives for minutes to hours; servers close idle keep-alive connections
after seconds (nginx 75 s, many load balancers 60 s or less). Keeping the
connection to the token endpoint open between refreshes holds a socket (and a
server slot) per auth object for nothing. So after a fetch, when the next
refresh is further away than `HORIZON`, the sender's connections go: at once
after a lone fetch (none ended within `HORIZON` before it: an application's
first token, a refresh hours after the last), otherwise once `HORIZON` seconds
pass without another fetch, so fetches that come close together (frequent
refreshes, a burst of tenant or user tokens) keep reusing the connection. A
burst thus pays one handshake more than it would with a kept connection: its
first fetch cannot know that more follow.

One daemon thread for the whole process (`_Reaper`, started on first use)
calls `IdleRelease.fire` at the right time, with at most one entry per sender
however many fetches it makes (a later fetch moves the time, it does not add
an entry); a sync sender then closes its
session or client, an async one has its event loop close that loop's client
(``call_soon_threadsafe``). Nothing is closed while a fetch is using the
connection: a release runs under the lock `begin` takes, and the loop's close
gives up if a fetch began on the loop in the meantime (`busy`). What is closed
is rebuilt on the next fetch.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from typing import Callable

from . import _after_fork as after_fork

__all__ = ["HORIZON", "IdleRelease"]

logger = logging.getLogger(__name__)

#: Seconds without a fetch after which an idle token-endpoint connection is closed,
#: when no refresh is due sooner.
HORIZON = 30.0


class IdleRelease:
    """Decides when one sender's connections go: `begin`/`end` around each fetch."""

    __slots__ = (
        "__weakref__",
        "_active",
        "_due",
        "_last_end",
        "_lock",
        "_queued",
        "_release",
        "horizon",
    )

    def __init__(self, release: Callable[[], object], horizon: float = HORIZON) -> None:
        self._release = release
        self.horizon = horizon
        self._lock = threading.Lock()
        self._active = 0
        #: When to release (monotonic seconds); None while nothing is planned.
        self._due: float | None = None
        #: Whether the reaper holds an entry for this sender.
        self._queued = False
        #: When the last fetch ended (monotonic seconds); None before the first.
        self._last_end: float | None = None
        after_fork.register(self)

    @property
    def busy(self) -> bool:
        """Whether a fetch is running (a release planned before it must not cut it)."""
        return self._active > 0

    def begin(self) -> None:
        with self._lock:
            self._active += 1
            self._due = None  # the fetch ending plans again

    def end(self, quiet_for: float | None) -> None:
        """A fetch ended; `quiet_for` is how long no refresh is due (None: unknown)."""
        quiet = quiet_for is not None and quiet_for > self.horizon
        now = time.monotonic()
        with self._lock:
            self._active -= 1
            last, self._last_end = self._last_end, now
            if not quiet or self._active:
                return  # a refresh comes soon, or a fetch still runs and will plan
            if last is None or now - last > self.horizon:
                # A lone fetch: nothing came close before it, nothing is due
                # soon. Released under the lock: a fetch starting now waits
                # in `begin` and then builds a new connection.
                self._due = None
                self._release_quietly()
                return
            due = self._due = now + self.horizon
            if self._queued:
                return  # the reaper's entry finds the new time when it comes
            self._queued = True
        _reaper().schedule(due, self)

    def fire(self, now: float) -> float | None:
        """Release if due by `now`; the later time to look again, or None when done."""
        with self._lock:
            due = self._due
            if due is not None and due > now:
                return due
            self._queued = False
            if due is None or self._active:
                return None
            self._due = None
            self._release_quietly()  # under the lock: no fetch begins meanwhile
        return None

    def _release_quietly(self) -> None:
        # Closing a connection is housekeeping: what it raises must never take
        # the place of the fetch's own outcome (a fresh token, or its error).
        try:
            self._release()
        except Exception as exc:  # noqa: BLE001 - see above; the next fetch reconnects
            logger.debug("closing an idle token-endpoint connection failed: %s", type(exc).__name__)

    def _after_fork(self) -> None:
        # In a forked child: the fetches counted here ran in threads it lacks,
        # and it has no reaper holding an entry.
        self._lock = threading.Lock()
        self._active = 0
        self._due = None
        self._queued = False
        self._last_end = None


class _Reaper:
    """One thread that fires the releases of every sender in the process, when due."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[IdleRelease]]] = []
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, release: IdleRelease) -> None:
        with self._condition:
            heapq.heappush(self._heap, (when, next(self._counter), weakref.ref(release)))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mtls-auth-idle-connections", daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._condition.wait(timeout)
                _, _, ref = heapq.heappop(self._heap)
            release = ref()
            if release is None:
                continue
            later = None
            # Closing must never kill the reaper: whatever it raises is dropped.
            with contextlib.suppress(Exception):
                later = release.fire(time.monotonic())
            if later is not None:
                self.schedule(later, release)


_instance: _Reaper | None = None
_instance_lock = threading.Lock()


def _reaper() -> _Reaper:
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = _Reaper()
    return _instance


def _forget_reaper() -> None:
    # A forked child has no reaper thread: it starts its own when needed.
    global _instance, _instance_lock
    _instance = None
    _instance_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_reaper)
