"""`RedisServer`: a real ``redis-server`` on loopback, for tests of the shared token store.

    with RedisServer() as redis:
        auth = MtlsOAuth2.from_binding(binding, token_store=redis.url, **kwargs)
        ...
        redis.stop()      # an outage: requests go on without the store
        redis.start()     # back, on the same port
        redis.pause()     # SIGSTOP: a server that accepts but never answers
        redis.resume()

It runs the ``redis-server`` (or ``valkey-server``) executable found on PATH,
bound to 127.0.0.1 on a free port, without persistence, in a temporary
directory; `RedisServer.find` says whether one is installed (Debian:
``apt-get install redis-server``). Nothing here imports redis-py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

from .._redact import safe_repr

__all__ = ["RedisServer"]

#: Executables tried, in order, when none is given.
EXECUTABLES = ("redis-server", "valkey-server")


@safe_repr
class RedisServer:
    """A ``redis-server`` process on ``127.0.0.1``, started and stopped by the test.

    `executable` is a path or a name on PATH (default: the first of
    ``redis-server`` and ``valkey-server`` found). `port` defaults to a free
    one, chosen at the first `start` and kept across restarts. `password`
    makes the server require it (``requirepass``), and `url` carry it.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        found = executable or self.find()
        if found is None:
            raise FileNotFoundError(
                "no redis-server or valkey-server on PATH (Debian: apt-get install redis-server)"
            )
        self.executable = found
        self.port = port
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._paused = False

    @staticmethod
    def find() -> str | None:
        """The path of an installed ``redis-server`` or ``valkey-server``, or None."""
        for name in EXECUTABLES:
            path = shutil.which(name)
            if path is not None:
                return path
        return None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, with the password if there is one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (paused counts as alive)."""
        process = self._process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (on the port it had, if it ran before) and wait until it answers."""
        if self.running:
            return self
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="mtls-auth-redis-")
        for _ in range(5):
            if self.port is None:
                self.port = _free_port()
            command = [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._directory.name,
                "--daemonize", "no",
                "--loglevel", "warning",
            ]  # fmt: skip
            if self.password:
                command += ["--requirepass", self.password]
            self._process = subprocess.Popen(  # noqa: S603 - a fixed command line of our own
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            if self._wait_ready(timeout):
                return self
            self._reap()
        raise RuntimeError(f"{self.executable} did not start on 127.0.0.1")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False  # the port was taken, say
            if self.ping(0.2):
                return True
            time.sleep(0.01)
        return False

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers a PING within `timeout` seconds."""
        if self.port is None:
            return False
        command = b"PING\r\n"
        if self.password:
            secret = self.password.encode()
            command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + command
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(command)
                answer = b""
                while b"PONG" not in answer:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    answer += chunk
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL): clients see connections refused."""
        process = self._process
        if process is None:
            return
        if self._paused:
            self.resume()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections but answers nothing (a hung store)."""
        if self.running and self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        if self._process is not None and self._paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGCONT)
            self._paused = False

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer 127.0.0.1:{self.port} {state}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RedisServer owns a process and cannot be pickled")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
