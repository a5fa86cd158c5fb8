"""Data augmentation as Keras's ImageDataGenerator does it, computed in C.

    aug = vggtl.Augment(rotation_range=30, zoom_range=0.15, width_shift_range=0.2,
                        height_shift_range=0.2, shear_range=0.15, horizontal_flip=True,
                        fill_mode="nearest", seed=42)
    for xb, yb in aug.flow(trainX, trainY, batch_size=32): ...   # as ImageDataGenerator.flow
    model.fit(aug.flow(trainX, trainY, batch_size=32), epochs=20)  # as Keras's fit
    x2 = aug.apply(x, {"theta": 10.0, "zx": 1.1})                  # as apply_transform
    model.fit(trainX, trainY, epochs=20, augment=aug)                # exact: new transforms per epoch
    model.fit(trainX, trainY, epochs=20, augment=aug, augment_views=5)  # 5 cached views

What it computes (Keras 3, keras/src/legacy/preprocessing/image.py): per image one
affine transform M = R(theta) T(tx, ty) Sh(shear) Z(zx, zy), centred, applied with
pull sampling and bilinear interpolation (scipy.ndimage.affine_transform, order 1),
points outside the image filled by ``fill_mode``, then the flips. For given
parameters the result equals Keras's ``ImageDataGenerator.apply_transform`` (the
tests compare all four fill modes: equal to float32 rounding; the sums are scipy's).

Keras 3 differs from keras-preprocessing 1.1.2 (Keras 2.2, tf.keras <= 2.8): it swaps
the first two rows and columns of the matrix. vggtl follows Keras 3, so:

- ``tx`` and ``zx`` act on columns (horizontal), ``ty`` and ``zy`` on rows; and since
  Keras draws ``tx`` from ``height_shift_range`` (times the height) and ``ty`` from
  ``width_shift_range`` (times the width), ``height_shift_range`` moves the image
  sideways and ``width_shift_range`` up and down. With equal ranges on square images
  (the tutorial's) the distributions are the same either way.
- The rotation centre is (row w/2 - 0.5, col h/2 - 0.5): the image's centre when it
  is square, off-centre otherwise (Keras 3 does the same).

Random parameters come from Keras's distributions (:meth:`Augment.random_params`)
but from vggtl's counter-based generator, not NumPy's global state: each image's
transform is a function of (seed, epoch, the image's index in X), so the same seed
gives the same images whatever the batch size, the order or the thread count, and
different seeds different images. Keras's ``flow`` draws from ``np.random`` in
iteration order instead; the draws are not the same numbers as Keras's.

Values are not rescaled: uint8 images come out as float32 in 0..255, as Keras's
``flow`` gives them. Not supported: channel_shift_range, brightness_range, the
featurewise / samplewise centring and normalisation, ZCA, rescale and
preprocessing_function (vggtl's base applies its own preprocessing), and
interpolation orders other than 1.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
from typing import Dict, Optional

import numpy as np

from . import _core
from ._arrays import CORE_DTYPES, batch_for_core, for_core

__all__ = ["Augment", "AugmentIterator", "FILL_MODES", "PARAM_KEYS"]

FILL_MODES = ("nearest", "constant", "reflect", "wrap")
_FILL_CODES = {"nearest": _core.FILL_NEAREST, "constant": _core.FILL_CONSTANT,
               "reflect": _core.FILL_REFLECT, "wrap": _core.FILL_WRAP}
# Keras's apply_transform keys, in the core's column order
PARAM_KEYS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical")
_DEFAULTS = (0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
# keys Keras's get_random_transform returns that vggtl does not apply (None: absent)
_UNSUPPORTED_KEYS = ("channel_shift_intensity", "brightness")
# part of the cache key of augmented views: bump when the draws or the warp change
DRAW_VERSION = 1
_PIECE = 256  # images per core call: about 0.3 s at 224 x 224 on one thread


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_range(name: str, v) -> float:
    if not _is_number(v) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return float(v)


def _check_shift(name: str, v):
    """Keras's shift range -> ("uniform", r) or ("choice", values): a float is a
    fraction (< 1) or pixels (>= 1) drawn uniformly in (-r, r); an int n picks from
    0..n-1 with a random sign; a list picks one of its values with a random sign."""
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected a number >= 0 or a list of them, got {v!r}")
    if isinstance(v, (numbers.Integral, np.integer)):
        if v < 0:
            raise ValueError(f"{name}: expected a number >= 0 or a list of them, got {v!r}")
        return ("choice", np.arange(int(v), dtype=np.float64)) if v > 0 else ("uniform", 0.0)
    if _is_number(v):
        return ("uniform", _check_range(name, v))
    try:
        values = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or values.size == 0 or \
            not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{name}: expected a number >= 0 or a non-empty list of numbers >= 0, "
                         f"got {v!r}")
    return ("choice", np.ascontiguousarray(values))


def _check_zoom(v):
    if _is_number(v):
        z = float(v)
        if not (math.isfinite(z) and 0 <= z < 1):
            raise ValueError(f"zoom_range: a number z zooms by factors in [1 - z, 1 + z], which "
                             f"must lie in (0, inf), so 0 <= z < 1; got {v!r}")
        return (1.0 - z, 1.0 + z)
    try:
        lo, hi = (float(a) for a in v)
    except (TypeError, ValueError):
        raise ValueError(f"zoom_range: expected a number or [lower, upper], got {v!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo > 0 and hi > 0):
        raise ValueError(f"zoom_range: zoom factors must lie in (0, inf), got {v!r}")
    return (lo, hi)


def _check_images(x, name: str, ndim: int) -> np.ndarray:
    """x as an ndarray of real pixels with ``ndim`` dimensions (..., H, W, C),
    H and W >= 2; not copied."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name}: expected a numpy array of images, got {type(x).__name__}")
    if x.dtype.kind not in "uif":
        raise TypeError(f"{name}: expected real-valued pixels (uint8 or float), got dtype {x.dtype}")
    shape = "(N, H, W, C)" if ndim == 4 else "(H, W, C) or (N, H, W, C)"
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {shape}, got shape {x.shape}")
    h, w, c = x.shape[-3:]
    if h < 2 or w < 2:
        raise ValueError(f"{name}: images must be at least 2 x 2 pixels, got {h} x {w}")
    if c < 1:
        raise ValueError(f"{name}: expected at least 1 channel, got shape {x.shape}")
    return x


def _core_ready(x: np.ndarray) -> bool:
    return x.dtype in CORE_DTYPES and x.dtype.isnative and x.flags.c_contiguous \
        and x.flags.aligned


class Augment:
    """Random affine augmentation, Keras's ``ImageDataGenerator`` semantics, in C.

    Parameters (as ``ImageDataGenerator``'s)
    ----------
    rotation_range : degrees; theta ~ U(-r, r).
    width_shift_range, height_shift_range : float (a fraction of the width / height
        when < 1, pixels when >= 1; drawn uniformly in (-r, r)), int n (whole pixels
        from -(n-1) .. n-1) or a list (one of its values, random sign).
    shear_range : degrees (Keras's unit); shear ~ U(-r, r).
    zoom_range : float z (zx, zy ~ U(1 - z, 1 + z) independently) or [lower, upper].
        A factor > 1 samples a larger area: the content shrinks.
    horizontal_flip, vertical_flip : flip with probability 1/2, after the warp.
    fill_mode : "nearest", "constant", "reflect" or "wrap" (scipy.ndimage's modes;
        "wrap" is scipy's, whose period is the size minus one).
    cval : the fill value of "constant", in the images' units.
    seed : int >= 0, or None for a random one (then kept in ``aug.seed``).

    See the module's documentation for Keras 3's axis convention, which vggtl follows.
    """

    def __init__(self, rotation_range=0, width_shift_range=0.0, height_shift_range=0.0,
                 shear_range=0.0, zoom_range=0.0, horizontal_flip=False, vertical_flip=False,
                 fill_mode="nearest", cval=0.0, seed=None):
        self.rotation_range = _check_range("rotation_range", rotation_range)
        self._shift = {"height": _check_shift("height_shift_range", height_shift_range),
                       "width": _check_shift("width_shift_range", width_shift_range)}
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.shear_range = _check_range("shear_range", shear_range)
        self.zoom_range = _check_zoom(zoom_range)
        for name, v in (("horizontal_flip", horizontal_flip), ("vertical_flip", vertical_flip)):
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name}: expected True or False, got {v!r}")
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode: expected one of {', '.join(map(repr, FILL_MODES))}, "
                             f"got {fill_mode!r}")
        self.fill_mode = fill_mode
        if not _is_number(cval) or not math.isfinite(cval) or abs(cval) > np.finfo(np.float32).max:
            raise ValueError(f"cval: expected a finite number, got {cval!r}")
        self.cval = float(cval)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy) % (1 << 64)
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral, np.integer)) \
                or not 0 <= seed < (1 << 64):
            raise ValueError(f"seed: expected None or an int in [0, 2**64), got {seed!r}")
        self.seed = int(seed)

    # -- parameters -------------------------------------------------------------
    def get_config(self) -> dict:
        """The constructor's arguments (with the seed actually used):
        ``Augment(**aug.get_config())`` makes the same images."""
        def plain(v):  # numpy scalars and arrays -> Python numbers and lists (JSON)
            return np.asarray(v).tolist()
        return {"rotation_range": self.rotation_range,
                "width_shift_range": plain(self.width_shift_range),
                "height_shift_range": plain(self.height_shift_range),
                "shear_range": self.shear_range, "zoom_range": list(self.zoom_range),
                "horizontal_flip": self.horizontal_flip, "vertical_flip": self.vertical_flip,
                "fill_mode": self.fill_mode, "cval": self.cval, "seed": self.seed}

    def config_digest(self) -> str:
        """A SHA-256 of the configuration and the draw algorithm's version: what
        names this augmentation's views in the feature cache."""
        record = {"vggtl.Augment": DRAW_VERSION, **self.get_config()}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def _draw(self, ids: np.ndarray, h: int, w: int, epoch: int) -> np.ndarray:
        """(n, 8) parameters of the images with indices ``ids`` in ``epoch``'s stream."""
        ranges, values, scales = [], [], []
        # Keras: tx from height_shift_range (x the height), ty from width (x the width);
        # a range (or list) whose largest value is < 1 is a fraction of the side
        for key, side in (("height", h), ("width", w)):
            kind, v = self._shift[key]
            uniform = kind == "uniform"
            ranges.append(v if uniform else 0.0)
            values.append(None if uniform else v)
            scales.append(float(side) if (v if uniform else v.max()) < 1 else 1.0)
        return _core.augment_draw(
            np.ascontiguousarray(ids, dtype=np.int64), self.seed, epoch, self.rotation_range,
            tuple(ranges), tuple(values), tuple(scales), self.shear_range, self.zoom_range,
            self.horizontal_flip, self.vertical_flip)

    def random_params(self, n: int, image_shape, epoch: int = 0, index=None) -> Dict[str, np.ndarray]:
        """The random parameters of n images of ``image_shape`` (H, W[, C]) in
        ``epoch``: a dict keyed as Keras's ``get_random_transform`` (theta, tx, ty,
        shear, zx, zy: float64 arrays; flip_horizontal, flip_vertical: bool arrays),
        for the images at positions ``index`` (default 0..n-1) of the data set.
        ``aug.apply(X, aug.random_params(len(X), X.shape[1:]))`` is what ``flow``
        does to X in epoch 0."""
        n = _check_count("n", n)
        h, w = _check_shape(image_shape)
        epoch = _check_count("epoch", epoch)
        ids = _check_index(index, n)
        p = self._draw(ids, h, w, epoch)
        out = {k: p[:, j].copy() for j, k in enumerate(PARAM_KEYS[:6])}
        out["flip_horizontal"] = p[:, 6] != 0
        out["flip_vertical"] = p[:, 7] != 0
        return out

    # -- applying -----------------------------------------------------------------
    def apply(self, x, params) -> np.ndarray:
        """Apply given transforms, as Keras's ``apply_transform``.

        x : one image (H, W, C) or a batch (N, H, W, C), uint8 or float, read as it is.
        params : a dict keyed as Keras's apply_transform (theta, tx, ty, shear, zx, zy,
            flip_horizontal, flip_vertical; missing keys are the identity), whose
            values are scalars or, for a batch, arrays of N values; or, for a batch, a
            list of N such dicts.
        Returns float32 of x's shape.
        """
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        single = isinstance(x, np.ndarray) and x.ndim == 3
        X = _check_images(x[None] if single else x, "x", 4)
        P = _params_array(params, len(X), batch=not single)
        return self._apply(batch_for_core(X), P)[0 if single else slice(None)]

    def _apply(self, X: np.ndarray, P: np.ndarray, rows=None) -> np.ndarray:
        """out[i] = image rows[i] (i without rows) of X warped by P[i]; in pieces of
        _PIECE images, so that Ctrl-C is seen between them."""
        n = len(P)
        out = np.empty((n, *X.shape[1:]), dtype=np.float32)
        mode = _FILL_CODES[self.fill_mode]
        for i in range(0, n, _PIECE):
            j = min(n, i + _PIECE)
            _core.augment_apply(X if rows is not None else X[i:j], P[i:j], mode, self.cval,
                                None if rows is None else rows[i:j], out=out[i:j])
        return out

    def random_transform(self, x, epoch: int = 0, index=None) -> np.ndarray:
        """x (one image or a batch) with this augmentation's random transforms of
        ``epoch``; ``index``: the images' positions in the data set (default
        0..N-1), which with the seed and the epoch pick each image's transform, so a
        data set augmented in pieces equals it augmented at once. float32."""
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        single = isinstance(x, np.ndarray) and x.ndim == 3
        X = _check_images(x[None] if single else x, "x", 4)
        epoch = _check_count("epoch", epoch)
        ids = _check_index(index, len(X))
        P = self._draw(ids, X.shape[1], X.shape[2], epoch)
        out = self._apply(batch_for_core(X), P)
        return out[0] if single else out

    def flow(self, x, y=None, batch_size: int = 32, shuffle: bool = True) -> "AugmentIterator":
        """Batches of augmented images, as Keras's ``ImageDataGenerator.flow``:
        ``(x_batch, y_batch)`` (or x_batch alone when y is None) forever, a fresh
        order (when shuffle) and fresh transforms every epoch; ``len()`` is the
        batches per epoch. x (N, H, W, C) is not copied.
        ``model.fit(aug.flow(X, Y, batch_size=BS), steps_per_epoch=len(X) // BS, ...)``
        trains as ``model.fit(X, Y, batch_size=BS, augment=aug)`` does: on cached
        augmented views (see ``TransferModel.fit``'s ``augment_views``)."""
        return AugmentIterator(self, x, y, batch_size, shuffle)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"Augment({args})"


class AugmentIterator:
    """What :meth:`Augment.flow` returns: an endless iterator of batches (Keras's
    NumpyArrayIterator), ``len()`` batches per epoch, ``it[i]`` batch i of the current
    epoch. Epoch e (counted from 0) shuffles with a permutation drawn from (seed, e)
    and transforms image i with the parameters of (seed, e, i)."""

    def __init__(self, augment: Augment, x, y, batch_size, shuffle):
        self.augment = augment
        self.x = _check_images(x, "x", 4)
        self.n = len(self.x)
        if self.n == 0:
            raise ValueError("x: expected at least one image, got 0")
        if y is not None:
            if not hasattr(y, "__len__"):
                raise TypeError(f"y: expected an array of labels, got {type(y).__name__}")
            y = np.asarray(y)
            if len(y) != self.n:
                raise ValueError(f"x and y: expected the same number of samples, got {self.n} "
                                 f"and {len(y)}")
        self.y = y
        self.batch_size = _check_count("batch_size", batch_size, 1)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle: expected True or False, got {shuffle!r}")
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.batch_index = 0
        self._epoch_state = None  # (epoch, order, (n, 8) parameters of every image)
        # the core reads x in place when it can; else each batch is gathered
        self._direct = _core_ready(self.x)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The image order of ``epoch``."""
        return self._state(epoch)[0].copy()

    def _state(self, epoch: int):
        """(order, parameters of every image) of ``epoch``, drawn once per epoch."""
        if self._epoch_state is None or self._epoch_state[0] != epoch:
            ids = np.arange(self.n, dtype=np.int64)
            order = ids
            if self.shuffle:
                rng = np.random.default_rng([self.augment.seed, 0x666C6F77, epoch])  # "flow"
                order = rng.permutation(self.n).astype(np.int64)
            params = self.augment._draw(ids, self.x.shape[1], self.x.shape[2], epoch)
            self._epoch_state = (epoch, order, params)
        return self._epoch_state[1:]

    def batch(self, epoch: int, i: int):
        """Batch i of ``epoch``."""
        epoch = _check_count("epoch", epoch)
        if not 0 <= i < len(self):
            raise IndexError(f"batch index {i} out of range for {len(self)} batches")
        order, params = self._state(epoch)
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        P = np.ascontiguousarray(params[idx])
        if self._direct:
            xb = self.augment._apply(self.x, P, rows=idx)
        else:
            xb = self.augment._apply(batch_for_core(self.x[idx]), P)
        return xb if self.y is None else (xb, self.y[idx])

    def __getitem__(self, i: int):
        return self.batch(self.epoch, i)

    def __iter__(self):
        return self

    def __next__(self):
        out = self.batch(self.epoch, self.batch_index)
        self.batch_index += 1
        if self.batch_index == len(self):
            self.batch_index = 0
            self.epoch += 1
        return out

    def reset(self) -> None:
        """Back to the first batch of the current epoch."""
        self.batch_index = 0


# -- argument helpers -------------------------------------------------------------------
def _check_count(name: str, v, minimum: int = 0) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)) \
            or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return int(v)


def _check_shape(image_shape):
    try:
        h, w = (int(v) for v in tuple(image_shape)[:2])
    except (TypeError, ValueError):
        raise ValueError(f"image_shape: expected (height, width[, channels]), got "
                         f"{image_shape!r}") from None
    if h < 2 or w < 2:
        raise ValueError(f"image_shape: images must be at least 2 x 2 pixels, got {h} x {w}")
    return h, w


def _check_index(index, n: int) -> np.ndarray:
    if index is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(index)
    if ids.dtype.kind not in "iu" or ids.shape != (n,):
        raise ValueError(f"index: expected {n} integer positions, got {ids.dtype} of shape "
                         f"{ids.shape}")
    if n and ids.min() < 0:
        raise ValueError("index: positions must be >= 0")
    return for_core(ids, np.int64)


def _params_array(params, n: int, batch: bool) -> np.ndarray:
    """Keras-style parameters (a dict, or for a batch a list of n dicts) -> (n, 8)."""
    if batch and isinstance(params, (list, tuple)):
        if len(params) != n:
            raise ValueError(f"params: expected {n} dicts (one per image), got {len(params)}")
        rows = [_params_array(p, 1, False) for p in params]
        return np.concatenate(rows) if rows else np.zeros((0, 8))
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict keyed as Keras's apply_transform "
                        f"({', '.join(PARAM_KEYS)}), got {type(params).__name__}")
    for k, v in params.items():
        if k in _UNSUPPORTED_KEYS:
            if v is not None:
                raise ValueError(f"params['{k}']: not supported by vggtl.Augment (None is)")
        elif k not in PARAM_KEYS:
            raise ValueError(f"params: unknown key {k!r}; expected {', '.join(PARAM_KEYS)}")
    P = np.empty((n, 8), dtype=np.float64)
    for j, (k, d) in enumerate(zip(PARAM_KEYS, _DEFAULTS)):
        v = params.get(k, d)
        try:
            a = np.asarray(v, dtype=np.float64)
            P[:, j] = np.broadcast_to(a, (n,)) if batch else a.reshape(())
        except (TypeError, ValueError):
            want = f"a number or {n} numbers" if batch else "a number"
            raise ValueError(f"params['{k}']: expected {want}, got {v!r}") from None
        if not np.isfinite(P[:, j]).all():
            raise ValueError(f"params['{k}']: expected finite values, got {v!r}")
    P[:, 6:] = P[:, 6:] != 0  # flips: truthiness, as Keras
    return P
