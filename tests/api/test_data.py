"""vggtl.data: safe unpickling of the tutorial's pickles, X and y validation,
LabelEncoder, train_test_split and to_npy."""
import io
import os
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest

import vggtl
from vggtl import data
from vggtl.data import UnsafePickleError

PROTOCOLS = (2, 3, 4, 5)


def dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def dump_bytes(path, b):
    with open(path, "wb") as f:
        f.write(b)
    return str(path)


def globals_of(b):
    """(module, name) of every global a (trusted) pickle asks for."""
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core under NumPy 2
        Recorder(io.BytesIO(b), encoding="latin1").load()
    return seen


def tutorial_X(rng, n=6, c=1, dtype=np.uint8):
    """As sentdex's script makes it: np.array(list).reshape(-1, 50, 50, 1), uint8."""
    return rng.integers(0, 256, (n, 50, 50, c)).astype(dtype)


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", [(5, 50, 50, 1), (5, 50, 50), (4, 32, 32, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_load_pickles_round_trip(tmp_path, rng, protocol, shape, dtype):
    X = rng.integers(0, 256, shape).astype(dtype)
    if dtype != np.uint8:
        X = X / np.asarray(255.0, dtype)  # the tutorial's X / 255.0
    y = [int(v) for v in rng.integers(0, 2, shape[0])]  # a plain list of ints, as sentdex
    Xr, yr = vggtl.load_pickles(dump(tmp_path / "X.pickle", X, protocol),
                                dump(tmp_path / "y.pickle", y, protocol))
    assert type(Xr) is np.ndarray and Xr.dtype == X.dtype and Xr.shape == X.shape
    np.testing.assert_array_equal(Xr, X)
    assert isinstance(yr, np.ndarray) and yr.tolist() == y


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_load_pickle_values(tmp_path, protocol):
    """What tutorials put in pickles comes back exactly (and as plain pickle gives it)."""
    X = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    objs = [
        X, np.asfortranarray(X), X[:, ::2], X.astype(">f4"), np.array(["cat", "dog"]),
        np.array([True, False]), np.arange(3, dtype=np.complex64), np.float32(1.5),
        np.int64(-3), np.str_("cat"), [1, 0, 1], ["cat", "dog"], (1, 2.5, "a", None, True),
        {1, 2}, frozenset({3}), b"", b"ab\x00\xff", bytearray(b"xy"), 1 + 2j,
        [X[0], X[1]], {"a": 1},
    ]
    for obj in objs:
        b = pickle.dumps(obj, protocol=protocol)
        got = data.load_pickle(dump_bytes(tmp_path / "o.pickle", b))
        want = pickle.loads(b)
        assert type(got) is type(want), obj
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        elif isinstance(want, list) and want and isinstance(want[0], np.ndarray):
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
        else:
            assert got == want and (not isinstance(want, np.generic) or got.dtype == want.dtype)


def test_globals_real_pickles_reference_are_allowed():
    """The allow-list covers what NumPy 2 writes for arrays and scalars (protocols 2-5)."""
    for protocol in PROTOCOLS:
        for obj in (np.zeros((2, 2), np.uint8), np.float64(1.0), np.array(["a"]), {1}, b"x", 1j):
            for g in globals_of(pickle.dumps(obj, protocol=protocol)):
                assert g in data._ALLOWED, g


# Pickles written by NumPy 1.26.4 (globals numpy.core.*): X = (arange(32) * 7 % 256)
# as uint8 (2, 4, 4, 1), the scalar float64(0.5), and array(['cat', 'dog']).
NUMPY1_X = {
    2: "8002636e756d70792e636f72652e6d756c746961727261790a5f7265636f6e7374727563740a7100636e"
       "756d70790a6e6461727261790a71014b00857102635f636f646563730a656e636f64650a710358010000"
       "0062710458060000006c6174696e317105867106527107877108527109284b01284b024b044b044b0174"
       "710a636e756d70790a64747970650a710b58020000007531710c898887710d52710e284b035801000000"
       "7c710f4e4e4e4affffffff4affffffff4b0074711062896803582d00000000070e151c232a31383f464d"
       "545b626970777ec285c28cc293c29ac2a1c2a8c2afc2b6c2bdc384c38bc392c39971116805867112527113"
       "747114622e",
    3: "8003636e756d70792e636f72652e6d756c746961727261790a5f7265636f6e7374727563740a7100636e"
       "756d70790a6e6461727261790a71014b008571024301627103877104527105284b01284b024b044b044b"
       "01747106636e756d70790a64747970650a7107580200000075317108898887710952710a284b03580100"
       "00007c710b4e4e4e4affffffff4affffffff4b0074710c6289432000070e151c232a31383f464d545b62"
       "6970777e858c939aa1a8afb6bdc4cbd2d9710d74710e622e",
    4: "800495af000000000000008c156e756d70792e636f72652e6d756c74696172726179948c0c5f7265636f"
       "6e7374727563749493948c056e756d7079948c076e6461727261799493944b0085944301629487945294"
       "284b01284b024b044b044b01749468038c0564747970659493948c02753194898887945294284b038c01"
       "7c944e4e4e4affffffff4affffffff4b0074946289432000070e151c232a31383f464d545b626970777e"
       "858c939aa1a8afb6bdc4cbd2d9947494622e",
    5: "8005959a000000000000008c126e756d70792e636f72652e6e756d65726963948c0b5f66726f6d627566"
       "6665729493942896200000000000000000070e151c232a31383f464d545b626970777e858c939aa1a8af"
       "b6bdc4cbd2d9948c056e756d7079948c0564747970659493948c02753194898887945294284b038c017c"
       "944e4e4e4affffffff4affffffff4b00749462284b024b044b044b0174948c014394749452942e",
}
NUMPY1_SCALAR_P2 = (
    "8002636e756d70792e636f72652e6d756c746961727261790a7363616c61720a7100636e756d70790a6474"
    "7970650a71015802000000663871028988877103527104284b0358010000003c71054e4e4e4affffffff4a"
    "ffffffff4b0074710662635f636f646563730a656e636f64650a71075809000000000000000000c3a03f71"
    "0858060000006c6174696e31710986710a52710b86710c52710d2e")
NUMPY1_STR_P5 = (
    "80059585000000000000008c126e756d70792e636f72652e6e756d65726963948c0b5f66726f6d62756666"
    "657294939428961800000000000000630000006100000074000000640000006f00000067000000948c056e"
    "756d7079948c0564747970659493948c02553394898887945294284b038c013c944e4e4e4b0c4b044b0874"
    "94624b0285948c014394749452942e")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy1_pickles(tmp_path, protocol):
    b = bytes.fromhex(NUMPY1_X[protocol])
    assert any(m.startswith("numpy.core.") for m, _ in globals_of(b))
    X = data.load_pickle(dump_bytes(tmp_path / "X.pickle", b))
    want = (np.arange(32) * 7 % 256).astype(np.uint8).reshape(2, 4, 4, 1)
    assert X.dtype == np.uint8
    np.testing.assert_array_equal(X, want)
    Xr, yr = vggtl.load_pickles(tmp_path / "X.pickle", dump(tmp_path / "y.pickle", [1, 0]))
    np.testing.assert_array_equal(Xr, want)


def test_numpy1_scalar_and_strings(tmp_path):
    s = data.load_pickle(dump_bytes(tmp_path / "s.pickle", bytes.fromhex(NUMPY1_SCALAR_P2)))
    assert type(s) is np.float64 and s == 0.5
    y = data.load_pickle(dump_bytes(tmp_path / "y.pickle", bytes.fromhex(NUMPY1_STR_P5)))
    assert y.dtype == np.dtype("<U3") and y.tolist() == ["cat", "dog"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_colour_and_string_labels(tmp_path, rng, protocol):
    X = tutorial_X(rng, n=4, c=3)
    y = ["cat", "dog", "dog", "cat"]
    Xr, yr = vggtl.load_pickles(dump(tmp_path / "X", X, protocol),
                                dump(tmp_path / "y", y, protocol))
    np.testing.assert_array_equal(Xr, X)
    assert yr.tolist() == y


def test_list_of_arrays_and_one_hot(tmp_path, rng):
    X = tutorial_X(rng, n=3)
    y = np.eye(2, dtype=np.float32)[[0, 1, 1]]
    Xr, yr = vggtl.load_pickles(dump(tmp_path / "X", list(X)), dump(tmp_path / "y", y))
    np.testing.assert_array_equal(Xr, X)
    np.testing.assert_array_equal(yr, y)


def test_float_X_is_not_converted_and_range(tmp_path, rng):
    X = tutorial_X(rng, n=3).astype(np.float64) * (200.0 / 255.0)  # values in 1..255: fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Xr, _ = vggtl.load_pickles(dump(tmp_path / "X", X), dump(tmp_path / "y", [0, 1, 0]))
    assert Xr.dtype == np.float64
    X[1, 0, 0, 0] = 300.0
    with pytest.warns(UserWarning, match=r"outside the \[0, 255\]"):
        vggtl.load_pickles(dump(tmp_path / "X", X), dump(tmp_path / "y", [0, 1, 0]))
    X[1, 0, 0, 0] = -1.0
    with pytest.warns(UserWarning, match=r"-1"):
        vggtl.load_pickles(dump(tmp_path / "X", X), dump(tmp_path / "y", [0, 1, 0]))


# ---------------------------------------------------------------------------
# malicious pickles: refused, and nothing ran


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _marker_writer(marker):
    return f"open({str(marker)!r}, 'w').write('pwned')"


def _evil_payloads(tmp_path, marker):
    """(name, pickle bytes, expected global) of pickles that would create `marker`."""
    inner = dump(tmp_path / "inner.pickle", _Evil(eval, _marker_writer(marker)))
    return [
        ("os.system", lambda p: pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=p),
         os.system.__module__),
        ("builtins.eval", lambda p: pickle.dumps(_Evil(eval, _marker_writer(marker)), protocol=p),
         "eval"),
        ("builtins.exec", lambda p: pickle.dumps(_Evil(exec, _marker_writer(marker)), protocol=p),
         "exec"),
        # numpy.load on a pickle file with allow_pickle=True would run `inner`
        ("numpy.load", lambda p: pickle.dumps(_Evil(np.load, inner, None, True), protocol=p),
         "load"),
        ("numpy.save", lambda p: pickle.dumps(_Evil(np.save, str(marker), np.zeros(1)),
                                              protocol=p), "save"),
        # numpy.testing.runstring execs a string
        ("numpy.testing", lambda p: pickle.dumps(
            _Evil(np.testing.runstring, _marker_writer(marker), {}), protocol=p), "runstring"),
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    for name, make, glob in _evil_payloads(tmp_path, marker):
        before = set(tmp_path.iterdir())
        path = dump_bytes(tmp_path / "evil.pickle", make(protocol))
        with pytest.raises(UnsafePickleError, match=glob) as e:
            data.load_pickle(path)
        assert "evil.pickle" in str(e.value)
        assert isinstance(e.value, pickle.UnpicklingError) and isinstance(e.value, ValueError)
        # nothing ran: no file appeared (np.save would have written pwned.npy)
        assert set(tmp_path.iterdir()) - before <= {tmp_path / "evil.pickle"}, name
    # also after a harmless array, inside a list, through load_pickles
    b = pickle.dumps([np.zeros(2), _Evil(eval, _marker_writer(marker))], protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"(__builtin__|builtins)\.eval"):
        vggtl.load_pickles(dump_bytes(tmp_path / "X.pickle", b), dump(tmp_path / "y.pickle", [0]))
    assert not marker.exists()


def test_payloads_are_real(tmp_path):
    """Each payload does write a file under plain pickle, so the test above would
    notice if vggtl ran it."""
    for name, make, _ in _evil_payloads(tmp_path, tmp_path / "pwned"):
        before = set(tmp_path.iterdir())
        pickle.loads(make(4))
        created = set(tmp_path.iterdir()) - before
        assert created, name
        for p in created:
            p.unlink()


def test_object_arrays_are_refused(tmp_path):
    for obj in (np.array([1, "a"], dtype=object), np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]),
                np.array(["2020-01-01"], dtype="datetime64[D]")):
        for protocol in PROTOCOLS:
            path = dump(tmp_path / "o.pickle", obj, protocol)
            with pytest.raises(UnsafePickleError, match="dtype"):
                data.load_pickle(path)


def _swap(b, old, new):
    assert b.count(old) == 1
    return b.replace(old, new)


def test_forged_dtype_state_is_refused(tmp_path):
    """dtype.__setstate__ would accept flags marking uint8 data as object
    pointers (NPY_ITEM_REFCOUNT); vggtl checks the state first."""
    b = pickle.dumps(np.zeros(2, np.uint64), protocol=2)
    # the state tuple ends with BININT -1, BININT -1, BININT1 flags (0)
    tail = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK"
    forged = _swap(b, tail + b"\x00", tail + b"\x01")
    with pytest.raises(UnsafePickleError, match="flags"):
        data.load_pickle(dump_bytes(tmp_path / "f.pickle", forged))
    # fields on a plain dtype (names tuple where None belongs)
    forged = _swap(b, b"NNNJ", b"N)NJ")
    with pytest.raises(UnsafePickleError, match="fields"):
        data.load_pickle(dump_bytes(tmp_path / "f.pickle", forged))


def test_build_on_other_objects_is_refused(tmp_path):
    # a set with a state: BUILD on a set would set attributes
    b = b"\x80\x02c__builtin__\nset\n]\x85R}b."
    with pytest.raises(UnsafePickleError, match="state of a set"):
        data.load_pickle(dump_bytes(tmp_path / "b.pickle", b))


def test_model_pickle_is_refused(tmp_path):
    """A pickled object of any class (a model) names its class: refused, ValueError."""
    path = dump(tmp_path / "model.pickle", _Evil(len, "x"))
    with pytest.raises(ValueError, match="builtins.len"):
        vggtl.load_pickles(path, dump(tmp_path / "y", [0]))


# ---------------------------------------------------------------------------
# bad input: a clear error, naming the file


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pickle"):
        vggtl.load_pickles(tmp_path / "nope.pickle", tmp_path / "y")
    empty = dump_bytes(tmp_path / "X.pickle", b"")
    with pytest.raises(ValueError, match=r"X\.pickle: empty file"):
        vggtl.load_pickles(empty, tmp_path / "y")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_truncated_pickle(tmp_path, rng, protocol):
    b = pickle.dumps(tutorial_X(rng, n=2), protocol=protocol)
    for cut in (1, len(b) // 2, len(b) - 1):
        path = dump_bytes(tmp_path / "X.pickle", b[:cut])
        with pytest.raises(ValueError, match=r"X\.pickle: (truncated|not a readable)"):
            data.load_pickle(path)


def test_garbage_file(tmp_path):
    path = dump_bytes(tmp_path / "X.pickle", b"this is not a pickle at all")
    with pytest.raises(ValueError, match=r"X\.pickle"):
        data.load_pickle(path)


def test_dict_inside(tmp_path, rng):
    path = dump(tmp_path / "X.pickle", {"X": tutorial_X(rng, n=2), "y": [0, 1]})
    with pytest.raises(ValueError, match=r"X\.pickle: expected an array of images .*found a dict "
                                         r"\(keys 'X', 'y'\)"):
        vggtl.load_pickles(path, dump(tmp_path / "y.pickle", [0, 1]))
    with pytest.raises(ValueError, match=r"y\.pickle: expected labels .* found a dict"):
        vggtl.load_pickles(dump(tmp_path / "X.pickle", tutorial_X(rng, n=2)),
                           dump(tmp_path / "y.pickle", {"y": [0, 1]}))


def test_mismatched_lengths(tmp_path, rng):
    with pytest.raises(ValueError, match=r"X\.pickle holds 3 images but .*y\.pickle holds 2"):
        vggtl.load_pickles(dump(tmp_path / "X.pickle", tutorial_X(rng, n=3)),
                           dump(tmp_path / "y.pickle", [0, 1]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_float_X(tmp_path, rng, bad):
    X = tutorial_X(rng, n=4, dtype=np.float32) / 255.0
    X[2, 10, 10, 0] = bad
    with pytest.raises(ValueError, match=r"X\.pickle: X contains NaN or infinite values "
                                         r"\(first in image 2"):
        vggtl.load_pickles(dump(tmp_path / "X.pickle", X), dump(tmp_path / "y", [0, 1, 0, 1]))


def test_mixed_label_types(tmp_path, rng):
    X = dump(tmp_path / "X.pickle", tutorial_X(rng, n=3))
    with pytest.raises(ValueError, match=r"y\.pickle: labels of mixed types \(number, str\)"):
        vggtl.load_pickles(X, dump(tmp_path / "y.pickle", [0, "cat", 1]))


def test_bad_shapes(tmp_path, rng):
    y = dump(tmp_path / "y.pickle", [0, 1])
    cases = [
        (np.zeros((2, 8, 8, 4), np.uint8), "found an array of shape"),     # 4 channels
        (np.zeros((2, 8), np.uint8), "found an array of shape"),           # not images
        (np.array(["a", "b"]), "expected numeric pixels"),
        ([np.zeros((4, 4)), np.zeros((5, 5))], r"one shape, found \(4, 4\) \(image 0\) and"),
        ([], "empty list"),
        (np.zeros((0, 8, 8), np.uint8), "empty"),
        ("hello", "found a str"),
    ]
    for obj, msg in cases:
        with pytest.raises(ValueError, match=msg):
            vggtl.load_pickles(dump(tmp_path / "X.pickle", obj), y)


def test_npy_paths_are_memory_mapped(tmp_path, rng):
    X = tutorial_X(rng, n=4)
    np.save(tmp_path / "X.npy", X)
    Xr, yr = vggtl.load_pickles(tmp_path / "X.npy", dump(tmp_path / "y", [0, 1, 1, 0]))
    assert isinstance(Xr, np.memmap) and not Xr.flags.writeable
    np.testing.assert_array_equal(Xr, X)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_load_peak_memory_is_one_X(tmp_path, protocol):
    """Reading a pickled X holds about one X (plus a few MiB of read chunks), not
    the bytes-then-copy 3x of the pure-Python unpickler on protocol 5. Protocol 2
    stores the data as a latin-1 string that must be encoded back: two X."""
    X = np.zeros((600, 200, 200), np.uint8)  # 24 MB
    X[::7] = 3
    path = dump(tmp_path / "X.pickle", X, protocol)
    tracemalloc.start()
    try:
        got = data.load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, X)
    limit = (2 if protocol == 2 else 1) * X.nbytes + 12e6
    assert peak < limit, f"peak {peak / 1e6:.0f} MB for a {X.nbytes / 1e6:.0f} MB X"


def test_trailing_data_warns(tmp_path, rng):
    path = tmp_path / "X.pickle"
    with open(path, "wb") as f:
        pickle.dump(tutorial_X(rng, n=2), f)
        pickle.dump([0, 1], f)
    with pytest.warns(UserWarning, match="only the first"):
        data.load_pickle(path)


# ---------------------------------------------------------------------------
# LabelEncoder


def test_label_encoder_ints():
    enc = vggtl.LabelEncoder().fit([0, 1, 1, 0])  # sentdex: Dog = 0, Cat = 1
    assert enc.classes_.tolist() == [0, 1]
    np.testing.assert_array_equal(enc.transform([1, 0]), [1, 0])
    oh = enc.to_categorical([0, 1, 1])
    assert oh.dtype == np.float32 and oh.shape == (3, 2)
    np.testing.assert_array_equal(oh, [[1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(enc.one_hot(np.array([1])), [[0, 1]])


def test_label_encoder_strings():
    enc = vggtl.LabelEncoder()
    codes = enc.fit_transform(["dog", "cat", "dog", "bird"])
    assert enc.classes_.tolist() == ["bird", "cat", "dog"]
    assert codes.dtype == np.int64 and codes.tolist() == [2, 1, 2, 0]
    assert enc.inverse_transform([0, 2]).tolist() == ["bird", "dog"]
    # rows of scores (a model's predictions) decode by argmax
    assert enc.inverse_transform(np.array([[0.1, 0.7, 0.2]])).tolist() == ["cat"]
    np.testing.assert_array_equal(enc.to_categorical(np.array(["cat"])), [[0, 1, 0]])


def test_label_encoder_array_likes():
    """Object arrays (pandas' strings) and array-likes work; mixed objects do not."""
    enc = vggtl.LabelEncoder().fit(np.array(["dog", "cat"], dtype=object))
    assert enc.classes_.dtype.kind == "U" and enc.classes_.tolist() == ["cat", "dog"]
    with pytest.raises(ValueError, match="mixed types"):
        enc.fit(np.array(["dog", 1], dtype=object))

    class Series:  # what pandas.Series and torch.Tensor offer
        def __array__(self, dtype=None, copy=None):
            return np.array([3, 1, 3])

    assert vggtl.LabelEncoder().fit_transform(Series()).tolist() == [1, 0, 1]


def test_label_encoder_one_hot_rows():
    y = np.eye(3, dtype=np.float32)[[2, 0, 1, 2]]
    enc = vggtl.LabelEncoder().fit(y)
    assert enc.classes_.tolist() == [0, 1, 2]
    assert enc.transform(y).tolist() == [2, 0, 1, 2]
    np.testing.assert_array_equal(enc.to_categorical(y), y)
    np.testing.assert_array_equal(enc.to_categorical([2, 0]), y[[0, 1]])


def test_label_encoder_errors():
    enc = vggtl.LabelEncoder()
    with pytest.raises(ValueError, match="single class"):
        enc.fit([1, 1, 1])
    with pytest.raises(ValueError, match="single class"):
        enc.fit(np.eye(2)[[0, 0]])
    with pytest.raises(ValueError, match="mixed types"):
        enc.fit([0, "cat"])
    with pytest.raises(ValueError, match="mixed types"):
        enc.fit([1.0, b"x"])
    with pytest.raises(RuntimeError, match="fit"):
        enc.transform([0])
    enc.fit(["cat", "dog"])
    with pytest.raises(ValueError, match=r"\['cow'\] are not among"):
        enc.transform(["cat", "cow"])
    with pytest.raises(ValueError, match="fitted on"):
        enc.transform([0, 1])
    with pytest.raises(ValueError, match=r"codes in \[0, 2\)"):
        enc.inverse_transform([2])
    with pytest.raises(ValueError, match="one-hot"):
        enc.fit(np.array([[0.5, 0.5], [1, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        enc.fit([0.0, np.nan])


# ---------------------------------------------------------------------------
# train_test_split


def test_split_stratified_proportions_and_partition(rng):
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    X = np.arange(100 * 2).reshape(100, 2)
    Xtr, Xte, ytr, yte = vggtl.train_test_split(X, y, test_size=0.25)
    assert len(Xte) == 25 and len(Xtr) == 75
    assert np.bincount(yte).tolist() == [15, 8, 2] or np.bincount(yte).tolist() == [15, 7, 3]
    ids = np.concatenate([Xtr[:, 0], Xte[:, 0]]) // 2
    assert sorted(ids.tolist()) == list(range(100))  # a partition
    np.testing.assert_array_equal(y[Xtr[:, 0] // 2], ytr)  # rows stay with their labels
    # reproducible with random_state, different with another
    again = vggtl.train_test_split(X, y, return_indices=True)
    np.testing.assert_array_equal(again[1], Xte[:, 0] // 2)
    other = vggtl.train_test_split(X, y, random_state=1, return_indices=True)
    assert not np.array_equal(other[1], again[1])


def test_split_one_hot_and_string_labels():
    y = np.eye(2, dtype=np.float32)[[0, 1] * 10]
    tr, te = vggtl.train_test_split(np.zeros((20, 1)), y, test_size=0.5, return_indices=True)
    assert y[te].sum(axis=0).tolist() == [5, 5]
    ys = ["cat", "dog"] * 4
    Xtr, Xte, ytr, yte = vggtl.train_test_split(np.arange(8), ys, test_size=2)
    assert sorted(yte.tolist()) == ["cat", "dog"]


def test_split_memmap_indices_do_not_read_X(tmp_path, rng):
    X = tutorial_X(rng, n=40)
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    y = np.array([0, 1] * 20)
    tracemalloc.start()
    tr, te = vggtl.train_test_split(Xm, y, return_indices=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < X.nbytes / 4  # index arrays only, not a copy of X
    assert tr.dtype == np.intp and len(te) == 10 and len(set(tr) | set(te)) == 40
    Xtr, Xte, _, _ = vggtl.train_test_split(Xm, y)
    np.testing.assert_array_equal(Xte, X[te])


def test_split_contiguous_parts_are_views():
    X = np.arange(20 * 3).reshape(20, 3)
    y = np.arange(20) % 2
    Xtr, Xte, ytr, yte = vggtl.train_test_split(X, y, test_size=5, shuffle=False, stratify=False)
    assert np.shares_memory(Xtr, X) and np.shares_memory(Xte, X)
    np.testing.assert_array_equal(Xte, X[15:])
    np.testing.assert_array_equal(yte, y[15:])
    # the default stratify=True stratifies shuffled splits only: as scikit-learn's call
    for got, want in zip(vggtl.train_test_split(X, y, test_size=5, shuffle=False),
                         (X[:15], X[15:], y[:15], y[15:])):
        np.testing.assert_array_equal(got, want)


def test_split_errors():
    X = np.zeros((10, 2))
    tr, te = vggtl.train_test_split(X, [1] * 10, return_indices=True)  # one class: as scikit-learn
    assert len(tr) == 7 and len(te) == 3
    with pytest.raises(ValueError, match="only one sample"):
        vggtl.train_test_split(X, [0] * 9 + [1])
    with pytest.raises(ValueError, match="X has 10 samples but y has 9"):
        vggtl.train_test_split(X, [0, 1] * 4 + [0])
    with pytest.raises(ValueError, match="test_size"):
        vggtl.train_test_split(X, [0, 1] * 5, test_size=1.5)
    with pytest.raises(ValueError, match="test_size"):
        vggtl.train_test_split(X, [0, 1] * 5, test_size=10)
    with pytest.raises(ValueError, match="shuffle=False"):
        vggtl.train_test_split(X, [0, 1] * 5, shuffle=False, stratify=[0, 1] * 5)
    with pytest.raises(ValueError, match="mixed types"):
        vggtl.train_test_split(X, [0, "a"] * 5)
    tr, te = vggtl.train_test_split(X, [1] * 10, stratify=False, return_indices=True)
    assert len(te) == 3  # ceil(0.25 * 10), as scikit-learn


# ---------------------------------------------------------------------------
# to_npy


def test_to_npy_round_trip(tmp_path, rng):
    X = tutorial_X(rng, n=5)
    out = data.to_npy(dump(tmp_path / "X.pickle", X), tmp_path / "X.npy")
    assert out == str(tmp_path / "X.npy")
    Xm = np.load(out, mmap_mode="r")
    assert isinstance(Xm, np.memmap) and Xm.dtype == np.uint8
    np.testing.assert_array_equal(Xm, X)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_to_npy_failure_leaves_existing_file(tmp_path, rng):
    """A bad source, a refused pickle: the old .npy stays, no temporary is left."""
    old = tutorial_X(rng, n=2)
    np.save(tmp_path / "X.npy", old)
    for src in (dump_bytes(tmp_path / "bad.pickle", b"\x80\x04trunc"),
                dump(tmp_path / "evil.pickle", _Evil(eval, "1")),
                dump(tmp_path / "nan.pickle", np.full((2, 4, 4), np.nan))):
        with pytest.raises(ValueError):
            data.to_npy(src, tmp_path / "X.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "bad.pickle", "evil.pickle",
                                                          "nan.pickle"]


def test_to_npy_write_error_cleans_up(tmp_path, rng, monkeypatch):
    old = tutorial_X(rng, n=2)
    np.save(tmp_path / "X.npy", old)
    src = dump(tmp_path / "X.pickle", tutorial_X(rng, n=3))

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        data.to_npy(src, tmp_path / "X.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "X.pickle"]


def test_public_names():
    for name in ("load_pickle", "load_pickles", "LabelEncoder", "train_test_split", "resize",
                 "data"):
        assert name in vggtl.__all__ and hasattr(vggtl, name)
    assert vggtl.data.to_npy is data.to_npy
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


# ---------------------------------------------------------------------------
# scikit-learn's split and LabelBinarizer, index for index

def _split_cases():
    rng = np.random.default_rng(4)
    y3 = rng.integers(0, 3, 101)
    ys = np.array(["cat", "dog", "bird"])[rng.integers(0, 3, 57)]
    onehot = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 60)]
    col = rng.integers(0, 12, (80, 1))  # 2-D labels: scikit-learn orders them as strings
    cases = []
    for n, y in ((101, y3), (57, ys), (60, onehot), (80, col), (10, np.array([0, 1] * 5)),
                 (2000, rng.integers(0, 2, 2000))):
        for kw in ({"test_size": 0.25}, {"test_size": 0.2, "train_size": 0.5}, {"test_size": 7},
                   {"train_size": 0.6}, {"train_size": 5, "test_size": 3}, {}):
            for rs in (42, 0, 7):
                cases.append((n, y, kw, rs))
    return cases


@pytest.fixture(params=[False, True], ids=["numpy-fallback", "via-sklearn"])
def use_sklearn(request, monkeypatch):
    """vggtl's own NumPy split and encoder (what runs without scikit-learn: the
    comparison with scikit-learn proves them), or scikit-learn's, called by vggtl."""
    monkeypatch.setattr(vggtl.data, "_USE_SKLEARN", request.param)
    return request.param


@pytest.mark.parametrize("stratified", [True, False], ids=["stratified", "shuffled"])
def test_split_equals_scikit_learn(stratified, use_sklearn):
    sk = pytest.importorskip("sklearn.model_selection")
    checked = 0
    for n, y, kw, rs in _split_cases():
        X = np.arange(n)
        try:
            ref = sk.train_test_split(X, y, random_state=rs, stratify=y if stratified else None, **kw)
        except ValueError:
            with pytest.raises(ValueError):
                vggtl.train_test_split(X, y, random_state=rs, stratify=y if stratified else None,
                                       **kw)
            continue
        got = vggtl.train_test_split(X, y, random_state=rs, stratify=y if stratified else None, **kw)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b, err_msg=f"n={n} {kw} random_state={rs}")
        checked += 1
    assert checked >= 90  # the rest: both refuse (too few samples per class)


def test_split_equals_scikit_learn_unshuffled_and_random_states(use_sklearn):
    sk = pytest.importorskip("sklearn.model_selection")
    X, y = np.arange(50).reshape(25, 2), np.arange(25) % 3
    for kw in ({"test_size": 0.3}, {"train_size": 10}, {"train_size": 0.4, "test_size": 0.4}):
        got = vggtl.train_test_split(X, y, shuffle=False, stratify=None, **kw)
        ref = sk.train_test_split(X, y, shuffle=False, **kw)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    # a RandomState instance is consumed as scikit-learn consumes it
    got = vggtl.train_test_split(X, y, stratify=y, random_state=np.random.RandomState(3))
    ref = sk.train_test_split(X, y, stratify=y, random_state=np.random.RandomState(3))
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    # the seed's call, and vggtl's defaults (stratified on y, random_state=42)
    y2 = np.eye(2)[np.arange(40) % 2]
    seed = sk.train_test_split(np.arange(40), y2, test_size=0.25, stratify=y2, random_state=42)
    for a, b in zip(vggtl.train_test_split(np.arange(40), y2, test_size=0.25), seed):
        np.testing.assert_array_equal(a, b)
    # three arrays, as scikit-learn takes any number
    got = vggtl.train_test_split(X, y, np.arange(25) * 10, random_state=1, stratify=None)
    ref = sk.train_test_split(X, y, np.arange(25) * 10, random_state=1)
    assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(got, ref))
    with pytest.raises(ValueError, match="test_size"):
        vggtl.train_test_split(X, y, test_size=True)
    with pytest.raises(ValueError, match="train_size"):
        vggtl.train_test_split(X, y, train_size=25)


@pytest.mark.parametrize("y", [[0, 1, 1, 0, 1], ["dog", "cat", "dog"], [3, 1, 2, 3, 7],
                               [5, 5, 5], [0.0, 2.0, 1.0], ["a", "b", "c", "b"],
                               [[0, 1, 1], [1, 0, 0], [0, 0, 1]]])
def test_label_binarizer_equals_scikit_learn(y):
    skp = pytest.importorskip("sklearn.preprocessing")
    for kw in ({}, {"neg_label": -1, "pos_label": 2}):
        ours, ref = vggtl.LabelBinarizer(**kw), skp.LabelBinarizer(**kw)
        a, b = ours.fit_transform(y), ref.fit_transform(y)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ours.classes_, ref.classes_)
        assert ours.y_type_ == ref.y_type_
        np.testing.assert_array_equal(ours.inverse_transform(a), ref.inverse_transform(b))


def test_label_binarizer_then_to_categorical_as_pyimagesearch():
    labels = ["dog", "cat", "cat", "dog"]
    lb = vggtl.LabelBinarizer()
    one = lb.fit_transform(labels)
    assert one.tolist() == [[1], [0], [0], [1]]  # two classes: one column
    two = vggtl.to_categorical(one)
    assert two.dtype == np.float32 and two.tolist() == [[0, 1], [1, 0], [1, 0], [0, 1]]
    assert vggtl.to_categorical([0, 2], num_classes=4).tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]
    with pytest.raises(ValueError, match="num_classes"):
        vggtl.to_categorical([3], num_classes=2)
    with pytest.raises(ValueError, match="neg_label"):
        vggtl.LabelBinarizer(neg_label=1, pos_label=0)


# crafted dtype states, and arrays as NumPy would never make them
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

from support import REPO  # noqa: E402
from support.pickle_files import array_then_dtype_state, shared_lists  # noqa: E402


# (type string, items, their bytes, a state NumPy never writes for that dtype)
U3 = ("U3", 2, "abcde\0".encode("utf-32-le"))
S3 = ("S3", 2, b"abcde\0")
FORGED_STATES = {
    "U-size-minus-1": (*U3, (3, "<", None, None, None, -1, 4, 8)),
    "U-size-8": (*U3, (3, "<", None, None, None, 8, 4, 8)),
    "U-size-13": (*U3, (3, "<", None, None, None, 13, 4, 8)),
    "U-alignment-minus-1": (*U3, (3, "<", None, None, None, 12, -1, 8)),
    "U-alignment-1": (*U3, (3, "<", None, None, None, 12, 1, 8)),
    "U-flags-0": (*U3, (3, "<", None, None, None, 12, 4, 0)),
    "U-byteorder-|": (*U3, (3, "|", None, None, None, 12, 4, 8)),
    "S-size-minus-1": (*S3, (3, "|", None, None, None, -1, 1, 0)),
    "S-size-100": (*S3, (3, "|", None, None, None, 100, 1, 0)),
    "S-alignment-minus-1": (*S3, (3, "|", None, None, None, 3, -1, 0)),
    "S-byteorder-<": (*S3, (3, "<", None, None, None, 3, 1, 0)),
    "u1-byteorder-<": ("u1", 2, b"\1\2", (3, "<", None, None, None, -1, -1, 0)),
    "f8-byteorder-|": ("f8", 1, bytes(8), (3, "|", None, None, None, -1, -1, 0)),
    "f8-size-4": ("f8", 1, bytes(8), (3, "<", None, None, None, 4, -1, 0)),
    "bool-flags-true": ("?", 1, b"\1", (3, "|", None, None, None, -1, -1, True)),
}


@pytest.mark.parametrize("case", list(FORGED_STATES))
def test_dtype_state_not_as_numpy_writes_it_is_refused(tmp_path, case):
    """NumPy's dtype.__setstate__ applies a string dtype's size and alignment as they
    come: a state with size -1 made an array of itemsize -1 (y.astype('U5') then
    wrote out of bounds). Every field of a dtype state must now be the one NumPy
    writes for that dtype in that byte order."""
    type_str, n, raw, state = FORGED_STATES[case]
    path = dump_bytes(tmp_path / "y.pickle", array_then_dtype_state(type_str, n, raw, state))
    with pytest.raises(UnsafePickleError, match="numpy.dtype state") as e:
        data.load_pickle(path)
    assert path in str(e.value)


@pytest.mark.parametrize("type_str, n, raw", [U3, S3, ("u1", 2, b"\1\2"), ("f8", 1, bytes(8))])
def test_dtype_state_as_numpy_writes_it_loads(tmp_path, type_str, n, raw):
    """The same pickles with the state NumPy writes load (the control of the test above)."""
    d = np.dtype(type_str)
    path = dump_bytes(tmp_path / "y.pickle",
                      array_then_dtype_state(type_str, n, raw, d.__reduce__()[2]))
    got = data.load_pickle(path)
    np.testing.assert_array_equal(got, np.frombuffer(raw, d))


SEGFAULT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from support.pickle_files import dtype_state_twice
    from vggtl import data
    open({path!r}, "wb").write(dtype_state_twice())
    try:
        y = data.load_pickle({path!r})
    except data.UnsafePickleError as e:
        print("UnsafePickleError:", e)
    else:
        print("itemsize", y.dtype.itemsize, flush=True)
        print(y.astype("U5"))
""")


def test_second_dtype_state_cannot_corrupt_memory(tmp_path):
    """A dtype's state set a second time, after an array took the dtype: the array's
    itemsize became -1 and y.astype('U5') segfaulted or aborted ("corrupted size
    vs. prev_size"). A dtype now gets its state once. Run in a child process, so
    that a regression fails this test instead of killing the test run."""
    path = str(tmp_path / "y.pickle")
    code = SEGFAULT.format(tests=os.path.join(REPO, "tests"), path=path)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout[-500:]} {r.stderr[-1000:]}"
    assert r.stdout.startswith(f"UnsafePickleError: {path}: the pickle sets the state of a "
                               f"dtype twice"), r.stdout


def test_every_returned_array_is_checked():
    """What the unpickler hands out is checked as a whole, whatever let it through:
    arrays with strides of no C or Fortran block, over a buffer too small, or of a
    dtype NumPy would not make, are refused (here made by hand, since the pickle
    checks above keep a pickle from making them)."""
    a = np.arange(12, dtype=np.uint8)
    ok = [a, a.reshape(3, 4), np.asfortranarray(a.reshape(3, 4)),
          np.frombuffer(b"abcd", np.uint8).reshape(2, 2), np.float32(1)]
    data._check_loaded(ok, 1 << 20, "X.pickle")
    strided = np.lib.stride_tricks.as_strided(a, shape=(4, 4), strides=(1, 1))
    over = np.lib.stride_tricks.as_strided(a, shape=(24,), strides=(1,))
    meta = np.zeros(2, dtype=np.dtype("u1", metadata={"a": 1}))
    for bad, match in ((strided, "strides"), (over, "bytes over a buffer of 12"),
                       ([a, (strided,)], "strides")):
        with pytest.raises(UnsafePickleError, match=match):
            data._check_loaded(bad, 1 << 20, "X.pickle")
    data._check_loaded(meta, 1 << 20, "X.pickle")  # metadata: not a different dtype


# ---------------------------------------------------------------------------
# shared references: a few kB standing for hundreds of MB


def test_memo_references_cannot_expand_a_small_pickle(tmp_path):
    """Nested lists that refer to the same lists over and over (pickle's memo): a
    2 kB X.pickle became a 192 MB array (peak far above it). What a pickle may
    expand to is now bounded by its own size: a ValueError naming the file, before
    any array is made."""
    path = dump_bytes(tmp_path / "X.pickle", shared_lists((600, 200, 200)))  # 600 images
    assert os.path.getsize(path) < 4096
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="refers to the same lists or arrays") as e:
            vggtl.load_pickles(path, dump(tmp_path / "y.pickle", [0] * 600))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value).startswith(path + ": ") and "24000000 values" in str(e.value)
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB for a {os.path.getsize(path)}-byte file"


def _copies_of_one_memoised_bytes(module, name, copies, mib=1):
    """A protocol-2 pickle of a list of ``copies`` calls module.name(b) on one
    memoised ``mib`` MiB bytes object: each call copies it."""
    b = b"\x01" * (mib << 20)
    body = (b"\x80\x02c" + module + b"\n" + name + b"\nq\x00B" + struct.pack("<I", len(b)) + b
            + b"q\x01]q\x02(" + b"h\x00h\x01\x85R" * copies + b"e.")
    return body


@pytest.mark.parametrize("module, name", [(b"builtins", b"bytearray"),
                                          (b"__builtin__", b"bytearray")])
def test_allowed_calls_cannot_multiply_a_small_pickle(tmp_path, module, name):
    """bytearray(b) on one memoised megabyte, 300 times: a 1 MB pickle asked for
    300 MB before anything could check it. What allowed calls build is charged as
    they build it; the pickle is refused at 16 times its size (or 64 MiB)."""
    path = dump_bytes(tmp_path / "X.pickle", _copies_of_one_memoised_bytes(module, name, 300))
    assert os.path.getsize(path) < (1 << 20) + 4096
    tracemalloc.start()
    try:
        with pytest.raises(UnsafePickleError, match=r"builds more than 67108864 bytes") as e:
            data.load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value).startswith(path + ": ")
    assert peak < 100 << 20, f"{peak / 2 ** 20:.0f} MiB for a {os.path.getsize(path)}-byte file"
    # the same calls within the budget load: charging is not refusing
    ok = dump_bytes(tmp_path / "ok.pickle", _copies_of_one_memoised_bytes(module, name, 3))
    got = data.load_pickle(ok)
    assert len(got) == 3 and all(type(g) is bytearray and len(g) == 1 << 20 for g in got)


def test_every_calling_opcode_is_charged():
    """Both unpicklers charge every opcode that calls what the allow-list gave,
    also where a reader replaced a handler (data's checked BUILD)."""
    from vggtl._safe_pickle import CALLING_OPCODES
    from vggtl.weights import torch_pth
    for cls in (data._SafeUnpickler, torch_pth._RestrictedUnpickler):
        for op in CALLING_OPCODES:
            assert getattr(cls.dispatch[op[0]], "charged", False), (cls.__name__, op)


def test_padded_strings_cannot_expand_a_small_pickle(tmp_path):
    """np.asarray pads every string to the longest: 20,000 one-letter labels and one
    of 1,000 letters made an 80 MB array from a 60 kB pickle. Bounded the same way."""
    y = [str(i % 10) for i in range(20000)] + ["b" * 1000]
    path = dump(tmp_path / "y.pickle", y, 4)
    with pytest.raises(ValueError, match=r"20001 values \(80004000 bytes"):
        data.load_pickle(path)


def test_cyclic_lists_are_refused(tmp_path):
    a = []
    a.append(a)
    b = [1, [2, a]]
    for obj in (a, b, {"k": b}):
        with pytest.raises(ValueError, match="contains itself") as e:
            data.load_pickle(dump(tmp_path / "c.pickle", obj))
        assert str(tmp_path) in str(e.value)


def test_shared_references_that_tutorials_make_still_load(tmp_path, rng):
    """What users' pickles do share stays readable: labels that are the same few
    strings (200,000 references to 30-letter class names), one-hot rows taken from
    one list of rows, an image list holding one array several times, nested lists
    of pixel ints, and large arrays of any size the file holds."""
    names = [f"class_{i}_" + "x" * 22 for i in range(3)]
    y = [names[i % 3] for i in range(200_000)]
    path = dump(tmp_path / "y.pickle", y, 4)
    assert os.path.getsize(path) * 16 < 200_000 * 4 * 30  # beyond 16x, under the floor
    got = data.load_pickle(path)
    assert got == y and data._labels_array(got, path).shape == (200_000,)
    rows = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    onehot = [rows[i % 3] for i in range(50_000)]
    assert data._labels_array(data.load_pickle(dump(tmp_path / "o.pickle", onehot)),
                              "o").shape == (50_000, 3)
    img = rng.integers(0, 256, (50, 50, 1), dtype=np.uint8)
    X = data._as_images(data.load_pickle(dump(tmp_path / "X.pickle", [img] * 8)), "X")
    assert X.shape == (8, 50, 50, 1)
    nested = rng.integers(0, 256, (20, 50, 50)).tolist()
    X = data._as_images(data.load_pickle(dump(tmp_path / "n.pickle", nested)), "n")
    np.testing.assert_array_equal(X, np.array(nested))
    big = np.zeros((300, 224, 224, 3), np.uint8)  # 45 MB: expands to its own size
    assert data.load_pickle(dump(tmp_path / "b.pickle", big, 4)).shape == big.shape


def test_numbers_among_strings_count_as_strings(tmp_path):
    """np.asarray turns numbers mixed with strings (also in different sublists) into
    strings of up to 32 characters, 128 bytes each: counted so."""
    y = [[7] * 600_000, ["a"]]  # 1.2 MB of pickle: 600,001 values as '<U32', 77 MB
    path = dump(tmp_path / "y.pickle", y, 4)
    assert os.path.getsize(path) * 16 < 600_001 * 128
    with pytest.raises(ValueError, match=r"600001 values \(76800128 bytes"):
        data.load_pickle(path)
    assert data.load_pickle(dump(tmp_path / "n.pickle", [[7] * 600_000, [1.5]])) is not None


def _label_cases():
    rng = np.random.default_rng(11)
    words = np.array(["cat", "dog", "bird", "a long name", "Z", "é", ""])
    cases = []
    for n in (2, 3, 10, 57, 400):
        for k in (2, 3, 7):
            cases.append(rng.integers(0, k, n) * 3 - 4)                      # ints, negatives
            cases.append(words[rng.integers(0, k, n)])                        # strings
            cases.append((rng.integers(0, k, n) / 2.0).astype(np.float64))    # floats
            cases.append(list(words[rng.integers(0, k, n)]))                  # a list
    cases += [np.array([True, False, True]), np.array([2 ** 40, 1, 2 ** 40], dtype=np.int64),
              np.array([1, 0], dtype=np.uint8), ["b", "a"], [3, 1, 2]]
    return [c for c in cases if len(np.unique(np.asarray(c))) >= 2]


def test_label_encoder_equals_scikit_learn(use_sklearn):
    skp = pytest.importorskip("sklearn.preprocessing")
    cases = _label_cases()
    assert len(cases) >= 60
    for y in cases:
        ours, ref = vggtl.LabelEncoder(), skp.LabelEncoder()
        a, b = ours.fit_transform(y), ref.fit_transform(y)
        np.testing.assert_array_equal(ours.classes_, ref.classes_)
        assert ours.classes_.dtype == ref.classes_.dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ours.inverse_transform(a), ref.inverse_transform(b))
        part = np.asarray(y)[::2]
        np.testing.assert_array_equal(ours.transform(part), ref.transform(part))


def test_scikit_learn_computes_where_installed(monkeypatch):
    skp = pytest.importorskip("sklearn.preprocessing")
    skm = pytest.importorskip("sklearn.model_selection")
    calls = []
    for mod, name in ((skp, "LabelEncoder"), (skm, "ShuffleSplit"),
                      (skm, "StratifiedShuffleSplit")):
        real = getattr(mod, name)

        def make(real=real, name=name):
            class Spy(real):
                def __init__(self, *a, **k):
                    calls.append(name)
                    super().__init__(*a, **k)
            Spy.__name__ = name
            return Spy
        monkeypatch.setattr(mod, name, make())
    y = np.array(["a", "b"] * 10)
    vggtl.LabelEncoder().fit_transform(y)
    vggtl.train_test_split(np.arange(20), y)
    vggtl.train_test_split(np.arange(20), y, stratify=None)
    assert calls.count("LabelEncoder") == 2  # fit and transform
    assert calls.count("StratifiedShuffleSplit") == 1 and calls.count("ShuffleSplit") == 1
    calls.clear()
    monkeypatch.setattr(vggtl.data, "_USE_SKLEARN", False)  # the fallback: none of it
    vggtl.LabelEncoder().fit_transform(y)
    vggtl.train_test_split(np.arange(20), y)
    assert calls == []


def test_without_scikit_learn_the_numpy_versions_run():
    code = ("import sys\n"
            "sys.modules['sklearn'] = None\n"
            "import numpy as np, vggtl\n"
            "y = np.array([0, 1, 2] * 8)\n"
            "tr, te = vggtl.train_test_split(np.arange(24), y, return_indices=True)\n"
            "print(sorted(np.r_[tr, te].tolist()) == list(range(24)), len(te))\n"
            "print(vggtl.LabelEncoder().fit_transform(['b', 'a', 'b']).tolist())\n"
            "print(vggtl.confusion_matrix([0, 1, 1], [0, 1, 0]).tolist())\n"
            "print('sklearn' in sys.modules and sys.modules['sklearn'] is not None)\n")
    import subprocess
    import sys as _sys
    r = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["True 6", "[1, 0, 1]", "[[1, 0], [1, 1]]", "False"]
