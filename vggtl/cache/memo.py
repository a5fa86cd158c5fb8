"""The cut's outputs that an extraction passed through, kept in memory for the
fine-tuning that usually follows.

``fit`` runs the whole frozen base on its images (and on each augmented view);
the tutorial's continuation, ``fine_tune`` from block5_conv1, then needs
block4_pool's output of the same images, which ``fit`` computed on its way and
threw away. A :class:`CutMemo` keeps it: an extraction past the memo's layer
records that layer's output (only when all of it fits the memo's budget), and
an extraction at that layer takes it instead of running the network again.

Entries are named like the feature cache's (:func:`vggtl.cache.keys.make_key`:
the digest of every weight below the cut, the algorithms, the preprocessing, the
view, a digest of the images), so changed weights or other images never match
an entry. The features are the same bits either way: the network's layers do
not depend on how a pass is split.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


class CutMemo:
    """Float32 outputs of ``layer`` by cache key id, at most ``budget`` bytes in all."""

    def __init__(self, layer: str, budget: int):
        self.layer = layer
        self.budget = int(budget)
        self._held: Dict[str, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._held.values())

    def clear(self) -> None:
        self._held.clear()

    def take(self, key: str) -> Optional[np.ndarray]:
        """The entry under ``key``, removed from the memo (its caller keeps it as
        long as it needs it), or None."""
        return self._held.pop(key, None)

    def recorder(self, key: str, shape) -> Optional["Recorder"]:
        """Somewhere to record the output of shape ``shape`` under ``key``, or
        None when the memo has it already or it would not fit the budget."""
        need = int(np.prod(shape, dtype=np.int64)) * 4
        if key in self._held or self.nbytes + need > self.budget:
            return None
        return Recorder(self, key, shape)


class Recorder:
    """One extraction's outputs at the memo's layer, rows filled as the batches
    pass; kept by :meth:`finish` only when every row was computed (a cache hit
    or an interrupted extraction computes none or some)."""

    def __init__(self, memo: CutMemo, key: str, shape):
        self.memo, self.key, self.layer = memo, key, memo.layer
        self.out = np.empty(shape, dtype=np.float32)
        self.filled = np.zeros(shape[0], dtype=bool)

    def record(self, start: int, rows: np.ndarray) -> None:
        self.out[start:start + len(rows)] = rows
        self.filled[start:start + len(rows)] = True

    def finish(self) -> None:
        if self.filled.all() and self.memo.nbytes + self.out.nbytes <= self.memo.budget:
            self.memo._held[self.key] = self.out
        self.out = None
