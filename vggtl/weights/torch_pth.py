"""torchvision ``.pth`` files, read without torch: the zip format
(``<dir>/data.pkl``, ``<dir>/data/<key>``) and the legacy stream format of the
2017 ``vgg16-397923af.pth`` (five pickles, then raw storages), converted to
Keras's layouts.

The pickles are read by an unpickler that knows only the globals a tensor state
dict needs (:data:`ALLOWED_GLOBALS`) and refuses any other, naming it, before
anything runs."""
from __future__ import annotations

import collections
import os
import pickle
import re
import struct
import zipfile
from typing import Dict

import numpy as np

from .._safe_pickle import BoundedUnpickler
from ._common import (CONV_LAYERS, DENSE_LAYERS, TORCH_CONV_INDEX, TORCH_DENSE_INDEX,
                      UnsafePickleError, WeightsError, _FLAT_HWC, _expected)
from ._zip import _zip_check, _zip_read_into

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_TORCH_LEGACY_HEAD = pickle.dumps(_TORCH_LEGACY_MAGIC, protocol=2)  # the first of 5 pickles
_PICKLE_MEMBER_MAX = 64 << 20  # a state dict's data.pkl: a few kB; its tensors are apart
_BYTEORDER_MAX = 16  # "little" or "big"


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


class _RestrictedUnpickler(BoundedUnpickler):
    """Unpickles a tensor state dict through the bounded unpickler
    (:mod:`vggtl._safe_pickle`); refuses every global outside :data:`_ALLOWED`. A
    state dict's pickle is a few kB (the tensors' data are not in it), so the
    pure-Python unpickler's speed does not matter. Storages come from
    ``persistent_load`` as lazy :class:`_Storage`.
    """

    allowed = _ALLOWED

    def __init__(self, file, size, path, make_storage=None, budget_size=None):
        super().__init__(file, size, budget_size)
        self._path = path
        self._make_storage = make_storage

    def over_budget(self, message):
        return UnsafePickleError(f"{self._path}: {message}")

    def refused(self, module, name):
        return UnsafePickleError(
            f"{self._path}: the pickle asks for the global '{module}.{name}', which a "
            f"tensor state dict never needs; refused, nothing was run. vggtl reads "
            f"state dicts only (torch.save(model.state_dict(), path)); allowed globals: "
            f"{', '.join(ALLOWED_GLOBALS)}")

    def resolve(self, obj):
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


def _one_storage(storages: Dict[str, _Storage], key, stype, numel, read, path,
                 root=None, offset=0) -> _Storage:
    """The storage ``key``, made on its first reference; every later reference
    must describe it as the first did (torch.save writes one description per
    storage), or a tensor could be checked against a size the storage does not
    have."""
    st = storages.get(key)
    if st is None:
        st = storages[key] = _Storage(key, stype, numel, read, root=root, offset=offset)
    elif (st.stype.name, st.numel, st.root, st.offset) != (stype.name, numel, root, offset):
        raise WeightsError(f"{path}: storage {key!r} is described two ways ({st.numel} "
                           f"{st.stype.name} elements, then {numel} {stype.name}) "
                           f"(corrupt file)")
    return st


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
            return _one_storage(storages, key, stype, numel, read, path)

        _zip_check(infos[pkl], path, pkl, archive_size, _PICKLE_MEMBER_MAX)
        with z.open(pkl) as f:
            # bounded: a length field in the pickle never allocates past the member
            obj = _RestrictedUnpickler(f, infos[pkl].file_size, path, make,
                                       budget_size=min(infos[pkl].file_size,
                                                       archive_size)).load()
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
            return _RestrictedUnpickler(f, size - f.tell(), path,
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
            root = _one_storage(storages, key, stype, numel, read, path)
            if view is None:
                return root
            if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
                raise WeightsError(f"{path}: a storage view that is not (key, offset, size) "
                                   f"(corrupt file)")
            vkey, voff, vsize = view
            if type(voff) is not int or type(vsize) is not int or voff < 0 or vsize < 0 \
                    or voff + vsize > numel:
                raise WeightsError(f"{path}: a storage view outside its storage (corrupt file)")
            return _one_storage(storages, vkey, stype, vsize, read, path, root, voff)

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
    fc1's 400 MB transpose walks memory with a 100 KB stride, missing the cache
    on every read; slabs of 128 rows keep the reads in cache."""
    out = np.empty(tuple(a.shape[i] for i in axes), dtype=np.float32)
    n = a.shape[0]
    for i in range(0, n, block):
        out[..., i:i + block] = a[i:i + block].transpose(axes)
    return out
