"""The tutorial end to end: the seed on TensorFlow's Keras against vggtl, on the
same pickles and the same VGG16 weights file, wall time and test accuracy.

    python benchmarks/tutorial.py [--size 48] [--n 1797] [--epochs 10]
                                  [--seeds 0,1,2,3,4] [--threads 2]
                                  [--rows aug,flow,exact,plain,finetune] [--skip-tf]
                                  [--weights FILE] [--data digits|textures]
                                  [--precision fp32|bf16] [--results FILE]

The data: scikit-learn's handwritten digits, two classes (0-4 and 5-9),
upscaled to --size, grey, written as the tutorial's X.pickle / y.pickle; or
(--data textures) grey Gaussian-smoothed noise whose smoothing scale sigma is
drawn from [4, 12] pixels, the class being sigma > 7: a texture that the
augmentation's shifts, flips and rotations leave as it was, so that the head
can learn it at 224x224 from features that keep their places (Flatten of 7x7),
where the digits' augmented views leave both libraries at chance. The
weights, read by both (ImageNet's cannot be downloaded here): --weights FILE, a
Keras .h5 of VGG16 without its top, e.g. the MNIST-trained weights that
`benchmarks/pretrain.py` makes; without it, tf_keras's VGG16(weights=None)
initialisation scaled to He's variance, whose random features are faint (single
runs then move by 6 to 7 points of accuracy).

The seed (run in a subprocess, TF_USE_LEGACY_KERAS=1, `--threads` threads):
X / 255, three channels, LabelBinarizer + to_categorical, train_test_split
(test_size=0.25, stratify, random_state=42), VGG16 without its top, frozen,
Flatten -> Dense(512, relu) -> Dropout(0.5) -> Dense(2, softmax),
legacy Adam(lr=1e-3, decay=1e-3 / 10), binary cross-entropy,
ImageDataGenerator(rotation_range=30, zoom_range=0.15, width_shift_range=0.2,
height_shift_range=0.2, shear_range=0.15, horizontal_flip=True,
fill_mode="nearest"), model.fit(aug.flow(trainX, trainY, batch_size=32),
steps_per_epoch=len(trainX) // 32, validation_data=(testX, testY),
validation_steps=len(testX) // 32, epochs=EPOCHS); then the fine-tuning
continuation (block 5 trainable, SGD(1e-4, momentum=0.9), EPOCHS // 2 more
epochs on the same flow). Accuracy: argmax of predict on the test split.

Rows (each timed from the loaded pickles to the trained model, cold: no
feature cache):
  aug       TF: the seed; vggtl: fit(trainX, trainY, augment=aug) (the README's call)
  flow      vggtl: the seed's own call, fit(aug.flow(...), steps_per_epoch=...,
            validation_steps=...)
  exact     vggtl: fit(..., augment=aug, augment_views="epoch"): a fresh
            augmented pass through the base every epoch, as TF does
  plain     both without augmentation: fit(trainX, trainY, ...)
  finetune  the continuation after the aug row's warm-up: TF fits again with
            block 5 trainable; vggtl: model.fine_tune(..., augment=aug). Without
            the aug row, its warm-up gives the aug row's figures.
  views:K   vggtl: fit(..., augment=aug, augment_views=K), the views from a
            feature cache the views:K rows of a seed share (for accuracy
            against K, not for time)
Each cell: median wall time and mean test accuracy over the seeds; for vggtl's
rows, the difference from TensorFlow's mean with its standard error.

--results FILE keeps every run as a line of JSON, with the settings and the
SHA-256 of the weights' arrays: a run already in the file for the same settings
and weights is not run again but read, so the seeds of a long benchmark (an hour
a seed for TensorFlow at 224x224 on 2 cores) can be run in several sittings,
e.g. --seeds 0 then --seeds 1, and the table of --seeds 0,1 shows both.

Needs the bench extra: pip install -e ".[bench]".
"""
import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from _common import weights_sha256

AUG = dict(rotation_range=30, zoom_range=0.15, width_shift_range=0.2, height_shift_range=0.2,
           shear_range=0.15, horizontal_flip=True, fill_mode="nearest")
LR = 1e-3

SEED = textwrap.dedent("""
    import json, os, pickle, sys, time
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    xp, yp, wpath, size, epochs, seed, threads, row = sys.argv[1:9]
    size, epochs, seed, threads = int(size), int(epochs), int(seed), int(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(seed)
    from tensorflow.keras.applications import VGG16
    from tensorflow.keras.layers import Dense, Dropout, Flatten, Input
    from tensorflow.keras.models import Model
    from tensorflow.keras.optimizers.legacy import SGD, Adam
    from tensorflow.keras.preprocessing.image import ImageDataGenerator
    from tensorflow.keras.utils import to_categorical
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    AUG = json.loads(sys.argv[9])
    LR = float(sys.argv[10])
    t0 = time.perf_counter()
    X = pickle.load(open(xp, "rb"))
    y = pickle.load(open(yp, "rb"))
    X = X / 255.0
    X = np.repeat(X, 3, axis=-1)
    labels = to_categorical(LabelBinarizer().fit_transform(y))
    trainX, testX, trainY, testY = train_test_split(X, labels, test_size=0.25, stratify=labels,
                                                    random_state=42)
    base = VGG16(weights=None, include_top=False, input_tensor=Input((size, size, 3)))
    base.load_weights(wpath)
    head = Flatten(name="flatten")(base.output)
    head = Dense(512, activation="relu")(head)
    head = Dropout(0.5)(head)
    head = Dense(2, activation="softmax")(head)
    model = Model(inputs=base.input, outputs=head)
    for layer in base.layers:
        layer.trainable = False
    model.compile(loss="binary_crossentropy", optimizer=Adam(lr=LR, decay=LR / epochs),
                  metrics=["accuracy"])
    BS = 32
    aug = ImageDataGenerator(**AUG)
    if row == "plain":
        model.fit(trainX, trainY, batch_size=BS, validation_data=(testX, testY), epochs=epochs,
                  verbose=0)
    else:
        model.fit(aug.flow(trainX, trainY, batch_size=BS), steps_per_epoch=len(trainX) // BS,
                  validation_data=(testX, testY), validation_steps=len(testX) // BS,
                  epochs=epochs, verbose=0)
    t1 = time.perf_counter()
    acc = float((model.predict(testX, batch_size=BS, verbose=0).argmax(1)
                 == testY.argmax(1)).mean())
    out = {"time": t1 - t0, "acc": acc}
    if row == "finetune":
        for layer in base.layers[15:]:
            layer.trainable = True
        model.compile(loss="binary_crossentropy", optimizer=SGD(learning_rate=1e-4, momentum=0.9),
                      metrics=["accuracy"])
        t2 = time.perf_counter()
        model.fit(aug.flow(trainX, trainY, batch_size=BS), steps_per_epoch=len(trainX) // BS,
                  validation_data=(testX, testY), validation_steps=len(testX) // BS,
                  epochs=max(1, epochs // 2), verbose=0)
        t3 = time.perf_counter()
        out = {"time": t3 - t2, "acc": float((model.predict(testX, batch_size=BS, verbose=0)
                                               .argmax(1) == testY.argmax(1)).mean()),
               "warmup": out}
    print(json.dumps(out))
""")


def make_data(folder, size, n):
    """Digits 0-4 against 5-9 at size x size, grey uint8, as the tutorial's pickles."""
    import vggtl
    from vggtl.__main__ import digits_images, write_pickles
    X, d = digits_images(n, size)
    return write_pickles(folder, X, (d >= 5).astype(int).tolist())


def make_textures(folder, size, n, seed=0):
    """Smoothed noise of a random scale (sigma in [4, 12] px), class sigma > 7, as
    the tutorial's pickles: grey uint8 (n, size, size, 1) around 128."""
    from vggtl.__main__ import write_pickles
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(4.0, 12.0, n)
    f2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    X = np.empty((n, size, size), np.uint8)
    for i in range(n):
        # a Gaussian filter (periodic), applied as its transform
        z = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size)))
                         * np.exp(-2 * np.pi ** 2 * sigma[i] ** 2 * f2)).real
        z = (z - z.mean()) / (z.std() + 1e-12)
        X[i] = np.clip(128 + 48 * z, 0, 255).astype(np.uint8)
    return write_pickles(folder, X[..., None], (sigma > 7.0).astype(int).tolist())


def make_weights(path, threads):
    """tf_keras's VGG16 Glorot weights (no top) scaled to He's variance, as a
    Keras .h5, made in a subprocess (pretrain.py's he_scale and write_h5).
    Glorot's kernels shrink the signal about 1.4x a layer: after 13 layers the
    random features of images in [0, 1] are too faint for the head, and every
    run, TensorFlow's too, stays at chance; scaled, they keep their size."""
    code = textwrap.dedent(f"""
        import os, sys
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import tensorflow as tf
        from pretrain import he_scale, write_h5
        tf.keras.utils.set_random_seed(1234)
        m = tf.keras.applications.VGG16(weights=None, include_top=False)
        weights = {{layer.name: layer.get_weights() for layer in m.layers if layer.weights}}
        write_h5({{name: (he_scale(k), b) for name, (k, b) in weights.items()}}, 224, {path!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def run_tf(xp, yp, wpath, size, epochs, seed, threads, row):
    out = subprocess.run([sys.executable, "-c", SEED, xp, yp, wpath, str(size), str(epochs),
                          str(seed), str(threads), row, json.dumps(AUG), str(LR)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"the seed on TensorFlow failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_vggtl(xp, yp, wpath, size, epochs, seed, row, cache=False, precision="fp32"):
    import vggtl
    try:  # vggtl splits and encodes with scikit-learn where it is installed; the
        # seed's script imports it before its clock starts, so this one does too
        import sklearn.model_selection  # noqa: F401
        import sklearn.preprocessing  # noqa: F401
    except ImportError:
        pass
    t0 = time.perf_counter()
    X, y = vggtl.load_pickles(xp, yp)
    labels = vggtl.to_categorical(vggtl.LabelBinarizer().fit_transform(y))
    trainX, testX, trainY, testY = vggtl.train_test_split(X, labels, test_size=0.25,
                                                          stratify=labels, random_state=42)
    base = vggtl.VGG16(weights=wpath, include_top=False, input_shape=(size, size, 3),
                       preprocess="scale", precision=precision)
    model = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(512, activation="relu"),
                                            vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")],
                                seed=seed, cache=False)
    model.compile(optimizer=vggtl.Adam(lr=LR, decay=LR / epochs), loss="binary_crossentropy",
                  metrics=["accuracy"])
    aug = vggtl.Augment(**AUG, seed=seed)
    BS = 32
    if row == "plain":
        model.fit(trainX, trainY, batch_size=BS, epochs=epochs, validation_data=(testX, testY),
                  verbose=0)
    elif row == "flow":
        model.fit(aug.flow(trainX, trainY, batch_size=BS), steps_per_epoch=len(trainX) // BS,
                  validation_data=(testX, testY), validation_steps=len(testX) // BS,
                  epochs=epochs, verbose=0)
    elif row == "exact":
        model.fit(trainX, trainY, batch_size=BS, epochs=epochs, validation_data=(testX, testY),
                  augment=aug, augment_views="epoch", verbose=0)
    elif row.startswith("views:"):
        # views from the feature cache in `cache` (shared by the rows of a seed:
        # view k is the same images whatever K, so this row's time is not cold)
        model.fit(trainX, trainY, batch_size=BS, epochs=epochs, validation_data=(testX, testY),
                  augment=aug, augment_views=int(row[6:]), cache=cache, verbose=0)
    else:
        model.fit(trainX, trainY, batch_size=BS, epochs=epochs, validation_data=(testX, testY),
                  augment=aug, verbose=0)
    t1 = time.perf_counter()
    acc = float((model.predict(testX).argmax(1) == testY.argmax(1)).mean())
    if row != "finetune":
        return {"time": t1 - t0, "acc": acc}
    t2 = time.perf_counter()
    model.fine_tune(trainX, trainY, unfreeze_from="block5_conv1",
                    optimizer=vggtl.SGD(learning_rate=1e-4, momentum=0.9), batch_size=BS,
                    epochs=max(1, epochs // 2), validation_data=(testX, testY), augment=aug,
                    verbose=0)
    t3 = time.perf_counter()
    return {"time": t3 - t2, "acc": float((model.predict(testX).argmax(1)
                                           == testY.argmax(1)).mean()),
            "warmup": {"time": t1 - t0, "acc": acc}}


def report(who, row, seed, r):
    """One run's line; a fine-tuning run also shows its augmented warm-up."""
    line = f"  {who:5s} {row:8s} seed {seed}: {r['time']:7.1f} s  acc {r['acc']:.3f}"
    if "warmup" in r:
        w = r["warmup"]
        line += f"  (warm-up, the aug row: {w['time']:.1f} s  acc {w['acc']:.3f})"
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--n", type=int, default=1797, help="images (at most 1797)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="aug,flow,exact,plain,finetune")
    ap.add_argument("--skip-tf", action="store_true")
    ap.add_argument("--data", choices=("digits", "textures"), default="digits")
    ap.add_argument("--weights", default=None,
                    help="a Keras .h5 of VGG16 without its top (benchmarks/pretrain.py)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="vggtl's frozen base (TensorFlow's stays float32)")
    ap.add_argument("--results", default=None,
                    help="a JSON-lines file of runs: read for runs already made, appended to")
    args = ap.parse_args()
    import vggtl
    vggtl.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = args.rows.split(",")
    tf_rows = {"aug": "aug", "plain": "plain", "finetune": "finetune"}
    what = ("digits (0-4 / 5-9)" if args.data == "digits" else
            "textures (smoothing sigma in [4, 12] px: above 7 / below)")
    print(f"{args.n} {what}, {args.size}x{args.size} grey, {args.epochs} epochs, "
          f"batch 32, seeds {seeds}, {args.threads} threads; vggtl {vggtl.__version__} "
          f"({vggtl.info()['isa']}, {args.precision} base); weights "
          f"{args.weights or 'random (He)'}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        xp, yp = (make_data if args.data == "digits" else make_textures)(tmp, args.size, args.n)
        if args.weights:
            wpath = os.path.abspath(args.weights)
        else:
            wpath = os.path.join(tmp, "vgg16_notop.h5")
            make_weights(wpath, args.threads)
        settings = {"size": args.size, "n": args.n, "epochs": args.epochs, "data": args.data,
                    "threads": args.threads, "precision": args.precision,
                    "weights": weights_sha256(vggtl.load_weights(wpath))}
        log = RunLog(args.results, settings)

        def run_tf_logged(seed, row):
            return log.run("tf", row, seed, lambda: run_tf(xp, yp, wpath, args.size, args.epochs,
                                                           seed, args.threads, row))

        def run_vggtl_logged(seed, row):
            return log.run("vggtl", row, seed, lambda: run_vggtl(
                xp, yp, wpath, args.size, args.epochs, seed, row,
                cache=os.path.join(tmp, "cache"), precision=args.precision))

        for row in rows:
            for seed in seeds:
                if row in tf_rows and not args.skip_tf:
                    r = run_tf_logged(seed, row)
                    results.setdefault(("tf", row), []).append(r)
                    if "warmup" in r and "aug" not in rows:  # the seed's augmented fit
                        results.setdefault(("tf", "aug"), []).append(r["warmup"])
                    report("tf", row, seed, r)
                r = run_vggtl_logged(seed, row)
                results.setdefault(("vggtl", row), []).append(r)
                if "warmup" in r and "aug" not in rows:
                    results.setdefault(("vggtl", "aug"), []).append(r["warmup"])
                report("vggtl", row, seed, r)
    print("\n| run | wall time (median) | test accuracy (mean ± sd over seeds) | speed-up over TF "
          "| accuracy - TF's (± standard error) |")
    print("|---|---|---|---|---|")
    shown = (["aug"] if "aug" not in rows and "finetune" in rows else []) + rows
    for row in shown:
        tf = results.get(("tf", tf_rows.get(row, "aug")))
        tf_t = statistics.median(r["time"] for r in tf) if tf else None
        tf_a, _, tf_se = accuracy_stats(tf) if tf else (None, None, None)
        for who in ("tf", "vggtl"):
            rs = results.get((who, row))
            if not rs:
                continue
            t = statistics.median(r["time"] for r in rs)
            a, sd, se = accuracy_stats(rs)
            ratio = f"{tf_t / t:.1f}x" if tf_t and who == "vggtl" else ""
            # single runs move by several points: the difference only means
            # something next to its standard error (over the seeds of both)
            diff = (f"{a - tf_a:+.3f} ± {(se ** 2 + tf_se ** 2) ** 0.5:.3f}"
                    if tf and who == "vggtl" and len(rs) > 1 and len(tf) > 1 else "")
            print(f"| {who} {row} | {t:.1f} s | {a:.3f} ± {sd:.3f} | {ratio} | {diff} |")


class RunLog:
    """The runs of --results FILE: one JSON object a line, the settings, the
    library, the row and the seed with the run's figures. A run whose settings,
    library, row and seed are in the file is read from it instead of made (its
    last line, where a run was made again and appended)."""

    def __init__(self, path, settings):
        self.path, self.settings, self.done = path, settings, {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        key = (rec["who"], rec["row"], rec["seed"])
                        same = all(rec.get(k) == v for k, v in settings.items())
                    except (ValueError, KeyError, TypeError) as e:
                        sys.exit(f"--results: line {i} of {path} is not a run of this "
                                 f"benchmark ({e})")
                    if same:
                        self.done[key] = rec["result"]

    def run(self, who, row, seed, fn):
        r = self.done.get((who, row, seed))
        if r is not None:
            print(f"  ({who} {row} seed {seed}: from {self.path})", flush=True)
            return r
        r = fn()
        if self.path:
            rec = dict(self.settings, who=who, row=row, seed=seed, result=r,
                       date=time.strftime("%Y-%m-%d %H:%M"), isa=vggtl_isa(), cpu=host_cpu())
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return r


def vggtl_isa():
    import vggtl
    return vggtl.info()["isa"]


def host_cpu():
    """The CPU's name, family and model (Linux), for the times of a run."""
    import platform
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor()
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')})")


def accuracy_stats(rs):
    """Mean accuracy over the seeds, its standard deviation and standard error."""
    accs = [r["acc"] for r in rs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return statistics.fmean(accs), sd, sd / len(accs) ** 0.5


if __name__ == "__main__":
    main()
