"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""
import hashlib
import statistics
import time

import numpy as np

import vggtl

POOLED_AFTER = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")


def weights_sha256(weights):
    """SHA-256 (first 16 hex digits) of {layer: (kernel, bias)}, float32, layers
    by name: names the same weights whatever file or session holds them."""
    h = hashlib.sha256()
    for name in sorted(weights):
        for a in weights[name]:
            h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def median_time(fn, repeats):
    """Median wall time of fn() over `repeats` runs, after one warm-up run
    (page faults, thread pools, packing buffers)."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def torch_vgg16_features(weights, trainable_prefix=None):
    """The VGG16 conv base as a torch Sequential (NCHW) with vggtl's weights
    ({layer: (kernel HWIO, bias)}); convs whose name starts with
    `trainable_prefix` keep requires_grad, the others are frozen."""
    import torch
    layers, cin = [], 3
    for name in vggtl.vgg16.CONV_LAYERS:
        k, b = weights[name]
        conv = torch.nn.Conv2d(cin, k.shape[3], 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(b))
        trainable = trainable_prefix is not None and name.startswith(trainable_prefix)
        for p in conv.parameters():
            p.requires_grad_(trainable)
        layers += [conv, torch.nn.ReLU(inplace=True)]
        if name in POOLED_AFTER:
            layers.append(torch.nn.MaxPool2d(2, 2))
        cin = k.shape[3]
    return torch.nn.Sequential(*layers)
