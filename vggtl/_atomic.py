"""Atomic file writes: the one way vggtl writes a file a user keeps.

A file is written under a temporary name in its destination folder, flushed and
fsynced, then renamed over the destination (``os.replace``, atomic on POSIX and
Windows) and the folder fsynced, so a reader sees the old file or the new one,
never half of one; on any error, Ctrl-C included, the temporary file is removed
and the old file is untouched. A file system error (disk full, read-only folder)
is re-raised as the same ``OSError`` subclass with a message naming the file.

Modes. A new file gets the mode ``open()`` would give it (``0666`` less the umask,
or the folder's default ACL); a file replaced keeps its permission bits. The
temporary file is private to its owner (0600) until it is complete.

A process killed (SIGKILL, power loss) while writing leaves its temporary file
behind, which no reader ever opens (it has another name). The writer holds an
``flock`` on its temporary file, so the next write to the same destination can
tell such leftovers (no one holds them) from another process's write in progress,
and removes them: a killed save of a 60 MB model does not leave 60 MB behind for
good.

:func:`atomic_open_at` writes a name inside a folder given as an open file
descriptor (``O_NOFOLLOW`` throughout): what the feature cache uses, so that a
symlink planted in a shared folder never redirects a write.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from contextlib import contextmanager
from typing import IO, Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; leftovers of killed writers stay
    fcntl = None

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def fsync_dir(folder) -> None:
    """Make a rename in ``folder`` (a path or an open folder's descriptor) durable
    (not possible everywhere: best effort)."""
    if isinstance(folder, int):
        fd = folder
    else:
        try:
            fd = os.open(folder, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        except OSError:
            return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        if fd is not folder:
            os.close(fd)


# A leftover younger than this is left alone even when its lock is free: where
# flock is local to each machine (NFS with local_lock, Lustre's localflock), a
# free lock may belong to a writer on another machine that is still writing.
_LEFTOVER_AGE_S = 3600.0


def _remove_leftovers(folder: str, prefix: str, mine: str, dir_fd: Optional[int] = None) -> None:
    """Remove temporary files of earlier writes to the same destination whose
    writer is gone (its flock was released when it died, an hour ago or more);
    skip any held, and anything that is not a regular file."""
    if fcntl is None:
        return
    now = time.time()
    try:
        names = os.listdir(folder if dir_fd is None else dir_fd)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".part")) or name == mine:
            continue
        p = name if dir_fd is not None else os.path.join(folder, name)
        try:
            st = os.stat(p, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < _LEFTOVER_AGE_S:
                continue
            fd = os.open(p, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(p, dir_fd=dir_fd)
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


def _kept_mode(name: str, dir_fd: Optional[int]) -> Optional[int]:
    """The permission bits of the regular file ``name`` about to be replaced, or
    None when there is none (a new file)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else None


class _Temp:
    """A temporary file beside ``base`` in ``folder`` (or in the folder open as
    ``dir_fd``): its name is known before the file exists, so that whatever stops
    the write (a Ctrl-C landing as the os.open call returns included) can remove it.
    Not tempfile.mkstemp, which could make a file whose name we never learnt."""

    def __init__(self, folder: str, base: str, dir_fd: Optional[int]):
        self.folder, self.base, self.dir_fd = folder, base, dir_fd
        self.path: Optional[str] = None  # relative to dir_fd, or a path
        self.fd = -1
        self.mode = 0o600  # the final file's

    def _at(self, name: str) -> str:
        return name if self.dir_fd is not None else os.path.join(self.folder, name)

    def create(self) -> None:
        keep = _kept_mode(self._at(self.base), self.dir_fd)
        prefix = "." + self.base + "."
        for _ in range(100):
            self.path = self._at(f"{prefix}{secrets.token_hex(6)}.part")
            try:
                # a new file is made with 0666 so that the kernel applies the umask (and
                # a default ACL) as for any file; what it gets is its final mode
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW |
                                  O_CLOEXEC, 0o600 if keep is not None else 0o666,
                                  dir_fd=self.dir_fd)
                break
            except FileExistsError:
                self.path = None  # someone else's: never ours to remove
        else:
            raise FileExistsError(errno.EEXIST, f"no free temporary name in {self.folder}")
        made = stat.S_IMODE(os.fstat(self.fd).st_mode) & 0o777
        self.mode = keep if keep is not None else made
        if made != 0o600:
            os.fchmod(self.fd, 0o600)  # private (and writable by its owner) until complete
        if fcntl is not None:
            try:  # held until the file is renamed or removed: "in use"
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:  # a file system without flock (ENOSYS, ENOLCK, EOPNOTSUPP)
                return  # without a lock of our own, others' locks say nothing either
            _remove_leftovers(self.folder, prefix, os.path.basename(self.path), self.dir_fd)

    def discard(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path, dir_fd=self.dir_fd)
            except OSError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends without error
    the file there is fsynced and renamed to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    t = _Temp(folder, os.path.basename(path), None)
    try:
        t.create()
        yield t.path
        with open(t.path, "rb+") as f:  # the writer may have made it anew by its name
            os.fchmod(f.fileno(), t.mode)
            os.fsync(f.fileno())
        os.replace(t.path, path)
    except BaseException as e:
        t.discard()
        if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, IsADirectoryError)):
            raise _named(e, path) from e
        raise
    finally:
        t.close()
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


@contextmanager
def atomic_open_at(dir_fd: int, name: str, shown: Optional[str] = None) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``name`` in the folder open as ``dir_fd`` when
    the block succeeds. Every step is relative to ``dir_fd`` and follows no
    symlink, and the file is written through the descriptor that made it, never
    reopened by name. ``shown``: the path errors name (default ``name``)."""
    shown = shown or name
    t = _Temp(os.path.dirname(shown), name, dir_fd)
    try:
        t.create()
        with os.fdopen(os.dup(t.fd), "wb") as f:
            yield f
            f.flush()
        os.fchmod(t.fd, t.mode)
        os.fsync(t.fd)
        os.replace(t.path, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as e:
        t.discard()
        if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, IsADirectoryError)):
            raise _named(e, shown) from e
        raise
    finally:
        t.close()
    fsync_dir(dir_fd)


def atomic_write_at(dir_fd: int, name: str, data, shown: Optional[str] = None) -> None:
    with atomic_open_at(dir_fd, name, shown) as f:
        f.write(data)
