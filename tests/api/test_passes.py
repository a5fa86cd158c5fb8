"""Images go through the core in batches of even sizes (vggtl._arrays.even_batches):
a batch of a few images reads the wide layers' weights for as few tiles, nearly as
slowly as a full one. The sizes never change a feature."""
import numpy as np
import pytest

import vggtl
from vggtl import vgg16 as V
from vggtl._arrays import even_batches, read_step


@pytest.mark.parametrize("start, stop, step", [(0, 225, 17), (0, 18, 17), (3, 10, 100),
                                               (0, 64, 32), (7, 14, 1), (0, 1, 5)])
def test_even_batches_cover_the_range_in_the_fewest_even_parts(start, stop, step):
    parts = even_batches(start, stop, step)
    sizes = [j - i for i, j in parts]
    assert parts[0][0] == start and parts[-1][1] == stop
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert len(parts) == -(-(stop - start) // step)
    assert max(sizes) <= step and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("batch_size, per_pass, step", [(32, 17, 34), (32, 16, 32), (32, 100, 100),
                                                       (5, 1, 5), (1, 7, 7), (35, 17, 51)])
def test_read_step_is_whole_passes_of_at_least_the_batch(batch_size, per_pass, step):
    assert read_step(batch_size, per_pass) == step


def test_even_batches_of_nothing_are_none():
    assert even_batches(5, 5, 3) == []


class _Spy:
    """vggtl.vgg16's _core, recording the images of every vgg16_forward call."""

    def __init__(self, core):
        self._core, self.sizes = core, []

    def __getattr__(self, name):
        return getattr(self._core, name)

    def vgg16_forward(self, xb, *args, **kwargs):
        self.sizes.append(len(xb))
        return self._core.vgg16_forward(xb, *args, **kwargs)


def test_predict_and_forward_from_run_even_batches_with_the_same_features(monkeypatch, rng):
    base = vggtl.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    X = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    whole = base.predict(X, batch_size=10)
    cut = base.predict(X, batch_size=10, layer="block4_pool")
    spy = _Spy(V._core)
    monkeypatch.setattr(V, "_core", spy)
    monkeypatch.setattr(V, "_WORKSPACE_BYTES", 1)  # one image a pass: batch_size decides
    np.testing.assert_array_equal(base.predict(X, batch_size=4), whole)
    assert spy.sizes == [3, 3, 4]  # was 4, 4 and 2
    spy.sizes.clear()
    np.testing.assert_array_equal(base.forward_from(cut, "block4_pool", batch_size=6), whole)
    assert spy.sizes == [5, 5]


def test_predict_reads_whole_passes(monkeypatch, rng):
    base = vggtl.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    X = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    whole = base.predict(X, batch_size=10)
    plan = V._pass_plan
    monkeypatch.setattr(V, "_pass_plan", lambda *a, **k: (3, plan(*a, **k)[1]))
    spy = _Spy(V._core)
    monkeypatch.setattr(V, "_core", spy)
    np.testing.assert_array_equal(base.predict(X, batch_size=4), whole)
    assert spy.sizes == [5, 5]  # read 6 at a time (two passes of 3), evenly: not 4, 3, 3
