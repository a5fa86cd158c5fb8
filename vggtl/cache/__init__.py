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
the features and nothing else (:func:`make_key`). The network gives its part
through its feature source (``VGG16.feature_source(layer).key_parts``): a SHA-256
of every weight of the layers below the cut (remembered per weights version, and
every way of changing the weights starts a new version, so a weight changed by any
path never serves old features), the cut layer, the global pooling, the
preprocessing (mode and its affine parameters) and each convolution's algorithm.
The cache adds the key's format version, the input size the network sees, the
storage dtype, the augmentation view (None, or the caller's ``(config digest,
view index)``) and a digest of X (:func:`array_digest`: dtype, shape and bytes; a
SHA-256 of each block of rows, on several threads without the GIL, the blocks'
digests hashed again with the dtype and shape; a memmap is read block by block).
Batch size, threads, chunking and progress are not part of it. The digests are
cryptographic: arrays that share a key are the same array, even when someone
crafts them to collide.

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

Modules, lowest first (none of them imports the network):

    keys.py          the key and the digests of X (make_key, array_digest)
    files.py         opening an entry's files safely (no symlink, no FIFO)
    progress.py      the progress bar
    store.py         entries: marker, lock, manifest, chunks, data.npy (Entry)
    housekeeping.py  root folder, size limit, info, clear, eviction
    plan.py          the protocols: FeatureSource (what the network gives) and
                     ChunkSource (what fills an entry), and LocalPlan
    run.py           extract and read_or_build (read a hit, else build the entry)
    memo.py          CutMemo: a cut's outputs kept in memory on the way past it
                     (fit keeps block4_pool for the fine_tune that follows)

vggtl.distributed implements ChunkSource with Dask and uses only the names this
module exports.
"""
from __future__ import annotations

import sys
import types

from . import keys as _keys, plan as _plan, store as _store
from .files import Damaged, Unwritable
from .housekeeping import (DEFAULT_LIMIT_FRACTION, clear, default_dir, get_size_limit, info,
                           resolve_root, set_size_limit, size_limit_rule)
from .keys import (DTYPES, FORMAT_VERSION, array_digest, block_digest, check_dtype,
                   combine_digests, digest_rows, key_id, make_key)
from .plan import ChunkSource, FeatureSource, LocalPlan, default_chunk_rows, progress_label
from .progress import Progress, TextProgress, notebook_without_widgets
from .run import extract, read_or_build
from .store import MARKER, Entry, Stalled, load_manifest

__all__ = ["extract", "info", "clear", "set_size_limit", "get_size_limit", "array_digest",
           "make_key", "default_dir", "forget_weights",
           # the storage layer, for other chunk sources (vggtl.distributed)
           "ChunkSource", "FeatureSource", "LocalPlan", "Entry", "read_or_build",
           "Damaged", "Stalled", "Unwritable", "resolve_root", "check_dtype", "key_id",
           "block_digest", "combine_digests", "digest_rows", "default_chunk_rows",
           "load_manifest", "DTYPES", "FORMAT_VERSION", "MARKER", "DEFAULT_LIMIT_FRACTION",
           "size_limit_rule", "Progress", "TextProgress", "notebook_without_widgets",
           "progress_label", "CHUNK_BYTES", "CHUNK_PIXELS", "HASH_BLOCK", "LOCK_WAIT_S",
           "RACY_NS"]


def forget_weights(base) -> None:
    """Forget the remembered digests of ``base``'s weights (not needed: a change
    of the weights starts a new version; kept for code that calls it)."""
    forget = getattr(base, "forget_weights_digest", None)
    if callable(forget):
        forget()


# Settings read where they are used, in the module that owns them; vggtl.cache.X
# reads and sets that module's value (``vggtl.cache.LOCK_WAIT_S = 60`` works).
_SETTINGS = {"CHUNK_BYTES": _plan, "CHUNK_PIXELS": _plan, "HASH_BLOCK": _keys,
             "LOCK_WAIT_S": _store, "RACY_NS": _store}


class _Settings(types.ModuleType):
    def __getattribute__(self, name):
        owner = _SETTINGS.get(name)
        if owner is not None:
            return getattr(owner, name)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        owner = _SETTINGS.get(name)
        if owner is not None:
            setattr(owner, name, value)
        super().__setattr__(name, value)  # also here, where tools look (monkeypatch)


for _name, _owner in _SETTINGS.items():
    globals()[_name] = getattr(_owner, _name)
sys.modules[__name__].__class__ = _Settings
