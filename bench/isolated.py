"""Running a measurement in a fresh interpreter (multiprocessing, spawn).

Memory figures taken in the benchmark's own process depend on what ran before:
memory freed by earlier measurements is reused, and RSS would understate
growth. `run_isolated` runs a module-level function of a bench module in a new
process and returns its (picklable) result.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def run_isolated(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a freshly spawned interpreter; its result."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
