"""One fine-tuning epoch of block 5 + the tutorial's head: vggtl against PyTorch.

    python benchmarks/finetune.py [--n 1000] [--size 224] [--threads 2] [--batch 32]

vggtl computes block4_pool once (timed apart: it is paid once, not per epoch)
and each epoch runs block 5 and the head in C. PyTorch does it the usual way:
blocks 1-4 frozen (no grad) but recomputed in every epoch, block 5 and the head
trained with SGD(1e-4, momentum 0.9). Same weights, same data, same threads.
Prints seconds per epoch (median of the epochs run) and the ratio.
"""
import argparse
import statistics
import time

import numpy as np

import vggtl
from _common import torch_vgg16_features


class EpochTimer(vggtl.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    vggtl.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    X = (rng.random((args.n, args.size, args.size, 3)) * 255).astype(np.uint8)
    y = np.arange(args.n) % 2
    base = vggtl.VGG16(weights=None, input_shape=(args.size, args.size, 3), preprocess="caffe")
    model = vggtl.TransferModel(base, [vggtl.Flatten(), vggtl.Dense(512, activation="relu"),
                                       vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    t = time.perf_counter()
    base.predict(X, batch_size=args.batch, layer="block4_pool")
    t_cut = time.perf_counter() - t
    timer = EpochTimer()
    model.fine_tune(X, y, unfreeze_from="block5_conv1", epochs=args.epochs, batch_size=args.batch,
                    verbose=0, callbacks=[timer],
                    optimizer=vggtl.SGD(learning_rate=1e-4, momentum=0.9))
    t_v = statistics.median(timer.times)

    # PyTorch, the usual way
    w = {**base.get_weights(), **model.get_weights()}
    feats = torch_vgg16_features(w, trainable_prefix="block5")
    flat = int(np.prod(base.output_shape()))
    head = torch.nn.Sequential(torch.nn.Linear(flat, 512), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(512, 2))
    params = [p for p in list(feats.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    mean = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    Xt = torch.from_numpy(X)
    Yt = torch.from_numpy(y)
    times = []
    for _ in range(max(1, args.epochs - 1)):
        t = time.perf_counter()
        perm = torch.randperm(args.n)
        for i in range(0, args.n, args.batch):
            idx = perm[i:i + args.batch]
            xb = Xt[idx].permute(0, 3, 1, 2).float().flip(1) - mean
            out = head(feats(xb).permute(0, 2, 3, 1).reshape(len(idx), -1))
            loss = torch.nn.functional.cross_entropy(out, Yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    t_t = statistics.median(times)
    print(f"fine-tune epoch (block 5 + head), {args.n} images of {args.size}x{args.size}, "
          f"batch {args.batch}, {args.threads} threads: vggtl {t_v:.2f} s (+ {t_cut:.2f} s once "
          f"for the block4_pool cut), torch {t_t:.2f} s, ratio {t_t / t_v:.2f}x per epoch")


if __name__ == "__main__":
    main()
