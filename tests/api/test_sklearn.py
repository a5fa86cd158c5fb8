"""vggtl.VGG16Classifier: scikit-learn's estimator checks, Pipeline, GridSearchCV, pickling.

The checks run on an estimator with random base weights (no download) and a few
dozen epochs at a learning rate that lets the head separate make_blobs' points,
which reach VGG16 as 2 x 2 images upscaled to 32 x 32. EXPECTED_FAILED_CHECKS
lists every check it cannot pass, with the reason.
"""
import os
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import vggtl  # noqa: E402
from vggtl.sklearn import VGG16Classifier  # noqa: E402

from support import REPO  # noqa: E402

# Each check VGG16Classifier may not pass, and why. A sample's features and
# probabilities are a function of that sample alone (csrc/gemm.c), so the
# sample-order and subset invariance checks hold bit for bit.
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data":
        "an integer sample weight k is not the same training as k copies of the sample: "
        "Keras's sample_weight scales the sample's loss within its batch, while copies "
        "change the batches, their order and their number (and so every update), as in "
        "Keras; the losses agree, the trained networks do not.",
}


@pytest.fixture(autouse=True, scope="module")
def _private_feature_cache(tmp_path_factory):
    """The feature cache in a folder of this module's, not the user's."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _checked_estimator():
    return VGG16Classifier(weights=None, epochs=30, learning_rate=1e-2)


def _expected_failed(estimator):
    return EXPECTED_FAILED_CHECKS


@parametrize_with_checks([_checked_estimator()], expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


def test_expected_failures_are_real_checks():
    from sklearn.utils.estimator_checks import _yield_all_checks
    checks = _yield_all_checks(_checked_estimator(), legacy=True)
    names = {getattr(c, "func", c).__name__ for c in checks}
    assert set(EXPECTED_FAILED_CHECKS) <= names


# -- as a user meets it ----------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """90 of scikit-learn's digits 0, 1 and 2 (8 x 8, values 0..16) as flat rows."""
    from sklearn.datasets import load_digits
    d = load_digits()
    keep = d.target < 3
    return d.data[keep][:90], d.target[keep][:90]


def test_lazy_import():
    assert vggtl.VGG16Classifier is VGG16Classifier
    with pytest.raises(AttributeError):
        vggtl.NoSuchThing  # noqa: B018


def test_flat_rows_are_square_images(digits):
    X, y = digits
    clf = VGG16Classifier(weights=None, epochs=2, learning_rate=1e-2).fit(X, y)
    assert clf.image_shape_ == (8, 8, 1)
    assert clf.n_features_in_ == 64
    assert clf.model_.base.input_shape == (32, 32, 1)
    assert clf.classes_.tolist() == [0, 1, 2]
    p = clf.predict_proba(X)
    assert p.shape == (len(X), 3) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="X has 63 features"):
        clf.predict(X[:, :63])


def test_images_and_string_labels_learn():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 40, size=(60, 32, 32, 3), dtype=np.uint8)
    y = np.array(["dark", "light"] * 30)
    X[1::2] += 120  # the light ones are brighter
    clf = VGG16Classifier(weights=None, epochs=15, learning_rate=1e-2).fit(X, y)
    assert clf.image_shape_ == (32, 32, 3)
    assert not hasattr(clf, "n_features_in_")
    assert set(clf.predict(X)) <= {"dark", "light"}
    assert clf.score(X, y) >= 0.9
    assert len(clf.history_["loss"]) == 15


def test_in_pipeline_and_grid_search(digits):
    X, y = digits
    pipe = make_pipeline(FunctionTransformer(lambda a: a * (255.0 / 16.0)),
                         VGG16Classifier(weights=None, epochs=3))
    grid = GridSearchCV(pipe, {"vgg16classifier__learning_rate": [1e-3, 1e-2]}, cv=2)
    grid.fit(X, y)
    assert grid.best_params_["vgg16classifier__learning_rate"] in (1e-3, 1e-2)
    assert grid.predict(X[:5]).shape == (5,)
    assert 0.0 <= grid.score(X, y) <= 1.0


def test_pickle_round_trip(digits):
    X, y = digits
    clf = VGG16Classifier(weights=None, epochs=2).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert again.get_params() == clf.get_params()
    assert clone(clf).get_params()["epochs"] == 2


def test_fine_tune_and_augment(digits):
    X, y = digits
    X, y = X[:60].reshape(-1, 8, 8), y[:60]
    clf = VGG16Classifier(weights=None, epochs=2, fine_tune_epochs=1, learning_rate=1e-3,
                          augment=vggtl.Augment(rotation_range=10, seed=1), augment_views=2)
    clf.fit(X, y)
    assert len(clf.history_["loss"]) == 3  # 2 head epochs, then 1 of fine-tuning
    assert clf.predict(X).shape == (len(X),)


def test_bad_parameters_are_reported_at_fit(digits):
    X, y = digits
    clf = VGG16Classifier(weights=None, head="conv")  # no error before fit (scikit-learn's rule)
    with pytest.raises(ValueError, match="head: expected one of"):
        clf.fit(X, y)
    with pytest.raises(ValueError, match="input_size: VGG16 needs at least 32"):
        VGG16Classifier(weights=None, input_size=16).fit(X, y)
    with pytest.raises(ValueError, match="only one class"):
        VGG16Classifier(weights=None).fit(X[:5], np.zeros(5))


def test_vggtl_imports_without_sklearn_or_matplotlib():
    import subprocess
    import sys
    code = ("import sys\n"
            "for m in ('sklearn', 'matplotlib', 'matplotlib.pyplot'): sys.modules[m] = None\n"
            "import vggtl\n"
            "assert 'VGG16Classifier' not in vggtl.__all__\n"
            "try:\n"
            "    vggtl.VGG16Classifier\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pip install scikit-learn" in r.stdout and "vggtl[" not in r.stdout


def test_docstring_examples_run():
    import doctest

    import vggtl.sklearn as module
    result = doctest.testmod(module)
    assert result.attempted >= 10 and result.failed == 0


def _readme_block(start: str) -> str:
    import re
    readme = open(os.path.join(REPO, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    found = [b for b in blocks if b.startswith(start)]
    assert len(found) == 1, found
    return found[0]


def test_readme_grid_search_runs_offline_as_written(tmp_path, monkeypatch):
    """No ImageNet file and no network: the README's example still fits all 12
    candidates (random weights, one warning) and the download is tried once."""
    import urllib.error
    import urllib.request

    import vggtl.sklearn as vs
    from sklearn.datasets import load_digits
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("VGGTL_WEIGHTS", raising=False)
    monkeypatch.setattr(vs, "_auto_failed", None)
    tries = []

    def refused(*a, **k):
        tries.append(a)
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(urllib.request, "urlopen", refused)
    d = load_digits()
    X, y = d.data[:48], d.target[:48] % 2  # flat 8 x 8 rows, two classes
    ns = {"vggtl": vggtl, "X": X, "y": y}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(_readme_block("from sklearn.model_selection import GridSearchCV"), ns)
    search = ns["search"]
    assert len(search.cv_results_["mean_test_score"]) == 4 * 1
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()  # no fit failed
    assert search.best_estimator_.weights_ == "random"
    assert len(tries) == 1
    msgs = [str(w.message) for w in caught if "weights='auto'" in str(w.message)]
    assert msgs and "random weights" in msgs[0] and "Connection refused" in msgs[0]


def test_defaults_agree_with_the_command_line(monkeypatch):
    import vggtl.__main__ as cli
    import vggtl.sklearn as vs
    p = VGG16Classifier().get_params()
    train = cli.build_parser().parse_args(["train", "--x", "a", "--y", "b"])
    assert p["epochs"] == train.epochs == 20
    assert p["batch_size"] == train.batch_size
    assert p["weights"] == train.weights == "auto"
    assert p["learning_rate"] is None and train.lr is None
    assert (vs.LR_PRETRAINED, vs.LR_RANDOM) == (cli.LR_PRETRAINED, cli.LR_RANDOM)
    X = np.random.default_rng(0).random((12, 64))
    clf = VGG16Classifier(weights=None, epochs=1, cache=False).fit(X, [0, 1] * 6)
    assert clf.learning_rate_ == cli.LR_RANDOM  # random weights: the CLI's 3e-3
    assert clf.model_.optimizer.get_config()["learning_rate"] == pytest.approx(cli.LR_RANDOM)
    w = vggtl.VGG16(weights=None, seed=5).get_weights()
    clf = VGG16Classifier(weights=w, epochs=1, cache=False).fit(X, [0, 1] * 6)
    assert clf.learning_rate_ == cli.LR_PRETRAINED


def test_fit_takes_sample_weight():
    X = np.random.default_rng(0).random((12, 64))
    y = [0, 1] * 6
    a = VGG16Classifier(weights=None, epochs=2, cache=False).fit(X, y).predict_proba(X)
    b = VGG16Classifier(weights=None, epochs=2, cache=False).fit(
        X, y, sample_weight=np.ones(12)).predict_proba(X)
    c = VGG16Classifier(weights=None, epochs=2, cache=False).fit(
        X, y, sample_weight=np.r_[np.full(6, 5.0), np.zeros(6)]).predict_proba(X)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(a, c)
