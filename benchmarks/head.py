"""One epoch of the tutorial's head on cached features: vggtl against PyTorch.

    python benchmarks/head.py [--n 2000] [--threads 2] [--repeats 5]

The head is Flatten -> Dense(512, relu) -> Dropout(0.5) -> Dense(2, softmax),
trained with Adam(1e-4, decay 1e-4/20) and binary crossentropy, batch 32, on
N random 7x7x512 features (what block5_pool gives at 224x224). PyTorch trains
the same head the usual way (DataLoader-free loop over shuffled index batches,
torch.optim.Adam, BCE on softmax probabilities). Prints seconds per epoch
(median) and the ratio.

It also prints the memory bound of a step: the first Dense holds 25088 x 512
floats (51 MB), and a step cannot move fewer bytes than reading them for the
forward pass plus one Adam pass over them (read the weights, m and v, write the
three back: the gradient can stay in cache only if the update is fused into its
computation) = 7 x 51 MB. The bandwidth is measured here, with torch on the
same threads (c = a + b over 256 MB arrays, 3 arrays moved).

The products are a second floor: the forward product (batch x 25088 x 512
multiply-adds) is compute-bound, and the weight gradient x^T dz has as many.
The forward's time is measured alone (predict_features over the epoch's
batches), so a step cannot take less than the forward plus the larger of the
gradient's products (as long as the forward) and its 6 x 51 MB of Adam traffic.
That floor assumes the gradient's arithmetic and the update's streaming overlap
perfectly.
"""
import argparse

import numpy as np

import vggtl
from _common import median_time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    vggtl.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    F = np.maximum(rng.standard_normal((args.n, 7, 7, 512), dtype=np.float32), 0)
    y = rng.integers(0, 2, args.n)
    base = vggtl.VGG16(weights=None, input_shape=(224, 224, 3))
    model = vggtl.TransferModel(base, [vggtl.Flatten(), vggtl.Dense(512, activation="relu"),
                                       vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")])
    model.compile(optimizer=vggtl.Adam(learning_rate=1e-4, decay=1e-4 / 20),
                  loss="binary_crossentropy", metrics=["accuracy"])
    t_v = median_time(lambda: model.fit_features(F, y, batch_size=args.batch, epochs=1, verbose=0),
                      args.repeats)

    t_fwd = median_time(lambda: model.predict_features(F, batch_size=args.batch), args.repeats)

    w = model.get_weights()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(25088, 512), torch.nn.ReLU(),
                              torch.nn.Dropout(0.5), torch.nn.Linear(512, 2), torch.nn.Softmax(1))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w["dense"][0].T.copy()))
        net[4].weight.copy_(torch.from_numpy(w["dense_1"][0].T.copy()))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    Ft = torch.from_numpy(F)
    Yt = torch.nn.functional.one_hot(torch.from_numpy(y), 2).float()

    def torch_epoch():
        net.train()
        perm = torch.randperm(args.n)
        for i in range(0, args.n, args.batch):
            idx = perm[i:i + args.batch]
            p = net(Ft[idx]).clamp(1e-7, 1 - 1e-7)
            loss = torch.nn.functional.binary_cross_entropy(p, Yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_t = median_time(torch_epoch, args.repeats)
    a = torch.ones(64 << 20)
    b, c = torch.ones_like(a), torch.empty_like(a)
    t_bw = median_time(lambda: torch.add(a, b, out=c), args.repeats)
    bw = 3 * a.numel() * 4 / t_bw
    steps = -(-args.n // args.batch)
    w_bytes = 25088 * 512 * 4
    bound = steps * 7 * w_bytes / bw
    print(f"memory: {bw / 1e9:.1f} GB/s (c = a + b, {args.threads} threads); one epoch moves at "
          f"least {steps} x 7 x {w_bytes / 1e6:.0f} MB = {bound:.3f} s at that rate; vggtl "
          f"{t_v:.3f} s is {t_v / bound:.2f}x the bound")
    floor = t_fwd + max(t_fwd, steps * 6 * w_bytes / bw)
    print(f"products: the forward alone {t_fwd:.3f} s an epoch; forward + max(its twin, the "
          f"update's 6 x {w_bytes / 1e6:.0f} MB) = {floor:.3f} s; vggtl is {t_v / floor:.2f}x "
          f"that floor")
    print(f"head epoch, {args.n} features of 7x7x512, batch {args.batch}, {args.threads} threads: "
          f"vggtl {t_v:.3f} s, torch {t_t:.3f} s, ratio {t_t / t_v:.2f}x")


if __name__ == "__main__":
    main()
