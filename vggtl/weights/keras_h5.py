"""Keras weight files: legacy ``.h5`` (Keras 2 / tf-keras ``save_weights`` and
``save``), Keras 3 ``.weights.h5``, and ``.keras`` (a zip holding one).

libhdf5 runs in a process of its own (:mod:`vggtl.weights._h5_sandbox`): a damaged
file that sends it into an endless loop or a crash costs a :class:`WeightsError`.
There, only data kept inside the file are read: HDF5 soft, external and
user-defined links, external storage, virtual datasets and filters that libhdf5
would load as plugins are refused from the file's metadata, before anything
behind them is opened (:func:`vggtl.weights._h5_worker._h5_get`). Here, the
file's layers are matched to VGG16's and their shapes checked before any of
their data is asked for."""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import zipfile
from typing import List, Tuple

import numpy as np

from ._common import CONV_LAYERS, DENSE_LAYERS, WeightsError, _expected
from ._h5_sandbox import H5File, Remote
from ._zip import _zip_check
from .imagenet import KERAS_TOP


def _require_h5py() -> None:
    """h5py is a dependency; say how to get it back when it is missing (the worker
    imports it: this process never does)."""
    try:
        found = sys.modules.get("h5py", 0) is not None and \
            importlib.util.find_spec("h5py") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError("reading Keras .h5 weight files needs h5py (a dependency of vggtl, "
                          "missing from this environment): pip install h5py")


def _h5_kind(path: str) -> str:
    _require_h5py()
    with H5File(path) as f:
        return f.kind()


# -- Keras layers -> vggtl dict ---------------------------------------------------------
_VGG_LIKE = re.compile(r"^block\d+_(conv|pool)\d*$")


def _from_keras_layers(layers: List[Tuple[str, list]], path: str, include_top: bool) -> dict:
    """Match a file's weighted layers to VGG16's, by name when the file uses Keras's
    VGG16 names, else by order (as Keras's own legacy loader does); read only the
    layers needed and check every shape."""
    wanted = CONV_LAYERS + (DENSE_LAYERS if include_top else ())
    names = [n for n, _ in layers]
    known = set(CONV_LAYERS) | set(DENSE_LAYERS)
    if set(names) & known:
        stray = [n for n in names if _VGG_LIKE.match(n) and n not in known]
        if stray:
            raise WeightsError(f"{path}: not VGG16 weights: it has layers VGG16 does not "
                               f"({', '.join(stray[:4])}); a VGG19 file?")
        by_name = dict(layers)
    else:
        n = len(layers)
        if n not in (len(CONV_LAYERS), len(CONV_LAYERS) + len(DENSE_LAYERS)):
            shown = ", ".join(names[:5]) + (", ..." if n > 5 else "")
            raise WeightsError(f"{path}: not VGG16 weights: it has {n} layers with weights "
                               f"({shown}); VGG16 has 13 conv layers, and 3 dense ones "
                               f"with the top")
        by_name = dict(zip(CONV_LAYERS + DENSE_LAYERS, (ds for _, ds in layers)))
    if include_top and not all(d in by_name for d in DENSE_LAYERS):
        raise WeightsError(f"{path}: include_top=True needs the top (fc1, fc2, predictions), "
                           f"but this file has only the convolutional base (a notop file); "
                           f"use include_top=False, or the file with the top ({KERAS_TOP})")
    missing = [n for n in wanted if n not in by_name]
    if missing:
        k, b = _expected(missing[0], 1000)
        also = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise WeightsError(f"{path}: layer '{missing[0]}' is missing{also} (expected kernel "
                           f"{k} and bias {b})")
    out = {}
    for name in wanted:
        ds = by_name[name]
        if len(ds) != 2:
            raise WeightsError(f"{path}: layer '{name}' has {len(ds)} weights, expected 2 "
                               f"(kernel, bias)")
        classes = ds[1].shape[0] if name == "predictions" and len(ds[1].shape) == 1 else None
        for what, d, shape in zip(("kernel", "bias"), ds, _expected(name, classes)):
            if tuple(d.shape) != shape:
                raise WeightsError(f"{path}: layer '{name}' {what} has shape {tuple(d.shape)}, "
                                   f"expected {shape}")
        out[name] = (_read_float(ds[0], path, name), _read_float(ds[1], path, name))
    return out


def _read_float(ds, path, name) -> np.ndarray:
    """A dataset of the HDF5 worker, or anything ``ds[()]`` reads (a safetensors
    file's tensors), as float32."""
    if isinstance(ds, Remote):
        if ds.kind not in "fiu":
            raise WeightsError(f"{path}: layer '{name}' holds non-numeric data, expected "
                               f"float32")
        return ds.read(f"layer '{name}'")
    a = ds[()]
    if a.dtype.kind not in "fiu":
        raise WeightsError(f"{path}: layer '{name}' holds {a.dtype}, expected float32")
    return np.ascontiguousarray(a, dtype=np.float32)


def _read_keras_h5(path: str, include_top: bool, kind: str) -> dict:
    _require_h5py()
    with H5File(path) as f:
        return _from_keras_layers(f.layers(kind), path, include_top)


# a .keras file's model.weights.h5: VGG16 with its top, a head and Adam's two
# moments per weight stay under 3 GB
_KERAS_WEIGHTS_MAX = 4 << 30
_KERAS_WEIGHTS = "model.weights.h5"


def _read_keras_zip(path: str, include_top: bool) -> dict:
    _require_h5py()
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(_KERAS_WEIGHTS)
            _zip_check(info, path, _KERAS_WEIGHTS, os.path.getsize(path), _KERAS_WEIGHTS_MAX)
    except WeightsError:
        raise
    except Exception as e:  # zipfile's many errors on damaged data
        raise WeightsError(f"{path}: cannot read the .keras file (truncated or corrupt?): "
                           f"{type(e).__name__}: {e}") from None
    # the worker decompresses it, within a memory limit set from the zip's size: a
    # few megabytes of deflate may claim gigabytes this process would hold
    with H5File(path, member=_KERAS_WEIGHTS, member_size=info.file_size) as f:
        return _from_keras_layers(f.layers("keras3-h5"), path, include_top)
