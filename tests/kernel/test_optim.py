"""Optimizers: _kernels.optimizer_step against NumPy (float64) versions of
Keras's update rules (reference.md section 5; RMSprop as Keras 3) over several
iterations with the legacy decay, and against Keras 3 itself (torch backend):
InverseTimeDecay(lr, 1, lr / epochs) is the legacy decay, Keras's optimizers
driven by that schedule make the same updates, and Keras's losses from logits
give the values the core computes. Keras is not a test requirement: those tests skip
without it.
"""
import math
import os

import numpy as np
import pytest

import vggtl
from vggtl import _kernels
from support.tolerance import rel_err

STEPS = 6


def keras_rule(opt, p, g, s0, s1, it):
    """One Keras update in float64, in place; it = updates already done."""
    lr = opt.learning_rate / (1.0 + opt.decay * it)
    if isinstance(opt, vggtl.Adam):
        t = it + 1
        alpha = lr * math.sqrt(1 - opt.beta_2 ** t) / (1 - opt.beta_1 ** t)
        s0 += (g - s0) * (1 - opt.beta_1)
        s1 += (g * g - s1) * (1 - opt.beta_2)
        p -= alpha * s0 / (np.sqrt(s1) + opt.epsilon)
    elif isinstance(opt, vggtl.SGD):
        if opt.momentum == 0:
            p -= lr * g
        else:
            s0[...] = opt.momentum * s0 - lr * g
            p += opt.momentum * s0 - lr * g if opt.nesterov else s0
    else:
        s0[...] = opt.rho * s0 + (1 - opt.rho) * g * g
        inc = lr * g / np.sqrt(s0 + opt.epsilon)
        if opt.momentum > 0:
            s1[...] = opt.momentum * s1 + inc
            p -= s1
        else:
            p -= inc


OPTIMIZERS = {
    "sgd": lambda: vggtl.SGD(learning_rate=0.1, decay=0.05),
    "sgd_momentum": lambda: vggtl.SGD(learning_rate=0.1, momentum=0.9, decay=0.05),
    "sgd_nesterov": lambda: vggtl.SGD(learning_rate=0.1, momentum=0.9, nesterov=True, decay=0.05),
    "adam": lambda: vggtl.Adam(learning_rate=0.05, decay=0.05 / 20),
    "adam_betas": lambda: vggtl.Adam(learning_rate=0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3,
                                     decay=0.1),
    "rmsprop": lambda: vggtl.RMSprop(learning_rate=0.01, decay=0.05),
    "rmsprop_momentum": lambda: vggtl.RMSprop(learning_rate=0.01, rho=0.8, momentum=0.9,
                                              decay=0.05),
}


def run_both(opt, rng, start_iteration, n=37, grad_scale=1.0):
    """STEPS updates by the core (float32) and by keras_rule (float64)."""
    p = rng.standard_normal(n).astype(np.float32)
    p0 = p.copy()
    s0, s1 = np.zeros(n, np.float32), np.zeros(n, np.float32)
    P, S0, S1 = p.astype(np.float64), np.zeros(n), np.zeros(n)
    tup = opt.core_spec()
    for k in range(STEPS):
        g = (rng.standard_normal(n) * grad_scale).astype(np.float32)
        it = start_iteration + k
        _kernels.optimizer_step(p, g, s0, s1, tup, it)
        keras_rule(opt, P, g.astype(np.float64), S0, S1, it)
    return p0, p, s0, s1, P, S0, S1


@pytest.mark.parametrize("start", [0, 10], ids=["from_0", "from_10"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_step_matches_keras_rule(rng, name, start):
    opt = OPTIMIZERS[name]()
    p0, p, s0, s1, P, S0, S1 = run_both(opt, rng, start)
    # the total update (not only the parameter, whose size would hide it); float32
    # rounding of p (~1.2e-7 |p| per step) bounds the agreement
    assert rel_err(p - p0, P - p0) < 2e-5
    assert rel_err(p, P) < 2e-6
    slots = opt.slots()
    if slots >= 1:
        assert rel_err(s0, S0) < 2e-6
    else:
        np.testing.assert_array_equal(s0, 0.0)  # untouched
    if slots == 2:
        assert rel_err(s1, S1) < 2e-6
    else:
        np.testing.assert_array_equal(s1, 0.0)


def test_decay_changes_the_step_as_the_legacy_formula():
    # SGD, gradient 1: each update moves p by exactly lr / (1 + decay * iterations)
    opt = vggtl.SGD(learning_rate=0.5, decay=0.25)
    tup = opt.core_spec()
    for it in (0, 1, 3, 100):
        p = np.zeros(1, np.float32)
        _kernels.optimizer_step(p, np.ones(1, np.float32), None, None, tup, it)
        assert p[0] == np.float32(-(0.5 / (1 + 0.25 * it)))
        assert math.isclose(opt.current_learning_rate(it), 0.5 / (1 + 0.25 * it))
    assert opt.current_learning_rate() == 0.5  # iterations start at 0


def test_adam_epsilon_is_added_to_the_uncorrected_sqrt_v(rng):
    # tiny gradients: sqrt(v) ~ 1e-9 << epsilon, so where epsilon sits decides the
    # step. Keras: lr * sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v) + eps); torch's
    # eps on the corrected sqrt(v) would give a step ~16x larger at t = 1.
    opt = vggtl.Adam(learning_rate=1.0)
    p0, p, s0, s1, P, S0, S1 = run_both(opt, rng, 0, grad_scale=1e-7)
    assert rel_err(p - p0, P - p0) < 2e-5
    # one step by hand: m = 0.1 g, v = 0.001 g^2
    g = np.float32(1e-7)
    q = np.zeros(1, np.float32)
    m, v = np.zeros(1, np.float32), np.zeros(1, np.float32)
    _kernels.optimizer_step(q, np.array([g]), m, v, opt.core_spec(), 0)
    a = math.sqrt(1 - 0.999) / (1 - 0.9)
    keras = -a * 0.1 * 1e-7 / (math.sqrt(0.001) * 1e-7 + 1e-7)
    torch_like = -(1 / 0.1) * 0.1 * 1e-7 / (math.sqrt(0.001) * 1e-7 / math.sqrt(0.001) + 1e-7)
    assert math.isclose(q[0], keras, rel_tol=1e-5)
    assert not math.isclose(q[0], torch_like, rel_tol=0.1)


def test_optimizer_step_is_in_place_and_checks_arguments(rng):
    p = np.ones(5, np.float32)
    g = np.full(5, 2.0, np.float32)
    s = np.zeros(5, np.float32)
    sgd = vggtl.SGD(learning_rate=0.1, momentum=0.5).core_spec()
    assert _kernels.optimizer_step(p, g, s, None, sgd, 0) is None
    np.testing.assert_array_equal(p, np.float32(1) - np.float32(0.1) * np.float32(2))
    np.testing.assert_array_equal(s, -np.float32(0.1) * np.float32(2))
    adam = vggtl.Adam().core_spec()
    with pytest.raises(ValueError, match="iterations: expected >= 0"):
        _kernels.optimizer_step(p, g, s, s.copy(), adam, -1)
    with pytest.raises(ValueError, match="slot1: expected as many elements as param"):
        _kernels.optimizer_step(p, g, s, np.zeros(4, np.float32), adam, 0)
    with pytest.raises(TypeError, match="slot1"):
        _kernels.optimizer_step(p, g, s, None, adam, 0)
    with pytest.raises(ValueError, match="grad: expected as many elements as param"):
        _kernels.optimizer_step(p, g[:3], s, s.copy(), adam, 0)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises((TypeError, ValueError), match="param"):
        _kernels.optimizer_step(ro, g, s, s.copy(), adam, 0)


def test_optimizer_defaults_are_keras():
    a = vggtl.Adam()
    assert (a.learning_rate, a.beta_1, a.beta_2, a.epsilon, a.decay) == (0.001, 0.9, 0.999, 1e-7, 0.0)
    s = vggtl.SGD()
    assert (s.learning_rate, s.momentum, s.nesterov) == (0.01, 0.0, False)
    r = vggtl.RMSprop()
    assert (r.learning_rate, r.rho, r.momentum, r.epsilon) == (0.001, 0.9, 0.0, 1e-7)
    assert [vggtl.optim.get(n).__class__ for n in ("adam", "SGD", "rmsprop")] == \
        [vggtl.Adam, vggtl.SGD, vggtl.RMSprop]


# ---- Keras 3 ---------------------------------------------------------------------------

# keras's torch backend calls np.array(x, copy=False) on tensors (a NumPy 2 warning)
KERAS_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("KERAS_BACKEND is set to another backend")
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3.") or keras.backend.backend() != "torch":
        pytest.skip("needs Keras 3 on the torch backend")
    return keras


@pytest.mark.parametrize("lr,epochs", [(1e-3, 20), (1e-4, 25), (0.5, 3)])
@KERAS_WARNINGS
def test_inverse_time_decay_equals_legacy_decay(keras, lr, epochs):
    schedule = keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=lr / epochs)
    opt = vggtl.Adam(learning_rate=lr, decay=lr / epochs)
    lr_alias = vggtl.Adam(lr=lr, decay=lr / epochs)
    for step in (0, 1, 2, 7, 19, 100, 1000, 123456):
        ref = float(keras.ops.convert_to_numpy(schedule(step)))
        assert math.isclose(opt.current_learning_rate(step), ref, rel_tol=1e-6), step
        assert lr_alias.current_learning_rate(step) == opt.current_learning_rate(step)


@KERAS_WARNINGS
@pytest.mark.parametrize("name", ["sgd_momentum", "sgd_nesterov", "adam", "rmsprop",
                                  "rmsprop_momentum"])
def test_keras_optimizers_with_the_schedule_make_the_same_updates(keras, rng, name):
    ours = OPTIMIZERS[name]()
    schedule = keras.optimizers.schedules.InverseTimeDecay(ours.learning_rate, decay_steps=1,
                                                           decay_rate=ours.decay)
    if isinstance(ours, vggtl.Adam):
        theirs = keras.optimizers.Adam(learning_rate=schedule, beta_1=ours.beta_1,
                                       beta_2=ours.beta_2, epsilon=ours.epsilon)
    elif isinstance(ours, vggtl.SGD):
        theirs = keras.optimizers.SGD(learning_rate=schedule, momentum=ours.momentum,
                                      nesterov=ours.nesterov)
    else:
        theirs = keras.optimizers.RMSprop(learning_rate=schedule, rho=ours.rho,
                                          momentum=ours.momentum, epsilon=ours.epsilon)
    p = rng.standard_normal(23).astype(np.float32)
    p0 = p.copy()
    var = keras.Variable(p.copy())
    s0, s1 = np.zeros_like(p), np.zeros_like(p)
    tup = ours.core_spec()
    for it in range(8):
        g = rng.standard_normal(23).astype(np.float32)
        _kernels.optimizer_step(p, g, s0, s1, tup, it)
        theirs.apply([keras.ops.convert_to_tensor(g)], [var])
    ref = keras.ops.convert_to_numpy(var)
    assert int(keras.ops.convert_to_numpy(theirs.iterations)) == 8
    assert rel_err(p - p0, ref - p0) < 2e-5
    assert rel_err(p, ref) < 3e-6


@KERAS_WARNINGS
def test_keras_losses_equal_the_core(keras, rng):
    # from the logits (what TensorFlow's Keras computes for softmax / sigmoid outputs):
    # Keras 3's from_logits=True losses, the same formulas on every backend
    n, c = 6, 3
    logits = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    logits[0] = [40.0, -40.0, 0.0]  # saturated
    labels = rng.integers(0, c, n)
    labels[0] = 2
    onehot = np.eye(c, dtype=np.float32)[labels]
    w = rng.uniform(0.5, 2.0, n).astype(np.float32)
    cases = [(0, onehot, keras.losses.BinaryCrossentropy(from_logits=True)),
             (1, onehot, keras.losses.CategoricalCrossentropy(from_logits=True)),
             (2, labels.astype(np.int32), keras.losses.SparseCategoricalCrossentropy(from_logits=True))]
    for kind, y, loss_obj in cases:
        for sw in (None, w):
            ref = float(keras.ops.convert_to_numpy(loss_obj(y, logits, sample_weight=sw)))
            got = _kernels.loss_forward_backward(logits, y, kind, sample_weight=sw,
                                              activation="softmax")[0]
            assert math.isclose(got, ref, rel_tol=1e-5), (kind, sw is not None, got, ref)
    # on probabilities, categorical crossentropy is the same in Keras 3 and
    # TensorFlow's Keras (normalise, clip); BCE and sparse differ (tests/oracle/test_keras_oracle.py)
    yhat = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    yhat[1] = [1e-9, 1.0 - 1e-9, 0.0]
    for sw in (None, w):
        ref = float(keras.ops.convert_to_numpy(
            keras.losses.CategoricalCrossentropy()(onehot, yhat, sample_weight=sw)))
        got = _kernels.loss_forward_backward(yhat, onehot, 1, sample_weight=sw)[0]
        assert math.isclose(got, ref, rel_tol=1e-5), (sw is not None, got, ref)
