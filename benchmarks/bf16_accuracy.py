"""What precision="bf16" costs in accuracy, in three steps.

    python benchmarks/bf16_accuracy.py [--seeds 20] [--skip-layers]

1. Per layer shape, in NumPy (float64 sums): max|diff| / max|fp32 reference| of
   a direct convolution with x and the kernel rounded to bf16, of Winograd
   F(4x4, 3x3) and of F(2x2, 3x3) with their transformed operands V and U
   rounded to bf16 (what a VDPBF16PS product reads). F(4x4)'s transforms add and
   subtract terms up to 8x the result, so rounding V and U loses what the output
   transform needs (4e-2 to 6e-2); F(2x2)'s only add and subtract (3e-3 to 4e-3,
   near the direct convolution's 2e-3). So vggtl's bf16 path is F(2x2).
2. The whole base through vggtl (bf16 against fp32, same weights, same images):
   the issue's bound is 2e-2 of the largest feature.
3. The tutorial's head (Flatten, Dense(512, relu), Dropout(0.5), Dense(10,
   softmax), Adam with decay, 20 epochs) on fp32 and on bf16 features of
   scikit-learn's digits (1,797 images, 32 x 32, half for testing), over
   --seeds seeds: the test accuracy difference, and, as a control for how much
   any change of the features moves this training, the same difference between
   fp32 Winograd and fp32 im2col features (which differ by 3e-6).

ImageNet weights cannot be downloaded on the machines this was measured on:
the base has Keras's Glorot-uniform initialisation.
"""
import argparse
import statistics
import sys
import time

import numpy as np

import vggtl
from vggtl import reference

BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)


def bf16(a):
    return reference.bf16_round(a).astype(np.float64)


def winograd4(x, k, rnd):
    """F(4x4, 3x3) with V and U passed through rnd."""
    n, h, w, _ = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 4 * th - h + 1), (1, 4 * tw - w + 1), (0, 0)))
    U = rnd(np.einsum("ai,ijco,bj->abco", G, k.astype(np.float64), G))
    out = np.zeros((n, 4 * th, 4 * tw, k.shape[3]))
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, 4 * ty:4 * ty + 6, 4 * tx:4 * tx + 6, :]
            V = rnd(np.einsum("ai,nijc,bj->nabc", BT, d, BT))
            M = np.einsum("nabc,abco->nabo", V, U)
            out[:, 4 * ty:4 * ty + 4, 4 * tx:4 * tx + 4] = np.einsum("ai,nijo,bj->nabo", AT, M, AT)
    return out[:, :h, :w]


def per_layer():
    rng = np.random.default_rng(0)
    print("1. per layer: max|diff| / max|fp32|")
    print(f"{'shape (n, h, w, cin, cout)':28s} {'direct bf16':>12s} {'F(4x4) bf16':>12s} "
          f"{'F(2x2) bf16':>12s}")
    for n, h, w, cin, cout in [(1, 8, 8, 32, 64), (1, 12, 12, 64, 64), (1, 14, 14, 256, 128),
                               (1, 7, 7, 512, 64)]:
        x = np.maximum(rng.standard_normal((n, h, w, cin)), 0).astype(np.float32)  # post-ReLU
        k = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
        zero = np.zeros(cout, np.float32)
        ref = reference.conv3x3(x, k, zero, relu=False)
        scale = np.abs(ref).max()
        errs = [reference.conv3x3(bf16(x), bf16(k), zero, relu=False), winograd4(x, k, bf16),
                reference.conv3x3_winograd_bf16(x, k, zero, relu=False)]
        print(f"{str((n, h, w, cin, cout)):28s} "
              + " ".join(f"{np.abs(e - ref).max() / scale:12.2e}" for e in errs))


def whole_base():
    rng = np.random.default_rng(1)
    print("\n2. the base (block5_pool), vggtl bf16 against vggtl fp32, same weights")
    for size, n in [(224, 4), (50, 64)]:
        X = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        b32 = vggtl.VGG16(weights=None, input_shape=(size, size, 3), preprocess="caffe")
        b16 = vggtl.VGG16(weights=b32.get_weights(), input_shape=(size, size, 3),
                          preprocess="caffe", precision="bf16")
        f32, f16 = b32.predict(X), b16.predict(X)
        print(f"  {size} x {size}, {n} images: max|diff| / max|fp32| = "
              f"{np.abs(f16 - f32).max() / np.abs(f32).max():.2e}")


def head_accuracy(X, y, seed, base_kw, conv_algo="auto"):
    trX, teX, trY, teY = vggtl.train_test_split(X, y, test_size=0.5, random_state=seed)
    before = vggtl.get_conv_algo()
    vggtl.set_conv_algo(conv_algo)
    try:
        base = vggtl.VGG16(weights=None, include_top=False, input_shape=X.shape[1:], seed=seed,
                           **base_kw)
        Ftr, Fte = base.predict(trX), base.predict(teX)
    finally:
        vggtl.set_conv_algo(before)
    model = vggtl.TransferModel(base, head=[
        vggtl.Flatten(), vggtl.Dense(512, activation="relu"), vggtl.Dropout(0.5),
        vggtl.Dense(10, activation="softmax")], seed=seed, cache=False)
    model.compile(optimizer=vggtl.Adam(learning_rate=3e-3, decay=3e-3 / 20),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit_features(Ftr, trY, batch_size=32, epochs=20, verbose=0)
    pred = model.predict_features(Fte).argmax(1)
    return 100.0 * (pred == teY).mean(), pred


def head(seeds):
    from vggtl.__main__ import digits_images
    X, y = digits_images(None, 32)
    print(f"\n3. the tutorial head on digits ({len(X)} images, 32 x 32, half for testing), "
          f"test accuracy in points")
    print(f"{'seed':>4s} {'fp32':>7s} {'bf16':>7s} {'bf16-fp32':>10s} {'agree':>7s}   "
          f"{'im2col':>7s} {'im2col-fp32':>12s}")
    d_bf16, d_ctrl = [], []
    for seed in range(seeds):
        a32, p32 = head_accuracy(X, y, seed, {})
        a16, p16 = head_accuracy(X, y, seed, {"precision": "bf16"})
        ai, _ = head_accuracy(X, y, seed, {}, conv_algo="im2col")
        d_bf16.append(a16 - a32)
        d_ctrl.append(ai - a32)
        print(f"{seed:4d} {a32:7.2f} {a16:7.2f} {a16 - a32:+10.2f} {100 * (p16 == p32).mean():6.1f}%"
              f"   {ai:7.2f} {ai - a32:+12.2f}")
        sys.stdout.flush()

    def summary(d):
        se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        return f"mean {statistics.mean(d):+.2f} pt (standard error {se:.2f}), median " \
               f"{statistics.median(d):+.2f}, range {min(d):+.2f} .. {max(d):+.2f}"
    print(f"bf16 - fp32:            {summary(d_bf16)}")
    print(f"im2col - fp32 (control): {summary(d_ctrl)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--skip-layers", action="store_true", help="skip step 1 (slow NumPy)")
    args = ap.parse_args()
    info = vggtl.info()
    print(f"vggtl {info['version']}, isa {info['isa']}, bf16 kernel {info['bf16_kernel']}, "
          f"{info['threads']} threads")
    t = time.perf_counter()
    if not args.skip_layers:
        per_layer()
    whole_base()
    head(args.seeds)
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
