"""What every weights reader shares: the network the files describe (VGG16
configuration D, Keras's layer names), the errors, and :class:`WeightsDict`."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _core
from .._safe_pickle import UnsafePickleError as _UnsafePickleBase

# -- the network these files describe (VGG16 configuration D, Keras's names) ----------
# (name, Cin, Cout) of each conv, from the core's layer table
CONV_SPEC: Tuple[Tuple[str, int, int], ...] = tuple(
    (n, cin, cout) for n, kind, cin, cout, _ in _core.VGG16_LAYERS if kind == "conv")
CONV_LAYERS = tuple(n for n, _, _ in CONV_SPEC)
DENSE_LAYERS = tuple(n for n, kind, *_ in _core.VGG16_LAYERS if kind == "dense")
# torchvision's module indices of the same layers
TORCH_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCH_DENSE_INDEX = (0, 3, 6)
_FLAT_HWC = (7, 7, 512)  # block5_pool at 224 x 224: what fc1 reads


def _expected(name: str, classes: Optional[int] = None) -> Tuple[tuple, tuple]:
    """(kernel shape, bias shape) of a layer in Keras layout; predictions: any classes."""
    # the package's CONV_SPEC, looked up per call: fuzz/seeds.py and the tests
    # replace vggtl.weights.CONV_SPEC with a miniature network's
    from . import CONV_SPEC
    for n, cin, cout in CONV_SPEC:
        if n == name:
            return (3, 3, cin, cout), (cout,)
    if name == "fc1":
        return (int(np.prod(_FLAT_HWC)), 4096), (4096,)
    if name == "fc2":
        return (4096, 4096), (4096,)
    return (4096, classes), (classes,)


# -- errors ----------------------------------------------------------------------------
class WeightsError(ValueError):
    """A weights file that vggtl cannot use: corrupt, truncated, another model, ..."""


class UnsafePickleError(WeightsError, _UnsafePickleBase):
    """A .pth pickle asked for a global outside :data:`ALLOWED_GLOBALS`; nothing ran.
    Also a :class:`vggtl.data.UnsafePickleError`, so one ``except`` catches a refused
    pickle from either reader."""


class WeightsNotFoundError(FileNotFoundError):
    """``weights="imagenet"``: no file found and none could be downloaded."""


class WeightsDict(dict):
    """``{keras_layer: (kernel, bias)}`` plus where it came from.

    ``preprocess`` is the input preprocessing these weights were trained with
    ("caffe", "torch", or None when unknown); ``source`` the file; ``format`` its
    kind (see :func:`detect_format`).
    """

    def __init__(self, *args, preprocess=None, source=None, format=None, **kw):
        super().__init__(*args, **kw)
        self.preprocess = preprocess
        self.source = source
        self.format = format
