"""Keras weight files: legacy ``.h5`` (Keras 2 / tf-keras ``save_weights`` and
``save``), Keras 3 ``.weights.h5``, and ``.keras`` (a zip holding one).

Only data kept inside the file are read: HDF5 soft, external and user-defined
links, external storage, virtual datasets and filters that libhdf5 would load as
plugins are refused from the file's metadata, before anything behind them is
opened (:func:`_h5_get`)."""
from __future__ import annotations

import os
import re
import zipfile
from typing import List, Tuple

import numpy as np

from ._common import CONV_LAYERS, DENSE_LAYERS, WeightsError, _expected
from ._zip import _zip_check
from .imagenet import KERAS_TOP

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


# a .keras file's model.weights.h5: VGG16 with its top, a head and Adam's two
# moments per weight stay under 3 GB
_KERAS_WEIGHTS_MAX = 4 << 30


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
