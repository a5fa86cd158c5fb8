"""Classification metrics: scikit-learn's where it is installed, else the same in NumPy.

Where scikit-learn is installed, :func:`classification_report`,
:func:`confusion_matrix` and :func:`accuracy_score` check and convert their
arguments here (the conveniences below) and let ``sklearn.metrics`` compute;
without it, the NumPy versions in this module give the same text and numbers
(``tests/oracle/test_metrics.py`` proves it on many random cases, against scikit-learn).

The tutorial ends with::

    from sklearn.metrics import classification_report
    print(classification_report(testY.argmax(axis=1), predIdxs, target_names=lb.classes_))

:func:`classification_report` here prints the same text, byte for byte, as
``sklearn.metrics.classification_report`` (and, with ``output_dict=True``,
returns the same dict), so the line keeps working with only the import changed::

    >>> from vggtl.metrics import classification_report, confusion_matrix
    >>> print(classification_report([0, 1, 1, 0], [0, 1, 0, 0], target_names=["cat", "dog"]))
                  precision    recall  f1-score   support
    <BLANKLINE>
             cat       0.67      1.00      0.80         2
             dog       1.00      0.50      0.67         2
    <BLANKLINE>
        accuracy                           0.75         4
       macro avg       0.83      0.75      0.73         4
    weighted avg       0.83      0.75      0.73         4
    <BLANKLINE>
    >>> confusion_matrix([0, 1, 1, 0], [0, 1, 0, 0])
    array([[2, 0],
           [1, 1]])

Labels may be integers, floats with integral values, booleans or strings, given
as lists, tuples or NumPy arrays (anything ``np.asarray`` takes).

Convenience (not in scikit-learn): one-hot or probability rows
--------------------------------------------------------------
A 2-D ``y_true`` / ``y_pred`` of shape ``(n_samples, n_classes)`` with
``n_classes >= 2`` -- the one-hot ``testY`` of the tutorial, or the output of
``model.predict`` -- is turned into class indices with ``argmax(axis=1)``, so
forgetting ``.argmax(1)`` gives the intended report instead of an error.
scikit-learn would read such a 0/1 matrix as a *multilabel* indicator; that is
not supported here, and a 0/1 matrix whose rows do not each hold exactly one 1
is refused rather than silently arg-maxed. A column vector ``(n_samples, 1)`` is
flattened, as scikit-learn does (sigmoid probabilities must be thresholded
first, e.g. ``(p > 0.5).astype(int)``).

Differences from scikit-learn (besides the 2-D convenience): multilabel targets are not
supported; a *single* list mixing strings and numbers is refused (scikit-learn
may silently turn it into strings); ``labels`` must be of the same kind (string
or number) as the targets; byte-string labels are decoded to ``str``;
``zero_division=np.int64(1)`` means 1 (scikit-learn gives NaN for a NumPy
integer); error messages are worded differently.
"""
from __future__ import annotations

import numbers
import operator
import warnings

import numpy as np

# scikit-learn computes where it is installed; False (the tests' switch) forces the
# NumPy versions of this module, which are what runs without scikit-learn
_USE_SKLEARN = True
_sk_metrics = None


def _sklearn():
    """sklearn.metrics, or None (not installed, or the NumPy versions asked for)."""
    global _sk_metrics
    if not _USE_SKLEARN:
        return None
    if _sk_metrics is None:
        try:
            import sklearn.metrics as m
        except ImportError:
            m = False
        _sk_metrics = m
    return _sk_metrics or None


def _call_sklearn(f, *args, **kwargs):
    """``f(*args, **kwargs)`` with scikit-learn's parameter checks skipped (ours ran),
    its UndefinedMetricWarning re-issued as ours (same name, same message)."""
    import sklearn
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with sklearn.config_context(skip_parameter_validation=True):
            out = f(*args, **kwargs)
    for w in rec:
        cat = UndefinedMetricWarning if w.category.__name__ == "UndefinedMetricWarning" \
            else w.category
        warnings.warn(str(w.message), cat, stacklevel=3)
    return out


def _plain_zero_division(zero_division):
    if isinstance(zero_division, str):
        return zero_division
    v = float(zero_division)
    return v if not np.isnan(v) else np.nan


__all__ = [
    "AUC",
    "Metric",
    "SparseTopKCategoricalAccuracy",
    "TopKCategoricalAccuracy",
    "UndefinedMetricWarning",
    "accuracy_score",
    "confusion_matrix",
    "classification_report",
]


class UndefinedMetricWarning(UserWarning):
    """A precision, recall or F-score had a zero denominator (as in scikit-learn)."""


# --------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------

def _is_str(v):
    return isinstance(v, (str, bytes))


def _check_list_not_mixed(y, name):
    """A flat list/tuple mixing strings and numbers is an error (np.asarray
    would silently turn the numbers into strings)."""
    n_str = 0
    for v in y:
        if isinstance(v, (list, tuple, np.ndarray)):
            return  # nested: a 2-D input, checked after conversion
        n_str += _is_str(v)
    if 0 < n_str < len(y):
        raise ValueError(
            f"Mix of label input types (string and number) in {name}: "
            f"{n_str} of its {len(y)} labels are strings, the rest are not")


def _asarray(y, name):
    """np.asarray with clear errors; object arrays resolved to str or numbers."""
    if y is None:
        raise ValueError(f"{name} is None; expected a sequence of labels")
    if isinstance(y, (list, tuple)):
        _check_list_not_mixed(y, name)
    try:
        arr = np.asarray(y)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} cannot be converted to an array of labels: {e}") from None
    if arr.ndim == 0:
        raise ValueError(f"{name} must be a sequence of labels, got the scalar {arr.item()!r}")
    if arr.dtype == object:
        flat = arr.ravel().tolist()
        n_str = sum(_is_str(v) for v in flat)
        if n_str and n_str < len(flat):
            raise ValueError(
                f"Mix of label input types (string and number) in {name}: "
                f"{n_str} of its {len(flat)} labels are strings, the rest are not")
        if n_str:
            arr = np.array([v.decode() if isinstance(v, bytes) else v for v in flat],
                           dtype=str).reshape(arr.shape)
        else:
            conv = np.asarray(flat).reshape(arr.shape) if flat else np.zeros(arr.shape)
            if conv.dtype.kind not in "biuf":
                raise ValueError(f"{name} holds labels of an unsupported type "
                                 f"(e.g. {type(flat[0]).__name__}); use ints or strings")
            arr = conv
    elif arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    if arr.dtype.kind not in "biufU":
        raise ValueError(f"{name} has unsupported dtype {arr.dtype}; labels must be "
                         "integers, integral floats, booleans or strings")
    return arr


def _to_1d_labels(arr, name):
    """Apply the 2-D conveniences and check label values (sklearn's type_of_target)."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
        col = True
    else:
        col = False
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError(f"{name} has shape {arr.shape}: no classes")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} is a 2-D array of strings, shape {arr.shape}; "
                             "expected 1-D labels or 2-D one-hot/probability rows")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} (one-hot/probability rows) contains NaN or infinity")
        if np.all((arr == 0) | (arr == 1)) and not np.all(arr.sum(axis=1) == 1):
            raise ValueError(
                f"{name} looks like a multilabel indicator matrix (0/1 entries, rows "
                "without exactly one 1); multilabel targets are not supported. "
                "One-hot or probability rows are reduced with argmax(axis=1).")
        return np.argmax(arr, axis=1)
    if arr.ndim != 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected 1-D labels or 2-D "
                         "one-hot/probability rows (n_samples, n_classes)")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinity")
        if np.any(arr != np.trunc(arr)):
            hint = (" (a column of probabilities must be thresholded first, e.g. "
                    "(p > 0.5).astype(int))") if col else (
                    " (pass class indices, e.g. probs.argmax(axis=1))")
            raise ValueError(f"{name} contains continuous (non-integral) values; "
                             f"classification metrics need class labels{hint}")
    elif arr.dtype.kind == "c":  # pragma: no cover - excluded in _asarray
        raise ValueError(f"{name} is complex")
    return arr


def _kind(arr):
    return "string" if arr.dtype.kind == "U" else "number"


def _union_labels(a, b):
    """Sorted unique labels of a and b (sklearn's unique_labels for 1-D targets).

    When the dtypes differ (e.g. int y_true, float or bool y_pred) this follows
    scikit-learn literally: a set of a's labels, then b's not already equal to
    one of them, sorted and passed to np.asarray -- which decides whether the
    labels print as "1" or "1.0", "True" or "1".
    """
    if a.dtype == b.dtype:
        return np.unique(np.concatenate([a, b]))
    labels = set(np.unique(a))
    labels.update(np.unique(b))
    return np.asarray(sorted(labels))


def _check_sample_weight(sample_weight, n):
    sw = np.asarray(sample_weight)
    if sw.dtype == object:
        sw = sw.astype(np.float64)
    if sw.ndim != 1:
        raise ValueError(f"sample_weight must be a 1-D array, got shape {sw.shape}")
    if sw.dtype.kind not in "biuf":
        raise ValueError(f"sample_weight must be numeric, got dtype {sw.dtype}")
    if sw.shape[0] != n:
        raise ValueError(f"sample_weight has {sw.shape[0]} entries but y_true and "
                         f"y_pred have {n} samples")
    if sw.dtype.kind == "f" and not np.all(np.isfinite(sw)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.all(sw == 0):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    return sw


def _check_targets(y_true, y_pred, sample_weight=None):
    """Validate and return (y_true, y_pred, sorted unique labels, sample_weight)."""
    yt = _asarray(y_true, "y_true")
    yp = _asarray(y_pred, "y_pred")
    if yt.shape[0] != yp.shape[0]:
        raise ValueError(
            f"y_true and y_pred have different lengths: y_true has {yt.shape[0]} "
            f"samples, y_pred has {yp.shape[0]}")
    if yt.shape[0] == 0:
        raise ValueError("Found empty input array (y_true and y_pred have 0 samples) "
                         "while a minimum of 1 sample is required.")
    if (yt.ndim == 2 and yp.ndim == 2 and yt.shape[1] > 1 and yp.shape[1] > 1
            and yt.shape[1] != yp.shape[1]):
        raise ValueError(f"y_true rows have {yt.shape[1]} classes but y_pred rows have "
                         f"{yp.shape[1]}")
    yt = _to_1d_labels(yt, "y_true")
    yp = _to_1d_labels(yp, "y_pred")
    if _kind(yt) != _kind(yp):
        raise ValueError(
            "Mix of label input types (string and number): y_true has "
            f"{_kind(yt)} labels (e.g. {yt[0].item()!r}), y_pred has {_kind(yp)} labels "
            f"(e.g. {yp[0].item()!r})")
    sw = None if sample_weight is None else _check_sample_weight(sample_weight, yt.shape[0])
    return yt, yp, _union_labels(yt, yp), sw


def _check_labels(labels, present, name="labels"):
    lab = _asarray(labels, name)
    if lab.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {lab.shape}")
    if lab.shape[0] == 0:
        raise ValueError(f"'{name}' should contain at least one label.")
    if _kind(lab) != _kind(present):
        raise ValueError(f"{name} are {_kind(lab)}s but the targets hold {_kind(present)} "
                         f"labels (e.g. {present[0].item()!r})")
    return lab


# --------------------------------------------------------------------------
# accuracy and confusion matrix
# --------------------------------------------------------------------------

def accuracy_score(y_true, y_pred, *, normalize=True, sample_weight=None):
    """Fraction (or, with ``normalize=False``, number) of correct predictions.

    Same as ``sklearn.metrics.accuracy_score`` for 1-D labels; 2-D one-hot or
    probability rows are reduced with ``argmax(axis=1)`` (see module docstring).
    """
    yt, yp, _, sw = _check_targets(y_true, y_pred, sample_weight)
    sk = _sklearn()
    if sk is not None:
        return float(_call_sklearn(sk.accuracy_score, yt, yp, normalize=bool(normalize),
                                   sample_weight=sw))
    score = yt == yp
    if normalize:
        return float(np.average(score, weights=sw))
    if sw is None:
        return float(np.sum(score.astype(np.float64)))
    return float(np.dot(score, sw))


def confusion_matrix(y_true, y_pred, labels=None, normalize=None, *, sample_weight=None):
    """Confusion matrix ``C[i, j]`` = samples of true class ``labels[i]``
    predicted as ``labels[j]``, as ``sklearn.metrics.confusion_matrix``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        Labels (ints, integral floats, bools or strings). 2-D one-hot or
        probability rows are reduced with ``argmax(axis=1)``.
    labels : array-like, optional
        Labels indexing the matrix, in this order (subset or reordering);
        default: the sorted labels present in ``y_true`` or ``y_pred``.
        Samples whose true or predicted label is not listed are dropped.
    normalize : {None, 'true', 'pred', 'all'}
        Divide by row sums, column sums or the total (0/0 gives 0).
    sample_weight : array-like of shape (n_samples,), optional

    Returns
    -------
    ndarray of shape (n_labels, n_labels): int64 counts (float64 when
    normalized or when ``sample_weight`` is floating).
    """
    if normalize not in (None, "true", "pred", "all"):
        raise ValueError(f"normalize must be one of None, 'true', 'pred', 'all'; "
                         f"got {normalize!r}")
    yt, yp, present, sw = _check_targets(y_true, y_pred, sample_weight)
    if labels is None:
        labels = present
    else:
        labels = _check_labels(labels, present)
        if not np.any(np.isin(labels, yt)):
            raise ValueError("At least one label specified must be in y_true")
    sk = _sklearn()
    if sk is not None:
        return _call_sklearn(sk.confusion_matrix, yt, yp, labels=labels, normalize=normalize,
                             sample_weight=sw)
    if sw is None:
        sw = np.ones(yt.shape[0], dtype=np.int64)
    n = labels.shape[0]

    # map each label to its index in `labels` (the last one when repeated, as a
    # dict would); samples with an unlisted true or predicted label are dropped
    order = np.argsort(labels, kind="stable")
    srt = labels[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = srt[1:] != srt[:-1]
    keys, vals = srt[last], order[last]

    def index(y):
        pos = np.searchsorted(keys, y)
        pos_c = np.minimum(pos, keys.shape[0] - 1)
        return np.where(keys[pos_c] == y, vals[pos_c], -1)

    ti, pi = index(yt), index(yp)
    keep = (ti >= 0) & (pi >= 0)
    ti, pi, w = ti[keep], pi[keep], sw[keep]
    dtype = np.int64 if sw.dtype.kind in "biu" else np.float64
    cm = np.zeros((n, n), dtype=dtype)
    np.add.at(cm, (ti, pi), w.astype(dtype))

    with np.errstate(all="ignore"):
        if normalize == "true":
            cm = cm / cm.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            cm = cm / cm.sum(axis=0, keepdims=True)
        elif normalize == "all":
            cm = cm / cm.sum()
        cm = np.nan_to_num(cm)

    if cm.shape == (1, 1):
        warnings.warn(
            "A single label was found in 'y_true' and 'y_pred'. For the confusion "
            "matrix to have the correct shape, use the 'labels' parameter to pass "
            "all known labels.", UserWarning, stacklevel=2)
    return cm


# --------------------------------------------------------------------------
# precision / recall / F1 (sklearn's precision_recall_fscore_support, 1-D only)
# --------------------------------------------------------------------------

def _label_counts(yt, yp, sw, labels, present):
    """Per-label (tp, predicted, true) sums for `labels`, with scikit-learn's
    arithmetic and dtypes (multilabel_confusion_matrix then tp + fp, tp + fn)."""
    all_labels = np.concatenate([labels, np.setdiff1d(present, labels, assume_unique=True)])
    classes = np.unique(all_labels)
    ti = np.searchsorted(classes, yt)
    pi = np.searchsorted(classes, yp)
    L = all_labels.shape[0]
    hit = ti == pi
    if np.any(hit):
        tp = np.bincount(ti[hit], weights=None if sw is None else sw[hit], minlength=L)
    else:  # as scikit-learn: float zeros, which makes every count float
        tp = np.zeros(L)
    pred = np.bincount(pi, weights=sw, minlength=L)
    true = np.bincount(ti, weights=sw, minlength=L)
    idx = np.searchsorted(classes, labels)
    tp, pred, true = tp[idx], pred[idx], true[idx]
    fp = pred - tp
    fn = true - tp
    tn = (np.sum(sw) if sw is not None else yt.shape[0]) - tp - fp - fn
    mcm = np.stack([tn, fp, fn, tp]).T
    tp = mcm[:, 3]
    return tp, tp + mcm[:, 1], tp + mcm[:, 2]


def _zero_division_value(zero_division):
    if isinstance(zero_division, str) and zero_division == "warn":
        return np.float64(0.0)
    # scikit-learn tests isinstance(z, (int, float)), so a NumPy integer 1 gives
    # NaN there; here any real 0 or 1 (np.int64(1) included) gives 0.0 or 1.0
    if isinstance(zero_division, numbers.Real) and zero_division in (0, 1):
        return np.float64(zero_division)
    return np.nan


def _check_zero_division(zero_division):
    if isinstance(zero_division, str):
        if zero_division == "warn":
            return
    elif isinstance(zero_division, numbers.Real):  # bools too, as scikit-learn
        if zero_division in (0, 1) or np.isnan(zero_division):
            return
    raise ValueError(f"zero_division must be 'warn', 0, 1 or np.nan; got {zero_division!r}")


def _warn_prf(modifier, msg_start, result_size):
    msg = ("{0} ill-defined and being set to 0.0 {{0}} no {1} samples. Use "
           "`zero_division` parameter to control this behavior.").format(msg_start, modifier)
    msg = msg.format("due to" if result_size == 1 else "in labels with")
    warnings.warn(msg, UndefinedMetricWarning, stacklevel=5)


def _prf_divide(numerator, denominator, metric, modifier, zero_division):
    mask = denominator == 0
    denominator = np.array(denominator, dtype=np.float64, copy=True)
    denominator[mask] = 1
    result = np.asarray(numerator, dtype=np.float64) / denominator
    if not np.any(mask):
        return result
    result[mask] = _zero_division_value(zero_division)
    if isinstance(zero_division, str) and zero_division == "warn":
        _warn_prf(modifier, f"{metric.capitalize()} is", result.shape[0])
    return result


def _nanaverage(a, weights=None):
    if a.shape[0] == 0:
        return np.nan
    mask = np.isnan(a)
    if np.all(mask):
        return np.nan
    if weights is None:
        return np.nanmean(a)
    a, weights = a[~mask], np.asarray(weights)[~mask]
    try:
        return np.average(a, weights=weights)
    except ZeroDivisionError:  # all weights zero: ignore them
        return np.average(a)


def _prfs(tp, pred, true, average, zero_division):
    """precision, recall, F1 (beta=1) and support, averaged like scikit-learn."""
    if average == "micro":
        tp = np.reshape(np.sum(tp), (1,))
        pred = np.reshape(np.sum(pred), (1,))
        true = np.reshape(np.sum(true), (1,))
    precision = _prf_divide(tp, pred, "precision", "predicted", zero_division)
    recall = _prf_divide(tp, true, "recall", "true", zero_division)
    beta2 = 1
    denom = beta2 * true.astype(np.float64) + pred.astype(np.float64)
    f_score = _prf_divide((1 + beta2) * tp.astype(np.float64), denom, "f-score",
                          "true nor predicted", zero_division)
    if average is None:
        return precision, recall, f_score, true
    weights = true if average == "weighted" else None
    return (float(_nanaverage(precision, weights)), float(_nanaverage(recall, weights)),
            float(_nanaverage(f_score, weights)), None)


# --------------------------------------------------------------------------
# classification report
# --------------------------------------------------------------------------

def classification_report(y_true, y_pred, *, labels=None, target_names=None,
                          sample_weight=None, digits=2, output_dict=False,
                          zero_division="warn"):
    """Text (or dict) report of per-class precision, recall, F1 and support.

    Byte-identical to ``sklearn.metrics.classification_report`` (dict output:
    same keys and values) for binary and multiclass targets.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        Labels: ints, integral floats, bools or strings. Convenience: 2-D
        one-hot or probability rows (n_samples, n_classes) are reduced with
        ``argmax(axis=1)``, so ``testY`` works as well as ``testY.argmax(1)``.
    labels : array-like, optional
        Labels to report, in this order; default: sorted labels present in
        ``y_true`` or ``y_pred``. Labels absent from the data get zero rows.
    target_names : list of str, optional
        Display names, matching ``labels`` (or the present labels) in length.
        A mismatch is an error without ``labels``, a ``UserWarning`` with it.
    sample_weight : array-like of shape (n_samples,), optional
    digits : int, default 2
        Decimals of the floats in the text output.
    output_dict : bool, default False
        Return ``{name: {"precision", "recall", "f1-score", "support"}, ...}``
        with the summary rows ("accuracy" as a single float) instead of text.
    zero_division : {"warn", 0, 1, np.nan}, default "warn"
        Value of a precision/recall/F1 with a zero denominator; "warn" gives 0
        and an :class:`UndefinedMetricWarning`.

    The summary rows are "accuracy" when every label present in the data is
    reported (otherwise "micro avg"), "macro avg" (unweighted mean over the
    reported labels, NaNs ignored) and "weighted avg" (support-weighted mean).
    """
    _check_zero_division(zero_division)
    if isinstance(digits, bool):
        raise TypeError("digits must be a non-negative int, got a bool")
    try:
        digits = operator.index(digits)
    except TypeError:
        raise TypeError(f"digits must be a non-negative int, got {digits!r}") from None
    if digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits}")
    if not isinstance(output_dict, (bool, np.bool_)):
        raise TypeError(f"output_dict must be a bool, got {output_dict!r}")

    yt, yp, present, sw = _check_targets(y_true, y_pred, sample_weight)
    if labels is None:
        labels = present
        labels_given = False
    else:
        labels = _check_labels(labels, present)
        labels_given = True
    micro_is_accuracy = not labels_given or set(labels.tolist()) >= set(present.tolist())

    if target_names is not None and len(labels) != len(target_names):
        if labels_given:
            warnings.warn("labels size, {0}, does not match size of target_names, {1}"
                          .format(len(labels), len(target_names)), stacklevel=2)
        else:
            raise ValueError(
                "Number of classes, {0}, does not match size of target_names, {1}. "
                "Try specifying the labels parameter".format(len(labels), len(target_names)))
    sk = _sklearn()
    if sk is not None:
        with warnings.catch_warnings():
            # the size mismatch was warned about above, once
            warnings.filterwarnings("ignore", message="labels size")
            return _call_sklearn(sk.classification_report, yt, yp,
                                 labels=labels if labels_given else None,
                                 target_names=target_names, sample_weight=sw, digits=digits,
                                 output_dict=bool(output_dict),
                                 zero_division=_plain_zero_division(zero_division))
    if target_names is None:
        target_names = ["%s" % l for l in labels]
    headers = ["precision", "recall", "f1-score", "support"]

    tp, pred, true = _label_counts(yt, yp, sw, labels, present)
    p, r, f1, s = _prfs(tp, pred, true, None, zero_division)
    rows = zip(target_names, p, r, f1, s)

    if output_dict:
        report_dict = {row[0]: dict(zip(headers, [float(i) for i in row[1:]]))
                       for row in rows}
    else:
        width = max(max(len(str(cn)) for cn in target_names), len("weighted avg"), digits)
        head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
        report = head_fmt.format("", *headers, width=width) + "\n\n"
        row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
        for row in rows:
            report += row_fmt.format(str(row[0]), *row[1:], width=width, digits=digits)
        report += "\n"

    for average in ("micro", "macro", "weighted"):
        if average == "micro" and micro_is_accuracy:
            heading = "accuracy"
        else:
            heading = average + " avg"
        avg_p, avg_r, avg_f1, _ = _prfs(tp, pred, true, average, zero_division)
        avg = [avg_p, avg_r, avg_f1, np.sum(s)]
        if output_dict:
            report_dict[heading] = dict(zip(headers, [float(i) for i in avg]))
        elif heading == "accuracy":
            fmt = ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}"
                   + " {:>9}\n")
            report += fmt.format(heading, "", "", *avg[2:], width=width, digits=digits)
        else:
            report += row_fmt.format(heading, *avg, width=width, digits=digits)

    if output_dict:
        if "accuracy" in report_dict:
            report_dict["accuracy"] = report_dict["accuracy"]["precision"]
        return report_dict
    return report


# ---------------------------------------------------------------------------
# training metrics: what ``compile(metrics=[...])`` accepts beyond "accuracy"


class Metric:
    """A metric ``fit`` and ``evaluate`` report, computed as TensorFlow's Keras
    does (tf-keras 2.x) on the targets and the model's outputs of a whole epoch
    (Keras accumulates batch by batch; for these metrics the result is the same).
    ``name`` is the history key ("val_" + name for validation)."""

    name = "metric"

    def __call__(self, y_true, y_pred) -> float:
        return self.result_of(np.asarray(y_true), np.asarray(y_pred, dtype=np.float32))

    def result_of(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _class_indices(y_true: np.ndarray, units: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == units and units > 1:
        return y.argmax(axis=1)
    return y.reshape(len(y)).astype(np.int64)


class TopKCategoricalAccuracy(Metric):
    """How often the true class is among the k highest outputs (Keras's
    ``top_k_categorical_accuracy``, through ``tf.math.in_top_k``: classes tied
    with the k-th score count as in the top k; a non-finite row never does).
    Targets may be one-hot rows or class indices."""

    def __init__(self, k: int = 5, name: str = "top_k_categorical_accuracy"):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        self.k = int(k)
        self.name = name

    def result_of(self, y_true, y_pred):
        y_pred = np.asarray(y_pred, np.float32).reshape(len(y_pred), -1)
        truth = _class_indices(y_true, y_pred.shape[1])
        score = y_pred[np.arange(len(y_pred)), truth]
        above = (y_pred > score[:, None]).sum(axis=1)
        ok = (above < self.k) & np.isfinite(y_pred).all(axis=1)
        return float(ok.mean()) if len(ok) else 0.0


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """:class:`TopKCategoricalAccuracy` under Keras's name for integer labels."""

    def __init__(self, k: int = 5, name: str = "sparse_top_k_categorical_accuracy"):
        super().__init__(k, name)


class AUC(Metric):
    """Area under the ROC (or precision-recall) curve, as Keras's ``AUC``: the
    outputs (clipped to [0, 1]) and the 0/1 targets are flattened into one binary
    problem (``multi_label=False``), counted into ``num_thresholds`` evenly spaced
    thresholds, and the curve summed by ``summation_method`` ("interpolation",
    "minoring", "majoring"); PR with interpolation uses Keras's
    ``interpolate_pr_auc``. Targets may be one-hot rows or class indices."""

    def __init__(self, num_thresholds: int = 200, curve: str = "ROC",
                 summation_method: str = "interpolation", name: str = "auc"):
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) \
                or num_thresholds < 2:
            raise ValueError(f"num_thresholds: expected an int > 1, got {num_thresholds!r}")
        if str(curve).upper() not in ("ROC", "PR"):
            raise ValueError(f"curve: expected 'ROC' or 'PR', got {curve!r}")
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(f"summation_method: expected 'interpolation', 'minoring' or "
                             f"'majoring', got {summation_method!r}")
        self.num_thresholds = int(num_thresholds)
        self.curve = str(curve).upper()
        self.summation_method = summation_method
        self.name = name

    def _counts(self, y_true, y_pred):
        """tp, fp, tn, fn per threshold, by Keras's bucket algorithm (float32)."""
        y_pred = np.asarray(y_pred, np.float32).reshape(len(y_pred), -1)
        units = y_pred.shape[1]
        y = np.asarray(y_true)
        if not (y.ndim == 2 and y.shape == y_pred.shape):
            idx = _class_indices(y, units)
            if units == 1:
                y = idx.reshape(-1, 1).astype(np.float32)
            else:
                y = np.zeros_like(y_pred)
                y[np.arange(len(idx)), idx] = 1.0
        t = (y.reshape(-1) != 0).astype(np.float64)
        p = np.clip(y_pred.reshape(-1), np.float32(0), np.float32(1))
        T = self.num_thresholds
        # the first threshold is 0 - epsilon: bucket -1 joins bucket 0
        bucket = np.maximum(np.ceil(p * np.float32(T - 1)) - np.float32(1), 0).astype(np.int64)
        tp_b = np.bincount(bucket, weights=t, minlength=T)
        fp_b = np.bincount(bucket, weights=1.0 - t, minlength=T)
        tp = np.cumsum(tp_b[::-1])[::-1]
        fp = np.cumsum(fp_b[::-1])[::-1]
        return tp, fp, fp_b.sum() - fp, tp_b.sum() - tp

    def result_of(self, y_true, y_pred):
        tp, fp, tn, fn = self._counts(y_true, y_pred)

        def div(a, b):
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(b == 0, 0.0, a / np.where(b == 0, 1.0, b))
        T = self.num_thresholds
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:T - 1] - tp[1:]
            p = tp + fp
            dp = p[:T - 1] - p[1:]
            slope = div(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * p[1:]
            ratio = np.where((p[:T - 1] > 0) & (p[1:] > 0), div(p[:T - 1], np.maximum(p[1:], 0)),
                             1.0)
            with np.errstate(divide="ignore"):
                inc = div(slope * (dtp + intercept * np.log(ratio)),
                          np.maximum(tp[1:] + fn[1:], 0))
            return float(inc.sum())
        recall = div(tp, tp + fn)
        if self.curve == "ROC":
            x, y = div(fp, fp + tn), recall
        else:
            x, y = recall, div(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:T - 1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:T - 1], y[1:])
        else:
            heights = np.maximum(y[:T - 1], y[1:])
        return float(((x[:T - 1] - x[1:]) * heights).sum())


_METRIC_NAMES = {
    "auc": AUC,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
}


def get(identifier):
    """"accuracy" (or "acc"), a :class:`Metric` instance, or a name: "AUC" /
    "auc", "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        if identifier in ("accuracy", "acc"):
            return "accuracy"
        cls = _METRIC_NAMES.get(identifier.lower())
        if cls is not None:
            return cls()
    raise ValueError(f"metrics: expected 'accuracy', 'AUC', 'top_k_categorical_accuracy', "
                     f"'sparse_top_k_categorical_accuracy' or a vggtl.metrics.Metric, got "
                     f"{identifier!r}")
