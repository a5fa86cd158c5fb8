"""TransferModel's files: ``save`` (safetensors weights, the configuration as
JSON metadata, written atomically), :func:`load_model`, ``export`` (ONNX) and the
configuration itself (``get_config``). Mixed into
:class:`vggtl.model.TransferModel` as :class:`ModelIO`."""
from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from . import metrics as _metrics
from . import optim as _optim
from ._atomic import atomic_write_bytes
from .layers import from_config
from .training import _locked
from .vgg16 import VGG16

if TYPE_CHECKING:
    from .model import TransferModel

# 2: the base may have precision "bf16". A model is written with the lowest
# version that holds it (fp32 models stay 1), so that an older vggtl refuses a
# bf16 model instead of running it in float32, and still reads the others.
FORMAT_VERSION = 2


class ModelIO:
    """``get_config``, ``save`` and ``export`` of :class:`TransferModel`."""

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
