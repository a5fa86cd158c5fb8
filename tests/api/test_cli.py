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

from support import REPO as ROOT


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
     r"--weights imagenet: offline second line Or pass --weights random"),
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
    monkeypatch.setattr(w.imagenet, "_download_imagenet", offline)
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


# -- what a new user met ---------------------------------------------------------------------
def test_version_and_bare_command_print_what_there_is(capsys):
    import vggtl
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"vggtl {vggtl.__version__}"
    assert main([]) == 0  # a bare `python -m vggtl`: the help, not an error
    out = capsys.readouterr()
    assert "usage: python -m vggtl" in out.out and out.err == ""
    for cmd in ("demo", "train", "predict", "info", "cache"):
        assert re.search(rf"^    {cmd} ", out.out, re.M), cmd
    r = run_cli([])
    assert r.returncode == 0 and "predict" in r.stdout and r.stderr == ""


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_states_what_each_command_really_does(capsys, monkeypatch):
    import vggtl.__main__ as cli
    demo = _help(["demo"], capsys)
    assert f"--epochs EPOCHS epochs of the head (default {cli.DEMO_EPOCHS})" in demo
    assert cli.build_parser().parse_args(["demo"]).epochs == cli.DEMO_EPOCHS
    train = _help(["train"], capsys)
    assert "epochs of the head (default 20, the tutorial's)" in train
    assert cli.build_parser().parse_args(["train", "--x", "a", "--y", "b"]).epochs == 20
    info = _help(["info"], capsys)
    assert "whether it can be read" in info  # a description
    for flag in ("--quiet", "--threads", "--epochs"):  # nothing that does not apply
        assert flag not in info, flag
    predict = _help(["predict"], capsys)
    assert re.search(r"--batch-size BATCH_SIZE images per call", predict), predict


def test_predict_uses_the_batch_size_asked(pickles, tmp_path, monkeypatch, capsys):
    import vggtl
    xp, yp, _, _ = pickles
    out = tmp_path / "run"
    assert main(["train", "--x", xp, "--y", yp, "--epochs", "1", "--weights", "random",
                 "--out", str(out), "--quiet"]) == 0
    seen = []
    real = vggtl.VGG16.extract

    def spy(self, X, *a, **k):
        seen.append(k.get("batch_size"))
        return real(self, X, *a, **k)
    monkeypatch.setattr(vggtl.VGG16, "extract", spy)
    assert main(["predict", "--model", str(out), "--x", xp, "--batch-size", "4",
                 "--quiet"]) == 0
    assert seen == [4]


@pytest.mark.parametrize("argv, wanted", [
    (["--seed", "-3"], r"argument --seed: expected a whole number from 0 to 4294967295, got -3"),
    (["--seed", "2.5"], r"argument --seed: expected a whole number >= 0, got '2.5'"),
    (["--test-size", "0"], r"argument --test-size: expected a fraction strictly between 0 and 1"),
    (["--test-size", "1"], r"argument --test-size: expected a fraction"),
])
def test_bad_seed_and_test_size_are_named_before_data_loads(argv, wanted, capsys, tmp_path):
    # --x names no file: the option's error comes first, before anything is read
    with pytest.raises(SystemExit) as e:
        main(["train", "--x", str(tmp_path / "nowhere.pickle"), "--y", "y.pickle"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(wanted, err), err
    assert "nowhere" not in err


def test_history_json_records_what_reproduces_the_run(pickles, tmp_path, capsys):
    import vggtl
    xp, yp, _, _ = pickles
    out = tmp_path / "run"
    assert main(["train", "--x", xp, "--y", yp, "--epochs", "2", "--weights", "random",
                 "--augment", "--augment-views", "2", "--fine-tune", "1", "--seed", "7",
                 "--test-size", "0.3", "--out", str(out), "--quiet"]) == 0
    h = json.loads((out / "history.json").read_text())
    p = h["params"]
    assert h["vggtl_version"] == vggtl.__version__
    assert p["split_seed"] == 7 and p["model_seed"] == 7 and p["test_size"] == 0.3
    assert p["augment_views"] == 2 and p["augment_config"]["rotation_range"] == 30
    assert p["precision"] == "fp32" and p["precision_computed"] == "fp32"
    assert p["fine_tune_epochs"] == 1 and p["fine_tune_lr"] == 1e-4
    assert p["fine_tune_optimizer"] == "SGD(momentum=0.9)"
    assert p["lr"] == 3e-3 and p["lr_decay"] == pytest.approx(3e-3 / 2)
    assert h["n_train"] + h["n_test"] == 32 and len(h["fine_tune_history"]["loss"]) == 1


def test_imagenet_offline_is_one_message_with_url_md5_and_folders(pickles, tmp_path,
                                                                  monkeypatch, capsys):
    import urllib.error
    import urllib.request

    import vggtl
    from vggtl.weights import DOWNLOADS, KERAS_NOTOP, imagenet_search_dirs

    def refused(*a, **k):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(urllib.request, "urlopen", refused)
    url, md5 = DOWNLOADS[KERAS_NOTOP]
    with pytest.raises(vggtl.weights.WeightsNotFoundError) as e:
        vggtl.VGG16(weights="imagenet")
    msg = str(e.value)
    assert msg.count("Connection refused") == 1 and "not replaced" not in msg
    assert "URLError" not in msg or msg.count("URLError") == 1
    for must in [KERAS_NOTOP, url, md5] + [d for _, d in imagenet_search_dirs()]:
        assert must in msg, must
    xp, yp, _, _ = pickles
    assert main(["train", "--x", xp, "--y", yp, "--weights", "imagenet", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for must in [url, md5, "Connection refused", "--weights random"] + \
            [d for _, d in imagenet_search_dirs()]:
        assert must in err, must
    assert not os.listdir(vggtl.weights.vggtl_cache_dir())  # no temporary left


def test_info_says_whether_each_weights_file_can_be_read(tmp_path, monkeypatch, capsys):
    import sys as _sys

    import vggtl
    from vggtl.weights import KERAS_NOTOP, TORCH_FILE
    keras = tmp_path / "keras" / "models"
    keras.mkdir(parents=True)
    (keras / KERAS_NOTOP).write_bytes(b"junk, not HDF5")
    torch_dir = tmp_path / "xdg" / "vggtl"
    torch_dir.mkdir(parents=True)
    good = torch_dir / "good.safetensors"
    vggtl.VGG16(weights=None, seed=1).save_weights(good)
    monkeypatch.setenv("VGGTL_WEIGHTS", str(good))
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"imagenet weights: {good} (readable)" in text
    assert re.search(rf"imagenet weights: {re.escape(str(keras / KERAS_NOTOP))} \(NOT readable: "
                     rf"not a weights file", text), text
    # a real Keras .h5 without h5py: found, but not readable, and it says what to install
    monkeypatch.delenv("VGGTL_WEIGHTS")
    h5 = tmp_path / "real.h5"
    pytest.importorskip("h5py")
    import h5py
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]
    os.replace(h5, keras / KERAS_NOTOP)
    monkeypatch.setitem(_sys.modules, "h5py", None)
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "(NOT readable: reading Keras .h5 weight files needs h5py" in text
    assert "pip install h5py" in text and "imagenet weights: none readable" in text
    assert TORCH_FILE in text  # every name searched for


def test_cache_command_and_default_limit(tmp_path, monkeypatch, capsys):
    import numpy as np

    import vggtl
    from vggtl import cache as vc
    monkeypatch.delenv("VGGTL_CACHE_LIMIT", raising=False)
    assert main(["info"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("feature cache")]
    assert re.search(r"limit \d+\.\d GB \(default: 25% of the free disk", line[0]), line
    st = os.statvfs(tmp_path)
    limit = vc.get_size_limit()
    assert limit == int(vc.DEFAULT_LIMIT_FRACTION * st.f_bavail * st.f_frsize) or \
        abs(limit - vc.DEFAULT_LIMIT_FRACTION * st.f_bavail * st.f_frsize) < 0.01 * limit
    # two entries; one last used long ago
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    for _ in range(2):
        base.extract(rng.integers(0, 255, size=(2, 32, 32, 3), dtype=np.uint8), cache=True)
    entries = vc.info()["entries"]
    assert len(entries) == 2
    old = entries[0]["path"]
    t = os.path.getmtime(os.path.join(old, "manifest.json")) - 10 * 86400
    os.utime(os.path.join(old, "manifest.json"), (t, t))
    assert main(["cache", "info"]) == 0
    text = capsys.readouterr().out
    assert "2 entries" in text and "limit: " in text and "last used 10.0 d ago" in text
    assert main(["cache", "clear", "--older-than", "7d"]) == 0
    assert "removed 1 entries not used for 7.0 d" in capsys.readouterr().out
    assert [e["path"] for e in vc.info()["entries"]] != [old] and len(vc.info()["entries"]) == 1
    assert main(["cache", "clear"]) == 0
    assert vc.info()["entries"] == []
    with pytest.raises(SystemExit):
        main(["cache", "clear", "--older-than", "soon"])
    assert "expected an age such as 30d" in capsys.readouterr().err
    # "none" lifts the default limit
    monkeypatch.setenv("VGGTL_CACHE_LIMIT", "none")
    assert vc.get_size_limit() is None


def test_default_cache_limit_evicts_without_being_set(tmp_path, monkeypatch):
    """No set_size_limit, no $VGGTL_CACHE_LIMIT: the default bound still applies."""
    import numpy as np

    import vggtl
    from vggtl import cache as vc
    monkeypatch.delenv("VGGTL_CACHE_LIMIT", raising=False)
    monkeypatch.setattr(vc.housekeeping, "_limit_set", False)
    base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(1)
    base.extract(rng.integers(0, 255, size=(4, 32, 32, 3), dtype=np.uint8), cache=True)
    one = vc.info()["bytes"]
    # a disk with room for about one more entry under the default fraction
    free = int(1.5 * one / vc.DEFAULT_LIMIT_FRACTION) - one
    monkeypatch.setattr(vc.housekeeping, "_free_bytes", lambda path: free)
    assert vc.get_size_limit() == int(vc.DEFAULT_LIMIT_FRACTION * (free + one))
    for _ in range(3):
        base.extract(rng.integers(0, 255, size=(4, 32, 32, 3), dtype=np.uint8), cache=True)
    c = vc.info()
    assert len(c["entries"]) == 1 and c["bytes"] <= 1.5 * one


def test_train_auto_says_when_a_found_file_cannot_be_read(pickles, tmp_path, monkeypatch,
                                                           capsys):
    from vggtl.weights import KERAS_NOTOP
    xp, yp, _, _ = pickles
    keras = tmp_path / "keras" / "models"
    keras.mkdir(parents=True)
    (keras / KERAS_NOTOP).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # damaged
    out = tmp_path / "run"
    assert main(["train", "--x", xp, "--y", yp, "--epochs", "1", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"weights: found {keras / KERAS_NOTOP}, but it cannot be read" in text
    assert "random weights" in text and "Adam(lr=0.003" in text
    assert main(["train", "--x", xp, "--y", yp, "--epochs", "1", "--weights", "imagenet",
                 "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--weights imagenet: found" in err and "cannot be read" in err


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
