"""Loading: a file's format from its first bytes, the reader for it, the cache of
converted torchvision arrays, and what ``VGG16(weights=...)`` does with its
argument."""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
import zipfile
from typing import Mapping, Optional, Tuple

import numpy as np

from . import imagenet, torch_pth
from .._files import open_regular, special_file_kind
from ._common import WeightsDict, WeightsError
from .imagenet import find_imagenet_weights, vggtl_cache_dir
from .keras_h5 import _h5_kind, _read_keras_h5, _read_keras_zip
from .safetensors import _read_safetensors, save_weights
from .torch_pth import _TORCH_LEGACY_HEAD, _torch_to_keras

_CACHE_FORMAT = "1"  # bump when the converted-array cache's content changes

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"

PREPROCESS_BY_FORMAT = {
    "keras-h5": "caffe", "keras3-h5": "caffe", "keras-zip": "caffe",
    "torch-zip": "torch", "torch-legacy": "torch", "safetensors": None,
}


# -- format detection ------------------------------------------------------------------
def detect_format(path) -> str:
    """The kind of weights file at ``path``, from its first bytes.

    One of "keras-h5" (legacy Keras), "keras3-h5" (Keras 3 ``.weights.h5``),
    "keras-zip" (Keras 3 ``.keras``), "torch-zip", "torch-legacy", "safetensors".
    Raises FileNotFoundError or :class:`WeightsError`.
    """
    path = _check_file(path)
    with open_regular(path) as f:
        head = f.read(1 << 12)
        size = os.fstat(f.fileno()).st_size
    if not head:
        raise WeightsError(f"{path}: the file is empty")
    # HDF5's superblock sits at 0 or, after a user block, at 512, 1024, 2048, ...
    if head.startswith(_HDF5_MAGIC) or any(head[o:o + 8] == _HDF5_MAGIC for o in (512, 1024, 2048)):
        return _h5_kind(path)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except Exception as e:  # BadZipFile, OSError, EOFError, and for a damaged
            # central directory also UnicodeDecodeError, struct.error, ValueError
            raise WeightsError(f"{path}: a zip file that cannot be read (truncated or corrupt?): "
                               f"{type(e).__name__}: {e}") from None
        if "model.weights.h5" in names:
            return "keras-zip"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch-zip"
        raise WeightsError(f"{path}: a zip file that is neither a PyTorch checkpoint (no "
                           f"data.pkl) nor a Keras .keras file (no model.weights.h5)")
    if head.startswith(_TORCH_LEGACY_HEAD):
        return "torch-legacy"
    if len(head) >= 10 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= size - 8:
            return "safetensors"
        raise WeightsError(f"{path}: a safetensors header of {n} bytes in a file of {size} "
                           f"bytes (truncated or corrupt)")
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(f"{path}: a Git LFS pointer, not the weights themselves; fetch the "
                           f"file (git lfs pull) or download it again")
    if head[257:262] == b"ustar":
        raise WeightsError(f"{path}: a tar archive, PyTorch's format before 0.1.10 (2017); "
                           f"load it with torch and save its state_dict() again")
    raise WeightsError(f"{path}: not a weights file vggtl knows (it starts with "
                       f"{head[:16]!r}); expected Keras .h5, .weights.h5 or .keras, a "
                       f"torchvision .pth, or safetensors")


# -- the converted-array cache ------------------------------------------------------------
def _fingerprint(path: str, st: os.stat_result) -> str:
    """Identity of a file's content without reading all of it: size, mtime and a hash
    of its first and last MiB."""
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:24]


def _cache_paths(path: str, include_top: bool) -> Tuple[str, str]:
    """(cache file, its prefix shared by older versions of the same source)."""
    real = os.path.realpath(path)
    stem = hashlib.sha256(real.encode("utf8", "surrogateescape")).hexdigest()[:16]
    prefix = f"{stem}-{'top' if include_top else 'notop'}-v{_CACHE_FORMAT}-"
    key = _fingerprint(path, os.stat(path))
    return os.path.join(vggtl_cache_dir(), "converted", prefix + key + ".safetensors"), prefix


def _cache_load(path: str, include_top: bool) -> Optional[dict]:
    try:
        cpath, _ = _cache_paths(path, include_top)
        if not os.path.exists(cpath):
            return None
        out, _ = _read_safetensors(cpath, include_top)
        return out
    except (OSError, WeightsError, ImportError):
        return None  # a damaged or unreadable cache entry is just a miss


def _cache_store(path: str, include_top: bool, weights: dict, fmt: str) -> None:
    try:
        cpath, prefix = _cache_paths(path, include_top)
        d = os.path.dirname(cpath)
        os.makedirs(d, exist_ok=True)
        save_weights(weights, cpath, preprocess=PREPROCESS_BY_FORMAT[fmt],
                     metadata={"source": os.path.realpath(path), "source_format": fmt})
        for old in os.listdir(d):  # older conversions of the same file
            if old.startswith(prefix) and os.path.join(d, old) != cpath:
                os.unlink(os.path.join(d, old))
    except ImportError:
        pass
    except OSError as e:  # the cache is an optimisation: a read-only home must not break
        _warn_unwritable(os.path.join(vggtl_cache_dir(), "converted"), e)  # loading


_unwritable_warned: set = set()


def _warn_unwritable(folder: str, e: OSError) -> None:
    """Say once per folder that converted weights cannot be kept (read-only or full)."""
    if folder in _unwritable_warned:
        return
    _unwritable_warned.add(folder)
    warnings.warn(f"vggtl: the converted-weights cache in {folder} cannot be written "
                  f"({e.strerror or e}); the weights were loaded, but the next load "
                  f"converts them again", RuntimeWarning, stacklevel=4)


# -- loading ----------------------------------------------------------------------------
def _check_file(path) -> str:
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"weights: expected a path, got {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights: no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"weights: {path} is a folder, expected a weights file")
    special = special_file_kind(path)
    if special:
        raise WeightsError(f"weights: {path} is {special}, expected a weights file")
    return path


def load_weights(source="imagenet", include_top: bool = False, cache: bool = True) -> WeightsDict:
    """Read VGG16 weights into ``{keras_layer: (kernel, bias)}`` (float32, Keras layouts).

    ``source`` is "imagenet" (found or downloaded as the module docstring says) or
    a path to any supported file. With ``include_top=False`` only the 13 conv
    layers are read (also from a file with the top). The result's
    ``.preprocess`` is what the weights expect: "caffe" for Keras files, "torch"
    for torchvision's, a safetensors file's recorded mode, else None.
    ``cache=False`` skips the converted-array cache (torchvision files only).
    """
    if isinstance(source, str) and source == "imagenet":
        source = find_imagenet_weights(include_top) or imagenet._download_imagenet(include_top)
    path = _check_file(source)
    fmt = detect_format(path)
    pre = PREPROCESS_BY_FORMAT[fmt]
    include_top = bool(include_top)
    try:
        if fmt in ("keras-h5", "keras3-h5"):
            out = _read_keras_h5(path, include_top, fmt)
        elif fmt == "keras-zip":
            out = _read_keras_zip(path, include_top)
        elif fmt == "safetensors":
            out, pre = _read_safetensors(path, include_top)
        else:  # torch: conversion (transposes) is the cost, so keep what it produced
            out = _cache_load(path, include_top) if cache else None
            if out is None:
                sd, handle = (torch_pth._read_torch_zip if fmt == "torch-zip"
                                else torch_pth._read_torch_legacy)(path)
                try:
                    out = _torch_to_keras(sd, path, include_top)
                finally:
                    handle.close()
                _check_finite(out, path)
                if cache:
                    _cache_store(path, include_top, out, fmt)
                return WeightsDict(out, preprocess=pre, source=path, format=fmt)
    except WeightsError as e:
        # errors raised deep inside a reader (a tensor's checks, run by the
        # unpickler or at conversion) do not know the file: name it
        if path in str(e):
            raise
        raise type(e)(f"{path}: {e}") from None
    _check_finite(out, path)
    return WeightsDict(out, preprocess=pre, source=path, format=fmt)


def _check_finite(weights: dict, path: str) -> None:
    for name, (k, b) in weights.items():
        if not (np.isfinite(k).all() and np.isfinite(b).all()):
            raise WeightsError(f"{path}: layer '{name}' holds NaN or infinite values")


def resolve_weights(weights, include_top: bool = False) -> Tuple[Optional[dict], Optional[str]]:
    """What ``VGG16(weights=...)`` does with its argument: (dict or None, preprocess).

    None -> (None, None): random initialisation. A dict -> itself, and its
    ``.preprocess`` if it is a :class:`WeightsDict`. "imagenet" or a path ->
    :func:`load_weights`.
    """
    if weights is None:
        return None, None
    if isinstance(weights, Mapping):
        return weights, getattr(weights, "preprocess", None)
    if isinstance(weights, (str, bytes, os.PathLike)):
        if isinstance(weights, str) and weights != "imagenet" and not os.path.exists(
                os.path.expanduser(weights)):
            raise FileNotFoundError(f"weights: no such file: {weights!r} (expected 'imagenet', "
                                    f"None, a dict or the path of a weights file)")
        w = load_weights(weights, include_top=include_top)
        return w, w.preprocess
    raise TypeError(f"weights: expected 'imagenet', None, a dict {{layer: (kernel, bias)}} or a "
                    f"path, got {type(weights).__name__}")
