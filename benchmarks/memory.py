"""Peak memory of VGG16.predict on 1,000 uint8 images of 224x224x3 (the data: 150 MB).

    python benchmarks/memory.py [--n 1000] [--batch 32]

Runs predict in this process and prints the peak resident memory (VmHWM) before
and after, next to the size of X and of a float32 copy of X (what X/255.0 makes).
"""
import argparse
import time

import numpy as np

import vggtl


def vm_hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    base = vggtl.VGG16(weights=None, input_shape=(224, 224, 3), preprocess="caffe")
    X = np.random.default_rng(0).integers(0, 256, (args.n, 224, 224, 3), dtype=np.uint8)
    before = vm_hwm_mb()
    t = time.perf_counter()
    F = base.predict(X, batch_size=args.batch)
    dt = time.perf_counter() - t
    print(f"predict of {args.n} uint8 224x224x3 images, batch {args.batch}: {dt:.0f} s; "
          f"peak RSS {vm_hwm_mb():.0f} MB (before predict {before:.0f} MB; X {X.nbytes / 2**20:.0f} MB, "
          f"features {F.nbytes / 2**20:.0f} MB, a float32 copy of X would be "
          f"{X.nbytes * 4 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
