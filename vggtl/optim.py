"""Optimizers with Keras's names, defaults and update rules, applied in C.

``Adam(lr=1e-4, decay=1e-4 / 20)`` works as in the tutorial: ``lr`` is an alias of
``learning_rate`` and ``decay`` is Keras 2's legacy time decay,
``learning_rate / (1 + decay * iterations)`` - identical to Keras 3's
``InverseTimeDecay(learning_rate, decay_steps=1, decay_rate=decay)``.

``learning_rate`` may also be a schedule: :class:`InverseTimeDecay`,
:class:`ExponentialDecay`, :class:`CosineDecay` (Keras's formulas), any
:class:`LearningRateSchedule`, or a callable ``step -> learning rate``. As in
Keras, it is evaluated at ``optimizer.iterations`` (the updates already done)
before every update, and a ``decay`` divides it further.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import numpy as np

from . import _core

SGD_KIND, ADAM_KIND, RMSPROP_KIND = _core.OPT_SGD, _core.OPT_ADAM, _core.OPT_RMSPROP


def _takes_step(f) -> bool:
    """A schedule object, or a callable with a parameter: called with the step.
    A callable without parameters (Keras 3 accepts those) is called bare."""
    if isinstance(f, LearningRateSchedule):
        return True
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def _positive(name, v, allow_zero=False):
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {v}")
    return v


class LearningRateSchedule:
    """Base of learning-rate schedules: ``schedule(step)`` is the learning rate of
    the update that follows ``step`` updates (Keras's ``LearningRateSchedule``)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _check_schedule_args(name, initial_learning_rate, decay_steps):
    lr = _positive(f"{name}: initial_learning_rate", initial_learning_rate)
    steps = _positive(f"{name}: decay_steps", decay_steps)
    return lr, steps


class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)`` (the step
    fraction floored when ``staircase``), as Keras's. With ``decay_steps=1`` and
    ``decay_rate=lr / epochs`` it is the tutorial's legacy ``decay``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name=None):
        self.initial_learning_rate, self.decay_steps = _check_schedule_args(
            "InverseTimeDecay", initial_learning_rate, decay_steps)
        self.decay_rate = _positive("InverseTimeDecay: decay_rate", decay_rate, allow_zero=True)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = float(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate / (1.0 + self.decay_rate * p)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (the exponent
    floored when ``staircase``), as Keras's."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name=None):
        self.initial_learning_rate, self.decay_steps = _check_schedule_args(
            "ExponentialDecay", initial_learning_rate, decay_steps)
        self.decay_rate = _positive("ExponentialDecay: decay_rate", decay_rate)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = float(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Keras's cosine decay with optional linear warm-up: without ``warmup_target``,
    ``lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps))
    + alpha)``; with it, a line from ``initial_learning_rate`` to ``warmup_target``
    over ``warmup_steps`` steps, then the cosine from ``warmup_target``."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name=None,
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = _positive("CosineDecay: initial_learning_rate",
                                               initial_learning_rate, allow_zero=True)
        self.decay_steps = _positive("CosineDecay: decay_steps", decay_steps)
        self.alpha = _positive("CosineDecay: alpha", alpha, allow_zero=True)
        self.warmup_target = None if warmup_target is None else _positive(
            "CosineDecay: warmup_target", warmup_target, allow_zero=True)
        self.warmup_steps = _positive("CosineDecay: warmup_steps", warmup_steps, allow_zero=True)
        self.name = name

    def _decay(self, step, start):
        fraction = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return start * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = float(step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * (step / self.warmup_steps) + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


SCHEDULES = {c.__name__: c for c in (InverseTimeDecay, ExponentialDecay, CosineDecay)}


def _schedule_value(schedule, step: int) -> float:
    try:
        v = float(schedule(step))
    except Exception as e:
        raise ValueError(f"learning_rate: the schedule {schedule!r} failed at step {step}: "
                         f"{e}") from e
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"learning_rate: the schedule {schedule!r} gave {v} at step {step}; "
                         f"expected a finite number >= 0")
    return v


class Optimizer:
    """Base class: holds the hyperparameters and ``iterations`` (updates done)."""

    kind = -1
    _CORE_FIELDS: tuple = ()  # the rule's hyperparameters, by their names in core_spec

    def __init__(self, learning_rate, decay=0.0, lr=None, **unknown):
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {sorted(unknown)}")
        if lr is not None:
            learning_rate = lr  # Keras 2's name
        self.decay = _positive("decay", decay, allow_zero=True)
        self.iterations = 0
        self.learning_rate = learning_rate

    @property
    def learning_rate(self):
        """A float, or the schedule given (see :attr:`schedule`)."""
        return self._learning_rate if self.schedule is None else self.schedule

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, LearningRateSchedule) or (callable(value) and not
                                                       isinstance(value, (int, float))):
            self.schedule = value
            self._learning_rate = _schedule_value(value, 0) if _takes_step(value) else \
                _positive("learning_rate", value())
            return
        self.schedule = None
        self._learning_rate = _positive("learning_rate", value)

    lr = learning_rate  # Keras 2's name

    def _base_rate(self, step: int) -> float:
        if self.schedule is None:
            return self._learning_rate
        if _takes_step(self.schedule):
            return _schedule_value(self.schedule, step)
        return _positive("learning_rate", self.schedule())

    def current_learning_rate(self, iterations: Optional[int] = None) -> float:
        """The learning rate of the next update after ``iterations`` updates
        (default: now): the schedule's value at that step, divided by the legacy
        ``1 + decay * iterations``."""
        it = self.iterations if iterations is None else iterations
        return self._base_rate(it) / (1.0 + self.decay * it)

    def core_spec(self, steps: int = 0) -> dict:
        """The optimizer as the core reads it (``parse_optimizer`` in
        csrc/py/glue.c): its kind, learning rate, decay and the rule's own
        hyperparameters by name. With a schedule, the learning rate is its
        values for the next ``steps`` updates, from ``iterations`` on."""
        spec = {"kind": self.kind, "learning_rate": self._learning_rate, "decay": self.decay}
        spec.update((name, getattr(self, name)) for name in self._CORE_FIELDS)
        if self.schedule is None:
            return spec
        it0 = self.iterations
        if _takes_step(self.schedule):
            table = np.array([_schedule_value(self.schedule, it0 + k) for k in range(max(steps, 1))],
                             dtype=np.float64)
        else:  # a callable without arguments (Keras 3's form): once per call
            table = np.full(max(steps, 1), _positive("learning_rate", self.schedule()), np.float64)
        spec["learning_rate"] = {"per_step": table, "first_iteration": it0}
        return spec

    def slots(self) -> int:
        """Optimizer state arrays per parameter."""
        raise NotImplementedError

    def get_config(self) -> dict:
        lr = self._learning_rate
        if self.schedule is not None:
            if type(self.schedule).__name__ not in SCHEDULES or \
                    SCHEDULES[type(self.schedule).__name__] is not type(self.schedule):
                raise ValueError(f"learning_rate: a custom schedule {self.schedule!r} cannot be "
                                 f"saved; use InverseTimeDecay, ExponentialDecay or CosineDecay, "
                                 f"or a float")
            lr = {"class_name": type(self.schedule).__name__, "config": self.schedule.get_config()}
        return {"class_name": type(self).__name__, "learning_rate": lr, "decay": self.decay}

    def __repr__(self):
        try:
            cfg = self.get_config()
        except ValueError:  # a custom schedule: shown, though it cannot be saved
            cfg = {"learning_rate": self.schedule, "decay": self.decay}
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "class_name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Keras's SGD: momentum ``m = momentum*m - lr*g``; Nesterov optional."""

    kind = SGD_KIND
    _CORE_FIELDS = ("momentum", "nesterov")

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
    _CORE_FIELDS = ("beta_1", "beta_2", "epsilon")

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
    _CORE_FIELDS = ("rho", "momentum", "epsilon")

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
        lr = cfg.get("learning_rate")
        if isinstance(lr, dict) and lr.get("class_name") in SCHEDULES and \
                isinstance(lr.get("config"), dict):
            cfg["learning_rate"] = SCHEDULES[lr["class_name"]](**lr["config"])
        if cls is not None:
            return cls(**cfg)
    raise ValueError(f"optimizer: expected 'adam', 'sgd', 'rmsprop' or an optimizer instance, "
                     f"got {identifier!r}")
