"""``VGG16Classifier``: the tutorial's model as a scikit-learn estimator.

    from sklearn.model_selection import GridSearchCV
    clf = vggtl.VGG16Classifier(epochs=20)         # ImageNet weights if found, else random
    clf.fit(trainX, trainY)                       # images (N, H, W[, C]) or flat rows
    clf.predict(testX), clf.predict_proba(testX), clf.score(testX, testY)
    GridSearchCV(clf, {"learning_rate": [1e-4, 1e-3]}, cv=3).fit(X, y)

It builds what the tutorial builds (a frozen VGG16 base, Flatten -> Dense(512,
relu) -> Dropout(0.5) -> Dense(C, softmax), Adam with ``decay = lr / epochs``,
binary cross-entropy for two classes and categorical otherwise) and trains it with
:class:`vggtl.TransferModel`. The base's features go through the feature cache
(``cache=True``), so a grid search over the head's parameters computes them once
per fold, not once per candidate.

Inputs
------
- Images ``(N, H, W)`` or ``(N, H, W, C)`` (C = 1 or 3), uint8 or float, as the
  tutorial's X. Any size: images are resized (bilinear, :func:`vggtl.resize`) to
  ``input_size``, by default their own size, or 32 x 32 (VGG16's minimum) when smaller.
- Flat rows ``(N, D)``, as scikit-learn's datasets and pipelines pass them: with
  ``image_shape=(H, W[, C])`` each row is that image (``D = H*W*C``); without it
  each row is laid out row-major on the smallest square grid that holds it
  (zero-padded), as ``load_digits``'s 64 columns are its 8 x 8 pixels.

scikit-learn is imported by this module only (``import vggtl`` does not need it):
``pip install scikit-learn``.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (_check_sample_weight, check_array, check_is_fitted,
                                          column_or_1d)
    from sklearn.utils import check_random_state
except ImportError:  # pragma: no cover - exercised without scikit-learn
    raise ImportError("vggtl.VGG16Classifier needs scikit-learn, which is not installed: "
                      "pip install scikit-learn  (or, in a vggtl checkout: pip install -e '.[sklearn]')") from None

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(est, X, y="no_validation", reset=True, **kw):
        return est._validate_data(X, y, reset=reset, **kw)

from . import recipe
from .data import resize
from .model import TransferModel, load_model
from .optim import SGD, RMSprop
from .recipe import LR_PRETRAINED, LR_RANDOM  # noqa: F401  (the command line's too)

__all__ = ["VGG16Classifier"]

DEFAULT_EPOCHS = recipe.EPOCHS
_HEADS = recipe.HEADS
_auto_failed: Optional[str] = None  # why weights="auto" found no ImageNet weights (once)


def _auto_weights():
    """weights="auto": the ImageNet weights (found, else downloaded) or None with one
    warning. A failed download is not tried again in this process, so a grid search
    offline does not wait on the network once per fit."""
    global _auto_failed
    import warnings

    from .weights import WeightsNotFoundError, find_imagenet_weights, load_weights
    try:
        found = find_imagenet_weights()
    except FileNotFoundError as e:  # $VGGTL_WEIGHTS names nothing
        found, why = None, str(e)
    else:
        why = None
    if found is not None:
        try:
            return load_weights(found)
        except (ImportError, ValueError, OSError) as e:
            why = f"{found} cannot be read: {' '.join(str(e).split())}"
    elif why is None:
        if _auto_failed is None:
            try:
                return load_weights("imagenet")
            except (WeightsNotFoundError, ImportError, ValueError, OSError) as e:
                _auto_failed = " ".join(str(e).split())
        why = _auto_failed
    warnings.warn(f"weights='auto': no ImageNet weights, so the base has random weights "
                  f"(Glorot-uniform) and the accuracy will be lower; pass weights=None to say "
                  f"so, or weights='imagenet' to require them. {why}", UserWarning, stacklevel=4)
    return None
_OPTIMIZERS = ("adam", "sgd", "rmsprop")
_LOSSES = ("auto", "binary_crossentropy", "categorical_crossentropy",
           "sparse_categorical_crossentropy")


class VGG16Classifier(ClassifierMixin, BaseEstimator):
    """VGG16 transfer learning as a scikit-learn classifier (fit, predict,
    predict_proba, score; works in ``Pipeline`` and ``GridSearchCV``).

    Parameters
    ----------
    weights : "auto" (the default, as the command line's ``--weights auto``: the
        ImageNet weights when found on the machine or downloadable, else random ones,
        with one warning), "imagenet" (an error when they cannot be had), None
        (random, Glorot-uniform from ``random_state``), a weights file path or a
        ``{layer: (kernel, bias)}`` dict, as :class:`vggtl.VGG16`.
    input_size : int or (height, width), optional. The size the network sees;
        default: the images' own size, or 32 when smaller (VGG16's minimum).
    image_shape : (H, W) or (H, W, C), optional. How flat rows ``(N, D)`` are
        laid out as images; default: the smallest square grid holding D values.
    head : "flatten" (the tutorial's), "avg" or "max": the head's first layer.
    hidden_units : the hidden Dense layer's width (512); 0 leaves it out.
    dropout : the Dropout rate after it (0.5).
    optimizer : "adam" (the tutorial's, with ``decay = learning_rate / epochs``),
        "sgd" (momentum 0.9) or "rmsprop".
    learning_rate : float, or None (the default): 1e-4, the tutorial's INIT_LR, with
        pretrained weights; 3e-3 with random ones (as the command line).
    epochs, batch_size : as Keras's ``fit`` (epochs: 20, the tutorial's and the
        command line's).
    loss : "auto" (binary cross-entropy for two classes as the tutorial,
        categorical otherwise) or a vggtl loss name.
    augment : a :class:`vggtl.Augment`, optional; ``augment_views``: K cached
        augmented views, "auto" (None) or "epoch" (see ``TransferModel.fit``).
    fine_tune_epochs : int (0). After the head, train block 5 (from
        ``unfreeze_from``) with the head for this many epochs, SGD(1e-4, momentum 0.9),
        with the same augmentation.
    preprocess : "auto" (what the weights expect), None, "caffe", "torch", "scale".
    cache : True (the feature cache's default folder), a folder, or False.
    random_state : int, None or a ``np.random.RandomState``: the random base
        weights, the head's initialisation, the shuffling and dropout.
    verbose : 0 (silent) or 1 (progress bars and a line per epoch).
    precision : "fp32" (default), "bf16" or "auto": the frozen base's
        convolutions, as :class:`vggtl.VGG16` ("auto": bf16 where Intel's AMX
        tiles run it, 1.3 to 1.6 times as fast, features within about 1e-2 of
        float32 ones; float32 elsewhere).

    Attributes
    ----------
    classes_ : the class labels, sorted. n_features_in_ : D, for flat rows.
    image_shape_ : (H, W, C) of the images as given (before resizing).
    model_ : the trained :class:`vggtl.TransferModel`. history_ : its ``History.history``.
    weights_ : the weights used: "imagenet", "random" or what ``weights`` named.
    learning_rate_ : the learning rate used.

    Example
    -------
    >>> import numpy as np, vggtl
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 255, size=(20, 32, 32, 3), dtype=np.uint8)
    >>> y = np.array(["cat", "dog"] * 10)
    >>> clf = vggtl.VGG16Classifier(weights=None, epochs=1, cache=False).fit(X, y)
    >>> clf.classes_.tolist(), clf.predict_proba(X[:2]).shape
    (['cat', 'dog'], (2, 2))
    """

    # what an estimator pickled before `precision` existed has (get_params reads it)
    precision = "fp32"

    def __init__(self, weights: Any = "auto",
                 input_size: Union[None, int, Tuple[int, int]] = None,
                 image_shape: Optional[Tuple[int, ...]] = None, head: str = "flatten",
                 hidden_units: int = 512, dropout: float = 0.5, optimizer: str = "adam",
                 learning_rate: Optional[float] = None, epochs: int = DEFAULT_EPOCHS,
                 batch_size: int = 32,
                 loss: str = "auto", augment: Any = None, augment_views: Optional[int] = None,
                 fine_tune_epochs: int = 0, unfreeze_from: str = "block5_conv1",
                 preprocess: Optional[str] = "auto", cache: Any = True,
                 random_state: Any = 0, verbose: int = 0, precision: str = "fp32"):
        self.weights = weights
        self.input_size = input_size
        self.image_shape = image_shape
        self.head = head
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.loss = loss
        self.augment = augment
        self.augment_views = augment_views
        self.fine_tune_epochs = fine_tune_epochs
        self.unfreeze_from = unfreeze_from
        self.preprocess = preprocess
        self.precision = precision
        self.cache = cache
        self.random_state = random_state
        self.verbose = verbose

    # -- scikit-learn's conventions ---------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W) and (N, H, W, C)
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # -- inputs -----------------------------------------------------------------------
    def _check_params(self) -> None:
        def positive_int(name, v, minimum=1):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
        positive_int("epochs", self.epochs, 0)
        positive_int("batch_size", self.batch_size)
        positive_int("hidden_units", self.hidden_units, 0)
        positive_int("fine_tune_epochs", self.fine_tune_epochs, 0)
        if self.head not in _HEADS:
            raise ValueError(f"head: expected one of {sorted(_HEADS)}, got {self.head!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {list(_OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if self.loss not in _LOSSES:
            raise ValueError(f"loss: expected one of {list(_LOSSES)}, got {self.loss!r}")
        if not isinstance(self.precision, str) or self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision: expected 'auto', 'fp32' or 'bf16', got "
                             f"{self.precision!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout: expected a rate in [0, 1), got {self.dropout!r}")
        if self.learning_rate is not None and not (
                isinstance(self.learning_rate, (int, float)) and not isinstance(
                    self.learning_rate, bool) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ValueError(f"learning_rate: expected a number > 0, got {self.learning_rate!r}")

    def _network_size(self, h: int, w: int) -> Tuple[int, int]:
        try:
            return recipe.network_size(h, w, self.input_size)
        except ValueError as e:
            raise ValueError(f"input_size: {e}") from None

    def _layout(self, d: int) -> Tuple[int, int, int]:
        """(H, W, C) of a flat row of d values."""
        if self.image_shape is not None:
            shape = tuple(int(v) for v in self.image_shape)
            if len(shape) == 2:
                shape += (1,)
            if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 1:
                raise ValueError(f"image_shape: expected (H, W) or (H, W, C) with C 1 or 3, got "
                                 f"{self.image_shape!r}")
            if int(np.prod(shape)) != d:
                raise ValueError(f"image_shape: {self.image_shape!r} holds {int(np.prod(shape))} "
                                 f"values but the rows of X have {d}")
            return shape
        side = max(1, math.isqrt(d - 1) + 1) if d > 1 else 1
        return (side, side, 1)

    def _images(self, X, reset: bool) -> np.ndarray:
        """X as uint8 or float images (N, h, w, C) of the network's input size."""
        if not (hasattr(X, "tocsr") or hasattr(X, "iloc") or isinstance(X, np.ndarray)):
            X = np.asarray(X)  # lists, array-likes (a DataFrame keeps its column names)
        if isinstance(X, np.ndarray) and X.ndim > 2:
            X = check_array(X, allow_nd=True, dtype=None, accept_sparse=False, copy=False,
                            **{_FINITE_ARG: True})
            if X.ndim == 3:
                X = X[..., None]
            if X.ndim != 4 or X.shape[3] not in (1, 3):
                raise ValueError(f"X: expected images (N, H, W) or (N, H, W, C) with C 1 or 3, "
                                 f"or flat rows (N, D); got shape {X.shape}")
            if reset:
                self.image_shape_ = tuple(int(v) for v in X.shape[1:])
                if hasattr(self, "n_features_in_"):
                    del self.n_features_in_
        else:
            X = _validate_data(self, X, reset=reset, dtype=None, accept_sparse=False)
            if reset:
                self.image_shape_ = self._layout(X.shape[1])
            h, w, c = self.image_shape_
            d = X.shape[1]
            if d > h * w * c or (not reset and not hasattr(self, "n_features_in_")
                                 and d != h * w * c):
                raise ValueError(f"X has {d} features, but {type(self).__name__} was fitted on "
                                 f"images of shape {self.image_shape_}: pass images, or rows of "
                                 f"{h * w * c} values")
            if h * w * c != d:  # the zero-padded square layout
                pad = np.zeros((len(X), h * w * c), dtype=X.dtype)
                pad[:, :d] = X
                X = pad
            X = X.reshape(len(X), h, w, c)
        if X.dtype != np.uint8 and X.dtype.kind != "f":
            X = X.astype(np.float32)
        h, w = self._network_size(*X.shape[1:3]) if reset else self.model_.base.input_shape[:2]
        if X.shape[1:3] != (h, w):
            X = resize(X, (h, w))
        return X

    def _target(self, y) -> np.ndarray:
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return y

    # -- the model ----------------------------------------------------------------------
    def _build(self, image_hw: Tuple[int, int], channels: int, n_classes: int, seed: int):
        weights = self.weights
        if isinstance(weights, str) and weights == "auto":
            weights = _auto_weights()
            self.weights_ = "random" if weights is None else "imagenet"
        else:
            self.weights_ = "random" if weights is None else \
                weights if isinstance(weights, str) else type(weights).__name__
        model = recipe.build(weights, (image_hw[0], image_hw[1], channels), n_classes,
                             seed=seed, precision=self.precision, preprocess=self.preprocess,
                             cache=self.cache, pooling=self.head,
                             hidden_units=self.hidden_units, dropout=self.dropout)
        lr = float(self.learning_rate) if self.learning_rate is not None else \
            recipe.learning_rate(weights is not None)
        self.learning_rate_ = lr
        if self.optimizer == "adam":
            opt = recipe.adam(lr, self.epochs)
        elif self.optimizer == "sgd":
            opt = SGD(learning_rate=lr, momentum=0.9)
        else:
            opt = RMSprop(learning_rate=lr)
        loss = self.loss
        if loss == "auto":
            loss = recipe.loss_for(n_classes)
        model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
        return model

    def fit(self, X, y, sample_weight=None) -> "VGG16Classifier":
        """Train on images or flat rows X and labels y (ints or strings);
        ``sample_weight`` (one number >= 0 per sample) weighs each sample's loss
        as Keras's ``fit(sample_weight=...)``.

        Returns self.

        >>> import numpy as np, vggtl
        >>> X = np.random.default_rng(0).random((12, 64))         # 12 flat 8 x 8 images
        >>> clf = vggtl.VGG16Classifier(weights=None, epochs=1, cache=False).fit(X, [0, 1] * 6)
        >>> clf.image_shape_, clf.n_features_in_
        ((8, 8, 1), 64)
        """
        self._check_params()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             f"is None")
        y = self._target(y)
        images = self._images(X, reset=True)
        if len(y) != len(images):
            raise ValueError(f"X and y: expected one label per sample, got {len(images)} samples "
                             f"and {len(y)} labels")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, images, dtype=np.float32)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y: found only one class ({classes[0]!r}); a classifier needs at "
                             f"least 2 classes")
        seed = int(check_random_state(self.random_state).randint(0, 2 ** 31 - 1))
        model = self._build(images.shape[1:3], images.shape[3], len(classes), seed)
        verbose = int(bool(self.verbose))
        H = model.fit(images, codes, batch_size=int(self.batch_size), epochs=int(self.epochs),
                      verbose=verbose, augment=self.augment, augment_views=self.augment_views,
                      sample_weight=sample_weight)
        history = {k: list(v) for k, v in H.history.items()}
        if self.fine_tune_epochs:
            H2 = model.fine_tune(images, codes, unfreeze_from=self.unfreeze_from,
                                 batch_size=int(self.batch_size), epochs=int(self.fine_tune_epochs),
                                 verbose=verbose, augment=self.augment,
                                 augment_views=self.augment_views, sample_weight=sample_weight)
            for k, v in H2.history.items():
                history.setdefault(k, []).extend(v)
        self.classes_ = classes
        self.model_ = model
        self.history_ = history
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (N, len(classes_)), float64, rows summing to 1.

        >>> import numpy as np, vggtl
        >>> X = np.random.default_rng(0).random((12, 64))
        >>> clf = vggtl.VGG16Classifier(weights=None, epochs=1, cache=False).fit(X, [0, 1] * 6)
        >>> clf.predict_proba(X[:3]).sum(axis=1).round(6).tolist()
        [1.0, 1.0, 1.0]
        """
        check_is_fitted(self, "model_")
        images = self._images(X, reset=False)
        bs = max(int(self.batch_size), 32)
        F = self.model_.features(images, batch_size=bs, cache=self.cache,
                                 progress=bool(self.verbose))
        p = np.asarray(self.model_.predict_features(F, batch_size=bs), dtype=np.float64)
        p /= p.sum(axis=1, keepdims=True)
        return p

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample (labels from ``classes_``).

        >>> import numpy as np, vggtl
        >>> X = np.random.default_rng(0).random((12, 64))
        >>> clf = vggtl.VGG16Classifier(weights=None, epochs=1, cache=False).fit(X, ["a", "b"] * 6)
        >>> set(clf.predict(X)) <= {"a", "b"}
        True
        """
        check_is_fitted(self, "model_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy on X and y (scikit-learn's ``ClassifierMixin.score``).

        >>> import numpy as np, vggtl
        >>> X = np.random.default_rng(0).random((12, 64))
        >>> clf = vggtl.VGG16Classifier(weights=None, epochs=1, cache=False).fit(X, [0, 1] * 6)
        >>> 0.0 <= clf.score(X, [0, 1] * 6) <= 1.0
        True
        """
        return super().score(X, y, sample_weight=sample_weight)

    # -- pickling: the model travels as its saved file (safetensors + JSON) -------------
    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__()
        model = state.get("model_")
        if isinstance(model, TransferModel):
            with tempfile.TemporaryDirectory(prefix="vggtl-") as tmp:
                path = os.path.join(tmp, "model.vggtl")
                model.save(path)
                with open(path, "rb") as f:
                    state = dict(state, model_=_SavedModel(f.read()))
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        model = state.get("model_")
        if isinstance(model, _SavedModel):
            with tempfile.TemporaryDirectory(prefix="vggtl-") as tmp:
                path = os.path.join(tmp, "model.vggtl")
                with open(path, "wb") as f:
                    f.write(model.data)
                state = dict(state, model_=load_model(path))
                state["model_"].cache = state.get("cache", True)
        super().__setstate__(state)


class _SavedModel:
    """A TransferModel's file, as a pickled VGG16Classifier holds it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __getstate__(self):
        return self.data

    def __setstate__(self, data):
        self.data = data


def _finite_arg() -> str:
    import inspect
    params = inspect.signature(check_array).parameters
    return "ensure_all_finite" if "ensure_all_finite" in params else "force_all_finite"


_FINITE_ARG = _finite_arg()
