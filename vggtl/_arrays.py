"""Validation of user images and their per-batch hand-off to the C core.

The C core reads uint8, float32 and float64 NHWC images with 1 or 3 channels as
they are; everything else about a user's X is settled here, one batch at a time,
so a whole data set is never copied or converted at once.
"""
from __future__ import annotations

import numpy as np

# dtypes the core reads directly; other real numbers are converted per batch
CORE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))


def as_images(X, name: str = "X") -> np.ndarray:
    """Return X as an N x H x W x C array (C in 1, 3) without copying its data.

    Accepts N x H x W (grayscale without a channel axis) and N x H x W x 1|3, of
    any real dtype except bool; lists of arrays of one shape are stacked.
    """
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError(f"{name}: expected images, got an empty {type(X).__name__}")
        try:
            X = np.stack([np.asarray(x) for x in X])
        except ValueError as e:
            raise ValueError(f"{name}: expected a list of arrays of one shape ({e})") from None
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array of images (N, H, W, C), "
                        f"got {type(X).__name__}")
    kind = X.dtype.kind
    if kind not in "uif":
        raise TypeError(f"{name}: expected real-valued pixels (uint8 or float), got dtype "
                        f"{X.dtype}")
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim != 4:
        hint = " (for a single image, pass x[None])" if X.ndim == 2 else ""
        raise ValueError(f"{name}: expected 4 dimensions (N, H, W, C) or 3 (N, H, W) for "
                         f"grayscale, got shape {X.shape}{hint}")
    if X.shape[3] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels (last axis), got shape {X.shape}")
    return X


def for_core(a, dtype=None) -> np.ndarray:
    """``a`` as the C core reads it: C-contiguous and aligned, of ``dtype`` if
    given; no copy when it already is. (np.ascontiguousarray keeps an unaligned
    array as it is: a buffer read at an odd offset, a memmap with one.)"""
    return np.require(np.asarray(a), dtype, ("C", "A"))


def batch_for_core(xb: np.ndarray) -> np.ndarray:
    """One batch as the core reads it: C-contiguous, aligned, native order,
    u8/f32/f64."""
    if xb.dtype not in CORE_DTYPES:
        xb = xb.astype(np.float32)
    elif not xb.dtype.isnative:
        xb = xb.astype(xb.dtype.newbyteorder("="))
    return for_core(xb)


# The largest pixel magnitude vggtl takes: 16-bit images' white. Images are
# 8- or 16-bit, or floats in 0-1 or 0-255 (or preprocessed, a few hundred at
# most); far beyond, VGG16's features are no longer image features: from about
# 1e34 they are NaN (sums overflow float32), and below that they grow with the
# pixels (uint64's maximum gives features of 1e16).
PIXEL_MAX = 65535.0


def check_finite_batch(xb: np.ndarray, name: str, start: int) -> None:
    """Raise if a float batch (integers other than uint8 arrive as float32)
    holds NaN, infinity or a pixel beyond +-PIXEL_MAX: they would poison the
    features silently."""
    if xb.dtype.kind != "f":
        return
    ok = np.abs(xb) <= PIXEL_MAX  # False for NaN too
    if ok.all():
        return
    i = int(np.flatnonzero(~ok.reshape(len(xb), -1).all(axis=1))[0])
    if not np.isfinite(xb[i]).all():
        raise ValueError(f"{name}: image {start + i} contains NaN, infinite values or values "
                         f"beyond float32's range")
    raise ValueError(f"{name}: image {start + i} has a pixel of {np.abs(xb[i]).max():.4g}; "
                     f"expected pixels within +-{PIXEL_MAX:.0f} (8- or 16-bit images, floats "
                     f"in 0-1 or 0-255): VGG16's features of such pixels are NaN or "
                     f"meaningless; scale the images first")


def read_step(batch_size: int, per_pass: int) -> int:
    """Images read from X at a time for a core whose pass holds ``per_pass``:
    at least ``batch_size``, and a whole number of passes, so that the core's
    even passes are full (32 images by passes of 17 are read 34 at a time, two
    passes of 17, not 32 as two of 16)."""
    per_pass = max(1, int(per_pass))
    return per_pass * max(1, -(-int(batch_size) // per_pass))


def even_batches(start: int, stop: int, step: int):
    """[start, stop) in as few batches of at most ``step`` as it takes, of sizes
    that differ by one at most: a pass of the network over a few images reads the
    wide layers' weights for as few tiles, nearly as slowly as over a full one
    (225 images by 17 are 14 passes of 16 or 17, not 13 of 17 and one of 4)."""
    if stop <= start:
        return []
    parts = -(-(stop - start) // max(1, step))
    bounds = [start + k * (stop - start) // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def release_pages(X, start: int, stop: int) -> None:
    """Drop rows [start, stop) of a memory-mapped X from this process's resident
    memory once they have been read. The page cache keeps them (a later read maps
    them again), so reading a memmap larger than RAM never holds it whole, and the
    peak RSS of an extraction stays at the workspace, not the size of X.

    A no-op for arrays that are not file maps, for copy-on-write maps (mode 'c':
    dropping their pages would discard the user's changes), for views that are
    not one contiguous span, and where madvise is missing."""
    import mmap
    mm = getattr(X, "_mmap", None)
    if (mm is None or getattr(X, "mode", "c") not in ("r", "r+", "w+")
            or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED")):
        return
    try:
        rows = X[start:stop]
        if rows.size == 0 or not rows.flags.c_contiguous:
            return
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        lo = rows.ctypes.data - base
        hi = lo + rows.nbytes
        page = mmap.PAGESIZE
        lo, hi = (lo + page - 1) // page * page, hi // page * page  # whole pages inside
        if 0 <= lo < hi <= len(mm):
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, BufferError, TypeError):
        pass  # only an optimisation: the data stay correct either way
