"""What a user's file must be before vggtl opens it to read: a regular file.

``open()`` of a FIFO with no writer blocks for ever, and a device reads without
end; ``os.stat`` and an ``O_NONBLOCK`` open tell them apart without blocking.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Optional


def special_file_kind(path: str) -> Optional[str]:
    """"a FIFO", "a socket" or "a device" if ``path`` is one, else None (a regular
    file, a folder, or nothing there: the open that follows says so)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return None


def open_regular(path: str, nofollow: bool = False):
    """A binary file object for ``path``, if it is a regular file: a FIFO, a socket
    or a device is refused without blocking (O_NONBLOCK for the open itself).
    nofollow: a link put in the file's place since its folder was listed is
    refused (O_NOFOLLOW)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # what open() says of a folder
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
