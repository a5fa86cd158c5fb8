"""What computes an entry's chunks: the chunk-source protocol, and the local plan.

Two protocols meet here, so that the store never knows the network:

:class:`FeatureSource` is what the network gives for one cut
(``VGG16.feature_source(layer)``): its part of the key, the shape of one
image's features, how many images one pass runs, and the features themselves.

:class:`ChunkSource` is what :meth:`vggtl.cache.store.Entry.build` drives to fill
an entry: the layout of a new manifest (``n``, ``item_shape``, ``dtype``,
``batch_size``, :meth:`~ChunkSource.chunk_rows`) and
:meth:`~ChunkSource.run_chunks`, which computes the missing chunks, writes each
with ``entry.write_chunk`` and yields their CRCs for the manifest. The
:class:`LocalPlan` runs them one after the other in this process;
``vggtl.distributed``'s plan runs them as Dask tasks.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Protocol, Tuple

import numpy as np

from .._arrays import even_batches, read_step, release_pages

# A chunk is at most CHUNK_BYTES of features and CHUNK_PIXELS of input pixels (the
# latter bounds the compute lost to a Ctrl-C: 32 images at 224 x 224).
CHUNK_BYTES = 4 << 20
CHUNK_PIXELS = 32 * 224 * 224


class FeatureSource(Protocol):
    """The network's side of the cache, for one cut (``VGG16.feature_source``)."""

    name: str  # the cut's layer name (shown while computing)

    def check_input(self, h: int, w: int, c: int) -> None:
        """Raise ValueError naming X if images of h x w x c cannot be run."""

    def item_shape(self, input_size: Tuple[int, int]) -> tuple:
        """The shape of one image's features for images of ``input_size``."""

    def key_parts(self, input_size: Tuple[int, int]) -> dict:
        """The network's part of the key: JSON values that change the features
        (weights digest, layer, pooling, preprocessing, algorithms)."""

    def images_per_pass(self, input_size: Tuple[int, int]) -> int:
        """How many images one pass of the network runs at a time."""

    def predict(self, X: np.ndarray, batch_size: int) -> np.ndarray:
        """Float32 features of the images X, shape (len(X), *item_shape)."""


class ChunkSource(Protocol):
    """What fills an entry's missing chunks (see the module docstring)."""

    n: int                      # images
    item_shape: tuple           # one image's features
    dtype: np.dtype             # as stored: float32 or float16
    batch_size: int             # recorded in a new manifest
    progress: bool              # show a bar while computing
    desc: str                   # the bar's label

    def chunk_rows(self) -> int:
        """Images per chunk for a new entry (a started one keeps its own)."""

    def run_chunks(self, entry, m: dict, missing: List[int],
                   update: Callable[[int], None]) -> Iterator[List[Tuple[int, int]]]:
        """Compute the chunks ``missing`` of ``entry`` (manifest ``m``: chunk size in
        ``m["chunk"]``, batch size in ``m["batch_size"]``) into chunk files, each
        by ``entry.write_chunk(k, features)``, and yield lists of (chunk, CRC-32)
        once they are durable; ``update(images)`` counts progress."""


def default_chunk_rows(n: int, item_shape, dtype, input_size, batch_size: int) -> int:
    """Images per chunk: at most CHUNK_BYTES of features and CHUNK_PIXELS of
    input, a multiple of ``batch_size`` when larger than it, at most ``n``."""
    item = int(np.prod(item_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    pixels = input_size[0] * input_size[1]
    rows = max(1, min(CHUNK_BYTES // max(1, item), CHUNK_PIXELS // max(1, pixels)))
    if rows > batch_size:
        rows -= rows % batch_size
    return min(rows, n)


def progress_label(features: FeatureSource, view=None) -> str:
    return f"vggtl: features {features.name}" + (f" view {view[1]}" if view is not None else "")


class LocalPlan:
    """A :class:`ChunkSource` computing in this process: the features of X from
    ``features`` (a :class:`FeatureSource`), each batch through ``transform``
    first when given, stored as ``dtype``. ``known``: the features, already
    computed (rows are copied from it). ``keep``: a
    :class:`vggtl.cache.memo.Recorder` that gets the output of its layer, on
    the way, of every batch computed."""

    def __init__(self, features: FeatureSource, X, dtype, batch_size: int, item_shape,
                 input_size, transform=None, progress: bool = False, view=None,
                 known: Optional[np.ndarray] = None, keep=None):
        self.features, self.X, self.dtype = features, X, np.dtype(dtype)
        self.batch_size, self.transform = batch_size, transform
        self.item_shape, self.input_size, self.progress = tuple(item_shape), input_size, progress
        self.n = len(X)
        self.view = view
        self.desc = progress_label(features, view)
        self.known, self.keep = known, keep

    def chunk_rows(self) -> int:
        return default_chunk_rows(self.n, self.item_shape, self.dtype, self.input_size,
                                  self.batch_size)

    def run_chunks(self, entry, m: dict, missing: Iterable[int],
                   update: Callable[[int], None]):
        for k in missing:
            start = k * m["chunk"]
            stop = min(m["n"], start + m["chunk"])
            data = self.compute(start, stop, m["batch_size"], update)
            yield [(k, entry.write_chunk(k, data))]

    def compute(self, start: int, stop: int, batch_size: int,
                update: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Features of images [start, stop) in batches of ``batch_size``, as stored."""
        out = np.empty((stop - start, *self.item_shape), dtype=self.dtype)
        if self.known is not None:
            out[...] = self.known[start:stop]
            if update is not None:
                update(stop - start)
            return out
        # as many images at a time as one pass of the network holds, not the
        # training batch size: small batches leave the convolutions' threads idle
        step = read_step(batch_size, self.features.images_per_pass(self.input_size))
        for i, j in even_batches(start, stop, step):
            xb = self.X[i:j]
            if self.transform is not None:
                xb = self.transform(xb, np.arange(i, j, dtype=np.int64))
            if self.keep is not None:
                g, f = self.features.predict_through(xb, step, self.keep.layer)
                self.keep.record(i, g)
            else:
                f = self.features.predict(xb, step)
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
            if update is not None:
                update(j - i)
        return out
