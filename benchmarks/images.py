"""Decoding image folders: vggtl.load_images against a plain Pillow loop and Keras's loader.

    python benchmarks/images.py [--n 400] [--src-size 1024x768] [--size 224]
                                [--format jpg] [--threads 2] [--repeats 3] [--skip-keras]

Writes --n synthetic photos (smooth gradients plus noise, so that JPEG has
something to code) of --src-size as --format files into a temporary folder of
two class subfolders, then times, over the same files, passes interleaved:

1. vggtl.load_images(folder, image_size=(size, size)) at 1 and --threads
   threads (Image.draft for JPEG, EXIF orientation, bilinear resize);
2. a plain Pillow loop: Image.open, convert("RGB"), resize(BILINEAR), one
   file after another, into one array (what a user writes by hand);
3. Keras's loader: keras.utils.image_dataset_from_directory(folder,
   image_size=(size, size), batch_size=32, shuffle=False) iterated once
   (TensorFlow decodes; tf.image.resize, bilinear without antialiasing), and
   keras.utils.load_img(target_size=..., interpolation="bilinear") per file
   (Pillow underneath, the resize load_images matches).

Prints images per second (median of --repeats) and each one's ratio to
load_images. Nothing is downloaded; the files are removed at the end.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import vggtl


def write_files(root, n, w, h, fmt):
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        d = os.path.join(root, "a" if i % 2 == 0 else "b")
        os.makedirs(d, exist_ok=True)
        base = np.stack([(xx * (0.2 + 0.01 * i)) % 256, (yy * 0.3) % 256,
                         ((xx + yy) * 0.1 + 8 * i) % 256], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(d, f"{i:05d}.{fmt}"),
                                  **({"quality": 90} if fmt in ("jpg", "webp") else {}))


def files_of(root):
    out = []
    for c in sorted(os.listdir(root)):
        out += [os.path.join(root, c, f) for f in sorted(os.listdir(os.path.join(root, c)))]
    return out


def pillow_loop(files, size):
    from PIL import Image
    X = np.empty((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as img:
            X[i] = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
    return X


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--src-size", default="1024x768", help="WIDTHxHEIGHT of the files")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--format", default="jpg", choices=("jpg", "png", "webp", "bmp"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-keras", action="store_true")
    args = ap.parse_args()
    w, h = (int(v) for v in args.src_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="vggtl-bench-images-") as root:
        write_files(root, args.n, w, h, args.format)
        files = files_of(root)
        size = args.size
        runs = {}

        def vggtl_at(t):
            def run():
                vggtl.set_num_threads(t)
                vggtl.load_images(root, image_size=(size, size), progress=False)
            return run
        for t in sorted({1, args.threads}):
            runs[f"vggtl.load_images, {t} thread{'s' if t > 1 else ''}"] = vggtl_at(t)
        runs["plain Pillow loop (no draft), 1 thread"] = lambda: pillow_loop(files, size)
        if not args.skip_keras:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tf_keras

            def keras_dataset():
                ds = tf_keras.utils.image_dataset_from_directory(
                    root, image_size=(size, size), batch_size=32, shuffle=False)
                for _ in ds:
                    pass

            def keras_load_img():
                for f in files:
                    np.asarray(tf_keras.utils.load_img(f, target_size=(size, size),
                                                       interpolation="bilinear"))
            runs["Keras image_dataset_from_directory (TensorFlow)"] = keras_dataset
            runs["Keras load_img loop (Pillow)"] = keras_load_img
        print(f"{args.n} {args.format} files of {w}x{h} -> {size}x{size}, median of "
              f"{args.repeats} passes, interleaved")
        times = {k: [] for k in runs}
        for fn in runs.values():
            fn()  # warm-up: imports, page cache
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        ref = None
        for k, ts in times.items():
            rate = args.n / statistics.median(ts)
            ref = ref or rate
            print(f"  {k:50s} {rate:9.1f} images/s  ({ref / rate:.2f}x the time of the first)")


if __name__ == "__main__":
    main()
