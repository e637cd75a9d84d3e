"""`FileTokenStore`: permissions, URLs, entries and leases in a real directory.

The decision on permissions, held here: the store directory is created 0700
(whatever the umask); an existing one that is a symbolic link, belongs to
another user or lets group or others in is refused, never changed, and so is
one whose parent anyone may write without the sticky bit. Files are 0600 and
read only when they are private files of this user, never through a link (a
FIFO planted there does not block). Leases are taken over when they expire, or
at once when their holder's process on this host is gone (reaped or a zombie).
"""

from __future__ import annotations

import os
import stat
import time
import warnings
from pathlib import Path

import pytest
from filelock import UnixFileLock

from mtls_auth import ArgumentError, TokenStoreError
from mtls_auth.stores import FileTokenStore, open_store
from mtls_auth.stores import file as file_store

KEY = "cd" * 32
pytestmark = pytest.mark.skipif(os.name != "posix", reason="the file store needs POSIX")


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_a_new_directory_is_0700_and_its_files_0600_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    path = tmp_path / "a" / "b" / "tokens"
    previous = os.umask(mask)
    try:
        store = FileTokenStore(path)
        store.set(KEY, b"entry", 30)
        assert store.lease(KEY, "holder", 5)
    finally:
        os.umask(previous)
    assert _mode(path) == 0o700
    names = sorted(os.listdir(path))
    assert names == [".lock", KEY + ".lease", KEY + ".token"]
    assert {name: _mode(path / name) & 0o077 for name in names} == dict.fromkeys(names, 0)
    assert _mode(path / (KEY + ".token")) == 0o600
    assert store.get(KEY) == b"entry"


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o770, 0o777, 0o1777])
def test_an_existing_directory_others_can_reach_is_refused_not_changed(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(TokenStoreError, match=rf"mode {mode:04o}.*chmod 700 {path}"):
        FileTokenStore(path)
    assert _mode(path) == mode  # left as it was


def test_an_existing_private_directory_is_used_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "private"
    path.mkdir(mode=0o700)
    (path / "unrelated").write_text("kept")
    store = FileTokenStore(path)
    store.set(KEY, b"entry", 30)
    assert (path / "unrelated").read_text() == "kept"


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(TokenStoreError, match="is a symbolic link"):
        FileTokenStore(link)


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(TokenStoreError, match="not a directory"):
        FileTokenStore(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(TokenStoreError, match="belongs to uid 65534"):
        FileTokenStore(path)


def test_a_parent_anyone_may_write_needs_the_sticky_bit(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(TokenStoreError, match="no sticky bit"):
        FileTokenStore(loose / "tokens")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp is
    FileTokenStore(sticky / "tokens")
    assert _mode(sticky / "tokens") == 0o700


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("relative/tokens", "absolute directory path"),
        ("", "printable"),
        (42, "not int"),
    ],
)
def test_a_path_that_cannot_work_fails_at_once(value: object, message: str) -> None:
    with pytest.raises(TokenStoreError, match=message):
        FileTokenStore(value)  # type: ignore[arg-type]


def test_file_urls(tmp_path: Path) -> None:
    assert open_store(f"file://{tmp_path}/one").path == f"{tmp_path}/one"  # type: ignore[attr-defined]
    assert open_store(f"FILE://localhost{tmp_path}/two").path == f"{tmp_path}/two"  # type: ignore[attr-defined]
    spaced = open_store(f"file://{tmp_path}/with%20space")
    assert spaced.path == f"{tmp_path}/with space"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file://relative/tokens", "three slashes, no host"),
        ("file:relative/tokens", "no absolute path"),
        ("file:///tmp/tokens?mode=777", "no host, query or fragment"),
        ("/var/run/tokens", r"file:///absolute/path\)"),
        ("tokens", "must be a URL starting with"),
        ("ftp://host/tokens", "'ftp' is not known"),
    ],
)
def test_a_bad_store_url_fails_at_once_saying_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(TokenStoreError, match=message) as caught:
        open_store(url)
    assert isinstance(caught.value, ArgumentError)
    assert isinstance(caught.value, ValueError)


# -- entries ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> FileTokenStore:
    return FileTokenStore(tmp_path / "tokens")


def _age(path: Path, seconds: float) -> None:
    """Move a file's mtime (its expiry here) `seconds` into the past."""
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


def test_an_entry_lives_until_its_expiry(store: FileTokenStore) -> None:
    assert store.get(KEY) is None
    store.set(KEY, b"first", 30)
    store.set(KEY, b"second", 30)  # replaced whole
    assert store.get(KEY) == b"second"
    _age(Path(store.path) / (KEY + ".token"), 1)
    assert store.get(KEY) is None


def test_entries_that_are_not_private_files_of_this_user_are_not_read(
    store: FileTokenStore, tmp_path: Path
) -> None:
    entry = Path(store.path) / (KEY + ".token")
    store.set(KEY, b"entry", 30)
    entry.chmod(0o644)
    assert store.get(KEY) is None
    entry.unlink()
    elsewhere = tmp_path / "planted"
    elsewhere.write_bytes(b"planted")
    elsewhere.chmod(0o600)
    entry.symlink_to(elsewhere)
    assert store.get(KEY) is None  # never through a link
    entry.unlink()
    os.mkfifo(entry, 0o600)
    started = time.monotonic()
    assert store.get(KEY) is None  # a FIFO does not block the reader
    assert time.monotonic() - started < 1


def test_expired_files_are_swept_when_an_entry_is_written(store: FileTokenStore) -> None:
    directory = Path(store.path)
    store.set(KEY, b"old", 30)
    _age(directory / (KEY + ".token"), file_store._KEEP_EXPIRED + 5)
    (directory / ".tmp-crashed").write_bytes(b"")
    _age(directory / ".tmp-crashed", file_store._KEEP_EXPIRED + 5)
    fresh = "ef" * 32
    store._next_sweep = 0.0
    store.set(fresh, b"fresh", 30)
    assert sorted(os.listdir(directory)) == [".lock", fresh + ".token"]


def test_a_directory_that_vanished_is_not_recreated(store: FileTokenStore) -> None:
    os.rmdir(store.path)
    with pytest.raises(OSError):  # any OSError: the library counts it as an outage
        store.set(KEY, b"entry", 30)
    with pytest.raises(OSError):
        store.lease(KEY, "holder", 5)
    assert not os.path.exists(store.path)
    assert store.get(KEY) is None


# -- leases -----------------------------------------------------------------------------


def _lease_file(store: FileTokenStore) -> Path:
    return Path(store.path) / (KEY + ".lease")


def test_one_holder_at_a_time_and_only_the_holder_releases(store: FileTokenStore) -> None:
    assert store.lease(KEY, "holder-a", 5)
    assert not store.lease(KEY, "holder-b", 5)  # held by a live process (this one)
    store.release(KEY, "holder-b")
    assert not store.lease(KEY, "holder-b", 5)
    store.release(KEY, "holder-a")
    assert store.lease(KEY, "holder-b", 5)
    holder, pid, host = _lease_file(store).read_text().split()
    assert (holder, int(pid)) == ("holder-b", os.getpid())
    assert "/" in host


def test_an_expired_lease_is_taken_over(store: FileTokenStore) -> None:
    assert store.lease(KEY, "holder-a", 5)
    _age(_lease_file(store), 0.001)
    assert store.lease(KEY, "holder-b", 5)
    store.release(KEY, "holder-a")  # too late: it is not theirs any more
    assert _lease_file(store).read_text().startswith("holder-b ")


def _dead_holder(store: FileTokenStore, reap: bool) -> int:
    """A process that takes the lease and exits: reaped, or left a zombie."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock
        # (a pytest-xdist worker has some): the child only takes a lease and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 0 if store.lease(KEY, "dead-holder", 60) else 1
        os._exit(code)
    if reap:
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    else:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _is_zombie(pid):
            time.sleep(0.005)  # a real process ending: wait for the fact
    return pid


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_the_lease_of_a_process_that_is_gone_is_taken_over_at_once(
    store: FileTokenStore, reap: bool
) -> None:
    pid = _dead_holder(store, reap)
    try:
        assert _lease_file(store).read_text().startswith("dead-holder ")
        if not reap and not os.path.exists(f"/proc/{pid}/stat"):
            pytest.skip("no /proc: a zombie cannot be told from a live process")
        assert store.lease(KEY, "next-holder", 5)
    finally:
        if not reap:
            os.waitpid(pid, 0)


def test_a_lease_from_another_host_waits_for_its_expiry(store: FileTokenStore) -> None:
    path = _lease_file(store)
    assert store.lease(KEY, "holder-a", 5)
    path.write_text("holder-a 1 another-host/pid:[1]\n")
    path.chmod(0o600)
    later = time.time() + 5
    os.utime(path, (later, later))
    assert not store.lease(KEY, "holder-b", 5)  # pid 1 there says nothing here
    _age(path, 0.001)
    assert store.lease(KEY, "holder-b", 5)


def test_a_lease_not_obtained_within_the_lock_timeout_counts_as_held(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens", lock_timeout=0.05)
    other = UnixFileLock(os.path.join(store.path, ".lock"))  # another process's hold
    with other:
        started = time.monotonic()
        assert not store.lease(KEY, "holder", 5)
        assert time.monotonic() - started < 1
        store.release(KEY, "holder")  # gives up quietly: a lease expires by itself
    assert store.lease(KEY, "holder", 5)


def test_repr_names_the_directory_only(store: FileTokenStore) -> None:
    assert repr(store) == f"<FileTokenStore {store.path}>"
    half = object.__new__(FileTokenStore)
    assert repr(half) == "<FileTokenStore (incomplete)>"
