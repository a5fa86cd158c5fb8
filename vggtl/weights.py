"""VGG16 weight files: find them, read them safely, convert them, cache them, write them.

    w = vggtl.load_weights("vgg16-397923af.pth")       # {keras_layer: (kernel, bias)}
    w.preprocess                                      # "torch": what these weights expect
    base = vggtl.VGG16(weights="imagenet")            # searches, downloads if needed
    base.save_weights("mine.safetensors")             # vggtl's own format

Formats, recognised by their first bytes, never by their file name, and the
preprocessing each implies (``WeightsDict.preprocess``, used by
``VGG16(preprocess="auto")``):

- Keras legacy ``.h5``, as in ``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``:
  root attribute ``layer_names``, a group per layer with attribute
  ``weight_names`` (``block1_conv1_W_1:0``, ``block1_conv1_b_1:0``), kernels HWIO
  (3, 3, in, out), dense (in, out). Also Keras 2 ``save_weights``/``save`` files
  (``model_weights`` group, ``<layer>/kernel:0`` names). -> "caffe"
- Keras 3 ``.weights.h5`` (``layers/<class>[_N]/vars/{0,1}``, matched by order as
  Keras does: the variable-length ``name`` attributes are never read, see
  ``_h5_attr``) and ``.keras`` (a zip holding one). -> "caffe"
- torchvision ``.pth`` in the zip format (``<dir>/data.pkl``, ``<dir>/data/<key>``)
  and in the legacy stream format of the 2017 ``vgg16-397923af.pth`` (five
  pickles, then raw storages). -> "torch"
- safetensors: vggtl's own (``<layer>/kernel``, ``<layer>/bias`` in Keras
  layouts, metadata ``preprocess``), or torchvision's keys. -> the recorded mode,
  else None.

Layers are matched by Keras's names when a file uses them (a VGG19 file is told
apart by its extra layers), else by order, as Keras's own loader does. Only the
layers asked for are read: ``include_top=False`` skips the 490 MB of the top.

torchvision tensors are converted to Keras's layouts: conv OIHW -> HWIO
(``transpose(2, 3, 1, 0)``), ``classifier.0.weight`` (4096, 25088) flattened in
C, H, W order -> (25088, 4096) in H, W, C order (what vggtl's Flatten produces),
other dense weights (out, in) -> (in, out).

``.pth`` files are pickles. They are read without importing torch, by an
unpickler that knows only the globals a tensor state dict needs
(:data:`ALLOWED_GLOBALS`) and refuses any other, naming it, before anything runs.

Only data kept inside the file are read. HDF5 soft, external and user-defined
links, external storage, virtual datasets and filters that libhdf5 would load as
plugins are refused from the file's metadata, before anything behind them is
opened (:func:`_h5_get`). Zip members (``.pth``, ``.keras``) must be stored or
deflated, with sizes deflate can produce and no larger than the reader expects
(:func:`_zip_check`), and are never read past their declared size; a storage is
read a bounded chunk at a time, and only as far as its tensor needs.

``weights="imagenet"`` looks, in this order, for the files in :data:`IMAGENET_FILES`:

1. ``$VGGTL_WEIGHTS``: a weights file, or a folder holding one of those files;
2. Keras's cache: ``$KERAS_HOME/models``, else ``~/.keras/models``;
3. PyTorch's cache: ``$TORCH_HOME/hub/checkpoints``, else
   ``$XDG_CACHE_HOME/torch/hub/checkpoints``, else ``~/.cache/torch/hub/checkpoints``;
4. vggtl's cache: ``$XDG_CACHE_HOME/vggtl``, else ``~/.cache/vggtl``;

and when none is there downloads the Keras file into vggtl's cache (md5 checked,
written to a temporary name, fsynced and renamed). A torchvision file needs
conversion; the converted arrays are kept in ``<vggtl cache>/converted/`` as
safetensors, keyed by the source's path, size, mtime and a hash of its first and
last MiB, so the second load reads them as they are.
"""
from __future__ import annotations

import collections
import hashlib
import http.client
import os
import pickle
import re
import struct
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from . import _core
from . import data as _data
from ._atomic import atomic_open, atomic_path

__all__ = [
    "load_weights", "save_weights", "resolve_weights", "find_imagenet_weights",
    "imagenet_search_dirs", "detect_format", "WeightsDict", "WeightsError",
    "UnsafePickleError", "WeightsNotFoundError", "ALLOWED_GLOBALS", "IMAGENET_FILES",
]

# -- the network these files describe (VGG16 configuration D, Keras's names) ----------
# (name, Cin, Cout) of each conv, from the core's layer table
CONV_SPEC: Tuple[Tuple[str, int, int], ...] = tuple(
    (n, cin, cout) for n, kind, cin, cout, _ in _core.VGG16_LAYERS if kind == "conv")
CONV_LAYERS = tuple(n for n, _, _ in CONV_SPEC)
DENSE_LAYERS = tuple(n for n, kind, *_ in _core.VGG16_LAYERS if kind == "dense")
# torchvision's module indices of the same layers
TORCH_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCH_DENSE_INDEX = (0, 3, 6)
_FLAT_HWC = (7, 7, 512)  # block5_pool at 224 x 224: what fc1 reads


def _expected(name: str, classes: Optional[int] = None) -> Tuple[tuple, tuple]:
    """(kernel shape, bias shape) of a layer in Keras layout; predictions: any classes."""
    for n, cin, cout in CONV_SPEC:
        if n == name:
            return (3, 3, cin, cout), (cout,)
    if name == "fc1":
        return (int(np.prod(_FLAT_HWC)), 4096), (4096,)
    if name == "fc2":
        return (4096, 4096), (4096,)
    return (4096, classes), (classes,)


# -- files -----------------------------------------------------------------------------
KERAS_NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_TOP = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
TORCH_FILE = "vgg16-397923af.pth"
_KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
# file name -> (url, md5) for the files vggtl downloads (keras/src/applications/vgg16.py)
DOWNLOADS = {
    KERAS_NOTOP: (_KERAS_BASE_URL + KERAS_NOTOP, "6d6bbae143d832006294945121d1f1fc"),
    KERAS_TOP: (_KERAS_BASE_URL + KERAS_TOP, "64373286793e3c8b2b4e3219cbf3544b"),
}
# what weights="imagenet" accepts, best first, for include_top False / True
IMAGENET_FILES = {
    False: (KERAS_NOTOP, KERAS_TOP, TORCH_FILE),
    True: (KERAS_TOP, TORCH_FILE),
}
_CACHE_FORMAT = "1"  # bump when the converted-array cache's content changes

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_TORCH_LEGACY_HEAD = pickle.dumps(_TORCH_LEGACY_MAGIC, protocol=2)  # the first of 5 pickles

PREPROCESS_BY_FORMAT = {
    "keras-h5": "caffe", "keras3-h5": "caffe", "keras-zip": "caffe",
    "torch-zip": "torch", "torch-legacy": "torch", "safetensors": None,
}


# -- errors ----------------------------------------------------------------------------
class WeightsError(ValueError):
    """A weights file that vggtl cannot use: corrupt, truncated, another model, ..."""


class UnsafePickleError(WeightsError, _data.UnsafePickleError):
    """A .pth pickle asked for a global outside :data:`ALLOWED_GLOBALS`; nothing ran.
    Also a :class:`vggtl.data.UnsafePickleError`, so one ``except`` catches a refused
    pickle from either reader."""


class WeightsNotFoundError(FileNotFoundError):
    """``weights="imagenet"``: no file found and none could be downloaded."""


class WeightsDict(dict):
    """``{keras_layer: (kernel, bias)}`` plus where it came from.

    ``preprocess`` is the input preprocessing these weights were trained with
    ("caffe", "torch", or None when unknown); ``source`` the file; ``format`` its
    kind (see :func:`detect_format`).
    """

    def __init__(self, *args, preprocess=None, source=None, format=None, **kw):
        super().__init__(*args, **kw)
        self.preprocess = preprocess
        self.source = source
        self.format = format


# -- format detection ------------------------------------------------------------------
def detect_format(path) -> str:
    """The kind of weights file at ``path``, from its first bytes.

    One of "keras-h5" (legacy Keras), "keras3-h5" (Keras 3 ``.weights.h5``),
    "keras-zip" (Keras 3 ``.keras``), "torch-zip", "torch-legacy", "safetensors".
    Raises FileNotFoundError or :class:`WeightsError`.
    """
    path = _check_file(path)
    with open(path, "rb") as f:
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


def _h5_kind(path: str) -> str:
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as f:
            g = _h5_model_weights(f)
            if _h5_attr_list(g, "layer_names") or "layer_names" in g.attrs:
                return "keras-h5"
            if f.id.links.exists(b"layers") or f.id.links.exists(b"vars"):
                return "keras3-h5"
    except WeightsError:
        raise
    except Exception as e:  # h5py: OSError, and RuntimeError, KeyError, ValueError for
        # damaged metadata ("bad heap free list")
        raise WeightsError(f"{path}: an HDF5 file that cannot be read (truncated or "
                           f"corrupt?): {type(e).__name__}: {e}") from None
    raise WeightsError(f"{path}: an HDF5 file with neither Keras's legacy layout (root "
                       f"attribute layer_names) nor Keras 3's (group 'layers')")


# -- Keras .h5 ---------------------------------------------------------------------------
def _import_h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras .h5 weight files needs h5py (a dependency of vggtl, "
                          "missing from this environment): pip install h5py") from None
    return h5py


# HDF5's own filters (deflate, shuffle, fletcher32, nbit, scaleoffset) and h5py's
# lzf: any other id makes libhdf5 look for a plugin library to load (szip too, in
# a libhdf5 built without it)
_H5_FILTERS = {1, 2, 3, 5, 6, 32000}


def _h5_get(group, name: str, where: str):
    """``group[name]`` reached through hard links only, or None when a component
    is missing. A soft or external link anywhere on the way is refused before it
    is followed: an external link opens another file (any local file, or a FIFO
    that blocks the open for ever), and a soft link may lead to one. A dataset is
    checked by :func:`_h5_check_dataset` before it is handed out. ``where`` names
    ``name`` in messages."""
    h5py = _import_h5py()
    obj = group.file if name.startswith("/") else group
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if not isinstance(obj, h5py.Group):
            return None
        key = part.encode("utf8")
        if not obj.id.links.exists(key):  # the link itself, not its target
            return None
        info = obj.id.links.get_info(key)
        if info.type != h5py.h5l.TYPE_HARD:
            _h5_refuse_link(obj, key, info.type, where)
        obj = obj[key]
    if isinstance(obj, h5py.Dataset):
        _h5_check_dataset(obj, where)
    return obj


def _h5_refuse_link(group, key: bytes, kind: int, where: str):
    h5py = _import_h5py()

    def text(b):
        return repr(b.decode(errors="replace") if isinstance(b, bytes) else b)

    try:
        target = group.id.links.get_val(key)  # the link's text; nothing is followed
    except Exception:  # a damaged link: its kind is enough to refuse it
        target = None
    if kind == h5py.h5l.TYPE_EXTERNAL:
        what = "an external link"
        if isinstance(target, tuple) and len(target) == 2:
            what += f" to {text(target[1])} in the file {text(target[0])}"
    elif kind == h5py.h5l.TYPE_SOFT:
        what = "a soft link" + (f" to {text(target)}" if target is not None else "")
    else:
        what = f"a link of user-defined type {kind}"
    raise WeightsError(f"'{where}' is {what}; vggtl reads only data kept inside the file "
                       f"itself (Keras writes no links): refused, nothing was opened")


def _h5_check_dataset(ds, where: str) -> None:
    """Refuse a dataset whose data do not lie inside the file itself (external
    storage, a virtual dataset), that needs a filter libhdf5 would load as a
    plugin, or that holds anything but integers or floats. Looks only at the
    dataset's header: asking a virtual dataset its shape may already open its
    source files."""
    h5py = _import_h5py()
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        n = dcpl.get_virtual_count()
        src = ", ".join(repr(dcpl.get_virtual_filename(i)) for i in range(min(n, 3)))
        raise WeightsError(f"dataset '{where}' is a virtual dataset whose data come from "
                           f"{src or 'other datasets'}; vggtl reads only data kept inside the "
                           f"file itself (Keras writes no virtual datasets): refused, "
                           f"nothing was opened")
    if dcpl.get_external_count():
        name = dcpl.get_external(0)[0].decode(errors="replace")
        raise WeightsError(f"dataset '{where}' keeps its data in the external file "
                           f"{name!r}; vggtl reads only data kept inside the file itself "
                           f"(Keras writes no external storage): refused, nothing was opened")
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise WeightsError(f"dataset '{where}' has an unknown storage layout ({layout})")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in _H5_FILTERS:
            raise WeightsError(f"dataset '{where}' is stored with filter {code}, which is "
                               f"not one of HDF5's own (libhdf5 would load a plugin "
                               f"library for it): refused")
    t = ds.id.get_type()
    if not isinstance(t, (h5py.h5t.TypeIntegerID, h5py.h5t.TypeFloatID)):
        raise WeightsError(f"dataset '{where}' holds {type(t).__name__[4:-2].lower() or 'data'} "
                           f"values, expected float32")


def _h5_model_weights(f):
    """Keras 2 ``save``'s ``model_weights`` group, else the root (``save_weights``)."""
    h5py = _import_h5py()
    g = _h5_get(f, "model_weights", "model_weights")
    return g if isinstance(g, h5py.Group) else f


def _h5_attr(attrs, name, default=None):
    """``attrs[name]`` when it holds fixed-size data (numbers, fixed-length strings),
    else ``default``: a missing attribute, and one of variable-length data.

    Variable-length strings and sequences live in HDF5's global heap, which
    libhdf5 reads without checking it: a damaged heap behind an attribute made it
    loop forever or segfault (found by fuzz/fuzz_h5.py; libhdf5 2.0). Such an
    attribute is never read. The type is in the object header (checked), so looking
    at it is safe."""
    h5py = _import_h5py()
    if name not in attrs:
        return default
    t = attrs.get_id(name).get_type()
    if isinstance(t, h5py.h5t.TypeStringID):
        if t.is_variable_str():
            return default
    elif not isinstance(t, (h5py.h5t.TypeIntegerID, h5py.h5t.TypeFloatID)):
        return default  # vlen, compound, array, reference, ...: nothing vggtl reads
    return attrs[name]


def _h5_attr_list(group, name) -> List[str]:
    """A list attribute, possibly chunked as name0, name1, ... (Keras's workaround for
    HDF5's 64 KiB header limit), decoded to str. Keras writes these as fixed-length
    strings; a variable-length one is not read (see :func:`_h5_attr`)."""
    v = _h5_attr(group.attrs, name)
    if v is not None:
        raw = list(np.atleast_1d(v))
    else:
        raw, i = [], 0
        while True:
            part = _h5_attr(group.attrs, f"{name}{i}")
            if part is None:
                break
            raw.extend(np.atleast_1d(part))
            i += 1
    return [v.decode("utf8") if isinstance(v, (bytes, np.bytes_)) else str(v) for v in raw]


def _keras_legacy_layers(f, path: str) -> List[Tuple[str, list]]:
    """[(layer name, [datasets])] of the layers with weights, in the file's order."""
    h5py = _import_h5py()
    g = _h5_model_weights(f)
    out = []
    names = _h5_attr_list(g, "layer_names")
    if not names and "layer_names" in g.attrs:
        return _keras_legacy_layers_by_links(g, path)
    for name in names:
        lg = _h5_get(g, name, name)
        if not isinstance(lg, h5py.Group):
            raise WeightsError(f"{path}: layer '{name}' is listed in layer_names but has no "
                               f"group (corrupt file)")
        wnames = _h5_attr_list(lg, "weight_names")
        if wnames:
            ds = [_h5_get(lg, w, f"{name}/{w}") for w in wnames]
            for w, d in zip(wnames, ds):
                if not isinstance(d, h5py.Dataset):
                    raise WeightsError(f"{path}: layer '{name}': the dataset '{w}' listed in "
                                       f"weight_names is missing")
            out.append((name, ds))
    return out


def _keras_legacy_layers_by_links(g, path: str) -> List[Tuple[str, list]]:
    """The legacy layout whose name lists are variable-length strings (tf-keras 2.16
    and later write them so), which vggtl does not read (:func:`_h5_attr`): the
    layers are the groups under ``g`` that hold datasets (``name/name/kernel:0``,
    ``bias:0``), found by their links alone, hard links only, ordered as Keras
    numbers layers; each layer's kernel first, then its bias."""
    h5py = _import_h5py()
    out = []
    for name in sorted(g.keys(), key=_natural_key):  # link names; no link is followed
        _h5_hard_link(g, name, name)
        lg = _h5_get(g, name, name)
        if not isinstance(lg, h5py.Group):
            continue
        found = []

        def visit(sub, obj, lg=lg, name=name):
            if isinstance(obj, h5py.Group):
                for key in obj.keys():
                    _h5_hard_link(obj, key, f"{name}/{sub}/{key}")
            elif isinstance(obj, h5py.Dataset):
                found.append((sub, _h5_get(lg, sub, f"{name}/{sub}")))

        visit("", lg)
        lg.visititems(visit)
        if not found:
            continue
        base = [sub.rsplit("/", 1)[-1].split(":")[0] for sub, _ in found]
        if sorted(base) not in (["kernel"], ["bias", "kernel"]):
            raise WeightsError(f"{path}: layer '{name}' holds {sorted(base)}; expected a "
                               f"kernel and a bias (Keras's names)")
        found.sort(key=lambda t: not t[0].rsplit("/", 1)[-1].startswith("kernel"))
        out.append((name, [d for _, d in found]))
    return out


def _h5_hard_link(group, key: str, where: str) -> None:
    """Refuse ``key`` in ``group`` unless it is a hard link (nothing is followed)."""
    h5py = _import_h5py()
    info = group.id.links.get_info(key.encode("utf8"))
    if info.type != h5py.h5l.TYPE_HARD:
        _h5_refuse_link(group, key.encode("utf8"), info.type, where)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _keras3_layers(f) -> List[Tuple[str, list]]:
    """Layers with weights of a Keras 3 ``.weights.h5``: each ``vars`` group holding
    datasets "0", "1", ... Named by the group's ``name`` attribute when it is a
    fixed-length string, else by its path (Keras 3 writes a variable-length one,
    which is not read: :func:`_h5_attr`); ordered as Keras created them."""
    h5py = _import_h5py()
    found = []

    def check_links(group, path):
        # visititems follows hard links only: any other link is refused here,
        # naming it (Keras writes none), before anything reads through it
        for key in group.keys():  # link names; no link is followed
            if not path and key.startswith("optimizer"):
                continue
            info = group.id.links.get_info(key.encode("utf8"))
            if info.type != h5py.h5l.TYPE_HARD:
                _h5_refuse_link(group, key.encode("utf8"), info.type, path + key)

    def visit(path, obj):
        if path.startswith("optimizer"):
            return
        if isinstance(obj, h5py.Group):
            check_links(obj, path + "/")
        if path.endswith("vars") and hasattr(obj, "keys") and len(obj.keys()):
            keys = sorted(obj.keys(), key=_natural_key)
            if keys == [str(i) for i in range(len(keys))]:
                # Keras 3 writes the layer's name as a variable-length string, which
                # is not read (_h5_attr): such layers are matched by order, as
                # Keras's own loader does
                name = _h5_attr(obj.attrs, "name")
                if isinstance(name, (bytes, np.bytes_)):
                    name = name.decode("utf8")
                owner = path[: -len("/vars")] if path.endswith("/vars") else path
                found.append((str(name) if name else owner, owner,
                              [_h5_get(obj, k, f"{path}/{k}") for k in keys]))

    check_links(f, "")
    f.visititems(visit)
    # h5py lists conv2d_10 before conv2d_2; Keras numbered them in creation order
    found.sort(key=lambda t: _natural_key(t[1]))
    return [(name, ds) for name, _, ds in found]


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
    try:
        a = ds[()] if not isinstance(ds, np.ndarray) else ds
    except OSError as e:  # h5py: a truncated or damaged chunk
        raise WeightsError(f"{path}: layer '{name}' cannot be read (truncated or corrupt?): "
                           f"{e}") from None
    if a.dtype.kind not in "fiu":
        raise WeightsError(f"{path}: layer '{name}' holds {a.dtype}, expected float32")
    return np.ascontiguousarray(a, dtype=np.float32)


def _read_keras_h5(path: str, include_top: bool, kind: str) -> dict:
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as f:
            layers = _keras_legacy_layers(f, path) if kind == "keras-h5" else _keras3_layers(f)
            return _from_keras_layers(layers, path, include_top)
    except WeightsError:
        raise
    except Exception as e:  # h5py raises OSError, RuntimeError, KeyError, ValueError, ...
        raise WeightsError(f"{path}: cannot read the HDF5 file (truncated or corrupt?): "
                           f"{type(e).__name__}: {e}") from None


# -- zip members (.keras, torch.save's zip format) ---------------------------------------
# zlib's bound on what deflate can produce: a 258-byte match per two bits, plus the
# odd literal and block header
_DEFLATE_MAX_RATIO = 1032
_ZIP_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}
_ZIP_CHUNK = 1 << 22  # what one read of a member may decompress
_PICKLE_MEMBER_MAX = 64 << 20  # a state dict's data.pkl: a few kB; its tensors are apart
_BYTEORDER_MAX = 16  # "little" or "big"
# a .keras file's model.weights.h5: VGG16 with its top, a head and Adam's two
# moments per weight stay under 3 GB
_KERAS_WEIGHTS_MAX = 4 << 30


def _zip_check(info: zipfile.ZipInfo, path: str, what: str, archive_size: int,
               limit: Optional[int] = None) -> None:
    """Refuse a zip member whose declared size cannot be trusted before anything of
    it is read: methods other than stored and deflate (neither PyTorch nor Keras
    writes them, and zipfile decompresses a bzip2 or LZMA member's whole input in
    one call, however large its output), a stored member whose sizes differ or that
    reaches past the archive, a deflated one claiming more than deflate can
    produce from its compressed bytes, and one larger than ``limit``."""
    method = info.compress_type
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        name = _ZIP_METHODS.get(method, f"compression method {method}")
        raise WeightsError(f"{path}: {what} is compressed with {name}, which neither PyTorch "
                           f"nor Keras writes; refused (vggtl reads stored and deflated zip "
                           f"members only)")
    if info.flag_bits & 0x1:
        raise WeightsError(f"{path}: {what} is encrypted; refused")
    if method == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise WeightsError(f"{path}: {what} is stored with {info.compress_size} bytes for "
                           f"{info.file_size} (corrupt file)")
    if method == zipfile.ZIP_DEFLATED and \
            info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
        raise WeightsError(f"{path}: {what} claims {info.file_size} bytes from "
                           f"{info.compress_size} deflated bytes, more than deflate can "
                           f"produce (a decompression bomb?); refused")
    if info.header_offset + info.compress_size > archive_size:
        raise WeightsError(f"{path}: {what} reaches past the end of the file (truncated "
                           f"or corrupt file)")
    if limit is not None and info.file_size > limit:
        raise WeightsError(f"{path}: {what} holds {info.file_size} bytes, expected at most "
                           f"{limit}; refused")


def _zip_read_into(f, buf: memoryview) -> int:
    """Fill ``buf`` from the open member ``f`` a bounded chunk at a time (a read of
    n bytes decompresses at most about n); returns the bytes read."""
    pos, n = 0, buf.nbytes
    while pos < n:
        chunk = f.read(min(n - pos, _ZIP_CHUNK))
        if not chunk:
            break
        buf[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    return pos


def _read_keras_zip(path: str, include_top: bool) -> dict:
    import io
    h5py = _import_h5py()
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("model.weights.h5")
            _zip_check(info, path, "model.weights.h5", os.path.getsize(path),
                       _KERAS_WEIGHTS_MAX)
            with z.open(info) as m:
                data = m.read(info.file_size)  # decompresses at most the declared size
        if len(data) != info.file_size:
            raise WeightsError(f"{path}: model.weights.h5 is cut short (truncated file)")
        with h5py.File(io.BytesIO(data), "r") as f:
            return _from_keras_layers(_keras3_layers(f), path, include_top)
    except WeightsError:
        raise
    except Exception as e:  # zipfile's and h5py's many errors on damaged data
        raise WeightsError(f"{path}: cannot read the .keras file (truncated or corrupt?): "
                           f"{type(e).__name__}: {e}") from None


# -- torch .pth without torch ------------------------------------------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}


class _Frozen:
    """Stand-ins a pickle may create but never modify: BUILD (``__setstate__``) on
    them is refused, so a crafted pickle cannot, say, give a tensor a negative
    stride after it was checked."""
    __slots__ = ()

    def __setstate__(self, state):
        raise WeightsError(f"the pickle tries to set the state of a {type(self).__name__[1:]}; "
                           f"refused (corrupt or crafted file)")


class _StorageType(_Frozen):
    """Stands in for ``torch.FloatStorage`` and friends inside the unpickler."""
    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_Frozen):
    """A storage of ``numel`` elements whose bytes are read only when a tensor needs
    them, and only as far as it needs them: ``reader(storage, n)`` reads the first
    ``n`` elements. A tensor's extent is checked against VGG16's shapes before it is
    read, so no storage size claimed by a file is ever allocated on trust."""
    __slots__ = ("key", "stype", "numel", "root", "offset", "_reader", "_array")

    def __init__(self, key, stype, numel, reader, root=None, offset=0):
        self.key, self.stype, self.numel = key, stype, numel
        self.root, self.offset, self._reader, self._array = root, offset, reader, None

    def array(self, need: int) -> np.ndarray:
        """At least the first ``need`` (<= numel) elements."""
        if self._array is None or self._array.size < need:
            if self.root is not None:  # a view of another storage (old files)
                self._array = self.root.array(self.offset + need)[self.offset:self.offset + need]
            else:
                self._array = self._reader(self, need)
        return self._array


class _Tensor(_Frozen):
    """A tensor in a storage: offset, size and stride in elements, as torch pickles it."""
    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def numpy(self) -> np.ndarray:
        """The tensor's values, checked to lie inside its storage."""
        st = self.storage
        need = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1 \
            if all(self.shape) else 0
        if need > st.numel:  # as_strided must never reach past the storage
            raise WeightsError(f"a tensor of shape {self.shape} reaches element {need} of a "
                               f"storage of {st.numel} (corrupt file)")
        base = st.array(need)
        if st.stype.name == "BFloat16Storage":  # the high half of a float32
            base = (base.astype(np.uint32) << 16).view(np.float32)
        item = base.dtype.itemsize
        if not all(self.shape):
            return np.zeros(self.shape, dtype=base.dtype)
        return np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride),
            writeable=False)


def _ints(v, what):
    if not isinstance(v, tuple) or not all(type(i) is int and i >= 0 for i in v):
        raise WeightsError(f"a tensor's {what} is {v!r}, expected a tuple of ints >= 0 "
                           f"(corrupt file)")
    return v


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    """``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``: only records the view."""
    if not isinstance(storage, _Storage) or type(storage_offset) is not int or storage_offset < 0:
        raise WeightsError("a tensor without a storage (corrupt file)")
    size, stride = _ints(tuple(size), "size"), _ints(tuple(stride), "stride")
    if len(size) != len(stride):
        raise WeightsError(f"a tensor with size {size} and stride {stride} (corrupt file)")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *rest):
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is its data."""
    if not isinstance(data, _Tensor):
        raise WeightsError("a Parameter without a tensor (corrupt file)")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED.update({("torch", n): _StorageType(n) for n in _STORAGE_DTYPES})
#: every global a .pth pickle may name; anything else is refused before it runs
ALLOWED_GLOBALS = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED))


class _Call(_Frozen):
    """One of the allowed functions, as a pickle sees it: a fresh object per lookup
    that cannot be modified, so no pickle can change what another one calls."""
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _RestrictedUnpickler(pickle._Unpickler):
    """Unpickles a tensor state dict; refuses every global outside :data:`_ALLOWED`.

    The pure-Python unpickler, not the C one: the C unpickler's memo is an array
    indexed by the pickle's BINPUT numbers, so a LONG_BINPUT of 2**31 makes it
    allocate gigabytes (found by fuzz/fuzz_pth_legacy.py); the Python one keeps a
    dict. A state dict's pickle is a few kB (the tensors' data are not in it), so
    its speed does not matter.

    ``find_class`` is the only way a pickle reaches a callable (GLOBAL, STACK_GLOBAL,
    INST, OBJ and EXT all go through it), so a refused name is never imported, let
    alone called. Storages come from ``persistent_load`` as lazy :class:`_Storage`.
    """

    def __init__(self, file, path, make_storage=None):
        super().__init__(file)
        self._path = path
        self._make_storage = make_storage

    def find_class(self, module, name):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self._path}: the pickle asks for the global '{module}.{name}', which a "
                f"tensor state dict never needs; refused, nothing was run. vggtl reads "
                f"state dicts only (torch.save(model.state_dict(), path)); allowed globals: "
                f"{', '.join(ALLOWED_GLOBALS)}")
        return _Call(obj) if callable(obj) and obj is not collections.OrderedDict else obj

    def persistent_load(self, pid):
        if self._make_storage is None:
            raise WeightsError(f"{self._path}: a persistent id where none belongs (corrupt file)")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise WeightsError(f"{self._path}: a persistent id that is not a tensor storage: "
                               f"{pid!r:.200}")
        return self._make_storage(pid)


def _state_dict_from_pickle(obj, path) -> Dict[str, _Tensor]:
    """The tensors of a state dict, also when wrapped as {"state_dict": ...} or
    {"model": ...} and with DataParallel's "module." prefix."""
    if isinstance(obj, dict) and not any(isinstance(v, _Tensor) for v in obj.values()):
        for k in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: the pickle holds a {type(obj).__name__}, not a state "
                           f"dict of tensors")
    sd = {}
    for k, v in obj.items():
        if isinstance(k, str) and isinstance(v, _Tensor):
            sd[k[7:] if k.startswith("module.") else k] = v
    if not sd:
        raise WeightsError(f"{path}: the pickle holds no tensors")
    return sd


def _read_torch_zip(path: str):
    """(state dict of lazy tensors, the open zip they read from)."""
    z = zipfile.ZipFile(path)
    try:
        names = z.namelist()
        pkl = next(n for n in names if n == "data.pkl" or n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        infos = {i.filename: i for i in z.infolist()}
        archive_size = os.path.getsize(path)
        order = "<"
        if prefix + "byteorder" in infos:
            info = infos[prefix + "byteorder"]
            _zip_check(info, path, "the byteorder record", archive_size, _BYTEORDER_MAX)
            with z.open(info) as f:
                if f.read(_BYTEORDER_MAX).strip() == b"big":
                    order = ">"

        def read(st: _Storage, count: int) -> np.ndarray:
            name = f"{prefix}data/{st.key}"
            info = infos.get(name)
            dt = st.stype.dtype.newbyteorder(order)
            if info is None or info.file_size != st.numel * dt.itemsize:
                raise WeightsError(f"{path}: storage {st.key} is missing or of the wrong size "
                                   f"(truncated or corrupt file)")
            _zip_check(info, path, f"storage {st.key}", archive_size)
            a = np.empty(count, dtype=dt)  # what the tensor needs, checked against VGG16
            try:
                with z.open(info) as f:
                    n = _zip_read_into(f, memoryview(a).cast("B"))
            except Exception as e:  # BadZipFile, OSError, EOFError, zlib.error
                raise WeightsError(f"{path}: storage {st.key} cannot be read (truncated or "
                                   f"corrupt file): {e}") from None
            if n != a.nbytes:
                raise WeightsError(f"{path}: storage {st.key} is cut short (truncated file)")
            return a

        storages: Dict[str, _Storage] = {}

        def make(pid):
            _, stype, key, _loc, numel = pid[:5]
            if key not in storages:
                storages[key] = _Storage(key, stype, numel, read)
            return storages[key]

        _zip_check(infos[pkl], path, pkl, archive_size, _PICKLE_MEMBER_MAX)
        with z.open(pkl) as f:
            # bounded: a length field in the pickle never allocates past the member
            obj = _RestrictedUnpickler(_data._BoundedReader(f, infos[pkl].file_size), path,
                                       make).load()
        sd = _state_dict_from_pickle(obj, path)
    except WeightsError:
        z.close()
        raise
    except Exception as e:  # a damaged pickle raises almost anything
        z.close()
        raise WeightsError(f"{path}: the checkpoint cannot be read (truncated or corrupt): "
                           f"{type(e).__name__}: {e}") from None
    except BaseException:
        z.close()
        raise
    return sd, z  # storages are read through z: the caller closes it


def _read_torch_legacy(path: str):
    """(state dict of lazy tensors, the open file they read from)."""
    f = open(path, "rb")
    try:
        size = os.fstat(f.fileno()).st_size

        def load(make=None):  # one pickle; pickle leaves f right after its STOP
            # through a bounded reader: a pickle's length field (BINBYTES, BINUNICODE8)
            # claiming gigabytes fails as truncated instead of allocating them first
            return _RestrictedUnpickler(_data._BoundedReader(f, size - f.tell()), path,
                                        make).load()

        if load() != _TORCH_LEGACY_MAGIC:
            raise WeightsError(f"{path}: not a PyTorch legacy file (bad magic number)")
        if load() != _TORCH_LEGACY_PROTOCOL:
            raise WeightsError(f"{path}: an unknown PyTorch legacy protocol")
        sys_info = load()
        order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
        storages: Dict[str, _Storage] = {}
        locations: Dict[str, int] = {}

        def read(st: _Storage, count: int) -> np.ndarray:
            a = np.empty(count, dtype=st.stype.dtype.newbyteorder(order))
            f.seek(locations[st.key])
            if f.readinto(memoryview(a).cast("B")) != a.nbytes:
                raise WeightsError(f"{path}: storage {st.key} is cut short (truncated file)")
            return a

        def make(pid):
            _, stype, key, _loc, numel = pid[:5]
            view = pid[5] if len(pid) == 6 else None
            if key not in storages:
                storages[key] = _Storage(key, stype, numel, read)
            root = storages[key]
            if view is None:
                return root
            vkey, voff, vsize = view
            if type(voff) is not int or type(vsize) is not int or voff < 0 or voff + vsize > numel:
                raise WeightsError(f"{path}: a storage view outside its storage (corrupt file)")
            if vkey not in storages:
                storages[vkey] = _Storage(vkey, stype, vsize, read, root=root, offset=voff)
            return storages[vkey]

        obj = load(make)
        keys = load()
        if not isinstance(keys, list):
            raise WeightsError(f"{path}: the storage list is missing (corrupt file)")
        # raw storages follow, in the list's order: int64 count, then count elements
        pos = f.tell()
        for key in keys:
            st = storages.get(key)
            if st is None:
                raise WeightsError(f"{path}: storage {key!r} is listed but never used "
                                   f"(corrupt file)")
            f.seek(pos)
            head = f.read(8)
            if len(head) != 8:
                raise WeightsError(f"{path}: the file ends before storage {key} (truncated)")
            (count,) = struct.unpack(order + "q", head)
            if count != st.numel:
                raise WeightsError(f"{path}: storage {key} has {count} elements, the pickle "
                                   f"says {st.numel} (corrupt file)")
            locations[key] = pos + 8
            pos += 8 + count * st.stype.dtype.itemsize
            if pos > size:
                raise WeightsError(f"{path}: the file ends inside storage {key} (truncated: "
                                   f"{size} bytes, needs at least {pos})")
        missing = [k for k, s in storages.items() if s.root is None and k not in locations]
        if missing:
            raise WeightsError(f"{path}: storages {missing[:3]} have no data (corrupt file)")
        sd = _state_dict_from_pickle(obj, path)
    except WeightsError:
        f.close()
        raise
    except Exception as e:  # a damaged pickle raises almost anything
        f.close()
        raise WeightsError(f"{path}: the checkpoint cannot be read (truncated or corrupt): "
                           f"{type(e).__name__}: {e}") from None
    except BaseException:
        f.close()
        raise
    return sd, f  # storages are read through f: the caller closes it


def _torch_to_keras(sd: dict, path: str, include_top: bool) -> dict:
    """torchvision's VGG16 state dict -> vggtl's dict (Keras layouts), checking names
    and shapes, reading only the tensors needed."""
    keys = list(sd)
    feats = {}
    for k in keys:
        m = re.match(r"^features\.(\d+)\.(.+)$", k)
        if m:
            feats.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not feats:
        shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        raise WeightsError(f"{path}: not a torchvision VGG state dict: no features.N.weight "
                           f"keys (it has {shown})")
    if any("running_mean" in p for p in feats.values()):
        raise WeightsError(f"{path}: a batch-norm VGG (vgg16_bn): vggtl's VGG16 has no "
                           f"batch norm; use the plain vgg16 weights")
    extra = sorted(set(feats) - set(TORCH_CONV_INDEX))
    if extra:
        raise WeightsError(f"{path}: not VGG16 weights: it has layers features."
                           f"{', features.'.join(map(str, extra[:4]))}, which torchvision's "
                           f"vgg16 does not (vgg19 or another model?)")
    pairs = [(n, f"features.{i}") for n, i in zip(CONV_LAYERS, TORCH_CONV_INDEX)]
    if include_top:
        if not any(k.startswith("classifier.") for k in keys):
            raise WeightsError(f"{path}: include_top=True needs the classifier "
                               f"(classifier.0/3/6), which this file does not have; use "
                               f"include_top=False")
        pairs += [(n, f"classifier.{i}") for n, i in zip(DENSE_LAYERS, TORCH_DENSE_INDEX)]
    missing = [(n, p) for n, p in pairs if p + ".weight" not in sd or p + ".bias" not in sd]
    if missing:
        name, prefix = missing[0]
        raise WeightsError(f"{path}: layer '{name}' ({prefix}.weight/.bias) is missing")
    out = {}
    for name, prefix in pairs:
        w, b = sd[prefix + ".weight"], sd[prefix + ".bias"]
        classes = b.shape[0] if name == "predictions" and len(b.shape) == 1 else None
        kshape, bshape = _expected(name, classes)
        if name in CONV_LAYERS:
            tshape = (kshape[3], kshape[2], 3, 3)
        else:
            tshape = (kshape[1], kshape[0])
        for what, t, shape in (("weight", w, tshape), ("bias", b, bshape)):
            if tuple(t.shape) != shape:
                raise WeightsError(f"{path}: layer '{name}' ({prefix}.{what}) has shape "
                                   f"{tuple(t.shape)}, expected {shape}")
        out[name] = (_convert_torch_kernel(name, w.numpy()),
                     np.ascontiguousarray(b.numpy(), dtype=np.float32))
    return out


def _convert_torch_kernel(name: str, w: np.ndarray) -> np.ndarray:
    if name in CONV_LAYERS:  # OIHW -> HWIO (at most 9 MB: a plain transpose is fine)
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)
    if name == "fc1":  # (4096, C*H*W) -> (H*W*C, 4096): torch flattens NCHW, vggtl NHWC
        h, wd, c = _FLAT_HWC
        return _blocked_transpose(w.reshape(w.shape[0], c, h * wd), (2, 1, 0)).reshape(h * wd * c, -1)
    return _blocked_transpose(w, (1, 0))  # (out, in) -> (in, out)


def _blocked_transpose(a: np.ndarray, axes, block: int = 128) -> np.ndarray:
    """``a.transpose(axes)`` as a C-contiguous float32 array, where axes reverses the
    first axis to last. Done ``block`` rows of ``a`` at a time: a plain copy of
    fc1's 400 MB transpose walks memory with a 100 KB stride and takes 4-10 s
    here; slabs of 128 rows keep the reads in cache (about 1 s)."""
    out = np.empty(tuple(a.shape[i] for i in axes), dtype=np.float32)
    n = a.shape[0]
    for i in range(0, n, block):
        out[..., i:i + block] = a[i:i + block].transpose(axes)
    return out


# -- safetensors ---------------------------------------------------------------------------
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
        source = find_imagenet_weights(include_top) or _download_imagenet(include_top)
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
                sd, handle = (_read_torch_zip if fmt == "torch-zip" else _read_torch_legacy)(path)
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


# -- finding and downloading "imagenet" ------------------------------------------------------
def vggtl_cache_dir() -> str:
    """``$XDG_CACHE_HOME/vggtl``, else ``~/.cache/vggtl``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache"), "vggtl")


def imagenet_search_dirs() -> List[Tuple[str, str]]:
    """[(what, folder)] searched by ``weights="imagenet"``, in order (not $VGGTL_WEIGHTS)."""
    home = os.path.expanduser("~")
    keras_home = os.environ.get("KERAS_HOME")
    if not keras_home:  # Keras falls back to /tmp/.keras when ~ is not writable
        keras_home = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
        torch_home = os.path.join(xdg, "torch")
    return [("Keras's cache", os.path.join(keras_home, "models")),
            ("PyTorch's cache", os.path.join(torch_home, "hub", "checkpoints")),
            ("vggtl's cache", vggtl_cache_dir())]


def find_imagenet_weights(include_top: bool = False) -> Optional[str]:
    """The first ImageNet VGG16 file found (see the module docstring), or None."""
    names = IMAGENET_FILES[bool(include_top)]
    env = os.environ.get("VGGTL_WEIGHTS")
    if env:
        env = os.path.expanduser(env)
        if os.path.isfile(env):
            return env
        if not os.path.isdir(env):
            raise FileNotFoundError(f"VGGTL_WEIGHTS={env}: no such file or folder")
        for n in names:
            if os.path.isfile(os.path.join(env, n)):
                return os.path.join(env, n)
    for _, d in imagenet_search_dirs():
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                return p
    return None


def _download_imagenet(include_top: bool) -> str:
    name = KERAS_TOP if include_top else KERAS_NOTOP
    url, md5 = DOWNLOADS[name]
    dest_dir = vggtl_cache_dir()
    dest = os.path.join(dest_dir, name)
    try:
        os.makedirs(dest_dir, exist_ok=True)
        _download(url, dest, md5)
    except WeightsError:
        raise
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        raise WeightsNotFoundError(_not_found_message(include_top, _reason(e))) from None
    return dest


def _reason(e: BaseException) -> str:
    """Why a download failed, once: the innermost cause's own words (a URLError's
    reason is an OSError with its strerror), not the chain of wrappers around it."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, BaseException):
        e = reason
    elif isinstance(reason, str) and reason:
        return f"{type(e).__name__}: {reason}"
    if isinstance(e, OSError) and e.strerror:
        return f"{type(e).__name__}: {e.strerror}" + (f" (errno {e.errno})" if e.errno else "")
    return f"{type(e).__name__}: {' '.join(str(e).split()) or 'no reason given'}"


def _not_found_message(include_top: bool, reason: str) -> str:
    name = KERAS_TOP if include_top else KERAS_NOTOP
    url, md5 = DOWNLOADS[name]
    names = IMAGENET_FILES[bool(include_top)]
    env = os.environ.get("VGGTL_WEIGHTS")
    lines = [f"weights='imagenet' (include_top={bool(include_top)}) needs {name} "
             f"({'553 MB' if include_top else '58.9 MB'}); it was not found on this machine "
             f"and could not be downloaded ({reason}).",
             f"Looked for {', '.join(names)} in:",
             f"  $VGGTL_WEIGHTS: {env if env else '(not set)'}"]
    lines += [f"  {what}: {d}" for what, d in imagenet_search_dirs()]
    lines += [f"Download {url} (md5 {md5}) and put it in {vggtl_cache_dir()} (or any folder "
              f"above), or set VGGTL_WEIGHTS to its path; or pass weights=<path> or None."]
    return "\n".join(lines)


def _progress(total: Optional[int], name: str):
    """A tqdm bar when tqdm is installed, else a line on stderr every 10% (plain
    lines in a notebook without ipywidgets)."""
    from .cache import TextProgress, notebook_without_widgets
    if notebook_without_widgets():
        text = TextProgress(total or 0, 0, f"downloading {name}", unit="B")
        return text.update, text.close
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=name)
        return bar.update, bar.close
    except ImportError:
        pass
    done = [0, -1]

    def update(n):
        done[0] += n
        if total:
            tenth = done[0] * 10 // total
            if tenth != done[1]:
                done[1] = tenth
                print(f"\rvggtl: downloading {name}: {done[0] / 1e6:.1f} / {total / 1e6:.1f} MB",
                      end="", file=sys.stderr, flush=True)

    def close():
        if total:
            print(file=sys.stderr, flush=True)

    return update, close


def _download(url: str, dest: str, md5: str, chunk: int = 1 << 20) -> None:
    """Download ``url`` to ``dest`` atomically: a temporary file beside it, the md5
    checked, fsynced, renamed. On any failure nothing is left behind."""
    name = os.path.basename(dest)
    h = hashlib.md5(usedforsecurity=False)
    # connect first: offline, the error is the connection's own, and no temporary
    # file is made for a download that never starts
    r = urllib.request.urlopen(url, timeout=60)
    with r, atomic_open(dest) as out:
        total = r.headers.get("Content-Length") if getattr(r, "headers", None) else None
        update, close = _progress(int(total) if total else None, name)
        try:
            while True:
                block = r.read(chunk)
                if not block:
                    break
                h.update(block)
                out.write(block)
                update(len(block))
        finally:
            close()
        if h.hexdigest() != md5:
            raise WeightsError(f"downloaded {url}, but its md5 is {h.hexdigest()}, expected "
                               f"{md5}: the download was damaged or the file changed; nothing "
                               f"was kept. Try again, or download it by hand")
