"""vggtl.VGG16 against reference.vgg16_forward: sizes, layer cuts, pooling, the top,
preprocessing, input dtypes and layouts, batching, and weights."""
import numpy as np
import pytest

import vggtl
from vggtl import _core, reference

BASE_LAYERS = vggtl.LAYER_NAMES[: vggtl.LAYER_NAMES.index("block5_pool") + 1]


def _images(rng, n, h, w, c=3, dtype=np.uint8):
    return rng.integers(0, 256, (n, h, w, c)).astype(dtype)


# --- the conv base against the reference ---------------------------------------------

@pytest.mark.parametrize("hw", [(32, 32), (33, 33), (47, 47), (50, 50), (64, 48), (35, 64)],
                         ids=lambda s: "%dx%d" % s)
def test_conv_base_matches_reference(rng, close, base_model, conv_weights, hw):
    X = _images(rng, 2, *hw)
    got = base_model.predict(X)
    ref = reference.vgg16_forward(X, conv_weights)
    assert got.shape == (2, hw[0] // 32, hw[1] // 32, 512)
    assert (ref > 0).mean() > 0.3  # the features are not all zeros
    close(got, ref)


@pytest.mark.parametrize("layer", BASE_LAYERS)
def test_every_layer_cut_matches_reference(rng, close, base_model, conv_weights, layer):
    X = _images(rng, 2, 37, 45)
    got = base_model.predict(X, layer=layer)
    ref = reference.vgg16_forward(X, conv_weights, layer=layer)
    assert got.shape[1:] == base_model.output_shape(layer, (37, 45, 3))
    assert (ref > 0).any()
    close(got, ref)


def test_layer_cuts_chain(rng, base_model):
    # a pool layer's output is the max-pool of the conv before it
    X = _images(rng, 1, 40, 36)
    conv = base_model.predict(X, layer="block2_conv2")
    pool = base_model.predict(X, layer="block2_pool")
    np.testing.assert_array_equal(pool, reference.maxpool2x2(conv))


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_global_pooling_of_the_output(rng, close, conv_weights, pooling):
    model = vggtl.VGG16(weights=conv_weights, pooling=pooling)
    X = _images(rng, 3, 70, 66)  # block5_pool is 2 x 2: pooling is not a reshape
    got = model.predict(X)
    assert got.shape == (3, 512) and model.output_shape(None, (70, 66, 3)) == (512,)
    close(got, reference.vgg16_forward(X, conv_weights, pooling=pooling))
    # it pools block5_pool's features
    feats = model.predict(X, layer="block5_pool")
    close(got, reference.global_pool(feats, pooling), rtol=1e-6)


def test_pooling_applies_to_the_model_output_only(rng, close, conv_weights):
    model = vggtl.VGG16(weights=conv_weights, pooling="avg")
    X = _images(rng, 2, 32, 40)
    got = model.predict(X, layer="block4_pool")
    assert got.shape == (2, 2, 2, 512)
    close(got, reference.vgg16_forward(X, conv_weights, layer="block4_pool"))


@pytest.mark.parametrize("mode", ["caffe", "torch", "scale"])
def test_preprocess_inside_the_model(rng, close, conv_weights, mode):
    model = vggtl.VGG16(weights=conv_weights, preprocess=mode)
    X = _images(rng, 2, 32, 36)
    got = model.predict(X, layer="block3_conv3")
    close(got, reference.vgg16_forward(X, conv_weights, layer="block3_conv3", preprocess=mode))
    # the same as preprocessing outside and running the model without it
    plain = vggtl.VGG16(weights=conv_weights)
    close(got, plain.predict(vggtl.preprocess_input(X, mode), layer="block3_conv3"), rtol=1e-6)


def test_grey_images(rng, close, base_model, conv_weights):
    G = _images(rng, 2, 41, 33, c=1)
    ref = reference.vgg16_forward(G, conv_weights, layer="block4_conv1")
    close(base_model.predict(G, layer="block4_conv1"), ref)
    np.testing.assert_array_equal(base_model.predict(G[..., 0], layer="block4_conv1"),
                                  base_model.predict(G, layer="block4_conv1"))
    np.testing.assert_array_equal(base_model.predict(np.repeat(G, 3, axis=3), layer="block4_conv1"),
                                  base_model.predict(G, layer="block4_conv1"))


def test_input_shape_fixes_the_size(rng, close, conv_weights):
    model = vggtl.VGG16(weights=conv_weights, input_shape=(48, 40, 1))
    X = _images(rng, 2, 48, 40, c=1)
    assert model.output_shape() == (1, 1, 512)
    close(model.predict(X), reference.vgg16_forward(X, conv_weights))


# --- the top --------------------------------------------------------------------------

def test_top_layers_match_reference(rng, close, top_model):
    # the conv base at 224 is checked against torch (test_torch_parity); here each
    # dense layer is checked against the reference on vggtl's own block5_pool
    w = top_model.get_weights()
    X = _images(rng, 2, 224, 224)
    pool5 = top_model.predict(X, layer="block5_pool")
    flat = top_model.predict(X, layer="flatten")
    assert flat.shape == (2, 25088)
    np.testing.assert_array_equal(flat, pool5.reshape(2, -1))  # NHWC order, as Keras
    fc1 = top_model.predict(X, layer="fc1")
    close(fc1, reference.dense(flat, *w["fc1"], "relu"))
    fc2 = top_model.predict(X, layer="fc2")
    close(fc2, reference.dense(fc1, *w["fc2"], "relu"))
    probs = top_model.predict(X)
    assert probs.shape == (2, w["predictions"][1].shape[0])
    close(probs, reference.dense(fc2, *w["predictions"], "softmax"))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs.max() > 0.5  # a peaked softmax: the comparison is not of near-uniform rows
    assert top_model.output_shape("fc1") == (4096,)
    assert top_model.output_shape() == (probs.shape[1],)


# --- batches, dtypes, layouts ---------------------------------------------------------

def test_empty_batch(rng, close, base_model, conv_weights, top_model):
    X = _images(rng, 2, 40, 40)
    for model, x, shape, kw in [
            (base_model, X[:0], (0, 1, 1, 512), {}),
            (base_model, X[:0], (0, 20, 20, 64), {"layer": "block1_pool"}),
            (vggtl.VGG16(weights=conv_weights, pooling="max"), X[:0], (0, 512), {}),
            (base_model, X[:0, :, :, 0], (0, 1, 1, 512), {}),
            (top_model, np.zeros((0, 224, 224, 3), np.uint8), (0, top_model.classes), {}),
            (top_model, np.zeros((0, 224, 224, 3), np.uint8), (0, 4096), {"layer": "fc2"})]:
        got = model.predict(x, **kw)
        assert got.shape == shape and got.dtype == np.float32
    # the model still computes after an empty call
    close(base_model.predict(X), reference.vgg16_forward(X, conv_weights))


def test_dtypes_give_the_same_features(rng, base_model):
    X = _images(rng, 3, 36, 34)
    expect = base_model.predict(X)
    assert (expect > 0).any()
    for dtype in (np.float32, np.float64, np.int16, np.int64, np.uint16, np.float16, ">f4", "<f8"):
        np.testing.assert_array_equal(base_model.predict(X.astype(dtype)), expect,
                                      err_msg=str(dtype))


def test_non_contiguous_and_read_only_inputs(rng, base_model):
    X = _images(rng, 6, 34, 38)
    views = {
        "flipped": X[:, ::-1],
        "every other image": X[::2],
        "transposed": X.transpose(0, 2, 1, 3),
        "fortran": np.asfortranarray(X),
        "channel slice": np.concatenate([X, X], axis=3)[..., 1:4],
        "float strided": X.astype(np.float32)[:, :, ::-1],
    }
    for what, v in views.items():
        assert not v.flags.c_contiguous, what
        np.testing.assert_array_equal(base_model.predict(v, batch_size=4),
                                      base_model.predict(np.ascontiguousarray(v), batch_size=4),
                                      err_msg=what)
    ro = X.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(base_model.predict(ro), base_model.predict(X))
    np.testing.assert_array_equal(base_model.predict(list(X)), base_model.predict(X))


def _unaligned(a):
    """A copy of a at an odd address: what np.frombuffer at an odd offset gives."""
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def test_unaligned_inputs(rng, conv_weights):
    """Contiguous but unaligned arrays (np.frombuffer at an odd offset, a memmap
    with one) were refused with "x: expected a C-contiguous, aligned array"."""
    base = vggtl.VGG16(weights=conv_weights, input_shape=(36, 34, 3))
    X = _images(rng, 3, 36, 34).astype(np.float32)
    np.testing.assert_array_equal(base.predict(_unaligned(X)), base.predict(X))
    F = base.predict(X)
    m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(2, "softmax")],
                            seed=0)
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    y = np.eye(2, dtype=np.float32)[[0, 1, 1]]
    w0 = m.get_weights()
    a = m.fit_features(_unaligned(F), _unaligned(y), epochs=2, verbose=0, shuffle=False)
    w1 = m.get_weights()
    m.set_weights(w0)
    b = m.fit_features(F, y, epochs=2, verbose=0, shuffle=False)
    assert a.history["loss"] == b.history["loss"]
    w2 = m.get_weights()
    assert w1.keys() == w2.keys() and any((w1[k][0] != w0[k][0]).any() for k in w1)
    for k in w1:
        np.testing.assert_array_equal(w1[k][0], w2[k][0])
        np.testing.assert_array_equal(w1[k][1], w2[k][1])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 7])
def test_batch_size_not_dividing_n(rng, close, base_model, batch_size):
    X = _images(rng, 5, 33, 35)
    # each image is its own, whatever batch it came in, bit for bit (csrc/gemm.c)
    whole = base_model.predict(X, batch_size=32)
    got = base_model.predict(X, batch_size=batch_size)
    np.testing.assert_array_equal(got, whole)
    for i in range(5):
        np.testing.assert_array_equal(got[i:i + 1], base_model.predict(X[i:i + 1]))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_core_runs_passes_that_fit_the_workspace(rng, close, conv_weights, dtype, channels):
    # the core splits N into passes of as many images as its workspace holds (here
    # 1 or 2 of 5), stepping through x by the dtype's size and the channel count
    X = _images(rng, 5, 32, 36, c=channels, dtype=dtype)
    params = [a for name in reference.CONV_LAYERS for a in conv_weights[name]]
    stop = vggtl.LAYER_NAMES.index("block3_pool")
    ref = reference.vgg16_forward(X, conv_weights, layer="block3_pool")
    for images in (1, 2):
        ws = np.empty(_core.vgg16_workspace_floats(stop, _core.POOL_NONE, images, 32, 36),
                      np.float32)
        got = _core.vgg16_forward(X, params, stop, _core.POOL_NONE, [1.0] * 3, [0.0] * 3,
                                  False, ws)
        close(got, ref)


def test_batch_images_are_independent(rng, close, base_model, conv_weights):
    X = _images(rng, 4, 32, 32)
    X[2] = 0  # a black image next to others
    got = base_model.predict(X, layer="block3_pool")
    for i in range(4):
        close(got[i:i + 1], reference.vgg16_forward(X[i:i + 1], conv_weights, layer="block3_pool"))


def test_float_inputs_outside_uint8_range(rng, close, base_model, conv_weights):
    X = (rng.standard_normal((2, 32, 33, 3)) * 1000).astype(np.float32)
    close(base_model.predict(X), reference.vgg16_forward(X, conv_weights))


# --- weights --------------------------------------------------------------------------

def test_weights_round_trip(rng, conv_weights, base_model):
    model = vggtl.VGG16(weights=conv_weights)
    got = model.get_weights()
    assert set(got) == set(conv_weights) == set(reference.CONV_LAYERS)
    for name, (k, b) in conv_weights.items():
        np.testing.assert_array_equal(got[name][0], k)
        np.testing.assert_array_equal(got[name][1], b)
        assert got[name][0].dtype == np.float32 and got[name][1].dtype == np.float32
    X = _images(rng, 2, 32, 32)
    np.testing.assert_array_equal(model.predict(X), base_model.predict(X))
    other = vggtl.VGG16(weights=None, seed=123)
    assert not np.array_equal(other.predict(X), model.predict(X))
    other.set_weights(got)
    np.testing.assert_array_equal(other.predict(X), model.predict(X))


def test_get_weights_returns_copies(rng, conv_weights):
    model = vggtl.VGG16(weights=conv_weights)
    X = _images(rng, 1, 32, 32)
    before = model.predict(X)
    w = model.get_weights()
    for k, b in w.values():
        k[...] = 0
        b[...] = 1
    np.testing.assert_array_equal(model.predict(X), before)
    np.testing.assert_array_equal(model.get_weights()["block1_conv1"][0],
                                  conv_weights["block1_conv1"][0])


def test_set_weights_copies_its_input(rng, conv_weights):
    w = {k: (a.copy(), b.copy()) for k, (a, b) in conv_weights.items()}
    model = vggtl.VGG16(weights=w)
    X = _images(rng, 1, 32, 32)
    before = model.predict(X)
    w["block1_conv1"][0][...] = 0
    np.testing.assert_array_equal(model.predict(X), before)


def test_set_weights_accepts_float64_and_converts(rng, close, conv_weights, base_model):
    w64 = {k: (a.astype(np.float64), b.astype(np.float64)) for k, (a, b) in conv_weights.items()}
    model = vggtl.VGG16(weights=w64)
    assert model.get_weights()["block3_conv1"][0].dtype == np.float32
    X = _images(rng, 1, 32, 32)
    np.testing.assert_array_equal(model.predict(X), base_model.predict(X))


def test_failed_set_weights_changes_nothing(rng, conv_weights):
    model = vggtl.VGG16(weights=conv_weights)
    X = _images(rng, 1, 32, 32)
    before = model.predict(X)
    bad = vggtl.VGG16(weights=None, seed=5).get_weights()
    k, b = bad["block5_conv3"]
    bad["block5_conv3"] = (k[:, :, :, :10], b)
    with pytest.raises(ValueError, match="block5_conv3"):
        model.set_weights(bad)
    np.testing.assert_array_equal(model.predict(X), before)
    np.testing.assert_array_equal(model.get_weights()["block1_conv1"][0],
                                  conv_weights["block1_conv1"][0])


def test_default_initialisation():
    a, b, c = (vggtl.VGG16(weights=None, seed=s) for s in (3, 3, 4))
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    assert list(wa) == list(reference.CONV_LAYERS)
    for name, (k, bias) in wa.items():
        np.testing.assert_array_equal(k, wb[name][0])  # seeded: reproducible
        assert not np.array_equal(k, wc[name][0])
        np.testing.assert_array_equal(bias, 0.0)  # Keras: zero biases
        cin, cout = k.shape[2], k.shape[3]
        limit = np.sqrt(6.0 / (9 * cin + 9 * cout))  # Glorot uniform
        assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
        assert abs(float(k.mean())) < 0.1 * limit
    assert a.count_params() == 14714688  # Keras's VGG16(include_top=False)


def test_layer_names():
    base = vggtl.VGG16(weights=None, seed=0)
    assert base.layer_names == BASE_LAYERS
    assert BASE_LAYERS[:3] == ("block1_conv1", "block1_conv2", "block1_pool")
    assert vggtl.LAYER_NAMES[-4:] == ("flatten", "fc1", "fc2", "predictions")
    assert len(vggtl.LAYER_NAMES) == 22
    assert tuple(n for n, _ in reference.LAYERS) == vggtl.LAYER_NAMES


def test_output_shape(base_model, top_model):
    assert base_model.output_shape(None, (224, 224, 3)) == (7, 7, 512)
    assert base_model.output_shape("block4_pool", (224, 224, 3)) == (14, 14, 512)
    assert base_model.output_shape("block1_conv1", (33, 47, 3)) == (33, 47, 64)
    assert base_model.output_shape("block3_pool", (33, 47, 3)) == (4, 5, 256)
    assert base_model.output_shape(None, (33, 47, 3)) == (1, 1, 512)
    assert top_model.output_shape("flatten") == (25088,)
    assert top_model.output_shape("block5_pool") == (7, 7, 512)
