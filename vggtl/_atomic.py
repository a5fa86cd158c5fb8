"""Atomic file writes: the one way vggtl writes a file a user keeps.

A file is written under a temporary name in its destination folder, flushed and
fsynced, then renamed over the destination (``os.replace``, atomic on POSIX and
Windows) and the folder fsynced, so a reader sees the old file or the new one,
never half of one; on any error, Ctrl-C included, the temporary file is removed
and the old file is untouched. A file system error (disk full, read-only folder)
is re-raised as the same ``OSError`` subclass with a message naming the file.

A process killed (SIGKILL, power loss) while writing leaves its temporary file
behind, which no reader ever opens (it has another name). The writer holds an
``flock`` on its temporary file, so the next write to the same destination can
tell such leftovers (no one holds them) from another process's write in progress,
and removes them: a killed save of a 60 MB model does not leave 60 MB behind for
good.
"""
from __future__ import annotations

import errno
import os
import time
import secrets
from contextlib import contextmanager
from typing import IO, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers of killed writers stay
    fcntl = None


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (not possible everywhere: best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A leftover younger than this is left alone even when its lock is free: where
# flock is local to each machine (NFS with local_lock, Lustre's localflock), a
# free lock may belong to a writer on another machine that is still writing.
_LEFTOVER_AGE_S = 3600.0


def _remove_leftovers(folder: str, prefix: str, mine: str) -> None:
    """Remove temporary files of earlier writes to the same destination whose
    writer is gone (its flock was released when it died, an hour ago or more);
    skip any held."""
    if fcntl is None:
        return
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        p = os.path.join(folder, name)
        if not (name.startswith(prefix) and name.endswith(".part")) or p == mine:
            continue
        try:
            if now - os.stat(p).st_mtime < _LEFTOVER_AGE_S:
                continue
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(p)
        except OSError:
            pass  # held: another process is writing it right now
        finally:
            os.close(fd)


def _named(e: OSError, path: str) -> OSError:
    """The same error (same OSError subclass, e.g. PermissionError) naming the
    destination, which the temporary file's name or a bare write error hides."""
    what = e.strerror or str(e)
    hint = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    # str(): "[Errno 28] No space left on device (disk full); the file was not
    # replaced: '<path>'"
    return OSError(e.errno, f"{what}{hint}; the file was not replaced", path)


@contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends without error
    the file there is fsynced and renamed to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = "." + os.path.basename(path) + "."
    tmp, fd = None, -1
    try:
        # not tempfile.mkstemp: a Ctrl-C landing inside it after the file exists but
        # before it returns would leave a file whose name we never learnt. Here the
        # name is known before the file is made, and the os.open call and the
        # assignment of its result cannot be split by a signal handler.
        for _ in range(100):
            tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}.part")
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL |
                             getattr(os, "O_CLOEXEC", 0), 0o600)
                break
            except FileExistsError:
                tmp = None  # someone else's: never ours to remove
        else:
            raise FileExistsError(errno.EEXIST, f"no free temporary name in {folder}")
        locked = False
        if fcntl is not None:  # held until the file is renamed or removed: "in use"
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
            except OSError:  # a file system without flock (ENOSYS, ENOLCK, EOPNOTSUPP)
                pass
        if locked:  # without a lock of our own, others' locks say nothing either
            _remove_leftovers(folder, prefix, tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, IsADirectoryError)):
            raise _named(e, path) from e
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    fsync_dir(folder)


@contextmanager
def atomic_open(path) -> Iterator[IO[bytes]]:
    """``open(path, "wb")`` that replaces ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            yield f
            f.flush()


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)
