"""The tutorial's data: safe unpickling, labels, splits, resizing, .npy files.

The classic tutorial reads its data with ``pickle.load(open("X.pickle", "rb"))``,
which runs whatever code the file asks for. :func:`load_pickle` reads the same
files with a restricted unpickler: it builds NumPy arrays and scalars (pickled
by NumPy 1.x or 2.x, protocols 2 to 5), lists, tuples, sets, dicts, numbers and
strings, and refuses every other global with :class:`UnsafePickleError` *before*
calling anything. Dtype states must be the ones NumPy writes, every array handed
out is checked, and what a pickle stands for is bounded by its size.

    >>> X, y = vggtl.load_pickles("X.pickle", "y.pickle")       # doctest: +SKIP
    >>> enc = vggtl.LabelEncoder().fit(y)                         # doctest: +SKIP
    >>> Xtr, Xte, ytr, yte = vggtl.train_test_split(X, enc.to_categorical(y))  # doctest: +SKIP
    >>> X224 = vggtl.resize(X, (224, 224))                        # doctest: +SKIP

X is never converted to float as a whole: it keeps the dtype it was saved with
(uint8 for the tutorial) and the C core converts it one batch at a time. For
data larger than memory, :func:`to_npy` turns a pickle into a ``.npy`` file, and
every function here takes the ``np.memmap`` that ``np.load(path,
mmap_mode="r")`` (or :func:`load_pickle` on a ``.npy`` path) gives, reading it
batch by batch.
"""
from __future__ import annotations

import math
import os
import pickle
import struct
import warnings

import numpy as np

from . import _core
from ._arrays import for_core
from ._atomic import atomic_open
from ._files import open_regular, special_file_kind
from ._safe_pickle import BoundedUnpickler, UnsafePickleError, charging

try:  # NumPy 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # NumPy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

__all__ = [
    "UnsafePickleError",
    "load_pickle",
    "load_pickles",
    "LabelEncoder",
    "LabelBinarizer",
    "to_categorical",
    "train_test_split",
    "resize",
    "to_npy",
]

# ---------------------------------------------------------------------------
# the restricted unpickler


# dtype kinds a pickled array or scalar may have: bool, integers, floats,
# complex, and fixed-width strings (labels). Object ('O'), structured / void
# ('V') and datetime ('M', 'm') dtypes are refused: an object array can hold
# anything, and a structured one can hide object fields.
_PLAIN_KINDS = frozenset("biufcUS")
# NumPy's dtype flags that only object-holding dtypes may have (NPY_ITEM_REFCOUNT,
# NPY_ITEM_IS_POINTER, NPY_LIST_PICKLE, NPY_USE_GETITEM, NPY_USE_SETITEM, ...):
# every bit but NPY_NEEDS_INIT (0x08) and NPY_ALIGNED_STRUCT (0x80)
_DTYPE_SAFE_FLAGS = 0x08 | 0x80


def _refuse(what: str):
    raise UnsafePickleError(what)


def _check_plain_dtype(d, where: str) -> np.dtype:
    if not isinstance(d, np.dtype):
        _refuse(f"{where}: expected a numpy dtype, got {type(d).__name__}")
    if (d.kind not in _PLAIN_KINDS or d.hasobject or d.fields is not None
            or d.subdtype is not None or d.flags & ~_DTYPE_SAFE_FLAGS):
        _refuse(f"{where}: dtype {d!r} is not a plain numeric or string dtype "
                "(object, structured and datetime arrays are refused)")
    return d


def _safe_dtype(obj, align=False, copy=False):
    """numpy.dtype(obj, align, copy) for a type string such as 'u1', '<f8', 'U3'."""
    if type(obj) is not str or len(obj) > 16:
        _refuse(f"numpy.dtype: expected a type string such as 'u1', got {type(obj).__name__}")
    try:
        # always a copy: the dtype's BUILD state is applied to it next, and must
        # never touch NumPy's shared builtin descriptors
        d = np.dtype(obj, False, True)
    except TypeError as e:
        raise UnsafePickleError(f"numpy.dtype: {e}") from None
    return _check_plain_dtype(d, "numpy.dtype")


def _check_dtype_state(d: np.dtype, state) -> np.dtype:
    """A dtype's BUILD state must be, field for field, the one NumPy itself writes
    for this dtype in the byte order the state names: (3, byteorder, None, None,
    None, elsize, alignment, flags). NumPy's ``__setstate__`` applies the size and
    alignment of a string dtype as they come: -1 gave an array of itemsize -1,
    which ``astype`` then read and wrote out of bounds. Returns the dtype the
    state describes."""
    if (type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4)
            or (len(state) == 9 and state[8] is not None)):
        _refuse(f"numpy.dtype state: unexpected {type(state).__name__} {state!r:.80}")
    byteorder, subdescr, names, fields = state[1:5]
    if subdescr is not None or names is not None or fields is not None:
        _refuse("numpy.dtype state: sub-arrays and fields are refused")
    if type(byteorder) is not str or byteorder not in ("<", ">", "|"):
        _refuse(f"numpy.dtype state: byte order {byteorder!r:.20}, expected '<', '>' or '|'")
    want = d.newbyteorder("=" if byteorder == "|" else byteorder)
    ref = want.__reduce__()[2]
    for i, field in ((1, "byte order"), (5, "size"), (6, "alignment"), (7, "flags")):
        if type(state[i]) is not type(ref[i]) or state[i] != ref[i]:
            _refuse(f"numpy.dtype state: {field} {state[i]!r:.20} where NumPy writes "
                    f"{ref[i]!r} for dtype {want}")
    return want


def _same_dtype(d: np.dtype, ref: np.dtype) -> bool:
    return (d == ref and d.itemsize == ref.itemsize and d.alignment == ref.alignment
            and d.flags == ref.flags and d.str == ref.str)


def _check_canonical_dtype(d: np.dtype, where: str) -> None:
    """d must be a plain dtype exactly as NumPy builds it from its type string."""
    _check_plain_dtype(d, where)
    item = d.itemsize
    if item <= 0 or (d.kind == "U" and item % 4):
        _refuse(f"{where}: dtype of {d.kind!r} kind with item size {item}")
    try:
        ref = np.dtype(d.str)
    except (TypeError, ValueError):
        _refuse(f"{where}: a dtype NumPy cannot name ({d.kind!r}, size {item})")
    if not _same_dtype(d, ref):
        _refuse(f"{where}: dtype {ref} with size {item}, alignment {d.alignment} and flags "
                f"{d.flags}, which NumPy does not make (it makes {ref.itemsize}, "
                f"{ref.alignment}, {ref.flags})")


def _check_shape(shape, where: str) -> int:
    """Number of elements of a pickled shape (a tuple of non-negative ints)."""
    if type(shape) is not tuple or len(shape) > 32:
        _refuse(f"{where}: expected a shape tuple, got {type(shape).__name__}")
    size = 1
    for s in shape:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0:
            _refuse(f"{where}: expected non-negative sizes, got {shape!r:.80}")
        size *= int(s)
    return size


def _check_data(data, nbytes: int, where: str) -> None:
    if not isinstance(data, (bytes, bytearray, str)):
        _refuse(f"{where}: expected raw bytes, got {type(data).__name__}")
    if len(data) != nbytes:
        _refuse(f"{where}: {len(data)} bytes of data for {nbytes} expected")


def _check_array_state(a, state) -> None:
    """An ndarray's BUILD state: ([1,] shape, plain dtype, fortran flag, raw bytes)."""
    if type(a) is not np.ndarray:
        _refuse(f"numpy.ndarray state applied to {type(a).__name__}")
    if type(state) is not tuple or len(state) not in (4, 5):
        _refuse(f"numpy.ndarray state: unexpected {type(state).__name__}")
    if len(state) == 5:
        if state[0] != 1:
            _refuse(f"numpy.ndarray state: unknown version {state[0]!r:.20}")
        state = state[1:]
    shape, dtype, fortran, data = state
    size = _check_shape(shape, "numpy.ndarray state")
    _check_plain_dtype(dtype, "numpy.ndarray state")
    if fortran not in (0, 1):
        _refuse("numpy.ndarray state: expected a boolean Fortran-order flag")
    _check_data(data, size * dtype.itemsize, "numpy.ndarray state")


class _NdarrayMarker:
    """Stands for numpy.ndarray in a pickle: only _safe_reconstruct accepts it,
    so the pickle cannot call ndarray(shape, buffer=..., strides=...) itself."""

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


def _safe_reconstruct(subtype, shape, typecode):
    """numpy's _reconstruct(ndarray, (0,), b'b'): an empty array that BUILD fills."""
    if subtype is not _NDARRAY:
        _refuse(f"numpy _reconstruct: only numpy.ndarray, not {subtype!r:.60}")
    if shape != (0,) or typecode not in (b"b", "b"):
        _refuse(f"numpy _reconstruct: unexpected arguments {shape!r:.40}, {typecode!r:.20}")
    return _multiarray._reconstruct(np.ndarray, (0,), b"b")


def _safe_scalar(dtype, data=None):
    """numpy's scalar(dtype, bytes): a NumPy scalar of a plain dtype."""
    _check_plain_dtype(dtype, "numpy scalar")
    _check_data(data, dtype.itemsize, "numpy scalar")
    if isinstance(data, str):  # Python 2 pickles read with encoding='latin1'
        data = data.encode("latin1")
    return _multiarray.scalar(dtype, data)


def _safe_frombuffer(buf, dtype, shape, order):
    """numpy's _frombuffer (protocol 5): an array over in-band bytes."""
    _check_plain_dtype(dtype, "numpy _frombuffer")
    if order not in ("C", "F"):
        _refuse(f"numpy _frombuffer: unexpected order {order!r:.20}")
    size = _check_shape(shape, "numpy _frombuffer")
    if not isinstance(buf, (bytes, bytearray)):
        _refuse(f"numpy _frombuffer: expected in-band bytes, got {type(buf).__name__}")
    _check_data(buf, size * dtype.itemsize, "numpy _frombuffer")
    return _numeric._frombuffer(buf, dtype, shape, order)


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """Protocol 2 writes bytes as _codecs.encode(str, 'latin1'); nothing else."""
    if type(obj) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        _refuse("_codecs.encode: only (str, 'latin1') is allowed")
    return obj.encode("latin1")


def _safe_bytes(obj=b""):
    """bytes() / bytes(b'..'), not bytes(n): a pickle must not allocate at will."""
    if not isinstance(obj, (bytes, bytearray)):
        _refuse(f"builtins.bytes: expected bytes, got {type(obj).__name__}")
    return bytes(obj)


def _safe_bytearray(obj=b"", *encoding):
    if isinstance(obj, str) and encoding in ((), ("latin1",), ("latin-1",)):
        return bytearray(obj.encode("latin1"))
    if not isinstance(obj, (bytes, bytearray)):
        _refuse(f"builtins.bytearray: expected bytes, got {type(obj).__name__}")
    return bytearray(obj)


def _safe_complex(real=0.0, imag=0.0):
    if not all(isinstance(v, (int, float)) for v in (real, imag)):
        _refuse("builtins.complex: expected two numbers")
    return complex(real, imag)


def _safe_set(items=()):
    return set(items)


def _safe_frozenset(items=()):
    return frozenset(items)


# (module, name) -> what the pickle gets. What real pickles reference
# (pickletools.dis of NumPy 1.26 and 2.x arrays and scalars, protocols 2-5):
#   arrays, protocols 2-4: <core>.multiarray._reconstruct, numpy.ndarray, numpy.dtype
#                          (+ _codecs.encode for the bytes, protocol 2)
#   arrays, protocol 5:    <core>.numeric._frombuffer, numpy.dtype
#   scalars:               <core>.multiarray.scalar, numpy.dtype
#   sets, bytes, complex at protocol 2: builtins (__builtin__) set, frozenset,
#                          bytes, bytearray, complex
# where <core> is numpy.core (NumPy 1.x) or numpy._core (NumPy 2).
_ALLOWED = {}
for _core_name in ("numpy.core", "numpy._core"):
    _ALLOWED[(_core_name + ".multiarray", "_reconstruct")] = _safe_reconstruct
    _ALLOWED[(_core_name + ".multiarray", "scalar")] = _safe_scalar
    _ALLOWED[(_core_name + ".numeric", "_frombuffer")] = _safe_frombuffer
_ALLOWED[("numpy", "ndarray")] = _NDARRAY
_ALLOWED[("numpy", "dtype")] = _safe_dtype
_ALLOWED[("_codecs", "encode")] = _safe_codecs_encode
for _b in ("builtins", "__builtin__"):
    _ALLOWED[(_b, "set")] = _safe_set
    _ALLOWED[(_b, "frozenset")] = _safe_frozenset
    _ALLOWED[(_b, "bytes")] = _safe_bytes
    _ALLOWED[(_b, "bytearray")] = _safe_bytearray
    _ALLOWED[(_b, "complex")] = _safe_complex
del _core_name, _b


class _SafeUnpickler(BoundedUnpickler):
    """The bounded unpickler (:mod:`vggtl._safe_pickle`) with NumPy's allow-list
    for globals and a checked BUILD.

    BUILD is where NumPy applies a dtype's or an array's state; NumPy's own
    dtype.__setstate__ accepts flags that mark a uint8 dtype as holding object
    pointers, and sizes that do not fit the dtype, so the state is checked against
    what NumPy writes before it is applied, and BUILD on anything but a dtype or an
    ndarray is refused. A dtype gets its state once, right after the pickle made
    it: a second BUILD would change a dtype that arrays already use.
    """

    dispatch = dict(BoundedUnpickler.dispatch)
    allowed = _ALLOWED

    def __init__(self, file, file_size: int, **kw):
        super().__init__(file, file_size, **kw)
        self._unbuilt = {}  # id -> dtype made by this pickle, not yet given its state

    def refused(self, module, name):
        return UnsafePickleError(
            f"the pickle asks for the global {module}.{name}, which vggtl does not "
            "allow (only NumPy arrays, NumPy scalars and plain Python values); "
            "nothing was run")

    def resolve(self, obj):
        return self._new_dtype if obj is _safe_dtype else obj

    def _new_dtype(self, *args):
        d = _safe_dtype(*args)
        self._unbuilt[id(d)] = d  # the reference keeps the id unique
        return d

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            if self._unbuilt.get(id(inst)) is not inst:
                _refuse("the pickle sets the state of a dtype twice, or of one it did not "
                        "make (NumPy sets it once)")
            want = _check_dtype_state(inst, state)
            del self._unbuilt[id(inst)]
            inst.__setstate__(state)
            if not _same_dtype(inst, want):
                _refuse(f"numpy.dtype state: gave {inst!r:.40}, expected {want}")
            return
        if type(inst) is np.ndarray:
            _check_array_state(inst, state)
        else:
            _refuse(f"the pickle sets the state of a {type(inst).__name__}, which vggtl "
                    "does not allow")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = charging(_load_build)


_NPY_MAGIC = b"\x93NUMPY"

# What a pickle may expand to, as one array (np.asarray / np.stack of what it
# holds): this many times its own size, and never less than the floor. Shared
# references (the memo) let a few kB of nested lists stand for hundreds of MB; a
# pickle of arrays or of plain lists expands to about its own size, labels that
# share their strings to a few times it.
_EXPAND_RATIO = 16
_EXPAND_FLOOR = 64 << 20


def _check_array_out(a: np.ndarray, checked: dict, where: str = "numpy array") -> None:
    """An array the unpickler made: a dtype exactly as NumPy makes it, strides of a
    C- or Fortran-ordered block, and no more bytes than its buffer holds. Dtypes
    already checked are in ``checked`` (by id)."""
    if id(a.dtype) not in checked:
        _check_canonical_dtype(a.dtype, where)
        checked[id(a.dtype)] = a.dtype
    item = a.dtype.itemsize
    shape, strides = a.shape, a.strides
    orders = []
    for dims in (range(a.ndim - 1, -1, -1), range(a.ndim)):  # C, then Fortran
        step, ok = item, True
        for i in dims:
            if shape[i] > 1 and strides[i] != step:
                ok = False
            step *= shape[i]
        orders.append(ok)
    if not any(orders):
        _refuse(f"{where}: strides {strides} for shape {shape} and item size {item}")
    root = a  # the object that owns the memory: follow the bases (as_strided's too)
    while getattr(root, "base", None) is not None:
        root = root.base
    if isinstance(root, np.ndarray):
        if root is not a:
            _check_canonical_dtype(root.dtype, where)
        cap = root.nbytes
    else:
        try:
            cap = memoryview(root).nbytes
        except TypeError:
            _refuse(f"{where}: data in a {type(root).__name__}")
    if a.nbytes > cap:
        _refuse(f"{where}: {a.nbytes} bytes over a buffer of {cap}")


_CONTAINERS = frozenset((list, tuple, set, frozenset, dict))
# bytes per element np.asarray gives Python numbers (int64, float64, complex128)
_NUMBER_SIZE = {bool: 1, int: 8, float: 8, complex: 16, type(None): 8}
_NUMBER_TYPES = frozenset(_NUMBER_SIZE)
# what an element is: np.asarray turns numbers mixed with strings into strings of
# up to 32 characters
_NUM, _TEXT = 1, 2
_NUMBER_AS_TEXT = 4 * 32


def _leaf_extent(o, checked: dict):
    """(elements, bytes per element, _NUM or _TEXT) of a non-container as np.asarray
    makes it; arrays and scalars are checked, once each (``checked``: by id, and
    their dtypes)."""
    t = type(o)
    if t is np.ndarray or isinstance(o, np.generic):
        if id(o) not in checked:
            if t is np.ndarray:
                _check_array_out(o, checked)
            elif id(o.dtype) not in checked:
                _check_canonical_dtype(o.dtype, "numpy scalar")
                checked[id(o.dtype)] = o.dtype
            checked[id(o)] = o
        return o.size, o.dtype.itemsize, _TEXT if o.dtype.kind in "US" else _NUM
    if t is str:
        return 1, 4 * max(len(o), 1), _TEXT
    if t is bytes or t is bytearray:
        return 1, max(len(o), 1), _TEXT
    return 1, _NUMBER_SIZE.get(t, 8), _NUM


def _items_extent(items, types: set, done: dict, checked: dict):
    """(elements, largest element, kinds) of a container's items. Lists of plain
    numbers or of strings, what labels and nested pixel lists are, are summed at C
    speed."""
    if types <= _NUMBER_TYPES:
        return len(items), max(_NUMBER_SIZE[t] for t in types) if types else 0, _NUM
    if types == {str}:
        return len(items), 4 * max(1, max(map(len, items))), _TEXT
    n, item, kinds = 0, 0, 0
    for c in items:
        cn, ci, ck = done[id(c)] if type(c) in _CONTAINERS else _leaf_extent(c, checked)
        n += cn
        kinds |= ck
        if ci > item:
            item = ci
    if kinds == _NUM | _TEXT:
        item = max(item, _NUMBER_AS_TEXT)
    return n, item, kinds


def _check_loaded(obj, file_size: int, path: str) -> None:
    """Check everything a pickle made before it is handed out: every array and
    scalar (:func:`_check_array_out`), and the size of the one array its lists
    would become (elements times the largest element: np.asarray pads strings to
    the longest), at most :data:`_EXPAND_RATIO` times the file's size (or
    :data:`_EXPAND_FLOOR`). Each object is visited once, however often the pickle
    refers to it, so the walk costs what reading the pickle did."""
    done = {}  # id -> (elements, bytes per element, kinds) of a finished container
    # id -> (container, its item types) on the path from obj: met again below
    # itself, it contains itself
    open_ = {}
    checked = {}  # arrays, scalars and dtypes checked, by id
    todo = [obj]
    while todo:
        o = todo[-1]
        k = id(o)
        if type(o) not in _CONTAINERS or k in done:
            todo.pop()
            continue
        items = (*o.keys(), *o.values()) if type(o) is dict else o
        if k not in open_:
            types = set(map(type, items))
            if not types & _CONTAINERS:  # no containers inside: done at once
                done[k] = _items_extent(items, types, done, checked)
                todo.pop()
                continue
            open_[k] = (o, types)
            for c in items:
                if type(c) in _CONTAINERS and id(c) not in done:
                    if id(c) in open_:
                        raise ValueError(f"{path}: the pickle holds a {type(c).__name__} "
                                         "that contains itself; expected images or labels")
                    todo.append(c)
            continue
        done[k] = _items_extent(items, open_.pop(k)[1], done, checked)
        todo.pop()
    n, item, _ = done[id(obj)] if type(obj) in _CONTAINERS else _leaf_extent(obj, checked)
    limit = max(_EXPAND_FLOOR, _EXPAND_RATIO * file_size)
    if n * item > limit:
        raise ValueError(
            f"{path}: the pickle stands for {n} values ({n * item} bytes as one array) in "
            f"a file of {file_size} bytes (it refers to the same lists or arrays over and "
            f"over, or pads short strings to a long one); vggtl reads at most {limit} "
            f"bytes from a pickle of this size. Save the data as one NumPy array "
            f"(pickle.dump(np.asarray(X), f) or np.save)")


def load_pickle(path):
    """Read one pickle with the restricted unpickler (see the module docstring).

    A ``.npy`` file (recognised by its magic bytes) is opened memory-mapped,
    read-only, without pickles. Raises ``FileNotFoundError`` for a missing file,
    :class:`UnsafePickleError` for a pickle that asks for anything outside the
    allow-list (nothing it names is called) or makes a dtype or an array NumPy
    would not, and ``ValueError`` naming the file for an empty, truncated or
    corrupt one, and for one whose shared references stand for more than
    :data:`_EXPAND_RATIO` times its size as one array (see :func:`_check_loaded`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, expected a pickle file")
    special = special_file_kind(path)
    if special:
        raise ValueError(f"{path}: is {special}, expected a pickle file")
    with open_regular(path) as f:  # never blocks, should a FIFO replace it meanwhile
        head = f.read(len(_NPY_MAGIC))
        if not head:
            raise ValueError(f"{path}: empty file (0 bytes), expected a pickle")
        if head == _NPY_MAGIC:
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except MemoryError:
                raise
            except Exception as e:  # NumPy's header parser fails in many ways too
                raise ValueError(f"{path}: unreadable .npy file "
                                 f"({type(e).__name__}: {e})") from None
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        try:
            obj = _SafeUnpickler(f, size, encoding="latin1").load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except EOFError:
            raise ValueError(f"{path}: truncated pickle (the file ends before the pickle "
                             f"does; {os.path.getsize(path)} bytes)") from None
        except MemoryError:
            raise
        except Exception as e:  # a corrupt stream fails in many ways
            raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") \
                from None
        try:
            _check_loaded(obj, size, path)
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        if f.read(1):
            warnings.warn(f"{path}: the file holds more data after the first pickle; only "
                          "the first object was read", stacklevel=2)
    return obj


# ---------------------------------------------------------------------------
# X and y as users have them


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        return f"a dict (keys {keys}{', ...' if len(obj) > 5 else ''})"
    if isinstance(obj, np.ndarray):
        return f"an array of shape {obj.shape} and dtype {obj.dtype}"
    return f"a {type(obj).__name__}"


def _check_finite_and_range(X: np.ndarray, src: str, chunk_bytes: int = 1 << 26) -> None:
    """NaN / inf in float X raise; values outside [0, 255] warn. Reads X in
    chunks, so a memory-mapped X is never loaded whole."""
    if X.dtype == np.uint8:
        return  # finite and in range by construction
    n = len(X)
    per = max(1, chunk_bytes // max(1, X[:1].nbytes))
    lo, hi = math.inf, -math.inf
    for s in range(0, n, per):
        b = X[s:s + per]
        if X.dtype.kind == "f":
            finite = np.isfinite(b)
            if not finite.all():
                bad = finite.reshape(len(b), -1).all(axis=1)
                first = s + int(np.flatnonzero(~bad)[0])
                nan = int(np.isnan(b).sum())
                raise ValueError(f"{src}: X contains NaN or infinite values (first in image "
                                 f"{first}; {nan} NaN and {int((~finite).sum()) - nan} "
                                 "infinite in that part of X)")
        if b.size:
            lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
    if lo < 0 or hi > 255:
        warnings.warn(f"{src}: X has values in [{lo:g}, {hi:g}], outside the [0, 255] (or "
                      "[0, 1]) range of images; preprocessing expects pixel values",
                      stacklevel=4)


def _as_images(obj, src: str) -> np.ndarray:
    """X as the tutorials save it -> an N x H x W (x C) array of its own dtype."""
    if isinstance(obj, (list, tuple)):
        if len(obj) == 0:
            raise ValueError(f"{src}: expected images, found an empty {type(obj).__name__}")
        if all(isinstance(o, np.ndarray) for o in obj):
            shapes = {o.shape for o in obj}
            if len(shapes) > 1:
                first = obj[0].shape
                i = next(i for i, o in enumerate(obj) if o.shape != first)
                raise ValueError(f"{src}: expected images of one shape, found {first} "
                                 f"(image 0) and {obj[i].shape} (image {i})")
            X = np.stack(obj)
        else:
            try:
                X = np.asarray(obj)
            except ValueError as e:
                raise ValueError(f"{src}: expected images of one shape ({e})") from None
    elif isinstance(obj, np.ndarray):
        X = obj
    else:
        raise ValueError(f"{src}: expected an array of images (N, H, W[, C]), found "
                         f"{_describe(obj)}")
    if X.dtype.kind not in "uif":
        raise ValueError(f"{src}: expected numeric pixels (uint8 or float), found "
                         f"{_describe(X)}")
    if X.ndim not in (3, 4) or (X.ndim == 4 and X.shape[3] not in (1, 3)):
        raise ValueError(f"{src}: expected images of shape (N, H, W), (N, H, W, 1) or "
                         f"(N, H, W, 3), found {_describe(X)}")
    if X.shape[0] == 0 or X.size == 0:
        raise ValueError(f"{src}: expected images, found {_describe(X)} (empty)")
    _check_finite_and_range(X, src)
    return X


def _label_type(v) -> str:
    if isinstance(v, (str, np.str_)):
        return "str"
    if isinstance(v, (bytes, np.bytes_)):
        return "bytes"
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "row"
    return type(v).__name__


def _labels_array(y, src: str) -> np.ndarray:
    """Labels as users have them (list or array of ints, strings, one-hot rows)
    -> a 1-D array of labels or a 2-D array of rows; mixed types raise."""
    if not isinstance(y, (list, tuple, np.ndarray)) and hasattr(y, "__array__"):
        y = np.asarray(y)  # a pandas Series, a torch tensor
    if isinstance(y, np.ndarray) and y.dtype == object:
        y = y.tolist()  # strings from pandas: check the types, then a str array
    if isinstance(y, (list, tuple)):
        if len(y) == 0:
            raise ValueError(f"{src}: expected labels, found an empty {type(y).__name__}")
        kinds = {_label_type(v) for v in y}
        if len(kinds) > 1:
            raise ValueError(f"{src}: labels of mixed types ({', '.join(sorted(kinds))}); "
                             "expected all ints, all strings or all one-hot rows")
        (kind,) = kinds
        if kind not in ("str", "bytes", "bool", "number", "row"):
            raise ValueError(f"{src}: expected labels (ints, strings or one-hot rows), found "
                             f"a list of {kind}")
        try:
            y = np.asarray(y)
        except ValueError as e:
            raise ValueError(f"{src}: one-hot rows of different lengths ({e})") from None
    elif not isinstance(y, np.ndarray):
        raise ValueError(f"{src}: expected labels (a list or array), found {_describe(y)}")
    if y.dtype.kind not in "biufUS":
        raise ValueError(f"{src}: expected int, float or string labels, found {_describe(y)}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise ValueError(f"{src}: expected labels (N,) or one-hot rows (N, C), found "
                         f"{_describe(y)}")
    if len(y) == 0:
        raise ValueError(f"{src}: expected labels, found {_describe(y)} (empty)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{src}: labels contain NaN or infinite values")
    return y


def load_pickles(x_path, y_path):
    """Read the tutorial's ``X.pickle`` and ``y.pickle`` safely: returns ``(X, y)``.

    X is an ndarray of shape (N, H, W) or (N, H, W, C), C in (1, 3), with the
    dtype it was saved with (never converted to float); a list of arrays of one
    shape is stacked. y is an ndarray: (N,) labels (ints, strings) or (N, C)
    one-hot rows. Either path may be a ``.npy`` file, opened memory-mapped.

    Raises ``ValueError`` naming the file for an empty, truncated or corrupt
    pickle, a pickle of something else (a dict, a model), NaN or infinite values
    in a float X, labels of mixed types, and X and y of different lengths; warns
    when X has values outside [0, 255].
    """
    x_path, y_path = os.fspath(x_path), os.fspath(y_path)
    X = _as_images(load_pickle(x_path), x_path)
    y = _labels_array(load_pickle(y_path), y_path)
    if len(X) != len(y):
        raise ValueError(f"{x_path} holds {len(X)} images but {y_path} holds {len(y)} labels; "
                         "expected one label per image")
    return X, y


# ---------------------------------------------------------------------------
# labels


def _is_one_hot(y: np.ndarray) -> bool:
    return (y.ndim == 2 and y.dtype.kind in "biuf" and bool(((y == 0) | (y == 1)).all())
            and bool((y.sum(axis=1) == 1).all()))


class LabelEncoder:
    """Labels <-> integer codes <-> one-hot rows (scikit-learn's LabelEncoder with
    Keras's ``to_categorical``; scikit-learn's own computes the classes and codes
    of 1-D labels where it is installed).

    ``fit`` takes ints (the tutorial's 0/1), strings (``"cat"``, ``"dog"``) or
    one-hot rows; ``classes_`` holds the sorted distinct labels (for one-hot rows:
    ``0 .. C-1``), and code ``i`` stands for ``classes_[i]``. Two classes give two
    one-hot columns, as the tutorial's two softmax outputs.

        >>> enc = LabelEncoder().fit(["dog", "cat", "dog"])
        >>> enc.classes_.tolist(), enc.transform(["cat", "dog"]).tolist()
        (['cat', 'dog'], [0, 1])
        >>> enc.to_categorical(["dog"])
        array([[0., 1.]], dtype=float32)
    """

    def __init__(self):
        self.classes_ = None

    def __repr__(self):
        return f"LabelEncoder(classes_={None if self.classes_ is None else self.classes_.tolist()})"

    def _check_fitted(self):
        if self.classes_ is None:
            raise RuntimeError("LabelEncoder: call fit(y) first")

    def fit(self, y):
        """Learn the classes of y; a single class raises ValueError."""
        y = _labels_array(y, "y")
        if y.ndim == 2:
            if not _is_one_hot(y):
                raise ValueError(f"y: expected labels (N,) or one-hot rows of 0/1 with one 1 "
                                 f"per row, found shape {y.shape}")
            classes = np.arange(y.shape[1])
            present = np.unique(y.argmax(axis=1))
        else:
            sk = _sklearn("preprocessing")
            classes = present = sk.LabelEncoder().fit(y).classes_ if sk is not None \
                else np.unique(y)
        if len(present) < 2:
            raise ValueError(f"y: found a single class ({present[0]!r}); a classifier needs "
                             "at least two")
        self.classes_ = classes
        return self

    def transform(self, y) -> np.ndarray:
        """Integer codes (int64, shape (N,)) of labels or one-hot rows."""
        self._check_fitted()
        y = _labels_array(y, "y")
        if y.ndim == 2:
            if not _is_one_hot(y) or y.shape[1] != len(self.classes_):
                raise ValueError(f"y: expected one-hot rows of {len(self.classes_)} columns, "
                                 f"found shape {y.shape}")
            return y.argmax(axis=1).astype(np.int64)
        if (y.dtype.kind in "US") != (self.classes_.dtype.kind in "US"):
            raise ValueError(f"y: labels of dtype {y.dtype} but the encoder was fitted on "
                             f"{self.classes_.dtype} labels {self.classes_.tolist()}")
        codes = np.searchsorted(self.classes_, y)
        codes = np.minimum(codes, len(self.classes_) - 1)
        unknown = self.classes_[codes] != y
        if unknown.any():
            bad = np.unique(y[unknown])[:5].tolist()
            raise ValueError(f"y: labels {bad} are not among the fitted classes "
                             f"{self.classes_.tolist()}")
        sk = _sklearn("preprocessing")
        if sk is not None:
            enc = sk.LabelEncoder()
            enc.classes_ = self.classes_
            codes = enc.transform(y)
        return codes.astype(np.int64)

    def fit_transform(self, y) -> np.ndarray:
        return self.fit(y).transform(y)

    def inverse_transform(self, codes) -> np.ndarray:
        """Labels of integer codes, or of rows of scores (one-hot, probabilities:
        the argmax of each row)."""
        self._check_fitted()
        codes = np.asarray(codes)
        if codes.ndim == 2:
            if codes.shape[1] != len(self.classes_):
                raise ValueError(f"codes: expected rows of {len(self.classes_)} scores, "
                                 f"found shape {codes.shape}")
            codes = codes.argmax(axis=1)
        if codes.ndim != 1 or (codes.size and codes.dtype.kind not in "iu"):
            raise ValueError(f"codes: expected integer codes (N,), found dtype {codes.dtype} "
                             f"and shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= len(self.classes_)):
            raise ValueError(f"codes: expected codes in [0, {len(self.classes_)}), found "
                             f"[{codes.min()}, {codes.max()}]")
        return self.classes_[codes.astype(np.intp)]

    def to_categorical(self, y) -> np.ndarray:
        """One-hot rows, float32 (N, len(classes_)), as Keras's to_categorical."""
        codes = self.transform(y)
        out = np.zeros((len(codes), len(self.classes_)), dtype=np.float32)
        out[np.arange(len(codes)), codes] = 1.0
        return out

    one_hot = to_categorical


class LabelBinarizer:
    """scikit-learn's ``LabelBinarizer`` (same arrays, without scikit-learn): labels
    -> one column per class of ``neg_label`` / ``pos_label`` (int64), except that
    two classes give **one** column (1 for ``classes_[1]``), as the PyImageSearch
    code relies on before calling ``to_categorical``::

        lb = vggtl.LabelBinarizer()
        labels = vggtl.to_categorical(lb.fit_transform(labels))   # (N, 2) for two classes

    ``classes_`` are the sorted distinct labels (ints, floats with integral values,
    strings); a 0/1 matrix (multilabel indicator) keeps its columns. One class
    gives a single column of ``neg_label``. ``inverse_transform`` maps rows back
    (one column: > threshold, default halfway between the labels; else argmax).
    """

    def __init__(self, neg_label: int = 0, pos_label: int = 1, sparse_output: bool = False):
        if neg_label >= pos_label:
            raise ValueError(f"neg_label={neg_label} must be strictly less than "
                             f"pos_label={pos_label}")
        if sparse_output:
            raise ValueError("sparse_output: vggtl returns dense arrays only")
        self.neg_label, self.pos_label, self.sparse_output = neg_label, pos_label, False
        self.classes_ = None
        self.y_type_ = None

    def __repr__(self):
        return f"LabelBinarizer(classes_={None if self.classes_ is None else self.classes_.tolist()})"

    @staticmethod
    def _kind(y: np.ndarray) -> str:
        if y.ndim == 2 and y.shape[1] > 1:
            if y.dtype.kind in "biuf" and bool(np.isin(y, (0, 1)).all()):
                return "multilabel-indicator"
            raise ValueError(f"y: expected labels (N,) or a 0/1 matrix, found shape {y.shape}")
        if y.dtype.kind == "f" and not bool((np.mod(y, 1) == 0).all()):
            raise ValueError("y: continuous values; LabelBinarizer needs class labels")
        return "binary" if len(np.unique(y)) <= 2 else "multiclass"

    def fit(self, y):
        y = _labels_array(y, "y")
        self.y_type_ = self._kind(y)
        self.classes_ = np.arange(y.shape[1]) if self.y_type_ == "multilabel-indicator" \
            else np.unique(y)
        return self

    def fit_transform(self, y) -> np.ndarray:
        return self.fit(y).transform(y)

    def transform(self, y) -> np.ndarray:
        if self.classes_ is None:
            raise RuntimeError("LabelBinarizer: call fit(y) first")
        y = _labels_array(y, "y")
        if self._kind(y) == "multilabel-indicator":
            if self.y_type_ != "multilabel-indicator" or y.shape[1] != len(self.classes_):
                raise ValueError(f"y: a 0/1 matrix of shape {y.shape} for a binarizer fitted "
                                 f"on {self.y_type_} labels")
            return np.where(y == 1, self.pos_label, self.neg_label).astype(np.int64)
        if (y.dtype.kind in "US") != (self.classes_.dtype.kind in "US"):
            raise ValueError(f"y: labels of dtype {y.dtype} but the binarizer was fitted on "
                             f"{self.classes_.dtype} labels")
        unknown = ~np.isin(y, self.classes_)
        if unknown.any() and len(self.classes_) > 2:
            pass  # scikit-learn gives an all-negative row for an unseen label
        elif unknown.any():
            raise ValueError(f"y: labels {np.unique(y[unknown])[:5].tolist()} are not among "
                             f"the fitted classes {self.classes_.tolist()}")
        k = len(self.classes_)
        if k == 1:
            return np.full((len(y), 1), self.neg_label, dtype=np.int64)
        out = np.full((len(y), k), self.neg_label, dtype=np.int64)
        for j, c in enumerate(self.classes_):
            out[y == c, j] = self.pos_label
        return out[:, 1:] if k == 2 else out

    def inverse_transform(self, Y, threshold=None) -> np.ndarray:
        if self.classes_ is None:
            raise RuntimeError("LabelBinarizer: call fit(y) first")
        Y = np.asarray(Y)
        if threshold is None:
            threshold = (self.pos_label + self.neg_label) / 2.0
        if self.y_type_ == "multilabel-indicator":
            return (Y > threshold).astype(np.int64)
        if Y.ndim != 2:
            raise ValueError(f"Y: expected rows (N, k), got shape {Y.shape}")
        if Y.shape[1] == 1 and len(self.classes_) <= 2:
            return self.classes_[(Y[:, 0] > threshold).astype(np.intp) if
                                 len(self.classes_) == 2 else np.zeros(len(Y), np.intp)]
        return self.classes_[Y.argmax(axis=1)]


def to_categorical(y, num_classes=None, dtype="float32") -> np.ndarray:
    """Keras's ``to_categorical``: integer class vector -> one-hot rows. A trailing
    axis of 1 is dropped (so ``LabelBinarizer``'s one column for two classes gives
    two columns); ``num_classes`` defaults to ``max(y) + 1``."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not bool((np.mod(y, 1) == 0).all())):
        raise ValueError(f"y: expected integer class indices, got {y.dtype}")
    y = y.astype(np.int64)
    shape = y.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    y = y.reshape(-1)
    if y.size and y.min() < 0:
        raise ValueError(f"y: class indices must be >= 0, found {y.min()}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    elif y.size and y.max() >= num_classes:
        raise ValueError(f"y: class {y.max()} does not fit num_classes={num_classes}")
    out = np.zeros((len(y), num_classes), dtype=dtype)
    out[np.arange(len(y)), y] = 1
    return out.reshape(shape + (num_classes,))


# ---------------------------------------------------------------------------
# splits


def _take(A, idx: np.ndarray):
    """A[idx]: a view when idx is one increasing run, else a copy of those rows only."""
    if isinstance(A, (list, tuple)):
        return [A[i] for i in idx]
    if len(idx) == 0:
        return A[0:0]
    if idx[-1] - idx[0] == len(idx) - 1 and (len(idx) == 1 or bool((np.diff(idx) == 1).all())):
        return A[int(idx[0]):int(idx[-1]) + 1]
    return A[idx]


def _size_kind(v, name: str):
    """scikit-learn's reading of test_size / train_size: 'i', 'f' or None."""
    if v is None:
        return None
    kind = np.asarray(v).dtype.kind
    if kind not in ("i", "u", "f") or np.ndim(v) != 0:
        raise ValueError(f"{name}: expected a float in (0, 1), an int or None, got {v!r}")
    return "f" if kind == "f" else "i"


def _split_sizes(n: int, test_size, train_size):
    """(n_train, n_test) exactly as scikit-learn's _validate_shuffle_split."""
    if test_size is None and train_size is None:
        test_size = 0.25
    te, tr = _size_kind(test_size, "test_size"), _size_kind(train_size, "train_size")
    for name, v, kind in (("test_size", test_size, te), ("train_size", train_size, tr)):
        if (kind == "i" and not 0 < v < n) or (kind == "f" and not 0 < v < 1):
            raise ValueError(f"{name}={v!r}: expected an int in [1, {n - 1}] (of {n} samples) "
                             f"or a float in the (0, 1) range")
    if te == "f" and tr == "f" and train_size + test_size > 1:
        raise ValueError(f"test_size + train_size = {train_size + test_size}: expected at most 1")
    n_test = math.ceil(test_size * n) if te == "f" else (int(test_size) if te else None)
    n_train = math.floor(train_size * n) if tr == "f" else (int(train_size) if tr else None)
    if n_train is None:
        n_train = n - n_test
    elif n_test is None:
        n_test = n - n_train
    if n_train + n_test > n:
        raise ValueError(f"test_size={test_size!r} and train_size={train_size!r} ask for "
                         f"{n_train + n_test} samples of {n}")
    if n_train == 0:
        raise ValueError(f"test_size={test_size!r} with {n} samples leaves no training sample")
    return n_train, n_test


def _random_state(random_state) -> np.random.RandomState:
    """scikit-learn's check_random_state; a Generator seeds a RandomState with one draw."""
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.RandomState(int(random_state.integers(0, 2 ** 32)))
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return np.random.RandomState(int(random_state))
    raise ValueError(f"random_state: expected None, an int or a numpy RandomState, got "
                     f"{random_state!r}")


def _approximate_mode(class_counts, n_draws, rng):
    """scikit-learn's _approximate_mode: samples per class, ties broken by rng."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


# scikit-learn splits and encodes where it is installed; False (the tests' switch) forces
# the NumPy versions below, which are what runs without scikit-learn
_USE_SKLEARN = True


def _sklearn(sub: str):
    """sklearn.<sub> (model_selection, preprocessing), or None."""
    if not _USE_SKLEARN:
        return None
    try:
        import importlib
        return importlib.import_module(f"sklearn.{sub}")
    except ImportError:
        return None


def _stratified_indices(key, n_train, n_test, rng):
    """scikit-learn's StratifiedShuffleSplit, first split (its own where installed)."""
    key = np.asarray(key)
    if key.ndim == 2:  # one-hot or multi-column labels: each distinct row is a class
        key = np.array([" ".join(row.astype("str")) for row in key])
    classes, y_indices, class_counts = np.unique(key, return_inverse=True, return_counts=True)
    y_indices = y_indices.reshape(-1)
    if class_counts.min() < 2:
        raise ValueError(f"y: class {classes[class_counts < 2].tolist()} has only one sample; a "
                         f"stratified split needs at least two per class (pass stratify=None)")
    for name, m in (("train", n_train), ("test", n_test)):
        if m < len(classes):
            raise ValueError(f"{name} part of {m} samples for {len(classes)} classes: a "
                             f"stratified split needs one per class")
    sk = _sklearn("model_selection")
    if sk is not None:
        cv = sk.StratifiedShuffleSplit(n_splits=1, test_size=n_test, train_size=n_train,
                                       random_state=rng)
        return next(cv.split(np.zeros((len(key), 1), dtype=np.int8), key))
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        perm = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[:n_i[i]])
        test.extend(perm[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def train_test_split(*arrays, test_size=None, train_size=None, random_state=42, shuffle=True,
                     stratify=True, return_indices=False):
    """Split arrays into train and test parts: scikit-learn's ``train_test_split``,
    the same indices for the same arguments (its ShuffleSplit and
    StratifiedShuffleSplit where scikit-learn is installed; without it, the same
    redone on NumPy's legacy RandomState). Returns ``X_train, X_test, y_train,
    y_test, ...`` in its order.

        vggtl.train_test_split(X, y, test_size=0.25, stratify=y, random_state=42)

    gives scikit-learn's split of the seed. Arguments as scikit-learn's:
    ``test_size`` / ``train_size`` (floats are fractions, ints counts; test_size
    0.25 when both are None), ``random_state`` (None, an int, a RandomState; a
    ``np.random.Generator`` seeds a RandomState with one draw), ``shuffle``
    (False: the first samples train, the next test, no stratification),
    ``stratify`` (an array of labels or one-hot rows; None or False: not stratified).

    Two defaults differ from scikit-learn's, for the tutorial: ``stratify=True``
    stratifies a shuffled split on the second array (y; with one array there is
    nothing to stratify on) and ``random_state=42``; pass ``stratify=None,
    random_state=None`` for scikit-learn's defaults. ``shuffle=False`` with the
    default splits as scikit-learn's does; with an array for ``stratify`` it is
    refused, as there.

    Nothing is copied that need not be: ``return_indices=True`` returns only
    ``(train_idx, test_idx)`` and never reads the arrays (a memory-mapped X stays
    on disk); otherwise a part whose indices form one run is a view (the case
    with shuffle=False), and other parts copy only their own rows. Lists of
    labels come back as arrays.
    """
    if not arrays:
        raise ValueError("train_test_split: expected at least one array")
    for i, a in enumerate(arrays):
        if np.ndim(a) == 0 or isinstance(a, (str, bytes)):
            raise TypeError(f"arrays[{i}]: expected an array (pass test_size=... and the "
                            f"others by name), got {a!r}")
    n = len(arrays[0])
    parts = [arrays[0]]
    for i, a in enumerate(arrays[1:], 1):
        a = a if isinstance(a, np.ndarray) else _labels_array(a, "y" if i == 1 else f"arrays[{i}]")
        if len(a) != n:
            raise ValueError(f"X has {n} samples but {'y' if i == 1 else f'arrays[{i}]'} has "
                             f"{len(a)}; expected one label each")
        parts.append(a)
    n_train, n_test = _split_sizes(n, test_size, train_size)
    if stratify is True:
        strat = parts[1] if len(parts) > 1 else None
    elif stratify is None or stratify is False:
        strat = None
    else:
        strat = stratify if isinstance(stratify, np.ndarray) else np.asarray(
            _labels_array(stratify, "stratify"))
        if len(strat) != n:
            raise ValueError(f"stratify has {len(strat)} labels for {n} samples")
    if not shuffle:
        if strat is not None and stratify is not True:
            raise ValueError("shuffle=False: a stratified split needs shuffling; pass "
                             "stratify=None")
        train_idx, test_idx = np.arange(n_train), np.arange(n_train, n_train + n_test)
    else:
        rng = _random_state(random_state)
        sk = _sklearn("model_selection") if strat is None else None
        if sk is not None:
            cv = sk.ShuffleSplit(n_splits=1, test_size=n_test, train_size=n_train,
                                 random_state=rng)
            train_idx, test_idx = next(cv.split(np.zeros((n, 1), dtype=np.int8)))
        elif strat is None:
            perm = rng.permutation(n)
            test_idx, train_idx = perm[:n_test], perm[n_test:n_test + n_train]
        else:
            train_idx, test_idx = _stratified_indices(strat, n_train, n_test, rng)
    train_idx = np.asarray(train_idx, dtype=np.intp)
    test_idx = np.asarray(test_idx, dtype=np.intp)
    if return_indices:
        return train_idx, test_idx
    out = []
    for a in parts:
        out += [_take(a, train_idx), _take(a, test_idx)]
    return out


# ---------------------------------------------------------------------------
# resizing


def resize(X, size, *, out=None, batch_bytes=1 << 25):
    """Resize images bilinearly in C, as Pillow's ``Image.resize(BILINEAR)`` (with
    antialiasing when shrinking; uint8 results within +-1 of Pillow's).

    X: (N, H, W) or (N, H, W, C) images (any C), a memmap or a list of arrays of
    one shape. size: ``(height, width)`` of the result (Keras's ``target_size``
    order; Pillow's ``size`` is ``(width, height)``). uint8 X gives uint8, any
    other X float32 (converted a batch at a time, never as a whole). ``out``:
    an array of the result's shape and dtype to write into (for instance a
    ``np.lib.format.open_memmap``), else a new one is returned. Batches of about
    ``batch_bytes`` of input go through the core.
    """
    if isinstance(X, (list, tuple)):
        X = _as_images(X, "X")
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X: expected a numpy array of images, got {type(X).__name__}")
    if X.dtype.kind not in "uif":
        raise TypeError(f"X: expected uint8 or float pixels, got dtype {X.dtype}")
    if X.ndim not in (3, 4):
        raise ValueError(f"X: expected (N, H, W) or (N, H, W, C) images, got shape {X.shape}")
    try:
        oh, ow = (int(s) for s in size)
    except (TypeError, ValueError):
        raise TypeError(f"size: expected (height, width), got {size!r}") from None
    if oh < 1 or ow < 1 or any(isinstance(s, bool) or int(s) != s for s in size):
        raise ValueError(f"size: expected two positive ints (height, width), got {size!r}")
    gray = X.ndim == 3
    n = X.shape[0]
    dtype = np.dtype(np.uint8) if X.dtype == np.uint8 else np.dtype(np.float32)
    shape = (n, oh, ow) + (() if gray else (X.shape[3],))
    if out is None:
        out = np.empty(shape, dtype)
    elif not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype \
            or not out.flags.writeable:
        raise ValueError(f"out: expected a writeable {dtype} array of shape {shape}, got "
                         f"{_describe(out)}")
    per = max(1, int(batch_bytes) // max(1, X[:1].nbytes))
    for s in range(0, n, per):
        xb = X[s:s + per]
        if gray:
            xb = xb[..., None]
        if xb.dtype != np.uint8:
            xb = xb.astype(np.float32)
        r = _core.resize(for_core(xb), oh, ow)
        out[s:s + per] = r[..., 0] if gray else r
    return out


# ---------------------------------------------------------------------------
# .npy files


def to_npy(x_pickle_path, out_path):
    """Convert the images of a pickle (as :func:`load_pickles` reads X) into a
    ``.npy`` file that ``np.load(out_path, mmap_mode="r")`` opens without reading
    it into memory. Returns ``out_path``.

    The file is written to a temporary name in the same directory, fsynced and
    renamed over ``out_path``: a reader never sees half a file, and a failure
    leaves any existing ``out_path`` as it was. The conversion itself holds X in
    memory once (as the unpickled array).
    """
    src = os.fspath(x_pickle_path)
    out_path = os.fspath(out_path)
    X = _as_images(load_pickle(src), src)
    with atomic_open(out_path) as f:
        np.lib.format.write_array(f, X, allow_pickle=False)
    return out_path
