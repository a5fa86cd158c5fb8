"""vggtl.distributed on a real Dask LocalCluster: 2 worker processes, 1 Dask thread each.

The oracle is the single process: features must equal ``base.predict`` bit for bit
(the core's results depend neither on the thread count nor on how images are
grouped into chunks and batches), and the entry must be the one
``vggtl.cache.extract`` finds for the same X.
"""
import os
import pickle
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

import vggtl
from support.isas import bf16_conv_key

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
import cloudpickle  # noqa: E402  (a dependency of distributed)

# the workers cannot import this test module: send its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIZE = 32
N = 40


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def base():
    return vggtl.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), seed=3)


def images(seed, n=N, shape=(SIZE, SIZE, 3)):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def reference(base, X):
    """Single process, 2 threads, batches of 32: what the workers must match."""
    n = vggtl.get_num_threads()
    vggtl.set_num_threads(2)
    try:
        return base.predict(np.asarray(X), batch_size=32)
    finally:
        vggtl.set_num_threads(n)


def same_features(F, ref):
    """Bit for bit: an image's features do not depend on the chunk or batch it
    came in, nor on the process or the thread count (csrc/gemm.c)."""
    return F.shape == ref.shape and np.array_equal(F, ref)


def counts(client):
    return client.run(vggtl.distributed.worker_info)


def delta(before, after, field):
    return {w: after[w][field] - before.get(w, {}).get(field, 0) for w in after}


@contextmanager
def no_compute_here(base):
    """Fail if the client computes any feature itself."""
    def boom(*a, **k):
        raise AssertionError("the client computed features")
    base.predict = boom
    try:
        yield
    finally:
        del base.predict


def test_ndarray_equals_single_process_and_is_the_same_cache_entry(client, base, tmp_path):
    X = images(1)
    ref = reference(base, X)
    F = vggtl.distributed.extract(X, base, client=client, chunk=6, batch_size=4,
                                  cache=tmp_path, progress=False)
    assert isinstance(F, np.memmap) and F.shape == (N, 1, 1, 512)
    assert same_features(F, ref)
    with no_compute_here(base):
        again = vggtl.cache.extract(base, X, cache=tmp_path, progress=False)
    assert again.filename == F.filename
    (entry,) = vggtl.cache.info(tmp_path)["entries"]
    assert entry["complete"] and entry["chunks"] == 7 and entry["n"] == N
    assert not os.path.exists(os.path.join(entry["path"], "chunks"))


def _write_shards(tmp_path, X, sizes, kind):
    paths, start = [], 0
    for i, s in enumerate(sizes):
        part = X[start:start + s]
        start += s
        p = tmp_path / f"shard{i}.{kind}"
        if kind == "npy":
            np.save(p, part)
        else:
            with open(p, "wb") as f:
                pickle.dump(part, f)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("kind", ["memmap", "memmap_view", "npy_shards", "pickle_shards",
                                  "grayscale_pickle_shards", "dask"])
def test_inputs(client, base, tmp_path, kind):
    X = images(10 + len(kind), shape=(SIZE, SIZE, 1) if "grayscale" in kind else (SIZE, SIZE, 3))
    if "grayscale" in kind:
        X = X[..., 0]  # (N, H, W): the channel axis is added as base.predict adds it
    sizes = [7, 13, 20]  # chunks of 6 straddle the shard boundaries
    if kind.startswith("memmap"):
        np.save(tmp_path / "x.npy", X)
        inp = np.load(tmp_path / "x.npy", mmap_mode="r")
        if kind == "memmap_view":
            inp, X = inp[3:], X[3:]  # a view: its rows start inside the file
    elif kind.endswith("shards"):
        inp = _write_shards(tmp_path, X, sizes, "npy" if kind == "npy_shards" else "pickle")
    else:
        inp = da.from_array(X, chunks=(9, SIZE, SIZE, 3))
    before = counts(client)
    F = vggtl.distributed.extract(inp, base, client=client, chunk=6, cache=tmp_path / "c",
                                  progress=False)
    after = counts(client)
    assert same_features(F, reference(base, X))
    # X was read and hashed on the workers, not shipped from the client
    assert sum(delta(before, after, "digest_blocks").values()) >= 1
    assert sum(delta(before, after, "images").values()) == len(X)
    with no_compute_here(base):  # the key is the single-process one for the same images
        assert vggtl.cache.extract(base, X, cache=tmp_path / "c").filename == F.filename


def test_weights_load_once_per_worker(client, tmp_path):
    fresh = vggtl.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), seed=77)
    before = counts(client)
    vggtl.distributed.extract(images(2), fresh, client=client, chunk=4, cache=tmp_path,
                              progress=False)
    vggtl.distributed.extract(images(3), fresh, client=client, chunk=4, cache=tmp_path,
                              progress=False)
    after = counts(client)
    assert sum(delta(before, after, "chunks").values()) == 20  # 10 chunks per X
    loads = delta(before, after, "weights_loads")
    assert all(v <= 1 for v in loads.values()) and sum(loads.values()) >= 1, loads
    # the worker's core group: its affinity if pinned, else the cores over 2 workers
    total = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    group = mine if mine < total else max(1, total // 2)
    assert {after[w]["threads"] for w in after if after[w]["chunks"]} == {group}


def test_rerun_computes_nothing_and_resumes_only_a_damaged_chunk(client, base, tmp_path):
    X = images(4)
    ref = reference(base, X)
    F = vggtl.distributed.extract(X, base, client=client, chunk=8, cache=tmp_path,
                                  progress=False)
    path = F.filename
    st = os.stat(path)
    del F
    before = counts(client)
    F = vggtl.distributed.extract(X, base, client=client, chunk=8, cache=tmp_path,
                                  progress=False)
    assert same_features(F, ref)
    assert sum(delta(before, counts(client), "chunks").values()) == 0
    st2 = os.stat(path)
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    del F
    # damage one byte of chunk 2 (images 16..23): only that chunk is computed again
    header = os.path.getsize(path) - ref.nbytes
    with open(path, "r+b") as f:
        f.seek(header + 20 * ref[0].nbytes)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    before = counts(client)
    F = vggtl.distributed.extract(X, base, client=client, chunk=8, cache=tmp_path,
                                  progress=False)
    after = counts(client)
    assert same_features(F, ref)
    assert sum(delta(before, after, "chunks").values()) == 1
    assert sum(delta(before, after, "images").values()) == 8


def _fail_once(block, marker, last, block_id=None):
    if block_id[0] == last and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("this block fails once")
    return block


def test_a_failed_run_keeps_its_chunks_and_the_rerun_computes_the_rest(client, base, tmp_path):
    X = images(8)
    ref = reference(base, X)
    marker = str(tmp_path / "failed")
    # blocks of 5 are the cache's chunks of 5; the last one fails the first time
    lazy = da.from_array(X, chunks=(5, SIZE, SIZE, 3)).map_blocks(
        _fail_once, marker, N // 5 - 1, dtype=X.dtype)
    digest = vggtl.cache.array_digest(X)  # given: hashing would compute the blocks first
    with pytest.raises(RuntimeError, match="this block fails once"):
        vggtl.distributed.extract(lazy, base, client=client, chunk=5, cache=tmp_path / "c",
                                  retries=0, x_digest=digest, progress=False)
    (entry,) = vggtl.cache.info(tmp_path / "c")["entries"]
    # 4 chunks in flight (2 per worker): the last is submitted after 4 are done
    assert not entry["complete"] and entry["chunks_done"] >= 4
    # a cancelled task that was already running still finishes (unrecorded), and the
    # scheduler may already have forgotten it: wait until the workers' counters stop
    # moving (a chunk here takes well under 0.1 s) before counting
    before = counts(client)
    for _ in range(100):
        time.sleep(0.5)
        now = counts(client)
        if now == before and not any(client.processing().values()):
            break
        before = now
    F = vggtl.distributed.extract(lazy, base, client=client, chunk=5, cache=tmp_path / "c",
                                  x_digest=digest, progress=False)
    after = counts(client)
    assert same_features(F, ref)
    assert sum(delta(before, after, "chunks").values()) == 8 - entry["chunks_done"]


def test_fit_on_distributed_features_is_unchanged(client, tmp_path):
    base = vggtl.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), seed=5)
    X = images(6)
    y = np.arange(N) % 2

    def model():
        head = [vggtl.Flatten(), vggtl.Dense(16, activation="relu"), vggtl.Dropout(0.5),
                vggtl.Dense(2, activation="softmax")]
        m = vggtl.TransferModel(base, head=head, seed=0, cache=tmp_path)
        m.compile(optimizer=vggtl.Adam(learning_rate=1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
        return m

    expected = model()
    F = vggtl.distributed.extract(X, base, client=client, chunk=7, cache=tmp_path,
                                  progress=False)
    # the single process's features, the same bits as the cache's
    h0 = expected.fit_features(reference(base, X), y, batch_size=8, epochs=3, verbose=0)
    got = model()
    with no_compute_here(base):
        h1 = got.fit(X, y, batch_size=8, epochs=3, verbose=0)
    assert h1.history == h0.history
    for name, (k, b) in expected.get_weights().items():
        assert np.array_equal(got.get_weights()[name][0], k)
        assert np.array_equal(got.get_weights()[name][1], b)


def test_workers_compute_with_the_clients_kernels(client, base, tmp_path):
    from vggtl import dispatch
    X = images(11)
    (theirs,) = set(client.run(dispatch.get_conv_algo).values())
    # the client asks for an algorithm the workers do not hold, whose features
    # differ from theirs in the last bits: only the client's setting gives ref
    wanted = "winograd" if theirs == "im2col" else "im2col"
    algo = dispatch.get_conv_algo()
    try:
        dispatch.set_conv_algo(theirs)
        own = reference(base, X)
        dispatch.set_conv_algo(wanted)
        ref = reference(base, X)
        F = vggtl.distributed.extract(X, base, client=client, chunk=10, cache=tmp_path,
                                      progress=False)
    finally:
        dispatch.set_conv_algo(algo)
    assert not np.array_equal(ref, own)  # else this test could not tell them apart
    assert same_features(F, ref)
    assert set(client.run(dispatch.get_conv_algo).values()) == {wanted}


def test_workers_compute_at_the_bases_precision(client, base, tmp_path):
    # a bf16 base travels with its precision: the workers' features are the
    # single process's bf16 features (and not its float32 ones), in a 'b' entry
    b16 = vggtl.VGG16(weights=base.get_weights(), input_shape=(SIZE, SIZE, 3),
                      precision="bf16")
    X = images(12)
    ref = reference(b16, X)
    F = vggtl.distributed.extract(X, b16, client=client, chunk=10, cache=tmp_path,
                                  progress=False)
    assert same_features(F, ref)
    assert np.abs(ref - reference(base, X)).max() > 1e-4 * np.abs(ref).max()
    (entry,) = vggtl.cache.info(tmp_path)["entries"]
    assert entry["conv"] == bf16_conv_key(SIZE, SIZE)
    # a base asked for "auto" sends what it resolved to here: the workers agree with it
    auto = vggtl.VGG16(weights=base.get_weights(), input_shape=(SIZE, SIZE, 3), precision="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vggtl.PrecisionNotice)
        F = vggtl.distributed.extract(X, auto, client=client, chunk=10,
                                      cache=tmp_path / "auto", progress=False)
        assert same_features(F, reference(auto, X))


def test_arguments(client, base, tmp_path):
    X = images(7, n=4)
    with pytest.raises(TypeError, match="X: expected"):
        vggtl.distributed.extract({"x": X}, base, client=client, cache=tmp_path)
    with pytest.raises(ValueError, match="cache: expected True or a folder"):
        vggtl.distributed.extract(X, base, client=client, cache=False)
    with pytest.raises(ValueError, match="chunk: expected an int >= 1"):
        vggtl.distributed.extract(X, base, client=client, chunk=0, cache=tmp_path)
    with pytest.raises(TypeError, match="client: expected a dask.distributed.Client"):
        vggtl.distributed.extract(X, base, client="tcp://nowhere:1", cache=tmp_path)
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", images(8, n=4, shape=(SIZE + 8, SIZE, 3)))
    with pytest.raises(ValueError, match=r"X\[1\]: .*b.npy holds images \(40, 32, 3\)"):
        vggtl.distributed.extract([tmp_path / "a.npy", tmp_path / "b.npy"], base, client=client,
                                  cache=tmp_path)


def test_vggtl_imports_without_dask():
    code = ("import sys\n"
            "sys.modules['dask'] = sys.modules['distributed'] = None  # as if not installed\n"
            "import numpy as np, vggtl\n"
            "base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))\n"
            "try:\n"
            "    vggtl.distributed.extract(np.zeros((1, 32, 32, 3), np.uint8), base)\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'dask[distributed]'" in out.stdout and "vggtl[" not in out.stdout


def _die_writing_chunk(marker, name):
    """Installed on every worker: the first worker to write chunk ``name`` dies
    after writing it to its temporary file, before the rename."""
    from vggtl.cache import store as vc
    real = vc._atomic_open_at_real = getattr(vc, "_atomic_open_at_real", vc.atomic_open_at)

    @contextmanager
    def dying(dir_fd, base, shown=None):
        with real(dir_fd, base, shown) as f:
            yield f
            if base == name and not os.path.exists(marker):
                f.flush()
                open(marker, "w").close()
                os._exit(1)
    vc.atomic_open_at = dying


def _restore_atomic_path():
    from vggtl.cache import store as vc
    vc.atomic_open_at = getattr(vc, "_atomic_open_at_real", vc.atomic_open_at)


def test_worker_killed_mid_chunk_still_completes(client, base, tmp_path):
    X = images(9)
    ref = reference(base, X)
    marker = str(tmp_path / "killed")
    workers = set(client.scheduler_info()["workers"])
    client.run(_die_writing_chunk, marker, "000003.bin")
    try:
        F = vggtl.distributed.extract(X, base, client=client, chunk=5, cache=tmp_path / "c",
                                      progress=False)
    finally:
        client.run(_restore_atomic_path)
    assert os.path.exists(marker)  # a worker did die holding chunk 3
    assert same_features(F, ref)
    (entry,) = vggtl.cache.info(tmp_path / "c")["entries"]
    assert entry["complete"] and entry["chunks_done"] == entry["chunks"] == 8
    left = [f for _, _, fs in os.walk(entry["path"]) for f in fs if f.endswith(".part")]
    assert left == [] and not os.path.exists(os.path.join(entry["path"], "chunks"))
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info()["workers"]) != workers  # the nanny started a new one
