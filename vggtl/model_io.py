"""TransferModel's files: ``save`` (safetensors weights, the configuration as
JSON metadata, written atomically), :func:`load_model`, ``export`` (ONNX) and the
configuration itself (``get_config``) and its schema (:func:`check_config`,
every field checked before anything is built). Mixed into
:class:`vggtl.model.TransferModel` as :class:`ModelIO`."""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import TYPE_CHECKING, Mapping

import numpy as np

from . import _core
from . import metrics as _metrics
from . import optim as _optim
from ._atomic import atomic_write_bytes
from ._files import open_regular, special_file_kind
from .layers import from_config
from .training import _locked
from .vgg16 import VGG16

if TYPE_CHECKING:
    from .model import TransferModel

# 2: the base may have precision "bf16"; 3: or "auto" (resolved where the model
# is loaded). A model is written with the lowest version that holds it (fp32
# models stay 1), so that an older vggtl refuses a model it would compute
# otherwise, and still reads the others.
FORMAT_VERSION = 3
_PRECISION_VERSION = {"fp32": 1, "bf16": 2, "auto": 3}


class ModelIO:
    """``get_config``, ``save`` and ``export`` of :class:`TransferModel`."""

    # -- saving ---------------------------------------------------------------------
    @_locked
    def get_config(self) -> dict:
        b = self.base
        return {
            "format": "vggtl.TransferModel",
            "format_version": _PRECISION_VERSION[b.precision_asked],
            "name": self.name, "seed": self.seed,
            "base": {"input_shape": list(b.input_shape) if b.input_shape else None,
                     "pooling": b.pooling, "preprocess": b.preprocess,
                     "precision": b.precision_asked},
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
        names go into the file's metadata ("class_names", JSON). The graph is
        float32 whatever the base's precision: a base that computes bf16 (asked,
        or "auto" on a CPU with AMX) predicts within bf16's error of it.
        Returns the path."""
        from .onnx_export import export
        return export(self, path, input_dtype)


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


def load_model(path, compile: bool = True) -> TransferModel:
    """Read a model written by :meth:`TransferModel.save`. ``compile=False`` (as
    Keras) leaves the optimizer, loss, metrics and optimizer state out: the model
    predicts, and needs ``compile`` before ``fit`` or ``evaluate``."""
    from safetensors.numpy import load
    from .model import TransferModel
    path = os.fspath(path)
    special = special_file_kind(path)
    if special:
        raise ValueError(f"path: {path!r} is {special}, expected a model file")
    try:
        with open_regular(path) as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no model file at {path!r}") from None
    config = _read_metadata(raw, path)
    try:
        tensors = load(raw)
    except Exception as e:  # safetensors raises its own error types on damaged data
        raise ValueError(f"path: {path!r} is not a readable vggtl model file ({e})") from None
    try:  # the whole configuration, against the tensors, before anything is built
        check_config(config, tensors, FORMAT_VERSION)
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


# -- the saved configuration's schema --------------------------------------------------
# The schema of a saved TransferModel's configuration, checked before anything is built.
#
# A model file (``TransferModel.save``) is safetensors: the tensors, and the
# configuration as JSON in the metadata. The file may come from anyone, so
# :func:`check_config` validates all of it, field by field, before ``load_model`` builds
# a layer or allocates an array: types, ranges, lengths, names, and the shapes
# the configuration implies against the tensors the file holds (a ``units`` of
# 10**8 is refused because the stored kernel does not have that many columns,
# not after allocating it). Every failure is a ValueError naming the field as
# ``head[2].units`` or ``compile.optimizer.learning_rate``.
#
# What ``TransferModel.get_config`` writes and this section accepts must change
# together: a new field needs its line here.

_MAX_TEXT = 256           # layer and model names; a class label
_MAX_SIDE = 1 << 16       # input_shape height and width
_MAX_HEAD = _core.HEAD_MAX_LAYERS  # layers after the input layer
_MAX_CLASSES = 1 << 20
_MAX_METRICS = 16
_INT64 = (1 << 63) - 1
_UINT64 = (1 << 64) - 1
INPUT_CLASSES = ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D")
_OPTIMIZER_FIELDS = {  # class_name -> hyperparameters, as Optimizer.get_config writes them
    "SGD": ("learning_rate", "decay", "momentum", "nesterov"),
    "Adam": ("learning_rate", "decay", "beta_1", "beta_2", "epsilon"),
    "RMSprop": ("learning_rate", "decay", "rho", "momentum", "epsilon"),
}


def _show(v) -> str:
    """v for a message, short whatever the file holds."""
    if isinstance(v, (list, dict)) and len(v) > 8:
        return f"{'a list' if isinstance(v, list) else 'an object'} of {len(v)} items"
    try:
        r = repr(v)
    except RecursionError:
        return "a value nested too deeply"
    return r if len(r) <= 80 else r[:77] + "..."


def _fail(field: str, expected: str, got) -> None:
    raise ValueError(f"{field}: expected {expected}, got {_show(got)}")


def _fields(field: str, v, required, optional=()) -> dict:
    """v as a dict holding every required key and no unknown one."""
    if not isinstance(v, dict):
        _fail(field, "an object", v)
    for k in v:
        if k not in required and k not in optional:
            raise ValueError(f"{field}: unknown field {_show(k)}; expected "
                             f"{', '.join(tuple(required) + tuple(optional))}")
    for k in required:
        if k not in v:
            raise ValueError(f"{field}: the field {k!r} is missing")
    return v


def _int(field: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        _fail(field, f"an integer in [{lo}, {hi}]", v)
    return v


def _number(field: str, v) -> float:
    try:  # an int of 400 digits is no float: OverflowError
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))
    except OverflowError:
        ok = False
    if not ok:
        _fail(field, "a finite number", v)
    return float(v)


def _schedule(field: str, v) -> None:
    """A learning-rate schedule as Optimizer.get_config writes it:
    {"class_name": ..., "config": {its arguments}}."""
    import inspect
    from .optim import SCHEDULES
    _fields(field, v, ("class_name", "config"))
    kind = _choice(f"{field}.class_name", v["class_name"], tuple(SCHEDULES))
    params = tuple(inspect.signature(SCHEDULES[kind].__init__).parameters)[1:]
    cfg = _fields(f"{field}.config", v["config"], (), params)
    for k, x in cfg.items():
        if k == "name":
            if x is not None and not (isinstance(x, str) and len(x) <= _MAX_TEXT):
                _fail(f"{field}.config.name", f"null or a string of at most {_MAX_TEXT} "
                      f"characters", x)
        elif k == "staircase":
            if not isinstance(x, bool):
                _fail(f"{field}.config.staircase", "true or false", x)
        elif not (k == "warmup_target" and x is None):
            _number(f"{field}.config.{k}", x)


def _choice(field: str, v, choices):
    # by type as well as value: true is not 1, 1.0 is not 1
    if not any(type(v) is type(c) and v == c for c in choices):
        _fail(field, "one of " + ", ".join(map(repr, choices)), v)
    return v


def _name(field: str, v) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= _MAX_TEXT or "/" in v:
        _fail(field, f"a name of 1 to {_MAX_TEXT} characters without '/'", v)
    return v


def _tensor(tensors: Mapping, key: str, shape: tuple) -> None:
    a = tensors.get(key)
    if a is None:
        raise ValueError(f"tensor {key!r}: missing (expected float32 {shape})")
    if a.dtype != np.float32 or a.shape != shape:
        raise ValueError(f"tensor {key!r}: expected float32 {shape}, got {a.dtype} {a.shape}")


def check_config(config, tensors: Mapping, format_version: int) -> None:
    """Validate a model file's configuration and its tensors' names, dtypes and
    shapes against each other; ValueError naming the field otherwise."""
    from . import vgg16 as _vgg16
    from .layers import ACTIVATIONS
    from .model import LOSSES

    c = _fields("configuration", config,
                ("format", "name", "seed", "base", "head"),
                ("format_version", "compile", "epochs_done", "classes", "class_names"))
    _choice("format", c["format"], ("vggtl.TransferModel",))
    version = _int("format_version", c.get("format_version", 1), 1, format_version)
    if not isinstance(c["name"], str) or len(c["name"]) > _MAX_TEXT:
        _fail("name", f"a string of at most {_MAX_TEXT} characters", c["name"])
    _int("seed", c["seed"], 0, _UINT64)
    _int("epochs_done", c.get("epochs_done", 0), 0, _INT64)

    # the base, and the feature shape its output has
    b = _fields("base", c["base"], ("input_shape", "pooling", "preprocess"), ("precision",))
    shape = b["input_shape"]
    if not isinstance(shape, list) or len(shape) != 3:
        _fail("base.input_shape", "[height, width, channels]", shape)
    h = _int("base.input_shape[0]", shape[0], _vgg16.MIN_SIZE, _MAX_SIDE)
    w = _int("base.input_shape[1]", shape[1], _vgg16.MIN_SIZE, _MAX_SIDE)
    _choice("base.input_shape[2]", shape[2], (1, 3))
    pooling = _choice("base.pooling", b["pooling"], (None, "avg", "max"))
    _choice("base.preprocess", b["preprocess"], _vgg16.PREPROCESS_MODES)
    precision = _choice("base.precision", b.get("precision", "fp32"), tuple(_PRECISION_VERSION))
    if version < _PRECISION_VERSION[precision]:
        allowed = " or ".join(repr(p) for p, v in _PRECISION_VERSION.items() if v <= version)
        _fail("base.precision", f"{allowed} in a format_version {version} file", precision)
    stop = _vgg16.LAYER_NAMES.index(_vgg16.BASE_OUTPUT)
    fh, fw, fc = _core.vgg16_output_shape(stop, _vgg16._pool_code(pooling), 1000, h, w)

    # the head, layer by layer, against the stored kernels
    head = c["head"]
    if not isinstance(head, list) or not 2 <= len(head) <= _MAX_HEAD + 1:
        _fail("head", f"a list of 2 to {_MAX_HEAD + 1} layers (the input layer first)", head)
    names, dense = set(), {}
    width = None
    for i, layer in enumerate(head):
        field = f"head[{i}]"
        if not isinstance(layer, dict):
            _fail(field, "a layer object", layer)
        kind = layer.get("class_name")
        if i == 0:
            _choice(f"{field}.class_name", kind, INPUT_CLASSES)
            _fields(field, layer, ("class_name", "name"))
            width = fh * fw * fc if kind == "Flatten" else fc
        elif kind == "Dense":
            _fields(field, layer, ("class_name", "name", "units"), ("activation",))
            units = _int(f"{field}.units", layer["units"], 1, _INT64)
            _choice(f"{field}.activation", layer.get("activation"), (None,) + ACTIVATIONS)
        elif kind == "Dropout":
            _fields(field, layer, ("class_name", "name", "rate"))
            rate = _number(f"{field}.rate", layer["rate"])
            if not 0.0 <= rate < 1.0:
                _fail(f"{field}.rate", "a number in [0, 1)", layer["rate"])
        else:
            _fail(f"{field}.class_name", "'Dense' or 'Dropout' after the input layer", kind)
        name = _name(f"{field}.name", layer["name"])
        if name in names:
            _fail(f"{field}.name", "a name no other layer has", name)
        names.add(name)
        if kind == "Dense":
            _tensor(tensors, f"head/{name}/kernel", (width, units))
            _tensor(tensors, f"head/{name}/bias", (units,))
            dense[name] = ((width, units), (units,))
            width = units
    if head[-1].get("class_name") != "Dense":
        _fail(f"head[{len(head) - 1}].class_name", "'Dense' (the output layer)",
              head[-1].get("class_name"))
    units = head[-1]["units"]

    # the optimizer and its state
    comp = c.get("compile")
    slots = 0
    if comp is not None:
        comp = _fields("compile", comp, ("optimizer", "loss", "metrics"), ("iterations",))
        opt = comp["optimizer"]
        if not isinstance(opt, dict):
            _fail("compile.optimizer", "an object", opt)
        kind = _choice("compile.optimizer.class_name", opt.get("class_name"),
                       tuple(_OPTIMIZER_FIELDS))
        _fields("compile.optimizer", opt, ("class_name",), _OPTIMIZER_FIELDS[kind])
        for k, v in opt.items():
            if k == "nesterov":
                if not isinstance(v, bool):
                    _fail("compile.optimizer.nesterov", "true or false", v)
            elif k == "learning_rate" and isinstance(v, dict):
                _schedule("compile.optimizer.learning_rate", v)
            elif k != "class_name":
                _number(f"compile.optimizer.{k}", v)
        from . import optim as _optim
        try:
            slots = _optim.get(opt).slots()  # its own range checks ("momentum: ...")
        except (ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"compile.optimizer.{e}") from None
        _choice("compile.loss", comp["loss"], tuple(LOSSES))
        # metrics by name; load_model rebuilds those it knows and warns about the rest
        metrics = comp["metrics"]
        if not isinstance(metrics, list) or len(metrics) > _MAX_METRICS or \
                any(not isinstance(m, str) or not 0 < len(m) <= _MAX_TEXT for m in metrics) or \
                len(set(metrics)) != len(metrics):
            _fail("compile.metrics", f"a list of at most {_MAX_METRICS} distinct metric names",
                  metrics)
        _int("compile.iterations", comp.get("iterations", 0), 0, _INT64)

    # the class labels: one per output unit at most (two for a 1-unit output)
    classes = c.get("classes")
    if classes is not None:
        most = min(max(units, 2), _MAX_CLASSES)
        if not isinstance(classes, list) or not 1 <= len(classes) <= most:
            _fail("classes", f"a list of 1 to {most} labels (the output has {units} units)",
                  classes)
        texts = all(isinstance(v, str) and len(v) <= _MAX_TEXT for v in classes)
        numbers = all((isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) and abs(v) < 2 ** 53) for v in classes)  # exact
        bools = all(isinstance(v, bool) for v in classes)
        if not (texts or numbers or bools):
            _fail("classes", f"labels of one kind: strings of at most {_MAX_TEXT} characters, "
                  f"numbers below 2**53 in magnitude, or booleans", classes)
        if len(set(classes)) != len(classes):
            _fail("classes", "distinct labels", classes)
    # display names of the classes, in the order of the output's units
    names = c.get("class_names")
    if names is not None:
        most = min(max(units, 2), _MAX_CLASSES)
        if not isinstance(names, list) or not 1 <= len(names) <= most or \
                not all(isinstance(v, str) and len(v) <= _MAX_TEXT for v in names) or \
                (classes is not None and len(names) != len(classes)):
            _fail("class_names", f"a list of 1 to {most} strings of at most {_MAX_TEXT} "
                  f"characters, one per class", names)

    # every tensor: one the configuration calls for, of the shape it implies
    expected = _vgg16._expected_shapes(1000, False)
    for key, a in tensors.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "base" and parts[1] in expected \
                and parts[2] in ("kernel", "bias"):
            continue  # checked below
        if len(parts) == 3 and parts[0] == "head" and parts[1] in dense \
                and parts[2] in ("kernel", "bias"):
            continue  # checked above
        if len(parts) == 3 and parts[0] == "optimizer" and parts[1] in dense \
                and parts[2] in ("0", "1", "2", "3"):
            s = int(parts[2])
            if comp is None:
                raise ValueError(f"tensor {key!r}: optimizer state, but compile is null")
            if s % 2 >= slots:
                raise ValueError(f"tensor {key!r}: {comp['optimizer']['class_name']} has no "
                                 f"such optimizer state")
            _tensor(tensors, key, dense[parts[1]][0 if s < 2 else 1])
            continue
        raise ValueError(f"tensor {key!r}: not part of this model")
    for layer, (kshape, bshape) in expected.items():
        _tensor(tensors, f"base/{layer}/kernel", kshape)
        _tensor(tensors, f"base/{layer}/bias", bshape)
    for key, a in tensors.items():
        if not np.isfinite(a).all():
            raise ValueError(f"tensor {key!r}: holds NaN or infinity")
