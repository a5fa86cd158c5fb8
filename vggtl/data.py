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
import sys
import warnings

import numpy as np

from . import _core
from ._atomic import atomic_open

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
    "train_test_split",
    "resize",
    "to_npy",
]

# ---------------------------------------------------------------------------
# the restricted unpickler


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for something outside vggtl's allow-list (a global such as
    ``os.system``, an object dtype, a non-NumPy object state). Raised as soon as
    the pickle names it, before it is called. Also a ``ValueError``: a pickle of a
    model or any other object is bad input to :func:`load_pickles`."""


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


class _BoundedReader:
    """The pickle file as the unpickler reads it: a read of more bytes than the
    file has left raises EOFError (a truncated pickle) before anything is
    allocated. A 30-byte pickle can claim 2**60 bytes of BINBYTES8,
    BINUNICODE8, FRAME or BYTEARRAY8 data; a plain file's read(n) allocates n
    bytes first."""

    def __init__(self, f, size: int):
        self._f, self._left = f, size

    def read(self, n=-1):
        if n is None or n < 0:
            n = self._left
        if n > self._left:
            raise EOFError
        b = self._f.read(n)
        self._left -= len(b)
        return b

    def readinto(self, buf):
        if memoryview(buf).nbytes > self._left:
            raise EOFError
        k = self._f.readinto(buf)
        self._left -= k
        return k

    def readline(self):
        b = self._f.readline()  # bounded by the file: it stops at its end
        self._left -= len(b)
        return b


class _SafeUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be amended; the C one's
    cannot) with an allow-list for globals and a checked BUILD.

    BUILD is where NumPy applies a dtype's or an array's state; NumPy's own
    dtype.__setstate__ accepts flags that mark a uint8 dtype as holding object
    pointers, and sizes that do not fit the dtype, so the state is checked against
    what NumPy writes before it is applied, and BUILD on anything but a dtype or an
    ndarray is refused. A dtype gets its state once, right after the pickle made
    it: a second BUILD would change a dtype that arrays already use.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, file_size: int, **kw):
        super().__init__(_BoundedReader(file, file_size), **kw)
        self._file_size = file_size
        self._unbuilt = {}  # id -> dtype made by this pickle, not yet given its state

    def find_class(self, module, name):
        try:
            obj = _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"the pickle asks for the global {module}.{name}, which vggtl does not "
                "allow (only NumPy arrays, NumPy scalars and plain Python values); "
                "nothing was run") from None
        return self._new_dtype if obj is _safe_dtype else obj

    def _new_dtype(self, *args):
        d = _safe_dtype(*args)
        self._unbuilt[id(d)] = d  # the reference keeps the id unique
        return d

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle uses persistent ids, which vggtl does not allow")

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

    dispatch[pickle.BUILD[0]] = _load_build

    def _load_bytearray8(self):
        """Protocol 5's in-band array data, read into the bytearray in 4 MiB
        chunks: the pure-Python unpickler reads it whole as bytes and copies it
        (3x X at peak)."""
        (n,) = struct.unpack("<Q", self.read(8))
        if n > sys.maxsize:
            raise pickle.UnpicklingError("BYTEARRAY8 exceeds the maximum size")
        if n > self._file_size:  # never allocate (and zero) more than the file holds
            raise EOFError
        b = bytearray(n)
        view = memoryview(b)
        pos = 0
        while pos < n:
            chunk = self.read(min(n - pos, 1 << 22))
            if not chunk:
                raise EOFError
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        self.append(b)

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


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
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
        if not head:
            raise ValueError(f"{path}: empty file (0 bytes), expected a pickle")
        if head == _NPY_MAGIC:
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{path}: unreadable .npy file ({e})") from None
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
    Keras's ``to_categorical``).

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
            classes = present = np.unique(y)
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


def _test_count(test_size, n: int) -> int:
    if isinstance(test_size, bool):
        raise TypeError("test_size: expected a float in (0, 1) or an int, got a bool")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size: expected a float in (0, 1), got {test_size}")
        n_test = math.ceil(float(test_size) * n)
    elif isinstance(test_size, (int, np.integer)):
        n_test = int(test_size)
    else:
        raise TypeError(f"test_size: expected a float or an int, got {type(test_size).__name__}")
    if not 1 <= n_test <= n - 1:
        raise ValueError(f"test_size={test_size} with {n} samples leaves {n_test} test and "
                         f"{n - n_test} training samples; both need at least one")
    return n_test


def _stratified_test_counts(counts: np.ndarray, n_test: int, rng) -> np.ndarray:
    """Test samples per class, proportional to the class sizes (largest
    remainders get the leftover samples, ties broken at random)."""
    exact = counts * (n_test / counts.sum())
    take = np.floor(exact).astype(np.int64)
    left = n_test - int(take.sum())
    if left > 0:
        frac = exact - take
        order = np.lexsort((rng.random(len(counts)), -frac))
        take[order[:left]] += 1
    return take


def train_test_split(X, y, test_size=0.25, stratify=True, random_state=42,
                     return_indices=False, shuffle=True):
    """Split X and y into train and test parts, as scikit-learn's (same argument
    names and return order: ``X_train, X_test, y_train, y_test``).

    stratify: True keeps the class proportions of y in both parts (y may be
    labels or one-hot rows), an array stratifies on it instead, False / None
    does not. random_state: an int, None or a ``np.random.Generator`` (the
    permutation is NumPy's, not scikit-learn's). shuffle=False (with
    stratify=False) takes the last samples as the test part.

    Nothing is copied that need not be: ``return_indices=True`` returns only
    ``(train_idx, test_idx)`` and never reads X (a memory-mapped X stays on
    disk); otherwise a part whose indices form one run is a view of X (the case
    with shuffle=False), and other parts copy only their own rows.
    """
    n = len(X)
    y_arr = y if isinstance(y, np.ndarray) else _labels_array(y, "y")
    if len(y_arr) != n:
        raise ValueError(f"X has {n} samples but y has {len(y_arr)}; expected one label each")
    n_test = _test_count(test_size, n)
    strat = None
    if stratify is True:
        strat = y_arr
    elif stratify is not None and stratify is not False:
        strat = _labels_array(stratify, "stratify")
        if len(strat) != n:
            raise ValueError(f"stratify has {len(strat)} labels for {n} samples")
    if not shuffle:
        if strat is not None:
            raise ValueError("shuffle=False: a stratified split needs shuffling; pass "
                             "stratify=False")
        train_idx, test_idx = np.arange(n - n_test), np.arange(n - n_test, n)
    else:
        rng = np.random.default_rng(random_state)
        if strat is None:
            perm = rng.permutation(n)
            test_idx, train_idx = perm[:n_test], perm[n_test:]
        else:
            key = strat.argmax(axis=1) if strat.ndim == 2 else strat
            classes, codes = np.unique(key, return_inverse=True)
            codes = codes.reshape(-1)
            counts = np.bincount(codes, minlength=len(classes))
            if len(classes) < 2:
                raise ValueError(f"y: found a single class ({classes[0]!r}); a stratified "
                                 "split needs at least two (pass stratify=False)")
            if counts.min() < 2:
                raise ValueError(f"y: class {classes[counts.argmin()]!r} has only one sample; "
                                 "a stratified split needs at least two per class")
            if n_test < len(classes) or n - n_test < len(classes):
                raise ValueError(f"test_size={test_size}: {n_test} test and {n - n_test} "
                                 f"training samples for {len(classes)} classes; both parts "
                                 "need one per class")
            per_class = _stratified_test_counts(counts, n_test, rng)
            order = np.argsort(codes, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)])
            tests, trains = [], []
            for c in range(len(classes)):
                members = rng.permutation(order[starts[c]:starts[c + 1]])
                tests.append(members[:per_class[c]])
                trains.append(members[per_class[c]:])
            test_idx = rng.permutation(np.concatenate(tests))
            train_idx = rng.permutation(np.concatenate(trains))
    train_idx, test_idx = train_idx.astype(np.intp), test_idx.astype(np.intp)
    if return_indices:
        return train_idx, test_idx
    return _take(X, train_idx), _take(X, test_idx), _take(y_arr, train_idx), \
        _take(y_arr, test_idx)


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
        r = _core.resize(np.ascontiguousarray(xb), oh, ow)
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
