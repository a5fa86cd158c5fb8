"""notebooks/transfer_learning.ipynb runs top to bottom (SMALL mode) and is stored clean."""
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from support import REPO as ROOT
NOTEBOOK = os.path.join(ROOT, "notebooks", "transfer_learning.ipynb")

# the tutorial's steps, in the tutorial's order, each found in the notebook's code
STEPS = ["vggtl.load_pickles(", "vggtl.train_test_split(", "vggtl.VGG16(", "vggtl.TransferModel(",
         "model.compile(", "vggtl.Augment(", "model.fit(", "vggtl.plot_history(H",
         "vggtl.classification_report(", "vggtl.plot_confusion_matrix(", "model.fine_tune(",
         "model.save(", "vggtl.load_model(", "reloaded.predict(image)", "vggtl.load_images(",
         "vggtl.grad_cam(", "vggtl.plot_grad_cam(", "vggtl.plot_top_losses(", "tta="]


def _code(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_notebook_is_stored_without_outputs_and_in_the_tutorial_order():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    code = _code(nb)
    where = [code.find(s) for s in STEPS]
    assert all(i >= 0 for i in where), [s for s, i in zip(STEPS, where) if i < 0]
    assert where == sorted(where), "the steps are out of the tutorial's order"
    params = nb.cells[[c.cell_type for c in nb.cells].index("code")]
    assert "parameters" in params.metadata.get("tags", [])
    assert "VGGTL_NOTEBOOK_SMALL" in params.source


def test_notebook_runs_top_to_bottom_in_small_mode(tmp_path, monkeypatch):
    # the kernel inherits this environment: SMALL mode, caches and weights of its own
    monkeypatch.setenv("VGGTL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("VGGTL_WEIGHTS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, when any cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")
    # no ImageNet weights here: the notebook says so in plain words
    assert "No ImageNet weights on this machine, so this notebook uses random weights" in text
    assert "Epoch 2/2" in text and "weighted avg" in text
    assert "predictions identical: True" in text
    assert "accuracy on the folder: " in text and "with test-time augmentation over 2 views" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    # samples, augmented samples, curves, confusion matrix, fine-tune, new image, Grad-CAM,
    # top losses
    assert images >= 8
    # the executed notebook is still a valid notebook (every output as nbformat's
    # schema says) and survives being written and read back whole
    nbformat.validate(nb)
    again = nbformat.reads(nbformat.writes(nb), as_version=4)
    assert [len(c.get("outputs", [])) for c in again.cells] == \
        [len(c.get("outputs", [])) for c in nb.cells]
    # without ipywidgets (as here) progress is a few plain lines, not a tqdm redraw per
    # output: the executed notebook stays small
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        streams = [o for o in c.outputs if o.output_type == "stream"]
        # a line per stage and per epoch (two epochs in SMALL mode), no redraws
        assert len(streams) <= 12, (c.source[:60], len(streams))
        assert not any("\r" in o.text for o in streams), c.source[:60]
    assert len(text) < 20000, len(text)
    # a step that makes the result worse says so, with the numbers
    assert re.search(r"Fine-tuning LOWERED the test accuracy, from \d\.\d\d to \d\.\d\d|"
                     r"Fine-tuning: test accuracy \d\.\d\d -> \d\.\d\d", text), text[-2000:]
    # the fine-tuning curves continue the head's epoch numbers
    assert "initial_epoch=len(H.history" in _code(nb)
    # nothing left behind in the temporary folder
    assert not [p for p in os.listdir(tmp_path) if p.startswith("vggtl-tutorial-")]


def test_progress_is_plain_lines_in_a_notebook_without_widgets(monkeypatch, capsys):
    """In a Jupyter kernel without ipywidgets, tqdm redraws its text bar as outputs of
    their own (one per update); vggtl prints plain lines."""
    import sys
    import types

    import numpy as np

    import vggtl

    class Shell:
        config = {"IPKernelApp": {}}
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: Shell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))
    X = np.random.default_rng(0).integers(0, 255, size=(40, 32, 32, 3), dtype=np.uint8)
    base.extract(X, cache=False, batch_size=8, progress=True)
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err
    lines = [ln for ln in out.out.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(r"40/40 img in \d+\.\d s", lines[0]), out
    assert "IProgress" not in out.err  # tqdm's warning about the missing widgets
