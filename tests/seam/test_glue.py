"""Bad input raises the documented exception, with a message naming the argument,
both in the public API and in the private _core glue (which never casts or copies)."""
import numpy as np
import pytest

import vggtl
from vggtl import _core, reference
from vggtl import _kernels  # the single kernels, for tests


def _images(rng, n, h, w, c=3, dtype=np.uint8):
    return rng.integers(0, 256, (n, h, w, c)).astype(dtype)


# --- predict: X -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [object, np.complex64, np.complex128, "U3", "S3", bool, "M8[s]"],
                         ids=lambda d: np.dtype(d).str)
def test_predict_rejects_non_real_dtypes(rng, base_model, dtype):
    X = _images(rng, 1, 32, 32).astype(dtype)
    with pytest.raises(TypeError, match=r"^X: .*dtype"):
        base_model.predict(X)


def test_predict_rejects_non_arrays(base_model):
    for bad in (None, 3, "images", {"a": 1}):
        with pytest.raises(TypeError, match="^X: "):
            base_model.predict(bad)
    with pytest.raises(ValueError, match="^X: "):
        base_model.predict([])
    with pytest.raises(ValueError, match="^X: "):
        base_model.predict([np.zeros((32, 32, 3)), np.zeros((40, 32, 3))])


@pytest.mark.parametrize("shape", [(32, 32), (32,), (), (1, 1, 32, 32, 3)])
def test_predict_rejects_wrong_ndim(base_model, shape):
    with pytest.raises(ValueError, match=r"^X: .*dimensions"):
        base_model.predict(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("channels", [2, 4, 0])
def test_predict_rejects_wrong_channels(base_model, channels):
    with pytest.raises(ValueError, match=r"^X: .*channels"):
        base_model.predict(np.zeros((1, 32, 32, channels), np.uint8))


@pytest.mark.parametrize("hw", [(31, 32), (32, 31), (1, 1), (3, 224)])
def test_predict_rejects_small_images(base_model, hw):
    with pytest.raises(ValueError, match=r"^X: .*at least 32 x 32"):
        base_model.predict(np.zeros((1, *hw, 3), np.uint8))


def test_single_image_without_batch_axis_gets_a_hint(base_model):
    with pytest.raises(ValueError, match=r"x\[None\]"):
        base_model.predict(np.zeros((224, 224, 3), np.uint8))


def test_predict_rejects_wrong_size_with_input_shape(conv_weights):
    model = vggtl.VGG16(weights=conv_weights, input_shape=(40, 40, 3))
    with pytest.raises(ValueError, match=r"^X: .*40 x 40.*41 x 40"):
        model.predict(np.zeros((1, 41, 40, 3), np.uint8))


def test_top_needs_224(top_model):
    for hw in ((223, 224), (64, 64), (448, 448)):
        with pytest.raises(ValueError, match=r"^X: .*224 x 224"):
            top_model.predict(np.zeros((1, *hw, 3), np.uint8))
    with pytest.raises(ValueError, match="^input_shape: .*224"):
        vggtl.VGG16(weights=None, include_top=True, input_shape=(100, 100, 3))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_predict_rejects_non_finite_pixels(rng, base_model, value, dtype):
    X = _images(rng, 5, 32, 32, dtype=dtype)
    X[3, 10, 20, 1] = value
    with pytest.raises(ValueError, match=r"^X: image 3 contains NaN, infinite"):
        base_model.predict(X, batch_size=2)


def test_predict_rejects_values_that_overflow_float32(base_model):
    X = np.zeros((1, 32, 32, 3), np.float64)
    X[0, 0, 0, 0] = 1e300  # finite in float64, infinite in the core's float32
    with pytest.raises(ValueError, match="^X: "):
        base_model.predict(X)


@pytest.mark.parametrize("dtype,value", [(np.float32, 3e38), (np.float32, -1e6),
                                         (np.uint64, np.iinfo(np.uint64).max),
                                         (np.int64, 70000), (np.float64, 1e20)])
def test_predict_refuses_pixels_far_beyond_16_bit(base_model, dtype, value):
    # finite but extreme pixels gave NaN features (3e38 in float32) or features
    # of 1e16 (uint64's maximum), silently (was)
    X = np.zeros((3, 32, 32, 3), dtype)
    X[1, 5, 5, 2] = value
    with pytest.raises(ValueError, match=r"^X: image 1 has a pixel of .*expected pixels within "
                                         r"\+-65535 .*scale the images first"):
        base_model.predict(X, batch_size=1)
    with pytest.raises(ValueError, match=r"^x: image 1 has a pixel of "):
        vggtl.preprocess_input(X)


def test_predict_takes_16_bit_images(base_model):
    for X in (np.full((1, 32, 32, 3), 65535, np.uint16),
              np.full((1, 32, 32, 3), -65535.0, np.float32),
              np.full((1, 32, 32, 3), 65535, np.int64)):
        F = base_model.predict(X)
        assert np.isfinite(F).all() and F.max() > 0


# --- predict: other arguments ------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8", None])
def test_predict_rejects_bad_batch_size(base_model, batch_size):
    with pytest.raises(ValueError, match="^batch_size: "):
        base_model.predict(np.zeros((1, 32, 32, 3), np.uint8), batch_size=batch_size)


def test_unknown_layer(base_model):
    with pytest.raises(ValueError, match=r"^layer: unknown layer 'block6_conv1'"):
        base_model.predict(np.zeros((1, 32, 32, 3), np.uint8), layer="block6_conv1")
    with pytest.raises(TypeError, match="^layer: "):
        base_model.predict(np.zeros((1, 32, 32, 3), np.uint8), layer=3)


@pytest.mark.parametrize("layer", ["flatten", "fc1", "fc2", "predictions"])
def test_top_layer_without_top(base_model, layer):
    with pytest.raises(ValueError, match=rf"^layer: '{layer}' is part of the top"):
        base_model.predict(np.zeros((1, 32, 32, 3), np.uint8), layer=layer)
    with pytest.raises(ValueError, match=rf"^layer: '{layer}'"):
        base_model.output_shape(layer, (224, 224, 3))


# --- constructor and weights -------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "AVG", "", 1])
def test_bad_pooling(pooling):
    with pytest.raises(ValueError, match="^pooling: "):
        vggtl.VGG16(weights=None, pooling=pooling)


@pytest.mark.parametrize("mode", ["tf", "Caffe", "", 1])
def test_bad_preprocess(mode):
    with pytest.raises(ValueError, match="^preprocess: "):
        vggtl.VGG16(weights=None, preprocess=mode)
    with pytest.raises(ValueError, match="^preprocess: "):
        vggtl.preprocess_input(np.zeros((1, 4, 4, 3), np.uint8), mode)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="^classes: "):
        vggtl.VGG16(weights=None, include_top=True, classes=0)
    with pytest.raises(ValueError, match="^input_shape: .*channels"):
        vggtl.VGG16(weights=None, input_shape=(64, 64, 2))
    with pytest.raises(ValueError, match="^input_shape: .*at least 32"):
        vggtl.VGG16(weights=None, input_shape=(31, 64, 3))
    with pytest.raises(ValueError, match="^input_shape: "):
        vggtl.VGG16(weights=None, input_shape=(64, 64))


def test_weights_missing_a_layer(conv_weights):
    w = dict(conv_weights)
    del w["block4_conv2"]
    with pytest.raises(ValueError, match=r"^weights: layer 'block4_conv2' is missing.*"
                                         r"\(3, 3, 512, 512\)"):
        vggtl.VGG16(weights=w)


def test_weights_with_a_wrong_shape(conv_weights):
    w = dict(conv_weights)
    k, b = w["block2_conv1"]
    w["block2_conv1"] = (k[:, :, :, :100], b)
    with pytest.raises(ValueError, match=r"^weights\['block2_conv1'\] kernel: expected shape "
                                         r"\(3, 3, 64, 128\), got \(3, 3, 64, 100\)"):
        vggtl.VGG16(weights=w)
    w["block2_conv1"] = (k, b[:-1])
    with pytest.raises(ValueError, match=r"^weights\['block2_conv1'\] bias: expected shape "
                                         r"\(128,\), got \(127,\)"):
        vggtl.VGG16(weights=w)
    w["block2_conv1"] = (k.transpose(3, 2, 0, 1), b)  # torch OIHW is not HWIO
    with pytest.raises(ValueError, match=r"block2_conv1.*\(3, 3, 64, 128\).*\(128, 64, 3, 3\)"):
        vggtl.VGG16(weights=w)


def test_weights_bad_values(conv_weights):
    w = dict(conv_weights)
    k, b = w["block1_conv1"]
    bad = k.copy()
    bad[0, 0, 0, 0] = np.nan
    w["block1_conv1"] = (bad, b)
    with pytest.raises(ValueError, match=r"^weights\['block1_conv1'\] kernel: .*NaN"):
        vggtl.VGG16(weights=w)
    w["block1_conv1"] = (k.astype(np.complex64), b)
    with pytest.raises(TypeError, match=r"^weights\['block1_conv1'\] kernel: "):
        vggtl.VGG16(weights=w)
    w["block1_conv1"] = (k,)
    with pytest.raises(ValueError, match=r"^weights\['block1_conv1'\]: .*pair"):
        vggtl.VGG16(weights=w)
    with pytest.raises(TypeError, match="^weights: "):
        vggtl.VGG16(weights=None).set_weights([("block1_conv1", (k, b))])


# --- _core: the glue checks every array, casts nothing -------------------------------

def _conv_args(rng):
    x = rng.standard_normal((1, 5, 5, 3), dtype=np.float32)
    k = rng.standard_normal((3, 3, 3, 4), dtype=np.float32)
    b = rng.standard_normal(4, dtype=np.float32)
    return x, k, b


def test_core_conv_dtype(rng):
    x, k, b = _conv_args(rng)
    with pytest.raises(TypeError, match=r"^x: expected dtype float32.*f8"):
        _kernels.conv3x3_forward(x.astype(np.float64), k, b)
    with pytest.raises(TypeError, match=r"^kernel: expected dtype float32"):
        _kernels.conv3x3_forward(x, k.astype(np.float64), b)
    with pytest.raises(TypeError, match=r"^bias: expected dtype float32"):
        _kernels.conv3x3_forward(x, k, b.astype(np.float16))
    with pytest.raises(TypeError, match=r"^x: .*native byte order"):
        _kernels.conv3x3_forward(x.astype(">f4"), k, b)
    with pytest.raises(TypeError, match=r"^x: expected a numpy.ndarray, got list"):
        _kernels.conv3x3_forward(x.tolist(), k, b)


def test_core_conv_layout_and_shapes(rng, close):
    x, k, b = _conv_args(rng)
    with pytest.raises(ValueError, match=r"^x: expected a C-contiguous"):
        _kernels.conv3x3_forward(x[:, ::-1], k, b)
    with pytest.raises(ValueError, match=r"^kernel: expected a C-contiguous"):
        _kernels.conv3x3_forward(x, np.asfortranarray(k), b)
    with pytest.raises(ValueError, match=r"^x: expected 4 dimensions, got 3"):
        _kernels.conv3x3_forward(x[0], k, b)
    with pytest.raises(ValueError, match=r"^bias: expected size 4 on axis 0, got 5"):
        _kernels.conv3x3_forward(x, k, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"^kernel: expected size 3 on axis 2, got 2"):
        _kernels.conv3x3_forward(x, np.ascontiguousarray(k[:, :, :2]), b)
    with pytest.raises(ValueError, match=r"^kernel: expected size 3 on axis 0, got 5"):
        _kernels.conv3x3_forward(x, np.zeros((5, 5, 3, 4), np.float32), b)
    # the checks come before any computation: a good call still works
    close(_kernels.conv3x3_forward(x, k, b), reference.conv3x3(x, k, b))


def test_core_conv_out(rng):
    x, k, b = _conv_args(rng)
    out = np.zeros((1, 5, 5, 4), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match=r"^out: expected a writeable array"):
        _kernels.conv3x3_forward(x, k, b, out=out)
    np.testing.assert_array_equal(out, 0.0)  # untouched
    with pytest.raises(ValueError, match=r"^out: expected size 4 on axis 3, got 3"):
        _kernels.conv3x3_forward(x, k, b, out=np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(TypeError, match=r"^out: expected dtype float32"):
        _kernels.conv3x3_forward(x, k, b, out=np.zeros((1, 5, 5, 4), np.float64))
    with pytest.raises(ValueError, match=r"^out: expected a C-contiguous"):
        _kernels.conv3x3_forward(x, k, b, out=np.zeros((1, 5, 5, 8), np.float32)[..., ::2])


def test_core_other_kernels(rng):
    x = rng.standard_normal((1, 4, 4, 2), dtype=np.float32)
    with pytest.raises(TypeError, match=r"^x: expected dtype float32"):
        _kernels.maxpool2x2_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"^x: expected H >= 2"):
        _kernels.maxpool2x2_forward(np.zeros((1, 1, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"^mode: expected 'avg' or 'max', got 'mean'"):
        _kernels.global_pool_forward(x, "mean")
    with pytest.raises(ValueError, match=r"^x: expected a C-contiguous"):
        _kernels.global_pool_forward(x[:, ::2], "avg")
    m = rng.standard_normal((3, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^activation: .*got 'tanh'"):
        _kernels.activation_forward(m, "tanh")
    with pytest.raises(ValueError, match=r"^x: expected 2 dimensions"):
        _kernels.activation_forward(x, "relu")
    with pytest.raises(TypeError, match=r"^x: expected dtype float32"):
        _kernels.activation_forward(m.astype(np.float64), "relu")
    k = rng.standard_normal((5, 7), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^kernel: expected size 5 on axis 0, got 6"):
        _kernels.dense_forward(m, np.zeros((6, 7), np.float32), np.zeros(7, np.float32))
    with pytest.raises(ValueError, match=r"^bias: expected size 7 on axis 0, got 6"):
        _kernels.dense_forward(m, k, np.zeros(6, np.float32))
    with pytest.raises(TypeError, match=r"^kernel: expected dtype float32"):
        _kernels.dense_forward(m, k.astype(np.float64), np.zeros(7, np.float32))
    with pytest.raises(ValueError, match=r"^activation: "):
        _kernels.dense_forward(m, k, np.zeros(7, np.float32), "gelu")


def test_core_input_convert(rng):
    x = rng.integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match=r"^x: expected dtype uint8.*float32.*float64.*got i4"):
        _core.input_convert(x.astype(np.int32), [1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"^x: expected 1 or 3 channels, got 4"):
        _core.input_convert(np.zeros((1, 4, 4, 4), np.uint8), [1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"^x: expected a C-contiguous"):
        _core.input_convert(x[:, ::-1], [1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"^scale: expected a sequence of 3 floats"):
        _core.input_convert(x, [1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"^shift: expected a sequence of 3 floats"):
        _core.input_convert(x, [1, 1, 1], 0.0)


def test_core_vgg16_forward_workspace(rng, conv_weights):
    x = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    params = [a for name in reference.CONV_LAYERS for a in conv_weights[name]]
    stop = vggtl.LAYER_NAMES.index("block5_pool")
    need = _core.vgg16_workspace_floats(stop, _core.POOL_NONE, 1, 32, 32)
    with pytest.raises(ValueError, match=r"^workspace: expected at least"):
        _core.vgg16_forward(x, params, stop, _core.POOL_NONE, [1] * 3, [0] * 3, False,
                            np.empty(need // 2, np.float32))
    ws = np.empty(need, np.float32)
    ws.setflags(write=False)
    with pytest.raises(ValueError, match=r"^workspace: expected a writeable array"):
        _core.vgg16_forward(x, params, stop, _core.POOL_NONE, [1] * 3, [0] * 3, False, ws)
    bad = list(params)
    bad[4] = bad[4].astype(np.float64)
    with pytest.raises(TypeError, match=r"^params\[4\] \(block2_conv1 kernel\)"):
        _core.vgg16_forward(x, bad, stop, _core.POOL_NONE, [1] * 3, [0] * 3, False,
                            np.empty(need, np.float32))
    got = _core.vgg16_forward(x, params, stop, _core.POOL_NONE, [1] * 3, [0] * 3, False,
                              np.empty(need, np.float32))
    assert got.shape == (1, 1, 1, 512) and (got > 0).any()


@pytest.mark.parametrize("input_shape", [None, (32, 32, 3), (48, 64, 3), (224, 224, 3),
                                         (40, 40, 1)])
@pytest.mark.parametrize("single", [(48, 64, 3), (32, 32, 1), (224, 224, 3), (40, 40)])
def test_single_image_gets_the_hint_whatever_the_input_shape(conv_weights, input_shape, single):
    base = vggtl.VGG16(weights=conv_weights, input_shape=input_shape)
    x = np.zeros(single, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"x\[None\]"):
        base.predict(x)
