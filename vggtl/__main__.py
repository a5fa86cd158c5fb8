"""Command line: ``python -m vggtl demo`` and ``python -m vggtl info``.

``demo`` is the README's embedded default: it draws a small built-in batch of
images (no files, no network), runs them through the VGG16 conv base in C and
reports the features and the speed. Training lands with the head issue; until
then the demo is feature extraction, and says so.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def builtin_images(n: int = 32, size: int = 64, seed: int = 0):
    """n uint8 RGB images of two kinds (discs and squares) on noisy backgrounds,
    with their labels: a stand-in for the tutorial's cats and dogs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    X = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        r = rng.integers(size // 8, size // 4)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if y[i] == 0 else \
            ((abs(yy - cy) <= r) & (abs(xx - cx) <= r))
        X[i][mask] = rng.integers(150, 255, size=3, dtype=np.uint8)
    return X, y


def cmd_demo(args) -> int:
    import vggtl
    X, y = builtin_images(args.n, args.size)
    print(f"vggtl {vggtl.__version__}: {len(X)} built-in images of {args.size}x{args.size} "
          f"(discs and squares), {vggtl.get_num_threads()} threads")
    print("weights: random (Glorot-uniform, seed 0); pretrained ImageNet weights and head "
          "training arrive with later releases, so this demo extracts features only.")
    base = vggtl.VGG16(weights=None, include_top=False, preprocess="scale")
    t = time.perf_counter()
    F = base.predict(X, batch_size=16)
    dt = time.perf_counter() - t
    print(f"block5_pool features: {F.shape}, {dt:.2f} s ({len(X) / dt:.1f} images/s)")
    G = base.predict(X, layer="block3_pool")
    print(f"block3_pool features: {G.shape}")
    # a nearest-class-mean check on block3 features: even random conv features
    # separate the two shapes, which shows the pipeline end to end
    Z = G.reshape(len(G), -1)
    Z = (Z - Z.mean(0)) / (Z.std(0) + 1e-6)
    tr, te = np.arange(len(Z)) < len(Z) // 2, np.arange(len(Z)) >= len(Z) // 2
    means = np.stack([Z[tr & (y == c)].mean(0) for c in (0, 1)])
    pred = np.argmin(((Z[te, None, :] - means[None]) ** 2).sum(-1), axis=1)
    print(f"nearest-class-mean accuracy on the held-out half: {(pred == y[te]).mean():.2f}")
    return 0


def cmd_info(args) -> int:
    import vggtl
    for k, v in vggtl.info().items():
        print(f"{k}: {v}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vggtl", description="VGG16 transfer learning in C")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the embedded default (no files needed)")
    d.add_argument("--n", type=int, default=32, help="number of built-in images")
    d.add_argument("--size", type=int, default=64, help="image size")
    d.set_defaults(fn=cmd_demo)
    i = sub.add_parser("info", help="version, threads, BLAS")
    i.set_defaults(fn=cmd_info)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
