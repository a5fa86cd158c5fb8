"""TransferModel.predict(tta=K): the mean probabilities over K augmented views,
against the views computed by hand, and from the feature cache when fit put
them there."""
import numpy as np
import pytest

import vggtl
from vggtl import _kernels  # the single kernels, for tests


@pytest.fixture
def setup(rng, tmp_path):
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess="caffe", seed=3)
    model = vggtl.TransferModel(base, head=[vggtl.GlobalAveragePooling2D(),
                                            vggtl.Dense(3, activation="softmax")],
                                cache=tmp_path / "fc", seed=3)
    k, b = model.get_weights()["dense"]
    model.set_weights({"dense": (k * 50, b)})  # probabilities that vary with the view
    aug = vggtl.Augment(rotation_range=30, width_shift_range=0.2, horizontal_flip=True, seed=7)
    X = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    return model, aug, X


def test_tta_is_the_mean_over_views(setup):
    model, aug, X = setup
    got = model.predict(X, tta=3, augment=aug)
    views = [model.predict(aug.random_transform(X, epoch=k, index=np.arange(len(X))))
             for k in range(3)]
    want = np.mean(views, axis=0)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(views[0] - views[1]).max() > 1e-3  # the views differ: the mean means something
    assert np.abs(got - model.predict(X)).max() > 1e-3


def test_tta_reads_the_views_fit_cached(setup):
    model, aug, X = setup
    model.compile(optimizer=vggtl.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(X, [0, 1, 2, 0, 1], epochs=1, augment=aug, augment_views=3, verbose=0)
    assert model.augment is aug
    before = _kernels.vgg16_forward_images()
    got = model.predict(X, tta=3)  # the model's Augment, the views fit extracted
    assert _kernels.vgg16_forward_images() == before
    views = [model.predict(aug.random_transform(X, epoch=k)) for k in range(3)]
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=1e-6)
    # a fourth view is new: computed once (5 images), then cached too
    before = _kernels.vgg16_forward_images()
    model.predict(X, tta=4)
    assert _kernels.vgg16_forward_images() == before + 5


def test_tta_errors(setup):
    model, aug, X = setup
    with pytest.raises(ValueError, match="tta: test-time augmentation needs an Augment"):
        model.predict(X, tta=2)
    with pytest.raises(ValueError, match="tta: expected an int >= 1"):
        model.predict(X, tta=0, augment=aug)
    with pytest.raises(TypeError, match="augment: expected a vggtl.Augment"):
        model.predict(X, tta=2, augment="flip")
    with pytest.raises(ValueError, match="augment: only used with tta"):
        model.predict(X, augment=aug)
