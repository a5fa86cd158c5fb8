"""Optimizers with Keras's names, defaults and update rules, applied in C.

``Adam(lr=1e-4, decay=1e-4 / 20)`` works as in the tutorial: ``lr`` is an alias of
``learning_rate`` and ``decay`` is Keras 2's legacy time decay,
``learning_rate / (1 + decay * iterations)`` - identical to Keras 3's
``InverseTimeDecay(learning_rate, decay_steps=1, decay_rate=decay)``.
"""
from __future__ import annotations

import math
from typing import Optional

SGD_KIND, ADAM_KIND, RMSPROP_KIND = 0, 1, 2


def _positive(name, v, allow_zero=False):
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {v}")
    return v


class Optimizer:
    """Base class: holds the hyperparameters and ``iterations`` (updates done)."""

    kind = -1

    def __init__(self, learning_rate, decay=0.0, lr=None, **unknown):
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {sorted(unknown)}")
        if lr is not None:
            learning_rate = lr  # Keras 2's name
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.decay = _positive("decay", decay, allow_zero=True)
        self.iterations = 0

    def current_learning_rate(self, iterations: Optional[int] = None) -> float:
        """The decayed learning rate at ``iterations`` (default: now)."""
        it = self.iterations if iterations is None else iterations
        return self.learning_rate / (1.0 + self.decay * it)

    def as_core_tuple(self):
        return (self.kind, self.learning_rate, self.decay, getattr(self, "beta_1", 0.0),
                getattr(self, "beta_2", 0.0), getattr(self, "epsilon", 0.0),
                getattr(self, "momentum", 0.0), bool(getattr(self, "nesterov", False)),
                getattr(self, "rho", 0.0))

    def slots(self) -> int:
        """Optimizer state arrays per parameter."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"class_name": type(self).__name__, "learning_rate": self.learning_rate,
                "decay": self.decay}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class_name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Keras's SGD: momentum ``m = momentum*m - lr*g``; Nesterov optional."""

    kind = SGD_KIND

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, decay=0.0, lr=None,
                 **unknown):
        super().__init__(learning_rate, decay, lr, **unknown)
        self.momentum = _positive("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum: expected a number in [0, 1), got {self.momentum}")
        self.nesterov = bool(nesterov)

    def slots(self):
        return 1 if self.momentum else 0

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Keras's Adam (epsilon 1e-7 added to the uncorrected sqrt(v))."""

    kind = ADAM_KIND

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, decay=0.0,
                 lr=None, **unknown):
        super().__init__(learning_rate, decay, lr, **unknown)
        for name, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            b = _positive(name, b, allow_zero=True)
            if b >= 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {b}")
            setattr(self, name, b)
        self.epsilon = _positive("epsilon", epsilon)

    def slots(self):
        return 2

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """Keras's RMSprop: ``v = rho*v + (1-rho)*g^2; p -= lr*g/sqrt(v+eps)``."""

    kind = RMSPROP_KIND

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, decay=0.0,
                 lr=None, **unknown):
        super().__init__(learning_rate, decay, lr, **unknown)
        self.rho = _positive("rho", rho, allow_zero=True)
        if self.rho >= 1:
            raise ValueError(f"rho: expected a number in [0, 1), got {self.rho}")
        self.momentum = _positive("momentum", momentum, allow_zero=True)
        self.epsilon = _positive("epsilon", epsilon)

    def slots(self):
        return 2 if self.momentum else 1

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon}


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    """An optimizer from a name ("adam", "sgd", "rmsprop") or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict):
        cfg = dict(identifier)
        cls = {c.__name__: c for c in _BY_NAME.values()}.get(cfg.pop("class_name", None))
        if cls is not None:
            return cls(**cfg)
    raise ValueError(f"optimizer: expected 'adam', 'sgd', 'rmsprop' or an optimizer instance, "
                     f"got {identifier!r}")
