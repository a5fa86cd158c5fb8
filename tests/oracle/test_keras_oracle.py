"""TensorFlow's Keras itself as the oracle: tf-keras 2.21 on TensorFlow 2.21, the
library the seed's ``tensorflow.keras`` code runs on (``TF_USE_LEGACY_KERAS=1``,
the legacy ``Adam(lr=..., decay=...)`` it takes).

TensorFlow runs once, in a subprocess started by a module-scoped fixture: this
file is also the worker script (``python test_keras_oracle.py IN OUT``), so
``TF_USE_LEGACY_KERAS`` and TensorFlow's threads never touch the other tests'
process. The fixture hands the worker every case at once (weights, data, loss,
optimizer) and gets TensorFlow's numbers back; the tests compute the same with
vggtl and compare:

- the loss (evaluate, and train_on_batch's before the update) and the weights
  after one and two legacy-Adam steps with ``lr`` and ``decay``: BCE on softmax and
  sigmoid heads, CCE, sparse CCE (from the logits), a saturated softmax head
  (features up to 766), sample weights, heads ending in linear / relu (TF's
  clipped probability formulas), an Adam driven by a schedule, and one step of
  fine-tuning block 5 with the head;
- the schedules (InverseTimeDecay, ExponentialDecay, CosineDecay), AUC and top-k.

Without TensorFlow and tf-keras (the ``test`` extra installs them) the module skips.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

if __name__ != "__main__":
    import pytest

    import vggtl

    pytestmark = pytest.mark.skipif(
        importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf_keras") is None,
        reason="needs tensorflow and tf-keras (pip install -e '.[test]')")

TOL = 1e-5  # max |vggtl - TensorFlow| on losses and weights (the criterion)


# ---- the worker: runs in the subprocess, imports TensorFlow --------------------------------

def _tf_schedule(tf, spec):
    cls = getattr(tf.keras.optimizers.schedules, spec["class_name"])
    return cls(**spec["config"])


def _tf_model(tf, layers, weights, input_shape, tail=None):
    """Sequential: [block-5 convs and pool from the cut] + Flatten + the head's Denses."""
    L = tf.keras.layers
    model = tf.keras.Sequential([tf.keras.Input(input_shape)])
    if tail:
        for i in range(tail):
            model.add(L.Conv2D(512, 3, padding="same", activation="relu"))
        model.add(L.MaxPooling2D(2))
    model.add(L.Flatten())
    for units, act in layers:
        model.add(L.Dense(units, activation=act))
    model.set_weights(weights)
    return model


def _worker(path_in, path_out):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tensorflow.keras is tf-keras 2.21
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf
    assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    data = dict(np.load(path_in, allow_pickle=False))
    spec = json.loads(str(data.pop("spec")))
    out = {"tf_version": np.array(tf.__version__)}
    for name, case in spec["train"].items():
        weights = [data[f"{name}/w{i}"] for i in range(case["n_weights"])]
        x, y = data[f"{name}/x"], data[f"{name}/y"]
        sw = data.get(f"{name}/sw")
        model = _tf_model(tf, case["layers"], weights, x.shape[1:], case.get("tail"))
        if isinstance(case["lr"], dict):
            opt = tf.keras.optimizers.legacy.Adam(learning_rate=_tf_schedule(tf, case["lr"]))
        else:  # the seed's call
            opt = tf.keras.optimizers.legacy.Adam(lr=case["lr"], decay=case["decay"])
        model.compile(optimizer=opt, loss=case["loss"])
        out[f"{name}/evaluate"] = np.float64(model.evaluate(x, y, sample_weight=sw,
                                                            batch_size=len(x), verbose=0))
        for step in range(case["steps"]):
            out[f"{name}/loss{step}"] = np.float64(model.train_on_batch(x, y, sample_weight=sw))
            for i, w in enumerate(model.get_weights()):
                out[f"{name}/step{step}/w{i}"] = w
    for name, s in spec["schedules"].items():
        sched = _tf_schedule(tf, s)
        out[f"schedule/{name}"] = np.array([float(sched(k)) for k in spec["steps"]])
    for name, m in spec["metrics"].items():
        yt, yp = data[f"metric/{name}/y"], data[f"metric/{name}/p"]
        if m["kind"] == "auc":
            obj = tf.keras.metrics.AUC(num_thresholds=m["num_thresholds"], curve=m["curve"],
                                       summation_method=m["summation_method"])
        elif m["kind"] == "top_k":
            obj = tf.keras.metrics.TopKCategoricalAccuracy(k=m["k"])
        else:
            obj = tf.keras.metrics.SparseTopKCategoricalAccuracy(k=m["k"])
        for i in range(0, len(yt), 7):  # in batches, as fit accumulates them
            obj.update_state(yt[i:i + 7], yp[i:i + 7])
        out[f"metric/{name}"] = np.float64(obj.result().numpy())
    np.savez(path_out, **out)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
    sys.exit(0)


# ---- the cases -------------------------------------------------------------------------------

SCHEDULES = {
    "inverse_time": {"class_name": "InverseTimeDecay",
                     "config": {"initial_learning_rate": 1e-3, "decay_steps": 10, "decay_rate": 0.5}},
    "inverse_time_staircase": {"class_name": "InverseTimeDecay",
                               "config": {"initial_learning_rate": 1e-3, "decay_steps": 10,
                                          "decay_rate": 0.5, "staircase": True}},
    "exponential": {"class_name": "ExponentialDecay",
                    "config": {"initial_learning_rate": 0.1, "decay_steps": 7, "decay_rate": 0.9}},
    "exponential_staircase": {"class_name": "ExponentialDecay",
                              "config": {"initial_learning_rate": 0.1, "decay_steps": 7,
                                         "decay_rate": 0.9, "staircase": True}},
    "cosine": {"class_name": "CosineDecay",
               "config": {"initial_learning_rate": 0.1, "decay_steps": 50, "alpha": 0.1}},
    "cosine_warmup": {"class_name": "CosineDecay",
                      "config": {"initial_learning_rate": 0.01, "decay_steps": 50, "alpha": 0.0,
                                 "warmup_target": 0.2, "warmup_steps": 10}},
}
STEPS = [0, 1, 2, 5, 9, 10, 11, 49, 50, 59, 60, 61, 99, 1000]

N, D = 12, 512
# name: (head [(units, activation)], loss, lr (a float or a schedule), decay, options)
TRAIN = {
    "bce_softmax": ([(16, "relu"), (2, "softmax")], "binary_crossentropy", 1e-3, 1e-3 / 20, {}),
    "bce_sigmoid": ([(16, "relu"), (1, "sigmoid")], "binary_crossentropy", 1e-3, 1e-3 / 20, {}),
    "cce_softmax": ([(16, "relu"), (3, "softmax")], "categorical_crossentropy", 1e-3, 1e-2, {}),
    "sparse_softmax": ([(16, "relu"), (3, "softmax")], "sparse_categorical_crossentropy", 1e-3,
                       1e-2, {}),
    "cce_sigmoid": ([(3, "sigmoid")], "categorical_crossentropy", 1e-3, 0.0, {}),
    "bce_softmax_weighted": ([(16, "relu"), (2, "softmax")], "binary_crossentropy", 1e-3, 1e-3,
                             {"weighted": True}),
    # the tutorial without X / 255: features up to ~766, outputs exactly 0 and 1
    "bce_softmax_saturated": ([(2, "softmax")], "binary_crossentropy", 1e-3, 1e-3 / 20,
                              {"scale": 766.0}),
    # no softmax / sigmoid: TensorFlow's clipped probability formulas
    "bce_linear": ([(2, "linear")], "binary_crossentropy", 1e-3, 0.0, {"shift": 0.5}),
    "cce_relu": ([(3, "relu")], "categorical_crossentropy", 1e-3, 0.0, {"shift": 0.5}),
    "sparse_relu": ([(3, "relu")], "sparse_categorical_crossentropy", 1e-3, 0.0, {"shift": 0.5}),
    # the second step at half the rate (Adam's first steps move each weight by about
    # the rate, so a large one would magnify float32 rounding of tiny gradients)
    "adam_schedule": ([(16, "relu"), (2, "softmax")], "binary_crossentropy",
                      {"class_name": "ExponentialDecay",
                       "config": {"initial_learning_rate": 1e-3, "decay_steps": 1,
                                  "decay_rate": 0.5}}, 0.0, {}),
}
FINETUNE = ([(8, "relu"), (2, "softmax")], "binary_crossentropy", 1e-4, 1e-4 / 20)

METRICS = {
    "auc_roc": {"kind": "auc", "num_thresholds": 200, "curve": "ROC",
                "summation_method": "interpolation"},
    "auc_roc_minoring": {"kind": "auc", "num_thresholds": 50, "curve": "ROC",
                         "summation_method": "minoring"},
    "auc_roc_majoring": {"kind": "auc", "num_thresholds": 11, "curve": "ROC",
                         "summation_method": "majoring"},
    "auc_pr": {"kind": "auc", "num_thresholds": 200, "curve": "PR",
               "summation_method": "interpolation"},
    "top_1": {"kind": "top_k", "k": 1},
    "top_2": {"kind": "top_k", "k": 2},
    "sparse_top_2": {"kind": "sparse_top_k", "k": 2},
}


def _vggtl_schedule(spec):
    return vggtl.optim.SCHEDULES[spec["class_name"]](**spec["config"])


@pytest.fixture(scope="module")
def base():
    return vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess=None)


def _head_model(base, layers, seed):
    head = [vggtl.Flatten()] + [vggtl.Dense(u, activation=a) for u, a in layers]
    return vggtl.TransferModel(base, head=head, seed=seed, cache=False)


def _case_data(name, layers, loss, options, seed):
    rng = np.random.default_rng([seed, 31])
    F = rng.standard_normal((N, 1, 1, D)).astype(np.float32)
    if "scale" in options:  # non-negative, as ReLU features of 0..255 images are
        F = (np.abs(F) / np.abs(F).max() * np.float32(options["scale"])).astype(np.float32)
    units = layers[-1][0]
    labels = rng.integers(0, max(units, 2), N)
    labels[:2] = [0, 1]
    if loss == "sparse_categorical_crossentropy":
        y = labels.astype(np.int32)
    elif units == 1:
        y = labels.reshape(-1, 1).astype(np.float32)
    else:
        y = np.eye(units, dtype=np.float32)[labels]
    sw = rng.uniform(0.2, 2.0, N).astype(np.float32) if options.get("weighted") else None
    return F, y, sw


def _prepare(base):
    """Everything vggtl needs per case, and the worker's input."""
    arrays, spec = {}, {"train": {}, "schedules": SCHEDULES, "steps": STEPS, "metrics": METRICS}
    ours = {}
    for i, (name, (layers, loss, lr, decay, options)) in enumerate(TRAIN.items()):
        model = _head_model(base, layers, seed=100 + i)
        if "shift" in options:  # probabilities near 0.5 on average, some clipped
            last = model.layers[-1].name
            k, b = model.get_weights()[last]
            model.set_weights({**model.get_weights(), last: (k * np.float32(0.3), b + np.float32(
                options["shift"]))})
        F, y, sw = _case_data(name, layers, loss, options, seed=100 + i)
        w = model.get_weights()
        flat = [a for layer in model.layers[1:] for a in w[layer.name]]
        for j, a in enumerate(flat):
            arrays[f"{name}/w{j}"] = a
        arrays[f"{name}/x"] = F.reshape(N, D)
        arrays[f"{name}/y"] = y
        if sw is not None:
            arrays[f"{name}/sw"] = sw
        spec["train"][name] = {"layers": layers, "loss": loss, "lr": lr, "decay": decay,
                               "steps": 2, "n_weights": len(flat)}
        ours[name] = (model, F, y, sw)
    # fine-tuning: block 5 and the head on block4_pool's output of 32 x 32 images
    layers, loss, lr, decay = FINETUNE
    model = _head_model(base, layers, seed=7)
    rng = np.random.default_rng(8)
    X = rng.integers(0, 256, (N, 32, 32, 3)).astype(np.uint8)
    cut = base.predict(X, layer="block4_pool")
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, N)]
    w = model.get_weights()
    flat = [a for c in ("block5_conv1", "block5_conv2", "block5_conv3") for a in base._weights[c]]
    flat += [a for layer in model.layers[1:] for a in w[layer.name]]
    for j, a in enumerate(flat):
        arrays[f"finetune/w{j}"] = a
    arrays["finetune/x"], arrays["finetune/y"] = cut, y
    spec["train"]["finetune"] = {"layers": layers, "loss": loss, "lr": lr, "decay": decay,
                                 "steps": 1, "n_weights": len(flat), "tail": 3}
    ours["finetune"] = (model, X, y, None)
    # metrics: outputs with ties and values on the thresholds
    rng = np.random.default_rng(9)
    for name, m in METRICS.items():
        p = rng.random((40, 4)).astype(np.float32)
        p[:8] = np.round(p[:8] * 10) / 10  # exactly on thresholds of 11
        p[8:12, 1] = p[8:12, 0]  # ties
        labels = rng.integers(0, 4, 40)
        y = labels if m["kind"] == "sparse_top_k" else np.eye(4, dtype=np.float32)[labels]
        arrays[f"metric/{name}/p"], arrays[f"metric/{name}/y"] = p, y
        ours[f"metric/{name}"] = (y, p)
    arrays["spec"] = np.array(json.dumps(spec))
    return arrays, ours


@pytest.fixture(scope="module")
def oracle(base, tmp_path_factory):
    """(TensorFlow's results, vggtl's models and data per case): one TensorFlow run."""
    d = tmp_path_factory.mktemp("keras_oracle")
    arrays, ours = _prepare(base)
    np.savez(d / "in.npz", **arrays)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_")}
    p = subprocess.run([sys.executable, os.path.abspath(__file__), str(d / "in.npz"),
                        str(d / "out.npz")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return dict(np.load(d / "out.npz")), ours


def _optimizer(lr, decay):
    if isinstance(lr, dict):
        return vggtl.Adam(learning_rate=_vggtl_schedule(lr))
    return vggtl.Adam(lr=lr, decay=decay)


def _max_diff(model, tf_out, prefix, extra=()):
    w = model.get_weights()
    ours = [a for n in extra for a in model.base._weights[n]]
    ours += [a for layer in model.layers[1:] for a in w[layer.name]]
    return max(float(np.abs(a - tf_out[f"{prefix}/w{i}"]).max()) for i, a in enumerate(ours))


def test_tensorflow_is_tf_keras_2_21(oracle):
    assert str(oracle[0]["tf_version"]).startswith("2.21")


@pytest.mark.parametrize("name", list(TRAIN))
def test_loss_and_two_adam_steps_match_tensorflow(oracle, name, record_property):
    tf_out, ours = oracle
    layers, loss, lr, decay, _ = TRAIN[name]
    model, F, y, sw = ours[name]
    model.compile(optimizer=_optimizer(lr, decay), loss=loss)
    diffs = {"evaluate": abs(model.evaluate_features(F, y, batch_size=N, sample_weight=sw)
                             - tf_out[f"{name}/evaluate"])}
    for step in range(2):
        h = model.fit_features(F, y, batch_size=N, epochs=1, verbose=0, shuffle=False,
                               sample_weight=sw)
        diffs[f"loss{step}"] = abs(h.history["loss"][0] - tf_out[f"{name}/loss{step}"])
        diffs[f"weights{step}"] = _max_diff(model, tf_out, f"{name}/step{step}")
    record_property("max_abs_diff", max(diffs.values()))
    print(name, {k: f"{v:.2e}" for k, v in diffs.items()}, "TF loss0", float(tf_out[f"{name}/loss0"]))
    # losses of a saturated head are in the hundreds: TensorFlow rounds them in
    # float32 (6e-5 apart there), so the loss criterion is relative above 1
    scale = {k: max(1.0, abs(float(tf_out[f"{name}/{k}"]))) for k in ("evaluate", "loss0", "loss1")}
    assert all(diffs[k] <= TOL * scale.get(k, 1.0) for k in diffs), (diffs, scale)


def test_fine_tuning_step_matches_tensorflow(oracle, record_property):
    tf_out, ours = oracle
    model, X, y, _ = ours["finetune"]
    layers, loss, lr, decay = FINETUNE
    model.compile(optimizer="adam", loss=loss)
    h = model.fine_tune(X, y, unfreeze_from="block5_conv1", optimizer=_optimizer(lr, decay),
                        batch_size=N, epochs=1, verbose=0, shuffle=False, cache=False)
    diffs = {"loss": abs(h.history["loss"][0] - tf_out["finetune/loss0"]),
             "weights": _max_diff(model, tf_out, "finetune/step0",
                                  ("block5_conv1", "block5_conv2", "block5_conv3"))}
    print("finetune", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_match_tensorflow(oracle, name):
    sched = _vggtl_schedule(SCHEDULES[name])
    ours = np.array([sched(k) for k in STEPS])
    # TensorFlow evaluates them in float32 (0.9 ** 142 to 4e-6)
    np.testing.assert_allclose(ours, oracle[0][f"schedule/{name}"], rtol=1e-5)


@pytest.mark.parametrize("name", list(METRICS))
def test_metrics_match_tensorflow(oracle, name):
    tf_out = oracle[0]
    m = METRICS[name]
    if m["kind"] == "auc":
        obj = vggtl.metrics.AUC(num_thresholds=m["num_thresholds"], curve=m["curve"],
                                summation_method=m["summation_method"])
    elif m["kind"] == "top_k":
        obj = vggtl.metrics.TopKCategoricalAccuracy(k=m["k"])
    else:
        obj = vggtl.metrics.SparseTopKCategoricalAccuracy(k=m["k"])
    y, p = oracle[1][f"metric/{name}"]
    assert abs(obj(y, p) - tf_out[f"metric/{name}"]) <= 1e-6


def test_saturated_head_trains(base):
    # the tutorial's images without X / 255: ReLU features up to ~766 saturate a
    # softmax head (outputs exactly 0 and 1). From the logits it still learns a
    # separable rule; the clipped probabilities gave zero gradients and a constant loss.
    rng = np.random.default_rng(3)
    n = 400
    F = (np.abs(rng.standard_normal((n, 1, 1, D))) * 200).astype(np.float32)
    labels = (F[:, 0, 0, :16].sum(1) > np.median(F[:, 0, 0, :16].sum(1))).astype(np.int64)
    F[labels == 1, 0, 0, :16] += 300.0
    F = np.minimum(F, 766.0)
    model = _head_model(base, [(2, "softmax")], seed=1)
    model.compile(optimizer=vggtl.Adam(lr=1e-3, decay=1e-3 / 20), loss="binary_crossentropy",
                  metrics=["accuracy"])
    p0 = model.predict_features(F)
    assert ((p0 == 0) | (p0 == 1)).mean() > 0.5  # saturated from the start
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-gradient warning: it trains
        h = model.fit_features(F, labels, batch_size=32, epochs=3, verbose=0)
    assert len(set(h.history["loss"])) == 3  # not a constant loss
    assert model.evaluate_features(F, labels)[1] > 0.75
