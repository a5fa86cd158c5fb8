"""input_convert (the core's image conversion) and vggtl.preprocess_input against the reference."""
import numpy as np
import pytest

import vggtl
from vggtl import _core, reference

CORE_DTYPES = [np.uint8, np.float32, np.float64]
# every real dtype predict / preprocess_input accept: the core's three read
# directly, the others are converted per batch (big-endian included)
ALL_DTYPES = CORE_DTYPES + [np.int16, np.uint16, np.int64, np.float16, ">f4", ">f8"]


def _images(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.random(shape) * 255).astype(dtype)
    return rng.integers(0, 256, shape).astype(dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", CORE_DTYPES, ids=lambda d: np.dtype(d).name)
def test_input_convert_matches_reference(rng, close, dtype, channels, reverse):
    x = _images(rng, (2, 5, 7, channels), dtype)
    before = x.copy()
    scale = [0.5, -2.0, 1 / 255]
    shift = [-10.0, 3.25, 0.0]
    got = _core.input_convert(x, scale, shift, reverse_channels=reverse)
    assert got.shape == (2, 5, 7, 3)
    close(got, reference.input_convert(x, scale, shift, reverse), rtol=1e-6)
    np.testing.assert_array_equal(x, before)


def test_input_convert_known_values():
    x = np.array([10, 20, 30], dtype=np.uint8).reshape(1, 1, 1, 3)
    scale, shift = [1.0, 2.0, 3.0], [0.5, 0.25, -1.0]
    got = _core.input_convert(x, scale, shift)
    np.testing.assert_array_equal(got.ravel(), [10.5, 40.25, 89.0])
    got = _core.input_convert(x, scale, shift, reverse_channels=True)  # reads B, G, R
    np.testing.assert_array_equal(got.ravel(), [30.5, 40.25, 29.0])
    grey = np.array([7.0], dtype=np.float64).reshape(1, 1, 1, 1)
    got = _core.input_convert(grey, scale, shift, reverse_channels=True)
    np.testing.assert_array_equal(got.ravel(), [7.5, 14.25, 20.0])


def test_input_convert_uint8_full_range():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    got = _core.input_convert(x, [1.0] * 3, [0.0] * 3)
    np.testing.assert_array_equal(got, np.repeat(x, 3, axis=3).astype(np.float32))


def test_input_convert_empty(rng, close):
    got = _core.input_convert(np.zeros((0, 4, 4, 3), np.uint8), [1.0] * 3, [0.0] * 3)
    assert got.shape == (0, 4, 4, 3) and got.dtype == np.float32
    x = _images(rng, (1, 4, 4, 3), np.uint8)
    close(_core.input_convert(x, [2.0] * 3, [1.0] * 3), x * 2.0 + 1.0, rtol=0)


@pytest.mark.parametrize("mode", ["caffe", "torch", "scale", None])
@pytest.mark.parametrize("channels", [None, 1, 3])  # None: (N, H, W) grey without a channel axis
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).str)
def test_preprocess_input_matches_reference(rng, close, dtype, channels, mode):
    shape = (3, 6, 5) if channels is None else (3, 6, 5, channels)
    x = _images(rng, shape, dtype)
    before = x.copy()
    got = vggtl.preprocess_input(x, mode)
    x4 = x[..., None] if channels is None else x
    close(got, reference.preprocess(x4, mode), rtol=1e-6)
    np.testing.assert_array_equal(x, before)  # never modified in place (unlike Keras)


def test_preprocess_input_known_values():
    rgb = np.array([10, 20, 30], dtype=np.uint8).reshape(1, 1, 1, 3)
    # caffe (Keras's vgg16.preprocess_input, the default): BGR minus the BGR mean
    np.testing.assert_allclose(vggtl.preprocess_input(rgb).ravel(),
                               [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(vggtl.preprocess_input(rgb, "caffe").ravel(),
                               [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(
        vggtl.preprocess_input(rgb, "torch").ravel(),
        [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225],
        rtol=1e-5)
    np.testing.assert_allclose(vggtl.preprocess_input(rgb, "scale").ravel(),
                               [10 / 255, 20 / 255, 30 / 255], rtol=1e-6)
    np.testing.assert_array_equal(vggtl.preprocess_input(rgb, None).ravel(), [10, 20, 30])


def test_preprocess_input_non_contiguous_and_list(rng, close):
    x = _images(rng, (4, 8, 6, 3), np.uint8)
    for view in (x[:, ::-1], x[::2], x.transpose(0, 2, 1, 3), np.asfortranarray(x)):
        close(vggtl.preprocess_input(view, "caffe"), reference.preprocess(view, "caffe"), rtol=1e-6)
    close(vggtl.preprocess_input(list(x), "torch"), reference.preprocess(x, "torch"), rtol=1e-6)
    ro = x.copy()
    ro.setflags(write=False)
    close(vggtl.preprocess_input(ro, "scale"), reference.preprocess(x, "scale"), rtol=1e-6)


def test_reference_preprocess_matches_keras_formulas(rng):
    # guards the oracle itself: Keras's imagenet_utils written out per channel
    x = rng.random((2, 3, 3, 3)) * 255
    caffe = reference.preprocess(x, "caffe")
    for c, (src, mean) in enumerate(zip((2, 1, 0), (103.939, 116.779, 123.68))):
        np.testing.assert_allclose(caffe[..., c], x[..., src] - mean, rtol=1e-6, atol=1e-4)
    torch_ = reference.preprocess(x, "torch")
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        np.testing.assert_allclose(torch_[..., c], (x[..., c] / 255 - mean) / std, rtol=1e-6,
                                   atol=1e-6)
