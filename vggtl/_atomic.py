"""Atomic file writes: the one way vggtl writes a file a user keeps.

A file is written under a temporary name in its destination folder, flushed and
fsynced, then renamed over the destination (``os.replace``, atomic on POSIX and
Windows) and the folder fsynced, so a reader sees the old file or the new one,
never half of one; on any error, Ctrl-C included, the temporary file is removed
and the old file is untouched.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


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


@contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends without error
    the file there is fsynced and renamed to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".part")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
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
