"""vggtl.Augment: Keras 3's ImageDataGenerator affine augmentation, in C.

The oracle is Keras 3 itself (keras/src/legacy/preprocessing/image.py, torch
backend; a test extra: those tests skip without keras). Keras 3 swaps the first
two rows and columns of the transform relative to keras-preprocessing 1.1.2, so
tx / zx act on columns; non-square images make a mix-up of the axes visible.
"""
import os

import numpy as np
import pytest

import vggtl
from vggtl import _core
from vggtl.augment import PARAM_KEYS, Augment
from vggtl import _kernels  # the single kernels, for tests

TUTORIAL = dict(rotation_range=30, zoom_range=0.15, width_shift_range=0.2,
                height_shift_range=0.2, shear_range=0.15, horizontal_flip=True,
                fill_mode="nearest")

# one case per transform alone, then all together, then far outside the image
# (reflect and wrap fold the coordinates several times)
TRANSFORMS = {
    "theta": {"theta": 17.3},
    "tx": {"tx": 3.7},
    "ty": {"ty": -5.2},
    "shear": {"shear": 12.0},
    "zoom": {"zx": 0.83, "zy": 1.21},
    "flip_horizontal": {"flip_horizontal": True},
    "flip_vertical": {"flip_vertical": True},
    "all": {"theta": -25.0, "tx": 2.2, "ty": -3.1, "shear": 8.0, "zx": 1.1, "zy": 0.9,
            "flip_horizontal": True, "flip_vertical": True},
    "far": {"theta": 200.0, "tx": 40.0, "ty": -70.0, "zx": 2.5, "zy": 3.0},
}
MARGIN = 2  # "away from the borders": where a 1e-15 change of a coordinate can flip a fill

# Keras 3 calls scipy.ndimage.interpolation.affine_transform, deprecated in SciPy 1.x
pytestmark = pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")


@pytest.fixture(scope="module")
def keras_idg():
    """Keras 3's ImageDataGenerator class (torch backend), or skip."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras is loaded with another backend")
    from keras.src.legacy.preprocessing.image import ImageDataGenerator
    return ImageDataGenerator


@pytest.fixture(scope="module")
def images():
    r = np.random.default_rng(7)
    # a smooth image plus noise, so interpolation errors would show, square and not
    return {shape: r.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((24, 24, 3), (20, 29, 3))}


def _as_row(p):
    return np.array([[float(p.get(k, d)) for k, d in
                      zip(PARAM_KEYS, (0, 0, 0, 0, 1, 1, 0, 0))]], dtype=np.float64)


# -- parity with Keras --------------------------------------------------------------------
@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
@pytest.mark.parametrize("case", list(TRANSFORMS))
def test_apply_matches_keras(keras_idg, images, case, fill_mode):
    params = TRANSFORMS[case]
    keras_gen = keras_idg(fill_mode=fill_mode, cval=17.0)
    aug = Augment(fill_mode=fill_mode, cval=17.0)
    for shape, x in images.items():
        ref_u8 = keras_gen.apply_transform(x, dict(params))               # uint8 out (rounded)
        ref_f = keras_gen.apply_transform(x.astype(np.float32), dict(params))  # as flow() does
        got = aug.apply(x, params)
        assert got.dtype == np.float32 and got.shape == x.shape
        inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
        diff_u8 = np.abs(np.rint(got).astype(int) - ref_u8.astype(int))
        assert diff_u8[inner].max() <= 1, (shape, diff_u8[inner].max())
        # and in fact everywhere, to float32 rounding (the sums are scipy's)
        np.testing.assert_allclose(got, ref_f, rtol=0, atol=1e-3)


def test_keras3_axis_convention(keras_idg):
    """Keras 3: tx moves columns and the rotation centre is (w/2 - .5, h/2 - .5)
    in (row, col); keras-preprocessing 1.1.2 would move rows."""
    x = np.zeros((9, 13, 1), dtype=np.float32)
    x[4, 6] = 100.0
    out = Augment().apply(x, {"tx": 2.0})
    assert out[4, 4, 0] == 100.0  # pulled from column 6: content moved left by 2
    ref = keras_idg().apply_transform(x, {"tx": 2.0})
    np.testing.assert_array_equal(out, ref)
    rot = Augment().apply(x, {"theta": 90.0})
    np.testing.assert_allclose(rot, keras_idg().apply_transform(x, {"theta": 90.0}), atol=1e-4)


def test_random_params_follow_keras_distributions(keras_idg):
    """Ranges and moments of our draws against Keras's get_random_transform on a
    non-square image (so tx ~ height, ty ~ width shows)."""
    h, w, n = 40, 100, 4000
    aug = Augment(**TUTORIAL, vertical_flip=True, seed=5)
    ours = aug.random_params(n, (h, w, 3))
    gen = keras_idg(**TUTORIAL, vertical_flip=True)
    np.random.seed(0)
    draws = [gen.get_random_transform((h, w, 3)) for _ in range(n)]
    theirs = {k: np.array([d[k] for d in draws], dtype=np.float64) for k in PARAM_KEYS}
    bounds = {"theta": (-30, 30), "tx": (-0.2 * h, 0.2 * h), "ty": (-0.2 * w, 0.2 * w),
              "shear": (-0.15, 0.15), "zx": (0.85, 1.15), "zy": (0.85, 1.15),
              "flip_horizontal": (0, 1), "flip_vertical": (0, 1)}
    for k, (lo, hi) in bounds.items():
        a, b = ours[k].astype(np.float64), theirs[k]
        span = hi - lo
        assert lo <= a.min() and a.max() <= hi, k
        # both fill their range: the extremes within 1% of the bounds (uniform, n=4000)
        assert a.min() - lo < 0.01 * span and hi - a.max() < 0.01 * span, k
        # means and standard deviations agree within 4 standard errors
        se = b.std() / np.sqrt(n)
        assert abs(a.mean() - b.mean()) < 4 * np.sqrt(2) * se + 1e-12, k
        assert abs(a.std() - b.std()) < 0.05 * b.std(), k
    assert not np.allclose(ours["zx"], ours["zy"])  # drawn independently


def test_random_params_discrete_shift_as_keras(keras_idg):
    """An int range n picks whole pixels in -(n-1)..n-1, a list one of its values
    with a random sign (np.random.choice semantics)."""
    aug = Augment(width_shift_range=4, height_shift_range=[0.25, 0.5], seed=2)
    p = aug.random_params(3000, (8, 10))
    gen = keras_idg(width_shift_range=4, height_shift_range=[0.25, 0.5])
    np.random.seed(1)
    ref = [gen.get_random_transform((8, 10, 1)) for _ in range(3000)]
    assert set(np.unique(p["ty"])) == set(np.unique([d["ty"] for d in ref])) == \
        set(range(-3, 4))
    assert set(np.unique(p["tx"])) == set(np.unique([d["tx"] for d in ref])) == \
        {-4.0, -2.0, 2.0, 4.0}  # fractions of the height 8


def test_keras_param_dict_accepted(keras_idg, images):
    """A dict from Keras's get_random_transform (with its None extras) applies as Keras."""
    x = images[(24, 24, 3)]
    gen = keras_idg(**TUTORIAL)
    np.random.seed(3)
    p = gen.get_random_transform(x.shape)
    np.testing.assert_allclose(Augment().apply(x, p), gen.apply_transform(x.astype(np.float32), p),
                               atol=1e-3)


# -- the transform itself, without Keras ------------------------------------------------------
def test_identity_and_flips_are_exact(rng):
    x = rng.integers(0, 256, (3, 7, 5, 2), dtype=np.uint8)
    aug = Augment()
    np.testing.assert_array_equal(aug.apply(x, {}), x.astype(np.float32))
    np.testing.assert_array_equal(aug.apply(x, {"flip_horizontal": True}), x[:, :, ::-1])
    np.testing.assert_array_equal(aug.apply(x, {"flip_vertical": 1}), x[:, ::-1])
    np.testing.assert_array_equal(aug.apply(x[0], {"tx": 0.0, "zx": 1.0}), x[0])


def test_dtypes_and_layouts_agree(rng):
    x8 = rng.integers(0, 256, (4, 11, 13, 3), dtype=np.uint8)
    p = {"theta": 12.0, "tx": 1.5, "zy": 0.9}
    aug = Augment(fill_mode="reflect")
    ref = aug.apply(x8, p)
    for x in (x8.astype(np.float32), x8.astype(np.float64), x8.astype(np.int16),
              x8.astype(">f4"), np.asfortranarray(x8), x8[:, :, ::-1][:, :, ::-1]):
        np.testing.assert_allclose(aug.apply(x, p), ref, atol=1e-4)
    grey = aug.apply(x8[..., :1], p)
    np.testing.assert_array_equal(grey, ref[..., :1])
    before = x8.copy()
    aug.random_transform(x8)
    np.testing.assert_array_equal(x8, before)  # input untouched


def test_params_per_image_and_lists(rng):
    x = rng.integers(0, 256, (3, 10, 10, 3), dtype=np.uint8)
    aug = Augment(fill_mode="constant")
    thetas = np.array([0.0, 10.0, -20.0])
    batch = aug.apply(x, {"theta": thetas, "tx": 1.0})
    listed = aug.apply(x, [{"theta": t, "tx": 1.0} for t in thetas])
    np.testing.assert_array_equal(batch, listed)
    for i, t in enumerate(thetas):
        np.testing.assert_array_equal(batch[i], aug.apply(x[i], {"theta": t, "tx": 1.0}))


def test_nan_pixels_stay_local():
    x = np.ones((1, 6, 6, 1), dtype=np.float32)
    x[0, 0, 0] = np.nan
    out = Augment().apply(x, {"tx": -2.0})  # columns 0..2 read pixel (0, 0) ("nearest")
    np.testing.assert_array_equal(np.argwhere(np.isnan(out[0, ..., 0])), [[0, 0], [0, 1], [0, 2]])


# -- randomness: seeds, epochs, batching, threads ------------------------------------------
def test_same_seed_same_images_different_seed_different(rng):
    x = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    a = Augment(**TUTORIAL, seed=11).random_transform(x)
    b = Augment(**TUTORIAL, seed=11).random_transform(x)
    c = Augment(**TUTORIAL, seed=12).random_transform(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    e1 = Augment(**TUTORIAL, seed=11).random_transform(x, epoch=1)
    assert not np.array_equal(a, e1)
    cfg = Augment(**TUTORIAL, seed=11).get_config()
    np.testing.assert_array_equal(Augment(**cfg).random_transform(x), a)
    s = Augment(**TUTORIAL)  # seed=None: a random seed, kept
    assert isinstance(s.seed, int) and Augment(**s.get_config()).seed == s.seed


def test_config_digest_names_the_views():
    a = Augment(width_shift_range=np.int64(3), height_shift_range=[0.1, 0.2],
                rotation_range=np.float32(5), seed=np.uint64(7))
    b = Augment(**a.get_config())
    assert a.config_digest() == b.config_digest()
    assert a.config_digest() != Augment(**{**a.get_config(), "seed": 8}).config_digest()


def test_draws_do_not_depend_on_batching_or_threads(rng, restore_threads):
    x = rng.integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    aug = Augment(**TUTORIAL, seed=4)
    whole = aug.random_transform(x, epoch=3)
    parts = [aug.random_transform(x[i:i + 4], epoch=3, index=np.arange(i, min(9, i + 4)))
             for i in range(0, 9, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    one = aug.random_transform(x[5], epoch=3, index=[5])
    np.testing.assert_array_equal(one, whole[5])
    vggtl.set_num_threads(1)
    t1 = aug.random_transform(x, epoch=3)
    vggtl.set_num_threads(2)
    t2 = aug.random_transform(x, epoch=3)
    np.testing.assert_array_equal(t1, whole)
    np.testing.assert_array_equal(t2, whole)


def test_random_params_statistics():
    p = Augment(**TUTORIAL, seed=9).random_params(5000, (50, 60))
    assert np.abs(p["theta"]).max() <= 30 and abs(p["theta"].mean()) < 1.0
    assert np.abs(p["tx"]).max() <= 10 and np.abs(p["ty"]).max() <= 12
    assert abs(p["zx"].mean() - 1.0) < 0.005 and p["zy"].min() >= 0.85
    assert 0.47 < p["flip_horizontal"].mean() < 0.53 and not p["flip_vertical"].any()
    off = Augment(seed=9).random_params(10, (50, 60))
    for k, v in zip(PARAM_KEYS, (0, 0, 0, 0, 1, 1, False, False)):
        assert (off[k] == v).all(), k


# -- flow ---------------------------------------------------------------------------------------
def test_flow_batches_like_keras(rng):
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    y = np.arange(10) * 10
    it = Augment(seed=1).flow(x, y, batch_size=4)  # no transforms: images pass unchanged
    assert len(it) == 3
    seen = []
    for _ in range(3):
        xb, yb = next(it)
        assert xb.dtype == np.float32
        np.testing.assert_array_equal(xb, x[yb // 10])  # labels stay with their images
        seen.extend(yb.tolist())
    assert sorted(seen) == y.tolist() and seen != y.tolist()  # every image once, shuffled
    second = [next(it)[1] for _ in range(3)]
    assert sorted(np.concatenate(second).tolist()) == y.tolist()
    assert np.concatenate(second).tolist() != seen  # a fresh order each epoch
    plain = Augment().flow(x, batch_size=4, shuffle=False)
    np.testing.assert_array_equal(next(plain), x[:4])
    np.testing.assert_array_equal(plain[2], x[8:])


def test_flow_new_transforms_each_epoch_and_any_layout(rng):
    x = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    aug = Augment(**TUTORIAL, seed=8)
    it = aug.flow(x, batch_size=5, shuffle=False)
    e0, e1 = next(it), next(it)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, aug.random_transform(x, epoch=0))
    fortran = aug.flow(np.asfortranarray(x), batch_size=5, shuffle=False)
    np.testing.assert_array_equal(next(fortran), e0)
    shuffled = aug.flow(x, np.arange(5), batch_size=2)
    xb, yb = shuffled.batch(0, 1)
    np.testing.assert_array_equal(xb, e0[yb])  # an image's transform follows it, not its slot


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(rotation_range=-1), "rotation_range"),
    (dict(width_shift_range=-0.1), "width_shift_range"),
    (dict(height_shift_range=[0.1, -2]), "height_shift_range"),
    (dict(height_shift_range=-3), "height_shift_range"),
    (dict(shear_range=-5), "shear_range"),
    (dict(shear_range=float("nan")), "shear_range"),
    (dict(zoom_range=1.0), "zoom_range"),
    (dict(zoom_range=-0.1), "zoom_range"),
    (dict(zoom_range=[0.0, 1.2]), "zoom_range"),
    (dict(zoom_range=[0.5, float("inf")]), "zoom_range"),
    (dict(zoom_range=[1, 2, 3]), "zoom_range"),
    (dict(fill_mode="mirror"), "fill_mode"),
    (dict(cval=float("inf")), "cval"),
    (dict(horizontal_flip="yes"), "horizontal_flip"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Augment(**kwargs)


def test_bad_images_and_params(rng):
    aug = Augment(rotation_range=10)
    with pytest.raises(ValueError, match="at least 2 x 2"):
        aug.apply(np.zeros((1, 5, 3), np.uint8), {})
    with pytest.raises(ValueError, match="at least 2 x 2"):
        aug.flow(np.zeros((4, 5, 1, 3), np.uint8))
    with pytest.raises(ValueError, match="image_shape"):
        aug.random_params(3, (1, 9))
    with pytest.raises(ValueError, match="x: expected"):
        aug.flow(np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(TypeError, match="x"):
        aug.apply(np.zeros((4, 4, 3), complex), {})
    x = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown key 'rotation'"):
        aug.apply(x, {"rotation": 3})
    with pytest.raises(ValueError, match="brightness"):
        aug.apply(x, {"brightness": 1.2})
    with pytest.raises(ValueError, match="theta"):
        aug.apply(x, {"theta": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="theta"):
        aug.apply(x, {"theta": np.nan})
    with pytest.raises(ValueError, match="params"):
        aug.apply(x, [{}])
    with pytest.raises(ValueError, match="x and y"):
        aug.flow(x, [1, 2, 3])
    with pytest.raises(ValueError, match="batch_size"):
        aug.flow(x, batch_size=0)
    with pytest.raises(ValueError, match="index"):
        aug.random_transform(x, index=[-1, 0])


def test_glue_checks():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    p = np.zeros((2, 8))
    p[:, 4:6] = 1
    with pytest.raises(TypeError, match="x"):
        _core.augment_apply(x.astype(np.int32), p, 0, 0.0)
    with pytest.raises(ValueError, match="params"):
        _core.augment_apply(x, p[:1], 0, 0.0)
    with pytest.raises(ValueError, match="fill_mode"):
        _core.augment_apply(x, p, 4, 0.0)
    with pytest.raises(ValueError, match="index"):
        _core.augment_apply(x, p, 0, 0.0, np.array([0, 2], np.int64))
    bad = p.copy()
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        _core.augment_apply(x, bad, 0, 0.0)
    huge = p.copy()
    huge[:, 1] = 1e300  # coordinates far beyond any image: clamped, no overflow
    for mode in range(4):
        assert np.isfinite(_core.augment_apply(x, huge, mode, 0.0)).all()
    with pytest.raises(ValueError, match="zoom"):
        _core.augment_draw(np.arange(2), 0, 0, 0.0, (0.0, 0.0), (None, None), (1.0, 1.0),
                           0.0, (0.0, 1.0), False, False)


# -- TransferModel.fit(augment=...) ------------------------------------------------------------------
def _model(cache):
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), seed=3)
    m = vggtl.TransferModel(base, [vggtl.Flatten(), vggtl.Dense(8, activation="relu"),
                                   vggtl.Dense(2, activation="softmax")], seed=1, cache=cache)
    m.compile(optimizer=vggtl.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


@pytest.fixture(scope="module")
def small_data():
    r = np.random.default_rng(5)
    return r.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), r.integers(0, 2, 12)


def test_fit_exact_runs_the_base_on_new_augmented_images_every_epoch(small_data, tmp_path):
    x, y = small_data
    aug = Augment(**TUTORIAL, seed=2)
    m = _model(tmp_path)
    seen = []
    orig = m.base.predict

    def spy(xb, *a, **k):
        seen.append(np.array(xb))
        return orig(xb, *a, **k)
    m.base.predict = spy
    before = _kernels.vgg16_forward_images()
    h = m.fit(x, y, batch_size=4, epochs=3, verbose=0, augment=aug, augment_views="epoch")
    assert _kernels.vgg16_forward_images() - before == 3 * len(x)
    assert len(h.history["loss"]) == 3
    got = np.concatenate(seen)
    assert got.shape[0] == 3 * len(x)
    for e in range(3):
        np.testing.assert_array_equal(got[e * len(x):(e + 1) * len(x)],
                                      aug.random_transform(x, epoch=e))


def test_fit_views_extract_once_into_the_cache(small_data, tmp_path):
    x, y = small_data
    aug = Augment(**TUTORIAL, seed=2)
    before = _kernels.vgg16_forward_images()
    h1 = _model(tmp_path).fit(x, y, batch_size=4, epochs=4, verbose=0, augment=aug,
                              augment_views=2)
    assert _kernels.vgg16_forward_images() - before == 2 * len(x)
    before = _kernels.vgg16_forward_images()
    h2 = _model(tmp_path).fit(x, y, batch_size=4, epochs=4, verbose=0, augment=aug,
                              augment_views=2)
    assert _kernels.vgg16_forward_images() == before  # both views come from the cache
    assert h1.history["loss"] == h2.history["loss"]
    # the views are the base's features of augmented images: view 1 = epoch 1's transforms
    m = _model(False)
    view1 = m.base.predict(aug.random_transform(x, epoch=1))
    gather = m._augmented_features(x, aug, 2, 32, tmp_path, False, epochs=4)
    F = gather(5)
    choice = np.random.default_rng([aug.seed, 0x76696577, 5]).integers(0, 2, len(x))
    np.testing.assert_array_equal(F[choice == 1], view1[choice == 1])


@pytest.mark.parametrize("epochs", [2, 7])
def test_fit_augment_alone_extracts_auto_views_once(small_data, tmp_path, epochs):
    # by default min(epochs, AUTO_VIEWS) views, each a pass of augmented images;
    # the epochs past them draw from those views
    from vggtl.model import AUTO_VIEWS, auto_views
    x, y = small_data
    aug = Augment(**TUTORIAL, seed=3)
    before = _kernels.vgg16_forward_images()
    _model(False).fit(x, y, batch_size=4, epochs=epochs, verbose=0, augment=aug)
    k = auto_views(epochs)
    assert k == min(epochs, AUTO_VIEWS) and 1 < k < 7
    assert _kernels.vgg16_forward_images() - before == k * len(x)
    before = _kernels.vgg16_forward_images()
    h_auto = _model(tmp_path).fit(x, y, batch_size=4, epochs=epochs, verbose=0, augment=aug,
                                  augment_views="auto")
    h_k = _model(tmp_path).fit(x, y, batch_size=4, epochs=epochs, verbose=0, augment=aug,
                               augment_views=k)
    assert h_auto.history["loss"] == h_k.history["loss"]
    assert _kernels.vgg16_forward_images() - before == k * len(x)  # the second from the cache


def test_fit_augment_errors(small_data):
    x, y = small_data
    m = _model(False)
    with pytest.raises(ValueError, match="augment_views"):
        m.fit(x, y, epochs=1, verbose=0, augment_views=2)
    with pytest.raises(ValueError, match="augment_views"):
        m.fit(x, y, epochs=1, verbose=0, augment=Augment(), augment_views=0)
    with pytest.raises(ValueError, match="augment_views.*auto.*epoch"):
        m.fit(x, y, epochs=1, verbose=0, augment=Augment(), augment_views="fresh")
    with pytest.raises(TypeError, match="augment"):
        m.fit(x, y, epochs=1, verbose=0, augment={"rotation_range": 30})
