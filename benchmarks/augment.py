"""Augmentation: vggtl.Augment against Keras's ImageDataGenerator, and fit's two modes.

    python benchmarks/augment.py [--n 1000] [--size 224] [--threads 2]
                                 [--fit-n 128] [--fit-size 64] [--epochs 20] [--views 5]
                                 [--skip-keras] [--skip-fit]

1. Throughput: the tutorial's ImageDataGenerator (rotation 30, zoom 0.15, shifts 0.2,
   shear 0.15, horizontal flips, fill "nearest") over the same N random uint8
   images of size x size x 3, one pass of flow(batch_size=32, shuffle=False),
   Keras 3 (torch backend) against vggtl.Augment(...).flow at 1 and --threads
   threads, passes interleaved (the machine's load changes hit both sides).
   Images per second by the wall clock and per CPU second (the single-thread
   comparison least disturbed by other processes), and the ratios.
2. End to end: 20 epochs of the tutorial's head (Flatten, Dense(512, relu),
   Dropout(0.5), Dense(2, softmax), Adam) on --fit-n images of --fit-size pixels
   (small so that the exact mode, one backbone pass per epoch, finishes in
   minutes; VGG16 weights random, no download), fit(augment=aug) against
   fit(augment=aug, augment_views=5) with an empty feature cache in a temporary
   folder (the views' extraction is included), and that again with the cache
   warm.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import vggtl

TUTORIAL = dict(rotation_range=30, zoom_range=0.15, width_shift_range=0.2,
                height_shift_range=0.2, shear_range=0.15, horizontal_flip=True,
                fill_mode="nearest")


def one_pass(it):
    """(images/s by the wall clock, images/s by this process's CPU time)."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = 0
    for i in range(len(it)):
        n += len(it[i])
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def throughput(args):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (args.n, args.size, args.size, 3), dtype=np.uint8)
    print(f"1. augmentation of {args.n} images {args.size}x{args.size}x3 uint8, "
          f"flow(batch_size=32), median of {args.repeats} passes, interleaved")
    threads = sorted({1, args.threads})
    its = {t: vggtl.Augment(**TUTORIAL, seed=0).flow(X, batch_size=32, shuffle=False)
           for t in threads}
    keras_it = None
    if not args.skip_keras:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
        keras_it = ImageDataGenerator(**TUTORIAL).flow(X, batch_size=32, shuffle=False)
    rates = {t: [] for t in threads}
    keras_rates = []
    one_pass(its[threads[0]])  # warm up
    # interleaved, so that a change in the machine's load hits both sides alike
    for _ in range(args.repeats):
        for t in threads:
            vggtl.set_num_threads(t)
            rates[t].append(one_pass(its[t]))
        if keras_it is not None:
            keras_rates.append(one_pass(keras_it))  # scipy: one thread whatever the setting
    vggtl.set_num_threads(args.threads)

    def med(rs, k):
        return statistics.median(r[k] for r in rs)
    for t in threads:
        print(f"   vggtl.Augment, {t} thread(s): {med(rates[t], 0):8.1f} images/s "
              f"(CPU time: {med(rates[t], 1):.1f} images per CPU second)")
    if keras_it is None:
        return
    kw, kc = med(keras_rates, 0), med(keras_rates, 1)
    print(f"   Keras ImageDataGenerator:  {kw:8.1f} images/s "
          f"(CPU time: {kc:.1f} images per CPU second)")
    for t in threads:
        print(f"   ratio at {t} thread(s): {med(rates[t], 0) / kw:.1f}x by the wall clock"
              + (f", {med(rates[t], 1) / kc:.1f}x by CPU time" if t == 1 else ""))


def end_to_end(args):
    rng = np.random.default_rng(1)
    s = args.fit_size
    X = rng.integers(0, 256, (args.fit_n, s, s, 3), dtype=np.uint8)
    y = rng.integers(0, 2, args.fit_n)
    base = vggtl.VGG16(weights=None, input_shape=(s, s, 3), seed=0)
    aug = vggtl.Augment(**TUTORIAL, seed=0)
    print(f"2. {args.epochs} epochs of the tutorial's head on {args.fit_n} images {s}x{s}x3, "
          f"{args.threads} threads")

    def run(folder, **kw):
        model = vggtl.TransferModel(base, [vggtl.Flatten(), vggtl.Dense(512, activation="relu"),
                                           vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")],
                                    cache=folder)
        model.compile(optimizer=vggtl.Adam(learning_rate=1e-4, decay=1e-4 / args.epochs),
                      loss="binary_crossentropy", metrics=["accuracy"])
        t = time.perf_counter()
        model.fit(X, y, batch_size=32, epochs=args.epochs, verbose=0, **kw)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as folder:
        t_views = run(folder, augment=aug, augment_views=args.views)
        t_warm = run(folder, augment=aug, augment_views=args.views)
        t_exact = run(False, augment=aug)
    print(f"   exact (augment=aug):                     {t_exact:7.1f} s")
    print(f"   augment_views={args.views}, empty cache:            {t_views:7.1f} s "
          f"({t_exact / t_views:.1f}x faster)")
    print(f"   augment_views={args.views}, cache warm:             {t_warm:7.1f} s "
          f"({t_exact / t_warm:.1f}x faster)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="throughput passes per side")
    ap.add_argument("--fit-n", type=int, default=128)
    ap.add_argument("--fit-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--skip-keras", action="store_true")
    ap.add_argument("--skip-fit", action="store_true")
    args = ap.parse_args()
    vggtl.set_num_threads(args.threads)
    throughput(args)
    if not args.skip_fit:
        end_to_end(args)


if __name__ == "__main__":
    main()
