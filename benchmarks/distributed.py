"""vggtl.distributed on one machine: what the Dask engine costs.

    python benchmarks/distributed.py [--n 256] [--size 64] [--chunk 32] [--repeats 3]

Images/s of a cold extraction (every chunk computed) of --n random --size x --size x 3
uint8 images through the conv base (random weights), for:

1. one process, 2 threads: ``base.predict`` (no cache) and ``base.extract`` (the
   single-machine cache: hashing X, chunk files, manifest, data.npy);
2. ``vggtl.distributed.extract`` on a LocalCluster of 1 and of 2 worker processes,
   1 Dask thread and 1 vggtl thread each (the same work through the same cache, plus
   the engine: tasks, sending rows, a weights file per entry).

On a 2-core machine, 2 workers x 1 thread against 1 process x 2 threads is the
engine's overhead; 1 worker x 1 thread against 1 thread in-process (also printed) its
cost per worker. Cluster start-up is printed apart. Every run writes a new entry
under a temporary folder, removed at the end.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

# This file is named distributed.py and Python puts its folder first on sys.path,
# so `import distributed` (Dask's, which dask.distributed imports) would find it:
# its folder goes last instead, after site-packages (still there for _common).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE] + [HERE]

import numpy as np  # noqa: E402

import vggtl  # noqa: E402
from _common import median_time  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from dask.distributed import Client, LocalCluster

    base = vggtl.VGG16(weights=None, include_top=False, input_shape=(args.size, args.size, 3))
    X = np.random.default_rng(0).integers(0, 256, (args.n, args.size, args.size, 3), np.uint8)
    tmp = tempfile.mkdtemp(prefix="vggtl-bench-distributed-")
    runs = iter(range(10 ** 6))

    def fresh():
        return os.path.join(tmp, f"c{next(runs)}")  # a new cache: every chunk is computed

    def row(what, seconds):
        print(f"{what:<52} {args.n / seconds:8.1f} img/s   ({seconds:.2f} s)", flush=True)

    print(f"{args.n} images {args.size}x{args.size}x3, chunks of {args.chunk}, median of "
          f"{args.repeats}; {os.cpu_count()} cores")
    try:
        for threads in (2, 1):
            vggtl.set_num_threads(threads)
            row(f"1 process, {threads} thread(s): predict",
                median_time(lambda: base.predict(X), args.repeats))
            row(f"1 process, {threads} thread(s): extract (cache)",
                median_time(lambda: base.extract(X, cache=fresh(), progress=False),
                            args.repeats))
        vggtl.set_num_threads(2)
        for workers in (1, 2):
            t = time.perf_counter()
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                started = time.perf_counter() - t
                seconds = median_time(lambda: vggtl.distributed.extract(
                    X, base, client=client, chunk=args.chunk, cache=fresh(), threads=1,
                    progress=False), args.repeats)
                row(f"distributed, {workers} worker(s) x 1 thread (start-up {started:.1f} s)",
                    seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
