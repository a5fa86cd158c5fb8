"""Plots as the tutorials draw them: training curves and a confusion matrix.

    H = model.fit(trainX, trainY, epochs=20, validation_data=(testX, testY))
    fig = vggtl.plot_history(H, path="plot.png")          # ggplot style, loss and accuracy
    fig = vggtl.plot_confusion_matrix(testY, pred, target_names=names, path="cm.png")

Both return a ``matplotlib.figure.Figure`` and, given ``path``, write it as a PNG
atomically (a temporary file beside ``path``, renamed when complete). matplotlib is
an optional dependency (``pip install matplotlib``), imported only when a plot is
drawn, so ``import vggtl`` never needs it.

The figures are made with pyplot, so in a notebook they show below the cell as
any pyplot figure does: write ``fig = vggtl.plot_history(H)`` (or end the line
with ``;``), or the returned figure is shown a second time. A figure only written
to ``path`` is closed (``close=False`` keeps it); ``ax=`` draws into your own axes.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_history", "plot_confusion_matrix"]

PathLike = Union[str, "os.PathLike[str]"]


def _pyplot(what: str):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"vggtl.{what} needs matplotlib, which is not installed: "
                          f"pip install matplotlib  (or, in a vggtl checkout: pip install -e '.[plots]')") from None
    return plt


def _save(fig, path: Optional[PathLike], dpi: int) -> None:
    if path is None:
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path: the folder {folder} does not exist; create it first")
    with atomic_path(path) as tmp:
        # the format is given: the temporary name does not end in .png
        fig.savefig(tmp, format="png", dpi=dpi)


def _history_dict(H) -> Mapping[str, Sequence[float]]:
    hist = getattr(H, "history", H)
    if not isinstance(hist, Mapping):
        raise TypeError(f"H: expected the History that fit returns (or its .history dict), "
                        f"got {type(H).__name__}")
    return hist


def _present_labels(y_true, y_pred) -> list:
    """The sorted labels found in y_true or y_pred (2-D rows: their argmax), as
    confusion_matrix orders them."""
    parts = []
    for y in (y_true, y_pred):
        a = np.asarray(y)
        parts.append(a.argmax(axis=1) if a.ndim == 2 and a.shape[1] > 1 else a.ravel())
    return np.unique(np.concatenate(parts)).tolist()


def _epochs(H, n: int, initial_epoch: Optional[int]) -> np.ndarray:
    """The epoch numbers the console printed ("Epoch 1/20" is 1): from
    ``initial_epoch`` + 1, else from a History's ``epoch`` indices (a fit or
    fine_tune started at ``initial_epoch`` continues the numbering), else from 1."""
    if initial_epoch is not None:
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) \
                or initial_epoch < 0:
            raise ValueError(f"initial_epoch: expected an int >= 0, got {initial_epoch!r}")
        return np.arange(1, n + 1) + int(initial_epoch)
    ep = getattr(H, "epoch", None)
    if isinstance(ep, (list, tuple)) and len(ep) == n and n:
        try:
            return np.asarray(ep, dtype=np.int64) + 1
        except (TypeError, ValueError):
            pass
    return np.arange(1, n + 1)


def _finish(fig, ax_given, path, dpi, close, plt) -> None:
    _save(fig, path, dpi)
    # a figure only written to a file is closed, so pyplot does not keep (or show) it
    if close or (close is None and path is not None and not ax_given):
        plt.close(fig)


def plot_history(H: Any, path: Optional[PathLike] = None, *,
                 title: str = "Training Loss and Accuracy", dpi: int = 100,
                 close: Optional[bool] = None, ax: Any = None,
                 initial_epoch: Optional[int] = None) -> "Figure":
    """Training and validation loss and accuracy over the epochs, drawn as the
    Keras tutorials draw them (ggplot style, one axes), with the legend outside
    the axes so that it never covers a curve.

    Parameters
    ----------
    H : the :class:`vggtl.History` that ``fit`` / ``fine_tune`` return, or its
        ``history`` dict ({"loss": [...], "accuracy": [...], "val_loss": [...],
        "val_accuracy": [...]}; Keras's ``H.history`` works too, "acc" included).
        Curves that are absent (no validation, no accuracy) are left out.
    path : where to write a PNG (atomically); None writes nothing.
    title : the axes' title.
    close : close the figure in pyplot after drawing. Default: closed when it is
        written to ``path`` and drawn in a figure of its own (the Figure is still
        returned and can be saved), kept open otherwise.
    ax : a matplotlib Axes to draw into (default: a new figure).
    initial_epoch : epochs are numbered from ``initial_epoch + 1``, as the console
        prints them; default: a History's own epoch indices, else from 1. Pass the
        number of epochs of ``fit`` to number a ``fine_tune`` history after them.

    Returns the ``matplotlib.figure.Figure``.

    >>> import vggtl
    >>> fig = vggtl.plot_history({"loss": [0.9, 0.5], "accuracy": [0.6, 0.8],
    ...                           "val_loss": [1.0, 0.7], "val_accuracy": [0.5, 0.7]}, close=True)
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['train_loss', 'val_loss', 'train_acc', 'val_acc']
    >>> fig.axes[0].lines[0].get_xdata().tolist()
    [1, 2]
    """
    hist = _history_dict(H)
    plt = _pyplot("plot_history")
    series = []
    for key, label in (("loss", "train_loss"), ("val_loss", "val_loss"),
                       ("accuracy", "train_acc"), ("acc", "train_acc"),
                       ("val_accuracy", "val_acc"), ("val_acc", "val_acc")):
        if key in hist and label not in {s[1] for s in series}:
            values = np.asarray(hist[key], dtype=np.float64).ravel()
            series.append((values, label))
    if not series:
        raise ValueError(f"H: no loss or accuracy to plot; found keys {sorted(hist)}")
    with plt.style.context("ggplot"):
        if ax is None:
            fig = plt.figure(figsize=(8.0, 4.8))
            axes = fig.add_subplot(1, 1, 1)
        else:
            if not hasattr(ax, "plot") or not hasattr(ax, "figure"):
                raise TypeError(f"ax: expected a matplotlib Axes, got {type(ax).__name__}")
            axes, fig = ax, ax.figure
        for values, label in series:
            x = _epochs(H, len(values), initial_epoch)
            axes.plot(x, values, label=label, marker="o" if len(values) == 1 else None)
        axes.set_title(title)
        axes.set_xlabel("Epoch #")
        axes.set_ylabel("Loss/Accuracy")
        # outside the axes, to their right: a legend inside covers some curve
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        from matplotlib.ticker import MaxNLocator
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        if ax is None:
            fig.tight_layout()
    _finish(fig, ax is not None, path, dpi, close, plt)
    return fig


def plot_confusion_matrix(y_true, y_pred, labels: Optional[Sequence] = None,
                          target_names: Optional[Sequence[str]] = None,
                          normalize: Optional[str] = None, path: Optional[PathLike] = None, *,
                          title: Optional[str] = None, cmap: str = "Blues", dpi: int = 100,
                          close: Optional[bool] = None, ax: Any = None) -> "Figure":
    """The confusion matrix as a heat map with the counts written in each cell
    (rows: true class, columns: predicted class), as scikit-learn's
    ``ConfusionMatrixDisplay`` draws it.

    Parameters
    ----------
    y_true, y_pred : labels (ints or strings), or one-hot / probability rows
        (reduced with ``argmax(axis=1)``), as :func:`vggtl.confusion_matrix`.
    labels : the labels to show, in this order (default: the sorted labels present).
    target_names : display names of those labels (e.g. ``["cat", "dog"]``).
    normalize : None (counts), "true" (rows sum to 1: recall), "pred" (columns:
        precision) or "all".
    path : where to write a PNG (atomically); None writes nothing.
    close : as :func:`plot_history` (default: closed when only written to ``path``).
    ax : a matplotlib Axes to draw into (default: a new figure).

    Returns the ``matplotlib.figure.Figure``.

    >>> import vggtl
    >>> fig = vggtl.plot_confusion_matrix([0, 1, 1, 0], [0, 1, 0, 0],
    ...                                   target_names=["cat", "dog"], close=True)
    >>> [t.get_text() for t in fig.axes[0].texts]
    ['2', '0', '1', '1']
    """
    from .metrics import confusion_matrix
    if normalize not in (None, "true", "pred", "all"):
        raise ValueError(f"normalize: expected None, 'true', 'pred' or 'all', got {normalize!r}")
    cm = np.asarray(confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize))
    n = cm.shape[0]
    if target_names is not None:
        names = [str(t) for t in target_names]
        if len(names) != n:
            raise ValueError(f"target_names: expected {n} names (one per class in the matrix), "
                             f"got {len(names)}")
    elif labels is not None:
        names = [str(v) for v in labels]
    else:
        names = [str(v) for v in _present_labels(y_true, y_pred)]
    plt = _pyplot("plot_confusion_matrix")
    ax_given = ax is not None
    if ax_given:
        if not hasattr(ax, "imshow") or not hasattr(ax, "figure"):
            raise TypeError(f"ax: expected a matplotlib Axes, got {type(ax).__name__}")
        fig = ax.figure
    else:
        size = max(4.0, 0.6 * n + 2.5)
        fig = plt.figure(figsize=(size + 1.0, size))
        ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, interpolation="nearest", cmap=cmap,
                   vmin=0.0, vmax=max(float(cm.max()) if cm.size else 1.0, 1e-12))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    threshold = (cm.max() + cm.min()) / 2.0 if cm.size else 0.0
    dark, light = im.cmap(1.0), im.cmap(0.0)
    for i in range(n):
        for j in range(n):
            text = f"{cm[i, j]:.2f}" if normalize else f"{int(round(cm[i, j]))}"
            ax.text(j, i, text, ha="center", va="center",
                    color=light if cm[i, j] > threshold else dark)
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(names, rotation=45 if max((len(s) for s in names), default=0) > 3 else 0,
                       ha="right" if max((len(s) for s in names), default=0) > 3 else "center")
    ax.set_yticklabels(names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    if title is None:
        title = "Confusion matrix" + ("" if normalize is None else f" (normalized: {normalize})")
    ax.set_title(title)
    ax.grid(False)
    if not ax_given:
        fig.tight_layout()
    _finish(fig, ax_given, path, dpi, close, plt)
    return fig
