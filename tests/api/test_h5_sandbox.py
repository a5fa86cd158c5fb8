"""libhdf5 runs in a worker process (vggtl.weights._h5_sandbox): whatever the worker
does, hang, crash, lie or flood, the caller gets a WeightsError naming the file in
bounded time and memory, the worker is gone, and the next load works.

The misbehaving workers are small scripts standing in for vggtl's
(_h5_sandbox.WORKER_SCRIPT); the real one reads real Keras files, the same as h5py
in this process does."""
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import vggtl
from vggtl import weights as W
from vggtl.weights import _h5_sandbox

from support import REPO
from support import weight_files as wf

h5py = pytest.importorskip("h5py")
sys.path.insert(0, os.path.join(REPO, "fuzz"))
import seeds  # noqa: E402  (fuzz/seeds.py: the miniature VGG16)


@pytest.fixture
def mini(monkeypatch, tmp_path):
    """A legacy Keras .h5 of the miniature VGG16, and its weights."""
    monkeypatch.setattr(W, "CONV_SPEC", seeds.mini_spec())
    ref = seeds.mini_weights(1)
    return wf.write_keras_legacy_h5(str(tmp_path / "mini.h5"), ref), ref


@pytest.fixture
def fresh_worker():
    """No worker before the test, none left after it."""
    _h5_sandbox._drop_worker()
    yield
    _h5_sandbox._drop_worker()


# The framing of vggtl.weights._h5_worker, written out: an 8-byte little-endian
# length, JSON, then the payload the JSON announces.
FAKE = textwrap.dedent("""
    import json, os, signal, struct, sys, time
    def send(d):
        b = json.dumps(d).encode()
        os.write(1, struct.pack("<Q", len(b)) + b)
    def receive():
        n = struct.unpack("<Q", os.read(0, 8))[0]
        req = json.loads(os.read(0, n))
        os.read(0, req.get("payload", 0)) if req.get("payload") else None
        return req
    BEHAVIOUR
""")

BEHAVIOURS = {
    # never says it is ready
    "silent_start": "time.sleep(600)",
    # ready, then never answers
    "hang": "send({'ready': True}); receive(); time.sleep(600)",
    # ready, then dies as libhdf5 did on a damaged heap
    "segfault": "send({'ready': True}); receive(); os.kill(os.getpid(), signal.SIGSEGV)",
    # announces an answer of a terabyte
    "flood": "send({'ready': True}); receive(); os.write(1, struct.pack('<Q', 1 << 40))",
    # an answer that is not JSON
    "garbage": "send({'ready': True}); receive(); os.write(1, struct.pack('<Q', 4) + b'\\xff\\xfe{[')",
    # lists a layer whose shapes are right, then sends a different array for it
    "wrong_shape": (
        "send({'ready': True})\n"
        "spec = SPEC\n"
        "while True:\n"
        "    req = receive()\n"
        "    if req['op'] == 'kind': send({'kind': 'keras-h5'})\n"
        "    elif req['op'] == 'open': send({'layers': [[n, [[[3, 3, ci, co], 'f'], [[co], 'f']]]"
        " for n, ci, co in spec]})\n"
        "    elif req['op'] == 'read': send({'shape': [2], 'payload': 8}); os.write(1, bytes(8))\n"
        "    else: send({'closed': True})"),
}


def _fake(tmp_path, monkeypatch, behaviour):
    script = tmp_path / f"fake_{behaviour}.py"
    body = BEHAVIOURS[behaviour].replace("SPEC", repr([list(t) for t in W.CONV_SPEC]))
    script.write_text(FAKE.replace("BEHAVIOUR", body))
    monkeypatch.setattr(_h5_sandbox, "WORKER_SCRIPT", str(script))
    monkeypatch.setattr(_h5_sandbox, "BASE_SECONDS", 1.0)
    monkeypatch.setattr(_h5_sandbox, "START_SECONDS", 2.0)


@pytest.mark.parametrize("behaviour,message", [
    ("silent_start", r"libhdf5 did not finish starting in time"),
    ("hang", r"libhdf5 did not finish reading its layout in time; a damaged HDF5 file can "
             r"make it loop for ever, so vggtl stopped it"),
    ("segfault", r"libhdf5 was killed by SIGSEGV while reading its layout"),
    ("flood", r"the HDF5 reader process sent a 1099511627776-byte answer"),
    ("garbage", r"the HDF5 reader process sent an answer that is not JSON"),
])
def test_a_worker_that_misbehaves_costs_a_weights_error(mini, tmp_path, monkeypatch,
                                                        fresh_worker, behaviour, message):
    path, ref = mini
    _fake(tmp_path, monkeypatch, behaviour)
    t0 = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(vggtl.WeightsError, match=message) as e:
            W.load_weights(path, cache=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value).startswith(path + ": ")
    assert time.monotonic() - t0 < 30
    assert peak < 16 << 20, peak  # the terabyte announced was never allocated
    assert _h5_sandbox._worker is None  # killed and dropped
    monkeypatch.setattr(_h5_sandbox, "WORKER_SCRIPT", _h5_sandbox._h5_worker.__file__)
    w = W.load_weights(path, cache=False)  # a new worker, the real one
    assert all(np.array_equal(w[n][0], ref[n][0]) and np.array_equal(w[n][1], ref[n][1])
               for n in ref)


def test_an_array_other_than_the_one_listed_is_refused(mini, tmp_path, monkeypatch,
                                                       fresh_worker):
    path, _ = mini
    _fake(tmp_path, monkeypatch, "wrong_shape")
    with pytest.raises(vggtl.WeightsError, match=r"sent an array of shape \[2\] for one of "
                                                 r"\[3, 3, 3, 2\]"):
        W.load_weights(path, cache=False)


def test_the_worker_reads_what_h5py_reads_in_this_process(mini, monkeypatch, fresh_worker):
    path, ref = mini
    isolated = W.load_weights(path, cache=False)
    assert _h5_sandbox._worker is not None and _h5_sandbox._worker.proc.poll() is None
    monkeypatch.setattr(_h5_sandbox, "ISOLATE", False)
    local = W.load_weights(path, cache=False)
    for n in ref:
        for a, b, r in zip(isolated[n], local[n], ref[n]):
            assert a.dtype == np.float32 and a.flags.c_contiguous
            assert np.array_equal(a, r) and np.array_equal(b, r)


def test_one_worker_serves_threads_one_file_at_a_time(mini, fresh_worker):
    path, ref = mini
    got, errors = [], []

    def load():
        try:
            got.append(W.load_weights(path, cache=False))
        except Exception as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(got) == 4
    for w in got:
        assert all(np.array_equal(w[n][0], ref[n][0]) for n in ref)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_workers_memory_is_bounded(mini, fresh_worker):
    path, _ = mini
    W.load_weights(path, cache=False)
    limits = open(f"/proc/{_h5_sandbox._worker.proc.pid}/limits").read()
    line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
    soft = line.split()[3]
    assert soft != "unlimited" and int(soft) < (8 << 30), line


def test_this_process_never_imports_h5py(mini):
    path, _ = mini
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(REPO, 'fuzz')!r})
        import seeds
        seeds.use_mini_vgg16()
        from vggtl import weights as W
        w = W.load_weights({path!r}, cache=False)
        assert len(w) == 13
        assert "h5py" not in sys.modules, "h5py was imported here"
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_an_interrupted_request_leaves_no_worker_behind(mini, monkeypatch, fresh_worker):
    """Ctrl-C while the worker is answering: its answer would be taken for the next
    request's, so the worker is stopped; the next load starts another."""
    path, ref = mini
    W.load_weights(path, cache=False)
    old = _h5_sandbox._worker
    real = _h5_sandbox._Worker._receive
    calls = []

    def interrupted(self, deadline, what):
        if what == "listing its layers" and not calls:
            calls.append(what)
            raise KeyboardInterrupt
        return real(self, deadline, what)

    monkeypatch.setattr(_h5_sandbox._Worker, "_receive", interrupted)
    with pytest.raises(KeyboardInterrupt):
        W.load_weights(path, cache=False)
    assert calls and _h5_sandbox._worker is None and old.proc.poll() is not None
    w = W.load_weights(path, cache=False)
    assert _h5_sandbox._worker is not old
    assert all(np.array_equal(w[n][0], ref[n][0]) for n in ref)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_worker_and_lock(mini):
    """fork() while another thread is inside a load (holding the worker's lock): the
    child loads with a worker of its own instead of waiting for ever on a lock no
    thread of its will release, and the parent's worker carries on."""
    path, _ = mini
    code = textwrap.dedent(f"""
        import os, sys, threading
        sys.path.insert(0, {os.path.join(REPO, 'fuzz')!r})
        import seeds
        seeds.use_mini_vgg16()
        from vggtl import weights as W
        from vggtl.weights import _h5_sandbox as S
        W.load_weights({path!r}, cache=False)
        parent_worker = S._worker
        S._lock.acquire()  # as a thread in the middle of a load holds it
        pid = os.fork()
        if pid == 0:
            w = W.load_weights({path!r}, cache=False)
            ok = len(w) == 13 and S._worker is not parent_worker
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        S._lock.release()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert parent_worker.proc.poll() is None and S._worker is parent_worker
        assert len(W.load_weights({path!r}, cache=False)) == 13
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr[-2000:])
