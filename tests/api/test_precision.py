"""precision="auto": bf16 where the AMX tiles run it, float32 elsewhere; what it
resolves to, the notice said once, and that it is kept as asked by saved
models, the estimator and the CLI. The default stays "fp32"."""
import json
import pickle
import warnings

import numpy as np
import pytest

import vggtl
from vggtl import dispatch
from vggtl import vgg16 as _vgg16
from support.isas import ISAS


@pytest.fixture
def fresh_notice(monkeypatch):
    """A process that has not said the notice yet."""
    monkeypatch.setattr(_vgg16, "_told_auto_bf16", False)


def _notices(caught):
    return [w for w in caught if issubclass(w.category, vggtl.PrecisionNotice)]


@pytest.mark.parametrize("isa", ISAS)
def test_auto_is_bf16_exactly_where_the_tiles_run_it(isa, kernels, fresh_notice):
    vggtl.set_isa(isa)
    want = "bf16" if isa == "amx_bf16" else "fp32"
    assert dispatch.auto_precision() == want
    assert vggtl.info((48, 48))["auto_precision"] == want
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision="auto")
    assert base.precision_asked == "auto"
    assert vggtl.VGG16(weights=None).precision == "fp32"  # the default, on every level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vggtl.PrecisionNotice)
        assert base.precision == want
        assert vggtl.info((48, 48), precision="auto")["conv_plan"] == \
            vggtl.info((48, 48), precision=want)["conv_plan"]


def test_auto_follows_the_instruction_set_set_later(kernels, fresh_notice, rng):
    """A base asked for "auto" computes what the current level resolves it to,
    bit for bit the features of a base asked for that precision."""
    X = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    auto = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), seed=3, precision="auto")
    fp32 = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), seed=3)
    vggtl.set_isa("portable")
    np.testing.assert_array_equal(auto.predict(X), fp32.predict(X))
    if not dispatch.isa_supported("amx_bf16"):
        return
    vggtl.set_isa("amx_bf16")
    bf16 = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), seed=3, precision="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vggtl.PrecisionNotice)
        F = auto.predict(X)
    np.testing.assert_array_equal(F, bf16.predict(X))
    assert not np.array_equal(F, fp32.predict(X))


def test_the_notice_is_said_once_per_process(monkeypatch, fresh_notice, rng):
    """Where "auto" resolves to bf16 (forced here on any CPU: the products then
    run emulated), the first base to compute says so, in a PrecisionNotice
    naming the way back to float32, and no later one does."""
    monkeypatch.setattr(dispatch, "auto_precision", lambda: "bf16")
    X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision="auto")
        assert not _notices(caught)  # building says nothing: computing does
        a.predict(X)
        b = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision="auto")
        b.predict(X)
        a.predict(X)
    said = _notices(caught)
    assert len(said) == 1, [str(w.message) for w in said]
    assert "precision='fp32'" in str(said[0].message) and "bfloat16" in str(said[0].message)


def test_no_notice_where_auto_stays_float32(monkeypatch, fresh_notice, rng):
    monkeypatch.setattr(dispatch, "auto_precision", lambda: "fp32")
    X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision="auto").predict(X)
    assert not _notices(caught)


def test_explicit_precisions_say_nothing(monkeypatch, fresh_notice, rng):
    monkeypatch.setattr(dispatch, "auto_precision", lambda: "bf16")
    X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vggtl.VGG16(weights=None, input_shape=(32, 32, 3)).predict(X)
        for p in ("fp32", "bf16"):
            vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision=p).predict(X)
    assert not _notices(caught)


@pytest.mark.parametrize("bad", ["AUTO", "float32", "", None, 16])
def test_other_precisions_are_refused(bad):
    with pytest.raises(ValueError, match=r"precision: expected 'auto', 'fp32' or 'bf16', got"):
        vggtl.VGG16(weights=None, precision=bad)
    with pytest.raises(ValueError, match=r"precision: expected 'auto', 'fp32' or 'bf16', got"):
        vggtl.VGG16Classifier(weights=None, precision=bad).fit(
            np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 0, 1])


def _model(precision):
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), precision=precision)
    return vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")],
                               cache=False)


@pytest.mark.parametrize("precision,version", [("fp32", 1), ("bf16", 2), ("auto", 3)])
def test_a_saved_model_keeps_the_precision_asked(precision, version, tmp_path, fresh_notice,
                                                 rng):
    """"auto" is saved as "auto" (resolved again where the model is loaded),
    in the lowest format version that holds it."""
    from vggtl.model import _read_metadata
    X = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    model = _model(precision)
    path = tmp_path / "m.vggtl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vggtl.PrecisionNotice)
        model.save(path)
        back = vggtl.load_model(path)
        np.testing.assert_array_equal(back.predict(X), model.predict(X))
    meta = _read_metadata(path.read_bytes(), str(path))
    assert meta["format_version"] == version and meta["base"]["precision"] == precision
    assert back.base.precision_asked == precision


def test_auto_in_an_older_format_is_refused(tmp_path):
    """A format 2 file cannot hold "auto": the loader names the field."""
    import vggtl.model_io as mio
    model = _model("auto")
    path = tmp_path / "m.vggtl"
    real = mio._PRECISION_VERSION
    try:
        mio._PRECISION_VERSION = dict(real, auto=2)  # what a broken writer would stamp
        model.save(path)
    finally:
        mio._PRECISION_VERSION = real
    with pytest.raises(ValueError, match=r"base\.precision: expected 'fp32' or 'bf16' in a "
                                         r"format_version 2 file, got 'auto'"):
        vggtl.load_model(path)


def test_the_estimator_takes_auto(rng, fresh_notice):
    assert vggtl.VGG16Classifier(weights=None).get_params()["precision"] == "fp32"
    X = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    clf = vggtl.VGG16Classifier(weights=None, epochs=1, cache=False, precision="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vggtl.PrecisionNotice)
        clf.fit(X, [0, 1] * 4)
    assert clf.get_params()["precision"] == "auto"
    assert clf.model_.base.precision == dispatch.auto_precision()


def test_the_cli_records_what_auto_computed(tmp_path, monkeypatch, fresh_notice):
    """`train --precision auto` writes both what was asked and what the base
    computed."""
    from vggtl.__main__ import main
    r = np.random.default_rng(0)
    X = r.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1] * 12)
    (tmp_path / "X.pickle").write_bytes(pickle.dumps(X))
    (tmp_path / "y.pickle").write_bytes(pickle.dumps(y))
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vggtl.PrecisionNotice)
        assert main(["train", "--x", str(tmp_path / "X.pickle"), "--y", str(tmp_path / "y.pickle"),
                     "--weights", "random", "--epochs", "1", "--out", str(out), "--quiet",
                     "--no-cache", "--precision", "auto"]) in (0, None)
    params = json.loads((out / "history.json").read_text())["params"]
    assert params["precision"] == "auto"
    assert params["precision_computed"] == dispatch.auto_precision()
