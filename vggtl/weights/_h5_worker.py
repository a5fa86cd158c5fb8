"""The child process that runs libhdf5 on a Keras weights file, and the messages it
exchanges with vggtl (:mod:`vggtl.weights._h5_sandbox` starts it and talks to it).

libhdf5 does not check much of what it reads: damaged metadata made it loop for
ever or crash (its global heap, reached from a variable-length attribute or from
a virtual dataset's layout while the dataset is being opened; found by
fuzz/fuzz_h5.py). Such a file must cost the user an exception, not the notebook,
so h5py runs here, in a process of its own that vggtl stops when it overruns its
time and whose memory is bounded.

What this side does: find the Keras layers of a file, refusing anything that
reaches outside it (:func:`_h5_get`), and hand out their datasets as float32.
Which layers are VGG16's and whether their shapes are right is decided by the
caller (:mod:`vggtl.weights.keras_h5`), before any data is read.

Run as a script (never imported by the child as part of vggtl, so that the child
loads neither vggtl's C core nor anything else it does not need); the parent
imports this module for the message format and for the in-process session its
tests use. The functions below import h5py only when called.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
from typing import List, Optional, Tuple

import numpy as np

# -- the messages -----------------------------------------------------------------------
# Each way, a message is an 8-byte little-endian length and that many bytes of
# JSON; an answer may be followed by the raw payload its JSON announces
# ("payload": its length in bytes). Requests carry none: the worker opens files
# by path, a .keras file's member included.
_LEN = struct.Struct("<Q")
HEADER_MAX = 1 << 24  # a listing of a few thousand layers stays far below this


def encode(header: dict) -> bytes:
    body = json.dumps(header).encode("utf8")
    return _LEN.pack(len(body)) + body


class Refused(Exception):
    """What the caller gets as its WeightsError's message."""


# -- reading a Keras file ---------------------------------------------------------------
def _import_h5py():
    import h5py
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
    raise Refused(f"'{where}' is {what}; vggtl reads only data kept inside the file "
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
        raise Refused(f"dataset '{where}' is a virtual dataset whose data come from "
                      f"{src or 'other datasets'}; vggtl reads only data kept inside the "
                      f"file itself (Keras writes no virtual datasets): refused, "
                      f"nothing was opened")
    if dcpl.get_external_count():
        name = dcpl.get_external(0)[0].decode(errors="replace")
        raise Refused(f"dataset '{where}' keeps its data in the external file "
                      f"{name!r}; vggtl reads only data kept inside the file itself "
                      f"(Keras writes no external storage): refused, nothing was opened")
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise Refused(f"dataset '{where}' has an unknown storage layout ({layout})")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in _H5_FILTERS:
            raise Refused(f"dataset '{where}' is stored with filter {code}, which is "
                          f"not one of HDF5's own (libhdf5 would load a plugin "
                          f"library for it): refused")
    t = ds.id.get_type()
    if not isinstance(t, (h5py.h5t.TypeIntegerID, h5py.h5t.TypeFloatID)):
        raise Refused(f"dataset '{where}' holds {type(t).__name__[4:-2].lower() or 'data'} "
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
    loop forever or segfault. Such an attribute is never read (the process
    boundary is the second line). The type is in the object header, so looking
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


def file_kind(f) -> str:
    """"keras-h5" (the legacy layout) or "keras3-h5"."""
    g = _h5_model_weights(f)
    if _h5_attr_list(g, "layer_names") or "layer_names" in g.attrs:
        return "keras-h5"
    if f.id.links.exists(b"layers") or f.id.links.exists(b"vars"):
        return "keras3-h5"
    raise Refused("an HDF5 file with neither Keras's legacy layout (root attribute "
                  "layer_names) nor Keras 3's (group 'layers')")


def _keras_legacy_layers(f) -> List[Tuple[str, list]]:
    """[(layer name, [datasets])] of the layers with weights, in the file's order."""
    h5py = _import_h5py()
    g = _h5_model_weights(f)
    out = []
    names = _h5_attr_list(g, "layer_names")
    if not names and "layer_names" in g.attrs:
        return _keras_legacy_layers_by_links(g)
    for name in names:
        lg = _h5_get(g, name, name)
        if not isinstance(lg, h5py.Group):
            raise Refused(f"layer '{name}' is listed in layer_names but has no group "
                          f"(corrupt file)")
        wnames = _h5_attr_list(lg, "weight_names")
        if wnames:
            ds = [_h5_get(lg, w, f"{name}/{w}") for w in wnames]
            for w, d in zip(wnames, ds):
                if not isinstance(d, h5py.Dataset):
                    raise Refused(f"layer '{name}': the dataset '{w}' listed in "
                                  f"weight_names is missing")
            out.append((name, ds))
    return out


def _keras_legacy_layers_by_links(g) -> List[Tuple[str, list]]:
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
            raise Refused(f"layer '{name}' holds {sorted(base)}; expected a kernel and a "
                          f"bias (Keras's names)")
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


class Session:
    """One file at a time: what the parent asks for, answered with plain values.

    ``kind(path)``: the file's Keras layout. ``open(path, kind, member)``: its
    layers as ``[[name, [[shape, dtype kind], ...]], ...]``, their datasets kept
    for ``read(i, j)`` (float32, C order) until ``close()``. ``member``: the HDF5
    file is that member of the zip ``path`` (a ``.keras`` file's
    model.weights.h5). Every failure is a :class:`Refused` with the message the
    caller shows."""

    def __init__(self):
        self.file = None
        self.datasets = []

    def kind(self, path: str) -> str:
        h5py = _import_h5py()
        try:
            with h5py.File(path, "r") as f:
                return file_kind(f)
        except Refused:
            raise
        except Exception as e:  # h5py: OSError, and RuntimeError, KeyError, ValueError for
            # damaged metadata ("bad heap free list")
            raise Refused(f"an HDF5 file that cannot be read (truncated or corrupt?): "
                          f"{type(e).__name__}: {e}") from None

    def open(self, path: str, kind: str, member: Optional[str] = None) -> list:
        h5py = _import_h5py()
        self.close()
        what = "the HDF5 file" if member is None else member
        try:
            self.file = h5py.File(path if member is None else _zip_member(path, member), "r")
            layers = (_keras_legacy_layers(self.file) if kind == "keras-h5"
                      else _keras3_layers(self.file))
            listing = []
            for name, ds in layers:
                self.datasets.append(ds)
                listing.append([name, [[list(d.shape), d.dtype.kind] for d in ds]])
            return listing
        except (Refused, MemoryError):  # answer() says what a MemoryError means
            self.close()
            raise
        except Exception as e:  # h5py raises OSError, RuntimeError, KeyError, ValueError, ...
            self.close()
            raise Refused(f"cannot read {what} (truncated or corrupt?): "
                          f"{type(e).__name__}: {e}") from None

    def read(self, i: int, j: int) -> np.ndarray:
        try:
            a = self.datasets[i][j][()]
        except (IndexError, TypeError):
            raise Refused(f"no dataset {i}, {j} in this file") from None
        except Exception as e:  # h5py: a truncated or damaged chunk
            raise Refused(f"truncated or corrupt? {type(e).__name__}: {e}") from None
        if a.dtype.kind not in "fiu":
            raise Refused(f"holds {a.dtype}, expected float32")
        return np.ascontiguousarray(a, dtype=np.float32)

    def close(self):
        self.datasets = []
        if self.file is not None:
            try:
                self.file.close()
            except Exception:  # a damaged file may fail to close; it is dropped anyway
                pass
            self.file = None


def _zip_member(path: str, name: str) -> io.BytesIO:
    """A zip member's bytes, decompressed a chunk at a time into memory: this
    process's memory limit, set from the zip's size, stops a member that
    decompresses to far more than its archive (the parent checked the member's
    declared size and method before asking)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refused(f"{name} is compressed with method {info.compress_type}; refused")
        buf = io.BytesIO()
        with z.open(info) as m:
            while True:
                chunk = m.read(1 << 22)  # zipfile stops at the declared size
                if not chunk:
                    break
                buf.write(chunk)
    buf.seek(0)
    return buf


# -- the child's loop ---------------------------------------------------------------------
def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 24))
        if not b:
            raise EOFError
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _limit_memory(extra: int) -> None:
    """Bound what a damaged file can make libhdf5 allocate: the address space now,
    plus ``extra`` bytes (Linux; elsewhere nothing is set)."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        soft = now + extra
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ImportError, OSError, ValueError):
        pass


def memory_allowance(file_size: int) -> int:
    """What a file of ``file_size`` bytes may make this process allocate: the
    float32 copies a read makes, a ``.keras`` member held whole, and libhdf5's own."""
    return (1 << 30) + 3 * file_size


def answer(session: Session, req: dict):
    """(reply, array or None) for one request; a refusal is ``{"refused": message}``.
    What the worker sends, and what the in-process session of the caller gets."""
    op = req.get("op")
    try:
        if op == "kind":
            return {"kind": session.kind(req["path"])}, None
        if op == "open":
            return {"layers": session.open(req["path"], req["kind"], req.get("member"))}, None
        if op == "read":
            a = session.read(int(req["i"]), int(req["j"]))
            return {"shape": list(a.shape), "payload": a.nbytes}, a
        if op == "close":
            session.close()
            return {"closed": True}, None
        raise Refused(f"unknown request {op!r}")
    except Refused as e:
        return {"refused": str(e)}, None
    except MemoryError:
        return {"refused": "reading it needs more memory than the file's size can justify "
                           "(corrupt?)"}, None
    except Exception as e:  # the file gone meanwhile, ...: the worker carries on
        return {"refused": f"{type(e).__name__}: {e}"}, None


def serve(fd_in: int, fd_out: int) -> None:
    """Answer the parent's requests until it closes the pipe."""
    session = Session()
    _write_all(fd_out, encode({"ready": True}))
    while True:
        try:
            n = _LEN.unpack(_read_exact(fd_in, _LEN.size))[0]
            req = json.loads(_read_exact(fd_in, n))
        except EOFError:
            return
        if req.get("op") in ("kind", "open"):  # a new file: the memory it may justify
            try:
                _limit_memory(memory_allowance(os.path.getsize(req["path"])))
            except (OSError, KeyError, TypeError):
                pass  # the file is gone, or no path: answer() says so
        reply, a = answer(session, req)
        _write_all(fd_out, encode(reply))
        if a is not None:
            _write_all(fd_out, a)


def main() -> None:
    # h5py, numpy or libhdf5 printing to stdout would corrupt the messages: they
    # go to a private descriptor, and stdout to stderr
    fd_out = os.dup(1)
    os.dup2(2, 1)
    serve(0, fd_out)


if __name__ == "__main__":
    main()
