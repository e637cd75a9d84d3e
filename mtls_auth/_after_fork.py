"""After `os.fork()`: the child forgets inherited connections, locks and in-flight fetches.

gunicorn ``--preload``, multiprocessing's fork start method and Celery's prefork
pool copy a warm process. The copy must not write to the parent's TLS
connections (both sides would use one TLS session: record MAC errors), must not
wait on a lock some thread of the parent held at the moment of the fork (that
thread does not exist in the child), and must not wait for a token fetch that
thread was running. Objects that own such things register here; in the child,
`os.register_at_fork` calls their ``_after_fork`` method, which replaces locks,
drops (never closes: closing could talk on the parent's connection) pools and
clients, and forgets flights. A still-valid cached token is kept.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_lock = threading.Lock()


def register(obj: ForkAware) -> None:
    """Have `obj._after_fork()` called in every child forked from now on."""
    with _lock:
        _objects.add(obj)


def _in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent may have held it while forking
    for obj in list(_objects):
        try:
            obj._after_fork()
        except Exception:  # noqa: BLE001 - one object must not stop the others' reset
            logger.warning("could not reset a %s after fork", type(obj).__name__)


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_in_child)
