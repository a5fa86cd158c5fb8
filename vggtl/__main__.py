"""Command line: ``python -m vggtl demo`` and ``python -m vggtl info``.

``demo`` is the README's embedded default: the tutorial's steps on a small
built-in data set (no files, no network): write X.pickle / y.pickle, load them
safely, split, VGG16 base, the tutorial's head, Adam with decay and binary
crossentropy, fit, classification report, save and reload.
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
    import os
    import pickle
    import tempfile

    import vggtl
    from vggtl.weights import find_imagenet_weights

    X, y = builtin_images(args.n, args.size)
    names = ["disc", "square"]
    print(f"vggtl {vggtl.__version__}: {len(X)} built-in {args.size}x{args.size} images "
          f"(discs and squares), {vggtl.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        # the tutorial's files, written as the tutorial writes them ...
        for name, obj in (("X.pickle", X), ("y.pickle", y.tolist())):
            with open(os.path.join(tmp, name), "wb") as f:
                pickle.dump(obj, f)
        # ... and read back without running any code a pickle could carry
        X, y = vggtl.load_pickles(os.path.join(tmp, "X.pickle"), os.path.join(tmp, "y.pickle"))
        trainX, testX, trainY, testY = vggtl.train_test_split(X, y, test_size=0.25,
                                                              random_state=42)
        if find_imagenet_weights() is not None:
            weights = "imagenet"
            print("weights: ImageNet (found on this machine)")
        else:
            weights = None
            print("weights: no ImageNet weights on this machine, so the base has random "
                  "weights (Glorot-uniform): the pipeline runs the same, the accuracy is "
                  "modest. Put vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in "
                  "~/.keras/models for the real thing.")
        base = vggtl.VGG16(weights=weights, include_top=False,
                           input_shape=(args.size, args.size, 3),
                           preprocess="auto" if weights else None)
        model = vggtl.TransferModel(base, head=[
            vggtl.Flatten(), vggtl.Dense(512, activation="relu"), vggtl.Dropout(0.5),
            vggtl.Dense(2, activation="softmax")])
        lr = 1e-3
        model.compile(optimizer=vggtl.Adam(learning_rate=lr, decay=lr / args.epochs),
                      loss="binary_crossentropy", metrics=["accuracy"])
        t = time.perf_counter()
        H = model.fit(trainX, trainY, batch_size=32, epochs=args.epochs,
                      validation_data=(testX, testY), verbose=1)
        print(f"fit: {time.perf_counter() - t:.1f} s for {args.epochs} epochs (the base's "
              f"features are computed once, not once per epoch)")
        pred = model.predict(testX).argmax(1)
        print(vggtl.classification_report(testY, pred, target_names=names))
        path = os.path.join(tmp, "model.vggtl")
        model.save(path)
        same = np.array_equal(vggtl.load_model(path).predict(testX), model.predict(testX))
        print(f"saved and reloaded: predictions identical: {same}")
    return 0 if same and len(H.history["loss"]) == args.epochs else 1


def cmd_info(args) -> int:
    import vggtl
    for k, v in vggtl.info().items():
        print(f"{k}: {v}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vggtl", description="VGG16 transfer learning in C")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the embedded default (no files needed)")
    d.add_argument("--n", type=int, default=400, help="number of built-in images")
    d.add_argument("--size", type=int, default=64, help="image size (>= 32)")
    d.add_argument("--epochs", type=int, default=10, help="training epochs")
    d.set_defaults(fn=cmd_demo)
    i = sub.add_parser("info", help="version, threads, BLAS")
    i.set_defaults(fn=cmd_info)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
