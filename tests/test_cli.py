"""The command line: train then predict round-trips, info, demo, one-line errors.

Most tests call vggtl.__main__.main in-process (fast); one runs `python -m vggtl`
in a subprocess to check what a user sees, exit codes included.
"""
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from vggtl.__main__ import builtin_images, cpu_info, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Feature cache and weight search away from the user's folders; no download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("VGGTL_WEIGHTS", raising=False)


@pytest.fixture
def pickles(tmp_path):
    """Tutorial-format pickles: 32 grey 32 x 32 images (discs and squares), string labels."""
    X, y = builtin_images(32, 32)
    X = X.mean(axis=3, keepdims=True).astype(np.uint8)
    labels = ["disc" if v == 0 else "square" for v in y.tolist()]
    xp, yp = tmp_path / "X.pickle", tmp_path / "y.pickle"
    xp.write_bytes(pickle.dumps(X))
    yp.write_bytes(pickle.dumps(labels))
    return str(xp), str(yp), X, labels


def run_cli(args, cwd=ROOT, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "vggtl", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_train_then_predict_round_trips(pickles, tmp_path, capsys):
    xp, yp, X, labels = pickles
    out = tmp_path / "run"
    rc = main(["train", "--x", xp, "--y", yp, "--epochs", "3", "--lr", "1e-2",
               "--weights", "random", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert re.search(r"weighted avg +\d\.\d\d", text)
    assert "saved and reloaded: predictions identical: True" in text
    assert "Epoch" not in text  # --quiet
    for name in ("model.vggtl", "history.json", "report.txt", "history.png",
                 "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in os.listdir(out) if p.endswith(".part")]
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["history"]["loss"]) == 3 and len(hist["history"]["val_accuracy"]) == 3
    assert hist["classes"] == ["disc", "square"] and hist["weights"] == "random"
    assert (out / "report.txt").read_text().split() == \
        text[text.index("precision"):text.index("saved")].split()

    csv = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(out), "--x", xp, "--out", str(csv), "--quiet"]) == 0
    rows = csv.read_text().splitlines()
    assert rows[0] == "index,label,p_disc,p_square" and len(rows) == len(X) + 1
    got = [r.split(",")[1] for r in rows[1:]]
    assert set(got) <= {"disc", "square"}
    # the same answers as the model in Python
    import vggtl
    model = vggtl.load_model(out / "model.vggtl")
    F = model.features(X, cache=True)  # the features predict computed, from the cache
    want = model.classes_[model.predict_features(F).argmax(1)].tolist()
    assert got == want
    probs = np.array([[float(v) for v in r.split(",")[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs, model.predict_features(F), atol=1e-6)

    # with labels: the classification report
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model.vggtl"), "--x", xp, "--y", yp,
                 "--quiet"]) == 0
    assert re.search(r"accuracy +\d\.\d\d +32", capsys.readouterr().out)


def test_train_resizes_augments_and_fine_tunes(tmp_path, capsys):
    X, y = builtin_images(24, 20)  # smaller than VGG16's 32 x 32
    xp, yp = tmp_path / "X.pickle", tmp_path / "y.pickle"
    xp.write_bytes(pickle.dumps(X))
    yp.write_bytes(pickle.dumps(y.tolist()))
    out = tmp_path / "run"
    rc = main(["train", "--x", str(xp), "--y", str(yp), "--epochs", "2", "--augment",
               "--augment-views", "2", "--fine-tune", "1", "--weights", "random",
               "--names", "disc,square", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "resizing 20x20 images to 32x32" in text
    assert "augmentation: rotation_range=30" in text
    assert "Epoch 1/1" in text  # the fine-tuning epoch
    assert re.search(r"^ +disc +\d", text, re.M)
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["fine_tune_history"]["loss"]) == 1
    assert (out / "fine_tune.png").stat().st_size > 0
    # predict resizes to the model's input too
    X2, _ = builtin_images(3, 40, seed=5)
    x2 = tmp_path / "new.pickle"
    x2.write_bytes(pickle.dumps(X2))
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--x", str(x2), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the names given to train, not the labels 0 and 1 of the pickle
    assert lines[0] == "index,label,p_disc,p_square" and len(lines) == 4
    assert {ln.split(",")[1] for ln in lines[1:]} <= {"disc", "square"}


def _image_folder(root, n=8, size=40):
    from PIL import Image
    X, y = builtin_images(2 * n, size)
    for i, (img, lab) in enumerate(zip(X, y)):
        d = root / ("disc" if lab == 0 else "square, big")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return X, y


def test_train_and_predict_images(tmp_path, capsys):
    pytest.importorskip("PIL")
    import vggtl
    X, y = _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    rc = main(["train", "--images", str(tmp_path / "imgs"), "--input-size", "32",
               "--epochs", "2", "--weights", "random", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "saved and reloaded: predictions identical: True" in text
    model = vggtl.load_model(out / "model.vggtl")
    assert model.class_names == ["disc", "square, big"]
    files = [str(tmp_path / "imgs" / "disc" / "0.png"), str(tmp_path / "imgs" / "square, big")]
    assert main(["predict", "--model", str(out), "--images", *files, "--quiet"]) == 0
    import csv
    import io
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["file", "label", "p_disc", "p_square, big"]
    assert [r[0] for r in rows[1:]] == [files[0]] + [
        str(tmp_path / "imgs" / "square, big" / f"{i}.png") for i in (1, 11, 13, 15, 3, 5, 7, 9)]
    Xi, _, _ = vggtl.load_images([r[0] for r in rows[1:]], image_size=(32, 32), progress=False)
    P = model.predict(Xi)
    for r, p in zip(rows[1:], P):
        assert r[2:] == [f"{v:.6f}" for v in p]
        assert r[1] == model.class_names[p.argmax()]


def test_images_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--images", str(tmp_path), "--x", "X.pickle", "--y", "y.pickle"])
    assert e.value.code == 2 and "--images or --x, not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["predict", "--model", str(tmp_path)])
    assert e.value.code == 2 and "required: --images or --x" in capsys.readouterr().err
    assert main(["train", "--images", str(tmp_path / "none"), "--quiet"]) == 1
    assert "--images " + str(tmp_path / "none") + ": no such folder" in capsys.readouterr().err


def test_info(capsys, tmp_path, monkeypatch):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for key in ("version: ", "threads: ", "blas: ", "cpu: ", "feature cache: ", "optional: "):
        assert key in text, key
    assert "imagenet weights: not found" in text
    if cpu_info()["features"]:
        assert re.search(r"cpu features: avx2 (yes|no), avx512f (yes|no), fma (yes|no)", text)
    # where weights were found
    w = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    w.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setenv("VGGTL_WEIGHTS", str(w))
    assert main(["info"]) == 0
    assert f"imagenet weights: {w}" in capsys.readouterr().out


def test_cpu_info_reads_flags():
    c = cpu_info()
    assert c["cores"] >= 1 and c["model"]
    if os.path.exists("/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read()
        if " avx2" in flags:
            assert c["features"]["avx2"] is True


@pytest.mark.parametrize("argv, wanted", [
    (["train", "--x", "missing.pickle", "--y", "y.pickle", "--weights", "random"],
     r"--x missing.pickle: no such file; pass the path"),
    (["predict", "--model", "nowhere", "--x", "X.pickle"], r"--model nowhere: no model there"),
    (["train", "--x", "{xp}", "--y", "{yp}", "--weights", "imagenet"],
     r"--weights imagenet: .* not on this machine .* or pass --weights random"),
    (["train", "--x", "{xp}", "--y", "{bad}", "--weights", "random"],
     r"X.pickle holds 32 images but .*bad.pickle holds 3 labels; expected one label"),
    (["train", "--x", "{xp}", "--y", "{yp}", "--input-size", "16"],
     r"--input-size 16: VGG16 needs at least 32"),
    (["train", "--x", "{evil}", "--y", "{yp}"], r"refuses pickles that could run code"),
])
def test_errors_are_one_line_that_say_what_to_do(argv, wanted, pickles, tmp_path, capsys,
                                                  monkeypatch):
    xp, yp, _, _ = pickles
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps([0, 1, 0]))
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    # no network: the download must fail fast and be reported
    import vggtl.weights as w

    def offline(*a, **k):
        raise w.WeightsNotFoundError("offline\nsecond line")
    monkeypatch.setattr(w, "_download_imagenet", offline)
    argv = [a.format(xp=xp, yp=yp, bad=bad, evil=evil) for a in argv]
    rc = main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m vggtl ")
    assert re.search(wanted, lines[0]), lines[0]
    assert "Traceback" not in err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--x", "X.pickle"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required: --y" in err[0] and "--help" in err[0]
    with pytest.raises(SystemExit):
        main(["train", "--x", "a", "--y", "b", "--epochs", "0"])
    assert "expected a number > 0" in capsys.readouterr().err


def test_subprocess_errors_and_debug(tmp_path):
    r = run_cli(["predict", "--model", str(tmp_path), "--x", "X.pickle"])
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    r = run_cli(["predict", "--model", str(tmp_path), "--x", "X.pickle", "--debug"])
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr


def test_demo_out_keeps_the_tutorial_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--n", "40", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "handwritten digits" in text or "discs and squares" in text
    assert "saved and reloaded: predictions identical: True" in text
    import vggtl
    X, y = vggtl.load_pickles(out / "X.pickle", out / "y.pickle")
    assert X.shape == (40, 32, 32, 1 if "digits" in text else 3) and X.dtype == np.uint8
    assert isinstance(pickle.loads((out / "y.pickle").read_bytes()), list)  # as the tutorial's
    assert (out / "model.vggtl").exists() and (out / "history.png").exists()


def test_demo_shapes_data(capsys):
    assert main(["demo", "--data", "shapes", "--n", "24", "--epochs", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "discs and squares" in text and re.search(r"^ +square +\d", text, re.M)


def test_docstring_examples_run():
    import doctest

    import vggtl.__main__ as cli
    result = doctest.testmod(cli)
    assert result.attempted >= 5 and result.failed == 0


def test_train_uses_weights_found_on_the_machine(pickles, tmp_path, monkeypatch, capsys):
    import vggtl
    xp, yp, _, _ = pickles
    w = tmp_path / "vgg16.safetensors"
    vggtl.VGG16(weights=None, seed=3).save_weights(w)
    monkeypatch.setenv("VGGTL_WEIGHTS", str(w))
    out = tmp_path / "run"
    assert main(["train", "--x", xp, "--y", yp, "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"weights: ImageNet, found at {w}" in text
    assert "Adam(lr=0.0001" in text  # the tutorial's INIT_LR with pretrained weights
    assert json.loads((out / "history.json").read_text())["weights"] == "imagenet"


def test_export_command_writes_what_onnxruntime_runs(pickles, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import vggtl
    xp, yp, X, _ = pickles
    out = tmp_path / "run"
    assert main(["train", "--x", xp, "--y", yp, "--epochs", "1", "--weights", "random",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", "--model", str(out)]) == 0
    assert "wrote " + str(out / "model.onnx") in capsys.readouterr().out
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": X[:8]})[0]
    want = vggtl.load_model(out / "model.vggtl").predict(X[:8])
    assert np.abs(got - want).max() <= 1e-4
    assert main(["export", "--model", str(tmp_path / "nothing"), "--quiet"]) == 1
    assert "no model there" in capsys.readouterr().err
