"""An image's features are a function of the image and the weights alone.

Bit for bit, whatever the batch, the chunking, the image's place in the batch,
the thread count, the instruction set and the OpenBLAS kernels the process was
started with, at every precision; and the head's probabilities, and the
weights a head trains to, likewise. The
feature cache's keys, Dask's workers and scikit-learn's invariance checks rest
on it. (The products are vggtl's own, csrc/gemm.c: one chain of fused
multiply-adds per output, in a fixed order.)
"""
import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import vggtl
from vggtl import dispatch

PRECISIONS = ("fp32", "bf16")


def _base(precision, weights=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 emulated on this CPU
        return vggtl.VGG16(weights=weights, seed=1, precision=precision, preprocess="caffe")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return {s: rng.integers(0, 256, (12, s, s, 3), dtype=np.uint8) for s in (32, 48)}


@pytest.fixture
def threads():
    n = vggtl.get_num_threads()
    yield
    vggtl.set_num_threads(n)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("size", [32, 48])
def test_batch_chunks_and_places_change_nothing(images, precision, size):
    X = images[size]
    base = _base(precision)
    whole = base.predict(X)
    alone = np.concatenate([base.predict(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_array_equal(alone, whole)
    chunks = np.concatenate([base.predict(X[i:i + 5], batch_size=2) for i in range(0, 12, 5)])
    np.testing.assert_array_equal(chunks, whole)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_array_equal(base.predict(X[order])[np.argsort(order)], whole)
    # next to other images, including a black one and a copy of itself
    mixed = np.concatenate([X[:1], np.zeros_like(X[:1]), X[:1], X[7:9]])
    got = base.predict(mixed)
    for i, j in ((0, 0), (2, 0), (3, 7), (4, 8)):
        np.testing.assert_array_equal(got[i], whole[j])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_thread_counts_change_nothing(images, precision, threads):
    X = images[48][:6]
    base = _base(precision)
    vggtl.set_num_threads(1)
    one = base.predict(X)
    for n in (2, 3, 5):
        vggtl.set_num_threads(n)
        np.testing.assert_array_equal(base.predict(X), one, err_msg=f"{n} threads")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_instruction_sets_change_nothing(images, precision):
    X = images[32][:3]
    base = _base(precision)
    isa = vggtl.get_isa()
    try:
        got = {}
        for name in dispatch.supported_isas():
            vggtl.set_isa(name)
            got[name] = base.predict(X)
    finally:
        vggtl.set_isa(isa)
    for name, F in got.items():
        if name == "amx_bf16" and precision == "bf16":
            # the tile unit's own rounding: its own bits (test_bf16.py bounds them),
            # but the same whatever the batch
            np.testing.assert_array_equal(
                np.concatenate([_with_isa(name, base.predict, X[i:i + 1]) for i in range(3)]),
                F, err_msg="amx_bf16 by batch")
            continue
        np.testing.assert_array_equal(F, got["portable"], err_msg=f"{name} vs portable")


def _with_isa(name, fn, *args):
    isa = vggtl.get_isa()
    vggtl.set_isa(name)
    try:
        return fn(*args)
    finally:
        vggtl.set_isa(isa)


def _trained_head(F, labels):
    """A head of three dense layers trained two epochs; its weights."""
    base = vggtl.VGG16(weights=None, input_shape=(64, 64, 3))
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(64, activation="relu"),
                                            vggtl.Dropout(0.5), vggtl.Dense(16, activation="relu"),
                                            vggtl.Dense(3, activation="softmax")], seed=4)
    model.compile(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy")
    model.fit_features(F, labels, batch_size=32, epochs=2, verbose=0)
    return model.get_weights()


@pytest.fixture(scope="module")
def head_data():
    rng = np.random.default_rng(3)
    F = rng.standard_normal((80, 2, 2, 512)).astype(np.float32)
    return F, rng.integers(0, 3, 80)


def test_a_heads_training_does_not_depend_on_threads_or_instruction_set(head_data, threads):
    # the weight gradients, dL/dx and the update are vggtl's own products (the
    # first layer's spread over the threads by rows), not BLAS's
    runs = {}
    isa = vggtl.get_isa()
    try:
        for n in (1, 2, 3):
            vggtl.set_num_threads(n)
            runs[f"{n} threads"] = _trained_head(*head_data)
        vggtl.set_num_threads(2)
        for name in dispatch.supported_isas():
            vggtl.set_isa(name)
            runs[name] = _trained_head(*head_data)
    finally:
        vggtl.set_isa(isa)
    ref = runs["1 threads"]
    for name, w in runs.items():
        for k in ref:
            np.testing.assert_array_equal(w[k][0], ref[k][0], err_msg=f"{name}: {k} kernel")
            np.testing.assert_array_equal(w[k][1], ref[k][1], err_msg=f"{name}: {k} bias")


def test_the_heads_probabilities_do_not_depend_on_the_batch():
    rng = np.random.default_rng(2)
    F = rng.standard_normal((37, 1, 1, 512)).astype(np.float32)
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(64, activation="relu"),
                                            vggtl.Dense(3, activation="softmax")], seed=4)
    whole = model.predict_features(F, batch_size=37)
    for bs in (1, 4, 16):
        np.testing.assert_array_equal(model.predict_features(F, batch_size=bs), whole)
    np.testing.assert_array_equal(
        np.concatenate([model.predict_features(F[i:i + 1]) for i in range(len(F))]), whole)


# --- OpenBLAS's kernels, chosen when the process starts ------------------------------

_CHILD = r"""
import hashlib, json, warnings
import numpy as np
import vggtl
warnings.simplefilter("ignore", RuntimeWarning)
rng = np.random.default_rng(5)
out = {"blas": vggtl.info()["blas_coretype"]}
for size in (32, 48):
    X = rng.integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    for precision in ("fp32", "bf16"):
        base = vggtl.VGG16(weights=None, seed=1, precision=precision, preprocess="caffe",
                           input_shape=(size, size, 3))
        F = base.predict(X)
        out[f"{precision} {size}"] = hashlib.sha256(F.tobytes()).hexdigest()
        if precision == "fp32":
            model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(32, activation="relu"),
                                                    vggtl.Dense(3, activation="softmax")], seed=4)
            P = model.predict_features(F)
            out[f"head {size}"] = hashlib.sha256(P.tobytes()).hexdigest()
F = rng.standard_normal((80, 2, 2, 512)).astype(np.float32)
model = vggtl.TransferModel(vggtl.VGG16(weights=None, input_shape=(64, 64, 3)),
                            head=[vggtl.Flatten(), vggtl.Dense(64, activation="relu"),
                                  vggtl.Dropout(0.5), vggtl.Dense(16, activation="relu"),
                                  vggtl.Dense(3, activation="softmax")], seed=4)
model.compile(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy")
model.fit_features(F, rng.integers(0, 3, 80), batch_size=32, epochs=2, verbose=0)
out["trained head"] = hashlib.sha256(b"".join(a.tobytes() for kb in model.get_weights().values()
                                              for a in kb)).hexdigest()
# fine-tuning: block 5's convolutions forward and backward (dx and dW), from block4_pool
X = rng.integers(0, 256, (12, 48, 48, 3), dtype=np.uint8)
model = vggtl.TransferModel(vggtl.VGG16(weights=None, seed=2, input_shape=(48, 48, 3)),
                            head=[vggtl.Flatten(), vggtl.Dense(16, activation="relu"),
                                  vggtl.Dense(2, activation="softmax")], seed=4, cache=False)
model.compile(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy")
model.fine_tune(X, rng.integers(0, 2, 12), unfreeze_from="block5_conv1", batch_size=8, epochs=2,
                verbose=0)
out["fine-tuned block 5"] = hashlib.sha256(b"".join(
    a.tobytes() for name in ("block5_conv1", "block5_conv2", "block5_conv3")
    for a in model.base.get_layer(name).get_weights())).hexdigest()
print(json.dumps(out))
"""

# The kernel sets OPENBLAS_CORETYPE can force on x86-64 (None: OpenBLAS's own choice)
CORETYPES = (None, "Haswell", "SkylakeX", "Zen", "Sandybridge", "Prescott")


def _features_under(coretype):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (coretype, r.returncode, r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_openblas_kernels_change_nothing():
    # features, head probabilities, head training and fine-tuning never go through BLAS, so
    # every kernel set OpenBLAS can be told to use gives the same bits, even one this CPU
    # cannot run (SkylakeX without AVX-512: BLAS is never called on these paths)
    runs = {c: _features_under(c) for c in CORETYPES}
    ref = {k: v for k, v in runs[None].items() if k != "blas"}
    assert len(ref) == 8
    for c, got in runs.items():
        assert {k: v for k, v in got.items() if k != "blas"} == ref, (c, got["blas"])
    assert len({got["blas"] for got in runs.values()}) >= 3  # really different kernels


def test_features_are_a_hash_of_the_inputs_alone(images):
    # the same weights and image in a fresh model give the same bits: nothing
    # carried over from an earlier call (prepared kernels, workspaces)
    X = images[48][:4]
    a = _base("fp32")
    first = a.predict(X)
    a.predict(images[32])  # other sizes prepare other algorithms for some layers
    b = _base("fp32", weights=a.get_weights())
    assert hashlib.sha256(b.predict(X).tobytes()).digest() == \
        hashlib.sha256(first.tobytes()).digest()
    np.testing.assert_array_equal(a.predict(X), first)


def test_prepared_kernels_follow_the_weights(images):
    # each layer's kernel is prepared once per model (its Winograd transform);
    # whatever changes the weights in place drops it, so the features are
    # always those of a fresh model with the same weights
    X = images[48][:4]
    y = np.array([0, 1, 0, 1])
    base = vggtl.VGG16(weights=None, seed=1, input_shape=(48, 48, 3))
    before = base.predict(X)
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")],
                                seed=2)
    model.compile(optimizer=vggtl.SGD(learning_rate=0.5), loss="categorical_crossentropy")
    model.fine_tune(X, np.eye(2, dtype=np.float32)[y], unfreeze_from="block5_conv1", epochs=1,
                    verbose=0, cache=False)
    after = base.predict(X)
    assert not np.array_equal(after, before)  # block 5 was trained
    np.testing.assert_array_equal(after, vggtl.VGG16(weights=base.get_weights(),
                                                     input_shape=(48, 48, 3)).predict(X))
    # TransferModel.set_weights writes the tuned layers in place too
    w = model.get_weights()
    w["block5_conv3"] = (w["block5_conv3"][0] * np.float32(0.5), w["block5_conv3"][1])
    model.set_weights(w)
    np.testing.assert_array_equal(base.predict(X), vggtl.VGG16(weights=base.get_weights(),
                                                               input_shape=(48, 48, 3)).predict(X))
    with pytest.raises(ValueError, match="read-only"):
        base._weights["block5_conv3"][0][0, 0, 0, 0] = 1.0
