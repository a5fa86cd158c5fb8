"""Reading or building an entry, and :func:`extract`, the cache's entry point."""
from __future__ import annotations

import sys
import threading
import warnings
from typing import Optional

import numpy as np

from .._arrays import as_images
from .files import Damaged, Unwritable
from .housekeeping import enforce_limit, resolve_root
from .keys import array_digest, check_dtype, check_view, features_of, key_id, make_key
from .plan import ChunkSource, LocalPlan
from .progress import Progress
from .store import Changed, Entry, Stalled

_state_lock = threading.Lock()
_warned: set = set()


def warn_once(what: str, message: str) -> None:
    """One RuntimeWarning per folder, entry or lock (``what``) and process."""
    with _state_lock:
        if what in _warned:
            return
        _warned.add(what)
    warnings.warn(f"{message}; features are computed in memory, without caching",
                  RuntimeWarning, stacklevel=4)


def extract(base, X, layer: Optional[str] = None, cache=True, batch_size: int = 32,
            progress: bool = True, dtype="float32", view=None, transform=None,
            x_digest: Optional[str] = None, memo=None) -> np.ndarray:
    """Features of images X at ``layer`` from the cache, computing only what is missing.

    Parameters
    ----------
    base : VGG16 (anything with ``feature_source(layer)``, see
        :class:`vggtl.cache.plan.FeatureSource`)
    X : array (N, H, W, 1|3) or (N, H, W), uint8 or float (a memmap is fine)
    layer : None or a layer name
        None: the base's output (block5_pool, globally pooled when the base has
        ``pooling``), as ``base.predict``; a name cuts there ("block4_pool").
    cache : True, False or a folder
        True: ``$XDG_CACHE_HOME/vggtl/features`` (else ``~/.cache/vggtl/features``);
        False: compute in memory, store nothing.
    batch_size : the fewest images read from X at a time; the core runs as many
        as one pass holds (``base.images_per_pass``) when that is more. Features
        do not depend on it.
    progress : a tqdm bar with images/s while computing; silent on a hit.
    dtype : "float32" or "float16" (half the disk; within 1e-3 relative).
    view : None, or ``(config digest, view index)`` naming an augmented view.
    transform : with ``view``: ``transform(images, indices) -> images`` applied to
        every batch before the network (indices: the images' positions in X, int64),
        deterministic in (view, indices); its output size must not vary.
    x_digest : ``array_digest(X)`` when the caller already has it (saves hashing X
        again, e.g. for several views of one X).
    memo : None or a :class:`vggtl.cache.memo.CutMemo`. Float32 features at the
        memo's layer are taken from it when it holds them (and written to the
        cache from there); an extraction past its layer records that layer's
        output into it, within its budget.

    Returns
    -------
    A read-only ``np.memmap`` of shape (N, *base.output_shape(layer)) and ``dtype``
    (a plain ndarray with ``cache=False``, for N == 0, or when the entry cannot be
    used, which a RuntimeWarning says once: the folder cannot be written, the entry
    is damaged or not vggtl's (a symlink or special file in it), or another process
    holds it without progress for ``LOCK_WAIT_S`` seconds). Ctrl-C stops the
    extraction; what was done is kept and the next call resumes there.
    """
    if not callable(getattr(base, "feature_source", None)):
        raise TypeError(f"base: expected a vggtl.VGG16, got {type(base).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    dt = check_dtype(dtype)
    check_view(view, transform)
    if cache is not False:
        root = resolve_root(cache)
    X = as_images(X)
    n, h, w, c = X.shape
    features = features_of(base, layer)
    input_size = (h, w)
    if transform is not None and n:
        probe = as_images(transform(X[:1], np.zeros(1, dtype=np.int64)), "transform output")
        input_size, c = probe.shape[1:3], probe.shape[3]
    features.check_input(*input_size, c)
    item_shape = features.item_shape(input_size)
    known = keep = None
    if memo is not None and memo.budget and n and dt == np.float32:
        # what the memo can do here, decided before X is hashed for its key
        takes = features.name == memo.layer and getattr(features, "pooling", None) is None
        records = not takes and callable(getattr(features, "passes_through", None)) and \
            features.passes_through(memo.layer)
        if takes or records:
            if x_digest is None:
                x_digest = array_digest(X)
            memo_key = key_id(make_key(base, memo.layer, dt.name, view, input_size,
                                       x_digest=x_digest))
        if takes:
            known = memo.take(memo_key)
            if known is not None and cache is False:
                return known
        elif records:
            cut_shape = features_of(base, memo.layer).item_shape(input_size)
            keep = memo.recorder(memo_key, (n, *cut_shape))
    plan = LocalPlan(features, X, dt, batch_size, item_shape, input_size, transform,
                     bool(progress), view, known=known, keep=keep)
    try:
        if cache is False or n == 0:
            return in_memory(plan)
        key = make_key(base, layer, dt.name, view, input_size,
                       x_digest=x_digest if x_digest is not None else array_digest(X))
        entry = Entry(root, key)
        try:
            return read_or_build(entry, plan)
        except Unwritable as e:
            warn_once(root, f"vggtl: the feature cache in {root} cannot be written ({e})")
        except Damaged as e:
            warn_once(entry.dir, f"vggtl: the feature cache entry {entry.dir} is damaged or "
                                 f"not vggtl's ({e}); it is neither read nor written "
                                 f"(vggtl.cache.clear removes a damaged entry of vggtl's)")
        except Stalled as e:
            warn_once(e.lock, f"vggtl: {e}")
        return in_memory(plan)
    finally:
        if keep is not None:
            keep.finish()


def in_memory(plan: LocalPlan) -> np.ndarray:
    """All of the plan's features, computed here, kept nowhere."""
    bar = Progress(plan.progress, plan.n, 0, plan.desc)
    try:
        return plan.compute(0, plan.n, plan.batch_size, bar.update)
    finally:
        bar.close()


def read_or_build(entry: Entry, plan: ChunkSource) -> np.ndarray:
    """The entry's features as a read-only memmap: read under a shared lock when
    complete and intact, else built by ``plan`` under the exclusive lock (only
    the chunks missing or damaged), then the size limit enforced. Raises
    Unwritable, Damaged or Stalled when the entry cannot be used."""
    def waiting():
        if plan.progress:
            print(f"vggtl: waiting for another process computing {entry.dir}", file=sys.stderr,
                  flush=True)

    with entry.locked(exclusive=False, create=False, on_wait=waiting):
        F = entry.try_read()
        leftovers = F is not None and entry.has_chunks()
    if F is not None:
        if leftovers:
            entry.drop_leftovers()
        return F

    for _ in range(3):
        with entry.locked(exclusive=True, create=True, on_wait=waiting):
            F = entry.try_read()
            if F is not None:
                return F
            try:
                entry.build(plan)
            except Changed:
                continue  # a file changed while it was copied: check everything again
            F = entry.try_read(check=False)
        if F is not None:
            enforce_limit(entry.root, keep=entry.dir)
            return F
    raise RuntimeError(f"vggtl: the feature cache entry {entry.dir} keeps changing while it is "
                       f"written; is another program modifying it?")
