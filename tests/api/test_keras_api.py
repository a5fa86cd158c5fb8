"""The Keras calls the seed's users paste next (issue 21), without TensorFlow:
fit(aug.flow(...), steps_per_epoch, validation_steps), sample_weight, verbose on
predict / evaluate, learning-rate schedules, ModelCheckpoint, ReduceLROnPlateau,
CSVLogger, AUC and top-k metrics, load_model(compile=False), save refusing Keras
file names, the zero-gradient warning and the [0, 1] float images warning.
(TensorFlow's own numbers for the losses, schedules and metrics: test_keras_oracle.py.)"""
import csv
import math
import warnings

import numpy as np
import pytest

import vggtl


@pytest.fixture(scope="module")
def base():
    return vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess="scale")


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    y = (X[:, :16].mean(axis=(1, 2, 3)) > X[:, 16:].mean(axis=(1, 2, 3))).astype(np.int64)
    return X, y


def model_of(base, seed=0, last="softmax", metrics=("accuracy",), opt=None):
    m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(16, activation="relu"),
                                        vggtl.Dense(2, activation=last)], seed=seed, cache=False)
    m.compile(optimizer=opt or vggtl.Adam(lr=1e-3, decay=1e-3 / 5), loss="binary_crossentropy",
              metrics=list(metrics))
    return m


def features(n, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    F = (rng.standard_normal((n, 1, 1, 512)) * scale).astype(np.float32)
    return F, (F[:, 0, 0, :8].sum(1) > 0).astype(np.int64)


# ---- fit(aug.flow(...)) ----------------------------------------------------------------

def test_fit_takes_aug_flow_as_fit_with_augment(base):
    X, y = images(20)
    Y = np.eye(2, dtype=np.float32)[y]
    vX, vy = images(8, seed=1)
    aug = vggtl.Augment(rotation_range=20, horizontal_flip=True, seed=3)
    a = model_of(base)
    ha = a.fit(aug.flow(X, Y, batch_size=8), validation_data=(vX, np.eye(2)[vy]), epochs=2,
               verbose=0)
    b = model_of(base)
    hb = b.fit(X, Y, batch_size=8, augment=aug, validation_data=(vX, np.eye(2)[vy]), epochs=2,
               verbose=0)
    assert ha.history == hb.history and list(ha.history) == ["loss", "accuracy", "val_loss",
                                                             "val_accuracy"]
    for k, (w, bias) in a.get_weights().items():
        np.testing.assert_array_equal(w, b.get_weights()[k][0])
    with pytest.raises(ValueError, match="y: expected None"):
        a.fit(aug.flow(X, Y, batch_size=8), Y, verbose=0)
    with pytest.raises(ValueError, match="no labels"):
        a.fit(aug.flow(X, batch_size=8), verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        a.fit(aug.flow(X, Y, batch_size=8), batch_size=16, verbose=0)


def test_steps_per_epoch_and_validation_steps(base):
    X, y = images(21)
    aug = vggtl.Augment(zoom_range=0.1, seed=4)
    m = model_of(base)
    vX, vy = images(40, seed=2)
    h = m.fit(aug.flow(X, y, batch_size=8), steps_per_epoch=len(X) // 8, epochs=2, verbose=0,
              validation_data=(vX, vy), validation_steps=1)
    assert m.optimizer.iterations == 4  # 2 batches of 8 per epoch, not 3
    assert h.params["steps"] == 2
    # validation on the first 32 (one batch of a flow's default 32) of the 40 images
    ref = model_of(base)
    ref.set_weights(m.get_weights())
    assert math.isclose(h.history["val_loss"][-1], ref.evaluate(vX[:32], vy[:32])[0],
                        rel_tol=1e-6)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        m.fit(X, y, batch_size=8, steps_per_epoch=4, verbose=0)


# ---- sample_weight, evaluate, predict --------------------------------------------------

def test_sample_weight_is_class_weight_per_sample_and_multiplies_it(base):
    F, y = features(30)
    sw = np.linspace(0.2, 2.0, 30).astype(np.float32)
    cw = {0: 0.5, 1: 2.0}
    a, b = model_of(base, seed=2), model_of(base, seed=2)
    ha = a.fit_features(F, y, batch_size=10, epochs=2, verbose=0, sample_weight=sw,
                        class_weight=cw)
    combined = sw * np.where(y == 1, 2.0, 0.5).astype(np.float32)
    hb = b.fit_features(F, y, batch_size=10, epochs=2, verbose=0, sample_weight=combined)
    assert ha.history == hb.history
    c = model_of(base, seed=2)
    hc = c.fit_features(F, y, batch_size=10, epochs=2, verbose=0)
    assert hc.history["loss"] != ha.history["loss"]
    # evaluate: the loss weighted as Keras's sum_over_batch_size
    per = [a.evaluate_features(F[i:i + 1], y[i:i + 1])[0] for i in range(30)]
    got = a.evaluate_features(F, y, batch_size=30, sample_weight=sw)[0]
    assert math.isclose(got, float(np.sum(sw * np.array(per)) / 30), rel_tol=1e-5)
    with pytest.raises(ValueError, match="sample_weight"):
        a.fit_features(F, y, sample_weight=np.ones(29), verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        a.fit_features(F, y, sample_weight=-np.ones(30), verbose=0)


def test_verbose_on_predict_and_evaluate(base, capsys):
    X, y = images(6)
    m = model_of(base)
    capsys.readouterr()
    p = m.predict(X, batch_size=4)
    assert capsys.readouterr().out == ""  # silent by default
    p1 = m.predict(X, batch_size=4, verbose=1)
    assert "2/2" in capsys.readouterr().out
    np.testing.assert_array_equal(p, p1)
    r = m.evaluate(X, y, batch_size=4, verbose="auto")
    out = capsys.readouterr().out
    assert "loss:" in out and "accuracy:" in out
    assert m.evaluate(X, y, return_dict=True) == {"loss": r[0], "accuracy": r[1]}
    with pytest.raises(ValueError, match="verbose"):
        m.predict(X, verbose=3)


# ---- schedules -----------------------------------------------------------------------------

def test_schedules_drive_the_updates(base):
    F, y = features(24)
    sched = vggtl.ExponentialDecay(1e-2, decay_steps=3, decay_rate=0.5)
    a = model_of(base, seed=4, opt=vggtl.SGD(learning_rate=sched))
    a.fit_features(F, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    # the same updates by hand: one SGD step per batch at the schedule's rate
    b = model_of(base, seed=4, opt=vggtl.SGD(learning_rate=1.0))
    for it in range(6):
        b.optimizer.learning_rate = sched(it)
        b.optimizer.iterations = it
        i = (it % 3) * 8
        b.fit_features(F[i:i + 8], y[i:i + 8], batch_size=8, epochs=1, verbose=0, shuffle=False)
    for k, (w, bias) in a.get_weights().items():
        np.testing.assert_allclose(w, b.get_weights()[k][0], rtol=1e-6, atol=1e-7)
    assert a.optimizer.iterations == 6
    assert math.isclose(a.optimizer.current_learning_rate(), 1e-2 * 0.5 ** 2)
    # a plain callable of the step, and Keras's formulas
    c = model_of(base, seed=4, opt=vggtl.SGD(learning_rate=lambda step: 1e-2 * 0.5 ** (step / 3)))
    c.fit_features(F, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    for k, (w, bias) in a.get_weights().items():
        np.testing.assert_allclose(w, c.get_weights()[k][0], rtol=1e-6, atol=1e-7)
    inv = vggtl.InverseTimeDecay(1e-3, decay_steps=1, decay_rate=1e-3 / 20)
    legacy = vggtl.Adam(lr=1e-3, decay=1e-3 / 20)
    for step in (0, 1, 7, 100):
        assert math.isclose(inv(step), legacy.current_learning_rate(step), rel_tol=1e-12)
    cos = vggtl.CosineDecay(0.1, decay_steps=10, alpha=0.2)
    assert cos(0) == 0.1 and math.isclose(cos(10), 0.02) and cos(50) == cos(10)
    # saved and loaded with the model's optimizer
    cfg = vggtl.Adam(learning_rate=cos).get_config()
    again = vggtl.optim.get(cfg)
    assert again.schedule(5) == cos(5)


def test_schedule_models_save_and_load(base, tmp_path):
    m = model_of(base, opt=vggtl.Adam(learning_rate=vggtl.InverseTimeDecay(1e-3, 1, 0.1)))
    m.save(tmp_path / "m.vggtl")
    back = vggtl.load_model(tmp_path / "m.vggtl")
    assert isinstance(back.optimizer.schedule, vggtl.InverseTimeDecay)
    assert back.optimizer.current_learning_rate(3) == m.optimizer.current_learning_rate(3)


# ---- callbacks --------------------------------------------------------------------------------

def test_reduce_lr_on_plateau_follows_keras(base):
    F, y = features(16)
    m = model_of(base, opt=vggtl.SGD(learning_rate=1e-9))  # nothing improves
    cb = vggtl.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1,
                                 min_lr=2e-10, min_delta=1.0)
    h = m.fit_features(F, y, batch_size=16, epochs=8, verbose=0, callbacks=[cb])
    lrs = h.history["lr"]
    # epoch 0 sets best; waits 1, 2 -> reduce after epoch 2; cooldown 1; then 2 more waits
    assert np.allclose(lrs, [1e-9, 1e-9, 1e-9, 5e-10, 5e-10, 5e-10, 2.5e-10, 2.5e-10])
    assert math.isclose(m.optimizer.learning_rate, 2e-10)  # min_lr reached at epoch 8
    m2 = model_of(base, opt=vggtl.Adam(learning_rate=vggtl.CosineDecay(1e-3, 10)))
    with pytest.raises(ValueError, match="schedule"):
        m2.fit_features(F, y, epochs=1, verbose=0, callbacks=[vggtl.ReduceLROnPlateau("loss")])


def test_model_checkpoint_and_csv_logger(base, tmp_path):
    F, y = features(16)
    vF, vy = features(8, seed=1)
    m = model_of(base)
    ck = vggtl.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.vggtl"))
    best = vggtl.ModelCheckpoint(tmp_path / "best.vggtl", monitor="val_accuracy",
                                 save_best_only=True)
    log = vggtl.CSVLogger(tmp_path / "log.csv")
    h = m.fit_features(F, y, batch_size=8, epochs=3, verbose=0, validation_data=(vF, vy),
                       callbacks=[ck, best, log])
    names = sorted(p.name for p in tmp_path.glob("m-*.vggtl"))
    assert names == [f"m-{e + 1:02d}-{v:.2f}.vggtl" for e, v in enumerate(h.history["val_loss"])]
    last = vggtl.load_model(tmp_path / names[-1])
    np.testing.assert_array_equal(last.predict_features(vF), m.predict_features(vF))
    assert (tmp_path / "best.vggtl").exists()
    rows = list(csv.reader(open(tmp_path / "log.csv")))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert float(rows[3][2]) == h.history["loss"][2]
    m.fit_features(F, y, batch_size=8, epochs=1, verbose=0,
                   callbacks=[vggtl.CSVLogger(tmp_path / "log.csv", append=True)])
    assert len(list(csv.reader(open(tmp_path / "log.csv")))) == 5  # no second header
    with pytest.raises(ValueError, match=r"\.vggtl"):
        vggtl.ModelCheckpoint("best.h5")


# ---- metrics -----------------------------------------------------------------------------------

def test_auc_and_top_k_in_history_and_evaluate(base):
    F, y = features(40)
    vF, vy = features(20, seed=5)
    m = model_of(base, metrics=["accuracy", "AUC", vggtl.metrics.TopKCategoricalAccuracy(k=1)])
    h = m.fit_features(F, y, batch_size=10, epochs=2, verbose=0, validation_data=(vF, vy))
    assert list(h.history) == ["loss", "accuracy", "auc", "top_k_categorical_accuracy",
                               "val_loss", "val_accuracy", "val_auc",
                               "val_top_k_categorical_accuracy"]
    # top-1 is accuracy; validation metrics are evaluate's on the final weights
    assert h.history["top_k_categorical_accuracy"] == h.history["accuracy"]
    loss, acc, auc, top1 = m.evaluate_features(vF, vy)
    assert (auc, top1) == (h.history["val_auc"][-1], h.history["val_top_k_categorical_accuracy"][-1])
    # the training AUC is that of the outputs the loss saw (dropout off here: the
    # weights before each batch's update), close to a rank AUC of the predictions
    p = m.predict_features(vF)[:, 1]
    pos, neg = p[vy == 1], p[vy == 0]
    rank_auc = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert abs(auc - rank_auc) < 0.05


# ---- saving -------------------------------------------------------------------------------------

def test_save_refuses_keras_names_and_load_model_compile_false(base, tmp_path):
    m = model_of(base)
    for name in ("model.h5", "model.keras", "M.HDF5", "w.weights.h5"):
        with pytest.raises(ValueError, match=r"\.vggtl"):
            m.save(tmp_path / name)
        assert not (tmp_path / name).exists()
    F, y = features(8)
    m.fit_features(F, y, epochs=1, verbose=0)
    m.save(tmp_path / "m.vggtl")
    plain = vggtl.load_model(tmp_path / "m.vggtl", compile=False)
    assert plain.optimizer is None and plain.loss is None
    np.testing.assert_array_equal(plain.predict_features(F), m.predict_features(F))
    with pytest.raises(RuntimeError, match="not compiled"):
        plain.evaluate_features(F, y)


# ---- warnings -----------------------------------------------------------------------------------

def test_zero_gradients_for_an_epoch_warn():
    # a linear output read as probabilities: outputs far outside [0, 1] are clipped
    # and every gradient is 0; the epoch says so instead of reporting a constant loss
    b = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess=None)
    F, y = features(16, scale=1.0)
    m = vggtl.TransferModel(b, head=[vggtl.Dense(2, activation="linear")], cache=False)
    k = np.zeros((512, 2), np.float32)
    m.set_weights({"dense": (k, np.array([50.0, -50.0], np.float32))})
    m.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.warns(RuntimeWarning, match="every gradient was exactly zero.*activation='linear'"):
        h = m.fit_features(F, y, epochs=2, verbose=0)
    assert h.history["loss"][0] == h.history["loss"][1]
    # a softmax head on the same data trains, silently
    m2 = vggtl.TransferModel(b, head=[vggtl.Dense(2, activation="softmax")], cache=False)
    m2.set_weights({"dense": (k, np.array([50.0, -50.0], np.float32))})
    m2.compile(optimizer="adam", loss="binary_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h2 = m2.fit_features(F, y, epochs=2, verbose=0)
    assert h2.history["loss"][0] != h2.history["loss"][1]


@pytest.mark.parametrize("mode", ["scale", "caffe", "torch"])
def test_images_divided_by_255_warn_once(mode):
    b = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess=mode)
    X, _ = images(3)
    with pytest.warns(UserWarning, match=r"every value in \[0, 1\].*X / 255.0"):
        b.predict(X / 255.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.predict(X / 255.0)  # once per model
        b.predict(X.astype(np.float32))  # 0..255 floats
        vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess="scale").predict(X)  # uint8
        vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess=None).predict(X / 255.0)


def test_metrics_come_back_with_the_model(base, tmp_path):
    m = model_of(base, metrics=["accuracy", "AUC",
                                vggtl.metrics.TopKCategoricalAccuracy(k=1, name="top1")])
    m.save(tmp_path / "m.vggtl")
    with pytest.warns(RuntimeWarning, match="'top1'"):
        back = vggtl.load_model(tmp_path / "m.vggtl")
    assert back.metrics == ["accuracy", "auc"]
    F, y = features(8)
    assert len(back.evaluate_features(F, y)) == 3
