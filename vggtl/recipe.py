"""The tutorial's recipe, in one place: the command line (``python -m vggtl
train`` / ``demo``, :func:`vggtl.__main__.run_training`) and the estimator
(:class:`vggtl.VGG16Classifier`) build and train the same model from it.

A frozen VGG16 base at the network's input size (:func:`network_size`), a head
Flatten -> Dense(512, relu) -> Dropout(0.5) -> Dense(C, softmax), Adam with
``decay = lr / epochs``, binary cross-entropy for two classes and categorical
otherwise; fine-tuning block 5 with SGD(1e-4, momentum 0.9); the tutorial's
ImageDataGenerator as augmentation.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import numpy as np

from .layers import Dense, Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D
from .model import TransferModel
from .optim import Adam
from .vgg16 import MIN_SIZE, VGG16

__all__ = ["EPOCHS", "LR_PRETRAINED", "LR_RANDOM", "FINE_TUNE_LR", "FINE_TUNE_MOMENTUM",
           "TUTORIAL_AUGMENT", "HEADS", "network_size", "learning_rate", "loss_for", "head",
           "build", "adam"]

EPOCHS = 20  # the tutorial's
# Adam's learning rate: the tutorial's INIT_LR with pretrained weights; random base
# features are larger and less telling, so a larger step
LR_PRETRAINED, LR_RANDOM = 1e-4, 3e-3
# the tutorial's fine-tuning SGD(1e-4, momentum 0.9): more unsettles block 5
FINE_TUNE_LR, FINE_TUNE_MOMENTUM = 1e-4, 0.9
# the tutorial's ImageDataGenerator (pyimagesearch's fine-tuning / transfer-learning posts)
TUTORIAL_AUGMENT = dict(rotation_range=30, zoom_range=0.15, width_shift_range=0.2,
                        height_shift_range=0.2, shear_range=0.15, horizontal_flip=True,
                        fill_mode="nearest")
HIDDEN_UNITS, DROPOUT = 512, 0.5
# what reduces the base's output before the dense layers
HEADS = {"flatten": Flatten, "avg": GlobalAveragePooling2D, "max": GlobalMaxPooling2D}


def network_size(h: int, w: int,
                 size: Union[None, int, Tuple[int, int]] = None) -> Tuple[int, int]:
    """The network's input (height, width) for images of ``h`` x ``w``: with
    ``size`` None their own size, at least :data:`MIN_SIZE` each way; an int
    ``size`` x ``size``; else ``size`` as (height, width). Raises ValueError for a
    size VGG16 cannot take (the caller names its argument)."""
    if size is None:
        return (max(h, MIN_SIZE), max(w, MIN_SIZE))
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        oh, ow = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"expected an int or (height, width), got {size!r}") from None
    if oh < MIN_SIZE or ow < MIN_SIZE:
        raise ValueError(f"VGG16 needs at least {MIN_SIZE} x {MIN_SIZE}, got {oh} x {ow}")
    return (oh, ow)


def learning_rate(pretrained: bool) -> float:
    """The head's learning rate when none is given."""
    return LR_PRETRAINED if pretrained else LR_RANDOM


def loss_for(n_classes: int) -> str:
    return "binary_crossentropy" if n_classes == 2 else "categorical_crossentropy"


def adam(lr: float, epochs: int) -> Adam:
    """The tutorial's Adam: ``decay = lr / epochs``."""
    return Adam(learning_rate=lr, decay=lr / max(int(epochs), 1))


def head(n_classes: int, pooling: str = "flatten", hidden_units: int = HIDDEN_UNITS,
         dropout: float = DROPOUT) -> List[object]:
    """The head's layers: pooling, Dense(hidden_units, relu) and Dropout(dropout)
    when they are not 0, Dense(n_classes, softmax)."""
    layers = [HEADS[pooling]()]
    if hidden_units:
        layers.append(Dense(int(hidden_units), activation="relu"))
        if dropout:
            layers.append(Dropout(float(dropout)))
    layers.append(Dense(n_classes, activation="softmax"))
    return layers


def build(weights, input_shape: Tuple[int, int, int], n_classes: int, *, seed: Optional[int],
          precision: str = "fp32", preprocess: Optional[str] = "auto", cache=True,
          pooling: str = "flatten", hidden_units: int = HIDDEN_UNITS,
          dropout: float = DROPOUT) -> TransferModel:
    """The frozen VGG16 base and the head, not compiled yet."""
    base = VGG16(weights=weights, include_top=False, input_shape=tuple(input_shape),
                 preprocess=preprocess, precision=precision, seed=seed)
    return TransferModel(base, head=head(n_classes, pooling, hidden_units, dropout), seed=seed,
                         cache=cache)
