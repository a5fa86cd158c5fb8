"""vggtl.plot_history / plot_confusion_matrix: what they draw, the PNG they write,
and the message when matplotlib is missing."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import vggtl  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
HIST = {"loss": [0.9, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [1.0, 0.8, 0.7], "val_accuracy": [0.45, 0.6, 0.7]}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_history_draws_the_tutorial_figure(tmp_path):
    path = tmp_path / "plot.png"
    fig = vggtl.plot_history(HIST, path=path)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "Training Loss and Accuracy"
    assert ax.get_xlabel() == "Epoch #" and ax.get_ylabel() == "Loss/Accuracy"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train_loss", "val_loss", "train_acc",
                                                          "val_acc"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3])  # as the console counts
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), HIST["val_accuracy"])
    assert ax.get_facecolor()[:3] == pytest.approx((0.898, 0.898, 0.898), abs=0.01)  # ggplot grey
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    assert os.listdir(tmp_path) == ["plot.png"]  # no temporary file left
    # ggplot was a context: the global style is untouched
    assert plt.rcParams["axes.facecolor"] != "#E5E5E5"


def test_plot_history_takes_a_history_without_validation():
    X = np.random.default_rng(0).integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    model = vggtl.TransferModel(vggtl.VGG16(weights=None, input_shape=(32, 32, 3)),
                                head=[vggtl.Dense(2, activation="softmax")], cache=False)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    H = model.fit(X, [0, 1] * 4, epochs=2, verbose=0)
    fig = vggtl.plot_history(H, close=True)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train_loss",
                                                                            "train_acc"]
    assert fig.number not in plt.get_fignums()  # close=True
    with pytest.raises(ValueError, match="no loss or accuracy"):
        vggtl.plot_history({"lr": [1e-3]})
    with pytest.raises(TypeError, match="expected the History"):
        vggtl.plot_history([0.5, 0.4])


def test_plot_confusion_matrix(tmp_path):
    y_true = ["cat", "dog", "dog", "cat", "bird", "dog"]
    y_pred = ["cat", "dog", "cat", "cat", "bird", "dog"]
    path = tmp_path / "cm.png"
    fig = vggtl.plot_confusion_matrix(y_true, y_pred, path=path)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bird", "cat", "dog"]
    assert [t.get_text() for t in ax.texts] == ["1", "0", "0", "0", "2", "0", "0", "1", "2"]
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"
    assert path.read_bytes().startswith(PNG)

    # one-hot rows, labels, target names, normalisation
    onehot = np.eye(2)[[0, 1, 1, 0]]
    fig = vggtl.plot_confusion_matrix(onehot, [0, 1, 0, 0], labels=[0, 1],
                                      target_names=["no", "yes"], normalize="true")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.00", "0.50", "0.50"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["no", "yes"]
    with pytest.raises(ValueError, match="target_names: expected 2 names"):
        vggtl.plot_confusion_matrix([0, 1], [0, 1], target_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="normalize"):
        vggtl.plot_confusion_matrix([0, 1], [0, 1], normalize="rows")


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    fig = vggtl.plot_history(HIST)

    def broken(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        vggtl.plot_history.__globals__["_save"](fig, path, 100)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["plot.png"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vggtl.plot_history(HIST, path=tmp_path / "no" / "plot.png")


def test_without_matplotlib_the_error_names_the_extra():
    code = ("import sys\n"
            "sys.modules['matplotlib'] = sys.modules['matplotlib.pyplot'] = None\n"
            "import vggtl\n"
            "try:\n"
            "    vggtl.plot_history({'loss': [1.0]})\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pip install matplotlib" in r.stdout and "vggtl[" not in r.stdout


def test_docstring_examples_run():
    import doctest

    import vggtl.plots as module
    result = doctest.testmod(module)
    assert result.attempted >= 4 and result.failed == 0


def _display_points(ax):
    pts = [ax.transData.transform(np.column_stack([ln.get_xdata(), ln.get_ydata()]))
           for ln in ax.lines]
    return np.concatenate(pts)


def test_plot_history_legend_covers_no_curve():
    # curves at the bottom left (where the tutorial's legend sat) and everywhere else
    hist = {"loss": [0.05, 0.9, 0.1, 0.8, 0.02], "accuracy": [0.0, 0.5, 1.0, 0.5, 0.0],
            "val_loss": [0.1, 0.2, 0.9, 0.3, 0.05], "val_accuracy": [0.02, 0.9, 0.1, 0.95, 0.5]}
    fig = vggtl.plot_history(hist)
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent()
    pts = _display_points(ax)
    inside = ((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) &
              (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1))
    assert not inside.any()
    assert not box.overlaps(ax.get_window_extent())  # beside the axes, not on them
    assert box.x1 <= fig.bbox.x1 + 1  # and inside the figure (not cut off)


def test_plot_history_numbers_fine_tuning_after_fit():
    X = np.random.default_rng(0).integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    model = vggtl.TransferModel(vggtl.VGG16(weights=None, input_shape=(32, 32, 3)),
                                head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")],
                                cache=False)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    H = model.fit(X, [0, 1] * 4, epochs=3, verbose=0)
    fig = vggtl.plot_history(H)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [1, 2, 3])
    fig2 = vggtl.plot_history({"loss": [0.5, 0.4]}, initial_epoch=3)
    np.testing.assert_array_equal(fig2.axes[0].lines[0].get_xdata(), [4, 5])
    with pytest.raises(ValueError, match="initial_epoch"):
        vggtl.plot_history(HIST, initial_epoch=-1)


def test_plots_draw_into_given_axes():
    fig, (a1, a2) = plt.subplots(1, 2)
    got = vggtl.plot_history(HIST, ax=a1)
    got2 = vggtl.plot_confusion_matrix([0, 1, 1, 0], [0, 1, 0, 0], ax=a2)
    assert got is fig and got2 is fig and len(fig.axes) >= 2
    assert len(a1.lines) == 4 and a2.get_title().startswith("Confusion matrix")
    assert fig.number in plt.get_fignums()  # the user's figure: never closed for them
    with pytest.raises(TypeError, match="ax: expected a matplotlib Axes"):
        vggtl.plot_history(HIST, ax="left")


def test_figures_written_only_to_a_file_are_closed(tmp_path):
    plt.close("all")
    fig = vggtl.plot_history(HIST, path=tmp_path / "h.png")
    cm = vggtl.plot_confusion_matrix([0, 1], [0, 1], path=tmp_path / "c.png")
    assert fig.number not in plt.get_fignums() and cm.number not in plt.get_fignums()
    assert (tmp_path / "h.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0
    shown = vggtl.plot_history(HIST)  # no path: the user wants to see it
    kept = vggtl.plot_history(HIST, path=tmp_path / "k.png", close=False)
    assert shown.number in plt.get_fignums() and kept.number in plt.get_fignums()
