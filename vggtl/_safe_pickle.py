"""The bounded, allow-listed unpickler both of vggtl's pickle readers stand on:
the tutorial's X and y pickles (:func:`vggtl.data.load_pickle`) and the state
dicts inside torchvision's ``.pth`` files (:mod:`vggtl.weights.torch_pth`).

Each reader brings its own allow-list, its own checks and its own messages; what
they share is here:

- the pure-Python unpickler, not the C one: the C unpickler's memo is an array
  indexed by the pickle's BINPUT numbers, so a LONG_BINPUT of 2**31 makes it
  allocate gigabytes (found by fuzz/fuzz_pth_legacy.py); the Python one keeps a
  dict, and its opcode table can be amended;
- every read bounded by what the file has left (:class:`BoundedReader`);
- ``find_class`` as the only way a pickle reaches a callable (GLOBAL,
  STACK_GLOBAL, INST, OBJ and EXT all go through it): a name outside the
  allow-list is refused before it is imported, let alone called;
- no persistent ids unless a reader asks for them;
- what the allowed callables build charged to a budget of a few times the
  file's size (:func:`charging`): a pickle can call ``bytearray`` on one
  memoised megabyte a million times in a few megabytes of its own.
"""
from __future__ import annotations

import pickle
import struct
import sys
from typing import Mapping, Optional, Tuple

__all__ = ["UnsafePickleError", "BoundedReader", "BoundedUnpickler", "charging"]

# what the objects a pickle builds may take: pickles of arrays build about their
# own size (protocol 2's latin-1 strings and their bytes, three times it)
BUILD_RATIO = 16
BUILD_FLOOR = 64 << 20


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for something outside vggtl's allow-list (a global such as
    ``os.system``, an object dtype, a non-NumPy object state). Raised as soon as
    the pickle names it, before it is called. Also a ``ValueError``: a pickle of a
    model or any other object is bad input to :func:`load_pickles`."""


class BoundedReader:
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


def charging(load):
    """An opcode's handler that charges what it left on the stack (what an
    allowed callable made, or the object BUILD set the state of) to the
    unpickler's budget, once it is made: a single object costs at most what a
    copy of one already charged costs."""
    def charged(self):
        load(self)
        self.charge(self.stack[-1])
    charged.charged = True
    return charged


# every opcode that calls something the allow-list gave: REDUCE (f(*args)),
# NEWOBJ and NEWOBJ_EX (cls.__new__), OBJ and INST (cls(*args)), and BUILD
# (__setstate__, which may copy the state)
CALLING_OPCODES = (pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST,
                   pickle.BUILD)


class BoundedUnpickler(pickle._Unpickler):
    """Reads at most ``size`` bytes of ``file``; a global is what :attr:`allowed`
    maps ``(module, name)`` to, passed through :meth:`resolve`, and any other is
    refused with the exception :meth:`refused` makes.

    What the allowed callables return and what BUILD makes is charged to a
    budget of :data:`BUILD_RATIO` times ``size`` (or :data:`BUILD_FLOOR`); a
    pickle that builds more is refused.

    Subclasses set ``allowed`` and ``refused``; they may amend their own copy of
    ``dispatch`` (``dispatch = dict(BoundedUnpickler.dispatch)``), with a handler
    of :data:`CALLING_OPCODES` wrapped in :func:`charging`."""

    dispatch = dict(pickle._Unpickler.dispatch)
    for _op in CALLING_OPCODES:
        dispatch[_op[0]] = charging(dispatch[_op[0]])
    del _op
    allowed: Mapping[Tuple[str, str], object] = {}

    def __init__(self, file, size: int, budget_size: Optional[int] = None, **kw):
        """``budget_size``: the size the budget is a multiple of, if not ``size``
        (a pickle inside a zip: the archive's, which is what the user has)."""
        super().__init__(BoundedReader(file, size), **kw)
        self._file_size = size
        self._size = size if budget_size is None else budget_size
        self._limit = self._budget = max(BUILD_FLOOR, BUILD_RATIO * self._size)

    def _load_bytearray8(self):
        """Protocol 5's in-band data, checked against the file before the bytearray
        is made (the pure-Python unpickler makes it first: a 1 kB file claiming
        3 GB took 3 GB, found by fuzz/fuzz_pth_legacy.py), then read into it in
        4 MiB chunks (reading it whole as bytes and copying it held it twice)."""
        (n,) = struct.unpack("<Q", self.read(8))
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

    def charge(self, obj) -> None:
        """Take what ``obj`` holds (its own memory, not the objects it refers to,
        which were charged or read when made) from the budget."""
        self._budget -= sys.getsizeof(obj)
        if self._budget < 0:
            raise self.over_budget(
                f"the pickle builds more than {self._limit} "
                f"bytes of objects from a file of {self._size} bytes (a pickle of arrays "
                f"builds about its own size); refused")

    def over_budget(self, message: str) -> Exception:
        """The exception for a pickle that builds more than its budget."""
        return UnsafePickleError(message)

    def find_class(self, module, name):
        obj = self.allowed.get((module, name))
        if obj is None:
            raise self.refused(module, name)
        return self.resolve(obj)

    def refused(self, module: str, name: str) -> Exception:
        return UnsafePickleError(f"the pickle asks for the global {module}.{name}; refused, "
                                 f"nothing was run")

    def resolve(self, obj):
        """What the pickle gets for an allowed global."""
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle uses persistent ids, which vggtl does not allow")
