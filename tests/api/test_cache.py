"""The feature cache: a second extract computes nothing (the core's
image counter, not timing), each part of the key changed alone misses and nothing
else does, SIGKILL in the middle resumes to the same bytes as an uninterrupted run,
damaged or truncated chunks are recomputed and never returned, two processes at
once compute once, float16 storage, info/clear, LRU eviction, a read-only folder,
Ctrl-C, fit on cached features, augmented views.

Images are 32 x 32 (block5_pool is 1 x 1 x 512) and chunks are made small
(CHUNK_PIXELS) so that an entry has several of them. XDG_CACHE_HOME points at a
temporary folder in every test; subprocesses get the same.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import numpy as np
import pytest

import vggtl
from vggtl import _core
from vggtl import cache as vc
from vggtl import _kernels  # the single kernels, for tests
from vggtl import vgg16 as vgg16_module

from support import REPO
N = 20
CHUNK = 4  # images per chunk in these tests (CHUNK_PIXELS = CHUNK * 32 * 32)


def computed():
    return _kernels.vgg16_forward_images()


def count(fn):
    """(result, images the core ran) of fn()."""
    c0 = computed()
    out = fn()
    return out, computed() - c0


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty XDG_CACHE_HOME, small chunks, no size limit, fresh module state."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VGGTL_CACHE_LIMIT", raising=False)
    monkeypatch.setattr(vc, "CHUNK_PIXELS", CHUNK * 32 * 32)
    monkeypatch.setattr(vc.housekeeping, "_limit", None)
    monkeypatch.setattr(vc.housekeeping, "_limit_set", False)
    monkeypatch.setattr(vc.run, "_warned", set())
    monkeypatch.setattr(vc.store, "_verified_here", {})
    return tmp_path / "xdg" / "vggtl" / "features"


@pytest.fixture(scope="module")
def base():
    return vggtl.VGG16(weights=None, seed=0)


@pytest.fixture
def X(rng):
    return rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)


def same_features(got, ref):
    """Bit for bit: how the core groups images into passes changes nothing."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def entries(root):
    return sorted(p for p in os.listdir(root) if vc.store.ENTRY_RE.match(p)) if os.path.isdir(root) else []


def only_entry(root):
    (e,) = entries(root)
    return os.path.join(root, e)


def manifest(folder):
    return vc.load_manifest(os.path.join(folder, "manifest.json"))


# ---- hits and keys ----------------------------------------------------------------

def test_second_extract_computes_nothing(home, base, X):
    F, n1 = count(lambda: base.extract(X, progress=False))
    G, n2 = count(lambda: base.extract(X, progress=False))
    assert (n1, n2) == (N, 0)
    assert isinstance(G, np.memmap) and not G.flags.writeable
    assert G.shape == (N, 1, 1, 512) and G.dtype == np.float32
    same_features(G, base.predict(X))
    np.testing.assert_array_equal(F, G)
    # a later hit, after the stamp is old enough to be trusted, still computes nothing
    H, n3 = count(lambda: base.extract(X, progress=False))
    assert n3 == 0 and np.array_equal(H, G)
    assert os.listdir(only_entry(home)) and not os.path.exists(
        os.path.join(only_entry(home), "chunks"))  # chunk files are gone once assembled


def test_leftover_chunk_files_of_a_complete_entry_go(home, base, X):
    """A process killed after the manifest said complete but before the chunk
    files were removed: the next hit removes them."""
    base.extract(X, progress=False)
    chunks = os.path.join(only_entry(home), "chunks")
    os.makedirs(chunks)
    with open(os.path.join(chunks, "000000.bin"), "wb") as f:
        f.write(b"x" * 100)
    _, n = count(lambda: base.extract(X, progress=False))
    assert n == 0 and not os.path.exists(chunks)


def test_each_key_part_changed_alone_misses(home, base, X):
    X = X[:8]
    base.extract(X, progress=False)
    w = base.get_weights()
    k, b = w["block5_conv3"]
    k = k.copy()
    k[0, 0, 0, 0] += 1e-3
    w["block5_conv3"] = (k, b)
    other_weights = vggtl.VGG16(weights=w)
    X2 = X.copy()
    X2[7, 3, 4, 1] ^= 1
    variants = {
        "weights": lambda: other_weights.extract(X, progress=False),
        "layer": lambda: base.extract(X, layer="block4_pool", progress=False),
        "pooling": lambda: vggtl.VGG16(weights=None, seed=0, pooling="avg").extract(
            X, progress=False),
        "preprocess": lambda: vggtl.VGG16(weights=None, seed=0, preprocess="scale").extract(
            X, progress=False),
        "dtype": lambda: base.extract(X, dtype="float16", progress=False),
        "view": lambda: base.extract(X, view=("flip", 0), transform=lambda x, i: x[:, :, ::-1],
                                     progress=False),
        "X": lambda: base.extract(X2, progress=False),
    }
    for part, fn in variants.items():
        _, n = count(fn)
        assert n == len(X), f"changing the {part} alone must miss"
    assert len(entries(home)) == 1 + len(variants)
    # input size: the one part that cannot change alone through extract (X changes
    # with it); make_key shows it is in the key
    key = vc.make_key(base, X=X)
    assert vc.key_id(key) != vc.key_id(vc.make_key(base, X=X, input_size=(64, 64)))
    assert vc.make_key(base, X=X) == key


def test_nothing_else_misses(home, base, X):
    base.extract(X, batch_size=8, progress=False)
    same_weights = vggtl.VGG16(weights=base.get_weights(), preprocess=base.preprocess)
    mm_path = home.parent / "x.npy"
    os.makedirs(home.parent, exist_ok=True)
    np.save(mm_path, X)
    Xf = np.asfortranarray(X)  # same values, other memory order
    calls = {
        "batch_size": lambda: base.extract(X, batch_size=3, progress=False),
        "progress": lambda: base.extract(X, progress=True),
        "another model, same weights": lambda: same_weights.extract(X, progress=False),
        "a copy of X": lambda: base.extract(X.copy(), progress=False),
        "X as a memmap": lambda: base.extract(np.load(mm_path, mmap_mode="r"), progress=False),
        "X in Fortran order": lambda: base.extract(Xf, progress=False),
        "threads": lambda: (vggtl.set_num_threads(1), base.extract(X, progress=False))[1],
    }
    threads = vggtl.get_num_threads()
    try:
        for what, fn in calls.items():
            _, n = count(fn)
            assert n == 0, f"{what} must hit"
    finally:
        vggtl.set_num_threads(threads)
    assert len(entries(home)) == 1


def test_weights_changed_in_place_miss(home, X):
    base = vggtl.VGG16(weights=None, seed=3)
    base.extract(X, progress=False)
    # the arrays are read-only; fine-tuning writes through _writing, as here
    with pytest.raises(ValueError, match="read-only"):
        base._weights["block3_conv1"][0][...] *= np.float32(1.01)
    with base._writing(["block3_conv1"]):
        base._weights["block3_conv1"][0][...] *= np.float32(1.01)
    _, n = count(lambda: base.extract(X, progress=False))
    assert n == N
    # block2_pool does not read block3's weights: a change there does not touch it
    base.extract(X, layer="block2_pool", progress=False)
    with base._writing(["block3_conv1"]):
        base._weights["block3_conv1"][0][...] *= np.float32(1.01)
    _, n = count(lambda: base.extract(X, layer="block2_pool", progress=False))
    assert n == 0


def test_array_digest(rng):
    a = rng.integers(0, 256, (50, 40, 40, 3), dtype=np.uint8)
    d = vc.array_digest(a)
    assert d == vc.array_digest(a.copy()) == vc.array_digest(np.asfortranarray(a))
    assert d != vc.array_digest(a.astype(np.float32))
    assert d != vc.array_digest(a.reshape(25, 80, 40, 3))
    b = a.copy()
    b[49, 39, 39, 2] ^= 0x80
    assert d != vc.array_digest(b)
    old = vc.HASH_BLOCK
    try:  # many blocks (the threaded path) give the same as one over the same blocks
        vc.HASH_BLOCK = 40 * 40 * 3 * 7
        many = vc.array_digest(a)
        assert many == vc.array_digest(a.copy()) and many != vc.array_digest(b)
    finally:
        vc.HASH_BLOCK = old


# ---- storage ------------------------------------------------------------------------

def test_float16_within_1e3(home, base, X):
    F32 = base.predict(X)
    F16, n = count(lambda: base.extract(X, dtype="float16", progress=False))
    assert n == N and F16.dtype == np.float16 and isinstance(F16, np.memmap)
    np.testing.assert_allclose(F16.astype(np.float32), F32, rtol=1e-3, atol=1e-6)
    size = os.path.getsize(os.path.join(only_entry(home), "data.npy"))
    assert size < F32.nbytes * 0.5 + 256
    _, n = count(lambda: base.extract(X, dtype="float16", progress=False))
    assert n == 0


def test_cache_false_stores_nothing(home, base, X):
    F, n = count(lambda: base.extract(X, cache=False, progress=False))
    assert n == N and not isinstance(F, np.memmap) and F.dtype == np.float32
    same_features(F, base.predict(X))
    assert not os.path.exists(home)


def test_cache_folder_argument(tmp_path, home, base, X):
    folder = tmp_path / "mine"
    base.extract(X, cache=folder, progress=False)
    assert len(entries(folder)) == 1 and not os.path.exists(home)
    _, n = count(lambda: base.extract(X, cache=str(folder), progress=False))
    assert n == 0
    assert vc.info(folder)["entries"][0]["n"] == N


def test_bad_arguments(home, base, X):
    with pytest.raises(ValueError, match="dtype"):
        base.extract(X, dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        base.extract(X, batch_size=0)
    with pytest.raises(ValueError, match="transform"):
        base.extract(X, transform=lambda x, i: x)  # a transform needs a view
    with pytest.raises(ValueError, match="view"):
        base.extract(X, view="flip")
    with pytest.raises(TypeError, match="cache"):
        base.extract(X, cache=3)
    with pytest.raises(ValueError, match="layer"):
        base.extract(X, layer="block9_pool")
    with pytest.raises(ValueError, match="at least 32"):
        base.extract(np.zeros((2, 16, 16, 3), np.uint8))
    assert not os.path.exists(home) or entries(home) == []


# ---- damage and interruption ------------------------------------------------------------

def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def test_truncated_or_damaged_data_is_recomputed(home, base, X, monkeypatch):
    F = np.array(base.extract(X, progress=False))
    folder = only_entry(home)
    data = os.path.join(folder, "data.npy")
    m = manifest(folder)
    chunk_bytes = m["chunk"] * 512 * 4
    header = os.path.getsize(data) - N * 512 * 4

    # a byte changed inside chunk 2, the file's times put back (as a fuzzer might)
    st = os.stat(data)
    _flip(data, header + 2 * chunk_bytes + 100)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    G, n = count(lambda: base.extract(X, progress=False))
    assert n == m["chunk"]  # that chunk only
    np.testing.assert_array_equal(G, F)

    # truncated: the last chunk is short
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) - 7)
    G, n = count(lambda: base.extract(X, progress=False))
    assert n == N - (len(m["chunks"]) - 1) * m["chunk"]
    np.testing.assert_array_equal(G, F)

    # the header damaged: every region is suspect
    _flip(data, 20)
    G, n = count(lambda: base.extract(X, progress=False))
    assert n == N
    np.testing.assert_array_equal(G, F)

    # a trusted stamp does not hide a change: ctime moves with any write
    monkeypatch.setattr(vc, "RACY_NS", -10**12)
    base.extract(X, progress=False)  # verifies and stamps
    _flip(data, header + 5)
    G, n = count(lambda: base.extract(X, progress=False))
    assert n == m["chunk"]
    np.testing.assert_array_equal(G, F)


def test_damaged_manifest_is_a_miss(home, base, X, rng):
    X = X[:8]
    F = np.array(base.extract(X, progress=False))
    path = os.path.join(only_entry(home), "manifest.json")
    raw = open(path, "rb").read()
    for damage in (raw[: len(raw) // 2], raw.replace(b'"complete": true', b'"complete": false'),
                   rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), b"", b"[]", b"{}"):
        with open(path, "wb") as f:
            f.write(damage)
        G, n = count(lambda: base.extract(X, progress=False))
        assert n == len(X)
        np.testing.assert_array_equal(G, F)


def test_manifest_fields_are_checked_even_with_a_valid_digest(home, base, X):
    """A manifest rewritten with a correct self-digest but impossible fields (as a
    fuzzer that knows the format writes) is refused, never trusted or crashed on."""
    F = np.array(base.extract(X, progress=False))
    path = os.path.join(only_entry(home), "manifest.json")
    good = manifest(only_entry(home))
    bad_fields = [("n", 10 ** 30), ("n", True), ("n", -1), ("chunk", 0), ("chunk", 1.5),
                  ("item_shape", [2 ** 62, 2 ** 62]), ("item_shape", []), ("item_shape", [1, "1"]),
                  ("dtype", "float64"), ("dtype", ["float32"]), ("chunks", [1, 2]),
                  ("chunks", [-1] * len(good["chunks"])), ("chunks", [2 ** 40] * len(good["chunks"])),
                  ("complete", 1), ("key", []), ("version", 99), ("batch_size", None)]
    for field, value in bad_fields:
        m = dict(good, **{field: value})
        with open(path, "wb") as f:
            f.write(vc.store.wrap_manifest(m))
        assert vc.load_manifest(path) is None, field
        vc.info()  # never raises on what it finds
    with open(path, "wb") as f:
        f.write(b"[" * 100000 + b"]" * 100000)  # deeper than json can parse
    assert vc.load_manifest(path) is None
    G, n = count(lambda: base.extract(X, progress=False))
    assert n == N
    np.testing.assert_array_equal(G, F)


def test_random_damage_is_never_returned(home, base, X, rng, monkeypatch):
    """A small fuzz: a random byte of a random file of the entry changed, or the
    file cut short, 15 times; every extract still returns the right features."""
    monkeypatch.setattr(vc, "RACY_NS", -10**12)  # stamps trusted at once: the hard case
    X = X[:8]  # two chunks
    F = np.array(base.extract(X, progress=False))
    folder = only_entry(home)
    for _ in range(15):
        # not the lock, nor vggtl's marker: an entry whose marker is gone too is no
        # longer known as vggtl's, and is computed without the cache
        names = sorted(p for p in os.listdir(folder) if p not in ("lock", vc.MARKER))
        path = os.path.join(folder, names[rng.integers(len(names))])
        size = os.path.getsize(path)
        if size and rng.random() < 0.8:
            _flip(path, int(rng.integers(size)))
        else:
            with open(path, "r+b") as f:
                f.truncate(int(rng.integers(size + 1)))
        G = base.extract(X, progress=False)
        np.testing.assert_array_equal(G, F)


def _interrupting(base, after_calls, monkeypatch):
    """base.predict raises KeyboardInterrupt on its (after_calls + 1)-th call, as
    Ctrl-C while a chunk computes would."""
    real = type(base).predict
    calls = [0]

    def predict(self_, *a, **kw):
        calls[0] += 1
        if calls[0] > after_calls:
            raise KeyboardInterrupt
        return real(base, *a, **kw)

    monkeypatch.setattr(base, "predict", predict.__get__(base))
    return lambda: monkeypatch.delattr(base, "predict")


def test_ctrl_c_keeps_finished_chunks_and_resumes(home, X, monkeypatch):
    base = vggtl.VGG16(weights=None, seed=5)
    ref = np.array(base.extract(X, cache=home.parent / "ref", batch_size=2, progress=False))
    undo = _interrupting(base, after_calls=3, monkeypatch=monkeypatch)  # a chunk: one pass
    with pytest.raises(KeyboardInterrupt):
        base.extract(X, batch_size=2, progress=False)
    undo()
    folder = only_entry(home)
    m = manifest(folder)
    done = [k for k, c in enumerate(m["chunks"]) if c is not None]
    assert done == [0, 1, 2] and not m["complete"]
    assert not [p for p in os.listdir(folder) if p.endswith(".part")]
    # the resume computes the rest only, with the batch size the entry started with
    F, n = count(lambda: base.extract(X, batch_size=16, progress=False))
    assert n == N - 3 * CHUNK
    assert manifest(folder)["batch_size"] == 2
    np.testing.assert_array_equal(F, ref)  # bit for bit


def test_damaged_chunk_files_are_recomputed(home, X, monkeypatch):
    base = vggtl.VGG16(weights=None, seed=5)
    ref = np.array(base.extract(X, cache=home.parent / "ref", batch_size=8, progress=False))
    undo = _interrupting(base, after_calls=4, monkeypatch=monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        base.extract(X, batch_size=8, progress=False)
    undo()
    folder = only_entry(home)
    chunks = os.path.join(folder, "chunks")
    assert sorted(os.listdir(chunks)) == [f"{k:06d}.bin" for k in range(4)]
    with open(os.path.join(chunks, "000000.bin"), "r+b") as f:
        f.truncate(100)                                   # truncated
    _flip(os.path.join(chunks, "000002.bin"), 333)        # damaged
    os.unlink(os.path.join(chunks, "000003.bin"))         # lost
    F, n = count(lambda: base.extract(X, batch_size=8, progress=False))
    assert n == N - CHUNK  # only chunk 1 was still good
    np.testing.assert_array_equal(F, ref)


CHILD = textwrap.dedent("""
    import json, os, sys, time, numpy as np, vggtl
    from vggtl import _core, _kernels, cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    go = os.environ.get("GO_FILE")
    while go and not os.path.exists(go):
        time.sleep(0.005)
    c0 = _kernels.vgg16_forward_images()
    F = base.extract(X, batch_size=4, progress=False, **{kwargs})
    print(json.dumps({{"computed": _kernels.vgg16_forward_images() - c0,
                      "sum": float(np.asarray(F, dtype=np.float64).sum()),
                      "memmap": isinstance(F, np.memmap)}}), flush=True)
""")


def child(env_home, n=N, chunk=CHUNK, kwargs="{}", **popen):
    env = dict(os.environ, XDG_CACHE_HOME=str(env_home))
    env.pop("VGGTL_CACHE_LIMIT", None)
    env.update(popen.pop("env", {}))
    return subprocess.Popen([sys.executable, "-c", CHILD.format(n=n, chunk=chunk, kwargs=kwargs)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_mid_extraction_resumes_bit_for_bit(tmp_path):
    n = 64
    ref_home, home = tmp_path / "ref", tmp_path / "killed"
    finish(child(ref_home, n=n))
    ref = np.load(os.path.join(only_entry(ref_home / "vggtl" / "features"), "data.npy"))
    root = home / "vggtl" / "features"
    kills = 0
    for want in (2, 6):  # kill twice, the second time further along
        p = child(home, n=n)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and p.poll() is None:
                m = manifest(only_entry(root)) if entries(root) else None
                if m is not None and sum(c is not None for c in m["chunks"]) >= want:
                    break
                time.sleep(0.002)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            p.wait(timeout=60)
    assert kills >= 1
    m = manifest(only_entry(root))
    assert m is not None and not m["complete"]  # something was left to do
    done = sum(c is not None for c in m["chunks"])
    r = finish(child(home, n=n))
    assert r["computed"] <= n - done * CHUNK + CHUNK and r["memmap"]
    got = np.load(os.path.join(only_entry(root), "data.npy"))
    assert got.tobytes() == ref.tobytes()
    # and it is a hit from now on
    hit = vggtl.VGG16(weights=None, seed=2).extract(
        np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        cache=root, progress=False)
    assert hit.tobytes() == ref.tobytes()


def test_two_processes_compute_once(tmp_path):
    go = tmp_path / "go"
    ps = [child(tmp_path, env={"GO_FILE": str(go)}) for _ in range(2)]
    time.sleep(1.0)  # both imported vggtl and are waiting
    go.touch()
    rs = [finish(p) for p in ps]
    assert sorted(r["computed"] for r in rs) == [0, N]  # the work was done once
    assert rs[0]["sum"] == rs[1]["sum"] and all(r["memmap"] for r in rs)
    folder = only_entry(tmp_path / "vggtl" / "features")
    m = manifest(folder)
    assert m["complete"]
    # and the entry is whole: a third process reads it without computing
    assert finish(child(tmp_path))["computed"] == 0


# ---- read-only folders --------------------------------------------------------------------

RO_CHILD = textwrap.dedent("""
    import json, warnings, numpy as np, vggtl
    from vggtl import _core, _kernels
    X = np.random.default_rng(1).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c0 = _kernels.vgg16_forward_images()
        F = base.extract(X, progress=False)
        G = base.extract(X, progress=False)
        c1 = _kernels.vgg16_forward_images()
        P = base.predict(X)
        ok = np.abs(F - P).max() <= 1e-5 * np.abs(P).max() and np.array_equal(G, F)
    print(json.dumps({"computed": c1 - c0, "ok": bool(ok),
                      "memmap": isinstance(F, np.memmap),
                      "warnings": [str(x.message) for x in w]}))
""")


def _run_read_only(folder_home, how="permissions"):
    """RO_CHILD with XDG_CACHE_HOME=folder_home unwritable to it: by mode bits
    ("permissions"; a root test run drops CAP_DAC_OVERRIDE with setpriv, since root
    writes through any mode bits) or by a read-only bind mount ("mount", root only,
    in a private mount namespace)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(folder_home), HOME=str(folder_home))
    cmd = [sys.executable, "-c", RO_CHILD]
    root = os.geteuid() == 0
    if how == "mount":
        if not root or not shutil.which("unshare"):
            pytest.skip("a read-only bind mount needs root and unshare")
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
               str(folder_home)] + cmd
    elif root:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: mode bits cannot be tested")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] + cmd
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if how == "mount" and p.returncode != 0 and "mount" in p.stderr and "Traceback" not in p.stderr:
        pytest.skip(f"no bind mount here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def _tree_mode(top, dirs, files):
    for d, _, fs in os.walk(top):
        os.chmod(d, dirs)
        for f in fs:
            os.chmod(os.path.join(d, f), files)


@pytest.mark.parametrize("how", ["permissions", "mount"])
def test_read_only_folder_works_without_caching_and_says_so_once(how):
    top = tempfile.mkdtemp(prefix="vggtl-ro-")
    try:
        os.makedirs(os.path.join(top, "vggtl", "features"))
        if how == "permissions":
            _tree_mode(top, 0o555, 0o444)
        r = _run_read_only(top, how)
        assert r["ok"] and not r["memmap"] and r["computed"] == 24  # twice, uncached
        assert len(r["warnings"]) == 1 and "cannot be written" in r["warnings"][0]
        assert os.listdir(os.path.join(top, "vggtl", "features")) == []
    finally:
        _tree_mode(top, 0o755, 0o644)
        shutil.rmtree(top, ignore_errors=True)


def test_read_only_folder_still_serves_complete_entries():
    top = tempfile.mkdtemp(prefix="vggtl-ro-")
    try:
        env = dict(os.environ, XDG_CACHE_HOME=top)
        p = subprocess.run([sys.executable, "-c", RO_CHILD], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        _tree_mode(top, 0o555, 0o444)
        r = _run_read_only(top)
        assert r["ok"] and r["memmap"] and r["computed"] == 0 and r["warnings"] == []
    finally:
        _tree_mode(top, 0o755, 0o644)
        shutil.rmtree(top, ignore_errors=True)


# ---- info, clear, eviction ------------------------------------------------------------------

def test_info_and_clear(home, base, X, monkeypatch):
    assert vc.info()["entries"] == [] and vc.info()["bytes"] == 0
    base.extract(X, progress=False)
    base.extract(X, layer="block4_pool", progress=False)
    undo = _interrupting(base, after_calls=1, monkeypatch=monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        base.extract(X[:12], progress=False)
    undo()
    inf = vc.info()
    assert inf["path"] == str(home) and len(inf["entries"]) == 3
    by = {(e["layer"], e["n"]): e for e in inf["entries"]}
    assert by[("block5_pool", N)]["complete"] and by[("block5_pool", N)]["shape"] == (N, 1, 1, 512)
    assert by[("block4_pool", N)]["shape"] == (N, 2, 2, 512)
    assert not by[("block5_pool", 12)]["complete"] and by[("block5_pool", 12)]["chunks_done"] == 1
    assert by[("block4_pool", N)]["bytes"] >= N * 2 * 2 * 512 * 4
    assert inf["bytes"] == sum(e["bytes"] for e in inf["entries"])

    r = vc.clear(incomplete=True)
    assert r["removed"] == 1 and len(vc.info()["entries"]) == 2
    r = vc.clear(layer="block4_pool")
    assert r["removed"] == 1 and r["bytes_freed"] >= N * 2 * 2 * 512 * 4
    assert [e["layer"] for e in vc.info()["entries"]] == ["block5_pool"]
    _, n = count(lambda: base.extract(X, progress=False))
    assert n == 0
    assert vc.clear()["removed"] == 1
    assert vc.info()["entries"] == [] and not [p for p in os.listdir(home) if p != "."]
    _, n = count(lambda: base.extract(X, progress=False))
    assert n == N


def test_clear_skips_an_entry_in_use(home, base, X):
    base.extract(X, progress=False)
    folder = only_entry(home)
    with vc.store.Locked(folder, exclusive=False, create=False):
        r = vc.clear()
    assert r == {"removed": 0, "bytes_freed": 0, "busy": 1}
    assert vc.clear()["removed"] == 1


def test_lru_eviction(home, base, rng):
    Xs = [rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8) for _ in range(4)]
    base.extract(Xs[0], progress=False)
    one = vc.info()["bytes"]
    vc.set_size_limit(int(one * 2.5))  # room for two entries
    try:
        ids = []
        for i in (1, 0, 2):  # uses: 0, 1, 0 again, 2
            time.sleep(0.02)
            base.extract(Xs[i], progress=False)
            ids.append(vc.key_id(vc.make_key(base, X=Xs[i])))
        left = set(entries(home))
        assert left == {ids[1], ids[2]}  # Xs[1], the least recently used, went
        assert vc.info()["bytes"] <= vc.get_size_limit()
        _, n = count(lambda: base.extract(Xs[0], progress=False))
        assert n == 0
        _, n = count(lambda: base.extract(Xs[1], progress=False))
        assert n == 8
        vc.set_size_limit("1KB")  # smaller than one entry: the newest stays
        base.extract(Xs[3], progress=False)
        assert entries(home) == [vc.key_id(vc.make_key(base, X=Xs[3]))]
    finally:
        vc.set_size_limit(None)


def test_size_limit_from_environment(home, monkeypatch):
    monkeypatch.setenv("VGGTL_CACHE_LIMIT", "1.5GiB")
    assert vc.get_size_limit() == int(1.5 * (1 << 30))
    monkeypatch.setenv("VGGTL_CACHE_LIMIT", "20GB")
    assert vc.get_size_limit() == 20 * 10 ** 9
    with pytest.raises(ValueError, match="limit"):
        vc.set_size_limit("lots")
    with pytest.raises(ValueError, match="limit"):  # a float of inf: was an OverflowError
        vc.set_size_limit("9" * 400 + "GB")


# ---- users of the cache ----------------------------------------------------------------------

def test_fit_uses_the_cache(home, X, rng):
    y = rng.integers(0, 2, N)
    base = vggtl.VGG16(weights=None, seed=0, input_shape=(32, 32, 3))

    def fit(**kw):
        m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(8, activation="relu"),
                                            vggtl.Dense(2, activation="softmax")], **kw)
        m.compile(optimizer=vggtl.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        h = m.fit(X[:14], y[:14], epochs=2, verbose=0, validation_data=(X[14:], y[14:]))
        return h.history

    h1, n1 = count(fit)
    h2, n2 = count(fit)
    assert (n1, n2) == (N, 0)
    assert h1 == h2
    h3, n3 = count(lambda: fit(cache=False))
    assert n3 == N
    for k, v in h1.items():  # the same up to the last bits of the features (batching)
        assert h3[k] == pytest.approx(v, rel=1e-5)
    assert len(entries(home)) == 2  # training and validation images


def test_augmented_views(home, base, X):
    seen = []

    def flip(images, index):
        seen.append(index.copy())
        return images[:, :, ::-1]

    F, n = count(lambda: base.extract(X, view=("flip-v1", 0), transform=flip, progress=False))
    assert n == N
    np.testing.assert_array_equal(np.concatenate(seen[1:]), np.arange(N))  # [0] is the probe
    same_features(F, base.predict(X[:, :, ::-1]))
    digest = vc.array_digest(X)
    _, n = count(lambda: base.extract(X, view=("flip-v1", 0), transform=flip, x_digest=digest,
                                      progress=False))
    assert n == 0
    _, n = count(lambda: base.extract(X, view=("flip-v1", 1), transform=flip, progress=False))
    assert n == N


def test_progress_bar_shows_images_per_second(home, base, X, capsys):
    pytest.importorskip("tqdm")
    base.extract(X, progress=True)
    err = capsys.readouterr().err
    assert "img/s" in err and f"{N}/{N}" in err
    base.extract(X, progress=True)  # a hit is silent
    assert capsys.readouterr().err == ""
    base.extract(X[:8], progress=False)
    assert capsys.readouterr().err == ""


# ---- a hostile shared cache --------------------------------------------------------------------
# An attacker who can hand you arrays, or who shares the cache folder with you (another
# user of a group-writable folder, a Dask worker's account), must get neither wrong
# features for your X, nor a write, read or removal outside vggtl's own entries, nor a
# process that waits for ever.

_P1, _P2 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F
_P3, _P4, _P5 = 0x165667B19E3779F9, 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
_M64 = (1 << 64) - 1
_OLD_SEEDS = (0, 0x5851F42D4C957F2D)  # the two seeds of the key vggtl used before (XXH64)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc, v):
    return (_rotl((acc + v * _P2) & _M64, 31) * _P1) & _M64


def _xxh64(data: bytes, seed: int) -> int:
    """XXH64, as the reference implementation (checked on its published vectors)."""
    n, p = len(data), 0
    word = lambda i: int.from_bytes(data[i:i + 8], "little")  # noqa: E731
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while p + 32 <= n:
            v = [_round(v[j], word(p + 8 * j)) for j in range(4)]
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for x in v:
            h = (((h ^ _round(0, x)) * _P1) + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while p + 8 <= n:
        h = (_rotl(h ^ _round(0, word(p)), 27) * _P1 + _P4) & _M64
        p += 8
    if p + 4 <= n:
        h = (_rotl(h ^ (int.from_bytes(data[p:p + 4], "little") * _P1 & _M64), 23) * _P2
             + _P3) & _M64
        p += 4
    while p < n:
        h = (_rotl(h ^ (data[p] * _P5 & _M64), 11) * _P1) & _M64
        p += 1
    h ^= h >> 33
    h = h * _P2 & _M64
    h ^= h >> 29
    h = h * _P3 & _M64
    return h ^ (h >> 32)


def _xxh64_twins(n, rng):
    """Two uint8 image arrays (n, 32, 32, 3) differing in a third of their bytes whose
    XXH64 under both of the old key's seeds are equal. In each lane, over each pair of
    32-byte stripes: flipping the top bit of the first word flips the top bit of
    (acc + word * P2) for every seed, which the rotation and the multiplication turn
    into a difference of +-2**30 * P1, the same for both seeds when that bit agrees;
    the second word absorbs it (word' = word + difference / P2)."""
    inv_p2 = pow(_P2, -1, 1 << 64)
    a = bytearray(rng.integers(0, 256, n * 32 * 32 * 3, dtype=np.uint8).tobytes())
    b = bytearray(a)
    seeds = _OLD_SEEDS
    lanes = [[(s + _P1 + _P2) & _M64, (s + _P2) & _M64, s, (s - _P1) & _M64] for s in seeds]
    for pair in range(len(a) // 64):
        for lane in range(4):
            i, j = pair * 64 + 8 * lane, pair * 64 + 32 + 8 * lane
            while True:
                w = int.from_bytes(a[i:i + 8], "little")
                tops = {((acc[lane] + w * _P2) & _M64) >> 63 for acc in lanes}
                if len(tops) == 1:
                    break
                a[i:i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
            w2 = w ^ (1 << 63)
            acc0 = lanes[0][lane]
            diff = (_round(acc0, w) - _round(acc0, w2)) & _M64
            u = int.from_bytes(a[j:j + 8], "little")
            u2 = (u + diff * inv_p2) & _M64
            b[i:i + 8], b[j:j + 8] = w2.to_bytes(8, "little"), u2.to_bytes(8, "little")
            for acc in lanes:
                acc[lane] = _round(_round(acc[lane], w), u)
    shape = (n, 32, 32, 3)
    return np.frombuffer(bytes(a), np.uint8).reshape(shape), \
        np.frombuffer(bytes(b), np.uint8).reshape(shape)


def test_crafted_arrays_colliding_under_the_old_key_get_their_own_features(home, base, rng):
    """Two arrays made to share the old content key (XXH64 under its two
    seeds) differ in a third of their bytes; each must get its own features."""
    assert _xxh64(b"", 0) == 0xEF46DB3751D8E999 and _xxh64(b"abc", 0) == 0x44BC2CF5AD770999
    XA, XB = _xxh64_twins(4, rng)
    for seed in _OLD_SEEDS:  # the construction works: the old key could not tell them apart
        assert _xxh64(XA.tobytes(), seed) == _xxh64(XB.tobytes(), seed)
    assert (XA != XB).mean() > 0.3
    assert vc.array_digest(XA) != vc.array_digest(XB)
    base.extract(XA, progress=False)
    FB, n = count(lambda: base.extract(XB, progress=False))
    assert n == len(XB)
    same_features(FB, base.predict(XB))
    assert not np.allclose(FB, base.predict(XA), rtol=1e-3)


def test_entries_of_the_old_key_format_are_recomputed_not_read(home, base, X):
    """An entry whose manifest is of format 1 (XXH64 keys) is a miss: its
    features are computed again and the entry rewritten in the current format; a
    digest of the old kind is refused where one can be passed."""
    F = np.array(base.extract(X, progress=False))
    folder = only_entry(home)
    m = manifest(folder)
    assert m["version"] == vc.FORMAT_VERSION == 2 and m["key"]["format"] == 2
    assert m["key"]["x"].startswith("sha256tree:")
    with open(os.path.join(folder, "manifest.json"), "wb") as f:
        f.write(vc.store.wrap_manifest(dict(m, version=1)))
    G, n = count(lambda: base.extract(X, progress=False))
    assert n == N and manifest(folder)["version"] == 2
    np.testing.assert_array_equal(G, F)
    old_style = "0" * 64  # a SHA-256 hex over XXH64 block digests, as array_digest gave
    with pytest.raises(ValueError, match="x_digest"):
        base.extract(X, x_digest=old_style, progress=False)


def test_array_digest_hashes_memmaps_block_by_block_and_releases_them(tmp_path, rng,
                                                                      monkeypatch):
    """A memmap is hashed where it lies (blocks of rows, never copied whole)
    and each block is dropped from resident memory once hashed (madvise)."""
    a = rng.integers(0, 256, (60, 40, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    monkeypatch.setattr(vc, "HASH_BLOCK", 40 * 40 * 3 * 7)
    released = []
    real = vc.keys.release_pages
    monkeypatch.setattr(vc.keys, "release_pages", lambda X, i, j: (released.append((i, j)),
                                                              real(X, i, j)))
    d = vc.array_digest(mm)
    assert sorted(released) == [(i, i + 7) for i in range(0, 60, 7)]
    assert d == vc.array_digest(a)


def test_weights_changed_in_place_where_the_old_sample_did_not_look_miss(home, X):
    """TransferModel.set_weights copies into the base's arrays in place;
    values the old memo never sampled (it read every 4093rd) changed that way must
    change the key."""
    base = vggtl.VGG16(weights=None, seed=4, input_shape=(32, 32, 3))
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")])
    for layer in base.layers[15:]:
        layer.trainable = True
    base.extract(X, progress=False)
    w = model.get_weights()
    k = w["block5_conv3"][0]
    k.reshape(-1)[1:4093] += np.float32(0.05)  # none of the values the old key sampled
    model.set_weights(w)
    F, n = count(lambda: base.extract(X, progress=False))
    assert n == N
    same_features(F, base.predict(X))
    # and the digest covers every value of every layer below the cut
    d0 = base.feature_source("block5_pool").weights_digest()
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        k, b = base._weights[name]
        with base._writing([name]):
            k.reshape(-1)[-1] += np.float32(1e-3)
        assert base.feature_source("block5_pool").weights_digest() != d0, name
        with base._writing([name]):
            k.reshape(-1)[-1] -= np.float32(1e-3)
            b[0] += np.float32(1e-3)
        assert base.feature_source("block5_pool").weights_digest() != d0, name
        with base._writing([name]):
            b[0] -= np.float32(1e-3)
        assert base.feature_source("block5_pool").weights_digest() == d0, name  # the same values again
    # every way in is through _writing: the arrays themselves refuse a write
    with pytest.raises(ValueError, match="read-only"):
        base._weights["block1_conv1"][0].reshape(-1)[0] = 1.0


def test_clear_and_eviction_remove_only_vggtls_own_folders(home, base, rng, monkeypatch):
    """A folder whose name happens to be 32 hex digits (an MLflow run), and
    other folders vggtl did not make, are not entries: not listed, evicted or cleared.
    An empty path is refused, never taken as the current folder."""
    os.makedirs(home)
    mlflow = home / ("a1b2c3d4" * 4)
    (mlflow / "artifacts").mkdir(parents=True)
    (mlflow / "meta.yaml").write_text("run_id: a1b2c3d4\n")
    (mlflow / "artifacts" / "model.pkl").write_bytes(b"\0" * 100000)
    trash = home / ".trash-notes"
    trash.mkdir()
    (trash / "keep.txt").write_text("mine")
    stage = home / ".new-thesis"
    stage.mkdir()
    (stage / "draft.tex").write_text("mine")
    old = time.time() - 7200
    os.utime(stage, (old, old))
    Xs = [rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    base.extract(Xs[0], progress=False)
    ids = [e["id"] for e in vc.info()["entries"]]
    assert len(ids) == 1 and mlflow.name not in ids
    vc.set_size_limit(1)  # every other entry must go after each extraction
    try:
        base.extract(Xs[1], progress=False)
        base.extract(Xs[2], progress=False)
    finally:
        vc.set_size_limit(None)
    assert len(vc.info()["entries"]) == 1
    assert vc.clear()["removed"] == 1 and vc.info()["entries"] == []
    assert (mlflow / "artifacts" / "model.pkl").stat().st_size == 100000
    assert (mlflow / "meta.yaml").exists() and (trash / "keep.txt").exists()
    assert (stage / "draft.tex").exists()
    assert sorted(os.listdir(home)) == sorted([mlflow.name, trash.name, stage.name])

    monkeypatch.chdir(home.parent)
    before = sorted(os.listdir("."))
    with pytest.raises(ValueError, match="cache"):
        base.extract(Xs[0], cache="", progress=False)
    with pytest.raises(ValueError, match="path"):
        vc.info("")
    with pytest.raises(ValueError, match="path"):
        vc.clear("")
    assert sorted(os.listdir(".")) == before


def test_entries_made_before_the_marker_are_still_vggtls(home, base, X):
    """An entry of an earlier vggtl (no marker, a manifest of the cache's
    format) is listed and removed by clear."""
    base.extract(X, progress=False)
    folder = only_entry(home)
    os.unlink(os.path.join(folder, vc.MARKER))
    (e,) = vc.info()["entries"]
    assert e["path"] == folder and e["complete"]
    assert vc.clear()["removed"] == 1 and entries(home) == []


def _incomplete_entry(base, X, monkeypatch):
    """An entry with one chunk done and its chunk folder, as Ctrl-C leaves it."""
    undo = _interrupting(base, after_calls=1, monkeypatch=monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        base.extract(X, batch_size=4, progress=False)
    undo()


def _one_warning(w, *words):
    """The one RuntimeWarning recorded in ``w`` (warnings or their messages), which
    must name every one of ``words``."""
    msgs = [m if isinstance(m, str) else str(m.message) for m in w
            if isinstance(m, str) or issubclass(m.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    for word in words:
        assert str(word) in msgs[0], (word, msgs[0])
    return msgs[0]


@pytest.mark.parametrize("plant", ["chunks symlink", "lock symlink", "entry symlink"])
def test_planted_symlinks_never_redirect_a_write(home, base, X, tmp_path, monkeypatch, plant):
    """A symlink planted in a shared cache (the chunk folder pointing at
    another folder, a dangling lock pointing where a file would be created, the
    entry folder itself) is never followed: the features are computed without the
    cache, one warning says which entry and what is wrong, nothing is written
    outside the entry."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _incomplete_entry(base, X, monkeypatch)
    folder = only_entry(home)
    if plant == "chunks symlink":
        shutil.rmtree(os.path.join(folder, "chunks"))
        os.symlink(outside, os.path.join(folder, "chunks"))
    elif plant == "lock symlink":
        os.unlink(os.path.join(folder, "lock"))
        os.symlink(outside / "created", os.path.join(folder, "lock"))
    else:
        shutil.rmtree(folder)
        os.symlink(outside, folder)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        F, n = count(lambda: base.extract(X, batch_size=4, progress=False))
    assert n == N and not isinstance(F, np.memmap)
    same_features(F, base.predict(X))
    _one_warning(w, folder, "symlink")
    assert os.listdir(outside) == []


FIFO_CHILD = textwrap.dedent("""
    import json, warnings, numpy as np, vggtl
    from vggtl import _core, _kernels, cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    out = {{}}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c0 = _kernels.vgg16_forward_images()
        F = base.extract(X, cache={root!r}, batch_size=4, progress=False)
        out["computed"] = _kernels.vgg16_forward_images() - c0
        out["memmap"] = isinstance(F, np.memmap)
        P = base.predict(X)
        out["ok"] = bool(np.abs(F - P).max() <= 1e-5 * np.abs(P).max())
        out["info"] = [e["valid"] for e in cache.info({root!r})["entries"]]
        out["clear"] = cache.clear({root!r})
        out["warnings"] = [str(x.message) for x in w]
    print(json.dumps(out))
""")


@pytest.mark.parametrize("name", ["manifest.json", "lock", "verified", "manifest symlink"])
def test_special_files_in_an_entry_never_hang_or_are_read(tmp_path, name):
    """A FIFO in place of manifest.json, lock or verified (and a symlink to
    another user's file in place of the manifest): extract, info and clear return
    (in a child with a deadline): the features are right, computed in memory with one
    warning; info lists the entry, clear removes it."""
    root = str(tmp_path / "features")
    ref = child(tmp_path / "xdg", kwargs=f"dict(cache={root!r})")
    finish(ref)
    finish(child(tmp_path / "xdg", kwargs=f"dict(cache={root!r})"))  # a hit: writes verified
    folder = only_entry(root)
    assert os.path.exists(os.path.join(folder, "verified"))
    secret = tmp_path / "secret.json"
    secret.write_text('{"manifest": {"format": "vggtl.features"}, "sha256": "x"}')
    if name == "manifest symlink":
        os.unlink(os.path.join(folder, "manifest.json"))
        os.symlink(secret, os.path.join(folder, "manifest.json"))
    else:
        os.unlink(os.path.join(folder, name))
        os.mkfifo(os.path.join(folder, name))
    p = subprocess.run([sys.executable, "-c", FIFO_CHILD.format(chunk=CHUNK, n=N, root=root)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["ok"] and not r["memmap"] and r["computed"] == N, r
    what = "symlink" if name == "manifest symlink" else "FIFO"
    assert len(r["warnings"]) == 1 and folder in r["warnings"][0] and what in r["warnings"][0], r
    assert len(r["info"]) == 1 and r["clear"]["removed"] == 1, r
    assert entries(root) == [] and secret.exists()


STOPPED_WRITER = textwrap.dedent("""
    import sys, time, numpy as np, vggtl
    from vggtl import cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    real = base.predict
    calls = [0]

    def predict(*a, **kw):  # one chunk per call; stuck: in the second, after the first
        calls[0] += 1
        if calls[0] == (2 if {stuck} else 1):
            print("holding", flush=True)  # the entry's lock, for writing
        if calls[0] == 2 and {stuck}:
            time.sleep(1000)
        time.sleep({delay})
        return real(*a, **kw)

    base.predict = predict
    base.extract(X, cache={root!r}, batch_size=4, progress=False)
    print("done", flush=True)
""")

WAITER = textwrap.dedent("""
    import json, time, warnings, numpy as np, vggtl
    from vggtl import _core, _kernels, cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    cache.LOCK_WAIT_S = {bound}
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    out = {{"took": [], "memmap": [], "computed": []}}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range({calls}):
            t, c0 = time.monotonic(), _kernels.vgg16_forward_images()
            F = base.extract(X, cache={root!r}, batch_size=4, progress=False)
            out["took"].append(time.monotonic() - t)
            out["computed"].append(_kernels.vgg16_forward_images() - c0)
            out["memmap"].append(isinstance(F, np.memmap))
        P = base.predict(X)
        out["ok"] = bool(np.abs(F - P).max() <= 1e-5 * np.abs(P).max())
    out["warnings"] = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    print(json.dumps(out))
""")


def _start_writer(root, stuck, delay=0.0, n=N):
    p = subprocess.Popen([sys.executable, "-c", STOPPED_WRITER.format(
        chunk=CHUNK, n=n, root=root, stuck=stuck, delay=delay)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line == "holding", p.stderr.read() if p.poll() is not None else line
    return p


def test_a_stopped_writer_does_not_make_others_wait_for_ever(tmp_path):
    """A writer SIGSTOPped while it holds an entry's lock (mid-extraction).
    Another process, with a bound of 1 s, computes without the cache after it,
    with one warning naming the lock and the stopped process; a second call there
    does not wait again. Once the writer is killed, the entry completes normally."""
    root = str(tmp_path / "features")
    writer = _start_writer(root, stuck=True)
    try:
        os.kill(writer.pid, signal.SIGSTOP)
        p = subprocess.run([sys.executable, "-c", WAITER.format(
            chunk=CHUNK, n=N, root=root, bound=1.0, calls=2)], cwd=REPO, capture_output=True,
            text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        writer.kill()
        writer.wait(timeout=60)
    assert r["ok"] and r["memmap"] == [False, False] and r["computed"] == [N, N], r
    assert 1.0 <= r["took"][0] < 60 and r["took"][1] < r["took"][0], r
    lock = os.path.join(only_entry(root), "lock")
    _one_warning(r["warnings"], lock, f"process {writer.pid}")
    F, n = count(lambda: vggtl.VGG16(weights=None, seed=2).extract(
        np.random.default_rng(1).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8),
        cache=root, batch_size=4, progress=False))
    assert isinstance(F, np.memmap) and n == N - CHUNK  # the writer's first chunk was kept


def test_a_slow_writer_that_makes_progress_is_waited_for(tmp_path):
    """The bound is on progress, not on time: a writer that takes longer
    than the bound in all, but writes a chunk more often, is waited for; the waiter
    then reads its entry (no compute, no warning)."""
    root = str(tmp_path / "features")
    writer = _start_writer(root, stuck=False, delay=0.5, n=4 * N)  # 20 chunks, 0.5 s each
    try:
        p = subprocess.run([sys.executable, "-c", WAITER.format(
            chunk=CHUNK, n=4 * N, root=root, bound=1.5, calls=1)], cwd=REPO,
            capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout.strip().splitlines()[-1])
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
    assert r["ok"] and r["memmap"] == [True] and r["computed"] == [0] and r["warnings"] == [], r
    assert r["took"][0] > 1.5, r  # it waited longer than the bound


def test_the_weights_digest_is_hashed_once_per_version(home, X, monkeypatch):
    # hashing every weight on every extraction would cost more than a small hit;
    # the digest is remembered until the weights change (a new version)
    base = vggtl.VGG16(weights=None, seed=4)
    calls = []
    real = vgg16_module._hash_weights
    monkeypatch.setattr(vgg16_module, "_hash_weights",
                        lambda b, s: calls.append(s) or real(b, s))
    base.extract(X, progress=False)
    base.extract(X, progress=False)
    assert len(calls) == 1
    with base._writing(["block2_conv1"]):
        pass  # a write, even of the same values, starts a new version
    base.extract(X, progress=False)
    assert len(calls) == 2
    base.set_weights(base.get_weights())
    base.extract(X, progress=False)
    assert len(calls) == 3


def core_passes(monkeypatch):
    """The number of images in each call into the core from the input layer from
    now on (fit's extraction continues from block4_pool in a second call)."""
    calls, real = [], _core.vgg16_forward

    def spy(x, *args, **kwargs):
        if not kwargs.get("start_layer"):
            calls.append(len(x))
        return real(x, *args, **kwargs)
    monkeypatch.setattr(_core, "vgg16_forward", spy)
    return calls


def test_extraction_runs_as_many_images_as_a_pass_holds_whatever_batch_size(base, X,
                                                                           monkeypatch):
    assert base.images_per_pass((32, 32)) >= N
    ref = base.predict(X)
    calls = core_passes(monkeypatch)
    got = base.extract(X, cache=False, batch_size=1, progress=False)
    assert calls == [N]
    same_features(got, ref)
    del calls[:]
    fixed = vggtl.VGG16(weights=base.get_weights(), input_shape=(32, 32, 3))
    model = vggtl.TransferModel(fixed, head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(X, np.arange(N) % 2, batch_size=2, epochs=1, verbose=0, cache=False)
    assert calls == [N]


def test_images_per_pass_follows_the_workspace_budget(monkeypatch):
    from vggtl import vgg16 as v
    big = vggtl.VGG16(weights=None, seed=0, include_top=False)
    n224 = big.images_per_pass((224, 224))
    assert 1 <= n224 < big.images_per_pass((48, 48))
    monkeypatch.setattr(v, "_WORKSPACE_BYTES", v._WORKSPACE_BYTES // 4)
    assert big.images_per_pass((224, 224)) < n224
    with pytest.raises(ValueError, match="input_shape"):
        big.images_per_pass()
