"""The seam between the C core and Python: the tables and enum values the
extension exports (vggtl._core's constants) against the oracle's independent
copies and against what the core computes with them."""
import numpy as np
import pytest

import vggtl
from vggtl import _core, _kernels, reference
from vggtl import layers, model, optim, vgg16, weights


def _oracle_table():
    """(name, kind, inputs, units, param) per layer, from reference.py's own data."""
    table, conv, dense, c = [], 0, 0, 3
    for name, kind in reference.LAYERS:
        if kind == "conv":
            units = reference.CONV_CHANNELS[conv]
            table.append((name, kind, c, units, conv))
            conv, c = conv + 1, units
        elif kind == "pool":
            table.append((name, kind, c, c, -1))
        elif kind == "flatten":
            table.append((name, kind, c, 0, -1))
            c = 7 * 7 * c  # block5_pool at 224 x 224
        else:
            units = reference.DENSE_UNITS[dense] if dense < len(reference.DENSE_UNITS) else 0
            table.append((name, kind, c, units, dense))
            dense, c = dense + 1, units
    return tuple(table)


def test_the_exported_layer_table_equals_the_oracles():
    assert _core.VGG16_LAYERS == _oracle_table()


def test_the_python_tables_are_the_core_table():
    t = _oracle_table()
    convs = [(n, cin, cout) for n, kind, cin, cout, _ in t if kind == "conv"]
    assert weights.CONV_SPEC == tuple(convs)
    assert weights.CONV_LAYERS == vgg16.CONV_LAYERS == reference.CONV_LAYERS
    assert weights.DENSE_LAYERS == vgg16.DENSE_LAYERS == ("fc1", "fc2", "predictions")
    assert vggtl.LAYER_NAMES == tuple(n for n, *_ in t)
    assert (vgg16.MIN_SIZE, vgg16.TOP_SIZE) == (32, 224)
    from vggtl import model_io
    assert model_io._MAX_HEAD == _core.HEAD_MAX_LAYERS == 32


def test_the_name_tables_match_the_python_choices():
    from vggtl import dispatch
    assert _core.ISA_NAMES == dispatch.ISAS
    assert set(dispatch.CONV_ALGOS) <= set(_core.CONV_ALGO_NAMES)
    assert _core.PRECISION_NAMES == vgg16.PRECISIONS


def test_python_passes_the_named_constants():
    assert (layers.Flatten.mode, layers.GlobalAveragePooling2D.mode,
            layers.GlobalMaxPooling2D.mode) == (_core.HEAD_FLATTEN, _core.HEAD_GAP, _core.HEAD_GMP)
    assert model.LOSSES == {"binary_crossentropy": _core.LOSS_BCE,
                            "categorical_crossentropy": _core.LOSS_CCE,
                            "sparse_categorical_crossentropy": _core.LOSS_SPARSE_CCE}
    assert (vggtl.SGD().kind, vggtl.Adam().kind, vggtl.RMSprop().kind) == \
        (_core.OPT_SGD, _core.OPT_ADAM, _core.OPT_RMSPROP)


@pytest.mark.parametrize("mode, reduce", [("HEAD_FLATTEN", None), ("HEAD_GAP", "avg"),
                                          ("HEAD_GMP", "max")])
def test_each_head_input_constant_means_its_reduction(mode, reduce):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 3, 4), dtype=np.float32)
    width = x[0].size if reduce is None else 4
    k = rng.standard_normal((width, 5), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    head = {"input_mode": getattr(_core, mode), "input_shape": (2, 3, 4),
            "layers": [{"type": "dense", "units": 5, "activation": "linear", "kernel": k,
                        "bias": b, "slots": None}]}
    ws = np.empty(_core.head_workspace_floats(head, 3), np.float32)
    got = _core.head_predict(x, head, 3, ws)
    feats = x.reshape(3, -1) if reduce is None else reference.global_pool(x, reduce)
    np.testing.assert_allclose(got, reference.dense(feats, k, b), rtol=1e-5, atol=1e-5)


def test_each_loss_constant_means_its_loss():
    p = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    onehot = np.array([[0, 1], [1, 0]], np.float32)
    labels = np.array([1, 0], np.int32)
    e = 1e-7
    cce = -np.mean(np.log(np.clip(p, e, 1 - e))[[0, 1], [1, 0]])
    bce = -np.mean(onehot * np.log(p + e) + (1 - onehot) * np.log(1 + e - p))
    assert _kernels.loss_forward_backward(p, onehot, _core.LOSS_CCE)[0] == pytest.approx(cce, 1e-5)
    assert _kernels.loss_forward_backward(p, labels, _core.LOSS_SPARSE_CCE)[0] == \
        pytest.approx(cce, 1e-5)
    assert _kernels.loss_forward_backward(p, onehot, _core.LOSS_BCE)[0] == pytest.approx(bce, 1e-5)


def test_each_optimizer_constant_means_its_rule():
    g = np.array([0.5], np.float32)
    sgd = {"kind": _core.OPT_SGD, "learning_rate": 0.1, "decay": 0.0, "momentum": 0.0,
           "nesterov": False}
    p = np.array([1.0], np.float32)
    _kernels.optimizer_step(p, g, np.zeros(1, np.float32), np.zeros(1, np.float32), sgd, 0)
    assert p[0] == pytest.approx(1.0 - 0.1 * 0.5)
    # Adam's first step moves by about the learning rate whatever the gradient
    adam = {"kind": _core.OPT_ADAM, "learning_rate": 0.1, "decay": 0.0, "beta_1": 0.9,
            "beta_2": 0.999, "epsilon": 1e-7}
    p = np.array([1.0], np.float32)
    _kernels.optimizer_step(p, g, np.zeros(1, np.float32), np.zeros(1, np.float32), adam, 0)
    assert p[0] == pytest.approx(0.9, abs=1e-5)
    # RMSprop's first step: lr * g / sqrt((1 - rho) g^2 + eps)
    rms = {"kind": _core.OPT_RMSPROP, "learning_rate": 0.1, "decay": 0.0, "rho": 0.9,
           "momentum": 0.0, "epsilon": 1e-7}
    p = np.array([1.0], np.float32)
    _kernels.optimizer_step(p, g, np.zeros(1, np.float32), np.zeros(1, np.float32), rms, 0)
    assert p[0] == pytest.approx(1.0 - 0.1 * 0.5 / np.sqrt(0.1 * 0.25 + 1e-7), abs=1e-5)


def test_each_fill_constant_means_its_mode():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    p = np.zeros((1, _core.AUG_NPARAMS))
    p[0, 4:6] = 1.0  # zx, zy: no zoom
    p[0, 1] = 2.0    # tx: output column j samples input column j + 2
    row = {m: _core.augment_apply(x, p, getattr(_core, "FILL_" + m.upper()), -1.0)[0, 0, :, 0]
           for m in ("nearest", "constant", "reflect", "wrap")}
    # input columns 4 and 5 lie past the edge (abcd = 0 1 2 3): scipy.ndimage's modes
    np.testing.assert_array_equal(row["nearest"], [2, 3, 3, 3])     # aaaa|abcd|dddd
    np.testing.assert_array_equal(row["constant"], [2, 3, -1, -1])  # cval
    np.testing.assert_array_equal(row["reflect"], [2, 3, 3, 2])     # dcba|abcd|dcba
    np.testing.assert_array_equal(row["wrap"], [2, 3, 1, 2])        # period len - 1


def test_the_test_kernels_share_the_cores_settings():
    """vggtl._kernels runs vggtl._core's core: the conv setting made through
    _core decides what _kernels.conv3x3_forward runs, and _kernels counts the
    images _core's network ran."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 12, 12, 32), dtype=np.float32)
    k = rng.standard_normal((3, 3, 32, 16), dtype=np.float32)
    b = np.zeros(16, np.float32)
    prev = vggtl.get_conv_algo()
    try:
        vggtl.set_conv_algo("im2col")
        a = _kernels.conv3x3_forward(x, k, b)
        vggtl.set_conv_algo("winograd")
        w = _kernels.conv3x3_forward(x, k, b)
    finally:
        vggtl.set_conv_algo(prev)
    assert not np.array_equal(a, w)  # two algorithms, two roundings
    np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-4)
    before = _kernels.vgg16_forward_images()
    vggtl.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)).predict(
        np.zeros((3, 32, 32, 3), np.uint8))
    assert _kernels.vgg16_forward_images() - before == 3


def test_the_core_module_holds_no_test_only_kernel():
    for name in ("conv3x3_forward", "dense_forward", "loss_forward_backward", "optimizer_step",
                 "conv3x3_backward", "vgg16_forward_images", "vgg16_layers"):
        assert not hasattr(_core, name), name
