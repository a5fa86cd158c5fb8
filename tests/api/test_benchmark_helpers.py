"""The helpers the tutorial benchmark's figures rest on: the upscaling of the
pretraining digits, the weights' digest and the resumable log of runs."""
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import _common
        import pretrain
        import tutorial
    finally:
        sys.path.pop(0)
    return _common, pretrain, tutorial


@pytest.mark.parametrize("size", [48, 224, 31])
def test_upscale_is_torchs_bilinear(bench, size):
    # torch's bilinear with align_corners=False is tf.image.resize's default
    # (half-pixel centres, the source clamped at the edges)
    torch = pytest.importorskip("torch")
    _, pretrain, _ = bench
    X = np.random.default_rng(size).random((3, 28, 28))
    want = torch.nn.functional.interpolate(torch.from_numpy(X)[:, None], size=(size, size),
                                           mode="bilinear", align_corners=False)[:, 0].numpy()
    got = pretrain.upscale(X, size)
    assert got.dtype == np.float32 and got.shape == (3, size, size)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_weights_digest_names_the_values(bench):
    _common, _, _ = bench
    rng = np.random.default_rng(0)
    w = {"b": (rng.random((3, 3, 2, 4), np.float32), np.zeros(4, np.float32)),
         "a": (rng.random((3, 3, 3, 2), np.float32), np.ones(2, np.float32))}
    d = _common.weights_sha256(w)
    assert d == _common.weights_sha256(dict(reversed(list(w.items()))))  # order of the dict
    assert d == _common.weights_sha256({k: (k_.astype(np.float64), b)
                                        for k, (k_, b) in w.items()})  # float32 values
    w["a"][0][0, 0, 0, 0] += 1e-3
    assert _common.weights_sha256(w) != d


def test_run_log_resumes_runs_of_the_same_settings(bench, tmp_path):
    _, _, tutorial = bench
    path = str(tmp_path / "runs.jsonl")
    settings = {"size": 224, "weights": "abc"}
    calls = []

    def run(r):
        def fn():
            calls.append(r)
            return {"time": 1.0, "acc": r}
        return fn

    log = tutorial.RunLog(path, settings)
    assert log.run("tf", "finetune", 0, run(0.5)) == {"time": 1.0, "acc": 0.5}
    assert calls == [0.5]
    lines = [json.loads(s) for s in open(path)]
    assert len(lines) == 1 and lines[0]["weights"] == "abc" and lines[0]["seed"] == 0
    # a later sitting: seed 0 is read, seed 1 is run and appended
    log = tutorial.RunLog(path, settings)
    assert log.run("tf", "finetune", 0, run(0.9))["acc"] == 0.5
    assert log.run("tf", "finetune", 1, run(0.7))["acc"] == 0.7
    assert log.run("vggtl", "finetune", 0, run(0.6))["acc"] == 0.6  # another library
    assert calls == [0.5, 0.7, 0.6]
    # other weights: nothing is reused
    log = tutorial.RunLog(path, dict(settings, weights="def"))
    assert log.run("tf", "finetune", 0, run(0.8))["acc"] == 0.8
    assert calls == [0.5, 0.7, 0.6, 0.8]
    assert len(open(path).readlines()) == 4


def test_run_log_refuses_a_foreign_file(bench, tmp_path):
    _, _, tutorial = bench
    path = tmp_path / "runs.jsonl"
    path.write_text('{"who": "tf", "row": "aug", "seed": 0, "result": {}}\n[1, 2]\n')
    with pytest.raises(SystemExit, match="line 2 of"):
        tutorial.RunLog(str(path), {"size": 48})
