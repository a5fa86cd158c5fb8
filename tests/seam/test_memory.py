"""Memory: RSS stays flat over many calls (no leaks, error paths included), inputs
are never modified, and predict's peak memory does not grow with N (bottleneck's
memory_test.py and input_modification_test.py)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest

import vggtl
from vggtl import _core, reference
from vggtl import _kernels  # the single kernels, for tests

MB = 1 << 20


def rss():
    return psutil.Process().memory_info().rss


def grows(fn, calls=1000, warmup=30):
    """RSS growth (bytes) over `calls` calls of fn, after a warm-up."""
    for _ in range(warmup):
        fn()
    before = rss()
    for _ in range(calls):
        fn()
    return rss() - before


def test_predict_rss_is_flat(rng, close, conv_weights, restore_threads):
    # one thread: a thousand tiny calls are all overhead, and a second OpenMP
    # thread only adds barrier waits (leaks do not depend on the thread count)
    vggtl.set_num_threads(1)
    model = vggtl.VGG16(weights=conv_weights, preprocess="caffe")
    X = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    first = model.predict(X)
    # 1000 calls through block1 (a 64 KiB output each: a leaked output would show
    # as 64 MiB) and, since small images spend their time packing the deep layers'
    # weights, 100 through the whole conv base
    growth = grows(lambda: model.predict(X, layer="block1_pool"), calls=1000)
    assert growth < 4 * MB, f"RSS grew by {growth / MB:.1f} MiB over 1000 predict calls"
    growth = grows(lambda: model.predict(X), calls=100, warmup=5)
    assert growth < 2 * MB, f"RSS grew by {growth / MB:.1f} MiB over 100 predict calls"
    close(model.predict(X), first, rtol=0)  # and the results did not drift
    close(first, reference.vgg16_forward(X, conv_weights, preprocess="caffe"))


def test_core_kernels_rss_is_flat(rng, restore_threads):
    vggtl.set_num_threads(1)
    x = rng.standard_normal((1, 16, 16, 8), dtype=np.float32)
    k = rng.standard_normal((3, 3, 8, 16), dtype=np.float32)
    b = rng.standard_normal(16, dtype=np.float32)
    out = np.empty((1, 16, 16, 16), np.float32)
    m = rng.standard_normal((64, 256), dtype=np.float32)
    dk = rng.standard_normal((256, 128), dtype=np.float32)
    db = rng.standard_normal(128, dtype=np.float32)
    u8 = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)

    def calls():
        _kernels.conv3x3_forward(x, k, b)  # 16 KiB out and a 1 MiB column buffer per call
        _kernels.conv3x3_forward(x, k, b, relu=False, out=out)
        _kernels.maxpool2x2_forward(x)
        _kernels.global_pool_forward(x, "avg")
        _kernels.activation_forward(m, "softmax")
        _kernels.dense_forward(m, dk, db, "relu")
        _core.input_convert(u8, [1, 1, 1], [0, 0, 0], True)

    growth = grows(calls)
    assert growth < 4 * MB, f"RSS grew by {growth / MB:.1f} MiB over 1000 rounds of kernel calls"
    np.testing.assert_array_equal(out, _kernels.conv3x3_forward(x, k, b, relu=False))


def test_error_paths_rss_is_flat(rng, conv_weights, restore_threads):
    vggtl.set_num_threads(1)
    # calls that fail after the output is allocated must free it (1 MiB each here)
    params = [a for name in reference.CONV_LAYERS for a in conv_weights[name]]
    x = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    stop = vggtl.LAYER_NAMES.index("block1_conv1")
    small_ws = np.empty(16, np.float32)
    xf = rng.standard_normal((1, 64, 64, 3), dtype=np.float32)
    kf = rng.standard_normal((3, 3, 3, 64), dtype=np.float32)
    bad_out = np.empty((1, 64, 64, 63), np.float32)
    model = vggtl.VGG16(weights=conv_weights)
    Xnan = np.zeros((1, 32, 32, 3), np.float32)
    Xnan[0, 0, 0, 0] = np.nan

    def failing_calls():
        with pytest.raises(ValueError, match="^workspace: "):
            _core.vgg16_forward(x, params, stop, _core.POOL_NONE, [1] * 3, [0] * 3, False,
                                small_ws)
        with pytest.raises(ValueError, match="^out: "):
            _kernels.conv3x3_forward(xf, kf, np.zeros(64, np.float32), out=bad_out)
        with pytest.raises(ValueError, match="^X: "):
            model.predict(Xnan)

    growth = grows(failing_calls, calls=1000, warmup=10)
    assert growth < 4 * MB, f"RSS grew by {growth / MB:.1f} MiB over 1000 failing calls"


def test_inputs_are_unchanged(rng, conv_weights):
    model = vggtl.VGG16(weights=conv_weights, preprocess="caffe", pooling="max")
    w_copy = {k: (a.copy(), b.copy()) for k, (a, b) in conv_weights.items()}
    for dtype in (np.uint8, np.float32, np.float64, np.int16):
        for shape in ((3, 33, 35), (3, 33, 35, 1), (3, 33, 35, 3)):
            X = rng.integers(0, 256, shape).astype(dtype)
            X_copy = X.copy()
            F = model.predict(X, batch_size=2)
            np.testing.assert_array_equal(X, X_copy)
            assert X.dtype == X_copy.dtype and X.flags.writeable
            assert F.shape == (3, 512) and (F > 0).any()
            P = vggtl.preprocess_input(X, "torch")
            np.testing.assert_array_equal(X, X_copy)
            assert np.isfinite(P).all()
    for name, (a, b) in conv_weights.items():
        np.testing.assert_array_equal(a, w_copy[name][0])
        np.testing.assert_array_equal(b, w_copy[name][1])


_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, psutil, vggtl

    def peak_rss():
        # VmHWM belongs to this process's memory map, which execve made fresh;
        # ru_maxrss would not do: Linux keeps it across execve, so it would
        # start from the (large) pytest process that forked us
        with open("/proc/self/status") as f:
            return 1024 * int(next(l for l in f if l.startswith("VmHWM:")).split()[1])

    n = int(sys.argv[1])
    # a workspace budget of 8 images (the default holds 17 at 224 x 224): past it,
    # the peak must not grow with N
    ws8 = 4 * vggtl._core.vgg16_workspace_floats(vggtl.LAYER_NAMES.index("block5_pool"), 0, 8,
                                                 224, 224, prepared=True)
    vggtl.vgg16._WORKSPACE_BYTES = ws8
    model = vggtl.VGG16(weights=None, seed=0)
    X = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = psutil.Process().memory_info().rss
    F = model.predict(X, batch_size=8)
    # the kernels prepared for the algorithm each layer runs, kept by the model
    prepared = sum(a.nbytes for _, a in model._prepared.values())
    print(json.dumps({"rise": peak_rss() - before, "first8": F[:8].tolist(), "ws": ws8,
                      "prepared": prepared}))
""")


def _predict_peak(n):
    env = dict(os.environ, OMP_NUM_THREADS=str(vggtl.get_num_threads()))
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_predict_peak_memory_does_not_grow_with_n():
    # The same workspace for both (8 images): the rise of the
    # peak over the resting RSS (X included) may differ only by the bigger output.
    # A float32 copy of X (what converting it whole would cost) is 19 MiB at N=32.
    small, large = _predict_peak(8), _predict_peak(32)
    np.testing.assert_array_equal(np.array(large["first8"]), np.array(small["first8"]))
    assert np.array(small["first8"]).max() > 0
    feat = 7 * 7 * 512 * 4
    float_copy_of_x = 32 * 224 * 224 * 3 * 4
    extra_output = (32 - 8) * feat
    diff = large["rise"] - small["rise"]
    assert diff <= extra_output + 4 * MB, (
        f"peak rise grew by {diff / MB:.1f} MiB from N=8 to N=32 (extra output: "
        f"{extra_output / MB:.1f} MiB; a float copy of X: {float_copy_of_x / MB:.1f} MiB)")
    # and the rise itself is the workspace, the prepared kernels and the output,
    # no copy of X
    assert large["rise"] <= large["ws"] + large["prepared"] + 32 * feat + 16 * MB, (
        f"peak rise {large['rise'] / MB:.1f} MiB; workspace {large['ws'] / MB:.1f} MiB; "
        f"prepared kernels {large['prepared'] / MB:.1f} MiB")


def _rss_file_kib():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("RssFile:")).split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_read_rows_of_a_memmap_leave_resident_memory(tmp_path):
    # what extraction does after each batch (and hashing after each block), so
    # that X's pages never pile up in RSS: 64 MiB read, then released
    from vggtl._arrays import release_pages
    path = str(tmp_path / "x.npy")
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(64, 1024, 1024))
    X[:] = np.arange(64, dtype=np.uint8)[:, None, None]
    X.flush()
    del X
    X = np.load(path, mmap_mode="r")
    before = _rss_file_kib()
    total = int(X[:48].sum(dtype=np.int64))
    read = _rss_file_kib()
    assert read - before > 40 * 1024  # 48 MiB of X became resident
    release_pages(X, 0, 48)
    assert _rss_file_kib() - before < 8 * 1024  # of 48 MiB read
    assert int(X[:48].sum(dtype=np.int64)) == total  # the data are still there
    # a copy-on-write map keeps its pages: dropping them would lose the changes
    C = np.load(path, mmap_mode="c")
    C[1] = 200
    release_pages(C, 0, 4)
    assert (C[1] == 200).all()


def test_workspace_stays_in_the_budget_whatever_the_thread_count(rng, close, tol, conv_weights,
                                                                 restore_threads, monkeypatch):
    # every thread of a convolution has buffers of its own, and the workspace
    # held them for every thread: past the budget, with one image per pass (was:
    # 1.15 GiB at 256 threads, whatever the image size). Now the convolutions run
    # on as many threads as the budget holds buffers for. Here a budget that holds
    # one 32 x 32 image and 16 threads' buffers, with 32 threads asked for.
    stop = vggtl.LAYER_NAMES.index("block5_pool")
    vggtl.set_num_threads(16)
    budget = 4 * _core.vgg16_workspace_floats(stop, _core.POOL_NONE, 1, 32, 32, prepared=True)
    X = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    vggtl.set_num_threads(1)
    one = vggtl.VGG16(weights=conv_weights).predict(X)
    F4 = vggtl.VGG16(weights=conv_weights).predict(X, layer="block4_pool")
    monkeypatch.setattr(vggtl.vgg16, "_WORKSPACE_BYTES", budget)
    vggtl.set_num_threads(32)
    assert 4 * _core.vgg16_workspace_floats(stop, _core.POOL_NONE, 1, 32, 32,
                                            prepared=True) > budget
    model = vggtl.VGG16(weights=conv_weights)
    close(model.predict(X), one, rtol=tol.threads)
    assert model._workspace.nbytes <= budget
    close(model.forward_from(F4, "block4_pool"), one, rtol=tol.threads)
    assert model._workspace.nbytes <= budget
    # and the real budget, for the thread counts of large machines
    from vggtl.vgg16 import _pass_plan
    monkeypatch.undo()
    for threads in (1, 2, 64, 256, 1024):
        vggtl.set_num_threads(threads)
        for size in (32, 224):
            images, floats = _pass_plan(stop, _core.POOL_NONE, size, size, 1000)
            assert images >= 1 and 4 * floats <= vggtl.vgg16._WORKSPACE_BYTES, \
                (threads, size, images, floats)
            # the core runs that workspace (a pass of `images` at least fits)
            assert floats >= _core.vgg16_workspace_floats(stop, _core.POOL_NONE, images, size,
                                                          size, prepared=True, threads=1)
