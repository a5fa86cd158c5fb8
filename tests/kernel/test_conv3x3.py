"""conv3x3_forward (3x3, stride 1, 'same' zero padding, HWIO) against the reference."""
import numpy as np
import pytest

from vggtl import _kernels, reference


def _data(rng, n, h, w, cin, cout):
    x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
    k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) / np.float32(np.sqrt(9 * cin))
    b = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.5)
    return x, k, b


# (N, H, W, Cin, Cout): N=1, odd channels, 1-pixel images, non-square, chunks of
# output pixels that straddle images (2 x 24 x 24 rows at Cin 64) and deep inputs
# (Cin 512: the minimum chunk size of the column buffer).
SHAPES = [
    (1, 1, 1, 1, 1),
    (1, 2, 1, 3, 2),
    (1, 5, 7, 3, 4),
    (2, 8, 8, 3, 64),
    (1, 9, 6, 5, 7),
    (3, 4, 5, 17, 33),
    (2, 24, 24, 64, 65),
    (1, 20, 20, 512, 8),
    (1, 40, 33, 3, 64),
]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv3x3_matches_reference(rng, close, shape, relu):
    x, k, b = _data(rng, *shape)
    got = _kernels.conv3x3_forward(x, k, b, relu=relu)
    ref = reference.conv3x3(x, k, b, relu=relu)
    close(got, ref)
    if relu:
        assert (got >= 0).all()
    else:
        assert (got < 0).any()


def test_conv3x3_single_tap_shifts_with_zero_padding(rng):
    # a kernel whose only non-zero tap is (dy, dx) with identity channel weights
    # reads x[y + dy - 1, x + dx - 1]: out is x shifted, with zeros at the border
    x = rng.standard_normal((2, 6, 5, 3), dtype=np.float32)
    b = np.zeros(3, dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            k = np.zeros((3, 3, 3, 3), dtype=np.float32)
            k[dy, dx] = np.eye(3, dtype=np.float32)
            got = _kernels.conv3x3_forward(x, k, b, relu=False)
            xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            np.testing.assert_array_equal(got, xp[:, dy:dy + 6, dx:dx + 5, :])


def test_conv3x3_known_values():
    # all-ones 3x3 image and kernel: each output is the count of in-image taps (4 at
    # the corners, 6 on the edges, 9 in the middle) plus the bias
    x = np.ones((1, 3, 3, 1), dtype=np.float32)
    k = np.ones((3, 3, 1, 1), dtype=np.float32)
    got = _kernels.conv3x3_forward(x, k, np.array([-5.0], dtype=np.float32), relu=False)
    np.testing.assert_array_equal(got[0, :, :, 0], [[-1, 1, -1], [1, 4, 1], [-1, 1, -1]])
    got = _kernels.conv3x3_forward(x, k, np.array([-5.0], dtype=np.float32), relu=True)
    np.testing.assert_array_equal(got[0, :, :, 0], [[0, 1, 0], [1, 4, 1], [0, 1, 0]])


def test_conv3x3_bias_only():
    x = np.zeros((1, 4, 4, 2), dtype=np.float32)
    k = np.ones((3, 3, 2, 3), dtype=np.float32)
    b = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    np.testing.assert_array_equal(_kernels.conv3x3_forward(x, k, b, relu=False),
                                  np.broadcast_to(b, (1, 4, 4, 3)))
    np.testing.assert_array_equal(_kernels.conv3x3_forward(x, k, b),
                                  np.broadcast_to(np.maximum(b, 0), (1, 4, 4, 3)))


def test_conv3x3_out_is_overwritten(rng, close):
    x, k, b = _data(rng, 2, 7, 9, 3, 5)
    out = np.full((2, 7, 9, 5), np.nan, dtype=np.float32)
    got = _kernels.conv3x3_forward(x, k, b, relu=False, out=out)
    assert got is out
    close(out, reference.conv3x3(x, k, b, relu=False))
    # a second call overwrites, it does not accumulate
    _kernels.conv3x3_forward(x, k, b, relu=False, out=out)
    close(out, reference.conv3x3(x, k, b, relu=False))


def test_conv3x3_empty_batch(rng, close):
    x, k, b = _data(rng, 0, 5, 4, 3, 6)
    got = _kernels.conv3x3_forward(x, k, b)
    assert got.shape == (0, 5, 4, 6) and got.dtype == np.float32
    # the same kernel on a non-empty batch still computes
    x1 = rng.standard_normal((1, 5, 4, 3), dtype=np.float32)
    close(_kernels.conv3x3_forward(x1, k, b), reference.conv3x3(x1, k, b))


def test_conv3x3_inputs_unchanged(rng):
    x, k, b = _data(rng, 2, 6, 6, 4, 8)
    copies = [a.copy() for a in (x, k, b)]
    _kernels.conv3x3_forward(x, k, b)
    for a, c in zip((x, k, b), copies):
        np.testing.assert_array_equal(a, c)


def test_conv3x3_images_are_independent(rng, close):
    # image i of a batch equals the conv of image i alone (chunks straddle images)
    x, k, b = _data(rng, 3, 17, 13, 8, 16)
    whole = _kernels.conv3x3_forward(x, k, b)
    for i in range(3):
        close(whole[i:i + 1], _kernels.conv3x3_forward(x[i:i + 1].copy(), k, b), rtol=1e-6)


def test_conv3x3_nan_propagates_through_relu(rng):
    # A NaN input poisons its 3x3 neighbourhood (0 * NaN is NaN), with or without
    # the ReLU: as np.maximum, torch.relu and the core's own max-pool, the ReLU
    # must keep NaN rather than turn it into 0 and hide it.
    x = rng.standard_normal((1, 5, 5, 2), dtype=np.float32)
    x[0, 2, 2, 1] = np.nan
    k = np.abs(rng.standard_normal((3, 3, 2, 3), dtype=np.float32))
    b = np.zeros(3, dtype=np.float32)
    expect_nan = np.zeros((1, 5, 5, 3), dtype=bool)
    expect_nan[0, 1:4, 1:4, :] = True
    ref = reference.conv3x3(x, k, b, relu=True)
    np.testing.assert_array_equal(np.isnan(ref), expect_nan)
    np.testing.assert_array_equal(np.isnan(_kernels.conv3x3_forward(x, k, b, relu=False)), expect_nan)
    np.testing.assert_array_equal(np.isnan(_kernels.conv3x3_forward(x, k, b, relu=True)), expect_nan)
