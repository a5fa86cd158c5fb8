"""TransferModel's training loop: ``fit``, ``fit_features`` and ``fine_tune``,
Keras's epoch loop around one C call per epoch (callbacks, History, validation,
early stopping, the last good state kept on a NaN or a Ctrl-C), and the
augmented views. Mixed into :class:`vggtl.model.TransferModel` as
:class:`Training`; the loss codes and the model's lock live here because both
the loop and the model use them."""
from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from typing import List, Optional

import numpy as np

from . import _core
from . import optim as _optim
from .augment import Augment as _Augment
from .cache.memo import CutMemo
from .callbacks import Callback, History
from .vgg16 import CONV_LAYERS, LAYER_NAMES

LOSSES = {"binary_crossentropy": _core.LOSS_BCE, "categorical_crossentropy": _core.LOSS_CCE,
          "sparse_categorical_crossentropy": _core.LOSS_SPARSE_CCE}


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
# image, so the base runs fewer passes than there are epochs (benchmarks/tutorial.py
# compares the accuracy with a fresh pass every epoch, rows exact and views:K).
AUTO_VIEWS = 3

# The cut fine_tune starts from by the recipe (block5_conv1 unfrozen): fit keeps
# its output of the images it runs through the base, at most this many bytes (or
# an eighth of the RAM), so that a fine_tune of the same images that follows
# does not run blocks 1-4 again.
CUT_KEPT = "block4_pool"
CUT_MEMORY = 1 << 30


def _default_cut_memory() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return CUT_MEMORY
    return min(CUT_MEMORY, ram // 8)


def auto_views(epochs: int) -> int:
    """The augmented views ``fit(augment=...)`` extracts for ``epochs`` epochs
    when ``augment_views`` is not given: ``min(epochs, AUTO_VIEWS)``, at least 1."""
    return max(1, min(int(epochs), AUTO_VIEWS))


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return int(v)


def _slot_spec(slots) -> dict:
    """A parameter's optimizer state as the core reads it, from the 4 slots a
    model keeps per layer (kernel slot 0, 1, bias slot 0, 1; None where unused)."""
    return {"kernel": tuple(slots[:2]), "bias": tuple(slots[2:])}


def _check_finite(F: np.ndarray, name: str) -> None:
    """Features with NaN or infinity would turn the weights into NaN silently
    (inf * 0 in the gradient), so they are refused before training."""
    flat = F.reshape(len(F), -1)
    for i in range(0, len(F), 4096):
        ok = np.isfinite(flat[i:i + 4096]).all(axis=1)
        if not ok.all():
            raise ValueError(f"{name}: sample {i + int(np.argmin(ok))} has NaN or infinite "
                             f"features; check the images or the cache they came from")


class Training:
    """``fit``, ``fit_features`` and ``fine_tune`` of :class:`TransferModel`."""

    @property
    def cut_memory(self) -> int:
        """Bytes of block4_pool outputs ``fit`` may keep in memory for a
        ``fine_tune`` that follows on the same images (then dropped); 0 keeps
        none. Default: 1 GiB or an eighth of the RAM, the smaller."""
        return self._cut_memo().budget

    @cut_memory.setter
    def cut_memory(self, value) -> None:
        value = _check_int("cut_memory", value, 0)
        memo = self._cut_memo()
        memo.budget = value
        if memo.nbytes > value:
            memo.clear()

    def _cut_memo(self) -> CutMemo:
        memo = self.__dict__.get("_cut_memo_store")
        if memo is None:
            memo = self.__dict__["_cut_memo_store"] = CutMemo(CUT_KEPT, _default_cut_memory())
        return memo

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
        memo = self._cut_memo()
        memo.clear()  # what this fit passes through replaces what an earlier one kept
        F, epoch_features = self._training_features(x, augment, augment_views, batch_size,
                                                    cache, verbose, epochs - initial_epoch)
        val = None
        if validation_data is not None:
            vx, vy, vsw = self._unpack_validation(validation_data)
            vx, vy, vsw = self._validation_steps(vx, vy, vsw, validation_steps,
                                                 validation_batch_size or (32 if flow else
                                                                           batch_size))
            val = (self.base.extract(vx, batch_size=max(batch_size, 32), cache=cache,
                                     progress=bool(verbose), memo=memo), vy, vsw)
        return self.fit_features(F, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                                 validation_data=val, shuffle=shuffle, class_weight=class_weight,
                                 callbacks=callbacks, initial_epoch=initial_epoch,
                                 sample_weight=sample_weight, _epoch_features=epoch_features,
                                 _per_epoch=per_epoch)

    def _training_features(self, x, augment, augment_views, batch_size: int, cache, verbose,
                           epochs: int, layer: Optional[str] = None):
        """What ``fit`` and ``fine_tune`` train on: (F, None), the base's output for
        x (at ``layer``, the cut, for fine_tune) computed once, or with
        augmentation (F, epoch -> that epoch's features), F the current epoch's."""
        if augment is None and augment_views is None:
            return self._cut_features(x, layer, batch_size, cache, verbose), None
        epoch_features = self._augmented_features(x, augment, augment_views,
                                                  max(batch_size, 32), cache, bool(verbose),
                                                  epochs=epochs, layer=layer)
        return epoch_features(self._epochs_done), epoch_features

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
                                     x_digest=x_digest, memo=memo)

        memo = None if isinstance(views, str) and views == "epoch" else self._cut_memo()

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
        x_digest = array_digest(x) if cache is not False or memo.budget else None
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
                Fe, spec, self.optimizer.core_spec(steps), self.optimizer.iterations,
                loss_code, te, swe, batch_size, shuffle, self.seed, self._epochs_done, order, ws,
                outputs)
            return r, te, outputs

        def validate():
            return self._evaluate_spec(val[0], val[1], val[2], batch_size)

        return self._run_epochs(run_epoch, validate if val is not None else None, m, batch_size,
                                epochs, initial_epoch, verbose, callbacks)

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
        snapshot = None
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            snapshot = self._training_state(into=snapshot)
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

    def _live_state(self):
        """The trainable weights {layer: (kernel, bias)} and their optimizer slots
        {layer: (slot or None, ...)}, the arrays training writes (not copies)."""
        weights = dict(self._weights)
        for name in self._tuned_base_layers():
            weights[name] = self.base._weights[name]
        return weights, {**self._slots, **self._conv_slots}

    def _training_state(self, into=None):
        """A copy of what an epoch changes: weights, optimizer slots, step count.
        ``into``: the previous epoch's copy, whose arrays are written over (a new
        copy every epoch would map and fault in three times the head's weights
        every epoch: the kernel and Adam's two slots)."""
        weights, slots = self._live_state()
        old_weights, old_slots = (into[0], into[1]) if into is not None else ({}, {})

        def copy(a, old):
            if a is None:
                return None
            if old is not None and old.shape == a.shape and old.dtype == a.dtype:
                np.copyto(old, a)
                return old
            return a.copy()

        def copies(arrays, old):
            old = old if old is not None and len(old) == len(arrays) else (None,) * len(arrays)
            return tuple(copy(a, o) for a, o in zip(arrays, old))
        return ({k: copies(v, old_weights.get(k)) for k, v in weights.items()},
                {k: copies(v, old_slots.get(k)) for k, v in slots.items()},
                self.optimizer.iterations)

    def _nonfinite_state(self) -> Optional[str]:
        """What first holds NaN or infinity among the trainable weights and their
        optimizer state ("layer 'dense' kernel"), or None."""
        weights, slots = self._live_state()
        for name, pair in weights.items():
            for what, a in zip(("kernel", "bias"), pair):
                if not np.isfinite(a).all():
                    return f"layer '{name}' {what}"
        for name, arrays in slots.items():
            if any(a is not None and not np.isfinite(a).all() for a in arrays):
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
        F, epoch_features = self._training_features(x, augment, augment_views, batch_size,
                                                    cache, verbose, epochs - initial_epoch,
                                                    layer=cut)
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
        self._cut_memo().clear()  # kept for this fine_tune; what it did not use goes too
        # a fresh optimizer and state, as a re-compile in Keras gives
        self.compile(optimizer=optimizer if optimizer is not None else
                     _optim.SGD(learning_rate=1e-4, momentum=0.9),
                     loss=self.loss, metrics=self.metrics)
        nslots = self.optimizer.slots()
        self._conv_slots = {}
        convs = {}  # the tail as the core reads it (parse_tail in csrc/py/training.c)
        for name in CONV_LAYERS:
            if LAYER_NAMES.index(name) < first:
                continue
            k, b = self.base._weights[name]
            slots = tuple((np.zeros_like(k if s < 2 else b) if s % 2 < nslots else None)
                          for s in range(4))
            self._conv_slots[name] = slots
            convs[name] = {"kernel": k, "bias": b, "slots": _slot_spec(slots)}
        tail = {"start_layer": first, "convs": convs}
        head = self._spec(with_slots=True)
        h, w = F.shape[1:3]
        tuned = list(convs)
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
                    Fe, tail, head, self.optimizer.core_spec(-(-n // batch_size)),
                    self.optimizer.iterations, loss_code, targets, sw, batch_size, shuffle,
                    self.seed, self._epochs_done, order, ws, outputs)
            return r, targets, outputs

        def validate():
            F5 = self.base.forward_from(np.asarray(val[0], np.float32), cut,
                                        batch_size=max(batch_size, 32))
            return self._evaluate_spec(F5, val[1], val[2], batch_size)

        return self._run_epochs(run_epoch, validate if val is not None else None, n, batch_size,
                                epochs, initial_epoch, verbose, callbacks)

    def _cut_features(self, x, cut: Optional[str], batch_size: int, cache,
                      verbose) -> np.ndarray:
        """The base's output of x at ``cut`` (None: the head's input), through the
        feature cache unless ``cache`` is False, and through the memo of the cut
        fit keeps."""
        return self.base.extract(x, layer=cut, cache=cache, batch_size=max(batch_size, 32),
                                 progress=bool(verbose), memo=self._cut_memo())

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
