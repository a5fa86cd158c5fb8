"""VGG16 conv base, vggtl against PyTorch, in one run on one machine.

    python benchmarks/backbone.py [--threads 2] [--repeats 5]

Both engines get the same weights and the same float32 NHWC input (PyTorch is
fed NCHW, made before timing). Prints images/s (median of the repeats) for each
engine and the ratio vggtl / PyTorch, at 224x224 (batch 16) and 50x50 (batch
256), plus the sgemm rate of this machine measured in the same run.
"""
import argparse
import platform

import numpy as np

import vggtl
from _common import median_time, torch_vgg16_features


def sgemm_gflops(repeats):
    import torch
    a = torch.rand(4096, 4096)
    t = median_time(lambda: a @ a, repeats)
    return 2 * 4096 ** 3 / t / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    vggtl.set_num_threads(args.threads)
    base = vggtl.VGG16(weights=None, include_top=False, seed=0)
    net = torch_vgg16_features(base.get_weights()).eval()
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads; "
          f"torch {torch.__version__}; vggtl {vggtl.__version__} ({vggtl.info()['blas']})")
    print(f"sgemm 4096^3 (torch): {sgemm_gflops(args.repeats):.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    for size, batch in ((224, 16), (50, 256)):
        x = rng.random((batch, size, size, 3), dtype=np.float32) * 255
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        t_v = median_time(lambda: base.predict(x, batch_size=batch), args.repeats)

        def run_torch():
            with torch.inference_mode():
                net(xt)
        t_t = median_time(run_torch, args.repeats)
        print(f"{size}x{size} batch {batch}: vggtl {batch / t_v:7.2f} img/s, "
              f"torch {batch / t_t:7.2f} img/s, ratio {t_t / t_v:.2f}x")


if __name__ == "__main__":
    main()
