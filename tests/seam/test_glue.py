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


# --- the specs that cross the seam: head, tail, optimizer ----------------------------
# dicts with fixed keys; every error names the key (path['key']), what was expected and
# what came; a missing, unknown (misspelt) or mistyped key is refused, never ignored

def _head_spec(slots=False):
    """A valid head on (2, 3, 4) maps: dense 5 relu, dropout, dense 2 softmax; with
    Adam's two slots per parameter when `slots`."""
    def dense(width, units, act):
        k, b = np.zeros((width, units), np.float32), np.zeros(units, np.float32)
        s = {"kernel": (np.zeros_like(k), np.zeros_like(k)),
             "bias": (np.zeros_like(b), np.zeros_like(b))} if slots else None
        return {"type": "dense", "units": units, "activation": act, "kernel": k, "bias": b,
                "slots": s}
    return {"input_mode": _core.HEAD_FLATTEN, "input_shape": (2, 3, 4),
            "layers": [dense(24, 5, "relu"), {"type": "dropout", "rate": 0.5},
                       dense(5, 2, "softmax")]}


def _fit_head(head, opt):
    """One epoch of head_fit_epoch on 4 samples of zeros."""
    x = np.zeros((4, 2, 3, 4), np.float32)
    y = np.tile(np.float32([1, 0]), (4, 1))
    ws = np.empty(_core.head_workspace_floats(_head_spec(), 4), np.float32)
    return _core.head_fit_epoch(x, head, opt, 0, _core.LOSS_CCE, y, None, 4, False, 0, 0,
                                np.empty(4, np.int64), ws)


def _readonly(a):
    a.flags.writeable = False
    return a


def _noncontiguous(a):
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    return wide[..., ::2]


def _set(path, value):
    """An edit of a spec: sets spec[path...] = value (value _DEL deletes the key)."""
    def edit(spec):
        d = spec
        for k in path[:-1]:
            d = d[k]
        if value is _DEL:
            del d[path[-1]]
        else:
            d[path[-1]] = value(d) if callable(value) else value
        return spec
    return edit


_DEL = object()
_K0 = ("layers", 0, "kernel")

HEAD_CASES = {
    "not a dict (the old tuple)": (lambda s: (0, 2, 3, 4, s["layers"]), TypeError,
                                   r"^head: expected a dict with the keys 'input_mode', "
                                   r"'input_shape', 'layers', got tuple"),
    "missing key": (_set(("layers",), _DEL), ValueError, r"^head: missing key 'layers'"),
    "unknown key": (_set(("input_shpe",), (2, 3, 4)), ValueError,
                    r"^head: unknown key 'input_shpe'"),
    "misspelt layer key": (lambda s: (s["layers"][0].update(unit=s["layers"][0].pop("units")),
                                      s)[1], ValueError,
                           r"^head\['layers'\]\[0\]: unknown key 'unit'"),
    "key not a str": (_set((1,), 2), TypeError, r"^head: expected str keys"),
    "bad input mode": (_set(("input_mode",), 3), ValueError,
                       r"^head\['input_mode'\]: expected HEAD_FLATTEN \(0\), HEAD_GAP \(1\) or "
                       r"HEAD_GMP \(2\), got 3"),
    "input mode a str": (_set(("input_mode",), "flatten"), TypeError,
                         r"^head\['input_mode'\]: expected an int, got str"),
    "shape of 2": (_set(("input_shape",), (6, 4)), ValueError,
                   r"^head\['input_shape'\]: expected 3 items, got 2"),
    "shape a float": (_set(("input_shape",), (2.0, 3, 4)), TypeError,
                      r"^head\['input_shape'\]\[0\]: expected an int, got float"),
    "shape 0": (_set(("input_shape",), (2, 0, 4)), ValueError,
                r"^head\['input_shape'\]\[1\]: expected an int in \[1, "),
    "shape beyond memory": (_set(("input_shape",), (2 ** 40, 2 ** 40, 4)), ValueError,
                            r"^head\['input_shape'\]: expected h \* w \* c to fit"),
    "shape beyond 64 bits": (_set(("input_shape",), (2, 3, 2 ** 70)), ValueError,
                             r"^head\['input_shape'\]\[2\]: .* got one beyond 64 bits"),
    "layers a dict": (_set(("layers",), {}), TypeError,
                      r"^head\['layers'\]: expected a list or tuple, got dict"),
    "no layers": (_set(("layers",), []), ValueError,
                  r"^head\['layers'\]: expected 1 to 32 items, got 0"),
    "too many layers": (lambda s: {**s, "layers": [{"type": "dropout", "rate": 0.1}] *
                                   _core.HEAD_MAX_LAYERS + s["layers"][-1:]}, ValueError,
                        r"^head\['layers'\]: expected 1 to 32 items, got 33"),
    "layer not a dict": (_set(("layers", 1), ("dropout", 0.5)), TypeError,
                         r"^head\['layers'\]\[1\]: expected a dict with the keys 'type', "
                         r"got tuple"),
    "unknown layer type": (_set(("layers", 1, "type"), "conv"), ValueError,
                           r"^head\['layers'\]\[1\]\['type'\]: expected one of 'dense', "
                           r"'dropout', got 'conv'"),
    "dropout with a dense key": (_set(("layers", 1, "units"), 5), ValueError,
                                 r"^head\['layers'\]\[1\]: unknown key 'units'"),
    "NaN rate": (_set(("layers", 1, "rate"), float("nan")), ValueError,
                 r"^head\['layers'\]\[1\]\['rate'\]: expected a finite number in \[0, 1\), "
                 r"got nan"),
    "rate 1": (_set(("layers", 1, "rate"), 1), ValueError,
               r"^head\['layers'\]\[1\]\['rate'\]: expected a finite number in \[0, 1\), got 1"),
    "rate a bool": (_set(("layers", 1, "rate"), False), TypeError,
                    r"^head\['layers'\]\[1\]\['rate'\]: expected a number, got bool"),
    "units a bool": (_set(("layers", 2, "units"), True), TypeError,
                     r"^head\['layers'\]\[2\]\['units'\]: expected an int, got bool"),
    "units a str": (_set(("layers", 2, "units"), "2"), TypeError,
                    r"^head\['layers'\]\[2\]\['units'\]: expected an int, got str"),
    "units 0": (_set(("layers", 2, "units"), 0), ValueError,
                r"^head\['layers'\]\[2\]\['units'\]: expected an int in \[1, "),
    "unknown activation": (_set(("layers", 0, "activation"), "tanh"), ValueError,
                           r"^head\['layers'\]\[0\]\['activation'\]: expected one of 'linear', "
                           r"'relu', 'softmax', 'sigmoid', got 'tanh'"),
    "activation with a NUL": (_set(("layers", 0, "activation"), "relu\0x"), ValueError,
                              r"^head\['layers'\]\[0\]\['activation'\]: expected one of"),
    "kernel float64": (_set(_K0, lambda d: d["kernel"].astype(np.float64)), TypeError,
                       r"^head\['layers'\]\[0\]\['kernel'\]: expected dtype float32"),
    "kernel a list": (_set(_K0, lambda d: d["kernel"].tolist()), TypeError,
                      r"^head\['layers'\]\[0\]\['kernel'\]: expected a numpy.ndarray, got list"),
    "kernel transposed": (_set(_K0, lambda d: np.zeros((5, 24), np.float32)), ValueError,
                          r"^head\['layers'\]\[0\]\['kernel'\]: expected shape \(24, 5\), "
                          r"got \(5, 24\)"),
    "kernel 1-D": (_set(_K0, lambda d: d["kernel"].ravel()), ValueError,
                   r"^head\['layers'\]\[0\]\['kernel'\]: expected 2 dimensions, got 1"),
    "kernel strided": (_set(_K0, lambda d: _noncontiguous(d["kernel"])), ValueError,
                       r"^head\['layers'\]\[0\]\['kernel'\]: expected a C-contiguous"),
    "kernel Fortran order": (_set(_K0, lambda d: np.asfortranarray(d["kernel"])), ValueError,
                             r"^head\['layers'\]\[0\]\['kernel'\]: expected a C-contiguous"),
    "kernel byte-swapped": (_set(_K0, lambda d: d["kernel"].astype(">f4")), TypeError,
                            r"^head\['layers'\]\[0\]\['kernel'\]: expected dtype float32 "
                            r"\(native byte order\)"),
    "bias of the next layer's size": (_set(("layers", 2, "bias"), np.zeros(5, np.float32)),
                                      ValueError, r"^head\['layers'\]\[2\]\['bias'\]: expected "
                                      r"shape \(2,\), got \(5,\)"),
    "last layer a dropout": (lambda s: {**s, "layers": s["layers"][:2]}, ValueError,
                             r"^head\['layers'\]\[1\]: expected a dense layer last"),
    "slots a tuple": (_set(("layers", 0, "slots"), (None,) * 4), TypeError,
                      r"^head\['layers'\]\[0\]\['slots'\]: expected a dict with the keys "
                      r"'kernel', 'bias', got tuple"),
}


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_head_spec_errors_name_the_key(case):
    edit, exc, message = HEAD_CASES[case]
    assert _core.head_workspace_floats(_head_spec(), 4) > 0  # the spec before the edit is valid
    with pytest.raises(exc, match=message):
        _core.head_workspace_floats(edit(_head_spec()), 4)
    # every entry point that reads a head says the same
    with pytest.raises(exc, match=message):
        _fit_head(edit(_head_spec(slots=True)), vggtl.Adam().core_spec())


class _Loud(int):
    def __index__(self):  # never called: the parser reads the int's own value
        raise AssertionError("the parser ran the spec's Python code")


def test_head_spec_takes_numpy_and_int_subclass_values():
    spec = _head_spec()
    spec["input_shape"] = [np.int64(2), np.uint8(3), _Loud(4)]
    spec["layers"][0]["units"] = np.int32(5)
    spec["layers"][1]["rate"] = np.float32(0.5)
    spec["input_mode"] = np.intp(_core.HEAD_FLATTEN)
    assert _core.head_workspace_floats(spec, 4) == _core.head_workspace_floats(_head_spec(), 4)
    # a NumPy scalar class defined in Python is refused (its methods could run code)
    spec["layers"][1]["rate"] = type("MyFloat", (np.float32,), {})(0.5)
    with pytest.raises(TypeError, match=r"^head\['layers'\]\[1\]\['rate'\]: expected a number, "
                                        r"got MyFloat"):
        _core.head_workspace_floats(spec, 4)


SLOT_CASES = {
    "no state for Adam": (_set(("layers", 0, "slots"), None), ValueError,
                          r"^head\['layers'\]\[0\]\['slots'\]: expected the optimizer's state, "
                          r"a dict with the keys 'kernel', 'bias' \(2 slots each\), got None"),
    "Adam's v missing": (_set(("layers", 2, "slots", "bias"), lambda d: (d["bias"][0], None)),
                         ValueError, r"^head\['layers'\]\[2\]\['slots'\]\['bias'\]\[1\]: "
                         r"expected an array \(the optimizer keeps 2 slots per parameter\), "
                         r"got None"),
    "misspelt slot key": (_set(("layers", 0, "slots"), lambda d: {"kernal": d["slots"]["kernel"],
                                                                  "bias": d["slots"]["bias"]}),
                          ValueError, r"^head\['layers'\]\[0\]\['slots'\]: unknown key 'kernal'"),
    "a slot transposed": (_set(("layers", 0, "slots", "kernel"),
                               (np.zeros((5, 24), np.float32), np.zeros((24, 5), np.float32))),
                          ValueError, r"^head\['layers'\]\[0\]\['slots'\]\['kernel'\]\[0\]: "
                          r"expected shape \(24, 5\), got \(5, 24\)"),
    "a slot float64": (_set(("layers", 0, "slots", "bias"),
                            (np.zeros(5), np.zeros(5, np.float32))), TypeError,
                       r"^head\['layers'\]\[0\]\['slots'\]\['bias'\]\[0\]: expected dtype "
                       r"float32"),
    "a slot read-only": (_set(("layers", 0, "slots", "bias"),
                              lambda d: (d["bias"][0], _readonly(d["bias"][1]))),
                         ValueError, r"^head\['layers'\]\[0\]\['slots'\]\['bias'\]\[1\]: "
                         r"expected a writeable array"),
    "three slots": (_set(("layers", 0, "slots", "bias"), lambda d: d["bias"] * 2),
                    ValueError,
                    r"^head\['layers'\]\[0\]\['slots'\]\['bias'\]: expected 2 items, got 4"),
}


@pytest.mark.parametrize("case", list(SLOT_CASES))
def test_head_spec_slots_errors_name_the_slot(case):
    edit, exc, message = SLOT_CASES[case]
    _fit_head(_head_spec(slots=True), vggtl.Adam().core_spec())  # valid before the edit
    with pytest.raises(exc, match=message):
        _fit_head(edit(_head_spec(slots=True)), vggtl.Adam().core_spec())


def test_head_spec_slots_only_as_many_as_the_optimizer_keeps():
    # SGD without momentum keeps none: no state is fine; RMSprop keeps one (v)
    _fit_head(_head_spec(), vggtl.SGD().core_spec())
    spec = _head_spec(slots=True)
    for layer in (spec["layers"][0], spec["layers"][2]):
        layer["slots"] = {k: (v[0], None) for k, v in layer["slots"].items()}
    _fit_head(spec, vggtl.RMSprop().core_spec())
    with pytest.raises(ValueError, match=r"^head\['layers'\]\[0\]\['slots'\]\['kernel'\]\[1\]: "
                                         r"expected an array"):
        _fit_head(spec, vggtl.RMSprop(momentum=0.9).core_spec())


def _opt(name="adam", **edit):
    """A maker of the optimizer spec of `name` with keys set (or deleted: _DEL)."""
    def make():
        spec = {"adam": vggtl.Adam, "sgd": vggtl.SGD, "rmsprop": vggtl.RMSprop}[name]().core_spec()
        for k, v in edit.items():
            if v is _DEL:
                del spec[k]
            else:
                spec[k] = v
        return spec
    return make


def _sched(**edit):
    return {"per_step": np.full(3, 0.1), "first_iteration": 0, **edit}


OPT_CASES = {
    "not a dict (the old tuple)": ((_core.OPT_ADAM, 1e-3, 0.0, 0.9, 0.999, 1e-7, 0.0, False, 0.0),
                                   TypeError, r"^optimizer: expected a dict with the keys 'kind', "
                                   r"got tuple"),
    "no kind": (_opt(kind=_DEL), ValueError, r"^optimizer: missing key 'kind'"),
    "kind a str": (_opt(kind="adam"), TypeError, r"^optimizer\['kind'\]: expected an int, got str"),
    "unknown kind": (_opt(kind=7), ValueError, r"^optimizer\['kind'\]: expected OPT_SGD \(0\), "
                                               r"OPT_ADAM \(1\) or OPT_RMSPROP \(2\), got 7"),
    "kind beyond 64 bits": (_opt(kind=-2 ** 80), ValueError,
                            r"^optimizer\['kind'\]: .* got one beyond 64 bits"),
    "misspelt key": (_opt(learnig_rate=1e-3, learning_rate=_DEL), ValueError,
                     r"^optimizer: unknown key 'learnig_rate'"),
    "missing key": (_opt(epsilon=_DEL), ValueError,
                    r"^optimizer: missing key 'epsilon' \(expected the keys 'kind', "
                    r"'learning_rate', 'decay', 'beta_1', 'beta_2', 'epsilon'\)"),
    "another rule's key": (_opt(momentum=0.9), ValueError, r"^optimizer: unknown key 'momentum'"),
    "NaN learning rate": (_opt(learning_rate=float("nan")), ValueError,
                          r"^optimizer\['learning_rate'\]: expected a finite number > 0, got nan"),
    "infinite learning rate": (_opt(learning_rate=float("inf")), ValueError,
                               r"^optimizer\['learning_rate'\]: .* got inf"),
    "learning rate 0": (_opt(learning_rate=0), ValueError,
                        r"^optimizer\['learning_rate'\]: expected a finite number > 0, got 0"),
    "learning rate beyond a double": (_opt(learning_rate=10 ** 400), ValueError,
                                      r"^optimizer\['learning_rate'\]: .* got an int beyond a "
                                      r"double"),
    "learning rate a str": (_opt(learning_rate="1e-3"), TypeError,
                            r"^optimizer\['learning_rate'\]: expected a number, got str"),
    "NaN decay": (_opt(decay=float("nan")), ValueError,
                  r"^optimizer\['decay'\]: expected a finite number >= 0, got nan"),
    "NaN beta_1": (_opt(beta_1=float("nan")), ValueError,
                   r"^optimizer\['beta_1'\]: expected a finite number in \[0, 1\), got nan"),
    "beta_2 1": (_opt(beta_2=1.0), ValueError, r"^optimizer\['beta_2'\]: .* got 1.0"),
    "epsilon 0": (_opt(epsilon=0.0), ValueError, r"^optimizer\['epsilon'\]: .* > 0, got 0.0"),
    "negative momentum": (_opt("sgd", momentum=-0.5), ValueError,
                          r"^optimizer\['momentum'\]: expected a finite number >= 0, got -0.5"),
    "nesterov an int": (_opt("sgd", nesterov=1), TypeError,
                        r"^optimizer\['nesterov'\]: expected True or False, got int"),
    "nesterov a str": (_opt("sgd", nesterov="no"), TypeError,
                       r"^optimizer\['nesterov'\]: expected True or False, got str"),
    "rho NaN": (_opt("rmsprop", rho=float("nan")), ValueError,
                r"^optimizer\['rho'\]: expected a finite number in \[0, 1\), got nan"),
    "schedule misspelt": (_opt(learning_rate={"per_steps": np.full(3, 0.1), "first_iteration": 0}),
                          ValueError, r"^optimizer\['learning_rate'\]: unknown key 'per_steps'"),
    "schedule without its start": (_opt(learning_rate={"per_step": np.full(3, 0.1)}), ValueError,
                                   r"^optimizer\['learning_rate'\]: missing key 'first_iteration'"),
    "schedule float32": (_opt(learning_rate=_sched(per_step=np.full(3, 0.1, np.float32))),
                         TypeError, r"^optimizer\['learning_rate'\]\['per_step'\]: expected dtype "
                         r"float64"),
    "schedule 2-D": (_opt(learning_rate=_sched(per_step=np.full((3, 1), 0.1))), ValueError,
                     r"^optimizer\['learning_rate'\]\['per_step'\]: expected 1 dimensions, got 2"),
    "schedule strided": (_opt(learning_rate=_sched(per_step=np.full(6, 0.1)[::2])), ValueError,
                         r"^optimizer\['learning_rate'\]\['per_step'\]: expected a C-contiguous"),
    "schedule empty": (_opt(learning_rate=_sched(per_step=np.zeros(0))), ValueError,
                       r"^optimizer\['learning_rate'\]\['per_step'\]: expected at least one"),
    "schedule from -1": (_opt(learning_rate=_sched(first_iteration=-1)), ValueError,
                         r"^optimizer\['learning_rate'\]\['first_iteration'\]: expected an int "
                         r"in \[0, "),
}


@pytest.mark.parametrize("case", list(OPT_CASES))
def test_optimizer_spec_errors_name_the_key(case):
    spec, exc, message = OPT_CASES[case]
    spec = spec() if callable(spec) else spec
    p, g = np.zeros(3, np.float32), np.ones(3, np.float32)
    s0, s1 = np.zeros(3, np.float32), np.zeros(3, np.float32)
    _kernels.optimizer_step(p, g, s0, s1, _opt()(), 0)  # the unedited spec is valid
    _kernels.optimizer_step(p, g, s0, s1, _opt(learning_rate=_sched())(), 0)
    with pytest.raises(exc, match=message):
        _kernels.optimizer_step(p, g, s0, s1, spec, 0)
    with pytest.raises(exc, match=message):
        _fit_head(_head_spec(slots=True), spec)


def test_optimizer_spec_has_only_its_rules_keys():
    assert set(vggtl.SGD().core_spec()) == {"kind", "learning_rate", "decay", "momentum",
                                            "nesterov"}
    assert set(vggtl.Adam().core_spec()) == {"kind", "learning_rate", "decay", "beta_1",
                                             "beta_2", "epsilon"}
    assert set(vggtl.RMSprop().core_spec()) == {"kind", "learning_rate", "decay", "rho",
                                                "momentum", "epsilon"}
    opt = vggtl.SGD(learning_rate=vggtl.optim.ExponentialDecay(0.1, 10, 0.5))
    opt.iterations = 7
    lr = opt.core_spec(steps=3)["learning_rate"]
    assert set(lr) == {"per_step", "first_iteration"} and lr["first_iteration"] == 7
    np.testing.assert_allclose(lr["per_step"], [0.1 * 0.5 ** (k / 10) for k in (7, 8, 9)])


def _tail_spec(start="block5_conv1", slots=0):
    """A valid tail from `start` (zero weights), with `slots` slots per parameter."""
    convs = {}
    for name in vggtl.vgg16.CONV_LAYERS[vggtl.vgg16.CONV_LAYERS.index(start):]:
        cin, cout = {n: (ci, co) for n, ci, co in vggtl.weights.CONV_SPEC}[name]
        k, b = np.zeros((3, 3, cin, cout), np.float32), np.zeros(cout, np.float32)
        convs[name] = {"kernel": k, "bias": b,
                       "slots": {"kernel": tuple(np.zeros_like(k) if i < slots else None
                                                 for i in range(2)),
                                 "bias": tuple(np.zeros_like(b) if i < slots else None
                                               for i in range(2))}}
    return {"start_layer": vggtl.LAYER_NAMES.index(start), "convs": convs}


def _head_on_block5_pool():
    k, b = np.zeros((512, 2), np.float32), np.zeros(2, np.float32)
    return {"input_mode": _core.HEAD_FLATTEN, "input_shape": (1, 1, 512),
            "layers": [{"type": "dense", "units": 2, "activation": "softmax", "kernel": k,
                        "bias": b, "slots": None}]}


_C1 = ("convs", "block5_conv1")
TAIL_CASES = {
    "not a dict (the old tuple)": (lambda s: (s["start_layer"], (None,) * 13), TypeError,
                                   r"^tail: expected a dict with the keys 'start_layer', "
                                   r"'convs', got tuple"),
    "misspelt key": (lambda s: {"start": s["start_layer"], "convs": s["convs"]}, ValueError,
                     r"^tail: unknown key 'start'"),
    "start at a pool": (_set(("start_layer",), vggtl.LAYER_NAMES.index("block4_pool")),
                        ValueError, r"^tail\['start_layer'\]: expected the index of a conv layer "
                        r"after the first \(1\.\.16 in VGG16_LAYERS\), got 13"),
    "start at the first conv": (_set(("start_layer",), 0), ValueError,
                                r"^tail\['start_layer'\]: expected the index of a conv layer"),
    "start a float": (_set(("start_layer",), 15.0), TypeError,
                      r"^tail\['start_layer'\]: expected an int, got float"),
    "convs a list": (lambda s: {**s, "convs": list(s["convs"].values())}, TypeError,
                     r"^tail\['convs'\]: expected a dict with the keys 'block5_conv1', "
                     r"'block5_conv2', 'block5_conv3', got list"),
    "a conv missing": (_set(("convs", "block5_conv3"), _DEL), ValueError,
                       r"^tail\['convs'\]: missing key 'block5_conv3'"),
    "a frozen conv given": (_set(("convs", "block4_conv3"), lambda d: d["block5_conv1"]),
                            ValueError, r"^tail\['convs'\]: unknown key 'block4_conv3'"),
    "conv misspelt key": (_set(_C1 + ("weights",), 0), ValueError,
                          r"^tail\['convs'\]\['block5_conv1'\]: unknown key 'weights'"),
    "kernel HWOI": (_set(_C1 + ("kernel",), np.zeros((3, 3, 512, 256), np.float32)), ValueError,
                    r"^tail\['convs'\]\['block5_conv1'\]\['kernel'\]: expected shape "
                    r"\(3, 3, 512, 512\), got \(3, 3, 512, 256\)"),
    "kernel float16": (_set(_C1 + ("kernel",), np.zeros((3, 3, 512, 512), np.float16)),
                       TypeError, r"^tail\['convs'\]\['block5_conv1'\]\['kernel'\]: expected "
                       r"dtype float32"),
    "bias strided": (_set(_C1 + ("bias",), _noncontiguous(np.zeros(512, np.float32))),
                     ValueError, r"^tail\['convs'\]\['block5_conv1'\]\['bias'\]: expected a "
                     r"C-contiguous"),
    "slot wrong shape": (_set(_C1 + ("slots",), {"kernel": (np.zeros((3, 3, 512, 256),
                                                                      np.float32), None),
                                                 "bias": (None, None)}), ValueError,
                         r"^tail\['convs'\]\['block5_conv1'\]\['slots'\]\['kernel'\]\[0\]: "
                         r"expected shape \(3, 3, 512, 512\)"),
}


@pytest.mark.parametrize("case", list(TAIL_CASES))
def test_tail_spec_errors_name_the_key(case):
    edit, exc, message = TAIL_CASES[case]
    head = _head_on_block5_pool()
    assert _core.finetune_workspace_floats(_tail_spec(), head, 1, 2, 2) > 0  # valid unedited
    with pytest.raises(exc, match=message):
        _core.finetune_workspace_floats(edit(_tail_spec()), head, 1, 2, 2)


def test_tail_spec_slots_for_the_optimizer():
    head = _head_on_block5_pool()
    x = np.zeros((1, 2, 2, 512), np.float32)
    y = np.float32([[1, 0]])

    def fit(tail, opt):
        hs = {**head, "layers": [{**head["layers"][0], "slots": {
            "kernel": (np.zeros((512, 2), np.float32), None),
            "bias": (np.zeros(2, np.float32), None)}}]}
        ws = np.empty(_core.finetune_workspace_floats(tail, hs, 1, 2, 2), np.float32)
        return _core.finetune_fit_epoch(x, tail, hs, opt, 0, _core.LOSS_CCE, y, None, 1, False,
                                        0, 0, np.empty(1, np.int64), ws)

    momentum = vggtl.SGD(momentum=0.9).core_spec()
    assert fit(_tail_spec(slots=1), momentum)[2] == 1
    with pytest.raises(ValueError, match=r"^tail\['convs'\]\['block5_conv1'\]\['slots'\]"
                                         r"\['kernel'\]\[0\]: expected an array \(the "
                                         r"optimizer keeps 1 slot"):
        fit(_tail_spec(slots=0), momentum)
    tail = _tail_spec(slots=1)
    tail["convs"]["block5_conv2"]["slots"] = None
    with pytest.raises(ValueError, match=r"^tail\['convs'\]\['block5_conv2'\]\['slots'\]: "
                                         r"expected the optimizer's state"):
        fit(tail, momentum)
