"""Files of an entry, opened safely: relative to a folder's descriptor, never
following a symlink, never waiting on a FIFO.

Every file the cache reads or writes goes through these: a symlink, a FIFO or any
other special file where a regular file (or a folder) is expected raises
:class:`Damaged`, and the entry is neither read nor written through it.
"""
from __future__ import annotations

import errno
import io
import json
import os
import stat
from contextlib import contextmanager
from typing import Optional

import numpy as np

from .._atomic import O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK


class Unwritable(Exception):
    """The cache folder cannot be written (read-only, permissions, disk full)."""


class Damaged(Exception):
    """Something in an entry is not what vggtl puts there (a symlink, a FIFO or
    another special file, a folder without vggtl's marker): the entry is not used."""


@contextmanager
def writing(what: str):
    """File system errors while writing the cache become Unwritable."""
    try:
        yield
    except OSError as e:
        raise Unwritable(f"{what}: {e.strerror or e}") from e


def npy_header(shape, dtype: np.dtype) -> bytes:
    bio = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        bio, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)})
    return bio.getvalue()


# errno of an O_NOFOLLOW / O_DIRECTORY open of something of the wrong kind: a
# symlink (ELOOP; EMLINK on FreeBSD), a socket (ENXIO), a folder, not a folder
_WRONG_KIND = {errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR, errno.ENOTDIR,
               errno.ENODEV}


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "a special file"


def _what_is(name: str, dir_fd: Optional[int]) -> str:
    try:
        return _kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return "something else"


def open_file(name: str, dir_fd: Optional[int], flags: int = os.O_RDONLY,
               shown: Optional[str] = None) -> Optional[int]:
    """A descriptor of the regular file ``name`` (relative to ``dir_fd``, or a
    path), opened without following a symlink or waiting on a FIFO; None if there
    is none. Anything but a regular file there raises Damaged."""
    try:
        fd = os.open(name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o666, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in _WRONG_KIND:
            raise Damaged(f"{shown or name} is {_what_is(name, dir_fd)}, not a regular "
                           f"file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Damaged(f"{shown or name} is {_kind(mode)}, not a regular file")
    return fd


def open_dir(name: str, dir_fd: Optional[int] = None, shown: Optional[str] = None) -> Optional[int]:
    """A descriptor of the folder ``name`` (relative to ``dir_fd``, or a path), which
    must be a folder and not a symlink to one (Damaged otherwise); None if absent."""
    try:
        return os.open(name, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                       dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in _WRONG_KIND:
            raise Damaged(f"{shown or name} is {_what_is(name, dir_fd)}, not a "
                           f"folder") from None
        raise


def _read_fd(fd: int, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes from ``fd`` (one more tells "too long")."""
    parts, left = [], limit + 1
    while left > 0:
        b = os.read(fd, min(left, 1 << 20))
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return b"".join(parts)


def read_small(name: str, dir_fd: Optional[int], limit: int = 1 << 24,
                shown: Optional[str] = None) -> Optional[bytes]:
    """The bytes of the regular file ``name`` (None if absent; at most ``limit`` + 1)."""
    fd = open_file(name, dir_fd, shown=shown)
    if fd is None:
        return None
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def read_json(name: str, dir_fd: Optional[int] = None, shown: Optional[str] = None,
               limit: int = 1 << 24) -> Optional[dict]:
    """A JSON object from a regular file; None when absent, unreadable, over
    ``limit`` bytes or not a JSON object. Damaged when not a regular file."""
    try:
        raw = read_small(name, dir_fd, limit, shown)
    except OSError:
        return None
    if raw is None or len(raw) > limit:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError, MemoryError):
        return None  # not JSON, or nested too deep: as if absent
    return obj if isinstance(obj, dict) else None


def lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def remove_at(name: str, dir_fd: Optional[int], depth: int = 0) -> None:
    """Remove ``name`` in the folder ``dir_fd`` (or a path): a file, a symlink (not
    what it points to), a FIFO, or a whole folder tree, following no symlink.
    Best effort: errors are ignored."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode) and depth < 16:
        try:
            fd = open_dir(name, dir_fd)
        except (OSError, Damaged):
            return
        if fd is None:
            return
        try:
            for child in os.listdir(fd):
                remove_at(child, fd, depth + 1)
        except OSError:
            pass
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass
    elif not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass


def tree_size(dir_fd: int, depth: int = 0) -> int:
    """Bytes of the files under the folder ``dir_fd`` (symlinks not followed)."""
    total = 0
    try:
        with os.scandir(dir_fd) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        sub = open_dir(e.name, dir_fd) if depth < 16 else None
                        if sub is not None:
                            try:
                                total += tree_size(sub, depth + 1)
                            finally:
                                os.close(sub)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
                except (OSError, Damaged):
                    pass
    except OSError:
        pass
    return total


def file_stamp(st: os.stat_result) -> list:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
