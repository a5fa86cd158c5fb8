"""The store: entry folders, their locks and manifests, and reading and
writing an entry's chunks and ``data.npy`` (see :mod:`vggtl.cache` for the layout
and the read and write paths). It knows nothing of what the features are: a
chunk source (:mod:`vggtl.cache.plan`) computes them.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .._atomic import O_CLOEXEC, O_NOFOLLOW, atomic_open_at, atomic_write_at
from .files import (Damaged, Unwritable, file_stamp, lexists, npy_header, open_dir, open_file,
                    read_json, read_small, remove_at, writing)
from .keys import DTYPES, FORMAT_VERSION, KEY_HEX, canonical, key_id
from .progress import Progress

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; single-process use stays safe
    fcntl = None

RACY_NS = 2_000_000_000  # a stamp taken within 2 s of the file's ctime is not trusted
# Seconds a lock may stay held while nothing in its entry changes before a waiter
# stops waiting and computes without the cache (a writer changes the entry at
# least once per chunk, and a chunk is a few seconds of work).
LOCK_WAIT_S = 600.0
MARKER = "vggtl-entry"
MARKER_TEXT = b"vggtl feature cache entry\n"
ENTRY_RE = re.compile(r"^[0-9a-f]{%d}$" % KEY_HEX)

_verified_here: Dict[str, tuple] = {}  # data.npy path -> stamp checked by this process
_stalled: Dict[str, tuple] = {}  # lock path -> the entry as it was when a wait gave up


class Stalled(Exception):
    """An entry's lock stayed held while nothing in the entry changed."""

    def __init__(self, lock: str, holder: str, seconds: float):
        super().__init__(f"the feature cache entry lock {lock} is held by {holder} and nothing "
                         f"in the entry has changed for {seconds:.0f} s (a stopped or hung "
                         f"process?)")
        self.lock = lock


class Changed(Exception):
    """A file of the entry changed while it was being copied: check it all again."""


# -- vggtl's own folders ----------------------------------------------------------------
def is_ours(dir_fd: int) -> bool:
    """The folder carries vggtl's marker (or, made by vggtl before the marker, a
    manifest of the feature cache's format): only such a folder is ever written
    into or removed."""
    try:
        if read_small(MARKER, dir_fd, limit=256) == MARKER_TEXT:
            return True
    except (OSError, Damaged):
        pass
    try:
        obj = read_json("manifest.json", dir_fd)
    except Damaged:
        return False
    m = obj.get("manifest") if obj else None
    return isinstance(m, dict) and m.get("format") == "vggtl.features"


def make_entry_dir(folder: str) -> None:
    """Create an entry folder with vggtl's marker in one step: made under a
    temporary name, marked, renamed into place (a folder already there, made by
    another process meanwhile, stays)."""
    root, name = os.path.split(folder)
    os.makedirs(root, exist_ok=True)
    stage = os.path.join(root, f".new-{name}-{secrets.token_hex(4)}")
    os.mkdir(stage, 0o777)
    try:
        dfd = open_dir(stage)
        try:
            fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0o666, dir_fd=dfd)
            try:
                os.write(fd, MARKER_TEXT)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
        try:
            os.rename(stage, folder)
        except OSError as e:
            # made meanwhile (EEXIST, ENOTEMPTY), or something else is there
            # (ENOTDIR: a file or a symlink), which opening it reports
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
    finally:
        remove_entry_tree(stage)  # gone when renamed


def remove_entry_tree(path: str) -> None:
    """Remove an entry folder that is vggtl's (checked here again), its marker and
    manifest last, so that a removal cut short leaves a folder still known as ours."""
    try:
        fd = open_dir(path)
    except (OSError, Damaged):
        return
    if fd is None:
        return
    try:
        if not is_ours(fd):
            return
        last = (MARKER, "manifest.json")
        for name in os.listdir(fd):
            if name not in last:
                remove_at(name, fd)
        for name in reversed(last):
            remove_at(name, fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


# -- locks -------------------------------------------------------------------------
def _progress(dir_fd: Optional[int]) -> tuple:
    """What changes while a lock holder works on the entry: the entry's and its
    chunk folder's times (each file written or renamed there), the manifest's, and
    the size of every temporary file (data.npy being assembled)."""
    out: list = []
    if dir_fd is None:
        return ()
    try:
        out.append(os.fstat(dir_fd).st_mtime_ns)
        for name in sorted(os.listdir(dir_fd)):
            if name.endswith(".part") or name in ("chunks", "manifest.json"):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                out.append((name, st.st_size, st.st_mtime_ns))
    except OSError:
        pass
    return tuple(out)


def _flock_pids(fd: int) -> List[int]:
    """The processes holding an flock on the file open as ``fd``, as /proc/locks
    shows them (Linux; only this machine's and this PID namespace's)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as f:
            lines = f.read(1 << 22).splitlines()
    except OSError:
        return []
    exact = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    found: Dict[bool, List[int]] = {True: [], False: []}
    for line in lines:
        f = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; waiters: "1: ->"
        if len(f) < 6 or f[1] != "FLOCK" or f[5].rsplit(":", 1)[-1] != str(st.st_ino):
            continue
        try:
            pid = int(f[4])
        except ValueError:
            continue
        # an overlay file system may show another device number: the inode alone then
        found[f[5] == exact].append(pid)
    pids = found[True] or found[False]
    return list(dict.fromkeys(pids))


def _describe_holder(fd: int) -> str:
    """Who holds the lock open as ``fd``: the processes /proc/locks shows, else what
    the last writer recorded in the lock file."""
    who = []
    for pid in _flock_pids(fd):
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read(64).strip()
        except OSError:
            name = ""
        who.append(f"process {pid}" + (f" ({name})" if name else ""))
    if who:
        return ", ".join(who) + " on this machine"
    try:
        rec = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        rec = ""
    if rec.startswith("pid "):
        return f"a process not shown here; the last writer recorded: {rec!r}"
    return "a process not shown here (on another machine?)"


def _record_holder(fd: int) -> None:
    """Write who holds the lock for writing into it, for waiters to name."""
    rec = f"pid {os.getpid()} on {socket.gethostname()} since " \
          f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, rec, 0)
    except OSError:
        pass  # only information


class Locked:
    """An flock on ``<folder>/lock``, checked to be the entry's current lock file
    in the folder still at its path (an entry removed while we waited has its
    folder renamed away: start over). ``dfd``: the entry folder, open, while held
    (None: no entry). ``create``: make the folder, marked as vggtl's, if absent;
    a folder without the marker is refused (Damaged). A wait ends when the lock
    is free, or with Stalled when nothing in the entry changed for LOCK_WAIT_S."""

    def __init__(self, folder: str, exclusive: bool, create: bool, blocking: bool = True,
                 on_wait: Optional[Callable[[], None]] = None):
        self.folder, self.exclusive, self.create = folder, exclusive, create
        self.blocking, self.on_wait = blocking, on_wait
        self.fd: Optional[int] = None
        self.dfd: Optional[int] = None
        self.busy = False
        self.lock_path = os.path.join(folder, "lock")

    def __enter__(self):
        try:
            return self._enter()
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        for attr in ("fd", "dfd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                os.close(fd)  # closing the lock file releases its flock

    def _enter(self):
        for _ in range(100):
            self._close()
            self.dfd = open_dir(self.folder)
            if self.dfd is None:
                if not self.create:
                    return self  # no entry
                with writing(f"cannot create {self.folder}"):
                    make_entry_dir(self.folder)
                continue
            if self.create:
                if not is_ours(self.dfd):
                    raise Damaged(f"{self.folder} is not a vggtl cache entry (it has no "
                                   f"{MARKER} marker)")
                with writing(f"cannot create {self.lock_path}"):
                    self.fd = open_file("lock", self.dfd, os.O_RDWR | os.O_CREAT,
                                         shown=self.lock_path)
            else:
                try:
                    self.fd = open_file("lock", self.dfd, shown=self.lock_path)
                except OSError:
                    self.fd = None
                if self.fd is None:
                    return self  # no lock readable: read without one
            if fcntl is None:
                return self
            mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.blocking:
                    self._close()
                    self.busy = True
                    return self
                if self.on_wait is not None:
                    self.on_wait()
                self._wait(mode)
            if self._current():
                if self.exclusive:
                    _record_holder(self.fd)
                return self
        raise Unwritable(f"cannot lock {self.lock_path}: it keeps being removed")

    def _current(self) -> bool:
        try:
            return os.path.samestat(os.fstat(self.dfd), os.stat(self.folder,
                                                                follow_symlinks=False)) and \
                os.path.samestat(os.fstat(self.fd), os.stat("lock", dir_fd=self.dfd,
                                                            follow_symlinks=False))
        except OSError:
            return False

    def _wait(self, mode: int) -> None:
        """Poll for the lock until it is free; give up (Stalled) once nothing in the
        entry has changed for LOCK_WAIT_S (at once if it is as it was when an earlier
        wait here gave up)."""
        limit = float(LOCK_WAIT_S)
        seen = _progress(self.dfd)
        since = time.monotonic()
        if _stalled.get(self.lock_path) == seen:
            since -= limit
        delay = 0.005
        while True:
            time.sleep(delay)
            delay = min(0.2, delay * 2)
            try:
                fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
                _stalled.pop(self.lock_path, None)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            state = _progress(self.dfd)
            if state != seen:
                seen, since = state, now
            elif now - since >= limit:
                _stalled[self.lock_path] = state
                raise Stalled(self.lock_path, _describe_holder(self.fd), now - since)

    def __exit__(self, *exc):
        self._close()
        return False


# -- one entry ---------------------------------------------------------------------------
class Entry:
    """One entry's files. Every operation goes through the entry folder's
    descriptor (the one held with its lock, else opened for the call) and names
    relative to it, so a symlink planted in place of the folder or any file in it
    is never followed."""

    def __init__(self, root: str, key: dict):
        self.root, self.key = root, key
        self.id = key_id(key)
        self.dir = os.path.join(root, self.id)
        self.manifest_path = os.path.join(self.dir, "manifest.json")
        self.data_path = os.path.join(self.dir, "data.npy")
        self.stamp_path = os.path.join(self.dir, "verified")
        self.chunk_dir = os.path.join(self.dir, "chunks")
        self._dfd: Optional[int] = None

    def chunk_path(self, k: int) -> str:
        return os.path.join(self.chunk_dir, f"{k:06d}.bin")

    # folders ----------------------------------------------------------------
    @contextmanager
    def locked(self, exclusive: bool, create: bool, blocking: bool = True,
               on_wait: Optional[Callable[[], None]] = None) -> Iterator[Locked]:
        with Locked(self.dir, exclusive, create, blocking, on_wait) as lk:
            self._dfd = lk.dfd
            try:
                yield lk
            finally:
                self._dfd = None

    @contextmanager
    def folder(self, required: bool = False) -> Iterator[Optional[int]]:
        """The entry folder's descriptor (None if there is no entry, or
        FileNotFoundError when ``required``)."""
        if self._dfd is not None:
            yield self._dfd
            return
        fd = open_dir(self.dir)
        if fd is None and required:
            raise FileNotFoundError(errno.ENOENT, "the cache entry is gone", self.dir)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    @contextmanager
    def chunks(self, dfd: int, create: bool = False) -> Iterator[Optional[int]]:
        """The chunk folder's descriptor (None if absent and not ``create``)."""
        cfd = open_dir("chunks", dfd, shown=self.chunk_dir)
        if cfd is None and create:
            try:
                os.mkdir("chunks", 0o777, dir_fd=dfd)
            except FileExistsError:
                pass
            cfd = open_dir("chunks", dfd, shown=self.chunk_dir)
            if cfd is None:
                raise FileNotFoundError(errno.ENOENT, "removed while in use", self.chunk_dir)
        try:
            yield cfd
        finally:
            if cfd is not None:
                os.close(cfd)

    def has_chunks(self) -> bool:
        with self.folder() as dfd:
            return dfd is not None and lexists("chunks", dfd)

    # manifest ---------------------------------------------------------------
    def read_manifest(self) -> Optional[dict]:
        with self.folder() as dfd:
            if dfd is None:
                return None
            return check_manifest(read_json("manifest.json", dfd, self.manifest_path),
                                   self.key)

    def write_manifest(self, m: dict) -> None:
        with writing(f"cannot write {self.manifest_path}"), self.folder(True) as dfd:
            atomic_write_at(dfd, "manifest.json", wrap_manifest(m), self.manifest_path)

    # verification ------------------------------------------------------------
    def region(self, m: dict, k: int) -> Tuple[int, int]:
        """(offset, length) of chunk k in data.npy."""
        item = item_bytes(m)
        start = k * m["chunk"]
        rows = min(m["chunk"], m["n"] - start)
        return len(npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])) + start * item, \
            rows * item

    def chunk_bytes(self, m: dict, k: int) -> int:
        return self.region(m, k)[1]

    def bad_regions(self, m: dict, fd: Optional[int] = None) -> List[int]:
        """Chunks whose region in data.npy (open as ``fd``, or opened here) is short
        or fails its CRC (all when the file is missing or its header differs)."""
        ks = list(range(len(m["chunks"])))
        if fd is None:
            with self.folder() as dfd:
                try:
                    own = open_file("data.npy", dfd, shown=self.data_path) \
                        if dfd is not None else None
                except OSError:
                    own = None
            if own is None:
                return ks
            try:
                return self.bad_regions(m, own)
            finally:
                os.close(own)
        header = npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
        try:
            if os.pread(fd, len(header), 0) != header:
                return ks
        except OSError:
            return ks

        def check(k):
            if m["chunks"][k] is None:
                return k
            off, length = self.region(m, k)
            try:
                data = os.pread(fd, length, off)
            except OSError:
                return k
            return None if len(data) == length and zlib.crc32(data) == m["chunks"][k] else k

        if len(ks) < 2:
            res = [check(k) for k in ks]
        else:
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
                res = list(ex.map(check, ks))
        return [k for k in res if k is not None]

    def write_chunk(self, k: int, data: np.ndarray) -> int:
        """Write chunk k's features atomically (complete or absent, never half);
        returns its CRC-32, which the manifest records once the file is durable."""
        raw = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        crc = zlib.crc32(raw)
        with writing(f"cannot write {self.chunk_path(k)}"):
            with self.folder(True) as dfd, self.chunks(dfd, create=True) as cfd:
                with atomic_open_at(cfd, f"{k:06d}.bin", self.chunk_path(k)) as f:
                    f.write(raw)
        return crc

    def read_chunk_file(self, name: str, limit: int) -> Optional[bytes]:
        """The bytes of ``chunks/<name>`` (at most ``limit`` + 1), None if absent."""
        with self.folder() as dfd:
            if dfd is None:
                return None
            with self.chunks(dfd) as cfd:
                if cfd is None:
                    return None
                return read_small(name, cfd, limit, os.path.join(self.chunk_dir, name))

    def has_chunk_file(self, name: str) -> bool:
        """``chunks/<name>`` is there (Damaged if it is not a regular file)."""
        with self.folder() as dfd:
            if dfd is None:
                return False
            with self.chunks(dfd) as cfd:
                fd = open_file(name, cfd, shown=os.path.join(self.chunk_dir, name)) \
                    if cfd is not None else None
        if fd is not None:
            os.close(fd)
        return fd is not None

    def write_chunk_file(self, name: str, src: str) -> None:
        """Copy the file ``src`` to ``chunks/<name>``, atomically."""
        with writing(f"cannot write {os.path.join(self.chunk_dir, name)}"):
            with self.folder(True) as dfd, self.chunks(dfd, create=True) as cfd, \
                    open(src, "rb") as f, \
                    atomic_open_at(cfd, name, os.path.join(self.chunk_dir, name)) as out:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    out.write(block)

    def chunk_file_ok(self, m: dict, k: int) -> bool:
        if m["chunks"][k] is None:
            return False
        try:
            data = self.read_chunk_file(f"{k:06d}.bin", self.chunk_bytes(m, k))
        except OSError:
            return False
        return data is not None and len(data) == self.chunk_bytes(m, k) and \
            zlib.crc32(data) == m["chunks"][k]

    def trusted(self, st: os.stat_result) -> bool:
        """data.npy is as it was at a full check (see "Read path" in vggtl.cache)."""
        stamp = file_stamp(st)
        here = _verified_here.get(self.data_path)
        if here is not None and here[0] == stamp and here[1] - st.st_ctime_ns > RACY_NS:
            return True
        with self.folder() as dfd:
            rec = read_json("verified", dfd, self.stamp_path, limit=4096) \
                if dfd is not None else None
        return bool(rec) and rec.get("stamp") == stamp and \
            isinstance(rec.get("at"), int) and rec["at"] - st.st_ctime_ns > RACY_NS

    def record_verified(self, st: os.stat_result, at: int) -> None:
        _verified_here[self.data_path] = (file_stamp(st), at)
        try:
            with self.folder(True) as dfd:
                atomic_write_at(dfd, "verified", canonical({"stamp": file_stamp(st), "at": at}),
                                self.stamp_path)
        except OSError:
            pass  # read-only: this process remembers it

    # reading --------------------------------------------------------------------
    def try_read(self, check: bool = True) -> Optional[np.ndarray]:
        """The complete entry as a read-only memmap, or None (missing, incomplete,
        damaged). ``check=False`` after this process wrote it. Damaged when a
        file of the entry is not a regular file (a symlink, a FIFO...)."""
        with self.folder() as dfd:
            if dfd is None:
                return None
            m = check_manifest(read_json("manifest.json", dfd, self.manifest_path), self.key)
            if m is None or not m["complete"]:
                return None
            try:
                fd = open_file("data.npy", dfd, shown=self.data_path)
            except OSError:
                return None
            if fd is None:
                return None
            try:
                arr = self._map(m, fd, check)
            except (OSError, ValueError):
                arr = None
            finally:
                os.close(fd)
            if arr is not None:
                self.touch()
            return arr

    def _map(self, m: dict, fd: int, check: bool) -> Optional[np.ndarray]:
        shape, dtype = (m["n"], *m["item_shape"]), DTYPES[m["dtype"]]
        header = npy_header(shape, dtype)
        st = os.fstat(fd)
        if st.st_size != len(header) + m["n"] * item_bytes(m):
            return None
        if check and not self.trusted(st):
            at = time.time_ns()
            if self.bad_regions(m, fd):
                return None
            self.record_verified(st, at)
        if os.pread(fd, len(header), 0) != header:
            return None
        with open(fd, "rb", closefd=False) as f:
            arr = np.memmap(f, dtype=dtype, mode="r", offset=len(header), shape=shape)
        arr.filename = self.data_path
        return arr

    def touch(self) -> None:
        try:  # least-recently-used order is the manifest's mtime
            with self.folder() as dfd:
                if dfd is not None:
                    os.utime("manifest.json", dir_fd=dfd, follow_symlinks=False)
        except OSError:
            pass

    # writing --------------------------------------------------------------------
    def clean_temporaries(self) -> None:
        with self.folder() as dfd:
            if dfd is None:
                return
            with self.chunks(dfd) as cfd:
                for folder in (dfd, cfd):
                    if folder is None:
                        continue
                    try:
                        names = os.listdir(folder)
                    except OSError:
                        continue
                    for name in names:
                        if name.startswith(".") and name.endswith(".part"):
                            try:
                                os.unlink(name, dir_fd=folder)
                            except OSError:
                                pass

    def drop_leftovers(self) -> None:
        """Chunk files of a complete entry (a process killed between the last
        manifest write and their removal): removed if nobody holds the entry."""
        try:
            with self.locked(exclusive=True, create=False, blocking=False) as lk:
                if lk.fd is not None:
                    m = self.read_manifest()
                    if m is not None and m["complete"]:
                        remove_at("chunks", lk.dfd)
        except (OSError, Damaged, Unwritable):
            pass

    def reset(self) -> None:
        """Forget everything but the lock and the marker (a manifest of another
        format or key)."""
        with writing(f"cannot clear {self.dir}"), self.folder(True) as dfd:
            for name in ("chunks", "data.npy", "verified", "manifest.json"):
                remove_at(name, dfd)

    def build(self, plan) -> None:
        """Compute what is missing with the chunk source ``plan``
        (vggtl.cache.plan.ChunkSource) and assemble data.npy (exclusive lock held)."""
        self.clean_temporaries()
        m = self.read_manifest()
        if m is None or not same_layout(m, plan):
            self.reset()
            m = new_manifest(self.key, plan)
            self.write_manifest(m)
        nchunks = len(m["chunks"])
        with self.folder(True) as dfd:
            has_data = lexists("data.npy", dfd)
        in_data = set(range(nchunks)) - set(self.bad_regions(m)) if has_data else set()
        in_files = {k for k in range(nchunks) if k not in in_data and self.chunk_file_ok(m, k)}
        missing = [k for k in range(nchunks) if k not in in_data and k not in in_files]
        if missing or m["complete"]:
            for k in missing:
                m["chunks"][k] = None
            m["complete"] = False
            self.write_manifest(m)
        if missing:
            with writing(f"cannot create {self.chunk_dir}"), self.folder(True) as dfd, \
                    self.chunks(dfd, create=True):
                pass
            done = sum(min(m["chunk"], m["n"] - k * m["chunk"]) for k in range(nchunks)
                       if k not in missing)
            bar = Progress(plan.progress, m["n"], done, plan.desc)
            try:
                for written in plan.run_chunks(self, m, missing, bar.update):
                    for k, crc in written:
                        m["chunks"][k] = crc
                        in_files.add(k)
                    self.write_manifest(m)
            finally:
                bar.close()
        if in_files:
            self.assemble(m, in_files)
        m["complete"] = True
        self.write_manifest(m)
        with self.folder() as dfd:
            if dfd is not None:
                remove_at("chunks", dfd)

    def assemble(self, m: dict, in_files: set) -> None:
        """data.npy from the chunk files (and good regions of the old data.npy),
        each chunk's CRC checked as it is copied."""
        header = npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
        with self.folder(True) as dfd:
            old = None
            try:
                if len(in_files) < len(m["chunks"]):
                    try:
                        old = open_file("data.npy", dfd, shown=self.data_path)
                    except OSError:
                        old = None
                    if old is None:
                        raise Changed(-1)  # gone since it was checked
                with writing(f"cannot write {self.data_path}"), self.chunks(dfd) as cfd, \
                        atomic_open_at(dfd, "data.npy", self.data_path) as out:
                    out.write(header)
                    for k in range(len(m["chunks"])):
                        if k in in_files:
                            data = read_small(f"{k:06d}.bin", cfd, self.chunk_bytes(m, k),
                                               self.chunk_path(k)) if cfd is not None else None
                        else:
                            off, length = self.region(m, k)
                            data = os.pread(old, length, off)
                        if data is None or len(data) != self.chunk_bytes(m, k) or \
                                zlib.crc32(data) != m["chunks"][k]:
                            # changed under us since it was checked: start over
                            raise Changed(k)
                        out.write(data)
            finally:
                if old is not None:
                    os.close(old)


def item_bytes(m: dict) -> int:
    return int(np.prod(m["item_shape"], dtype=np.int64)) * DTYPES[m["dtype"]].itemsize


def wrap_manifest(m: dict) -> bytes:
    body = dict(m)
    return json.dumps({"manifest": body, "sha256": hashlib.sha256(canonical(body)).hexdigest()},
                      sort_keys=True, indent=1).encode()


def load_manifest(path, key: Optional[dict] = None) -> Optional[dict]:
    """An entry's manifest if it is intact (its own SHA-256 matches, its fields are
    consistent) and, when given, for ``key``; else None. Never raises on bad data,
    never follows a symlink or waits on a FIFO (None for them)."""
    try:
        return check_manifest(read_json(os.fspath(path)), key)
    except Damaged:
        return None


def check_manifest(obj: Optional[dict], key: Optional[dict] = None) -> Optional[dict]:
    """The manifest wrapped in ``obj`` (manifest.json as read) if intact and for
    ``key`` (see load_manifest), else None."""
    if not obj or not isinstance(obj.get("manifest"), dict):
        return None
    m = obj["manifest"]
    if obj.get("sha256") != hashlib.sha256(canonical(m)).hexdigest():
        return None
    try:
        ok = (m["format"] == "vggtl.features" and m["version"] == FORMAT_VERSION
              and _count(m["n"]) and _count(m["chunk"]) and _count(m["batch_size"])
              and m["dtype"] in DTYPES and isinstance(m["item_shape"], list)
              and 1 <= len(m["item_shape"]) <= 8 and all(_count(s) for s in m["item_shape"])
              and m["n"] * item_bytes(m) < 1 << 50
              and isinstance(m["chunks"], list)
              and len(m["chunks"]) == -(-m["n"] // m["chunk"])
              and all(c is None or (_count(c, 0) and c < 1 << 32) for c in m["chunks"])
              and isinstance(m["complete"], bool)
              and (not m["complete"] or all(c is not None for c in m["chunks"]))
              and isinstance(m["key"], dict))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not ok or (key is not None and m["key"] != json.loads(canonical(key))):
        return None
    return m


def _count(v, lo: int = 1) -> bool:
    """An int (not a bool) in [lo, 2**40): the bounds of every size a manifest holds."""
    return type(v) is int and lo <= v < 1 << 40


def new_manifest(key: dict, plan) -> dict:
    """A new entry's manifest for ``key``, laid out as the chunk source ``plan``
    says (images, item shape, dtype, chunk and batch size), no chunk done."""
    chunk = plan.chunk_rows()
    return {"format": "vggtl.features", "version": FORMAT_VERSION, "key": key,
            "n": plan.n, "item_shape": list(plan.item_shape), "dtype": plan.dtype.name,
            "chunk": chunk, "batch_size": plan.batch_size, "checksum": "crc32",
            "chunks": [None] * (-(-plan.n // chunk)), "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def same_layout(m: dict, plan) -> bool:
    return m["n"] == plan.n and m["item_shape"] == list(plan.item_shape) and \
        m["dtype"] == plan.dtype.name
