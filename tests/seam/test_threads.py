"""1 thread and several threads give the same results (within 1e-5), and the knob works."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import vggtl
from vggtl import _core, reference
from vggtl import _kernels  # the single kernels, for tests


def at_threads(n, fn):
    vggtl.set_num_threads(n)
    assert vggtl.get_num_threads() == n
    return fn()


def agree(fn, close, tol):
    one = at_threads(1, fn)
    for n in (2, 3):  # 3: more threads than this machine's 2 cores
        close(at_threads(n, fn), one, rtol=tol.threads)
    return one


def test_conv3x3_threads(rng, close, tol, restore_threads):
    x = rng.standard_normal((2, 30, 27, 64), dtype=np.float32)
    k = rng.standard_normal((3, 3, 64, 33), dtype=np.float32) / np.float32(24.0)
    b = rng.standard_normal(33, dtype=np.float32)
    one = agree(lambda: _kernels.conv3x3_forward(x, k, b), close, tol)
    assert (one > 0).any()


@pytest.mark.parametrize("shape", [(100, 64, 20), (3, 256, 500), (2, 25088, 10)],
                         ids=["split-by-rows", "split-by-columns", "fc1-like"])
def test_dense_threads(rng, close, tol, restore_threads, shape):
    n, i, o = shape
    x = rng.standard_normal((n, i), dtype=np.float32)
    k = rng.standard_normal((i, o), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    for act in ("linear", "relu", "softmax", "sigmoid"):
        agree(lambda: _kernels.dense_forward(x, k, b, act), close, tol)


def test_small_kernels_threads(rng, close, tol, restore_threads):
    x = rng.standard_normal((3, 17, 20, 5), dtype=np.float32)
    u8 = rng.integers(0, 256, (3, 17, 20, 3), dtype=np.uint8)
    agree(lambda: _kernels.maxpool2x2_forward(x), close, tol)
    agree(lambda: _kernels.global_pool_forward(x, "avg"), close, tol)
    agree(lambda: _kernels.global_pool_forward(x, "max"), close, tol)
    agree(lambda: _kernels.activation_forward(x.reshape(51, 100), "softmax"), close, tol)
    agree(lambda: _core.input_convert(u8, [1, 2, 3], [0, -1, 5], True), close, tol)


def test_vgg16_threads(rng, close, tol, restore_threads, conv_weights):
    # one model object across thread counts: its cached workspace must follow
    model = vggtl.VGG16(weights=conv_weights, pooling="avg")
    X = rng.integers(0, 256, (3, 64, 40, 3), dtype=np.uint8)
    one = agree(lambda: model.predict(X, batch_size=2), close, tol)
    assert (one > 0).any()
    agree(lambda: model.predict(X, layer="block2_conv2"), close, tol)


def test_vgg16_top_threads(rng, close, tol, restore_threads, top_model):
    X = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    vggtl.set_num_threads(1)
    one = top_model.predict(X, layer="fc2")
    vggtl.set_num_threads(2)
    close(top_model.predict(X, layer="fc2"), one, rtol=tol.threads)


def test_set_num_threads(restore_threads):
    vggtl.set_num_threads(1)
    assert vggtl.get_num_threads() == 1 and vggtl.info()["threads"] == 1
    vggtl.set_num_threads(2)
    assert vggtl.get_num_threads() == 2 and vggtl.info()["threads"] == 2
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError, match="n"):
            vggtl.set_num_threads(bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n"):
            vggtl.set_num_threads(bad)
    assert vggtl.get_num_threads() == 2  # unchanged by the failed calls


def test_info():
    info = vggtl.info()
    assert info["version"] == vggtl.__version__
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["blas"], str) and info["blas"]


def test_set_num_threads_during_a_forward_stays_in_the_workspace(rng, close, tol, restore_threads):
    # vggtl.set_num_threads from another Python thread while the core runs (the GIL
    # is released) must not make the core use more column buffers than the
    # workspace it was given holds. The workspace here is a view into a larger
    # array, so a write past its end lands in a canary we can check instead of
    # corrupting the heap. Only block4_conv2/3 (Cin 512, 272 rows = 2 chunks of
    # the column buffer) can overflow, so the stop layer is block4_conv3 and the
    # images are small; the flipping thread races the core, so it tries for up to
    # 6 s (with the race open, most runs fail within the first few tries).
    w = vggtl.VGG16(weights=None, seed=1).get_weights()
    params = [a for name in reference.CONV_LAYERS for a in w[name]]
    stop = vggtl.LAYER_NAMES.index("block4_conv3")
    X = rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8)
    vggtl.set_num_threads(1)
    need = _core.vgg16_workspace_floats(stop, _core.POOL_NONE, len(X), 32, 32)
    big = np.empty(2 * need, np.float32)
    ws, canary = big[:need], big[need:]
    args = (stop, _core.POOL_NONE, [1.0] * 3, [0.0] * 3, False, ws)
    expect = _core.vgg16_forward(X, params, *args)
    assert (expect > 0).any()
    deadline = time.monotonic() + 6.0
    for attempt in range(40):
        canary[...] = 12345.0
        done = []

        def flip():
            while not done:
                vggtl.set_num_threads(2)
                vggtl.set_num_threads(1)

        vggtl.set_num_threads(1)
        t = threading.Thread(target=flip)
        t.start()
        try:
            got = _core.vgg16_forward(X, params, *args)
        finally:
            done.append(True)
            t.join()
        overwritten = int((canary != 12345.0).sum())
        assert overwritten == 0, (f"attempt {attempt}: the core wrote {overwritten} floats past "
                                  f"the end of its {need}-float workspace")
        close(got, expect, rtol=tol.threads)
        if time.monotonic() > deadline:
            break


def test_omp_num_threads_is_the_default():
    for n in ("1", "3"):
        r = subprocess.run([sys.executable, "-c", "import vggtl; print(vggtl.get_num_threads())"],
                           env=dict(os.environ, OMP_NUM_THREADS=n), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == n


# -- fork after OpenMP ---------------------------------------------------------------
def _predict_in_child(conn, model, X):
    """A forked child: predicts twice, tries to raise the thread count, and sends
    back the features, the thread counts and the warnings it saw."""
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        F = model.predict(X)
        F2 = model.predict(X)
        threads = vggtl.get_num_threads()
        vggtl.set_num_threads(2)
        after_set = vggtl.get_num_threads()
    conn.send((F, F2, threads, after_set,
               [(w.category.__name__, str(w.message)) for w in seen]))
    conn.close()


@pytest.mark.skipif(not vggtl.info()["openmp"], reason="needs OpenMP")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_after_predict_runs_on_one_thread(rng, close, tol, conv_weights,
                                                         restore_threads):
    # libgomp's threads do not survive fork: a child whose parent had run a team
    # of two waited for ever in its first team (was: hung). It now runs on one
    # thread, with one warning that says why and what to do.
    import multiprocessing
    vggtl.set_num_threads(2)
    model = vggtl.VGG16(weights=conv_weights, pooling="avg")
    X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expect = model.predict(X)  # a team of two threads, in this process
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_predict_in_child, args=(send, model, X))
    p.start()
    send.close()
    try:
        got = recv.recv() if recv.poll(60) else None
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
    assert got is not None, "the forked child hung in its first predict (libgomp after fork)"
    F, F2, threads, after_set, warned = got
    assert p.exitcode == 0
    close(F, expect, rtol=tol.threads)
    np.testing.assert_array_equal(F2, F)
    assert threads == 1 and after_set == 1
    # once for the predicts, once for the refused set_num_threads(2)
    assert [c for c, _ in warned] == ["RuntimeWarning", "RuntimeWarning"], warned
    assert all("forked" in m and "spawn" in m for _, m in warned), warned
    assert vggtl.get_num_threads() == 2  # the parent keeps its threads


_FORK_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np, vggtl
    vggtl.set_num_threads(2)

    def child_threads():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, str(vggtl.get_num_threads()).encode())
            os._exit(0)
        os.close(w)
        out = os.read(r, 16).decode()
        os.waitpid(pid, 0)
        return out

    model = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))
    head = vggtl.TransferModel(model, head=[vggtl.Dense(2, activation="softmax")])
    before = child_threads()  # nothing computed yet: the child may use its threads
    model.predict(np.zeros((1, 32, 32, 3), np.uint8))
    print(before, child_threads())
""")


@pytest.mark.skipif(not vggtl.info()["openmp"], reason="needs OpenMP")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_before_any_work_keeps_its_threads():
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "1"]


_LIMIT_SCRIPT = textwrap.dedent("""
    import resource
    import numpy as np, vggtl
    # enough work for a parallel region (preprocessing: no workspace to allocate)
    X = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    vggtl.set_num_threads(1)
    one = vggtl.preprocess_input(X)
    with open("/proc/self/status") as f:
        vm = 1024 * int(next(l for l in f if l.startswith("VmSize:")).split()[1])
    # room for a few 16 MiB thread stacks (OMP_STACKSIZE), not for 63 of them
    resource.setrlimit(resource.RLIMIT_AS, (vm + (160 << 20), resource.RLIM_INFINITY))
    vggtl.set_num_threads(64)
    try:
        vggtl.preprocess_input(X)
        print("no error")
    except RuntimeError as e:
        print("RuntimeError:", e)
    vggtl.set_num_threads(2)  # fits: the process goes on
    print("after:", bool(np.array_equal(vggtl.preprocess_input(X), one)))
""")


@pytest.mark.skipif(not vggtl.info()["openmp"], reason="needs OpenMP")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.skipif("ASAN_OPTIONS" in os.environ,
                    reason="ASan maps terabytes of shadow memory: no address-space limit fits it")
def test_threads_that_cannot_start_raise_instead_of_ending_the_process():
    # under an address-space limit, 64 threads' stacks do not fit: libgomp printed
    # "Thread creation failed" and exited the process (was: exit status 1 mid-call)
    env = dict(os.environ, OMP_STACKSIZE="16M", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _LIMIT_SCRIPT], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = r.stdout.splitlines()
    assert lines[0].startswith("RuntimeError: could not start 64 threads"), r.stdout
    assert "vggtl.set_num_threads" in lines[0]
    assert lines[1] == "after: True"
