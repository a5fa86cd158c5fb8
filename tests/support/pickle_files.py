"""Crafted pickles of the tutorial's X and y, opcode by opcode, for tests/api/test_data.py
and the fuzz seeds (fuzz/seeds.py): what NumPy and pickle never write but a file from
a stranger can hold. Nothing here imports vggtl.
"""
import io
import pickle

import numpy as np


def ops(obj) -> bytes:
    """The opcodes that push obj (no PROTO, no STOP, no memo): to splice into a pickle."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=3)
    p.fast = True  # no BINPUT: the spliced opcodes leave the pickle's memo alone
    p.dump(obj)
    return buf.getvalue()[2:-1]


def array_then_dtype_state(type_str, n, data, state) -> bytes:
    """A protocol-3 pickle of an array of n items of dtype(type_str) that gets its
    dtype's BUILD state only after the array has taken the dtype: never what NumPy
    writes (it builds the dtype first), but what a crafted file can do. Without a
    check, the state changes an array that already exists."""
    return (b"\x80\x03"
            + b"cnumpy\ndtype\n" + ops(type_str) + b"\x89\x88\x87Rq\x01"       # memo 1: the dtype
            + b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            + b"K\x00\x85C\x01b\x87R"                                          # an empty array
            + b"(K\x01" + ops((n,)) + b"h\x01\x89" + ops(bytes(data)) + b"tb"  # its state
            + b"h\x01" + ops(state) + b"b0"                                    # then the dtype's
            + b".")


def dtype_state_twice() -> bytes:
    """np.array(['abc', 'de']) pickled by NumPy (protocol 2), then its dtype (memo 14)
    given a second state, of size -1, after the array took it: NumPy applies it to
    the dtype the array uses, whose itemsize becomes -1 (``astype`` then wrote out
    of bounds)."""
    b = pickle.dumps(np.array(["abc", "de"]), protocol=2)
    assert b.endswith(b"b.") and b[152:155] == b"q\x0e(", "NumPy pickles arrays otherwise"
    return b[:-1] + b"h\x0e" + ops((3, "<", None, None, None, -1, 4, 8)) + b"b0."


def shared_lists(depth_sizes=(600, 200, 200), protocol=2) -> bytes:
    """Nested lists each holding one list many times (pickle writes the repeats as
    memo references): (600, 200, 200) is 24 million values in 2 kB."""
    obj = list(range(depth_sizes[-1]))
    for n in reversed(depth_sizes[:-1]):
        obj = [obj] * n
    return pickle.dumps(obj, protocol=protocol)
