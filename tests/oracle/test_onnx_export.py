"""TransferModel.export: the whole model as ONNX, run by ONNX Runtime, equal to
vggtl's own probabilities."""
import json

import numpy as np
import pytest

import vggtl

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _model(shape, preprocess, head, seed=0):
    base = vggtl.VGG16(weights=None, input_shape=shape, preprocess=preprocess, seed=seed)
    return vggtl.TransferModel(base, head=head, seed=seed)


def _spread(model, X):
    """Scale the output layer so that its logits on X have mean 0 and std 2:
    probabilities far from constant, so that a comparison means something."""
    last = model.layers[-1]
    act, last.activation = last.activation, "linear"
    z = model.predict(X)
    last.activation = act
    k, b = model.get_weights()[last.name]
    a = 2.0 / max(float((z - z.mean(0)).std()), 1e-12)
    model.set_weights({**model.get_weights(), last.name: (k * a, (b - z.mean(0)) * a)})


def _run(path, X):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"images": X})[0]


@pytest.mark.parametrize("shape, preprocess, head, dtype", [
    ((32, 48, 3), "caffe", [vggtl.Flatten(), vggtl.Dense(16, activation="relu"),
                            vggtl.Dropout(0.5), vggtl.Dense(3, activation="softmax")], "uint8"),
    ((40, 32, 1), "scale", [vggtl.GlobalAveragePooling2D(),
                            vggtl.Dense(1, activation="sigmoid")], "float32"),
    ((32, 32, 3), "torch", [vggtl.GlobalMaxPooling2D(), vggtl.Dense(4, activation="softmax")],
     "uint8"),
])
def test_export_equals_predict(tmp_path, rng, shape, preprocess, head, dtype):
    model = _model(shape, preprocess, head)
    model.class_names = [f"c{i}" for i in range(max(2, model.output_units))]
    X = rng.integers(0, 256, (4,) + shape, dtype=np.uint8)
    if dtype == "float32":
        X = X.astype(np.float32)
    _spread(model, X)
    path = tmp_path / "model.onnx"
    assert model.export(path, input_dtype=dtype) == str(path)
    got = _run(path, X)
    want = model.predict(X)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert 0.05 < want.std()  # not a constant output: the comparison means something
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == model.class_names


def test_export_pooled_base(tmp_path, rng):
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), pooling="avg", preprocess="caffe")
    model = vggtl.TransferModel(base, head=[vggtl.Dense(2, activation="softmax")])
    X = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _spread(model, X)
    model.export(tmp_path / "m.onnx")
    assert 0.05 < model.predict(X).std()
    assert np.abs(_run(tmp_path / "m.onnx", X) - model.predict(X)).max() <= 1e-4


def test_export_errors(tmp_path, monkeypatch):
    model = _model((32, 32, 3), None, [vggtl.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="input_dtype"):
        model.export(tmp_path / "m.onnx", input_dtype="float64")
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
