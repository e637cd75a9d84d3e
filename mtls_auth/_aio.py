"""The async runtime seam: the few things the library asks of an event loop.

httpx's `AsyncClient` runs under asyncio and under trio (through anyio or
httpcore's own backends), so the async paths of mtls-auth must too. Everything
they need from the running loop goes through this module:

* `current()`: a `Loop` handle for the caller's event loop, asyncio or trio;
* `Loop.ident` (the asyncio loop or the `TrioToken`, weakly referenceable) to
  keep per-loop state such as connection pools;
* `Loop.pending()` and `Loop.call_soon_threadsafe` to hand a result computed
  in any thread (a token fetch finishing elsewhere) to a coroutine of that loop;
* `Loop.spawn_detached`: run a coroutine that no caller's cancellation reaches
  (an asyncio task, a trio system task), so a cancelled request never strands
  the others waiting for the same token fetch;
* `sleep`, `off_loop` (blocking work in a worker thread) and `within` (a
  deadline for a whole exchange).

The loop is found the way sniffio finds it, without the dependency: a running
asyncio loop first, else a trio run if trio is imported at all. The core never
imports trio itself; `import trio` happens in the application. Nor does it
import asyncio for synchronous callers (about 13 ms of a cold start): a running
asyncio loop means the application imported asyncio already, so until then
this module only looks in `sys.modules`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from ._errors import MtlsAuthError

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "Loop",
    "Pending",
    "current",
    "current_or_none",
    "gone",
    "off_loop",
    "sleep",
    "within",
]

_T = TypeVar("_T")


class Pending(Generic[_T]):
    """A result that will arrive later, awaited by one coroutine of one loop.

    `resolve` runs on that loop (through `Loop.call_soon_threadsafe`); a second
    resolution is ignored, so a late finisher cannot overwrite a timeout.
    """

    __slots__ = ("__weakref__", "_error", "_event", "_set", "_value")

    def __init__(self, event: Any) -> None:
        self._event = event
        self._value: _T | None = None
        self._error: BaseException | None = None
        self._set = False

    def resolve(self, value: _T | None, error: BaseException | None) -> None:
        if self._set:
            return
        self._value, self._error, self._set = value, error, True
        self._event.set()

    async def wait(self, timeout: float | None) -> _T:
        """The result, or TimeoutError after `timeout` seconds (None: no limit)."""
        await within(timeout, self._event.wait)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Loop:
    """The caller's event loop, whichever library runs it."""

    __slots__ = ("__weakref__", "_trio", "ident", "name")

    def __init__(self, name: str, ident: Any, trio: Any = None) -> None:
        self.name = name
        #: The asyncio loop or the TrioToken: hashable, weakly referenceable.
        self.ident = ident
        self._trio = trio

    def alive(self) -> bool:
        """Still running, so a coroutine it owns may still finish."""
        return not gone(self.ident) and (self._trio is not None or self.ident.is_running())

    def call_soon_threadsafe(self, call: Callable[..., object], *args: Any) -> None:
        """Run `call(*args)` on the loop, from any thread; RuntimeError if it is gone."""
        if self._trio is None:
            self.ident.call_soon_threadsafe(call, *args)
            return
        try:
            self.ident.run_sync_soon(call, *args)
        except self._trio.RunFinishedError:
            raise RuntimeError("the trio run has finished") from None

    def pending(self) -> Pending[Any]:
        """A `Pending` that coroutines of this loop (the caller's) can await."""
        if self._trio is not None:
            return Pending(self._trio.Event())
        import asyncio  # imported already: this loop is asyncio's

        return Pending(asyncio.Event())

    def spawn_detached(
        self, make: Callable[[], Coroutine[Any, Any, object]], ended: Callable[[], None]
    ) -> asyncio.Task[Any] | None:
        """Run `make()` on this loop, beyond the reach of the caller's cancellation.

        Called from a coroutine of this loop. The coroutine reports its own
        outcome (nothing awaits it); `ended()` runs on the loop once it is over
        by any path, even cancelled before its first step (the loop shutting
        down). Returns the asyncio task (None under trio).
        """
        if self._trio is None:
            task: asyncio.Task[Any] = self.ident.create_task(make())
            task.add_done_callback(lambda done: _ended(done, ended))
            return task
        self._trio.lowlevel.spawn_system_task(_system, make, ended)
        return None


async def _system(
    make: Callable[[], Coroutine[Any, Any, object]], ended: Callable[[], None]
) -> None:
    # A system task's exception would crash the trio run: the coroutine reports
    # its own outcome, so only cancellation (the run ending) may pass.
    try:
        with contextlib.suppress(Exception):
            await make()
    finally:
        ended()


def _ended(task: asyncio.Future[Any], ended: Callable[[], None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning
    ended()


def _nothing() -> None:
    return None


def gone(ident: Any) -> bool:
    """Whether the loop of `ident` (a `Loop.ident`) has closed or its trio run ended."""
    module = sys.modules.get("asyncio")
    if module is not None and isinstance(ident, module.AbstractEventLoop):
        return bool(ident.is_closed())
    trio = sys.modules.get("trio")
    if trio is None:  # pragma: no cover - a TrioToken exists only with trio imported
        return True
    try:
        ident.run_sync_soon(_nothing)
    except trio.RunFinishedError:
        return True
    return False


def current_or_none() -> Loop | None:
    """The caller's event loop, or None in plain synchronous code."""
    loop = _running_asyncio_loop()
    if loop is not None:
        return Loop("asyncio", loop)
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return None
        return Loop("trio", token, trio)
    return None


def current() -> Loop:
    """The caller's event loop; MtlsAuthError outside asyncio and trio."""
    loop = current_or_none()
    if loop is None:
        raise MtlsAuthError(
            "an async mtls-auth method was called outside an asyncio or trio event loop"
        )
    return loop


async def sleep(seconds: float) -> None:
    """Sleep on whichever loop runs the caller."""
    if _is_trio():
        await sys.modules["trio"].sleep(seconds)
    else:
        import asyncio

        await asyncio.sleep(seconds)


async def off_loop(call: Callable[[], _T]) -> _T:
    """Run a blocking call (key loading, stat, file reads) in a worker thread."""
    if _is_trio():
        result: _T = await sys.modules["trio"].to_thread.run_sync(call)
        return result
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, call)


async def within(timeout: float | None, work: Callable[[], Awaitable[_T]]) -> _T:
    """`await work()`, cancelled after `timeout` seconds with TimeoutError (None: no limit)."""
    if timeout is None:
        return await work()
    if _is_trio():
        trio = sys.modules["trio"]
        with trio.move_on_after(timeout) as scope:
            result = await work()
        if scope.cancelled_caught:
            raise TimeoutError(f"not done within {timeout:g}s")
        return result
    import asyncio

    try:
        return await asyncio.wait_for(work(), timeout)
    except asyncio.TimeoutError:  # a distinct class before Python 3.11
        raise TimeoutError(f"not done within {timeout:g}s") from None


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    module = sys.modules.get("asyncio")
    if module is None:  # no asyncio loop can run before asyncio is imported
        return None
    try:
        loop: asyncio.AbstractEventLoop = module.get_running_loop()
    except RuntimeError:
        return None
    return loop


def _is_trio() -> bool:
    return _running_asyncio_loop() is None and "trio" in sys.modules
