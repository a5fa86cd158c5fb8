"""maxpool2x2_forward (2x2, stride 2, floor) and global_pool_forward against the reference."""
import numpy as np
import pytest

from vggtl import _kernels, reference

SHAPES = [(1, 2, 2, 1), (1, 3, 3, 1), (2, 5, 7, 3), (1, 4, 6, 64), (3, 33, 47, 5),
          (1, 2, 9, 2), (2, 224, 224, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_maxpool_matches_reference(rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    got = _kernels.maxpool2x2_forward(x)
    n, h, w, c = shape
    assert got.shape == (n, h // 2, w // 2, c) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference.maxpool2x2(x))  # a max is exact


def test_maxpool_known_values():
    # 5 x 5, one channel: values 0..24; floor drops the last row and column
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    got = _kernels.maxpool2x2_forward(-x)
    np.testing.assert_array_equal(got[0, :, :, 0], [[0, -2], [-10, -12]])
    got = _kernels.maxpool2x2_forward(x)
    np.testing.assert_array_equal(got[0, :, :, 0], [[6, 8], [16, 18]])


@pytest.mark.parametrize("pos", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_maxpool_nan_propagates(pos):
    x = np.ones((1, 4, 4, 2), dtype=np.float32)
    x[0, 2 + pos[0], 2 + pos[1], 1] = np.nan
    got = _kernels.maxpool2x2_forward(x)
    expect = np.ones((1, 2, 2, 2), dtype=np.float32)
    expect[0, 1, 1, 1] = np.nan
    np.testing.assert_array_equal(got, expect)


def test_maxpool_negative_and_inf():
    x = np.full((1, 2, 4, 1), -np.inf, dtype=np.float32)
    x[0, 1, 3, 0] = -3.0
    got = _kernels.maxpool2x2_forward(x)
    np.testing.assert_array_equal(got[0, 0, :, 0], [-np.inf, -3.0])


def test_maxpool_input_unchanged(rng):
    x = rng.standard_normal((2, 6, 6, 3), dtype=np.float32)
    c = x.copy()
    _kernels.maxpool2x2_forward(x)
    np.testing.assert_array_equal(x, c)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 7, 7, 512), (4, 2, 1, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_global_pool_matches_reference(rng, close, mode, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    got = _kernels.global_pool_forward(x, mode)
    close(got, reference.global_pool(x, mode), rtol=1e-6)
    if mode == "max":
        np.testing.assert_array_equal(got, x.max(axis=(1, 2)))


def test_global_pool_known_values():
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2)  # channel 0: 0,2,..,10; 1: 1,..,11
    np.testing.assert_array_equal(_kernels.global_pool_forward(x, "avg"), [[5.0, 6.0]])
    np.testing.assert_array_equal(_kernels.global_pool_forward(x, "max"), [[10.0, 11.0]])


def test_global_avg_pool_large_map_keeps_precision():
    # 1000 x 1000 values of 1e4 + 0.1: a float32 running sum would drift; the
    # core sums in double
    x = np.full((1, 1000, 1000, 1), 10000.1, dtype=np.float32)
    got = _kernels.global_pool_forward(x, "avg")
    assert abs(float(got[0, 0]) - float(np.float32(10000.1))) <= 1e-3


def test_global_max_pool_nan_propagates():
    x = np.zeros((2, 3, 3, 2), dtype=np.float32)
    x[1, 2, 1, 0] = np.nan
    x[0, 0, 0, 1] = np.nan  # the first element, which starts the running max
    got = _kernels.global_pool_forward(x, "max")
    expect = np.zeros((2, 2), dtype=np.float32)
    expect[1, 0] = np.nan
    expect[0, 1] = np.nan
    np.testing.assert_array_equal(got, expect)
