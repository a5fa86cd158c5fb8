"""Fuzz target: the tutorial's pickles, read by vggtl.load_pickles.

Contract (vggtl.data.load_pickle's docstring): any file gives an object or a
``ValueError`` naming the file (``UnsafePickleError``, a ValueError, for a refused
global); what it gives, checked as X and as y (the rest of load_pickles), gives an
array or a ValueError. No other exception, no crash, no hang, no memory blow-up.

    python fuzz/fuzz_pickle.py -max_total_time=600 -timeout=10 -rss_limit_mb=2048 CORPUS
"""
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

import numpy as np  # noqa: E402,F401  (not instrumented: only vggtl is)

with _harness.instrumented_imports():
    import pickle  # noqa: F401
    from vggtl import data

PATH = os.path.join(_harness.scratch_dir(), "X.pickle")
warnings.simplefilter("ignore")  # "more data after the first pickle" is fine


def one_input(raw: bytes) -> None:
    _harness.write(PATH, raw)
    try:
        obj = data.load_pickle(PATH)
    except ValueError as e:
        assert PATH in str(e), f"the error does not name the file: {e}"
        return
    for check in (data._as_images, data._labels_array):  # what load_pickles does next
        try:
            check(obj, PATH)
        except ValueError:
            pass


if __name__ == "__main__":
    _harness.main(one_input)
