"""The feature cache: each image's frozen-backbone features computed once, kept on disk.

    F = base.extract(X)                 # (N, 7, 7, 512) float32, a read-only np.memmap
    F = base.extract(X)                 # again (this run, tomorrow, another process): no compute
    vggtl.cache.info()                  # entries and sizes
    vggtl.cache.clear()                 # remove them (or some: layer=, incomplete=, max_bytes=)
    vggtl.cache.set_size_limit("20GB")  # least recently used entries go first (or $VGGTL_CACHE_LIMIT)

Design
------
Key. An entry is named by a SHA-256 over a JSON record of everything that changes
the features and nothing else (:func:`make_key`): a digest of the weights of the
layers below the cut (kept per layer and hashed again only when its arrays are
replaced or a strided sample of their values changes, as fine-tuning in place
does; repeated calls cost microseconds, not 58 MB of hashing), the cut layer, the global pooling, the preprocessing (mode and its
affine parameters), the input size the network sees, the storage dtype, the
augmentation view (None, or the caller's ``(config digest, view index)``) and a
digest of X (:func:`array_digest`: dtype, shape and bytes; 8 MiB blocks hashed
in C with XXH64 under two seeds on several threads, their digests combined by
SHA-256; a memmap is read block by block; ~4 GB/s per core).
Batch size, threads, chunking and progress are not part of it.

Layout. ``<root>/<first 32 hex digits of the key>/`` (root: ``$XDG_CACHE_HOME/vggtl/
features``, else ``~/.cache/vggtl/features``, or the path given) holds:

    lock            flock'ed: shared to read, exclusive to write or remove
    manifest.json   the key, N, item shape, dtype, chunk size, batch size and one
                    CRC-32 per chunk (null: not done yet), wrapped with a SHA-256
                    of itself; replaced atomically after every chunk
    chunks/000007.bin   raw features of images [7*chunk, 8*chunk), while extracting
    data.npy        once every chunk is done: an .npy file, header then the chunks
                    in order; what a hit returns, memory-mapped read-only
    verified        (ino, size, mtime, ctime) of data.npy at its last full check

Write path (exclusive lock). Chunks missing or failing their CRC are computed in
order, each written to a temporary name, fsynced and renamed (vggtl._atomic), then
recorded in the manifest (also atomic); Ctrl-C or SIGKILL loses at most the chunk
being computed. When all are there, data.npy is assembled from the chunk files (and
the still-good regions of an older data.npy), every chunk's CRC checked again while
copying, written atomically; then the manifest says complete and the chunk files go.
The batching inside a chunk (its batch size) is stored, so a resumed entry equals an
uninterrupted one bit for bit on the same thread count.

Read path (shared lock). A hit needs a manifest whose self-digest and key match,
marked complete, and a data.npy of exactly the expected size and header. Its CRCs are
checked in full unless ``verified`` shows the same (inode, size, mtime, ctime) and was
taken more than 2 s after that ctime (a write in the same timestamp tick could hide
otherwise: git's "racily clean" rule); any change through the file system changes
ctime, so a truncated, damaged or replaced file is always checked. A failed check is
a miss: the exclusive path recomputes only the damaged chunks. A file is never
changed in place once renamed, so a memmap a user holds stays what it was.

Crash safety: every file is complete or absent (rename), and nothing is used unless
its CRC matches the manifest, which only records a chunk after the chunk is durable.
Killing a process at any point can cost work, never return wrong features.

Eviction: an entry's last use is its manifest's mtime (touched on every hit).
With a size limit, after each new entry the least recently used others that no
process holds are removed until the folder fits.

Concurrency: a second process (or thread) wanting an entry that is being written
waits on the lock, then reads it; the work is done once. Removing an entry (clear,
LRU eviction) takes its lock without waiting, renames the folder away, then deletes
it; a waiter that finds its lock file gone starts over. Without ``fcntl`` (Windows)
there is no locking.

Read-only or full disk: if the folder cannot be written, the features are computed in
memory (a plain ndarray) and a RuntimeWarning says so once per folder; complete
entries in a read-only folder are still read.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import _core

from ._arrays import as_images, release_pages
from ._atomic import atomic_path, atomic_write_bytes

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; single-process use stays safe
    fcntl = None

__all__ = ["extract", "info", "clear", "set_size_limit", "get_size_limit", "array_digest",
           "make_key", "default_dir", "forget_weights"]

FORMAT_VERSION = 1
# A chunk is at most CHUNK_BYTES of features and CHUNK_PIXELS of input pixels (the
# latter bounds the compute lost to a Ctrl-C: 32 images at 224 x 224, a few seconds).
CHUNK_BYTES = 4 << 20
CHUNK_PIXELS = 32 * 224 * 224
HASH_BLOCK = 8 << 20
RACY_NS = 2_000_000_000  # a stamp taken within 2 s of the file's ctime is not trusted
_KEY_HEX = 32
_ENTRY_RE = re.compile(r"^[0-9a-f]{%d}$" % _KEY_HEX)
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}

_state_lock = threading.Lock()
_warned: set = set()
_limit: Optional[int] = None
_limit_set = False
_verified_here: Dict[str, tuple] = {}  # data.npy path -> stamp checked by this process
_weight_memo: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _Unwritable(Exception):
    """The cache folder cannot be written (read-only, permissions, disk full)."""


# -- where ---------------------------------------------------------------------------
def default_dir() -> str:
    """``$XDG_CACHE_HOME/vggtl/features``, else ``~/.cache/vggtl/features``."""
    from .weights import vggtl_cache_dir
    return os.path.join(vggtl_cache_dir(), "features")


def _root(cache) -> str:
    if cache is True or cache is None:
        return os.path.abspath(default_dir())
    if isinstance(cache, (str, os.PathLike)):
        return os.path.abspath(os.fspath(cache))
    raise TypeError(f"cache: expected True, False or a folder path, got {type(cache).__name__}")


# -- size limit ----------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "t": 1000 ** 4, "tb": 1000 ** 4,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def _parse_size(v, what: str) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0:
        return int(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", v)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"{what}: expected a size in bytes (int) or a string like '20GB', "
                     f"'500MiB', got {v!r}")


def set_size_limit(limit) -> None:
    """Bound the cache's size (bytes, or "20GB", "500MiB"; None: no bound).

    After each new entry, the least recently used others are removed until the
    folder fits (an entry in use by another process is skipped; the newest entry is
    kept even if it alone is larger). The default comes from ``$VGGTL_CACHE_LIMIT``.
    """
    global _limit, _limit_set
    _limit, _limit_set = _parse_size(limit, "limit"), True


def get_size_limit() -> Optional[int]:
    """The size bound in bytes (None: unbounded); see :func:`set_size_limit`."""
    if _limit_set:
        return _limit
    env = os.environ.get("VGGTL_CACHE_LIMIT", "").strip()
    return _parse_size(env, "$VGGTL_CACHE_LIMIT") if env else None


# -- digests -------------------------------------------------------------------------
def block_digest(b: np.ndarray) -> bytes:
    """The 128-bit digest of one block of rows (its bytes in C order), as
    :func:`array_digest` takes it."""
    if not b.flags.c_contiguous:
        b = np.ascontiguousarray(b)
    return _core.digest128(memoryview(b.reshape(-1).view(np.uint8)))


def digest_rows(shape, dtype) -> int:
    """Rows per block of :func:`array_digest` for an array of ``shape`` and
    ``dtype``: block i is rows [i * rows, (i + 1) * rows)."""
    row = int(np.prod(tuple(shape)[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, HASH_BLOCK // max(1, row))


def combine_digests(shape, dtype, digests) -> str:
    """:func:`array_digest` from the shape, dtype and the blocks' digests in order
    (so that blocks can be hashed elsewhere, e.g. by vggtl.distributed's workers)."""
    h = hashlib.sha256(json.dumps({"dtype": np.dtype(dtype).str,
                                   "shape": [int(s) for s in shape]}).encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


def array_digest(X) -> str:
    """Digest (hex) of an array's dtype, shape and bytes in C order, as a tree: a
    SHA-256 of the header and of each 8 MiB block's 128-bit digest, blocks hashed
    in C (XXH64 with two seeds, ~4 GB/s per core, GIL released) on several
    threads. A memmap is read block by block, never loaded whole."""
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X
    shape = X.shape
    if X.ndim == 0:
        X = X.reshape(1)
    rows = digest_rows(X.shape, X.dtype)
    starts = list(range(0, len(X), rows))

    def one(i):
        d = block_digest(X[i:i + rows])
        release_pages(X, i, i + rows)  # a memmap is never resident whole
        return d

    if len(starts) < 2:
        digests = [one(i) for i in starts]
    else:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(starts))) as ex:
            digests = list(ex.map(one, starts))
    return combine_digests(shape, X.dtype, digests)


def _sample(k: np.ndarray, b: np.ndarray) -> bytes:
    # every 4093rd kernel value and the whole bias: any training step changes it,
    # so weights updated in place are noticed even without set_weights
    return k.reshape(-1)[::4093].tobytes() + b.tobytes()


def _weights_digest(base, stop: int) -> str:
    """Digest of the weights of every layer up to index ``stop``; each layer's own
    digest is kept until its arrays change (other objects or other values)."""
    from .vgg16 import CONV_LAYERS, DENSE_LAYERS, _INDEX
    memo = _weight_memo.setdefault(base, {})
    h = hashlib.sha256()
    for name in CONV_LAYERS + DENSE_LAYERS:
        if _INDEX[name] > stop or name not in base._weights:
            continue
        k, b = base._weights[name]
        sample = _sample(k, b)
        m = memo.get(name)
        if m is None or m[0]() is not k or m[1]() is not b or m[2] != sample:
            d = hashlib.sha256(repr((k.dtype.str, k.shape, b.shape)).encode())
            d.update(memoryview(np.ascontiguousarray(k).reshape(-1).view(np.uint8)))
            d.update(memoryview(np.ascontiguousarray(b).reshape(-1).view(np.uint8)))
            m = (weakref.ref(k), weakref.ref(b), sample, d.hexdigest())
            memo[name] = m
        h.update(f"{name}:{m[3]};".encode())
    return h.hexdigest()


def forget_weights(base) -> None:
    """Drop the remembered weight digests of ``base`` (they are recomputed on the
    next extract). Only needed after changing weight arrays in place in a way the
    sampled check could miss; :meth:`VGG16.set_weights` needs nothing."""
    _weight_memo.pop(base, None)


def make_key(base, layer=None, dtype="float32", view=None, input_size=None,
             x_digest: Optional[str] = None, X=None) -> dict:
    """The record an entry's name is the digest of: everything that changes the
    features. ``input_size`` (h, w) defaults to X's; ``x_digest`` to
    ``array_digest(X)``."""
    from .vgg16 import LAYER_NAMES, _preprocess_params
    stop, pooling = base._resolve_layer(layer)
    if x_digest is None:
        if X is None:
            raise ValueError("make_key: needs X or x_digest")
        x_digest = array_digest(X)
    if input_size is None:
        input_size = tuple(as_images(X).shape[1:3])
    scale, shift, rev = _preprocess_params(base.preprocess)
    return {
        "format": FORMAT_VERSION,
        "weights": _weights_digest(base, stop),
        "layer": LAYER_NAMES[stop],
        "pooling": pooling,
        "preprocess": {"mode": base.preprocess, "scale": [float(v) for v in scale],
                       "shift": [float(v) for v in shift], "reverse_channels": bool(rev)},
        "input_size": [int(v) for v in input_size],
        "dtype": _check_dtype(dtype).name,
        "view": None if view is None else [str(view[0]), int(view[1])],
        "x": x_digest,
        # Winograd and im2col features differ in the last bits, bf16 ones in the
        # third digit: an entry holds one algorithm's per layer (as the setting
        # and the model's precision chose them)
        "conv": _conv_algos(input_size, stop, base.precision),
    }


_ALGO_LETTERS = {"im2col": "i", "winograd": "w", "winograd6": "6", "winograd_bf16": "b"}


def _conv_algos(input_size, stop: int, precision: str = "fp32") -> str:
    """The algorithm of each convolution up to layer ``stop``, one letter each
    ('i' im2col, 'w' Winograd F(4x4), '6' Winograd F(6x6), 'b' bf16 Winograd)."""
    from .dispatch import conv_plan
    from .vgg16 import LAYER_NAMES
    plan = conv_plan(tuple(input_size), precision=precision)
    return "".join(_ALGO_LETTERS[plan[n]] for n in LAYER_NAMES[:stop + 1] if n in plan)


def _key_id(key: dict) -> str:
    return hashlib.sha256(_canonical(key)).hexdigest()[:_KEY_HEX]


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _check_dtype(dtype) -> np.dtype:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float16', got {dtype!r}")
    return DTYPES[name]


def _check_view(view, transform):
    if view is not None:
        if not (isinstance(view, (tuple, list)) and len(view) == 2 and isinstance(view[0], str)
                and isinstance(view[1], (int, np.integer)) and not isinstance(view[1], bool)):
            raise ValueError(f"view: expected None or (config digest str, view index int), "
                             f"got {view!r}")
    if transform is not None:
        if not callable(transform):
            raise TypeError(f"transform: expected a callable (images, indices) -> images, "
                            f"got {type(transform).__name__}")
        if view is None:
            raise ValueError("transform: needs view=(config digest, view index), so that the "
                             "cache tells the transformed features from the plain ones")


# -- file helpers ----------------------------------------------------------------------
@contextmanager
def _writing(what: str):
    """File system errors while writing the cache become _Unwritable."""
    try:
        yield
    except OSError as e:
        raise _Unwritable(f"{what}: {e.strerror or e}") from e


def _npy_header(shape, dtype: np.dtype) -> bytes:
    bio = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        bio, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)})
    return bio.getvalue()


def _read_json(path) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 24)
        obj = json.loads(raw)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError, RecursionError, MemoryError):
        return None  # unreadable, not JSON, or nested too deep: as if absent


def _tree_size(path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        total += _tree_size(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        pass
    return total


def _stamp(st: os.stat_result) -> list:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


# -- locks -------------------------------------------------------------------------
class _Locked:
    """An flock on ``<entry>/lock``, checked to be the entry's current lock file
    (an entry removed while we waited has its folder renamed away: start over)."""

    def __init__(self, folder: str, exclusive: bool, create: bool, blocking: bool = True,
                 on_wait: Optional[Callable[[], None]] = None):
        self.folder, self.exclusive, self.create = folder, exclusive, create
        self.blocking, self.on_wait = blocking, on_wait
        self.fd: Optional[int] = None
        self.busy = False

    def __enter__(self):
        path = os.path.join(self.folder, "lock")
        for _ in range(100):
            if self.create:
                with _writing(f"cannot create {self.folder}"):
                    os.makedirs(self.folder, exist_ok=True)
                    try:
                        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                    except FileNotFoundError:
                        continue  # the folder was removed between the two calls
            else:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    return self  # no entry, or no lock readable: read without one
            if fcntl is None:
                self.fd = fd
                return self
            mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
            try:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not self.blocking:
                        os.close(fd)
                        self.busy = True
                        return self
                    if self.on_wait is not None:
                        self.on_wait()
                    fcntl.flock(fd, mode)
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # removed (or removed and made again) while we waited: again
        raise _Unwritable(f"cannot lock {path}: it keeps being removed")

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
        return False


# -- one entry ---------------------------------------------------------------------------
class _Entry:
    def __init__(self, root: str, key: dict):
        self.root, self.key = root, key
        self.id = _key_id(key)
        self.dir = os.path.join(root, self.id)
        self.manifest_path = os.path.join(self.dir, "manifest.json")
        self.data_path = os.path.join(self.dir, "data.npy")
        self.stamp_path = os.path.join(self.dir, "verified")
        self.chunk_dir = os.path.join(self.dir, "chunks")

    def chunk_path(self, k: int) -> str:
        return os.path.join(self.chunk_dir, f"{k:06d}.bin")

    # manifest ---------------------------------------------------------------
    def read_manifest(self) -> Optional[dict]:
        return load_manifest(self.manifest_path, self.key)

    def write_manifest(self, m: dict) -> None:
        with _writing(f"cannot write {self.manifest_path}"):
            atomic_write_bytes(self.manifest_path, _wrap_manifest(m))

    # verification ------------------------------------------------------------
    def region(self, m: dict, k: int) -> Tuple[int, int]:
        """(offset, length) of chunk k in data.npy."""
        item = _item_bytes(m)
        start = k * m["chunk"]
        rows = min(m["chunk"], m["n"] - start)
        return len(_npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])) + start * item, \
            rows * item

    def chunk_bytes(self, m: dict, k: int) -> int:
        return self.region(m, k)[1]

    def bad_regions(self, m: dict) -> List[int]:
        """Chunks whose region in data.npy is short or fails its CRC (all when the
        file is missing or its header differs)."""
        ks = list(range(len(m["chunks"])))
        try:
            fd = os.open(self.data_path, os.O_RDONLY)
        except OSError:
            return ks
        try:
            header = _npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
            if os.pread(fd, len(header), 0) != header:
                return ks

            def check(k):
                if m["chunks"][k] is None:
                    return k
                off, length = self.region(m, k)
                data = os.pread(fd, length, off)
                return None if len(data) == length and zlib.crc32(data) == m["chunks"][k] else k

            if len(ks) < 2:
                res = [check(k) for k in ks]
            else:
                with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
                    res = list(ex.map(check, ks))
            return [k for k in res if k is not None]
        finally:
            os.close(fd)

    def write_chunk(self, k: int, data: np.ndarray) -> int:
        """Write chunk k's features atomically (complete or absent, never half);
        returns its CRC-32, which the manifest records once the file is durable."""
        raw = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        crc = zlib.crc32(raw)
        with _writing(f"cannot write {self.chunk_path(k)}"):
            with atomic_path(self.chunk_path(k)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(raw)
        return crc

    def chunk_file_ok(self, m: dict, k: int) -> bool:
        if m["chunks"][k] is None:
            return False
        try:
            with open(self.chunk_path(k), "rb") as f:
                data = f.read(self.chunk_bytes(m, k) + 1)
        except OSError:
            return False
        return len(data) == self.chunk_bytes(m, k) and zlib.crc32(data) == m["chunks"][k]

    def trusted(self, st: os.stat_result) -> bool:
        """data.npy is as it was at a full check (see the module docstring)."""
        stamp = _stamp(st)
        here = _verified_here.get(self.data_path)
        if here is not None and here[0] == stamp and here[1] - st.st_ctime_ns > RACY_NS:
            return True
        rec = _read_json(self.stamp_path)
        return bool(rec) and rec.get("stamp") == stamp and \
            isinstance(rec.get("at"), int) and rec["at"] - st.st_ctime_ns > RACY_NS

    def record_verified(self, st: os.stat_result, at: int) -> None:
        _verified_here[self.data_path] = (_stamp(st), at)
        try:
            atomic_write_bytes(self.stamp_path, _canonical({"stamp": _stamp(st), "at": at}))
        except OSError:
            pass  # read-only: this process remembers it

    # reading --------------------------------------------------------------------
    def try_read(self, check: bool = True) -> Optional[np.ndarray]:
        """The complete entry as a read-only memmap, or None (missing, incomplete,
        damaged). ``check=False`` after this process wrote it."""
        m = self.read_manifest()
        if m is None or not m["complete"]:
            return None
        try:
            st = os.stat(self.data_path)
        except OSError:
            return None
        header = _npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
        if st.st_size != len(header) + m["n"] * _item_bytes(m):
            return None
        if check and not self.trusted(st):
            at = time.time_ns()
            if self.bad_regions(m):
                return None
            self.record_verified(st, at)
        try:
            with open(self.data_path, "rb") as f:
                if f.read(len(header)) != header:
                    return None
            arr = np.load(self.data_path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if arr.shape != (m["n"], *m["item_shape"]) or arr.dtype != DTYPES[m["dtype"]]:
            return None
        self.touch()
        return arr

    def touch(self) -> None:
        try:  # least-recently-used order is the manifest's mtime
            os.utime(self.manifest_path)
        except OSError:
            pass

    # writing --------------------------------------------------------------------
    def clean_temporaries(self) -> None:
        for folder in (self.dir, self.chunk_dir):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(".part"):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    def drop_leftovers(self) -> None:
        """Chunk files of a complete entry (a process killed between the last
        manifest write and their removal): removed if nobody holds the entry."""
        try:
            with _Locked(self.dir, exclusive=True, create=False, blocking=False) as lk:
                if lk.fd is not None:
                    m = self.read_manifest()
                    if m is not None and m["complete"]:
                        shutil.rmtree(self.chunk_dir, ignore_errors=True)
        except OSError:
            pass

    def reset(self) -> None:
        """Forget everything but the lock (a manifest of another format or key)."""
        with _writing(f"cannot clear {self.dir}"):
            shutil.rmtree(self.chunk_dir, ignore_errors=True)
            for p in (self.data_path, self.stamp_path, self.manifest_path):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

    def build(self, plan: "_Plan") -> None:
        """Compute what is missing and assemble data.npy (exclusive lock held)."""
        self.clean_temporaries()
        m = self.read_manifest()
        if m is None or not _same_layout(m, plan):
            self.reset()
            m = plan.new_manifest(self.key)
            self.write_manifest(m)
        nchunks = len(m["chunks"])
        in_data = set(range(nchunks)) - set(self.bad_regions(m)) \
            if os.path.exists(self.data_path) else set()
        in_files = {k for k in range(nchunks) if k not in in_data and self.chunk_file_ok(m, k)}
        missing = [k for k in range(nchunks) if k not in in_data and k not in in_files]
        if missing or m["complete"]:
            for k in missing:
                m["chunks"][k] = None
            m["complete"] = False
            self.write_manifest(m)
        if missing:
            with _writing(f"cannot create {self.chunk_dir}"):
                os.makedirs(self.chunk_dir, exist_ok=True)
            done = sum(min(m["chunk"], m["n"] - k * m["chunk"]) for k in range(nchunks)
                       if k not in missing)
            bar = _Progress(plan.progress, m["n"], done, plan.desc)
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
        shutil.rmtree(self.chunk_dir, ignore_errors=True)

    def assemble(self, m: dict, in_files: set) -> None:
        """data.npy from the chunk files (and good regions of the old data.npy),
        each chunk's CRC checked as it is copied."""
        header = _npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
        old = None
        try:
            if len(in_files) < len(m["chunks"]):
                try:
                    old = open(self.data_path, "rb")  # noqa: SIM115 (closed below)
                except OSError:
                    raise _Changed(-1) from None  # gone since it was checked
            with _writing(f"cannot write {self.data_path}"):
                with atomic_path(self.data_path) as tmp:
                    with open(tmp, "wb") as out:
                        out.write(header)
                        for k in range(len(m["chunks"])):
                            if k in in_files:
                                with open(self.chunk_path(k), "rb") as f:
                                    data = f.read()
                            else:
                                off, length = self.region(m, k)
                                old.seek(off)
                                data = old.read(length)
                            if len(data) != self.chunk_bytes(m, k) or \
                                    zlib.crc32(data) != m["chunks"][k]:
                                # changed under us since it was checked: start over
                                raise _Changed(k)
                            out.write(data)
        finally:
            if old is not None:
                old.close()


class _Changed(Exception):
    pass


def _item_bytes(m: dict) -> int:
    return int(np.prod(m["item_shape"], dtype=np.int64)) * DTYPES[m["dtype"]].itemsize


def _wrap_manifest(m: dict) -> bytes:
    body = dict(m)
    return json.dumps({"manifest": body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()},
                      sort_keys=True, indent=1).encode()


def load_manifest(path, key: Optional[dict] = None) -> Optional[dict]:
    """An entry's manifest if it is intact (its own SHA-256 matches, its fields are
    consistent) and, when given, for ``key``; else None. Never raises on bad data."""
    obj = _read_json(path)
    if not obj or not isinstance(obj.get("manifest"), dict):
        return None
    m = obj["manifest"]
    if obj.get("sha256") != hashlib.sha256(_canonical(m)).hexdigest():
        return None
    try:
        ok = (m["format"] == "vggtl.features" and m["version"] == FORMAT_VERSION
              and _count(m["n"]) and _count(m["chunk"]) and _count(m["batch_size"])
              and m["dtype"] in DTYPES and isinstance(m["item_shape"], list)
              and 1 <= len(m["item_shape"]) <= 8 and all(_count(s) for s in m["item_shape"])
              and m["n"] * _item_bytes(m) < 1 << 50
              and isinstance(m["chunks"], list)
              and len(m["chunks"]) == -(-m["n"] // m["chunk"])
              and all(c is None or (_count(c, 0) and c < 1 << 32) for c in m["chunks"])
              and isinstance(m["complete"], bool)
              and (not m["complete"] or all(c is not None for c in m["chunks"]))
              and isinstance(m["key"], dict))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not ok or (key is not None and m["key"] != json.loads(_canonical(key))):
        return None
    return m


def _count(v, lo: int = 1) -> bool:
    """An int (not a bool) in [lo, 2**40): the bounds of every size a manifest holds."""
    return type(v) is int and lo <= v < 1 << 40


def _same_layout(m: dict, plan: "_Plan") -> bool:
    return m["n"] == plan.n and m["item_shape"] == list(plan.item_shape) and \
        m["dtype"] == plan.dtype.name


# -- computing -----------------------------------------------------------------------
class _Plan:
    """What to compute for an entry and how (the base, X, the layer, the dtype)."""

    def __init__(self, base, X, layer, dtype, batch_size, transform, item_shape, input_size,
                 progress, view):
        self.base, self.X, self.layer, self.dtype = base, X, layer, dtype
        self.batch_size, self.transform = batch_size, transform
        self.item_shape, self.input_size, self.progress = tuple(item_shape), input_size, progress
        self.n = len(X)
        self.view = view
        from .vgg16 import LAYER_NAMES
        name = LAYER_NAMES[base._resolve_layer(layer)[0]]
        self.desc = f"vggtl: features {name}" + (f" view {view[1]}" if view is not None else "")

    def chunk_rows(self) -> int:
        item = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        pixels = self.input_size[0] * self.input_size[1]
        rows = max(1, min(CHUNK_BYTES // max(1, item), CHUNK_PIXELS // max(1, pixels)))
        if rows > self.batch_size:
            rows -= rows % self.batch_size
        return min(rows, self.n)

    def new_manifest(self, key: dict) -> dict:
        chunk = self.chunk_rows()
        return {"format": "vggtl.features", "version": FORMAT_VERSION, "key": key,
                "n": self.n, "item_shape": list(self.item_shape), "dtype": self.dtype.name,
                "chunk": chunk, "batch_size": self.batch_size, "checksum": "crc32",
                "chunks": [None] * (-(-self.n // chunk)), "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def run_chunks(self, entry: "_Entry", m: dict, missing: List[int],
                   update: Callable[[int], None]):
        """Compute the chunks ``missing`` of the entry whose manifest is ``m`` into
        chunk files, yielding lists of (chunk, CRC) as they become durable (the
        caller records them in the manifest). Here: one after the other, in this
        process; vggtl.distributed's plan runs them on a Dask cluster."""
        for k in missing:
            start = k * m["chunk"]
            stop = min(m["n"], start + m["chunk"])
            data = self.compute(start, stop, m["batch_size"], update)
            yield [(k, entry.write_chunk(k, data))]

    def compute(self, start: int, stop: int, batch_size: int,
                update: Callable[[int], None] = lambda k: None) -> np.ndarray:
        """Features of images [start, stop) in batches of ``batch_size``, as stored."""
        out = np.empty((stop - start, *self.item_shape), dtype=self.dtype)
        for i in range(start, stop, batch_size):
            j = min(stop, i + batch_size)
            xb = self.X[i:j]
            if self.transform is not None:
                xb = self.transform(xb, np.arange(i, j, dtype=np.int64))
            f = self.base.predict(xb, batch_size=batch_size, layer=self.layer)
            release_pages(self.X, i, j)
            if f.shape[1:] != self.item_shape:
                raise ValueError(f"transform: images {i}..{j - 1} give features of shape "
                                 f"{f.shape[1:]}, expected {self.item_shape} (every batch must "
                                 f"come out of the transform at one size)")
            if self.dtype == np.float16:
                h = f.astype(np.float16)
                if not np.isfinite(h).all():
                    raise ValueError("dtype='float16': features beyond float16's range "
                                     "(65504); use dtype='float32'")
                out[i - start:j - start] = h
            else:
                out[i - start:j - start] = f
            update(j - i)
        return out


class _Progress:
    """tqdm with images/s when asked and installed; else silent."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _warn_once(root: str, why: str) -> None:
    with _state_lock:
        if root in _warned:
            return
        _warned.add(root)
    warnings.warn(f"vggtl: the feature cache in {root} cannot be written ({why}); features "
                  f"are computed in memory, without caching", RuntimeWarning, stacklevel=4)


# -- the public entry point ----------------------------------------------------------------
def extract(base, X, layer: Optional[str] = None, cache=True, batch_size: int = 32,
            progress: bool = True, dtype="float32", view=None, transform=None,
            x_digest: Optional[str] = None) -> np.ndarray:
    """Features of images X at ``layer`` from the cache, computing only what is missing.

    Parameters
    ----------
    base : VGG16
    X : array (N, H, W, 1|3) or (N, H, W), uint8 or float (a memmap is fine)
    layer : None or a layer name
        None: the base's output (block5_pool, globally pooled when the base has
        ``pooling``), as ``base.predict``; a name cuts there ("block4_pool").
    cache : True, False or a folder
        True: ``$XDG_CACHE_HOME/vggtl/features`` (else ``~/.cache/vggtl/features``);
        False: compute in memory, store nothing.
    batch_size : images per call into the core (an entry keeps the batch size it
        was started with, so a resumed extraction computes exactly as before).
    progress : a tqdm bar with images/s while computing; silent on a hit.
    dtype : "float32" or "float16" (half the disk; within 1e-3 relative).
    view : None, or ``(config digest, view index)`` naming an augmented view.
    transform : with ``view``: ``transform(images, indices) -> images`` applied to
        every batch before the network (indices: the images' positions in X, int64),
        deterministic in (view, indices); its output size must not vary.
    x_digest : ``array_digest(X)`` when the caller already has it (saves hashing X
        again, e.g. for several views of one X).

    Returns
    -------
    A read-only ``np.memmap`` of shape (N, *base.output_shape(layer)) and ``dtype``
    (a plain ndarray with ``cache=False``, for N == 0, or when the folder cannot be
    written, which a RuntimeWarning says once). Ctrl-C stops the extraction; what
    was done is kept and the next call resumes there.
    """
    from .vgg16 import VGG16
    if not isinstance(base, VGG16):
        raise TypeError(f"base: expected a vggtl.VGG16, got {type(base).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    dt = _check_dtype(dtype)
    _check_view(view, transform)
    if cache is not False:
        root = _root(cache)
    X = as_images(X)
    n, h, w, c = X.shape
    base._resolve_layer(layer)
    input_size = (h, w)
    if transform is not None and n:
        probe = as_images(transform(X[:1], np.zeros(1, dtype=np.int64)), "transform output")
        input_size, c = probe.shape[1:3], probe.shape[3]
    base._check_image_size(*input_size, c)
    item_shape = base.output_shape(layer, input_shape=input_size)
    plan = _Plan(base, X, layer, dt, batch_size, transform, item_shape, input_size,
                 bool(progress), view)
    if cache is False or n == 0:
        return _in_memory(plan)
    key = make_key(base, layer, dt.name, view, input_size,
                   x_digest=x_digest if x_digest is not None else array_digest(X))
    entry = _Entry(root, key)
    try:
        return _cached(entry, plan)
    except _Unwritable as e:
        _warn_once(root, str(e))
        return _in_memory(plan)


def _in_memory(plan: _Plan) -> np.ndarray:
    bar = _Progress(plan.progress, plan.n, 0, plan.desc)
    try:
        return plan.compute(0, plan.n, plan.batch_size, bar.update)
    finally:
        bar.close()


def _cached(entry: _Entry, plan: _Plan) -> np.ndarray:
    def waiting():
        if plan.progress:
            print(f"vggtl: waiting for another process computing {entry.dir}", file=sys.stderr,
                  flush=True)

    with _Locked(entry.dir, exclusive=False, create=False, on_wait=waiting):
        F = entry.try_read()
    if F is not None:
        if os.path.isdir(entry.chunk_dir):
            entry.drop_leftovers()
        return F

    for _ in range(3):
        with _Locked(entry.dir, exclusive=True, create=True, on_wait=waiting):
            F = entry.try_read()
            if F is not None:
                return F
            try:
                entry.build(plan)
            except _Changed:
                continue  # a file changed while it was copied: check everything again
            F = entry.try_read(check=False)
        if F is not None:
            _enforce_limit(entry.root, keep=entry.dir)
            return F
    raise RuntimeError(f"vggtl: the feature cache entry {entry.dir} keeps changing while it is "
                       f"written; is another program modifying it?")


# -- info, clear, eviction ---------------------------------------------------------------
def _entries(root: str) -> List[str]:
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(os.path.join(root, nm) for nm in names if _ENTRY_RE.match(nm))


def _describe(folder: str) -> dict:
    m = load_manifest(os.path.join(folder, "manifest.json"))
    try:
        used = os.stat(os.path.join(folder, "manifest.json")).st_mtime
    except OSError:
        try:
            used = os.stat(folder).st_mtime
        except OSError:
            used = 0.0
    d = {"id": os.path.basename(folder), "path": folder, "bytes": _tree_size(folder),
         "last_used": used, "complete": False, "valid": m is not None}
    if m is not None:
        done = sum(c is not None for c in m["chunks"])
        d.update({"layer": m["key"].get("layer"), "pooling": m["key"].get("pooling"),
                  "n": m["n"], "shape": tuple([m["n"]] + m["item_shape"]), "dtype": m["dtype"],
                  "view": m["key"].get("view"), "conv": m["key"].get("conv"),
                  "complete": m["complete"],
                  "chunks_done": done, "chunks": len(m["chunks"]), "created": m.get("created")})
    return d


def info(path=None) -> dict:
    """What the cache holds: ``{"path", "entries": [...], "bytes", "limit"}``, each
    entry a dict of its id, folder, layer, pooling, n, shape, dtype, view, conv
    (each convolution's algorithm, one letter: 'i' im2col, 'w' Winograd, 'b' bf16
    Winograd), bytes, complete, chunks done / total and last use (seconds since
    the epoch), least recently used first."""
    root = _root(path)
    entries = sorted((_describe(d) for d in _entries(root)), key=lambda e: e["last_used"])
    return {"path": root, "entries": entries, "bytes": sum(e["bytes"] for e in entries),
            "limit": get_size_limit()}


def _remove(root: str, folder: str) -> bool:
    """Remove one entry unless another process holds it; True if removed."""
    with _Locked(folder, exclusive=True, create=False, blocking=False) as lk:
        if lk.busy:
            return False
        trash = os.path.join(root, f".trash-{os.path.basename(folder)}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, trash)  # one step: nobody sees a half-removed entry
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise PermissionError(f"cannot remove {folder}: {e.strerror}") from None
            raise
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _clean_trash(root: str) -> None:
    try:
        names = os.listdir(root)
    except OSError:
        return
    for nm in names:
        if nm.startswith(".trash-"):
            shutil.rmtree(os.path.join(root, nm), ignore_errors=True)


def clear(path=None, *, layer: Optional[str] = None, incomplete: Optional[bool] = None,
          max_bytes=None) -> dict:
    """Remove cache entries; returns ``{"removed", "bytes_freed", "busy"}``.

    With no filter, every entry goes. ``layer="block4_pool"``: only that cut;
    ``incomplete=True``: only unfinished extractions (False: only finished ones);
    ``max_bytes``: least recently used entries first, until the rest fits. Entries
    another process is writing or reading right now are left (counted in "busy").
    """
    root = _root(path)
    limit = _parse_size(max_bytes, "max_bytes")
    entries = info(root)["entries"]
    chosen = [e for e in entries
              if (layer is None or e.get("layer") == layer)
              and (incomplete is None or (not e["complete"]) == bool(incomplete))]
    total = sum(e["bytes"] for e in entries)
    removed = freed = busy = 0
    for e in chosen:  # least recently used first
        if limit is not None and total <= limit:
            break
        if _remove(root, e["path"]):
            removed += 1
            freed += e["bytes"]
            total -= e["bytes"]
        else:
            busy += 1
    _clean_trash(root)
    return {"removed": removed, "bytes_freed": freed, "busy": busy}


def _enforce_limit(root: str, keep: str) -> None:
    limit = get_size_limit()
    if limit is None:
        return
    entries = info(root)["entries"]
    total = sum(e["bytes"] for e in entries)
    for e in entries:  # least recently used first
        if total <= limit:
            break
        if e["path"] == keep:
            continue
        try:
            if _remove(root, e["path"]):
                total -= e["bytes"]
        except OSError:
            return
    _clean_trash(root)
