"""Ctrl-C during a long predict: the core stops between chunks and the call
raises KeyboardInterrupt, long before the work would have finished."""
import signal
import subprocess
import sys
import textwrap
import time

from support import REPO

CHILD = textwrap.dedent("""
    import signal, sys, time, numpy as np, vggtl
    # Python's Ctrl-C handler, even when the tests were started in the background
    # (`&`, nohup), which leaves SIGINT ignored in every child
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = vggtl.VGG16(weights=None)
    X = np.zeros((64, 224, 224, 3), dtype=np.uint8)   # ~15 s of work on 2 cores
    print("started", flush=True)
    t = time.perf_counter()
    try:
        base.predict(X, batch_size=64)                  # one batch: one C call
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted after %.2f s" % (time.perf_counter() - t), flush=True)
        # the process is still usable afterwards
        print("after", base.predict(X[:1, :32, :32]).shape, flush=True)
""")


def test_sigint_stops_predict_inside_one_batch():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                         cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "started"
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert "finished" not in out
    assert "interrupted after" in out, out
    assert "after (1, 1, 1, 512)" in out, out
