"""Every input with which a fuzz target (fuzz/) broke its contract, kept as a test.

tests/api/fuzz_crashes/<target>/<what went wrong>.<ext> are the inputs exactly as the
fuzzer saved them; each must now keep the target's contract (fuzz/_weights.py: the
weights or a WeightsError naming the file). They were found against the miniature
VGG16 of fuzz/seeds.py, so vggtl.weights is made to expect its shapes here too.
The bug behind each is also rebuilt by hand below, small and readable, so that it
stays covered whatever the fuzzer's inputs would do in a later h5py or zipfile.

To add one: copy the saved input into tests/api/fuzz_crashes/<target>/ under a name
that says what broke, fix vggtl, and add a hand-made test of the cause here.
"""
import glob
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import vggtl
from vggtl import weights as W

from support import REPO
from support import weight_files as wf

HERE = os.path.dirname(os.path.abspath(__file__))
CRASHES = os.path.join(HERE, "fuzz_crashes")
sys.path.insert(0, os.path.join(REPO, "fuzz"))
import seeds  # noqa: E402  (fuzz/seeds.py: the miniature VGG16)

h5py = pytest.importorskip("h5py")


@pytest.fixture
def mini(monkeypatch):
    monkeypatch.setattr(W, "CONV_SPEC", seeds.mini_spec())
    return {n: ((3, 3, cin, cout), (cout,)) for n, cin, cout in W.CONV_SPEC}


# The contract of the weights targets (fuzz/_weights.py), run in a child process:
# some of these inputs crashed or hung libhdf5, and a regression must fail this test,
# not take the test run down or stop it.
CONTRACT = textwrap.dedent("""
    import sys, tracemalloc
    sys.path.insert(0, {fuzz!r})
    import seeds
    seeds.use_mini_vgg16()
    from vggtl import weights as W
    shapes = {{n: ((3, 3, cin, cout), (cout,)) for n, cin, cout in W.CONV_SPEC}}
    tracemalloc.start()
    try:
        w = W.load_weights({path!r}, cache=False)
        assert {{n: (k.shape, b.shape) for n, (k, b) in w.items()}} == shapes
        print("weights")
    except W.WeightsError as e:
        assert {path!r} in str(e), f"the error does not name the file: {{e}}"
        print("WeightsError:", e)
    peak = tracemalloc.get_traced_memory()[1]
    assert peak < 64 << 20, f"{{peak / 2 ** 20:.0f}} MiB for a file of a few kB"
""")

WEIGHTS_TARGETS = ("h5", "pth_zip", "pth_legacy", "safetensors")
FOUND = sorted(p for t in WEIGHTS_TARGETS for p in glob.glob(os.path.join(CRASHES, t, "*")))


@pytest.mark.parametrize("path", FOUND, ids=[os.path.relpath(p, CRASHES) for p in FOUND])
def test_input_found_by_fuzzing_keeps_the_contract(path, tmp_path):
    """Every input the weights targets found (the pickle target's inputs have their
    own tests below)."""
    # a copy in a folder of its own: the error must name the path it was given
    p = str(tmp_path / os.path.basename(path))
    with open(path, "rb") as src, open(p, "wb") as dst:
        dst.write(src.read())
    r = subprocess.run([sys.executable, "-c", CONTRACT.format(fuzz=os.path.join(REPO, "fuzz"),
                                                              path=p)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"


# -- the causes, by hand ---------------------------------------------------------------
def test_hdf5_damaged_metadata_is_a_weights_error(mini, tmp_path):
    """h5py raised RuntimeError ("bad heap free list") from a damaged group, which
    escaped as itself; any h5py error on a damaged file is now a WeightsError."""
    p = str(tmp_path / "bad.h5")
    with open(os.path.join(CRASHES, "h5", "bad-heap-free-list.h5"), "rb") as f:
        open(p, "wb").write(f.read())
    with pytest.raises(vggtl.WeightsError, match="HDF5 file that cannot be read.*RuntimeError"):
        W.load_weights(p, cache=False)


def test_a_global_heap_that_loops_libhdf5_costs_a_weights_error(mini, tmp_path):
    """libhdf5 decodes a virtual dataset's layout, and with it the dataset's global
    heap, while it opens the dataset: before vggtl can look at it and refuse it. A
    free-space object of size 0 in that heap sends the heap's decoder round the
    same bytes for ever (virtual-layout-heap-hang.h5). libhdf5 now runs in a worker
    process that vggtl stops when it overruns its time: the load ends with a
    WeightsError naming the file, and the next load works."""
    from vggtl.weights import _h5_sandbox
    p = str(tmp_path / "w.h5")
    src = str(tmp_path / "other.h5")
    with h5py.File(src, "w") as o:
        o["data"] = np.zeros((3, 3, 3, 2), np.float32)
    wf.write_keras_legacy_h5(p, seeds.mini_weights(1))
    wf.point_elsewhere(p, "block1_conv1/block1_conv1_W_1:0", "block1_conv1", "virtual",
                       src, None)
    raw = bytearray(open(p, "rb").read())
    heap = raw.index(b"GCOL")  # signature, version, 3 reserved bytes, the heap's size
    obj = heap + 16  # its first object: index (2 bytes), references (2), reserved (4), size
    raw[obj:obj + 2] = bytes(2)  # index 0: free space
    raw[obj + 8:obj + 16] = bytes(8)  # of size 0
    open(p, "wb").write(raw)
    t0 = time.monotonic()
    with pytest.raises(vggtl.WeightsError, match="did not finish listing its layers in time") as e:
        W.load_weights(p, cache=False)
    assert str(e.value).startswith(p + ": libhdf5")
    assert time.monotonic() - t0 < _h5_sandbox.BASE_SECONDS + 30
    ok = str(tmp_path / "ok.h5")
    wf.write_keras_legacy_h5(ok, seeds.mini_weights(1))
    w = W.load_weights(ok, cache=False)
    assert np.array_equal(w["block1_conv1"][0], seeds.mini_weights(1)["block1_conv1"][0])


def _zip_with_raw_name(path, name: bytes, payload: bytes, method=zipfile.ZIP_STORED):
    """A zip of one member whose central-directory name is ``name``, flagged as UTF-8
    (bit 11), and whose compression method is ``method`` (not checked by zipfile's
    writer)."""
    placeholder = b"x" * len(name)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo(placeholder.decode()), payload)
    raw = bytearray(open(path, "rb").read())
    cd = raw.index(b"PK\x01\x02")
    struct.pack_into("<H", raw, cd + 8, 0x800)       # general purpose flags: UTF-8 names
    struct.pack_into("<H", raw, cd + 10, method)     # compression method
    struct.pack_into("<H", raw, 6, 0x800)            # and in the local header
    struct.pack_into("<H", raw, 8, method)
    raw[cd + 46:cd + 46 + len(name)] = name
    open(path, "wb").write(bytes(raw))


def test_zip_member_name_that_is_not_utf8_is_a_weights_error(tmp_path):
    """zipfile raised UnicodeDecodeError (a ValueError, not a WeightsError) for a
    member name flagged UTF-8 that is not; format detection now turns any error of
    zipfile into a WeightsError naming the file."""
    p = str(tmp_path / "name.pth")
    _zip_with_raw_name(p, b"a\x89/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(vggtl.WeightsError, match="zip file that cannot be read.*Unicode") as e:
        W.load_weights(p, cache=False)
    assert p in str(e.value)


def test_storage_with_an_unknown_compression_method_is_a_weights_error(mini, tmp_path):
    """A storage member compressed with a method zipfile lacks raised
    NotImplementedError when the tensor was read (after the pickle); reading a
    storage now turns any error into a WeightsError naming the file and storage,
    and a method other than stored or deflate is refused before anything is read."""
    src = os.path.join(tmp_path, "src")
    os.makedirs(src)
    seeds.build("pth_zip", src)
    good = open(os.path.join(src, "seed-plain.pth"), "rb").read()
    raw = bytearray(good)
    with zipfile.ZipFile(os.path.join(src, "seed-plain.pth")) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    # the method field of that member's central-directory record: 99 (AES), unknown
    cd = raw.index(b"PK\x01\x02")
    while raw[cd + 46:cd + 46 + len(info.filename)] != info.filename.encode():
        cd = raw.index(b"PK\x01\x02", cd + 4)
    struct.pack_into("<H", raw, cd + 10, 99)
    p = str(tmp_path / "method.pth")
    open(p, "wb").write(bytes(raw))
    with pytest.raises(vggtl.WeightsError,
                       match=r"storage \S+ is compressed with compression method 99") as e:
        W.load_weights(p, cache=False)
    assert p in str(e.value)


def _legacy_file(path, sys_info_pickle: bytes):
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        f.write(sys_info_pickle)


@pytest.mark.parametrize("index", [2 ** 31 - 1, 2 ** 32 - 1])
def test_pickle_memo_index_allocates_nothing(tmp_path, index):
    """The C unpickler keeps its memo in an array indexed by the pickle's BINPUT
    numbers: LONG_BINPUT 2**31 made it allocate 16 GiB (found as an out-of-memory
    by fuzz_pth_legacy). vggtl's .pth unpickler is now the pure-Python one (a dict
    memo): the file is refused as corrupt and nothing large is allocated."""
    p = str(tmp_path / "memo.pth")
    # PROTO 2, EMPTY_DICT, LONG_BINPUT index, STOP
    _legacy_file(p, b"\x80\x02}r" + struct.pack("<I", index) + b".")
    tracemalloc.start()
    try:
        with pytest.raises(vggtl.WeightsError) as e:
            W.load_weights(p, cache=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "MemoryError" not in str(e.value) and p in str(e.value)
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"


@pytest.mark.parametrize("opcode, length", [(b"\x8e", 1 << 40), (b"\x96", 1 << 40),
                                            (b"\x96", 3 << 30)],
                         ids=["BINBYTES8", "BYTEARRAY8", "BYTEARRAY8-3GB"])
def test_huge_length_field_in_a_pth_pickle_allocates_nothing(tmp_path, opcode, length):
    """A BINBYTES8 or BYTEARRAY8 of 2**40 bytes in a 40-byte file: the pickle is
    read through a bounded reader, so it fails as truncated before any
    allocation. The pure-Python unpickler makes BYTEARRAY8's bytearray before it
    reads: 3 GB, which the allocator grants, took 3 GB (fuzz_pth_legacy)."""
    p = str(tmp_path / "len.pth")
    _legacy_file(p, b"\x80\x05" + opcode + struct.pack("<Q", length) + b"abc")
    tracemalloc.start()
    try:
        with pytest.raises(vggtl.WeightsError, match="truncated or corrupt") as e:
            W.load_weights(p, cache=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "MemoryError" not in str(e.value)
    assert peak < 16 << 20


def test_tensor_errors_raised_inside_the_reader_name_the_file(mini, tmp_path):
    """_rebuild_tensor's and a tensor's own checks raise WeightsError without the
    path (they do not know it), and those escaped so; load_weights now names it."""
    p = str(tmp_path / "stride.pth")
    sd = seeds.mini_state_dict(0)

    class T:  # a tensor whose stride does not match its size
        def __reduce__(self):
            import torch
            return torch._utils._rebuild_tensor_v2, (S(), 0, (2, 3), (18, 9, 3, 1), False, {})

    class S:
        pass

    torch = pytest.importorskip("torch")

    def persistent_id(obj):
        if isinstance(obj, S):
            return ("storage", torch.FloatStorage, "0", "cpu", 54)
        return None

    with open(p, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        pk = pickle.Pickler(f, protocol=2)
        pk.persistent_id = persistent_id
        pk.dump({"features.0.weight": T(), **{k: None for k in list(sd)[1:2]}})
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 54) + bytes(54 * 4))
    with pytest.raises(vggtl.WeightsError, match="size \\(2, 3\\) and stride") as e:
        W.load_weights(p, cache=False)
    assert str(e.value).startswith(p + ": ")


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x96", b"\x8d"],
                         ids=["BINBYTES8", "BYTEARRAY8", "BINUNICODE8"])
def test_pickle_length_field_beyond_the_file_allocates_nothing(tmp_path, opcode):
    """The tutorial's pickle reader (vggtl.load_pickle): a 20-byte pickle claiming
    2**60 bytes of data is refused as truncated before anything is allocated (the
    bounded reader of vggtl/data.py, written for fuzz_pickle)."""
    p = str(tmp_path / "X.pickle")
    open(p, "wb").write(b"\x80\x05" + opcode + struct.pack("<Q", 1 << 60) + b"abc.")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="truncated pickle") as e:
            vggtl.load_pickle(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p in str(e.value) and peak < 16 << 20


def _npy(header: bytes, data: bytes = b"") -> bytes:
    """A version-1.0 .npy file with this header text (padded as NumPy pads it)."""
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@pytest.mark.parametrize("header", [
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,\x00), }",  # null byte
    b"{'descr': '<f4', 'fortran_order': False, 'shape': ((((2,), }",   # unclosed
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (1 << 62,), }",  # not a literal
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000,), }",  # beyond the file
    b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",        # object array
], ids=["null-byte", "unclosed", "expression", "beyond-the-file", "object"])
def test_a_corrupt_npy_header_is_a_value_error_naming_the_file(tmp_path, header):
    """load_pickle hands a file with the .npy magic to NumPy; NumPy's header parser
    raised tokenize.TokenError (and SyntaxError) on some headers (fuzz_pickle:
    a header holding a null byte and an unclosed bracket)."""
    p = str(tmp_path / "X.pickle")
    open(p, "wb").write(_npy(header, b"\0" * 16))
    with pytest.raises(ValueError, match="unreadable .npy file") as e:
        vggtl.load_pickle(p)
    assert str(e.value).startswith(p + ": ")


def test_the_fuzzers_npy_input_is_a_value_error(tmp_path):
    """The input fuzz_pickle found, as it was: the .npy magic, then a header of
    pickle opcodes that leaves a bracket open."""
    with open(os.path.join(CRASHES, "pickle", "npy-header-unclosed-bracket.pickle"), "rb") as f:
        raw = f.read()
    p = str(tmp_path / "X.pickle")
    open(p, "wb").write(raw)
    with pytest.raises(ValueError, match="unreadable .npy file") as e:
        vggtl.load_pickle(p)
    assert str(e.value).startswith(p + ": ")


def _attrs_read(monkeypatch):
    """Names of the attributes h5py reads from now on, with whether each is
    variable-length. h5py runs in this process meanwhile, where it can be watched
    (vggtl.weights._h5_sandbox.ISOLATE)."""
    from h5py._hl.attrs import AttributeManager
    from vggtl.weights import _h5_sandbox
    monkeypatch.setattr(_h5_sandbox, "ISOLATE", False)
    read, real = [], AttributeManager.__getitem__

    def getitem(self, name):
        t = self.get_id(name).get_type()
        read.append((name, isinstance(t, h5py.h5t.TypeStringID) and t.is_variable_str()))
        return real(self, name)

    monkeypatch.setattr(AttributeManager, "__getitem__", getitem)
    return read


def test_variable_length_attributes_are_never_read(mini, tmp_path, monkeypatch):
    """libhdf5 looped forever (vlen-attribute-hang.h5) or segfaulted
    (vlen-attribute-segfault.h5) reading a Keras 3 layer's 'name', a variable-length
    string whose global heap was damaged. vggtl no longer reads variable-length
    attributes: a Keras 3 file (which writes its names so) is matched by order, as
    Keras's own loader does, and loads the same; a legacy file whose layer_names is
    variable-length (tf-keras 2.16+ writes them so) is read by its links alone."""
    src = str(tmp_path / "seeds")
    seeds.build("h5", src)
    read = _attrs_read(monkeypatch)
    w = W.load_weights(os.path.join(src, "seed-keras3.weights.h5"), cache=False)
    ref = seeds.mini_weights(1)
    assert all(np.array_equal(w[n][0], ref[n][0]) and np.array_equal(w[n][1], ref[n][1])
               for n in ref)
    assert read == [] or not any(vlen for _, vlen in read), read
    p = str(tmp_path / "vlen_names.h5")
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = np.array(list(ref), dtype=h5py.string_dtype())
        for n, (k, b) in ref.items():
            g = f.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}_W_1:0".encode(), f"{n}_b_1:0".encode()])
            g.create_dataset(f"{n}_W_1:0", data=k)
            g.create_dataset(f"{n}_b_1:0", data=b)
    with pytest.raises(vggtl.WeightsError, match="expected a kernel and a bias"):
        W.load_weights(p, cache=False)  # Keras 1's weight names: not guessed at
    assert not any(vlen for _, vlen in read), read
    with h5py.File(p, "w") as f:  # tf-keras's names
        f.attrs["layer_names"] = np.array(list(ref), dtype=h5py.string_dtype())
        for n, (k, b) in ref.items():
            g = f.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}/kernel:0", f"{n}/bias:0"],
                                               dtype=h5py.string_dtype())
            g.create_dataset(f"{n}/kernel:0", data=k)
            g.create_dataset(f"{n}/bias:0", data=b)
    w = W.load_weights(p, cache=False)
    assert all(np.array_equal(w[n][0], ref[n][0]) and np.array_equal(w[n][1], ref[n][1])
               for n in ref)
    assert not any(vlen for _, vlen in read), read
