"""The suite's error measure and tolerances.

Errors are measured as max|got - ref| / max|ref| over the whole array (ggml's
style of a single relative figure): float32 kernels against the float64 NumPy
reference in vggtl.reference, or against PyTorch. conftest.py hands them to the
tests as the fixtures tol and close; a test that needs the figure itself imports
rel_err from here.
"""
import numpy as np

RTOL = 1e-4          # vggtl vs the reference / torch
THREADS_RTOL = 1e-5  # vggtl at 1 thread vs 2 threads

# One 3x3 convolution layer, forward or backward, by each float32 algorithm
# against float64: im2col is a plain float32 sum; Winograd adds the rounding of
# its transforms, F(6x6) about twice F(4x4)'s; F(3x3) stays within F(4x4)'s bound
CONV_ALGOS = ["im2col", "winograd", "winograd6", "winograd3"]
CONV_RTOL = {"im2col": 1e-5, "winograd": 3e-5, "winograd6": 6e-5, "winograd3": 3e-5}


def rel_err(got, ref):
    """max|got - ref| / max|ref| (0 when both are all zero)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(got - ref).max() if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(got, ref, rtol=RTOL):
    """got is float32, has ref's shape, is finite where ref is, and is within rtol."""
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float32, got.dtype
    assert got.shape == np.shape(ref), (got.shape, np.shape(ref))
    ref = np.asarray(ref)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    fin = ~np.isnan(ref)
    err = rel_err(got[fin], ref[fin])
    assert err <= rtol, f"max|diff|/max|ref| = {err:.3g} > {rtol:g}"
