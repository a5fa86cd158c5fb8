"""VGG16 conv base: vggtl against PyTorch and ONNX Runtime, in one run on one machine.

    python benchmarks/backbone.py [--threads 2] [--repeats 5] [--sizes 224:16,50:256]

All engines get the same weights (vggtl's random Glorot weights, exported to
torch and from torch to ONNX) and the same float32 input, made before timing
(NHWC for vggtl, NCHW for the others), on the same number of threads. Prints,
per size and batch: images/s (median of the repeats), the effective GFLOP/s
(the direct convolution's 2*H*W*9*Cin*Cout per layer over the time), and each
peer's ratio to vggtl; vggtl also runs with im2col forced, to show what
Winograd brings, and at precision="bf16" (F(2x2) Winograd on VDPBF16PS where
the CPU has AVX512_BF16), next to torch in bfloat16 (the network and input cast
to torch.bfloat16, oneDNN's kernels), with each one's error against its fp32
features. The sgemm rate of this machine (OpenBLAS through vggtl's own
dense layer, and torch's) is measured in the same run: a direct convolution
cannot beat it, Winograd can.

Needs the bench extra: pip install -e ".[bench]" (torch 2.13.0, onnxruntime, onnx).
"""
import argparse
import os
import platform
import tempfile

import numpy as np

import vggtl
from _common import median_time, torch_vgg16_features
from vggtl import _core


def conv_gflop(h, w):
    """FLOPs of the VGG16 conv base on one h x w image, as a direct convolution."""
    total, cin = 0, 3
    for name, kind, units in _core.vgg16_layers():
        if kind == "conv":
            total += 2 * h * w * 9 * cin * units
        elif kind == "pool":
            h, w = h // 2, w // 2
        cin = units
        if name == "block5_pool":
            break
    return total / 1e9


def sgemm_rates(repeats, n=4096):
    """GFLOP/s of an n^3 sgemm: OpenBLAS (vggtl's dense layer) and torch."""
    import torch
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    zero = np.zeros(n, np.float32)
    t_blas = median_time(lambda: _core.dense_forward(a, a, zero, activation="linear"), repeats)
    at = torch.from_numpy(a)
    t_torch = median_time(lambda: at @ at, repeats)
    return 2 * n ** 3 / t_blas / 1e9, 2 * n ** 3 / t_torch / 1e9


def onnx_session(net, threads, path):
    """The torch network exported to ONNX (batch axis dynamic), in an ORT session
    with `threads` intra-op threads and every graph optimisation on."""
    import onnxruntime as ort
    import torch
    x = torch.zeros(1, 3, 64, 64)
    torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17,
                      dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]), ort.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="224:16,50:256",
                    help="size:batch pairs, comma-separated (default: %(default)s)")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]

    import torch
    torch.set_num_threads(args.threads)
    vggtl.set_num_threads(args.threads)
    base = vggtl.VGG16(weights=None, include_top=False, seed=0, preprocess=None)
    base16 = vggtl.VGG16(weights=base.get_weights(), preprocess=None, precision="bf16")
    net = torch_vgg16_features(base.get_weights()).eval()
    net16 = torch_vgg16_features(base.get_weights()).eval().to(torch.bfloat16)
    info = vggtl.info()
    with tempfile.TemporaryDirectory() as tmp:
        sess, ort_version = onnx_session(net, args.threads, os.path.join(tmp, "vgg16.onnx"))
        cpu = _cpu_name()
        print(f"machine: {cpu}, {os.cpu_count()} cores; {args.threads} threads for every "
              f"engine")
        print(f"vggtl {vggtl.__version__} (kernels {info['isa']}, bf16 products "
              f"{info['bf16_kernel']}, OpenBLAS {info['blas_coretype']}); torch "
              f"{torch.__version__}; onnxruntime {ort_version}")
        blas, mkl = sgemm_rates(args.repeats)
        print(f"sgemm 4096^3: OpenBLAS {blas:.0f} GFLOP/s, torch {mkl:.0f} GFLOP/s")
        rng = np.random.default_rng(0)
        for size, batch in sizes:
            x = rng.random((batch, size, size, 3), dtype=np.float32) * 255
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            xo = xt.numpy()
            gf = conv_gflop(size, size)
            times = {}
            vggtl.set_conv_algo("auto")
            times["vggtl"] = median_time(lambda: base.predict(x, batch_size=batch),
                                         args.repeats)
            vggtl.set_conv_algo("im2col")
            times["vggtl im2col"] = median_time(lambda: base.predict(x, batch_size=batch),
                                                args.repeats)
            vggtl.set_conv_algo("auto")
            times["vggtl bf16"] = median_time(lambda: base16.predict(x, batch_size=batch),
                                              args.repeats)

            def run_torch():
                with torch.inference_mode():
                    net(xt)
            times["torch"] = median_time(run_torch, args.repeats)
            times["onnxruntime"] = median_time(lambda: sess.run(None, {"x": xo}), args.repeats)
            xt16 = xt.to(torch.bfloat16)

            def run_torch16():
                with torch.inference_mode():
                    return net16(xt16)
            times["torch bf16"] = median_time(run_torch16, args.repeats)
            # bf16 errors against each engine's own float32 features, on 2 images
            f32, f16 = base.predict(x[:2]), base16.predict(x[:2])
            with torch.inference_mode():
                t32 = net(xt[:2]).numpy()
                t16 = net16(xt16[:2]).float().numpy()
            errs = {"vggtl": np.abs(f16 - f32).max() / np.abs(f32).max(),
                    "torch": np.abs(t16 - t32).max() / np.abs(t32).max()}
            print(f"\n{size}x{size}, batch {batch} ({gf:.2f} GFLOP per image as a direct "
                  f"convolution):")
            for name, t in times.items():
                print(f"  {name:13s} {batch / t:8.2f} img/s  {gf * batch / t:6.0f} GFLOP/s  "
                      f"vggtl is {t / times['vggtl']:.2f}x")
            peer = min(times["torch"], times["onnxruntime"])
            print(f"  vggtl / faster peer: {peer / times['vggtl']:.2f}x; direct-convolution "
                  f"ceiling at the OpenBLAS rate: {blas / gf:.2f} img/s")
            print(f"  bf16: vggtl {times['vggtl'] / times['vggtl bf16']:.2f}x its fp32, "
                  f"{times['torch bf16'] / times['vggtl bf16']:.2f}x torch bf16; "
                  f"max|bf16 - fp32| / max|fp32|: vggtl {errs['vggtl']:.1e}, "
                  f"torch {errs['torch']:.1e}")


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
