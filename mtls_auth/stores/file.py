"""`FileTokenStore`: the worker processes of one host share tokens through a directory.

The directory holds one file per entry and per lease, named by the store key
(a digest: no client, tenant or user shows in a name):

=================== ===========================================================
``<key>.token``     a sealed entry; the file's modification time is its expiry
``<key>.lease``     a lease: holder id, process id and host; its mtime is its expiry
``.lock``           the lock (``flock``, through the `filelock` package) under
                    which leases are taken, taken over and released
``.tmp-*``          files being written: each write goes to a temporary file
                    that `os.replace` then moves over the old one (atomic)
=================== ===========================================================

**Permissions.** Every file is created 0600 and read only if it is a regular
file of this user that nobody else may access (``O_NOFOLLOW``: never through
a symbolic link). The directory must belong to this process's user and allow
nothing to group and others (0700). A directory that does not exist is
created so (its parents with the usual mode). An existing directory that is
a symbolic link, belongs to another user or lets group or others in is
*refused* (`TokenStoreError`), never changed: chmod-ing a directory the
application may use for other things too (a home, a shared volume) would be
a surprise, and one owned by someone else cannot be made safe. So is a
directory whose parent anyone may write to without the sticky bit (anyone
could swap the directory). Point the store at a directory of its own, such as
``/run/<app>/tokens`` or a subdirectory of a pod volume, and let it be created.

**Leases.** A lease is stale, and taken over, once its expiry has passed, or
at once when its holder was a process of this host (same host name and PID
namespace) that no longer runs (or is a zombie): a worker killed mid-fetch
delays the others by one look at the store, not by the lease time.

Needs a POSIX system and a local filesystem with ``flock``: processes on
several hosts share tokens through `mtls_auth.stores.RedisTokenStore`, not
through a network filesystem. Expired files are swept at most once a minute,
when an entry is written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from .._errors import TokenStoreError, check_seconds, clean_text
from .._redact import guarded, safe_repr
from .._store import TokenStore

__all__ = ["FileTokenStore"]

logger = logging.getLogger(__name__)

#: Entry and lease files larger than this are not read (an entry is a few hundred bytes).
MAX_FILE = 1 << 20
#: Seconds between two sweeps of expired files, and how long past expiry a file is kept.
SWEEP_EVERY = 60.0
_KEEP_EXPIRED = 60.0
#: What a store key may look like here: it becomes a file name.
_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HOLDER = re.compile(r"[\x21-\x7e]{1,128}")
_OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_host: str | None = None


@safe_repr
class FileTokenStore(TokenStore):
    """A token store in a directory of this user's own, for the processes of one host.

    `path` is an absolute directory path; it is created (mode 0700) if it
    does not exist, and refused if it exists and others could reach it (see
    the module documentation). `lock_timeout` bounds the wait for the lock
    under which leases change hands (seconds; a lease not obtained in that
    time counts as held by another process). ``token_store="file:///path"``
    makes one.
    """

    @guarded
    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 1.0) -> None:
        if os.name != "posix":
            raise TokenStoreError(
                "the file token store needs a POSIX system (file modes and process ids); "
                "use RedisTokenStore or a TokenStore of your own"
            )
        try:
            raw = os.fspath(path)
        except TypeError:
            raise TokenStoreError(
                f"FileTokenStore needs a directory path, not {type(path).__name__}"
            ) from None
        if not isinstance(raw, str) or not raw or not raw.isprintable():
            raise TokenStoreError("FileTokenStore needs a directory path of printable characters")
        if not os.path.isabs(raw):
            raise TokenStoreError(
                f"FileTokenStore needs an absolute directory path, not {clean_text(raw, 120)!r}: "
                "a relative one depends on each worker's working directory"
            )
        self.lock_timeout = check_seconds(lock_timeout, "lock_timeout")
        self._lock_class, self._lock_timeout_error = _filelock()
        self.path = os.path.normpath(raw)
        _prepare(self.path)
        self._uid = os.geteuid()
        self._next_sweep = 0.0

    @classmethod
    @guarded
    def from_url(cls, url: str) -> FileTokenStore:
        """The store of a ``file:///absolute/path`` URL (``file://localhost/...`` too)."""
        try:
            parts = urlsplit(url)
        except ValueError:
            raise TokenStoreError(
                f"token store URL {clean_text(url, 120)!r} cannot be parsed"
            ) from None
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise TokenStoreError(
                f"token store URL {clean_text(url, 120)!r} must be file:///absolute/path "
                "(three slashes, no host, query or fragment)"
            )
        if not path.startswith("/"):
            raise TokenStoreError(
                f"token store URL {clean_text(url, 120)!r} names no absolute path: "
                "use file:///absolute/path"
            )
        return cls(path)

    # -- the store ---------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The entry of `key` if its file is there, private, and not expired."""
        found = self._read(self._file(key, ".token"))
        if found is None or found[0] <= time.time():
            return None
        return found[1]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Write the entry of `key` (a new file replaces the old one), expiring in `ttl` s."""
        path = self._file(key, ".token")
        self._check_directory()
        self._write(path, bytes(value), time.time() + ttl)
        self._sweep_if_due()

    def lease(self, key: str, holder: str, ttl: float) -> bool:
        """Take the lease of `key` unless a live holder has it (under the directory's lock)."""
        path = self._file(key, ".lease")
        line = f"{_holder(holder)} {os.getpid()} {_host_id()}\n".encode("ascii")
        with self._locked() as locked:
            if not locked:
                return False  # another process is at it: it counts as held
            current = self._read(path)
            if current is not None and not _stale(*current):
                return False
            self._write(path, line, time.time() + ttl)
            return True

    def release(self, key: str, holder: str) -> None:
        """Remove the lease of `key` if `holder` still holds it."""
        path = self._file(key, ".lease")
        mine = _holder(holder).encode("ascii")
        with self._locked() as locked:
            if not locked:
                return  # the lease expires by itself
            current = self._read(path)
            if current is not None and current[1].split(b" ", 1)[0] == mine:
                os.unlink(path)

    # -- files -----------------------------------------------------------------------

    def _file(self, key: str, suffix: str) -> str:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError("a store key must be 1 to 128 letters, digits, '-' or '_'")
        return os.path.join(self.path, key + suffix)

    def _read(self, path: str) -> tuple[float, bytes] | None:
        """(expiry, content) of a file of ours, or None if absent or not safe to trust."""
        try:
            fd = os.open(path, _OPEN_READ | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                logger.debug("ignored a symbolic link in the token store directory")
                return None
            raise
        try:
            info = os.fstat(fd)
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_uid != self._uid
                or info.st_mode & 0o077
                or info.st_size > MAX_FILE
            ):
                logger.debug("ignored a file in the token store directory: not a private file")
                return None
            chunks = []
            size = 0
            while size <= info.st_size:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return info.st_mtime, b"".join(chunks)
        finally:
            os.close(fd)

    def _write(self, path: str, data: bytes, expires_at: float) -> None:
        """`data` to `path` atomically (a temporary file replaces it), mode 0600, mtime expiry."""
        fd, temporary = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)  # mkstemp's 0600, whatever the umask did
                file.write(data)
            os.utime(temporary, (expires_at, expires_at))
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _check_directory(self) -> None:
        """Raise OSError unless the directory is still this user's alone (an outage, then).

        Checked before every write and lock: a directory removed or replaced
        while the service runs is not written to, nor recreated (filelock would
        recreate it with the default mode).
        """
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != self._uid or info.st_mode & 0o077:
            raise PermissionError(errno.EPERM, "the token store directory changed hands")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """The directory's lock for leases; yields False if not obtained within the timeout."""
        self._check_directory()
        lock = self._lock_class(
            os.path.join(self.path, ".lock"), timeout=self.lock_timeout, mode=0o600
        )
        try:
            lock.acquire()
        except self._lock_timeout_error:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def _sweep_if_due(self) -> None:
        """Remove files long expired (and temporaries of writers that died), once a minute."""
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        with self._locked() as locked:
            if not locked:
                return
            with os.scandir(self.path) as entries:
                names = [entry.name for entry in entries]
            for name in names:
                if not name.endswith((".token", ".lease")) and not name.startswith(".tmp-"):
                    continue
                path = os.path.join(self.path, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_mtime < now - _KEEP_EXPIRED:
                        os.unlink(path)

    def __repr__(self) -> str:
        return f"<FileTokenStore {self.path}>"


def _filelock() -> tuple[Any, type[BaseException]]:
    """filelock's flock-based lock and its timeout error, imported on first use."""
    try:
        from filelock import Timeout, UnixFileLock
    except ImportError as exc:
        raise TokenStoreError(
            "the file token store needs the filelock package (pip install filelock; "
            "a normal install of mtls-auth brings it)"
        ) from exc
    return UnixFileLock, Timeout


def _prepare(path: str) -> None:
    """Create the directory (0700), or check that an existing one is this user's alone."""
    parent = os.path.dirname(path)
    try:
        _make_parents(parent)
        with contextlib.suppress(FileExistsError):  # another worker made it: checked below
            os.mkdir(path, 0o700)
            _fix_new(path)
        info = os.lstat(path)
        parent_info = os.stat(parent)
    except OSError as exc:
        raise TokenStoreError(
            f"cannot create or inspect the token store directory {path}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    if stat.S_ISLNK(info.st_mode):
        raise TokenStoreError(
            f"the token store directory {path} is a symbolic link: give the directory itself "
            "(a link can be swapped under a running service)"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise TokenStoreError(f"the token store path {path} exists and is not a directory")
    if info.st_uid != os.geteuid():
        raise TokenStoreError(
            f"the token store directory {path} belongs to uid {info.st_uid}, not to this "
            f"process's user (uid {os.geteuid()}): its owner could plant or remove entries; "
            "use a directory of this user's own (a path that does not exist yet is created)"
        )
    if info.st_mode & 0o077:
        raise TokenStoreError(
            f"the token store directory {path} has mode {stat.S_IMODE(info.st_mode):04o}: "
            f"group or others may use it; the store needs a directory only its owner can use "
            f"(chmod 700 {path}), or a path that does not exist yet (created with mode 0700)"
        )
    if parent_info.st_mode & stat.S_IWOTH and not parent_info.st_mode & stat.S_ISVTX:
        raise TokenStoreError(
            f"the token store directory's parent {parent} may be written by anyone and has no "
            "sticky bit: anyone could replace the store directory; choose another place"
        )


def _make_parents(parent: str) -> None:
    """Create the missing ancestors of the store directory, 0755: never writable by others.

    (`os.makedirs` gives intermediate directories the umask's mode: 0777 under umask 0.)
    """
    missing = []
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755)


def _fix_new(path: str) -> None:
    """Mode 0700 exactly on a directory just made (the umask may have taken bits away)."""
    fd = os.open(path, _OPEN_DIRECTORY)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _holder(holder: str) -> str:
    if not isinstance(holder, str) or not _HOLDER.fullmatch(holder):
        raise ValueError("a lease holder must be 1 to 128 visible ASCII characters")
    return holder


def _stale(expires_at: float, content: bytes) -> bool:
    """Whether a lease may be taken over: expired, or its holder on this host is gone."""
    if expires_at <= time.time():
        return True
    try:
        _, pid_text, host = content.decode("ascii").split()
        pid = int(pid_text)
    except ValueError:
        return True  # not a lease this store wrote: not worth waiting for
    return host == _host_id() and not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's: EPERM)
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != b"Z"


def _host_id() -> str:
    """This host as leases name it: host name and PID namespace (containers differ)."""
    global _host
    if _host is None:
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = "-"
        shown = f"{socket.gethostname()}/{namespace}"
        _host = "".join(c for c in shown if c.isprintable() and not c.isspace()) or "-"
    return _host
