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

This module holds the model (its layers, weights, compile, predict, evaluate);
:mod:`vggtl.training` the training loop (``fit``, ``fine_tune``) and
:mod:`vggtl.model_io` its files (``save``, :func:`load_model`, ``export``).
"""
from __future__ import annotations

import math
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._arrays import for_core
from . import optim as _optim
from . import metrics as _metrics
from .callbacks import History
from .layers import INPUT_LAYERS, Dense, Flatten, Layer
from .vgg16 import VGG16
from .model_io import (FORMAT_VERSION, ModelIO, _read_metadata, _saved_metrics,  # noqa: F401
                       check_save_path, load_model)
from .training import (AUTO_VIEWS, LOSSES, Training, _check_finite, _check_int,  # noqa: F401
                       _locked, _slot_spec, auto_views)


class TransferModel(Training, ModelIO):
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
                return for_core(y.argmax(1), np.int32)
            return for_core(y, np.float32)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{name}: expected integer labels (n,) or one-hot rows (n, {units}), "
                             f"got shape {y.shape}")
        if units == 1:
            if not np.isin(y, (0, 1)).all():
                raise ValueError(f"{name}: a 1-unit output needs 0/1 labels, got values "
                                 f"{np.unique(y)[:5].tolist()}")
            return for_core(y.reshape(n, 1), np.float32)
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

    def _spec(self, with_slots: bool) -> dict:
        """The head as the core reads it (``parse_head`` in csrc/py/training.c);
        with its optimizer state when ``with_slots`` (training), else none."""
        layers = []
        for layer in self.layers[1:]:
            if isinstance(layer, Dense):
                k, b = self._weights[layer.name]
                slots = _slot_spec(self._slots.get(layer.name, (None,) * 4)) if with_slots \
                    else None
                layers.append({"type": "dense", "units": layer.units,
                               "activation": layer.activation, "kernel": k, "bias": b,
                               "slots": slots})
            else:
                layers.append({"type": "dropout", "rate": layer.rate})
        return {"input_mode": self._input_layer.mode, "input_shape": self.feature_shape,
                "layers": layers}

    def _workspace(self, spec, batch):
        return np.empty(_core.head_workspace_floats(spec, batch), dtype=np.float32)

    @staticmethod
    def _as_features(F, name="features"):
        F = np.asarray(F) if not isinstance(F, np.ndarray) else F
        if F.dtype not in (np.float32, np.float16):
            F = F.astype(np.float32)
        return for_core(F)

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

    def __repr__(self):
        return f"TransferModel(base={self.base!r}, head={self.layers!r})"


def _verbose(verbose) -> bool:
    """Keras's verbose values: 0 silent; 1, 2 or "auto" report."""
    if isinstance(verbose, (bool, float)) or verbose not in (0, 1, 2, "auto"):
        raise ValueError(f"verbose: expected 0, 1, 2 or 'auto', got {verbose!r}")
    return verbose != 0
