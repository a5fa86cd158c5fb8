"""vggtl.metrics against scikit-learn, the test oracle.

Where scikit-learn is installed vggtl's metrics call it; the NumPy versions are
the fallback without it. Every comparison below runs the NumPy versions (the
autouse fixture turns scikit-learn off inside vggtl), so they are what is proved
equal to scikit-learn; ``test_via_sklearn_*`` check the calls through it.

classification_report text must be byte-identical to scikit-learn's, its dict
equal (same keys in the same order, floats within 1e-12), and the warnings the
same (class name and message, in order); confusion_matrix identical (values,
shape, dtype). scikit-learn's report costs ~50 ms a call, so each random
scenario draws a few cases: VGGTL_METRICS_CASES=<n> draws more (default 8).
"""
import ast
import doctest
import math
import os
import warnings

import numpy as np
import pytest

from vggtl import metrics as vm

try:
    import sklearn
    import sklearn.metrics as skm
except ImportError:  # pragma: no cover - the oracle is a test dependency
    skm = None

needs_sklearn = pytest.mark.skipif(skm is None, reason="scikit-learn (test oracle) not installed")

CASES = int(os.environ.get("VGGTL_METRICS_CASES", "8"))


@pytest.fixture(autouse=True)
def _numpy_versions(monkeypatch):
    """vggtl's own NumPy metrics, as without scikit-learn (the tests' subject)."""
    monkeypatch.setattr(vm, "_USE_SKLEARN", False)
NAMES = np.array(["cat", "dog", "bird", "a rather long class name", "x", "horse", "z9", "fish"])


# --- helpers ----------------------------------------------------------------------

def _call(f, *args, **kwargs):
    """(result or ('raised', type, message), [(warning class name, message), ...]).

    scikit-learn's parameter validation is skipped (the oracle is only given
    valid parameters): it is a fifth of the ~50 ms of its classification_report."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            if f.__module__.startswith("sklearn"):
                with sklearn.config_context(skip_parameter_validation=True):
                    out = f(*args, **kwargs)
            else:
                out = f(*args, **kwargs)
        except (ValueError, TypeError) as e:
            out = ("raised", type(e).__name__, str(e))
    return out, [(w.category.__name__, str(w.message)) for w in rec]


def _assert_dict_equal(got, ref):
    assert list(got) == list(ref)
    for key, rv in ref.items():
        gv = got[key]
        if isinstance(rv, dict):
            assert isinstance(gv, dict) and list(gv) == list(rv), key
            pairs = [(f"{key}/{k}", gv[k], rv[k]) for k in rv]
        else:
            pairs = [(key, gv, rv)]
        for where, g, r in pairs:
            assert type(g) is float, (where, type(g))
            if math.isnan(r):
                assert math.isnan(g), (where, g, r)
            else:
                assert abs(g - r) <= 1e-12, (where, g, r)


def assert_report_matches(y_true, y_pred, **kwargs):
    """Text, dict and warnings of vggtl's report equal scikit-learn's; returns the text."""
    text = None
    for output_dict in (False, True):
        ref, ref_w = _call(skm.classification_report, y_true, y_pred, output_dict=output_dict, **kwargs)
        got, got_w = _call(vm.classification_report, y_true, y_pred, output_dict=output_dict, **kwargs)
        assert got_w == ref_w
        if output_dict:
            _assert_dict_equal(got, ref)
        else:
            assert isinstance(got, str)
            assert got == ref, f"\n--- vggtl\n{got}\n--- sklearn\n{ref}"
            text = got
    return text


def assert_cm_matches(y_true, y_pred, **kwargs):
    ref, ref_w = _call(skm.confusion_matrix, y_true, y_pred, **kwargs)
    got, got_w = _call(vm.confusion_matrix, y_true, y_pred, **kwargs)
    assert got_w == ref_w
    if isinstance(ref, tuple):  # both raise ValueError (messages may differ)
        assert isinstance(got, tuple) and got[:2] == ref[:2], (got, ref)
        return
    assert isinstance(got, np.ndarray)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


# --- random scenarios ---------------------------------------------------------------

SCENARIOS = [
    "binary", "multiclass", "strings", "missing_in_pred", "missing_in_true", "labels_subset",
    "labels_superset", "target_names", "float_labels", "sample_weight", "zero_division",
    "all_wrong", "tiny",
]


def _case(rng, scenario):
    """One random (y_true, y_pred, kwargs) of the scenario; digits 2 or 4."""
    k = int(rng.integers(3, 8)) if scenario != "binary" else 2
    n = int(rng.integers(1, 4)) if scenario == "tiny" else int(rng.integers(8, 80))
    yt = rng.integers(0, k, n)
    yp = np.where(rng.random(n) < 0.6, yt, rng.integers(0, k, n))  # better than chance
    kw = {"digits": int(rng.choice([2, 4]))}
    if scenario == "missing_in_pred":
        yp = np.minimum(yp, k - 2)
    elif scenario == "missing_in_true":
        yt = np.minimum(yt, k - 2)
    elif scenario == "all_wrong":
        yp = (yt + rng.integers(1, k, n)) % k
    elif scenario == "sample_weight":
        kw["sample_weight"] = rng.random(n) * 3 if rng.random() < 0.5 else rng.integers(1, 5, n)
    elif scenario == "zero_division":
        yp = np.minimum(yp, k - 2)            # a class never predicted
        yt = np.where(yt == 0, 1, yt)         # a class never true
        kw["zero_division"] = [0, 1, 1.0, np.nan, "warn"][int(rng.integers(0, 5))]
    present = np.union1d(yt, yp)
    if scenario == "labels_subset":
        m = int(rng.integers(1, len(present) + 1))
        kw["labels"] = rng.permutation(present)[:m].tolist()
    elif scenario == "labels_superset":
        kw["labels"] = rng.permutation(np.arange(k + 2)).tolist()
    if scenario == "target_names":         # names shorter and longer than 12 characters
        kw["target_names"] = [f"c{i}_" + "w" * int(rng.integers(0, 24)) for i in range(len(present))]
    if scenario == "strings":
        yt, yp = NAMES[yt], NAMES[yp]
        if rng.random() < 0.5:
            yt, yp = yt.tolist(), yp.tolist()
        if rng.random() < 0.5:
            kw["labels"] = rng.permutation(NAMES[:k + 1]).tolist()[:int(rng.integers(1, k + 2))]
    elif scenario == "float_labels":
        yt, yp = yt.astype(np.float64), yp.astype(np.float32)
    elif scenario == "multiclass" and rng.random() < 0.5:
        yt, yp = yt.tolist(), yp.tolist()
    return yt, yp, kw


@needs_sklearn
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_random_reports_match_sklearn(scenario):
    rng = np.random.default_rng(SCENARIOS.index(scenario))
    for _ in range(CASES):
        yt, yp, kw = _case(rng, scenario)
        assert_report_matches(yt, yp, **kw)


@needs_sklearn
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_random_confusion_matrices_match_sklearn(scenario):
    rng = np.random.default_rng(100 + SCENARIOS.index(scenario))
    for _ in range(CASES):
        yt, yp, kw = _case(rng, scenario)
        kw = {k: v for k, v in kw.items() if k in ("labels", "sample_weight")}
        for normalize in (None, rng.choice(["true", "pred", "all"])):
            assert_cm_matches(yt, yp, normalize=normalize, **kw)


@needs_sklearn
@pytest.mark.parametrize("scenario", ["multiclass", "strings", "sample_weight", "tiny",
                                      "all_wrong"])
def test_random_accuracy_matches_sklearn(scenario):
    rng = np.random.default_rng(200 + SCENARIOS.index(scenario))
    for _ in range(10):
        yt, yp, kw = _case(rng, scenario)
        sw = kw.get("sample_weight")
        for normalize in (True, False):
            ref = skm.accuracy_score(yt, yp, normalize=normalize, sample_weight=sw)
            got = vm.accuracy_score(yt, yp, normalize=normalize, sample_weight=sw)
            assert type(got) is float and got == ref


# --- the report's layout rules ------------------------------------------------------

TUTORIAL = """\
              precision    recall  f1-score   support

         cat       0.67      1.00      0.80         2
         dog       1.00      0.50      0.67         2

    accuracy                           0.75         4
   macro avg       0.83      0.75      0.73         4
weighted avg       0.83      0.75      0.73         4
"""


def test_tutorial_report_literal():
    """Checked without the oracle: the exact text of the tutorial-style call."""
    got = vm.classification_report([0, 1, 1, 0], [0, 1, 0, 0], target_names=["cat", "dog"])
    assert got == TUTORIAL


def test_module_docstring_examples():
    result = doctest.testmod(vm, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@needs_sklearn
def test_accuracy_row_only_when_all_present_labels_reported():
    yt, yp = [0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1]
    full = assert_report_matches(yt, yp)
    assert "accuracy" in full and "micro avg" not in full
    sub = assert_report_matches(yt, yp, labels=[0, 2])
    assert "micro avg" in sub and "accuracy" not in sub
    sup = assert_report_matches(yt, yp, labels=[3, 2, 1, 0])     # absent label, reordered
    assert "accuracy" in sup
    d = vm.classification_report(yt, yp, labels=[0, 2], output_dict=True)
    assert "micro avg" in d and "accuracy" not in d
    assert isinstance(vm.classification_report(yt, yp, output_dict=True)["accuracy"], float)


@needs_sklearn
def test_accuracy_row_layout():
    """precision and recall cells blank, the value in the f1 column, total support."""
    text = assert_report_matches([0, 1, 1, 1], [0, 1, 0, 1], digits=3)
    line = [l for l in text.splitlines() if l.strip().startswith("accuracy")][0]
    assert line == "    accuracy" + " " * 26 + "0.750" + " " * 9 + "4"


@needs_sklearn
@pytest.mark.parametrize("digits", [0, 1, 2, 4, 7, 15])
def test_digits(digits):
    assert_report_matches(["a", "b", "b", "c", "c", "c"], ["a", "b", "c", "c", "a", "c"],
                          digits=digits)


@needs_sklearn
def test_name_column_width():
    yt, yp = [0, 1, 1, 2], [0, 1, 2, 2]
    for names in (["a", "b", "c"], ["exactly12chr", "b", "c"], ["thirteen_char", "b", "c"],
                  ["x" * 40, "y", "z"]):
        text = assert_report_matches(yt, yp, target_names=names)
        width = max(12, max(map(len, names)))
        assert text.splitlines()[0] == " " * width + "  precision    recall  f1-score   support"


@needs_sklearn
def test_target_names_mismatch():
    yt, yp = [0, 1, 2, 0], [0, 1, 1, 0]
    ref = _call(skm.classification_report, yt, yp, target_names=["a", "b"])
    got = _call(vm.classification_report, yt, yp, target_names=["a", "b"])
    assert got == ref and got[0][0] == "raised" and got[0][1] == "ValueError"
    assert "Number of classes, 3, does not match size of target_names, 2" in got[0][2]
    # with labels: a UserWarning, rows cut to the shorter list, as scikit-learn
    assert_report_matches(yt, yp, labels=[0, 1, 2], target_names=["a", "b"])
    assert_report_matches(yt, yp, labels=[0, 1], target_names=["a", "b", "c"])
    with pytest.warns(UserWarning, match="labels size, 3, does not match size of target_names, 2"):
        vm.classification_report(yt, yp, labels=[0, 1, 2], target_names=["a", "b"], zero_division=0)


@needs_sklearn
def test_numpy_target_names_like_label_binarizer_classes():
    yt = np.array(["dogs", "cats", "cats", "panda"])
    yp = np.array(["dogs", "cats", "dogs", "panda"])
    names = np.unique(yt)      # what lb.classes_ holds in the tutorial
    enc = np.searchsorted(names, yt), np.searchsorted(names, yp)
    assert_report_matches(*enc, target_names=names)


@needs_sklearn
def test_all_predictions_wrong_support_prints_as_float():
    """scikit-learn quirk, replicated: with no correct prediction at all the
    counts become float, so support prints as 1.0 rather than 1."""
    text = assert_report_matches([0, 1], [1, 0])
    assert text.splitlines()[2].endswith("1.0")
    text = assert_report_matches([0, 1, 1], [1, 0, 1], labels=[0])   # a hit elsewhere: ints
    assert text.splitlines()[2].endswith(" 1")


@needs_sklearn
@pytest.mark.parametrize("zero_division", ["warn", 0, 1.0, np.nan])
def test_zero_division(zero_division):
    yt, yp = [0, 0, 1, 1, 3], [0, 0, 1, 2, 2]   # 2 never true, 3 never predicted
    assert_report_matches(yt, yp, zero_division=zero_division)
    assert_report_matches(yt, yp, labels=[4, 3], zero_division=zero_division)  # all undefined
    assert_report_matches(yt, yp, labels=[3], zero_division=zero_division)     # "due to"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        vm.classification_report(yt, yp, zero_division=zero_division)
    if zero_division == "warn":
        assert rec and all(issubclass(w.category, vm.UndefinedMetricWarning) for w in rec)
    else:
        assert not rec


@needs_sklearn
def test_zero_division_given_as_bool_or_numpy_scalar():
    yt, yp = [0, 1, 2], [0, 0, 1]
    for z in (True, False, np.float64(1.0), np.float64(np.nan)):
        assert_report_matches(yt, yp, zero_division=z)
    # deliberate difference: scikit-learn turns a NumPy *integer* 1 into NaN
    d = vm.classification_report(yt, yp, zero_division=np.int64(1), output_dict=True)
    assert d["2"]["precision"] == 1.0


def test_undefined_metric_warning_class():
    assert issubclass(vm.UndefinedMetricWarning, UserWarning)
    with pytest.warns(vm.UndefinedMetricWarning, match="Precision is ill-defined"):
        vm.classification_report([0, 1], [0, 0])


@needs_sklearn
@pytest.mark.parametrize("yt, yp", [
    ([0, 1, 2], [0.0, 1.0, 1.0]),            # int true, float pred: named 0, 1, 2
    ([0, 1, 1], [0.0, 1.0, 2.0]),            # a float-only label: named 0.0, ...
    ([True, False, True], [True, True, True]),
    ([True, False], [1, 0]),
    (np.array([0, 1], dtype=np.int8), np.array([1, 300], dtype=np.int16)),
    (["a", "bb"], np.array(["a", "c"], dtype="U1")),
    (np.array([3, 1, 4, 1, 5]), np.array([3, 1, 4, 1, 9], dtype=np.uint8)),
], ids=["int-float", "float-only", "bool", "bool-int", "int8-int16", "str-widths", "int-uint8"])
def test_label_dtypes_and_their_names(yt, yp):
    assert_report_matches(yt, yp)
    assert_cm_matches(yt, yp)


@needs_sklearn
def test_odd_labels_and_weights():
    yt, yp = [0, 1, 2, 2, 0], [0, 1, 1, 2, 2]
    assert_report_matches(yt, yp, labels=[1, 1, 0])                       # duplicates
    assert_report_matches(yt, yp, labels=[9])                             # none present
    assert_report_matches(yt, yp, sample_weight=[1, -1, 2, 0.5, 1])      # negative weight
    assert_report_matches(yt, yp, sample_weight=[0, 0, 1, 0, 0])         # zero weights
    assert_report_matches(yt, yp, sample_weight=[0, 0, 1, 0, 0], zero_division=np.nan)
    assert_cm_matches(yt, yp, labels=[2, 2, 0])
    assert_cm_matches(yt, yp, labels=[9, 0], sample_weight=[1, 2, 3, 4, 5])
    assert_cm_matches(yt, yp, sample_weight=np.array([0.1, 0.7, 0.2, 0.3, 0.9], np.float32))
    assert_cm_matches(yt, yp, labels=[7])                               # not in y_true


@needs_sklearn
def test_single_label_confusion_matrix_warns_like_sklearn():
    assert_cm_matches([1, 1], [1, 1])
    with pytest.warns(UserWarning, match="A single label was found"):
        vm.confusion_matrix(["a"], ["a"])


def test_confusion_matrix_literal():
    cm = vm.confusion_matrix(["cat", "ant", "cat", "cat", "ant", "bird"],
                             ["ant", "ant", "cat", "cat", "ant", "cat"])
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 0, 1], [1, 0, 2]])
    n = vm.confusion_matrix([0, 0, 1], [0, 1, 1], labels=[1, 0, 2], normalize="true")
    np.testing.assert_array_equal(n, [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 0]])


# --- the 2-D convenience --------------------------------------------------------------

@needs_sklearn
def test_one_hot_and_probability_rows_are_argmaxed():
    rng = np.random.default_rng(5)
    k, n = 4, 50
    y = rng.integers(0, k, n)
    one_hot = np.eye(k, dtype=np.float32)[y]                 # keras to_categorical
    logits = rng.normal(size=(n, k)) + 2 * one_hot
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = ["cats", "dogs", "panda", "fox"]
    ref = vm.classification_report(y, probs.argmax(1), target_names=names)
    assert ref == skm.classification_report(y, probs.argmax(1), target_names=names)
    for yt in (y, one_hot, one_hot.astype(np.int64), one_hot.astype(bool).tolist()):
        assert vm.classification_report(yt, probs, target_names=names) == ref
        assert vm.classification_report(yt, probs, output_dict=True) == \
            vm.classification_report(y, probs.argmax(1), output_dict=True)
        np.testing.assert_array_equal(vm.confusion_matrix(yt, probs),
                                      skm.confusion_matrix(y, probs.argmax(1)))
        assert vm.accuracy_score(yt, probs) == skm.accuracy_score(y, probs.argmax(1))


@needs_sklearn
def test_column_vector_is_flattened():
    y = np.array([[0], [1], [1], [2]])
    p = np.array([[0], [1], [2], [2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # scikit-learn's DataConversionWarning
        ref = skm.classification_report(y, p)
    assert vm.classification_report(y, p) == ref


def test_2d_inputs_that_are_refused():
    with pytest.raises(ValueError, match="multilabel"):
        vm.classification_report(np.array([[1, 0, 1], [0, 1, 0]]), [0, 1])
    with pytest.raises(ValueError, match="multilabel"):
        vm.confusion_matrix([0, 1], np.array([[0, 0], [0, 1]]))
    with pytest.raises(ValueError, match="3 classes but y_pred rows have 2"):
        vm.classification_report(np.eye(3)[[0, 1]], np.eye(2)[[0, 1]])
    with pytest.raises(ValueError, match="NaN"):
        vm.classification_report([0, 1], np.array([[0.2, np.nan], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"thresholded.*p > 0\.5"):
        vm.classification_report([0, 1], np.array([[0.2], [0.7]]))
    with pytest.raises(ValueError, match=r"y_true has shape \(2, 2, 1\)"):
        vm.classification_report(np.zeros((2, 2, 1)), [0, 1])
    with pytest.raises(ValueError, match="strings"):
        vm.classification_report(np.array([["a", "b"], ["b", "a"]]), [0, 1])


# --- errors ---------------------------------------------------------------------------

FUNCS = [vm.classification_report, vm.confusion_matrix, vm.accuracy_score]


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_different_lengths(f):
    with pytest.raises(ValueError, match=r"different lengths.*\b3\b.*\b2\b"):
        f([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"different lengths.*\b2\b.*\b4\b"):
        f(np.eye(2), np.zeros((4, 2)))


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_empty_and_scalar_input(f):
    with pytest.raises(ValueError, match="empty"):
        f([], [])
    with pytest.raises(ValueError, match="empty"):
        f(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="scalar"):
        f(1, 1)
    with pytest.raises(ValueError, match="None"):
        f(None, [1])


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_mixed_label_types(f):
    with pytest.raises(ValueError, match=r"Mix of label input types \(string and number\): y_true"):
        f([0, 1, 1], ["a", "b", "b"])
    with pytest.raises(ValueError, match=r"Mix of label input types .* in y_true"):
        f([0, "a", 1], [0, 1, 1])          # np.asarray would make these all strings
    with pytest.raises(ValueError, match=r"Mix of label input types .* in y_pred"):
        f(["a", "b"], np.array(["a", 2], dtype=object))


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_non_label_values(f):
    with pytest.raises(ValueError, match="continuous"):
        f([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        f([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="unsupported"):
        f([None, 1], [0, 1])


def test_argument_errors():
    yt, yp = [0, 1, 1], [0, 1, 0]
    with pytest.raises(ValueError, match="labels are strings"):
        vm.classification_report(yt, yp, labels=["a"])
    with pytest.raises(ValueError, match="at least one label"):
        vm.classification_report(yt, yp, labels=[])
    with pytest.raises(ValueError, match="at least one label"):
        vm.confusion_matrix(yt, yp, labels=[])
    with pytest.raises(ValueError, match="must be in y_true"):
        vm.confusion_matrix(yt, yp, labels=[5])
    with pytest.raises(ValueError, match="normalize"):
        vm.confusion_matrix(yt, yp, normalize="rows")
    for bad in (2, -1, 0.5, "nan", None, "0"):
        with pytest.raises(ValueError, match="zero_division"):
            vm.classification_report(yt, yp, zero_division=bad)
    with pytest.raises(ValueError, match="digits"):
        vm.classification_report(yt, yp, digits=-1)
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match="digits"):
            vm.classification_report(yt, yp, digits=bad)
    with pytest.raises(TypeError, match="output_dict"):
        vm.classification_report(yt, yp, output_dict=1)
    with pytest.raises(ValueError, match=r"sample_weight has 2 entries.* 3 samples"):
        vm.classification_report(yt, yp, sample_weight=[1, 2])
    with pytest.raises(ValueError, match="non-zero"):
        vm.confusion_matrix(yt, yp, sample_weight=[0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        vm.accuracy_score(yt, yp, sample_weight=[1, np.nan, 1])
    with pytest.raises(ValueError, match="1-D"):
        vm.classification_report(yt, yp, sample_weight=[[1, 1, 1]])


def test_imports_sklearn_only_when_called():
    """``import vggtl`` never imports scikit-learn: vggtl.metrics imports it inside
    a function, on the first call, and only where it is installed."""
    tree = ast.parse(open(vm.__file__, encoding="utf-8").read())
    for node in tree.body:  # the module's top level
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""]
        else:
            continue
        assert not any(m.split(".")[0] in ("sklearn", "scipy") for m in mods), mods


@needs_sklearn
def test_via_sklearn_calls_it(monkeypatch):
    monkeypatch.setattr(vm, "_USE_SKLEARN", True)
    calls = []
    for name in ("classification_report", "confusion_matrix", "accuracy_score"):
        real = getattr(skm, name)

        def spy(*a, real=real, name=name, **k):
            calls.append((name, a[0].ndim, a[1].ndim))
            return real(*a, **k)
        monkeypatch.setattr(skm, name, spy)
    one_hot = np.eye(2)[[0, 1, 1, 0]]
    assert vm.classification_report(one_hot, [0, 1, 0, 0], target_names=["cat", "dog"]) == \
        TUTORIAL
    assert vm.confusion_matrix([0, 1, 1, 0], [0, 1, 0, 0]).tolist() == [[2, 0], [1, 1]]
    assert vm.accuracy_score([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    # one-hot rows were reduced by vggtl; scikit-learn got labels
    assert calls == [("classification_report", 1, 1), ("confusion_matrix", 1, 1),
                     ("accuracy_score", 1, 1)]


@needs_sklearn
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_via_sklearn_equals_the_numpy_versions(scenario, monkeypatch):
    """The two paths vggtl can take give the same text, dict, matrix and warnings."""
    rng = np.random.default_rng(300 + SCENARIOS.index(scenario))

    def both(f, *a, **k):
        out = []
        for use in (False, True):
            monkeypatch.setattr(vm, "_USE_SKLEARN", use)
            out.append(_call(f, *a, **k))
        return out
    for _ in range(CASES):
        yt, yp, kw = _case(rng, scenario)
        for output_dict in (False, True):
            (a, aw), (b, bw) = both(vm.classification_report, yt, yp, output_dict=output_dict,
                                    **kw)
            assert aw == bw
            if output_dict and isinstance(a, dict):
                _assert_dict_equal(a, b)
            else:
                assert a == b
        ckw = {k: v for k, v in kw.items() if k in ("labels", "sample_weight")}
        for normalize in (None, "true", "pred", "all"):
            (a, aw), (b, bw) = both(vm.confusion_matrix, yt, yp, normalize=normalize, **ckw)
            assert aw == bw
            if isinstance(a, tuple):
                assert a[:2] == b[:2]
            else:
                assert a.dtype == b.dtype and np.array_equal(a, b)
