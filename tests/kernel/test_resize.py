"""vggtl.resize (csrc/resize.c): bilinear with antialiasing when shrinking, as
Pillow's Image.resize(size, Image.BILINEAR); uint8 within +-1 of Pillow, float32
against a NumPy reference and Pillow's mode "F"."""
import tracemalloc

import numpy as np
import pytest

import vggtl
from vggtl import _core

try:
    from PIL import Image
except ImportError:  # Pillow is a test extra: only the comparisons with it skip
    Image = None
needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow is not installed")


def pillow_resize(X, oh, ow):
    """Pillow's BILINEAR on each image: 'L' / 'RGB' for uint8, 'F' per channel for float."""
    gray = X.ndim == 3
    X4 = X[..., None] if gray else X
    out = np.empty((len(X4), oh, ow, X4.shape[3]), X.dtype)
    for i, img in enumerate(X4):
        if X.dtype == np.uint8 and img.shape[2] in (1, 3):
            im = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
            r = np.asarray(im.resize((ow, oh), Image.BILINEAR))
            out[i] = r.reshape(oh, ow, -1)
        else:
            for c in range(img.shape[2]):
                im = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F")
                out[i, ..., c] = np.asarray(im.resize((ow, oh), Image.BILINEAR))
    return out[..., 0] if gray else out


def weights(n_in, n_out):
    """(n_out, n_in) resampling matrix: triangle filter, support max(1, n_in/n_out),
    pixel centres aligned, each row normalised (Pillow's precompute_coeffs)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    W = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        i = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((i - center + 0.5) / support))
        W[o, lo:hi] = w / w.sum()
    return W


def reference_resize(X, oh, ow):
    """float64 NumPy reference of the resize, NHWC."""
    Wy, Wx = weights(X.shape[1], oh), weights(X.shape[2], ow)
    return np.einsum("oh,nhwc,pw->nopc", Wy, X.astype(np.float64), Wx, optimize=True)


def assert_pillow_close(got, want):
    assert got.dtype == np.uint8 and got.shape == want.shape
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert d.max() <= 1, d.max()
    # off by one only where Pillow 13 changes its pass order (see below)
    assert d.mean() < 0.3, d.mean()


@needs_pillow
@pytest.mark.parametrize("shape, size", [
    ((3, 50, 50, 1), (224, 224)),    # the tutorial's grayscale up to VGG16's input
    ((3, 50, 50), (224, 224)),       # ... without the channel axis
    ((2, 224, 224, 3), (50, 50)),    # shrinking: antialiased
    ((2, 37, 53, 3), (100, 21)),     # non-square, up on one axis and down on the other
    ((2, 300, 10, 1), (7, 7)),       # shrinking by 43x
    ((1, 1, 1, 3), (5, 4)),
])
def test_uint8_matches_pillow(rng, shape, size):
    X = rng.integers(0, 256, shape, dtype=np.uint8)
    got = vggtl.resize(X, size)
    assert_pillow_close(got, pillow_resize(X, *size))


@needs_pillow
def test_uint8_is_pillow_to_the_bit(rng):
    """uint8 follows Pillow's fixed-point arithmetic and pass order (horizontal
    first, as Pillow always did and Pillow 13 still does unless the height shrinks
    much more than the width): the tutorial's resizes are exact, noise included."""
    X = rng.integers(0, 256, (3, 50, 50, 1), dtype=np.uint8)
    np.testing.assert_array_equal(vggtl.resize(X, (224, 224)), pillow_resize(X, 224, 224))
    X = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vggtl.resize(X, (50, 50)), pillow_resize(X, 50, 50))
    X = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vggtl.resize(X, (100, 21)), pillow_resize(X, 100, 21))


@pytest.mark.parametrize("shape, size", [
    ((2, 50, 50, 1), (224, 224)), ((2, 224, 224, 3), (50, 50)), ((1, 9, 17, 2), (4, 30)),
    ((2, 7, 7, 5), (7, 7)),
])
def test_float32_matches_reference(rng, shape, size):
    X = rng.random(shape, dtype=np.float32) * 255
    got = vggtl.resize(X, size)
    assert got.dtype == np.float32 and got.shape == (shape[0], *size, shape[3])
    np.testing.assert_allclose(got, reference_resize(X, *size), rtol=0, atol=1e-3)


@needs_pillow
def test_float32_matches_pillow_F_mode(rng):
    X = rng.random((1, 40, 60, 1), dtype=np.float32)
    for size in ((224, 224), (13, 17)):
        np.testing.assert_allclose(vggtl.resize(X, size), pillow_resize(X, *size), atol=1e-5)


@needs_pillow
def test_reference_is_pillow(rng):
    """The NumPy reference itself agrees with Pillow (so it is a fair oracle)."""
    X = rng.random((1, 30, 45, 1), dtype=np.float32)
    np.testing.assert_allclose(reference_resize(X, 64, 20), pillow_resize(X, 64, 20), atol=1e-5)


def test_dtypes_and_shapes(rng):
    X = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    ref = vggtl.resize(X.astype(np.float32), (5, 6))
    for dt in (np.float64, np.int16, np.uint16):
        got = vggtl.resize(X.astype(dt), (5, 6))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-4)
    # grayscale without a channel axis keeps its ndim; a list of images works
    assert vggtl.resize(X[..., 0], (5, 6)).shape == (2, 5, 6)
    np.testing.assert_array_equal(vggtl.resize(list(X), (5, 6)), vggtl.resize(X, (5, 6)))


def test_identity_and_constants(rng):
    X = rng.integers(0, 256, (2, 16, 20, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vggtl.resize(X, (16, 20)), X)
    Xf = X.astype(np.float32)
    np.testing.assert_allclose(vggtl.resize(Xf, (16, 20)), Xf, atol=1e-4)
    c = np.full((1, 13, 29, 2), 77, np.uint8)
    for size in ((224, 224), (3, 5), (13, 100)):
        assert (vggtl.resize(c, size) == 77).all()  # weights sum to 1, even at the borders


@needs_pillow
def test_extremes_do_not_wrap():
    X = np.zeros((1, 8, 8, 1), np.uint8)
    X[0, ::2] = 255
    for size in ((3, 3), (50, 50)):
        got = vggtl.resize(X, size)
        assert got.min() >= 0 and got.max() <= 255
        assert_pillow_close(got, pillow_resize(X, *size))
    assert (vggtl.resize(np.full((1, 4, 4, 1), 255, np.uint8), (9, 9)) == 255).all()


def test_nan_stays_local():
    X = np.ones((1, 20, 20, 1), np.float32)
    X[0, 10, 10, 0] = np.nan
    got = vggtl.resize(X, (40, 40))
    bad = np.argwhere(np.isnan(got[0, ..., 0]))
    assert len(bad) and bad.min() >= 17 and bad.max() <= 22
    assert np.isnan(got).sum() < 40


def test_input_not_modified(rng):
    X = rng.integers(0, 256, (2, 9, 9, 3), dtype=np.uint8)
    X0 = X.copy()
    vggtl.resize(X, (30, 4))
    np.testing.assert_array_equal(X, X0)


def test_batches_and_out_memmap(tmp_path, rng):
    X = rng.integers(0, 256, (7, 20, 24, 1), dtype=np.uint8)
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "R.npy", mode="w+", dtype=np.uint8,
                                    shape=(7, 50, 50, 1))
    r = vggtl.resize(Xm, (50, 50), out=out, batch_bytes=2 * 20 * 24)  # 2 images a batch
    assert r is out
    out.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "R.npy"), vggtl.resize(X, (50, 50)))
    with pytest.raises(ValueError, match="out: expected a writeable uint8 array of shape"):
        vggtl.resize(X, (50, 50), out=np.empty((7, 50, 50, 1), np.float32))


def test_memmap_is_read_in_batches(tmp_path, rng):
    """A memory-mapped X (20 MB) goes through in batches: Python-side memory stays
    at a batch or two, and a float X is never converted whole."""
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32,
                                  shape=(500, 100, 100, 1))
    X[:] = 0.5
    X.flush()
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "R.npy", mode="w+", dtype=np.float32,
                                    shape=(500, 50, 50, 1))
    tracemalloc.start()
    try:
        vggtl.resize(Xm, (50, 50), out=out, batch_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4e6, peak
    assert np.allclose(out, 0.5)


def test_threads_agree(rng, restore_threads):
    X = rng.random((3, 60, 45, 3), dtype=np.float32)
    vggtl.set_num_threads(1)
    one = vggtl.resize(X, (224, 224))
    vggtl.set_num_threads(2)
    np.testing.assert_array_equal(vggtl.resize(X, (224, 224)), one)  # same sums, same order


def test_core_glue_errors():
    x = np.zeros((1, 4, 4, 1), np.uint8)
    with pytest.raises(TypeError, match="x: expected dtype uint8 or float32, got f8"):
        _core.resize(x.astype(np.float64), 2, 2)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        _core.resize([[1]], 2, 2)
    with pytest.raises(ValueError, match="4 dimensions"):
        _core.resize(x[0], 2, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.resize(np.zeros((1, 4, 8, 1), np.uint8)[:, :, ::2], 2, 2)
    with pytest.raises(TypeError, match="native byte order"):
        _core.resize(np.zeros((1, 4, 4, 1), ">f4"), 2, 2)
    with pytest.raises(ValueError, match=r"h, w: expected output sizes >= 1, got \(0, 2\)"):
        _core.resize(x, 0, 2)
    with pytest.raises(ValueError, match="H, W and C >= 1"):
        _core.resize(np.zeros((1, 0, 4, 1), np.uint8), 2, 2)
    assert _core.resize(np.zeros((0, 4, 4, 1), np.uint8), 2, 3).shape == (0, 2, 3, 1)


def test_python_errors():
    x = np.zeros((1, 4, 4, 1), np.uint8)
    with pytest.raises(TypeError, match="size"):
        vggtl.resize(x, 5)
    with pytest.raises(ValueError, match="size"):
        vggtl.resize(x, (0, 5))
    with pytest.raises(ValueError, match="size"):
        vggtl.resize(x, (2.5, 5))
    with pytest.raises(TypeError, match="dtype bool"):
        vggtl.resize(x.astype(bool), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        vggtl.resize(x[0, 0], (2, 2))
