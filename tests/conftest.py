"""Shared fixtures of the vggtl test suite: a private cache home, the seeded
generator, the tolerances (support/tolerance.py) as fixtures, the conv-base
weights and models built once per session, and restorers of the global settings.

Tests live by level: kernel/ (one C kernel through vggtl._kernels), seam/ (the
vggtl._core boundary), api/ (the public Python API), oracle/ (the public API's
numbers against TensorFlow's Keras, PyTorch, ONNX Runtime, scikit-learn); what they
share is in support/ (ARCHITECTURE.md, "Tests").
"""
import os
import types

import numpy as np
import pytest

import vggtl

from support.tolerance import RTOL, THREADS_RTOL, assert_close


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
