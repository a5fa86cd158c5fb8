"""The feature cache: each image's frozen-backbone features computed once, kept on disk.

    F = base.extract(X)                 # (N, 7, 7, 512) float32, a read-only np.memmap
    F = base.extract(X)                 # again (this run, tomorrow, another process): no compute
    vggtl.cache.info()                  # entries and sizes
    vggtl.cache.clear()                 # remove them (or some: layer=, incomplete=, max_bytes=)
    vggtl.cache.set_size_limit("20GB")  # least recently used entries go first (or $VGGTL_CACHE_LIMIT;
                                        # default: a quarter of the free disk plus what it holds)

Design
------
Key. An entry is named by a SHA-256 over a JSON record of everything that changes
the features and nothing else (:func:`make_key`): the key's format version, a
SHA-256 of all the weights of the layers below the cut (every value, hashed again
on every call: 58 MB for the whole conv base, tens of milliseconds on a CPU with
SHA instructions, so a weight changed in place by any path can never serve old
features), the cut layer, the global pooling, the preprocessing (mode and its
affine parameters), the input size the network sees, the storage dtype, the
augmentation view (None, or the caller's ``(config digest, view index)``), each
convolution's algorithm, and a digest of X (:func:`array_digest`: dtype, shape and
bytes; a SHA-256 of each 8 MiB block of rows, on several threads without the GIL,
the blocks' digests hashed again with the dtype and shape; a memmap is read block
by block). Batch size, threads, chunking and progress are not part of it. The
digests are cryptographic: arrays that share a key are the same array, even when
someone crafts them to collide.

Layout. ``<root>/<first 32 hex digits of the key>/`` (root: ``$XDG_CACHE_HOME/vggtl/
features``, else ``~/.cache/vggtl/features``, or the path given) holds:

    vggtl-entry     vggtl's marker: only a folder carrying it is ever written or
                    removed (the folder is made under another name with it, then
                    renamed into place)
    lock            flock'ed: shared to read, exclusive to write or remove; a
                    writer records its process id and host in it
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

A shared folder. Every file of an entry is opened relative to the entry folder's
descriptor, with ``O_NOFOLLOW`` and ``O_NONBLOCK``, and must be a regular file (the
folders: folders); a symlink, a FIFO or any other special file where vggtl expects
its own, or a folder without vggtl's marker, makes the entry damaged: the features
are computed in memory, with one RuntimeWarning, and nothing is written or read
through it. Files get ``0666`` less the umask (a replaced file keeps its mode), so
the members of a group share a cache folder under ``umask 002``.

Eviction: an entry's last use is its manifest's mtime (touched on every hit).
With a size limit (by default a quarter of the free disk plus what the cache holds,
see :func:`get_size_limit`), after each new entry the least recently used others that no
process holds are removed until the folder fits. Only folders carrying vggtl's
marker (or, from vggtl before it, a manifest of this cache's format) are entries;
nothing else under the root is listed, evicted or cleared.

Concurrency: a second process (or thread) wanting an entry that is being written
waits on the lock, then reads it; the work is done once. The wait is bounded: when
nothing in the entry has changed for ``LOCK_WAIT_S`` seconds (a holder stopped or
hung; a working writer changes the entry at every chunk), the features are computed
in memory, with one RuntimeWarning naming the lock and its holder. Removing an entry
(clear, LRU eviction) takes its lock without waiting, renames the folder away, then
deletes it; a waiter that finds its lock file gone starts over. Without ``fcntl``
(Windows) there is no locking.

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
import secrets
import socket
import stat
import sys
import threading
import time
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ._arrays import as_images, release_pages
from ._atomic import O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, atomic_open_at, atomic_write_at

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; single-process use stays safe
    fcntl = None

__all__ = ["extract", "info", "clear", "set_size_limit", "get_size_limit", "array_digest",
           "make_key", "default_dir", "forget_weights"]

# The key's and the manifest's format: entries of another version are never read
# (their keys name other folders, their manifests are refused) but recomputed.
FORMAT_VERSION = 2
# A chunk is at most CHUNK_BYTES of features and CHUNK_PIXELS of input pixels (the
# latter bounds the compute lost to a Ctrl-C: 32 images at 224 x 224, a few seconds).
CHUNK_BYTES = 4 << 20
CHUNK_PIXELS = 32 * 224 * 224
HASH_BLOCK = 8 << 20
RACY_NS = 2_000_000_000  # a stamp taken within 2 s of the file's ctime is not trusted
# Seconds a lock may stay held while nothing in its entry changes before a waiter
# stops waiting and computes without the cache (a writer changes the entry at
# least once per chunk, and a chunk is a few seconds of work).
LOCK_WAIT_S = 600.0
MARKER = "vggtl-entry"
_MARKER_TEXT = b"vggtl feature cache entry\n"
_X_DIGEST = re.compile(r"sha256tree:[0-9a-f]{64}")
_KEY_HEX = 32
_ENTRY_RE = re.compile(r"^[0-9a-f]{%d}$" % _KEY_HEX)
_STAGE_AGE_S = 60.0  # a half-made entry folder (".new-...") older than this is a leftover
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}

_state_lock = threading.Lock()
_warned: set = set()
_limit: Optional[int] = None
_limit_set = False
_verified_here: Dict[str, tuple] = {}  # data.npy path -> stamp checked by this process
_stalled: Dict[str, tuple] = {}  # lock path -> the entry as it was when a wait gave up


class _Unwritable(Exception):
    """The cache folder cannot be written (read-only, permissions, disk full)."""


class _Damaged(Exception):
    """Something in an entry is not what vggtl puts there (a symlink, a FIFO or
    another special file, a folder without vggtl's marker): the entry is not used."""


class _Stalled(Exception):
    """An entry's lock stayed held while nothing in the entry changed."""

    def __init__(self, lock: str, holder: str, seconds: float):
        super().__init__(f"the feature cache entry lock {lock} is held by {holder} and nothing "
                         f"in the entry has changed for {seconds:.0f} s (a stopped or hung "
                         f"process?)")
        self.lock = lock


# -- where ---------------------------------------------------------------------------
def default_dir() -> str:
    """``$XDG_CACHE_HOME/vggtl/features``, else ``~/.cache/vggtl/features``."""
    from .weights import vggtl_cache_dir
    return os.path.join(vggtl_cache_dir(), "features")


def _root(cache, what: str = "cache") -> str:
    kinds = "True, False or a folder path" if what == "cache" else "None or a folder path"
    if cache is True or cache is None:
        return os.path.abspath(default_dir())
    if isinstance(cache, (str, os.PathLike)):
        path = os.fspath(cache)
        if not isinstance(path, str):
            raise TypeError(f"{what}: expected a folder path (str), got {path!r}")
        if path == "":
            raise ValueError(f"{what}: expected {kinds}, got an empty path "
                             f"'' (the current folder is never taken by default; pass '.' for it)")
        return os.path.abspath(path)
    raise TypeError(f"{what}: expected {kinds}, got {type(cache).__name__}")


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


# with no limit set, the cache may take this fraction of the space it could have:
# the free space of its file system plus what it already holds
DEFAULT_LIMIT_FRACTION = 0.25
_NO_LIMIT = ("none", "off", "unlimited")
_DEFAULT = ("auto", "default")


def set_size_limit(limit) -> None:
    """Bound the cache's size (bytes, or "20GB", "500MiB"; None or "none": no bound;
    "auto": back to the default).

    After each new entry, the least recently used others are removed until the
    folder fits (an entry in use by another process is skipped; the newest entry is
    kept even if it alone is larger). Without a call, ``$VGGTL_CACHE_LIMIT`` (a
    size, or "none"); without it, :data:`DEFAULT_LIMIT_FRACTION` of the free disk
    plus what the cache holds (see :func:`get_size_limit`).
    """
    global _limit, _limit_set
    if isinstance(limit, str) and limit.strip().lower() in _DEFAULT:
        _limit, _limit_set = None, False
        return
    if isinstance(limit, str) and limit.strip().lower() in _NO_LIMIT:
        limit = None
    _limit, _limit_set = _parse_size(limit, "limit"), True


def _free_bytes(path: str) -> Optional[int]:
    """Free space (for an unprivileged user) of the file system holding ``path``,
    or of its nearest existing parent; None where that cannot be told."""
    p = os.path.abspath(path)
    while True:
        try:
            st = os.statvfs(p)
            return int(st.f_bavail) * int(st.f_frsize)
        except FileNotFoundError:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent
        except (OSError, AttributeError):  # no statvfs (Windows), or not allowed
            return None


def size_limit_rule() -> str:
    """Where the size limit comes from, in words (what ``info`` prints)."""
    if _limit_set:
        return "set_size_limit"
    if os.environ.get("VGGTL_CACHE_LIMIT", "").strip():
        return "$VGGTL_CACHE_LIMIT"
    return (f"default: {DEFAULT_LIMIT_FRACTION:.0%} of the free disk plus what the cache holds "
            f"(set $VGGTL_CACHE_LIMIT, e.g. 20GB or none, to choose)")


def get_size_limit(path=None, held: Optional[int] = None) -> Optional[int]:
    """The size bound in bytes (None: unbounded); see :func:`set_size_limit`.

    The default bound is :data:`DEFAULT_LIMIT_FRACTION` of the free space on the
    file system of the cache folder ``path`` (default: vggtl's) plus ``held``, the
    bytes the cache holds (counted when not given), so the bound does not shrink
    as the cache fills the disk."""
    if _limit_set:
        return _limit
    env = os.environ.get("VGGTL_CACHE_LIMIT", "").strip()
    if env:
        if env.lower() in _NO_LIMIT:
            return None
        return _parse_size(env, "$VGGTL_CACHE_LIMIT")
    root = _root(path, "path")
    free = _free_bytes(root)
    if free is None:
        return None
    if held is None:
        held = sum(d["bytes"] for d in (_describe(e) for e in _entries(root)) if d is not None)
    return int(DEFAULT_LIMIT_FRACTION * (free + held))


# -- digests -------------------------------------------------------------------------
def block_digest(b: np.ndarray) -> bytes:
    """The SHA-256 of one block of rows (its bytes in C order), as
    :func:`array_digest` takes it. A C-contiguous block (a memmap's included) is
    hashed where it lies; only another layout is copied, one block at a time."""
    if not b.flags.c_contiguous:
        b = np.ascontiguousarray(b)
    return hashlib.sha256(memoryview(b.reshape(-1).view(np.uint8))).digest()


def digest_rows(shape, dtype) -> int:
    """Rows per block of :func:`array_digest` for an array of ``shape`` and
    ``dtype``: block i is rows [i * rows, (i + 1) * rows)."""
    row = int(np.prod(tuple(shape)[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, HASH_BLOCK // max(1, row))


def combine_digests(shape, dtype, digests) -> str:
    """:func:`array_digest` from the shape, dtype and the blocks' digests in order
    (so that blocks can be hashed elsewhere, e.g. by vggtl.distributed's workers)."""
    shape = [int(s) for s in shape]
    head = _canonical({"hash": "sha256", "dtype": np.dtype(dtype).str, "shape": shape,
                       "block_rows": digest_rows(shape, dtype)})
    h = hashlib.sha256(len(head).to_bytes(8, "little") + head)
    for d in digests:
        if not isinstance(d, bytes) or len(d) != 32:
            raise ValueError(f"digests: expected 32-byte SHA-256 digests, got {d!r:.40}")
        h.update(d)
    return "sha256tree:" + h.hexdigest()


def array_digest(X) -> str:
    """Digest of an array's dtype, shape and bytes in C order, as
    ``"sha256tree:<64 hex digits>"``: the SHA-256 of each 8 MiB block of rows
    (hashlib, the GIL released, on up to 4 threads), then a SHA-256 of the dtype,
    the shape and those digests. Cryptographic: no one can make two arrays that
    share it. A memmap is read block by block, each block dropped from resident
    memory once hashed, never loaded whole."""
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


def _weights_digest(base, stop: int) -> str:
    """SHA-256 of every value of the weights of every layer up to index ``stop``
    (layers on several threads), remembered per weights version: a VGG16's
    weight arrays are read-only, and every way of changing them (set_weights,
    fine-tuning, TransferModel.set_weights: VGG16._writing) starts a new
    version, so a remembered digest is never stale."""
    version = getattr(base, "_weights_version", None)
    memo = base.__dict__.setdefault("_digest_memo", {}) if version is not None else {}
    got = memo.get((stop, version))
    if got is None:
        got = _hash_weights(base, stop)
        if version is not None:
            memo.clear()  # only the current version's digests are of use
            memo[(stop, version)] = got
    return got


def _hash_weights(base, stop: int) -> str:
    from .vgg16 import CONV_LAYERS, DENSE_LAYERS, _INDEX
    layers = [(name, base._weights[name]) for name in CONV_LAYERS + DENSE_LAYERS
              if _INDEX[name] <= stop and name in base._weights]

    def one(item):
        name, (k, b) = item
        d = hashlib.sha256(repr((name, k.dtype.str, k.shape, b.dtype.str, b.shape)).encode())
        for a in (k, b):
            d.update(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
        return f"{name}:{d.hexdigest()};".encode()

    workers = min(4, os.cpu_count() or 1, len(layers))
    if workers < 2:
        parts = [one(x) for x in layers]
    else:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            parts = list(ex.map(one, layers))
    return hashlib.sha256(b"".join(parts)).hexdigest()


def forget_weights(base) -> None:
    """Forget the remembered digests of ``base``'s weights (not needed: a change
    of the weights starts a new version; kept for code that calls it)."""
    base.__dict__.pop("_digest_memo", None)


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
    elif not isinstance(x_digest, str) or not _X_DIGEST.fullmatch(x_digest):
        raise ValueError(f"x_digest: expected what vggtl.cache.array_digest returns "
                         f"('sha256tree:' and 64 hex digits), got {x_digest!r:.80}")
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


def _open_file(name: str, dir_fd: Optional[int], flags: int = os.O_RDONLY,
               shown: Optional[str] = None) -> Optional[int]:
    """A descriptor of the regular file ``name`` (relative to ``dir_fd``, or a
    path), opened without following a symlink or waiting on a FIFO; None if there
    is none. Anything but a regular file there raises _Damaged."""
    try:
        fd = os.open(name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o666, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in _WRONG_KIND:
            raise _Damaged(f"{shown or name} is {_what_is(name, dir_fd)}, not a regular "
                           f"file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _Damaged(f"{shown or name} is {_kind(mode)}, not a regular file")
    return fd


def _open_dir(name: str, dir_fd: Optional[int] = None, shown: Optional[str] = None) -> Optional[int]:
    """A descriptor of the folder ``name`` (relative to ``dir_fd``, or a path), which
    must be a folder and not a symlink to one (_Damaged otherwise); None if absent."""
    try:
        return os.open(name, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                       dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in _WRONG_KIND:
            raise _Damaged(f"{shown or name} is {_what_is(name, dir_fd)}, not a "
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


def _read_small(name: str, dir_fd: Optional[int], limit: int = 1 << 24,
                shown: Optional[str] = None) -> Optional[bytes]:
    """The bytes of the regular file ``name`` (None if absent; at most ``limit`` + 1)."""
    fd = _open_file(name, dir_fd, shown=shown)
    if fd is None:
        return None
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _read_json(name: str, dir_fd: Optional[int] = None, shown: Optional[str] = None,
               limit: int = 1 << 24) -> Optional[dict]:
    """A JSON object from a regular file; None when absent, unreadable, over
    ``limit`` bytes or not a JSON object. _Damaged when not a regular file."""
    try:
        raw = _read_small(name, dir_fd, limit, shown)
    except OSError:
        return None
    if raw is None or len(raw) > limit:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError, MemoryError):
        return None  # not JSON, or nested too deep: as if absent
    return obj if isinstance(obj, dict) else None


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def _remove_at(name: str, dir_fd: Optional[int], depth: int = 0) -> None:
    """Remove ``name`` in the folder ``dir_fd`` (or a path): a file, a symlink (not
    what it points to), a FIFO, or a whole folder tree, following no symlink.
    Best effort: errors are ignored."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode) and depth < 16:
        try:
            fd = _open_dir(name, dir_fd)
        except (OSError, _Damaged):
            return
        if fd is None:
            return
        try:
            for child in os.listdir(fd):
                _remove_at(child, fd, depth + 1)
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


def _tree_size(dir_fd: int, depth: int = 0) -> int:
    """Bytes of the files under the folder ``dir_fd`` (symlinks not followed)."""
    total = 0
    try:
        with os.scandir(dir_fd) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        sub = _open_dir(e.name, dir_fd) if depth < 16 else None
                        if sub is not None:
                            try:
                                total += _tree_size(sub, depth + 1)
                            finally:
                                os.close(sub)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
                except (OSError, _Damaged):
                    pass
    except OSError:
        pass
    return total


def _stamp(st: os.stat_result) -> list:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


# -- vggtl's own folders ----------------------------------------------------------------
def _is_ours(dir_fd: int) -> bool:
    """The folder carries vggtl's marker (or, made by vggtl before the marker, a
    manifest of the feature cache's format): only such a folder is ever written
    into or removed."""
    try:
        if _read_small(MARKER, dir_fd, limit=256) == _MARKER_TEXT:
            return True
    except (OSError, _Damaged):
        pass
    try:
        obj = _read_json("manifest.json", dir_fd)
    except _Damaged:
        return False
    m = obj.get("manifest") if obj else None
    return isinstance(m, dict) and m.get("format") == "vggtl.features"


def _make_entry_dir(folder: str) -> None:
    """Create an entry folder with vggtl's marker in one step: made under a
    temporary name, marked, renamed into place (a folder already there, made by
    another process meanwhile, stays)."""
    root, name = os.path.split(folder)
    os.makedirs(root, exist_ok=True)
    stage = os.path.join(root, f".new-{name}-{secrets.token_hex(4)}")
    os.mkdir(stage, 0o777)
    try:
        dfd = _open_dir(stage)
        try:
            fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0o666, dir_fd=dfd)
            try:
                os.write(fd, _MARKER_TEXT)
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
        _remove_entry_tree(stage)  # gone when renamed


def _remove_entry_tree(path: str) -> None:
    """Remove an entry folder that is vggtl's (checked here again), its marker and
    manifest last, so that a removal cut short leaves a folder still known as ours."""
    try:
        fd = _open_dir(path)
    except (OSError, _Damaged):
        return
    if fd is None:
        return
    try:
        if not _is_ours(fd):
            return
        last = (MARKER, "manifest.json")
        for name in os.listdir(fd):
            if name not in last:
                _remove_at(name, fd)
        for name in reversed(last):
            _remove_at(name, fd)
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


class _Locked:
    """An flock on ``<folder>/lock``, checked to be the entry's current lock file
    in the folder still at its path (an entry removed while we waited has its
    folder renamed away: start over). ``dfd``: the entry folder, open, while held
    (None: no entry). ``create``: make the folder, marked as vggtl's, if absent;
    a folder without the marker is refused (_Damaged). A wait ends when the lock
    is free, or with _Stalled when nothing in the entry changed for LOCK_WAIT_S."""

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
            self.dfd = _open_dir(self.folder)
            if self.dfd is None:
                if not self.create:
                    return self  # no entry
                with _writing(f"cannot create {self.folder}"):
                    _make_entry_dir(self.folder)
                continue
            if self.create:
                if not _is_ours(self.dfd):
                    raise _Damaged(f"{self.folder} is not a vggtl cache entry (it has no "
                                   f"{MARKER} marker)")
                with _writing(f"cannot create {self.lock_path}"):
                    self.fd = _open_file("lock", self.dfd, os.O_RDWR | os.O_CREAT,
                                         shown=self.lock_path)
            else:
                try:
                    self.fd = _open_file("lock", self.dfd, shown=self.lock_path)
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
        raise _Unwritable(f"cannot lock {self.lock_path}: it keeps being removed")

    def _current(self) -> bool:
        try:
            return os.path.samestat(os.fstat(self.dfd), os.stat(self.folder,
                                                                follow_symlinks=False)) and \
                os.path.samestat(os.fstat(self.fd), os.stat("lock", dir_fd=self.dfd,
                                                            follow_symlinks=False))
        except OSError:
            return False

    def _wait(self, mode: int) -> None:
        """Poll for the lock until it is free; give up (_Stalled) once nothing in the
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
                raise _Stalled(self.lock_path, _describe_holder(self.fd), now - since)

    def __exit__(self, *exc):
        self._close()
        return False


# -- one entry ---------------------------------------------------------------------------
class _Entry:
    """One entry's files. Every operation goes through the entry folder's
    descriptor (the one held with its lock, else opened for the call) and names
    relative to it, so a symlink planted in place of the folder or any file in it
    is never followed."""

    def __init__(self, root: str, key: dict):
        self.root, self.key = root, key
        self.id = _key_id(key)
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
               on_wait: Optional[Callable[[], None]] = None) -> Iterator[_Locked]:
        with _Locked(self.dir, exclusive, create, blocking, on_wait) as lk:
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
        fd = _open_dir(self.dir)
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
        cfd = _open_dir("chunks", dfd, shown=self.chunk_dir)
        if cfd is None and create:
            try:
                os.mkdir("chunks", 0o777, dir_fd=dfd)
            except FileExistsError:
                pass
            cfd = _open_dir("chunks", dfd, shown=self.chunk_dir)
            if cfd is None:
                raise FileNotFoundError(errno.ENOENT, "removed while in use", self.chunk_dir)
        try:
            yield cfd
        finally:
            if cfd is not None:
                os.close(cfd)

    def has_chunks(self) -> bool:
        with self.folder() as dfd:
            return dfd is not None and _lexists("chunks", dfd)

    # manifest ---------------------------------------------------------------
    def read_manifest(self) -> Optional[dict]:
        with self.folder() as dfd:
            if dfd is None:
                return None
            return _check_manifest(_read_json("manifest.json", dfd, self.manifest_path),
                                   self.key)

    def write_manifest(self, m: dict) -> None:
        with _writing(f"cannot write {self.manifest_path}"), self.folder(True) as dfd:
            atomic_write_at(dfd, "manifest.json", _wrap_manifest(m), self.manifest_path)

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

    def bad_regions(self, m: dict, fd: Optional[int] = None) -> List[int]:
        """Chunks whose region in data.npy (open as ``fd``, or opened here) is short
        or fails its CRC (all when the file is missing or its header differs)."""
        ks = list(range(len(m["chunks"])))
        if fd is None:
            with self.folder() as dfd:
                try:
                    own = _open_file("data.npy", dfd, shown=self.data_path) \
                        if dfd is not None else None
                except OSError:
                    own = None
            if own is None:
                return ks
            try:
                return self.bad_regions(m, own)
            finally:
                os.close(own)
        header = _npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
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
        with _writing(f"cannot write {self.chunk_path(k)}"):
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
                return _read_small(name, cfd, limit, os.path.join(self.chunk_dir, name))

    def has_chunk_file(self, name: str) -> bool:
        """``chunks/<name>`` is there (_Damaged if it is not a regular file)."""
        with self.folder() as dfd:
            if dfd is None:
                return False
            with self.chunks(dfd) as cfd:
                fd = _open_file(name, cfd, shown=os.path.join(self.chunk_dir, name)) \
                    if cfd is not None else None
        if fd is not None:
            os.close(fd)
        return fd is not None

    def write_chunk_file(self, name: str, src: str) -> None:
        """Copy the file ``src`` to ``chunks/<name>``, atomically."""
        with _writing(f"cannot write {os.path.join(self.chunk_dir, name)}"):
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
        """data.npy is as it was at a full check (see the module docstring)."""
        stamp = _stamp(st)
        here = _verified_here.get(self.data_path)
        if here is not None and here[0] == stamp and here[1] - st.st_ctime_ns > RACY_NS:
            return True
        with self.folder() as dfd:
            rec = _read_json("verified", dfd, self.stamp_path, limit=4096) \
                if dfd is not None else None
        return bool(rec) and rec.get("stamp") == stamp and \
            isinstance(rec.get("at"), int) and rec["at"] - st.st_ctime_ns > RACY_NS

    def record_verified(self, st: os.stat_result, at: int) -> None:
        _verified_here[self.data_path] = (_stamp(st), at)
        try:
            with self.folder(True) as dfd:
                atomic_write_at(dfd, "verified", _canonical({"stamp": _stamp(st), "at": at}),
                                self.stamp_path)
        except OSError:
            pass  # read-only: this process remembers it

    # reading --------------------------------------------------------------------
    def try_read(self, check: bool = True) -> Optional[np.ndarray]:
        """The complete entry as a read-only memmap, or None (missing, incomplete,
        damaged). ``check=False`` after this process wrote it. _Damaged when a
        file of the entry is not a regular file (a symlink, a FIFO...)."""
        with self.folder() as dfd:
            if dfd is None:
                return None
            m = _check_manifest(_read_json("manifest.json", dfd, self.manifest_path), self.key)
            if m is None or not m["complete"]:
                return None
            try:
                fd = _open_file("data.npy", dfd, shown=self.data_path)
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
        header = _npy_header(shape, dtype)
        st = os.fstat(fd)
        if st.st_size != len(header) + m["n"] * _item_bytes(m):
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
                        _remove_at("chunks", lk.dfd)
        except (OSError, _Damaged, _Unwritable):
            pass

    def reset(self) -> None:
        """Forget everything but the lock and the marker (a manifest of another
        format or key)."""
        with _writing(f"cannot clear {self.dir}"), self.folder(True) as dfd:
            for name in ("chunks", "data.npy", "verified", "manifest.json"):
                _remove_at(name, dfd)

    def build(self, plan: "_Plan") -> None:
        """Compute what is missing and assemble data.npy (exclusive lock held)."""
        self.clean_temporaries()
        m = self.read_manifest()
        if m is None or not _same_layout(m, plan):
            self.reset()
            m = plan.new_manifest(self.key)
            self.write_manifest(m)
        nchunks = len(m["chunks"])
        with self.folder(True) as dfd:
            has_data = _lexists("data.npy", dfd)
        in_data = set(range(nchunks)) - set(self.bad_regions(m)) if has_data else set()
        in_files = {k for k in range(nchunks) if k not in in_data and self.chunk_file_ok(m, k)}
        missing = [k for k in range(nchunks) if k not in in_data and k not in in_files]
        if missing or m["complete"]:
            for k in missing:
                m["chunks"][k] = None
            m["complete"] = False
            self.write_manifest(m)
        if missing:
            with _writing(f"cannot create {self.chunk_dir}"), self.folder(True) as dfd, \
                    self.chunks(dfd, create=True):
                pass
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
        with self.folder() as dfd:
            if dfd is not None:
                _remove_at("chunks", dfd)

    def assemble(self, m: dict, in_files: set) -> None:
        """data.npy from the chunk files (and good regions of the old data.npy),
        each chunk's CRC checked as it is copied."""
        header = _npy_header((m["n"], *m["item_shape"]), DTYPES[m["dtype"]])
        with self.folder(True) as dfd:
            old = None
            try:
                if len(in_files) < len(m["chunks"]):
                    try:
                        old = _open_file("data.npy", dfd, shown=self.data_path)
                    except OSError:
                        old = None
                    if old is None:
                        raise _Changed(-1)  # gone since it was checked
                with _writing(f"cannot write {self.data_path}"), self.chunks(dfd) as cfd, \
                        atomic_open_at(dfd, "data.npy", self.data_path) as out:
                    out.write(header)
                    for k in range(len(m["chunks"])):
                        if k in in_files:
                            data = _read_small(f"{k:06d}.bin", cfd, self.chunk_bytes(m, k),
                                               self.chunk_path(k)) if cfd is not None else None
                        else:
                            off, length = self.region(m, k)
                            data = os.pread(old, length, off)
                        if data is None or len(data) != self.chunk_bytes(m, k) or \
                                zlib.crc32(data) != m["chunks"][k]:
                            # changed under us since it was checked: start over
                            raise _Changed(k)
                        out.write(data)
            finally:
                if old is not None:
                    os.close(old)


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
    consistent) and, when given, for ``key``; else None. Never raises on bad data,
    never follows a symlink or waits on a FIFO (None for them)."""
    try:
        return _check_manifest(_read_json(os.fspath(path)), key)
    except _Damaged:
        return None


def _check_manifest(obj: Optional[dict], key: Optional[dict] = None) -> Optional[dict]:
    """The manifest wrapped in ``obj`` (manifest.json as read) if intact and for
    ``key`` (see load_manifest), else None."""
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
        # as many images at a time as one pass of the core holds, not the
        # training batch size: small batches leave the convolutions' threads idle
        step = max(batch_size, self.base.images_per_pass(self.input_size, self.layer))
        for i in range(start, stop, step):
            j = min(stop, i + step)
            xb = self.X[i:j]
            if self.transform is not None:
                xb = self.transform(xb, np.arange(i, j, dtype=np.int64))
            f = self.base.predict(xb, batch_size=step, layer=self.layer)
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


def notebook_without_widgets() -> bool:
    """True in a Jupyter kernel without ipywidgets: there tqdm falls back to a text
    bar whose every redraw is an output of its own, kept in the saved notebook."""
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
        if shell is None or "IPKernelApp" not in shell.config:
            return False
    except Exception:  # an IPython without get_ipython, a stub: not a kernel we know
        return False
    import importlib.util
    try:
        return importlib.util.find_spec("ipywidgets") is None
    except (ImportError, ValueError):  # a module set to None, a broken install
        return True


class TextProgress:
    """Progress as a few plain lines on stdout: one when the stage ends, and one
    every ``every`` seconds while it runs (a notebook keeps every line)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "img",
                 every: float = 30.0):
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.start = self.last = time.monotonic()
        self.initial, self.every = initial, every

    def _line(self, now: float) -> str:
        t = now - self.start
        rate = (self.done - self.initial) / t if t > 0 else 0.0
        return (f"{self.desc + ': ' if self.desc else ''}{self.done}/{self.total} {self.unit} "
                f"in {t:.1f} s ({rate:.1f} {self.unit}/s)")

    def update(self, k: int) -> None:
        self.done += k
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            print(self._line(now), flush=True)

    def close(self) -> None:
        print(self._line(time.monotonic()), flush=True)


class _Progress:
    """tqdm with images/s when asked and installed (plain lines in a notebook
    without ipywidgets); else silent."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            if notebook_without_widgets():
                self.bar = TextProgress(total, initial, desc)
                return
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


def _warn_once(what: str, message: str) -> None:
    """One RuntimeWarning per folder, entry or lock (``what``) and process."""
    with _state_lock:
        if what in _warned:
            return
        _warned.add(what)
    warnings.warn(f"{message}; features are computed in memory, without caching",
                  RuntimeWarning, stacklevel=4)


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
    batch_size : the fewest images read from X at a time; the core runs as many
        as one pass holds (``base.images_per_pass``) when that is more. Features
        do not depend on it.
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
    (a plain ndarray with ``cache=False``, for N == 0, or when the entry cannot be
    used, which a RuntimeWarning says once: the folder cannot be written, the entry
    is damaged or not vggtl's (a symlink or special file in it), or another process
    holds it without progress for ``LOCK_WAIT_S`` seconds). Ctrl-C stops the
    extraction; what was done is kept and the next call resumes there.
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
        _warn_once(root, f"vggtl: the feature cache in {root} cannot be written ({e})")
    except _Damaged as e:
        _warn_once(entry.dir, f"vggtl: the feature cache entry {entry.dir} is damaged or not "
                              f"vggtl's ({e}); it is neither read nor written (vggtl.cache.clear "
                              f"removes a damaged entry of vggtl's)")
    except _Stalled as e:
        _warn_once(e.lock, f"vggtl: {e}")
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

    with entry.locked(exclusive=False, create=False, on_wait=waiting):
        F = entry.try_read()
        leftovers = F is not None and entry.has_chunks()
    if F is not None:
        if leftovers:
            entry.drop_leftovers()
        return F

    for _ in range(3):
        with entry.locked(exclusive=True, create=True, on_wait=waiting):
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
    """Candidate entry folders: names of 32 hex digits (whether each is vggtl's is
    checked where it is opened)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(os.path.join(root, nm) for nm in names if _ENTRY_RE.match(nm))


def _describe(folder: str) -> Optional[dict]:
    """One entry, or None when ``folder`` is not a vggtl entry (no marker, not a
    folder, a symlink)."""
    try:
        dfd = _open_dir(folder)
    except (OSError, _Damaged):
        return None
    if dfd is None:
        return None
    try:
        if not _is_ours(dfd):
            return None
        try:
            m = _check_manifest(_read_json("manifest.json", dfd))
        except _Damaged:
            m = None
        try:
            used = os.stat("manifest.json", dir_fd=dfd, follow_symlinks=False).st_mtime
        except OSError:
            used = os.fstat(dfd).st_mtime
        d = {"id": os.path.basename(folder), "path": folder, "bytes": _tree_size(dfd),
             "last_used": used, "complete": False, "valid": m is not None}
    finally:
        os.close(dfd)
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
    the epoch), least recently used first. Only folders carrying vggtl's marker
    are entries; anything else in the folder is not listed (nor ever removed)."""
    root = _root(path, "path")
    found = (_describe(d) for d in _entries(root))
    entries = sorted((d for d in found if d is not None), key=lambda e: e["last_used"])
    held = sum(e["bytes"] for e in entries)
    return {"path": root, "entries": entries, "bytes": held,
            "limit": get_size_limit(root, held), "limit_rule": size_limit_rule()}


def _remove(root: str, folder: str) -> bool:
    """Remove one entry unless another process holds it; True if removed. Only a
    folder carrying vggtl's marker is removed (False for anything else)."""
    try:
        dfd = _open_dir(folder)
    except _Damaged:
        return False
    if dfd is None:
        return True
    fd = None
    try:
        if not _is_ours(dfd):
            return False
        try:
            fd = _open_file("lock", dfd)
        except (OSError, _Damaged):
            fd = None  # none, unreadable, or a lock no one can take (a FIFO, a symlink)
        if fd is not None and fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        try:  # the folder checked is the one at the path (not replaced meanwhile)
            if not os.path.samestat(os.fstat(dfd), os.stat(folder, follow_symlinks=False)):
                return False
        except FileNotFoundError:
            return True
        trash = os.path.join(root, f".trash-{os.path.basename(folder)}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, trash)  # one step: nobody sees a half-removed entry
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise PermissionError(f"cannot remove {folder}: {e.strerror}") from None
            raise
    finally:
        for d in (fd, dfd):
            if d is not None:
                os.close(d)
    _remove_entry_tree(trash)
    return True


def _clean_trash(root: str) -> None:
    """Finish removals cut short (".trash-*") and entry folders never renamed into
    place (".new-*", after a minute): each only if it carries vggtl's marker."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    now = time.time()
    for nm in names:
        p = os.path.join(root, nm)
        if nm.startswith(".new-"):
            try:
                if now - os.stat(p, follow_symlinks=False).st_mtime < _STAGE_AGE_S:
                    continue
            except OSError:
                continue
        elif not nm.startswith(".trash-"):
            continue
        _remove_entry_tree(p)
def clear(path=None, *, layer: Optional[str] = None, incomplete: Optional[bool] = None,
          max_bytes=None, older_than: Optional[float] = None) -> dict:
    """Remove cache entries; returns ``{"removed", "bytes_freed", "busy"}``.

    With no filter, every entry goes. ``layer="block4_pool"``: only that cut;
    ``incomplete=True``: only unfinished extractions (False: only finished ones);
    ``older_than``: only entries last used more than that many seconds ago;
    ``max_bytes``: least recently used entries first, until the rest fits. Entries
    another process is writing or reading right now are left (counted in "busy").
    Only folders carrying vggtl's marker are entries: nothing else is removed.
    """
    root = _root(path, "path")
    limit = _parse_size(max_bytes, "max_bytes")
    if older_than is not None:
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float, np.number)) \
                or not 0 <= float(older_than) < float("inf"):
            raise ValueError(f"older_than: expected seconds >= 0, got {older_than!r}")
        cutoff = time.time() - float(older_than)
    entries = info(root)["entries"]
    chosen = [e for e in entries
              if (layer is None or e.get("layer") == layer)
              and (incomplete is None or (not e["complete"]) == bool(incomplete))
              and (older_than is None or e["last_used"] < cutoff)]
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
    if _limit_set and _limit is None:
        return
    found = info(root)
    limit, entries, total = found["limit"], found["entries"], found["bytes"]
    if limit is None:
        return
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
