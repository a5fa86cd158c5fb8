"""Feature extraction on a Dask cluster, into the feature cache every machine reads.

    from dask.distributed import Client
    client = Client("tcp://scheduler:8786")
    F = vggtl.distributed.extract(X, base, client=client, cache="/shared/vggtl")
    model.fit(X, y, cache="/shared/vggtl")     # a cache hit: the base computes nothing

``X``: an ndarray, an ``np.memmap`` of a file the workers can read, a ``.npy`` or
pickle path or a list of them (shards, concatenated in order), or a ``dask.array``.
Dask is an optional dependency (``pip install 'dask[distributed]'``); vggtl imports
without it.

How it works
------------
The client does what :func:`vggtl.cache.extract` does in one process, in the same
entry of the same cache (same key, manifest, chunk files and ``data.npy``; see
:mod:`vggtl.cache`), holding the entry's exclusive lock throughout, except that the
missing chunks run as Dask tasks, one per chunk: :class:`DistPlan` is the cache's
chunk source (``vggtl.cache.ChunkSource``) for a cluster, and
``vggtl.cache.read_or_build`` drives it as it drives the local plan. A task computes its chunk on a
worker and writes ``chunks/NNNNNN.bin`` itself, atomically; it returns the chunk's
CRC-32 and the client, the only writer of the manifest, records it (at most once a
second). When every chunk is there the client assembles ``data.npy`` and returns
it memory-mapped. So an entry made here is a hit for ``base.extract``,
``TransferModel.fit`` and this function, on any machine that mounts the folder.

Resuming. Chunks the manifest records are never computed again: a rerun of a
complete entry submits nothing, a rerun of an interrupted one only the rest. A
worker that dies mid-chunk leaves at most a temporary ``.part`` file (never read;
removed when the entry completes) and Dask runs the chunk again on another worker
(``distributed.scheduler.allowed-failures``, 3 by default); a chunk whose task
raises is retried ``retries`` times. If the client dies, what it recorded stays.

Weights. The client writes the base's weights once per entry to
``chunks/weights-<digest>.safetensors``; a worker process loads them on its first
chunk and keeps them (keyed by the weights' digest in the cache key, checked after
loading), so it loads them once, not once per task (:func:`worker_info`).

X's digest (part of the key) is :func:`vggtl.cache.array_digest` of the whole X:
an ndarray is hashed on the client, files and dask arrays block by block on the
workers (a dask.array is computed twice, once to hash it and once for the
features, unless ``x_digest`` is given).

Threads. A worker process runs one chunk at a time (a per-process lock around the
core), with ``threads`` threads, by default the cores of its core group: its CPU
affinity when the worker was pinned (``taskset``, ``numactl``), else the machine's
cores divided by the worker processes on that machine. Start workers with one Dask
thread each (``dask worker --nworkers P --nthreads 1``): further Dask threads
would only wait for the lock, and P processes x threads never exceed the cores.
"""
from __future__ import annotations

import collections
import mmap
import os
import stat
import tempfile
import threading
import time
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import _core, dispatch
from ._arrays import as_images, for_core
from ._files import open_regular, special_file_kind
from .cache import (DTYPES, Damaged, Entry, LocalPlan, Stalled, Unwritable, array_digest,
                    block_digest, check_dtype, combine_digests, default_chunk_rows, digest_rows,
                    make_key, progress_label, read_or_build, resolve_root)

__all__ = ["extract", "worker_info"]

MANIFEST_EVERY = 1.0   # seconds between manifest writes while chunks come in
_KEEP_BASES = 2        # weight sets a worker keeps loaded (e.g. two models in turn)
_KEEP_SHARDS = 2       # unpickled shards a worker keeps (consecutive chunks share one)

# Worker-process state. _CORE serialises the C core: two tasks of one worker would
# otherwise both start `threads` threads on the same cores.
_CORE = threading.Lock()
_STATE = threading.Lock()
_bases: "collections.OrderedDict" = collections.OrderedDict()
_shards: "collections.OrderedDict" = collections.OrderedDict()
_stats = {"weights_loads": 0, "chunks": 0, "images": 0, "digest_blocks": 0, "threads": 0}


def worker_info() -> dict:
    """This process's counts: weight loads, chunks and images computed, X blocks
    hashed, and the threads of the last chunk. Run it on the workers with
    ``client.run(vggtl.distributed.worker_info)``."""
    with _STATE:
        return dict(_stats, bases_kept=len(_bases))


def _require_dask():
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError("vggtl.distributed needs Dask: pip install 'dask[distributed]' "
                          "(or, in a vggtl checkout: pip install -e '.[distributed]')") from None


# -- X as the workers read it -----------------------------------------------------------
class _ArraySource:
    """An ndarray in the client's memory: each task carries its rows."""

    def __init__(self, X: np.ndarray):
        self.X = X
        self.n, self.image_shape, self.dtype = len(X), tuple(X.shape[1:]), X.dtype

    def __len__(self):
        return self.n

    def digest(self, client) -> str:
        return array_digest(self.X)

    def task_input(self, start: int, stop: int):
        return for_core(self.X[start:stop])


class _FileSource:
    """Shards on storage every worker reads: parts (kind, path, first row, rows,
    extra), kind "npy" (memory-mapped), "pickle" (vggtl.load_pickle) or "raw" (a
    memmap's bytes: extra = (byte offset, dtype str, shape)). Sent to the tasks
    as is (a few paths); the workers read the rows."""

    def __init__(self, parts, image_shape, dtype):
        self.parts, self.image_shape, self.dtype = parts, tuple(image_shape), np.dtype(dtype)
        self.n = sum(p[3] for p in parts)

    def __len__(self):
        return self.n

    def rows(self, i: int, j: int) -> np.ndarray:
        pieces = []
        for kind, path, first, count, extra in self.parts:
            lo, hi = max(i, first), min(j, first + count)
            if lo < hi:
                a = _open_part(kind, path, extra)
                if a.shape[1:] != self.image_shape or a.dtype != self.dtype \
                        or len(a) != count:
                    raise ValueError(f"X: {path} changed: it now holds {a.shape} {a.dtype}, "
                                     f"expected {(count, *self.image_shape)} {self.dtype}")
                pieces.append(a[lo - first:hi - first])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def digest(self, client) -> str:
        rows = digest_rows((self.n, *self.image_shape), self.dtype)
        futures = [client.submit(_digest_task, self, i, min(self.n, i + rows), pure=False)
                   for i in range(0, self.n, rows)]
        return combine_digests((self.n, *self.image_shape), self.dtype, client.gather(futures))

    def task_input(self, start: int, stop: int):
        return self


class _DaskSource:
    """A dask.array: its blocks are computed on the workers, rechunked so that
    one block is one cache chunk (or one digest block)."""

    def __init__(self, X):
        self.X = X
        self.n, self.image_shape, self.dtype = int(X.shape[0]), tuple(X.shape[1:]), X.dtype
        self._chunk, self._blocks = None, None

    def __len__(self):
        return self.n

    def _rechunked(self, rows: int):
        return self.X.rechunk({0: rows, 1: -1, 2: -1, 3: -1}).to_delayed().ravel()

    def digest(self, client) -> str:
        import dask
        rows = digest_rows((self.n, *self.image_shape), self.dtype)
        tasks = [dask.delayed(_digest_block, pure=True)(b) for b in self._rechunked(rows)]
        return combine_digests((self.n, *self.image_shape), self.dtype,
                               client.gather(client.compute(tasks)))

    def plan_chunks(self, chunk: int):
        self._chunk, self._blocks = chunk, self._rechunked(chunk)

    def task_input(self, start: int, stop: int):
        return self._blocks[start // self._chunk]


def _open_part(kind: str, path: str, extra):
    """One shard as N x H x W x C, kept per process (unpickling is the cost)."""
    from .data import _as_images, load_pickle
    st = os.stat(path)
    ident = (kind, path, st.st_size, st.st_mtime_ns, repr(extra))
    with _STATE:
        a = _shards.get(ident)
        if a is not None:
            _shards.move_to_end(ident)
            return a
    if kind == "raw":
        offset, dtype, shape = extra
        a = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
    else:
        a = _as_images(load_pickle(path), path)  # .npy: memory-mapped; pickle: the safe loader
    a = as_images(a, path)
    with _STATE:
        _shards[ident] = a
        while len(_shards) > _KEEP_SHARDS:
            _shards.popitem(last=False)
    return a


def _shard_meta(path: str):
    """(kind, shape, dtype str) of one shard, read on a worker (a pickle's shape
    is known only by loading it; the worker keeps it for its chunks)."""
    special = special_file_kind(path)
    if special:
        raise ValueError(f"X: {path} is {special}, expected a pickle or .npy file")
    with open_regular(path) as f:
        kind = "npy" if f.read(6) == b"\x93NUMPY" else "pickle"
    a = _open_part(kind, path, None)
    return kind, tuple(a.shape), a.dtype.str


def _digest_task(source: _FileSource, i: int, j: int) -> bytes:
    d = block_digest(source.rows(i, j))
    with _STATE:
        _stats["digest_blocks"] += 1
    return d


def _digest_block(b) -> bytes:
    d = block_digest(as_images(np.asarray(b)))
    with _STATE:
        _stats["digest_blocks"] += 1
    return d


def _memmap_part(X: np.memmap):
    """("raw", file, ...) for a C-contiguous view of a file-backed memmap, or None
    (then X is sent from the client like any array)."""
    mm, filename = getattr(X, "_mmap", None), getattr(X, "filename", None)
    if mm is None or not filename or not X.flags.c_contiguous:
        return None
    # np.memmap maps from the allocation boundary below its offset; a view keeps
    # its parent's offset and mmap, so the view's file position is that boundary
    # plus its distance from the mapping's start
    start = X.offset - X.offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = np.frombuffer(mm, dtype=np.uint8)
    except (TypeError, ValueError):
        return None
    offset = start + (X.ctypes.data - mapped.ctypes.data)
    del mapped
    if offset < 0 or offset + X.nbytes > os.path.getsize(filename):
        return None
    return "raw", os.path.abspath(filename), 0, len(X), (offset, X.dtype.str, X.shape)


def _source(X, client):
    if isinstance(X, (str, os.PathLike)):
        X = [X]
    if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, os.PathLike)) for p in X):
        paths = [os.path.abspath(os.fspath(p)) for p in X]
        metas = client.gather([client.submit(_shard_meta, p, pure=False) for p in paths])
        parts, first = [], 0
        for i, (p, (kind, shape, dtype)) in enumerate(zip(paths, metas)):
            if shape[1:] != metas[0][1][1:] or dtype != metas[0][2]:
                raise ValueError(f"X[{i}]: {p} holds images {shape[1:]} {np.dtype(dtype)}, "
                                 f"expected {metas[0][1][1:]} {np.dtype(metas[0][2])} as in "
                                 f"{paths[0]} (every shard must match)")
            parts.append((kind, p, first, shape[0], None))
            first += shape[0]
        return _FileSource(parts, metas[0][1][1:], metas[0][2])
    if type(X).__module__.startswith("dask.array") and hasattr(X, "rechunk"):
        if any(np.isnan(s) for s in X.shape):
            raise ValueError("X: a dask.array of unknown length; call X.compute_chunk_sizes() "
                             "first")
        # as_images on an empty array of X's kind: the checks and the grayscale axis
        probe = as_images(np.empty((0, *X.shape[1:]), dtype=X.dtype))
        if probe.ndim != X.ndim:
            X = X[..., None]
        return _DaskSource(X)
    if isinstance(X, np.ndarray):
        X = as_images(X)
        if isinstance(X, np.memmap):
            part = _memmap_part(X)
            if part is not None:
                return _FileSource([part], X.shape[1:], X.dtype)
        return _ArraySource(X)
    raise TypeError(f"X: expected a numpy array, a memmap, a .npy/pickle path or a list of "
                    f"them, or a dask.array; got {type(X).__name__}")


# -- the worker's side ----------------------------------------------------------------------
class _Spec:
    """What a task needs besides its rows (small: sent with every task)."""

    def __init__(self, base, plan: "DistPlan", entry: Entry, m: dict, weights_path: str,
                 per_host: Dict[str, int]):
        self.root, self.key = entry.root, entry.key
        self.weights_path, self.weights_digest = weights_path, entry.key["weights"]
        self.base_config = {"include_top": base.include_top, "classes": base.classes,
                            "input_shape": base.input_shape, "pooling": base.pooling,
                            "preprocess": base.preprocess, "precision": base.precision}
        self.layer, self.dtype = plan.layer, plan.dtype.name
        self.item_shape, self.input_size = plan.item_shape, plan.input_size
        self.image_shape = plan.X.image_shape
        self.batch_size = m["batch_size"]
        self.threads, self.per_host = plan.threads, per_host
        self.kernels = _kernels()


def _kernels() -> dict:
    """What this process computes with that changes the features: the 3x3
    algorithm setting (the instruction set does not: every level gives the same
    bits)."""
    return {"conv_algo": dispatch.get_conv_algo()}


def _use_kernels(wanted: dict) -> None:
    """Compute with the client's algorithm setting, so that every chunk is what
    the client would have computed; each worker runs its own CPU's best
    instruction set, which gives the same bits."""
    if _kernels() != wanted:
        dispatch.set_conv_algo(wanted["conv_algo"])


def _worker_base(spec: _Spec):
    """The base for these weights, loaded once per worker process."""
    from .vgg16 import VGG16
    ident = (spec.weights_digest, tuple(sorted((k, repr(v)) for k, v in spec.base_config.items())))
    with _STATE:
        base = _bases.get(ident)
        if base is not None:
            _bases.move_to_end(ident)
            return base
    _check_regular(spec.weights_path)
    base = VGG16(weights=spec.weights_path, **spec.base_config)
    if base.feature_source(spec.layer).weights_digest() != spec.weights_digest:
        raise RuntimeError(f"weights: {spec.weights_path} does not hold the weights of the cache "
                           f"key {spec.weights_digest[:16]} (changed since the client wrote it?)")
    with _STATE:
        _stats["weights_loads"] += 1
        _bases[ident] = base
        while len(_bases) > _KEEP_BASES:
            _bases.popitem(last=False)
    return base


def _check_regular(path: str) -> None:
    """The weights the client wrote: a regular file in a real folder, not a symlink
    or FIFO planted in the shared cache."""
    for p, want, kind in ((os.path.dirname(path), stat.S_ISDIR, "folder"),
                          (path, stat.S_ISREG, "regular file")):
        try:
            mode = os.stat(p, follow_symlinks=False).st_mode
        except OSError as e:
            raise RuntimeError(f"weights: cannot read {path}: {e.strerror or e}") from None
        if not want(mode):
            raise RuntimeError(f"weights: {p} is not a {kind} (a symlink or special file "
                               f"planted in the cache?)")


def _default_threads(per_host: Dict[str, int]) -> int:
    """The cores of this worker's group: its affinity when pinned to fewer cores
    than the machine has, else the machine's cores over its worker processes."""
    total = os.cpu_count() or 1
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        mine = total
    if mine < total:
        return max(1, mine)
    try:
        from distributed import get_worker
        from distributed.comm import get_address_host
        workers = per_host.get(get_address_host(get_worker().address), 1)
    except ValueError:  # not in a Dask worker (called directly)
        workers = 1
    return max(1, total // max(1, workers))


def _chunk_task(spec: _Spec, k: int, start: int, stop: int, rows) -> Tuple[int, int, int]:
    """Chunk k (images [start, stop)): compute it and write its chunk file;
    returns (k, CRC-32, images)."""
    X = rows.rows(start, stop) if isinstance(rows, _FileSource) else as_images(np.asarray(rows))
    if X.shape != (stop - start, *spec.image_shape):
        raise ValueError(f"X: rows {start}..{stop - 1} came as {X.shape}, expected "
                         f"{(stop - start, *spec.image_shape)}")
    threads = spec.threads or _default_threads(spec.per_host)
    with _CORE:
        base = _worker_base(spec)
        _core.set_num_threads(threads)
        _use_kernels(spec.kernels)
        plan = LocalPlan(base.feature_source(spec.layer), X, DTYPES[spec.dtype],
                         spec.batch_size, spec.item_shape, spec.input_size)
        F = plan.compute(0, len(X), spec.batch_size)
    crc = Entry(spec.root, spec.key).write_chunk(k, F)
    with _STATE:
        _stats["chunks"] += 1
        _stats["images"] += len(X)
        _stats["threads"] = threads
    return k, crc, len(X)


# -- the client's side ----------------------------------------------------------------------
class DistPlan:
    """A chunk source (vggtl.cache.ChunkSource) whose chunks run as Dask tasks on
    the cluster, each written into the entry by its worker."""

    def __init__(self, base, source, layer, dtype, batch_size, item_shape, input_size,
                 progress, client, chunk, threads, retries):
        self.base, self.X, self.layer, self.dtype = base, source, layer, np.dtype(dtype)
        self.batch_size, self.item_shape = batch_size, tuple(item_shape)
        self.input_size, self.progress = input_size, progress
        self.n = len(source)
        self.desc = progress_label(base.feature_source(layer))
        self.client, self.chunk, self.threads, self.retries = client, chunk, threads, retries

    def chunk_rows(self) -> int:
        # chunk only shapes a new entry: a started one keeps its manifest's chunks
        if self.chunk:
            return min(self.chunk, self.n)
        return default_chunk_rows(self.n, self.item_shape, self.dtype, self.input_size,
                                  self.batch_size)

    def _weights_file(self, entry: Entry) -> str:
        name = f"weights-{entry.key['weights'][:16]}.safetensors"
        if not entry.has_chunk_file(name):
            # saved apart, then copied into the entry through its folder's descriptor
            # (atomic: a worker sees all of it or nothing)
            with tempfile.TemporaryDirectory(prefix="vggtl-") as tmp:
                self.base.save_weights(os.path.join(tmp, name))
                entry.write_chunk_file(name, os.path.join(tmp, name))
        return os.path.join(entry.chunk_dir, name)

    def run_chunks(self, entry: Entry, m: dict, missing: List[int], update):
        from distributed import as_completed
        from distributed.comm import get_address_host
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # distributed before 2025: always lists every worker
            workers = self.client.scheduler_info()["workers"]
        per_host = collections.Counter(get_address_host(a) for a in workers)
        spec = _Spec(self.base, self, entry, m, self._weights_file(entry), dict(per_host))
        source, chunk = self.X, m["chunk"]
        if isinstance(source, _DaskSource):
            source.plan_chunks(chunk)
        # a bounded number of chunks in flight: an ndarray's rows travel with their
        # task, so the scheduler never holds all of X at once
        window = 2 * max(1, len(workers))
        todo = iter(missing)
        live = set()
        done = as_completed()

        def submit_next() -> bool:
            k = next(todo, None)
            if k is None:
                return False
            start, stop = k * chunk, min(m["n"], (k + 1) * chunk)
            inp = source.task_input(start, stop)
            if isinstance(source, _DaskSource):
                import dask
                fut = self.client.compute(dask.delayed(_chunk_task, pure=False)(
                    spec, k, start, stop, inp), retries=self.retries)
            else:
                with warnings.catch_warnings():
                    # an ndarray's rows go with their task, and over 10 MiB Dask advises
                    # scattering; but scattered data dies with its worker, a task's
                    # arguments do not, and the window already bounds what is in flight
                    warnings.filterwarnings("ignore", message="Sending large graph")
                    fut = self.client.submit(_chunk_task, spec, k, start, stop, inp,
                                             pure=False, retries=self.retries)
            live.add(fut)
            done.add(fut)
            return True

        for _ in range(window):
            if not submit_next():
                break
        written, last = [], time.monotonic()
        try:
            for fut in done:
                k, crc, count = fut.result()  # the task's error, after its retries
                live.discard(fut)
                fut.release()
                written.append((k, crc))
                update(count)
                submit_next()
                if time.monotonic() - last >= MANIFEST_EVERY:
                    yield written
                    written, last = [], time.monotonic()
        except GeneratorExit:
            raise  # the caller stopped (its own error): nothing more to hand over
        except BaseException:
            if written:
                yield written  # a task's error or Ctrl-C: keep the chunks done before it
            raise
        finally:
            for fut in live:
                fut.cancel()
        if written:
            yield written


def _positive(name: str, v, minimum: int = 1, none_ok: bool = False) -> Optional[int]:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}{' or None' if none_ok else ''}, "
                         f"got {v!r}")
    return int(v)


def _get_client(client):
    from distributed import Client, get_client
    if client is None:
        try:
            return get_client()
        except ValueError:
            raise ValueError("client: no Dask client given and none is active; pass "
                             "client=dask.distributed.Client('tcp://scheduler:8786')") from None
    if not isinstance(client, Client):
        raise TypeError(f"client: expected a dask.distributed.Client, got "
                        f"{type(client).__name__}")
    return client


def extract(X, base, client=None, layer: Optional[str] = None, chunk: Optional[int] = None,
            cache=True, batch_size: int = 32, dtype="float32", threads: Optional[int] = None,
            retries: int = 2, progress: bool = True, x_digest: Optional[str] = None) -> np.ndarray:
    """Features of images X at ``layer``, computed on a Dask cluster into the
    feature cache (see the module docstring).

    Parameters
    ----------
    X : ndarray (N, H, W, 1|3) or (N, H, W); an ``np.memmap`` of a file the workers
        can read; a ``.npy`` or pickle path, or a list of them (shards, in order);
        or a ``dask.array`` of such images.
    base : VGG16
    client : a ``dask.distributed.Client`` (default: the active one).
    layer : None (the base's output, as ``base.predict``) or a layer name.
    chunk : images per task (and per chunk file) for a new entry; default as
        :mod:`vggtl.cache` chooses (at most 32 images at 224 x 224, 4 MiB of
        features). An entry already started keeps its own.
    cache : True (``$XDG_CACHE_HOME/vggtl/features``) or a folder; the client and
        every worker must reach it at the same path.
    batch_size : images per call into the core (as ``base.extract``).
    dtype : "float32" or "float16".
    threads : vggtl threads per worker process; default its core group (module
        docstring).
    retries : times Dask reruns a chunk whose task raised.
    progress : a tqdm bar on the client while chunks come in.
    x_digest : ``vggtl.cache.array_digest`` of X when known (saves hashing X).

    Returns
    -------
    A read-only ``np.memmap`` (N, *base.output_shape(layer)) of ``data.npy`` in the
    cache, as :func:`vggtl.cache.extract` returns.
    """
    _require_dask()
    from .vgg16 import VGG16
    if not isinstance(base, VGG16):
        raise TypeError(f"base: expected a vggtl.VGG16, got {type(base).__name__}")
    batch_size = _positive("batch_size", batch_size)
    chunk = _positive("chunk", chunk, none_ok=True)
    threads = _positive("threads", threads, none_ok=True)
    retries = _positive("retries", retries, minimum=0)
    dt = check_dtype(dtype)
    if cache is False:
        raise ValueError("cache: expected True or a folder every worker can reach, got False "
                         "(the workers hand their chunks over through the cache)")
    root = resolve_root(cache)
    client = _get_client(client)
    source = _source(X, client)
    n = len(source)
    h, w, c = source.image_shape
    features = base.feature_source(layer)
    features.check_input(h, w, c)
    item_shape = features.item_shape((h, w))
    if n == 0:
        return np.empty((0, *item_shape), dtype=dt)
    plan = DistPlan(base, source, layer, dt, batch_size, item_shape, (h, w), bool(progress),
                     client, chunk, threads, retries)
    key = make_key(base, layer, dt.name, None, (h, w),
                   x_digest=x_digest if x_digest is not None else source.digest(client))
    entry = Entry(root, key)
    try:
        return read_or_build(entry, plan)
    except Unwritable as e:
        raise PermissionError(f"cache: {root} cannot be written ({e}); vggtl.distributed needs "
                              f"a folder the client and every worker can write") from None
    except Damaged as e:
        raise RuntimeError(f"cache: the entry {entry.dir} is damaged or not vggtl's ({e}); "
                           f"vggtl.cache.clear removes a damaged entry of vggtl's") from None
    except Stalled as e:
        raise TimeoutError(f"cache: {e}; the workers hand their chunks over through the "
                           f"cache, so vggtl.distributed cannot compute without it") from None
