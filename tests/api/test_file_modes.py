"""File modes: every file vggtl writes (models, weights, .npy,
the feature cache's files, CLI outputs, downloads, plots) gets the mode ``open()``
would give a new file, 0666 less the umask, and a file it replaces keeps its mode.

The umask is set inside each test and restored after it, so nothing depends on the
user or the umask the suite runs under; modes are compared as permission bits, which
root gets like anyone else.
"""
import hashlib
import io
import os
import stat
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest

import vggtl
from vggtl import cache as vc
from vggtl import weights as W
from vggtl.__main__ import main, write_pickles


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VGGTL_CACHE_LIMIT", raising=False)
    monkeypatch.setattr(vc.run, "_warned", set())
    return tmp_path


def _model():
    base = vggtl.VGG16(weights=None, seed=0, input_shape=(32, 32, 3))
    m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")])
    m.compile(optimizer=vggtl.Adam(1e-3), loss="sparse_categorical_crossentropy")
    return m


def _written(folder, model, X):
    """Write one file of every kind vggtl writes into ``folder``; their paths."""
    out = {}
    out["model"] = str(folder / "model.vggtl")
    model.save(out["model"])
    out["weights"] = str(folder / "base.safetensors")
    model.base.save_weights(out["weights"])
    xp, _ = write_pickles(str(folder), X, [0, 1] * (len(X) // 2))
    out["pickle (CLI)"] = xp
    out["npy"] = str(folder / "X.npy")
    vggtl.data.to_npy(xp, out["npy"])
    out["predictions (CLI)"] = str(folder / "pred.csv")
    assert main(["predict", "--model", out["model"], "--x", xp, "--out",
                 out["predictions (CLI)"], "--quiet", "--no-cache"]) == 0
    return out


def _cache_files(root):
    """The entry folder and its files (the marker, lock, manifest.json, data.npy,
    verified)."""
    (entry,) = [os.path.join(root, e) for e in os.listdir(root) if vc.store.ENTRY_RE.match(e)]
    files = {n: os.path.join(entry, n) for n in os.listdir(entry)}
    assert {"lock", "manifest.json", "data.npy", "verified"} <= set(files), files
    return entry, files


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_new_files_get_0666_less_the_umask(isolated, rng, monkeypatch, mask):
    X = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = _model()
    folder = isolated / "out"
    folder.mkdir()
    root = isolated / "features"
    data = b"weights of the day"
    monkeypatch.setitem(W.DOWNLOADS, "fake.h5", ("https://example.invalid/fake.h5",
                                                 hashlib.md5(data).hexdigest()))

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(data))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(data))
    with umask(mask):
        files = _written(folder, model, X)
        files["download"] = str(folder / "fake.h5")
        W._download("https://example.invalid/fake.h5", files["download"],
                    hashlib.md5(data).hexdigest())
        model.base.extract(X, cache=root, progress=False)
        model.base.extract(X, cache=root, progress=False)  # a hit: writes "verified"
        entry, cached = _cache_files(root)
    want = 0o666 & ~mask
    for what, path in {**files, **{f"cache {n}": p for n, p in cached.items()}}.items():
        assert mode(path) == want, (what, oct(mode(path)), oct(want))
    assert mode(entry) == 0o777 & ~mask


def test_plots_get_0666_less_the_umask(isolated):
    pytest.importorskip("matplotlib")
    path = isolated / "history.png"
    with umask(0o022):
        vggtl.plot_history({"loss": [1.0, 0.5]}, path=path)
    assert mode(path) == 0o644


def test_a_replaced_file_keeps_its_mode(isolated, rng):
    """A file written over keeps its permission bits, whatever the umask: a 0644
    model does not become 0600 (nor 0640 under umask 027), a 0600 one is not opened
    up by umask 000; and the feature cache's manifest, rewritten as an entry is
    resumed, keeps the mode it was given."""
    X = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = _model()
    folder = isolated / "out"
    folder.mkdir()
    files = _written(folder, model, X)
    for old, mask in ((0o644, 0o027), (0o600, 0o000), (0o664, 0o077), (0o604, 0o022)):
        for what, path in files.items():
            os.chmod(path, old)
        with umask(mask):
            _written(folder, model, X)
        for what, path in files.items():
            assert mode(path) == old, (what, oct(mode(path)), oct(old))
    root = isolated / "features"
    with umask(0o022):
        model.base.extract(X, cache=root, progress=False)
        model.base.extract(X, cache=root, progress=False)  # a hit: writes "verified"
        entry, cached = _cache_files(root)
        os.chmod(cached["manifest.json"], 0o660)
        os.unlink(cached["data.npy"])  # damaged: recomputed, the manifest rewritten
        model.base.extract(X, cache=root, progress=False)
    assert mode(cached["manifest.json"]) == 0o660 and mode(cached["data.npy"]) == 0o644
