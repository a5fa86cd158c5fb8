"""VGG16 conv base: vggtl against PyTorch, ONNX Runtime (fp32 and int8) and
TensorFlow's Keras, every engine in one run on one machine, one table.

    python benchmarks/backbone.py [--threads 2] [--repeats 5]
                                  [--sizes 224:16,48:32,50:256,32:32] [--skip tf,int8]

All engines get the same weights (vggtl's random Glorot weights, exported to
torch, from torch to ONNX, and set into Keras's VGG16) and the same float32
input, made before timing (NHWC for vggtl and Keras, NCHW for the others), on
the same number of threads. Each cell is images per second, the median of the
repeats after one warm-up run.

Peers:
  torch      PyTorch's network in inference mode (oneDNN).
  ort        the torch network exported to ONNX (opset 17), every graph
             optimisation on (MLAS).
  ort int8   the usual CPU recipe: onnxruntime.quantization.quantize_static, QDQ
             format, per-channel int8 weights, uint8 activations, 8 calibration
             images of the same size.
  keras      TensorFlow's Keras VGG16 (tf_keras, the seed's library), called as
             a tf.function.
Errors (last lines): each engine's features against PyTorch in float64 on 2
images, as max |diff| / max |reference|; int8 and bf16 against their own fp32.

Needs the bench extra: pip install -e ".[bench]".
"""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: no CUDA probing noise
import platform
import tempfile
import warnings

import numpy as np

import vggtl
from _common import median_time, torch_vgg16_features
from vggtl import _core


def conv_gflop(h, w):
    """FLOPs of the VGG16 conv base on one h x w image, as a direct convolution."""
    total, cin = 0, 3
    for name, kind, _, units, _ in _core.VGG16_LAYERS:
        if kind == "conv":
            total += 2 * h * w * 9 * cin * units
        elif kind == "pool":
            h, w = h // 2, w // 2
        cin = units
        if name == "block5_pool":
            break
    return total / 1e9


def onnx_export(net, path):
    import torch
    x = torch.zeros(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17,
                          dynamo=False)


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_int8(fp32_path, out_path, calib):
    """quantize_static, QDQ, per-channel int8 weights, uint8 activations."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(fp32_path, out_path, Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def keras_model(weights, threads):
    """TensorFlow's Keras VGG16 (tf_keras) with vggtl's weights, as a tf.function."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tf_keras
    model = tf_keras.applications.VGG16(weights=None, include_top=False,
                                        input_shape=(None, None, 3))
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(list(weights[layer.name]))
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return fn, tf.__version__


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="224:16,48:32,50:256,32:32",
                    help="size:batch pairs, comma-separated (default: %(default)s)")
    ap.add_argument("--skip", default="", help="engines to leave out: tf, int8, bf16")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))

    import onnxruntime
    import torch
    torch.set_num_threads(args.threads)
    vggtl.set_num_threads(args.threads)
    base = vggtl.VGG16(weights=None, include_top=False, seed=0, preprocess=None)
    weights = base.get_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 emulated on CPUs without it
        base16 = vggtl.VGG16(weights=weights, preprocess=None, precision="bf16")
    net = torch_vgg16_features(weights).eval()
    net64 = torch_vgg16_features(weights).eval().double()
    keras_fn, tf_version = (None, None) if "tf" in skip else keras_model(weights, args.threads)
    info = vggtl.info()
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores; {args.threads} threads for every "
          f"engine; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"vggtl {vggtl.__version__} (kernels {info['isa']}, bf16 products "
          f"{info['bf16_kernel']}); torch {torch.__version__}; onnxruntime "
          f"{onnxruntime.__version__}" + (f"; tensorflow {tf_version}" if tf_version else ""))
    rows, errs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = os.path.join(tmp, "vgg16.onnx")
        onnx_export(net, fp32_path)
        sess = ort_session(fp32_path, args.threads)
        rng = np.random.default_rng(0)
        for size, batch in sizes:
            x = rng.random((batch, size, size, 3), dtype=np.float32) * 255
            xo = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            xt = torch.from_numpy(xo)
            t = {}
            t["vggtl"] = median_time(lambda: base.predict(x, batch_size=batch), args.repeats)
            if "bf16" not in skip:
                t["vggtl bf16"] = median_time(lambda: base16.predict(x, batch_size=batch),
                                              args.repeats)

            def run_torch():
                with torch.inference_mode():
                    net(xt)
            t["torch"] = median_time(run_torch, args.repeats)
            t["ort"] = median_time(lambda: sess.run(None, {"x": xo}), args.repeats)
            if keras_fn is not None:
                xk = __import__("tensorflow").constant(x)
                t["keras"] = median_time(lambda: keras_fn(xk).numpy(), args.repeats)
            q = None
            if "int8" not in skip:
                q_path = os.path.join(tmp, f"vgg16_int8_{size}.onnx")
                calib = (np.random.default_rng(1).random((8, 3, size, size), dtype=np.float32)
                         * 255)
                ort_int8(fp32_path, q_path, calib)
                q = ort_session(q_path, args.threads)
                t["ort int8"] = median_time(lambda: q.run(None, {"x": xo}), args.repeats)
            rows.append((size, batch, {k: batch / v for k, v in t.items()}))
            # accuracy on 2 images, against torch in float64
            with torch.inference_mode():
                ref = net64(xt[:2].double()).numpy().transpose(0, 2, 3, 1)
            f32 = base.predict(x[:2])
            e = {"vggtl": rel(f32, ref),
                 "ort": rel(sess.run(None, {"x": xo[:2]})[0].transpose(0, 2, 3, 1), ref)}
            if "bf16" not in skip:
                e["vggtl bf16 vs vggtl"] = rel(base16.predict(x[:2]), f32)
            if q is not None:
                o32 = sess.run(None, {"x": xo[:2]})[0]
                e["ort int8 vs ort"] = rel(q.run(None, {"x": xo[:2]})[0], o32)
            errs.append((size, batch, e))

    names = list(rows[0][2])
    fp32_peers = [n for n in ("torch", "ort", "keras") if n in names]
    head = ["size/batch"] + names + ["vggtl / fastest fp32 peer"]
    if "ort int8" in names:
        head += [f"{n} / ort int8" for n in names if n.startswith("vggtl")]
    print("\nimages per second (median of %d), conv base, %d threads" % (args.repeats,
                                                                        args.threads))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for size, batch, r in rows:
        best = max(r[n] for n in fp32_peers)
        cells = [f"{size} / {batch}"] + [f"{r[n]:.1f}" for n in names]
        cells.append(f"{r['vggtl'] / best:.2f}x")
        if "ort int8" in names:
            cells += [f"{r[n] / r['ort int8']:.2f}x" for n in names if n.startswith("vggtl")]
        print("| " + " | ".join(cells) + " |")
    print("\nerrors, max |diff| / max |reference| on 2 images (reference: torch float64):")
    for size, batch, e in errs:
        print(f"  {size}/{batch}: " + ", ".join(f"{k} {v:.1e}" for k, v in e.items()))
    print(f"\ndirect-convolution GFLOP per image: "
          + ", ".join(f"{s}: {conv_gflop(s, s):.2f}" for s, _, _ in rows))


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
