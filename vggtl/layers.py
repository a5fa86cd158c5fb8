"""Head layers, with Keras's names and defaults.

A head is a list: an optional input reduction (``Flatten``, the default, or
``GlobalAveragePooling2D`` / ``GlobalMaxPooling2D``) followed by ``Dense`` and
``Dropout`` layers, the last one a ``Dense`` (the output). The C core trains it.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import _core

ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid")


class Layer:
    """Base of head layers; ``name`` is filled in by the model as Keras does."""

    kind = "layer"

    def __init__(self, name: Optional[str] = None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name: expected a string, got {type(name).__name__}")
        self.name = name

    def get_config(self) -> dict:
        return {"class_name": type(self).__name__, "name": self.name}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class_name")
        return f"{type(self).__name__}({args})"


class Flatten(Layer):
    """Flattens each sample's feature map (H, W, C) in Keras's (NHWC) order."""

    kind = "flatten"
    mode = _core.HEAD_FLATTEN


class GlobalAveragePooling2D(Layer):
    """Mean over H and W of each channel."""

    kind = "global_average_pooling2d"
    mode = _core.HEAD_GAP


class GlobalMaxPooling2D(Layer):
    """Max over H and W of each channel."""

    kind = "global_max_pooling2d"
    mode = _core.HEAD_GMP


INPUT_LAYERS = (Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D)


class Dense(Layer):
    """Fully connected layer: ``activation(x @ kernel + bias)``.

    Kernel initialised Glorot-uniform, bias zeros (Keras's defaults).
    """

    kind = "dense"

    def __init__(self, units: int, activation: Optional[str] = None, name: Optional[str] = None):
        super().__init__(name)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"units: expected an int >= 1, got {units!r}")
        if activation is None:
            activation = "linear"
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS} or None, got {activation!r}")
        self.units = int(units)
        self.activation = activation

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}

    def init_weights(self, fan_in: int, rng: np.random.Generator):
        limit = math.sqrt(6.0 / (fan_in + self.units))
        kernel = rng.random((fan_in, self.units), dtype=np.float32)
        kernel *= np.float32(2 * limit)
        kernel -= np.float32(limit)
        return kernel, np.zeros(self.units, dtype=np.float32)


class Dropout(Layer):
    """Inverted dropout in training (keep with probability 1 - rate, scale by
    1 / (1 - rate)); the identity at inference."""

    kind = "dropout"

    def __init__(self, rate: float, name: Optional[str] = None):
        super().__init__(name)
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"rate: expected a float in [0, 1), got {rate!r}") from None
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate: expected a float in [0, 1), got {rate}")
        self.rate = rate

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


_CLASSES = {c.__name__: c for c in (Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, Dense,
                                    Dropout)}


def from_config(config: dict) -> Layer:
    """Rebuild a layer from ``get_config()`` (used by ``load_model``)."""
    config = dict(config)
    cls = _CLASSES.get(config.pop("class_name", None))
    if cls is None:
        raise ValueError(f"unknown layer class in config: {config!r}")
    return cls(**config)
