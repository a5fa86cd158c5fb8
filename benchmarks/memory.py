"""Peak memory of VGG16.predict on 1,000 uint8 images of 224x224x3 (the data: 150 MB).

    python benchmarks/memory.py [--n 1000] [--batch 32]
    python benchmarks/memory.py --memmap-gb 1 [--dir /var/tmp]   # issue 4's figure

Runs predict in this process and prints the peak resident memory (VmHWM) before
and after, next to the size of X and of a float32 copy of X (what X/255.0 makes).

With --memmap-gb G it writes a G GB uint8 X of 224x224x3 images to an .npy file,
opens it memory-mapped and runs ``base.extract`` (the feature cache, in a fresh
folder) over all of it: the peak must stay under the size of X plus 0.5 GB. Pages
of the memmap that were read count in the resident size, so X itself is allowed.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import vggtl


def vm_hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memmap_extract(gb, folder, batch):
    n = int(gb * 1e9) // (224 * 224 * 3)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, "X.npy")
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 224, 224, 3))
        rng = np.random.default_rng(0)
        for i in range(0, n, 256):      # written in slices, never whole in memory
            X[i:i + 256] = rng.integers(0, 256, X[i:i + 256].shape, dtype=np.uint8)
        X.flush()
        del X
        # The writing above touched the pages of a mapping that is now closed; the
        # peak is reset so that only the extraction counts.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        X = np.load(path, mmap_mode="r")
        base = vggtl.VGG16(weights=None, input_shape=(224, 224, 3), preprocess="caffe")
        before = vm_hwm_mb()
        t = time.perf_counter()
        F = base.extract(X, cache=os.path.join(tmp, "cache"), batch_size=batch, progress=False)
        dt = time.perf_counter() - t
        peak = vm_hwm_mb()
        x_mb = X.nbytes / 2**20
        print(f"extract of a memory-mapped uint8 X of {n} images 224x224x3 ({x_mb:.0f} MiB), "
              f"batch {batch}: {dt:.0f} s ({n / dt:.2f} img/s); peak RSS {peak:.0f} MiB "
              f"(before extract {before:.0f} MiB); limit X + 512 MiB = {x_mb + 512:.0f} MiB: "
              f"{'under' if peak < x_mb + 512 else 'OVER'}; features {F.shape} {F.dtype}, "
              f"memory-mapped from the cache")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--memmap-gb", type=float, default=None)
    ap.add_argument("--dir", default=None, help="folder for the temporary X.npy and cache")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    if args.memmap_gb:
        memmap_extract(args.memmap_gb, args.dir, args.batch)
        return
    base = vggtl.VGG16(weights=None, input_shape=(224, 224, 3), preprocess="caffe",
                       precision=args.precision)
    X = np.random.default_rng(0).integers(0, 256, (args.n, 224, 224, 3), dtype=np.uint8)
    before = vm_hwm_mb()
    t = time.perf_counter()
    F = base.predict(X, batch_size=args.batch)
    dt = time.perf_counter() - t
    print(f"predict ({args.precision}) of {args.n} uint8 224x224x3 images, batch {args.batch}: "
          f"{dt:.0f} s; "
          f"peak RSS {vm_hwm_mb():.0f} MB (before predict {before:.0f} MB; X {X.nbytes / 2**20:.0f} MB, "
          f"features {F.nbytes / 2**20:.0f} MB, a float32 copy of X would be "
          f"{X.nbytes * 4 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
