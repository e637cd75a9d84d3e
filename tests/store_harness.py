"""What the token store tests share: raw looks at a store, forked workers, a call log.

The fixtures (a real Redis, store directories, both stores) are in the plugin
module ``store_fixtures.py``; a test module loads it with
``pytest_plugins = ["store_fixtures"]``.

`fork_workers` runs a function in N forked processes (multiprocessing's fork
start method, as gunicorn, uvicorn and Celery prefork make workers), released
together, and returns their JSON-able results. `CallLog` is a `TokenStore`
that forwards to a real one and records the calls (for "no store call on the
hot path"), without ever recording a value.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import time
import traceback
import warnings
from typing import Any, Callable

from mtls_auth import TokenStore
from mtls_auth.testing import RedisServer

__all__ = [
    "STORE_KINDS",
    "CallLog",
    "RawStore",
    "entry_name",
    "fork_workers",
    "redis_client",
    "redis_missing",
]

STORE_KINDS = ["file", "redis"]


def redis_missing() -> str | None:
    """Why the Redis tests cannot run here, or None."""
    if RedisServer.find() is None:
        return "no redis-server on PATH (Debian: apt-get install redis-server; .ci/run installs it)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install -e '.[test]' brings it)"
    return None


def redis_client(server: RedisServer) -> Any:
    """A redis-py client of `server` for the test's own looks (1 s timeouts)."""
    import redis

    return redis.Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)


def entry_name(auth: Any) -> str:
    """The store key of `auth`'s token (an HMAC digest of its cache key)."""
    client = auth._client
    return str(client.shared.keys(client.state.certificate).name(auth._key()))


class RawStore:
    """What a store holds, read and changed behind the library's back (an operator, an attacker).

    `entries` maps store keys to entry bytes; `everything` is every name and
    value the store holds (file names and contents, Redis keys and values).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.directory = url[len("file://") :] if url.startswith("file://") else None
        self._redis = None if self.directory is not None else _redis_for(url)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def everything(self) -> dict[str, bytes]:
        if self.directory is not None:
            found = {}
            for name in os.listdir(self.directory):
                with open(os.path.join(self.directory, name), "rb") as file:
                    found[name] = file.read()
            return found
        assert self._redis is not None
        return {
            key.decode(): self._redis.get(key) or b""
            for key in self._redis.keys("*")
            if self._redis.type(key) == b"string"
        }

    def entries(self) -> dict[str, bytes]:
        suffix, prefix = ".token", "mtls-auth:tok:"
        found = {}
        for name, value in self.everything().items():
            if self.directory is not None and name.endswith(suffix):
                found[name[: -len(suffix)]] = value
            elif self.directory is None and name.startswith(prefix):
                found[name[len(prefix) :]] = value
        return found

    def put(self, key: str, value: bytes) -> None:
        """Overwrite the entry of `key` with `value`, valid for another minute."""
        if self.directory is not None:
            path = os.path.join(self.directory, key + ".token")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(value)
            later = time.time() + 60
            os.utime(path, (later, later))
            return
        assert self._redis is not None
        self._redis.set("mtls-auth:tok:" + key, value, px=60_000)


def _redis_for(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


class CallLog(TokenStore):
    """A real store, with its calls recorded as (method, key) pairs: never a value."""

    def __init__(self, inner: TokenStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def get(self, key: str) -> bytes | None:
        self.calls.append(("get", key))
        return self.inner.get(key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self.calls.append(("set", key))
        self.inner.set(key, value, ttl)

    def lease(self, key: str, holder: str, ttl: float) -> bool:
        self.calls.append(("lease", key))
        return self.inner.lease(key, holder, ttl)

    def release(self, key: str, holder: str) -> None:
        self.calls.append(("release", key))
        self.inner.release(key, holder)

    def close(self) -> None:
        self.inner.close()

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


def fork_workers(
    count: int,
    work: Callable[[int, Callable[[], None]], dict[str, Any]],
    *,
    timeout: float = 30.0,
    started: Callable[[list[Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``work(index, go)`` in `count` forked processes; their results, by index.

    ``go()`` waits until every worker has called it (a barrier): workers set
    up, then start together, as a fleet does after a deploy. `started`, if
    given, is called in the parent with the processes once they run (to kill
    one, say). A worker that raised returns ``{"error": ..., "trace": ...}``;
    one that died returns ``{"exitcode": ...}``.
    """
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(count)
    results: Any = context.Queue()

    def main(index: int) -> None:
        try:
            outcome = work(index, lambda: barrier.wait(timeout))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        results.put((index, outcome))

    processes = [context.Process(target=main, args=(i,), daemon=True) for i in range(count)]
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock:
        # the test server's threads are not used by the children.
        warnings.simplefilter("ignore", DeprecationWarning)
        for process in processes:
            process.start()
    collected: dict[int, dict[str, Any]] = {}
    try:
        if started is not None:
            started(processes)
        deadline = time.monotonic() + timeout
        while len(collected) < count and time.monotonic() < deadline:
            ended = not any(process.is_alive() for process in processes)
            try:
                # A worker that ended has flushed its result: the last look waits a little.
                index, outcome = results.get(timeout=0.5 if ended else 0.05)
            except queue.Empty:
                if ended:
                    break
                continue
            collected[index] = outcome
    finally:
        for process in processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(5)
        with contextlib.suppress(Exception):
            results.close()
    return [
        collected.get(index, {"exitcode": process.exitcode})
        for index, process in enumerate(processes)
    ]
