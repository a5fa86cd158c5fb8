"""dense_forward and activation_forward (linear, relu, softmax, sigmoid) against the reference."""
import numpy as np
import pytest

import vggtl
from vggtl import _kernels, reference

from support.isas import ISAS

ACTIVATIONS = ["linear", "relu", "softmax", "sigmoid"]

# (N, In, Out): single row / unit, odd sizes, tall x (split by rows across
# threads, with a ragged last block), wide x (split by columns), fc-like sizes.
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 17, 33), (37, 50, 3), (64, 100, 20), (5, 60, 100),
          (2, 512, 4096), (1, 25088, 10)]


def _data(rng, n, i, o):
    x = rng.standard_normal((n, i), dtype=np.float32)
    k = rng.standard_normal((i, o), dtype=np.float32) / np.float32(np.sqrt(i))
    b = rng.standard_normal(o, dtype=np.float32)
    return x, k, b


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_matches_reference(rng, close, shape, activation):
    x, k, b = _data(rng, *shape)
    got = _kernels.dense_forward(x, k, b, activation)
    close(got, reference.dense(x, k, b, activation))
    if activation == "softmax":
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_dense_default_activation_is_linear(rng, close):
    x, k, b = _data(rng, 4, 9, 6)
    got = _kernels.dense_forward(x, k, b)
    close(got, x.astype(np.float64) @ k + b)
    assert (got < 0).any()


def test_dense_known_values():
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
    k = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], dtype=np.float32)
    b = np.array([0.5, -0.5, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(_kernels.dense_forward(x, k, b),
                                  [[1.5, 1.5, 0.0], [-0.5, 0.0, -2.5]])
    np.testing.assert_array_equal(_kernels.dense_forward(x, k, b, "relu"),
                                  [[1.5, 1.5, 0.0], [0.0, 0.0, 0.0]])


def test_dense_empty_batch(rng, close):
    _, k, b = _data(rng, 1, 8, 3)
    got = _kernels.dense_forward(np.zeros((0, 8), dtype=np.float32), k, b, "softmax")
    assert got.shape == (0, 3) and got.dtype == np.float32
    x = rng.standard_normal((2, 8), dtype=np.float32)
    close(_kernels.dense_forward(x, k, b, "softmax"), reference.dense(x, k, b, "softmax"))


def test_dense_inputs_unchanged(rng):
    x, k, b = _data(rng, 40, 30, 50)
    copies = [a.copy() for a in (x, k, b)]
    _kernels.dense_forward(x, k, b, "softmax")
    for a, c in zip((x, k, b), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (50, 1000), (0, 4)])
def test_activation_matches_reference(rng, close, shape, activation):
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    before = x.copy()
    got = _kernels.activation_forward(x, activation)
    assert got is not x
    np.testing.assert_array_equal(x, before)  # a new array; x is left alone
    close(got, reference.activation(x, activation))


def test_activation_known_values():
    x = np.array([[-2.0, 0.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(_kernels.activation_forward(x, "linear"), x)
    np.testing.assert_array_equal(_kernels.activation_forward(x, "relu"), [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(_kernels.activation_forward(x, "sigmoid"),
                               [[1 / (1 + np.e ** 2), 0.5, 1 / (1 + np.e ** -3)]], rtol=1e-6)
    e = np.exp([-5.0, -3.0, 0.0])
    np.testing.assert_allclose(_kernels.activation_forward(x, "softmax"), [e / e.sum()], rtol=1e-6)


def test_softmax_is_stable_for_large_logits(close):
    # exp(1000) overflows float32 and float64: the max must be subtracted first
    x = np.array([[1000.0, 999.0, -1000.0], [-1000.0, -1001.0, -1002.0],
                  [3e38, 0.0, -3e38]], dtype=np.float32)
    got = _kernels.activation_forward(x, "softmax")
    assert np.isfinite(got).all()
    close(got, reference.softmax(x), rtol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(got[2], [1.0, 0.0, 0.0])


def test_softmax_is_shift_invariant(rng, close):
    x = rng.standard_normal((4, 9), dtype=np.float32)
    close(_kernels.activation_forward(x + np.float32(50.0), "softmax"),
          _kernels.activation_forward(x, "softmax"), rtol=1e-5)


def test_sigmoid_saturates_without_nan():
    x = np.array([[-200.0, -90.0, 90.0, 200.0]], dtype=np.float32)
    got = _kernels.activation_forward(x, "sigmoid")
    np.testing.assert_allclose(got, [[0.0, 0.0, 1.0, 1.0]], atol=1e-30)


def test_nan_propagates_through_activations():
    # NaN stays NaN, as in np.maximum / torch.relu and the core's max-pool
    x = np.array([[np.nan, -1.0, 2.0]], dtype=np.float32)
    for act, expect in [("linear", [np.nan, -1.0, 2.0]), ("relu", [np.nan, 0.0, 2.0])]:
        np.testing.assert_array_equal(reference.activation(x, act)[0], expect)
        np.testing.assert_array_equal(_kernels.activation_forward(x, act)[0], expect, err_msg=act)
    assert np.isnan(_kernels.activation_forward(x, "sigmoid")[0, 0])
    assert np.isnan(_kernels.activation_forward(x, "softmax")).all()
    k = np.eye(3, dtype=np.float32)
    got = _kernels.dense_forward(x, k, np.zeros(3, np.float32), "relu")
    ref = reference.dense(x, k, np.zeros(3), "relu")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))


# (N, In, Out) for the backward products: a batch deeper than one k block (256),
# odd widths (a short last panel of 16 columns), rows split across threads
BACKWARD_SHAPES = [(1, 1, 1), (5, 17, 1), (300, 70, 33), (32, 2048, 64), (40, 513, 2)]


@pytest.mark.parametrize("shape", BACKWARD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_backward_matches_float64(rng, shape):
    n, i, o = shape
    x, k, _ = _data(rng, n, i, o)
    dz = rng.standard_normal((n, o), dtype=np.float32)
    dx, dw, db = _kernels.dense_backward(dz, x, k)
    x64, k64, dz64 = x.astype(np.float64), k.astype(np.float64), dz.astype(np.float64)
    for got, want in ((dw, x64.T @ dz64), (dx, dz64 @ k64.T), (db, dz64.sum(0))):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1.0) * np.sqrt(n + o)
    # every element of dW is one chain over the batch in order: a row's bits do not
    # depend on the other rows (the same x column alone gives the same column of dW)
    _, dw1, _ = _kernels.dense_backward(dz, np.ascontiguousarray(x[:, :1]), k[:1], need_dx=False)
    np.testing.assert_array_equal(dw1[0], dw[0])


# Rows around the AVX-512 kernels' blocks (12 rows over two panels, 14 over one),
# columns of whole panel pairs, a lone panel and a ragged one, depths below and
# above one k block (256): every product of vggtl's own GEMM (gemm.c) is one
# chain of fused multiply-adds in a fixed order, so each instruction set gives
# the portable path's bits (fmaf), whatever the kernel that ran it.
GEMM_SHAPES = [(1, 7, 32), (11, 300, 64), (12, 300, 48), (13, 40, 33), (25, 513, 80),
               (37, 260, 16), (24, 9, 96)]


@pytest.mark.parametrize("isa", ISAS[1:])
def test_products_give_the_portable_bits_on_every_instruction_set(rng, kernels, isa):
    for n, i, o in GEMM_SHAPES:
        x, k, b = _data(rng, n, i, o)
        dz = rng.standard_normal((n, o), dtype=np.float32)
        vggtl.set_isa("portable")
        want = _kernels.dense_forward(x, k, b, "linear"), _kernels.dense_backward(dz, x, k)
        vggtl.set_isa(isa)
        got = _kernels.dense_forward(x, k, b, "linear"), _kernels.dense_backward(dz, x, k)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"forward {n}x{i}x{o}")
        for g, w, what in zip(got[1], want[1], ("dx", "dw", "db")):
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {n}x{i}x{o}")
