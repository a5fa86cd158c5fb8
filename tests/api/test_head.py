"""Training the classification head (issue 6): gradients of every layer and loss
by finite differences, dropout masks, and the TransferModel fit API - parity
with PyTorch (same weights, same batch order, 50 steps), determinism, Keras's
fit semantics (history, validation_split, class_weight, EarlyStopping, string
labels, evaluate, save/load, accuracy) and the errors bad input must raise.

Sizes are small: the base is VGG16 at 32 x 32 (features (N, 1, 1, 512)) and the
head trains on random features with fit_features. Gradient checks run central
differences in float64 on a NumPy reimplementation of each forward (checked
against the C forward first), then compare the C backward in float32.
"""
import math

import numpy as np
import pytest
import torch

import vggtl
from vggtl import _kernels
from support.tolerance import rel_err

EPS = np.float32(1e-7)          # Keras's backend epsilon
LO, HI = EPS, np.float32(1.0) - EPS  # the clip range, as float32 (as the core and torch clip)
GRAD_RTOL = 1e-4                # C float32 backward vs float64 central differences
LOSS_RTOL = 1e-5                # per-step loss vs torch (the criterion)
WEIGHT_RTOL = 1e-4              # final weights vs torch (max|diff| / max|ref|)


# ---- helpers ------------------------------------------------------------------

def num_grad(f, x, h=1e-6):
    """Central differences of the scalar f at x (float64), per element."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        step = h if np.isscalar(h) else h[i]
        x[i] = old + step
        fp = f(x)
        x[i] = old - step
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * step)
    return g


def act64(x, name):
    """Activations in float64 (vggtl.reference rounds its results to float32)."""
    x = np.asarray(x, np.float64)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return x


def np_bce(yhat, y, w=None):
    """TensorFlow's Keras's binary_crossentropy on probabilities (a linear output),
    as model.fit's graph runs it: clip to [e, 1-e], -(y ln(p + e) + (1-y) ln((1 + e)
    - p)) with 1 + e in float32, per-sample mean over the last axis, then
    sum_i w_i l_i / n. Returns (loss, per_sample)."""
    p = np.clip(np.asarray(yhat, np.float64), float(LO), float(HI))
    y = np.asarray(y, np.float64)
    e = float(EPS)
    one_e = float(np.float32(1) + EPS)  # TensorFlow's graph folds 1 - p + e into (1 + e) - p
    per = -(y * np.log(p + e) + (1 - y) * np.log(one_e - p)).mean(axis=-1)
    w = np.ones(len(per)) if w is None else np.asarray(w, np.float64)
    return float((w * per).sum() / len(per)), per


def np_sparse(yhat, labels, w=None):
    """TensorFlow's Keras's sparse_categorical_crossentropy on probabilities:
    clip, log, then the sparse softmax crossentropy (a normalisation after the clip)."""
    r = np.clip(np.asarray(yhat, np.float64), float(LO), float(HI))
    per = -np.log(r[np.arange(len(r)), labels] / r.sum(axis=-1))
    w = np.ones(len(per)) if w is None else np.asarray(w, np.float64)
    return float((w * per).sum() / len(per)), per


def np_logits_loss(z, y, kind, w=None):
    """TensorFlow's Keras's crossentropies on the logits z of a softmax or sigmoid
    output (float64): kind 0 mean_k sigmoid_cross_entropy_with_logits, 1 softmax
    crossentropy with target rows y, 2 with integer labels y."""
    z = np.asarray(z, np.float64)
    if kind == 0:
        y = np.asarray(y, np.float64)
        per = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(axis=-1)
    else:
        m = z.max(axis=-1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        t = one_hot(np.asarray(y), z.shape[1]) if kind == 2 else np.asarray(y, np.float64)
        per = -(t * logp).sum(axis=-1)
    w = np.ones(len(per)) if w is None else np.asarray(w, np.float64)
    return float((w * per).sum() / len(per)), per


def np_model_loss(model, F, y, w=None):
    """The compiled loss of the model on features F as TensorFlow's Keras computes it:
    on the logits of a softmax / sigmoid output, on probabilities otherwise."""
    z, p = np_head_logits(model, F)
    kind = {"binary_crossentropy": 0, "categorical_crossentropy": 1,
            "sparse_categorical_crossentropy": 2}[model.loss]
    if model.layers[-1].activation in ("softmax", "sigmoid"):
        return np_logits_loss(z, y, kind, w)
    return (np_bce, np_cce, np_sparse)[kind](p, y, w)


def np_cce(yhat, y, w=None):
    """Keras's categorical_crossentropy on probabilities (normalised, clipped)."""
    yhat = np.asarray(yhat, np.float64)
    q = yhat / yhat.sum(axis=-1, keepdims=True)
    p = np.clip(q, float(LO), float(HI))
    per = -(np.asarray(y, np.float64) * np.log(p)).sum(axis=-1)
    w = np.ones(len(per)) if w is None else np.asarray(w, np.float64)
    return float((w * per).sum() / len(per)), per


def one_hot(labels, c):
    out = np.zeros((len(labels), c), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


@pytest.fixture(scope="module")
def base():
    """A small random base: features (N, 1, 1, 512)."""
    return vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess=None)


@pytest.fixture(scope="module")
def base_2x3():
    """A base whose features are (N, 2, 3, 512)."""
    return vggtl.VGG16(weights=None, input_shape=(64, 96, 3), preprocess=None)


def features(rng, n, shape=(1, 1, 512)):
    return rng.standard_normal((n,) + shape, dtype=np.float32)


def rule_labels(F, classes=2):
    """Learnable labels: a fixed rule on the first features."""
    s = F.reshape(len(F), -1)[:, :8].sum(axis=1)
    if classes == 2:
        return (s > 0).astype(np.int64)
    return np.digitize(s, np.quantile(s, np.linspace(0, 1, classes + 1)[1:-1]))


def model_of(base, units_acts, seed=0, dropout=None, opt=None, loss="binary_crossentropy"):
    """Flatten -> Dense(units, act) ... with an optional Dropout after the first Dense."""
    head = [vggtl.Flatten()]
    for i, (u, a) in enumerate(units_acts):
        head.append(vggtl.Dense(u, activation=a))
        if i == 0 and dropout is not None:
            head.append(vggtl.Dropout(dropout))
    m = vggtl.TransferModel(base, head=head, seed=seed)
    if opt is not None:
        m.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    return m


def np_head_logits(model, F, weights=None):
    """(pre-activation of the output layer, output) of the head (dropout off), float64."""
    w = model.get_weights() if weights is None else weights
    x = np.asarray(F, np.float64).reshape(len(F), -1)
    z = None
    for layer in model.layers[1:]:
        if isinstance(layer, vggtl.Dense):
            k, b = w[layer.name]
            z = x @ k.astype(np.float64) + b
            x = act64(z, layer.activation)
    return z, x


def np_head_forward(model, F, weights=None):
    """The head's forward (dropout off) in float64 NumPy."""
    return np_head_logits(model, F, weights)[1]


def assert_weights_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0], err_msg=k)
        np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=k)


def weights_rel_err(a, b):
    return max(max(rel_err(a[k][0], b[k][0]), rel_err(a[k][1], b[k][1])) for k in b)


class Recorder(vggtl.Callback):
    """Keeps the weights and logs at the end of every epoch."""

    def on_train_begin(self, logs=None):
        self.weights, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.logs.append(dict(logs))


# ---- 1. finite-difference gradients ------------------------------------------------

@pytest.mark.parametrize("n,i,o", [(1, 1, 1), (3, 7, 5), (6, 13, 4)])
def test_dense_backward_matches_finite_differences(rng, n, i, o):
    x = rng.standard_normal((n, i), dtype=np.float32)
    k = rng.standard_normal((i, o), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32)
    dz = rng.standard_normal((n, o), dtype=np.float32)  # dL/d(x @ k + b)
    R = dz.astype(np.float64)
    # the forward differenced is the C forward's (checked here) in float64
    np.testing.assert_allclose(_kernels.dense_forward(x, k, b, "linear"),
                               x.astype(np.float64) @ k + b, rtol=1e-5, atol=1e-5)
    X, K, B = (a.astype(np.float64) for a in (x, k, b))
    gx = num_grad(lambda v: (R * (v @ K + B)).sum(), X)
    gk = num_grad(lambda v: (R * (X @ v + B)).sum(), K)
    gb = num_grad(lambda v: (R * (X @ K + v)).sum(), B)
    dx, dw, db = _kernels.dense_backward(dz, x, k)
    assert rel_err(dx, gx) < GRAD_RTOL and rel_err(dw, gk) < GRAD_RTOL and rel_err(db, gb) < GRAD_RTOL
    dx2, dw2, db2 = _kernels.dense_backward(dz, x, k, need_dx=False)
    assert dx2 is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "softmax"])
def test_activation_backward_matches_finite_differences(rng, activation):
    z = rng.standard_normal((5, 6), dtype=np.float32) * np.float32(2)
    if activation == "relu":  # stay away from the kink
        z = np.where(np.abs(z) < 0.1, np.float32(0.5), z).astype(np.float32)
    dy = rng.standard_normal((5, 6), dtype=np.float32)
    y = _kernels.activation_forward(z, activation)
    np.testing.assert_allclose(y, act64(z, activation), rtol=1e-6, atol=1e-7)
    R = dy.astype(np.float64)
    g = num_grad(lambda v: (R * act64(v, activation)).sum(), z.astype(np.float64))
    got = _kernels.activation_backward(dy, y, activation)
    assert rel_err(got, g) < GRAD_RTOL
    if activation == "relu":
        np.testing.assert_array_equal(got[z < 0], 0.0)
        np.testing.assert_array_equal(got[z > 0], dy[z > 0])


def _loss_case(rng, kind, n=4, c=3):
    """yhat (float32), targets for the core, and the NumPy loss of float64 yhat."""
    if kind == 0:  # BCE on softmax outputs with one-hot targets
        yhat = act64(rng.standard_normal((n, c)) * 2, "softmax").astype(np.float32)
        labels = rng.integers(0, c, n)
        t = one_hot(labels, c)
        f = lambda v, w=None: np_bce(v, t, w)  # noqa: E731
    else:  # CCE / sparse: yhat need not sum to 1 (Keras normalises it)
        yhat = rng.uniform(0.05, 1.0, (n, c)).astype(np.float32)
        labels = rng.integers(0, c, n)
        t = one_hot(labels, c) if kind == 1 else labels.astype(np.int32)
        if kind == 1:
            f = lambda v, w=None: np_cce(v, one_hot(labels, c), w)  # noqa: E731
        else:
            f = lambda v, w=None: np_sparse(v, labels, w)  # noqa: E731
    return yhat, t, f


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("kind", [0, 1, 2], ids=["bce", "cce", "sparse"])
def test_loss_matches_keras_and_finite_differences(rng, kind, weighted):
    yhat, t, f = _loss_case(rng, kind)
    w = rng.uniform(0.2, 3.0, len(yhat)).astype(np.float32) if weighted else None
    loss, d, per = _kernels.loss_forward_backward(yhat, t, kind, sample_weight=w)
    ref, ref_per = f(yhat.astype(np.float64), w)
    assert math.isclose(loss, ref, rel_tol=1e-6)
    np.testing.assert_allclose(per, ref_per, rtol=1e-6)
    g = num_grad(lambda v: f(v, w)[0], yhat.astype(np.float64), h=1e-6)
    assert rel_err(d, g) < GRAD_RTOL


def test_loss_known_values():
    # BCE on probabilities (a linear output), one-hot target: mean of the two
    # per-unit terms, each with TensorFlow's Keras's + 1e-7 inside the log
    yhat = np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    y = np.array([[1, 0], [1, 0]], dtype=np.float32)
    loss, _, per = _kernels.loss_forward_backward(yhat, y, 0)
    p = yhat.astype(np.float64)
    e = 1e-7
    assert math.isclose(per[0], -math.log(p[0, 0] + e), rel_tol=1e-6)  # both units: -ln 0.8
    assert math.isclose(per[1], -(math.log(p[1, 0] + e) + math.log(1 + e - p[1, 1])) / 2,
                        rel_tol=1e-6)
    assert math.isclose(loss, (per[0] + per[1]) / 2, rel_tol=1e-6)
    # CCE of an unnormalised row: -ln(2/(2+6)) = ln 4 (normalised, then clipped)
    yhat = np.array([[2.0, 6.0]], dtype=np.float32)
    assert math.isclose(_kernels.loss_forward_backward(yhat, np.array([[1, 0]], np.float32), 1)[0],
                        math.log(4), rel_tol=1e-6)
    # sparse CCE clips first (both to 1 - 1e-7), then normalises: ln 2 (TensorFlow's order)
    assert math.isclose(_kernels.loss_forward_backward(yhat, np.array([0], np.int32), 2)[0],
                        math.log(2), rel_tol=1e-6)
    # on logits (softmax / sigmoid outputs): BCE of z = 0 is ln 2 per unit; CCE of
    # z = (0, ln 3) for class 0 is -ln(1/4) = ln 4
    z = np.array([[0.0, math.log(3)]], dtype=np.float32)
    assert math.isclose(_kernels.loss_forward_backward(np.zeros((1, 2), np.float32),
                                                    np.array([[1, 0]], np.float32), 0,
                                                    activation="softmax")[0],
                        math.log(2), rel_tol=1e-6)
    for kind, t in ((1, np.array([[1, 0]], np.float32)), (2, np.array([0], np.int32))):
        assert math.isclose(_kernels.loss_forward_backward(z, t, kind, activation="softmax")[0],
                            math.log(4), rel_tol=1e-6)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("kind", [0, 1, 2], ids=["bce", "cce", "sparse"])
def test_loss_on_logits_matches_tensorflow_formulas(rng, kind, weighted, activation):
    # a softmax / sigmoid output: the loss reads the logits, whatever the activation,
    # and its gradient with respect to them never vanishes, even saturated
    n, c = 5, 3
    z = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    z[0] = [60.0, -60.0, 0.0]  # saturated: softmax and sigmoid give exact 0s and 1s
    labels = rng.integers(0, c, n)
    labels[0] = 1  # confidently wrong
    t = one_hot(labels, c) if kind < 2 else labels.astype(np.int32)
    w = rng.uniform(0.2, 3.0, n).astype(np.float32) if weighted else None
    loss, d, per = _kernels.loss_forward_backward(z, t, kind, sample_weight=w, activation=activation)
    ref, ref_per = np_logits_loss(z, t if kind < 2 else labels, kind, w)
    assert math.isclose(loss, ref, rel_tol=1e-6)
    np.testing.assert_allclose(per, ref_per, rtol=1e-6)
    g = num_grad(lambda v: np_logits_loss(v, t if kind < 2 else labels, kind, w)[0],
                 z.astype(np.float64), h=1e-4)
    assert rel_err(d, g) < GRAD_RTOL
    assert np.abs(d[0]).max() > 1e-3  # the saturated row still moves


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_bce_gradient_is_zero_beyond_the_clip(rng, weighted):
    # entries beyond [1e-7, 1 - 1e-7] (0, 1e-9, 1 - 1e-9 -> 1.0 in float32, exactly 1)
    yhat = np.array([[0.0, 1.0], [1e-9, 1.0], [0.4, 0.6], [1.0, 1e-12]], dtype=np.float32)
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    w = np.array([2.0, 0.5, 1.5, 1.0], np.float32) if weighted else None
    loss, d, per = _kernels.loss_forward_backward(yhat, y, 0, sample_weight=w)
    outside = (yhat < LO) | (yhat > HI)
    assert outside.sum() == 6
    np.testing.assert_array_equal(d[outside], 0.0)
    assert (d[~outside] != 0).all()
    ref, ref_per = np_bce(yhat, y, w)
    np.testing.assert_allclose(per, ref_per, rtol=1e-6)
    assert math.isclose(loss, ref, rel_tol=1e-6)
    # fully wrong and clipped: the mean of -ln(1e-7 + 1e-7) and -ln((1 + 2^-23) - (1 - 2^-23))
    # (1 - 1e-7 and 1 + 1e-7 round to those in float32), as TensorFlow's Keras gives in fit
    assert math.isclose(per[0], (-math.log(2e-7) - math.log(2.0 ** -22)) / 2, rel_tol=1e-6)
    assert math.isclose(per[0], 15.337093, rel_tol=1e-6)
    # inside the clip the gradient still matches finite differences
    h = np.where(outside, 1e-12, 1e-6)  # steps that do not cross the clip bounds
    g = num_grad(lambda v: np_bce(v, y, w)[0], yhat.astype(np.float64), h=h)
    assert rel_err(d, g) < GRAD_RTOL


@pytest.mark.parametrize("kind", [1, 2], ids=["cce", "sparse"])
def test_cce_gradient_is_zero_beyond_the_clip(kind):
    # row 0: the true class has q = 1 (> 1 - 1e-7); row 1: the true class has
    # q < 1e-7. Either way its term is constant and the gradient of the row is 0.
    yhat = np.array([[0.0, 1.0, 0.0], [1e-9, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=np.float32)
    labels = np.array([1, 0, 2])
    t = one_hot(labels, 3) if kind == 1 else labels.astype(np.int32)
    loss, d, per = _kernels.loss_forward_backward(yhat, t, kind)
    if kind == 1:
        np.testing.assert_array_equal(d[:2], 0.0)
        ref, ref_per = np_cce(yhat, one_hot(labels, 3))
        assert math.isclose(per[1], -math.log(float(LO)), rel_tol=1e-6)
    else:  # clipped entries get no gradient; the others still see the normalisation
        outside = (yhat < LO) | (yhat > HI)
        np.testing.assert_array_equal(d[outside], 0.0)
        ref, ref_per = np_sparse(yhat, labels)
    assert (d[2] != 0).all()
    np.testing.assert_allclose(per, ref_per, rtol=1e-6)
    assert math.isclose(loss, ref, rel_tol=1e-6)


def test_cce_clipped_entry_still_gets_the_normalisation_gradient(rng):
    # a class with q < 1e-7 that is not the target: its own term is 0, but it
    # changes sum(yhat), so its gradient is -<g, q>/S, not 0 (as Keras/torch)
    yhat = np.array([[1e-9, 0.3, 0.7]], dtype=np.float32)
    t = one_hot([1], 3)
    _, d, _ = _kernels.loss_forward_backward(yhat, t, 1)
    h = np.array([[1e-11, 1e-7, 1e-7]])
    g = num_grad(lambda v: np_cce(v, t)[0], yhat.astype(np.float64), h=h)
    assert rel_err(d, g) < GRAD_RTOL
    assert d[0, 0] > 0


def test_dropout_mask_scaling_and_streams(rng):
    n = 200_000
    x = rng.standard_normal(n, dtype=np.float32)
    for rate in (0.1, 0.5, 0.8):
        y = _kernels.dropout_forward(x, rate, 42, 7)
        keep = y != 0
        scale = np.float32(1.0) / (np.float32(1.0) - np.float32(rate))
        # keep rate 1 - rate (5 standard deviations)
        assert abs(keep.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)
        # kept units scaled by exactly 1/(1 - rate), others 0
        np.testing.assert_array_equal(y, np.where(keep, x * scale, np.float32(0)))
        # backward applies exactly forward's mask and scale
        dy = rng.standard_normal(n, dtype=np.float32)
        np.testing.assert_array_equal(_kernels.dropout_backward(dy, rate, 42, 7),
                                      np.where(keep, dy * scale, np.float32(0)))
        # same (seed, stream): same mask; another stream or seed: a different one
        np.testing.assert_array_equal(_kernels.dropout_forward(x, rate, 42, 7), y)
        for other in (_kernels.dropout_forward(x, rate, 42, 8), _kernels.dropout_forward(x, rate, 43, 7)):
            differ = (other != 0) != keep
            # independent masks disagree on a fraction 2 r (1 - r)
            assert abs(differ.mean() - 2 * rate * (1 - rate)) < 0.01
    # rate 0 is the identity; shapes are kept
    x2 = rng.standard_normal((3, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(_kernels.dropout_forward(x2, 0.0, 1, 2), x2)


def _splitmix_keep(n, rate, seed, stream):
    """The documented mask (rng.c): unit i is kept when draw i of (seed, stream),
    the top 24 bits of splitmix64(key + i) with key = splitmix64(seed ^
    splitmix64(stream)), is >= rate. On 1-element arrays: uint64 wraps silently."""
    u64 = np.uint64

    def mix(z):
        z = z + u64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
        return z ^ (z >> u64(31))
    key = mix(np.array([seed], u64) ^ mix(np.array([stream], u64)))
    draws = (mix(key + np.arange(n, dtype=u64)) >> u64(40)).astype(np.float32)
    return draws * np.float32(1.0 / 16777216.0) >= np.float32(rate)


def test_dropout_mask_is_the_counter_based_draw(rng):
    # the exact mask, against a NumPy splitmix64: a saved run retrains to the
    # same weights with a later build; dropped units are +0.0 whatever x was
    # (NaN and -0.0 included)
    x = rng.standard_normal(50_000, dtype=np.float32)
    x[:4] = [np.nan, -0.0, -np.inf, -1.0]
    for rate, seed, stream in ((0.5, 42, 7), (0.1, 0, 0), (0.8, 2**63 + 5, 123456789)):
        keep = _splitmix_keep(len(x), rate, seed, stream)
        y = _kernels.dropout_forward(x, rate, seed, stream)
        scale = np.float32(1.0) / (np.float32(1.0) - np.float32(rate))
        np.testing.assert_array_equal(y, np.where(keep, x * scale, np.float32(0)))
        assert not np.signbit(y[~keep]).any()


def test_dropout_gradient_is_the_masked_scaled_upstream(rng):
    # dropout is linear in x: d/dx sum(R * dropout(x)) by finite differences
    x = rng.standard_normal(40, dtype=np.float32)
    R = rng.standard_normal(40, dtype=np.float32)
    mask_scale = _kernels.dropout_forward(np.ones(40, np.float32), 0.4, 5, 3).astype(np.float64)
    np.testing.assert_allclose(_kernels.dropout_forward(x, 0.4, 5, 3), x * mask_scale, rtol=1e-7)
    g = num_grad(lambda v: (R * v * mask_scale).sum(), x.astype(np.float64))
    assert rel_err(_kernels.dropout_backward(R, 0.4, 5, 3), g) < GRAD_RTOL


def test_dropout_mask_independent_of_threads(rng, restore_threads):
    x = rng.standard_normal(100_003, dtype=np.float32)
    vggtl.set_num_threads(1)
    one = _kernels.dropout_forward(x, 0.5, 9, 1)
    vggtl.set_num_threads(2)
    np.testing.assert_array_equal(_kernels.dropout_forward(x, 0.5, 9, 1), one)


# ---- 3. parity with PyTorch -----------------------------------------------------------

class TorchHead:
    """The same head in torch, trained with the batch order fixed."""

    def __init__(self, model, weights):
        self.acts, self.params = [], []
        for layer in model.layers[1:]:
            if isinstance(layer, vggtl.Dense):
                k, b = weights[layer.name]
                self.params.append((layer.name, torch.tensor(k, requires_grad=True),
                                    torch.tensor(b, requires_grad=True)))
                self.acts.append(layer.activation)

    def tensors(self):
        return [t for _, k, b in self.params for t in (k, b)]

    def forward(self, x):
        """(output, pre-activation of the output layer)."""
        z = None
        for (_, k, b), act in zip(self.params, self.acts):
            x = z = x @ k + b
            if act == "relu":
                x = torch.relu(x)
            elif act == "sigmoid":
                x = torch.sigmoid(x)
            elif act == "softmax":
                x = torch.softmax(x, dim=-1)
        return x, z

    def weights(self):
        return {name: (k.detach().numpy().copy(), b.detach().numpy().copy())
                for name, k, b in self.params}  # of the dtype given


def torch_loss(yhat, y, loss, logits=None):
    """TensorFlow's Keras's losses, in torch: on the logits of a softmax / sigmoid
    output when given, else on probabilities (clipped)."""
    tf = torch.nn.functional
    if logits is not None:
        if loss == "binary_crossentropy":
            return tf.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1).mean()
        if loss == "sparse_categorical_crossentropy":
            return tf.cross_entropy(logits, y.long())
        return (-(y * tf.log_softmax(logits, dim=-1)).sum(dim=-1)).mean()
    if loss == "binary_crossentropy":
        p = torch.clamp(yhat, 1e-7, 1.0 - 1e-7)
        return (-(y * torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7))).mean(dim=-1).mean()
    if loss == "sparse_categorical_crossentropy":
        r = torch.clamp(yhat, 1e-7, 1.0 - 1e-7)
        return (-torch.log(r.gather(1, y.long()[:, None])[:, 0] / r.sum(dim=-1))).mean()
    q = yhat / yhat.sum(dim=-1, keepdim=True)
    p = torch.clamp(q, 1e-7, 1.0 - 1e-7)
    return (-(y * torch.log(p)).sum(dim=-1)).mean()


class KerasRule:
    """Keras's update rules written out in torch, legacy decay included."""

    def __init__(self, params, opt):
        self.params, self.opt, self.it = params, opt, 0
        self.s0 = [torch.zeros_like(p) for p in params]
        self.s1 = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self):
        o = self.opt
        lr = o.learning_rate / (1.0 + o.decay * self.it)
        for p, s0, s1 in zip(self.params, self.s0, self.s1):
            g = p.grad
            if isinstance(o, vggtl.Adam):
                t = self.it + 1
                alpha = lr * math.sqrt(1 - o.beta_2 ** t) / (1 - o.beta_1 ** t)
                s0 += (g - s0) * (1 - o.beta_1)
                s1 += (g * g - s1) * (1 - o.beta_2)
                p -= alpha * s0 / (torch.sqrt(s1) + o.epsilon)
            elif isinstance(o, vggtl.SGD):
                if o.momentum == 0:
                    p -= lr * g
                else:
                    s0.copy_(o.momentum * s0 - lr * g)
                    p += (o.momentum * s0 - lr * g) if o.nesterov else s0
            else:  # RMSprop (Keras 3)
                s0.copy_(o.rho * s0 + (1 - o.rho) * g * g)
                inc = lr * g / torch.sqrt(s0 + o.epsilon)
                if o.momentum > 0:
                    s1.copy_(o.momentum * s1 + inc)
                    p -= s1
                else:
                    p -= inc
        self.it += 1


def torch_train(model, weights, F, y_targets, loss, opt, epochs, batch, torch_sgd=False):
    """Per-epoch losses (Keras's batch-size weighted mean), accuracies and final
    weights, computed in float64: the oracle's own rounding then stays far below
    the tolerances, which measure vggtl's float32 error alone."""
    weights = {k: (kb[0].astype(np.float64), kb[1].astype(np.float64)) for k, kb in weights.items()}
    F = F.astype(np.float64)
    if y_targets.dtype.kind == "f":
        y_targets = y_targets.astype(np.float64)
    net = TorchHead(model, weights)
    params = net.tensors()
    if torch_sgd:
        rule = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum)
    else:
        rule = KerasRule(params, opt)
    X = torch.tensor(F.reshape(len(F), -1))
    Y = torch.tensor(y_targets)
    n, losses, accs = len(F), [], []
    for _ in range(epochs):
        total, correct = 0.0, 0
        for i0 in range(0, n, batch):
            xb, yb = X[i0:i0 + batch], Y[i0:i0 + batch]
            for p in params:
                p.grad = None
            yhat, z = net.forward(xb)
            value = torch_loss(yhat, yb, loss, z if net.acts[-1] in ("softmax", "sigmoid") else None)
            value.backward()
            rule.step()
            total += float(value.detach()) * len(xb)
            correct += int(keras3_correct(yhat.detach().numpy(), yb.numpy()).sum())
        losses.append(total / n)
        accs.append(correct / n)
    return np.array(losses), net.weights(), accs


def keras3_correct(yhat, y):
    """Keras 3's "accuracy": binary (> 0.5) for one unit, else argmax against the
    label (sparse) or the one-hot row's argmax."""
    if yhat.shape[1] == 1:
        return (yhat[:, 0] > 0.5) == (y.reshape(-1) > 0.5)
    truth = y if y.ndim == 1 else y.argmax(1)
    return yhat.argmax(1) == truth


PARITY_CASES = {
    # the tutorial's recipe: Adam with legacy decay, BCE on a 2-way softmax
    "adam_decay_bce": ([(32, "relu"), (2, "softmax")], 0.0, "binary_crossentropy",
                       lambda: vggtl.Adam(learning_rate=1e-3, decay=1e-3 / 20), False, 2),
    # SGD with momentum against torch.optim.SGD (equal for a constant learning rate)
    "sgd_momentum_cce": ([(32, "relu"), (2, "softmax")], None, "categorical_crossentropy",
                         lambda: vggtl.SGD(learning_rate=1e-2, momentum=0.9), True, 2),
    "sgd_nesterov_cce": ([(32, "relu"), (2, "softmax")], None, "categorical_crossentropy",
                         lambda: vggtl.SGD(learning_rate=1e-2, momentum=0.9, nesterov=True),
                         False, 2),
    "rmsprop_cce": ([(32, "relu"), (2, "softmax")], None, "categorical_crossentropy",
                    lambda: vggtl.RMSprop(learning_rate=1e-3), False, 2),
    "rmsprop_momentum_decay_sparse": ([(16, "relu"), (3, "softmax")], None,
                                      "sparse_categorical_crossentropy",
                                      lambda: vggtl.RMSprop(learning_rate=1e-3, momentum=0.5,
                                                            decay=1e-2), False, 3),
    "adam_linear_sigmoid_sparse": ([(16, "linear"), (8, "sigmoid"), (3, "softmax")], None,
                                   "sparse_categorical_crossentropy",
                                   lambda: vggtl.Adam(learning_rate=3e-3), False, 3),
    # no ReLU here: with plain SGD a small ReLU layer drifts onto its kink (z ~ 1e-7),
    # where float32 and float64 may take different sides and the runs part
    "sgd_decay_sigmoid1_bce": ([(8, "sigmoid"), (1, "sigmoid")], None, "binary_crossentropy",
                               lambda: vggtl.SGD(learning_rate=0.1, decay=0.05), False, 2),
}


def _targets_for(model, labels):
    units = model.output_units
    if model.loss == "sparse_categorical_crossentropy":
        return labels.astype(np.int32)
    if units == 1:
        return labels.reshape(-1, 1).astype(np.float32)
    return one_hot(labels, units)


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_torch_50_steps(rng, base, case):
    head, dropout, loss, make_opt, torch_sgd, classes = PARITY_CASES[case]
    F = features(rng, 48)
    labels = rule_labels(F, classes)
    model = model_of(base, head, seed=3, dropout=dropout, opt=make_opt(), loss=loss)
    w0 = model.get_weights()
    # one update per epoch: history["loss"] is every step's loss (before its update)
    hist = model.fit_features(F, labels, batch_size=len(F), epochs=50, verbose=0, shuffle=False)
    ref_losses, ref_w, ref_acc = torch_train(model, w0, F, _targets_for(model, labels), loss,
                                             make_opt(), 50, len(F), torch_sgd)
    got = np.array(hist.history["loss"])
    assert len(got) == 50 and model.optimizer.iterations == 50
    assert ref_losses[-1] < ref_losses[0]  # it trained
    rel = np.abs(got - ref_losses) / np.abs(ref_losses)
    k = int(rel.argmax())
    assert rel[k] <= LOSS_RTOL, f"step {k}: loss {got[k]} vs torch {ref_losses[k]}"
    assert weights_rel_err(model.get_weights(), ref_w) <= WEIGHT_RTOL
    # every step's accuracy: Keras 3's rule applied to torch's outputs
    assert hist.history["accuracy"] == ref_acc


@pytest.mark.parametrize("make_opt,loss", [
    (lambda: vggtl.Adam(learning_rate=1e-3, decay=1e-3 / 20), "binary_crossentropy"),
    (lambda: vggtl.SGD(learning_rate=1e-2, momentum=0.9, nesterov=True), "categorical_crossentropy"),
], ids=["adam_bce", "nesterov_cce"])
def test_parity_with_torch_several_batches_per_epoch(rng, base, make_opt, loss):
    # 58 samples in batches of 16: 3 full batches and one of 10, 6 epochs
    F = features(rng, 58)
    labels = rule_labels(F)
    model = model_of(base, [(32, "relu"), (2, "softmax")], seed=5, dropout=0.0, opt=make_opt(),
                     loss=loss)
    w0 = model.get_weights()
    hist = model.fit_features(F, labels, batch_size=16, epochs=6, verbose=0, shuffle=False)
    assert model.optimizer.iterations == 24
    ref_losses, ref_w, ref_acc = torch_train(model, w0, F, one_hot(labels, 2), loss, make_opt(),
                                             6, 16)
    np.testing.assert_allclose(hist.history["loss"], ref_losses, rtol=LOSS_RTOL)
    assert hist.history["accuracy"] == ref_acc
    assert weights_rel_err(model.get_weights(), ref_w) <= WEIGHT_RTOL


def test_epoch_accuracy_is_counted_before_each_update(rng, base):
    # batch = N: the epoch's accuracy is that of the weights before its update
    F = features(rng, 40)
    labels = rule_labels(F)
    model = model_of(base, [(16, "relu"), (2, "softmax")], opt=vggtl.SGD(learning_rate=0.05),
                     loss="categorical_crossentropy")
    before = model.predict_features(F)
    loss_before = np_model_loss(model, F, one_hot(labels, 2))[0]
    hist = model.fit_features(F, labels, batch_size=40, epochs=1, verbose=0, shuffle=False)
    assert hist.history["accuracy"][0] == np.mean(before.argmax(1) == labels)
    assert math.isclose(hist.history["loss"][0], loss_before, rel_tol=1e-6)


# ---- 5. determinism ---------------------------------------------------------------------

def _train_with_dropout(base, F, labels, seed, shuffle=True, epochs=3):
    m = model_of(base, [(32, "relu"), (2, "softmax")], seed=seed, dropout=0.5,
                 opt=vggtl.Adam(learning_rate=1e-3, decay=1e-3 / 20))
    h = m.fit_features(F, labels, batch_size=16, epochs=epochs, verbose=0, shuffle=shuffle)
    return m.get_weights(), h.history


def test_same_seed_is_bit_identical(rng, base):
    F = features(rng, 64)
    labels = rule_labels(F)
    w1, h1 = _train_with_dropout(base, F, labels, seed=11)
    w2, h2 = _train_with_dropout(base, F, labels, seed=11)
    assert_weights_equal(w1, w2)
    assert h1 == h2
    # a different seed: different initialisation, shuffles and masks
    w3, h3 = _train_with_dropout(base, F, labels, seed=12)
    assert all(not np.array_equal(w1[k][0], w3[k][0]) for k in w1)
    assert h1["loss"] != h3["loss"]


def test_same_initial_weights_differ_only_by_shuffle_and_dropout(rng, base):
    # with the initial weights fixed, the seed still drives the shuffle and the
    # masks: proves both are active during training
    F = features(rng, 64)
    labels = rule_labels(F)
    runs = {}
    for name, seed, dropout, shuffle in [("ref", 1, 0.5, True), ("seed", 2, 0.5, True),
                                         ("noshuffle", 1, 0.5, False), ("nodrop", 1, 0.0, True)]:
        m = model_of(base, [(32, "relu"), (2, "softmax")], seed=seed, dropout=dropout,
                     opt=vggtl.SGD(learning_rate=0.05))
        m.set_weights(model_of(base, [(32, "relu"), (2, "softmax")], seed=1).get_weights())
        m.fit_features(F, labels, batch_size=16, epochs=2, verbose=0, shuffle=shuffle)
        runs[name] = m.get_weights()
    for name in ("seed", "noshuffle", "nodrop"):
        assert not np.array_equal(runs[name]["dense"][0], runs["ref"]["dense"][0]), name


def test_one_and_two_threads_agree(rng, base, restore_threads, tol):
    F = features(rng, 64)
    labels = rule_labels(F)
    vggtl.set_num_threads(1)
    w1, h1 = _train_with_dropout(base, F, labels, seed=4, epochs=2)
    vggtl.set_num_threads(2)
    w2, h2 = _train_with_dropout(base, F, labels, seed=4, epochs=2)
    assert weights_rel_err(w2, w1) <= tol.threads
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=tol.threads)
    assert h2["accuracy"] == h1["accuracy"]


# ---- 6. the fit API ---------------------------------------------------------------------

def test_history_keys_and_validation_values(rng, base):
    F, vF = features(rng, 40), features(rng, 24)
    y, vy = rule_labels(F), rule_labels(vF)
    model = model_of(base, [(16, "relu"), (2, "softmax")], opt=vggtl.Adam(learning_rate=1e-3))
    hist = model.fit_features(F, y, batch_size=8, epochs=3, verbose=0, validation_data=(vF, vy))
    assert isinstance(hist, vggtl.History) and model.history is hist
    assert list(hist.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 3 for v in hist.history.values()) and hist.epoch == [0, 1, 2]
    # the last epoch's validation values are evaluate's on the final weights
    val_loss, _ = model.evaluate_features(vF, vy, batch_size=8)
    assert hist.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-12)
    p = model.predict_features(vF)
    assert math.isclose(hist.history["val_loss"][-1], np_model_loss(model, vF, one_hot(vy, 2))[0],
                        rel_tol=1e-6)
    assert hist.history["val_accuracy"][-1] == np.mean(p.argmax(1) == vy)
    # without validation: only loss and accuracy; without metrics: only loss
    h2 = model.fit_features(F, y, batch_size=8, epochs=1, verbose=0)
    assert list(h2.history) == ["loss", "accuracy"]
    m3 = model_of(base, [(2, "softmax")])
    m3.compile(optimizer="adam", loss="binary_crossentropy")
    assert list(m3.fit_features(F, y, epochs=1, verbose=0).history) == ["loss"]


def test_verbose_prints_one_line_per_epoch(rng, base, capsys):
    F = features(rng, 16)
    model = model_of(base, [(2, "softmax")], opt="sgd")
    model.fit_features(F, rule_labels(F), batch_size=8, epochs=2, verbose=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("Epoch 1/2") and out[1].startswith("Epoch 2/2")
    assert "loss: " in out[0] and "accuracy: " in out[0]


def test_validation_split_takes_the_last_fraction(rng, base):
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    a = model_of(base, [(8, "relu"), (2, "softmax")], seed=2, opt=vggtl.SGD(learning_rate=0.1))
    ha = a.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_split=0.25, shuffle=False)
    b = model_of(base, [(8, "relu"), (2, "softmax")], seed=2, opt=vggtl.SGD(learning_rate=0.1))
    Ftr, Fva = b.features(x[:6], batch_size=32), b.features(x[6:], batch_size=32)
    hb = b.fit_features(Ftr, y[:6], batch_size=4, epochs=2, verbose=0,
                        validation_data=(Fva, y[6:]), shuffle=False)
    assert ha.history == hb.history
    assert_weights_equal(a.get_weights(), b.get_weights())
    val_loss, _ = a.evaluate(x[6:], y[6:], batch_size=4)
    assert ha.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-12)
    # predict on images is predict_features on the base's features
    assert np.array_equal(a.predict(x), a.predict_features(a.features(x)))


def test_initial_epoch_and_metric_alias(rng, base):
    F = features(rng, 16)
    y = rule_labels(F)
    m = model_of(base, [(4, "relu"), (2, "softmax")])
    m.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["acc"])
    h = m.fit_features(F, y, batch_size=8, epochs=3, initial_epoch=1, verbose=0)
    assert h.epoch == [1, 2] and list(h.history) == ["loss", "accuracy"]
    assert m.optimizer.iterations == 4


def test_gap_head_trains_as_flatten_on_averaged_features(rng, base, base_2x3):
    # the reduction only feeds the head: GAP on (2, 3, 512) maps trains exactly as
    # Flatten on their (1, 1, 512) means, from the same initial weights
    F = rng.standard_normal((24, 2, 3, 512), dtype=np.float32)
    mean = F.astype(np.float64).mean(axis=(1, 2)).astype(np.float32).reshape(24, 1, 1, 512)
    y = rule_labels(mean)
    a = vggtl.TransferModel(base_2x3, head=[vggtl.GlobalAveragePooling2D(),
                                            vggtl.Dense(8, activation="relu"),
                                            vggtl.Dense(2, activation="softmax")], seed=3)
    b = model_of(base, [(8, "relu"), (2, "softmax")], seed=3)
    assert_weights_equal(a.get_weights(), b.get_weights())
    for m in (a, b):
        m.compile(optimizer=vggtl.Adam(learning_rate=1e-2), loss="binary_crossentropy",
                  metrics=["accuracy"])
    ha = a.fit_features(F, y, batch_size=8, epochs=3, verbose=0)
    hb = b.fit_features(mean, y, batch_size=8, epochs=3, verbose=0)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)
    assert weights_rel_err(a.get_weights(), b.get_weights()) < 1e-5


def test_float16_features_train_as_their_float32_values(rng, base):
    F16 = features(rng, 24).astype(np.float16)
    y = rule_labels(F16.astype(np.float32))
    runs = []
    for F in (F16, F16.astype(np.float32)):
        m = model_of(base, [(8, "relu"), (2, "softmax")], opt=vggtl.Adam(learning_rate=1e-2))
        h = m.fit_features(F, y, batch_size=8, epochs=2, verbose=0)
        runs.append((h.history, m.get_weights(), m.predict_features(F)))
    assert runs[0][0] == runs[1][0]
    assert_weights_equal(runs[0][1], runs[1][1])
    assert np.array_equal(runs[0][2], runs[1][2])


def _manual_train(model, F, targets, sw, lr, steps):
    """The head trained with the core's primitives, batch = N, plain SGD."""
    w = model.get_weights()
    (k1, b1), (k2, b2) = w["dense"], w["dense_1"]
    x = F.reshape(len(F), -1)
    tup = vggtl.SGD(learning_rate=lr).core_spec()
    losses = []
    for it in range(steps):
        h = _kernels.dense_forward(x, k1, b1, "relu")
        z = _kernels.dense_forward(h, k2, b2, "linear")  # the softmax's logits: the loss reads them
        loss, d, _ = _kernels.loss_forward_backward(z, targets, 0, sample_weight=sw,
                                                 activation="softmax")
        losses.append(loss)
        dh, dk2, db2 = _kernels.dense_backward(d, h, k2)
        _, dk1, db1 = _kernels.dense_backward(_kernels.activation_backward(dh, h, "relu"), x, k1,
                                           need_dx=False)
        for param, grad in ((k1, dk1), (b1, db1), (k2, dk2), (b2, db2)):
            _kernels.optimizer_step(param, grad, None, None, tup, it)
    return losses, {"dense": (k1, b1), "dense_1": (k2, b2)}


def test_class_weight_is_per_sample_weight(rng, base):
    F = features(rng, 30)
    y = rule_labels(F)
    cw = {0: 0.5, 1: 3.0}
    model = model_of(base, [(16, "relu"), (2, "softmax")], seed=8, opt=vggtl.SGD(learning_rate=0.1))
    p0 = model.predict_features(F)
    sw = np.array([cw[c] for c in y], np.float32)
    man_losses, man_w = _manual_train(model, F, one_hot(y, 2), sw, 0.1, 3)
    hist = model.fit_features(F, y, batch_size=30, epochs=3, verbose=0, shuffle=False,
                              class_weight=cw)
    # the first step's loss: sum_i w_i l_i / n on the initial weights (NumPy)
    l0 = np_model_loss(model_of(base, [(16, "relu"), (2, "softmax")], seed=8,
                                opt=vggtl.SGD(learning_rate=0.1)), F, one_hot(y, 2), sw)[0]
    assert math.isclose(hist.history["loss"][0], l0, rel_tol=1e-6)
    assert not math.isclose(hist.history["loss"][0],
                            np_model_loss(model_of(base, [(16, "relu"), (2, "softmax")], seed=8,
                                                   opt=vggtl.SGD(learning_rate=0.1)),
                                          F, one_hot(y, 2))[0], rel_tol=1e-3)
    np.testing.assert_allclose(hist.history["loss"], man_losses, rtol=1e-6)
    assert weights_rel_err(model.get_weights(), man_w) <= 1e-6
    # class weights of 1 change nothing
    m1 = model_of(base, [(16, "relu"), (2, "softmax")], seed=8, opt=vggtl.SGD(learning_rate=0.1))
    m2 = model_of(base, [(16, "relu"), (2, "softmax")], seed=8, opt=vggtl.SGD(learning_rate=0.1))
    h1 = m1.fit_features(F, y, batch_size=8, epochs=2, verbose=0, class_weight={0: 1.0, 1: 1.0})
    h2 = m2.fit_features(F, y, batch_size=8, epochs=2, verbose=0)
    assert h1.history == h2.history
    assert_weights_equal(m1.get_weights(), m2.get_weights())


def test_early_stopping_restores_the_best_weights(rng, base):
    # training labels follow a rule with 30% flipped; validation labels follow the
    # rule: val_loss falls for a few epochs, then rises as the head fits the noise
    F = features(rng, 64)
    y = rule_labels(F)
    y = np.where(rng.random(64) < 0.3, 1 - y, y)
    vF = features(rng, 64)
    vy = rule_labels(vF)
    model = model_of(base, [(32, "relu"), (2, "softmax")], seed=1,
                     opt=vggtl.Adam(learning_rate=1e-3))
    rec = Recorder()
    es = vggtl.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    hist = model.fit_features(F, y, batch_size=16, epochs=30, verbose=0, validation_data=(vF, vy),
                              callbacks=[rec, es])
    val = hist.history["val_loss"]
    best = int(np.argmin(val))
    assert 0 < best, "the scenario needs a best epoch after the first"
    assert len(val) == best + 3  # stopped after `patience` epochs without improvement
    assert es.best_epoch == best and es.stopped_epoch == len(val) - 1
    assert_weights_equal(model.get_weights(), rec.weights[best])
    assert not np.array_equal(model.get_weights()["dense"][0], rec.weights[-1]["dense"][0])
    # evaluation uses the restored weights
    assert model.evaluate_features(vF, vy, batch_size=16)[0] == pytest.approx(val[best], rel=1e-12)
    # without restore_best_weights the last epoch's weights stay
    m2 = model_of(base, [(32, "relu"), (2, "softmax")], seed=1, opt=vggtl.Adam(learning_rate=1e-3))
    rec2 = Recorder()
    h2 = m2.fit_features(F, y, batch_size=16, epochs=30, verbose=0, validation_data=(vF, vy),
                         callbacks=[rec2, vggtl.EarlyStopping(monitor="val_loss", patience=2)])
    assert h2.history == hist.history
    assert_weights_equal(m2.get_weights(), rec2.weights[-1])


def test_string_labels(rng, base):
    F = features(rng, 24)
    y = rule_labels(F)
    names = np.array(["cat", "dog"])[y]
    a = model_of(base, [(8, "relu"), (2, "softmax")], seed=4, opt=vggtl.SGD(learning_rate=0.1))
    b = model_of(base, [(8, "relu"), (2, "softmax")], seed=4, opt=vggtl.SGD(learning_rate=0.1))
    ha = a.fit_features(F, names, batch_size=8, epochs=2, verbose=0,
                        validation_data=(F[:6], names[:6]))
    hb = b.fit_features(F, y, batch_size=8, epochs=2, verbose=0, validation_data=(F[:6], y[:6]))
    assert a.classes_.tolist() == ["cat", "dog"]
    assert ha.history == hb.history
    assert_weights_equal(a.get_weights(), b.get_weights())
    assert a.evaluate_features(F, names) == b.evaluate_features(F, y)
    with pytest.raises(ValueError, match="'bird' is not among the classes"):
        a.evaluate_features(F[:2], np.array(["cat", "bird"]))


def test_evaluate_matches_numpy(rng, base):
    F = features(rng, 50)
    y = rule_labels(F)
    model = model_of(base, [(16, "relu"), (2, "softmax")], opt=vggtl.Adam(learning_rate=1e-3))
    model.fit_features(F, y, batch_size=16, epochs=2, verbose=0)
    p = model.predict_features(F, batch_size=7)
    np.testing.assert_allclose(p, np_head_forward(model, F), rtol=1e-5, atol=1e-7)
    loss, acc = model.evaluate_features(F, y, batch_size=16)
    assert math.isclose(loss, np_model_loss(model, F, one_hot(y, 2))[0], rel_tol=1e-6)
    assert acc == np.mean(p.argmax(1) == y)
    # one-hot labels give the same; batch size does not matter beyond rounding
    loss2, acc2 = model.evaluate_features(F, one_hot(y, 2), batch_size=50)
    assert math.isclose(loss2, loss, rel_tol=1e-6) and acc2 == acc


@pytest.mark.parametrize("mode", ["flatten", "gap", "gmp"])
def test_input_reductions_predict(rng, base_2x3, mode):
    # a head on a (2, 3, 512) map: the reduction then the dense layers, in NumPy
    m = vggtl.TransferModel(base_2x3,
                            head=[{"flatten": vggtl.Flatten, "gap": vggtl.GlobalAveragePooling2D,
                                   "gmp": vggtl.GlobalMaxPooling2D}[mode](),
                                  vggtl.Dense(5, activation="relu"),
                                  vggtl.Dense(3, activation="softmax")])
    assert m.feature_shape == (2, 3, 512)
    F = rng.standard_normal((4, 2, 3, 512), dtype=np.float32)
    x = {"flatten": F.reshape(4, -1), "gap": F.astype(np.float64).mean(axis=(1, 2)),
         "gmp": F.max(axis=(1, 2))}[mode]
    w = m.get_weights()
    h = act64(np.asarray(x, np.float64) @ w["dense"][0] + w["dense"][1], "relu")
    ref = act64(h @ w["dense_1"][0] + w["dense_1"][1], "softmax")
    np.testing.assert_allclose(m.predict_features(F), ref, rtol=1e-5, atol=1e-7)


def test_save_load_round_trip(rng, base, tmp_path):
    F = features(rng, 30)
    names = np.array(["a", "b"])[rule_labels(F)]
    opt = vggtl.SGD(learning_rate=0.1, decay=0.01)
    model = model_of(base, [(16, "relu"), (2, "softmax")], dropout=0.25, opt=opt,
                     loss="binary_crossentropy")
    model.fit_features(F, names, batch_size=8, epochs=2, verbose=0)
    path = tmp_path / "m.vggtl"
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.vggtl"]  # no temporary file left
    loaded = vggtl.load_model(path)
    assert np.array_equal(loaded.predict_features(F), model.predict_features(F))
    assert_weights_equal(loaded.get_weights(), model.get_weights())
    assert loaded.evaluate_features(F, names) == model.evaluate_features(F, names)
    # compile state: optimizer (class, hyperparameters, updates done), loss, metrics
    assert type(loaded.optimizer) is vggtl.SGD
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations == 8
    assert loaded.loss == "binary_crossentropy" and loaded.metrics == ["accuracy"]
    assert loaded.classes_.tolist() == ["a", "b"]
    assert [type(l).__name__ for l in loaded.layers] == ["Flatten", "Dense", "Dropout", "Dense"]
    assert loaded.layers[2].rate == 0.25 and loaded.seed == model.seed
    # plain SGD has no optimizer state and the dropout masks follow the update
    # count, which is saved: training goes on exactly as without the reload
    h1 = model.fit_features(F, names, batch_size=8, epochs=2, verbose=0, shuffle=False)
    h2 = loaded.fit_features(F, names, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert h1.history == h2.history
    assert_weights_equal(model.get_weights(), loaded.get_weights())
    assert loaded.optimizer.iterations == 16
    # Adam's configuration survives the JSON round trip
    adam = vggtl.Adam(learning_rate=2e-3, beta_1=0.8, epsilon=1e-6, decay=1e-4)
    assert vggtl.optim.get(adam.get_config()).core_spec() == adam.core_spec()


def test_accuracy_sigmoid_threshold_and_softmax_argmax(base):
    # 1-unit sigmoid: correct when (p > 0.5) == y; p = 0.5 exactly counts as 0
    F = np.zeros((6, 1, 1, 512), dtype=np.float32)
    F[:, 0, 0, 0] = [-2.0, 0.0, 0.0, 3.0, 0.1, -0.1]
    y = np.array([0, 1, 0, 1, 0, 1])
    m = vggtl.TransferModel(base, head=[vggtl.Dense(1, activation="sigmoid")])
    k = np.zeros((512, 1), np.float32)
    k[0, 0] = 1.0
    m.set_weights({"dense": (k, np.zeros(1, np.float32))})
    m.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    p = m.predict_features(F)
    assert p[1, 0] == 0.5 and p[2, 0] == 0.5
    loss, acc = m.evaluate_features(F, y)
    assert acc == 3 / 6  # [T, F, T, T, F, F]
    assert math.isclose(loss, np_model_loss(m, F, y.reshape(-1, 1))[0], rel_tol=1e-6)
    # 2-unit softmax with BCE: argmax (Keras 3's categorical accuracy); a tie picks class 0
    m2 = vggtl.TransferModel(base, head=[vggtl.Dense(2, activation="softmax")])
    k2 = np.zeros((512, 2), np.float32)
    k2[0] = [1.0, -1.0]
    m2.set_weights({"dense": (k2, np.zeros(2, np.float32))})
    m2.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["accuracy"])
    p2 = m2.predict_features(F)
    assert np.array_equal(p2[1], [0.5, 0.5])
    y2 = np.array([1, 0, 1, 0, 0, 0])  # argmax: [1, 0, 0, 0, 0, 1] -> 4 right
    assert m2.evaluate_features(F, y2)[1] == 4 / 6
    assert m2.evaluate_features(F, one_hot(y2, 2))[1] == 4 / 6
    # sparse CCE: argmax against the integer label
    m2.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss3, acc3 = m2.evaluate_features(F, y2)
    assert acc3 == 4 / 6 and math.isclose(loss3, np_model_loss(m2, F, y2)[0], rel_tol=1e-6)


def test_summary_counts_parameters(base):
    lines = []
    m = model_of(base, [(32, "relu"), (2, "softmax")], dropout=0.5)
    m.summary(print_fn=lines.append)
    text = lines[0]
    assert "dense (Dense)" in text and "(None, 32)" in text and "16,416" in text
    assert "dropout (Dropout)" in text and "dense_1 (Dense)" in text and "66" in text
    assert "Trainable params: 16,482" in text
    assert f"Non-trainable params: {base.count_params():,}" in text
    assert base.count_params() == 14_714_688


def test_glorot_uniform_initialisation(base):
    m = model_of(base, [(256, "relu"), (2, "softmax")], seed=3)
    k, b = m.get_weights()["dense"]
    limit = math.sqrt(6 / (512 + 256))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.99 * limit
    assert abs(k.std() - limit / math.sqrt(3)) < 0.01 * limit  # U(-l, l): std l/sqrt(3)
    np.testing.assert_array_equal(b, 0.0)
    again = model_of(base, [(256, "relu"), (2, "softmax")], seed=3)
    assert_weights_equal(m.get_weights(), again.get_weights())


# ---- 7. bad input -----------------------------------------------------------------------

@pytest.fixture
def compiled(base):
    return model_of(base, [(8, "relu"), (2, "softmax")], opt=vggtl.Adam(),
                    loss="categorical_crossentropy")


def test_labels_outside_the_output(rng, compiled):
    F = features(rng, 4)
    for bad in ([0, 1, 2, 0], [0, -1, 1, 0]):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
            compiled.fit_features(F, np.array(bad), verbose=0)
    compiled.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        compiled.fit_features(F, np.array([0, 1, 2, 0]), verbose=0)
    with pytest.raises(ValueError, match="fractional"):
        compiled.fit_features(F, np.array([0, 1, 0.5, 0]), verbose=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        compiled.fit_features(F[:2], [0, 1], validation_data=(F[:2], np.array([3, 0])), verbose=0)
    # core level: a sparse label outside [0, c)
    with pytest.raises(ValueError, match=r"label 3 at index 1 is outside \[0, 3\)"):
        _kernels.loss_forward_backward(np.full((2, 3), 1 / 3, np.float32), np.array([0, 3], np.int32), 2)


def test_one_hot_rows_of_the_wrong_width(rng, compiled):
    F = features(rng, 4)
    with pytest.raises(ValueError, match=r"one-hot rows \(n, 2\)"):
        compiled.fit_features(F, one_hot([0, 1, 2, 0], 3), verbose=0)
    with pytest.raises(ValueError, match="expected 4 labels"):
        compiled.fit_features(F, np.array([0, 1, 1]), verbose=0)
    m1 = vggtl.TransferModel(compiled.base, head=[vggtl.Dense(1, activation="sigmoid")])
    m1.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="0/1 labels"):
        m1.fit_features(F, np.array([0, 1, 2, 0]), verbose=0)


def test_unknown_names_and_bad_hyperparameters(compiled):
    with pytest.raises(ValueError, match="loss: expected one of"):
        compiled.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="optimizer: expected 'adam', 'sgd', 'rmsprop'"):
        compiled.compile(optimizer="adagrad", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="metrics: expected 'accuracy', 'AUC'"):
        compiled.compile(optimizer="adam", loss="binary_crossentropy", metrics=["precision"])
    for cls in (vggtl.Adam, vggtl.SGD, vggtl.RMSprop):
        for lr in (0.0, -1e-3, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="learning_rate: expected a finite number > 0"):
                cls(learning_rate=lr)
        with pytest.raises(ValueError, match="learning_rate"):
            cls(lr=0.0)
    with pytest.raises(ValueError, match="decay"):
        vggtl.Adam(decay=-1.0)
    with pytest.raises(TypeError, match="unexpected argument"):
        vggtl.Adam(learnig_rate=1e-3)
    # core level: learning rate <= 0 and an unknown optimizer kind
    p = np.zeros(3, np.float32)
    bad = {**vggtl.SGD().core_spec(), "learning_rate": 0.0}
    with pytest.raises(ValueError, match=r"\['learning_rate'\]: expected a finite number > 0"):
        _kernels.optimizer_step(p, p.copy(), None, None, bad, 0)
    bad = {**vggtl.SGD().core_spec(), "kind": 7}
    with pytest.raises(ValueError, match=r"\['kind'\]: expected OPT_SGD .* got 7"):
        _kernels.optimizer_step(p, p.copy(), None, None, bad, 0)
    with pytest.raises(ValueError, match="loss: expected 0"):
        _kernels.loss_forward_backward(np.full((1, 2), 0.5, np.float32), one_hot([0], 2), 3)


def test_lr_is_an_alias_of_learning_rate():
    a = vggtl.Adam(lr=1e-4, decay=1e-4 / 20)
    assert a.learning_rate == 1e-4 and a.decay == 5e-6
    assert a.core_spec() == vggtl.Adam(learning_rate=1e-4, decay=1e-4 / 20).core_spec()
    assert vggtl.SGD(lr=0.5).learning_rate == 0.5 and vggtl.RMSprop(lr=0.25).learning_rate == 0.25


def test_bad_fit_arguments(rng, base, compiled):
    F = features(rng, 4)
    y = np.array([0, 1, 1, 0])
    for bs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
            compiled.fit_features(F, y, batch_size=bs, verbose=0)
    with pytest.raises(ValueError, match="epochs"):
        compiled.fit_features(F, y, epochs=-1, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        compiled.fit(np.zeros((4, 32, 32, 3), np.uint8), y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="x: expected \\(n, ...\\) features of 512 values"):
        compiled.fit_features(rng.standard_normal((4, 2, 2, 512), dtype=np.float32), y, verbose=0)
    with pytest.raises(ValueError, match="class_weight: unknown class 5"):
        compiled.fit_features(F, y, class_weight={5: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="EarlyStopping: monitor 'val_loss'"):
        compiled.fit_features(F, y, callbacks=[vggtl.EarlyStopping()], verbose=0)
    fresh = model_of(base, [(8, "relu"), (2, "softmax")])
    with pytest.raises(RuntimeError, match="not compiled"):
        fresh.fit_features(F, y, verbose=0)
    with pytest.raises(RuntimeError, match="not compiled"):
        fresh.evaluate_features(F, y)


def test_nan_loss_stops_and_keeps_the_last_completed_epoch(rng, base):
    # a huge learning rate: Adam moves every weight by ~lr per update, so the
    # logits overflow to inf after a few epochs and the loss becomes NaN
    F = features(rng, 32)
    y = rule_labels(F)
    model = model_of(base, [(16, "relu"), (2, "softmax")], seed=0,
                     opt=vggtl.Adam(learning_rate=2e17), loss="categorical_crossentropy")
    rec = Recorder()
    with pytest.raises(FloatingPointError, match="NaN or infinite") as e:
        model.fit_features(F, y, batch_size=8, epochs=20, verbose=0, shuffle=False, callbacks=[rec])
    assert "weights of the last completed epoch were kept" in str(e.value)
    assert len(rec.weights) >= 1, "the failure should come after an epoch completed"
    w = model.get_weights()
    assert all(np.isfinite(a).all() for kb in w.values() for a in kb)
    assert_weights_equal(w, rec.weights[-1])
    assert model.optimizer.iterations == 4 * len(rec.weights)


def test_nan_weights_behind_a_finite_loss_are_not_kept(base):
    # class weights of 1e20: the loss guard (which looks at each batch's loss
    # before its update) saw finite losses while an update left NaN in the
    # weights and infinity in Adam's moments; fit returned normally with them, or
    # a later FloatingPointError said it kept "the last completed epoch's" NaN
    # weights (was). Each epoch's end is checked now.
    r = np.random.default_rng(0)
    F = r.random((40, 1, 1, 512), dtype=np.float32)
    y = r.integers(0, 2, 40)
    model = model_of(base, [(16, "relu"), (2, "softmax")], opt=vggtl.Adam(),
                     loss="categorical_crossentropy")
    w0 = model.get_weights()
    rec = Recorder()
    with pytest.raises(FloatingPointError, match="NaN or infinite while the loss stayed finite") \
            as e:
        model.fit_features(F, y, batch_size=40, epochs=3, verbose=0,
                           class_weight={0: 1e20, 1: 1.0}, callbacks=[rec])
    assert "weights of the last completed epoch were kept" in str(e.value)
    w = model.get_weights()
    assert all(np.isfinite(a).all() for kb in w.values() for a in kb)
    assert all(np.isfinite(a).all() for s in model._slots.values() for a in s if a is not None)
    assert_weights_equal(w, rec.weights[-1] if rec.weights else w0)
    assert model._epochs_done == len(rec.weights) == len(model.history.history.get("loss", []))
    assert model.optimizer.iterations == len(rec.weights)


def test_an_update_near_float_overflow_is_right_and_changes_no_other_weight(rng, base):
    # A dense layer's weight gradient is applied block by block as it is
    # computed, unless a bound (batch x max|x| x max|dz|) says it could overflow:
    # then it is computed whole and checked first. One SGD step on features
    # holding 3e38 (whose kernel row is zero, so the forward pass stays finite)
    # takes that second way: its weights must match a float64 oracle, and every
    # weight but that row must have exactly the bits of the same step on tame
    # features (which takes the first way).
    F = features(rng, 4)
    labels = np.array([0, 1, 0, 1])
    model = model_of(base, [(16, "relu"), (2, "softmax")], seed=2,
                     opt=vggtl.SGD(learning_rate=1e-3), loss="categorical_crossentropy")
    w0 = model.get_weights()
    w0["dense"][0][5] = 0.0
    # sample 0's label is the class the head thinks least likely: |p - y| >= 1/2
    model.set_weights(w0)
    labels[0] = int(model.predict_features(F[:1])[0].argmin())
    huge = F.copy()
    huge[0, 0, 0, 5] = 3e38
    runs = {}
    for name, X in (("tame", F), ("huge", huge)):
        model.set_weights(w0)
        model.optimizer.iterations = 0
        model.fit_features(X, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)
        runs[name] = model.get_weights()
    _, want, _ = torch_train(model, w0, huge, one_hot(labels, 2), "categorical_crossentropy",
                             vggtl.SGD(learning_rate=1e-3), epochs=1, batch=4)
    assert np.abs(runs["huge"]["dense"][0][5]).max() > 1e30  # the step really was huge
    assert weights_rel_err(runs["huge"], want) <= 1e-5
    tame, big = runs["tame"], runs["huge"]
    np.testing.assert_array_equal(np.delete(big["dense"][0], 5, 0), np.delete(tame["dense"][0], 5, 0))
    np.testing.assert_array_equal(big["dense"][1], tame["dense"][1])
    np.testing.assert_array_equal(big["dense_1"][0], tame["dense_1"][0])
    np.testing.assert_array_equal(big["dense_1"][1], tame["dense_1"][1])


def test_nan_loss_mid_epoch_restores_the_epoch_start(rng, base):
    # batch 1 is fine and updates the weights; batch 2 holds a huge feature
    # vector whose logits overflow: the batch-1 update must be undone
    F = features(rng, 16)
    y = rule_labels(F)
    F[9] = 3e38  # finite, but x @ kernel overflows
    model = model_of(base, [(16, "relu"), (2, "softmax")], opt=vggtl.SGD(learning_rate=0.1))
    w0 = model.get_weights()
    with pytest.raises(FloatingPointError, match=r"epoch 1: .*batch 2 of the epoch"):
        model.fit_features(F, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    assert_weights_equal(model.get_weights(), w0)
    assert model.optimizer.iterations == 0


def test_infinite_features_are_refused_before_training(rng, base):
    # an infinite feature would make x @ kernel NaN (inf - inf) and, through the
    # gradient (inf * 0), NaN kernels: fit refuses such features up front and
    # names the sample, leaving the weights untouched
    F = features(rng, 16)
    y = rule_labels(F)
    F[9] = np.inf
    model = model_of(base, [(16, "relu"), (2, "softmax")], opt=vggtl.SGD(learning_rate=0.1))
    w0 = model.get_weights()
    with pytest.raises(ValueError, match="x: sample 9 has NaN or infinite features"):
        model.fit_features(F, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    assert_weights_equal(model.get_weights(), w0)


def test_relu_propagates_nan_so_the_loss_sees_it():
    # the core's ReLU keeps NaN (as torch.relu), so a NaN born inside the head
    # reaches the loss and stops training instead of being zeroed away
    x = np.array([[np.nan, -1.0, 2.0]], dtype=np.float32)
    y = _kernels.activation_forward(x, "relu")
    assert np.isnan(y[0, 0]) and y[0, 1] == 0.0 and y[0, 2] == 2.0


def test_bad_layers_and_heads(base):
    for rate in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="rate: expected a float in \\[0, 1\\)"):
            vggtl.Dropout(rate)
    with pytest.raises(ValueError, match=r"rate: expected 0 <= rate < 1"):
        _kernels.dropout_forward(np.ones(4, np.float32), 1.0, 0, 0)
    for units in (0, -3, 2.0):
        with pytest.raises(ValueError, match="units: expected an int >= 1"):
            vggtl.Dense(units)
    with pytest.raises(ValueError, match="activation"):
        vggtl.Dense(2, activation="tanh")
    with pytest.raises(ValueError, match="last layer must be a Dense"):
        vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(4), vggtl.Dropout(0.5)])
    with pytest.raises(ValueError, match="last layer must be a Dense"):
        vggtl.TransferModel(base, head=[vggtl.Flatten()])
    with pytest.raises(ValueError, match="must come first"):
        vggtl.TransferModel(base, head=[vggtl.Dense(4), vggtl.Flatten(), vggtl.Dense(2)])
    with pytest.raises(TypeError, match="head: expected a non-empty list"):
        vggtl.TransferModel(base, head=[])


def test_base_with_top_is_refused():
    top = vggtl.VGG16(weights=None, include_top=True, classes=2)
    with pytest.raises(ValueError, match="include_top=False"):
        vggtl.TransferModel(top, head=[vggtl.Dense(2, activation="softmax")])


def test_two_threads_fitting_one_model_lose_no_update(base):
    # the C epoch releases the GIL: two threads' fits on one model updated the same
    # weights at once and each wrote back its own step count, so updates were lost
    # (was). The model's lock makes them run one after the other: the result is
    # that of two fits in a row, bit for bit.
    import threading
    r = np.random.default_rng(5)
    F = r.standard_normal((512, 1, 1, 512), dtype=np.float32)
    y = rule_labels(F)

    def fresh():
        return model_of(base, [(64, "relu"), (2, "softmax")], opt=vggtl.Adam(1e-3),
                        loss="categorical_crossentropy")

    def fit(model):
        model.fit_features(F, y, batch_size=16, epochs=6, verbose=0)

    serial = fresh()
    fit(serial)
    fit(serial)
    shared = fresh()
    start = threading.Barrier(2)
    errors = []

    def run():
        try:
            start.wait()
            fit(shared)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert shared.optimizer.iterations == serial.optimizer.iterations == 2 * 6 * 32
    assert shared._epochs_done == 12
    assert_weights_equal(shared.get_weights(), serial.get_weights())
