"""Shared fixtures and tolerances of the vggtl test suite.

Errors are measured as max|got - ref| / max|ref| over the whole array (ggml's
style of a single relative figure): float32 kernels against the float64 NumPy
reference in vggtl.reference, or against PyTorch.
"""
import os
import types

import numpy as np
import pytest

import vggtl

@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory):
    """The suite never writes to the user's real caches: the feature cache and
    converted weights go to a temporary XDG_CACHE_HOME (tests that need their own
    folder set it themselves with monkeypatch)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache_home"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


RTOL = 1e-4          # vggtl vs the reference / torch
THREADS_RTOL = 1e-5  # vggtl at 1 thread vs 2 threads


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


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: tests do not depend on their order."""
    return np.random.default_rng(20260127)


@pytest.fixture
def tol():
    """The suite's tolerances: tol.rtol (vs reference / torch), tol.threads."""
    return types.SimpleNamespace(rtol=RTOL, threads=THREADS_RTOL)


@pytest.fixture
def close():
    """assert_close(got, ref, rtol=RTOL)."""
    return assert_close


@pytest.fixture(scope="session")
def conv_weights():
    """Random conv-base weights {name: (HWIO kernel, bias)}: Glorot-uniform kernels
    (as VGG16(seed=...) draws them) and small non-zero biases, so bias is tested."""
    w = vggtl.VGG16(weights=None, seed=7).get_weights()
    r = np.random.default_rng(7)
    return {k: (kern, r.normal(0.0, 0.1, b.shape).astype(np.float32)) for k, (kern, b) in w.items()}


@pytest.fixture(scope="session")
def base_model(conv_weights):
    return vggtl.VGG16(weights=conv_weights)


TOP_CLASSES = 10


@pytest.fixture(scope="session")
def top_model(conv_weights):
    """VGG16 with the top (fc1 is 25088 x 4096: 400 MB), built once per session.

    The predictions kernel is scaled up so the softmax is far from uniform."""
    m = vggtl.VGG16(weights=None, include_top=True, classes=TOP_CLASSES, seed=11)
    w = m.get_weights()
    w.update(conv_weights)
    r = np.random.default_rng(11)
    for name in ("fc1", "fc2", "predictions"):
        k, b = w[name]
        if name == "predictions":
            k = k * np.float32(30.0)
        w[name] = (k, r.normal(0.0, 0.05, b.shape).astype(np.float32))
    m.set_weights(w)
    return m


@pytest.fixture
def kernels():
    """Restores the instruction set and convolution algorithm a test changes."""
    isa, algo = vggtl.get_isa(), vggtl.get_conv_algo()
    yield
    vggtl.set_isa(isa)
    vggtl.set_conv_algo(algo)


@pytest.fixture
def restore_threads():
    """Restores vggtl's thread count after the test."""
    n = vggtl.get_num_threads()
    yield n
    vggtl.set_num_threads(n)
