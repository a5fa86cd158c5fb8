"""precision="bf16": Winograd F(2x2, 3x3) with bfloat16 operands and float32 sums.

Each instruction set this CPU runs computes the same sums: VDPBF16PS on
avx512_bf16, plain C in VDPBF16PS's order elsewhere. Checked against the NumPy
reference of the same arithmetic (reference.conv3x3_winograd_bf16), bit for
bit across instruction sets, threads and batches, against float32 for the
issue's accuracy bound, and through the API (cache key, saved model, errors).
amx_bf16 runs the same operands on Intel's tile unit, which rounds inside its
dot products in its own way: it is held to the same reference within float32
summation error, to batch and thread independence, and to the bound."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vggtl
from vggtl import _core, dispatch, reference
from vggtl import _kernels  # the single kernels, for tests

from support import REPO
from support.isas import ISAS, VDPBF16PS_BITS, bf16_algo, bf16_conv_key


# against the reference of the same bf16 arithmetic: only the order of the
# float32 sums differs (measured 7e-8 to 3e-7 on these shapes)
TOL_SAME_ARITHMETIC = 2e-6
# the bound for bf16 features against float32 ones (whole base)
BOUND = 2e-2

# Cin odd (a zero padding channel) and even; Cout that leave 1, 2, 3 and 4
# vectors of 16 in the last 64-channel block (20 -> 32, 48, 70 -> 80, 64);
# maps with partial 2 x 2 tiles, 2 x 2 and 5 x 5 maps; tile counts that are not
# a multiple of the 6-row register block, and more than one 96-tile block
SHAPES = [(1, 5, 7, 16, 16), (2, 9, 6, 33, 20), (3, 2, 2, 17, 48), (1, 5, 5, 64, 70),
          (2, 14, 14, 64, 64), (1, 4, 4, 512, 512), (1, 27, 20, 24, 130),
          # and for the AMX kernel (channels multiples of 32): tile counts that are
          # not a multiple of its 32 rows, several blocks, three 32-channel blocks
          (3, 31, 23, 32, 96), (2, 9, 9, 256, 64)]


def _data(rng, n, h, w, cin, cout):
    x = np.maximum(rng.standard_normal((n, h, w, cin), dtype=np.float32), 0)  # post-ReLU
    k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) / np.float32(np.sqrt(9 * cin))
    b = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.1)
    return x, k, b


def _rel(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_bf16_round_is_round_to_nearest_even():
    # the reference's rounding, on values whose answer is known
    one_ulp = 2.0 ** -7  # bf16 keeps 8 significant bits: 1 + 2^-7 is the next value
    x = np.array([1.0, 1 + one_ulp / 2, 1 + 1.5 * one_ulp, 1 + one_ulp / 2 + 2 ** -20, -3.0,
                  np.inf, -np.inf, np.nan, 1e-39, -1e-39, 3.4e38], np.float32)
    got = reference.bf16_round(x)
    np.testing.assert_array_equal(got[:5], [1.0, 1.0, 1 + 2 * one_ulp, 1 + one_ulp, -3.0])
    assert got[5] == np.inf and got[6] == -np.inf and np.isnan(got[7])
    assert got[8] == 0 and got[9] == 0 and np.signbit(got[9])  # subnormals: signed zero
    assert got[10] == np.inf  # past bf16's largest finite value (3.39e38): rounds to inf


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_isa_matches_the_reference_arithmetic(rng, kernels, isa, shape):
    vggtl.set_isa(isa)
    assert _core.conv3x3_algo(*shape[1:], precision="bf16") == bf16_algo(*shape[3:])
    x, k, b = _data(rng, *shape)
    for relu in (True, False):
        got = _kernels.conv3x3_forward(x, k, b, relu=relu, precision="bf16")
        ref = reference.conv3x3_winograd_bf16(x, k, b, relu=relu)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert _rel(got, ref) < TOL_SAME_ARITHMETIC
        # and it is bf16 arithmetic, not float32: a few 1e-3 from the float32 result
        err = _rel(got, reference.conv3x3(x, k, b, relu=relu))
        assert 5e-4 < err < 1e-2, err


@pytest.mark.parametrize("isa", VDPBF16PS_BITS[1:])  # each against the portable C
def test_instruction_sets_give_the_same_bits(rng, kernels, isa):
    # VDPBF16PS adds a pair's odd product, then its even one, each rounded to
    # float32; the products of bf16 values are exact, so plain C in that order
    # gives the same bits
    for shape in ((2, 13, 10, 33, 48), (1, 6, 6, 512, 80)):
        x, k, b = _data(rng, *shape)
        vggtl.set_isa("portable")
        ref = _kernels.conv3x3_forward(x, k, b, precision="bf16")
        vggtl.set_isa(isa)
        np.testing.assert_array_equal(_kernels.conv3x3_forward(x, k, b, precision="bf16"), ref)


@pytest.mark.parametrize("isa", VDPBF16PS_BITS[1:])
def test_sums_below_flt_min_are_flushed_as_the_instruction_does(kernels, isa):
    # VDPBF16PS flushes a sum below FLT_MIN (1.2e-38) to zero; the emulation does
    # too, so even features of tiny inputs are the same bits everywhere (each
    # instruction set against the portable C, never one against itself)
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((1, 6, 6, 32), dtype=np.float32)) * np.float32(1e-20)
    k = rng.standard_normal((3, 3, 32, 16), dtype=np.float32) * np.float32(1e-19)
    b = np.zeros(16, np.float32)
    vggtl.set_isa("portable")
    ref = _kernels.conv3x3_forward(x, k, b, relu=False, precision="bf16")
    assert (ref == 0).any() and (np.abs(ref) >= np.finfo(np.float32).tiny).any()
    assert not ((ref != 0) & (np.abs(ref) < np.finfo(np.float32).tiny)).any()  # no subnormal
    vggtl.set_isa(isa)
    got = _kernels.conv3x3_forward(x, k, b, relu=False, precision="bf16")
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_vdpbf16ps_is_used_where_the_cpu_has_it(kernels):
    if not dispatch.isa_supported("avx512_bf16"):
        assert dispatch.bf16_kernel() == "emulated"
        pytest.skip("this CPU has no AVX512_BF16: the emulated path is the one tested")
    vggtl.set_isa("best")
    if dispatch.isa_supported("amx_bf16"):
        assert vggtl.get_isa() == "amx_bf16" and vggtl.info()["bf16_kernel"] == "amx"
        vggtl.set_isa("avx512_bf16")
    assert vggtl.get_isa() == "avx512_bf16" and vggtl.info()["bf16_kernel"] == "vdpbf16ps"
    vggtl.set_isa("avx512")
    assert vggtl.info()["bf16_kernel"] == "emulated"


@pytest.mark.skipif(not dispatch.isa_supported("amx_bf16"), reason="this CPU has no usable AMX")
def test_amx_takes_the_layers_whose_channels_allow_it(kernels):
    vggtl.set_isa("amx_bf16")
    assert _core.conv3x3_algo(14, 14, 64, 64, precision="bf16") == "winograd_bf16_amx"
    assert _core.conv3x3_algo(3, 3, 512, 96, precision="bf16") == "winograd_bf16_amx"
    # channels the tiles do not divide: VDPBF16PS, the same bits as avx512_bf16
    for cin, cout in ((33, 64), (64, 48), (16, 16)):
        assert _core.conv3x3_algo(14, 14, cin, cout, precision="bf16") == "winograd_bf16"
    assert _core.conv3x3_algo(14, 14, 64, 64) == "winograd"  # float32 untouched
    assert vggtl.info()["bf16_kernel"] == "amx"
    # the products really run on the tiles: not VDPBF16PS's bits, yet as close to
    # them as two float32 summation orders
    rng = np.random.default_rng(11)
    x, k, b = _data(rng, 2, 12, 12, 128, 64)
    amx = _kernels.conv3x3_forward(x, k, b, precision="bf16")
    vggtl.set_isa("avx512_bf16")
    vdp = _kernels.conv3x3_forward(x, k, b, precision="bf16")
    assert not np.array_equal(amx, vdp)
    assert _rel(amx, vdp) < TOL_SAME_ARITHMETIC


def test_thread_count_and_batch_do_not_change_a_bit(rng, kernels, restore_threads):
    # every tile's row is summed on its own in a fixed order; blocks are sized
    # by the layer; short blocks are padded with zero rows
    x, k, b = _data(rng, 7, 10, 12, 64, 96)
    vggtl.set_num_threads(1)
    one = _kernels.conv3x3_forward(x, k, b, precision="bf16")
    vggtl.set_num_threads(2)
    np.testing.assert_array_equal(_kernels.conv3x3_forward(x, k, b, precision="bf16"), one)
    for n in (1, 2, 5):
        np.testing.assert_array_equal(_kernels.conv3x3_forward(x[:n], k, b, precision="bf16"),
                                      one[:n])


def test_nan_and_inf_are_never_lost(rng, kernels):
    # NaN stays NaN through the bf16 rounding; a 2 x 2 tile mixes its 4 x 4
    # input patch, so a NaN spreads within its tiles: more NaN, never less
    x, k, b = _data(rng, 2, 9, 11, 16, 20)
    x[0, 4, 5, 3] = np.nan
    x[1, 0, 0, 0] = np.inf
    got = _kernels.conv3x3_forward(x, k, b, relu=True, precision="bf16")
    ref = reference.conv3x3(x, k, b, relu=True)
    assert np.isnan(got[np.isnan(ref)]).all()
    assert not np.isfinite(got[~np.isfinite(ref)]).any()
    assert np.isfinite(got[0][~np.isnan(ref[0])]).mean() > 0.8


def test_plan_uses_bf16_where_winograd_would_run(kernels):
    vggtl.set_conv_algo("auto")
    plan = dispatch.conv_plan((224, 224), precision="bf16")
    assert plan["block1_conv1"] == "im2col"  # 3 input channels: float32 im2col
    # block 1 stays float32 (its algorithm is float32's), the others run bf16
    assert plan["block1_conv2"] == dispatch.conv_plan((224, 224))["block1_conv2"] == "winograd6"
    assert all(plan[n] == bf16_algo(64, 64) for n in reference.CONV_LAYERS[2:])
    # a single layer of block 1's shape, outside the network, runs the precision asked
    assert _core.conv3x3_algo(224, 224, 64, 64, precision="bf16") == bf16_algo(64, 64)
    # 2 x 2 tiles waste little on 2 x 2 and 5 x 5 maps; a 1 x 1 map stays im2col
    assert _core.conv3x3_algo(2, 2, 512, 512, precision="bf16") == bf16_algo(512, 512)
    assert _core.conv3x3_algo(5, 5, 512, 512, precision="bf16") == bf16_algo(512, 512)
    assert _core.conv3x3_algo(1, 1, 512, 512, precision="bf16") == "im2col"
    assert _core.conv3x3_algo(14, 14, 8, 64, precision="bf16") == "im2col"
    # float32 plans are untouched; forcing im2col forces it at bf16 too
    assert dispatch.conv_plan((224, 224))["block3_conv1"] == "winograd6"
    vggtl.set_conv_algo("im2col")
    assert set(dispatch.conv_plan((224, 224), precision="bf16").values()) == {"im2col"}
    assert vggtl.info((64, 64), precision="bf16")["conv_plan"]["block2_conv1"] == "im2col"


# where precision="bf16" runs bf16 (the README): every conv after block 1, at
# every size the network takes (a map of one row or column, where 2x2 tiles
# would more than double the pixels, cannot occur: block5's maps are at least 2x2)
BF16_LAYERS = tuple(n for n in reference.CONV_LAYERS if not n.startswith("block1_"))


def _bf16_layers_of_the_core(h, w):
    """The convs the core runs in bf16 on an h x w input, asked layer by layer."""
    out = []
    for i, (name, kind, cin, cout, _) in enumerate(_core.VGG16_LAYERS):
        precision = _core.vgg16_conv_precision(i, precision="bf16") if kind == "conv" else None
        if kind == "conv" and _core.conv3x3_algo(h, w, cin, cout,
                                                 precision=precision) == bf16_algo(cin, cout):
            out.append(name)
        elif kind == "pool":
            h, w = h // 2, w // 2
    return tuple(out)


@pytest.mark.parametrize("size", [(32, 32), (40, 36), (48, 48), (33, 65), (224, 224)])
def test_bf16_runs_on_every_layer_after_block1(size):
    assert _bf16_layers_of_the_core(*size) == BF16_LAYERS
    # and not where 2x2 tiles would more than double a map's pixels, nor on 3 channels
    for shape in ((1, 7, 512, 512), (32, 32, 3, 64)):
        assert _core.conv3x3_algo(*shape, precision="bf16") == "im2col"


def test_block1_stays_float32_in_a_bf16_network(rng, conv_weights):
    names = [n for n, *_ in _core.VGG16_LAYERS]
    got = {n: _core.vgg16_conv_precision(i, precision="bf16")
           for i, n in enumerate(names) if n in reference.CONV_LAYERS}
    assert got == {n: "fp32" if n.startswith("block1_") else "bf16" for n in reference.CONV_LAYERS}
    assert all(_core.vgg16_conv_precision(i) == "fp32"
               for i, n in enumerate(names) if n in reference.CONV_LAYERS)
    for bad in (names.index("block1_pool"), -1, len(names)):
        with pytest.raises(ValueError, match="layer: expected the index of a conv layer"):
            _core.vgg16_conv_precision(bad, precision="bf16")
    # block1_pool of a bf16 base is float32's, bit for bit; the layers after it are not
    X = rng.integers(0, 256, (2, 36, 40, 3), dtype=np.uint8)
    b16 = vggtl.VGG16(weights=conv_weights, precision="bf16")
    f32 = vggtl.VGG16(weights=conv_weights, precision="fp32")
    np.testing.assert_array_equal(b16.predict(X, layer="block1_pool"),
                                  f32.predict(X, layer="block1_pool"))
    assert not np.array_equal(b16.predict(X, layer="block2_conv1"),
                              f32.predict(X, layer="block2_conv1"))


def _layer_by_layer_error(base, X, weights):
    """Largest error of ``base``'s bf16 conv layers and of its float32 ones
    ({"bf16": e, "fp32": e}) against the reference run on each layer's own
    input (the network's previous output): layer by layer, because a float32
    input that differs in its last bit can round to another bf16 value, so
    whole networks agree only to the bf16 error itself."""
    names = [n for n, _ in reference.LAYERS[:18]]
    worst = {"bf16": 0.0, "fp32": 0.0}
    for prev, name in zip(names, names[1:]):
        if not name.endswith(("conv1", "conv2", "conv3")):
            continue
        cut = base.predict(X, layer=prev)
        got = base.forward_from(cut, after=prev, layer=name)
        bf16 = base.precision == "bf16" and name in BF16_LAYERS
        ref = (reference.conv3x3_winograd_bf16 if bf16 else reference.conv3x3)(cut, *weights[name])
        kind = "bf16" if bf16 else "fp32"
        worst[kind] = max(worst[kind], _rel(got, ref))
    return worst


def test_network_runs_each_layer_as_the_reference(rng, kernels, conv_weights):
    X = rng.integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    b16 = vggtl.VGG16(weights=conv_weights, preprocess="caffe", precision="bf16")
    err = _layer_by_layer_error(b16, X, conv_weights)
    # bf16 layers: the reference's arithmetic; block 1: float32 (Winograd F(6x6)'s error)
    assert err["bf16"] < TOL_SAME_ARITHMETIC and err["fp32"] < 6e-5, err
    got = b16.predict(X)
    # the whole network: within the bf16 error of the reference's and of float32
    ref = reference.vgg16_forward(X, conv_weights, preprocess="caffe",
                                  bf16_layers=BF16_LAYERS)
    f32 = vggtl.VGG16(weights=conv_weights, preprocess="caffe", precision="fp32").predict(X)
    assert _rel(got, ref) < BOUND
    assert 1e-3 < _rel(got, f32) < BOUND
    # forward_from (a cached cut) runs the same precision
    cut = b16.predict(X, layer="block3_pool")
    np.testing.assert_array_equal(b16.forward_from(cut, after="block3_pool"), got)


def test_features_224_within_the_bound(rng, conv_weights):
    # the bound at full size: bf16 features within 2e-2 of float32 ones
    # (Glorot-uniform weights; the README gives 1.1e-2 at 224 and 1.2e-2 at 50)
    X = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    f32 = vggtl.VGG16(weights=conv_weights, precision="fp32").predict(X)
    f16 = vggtl.VGG16(weights=conv_weights, precision="bf16").predict(X)
    err = _rel(f16, f32)
    assert 1e-3 < err < BOUND, err


@pytest.mark.skipif("ASAN_OPTIONS" in os.environ,
                    reason="minutes under ASan, and no C path the other tests here miss")
def test_tutorial_head_accuracy_barely_moves():
    # The tutorial's head on scikit-learn's digits (1,797 images, half for
    # testing), trained on float32 and on bf16 features of the same random-weight
    # base. The criterion (test accuracy within 0.5 points) is a mean over
    # seeds, measured by benchmarks/bf16_accuracy.py (20 seeds: -0.29 points,
    # README); one seed's training moves by up to about 1 point for any change
    # of the features, even 3e-6, and by up to 4 with bf16. Here: the mean of 3
    # seeds within 2 points, and 90% of the predictions the same, a regression
    # guard that fails if bf16 features lose information.
    pytest.importorskip("sklearn")
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        from bf16_accuracy import head_accuracy
    finally:
        sys.path.pop(0)
    from vggtl.__main__ import digits_images
    X, y = digits_images(None, 32)
    diffs = []
    for seed in range(3):
        a32, p32 = head_accuracy(X, y, seed, {})
        a16, p16 = head_accuracy(X, y, seed, {"precision": "bf16"})
        assert a32 > 70  # the head learns from these features at all (chance: 10)
        assert (p16 == p32).mean() >= 0.9
        diffs.append(a16 - a32)
    assert abs(np.mean(diffs)) <= 2.0, diffs


def test_precision_is_checked_and_reported():
    with pytest.raises(ValueError,
                       match=r"precision: expected 'auto', 'fp32' or 'bf16', got 'fp16'"):
        vggtl.VGG16(weights=None, precision="fp16")
    with pytest.raises(ValueError, match=r"precision: expected 'auto', 'fp32' or 'bf16', got None"):
        vggtl.VGG16(weights=None, precision=None)
    x = np.zeros((1, 4, 4, 16), np.float32)
    with pytest.raises(ValueError, match=r"precision: expected one of 'fp32', 'bf16', got 'int8'"):
        _kernels.conv3x3_forward(x, np.zeros((3, 3, 16, 16), np.float32), np.zeros(16, np.float32),
                              precision="int8")
    with pytest.raises(ValueError, match=r"conv_algo: expected one of .*got 'winograd_bf16'"):
        vggtl.set_conv_algo("winograd_bf16")  # a precision, not a setting
    base = vggtl.VGG16(weights=None, precision="bf16")
    assert base.precision == "bf16" and "precision='bf16'" in repr(base)
    assert "precision='auto'" in repr(vggtl.VGG16(weights=None, precision="auto"))
    assert "precision" not in repr(vggtl.VGG16(weights=None))  # "fp32", the default


def test_cache_keeps_precisions_apart_and_matches_predict(rng, tmp_path, conv_weights):
    X = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    b16 = vggtl.VGG16(weights=conv_weights, precision="bf16")
    b32 = vggtl.VGG16(weights=conv_weights, precision="fp32")
    k16, k32 = vggtl.cache.make_key(b16, X=X), vggtl.cache.make_key(b32, X=X)
    assert k16["conv"] == bf16_conv_key(40, 40) and k32["conv"] != k16["conv"]
    assert vggtl.cache.key_id(k16) != vggtl.cache.key_id(k32)
    F16 = b16.extract(X, cache=tmp_path, progress=False)
    F32 = b32.extract(X, cache=tmp_path, progress=False)
    np.testing.assert_array_equal(F16, b16.predict(X))
    np.testing.assert_array_equal(F32, b32.predict(X))
    entries = vggtl.cache.info(tmp_path)["entries"]
    assert sorted(e["conv"] for e in entries) == sorted([k16["conv"], k32["conv"]])


def test_a_saved_model_keeps_its_precision(rng, tmp_path):
    X = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision="bf16")
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(3, activation="softmax")],
                                cache=False)
    path = tmp_path / "m.vggtl"
    model.save(path)
    back = vggtl.load_model(path)
    assert back.base.precision == "bf16"
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    # format 2 for a bf16 base (an older vggtl refuses it rather than run it in
    # float32), 1 for float32 (older vggtl still read those)
    from vggtl.model import _read_metadata
    assert _read_metadata(path.read_bytes(), str(path))["format_version"] == 2
    model.base.precision = "fp32"
    model.save(path)
    assert _read_metadata(path.read_bytes(), str(path))["format_version"] == 1


# --- forced from the environment, in a fresh interpreter ---------------------------

_CHILD = r"""
import json
import numpy as np
import vggtl
from vggtl import _core, _kernels, reference
rng = np.random.default_rng(1)
x = np.maximum(rng.standard_normal((2, 13, 9, 33), dtype=np.float32), 0)
k = rng.standard_normal((3, 3, 33, 24), dtype=np.float32) / np.float32(10)
b = rng.standard_normal(24, dtype=np.float32)
got = _kernels.conv3x3_forward(x, k, b, precision="bf16")
ref = reference.conv3x3_winograd_bf16(x, k, b)
err = float(np.abs(got - ref).max() / np.abs(ref).max())
weights = vggtl.VGG16(weights=None, seed=3).get_weights()
X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
F = vggtl.VGG16(weights=weights, preprocess="caffe", precision="bf16").predict(X)
print(json.dumps({"err": err, "isa": vggtl.get_isa(), "kernel": vggtl.info()["bf16_kernel"],
                  "features": F.ravel().tolist()}))
"""


def test_environment_forces_each_path_and_all_give_the_same_features():
    # $VGGTL_ISA in a fresh interpreter, for every level this CPU runs: the
    # kernel matches the reference arithmetic, and the whole base's bf16
    # features are the same bits on every level (the float32 first layer too:
    # vggtl's own products, csrc/gemm.c), but amx_bf16's: its tile unit's own
    # rounding, held to the bf16 error against the others
    kernel_of = {"avx512_bf16": "vdpbf16ps", "amx_bf16": "amx"}
    runs = {}
    for isa in dispatch.supported_isas():
        env = dict(os.environ, VGGTL_ISA=isa)
        env.pop("OPENBLAS_CORETYPE", None)
        r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["isa"] == isa
        assert out["kernel"] == kernel_of.get(isa, "emulated")
        assert out["err"] < TOL_SAME_ARITHMETIC, out
        runs[isa] = np.array(out["features"], np.float32)
    for isa, f in runs.items():
        if isa == "amx_bf16":
            assert 0 < _rel(f, runs["portable"]) < BOUND
        else:
            np.testing.assert_array_equal(f, runs["portable"], err_msg=f"{isa} vs portable")


def test_emulated_bf16_warns_that_it_is_slow(kernels):
    # without VDPBF16PS, bf16 gives the same features more slowly than fp32: say so
    vggtl.set_isa("avx2" if dispatch.isa_supported("avx2") else "portable")
    with pytest.warns(RuntimeWarning, match=r"precision='bf16': the bf16 products run emulated"):
        vggtl.VGG16(weights=None, precision="bf16")
    if dispatch.isa_supported("avx512_bf16"):
        vggtl.set_isa("avx512_bf16")
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            vggtl.VGG16(weights=None, precision="bf16")
