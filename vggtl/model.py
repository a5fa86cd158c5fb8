"""TransferModel: a frozen VGG16 base and a trainable head, trained in C.

    base = vggtl.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(512, activation="relu"),
                                            vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")])
    model.compile(optimizer=vggtl.Adam(learning_rate=1e-4, decay=1e-4 / 20),
                  loss="binary_crossentropy", metrics=["accuracy"])
    H = model.fit(trainX, trainY, batch_size=32, epochs=20, validation_data=(testX, testY))

The base is frozen: its features are computed once per ``fit`` (not once per
epoch, as the Keras script does) and the head trains on them, one C call per
epoch with the GIL released.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._atomic import atomic_write_bytes
from . import optim as _optim
from . import metrics as _metrics
from .callbacks import Callback, EarlyStopping, History
from .layers import INPUT_LAYERS, Dense, Dropout, Flatten, Layer, from_config
from .vgg16 import CONV_LAYERS, LAYER_NAMES, VGG16
from .augment import Augment as _Augment

LOSSES = {"binary_crossentropy": _core.LOSS_BCE, "categorical_crossentropy": _core.LOSS_CCE,
          "sparse_categorical_crossentropy": _core.LOSS_SPARSE_CCE}
# 2: the base may have precision "bf16". A model is written with the lowest
# version that holds it (fp32 models stay 1), so that an older vggtl refuses a
# bf16 model instead of running it in float32, and still reads the others.
FORMAT_VERSION = 2


def _locked(method):
    """Runs a TransferModel method holding the model's lock: a second thread's
    fit, predict or save waits for the first one's to finish instead of
    updating the same weights at the same time."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


# Augmented views fit computes by default: every epoch draws one of them per
# image. Fewer passes through the base than epochs; on the tutorial's data the
# test accuracy with 2 to 6 views stayed within the seed-to-seed spread of a
# fresh pass every epoch (benchmarks/tutorial.py, rows exact and views:K).
AUTO_VIEWS = 3


def auto_views(epochs: int) -> int:
    """The augmented views ``fit(augment=...)`` extracts for ``epochs`` epochs
    when ``augment_views`` is not given: ``min(epochs, AUTO_VIEWS)``, at least 1."""
    return max(1, min(int(epochs), AUTO_VIEWS))


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return int(v)


class TransferModel:
    """A VGG16 base (frozen) plus a head of Keras layers, trained in C.

    Parameters
    ----------
    base : VGG16
        The feature extractor; its output (block5_pool, or the pooled vector)
        feeds the head.
    head : list of layers
        ``Flatten()`` (default when omitted), ``GlobalAveragePooling2D()`` or
        ``GlobalMaxPooling2D()`` first, then ``Dense`` and ``Dropout`` layers; the
        last layer is a ``Dense`` (the output).
    seed : int
        Seeds the head's initialisation, the shuffling and the dropout masks:
        the same seed and thread count give bit-identical training.
    cache : True, False or a folder
        Where ``fit`` keeps the base's features (:mod:`vggtl.cache`): True, the
        default, is ``$XDG_CACHE_HOME/vggtl/features``; False computes them on
        every ``fit``. ``fit(cache=...)`` overrides it for one call.
    """

    def __init__(self, base: VGG16, head: Sequence[Layer], seed: int = 0, name: str = "transfer_model",
                 cache=True):
        if not isinstance(base, VGG16):
            raise TypeError(f"base: expected a vggtl.VGG16, got {type(base).__name__}")
        if base.include_top:
            raise ValueError("base: expected a VGG16 with include_top=False (the head replaces the top)")
        if isinstance(head, Layer) or not isinstance(head, (list, tuple)) or len(head) == 0:
            raise TypeError("head: expected a non-empty list of layers, e.g. [Flatten(), "
                            "Dense(512, activation='relu'), Dropout(0.5), Dense(2, activation='softmax')]")
        self._lock = threading.RLock()  # one call at a time (fit calls fit_features)
        self.base = base
        self.seed = _check_int("seed", seed, 0)
        self.name = name
        self.cache = cache
        layers = list(head)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"head[{i}]: expected a vggtl layer, got {type(layer).__name__}")
            if isinstance(layer, INPUT_LAYERS) and i != 0:
                raise ValueError(f"head[{i}]: {type(layer).__name__} must come first in the head")
        if not isinstance(layers[0], INPUT_LAYERS):
            layers.insert(0, Flatten())
        if not isinstance(layers[-1], Dense):
            raise ValueError("head: the last layer must be a Dense layer (the output)")
        self._input_layer = layers[0]
        self.layers: List[Layer] = layers
        self._name_layers()
        self._weights: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        self._init_head()
        self.optimizer: Optional[_optim.Optimizer] = None
        self.loss: Optional[str] = None
        self.metrics: List[str] = []
        self._slots: Dict[str, tuple] = {}
        self._metric_objs: Dict[str, _metrics.Metric] = {}
        self._epochs_done = 0
        self.stop_training = False
        self.classes_: Optional[np.ndarray] = None
        # display names of the output's classes (load_images's folders, the CLI's
        # --names): saved with the model, printed by predict, used by the plots
        self.class_names: Optional[List[str]] = None
        # the Augment of the last fit or fine_tune that had one: predict(tta=K)'s default
        self.augment = None
        self.history: Optional[History] = None
        self._conv_slots: Dict[str, tuple] = {}  # optimizer state of base convs being tuned

    # -- structure --------------------------------------------------------------
    def _name_layers(self):
        counts: Dict[str, int] = {}
        used = {layer.name for layer in self.layers if layer.name}
        for layer in self.layers:
            if layer.name:
                continue
            while True:
                k = counts.get(layer.kind, 0)
                counts[layer.kind] = k + 1
                name = layer.kind if k == 0 else f"{layer.kind}_{k}"
                if name not in used:
                    break
            layer.name = name
            used.add(name)
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"head: layer names must be unique, got {names}")

    @property
    def feature_shape(self) -> Tuple[int, int, int]:
        """(h, w, c) of the base's output per image (pooled output: (1, 1, 512))."""
        if self.base.input_shape is None:
            raise ValueError("base: the model needs a base with a fixed input_shape, e.g. "
                             "VGG16(include_top=False, input_shape=(224, 224, 3))")
        shape = self.base.output_shape()
        return (1, 1, shape[0]) if len(shape) == 1 else tuple(shape)

    def _head_input_size(self) -> int:
        h, w, c = self.feature_shape
        return h * w * c if isinstance(self._input_layer, Flatten) else c

    def _init_head(self):
        rng = np.random.default_rng(self.seed)
        width = self._head_input_size()
        for layer in self.layers[1:]:
            if isinstance(layer, Dense):
                self._weights[layer.name] = layer.init_weights(width, rng)
                width = layer.units

    def _output_shapes(self):
        h, w, c = self.feature_shape
        shapes, width = [], None
        for layer in self.layers:
            if isinstance(layer, INPUT_LAYERS):
                width = h * w * c if isinstance(layer, Flatten) else c
            elif isinstance(layer, Dense):
                width = layer.units
            shapes.append((None, width))
        return shapes

    @property
    def output_units(self) -> int:
        return self.layers[-1].units

    def _tuned_base_layers(self) -> Tuple[str, ...]:
        """Base layers with weights that are marked trainable (fine-tuning)."""
        return tuple(n for n in self.base.trainable_layers if n in self.base._weights)

    @_locked
    def get_weights(self) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """The trainable weights ``{layer: (kernel, bias)}`` (copies): the head's
        Dense layers, plus the base's layers marked trainable (after
        ``fine_tune``, e.g. block5_conv1..3 in Keras's HWIO layout)."""
        out = {k: (w.copy(), b.copy()) for k, (w, b) in self._weights.items()}
        for name in self._tuned_base_layers():
            k, b = self.base._weights[name]
            out[name] = (k.copy(), b.copy())
        return out

    @_locked
    def set_weights(self, weights: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> None:
        """Set the head's weights (every Dense layer, exact shapes)."""
        new = {}
        targets = dict(self._weights)
        for name in self._tuned_base_layers():
            if name in weights:  # the base's trainable layers are optional here
                targets[name] = self.base._weights[name]
        for name, (w, b) in targets.items():
            if name not in weights:
                raise ValueError(f"weights: layer '{name}' is missing")
            nw = np.array(weights[name][0], dtype=np.float32, order="C")
            nb = np.array(weights[name][1], dtype=np.float32, order="C")
            if nw.shape != w.shape or nb.shape != b.shape:
                raise ValueError(f"weights['{name}']: expected kernel {w.shape} and bias {b.shape}, "
                                 f"got {nw.shape} and {nb.shape}")
            if not (np.isfinite(nw).all() and np.isfinite(nb).all()):
                raise ValueError(f"weights['{name}']: contains NaN or infinity")
            new[name] = (nw, nb)
        # copy into the existing arrays: the optimizer and the core keep their addresses
        with self.base._writing(list(new)):
            for name, (nw, nb) in new.items():
                targets[name][0][...] = nw
                targets[name][1][...] = nb

    def count_params(self) -> int:
        return self.base.count_params() + sum(w.size + b.size for w, b in self._weights.values())

    def summary(self, print_fn=print) -> None:
        """A Keras-style table of layers, output shapes and parameter counts."""
        rows = [("vgg16 (VGG16, frozen)", str((None,) + tuple(self.base.output_shape())),
                 self.base.count_params())]
        for layer, shape in zip(self.layers, self._output_shapes()):
            n = sum(a.size for a in self._weights.get(layer.name, ()))
            rows.append((f"{layer.name} ({type(layer).__name__})", str(shape), n))
        width = 65
        lines = [f'Model: "{self.name}"', "_" * width,
                 f"{'Layer (type)':<29}{'Output Shape':<26}{'Param #':<10}", "=" * width]
        for i, (a, b, n) in enumerate(rows):
            lines.append(f"{a:<29}{b:<26}{n:<10,}")
            lines.append("=" * width if i == len(rows) - 1 else "_" * width)
        head = sum(w.size + b.size for w, b in self._weights.values())
        lines += [f"Total params: {self.count_params():,}",
                  f"Trainable params: {head:,}",
                  f"Non-trainable params: {self.base.count_params():,}", "_" * width]
        print_fn("\n".join(lines))

    # -- compile ----------------------------------------------------------------
    @_locked
    def compile(self, optimizer="adam", loss="categorical_crossentropy", metrics=None) -> None:
        """Choose the optimizer (a name or an instance), the loss
        ("binary_crossentropy", "categorical_crossentropy",
        "sparse_categorical_crossentropy") and the metrics: "accuracy", "AUC",
        "top_k_categorical_accuracy" or :mod:`vggtl.metrics` objects
        (``vggtl.metrics.AUC(curve="PR")``, ``TopKCategoricalAccuracy(k=3)``).

        The losses are TensorFlow's Keras's: when the last Dense has a softmax or
        sigmoid activation they are computed from its logits (never clipped);
        otherwise its output is read as probabilities clipped to [1e-7, 1 - 1e-7]."""
        opt = _optim.get(optimizer)
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {loss!r}")
        if isinstance(metrics, (str, _metrics.Metric)):
            metrics = [metrics]
        objs = [_metrics.get(m) for m in list(metrics or [])]
        names = ["accuracy" if m == "accuracy" else m.name for m in objs]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics: names must be unique, got {names}")
        self.optimizer = opt
        self.loss = loss
        self.metrics = names
        self._metric_objs = {m.name: m for m in objs if m != "accuracy"}
        # fresh optimizer state, as a re-compile in Keras gives
        self._slots = {}
        n = opt.slots()
        for name, (w, b) in self._weights.items():
            self._slots[name] = tuple(
                (np.zeros_like(w) if s % 2 < n else None) if s < 2 else
                (np.zeros_like(b) if s % 2 < n else None) for s in range(4))

    # -- data -------------------------------------------------------------------
    def _targets(self, y, n: int, name: str = "y"):
        """(float32 (n, units) or int32 (n,)) targets for the compiled loss."""
        units = self.output_units
        y = np.asarray(y)
        if y.shape[:1] != (n,):
            raise ValueError(f"{name}: expected {n} labels (one per image), got shape {y.shape}")
        if y.dtype.kind in "USO":
            if self.classes_ is None:
                self.classes_ = np.unique(y)
            lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
            try:
                y = np.array([lookup[v] for v in y.tolist()], dtype=np.int64)
            except KeyError as e:
                raise ValueError(f"{name}: label {e.args[0]!r} is not among the classes seen in "
                                 f"training {self.classes_.tolist()}") from None
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected integer labels, one-hot rows or strings, got dtype {y.dtype}")
        if y.ndim == 2 and y.shape[1] == units and units > 1:
            if not np.isfinite(y).all():
                raise ValueError(f"{name}: contains NaN or infinite values")
            if self.loss == "sparse_categorical_crossentropy":
                return np.ascontiguousarray(y.argmax(1), dtype=np.int32)
            return np.ascontiguousarray(y, dtype=np.float32)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{name}: expected integer labels (n,) or one-hot rows (n, {units}), "
                             f"got shape {y.shape}")
        if units == 1:
            if not np.isin(y, (0, 1)).all():
                raise ValueError(f"{name}: a 1-unit output needs 0/1 labels, got values "
                                 f"{np.unique(y)[:5].tolist()}")
            return np.ascontiguousarray(y.reshape(n, 1), dtype=np.float32)
        if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"{name}: expected integer class labels, got fractional values")
        labels = y.astype(np.int64)
        if n and (labels.min() < 0 or labels.max() >= units):
            raise ValueError(f"{name}: labels must be in [0, {units}) for a {units}-unit output, "
                             f"got [{labels.min()}, {labels.max()}]")
        if self.loss == "sparse_categorical_crossentropy":
            return labels.astype(np.int32)
        onehot = np.zeros((n, units), dtype=np.float32)
        onehot[np.arange(n), labels] = 1.0
        return onehot

    def _class_indices(self, targets):
        return targets if targets.ndim == 1 else (
            targets[:, 0].astype(np.int64) if targets.shape[1] == 1 else targets.argmax(1))

    def _sample_weight(self, targets, class_weight):
        if class_weight is None:
            return None
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight: expected a dict {{class index: weight}}, got "
                            f"{type(class_weight).__name__}")
        classes = self._class_indices(targets)
        table = np.ones(max(self.output_units, 2), dtype=np.float32)
        for k, v in class_weight.items():
            if not isinstance(k, (int, np.integer)) or not 0 <= k < len(table):
                raise ValueError(f"class_weight: unknown class {k!r}")
            if not (isinstance(v, (int, float, np.number)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"class_weight[{k}]: expected a finite weight >= 0, got {v!r}")
            table[k] = v
        return table[classes]

    def features(self, x, batch_size: int = 32, cache=False, progress: bool = False) -> np.ndarray:
        """The frozen base's features of images x, as the head reads them.

        ``cache``: False computes them; True or a folder reads them from the
        feature cache (:meth:`VGG16.extract`), computing only what is missing."""
        if cache is False:
            return self.base.predict(x, batch_size=batch_size)
        return self.base.extract(x, cache=cache, batch_size=batch_size, progress=progress)

    def _spec(self, with_slots: bool):
        h, w, c = self.feature_shape
        layers = []
        for layer in self.layers[1:]:
            if isinstance(layer, Dense):
                kw, b = self._weights[layer.name]
                slots = self._slots.get(layer.name, (None,) * 4) if with_slots else (None,) * 4
                layers.append(("dense", layer.units, layer.activation, kw, b, slots))
            else:
                layers.append(("dropout", layer.rate))
        return (self._input_layer.mode, h, w, c, tuple(layers))

    def _workspace(self, spec, batch):
        return np.empty(_core.head_workspace_floats(spec, batch), dtype=np.float32)

    @staticmethod
    def _as_features(F, name="features"):
        F = np.asarray(F) if not isinstance(F, np.ndarray) else F
        if F.dtype not in (np.float32, np.float16):
            F = F.astype(np.float32)
        return np.ascontiguousarray(F)

    # -- training -----------------------------------------------------------------
    @_locked
    def fit(self, x, y=None, batch_size: Optional[int] = None, epochs: int = 1, verbose: int = 1,
            validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
            class_weight=None, callbacks: Optional[List[Callback]] = None,
            initial_epoch: int = 0, cache=None, augment=None, augment_views=None,
            sample_weight=None, steps_per_epoch: Optional[int] = None,
            validation_steps: Optional[int] = None,
            validation_batch_size: Optional[int] = None) -> History:
        """Train the head on images x (the base's features are computed once, and
        kept in the feature cache: a second fit on the same images computes nothing).

        Arguments as Keras's ``Model.fit``. ``y``: integer labels, one-hot rows or
        strings. ``batch_size`` defaults to 32. ``cache``: None (the model's
        ``cache``), True, a folder or False.
        ``augment``: a :class:`vggtl.Augment`; the head trains on the base's
        features of augmented images. ``augment_views=K``: K augmented views of
        every image are extracted once into the feature cache and each epoch draws
        one view per image (K passes through the base in all; with ``cache=False``
        the K views are kept in memory). By default (None, "auto")
        ``K = auto_views(epochs)``, ``min(epochs, AUTO_VIEWS)``;
        ``augment_views="epoch"``: a fresh augmented pass every epoch, as Keras's
        ``aug.flow`` does (one pass per epoch: slow). Validation images are not
        augmented.
        ``x=aug.flow(X, Y, batch_size=BS)`` (y None) is the same as
        ``fit(X, Y, batch_size=BS, augment=aug)``, with the flow's ``shuffle``.
        ``steps_per_epoch``: batches per epoch (Keras's; the tutorial's
        ``len(trainX) // BS`` leaves out ``len(trainX) % BS`` images, drawn anew
        every epoch); ``validation_steps``: validation on the first
        ``validation_steps * validation_batch_size`` images (``validation_batch_size``
        defaults to ``batch_size``, to 32 with a flow, as Keras).
        ``sample_weight``: one weight per image, multiplied with ``class_weight``'s;
        ``validation_data`` may be ``(x, y, sample_weight)``.
        Returns a :class:`History` whose ``history`` has "loss", the metrics and,
        with validation, "val_loss" and the "val_" metrics.
        """
        from .augment import AugmentIterator
        flow = isinstance(x, AugmentIterator)
        if flow:
            if y is not None:
                raise ValueError("y: expected None when x is aug.flow(X, Y, ...): the flow "
                                 "gives the labels")
            if x.y is None:
                raise ValueError("x: the flow has no labels; use aug.flow(X, Y, batch_size=BS)")
            if augment is not None or augment_views is not None:
                raise ValueError("augment: x is already aug.flow(...); pass augment= or a "
                                 "flow, not both")
            if batch_size is not None and batch_size != x.batch_size:
                raise ValueError(f"batch_size: x is a flow of batches of {x.batch_size}; do not "
                                 f"pass batch_size={batch_size!r} (as Keras)")
            batch_size, augment, shuffle = x.batch_size, x.augment, x.shuffle
            x, y = x.x, x.y
        elif y is None:
            raise ValueError("y: expected the labels (y=None only with x=aug.flow(X, Y, ...))")
        batch_size = 32 if batch_size is None else _check_int("batch_size", batch_size, 1)
        if isinstance(augment, _Augment):
            self.augment = augment
        x, y, validation_data, sample_weight = self._split(x, y, validation_data,
                                                           validation_split, sample_weight)
        per_epoch = self._samples_per_epoch(len(x), batch_size, steps_per_epoch)
        cache = self.cache if cache is None else cache
        epoch_features = None
        if augment is None and augment_views is None:
            F = self.features(x, batch_size=max(batch_size, 32), cache=cache,
                              progress=bool(verbose))
        else:
            epoch_features = self._augmented_features(x, augment, augment_views,
                                                      max(batch_size, 32), cache, bool(verbose),
                                                      epochs=epochs - initial_epoch)
            F = epoch_features(self._epochs_done)
        val = None
        if validation_data is not None:
            vx, vy, vsw = self._unpack_validation(validation_data)
            vx, vy, vsw = self._validation_steps(vx, vy, vsw, validation_steps,
                                                 validation_batch_size or (32 if flow else
                                                                           batch_size))
            val = (self.features(vx, batch_size=max(batch_size, 32), cache=cache,
                                 progress=bool(verbose)), vy, vsw)
        return self.fit_features(F, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                                 validation_data=val, shuffle=shuffle, class_weight=class_weight,
                                 callbacks=callbacks, initial_epoch=initial_epoch,
                                 sample_weight=sample_weight, _epoch_features=epoch_features,
                                 _per_epoch=per_epoch)

    @staticmethod
    def _samples_per_epoch(n: int, batch_size: int, steps_per_epoch) -> Optional[int]:
        if steps_per_epoch is None:
            return None
        steps = _check_int("steps_per_epoch", steps_per_epoch, 1)
        full = -(-n // batch_size)
        if steps > full:
            raise ValueError(f"steps_per_epoch: {steps} batches of {batch_size} is more than the "
                             f"{n} training images give ({full} batches); use at most {full}, "
                             f"e.g. len(trainX) // batch_size")
        return None if steps == full else steps * batch_size

    @staticmethod
    def _validation_steps(vx, vy, vsw, steps, batch):
        if steps is None:
            return vx, vy, vsw
        steps = _check_int("validation_steps", steps, 1)
        batch = _check_int("validation_batch_size", batch, 1)
        m = min(len(vx), steps * batch)
        return vx[:m], np.asarray(vy)[:m], None if vsw is None else np.asarray(vsw)[:m]

    def _augmented_features(self, x, augment, views, batch_size: int, cache, progress: bool,
                            epochs: int, layer: Optional[str] = None):
        """``fit(augment=...)``'s training features: a function epoch -> features.

        views "epoch": the base runs on a fresh augmented copy of x every epoch,
        transforms drawn from (augment's seed, the epoch, each image's index).
        views K >= 1: K augmented copies extracted once into the feature cache
        (view k has the transforms of epoch k), then each epoch gathers one view
        per image, chosen from (augment's seed, the epoch). None or "auto":
        ``auto_views(epochs)``."""
        from .augment import Augment
        from .cache import array_digest
        if augment is None:
            raise ValueError(f"augment_views={views!r} needs augment=vggtl.Augment(...): the "
                             f"views are augmented copies of x")
        if not isinstance(augment, Augment):
            raise TypeError(f"augment: expected a vggtl.Augment(...), got "
                            f"{type(augment).__name__}")
        digest = augment.config_digest()

        def extract(view, cache_to, x_digest=None):
            def transform(xb, index):
                return augment.random_transform(xb, epoch=view, index=index)
            return self.base.extract(x, layer=layer, cache=cache_to, batch_size=batch_size,
                                     progress=progress, view=(digest, view), transform=transform,
                                     x_digest=x_digest)

        if views is None or (isinstance(views, str) and views == "auto"):
            views = auto_views(epochs)
        if isinstance(views, str) and views == "epoch":
            # a new view every epoch: nothing to keep, so nothing goes to the cache;
            # the last epoch's is remembered (fit asks for the first one twice)
            last = {}

            def fresh(epoch):
                if epoch not in last:
                    last.clear()
                    last[epoch] = extract(epoch, False)
                return last[epoch]
            return fresh
        if isinstance(views, str):
            raise ValueError(f"augment_views: expected an int >= 1, \"auto\" or \"epoch\", got "
                             f"{views!r}")
        views = _check_int("augment_views", views, 1)
        x_digest = array_digest(x) if cache is not False else None
        stored = [extract(k, cache, x_digest) for k in range(views)]
        n = len(stored[0])
        out = np.empty(stored[0].shape, dtype=stored[0].dtype)  # reused every epoch

        def gather(epoch):
            choice = np.random.default_rng([augment.seed, 0x76696577, epoch]).integers(0, views, n)
            for k in range(views):
                rows = np.flatnonzero(choice == k)
                out[rows] = stored[k][rows]
            return out
        return gather

    @staticmethod
    def _unpack_validation(validation_data):
        """(x, y, sample_weight or None) of Keras's (x, y) or (x, y, sample_weight)."""
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data: expected a tuple (x_val, y_val) or (x_val, y_val, "
                             "val_sample_weight)")
        vx, vy = validation_data[:2]
        return vx, vy, validation_data[2] if len(validation_data) == 3 else None

    @staticmethod
    def _split(x, y, validation_data, validation_split, sample_weight=None):
        if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
            raise ValueError(f"validation_split: expected a float in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is None:
            n = len(x)
            if len(y) != n:
                raise ValueError(f"x and y: expected the same number of samples, got {n} and {len(y)}")
            cut = int(n * (1.0 - validation_split))  # Keras takes the last fraction, unshuffled
            if cut == 0 or cut == n:
                raise ValueError(f"validation_split: {validation_split} of {n} samples leaves an "
                                 f"empty training or validation set")
            if sample_weight is None:
                validation_data = (x[cut:], np.asarray(y)[cut:])
            else:
                sw = np.asarray(sample_weight)
                validation_data = (x[cut:], np.asarray(y)[cut:], sw[cut:])
                sample_weight = sw[:cut]
            x, y = x[:cut], np.asarray(y)[:cut]
        return x, y, validation_data, sample_weight

    def _weights_of(self, targets, class_weight, sample_weight, name="sample_weight"):
        """Per-sample weights: class_weight's times sample_weight (as Keras), or None."""
        sw = self._sample_weight(targets, class_weight)
        if sample_weight is None:
            return sw
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "biuf" or w.shape != (len(targets),):
            raise ValueError(f"{name}: expected {len(targets)} numbers (one per sample), got "
                             f"{w.dtype} of shape {w.shape}")
        w = w.astype(np.float32)
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(f"{name}: expected finite weights >= 0")
        return np.ascontiguousarray(w if sw is None else sw * w, dtype=np.float32)

    @_locked
    def fit_features(self, features, y, batch_size: int = 32, epochs: int = 1, verbose: int = 1,
                     validation_data=None, shuffle: bool = True, class_weight=None,
                     callbacks: Optional[List[Callback]] = None,
                     initial_epoch: int = 0, sample_weight=None, _epoch_features=None,
                     _per_epoch=None) -> History:
        """``fit`` on features already computed by the base (``model.features(x)``,
        ``base.predict(x)`` or a cache): no backbone work at all.
        (``_epoch_features``, private: fit's augmentation, epoch -> that epoch's
        features, of the shape of ``features``; ``_per_epoch``: images per epoch,
        fit's ``steps_per_epoch``.)"""
        if self.optimizer is None:
            raise RuntimeError("fit: the model is not compiled; call model.compile(optimizer=..., "
                               "loss=..., metrics=['accuracy']) first")
        batch_size = _check_int("batch_size", batch_size, 1)
        epochs = _check_int("epochs", epochs, 0)
        initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        F = self._as_features(features)
        n = len(F)
        if n == 0:
            raise ValueError("x: expected at least one training sample, got 0")
        _check_finite(F, "x")
        targets = self._targets(y, n)
        sw = self._weights_of(targets, class_weight, sample_weight)
        val = None
        if validation_data is not None:
            vF, vy, vsw = self._unpack_validation(validation_data)
            vF = self._as_features(vF, "validation_data")
            _check_finite(vF, "validation_data x")
            vt = self._targets(vy, len(vF), name="validation_data y")
            val = (vF, vt, self._weights_of(vt, None, vsw, "validation_data sample_weight"))
        spec = self._spec(with_slots=True)
        ws = self._workspace(spec, batch_size)
        loss_code = LOSSES[self.loss]
        m = n if _per_epoch is None else min(n, _per_epoch)
        order = np.empty(m, dtype=np.int64)
        outputs = np.empty((m, self.output_units), np.float32) if self._metric_objs else None

        def run_epoch():
            Fe = F if _epoch_features is None else \
                self._as_features(_epoch_features(self._epochs_done))
            te, swe = targets, sw
            if m < n:  # steps_per_epoch: this epoch's images, drawn from (seed, epoch)
                pick = np.sort(np.random.default_rng([self.seed, 0x73746570, self._epochs_done])
                               .permutation(n)[:m])
                Fe, te = np.ascontiguousarray(Fe[pick]), np.ascontiguousarray(te[pick])
                swe = None if swe is None else np.ascontiguousarray(swe[pick])
            steps = -(-m // batch_size)
            r = _core.head_fit_epoch(
                Fe, spec, self.optimizer.as_core_tuple(steps), self.optimizer.iterations,
                loss_code, te, swe, batch_size, shuffle, self.seed, self._epochs_done, order, ws,
                outputs)
            return r, te, outputs

        def validate():
            return self._evaluate_spec(val[0], val[1], val[2], batch_size)

        return self._run_epochs(run_epoch, validate if val is not None else None, m, batch_size,
                                epochs, initial_epoch, verbose, callbacks)

    def _evaluate_spec(self, F, targets, sw, batch_size, spec=None):
        """(loss_sum, correct, seen, targets, outputs or None) of the head on features."""
        spec = self._spec(False) if spec is None else spec
        ws = self._workspace(spec, batch_size)
        ls, c, n = _core.head_evaluate(F, spec, LOSSES[self.loss], targets, sw, batch_size, ws)
        out = _core.head_predict(F, spec, batch_size, ws) if self._metric_objs else None
        return ls, c, n, targets, out

    def _metric_logs(self, prefix, loss, correct, seen, targets, outputs):
        logs = {prefix + "loss": loss}
        for name in self.metrics:
            if name == "accuracy":
                logs[prefix + name] = correct / seen
            else:
                logs[prefix + name] = self._metric_objs[name].result_of(targets, outputs)
        return logs

    def _zero_gradient_warning(self, epoch, loss):
        act = self.layers[-1].activation
        if act in ("softmax", "sigmoid"):
            cause = ("the units that feed the output are all inactive (dead ReLUs) or the "
                     "features are far outside the range the head can learn from; check the "
                     "images' scale (0..255 with the base's preprocess, not divided by 255 "
                     "twice) or lower the learning rate")
        else:
            cause = (f"the last Dense has activation='{act}', so the crossentropy reads its "
                     f"output as probabilities clipped to [1e-7, 1 - 1e-7], where the gradient "
                     f"is zero: use activation='softmax' (or 'sigmoid' for one unit) on the last "
                     f"Dense, or check the images' scale")
        warnings.warn(f"epoch {epoch + 1}: every gradient was exactly zero, so nothing trained "
                      f"(the loss stays at {loss:.4f}): {cause}", RuntimeWarning, stacklevel=4)

    def _run_epochs(self, run_epoch, validate, n, batch_size, epochs, initial_epoch, verbose,
                    callbacks) -> History:
        """Keras's epoch loop around one C call per epoch: callbacks, History,
        validation, the per-epoch line, early stopping, and on a NaN loss the
        state of the last completed epoch restored."""
        history = History()
        # History last, as Keras: it records what the other callbacks add (ReduceLROnPlateau's "lr")
        cbs = list(callbacks or []) + [history]
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks: expected vggtl callbacks, got {type(cb).__name__}")
            cb.set_model(self)
        history.params = {"epochs": epochs, "steps": math.ceil(n / batch_size), "verbose": verbose}
        self.stop_training = False
        for cb in cbs:
            cb.on_train_begin()
        self.history = history  # also what a Ctrl-C leaves: the completed epochs
        warned = False
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            snapshot = self._training_state()
            t0 = time.perf_counter()
            try:
                (loss_sum, correct, seen, batches, it, moved), te, outputs = run_epoch()
            except FloatingPointError as e:
                # keep the last good state: weights, optimizer slots and step count
                # as they were at the end of the previous epoch
                self._restore_training_state(snapshot)
                raise FloatingPointError(f"epoch {epoch + 1}: {e}; the weights of the last "
                                         f"completed epoch were kept") from None
            except KeyboardInterrupt:
                # the C epoch stops between batches with the weights and optimizer
                # slots updated in place part-way through the epoch, while the step
                # count and the epoch count are not: go back to the end of the last
                # completed epoch, so that weights, optimizer state, epochs_done and
                # history agree (and a later fit resumes from a real epoch boundary)
                self._restore_training_state(snapshot)
                raise
            bad = self._nonfinite_state()
            if bad is not None:
                # the loss guard sees the loss before each update only: an update
                # (huge class weights) can still leave NaN or infinity behind
                self._restore_training_state(snapshot)
                raise FloatingPointError(f"epoch {epoch + 1}: the {bad} became NaN or infinite "
                                         f"while the loss stayed finite: lower the learning rate "
                                         f"or the class weights; the weights of the last "
                                         f"completed epoch were kept")
            self.optimizer.iterations = it
            self._epochs_done += 1
            logs = self._metric_logs("", loss_sum / seen, correct, seen, te, outputs)
            if batches and moved == 0 and logs["loss"] > 1e-6 and not warned:
                self._zero_gradient_warning(epoch, logs["loss"])
                warned = True
            if validate is not None:
                try:
                    vl, vc, vn, vt, vout = validate()
                except KeyboardInterrupt:
                    # the epoch's training is done but it has no history entry yet:
                    # undo it too, as above
                    self._restore_training_state(snapshot)
                    self._epochs_done -= 1
                    raise
                logs.update(self._metric_logs("val_", vl / vn, vc, vn, vt, vout))
            if verbose:
                dt = time.perf_counter() - t0
                parts = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
                print(f"Epoch {epoch + 1}/{epochs} - {dt:.2f}s - {parts}", file=sys.stdout, flush=True)
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        self.history = history
        return history

    def _training_state(self):
        slots = {**self._slots, **self._conv_slots}
        return (self.get_weights(),
                {k: tuple(None if a is None else a.copy() for a in v) for k, v in slots.items()},
                self.optimizer.iterations)

    def _nonfinite_state(self) -> Optional[str]:
        """What first holds NaN or infinity among the trainable weights and their
        optimizer state ("layer 'dense' kernel"), or None."""
        weights = dict(self._weights)
        for name in self._tuned_base_layers():
            weights[name] = self.base._weights[name]
        for name, pair in weights.items():
            for what, a in zip(("kernel", "bias"), pair):
                if not np.isfinite(a).all():
                    return f"layer '{name}' {what}"
        for name, slots in {**self._slots, **self._conv_slots}.items():
            if any(a is not None and not np.isfinite(a).all() for a in slots):
                return f"optimizer state of layer '{name}'"
        return None

    def _restore_training_state(self, state):
        weights, slots, iterations = state
        self.set_weights(weights)
        live = {**self._slots, **self._conv_slots}
        for k, v in slots.items():
            for dst, src in zip(live[k], v):
                if dst is not None:
                    dst[...] = src
        self.optimizer.iterations = iterations

    # -- fine-tuning ----------------------------------------------------------------
    @_locked
    def fine_tune(self, x, y, unfreeze_from: Optional[str] = None, optimizer=None,
                  batch_size: int = 32, epochs: int = 1, verbose: int = 1,
                  validation_data=None, validation_split: float = 0.0, shuffle: bool = True,
                  class_weight=None, callbacks: Optional[List[Callback]] = None,
                  initial_epoch: int = 0, cache=None, augment=None,
                  augment_views=None, sample_weight=None) -> History:
        """Train the top of the base together with the head (the tutorial's
        continuation: ``for layer in base.layers[15:]: layer.trainable = True``,
        re-compile with ``SGD(1e-4, momentum=0.9)``, fit again).

        ``unfreeze_from`` names the first conv to train ("block5_conv1" by the
        recipe; any conv from block1_conv2 up works); without it the layers
        marked trainable on ``model.base`` are used. The output of the last
        frozen layer (block4_pool for block 5) is computed once and each epoch
        runs only the unfrozen layers and the head, in C. ``optimizer`` defaults
        to ``SGD(learning_rate=1e-4, momentum=0.9)`` and, like Keras's
        re-compile, starts from fresh state; the loss and metrics are those of
        ``compile``. ``cache``, ``augment``, ``augment_views`` and ``sample_weight``
        as :meth:`fit`, at the cut: the cut's features come from the feature cache, and with
        ``augment_views=K`` the K augmented views are cached at the cut too.
        Other arguments as :meth:`fit`.
        """
        if self.loss is None:
            raise RuntimeError("fine_tune: the model is not compiled; call model.compile(...) first")
        if self.base.pooling is not None:
            raise ValueError("fine_tune: the base has pooling=%r; fine-tuning needs the unpooled "
                             "block5_pool output (use pooling=None and a GlobalAveragePooling2D "
                             "head instead)" % self.base.pooling)
        batch_size = _check_int("batch_size", batch_size, 1)
        epochs = _check_int("epochs", epochs, 0)
        initial_epoch = _check_int("initial_epoch", initial_epoch, 0)
        first = self._unfreeze(unfreeze_from)
        cut = LAYER_NAMES[first - 1]
        if isinstance(augment, _Augment):
            self.augment = augment
        x, y, validation_data, sample_weight = self._split(x, y, validation_data,
                                                           validation_split, sample_weight)
        cache = self.cache if cache is None else cache
        # the frozen part, once (and kept in the feature cache): the last frozen layer's output
        epoch_features = None
        if augment is None and augment_views is None:
            F = self._cut_features(x, cut, batch_size, cache, verbose)
        else:
            epoch_features = self._augmented_features(x, augment, augment_views,
                                                      max(batch_size, 32), cache, bool(verbose),
                                                      epochs=epochs - initial_epoch, layer=cut)
            F = epoch_features(self._epochs_done)
        n = len(F)
        if n == 0:
            raise ValueError("x: expected at least one training sample, got 0")
        targets = self._targets(y, n)
        sw = self._weights_of(targets, class_weight, sample_weight)
        val = None
        if validation_data is not None:
            vx, vy, vsw = self._unpack_validation(validation_data)
            vt = self._targets(vy, len(vx), name="validation_data y")
            val = (self._cut_features(vx, cut, batch_size, cache, verbose), vt,
                   self._weights_of(vt, None, vsw, "validation_data sample_weight"))
        # a fresh optimizer and state, as a re-compile in Keras gives
        self.compile(optimizer=optimizer if optimizer is not None else
                     _optim.SGD(learning_rate=1e-4, momentum=0.9),
                     loss=self.loss, metrics=self.metrics)
        nslots = self.optimizer.slots()
        self._conv_slots = {}
        convs = []
        for name in LAYER_NAMES[:LAYER_NAMES.index("block5_pool") + 1]:
            if name not in self.base._weights:
                continue
            if LAYER_NAMES.index(name) < first:
                convs.append(None)
                continue
            k, b = self.base._weights[name]
            slots = tuple((np.zeros_like(k if s < 2 else b) if s % 2 < nslots else None)
                          for s in range(4))
            self._conv_slots[name] = slots
            convs.append((k, b, slots))
        tail = (first, tuple(convs))
        head = self._spec(with_slots=True)
        h, w = F.shape[1:3]
        tuned = [n for n, c in zip(CONV_LAYERS, convs) if c is not None]
        with self.base._writing(tuned):  # the core trains the base's arrays in place
            ws = np.empty(_core.finetune_workspace_floats(tail, head, batch_size, h, w),
                          np.float32)
        order = np.empty(n, dtype=np.int64)
        loss_code = LOSSES[self.loss]
        outputs = np.empty((n, self.output_units), np.float32) if self._metric_objs else None

        def run_epoch():
            Fe = F if epoch_features is None else epoch_features(self._epochs_done)
            with self.base._writing(tuned):
                r = _core.finetune_fit_epoch(
                    Fe, tail, head, self.optimizer.as_core_tuple(-(-n // batch_size)),
                    self.optimizer.iterations, loss_code, targets, sw, batch_size, shuffle,
                    self.seed, self._epochs_done, order, ws, outputs)
            return r, targets, outputs

        def validate():
            F5 = self.base.forward_from(np.asarray(val[0], np.float32), cut,
                                        batch_size=max(batch_size, 32))
            return self._evaluate_spec(F5, val[1], val[2], batch_size)

        return self._run_epochs(run_epoch, validate if val is not None else None, n, batch_size,
                                epochs, initial_epoch, verbose, callbacks)

    def _cut_features(self, x, cut: str, batch_size: int, cache, verbose) -> np.ndarray:
        if cache is False:
            return self.base.predict(x, batch_size=max(batch_size, 32), layer=cut)
        return self.base.extract(x, layer=cut, cache=cache, batch_size=max(batch_size, 32),
                                 progress=bool(verbose))

    def _unfreeze(self, unfreeze_from) -> int:
        """Mark the base's layers from ``unfreeze_from`` (or as marked) trainable
        and return the index of the first trainable conv."""
        names = self.base.layer_names
        block5_pool = names.index("block5_pool")
        if unfreeze_from is not None:
            if not isinstance(unfreeze_from, str) or unfreeze_from not in names[:block5_pool + 1]:
                raise ValueError(f"unfreeze_from: expected a layer of the base, one of "
                                 f"{', '.join(names[:block5_pool + 1])}; got {unfreeze_from!r}")
            self.base._trainable = set(names[names.index(unfreeze_from):block5_pool + 1])
        marked = [names.index(n) for n in self.base.trainable_layers]
        if not marked:
            raise ValueError("fine_tune: no layer of the base is trainable; pass "
                             "unfreeze_from='block5_conv1' or mark layers, e.g. "
                             "for layer in model.base.layers[15:]: layer.trainable = True")
        lo = min(marked)
        if sorted(marked) != list(range(lo, block5_pool + 1)):
            raise ValueError(f"fine_tune: the trainable layers must be the top of the base, from "
                             f"one layer up to block5_pool, without gaps; marked: "
                             f"{list(self.base.trainable_layers)}")
        convs = [i for i in range(lo, block5_pool + 1) if names[i] in self.base._weights]
        if not convs:
            raise ValueError("fine_tune: the trainable layers hold no weights (only pooling)")
        first = convs[0]
        if first == 0:
            raise ValueError("unfreeze_from: 'block1_conv1' would leave no frozen layer whose "
                             "output can be cached; unfreeze from block1_conv2 or above")
        return first

    # -- inference ----------------------------------------------------------------
    @_locked
    def predict_features(self, features, batch_size: int = 32, verbose=0) -> np.ndarray:
        """The head's output (probabilities) on precomputed features."""
        batch_size = _check_int("batch_size", batch_size, 1)
        t0 = time.perf_counter()
        F = self._as_features(features)
        if len(F) == 0:
            return np.zeros((0, self.output_units), dtype=np.float32)
        spec = self._spec(False)
        out = _core.head_predict(F, spec, batch_size, self._workspace(spec, batch_size))
        if _verbose(verbose):
            steps = -(-len(F) // batch_size)
            print(f"{steps}/{steps} - {time.perf_counter() - t0:.2f}s", file=sys.stdout, flush=True)
        return out

    @_locked
    def predict(self, x, batch_size: int = 32, verbose=0, tta: Optional[int] = None,
                augment=None) -> np.ndarray:
        """Class probabilities (N, units) for images x. ``verbose`` (Keras's
        argument, 0 by default here): 1, 2 or "auto" show the base's progress (a
        tqdm bar when tqdm is installed) and print one line at the end.

        ``tta=K`` (test-time augmentation): the mean of the probabilities over K
        augmented views of x, view k having the transforms ``augment`` draws for
        epoch k (``augment.random_transform(x, epoch=k)``); ``augment`` defaults
        to the one the model was last fitted with (``model.augment``). The views'
        features go through the feature cache (the model's ``cache``): views
        already there - those ``fit(augment=aug, augment_views=K)`` extracted, or
        an earlier ``predict(tta=K)`` - are read, not computed."""
        if tta is None:
            if augment is not None:
                raise ValueError("augment: only used with tta=K (test-time augmentation)")
            F = self.features(x, batch_size=batch_size, progress=_verbose(verbose))
            return self.predict_features(F, batch_size, verbose=verbose)
        from .augment import Augment
        from .cache import array_digest
        views = _check_int("tta", tta, 1)
        augment = self.augment if augment is None else augment
        if augment is None:
            raise ValueError("tta: test-time augmentation needs an Augment: pass "
                             "augment=vggtl.Augment(...) or fit the model with augment=...")
        if not isinstance(augment, Augment):
            raise TypeError(f"augment: expected a vggtl.Augment(...), got "
                            f"{type(augment).__name__}")
        batch_size = _check_int("batch_size", batch_size, 1)
        digest = augment.config_digest()
        cache = self.cache
        x_digest = array_digest(x) if cache is not False else None
        total = None
        for k in range(views):
            def transform(xb, index, k=k):
                return augment.random_transform(xb, epoch=k, index=index)
            F = self.base.extract(x, cache=cache, batch_size=max(batch_size, 32),
                                  progress=_verbose(verbose), view=(digest, k),
                                  transform=transform, x_digest=x_digest)
            p = self.predict_features(F, batch_size).astype(np.float64)
            total = p if total is None else total + p
        return (total / views).astype(np.float32)

    @_locked
    def evaluate_features(self, features, y, batch_size: int = 32, verbose=0, sample_weight=None,
                          return_dict: bool = False):
        """[loss, *metrics] (or loss alone without metrics) on precomputed features."""
        if self.loss is None:
            raise RuntimeError("evaluate: the model is not compiled; call model.compile(...) first")
        batch_size = _check_int("batch_size", batch_size, 1)
        t0 = time.perf_counter()
        F = self._as_features(features)
        if len(F) == 0:
            raise ValueError("x: expected at least one sample, got 0")
        targets = self._targets(y, len(F))
        sw = self._weights_of(targets, None, sample_weight)
        ls, c, n, t, out = self._evaluate_spec(F, targets, sw, batch_size)
        logs = self._metric_logs("", ls / n, c, n, t, out)
        if _verbose(verbose):
            steps = -(-len(F) // batch_size)
            parts = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            print(f"{steps}/{steps} - {time.perf_counter() - t0:.2f}s - {parts}", file=sys.stdout,
                  flush=True)
        if return_dict:
            return logs
        return list(logs.values()) if self.metrics else logs["loss"]

    @_locked
    def evaluate(self, x, y, batch_size: int = 32, verbose=0, sample_weight=None,
                 return_dict: bool = False):
        """[loss, *metrics] on images x and labels y, as Keras's ``evaluate`` (the
        loss alone when compiled without metrics; a dict with ``return_dict=True``).
        ``sample_weight`` weighs the loss; ``verbose`` as :meth:`predict`."""
        if self.loss is None:
            raise RuntimeError("evaluate: the model is not compiled; call model.compile(...) first")
        F = self.features(x, batch_size=batch_size, progress=_verbose(verbose))
        return self.evaluate_features(F, y, batch_size, verbose=verbose,
                                      sample_weight=sample_weight, return_dict=return_dict)

    # -- saving ---------------------------------------------------------------------
    @_locked
    def get_config(self) -> dict:
        b = self.base
        return {
            "format": "vggtl.TransferModel",
            "format_version": 1 if b.precision == "fp32" else FORMAT_VERSION,
            "name": self.name, "seed": self.seed,
            "base": {"input_shape": list(b.input_shape) if b.input_shape else None,
                     "pooling": b.pooling, "preprocess": b.preprocess,
                     "precision": b.precision},
            "head": [layer.get_config() for layer in self.layers],
            "compile": None if self.optimizer is None else {
                "optimizer": self.optimizer.get_config(), "loss": self.loss,
                "metrics": self.metrics, "iterations": self.optimizer.iterations},
            "epochs_done": self._epochs_done,
            "classes": None if self.classes_ is None else self.classes_.tolist(),
            **({} if self.class_names is None else {"class_names": list(self.class_names)}),
        }

    @_locked
    def save(self, path) -> None:
        """Write the model (base and head weights as safetensors, the
        configuration as JSON metadata) atomically: a crash leaves the previous
        file intact. The format is vggtl's own (``.vggtl``): a name ending in
        ``.h5``, ``.hdf5`` or ``.keras`` is refused, since Keras could not read it."""
        from safetensors.numpy import save
        path = check_save_path(path)
        tensors = {}
        for name, (k, bias) in self.base._weights.items():
            tensors[f"base/{name}/kernel"] = k
            tensors[f"base/{name}/bias"] = bias
        for name, (k, bias) in self._weights.items():
            tensors[f"head/{name}/kernel"] = k
            tensors[f"head/{name}/bias"] = bias
        # optimizer state, so that training resumes where it stopped (as Keras's save)
        for name, slots in self._slots.items():
            for i, a in enumerate(slots):
                if a is not None:
                    tensors[f"optimizer/{name}/{i}"] = a
        data = save(tensors, metadata={"vggtl": json.dumps(self.get_config())})
        atomic_write_bytes(path, data)

    @_locked
    def export(self, path, input_dtype: str = "uint8") -> str:
        """Write the whole model - preprocessing, base, head, softmax - as an ONNX
        file (needs ``pip install onnx``), for ONNX Runtime and the like. Its
        input "images" is NHWC (N, H, W, C) at the base's input_shape, uint8 or,
        with ``input_dtype="float32"``, float pixels in 0..255; its output
        "probabilities" is :meth:`predict`'s (within float32 rounding). The class
        names go into the file's metadata ("class_names", JSON). A bf16 base is
        written in float32. Returns the path."""
        from .onnx_export import export
        return export(self, path, input_dtype)

    def __repr__(self):
        return f"TransferModel(base={self.base!r}, head={self.layers!r})"


def _verbose(verbose) -> bool:
    """Keras's verbose values: 0 silent; 1, 2 or "auto" report."""
    if isinstance(verbose, (bool, float)) or verbose not in (0, 1, 2, "auto"):
        raise ValueError(f"verbose: expected 0, 1, 2 or 'auto', got {verbose!r}")
    return verbose != 0


def check_save_path(path, name: str = "path") -> str:
    """vggtl writes its own format (safetensors plus JSON); a Keras file name
    would promise a file Keras could open, so it is refused."""
    p = os.fspath(path)
    low = p.lower()
    for ext in (".h5", ".hdf5", ".keras"):
        if low.endswith(ext):
            raise ValueError(f"{name}: {p!r} names a Keras {ext} file, but vggtl writes its own "
                             f"format (safetensors weights plus JSON configuration), which Keras "
                             f"cannot read; use the extension .vggtl (e.g. "
                             f"{p[:len(p) - len(ext)] + '.vggtl'!r}) and vggtl.load_model to "
                             f"read it back")
    return p


def _check_finite(F: np.ndarray, name: str) -> None:
    """Features with NaN or infinity would turn the weights into NaN silently
    (inf * 0 in the gradient), so they are refused before training."""
    flat = F.reshape(len(F), -1)
    for i in range(0, len(F), 4096):
        ok = np.isfinite(flat[i:i + 4096]).all(axis=1)
        if not ok.all():
            raise ValueError(f"{name}: sample {i + int(np.argmin(ok))} has NaN or infinite "
                             f"features; check the images or the cache they came from")


def load_model(path, compile: bool = True) -> TransferModel:
    """Read a model written by :meth:`TransferModel.save`. ``compile=False`` (as
    Keras) leaves the optimizer, loss, metrics and optimizer state out: the model
    predicts, and needs ``compile`` before ``fit`` or ``evaluate``."""
    from safetensors.numpy import load
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no model file at {path!r}") from None
    config = _read_metadata(raw, path)
    try:
        tensors = load(raw)
    except Exception as e:  # safetensors raises its own error types on damaged data
        raise ValueError(f"path: {path!r} is not a readable vggtl model file ({e})") from None
    from . import _model_config
    try:  # the whole configuration, against the tensors, before anything is built
        _model_config.check(config, tensors, FORMAT_VERSION)
    except ValueError as e:
        raise ValueError(f"path: {path!r} holds an invalid vggtl model: {e}") from None
    b = config["base"]
    base_weights, head_weights, slots = {}, {}, {}
    for key, arr in tensors.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "optimizer" and parts[2] in ("0", "1", "2", "3"):
            slots[(parts[1], int(parts[2]))] = arr
            continue
        if len(parts) != 3 or parts[0] not in ("base", "head") or parts[2] not in ("kernel", "bias"):
            raise ValueError(f"path: {path!r} holds an unexpected tensor {key!r}")
        d = base_weights if parts[0] == "base" else head_weights
        d.setdefault(parts[1], [None, None])[0 if parts[2] == "kernel" else 1] = arr
    base = VGG16(weights={k: tuple(v) for k, v in base_weights.items()}, include_top=False,
                 input_shape=tuple(b["input_shape"]) if b["input_shape"] else None,
                 pooling=b["pooling"], preprocess=b["preprocess"],
                 precision=b.get("precision", "fp32"))
    head = [from_config(c) for c in config["head"]]
    model = TransferModel(base, head, seed=config["seed"], name=config["name"])
    model.set_weights({k: tuple(v) for k, v in head_weights.items()})
    if config.get("classes") is not None:
        model.classes_ = np.asarray(config["classes"])
    if config.get("class_names") is not None:
        model.class_names = list(config["class_names"])
    comp = config.get("compile") if compile else None
    if comp:
        model.compile(optimizer=_optim.get(comp["optimizer"]), loss=comp["loss"],
                      metrics=_saved_metrics(comp.get("metrics"), path))
        model.optimizer.iterations = int(comp.get("iterations", 0))
        for (name, i), arr in slots.items():
            dst = model._slots.get(name, (None,) * 4)[i]
            if dst is None or dst.shape != arr.shape:
                raise ValueError(f"path: {path!r} holds optimizer state that does not fit "
                                 f"layer '{name}'")
            dst[...] = arr
    model._epochs_done = int(config.get("epochs_done", 0))
    return model


def _saved_metrics(names, path) -> list:
    """The compiled metrics of a saved model, by name: Keras's names come back
    with their defaults (AUC(), top-5); a metric vggtl cannot rebuild by its
    name (a custom name) is left out, with a warning."""
    out = []
    for name in names if isinstance(names, list) else []:
        try:
            _metrics.get(name)
            out.append(name)
        except ValueError:
            warnings.warn(f"path: {path!r} was compiled with the metric {name!r}, which "
                          f"load_model cannot rebuild by its name; compile again to use it",
                          RuntimeWarning, stacklevel=3)
    return out


def _read_metadata(raw: bytes, path: str) -> dict:
    if len(raw) < 8:
        raise ValueError(f"path: {path!r} is not a vggtl model file (too short)")
    n = int.from_bytes(raw[:8], "little")
    if not 2 <= n <= len(raw) - 8 or raw[8:9] != b"{":
        raise ValueError(f"path: {path!r} is not a vggtl model file (expected a safetensors "
                         f"header, found {raw[:16]!r} in {len(raw)} bytes: truncated, damaged "
                         f"or another kind of file)")
    try:
        header = json.loads(raw[8:8 + n])
        config = json.loads(header["__metadata__"]["vggtl"])
    except RecursionError:
        raise ValueError(f"path: {path!r} is not a vggtl model file (its header nests "
                         f"too deeply)") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"path: {path!r} is a safetensors file but not a vggtl model "
                         f"(no vggtl metadata)") from None
    if not isinstance(config, dict) or config.get("format") != "vggtl.TransferModel":
        raise ValueError(f"path: {path!r} is not a vggtl TransferModel file")
    version = config.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(f"path: {path!r} was written by a newer vggtl (format "
                         f"{config['format_version']}); upgrade vggtl to read it")
    return config
