"""notebooks/transfer_learning.ipynb runs top to bottom (SMALL mode) and is stored clean."""
import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    assert json.dumps(nb)  # the executed notebook is still valid JSON
