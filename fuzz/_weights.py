"""What the four weights targets share: the contract of vggtl.load_weights.

Contract (vggtl.weights.load_weights's docstring): any file gives the 13 conv
layers of VGG16 (here the miniature network of fuzz/seeds.py, whose shapes the
target makes vggtl.weights expect), float32, finite, in Keras's layouts, or a
``WeightsError`` (a ValueError) whose message names the file. No other exception,
no crash, no hang, no memory blow-up; no global a .pth pickle names is run.
"""
import os
import warnings

import numpy as np

import _harness
import seeds

with _harness.instrumented_imports():
    from vggtl import weights

seeds.use_mini_vgg16()
warnings.simplefilter("ignore")  # warnings are not part of the contract
_SHAPES = {n: ((3, 3, cin, cout), (cout,)) for n, cin, cout in weights.CONV_SPEC}


def target(name: str):
    """one_input for a target; ``name`` only names its scratch file."""
    path = os.path.join(_harness.scratch_dir(), name)

    def one_input(raw: bytes) -> None:
        _harness.write(path, raw)
        try:
            w = weights.load_weights(path, include_top=False, cache=False)
        except weights.WeightsError as e:
            assert path in str(e), f"the error does not name the file: {e}"
            return
        assert set(w) == set(_SHAPES), sorted(w)
        for layer, (k, b) in w.items():
            assert (k.shape, b.shape) == _SHAPES[layer], (layer, k.shape, b.shape)
            assert k.dtype == np.float32 and b.dtype == np.float32
            assert np.isfinite(k).all() and np.isfinite(b).all()
        assert w.preprocess in (None, "caffe", "torch", "scale")

    return one_input
