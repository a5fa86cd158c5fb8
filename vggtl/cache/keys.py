"""Keys and digests: what names a feature cache entry.

An entry is named by a SHA-256 over a JSON record (:func:`make_key`) of everything
that changes the features and nothing else. The record has two halves:

- the network's: ``weights`` (a digest of every weight below the cut), ``layer``,
  ``pooling``, ``preprocess`` and ``conv`` (each convolution's algorithm), which
  the network gives through its feature source (``key_parts``, see
  :mod:`vggtl.cache.plan`); the cache never looks inside the network;
- the cache's own: the format version, the input size the network sees, the
  storage dtype, the augmentation view and a digest of X (:func:`array_digest`).

The digests are cryptographic: arrays that share a key are the same array, even
when someone crafts them to collide.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from .._arrays import as_images, release_pages

# The key's and the manifest's format: entries of another version are never read
# (their keys name other folders, their manifests are refused) but recomputed.
FORMAT_VERSION = 2
HASH_BLOCK = 8 << 20
KEY_HEX = 32  # an entry's folder name: the first KEY_HEX hex digits of its key's digest
X_DIGEST_RE = re.compile(r"sha256tree:[0-9a-f]{64}")
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
# the fields the cache itself puts in a key; a feature source gives the others
CACHE_FIELDS = ("format", "input_size", "dtype", "view", "x")


def canonical(obj) -> bytes:
    """The JSON bytes a key or manifest is hashed as (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def key_id(key: dict) -> str:
    """The entry folder's name for ``key``."""
    return hashlib.sha256(canonical(key)).hexdigest()[:KEY_HEX]


def check_dtype(dtype) -> np.dtype:
    """The storage dtype ("float32" or "float16"), else ValueError naming it."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float16', got {dtype!r}")
    return DTYPES[name]


def check_view(view, transform) -> None:
    """``view`` is None or (config digest, view index); a ``transform`` needs one."""
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


# -- digests of X ------------------------------------------------------------------------
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
    head = canonical({"hash": "sha256", "dtype": np.dtype(dtype).str, "shape": shape,
                      "block_rows": digest_rows(shape, dtype)})
    h = hashlib.sha256(len(head).to_bytes(8, "little") + head)
    for d in digests:
        if not isinstance(d, bytes) or len(d) != 32:
            raise ValueError(f"digests: expected 32-byte SHA-256 digests, got {d!r:.40}")
        h.update(d)
    return "sha256tree:" + h.hexdigest()


def array_digest(X) -> str:
    """Digest of an array's dtype, shape and bytes in C order, as
    ``"sha256tree:<64 hex digits>"``: the SHA-256 of each block of rows
    (:data:`HASH_BLOCK` bytes; hashlib, the GIL released, on up to 4 threads),
    then a SHA-256 of the dtype, the shape and those digests. Cryptographic: no
    one can make two arrays that share it. A memmap is read block by block, each
    block dropped from resident memory once hashed, never loaded whole."""
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


# -- the key -------------------------------------------------------------------------------
def features_of(base, layer=None):
    """``base``'s feature source for ``layer`` (``base.feature_source(layer)``, which
    checks the layer); TypeError when ``base`` has none."""
    get = getattr(base, "feature_source", None)
    if not callable(get):
        raise TypeError(f"base: expected a vggtl.VGG16, got {type(base).__name__}")
    return get(layer)


def make_key(base, layer=None, dtype="float32", view=None, input_size=None,
             x_digest: Optional[str] = None, X=None) -> dict:
    """The record an entry's name is the digest of: everything that changes the
    features. ``base``: a VGG16 (or anything with ``feature_source(layer)``).
    ``input_size`` (h, w) defaults to X's; ``x_digest`` to ``array_digest(X)``."""
    features = features_of(base, layer)
    if x_digest is None:
        if X is None:
            raise ValueError("make_key: needs X or x_digest")
        x_digest = array_digest(X)
    elif not isinstance(x_digest, str) or not X_DIGEST_RE.fullmatch(x_digest):
        raise ValueError(f"x_digest: expected what vggtl.cache.array_digest returns "
                         f"('sha256tree:' and 64 hex digits), got {x_digest!r:.80}")
    if input_size is None:
        input_size = tuple(as_images(X).shape[1:3])
    input_size = tuple(int(v) for v in input_size)
    parts = dict(features.key_parts(input_size))
    clash = sorted(set(parts) & set(CACHE_FIELDS))
    if clash:
        raise ValueError(f"base: its feature source's key parts name the cache's own "
                         f"fields {clash}")
    return {**parts,
            "format": FORMAT_VERSION,
            "input_size": list(input_size),
            "dtype": check_dtype(dtype).name,
            "view": None if view is None else [str(view[0]), int(view[1])],
            "x": x_digest}
