"""VGG16 (configuration D) with Keras's layer names, computed by the C core.

    base = vggtl.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    F = base.predict(X, batch_size=32)                 # (N, 7, 7, 512) float32
    F4 = base.predict(X, layer="block4_pool")           # (N, 14, 14, 512)

Weights are kept as Keras stores them: conv kernels HWIO (3, 3, in, out), dense
kernels (in, out), float32. ``get_weights()`` returns ``{layer: (kernel, bias)}``.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from . import _core
from . import cache as _cache
from . import weights as _weights
from ._arrays import (as_images, batch_for_core, check_finite_batch, even_batches, for_core,
                      read_step)
from . import dispatch as _dispatch
from .dispatch import conv_plan

# the core's layer table: ((name, kind, inputs, units, param), ...) in Keras's order
_LAYERS = _core.VGG16_LAYERS
LAYER_NAMES: Tuple[str, ...] = tuple(name for name, *_ in _LAYERS)
_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}
CONV_LAYERS: Tuple[str, ...] = tuple(n for n, kind, *_ in _LAYERS if kind == "conv")
DENSE_LAYERS: Tuple[str, ...] = tuple(n for n, kind, *_ in _LAYERS if kind == "dense")
BASE_OUTPUT = "block5_pool"
MIN_SIZE = _core.VGG16_MIN_SIZE  # Keras's min_size for VGG16
TOP_SIZE = _core.VGG16_TOP_SIZE  # the top's fc1 expects 7 x 7 x 512 inputs

# Input preprocessing as an affine map per output channel (x * scale + shift),
# with the channel order reversal Keras's "caffe" mode does (RGB -> BGR).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("caffe", "torch", "scale", None)

# Scratch memory for the network's activations, per model. The core runs as many
# images at a time as fit, so this, not batch_size, bounds memory (a batch of 16
# at 224 x 224 fits; benchmarks/memory.py measures the peak). It holds
# whatever the thread count: each thread of a convolution needs buffers of its
# own, so with many threads the convolutions run on as many as it holds.
_WORKSPACE_BYTES = 512 << 20


def _pass_plan(stop, pool, h, w, n, start=0):
    """(images per pass, workspace floats) within the workspace budget.

    The kernels come prepared (VGG16._prepared_for), so the workspace holds
    activations and the convolutions' buffers only. Those buffers come first:
    the most threads (up to vggtl.set_num_threads) whose buffers leave room for
    one image, as the core does with a workspace that holds fewer than the knob
    asks for. The rest holds images: passes are as large as the budget allows,
    whatever batch_size says (features do not depend on how images are
    grouped). At least one image and one thread, even past the budget (an image
    too large for it)."""
    budget = _WORKSPACE_BYTES // 4

    def floats(images, threads):
        return _core.vgg16_workspace_floats(stop, pool, images, h, w, start_layer=start,
                                            prepared=True, threads=threads)

    per = floats(2, 1) - floats(1, 1)  # one more image's activations
    lo, hi = 1, _core.get_num_threads()
    while lo < hi:  # the buffers grow with the threads
        mid = (lo + hi + 1) // 2
        if floats(1, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    fixed = floats(1, lo) - per
    images = int(min(n, max(1, (budget - fixed) // max(per, 1))))
    return images, floats(images, lo)


PRECISIONS = _core.PRECISION_NAMES  # ("fp32", "bf16"), indexed by the core's enum


class PrecisionNotice(UserWarning):
    """Said once per process when ``precision="auto"`` runs a base in bf16."""


_told_auto_bf16 = False  # PrecisionNotice given


def _check_precision(precision) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS + ("auto",):
        raise ValueError(f"precision: expected 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def _resolve_precision(asked: str) -> str:
    """'fp32' or 'bf16': what a base asked for ``asked`` computes now (the
    instruction set can change between calls, see vggtl.set_isa)."""
    global _told_auto_bf16
    if asked != "auto":
        return asked
    precision = _dispatch.auto_precision()
    if precision == "bf16" and not _told_auto_bf16:
        _told_auto_bf16 = True
        warnings.warn(
            "precision='auto' runs the frozen base's convolutions in bfloat16 on this CPU's "
            "AMX tiles: 1.3 to 1.6 times as fast as float32, features within about 1e-2 of the "
            "largest float32 one (README, 'bfloat16', for what that did to accuracy). "
            "precision='fp32' keeps float32 (this is said once)",
            PrecisionNotice, stacklevel=3)
    return precision


def _preprocess_params(mode):
    """(scale[3], shift[3], reverse_channels) for a preprocessing mode."""
    if mode is None:
        return (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), False
    if mode == "caffe":  # RGB 0-255 -> BGR minus the ImageNet mean (Keras vgg16)
        return (1.0, 1.0, 1.0), tuple(-m for m in _CAFFE_MEAN_BGR), True
    if mode == "torch":  # x/255, minus mean, over std (torchvision)
        scale = tuple(1.0 / (255.0 * s) for s in _TORCH_STD)
        shift = tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD))
        return scale, shift, False
    if mode == "scale":  # x/255, what the tutorial does
        return (1 / 255.0,) * 3, (0.0, 0.0, 0.0), False
    raise ValueError(f"preprocess: expected one of {PREPROCESS_MODES}, got {mode!r}")


def preprocess_input(x, mode: Optional[str] = "caffe") -> np.ndarray:
    """Keras's ``vgg16.preprocess_input`` (mode "caffe") and friends, as a function.

    Takes N x H x W x 1|3 (or N x H x W) images, uint8 or float, RGB 0-255 (or 0-1
    for "scale"-free modes as the user has them), and returns float32 N x H x W x 3.
    Unlike Keras it never modifies ``x`` in place.
    """
    X = as_images(x, "x")
    scale, shift, rev = _preprocess_params(mode)
    xb = batch_for_core(X)
    check_finite_batch(xb, "x", 0)
    return _core.input_convert(xb, scale, shift, rev)


def _glorot_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    w = rng.random(shape, dtype=np.float32)
    w *= np.float32(2 * limit)
    w -= np.float32(limit)
    return w


def _expected_shapes(classes: int, include_top: bool) -> Dict[str, Tuple[tuple, tuple]]:
    shapes = {}
    for name, kind, cin, units, _ in _LAYERS:
        if kind == "conv":
            shapes[name] = ((3, 3, cin, units), (units,))
        elif kind == "dense" and include_top:
            units = units or classes  # predictions: as many as the classes
            shapes[name] = ((cin, units), (units,))
    return shapes


class VGG16:
    """The VGG16 network, Keras's names and semantics, computed in C.

    Parameters
    ----------
    weights : "imagenet", None, dict or path
        "imagenet" (the default, as in Keras): the pretrained weights, found in
        ``$VGGTL_WEIGHTS``, Keras's, PyTorch's or vggtl's cache, else downloaded
        (see :mod:`vggtl.weights`). A path: a Keras ``.h5`` / ``.weights.h5`` /
        ``.keras``, a torchvision ``.pth`` or a safetensors file. None:
        Glorot-uniform kernels and zero biases, as Keras initialises them, drawn
        from ``seed``. A dict ``{layer_name: (kernel, bias)}`` in the form
        :meth:`get_weights` returns (Keras layouts) sets them.
    include_top : bool
        Add flatten, fc1, fc2 and the ``classes``-way softmax; input must then be
        224 x 224.
    input_shape : (H, W, C) or None
        The image size the model expects (C is 1 or 3; 1 is repeated to 3
        channels). None accepts any size of at least 32 x 32.
    pooling : None, "avg" or "max"
        Without the top, global pooling of the base's output (N, 512).
    classes : int
        Units of the top's softmax (``include_top=True`` only).
    preprocess : "auto", None, "caffe", "torch" or "scale"
        "auto" (the default): what the weights were trained with, "caffe" for
        Keras's files, "torch" for torchvision's, a vggtl file's recorded mode,
        None for ``weights=None`` or a plain dict. Applied to every image inside
        the core, per batch: "caffe" is Keras's
        ``vgg16.preprocess_input`` (RGB -> BGR, minus the ImageNet mean), "torch"
        torchvision's, "scale" divides by 255 (the tutorial's ``X/255.0``).
    seed : int or None
        Seed of the initialisation when ``weights=None``.
    precision : "fp32", "bf16" or "auto"
        Arithmetic of the convolutions in :meth:`predict`, :meth:`extract` and
        :meth:`forward_from`. "fp32" (the default): float32 throughout. "bf16":
        the convolutions after block 1 run Winograd F(2x2, 3x3) with bfloat16
        operands and float32 sums (on Intel's AMX tiles or with VDPBF16PS where
        the CPU has them; elsewhere VDPBF16PS's bits in plain C, slower than
        "fp32", with a RuntimeWarning); block 1, at full resolution, stays
        float32, since in bf16 it cost the augmented tutorial about 2 points
        of accuracy on real digits. Features differ from float32 ones by a few
        1e-3 of their largest value per layer, under 1e-2 for the whole base
        (README, "bfloat16").
        "auto": "bf16" where the AMX tiles run it (1.3 to 1.6 times as fast; a
        :class:`PrecisionNotice` says so once per process), "fp32" elsewhere;
        see :func:`vggtl.dispatch.auto_precision`.
        The attribute ``precision`` is what the base computes now ("fp32" or
        "bf16"), ``precision_asked`` what was given. Training (fine-tuning)
        always runs float32.
    """

    def __init__(self, weights="imagenet", include_top: bool = False,
                 input_shape: Optional[Tuple[int, int, int]] = None,
                 pooling: Optional[str] = None, classes: int = 1000,
                 preprocess: Optional[str] = "auto", seed: Optional[int] = 0,
                 precision: str = "fp32"):
        if pooling not in (None, "avg", "max"):
            raise ValueError(f"pooling: expected None, 'avg' or 'max', got {pooling!r}")
        if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
            raise ValueError(f"classes: expected an int >= 1, got {classes!r}")
        self.include_top = bool(include_top)
        self.pooling = pooling if not self.include_top else None
        self.classes = int(classes)
        self.input_shape = self._check_input_shape(input_shape)
        self.precision_asked = _check_precision(precision)
        if self.precision_asked == "bf16" and not _core.bf16_native():
            warnings.warn("precision='bf16': the bf16 products run emulated here (no "
                          "AVX512_BF16 on this CPU, or $VGGTL_ISA / vggtl.set_isa chose another "
                          "level): the same features as with VDPBF16PS, but slower than "
                          "precision='fp32'", RuntimeWarning, stacklevel=2)
        if preprocess != "auto":
            _preprocess_params(preprocess)  # validates the mode before any file is read
        self._workspace = np.empty(0, dtype=np.float32)
        self._lock = threading.Lock()
        self._warned_unit_range = False  # _warn_if_unit_range: once per model
        self._trainable = set()  # layer names marked trainable (for fine-tuning)
        self._weights: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        # conv name -> (algo, its kernel prepared for algo): transformed once,
        # reused by every call while the weights stay (see _writing)
        self._prepared: Dict[str, Tuple[str, np.ndarray]] = {}
        # "imagenet", a path, a dict or None -> (dict or None, the weights' preprocessing)
        loaded, wanted = _weights.resolve_weights(weights, include_top=self.include_top)
        self.preprocess = wanted if preprocess == "auto" else preprocess
        _preprocess_params(self.preprocess)
        if loaded is None:
            self._init_weights(seed)
        else:
            self.set_weights(loaded)

    # -- construction ---------------------------------------------------------
    def _check_input_shape(self, input_shape):
        if input_shape is None:
            return (TOP_SIZE, TOP_SIZE, 3) if self.include_top else None
        try:
            h, w, c = (int(v) for v in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape: expected (height, width, channels), got "
                             f"{input_shape!r}") from None
        if c not in (1, 3):
            raise ValueError(f"input_shape: expected 1 or 3 channels, got {c}")
        if self.include_top and (h, w) != (TOP_SIZE, TOP_SIZE):
            raise ValueError(f"input_shape: include_top=True needs {TOP_SIZE} x {TOP_SIZE} "
                             f"images, got {h} x {w}")
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"input_shape: height and width must be at least {MIN_SIZE}, "
                             f"got {h} x {w}")
        return (h, w, c)

    @property
    def layers(self):
        """Keras-like handles on the layers, ``layers[0]`` being the input as in a
        Keras model built on an input tensor, so the tutorial's
        ``for layer in base.layers[15:]: layer.trainable = True`` marks block 5.
        Every layer starts frozen: ``TransferModel.fit`` trains the head only, and
        ``TransferModel.fine_tune`` trains the layers marked here."""
        return [LayerView(self, "input_1")] + [LayerView(self, n) for n in self.layer_names]

    @property
    def trainable_layers(self) -> Tuple[str, ...]:
        """Names of the layers marked trainable, in order."""
        return tuple(n for n in self.layer_names if n in self._trainable)

    def get_layer(self, name: str) -> "LayerView":
        if name not in self.layer_names:
            raise ValueError(f"name: unknown layer '{name}'; expected one of "
                             f"{', '.join(self.layer_names)}")
        return LayerView(self, name)

    @property
    def layer_names(self) -> Tuple[str, ...]:
        """Names of the layers this model has, in order (Keras's names)."""
        last = "predictions" if self.include_top else BASE_OUTPUT
        return LAYER_NAMES[: _INDEX[last] + 1]

    def _init_weights(self, seed):
        rng = np.random.default_rng(seed)
        for name, (kshape, bshape) in _expected_shapes(self.classes, self.include_top).items():
            if len(kshape) == 4:
                fan_in, fan_out = 9 * kshape[2], 9 * kshape[3]
            else:
                fan_in, fan_out = kshape
            self._weights[name] = (_glorot_uniform(rng, kshape, fan_in, fan_out),
                                   np.zeros(bshape, dtype=np.float32))
        self._freeze_arrays()

    def _freeze_arrays(self):
        """Makes every weight array read-only (writes go through _writing) and
        drops the kernels prepared from earlier ones."""
        for k, b in self._weights.values():
            k.flags.writeable = False
            b.flags.writeable = False
        self._prepared = {}
        self._weights_version = getattr(self, "_weights_version", 0) + 1

    def set_weights(self, weights: Mapping) -> None:
        """Set all weights from ``{layer: (kernel, bias)}`` (Keras layouts).

        Every layer of the model must be present with exactly its shapes; nothing
        changes unless all of them are valid.
        """
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights: expected a dict {{layer: (kernel, bias)}}, "
                            f"got {type(weights).__name__}")
        expected = _expected_shapes(self.classes, self.include_top)
        if self.include_top and "predictions" in weights:
            try:
                classes = int(np.shape(weights["predictions"][1])[0])
            except (TypeError, IndexError, KeyError):
                classes = self.classes
            if classes != self.classes:  # Keras refuses this too
                raise ValueError(f"weights: the top's 'predictions' layer has {classes} classes "
                                 f"but the model was built with classes={self.classes}; pass "
                                 f"classes={classes}")
        new = {}
        for name, (kshape, bshape) in expected.items():
            if name not in weights:
                raise ValueError(f"weights: layer '{name}' is missing (expected kernel "
                                 f"{kshape} and bias {bshape})")
            pair = weights[name]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"weights['{name}']: expected a (kernel, bias) pair")
            arrays = []
            for what, arr, shape in (("kernel", pair[0], kshape), ("bias", pair[1], bshape)):
                a = np.asarray(arr)
                if a.dtype.kind not in "fiu":
                    raise TypeError(f"weights['{name}'] {what}: expected real numbers, "
                                    f"got dtype {a.dtype}")
                if a.shape != shape:
                    raise ValueError(f"weights['{name}'] {what}: expected shape {shape}, "
                                     f"got {a.shape}")
                a = np.array(a, dtype=np.float32, order="C", copy=True)
                if not np.isfinite(a).all():
                    raise ValueError(f"weights['{name}'] {what}: contains NaN or infinity")
                arrays.append(a)
            new[name] = (arrays[0], arrays[1])
        with self._lock:
            self._weights = new
            self._freeze_arrays()

    def get_weights(self) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """``{layer: (kernel, bias)}`` in Keras layouts (HWIO / (in, out)); copies."""
        return {k: (w.copy(), b.copy()) for k, (w, b) in self._weights.items()}

    def save_weights(self, path) -> None:
        """Write the weights to ``path`` as safetensors (vggtl's format), atomically,
        with the preprocessing mode, so ``VGG16(weights=path)`` restores both."""
        _weights.save_weights(self._weights, path, preprocess=self.preprocess)

    def count_params(self) -> int:
        return int(sum(w.size + b.size for w, b in self._weights.values()))

    # -- inference ------------------------------------------------------------
    def _params(self, top: bool):
        names = CONV_LAYERS + (DENSE_LAYERS if top else ())
        out = []
        for n in names:
            out.extend(self._weights[n])
        return out

    def _resolve_layer(self, layer):
        if layer is None:
            return _INDEX["predictions" if self.include_top else BASE_OUTPUT], self.pooling
        if not isinstance(layer, str):
            raise TypeError(f"layer: expected a layer name, got {type(layer).__name__}")
        if layer not in _INDEX:
            raise ValueError(f"layer: unknown layer '{layer}'; expected one of "
                             f"{', '.join(self.layer_names)}")
        if layer not in self.layer_names:
            raise ValueError(f"layer: '{layer}' is part of the top, which this model does not "
                             f"have (include_top=False)")
        return _INDEX[layer], None

    def output_shape(self, layer: Optional[str] = None, input_shape=None) -> tuple:
        """Shape of one image's output (without N) at ``layer`` for ``input_shape``."""
        stop, pooling = self._resolve_layer(layer)
        h, w = (input_shape or self.input_shape or (None, None))[:2]
        if h is None:
            raise ValueError("input_shape: needed when the model has no fixed input_shape")
        oh, ow, oc = _core.vgg16_output_shape(stop, _pool_code(pooling), self.classes, h, w)
        if stop >= _INDEX["flatten"] or pooling is not None:
            return (oc,)
        return (oh, ow, oc)

    def images_per_pass(self, input_shape=None, layer: Optional[str] = None) -> int:
        """How many images of ``input_shape`` one pass of the core runs up to
        ``layer``: as many as the workspace budget holds. ``predict`` and the
        feature cache read X a whole number of passes at a time, at least
        ``batch_size``; the features are the same however images are grouped."""
        stop, pooling = self._resolve_layer(layer)
        h, w = (input_shape or self.input_shape or (None, None))[:2]
        if h is None:
            raise ValueError("input_shape: needed when the model has no fixed input_shape")
        return _pass_plan(stop, _pool_code(pooling), h, w, 1 << 30)[0]

    def predict(self, X, batch_size: int = 32, layer: Optional[str] = None) -> np.ndarray:
        """Features of X (N x H x W x 1|3 or N x H x W, uint8 or float) at ``layer``.

        ``layer=None`` is the model's output (block5_pool, pooled if ``pooling`` is
        set, or the softmax with the top). Returns float32: (N, h, w, c) for conv
        and pool layers, (N, units) past flatten or with pooling. X is read one
        batch at a time and never copied as a whole; the GIL is released while the
        core computes and Ctrl-C stops it within about a second. Pixels must be
        finite and within +-65535 (8- or 16-bit images, floats in 0-1 or 0-255):
        others raise ValueError, since VGG16's features of them would be NaN or
        meaningless.
        """
        X = as_images(X)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        n, h, w, c = X.shape
        self._check_image_size(h, w, c)
        stop, pooling = self._resolve_layer(layer)
        pool = _pool_code(pooling)
        oh, ow, oc = _core.vgg16_output_shape(stop, pool, self.classes, h, w)
        flat = stop >= _INDEX["flatten"] or pooling is not None
        out = np.empty((n, oc) if flat else (n, oh, ow, oc), dtype=np.float32)
        if n == 0:
            return out
        fit, floats = _pass_plan(stop, pool, h, w, n)
        step = read_step(batch_size, fit)  # X is read (and converted) this many images at a time
        params = self._params(stop >= _INDEX["fc1"])
        scale, shift, rev = _preprocess_params(self.preprocess)
        # the workspace is reused across calls; the lock keeps two threads
        # predicting with one model from sharing it at the same time
        with self._lock:
            ws = self._get_workspace(floats)
            prepared = self._prepared_for(0, stop, h, w)
            for i, j in even_batches(0, n, step):
                xb = batch_for_core(X[i:j])
                check_finite_batch(xb, "X", i)
                if i == 0:
                    self._warn_if_unit_range(xb)
                _core.vgg16_forward(xb, params, stop, pool, scale, shift, rev, ws,
                                    out=out[i:j], precision=self.precision,
                                    prepared=prepared)
        return out

    def forward_from(self, F, after: str, layer: Optional[str] = None,
                     batch_size: int = 32) -> np.ndarray:
        """Run the network on ``F``, the float32 output of layer ``after`` (a cached
        cut, e.g. ``predict(X, layer="block4_pool")``), up to ``layer`` (default:
        the model's output, without pooling)."""
        if after not in self.layer_names or after in ("predictions",):
            raise ValueError(f"after: expected a layer of this model before its output, got {after!r}")
        start = _INDEX[after] + 1
        stop, _ = self._resolve_layer(layer)
        if stop < start:
            raise ValueError(f"layer: '{LAYER_NAMES[stop]}' comes before '{after}'")
        F = for_core(F, np.float32)
        if F.ndim != 4:
            raise ValueError(f"F: expected (N, h, w, c) activations of '{after}', got shape {F.shape}")
        n, h, w, c = F.shape
        oh, ow, oc = _core.vgg16_output_shape(stop, _core.POOL_NONE, self.classes, h, w,
                                              start_layer=start)
        flat = stop >= _INDEX["flatten"]
        out = np.empty((n, oc) if flat else (n, oh, ow, oc), dtype=np.float32)
        if n == 0:
            return out
        fit, floats = _pass_plan(stop, _core.POOL_NONE, h, w, n, start)
        step = read_step(batch_size, fit)
        params = self._params(stop >= _INDEX["fc1"])
        with self._lock:
            ws = self._get_workspace(floats)
            prepared = self._prepared_for(start, stop, h, w)
            for i, j in even_batches(0, n, step):
                _core.vgg16_forward(F[i:j], params, stop, _core.POOL_NONE,
                                    (1.0,) * 3, (0.0,) * 3, False, ws, out=out[i:j],
                                    start_layer=start, precision=self.precision,
                                    prepared=prepared)
        return out

    def extract(self, X, layer: Optional[str] = None, cache=True, batch_size: int = 32,
                progress: bool = True, dtype: str = "float32", **kwargs) -> np.ndarray:
        """Features of X at ``layer`` (None: as :meth:`predict`) through the on-disk
        feature cache: computed once, then a read-only memmap on every later call,
        in this process or another. ``cache``: True (``$XDG_CACHE_HOME/vggtl/
        features``), a folder, or False (compute, keep nothing). ``dtype``:
        "float32" or "float16". See :func:`vggtl.cache.extract` (``view``,
        ``transform``, ``x_digest``)."""
        return _cache.extract(self, X, layer=layer, cache=cache, batch_size=batch_size,
                              progress=progress, dtype=dtype, **kwargs)

    def feature_source(self, layer: Optional[str] = None) -> "VGG16Features":
        """This model cut at ``layer`` (None: its output, as :meth:`predict`) as the
        feature cache sees it: its part of the cache key, the features' shape and
        the features (see :class:`vggtl.cache.plan.FeatureSource`). Raises for an
        unknown layer or one of a top the model does not have."""
        return VGG16Features(self, layer)

    def _weights_digest(self, stop: int) -> str:
        """SHA-256 of every value of the weights of every layer up to index
        ``stop``, remembered per weights version: the weight arrays are read-only,
        and every way of changing them (set_weights, fine-tuning,
        TransferModel.set_weights: _writing) starts a new version, so a remembered
        digest is never stale."""
        version = self._weights_version
        memo = self.__dict__.setdefault("_digest_memo", {})
        got = memo.get((stop, version))
        if got is None:
            got = _hash_weights(self, stop)
            for key in [k for k in memo if k[1] != version]:
                del memo[key]  # only the current version's digests are of use
            memo[(stop, version)] = got
        return got

    def forget_weights_digest(self) -> None:
        """Forget the remembered weights digests (never needed: a change of the
        weights starts a new version)."""
        self.__dict__.pop("_digest_memo", None)

    def _warn_if_unit_range(self, xb) -> None:
        """Float images already divided by 255 (the seed's ``X = X/255.0``, kept by
        habit) under a preprocessing that expects 0..255 give the features of
        near-black images: warned once per model."""
        if getattr(self, "_warned_unit_range", False) or self.preprocess is None or \
                xb.dtype.kind != "f":
            return
        lo, hi = float(xb.min()), float(xb.max())
        if not (0.0 <= lo and hi <= 1.0 and hi > 0.0):
            return
        self._warned_unit_range = True
        what = {"scale": "divides by 255 itself",
                "caffe": "subtracts the ImageNet mean of 0..255 pixels",
                "torch": "divides by 255 itself, then standardises"}.get(self.preprocess,
                                                                         "expects 0..255")
        warnings.warn(f"X: float images with every value in [0, 1] (max {hi:.3g}), but "
                      f"preprocess={self.preprocess!r} expects pixels in 0..255 (it {what}): "
                      f"the network sees near-black images. Pass the images as loaded (X, "
                      f"not X / 255.0), or VGG16(preprocess=None) if X is already what the "
                      f"network should see", UserWarning, stacklevel=3)

    # -- prepared kernels -------------------------------------------------------
    def _prepared_for(self, start: int, stop: int, h: int, w: int):
        """The 13 entries of the core's ``prepared=``: (algo, kernel prepared for
        it) for each conv run from layer ``start`` to ``stop`` on h x w maps, None
        for the others. Prepared once per layer and algorithm (a Winograd kernel
        is 4x the float32 weights), dropped when the weights change (_writing)."""
        entries = [None] * len(CONV_LAYERS)
        for i, (name, kind, cin, units, _) in enumerate(_LAYERS[start:stop + 1], start):
            if kind == "conv":
                algo = _core.conv3x3_algo(
                    h, w, cin, units,
                    precision=_core.vgg16_conv_precision(i, precision=self.precision))
                got = self._prepared.get(name)
                if got is None or got[0] != algo:
                    got = (algo, _core.conv3x3_prepare(self._weights[name][0], algo))
                    self._prepared[name] = got
                entries[CONV_LAYERS.index(name)] = got
            elif kind == "pool":
                h, w = h // 2, w // 2
        return entries

    @contextlib.contextmanager
    def _writing(self, names):
        """Lets the kernels and biases of layers ``names`` be written in place
        (set_weights of a TransferModel, fine-tuning), and drops what was derived
        from them on the way out (prepared kernels; the weights version that the
        feature cache's digest is remembered under). The arrays are read-only
        otherwise, so that no write can leave a stale prepared kernel or digest
        behind unnoticed."""
        names = [n for n in names if n in self._weights]
        for n in names:
            for a in self._weights[n]:
                a.flags.writeable = True
        try:
            yield
        finally:
            for n in names:
                for a in self._weights[n]:
                    a.flags.writeable = False
                self._prepared.pop(n, None)
            self._weights_version += 1  # what was derived from them (digests) is stale

    def _check_image_size(self, h, w, c):
        # one image (H, W, C) without its batch axis reads as H images of W x C
        hint = " (for a single image of shape (H, W, C), pass x[None])" if c in (1, 3) and \
            min(h, w) <= 3 else ""
        if self.input_shape is not None:
            eh, ew, _ = self.input_shape
            if (h, w) != (eh, ew):
                raise ValueError(f"X: expected images of {eh} x {ew} (the model's input_shape), "
                                 f"got {h} x {w}{hint}")
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"X: images must be at least {MIN_SIZE} x {MIN_SIZE}, got "
                             f"{h} x {w}{hint}")

    def _get_workspace(self, floats: int) -> np.ndarray:
        # grows to the largest pass asked for (at most the budget) and is kept: a
        # pass up to a cut and the pass from it, one after the other, would
        # otherwise each map a new one and pay its page faults
        if self._workspace.size < floats:
            self._workspace = np.empty(floats, dtype=np.float32)
        return self._workspace[:floats]

    @property
    def precision(self) -> str:
        """'fp32' or 'bf16': the arithmetic of the convolutions now (``precision``
        given to the constructor, "auto" resolved for the current instruction set)."""
        return _resolve_precision(self.precision_asked)

    @precision.setter
    def precision(self, value: str) -> None:
        self.precision_asked = _check_precision(value)

    def __repr__(self):
        return (f"VGG16(include_top={self.include_top}, input_shape={self.input_shape}, "
                f"pooling={self.pooling!r}, preprocess={self.preprocess!r}, "
                + (f"precision={self.precision_asked!r}, " if self.precision_asked != "fp32"
                   else "")
                + f"params={self.count_params():,})")


_ALGO_LETTERS = {"im2col": "i", "winograd": "w", "winograd6": "6", "winograd3": "3",
                 "winograd_bf16": "b", "winograd_bf16_amx": "a"}


def _hash_weights(model: "VGG16", stop: int) -> str:
    """SHA-256 over each layer's name, shapes, dtypes and every value, for the
    layers up to index ``stop`` (hashed on up to 4 threads)."""
    layers = [(name, model._weights[name]) for name in CONV_LAYERS + DENSE_LAYERS
              if _INDEX[name] <= stop and name in model._weights]

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


def _conv_algos(input_size, stop: int, precision: str) -> str:
    """The algorithm of each convolution up to layer ``stop``, one letter each
    ('i' im2col, 'w' Winograd F(4x4), '6' Winograd F(6x6), 'b' bf16 Winograd,
    'a' bf16 Winograd on AMX)."""
    plan = conv_plan(tuple(input_size), precision=precision)
    return "".join(_ALGO_LETTERS[plan[n]] for n in LAYER_NAMES[:stop + 1] if n in plan)


class VGG16Features:
    """A VGG16 cut at one layer, as the feature cache sees it
    (:class:`vggtl.cache.plan.FeatureSource`); made by :meth:`VGG16.feature_source`."""

    def __init__(self, model: VGG16, layer: Optional[str]):
        self.model, self.layer = model, layer
        self.stop, self.pooling = model._resolve_layer(layer)
        self.name = LAYER_NAMES[self.stop]

    def check_input(self, h: int, w: int, c: int) -> None:
        self.model._check_image_size(h, w, c)

    def item_shape(self, input_size) -> tuple:
        return self.model.output_shape(self.layer, input_shape=tuple(input_size))

    def images_per_pass(self, input_size) -> int:
        return self.model.images_per_pass(input_size, self.layer)

    def predict(self, X, batch_size: int) -> np.ndarray:
        return self.model.predict(X, batch_size=batch_size, layer=self.layer)

    def passes_through(self, cut: str) -> bool:
        """Whether :meth:`predict_through` can give ``cut``'s output on the way:
        ``cut`` comes before this layer and nothing pools the output globally."""
        return self.pooling is None and cut in _INDEX and _INDEX[cut] < self.stop

    def predict_through(self, X, batch_size: int, cut: str):
        """(``cut``'s output, this layer's output) of X: the same features as
        :meth:`predict`, in two parts (the layers do not depend on the split)."""
        g = self.model.predict(X, batch_size=batch_size, layer=cut)
        return g, self.model.forward_from(g, cut, layer=self.layer, batch_size=batch_size)

    def weights_digest(self) -> str:
        """SHA-256 of every weight of the layers up to this cut."""
        return self.model._weights_digest(self.stop)

    def key_parts(self, input_size) -> dict:
        """What of the network changes the features: the weights below the cut,
        the cut, the pooling, the preprocessing and each convolution's algorithm
        (Winograd and im2col features differ in the last bits, bf16 ones in the
        third digit: an entry holds one algorithm's per layer, as the setting
        and the model's precision chose them)."""
        scale, shift, rev = _preprocess_params(self.model.preprocess)
        return {
            "weights": self.weights_digest(),
            "layer": self.name,
            "pooling": self.pooling,
            "preprocess": {"mode": self.model.preprocess, "scale": [float(v) for v in scale],
                           "shift": [float(v) for v in shift], "reverse_channels": bool(rev)},
            "conv": _conv_algos(input_size, self.stop, self.model.precision),
        }


class LayerView:
    """A VGG16 layer as Keras shows it: ``name``, ``trainable``, ``get_weights()``."""

    def __init__(self, model: "VGG16", name: str):
        self._model = model
        self.name = name

    @property
    def trainable(self) -> bool:
        return self.name in self._model._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"trainable: expected True or False, got {value!r}")
        if self.name == "input_1":
            return  # no weights: nothing to train, as in Keras
        if value:
            self._model._trainable.add(self.name)
        else:
            self._model._trainable.discard(self.name)

    def get_weights(self):
        w = self._model._weights.get(self.name)
        return [] if w is None else [w[0].copy(), w[1].copy()]

    def __repr__(self):
        return f"<VGG16 layer {self.name} trainable={self.trainable}>"


def _pool_code(pooling):
    return {None: _core.POOL_NONE, "avg": _core.POOL_AVG, "max": _core.POOL_MAX}[pooling]
