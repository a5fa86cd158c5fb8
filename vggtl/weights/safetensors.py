"""safetensors: vggtl's own weight files (``<layer>/kernel``, ``<layer>/bias`` in
Keras layouts, metadata ``preprocess``), read and written, and torchvision's
keys read."""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Tuple

import numpy as np

from .._atomic import atomic_path
from ._common import WeightsError
from .keras_h5 import _from_keras_layers
from .torch_pth import _torch_to_keras

def _import_safetensors():
    try:
        from safetensors import safe_open
        import safetensors.numpy as stnp
    except ImportError:
        raise ImportError("reading and writing vggtl's weight files needs safetensors: "
                          "pip install safetensors") from None
    return safe_open, stnp


def _read_safetensors(path: str, include_top: bool) -> Tuple[dict, Optional[str]]:
    safe_open, _ = _import_safetensors()
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())

            class _Lazy:  # a tensor read from f only when needed
                __slots__ = ("key", "shape")

                def __init__(self, key):
                    self.key, self.shape = key, tuple(f.get_slice(key).get_shape())

                def __getitem__(self, _):
                    return f.get_tensor(self.key)

                def numpy(self):
                    return f.get_tensor(self.key)

            if any(k.startswith("features.") for k in keys):
                out = _torch_to_keras({k: _Lazy(k) for k in keys}, path, include_top)
            else:
                layers, seen = [], {}
                for k in keys:
                    layer, _, what = k.rpartition("/")
                    if what in ("kernel", "bias") and layer:
                        seen.setdefault(layer, {})[what] = _Lazy(k)
                if not seen:
                    shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
                    raise WeightsError(f"{path}: a safetensors file without VGG16 weights "
                                       f"(no '<layer>/kernel' or 'features.N.weight' keys; "
                                       f"it has {shown})")
                for layer, d in seen.items():
                    layers.append((layer, [d[w] for w in ("kernel", "bias") if w in d]))
                out = _from_keras_layers(layers, path, include_top)
    except WeightsError:
        raise
    except Exception as e:  # SafetensorError, OSError: a damaged file
        raise WeightsError(f"{path}: cannot read the safetensors file (truncated or corrupt?): "
                           f"{e}") from None
    pre = meta.get("preprocess")
    pre = None if pre in (None, "", "none", "None") else pre
    if pre not in (None, "caffe", "torch", "scale"):
        pre = None
    return out, pre


def save_weights(weights, path, preprocess: Optional[str] = None,
                 metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``{layer: (kernel, bias)}`` (Keras layouts) as safetensors, atomically.

    ``weights`` may also be a :class:`vggtl.VGG16`. ``preprocess`` is recorded so
    that loading the file picks the same preprocessing; ``metadata`` adds strings.
    The file appears whole or not at all (temporary name, fsync, rename).
    """
    if hasattr(weights, "get_weights") and not isinstance(weights, Mapping):
        if preprocess is None:
            preprocess = getattr(weights, "preprocess", None)
        weights = weights.get_weights()
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights: expected a dict {{layer: (kernel, bias)}} or a VGG16, got "
                        f"{type(weights).__name__}")
    _, stnp = _import_safetensors()
    tensors = {}
    for layer, pair in weights.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"weights['{layer}']: expected a (kernel, bias) pair")
        tensors[f"{layer}/kernel"] = np.ascontiguousarray(pair[0], dtype=np.float32)
        tensors[f"{layer}/bias"] = np.ascontiguousarray(pair[1], dtype=np.float32)
    meta = {"format": "vggtl", "layout": "keras", "model": "vgg16",
            "preprocess": "none" if preprocess is None else str(preprocess)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        try:
            stnp.save_file(tensors, tmp, metadata=meta)
        except Exception as e:
            # safetensors reports a failed write (disk full, file too large) as a
            # SafetensorError whose text ends in Rust's "(os error N)": give it back
            # as the OSError it is, which atomic_path names the file in
            err = re.search(r"\(os error (\d+)\)", str(e))
            if err is None:
                raise
            code = int(err.group(1))
            raise OSError(code, os.strerror(code)) from None
