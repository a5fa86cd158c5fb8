"""Every kernel path against the NumPy reference: each instruction set this CPU
can run (portable, AVX2, AVX-512) times each 3x3 algorithm (im2col, Winograd
F(4x4,3x3) and F(6x6,3x3)), set in-process with vggtl.set_isa / set_conv_algo and, as a user
or CI forces it, by $VGGTL_ISA / $VGGTL_CONV in a fresh interpreter."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vggtl
from vggtl import _core, dispatch, reference
from vggtl import _kernels  # the single kernels, for tests

from support.isas import ISAS  # each instruction set, skipped where this CPU lacks it
# max|got - ref| / max|ref| against the float64 reference, per algorithm
from support.tolerance import CONV_ALGOS as ALGOS, CONV_RTOL as TOL

# odd sizes (partial 4x4 tiles on both sides), 1-pixel maps, thin and deep
# channels, several images whose tiles share blocks, Cin 16 (the least Winograd
# takes under 'auto') and VGG's own block shapes
SHAPES = [(1, 1, 1, 16, 8), (2, 5, 7, 16, 33), (3, 13, 9, 24, 16), (1, 4, 4, 512, 512),
          (2, 14, 14, 512, 64), (2, 28, 27, 256, 40), (1, 56, 56, 64, 64), (5, 3, 3, 64, 128),
          (1, 9, 6, 3, 7)]


def _data(rng, n, h, w, cin, cout):
    x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
    k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) / np.float32(np.sqrt(9 * cin))
    b = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.5)
    return x, k, b


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv3x3_every_path_matches_reference(rng, close, kernels, isa, algo, shape):
    vggtl.set_isa(isa)
    vggtl.set_conv_algo(algo)
    assert _core.conv3x3_algo(*shape[1:]) == algo
    x, k, b = _data(rng, *shape)
    for relu in (True, False):
        close(_kernels.conv3x3_forward(x, k, b, relu=relu), reference.conv3x3(x, k, b, relu=relu),
              rtol=TOL[algo])


@pytest.mark.parametrize("isa", ISAS[1:])  # each vectorised path against the portable one
def test_instruction_sets_give_the_same_bits(rng, kernels, isa):
    # the transforms are the same operations in the same order, vectorised wider
    # (no FMA contraction in them): an ISA changes speed, not results
    for algo in ALGOS:
        vggtl.set_conv_algo(algo)
        x, k, b = _data(rng, 2, 13, 10, 32, 48)
        vggtl.set_isa("portable")
        base = _kernels.conv3x3_forward(x, k, b)
        vggtl.set_isa(isa)
        np.testing.assert_array_equal(_kernels.conv3x3_forward(x, k, b), base, err_msg=algo)


@pytest.mark.parametrize("algo", ALGOS)
def test_thread_count_does_not_change_a_bit(rng, kernels, algo, restore_threads):
    # each output's sums run in a fixed order whichever thread computes them
    vggtl.set_conv_algo(algo)
    x, k, b = _data(rng, 3, 30, 22, 64, 96)
    vggtl.set_num_threads(1)
    one = _kernels.conv3x3_forward(x, k, b)
    vggtl.set_num_threads(2)
    np.testing.assert_array_equal(_kernels.conv3x3_forward(x, k, b), one)


@pytest.mark.parametrize("algo", ALGOS)
def test_an_image_gives_the_same_bits_in_any_batch(rng, kernels, algo):
    # every output is one chain of fused multiply-adds over its own inputs
    # (gemm.c): a lone tile, a short block or chunk, any place in the batch give
    # the same bits; block4 at 4 x 4 has one tile per image
    vggtl.set_conv_algo(algo)
    for shape in ((7, 4, 4, 512, 512), (7, 8, 8, 256, 256), (7, 2, 2, 512, 512)):
        x, k, b = _data(rng, *shape)
        alone = _kernels.conv3x3_forward(x[:1], k, b)
        for n in range(2, 8):
            np.testing.assert_array_equal(_kernels.conv3x3_forward(x[:n], k, b)[:1], alone)


@pytest.mark.parametrize("algo", ALGOS)
def test_nan_and_inf_are_never_lost(rng, kernels, algo):
    # every output the reference makes NaN is NaN (ReLU keeps NaN, as max(x, 0)
    # in NumPy and torch does); Winograd mixes a whole 6 x 6 input tile, so a NaN
    # also spreads to the rest of its 4 x 4 output tiles: more NaN, never less
    vggtl.set_conv_algo(algo)
    x, k, b = _data(rng, 2, 9, 11, 16, 20)
    x[0, 4, 5, 3] = np.nan
    x[1, 0, 0, 0] = np.inf
    got = _kernels.conv3x3_forward(x, k, b, relu=True)
    ref = reference.conv3x3(x, k, b, relu=True)
    assert np.isnan(got[np.isnan(ref)]).all()
    assert not np.isfinite(got[~np.isfinite(ref)]).any()
    if algo == "im2col":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    assert np.isfinite(got[0, :, :][~np.isnan(ref[0])]).mean() > 0.5  # not all poisoned


# The backward pass, which fine-tuning runs by the layer's forward algorithm:
# dW by the tiles' adjoint, dx through the forward with the flipped kernel.
# (the last: 720 4x4 tiles, 336 6x6 ones, so dW sums across blocks of 256 tiles)
BACKWARD_SHAPES = [(1, 1, 1, 16, 8), (2, 5, 7, 16, 33), (3, 13, 9, 24, 16), (2, 4, 4, 64, 48),
                   (1, 14, 14, 128, 96), (1, 9, 6, 3, 7), (6, 45, 40, 16, 24)]


def _backward(x, k, g):
    dx, dw, db = _kernels.conv3x3_backward(g, x, k)
    _, dw_only, _ = _kernels.conv3x3_backward(g, x, k, need_dx=False)
    np.testing.assert_array_equal(dw_only, dw)  # dx or not, the same dW
    return dx, dw, db


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", BACKWARD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_every_path_matches_reference(rng, close, kernels, isa, algo, shape):
    vggtl.set_isa(isa)
    vggtl.set_conv_algo(algo)
    x, k, _ = _data(rng, *shape)
    g = rng.standard_normal(shape[:3] + (shape[4],), dtype=np.float32)
    got = _backward(x, k, g)
    for a, r, name in zip(got, reference.conv3x3_backward(g, x, k), ("dx", "dw", "db")):
        assert a.shape == r.shape, name
        close(a, r, rtol=TOL[algo])


@pytest.mark.parametrize("isa", ISAS[1:])
def test_backward_instruction_sets_give_the_same_bits(rng, kernels, isa):
    for algo in ALGOS:
        vggtl.set_conv_algo(algo)
        x, k, _ = _data(rng, 2, 13, 10, 32, 48)
        g = rng.standard_normal((2, 13, 10, 48), dtype=np.float32)
        vggtl.set_isa("portable")
        base = _backward(x, k, g)
        vggtl.set_isa(isa)
        for a, b in zip(_backward(x, k, g), base):
            np.testing.assert_array_equal(a, b, err_msg=algo)


@pytest.mark.parametrize("algo", ALGOS)
def test_backward_thread_count_does_not_change_a_bit(rng, kernels, algo, restore_threads):
    # dW's sums over tiles are one chain each, whichever thread runs a position,
    # across blocks of tiles (600 4x4 tiles here, 280 6x6 ones)
    vggtl.set_conv_algo(algo)
    x, k, _ = _data(rng, 5, 48, 40, 32, 40)
    g = rng.standard_normal((5, 48, 40, 40), dtype=np.float32)
    vggtl.set_num_threads(1)
    one = _backward(x, k, g)
    vggtl.set_num_threads(2)
    for a, b in zip(_backward(x, k, g), one):
        np.testing.assert_array_equal(a, b)


def test_auto_picks_winograd_where_it_pays(kernels):
    vggtl.set_conv_algo("auto")
    plan = vggtl.info()["conv_plan"]  # 224 x 224
    assert plan["block1_conv1"] == "im2col"  # 3 input channels: a thin product
    # 6x6 tiles cover 224 and 112 with 18% fewer multiplies than 4x4 ones, 56 and
    # 28 with 9% fewer, 14 with as many
    assert [plan[n] for n in reference.CONV_LAYERS[1:]] == \
        ["winograd6"] * 9 + ["winograd"] * 3
    assert set(dispatch.conv_plan((48, 48)).values()) == {"im2col", "winograd6", "winograd3"}
    assert dispatch.conv_plan((48, 48))["block4_conv3"] == "winograd6"  # 6 x 6: one tile
    # 3 x 3: one 3x3 tile, 25 multiplies where F(4x4) does 36
    assert dispatch.conv_plan((48, 48))["block5_conv3"] == "winograd3"
    assert _core.conv3x3_algo(3, 3, 512, 512) == "winograd3"
    assert _core.conv3x3_algo(3, 2, 512, 512) == "im2col"  # 4x4 tiles would waste 16 of 6
    assert _core.conv3x3_algo(6, 6, 512, 512) == "winograd6"
    assert set(list(dispatch.conv_plan((32, 32)).values())[1:10]) == {"winograd"}
    # a 1 x 1 map would be computed as a whole 4 x 4 tile: 16x the work
    assert _core.conv3x3_algo(1, 1, 512, 512) == "im2col"
    assert _core.conv3x3_algo(2, 2, 512, 512) == "im2col"
    assert _core.conv3x3_algo(14, 14, 512, 512) == "winograd"
    assert dispatch.conv_plan((32, 32))["block5_conv1"] == "im2col"  # 2 x 2 maps


def test_features_224_within_1e4_of_float64_torch(rng, kernels, conv_weights):
    # the accuracy target for the fast path, at full size, against torch
    # in float64 on the same weights (the NumPy reference would take minutes)
    torch = pytest.importorskip("torch")
    from support.torch_vgg import torch_features
    net = torch_features(conv_weights).double()
    X = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=conv_weights)
    x = np.ascontiguousarray(reference._preprocess(X, base.preprocess), np.float64)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).double()).numpy().transpose(0, 2, 3, 1)
    errs = {}
    for algo in ALGOS + ["auto"]:
        vggtl.set_conv_algo(algo)
        got = base.predict(X)
        errs[algo] = float(np.abs(got - ref).max() / np.abs(ref).max())
    # what runs by default (F(6x6) on most layers at 224) keeps the 1e-4 bound
    assert errs["auto"] < 1e-4 and errs["im2col"] < 1e-4, errs
    assert all(errs[a] < 1e-4 for a in ALGOS), errs


# --- forced from the environment, in a fresh interpreter ---------------------------

_CHILD = r"""
import json, sys
import numpy as np
import vggtl
from vggtl import _core, _kernels, reference
rng = np.random.default_rng(1)
errs = []
for (n, h, w, cin, cout) in [(2, 13, 9, 32, 24), (1, 4, 4, 512, 64)]:
    x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
    k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) / np.float32(np.sqrt(9 * cin))
    b = rng.standard_normal(cout, dtype=np.float32)
    ref = reference.conv3x3(x, k, b)
    got = _kernels.conv3x3_forward(x, k, b)
    errs.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
    algo = _core.conv3x3_algo(h, w, cin, cout)
# the whole network at 32 x 32 against the reference
weights = vggtl.VGG16(weights=None, seed=3).get_weights()
X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
got = vggtl.VGG16(weights=weights, preprocess="caffe").predict(X)
ref = reference.vgg16_forward(X, weights, preprocess="caffe")
errs.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
info = vggtl.info()
print(json.dumps({"errs": errs, "algo": algo, "isa": info["isa"], "conv": info["conv_algo"],
                  "blas": info["blas_coretype"]}))
"""


def _run_child(env_extra):
    env = dict(os.environ, **env_extra)
    env.pop("OPENBLAS_CORETYPE", None)
    return subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("isa", ISAS)
def test_environment_forces_each_path(isa, algo):
    r = _run_child({"VGGTL_ISA": isa, "VGGTL_CONV": algo})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert (out["isa"], out["conv"], out["algo"]) == (isa, algo, algo)
    assert max(out["errs"]) < TOL[algo] * 10, out  # the network: 13 layers of rounding


def test_environment_rejects_what_it_cannot_run():
    r = _run_child({"VGGTL_ISA": "sse9"})
    assert r.returncode != 0
    assert "VGGTL_ISA" in r.stderr and "'avx2'" in r.stderr and "'sse9'" in r.stderr
    r = _run_child({"VGGTL_CONV": "fft"})
    assert r.returncode != 0
    assert "VGGTL_CONV" in r.stderr and "'winograd'" in r.stderr and "'fft'" in r.stderr
    missing = [i for i in dispatch.ISAS if not dispatch.isa_supported(i)]
    if missing:
        r = _run_child({"VGGTL_ISA": missing[-1]})
        assert r.returncode != 0 and "not supported by this CPU" in r.stderr


def test_setters_name_the_argument(kernels):
    with pytest.raises(ValueError, match=r"isa: expected one of .*'avx512'.*got 'avx3'"):
        vggtl.set_isa("avx3")
    with pytest.raises(TypeError, match="isa: expected a str, got int"):
        vggtl.set_isa(2)
    with pytest.raises(ValueError, match=r"conv_algo: expected one of .*got 'direct'"):
        vggtl.set_conv_algo("direct")
    with pytest.raises(ValueError, match="input_shape"):
        dispatch.conv_plan((0, 5))
    missing = [i for i in dispatch.ISAS if not dispatch.isa_supported(i)]
    for name in missing:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            vggtl.set_isa(name)
    vggtl.set_isa("best")
    assert vggtl.get_isa() == dispatch.supported_isas()[-1]


def test_info_reports_the_paths():
    i = vggtl.info((50, 50))
    assert i["isa"] in i["isas"] and i["isas"][0] == "portable"
    assert i["conv_algo"] in dispatch.CONV_ALGOS
    assert list(i["conv_plan"]) == list(reference.CONV_LAYERS)
    assert i["blas_coretype"]


def test_feature_cache_keeps_the_algorithms_apart(rng, kernels, conv_weights):
    # features of the algorithms differ in the last bits: one never stands in
    # for another in the cache
    base = vggtl.VGG16(weights=conv_weights)
    X = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    keys = {}
    for algo in ("im2col", "winograd", "winograd6", "winograd3", "auto"):
        vggtl.set_conv_algo(algo)
        keys[algo] = vggtl.cache.make_key(base, X=X)["conv"]
    # 40 x 40: 6x6 tiles pay at 40 and 10, not at 20; 5 x 5 and 2 x 2 maps: im2col
    assert keys == {"im2col": "i" * 13, "winograd": "w" * 13, "winograd6": "6" * 13,
                    "winograd3": "3" * 13, "auto": "i6ww666iiiiii"}
    vggtl.set_conv_algo("auto")  # 48 x 48: block 5's 3 x 3 maps by F(3x3)
    assert vggtl.cache.make_key(base, X=rng.integers(0, 256, (1, 48, 48, 3), np.uint8))[
        "conv"] == "i666666666333"
    vggtl.set_conv_algo("im2col")
    assert vggtl.cache.make_key(base, "block2_pool", X=X)["conv"] == "iiii"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("isa", ISAS)
def test_fused_pool_gives_the_unfused_bits(rng, kernels, conv_weights, isa, precision):
    # a block's last conv and its 2x2 max-pool run as one pass on the Winograd
    # paths (the pool in the output transform): the same bits as the conv's
    # output (a stop there is never fused) max-pooled by the pool layer; odd
    # sizes drop a row and a column, and NaN is kept as the pool keeps it
    vggtl.set_isa(isa)
    base = vggtl.VGG16(weights=conv_weights, precision=precision)
    X = rng.integers(0, 256, (3, 38, 35, 3), dtype=np.uint8)  # block2: 19 x 17
    plan = dispatch.conv_plan((38, 35), precision=precision)
    assert plan["block1_conv2"] != "im2col" and plan["block2_conv2"] != "im2col"
    conv = base.predict(X, layer="block1_conv2")
    np.testing.assert_array_equal(base.predict(X, layer="block1_pool"),
                                  _kernels.maxpool2x2_forward(conv))
    cut = base.predict(X, layer="block1_pool")
    cut[1, 3, 4, 5] = np.nan
    conv = base.forward_from(cut, after="block1_pool", layer="block2_conv2")
    pooled = base.forward_from(cut, after="block1_pool", layer="block2_pool")
    np.testing.assert_array_equal(pooled, _kernels.maxpool2x2_forward(conv))
    assert np.isnan(pooled[1]).any() and not np.isnan(pooled[0]).any()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("isa", ISAS)
def test_fused_pool_kernel_on_odd_shapes(rng, kernels, isa, precision):
    # the layer itself, with pool=True, against its unfused output pooled:
    # odd H and W (the last row / column dropped), tiles cut by the image edge,
    # Cout not a multiple of 16, NaN in the input
    vggtl.set_isa(isa)
    # (2, 3, 3, ...): one F(3x3) tile, its pool window the top-left 2 x 2
    for shape in ((2, 9, 11, 16, 20), (1, 14, 14, 64, 64), (3, 7, 6, 33, 70), (2, 3, 3, 32, 20)):
        x, k, b = _data(rng, *shape)
        x[-1, 1, 1, 0] = np.nan
        full = _kernels.conv3x3_forward(x, k, b, precision=precision)
        got = _kernels.conv3x3_forward(x, k, b, precision=precision, pool=True)
        np.testing.assert_array_equal(got, _kernels.maxpool2x2_forward(full))
        assert np.isnan(got[-1]).any()
    with pytest.raises(ValueError, match=r"pool: the fused 2x2 max-pool needs .* runs im2col"):
        _kernels.conv3x3_forward(*_data(rng, 1, 9, 9, 3, 8), pool=True)
    with pytest.raises(ValueError, match=r"pool: .*relu=False"):
        _kernels.conv3x3_forward(*_data(rng, 1, 9, 9, 16, 8), relu=False, pool=True)
    if precision == "fp32":  # 3x3 tiles on a 6 x 6 map would split the windows at 3
        vggtl.set_conv_algo("winograd3")
        with pytest.raises(ValueError, match=r"pool: .* runs winograd3 on 6 x 6"):
            _kernels.conv3x3_forward(*_data(rng, 1, 6, 6, 16, 8), pool=True)
