"""Slow, readable NumPy versions of every vggtl kernel: the test oracle.

Like bottleneck's ``slow/``: each function says in a few lines of NumPy what the
C core computes, in float64 internally, and returns float32. Layouts are the
core's: activations NHWC, conv kernels HWIO (3, 3, Cin, Cout), dense kernels
(in, out). Nothing here is fast, and nothing here is used by ``vggtl.VGG16``.
"""
from __future__ import annotations

import numpy as np

# Keras's VGG16 (configuration D): (name, kind) in order.
LAYERS = (
    ("block1_conv1", "conv"), ("block1_conv2", "conv"), ("block1_pool", "pool"),
    ("block2_conv1", "conv"), ("block2_conv2", "conv"), ("block2_pool", "pool"),
    ("block3_conv1", "conv"), ("block3_conv2", "conv"), ("block3_conv3", "conv"),
    ("block3_pool", "pool"),
    ("block4_conv1", "conv"), ("block4_conv2", "conv"), ("block4_conv3", "conv"),
    ("block4_pool", "pool"),
    ("block5_conv1", "conv"), ("block5_conv2", "conv"), ("block5_conv3", "conv"),
    ("block5_pool", "pool"),
    ("flatten", "flatten"), ("fc1", "dense"), ("fc2", "dense"), ("predictions", "dense"),
)

CONV_LAYERS = tuple(name for name, kind in LAYERS if kind == "conv")
# configuration D's widths (Simonyan & Zisserman, Table 1): output channels of
# the 13 convs in order, units of fc1 and fc2 (predictions: the classes)
CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
DENSE_UNITS = (4096, 4096)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def relu(x):
    return np.maximum(_f64(x), 0.0).astype(np.float32)


def sigmoid(x):
    x = _f64(x)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def softmax(x):
    """Row-wise softmax of x (N, D), max-subtracted so exp never overflows."""
    x = _f64(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


_ACTIVATIONS = {"linear": lambda x: _f64(x).astype(np.float32), "relu": relu,
                "softmax": softmax, "sigmoid": sigmoid}


def activation(x, name):
    """The activation `name` ('linear', 'relu', 'softmax', 'sigmoid') of x (N, D)."""
    return _ACTIVATIONS[name](x)


def conv3x3(x, kernel, bias, relu=True):
    """x (N,H,W,Cin), kernel (3,3,Cin,Cout), bias (Cout,) -> (N,H,W,Cout).

    Stride 1, 'same' zero padding: out[n,y,x] = sum over the 9 taps (dy, dx) of
    xpad[n, y+dy, x+dx, :] @ kernel[dy, dx] (cross-correlation, as Keras and torch).
    """
    x, kernel, bias = _f64(x), _f64(kernel), _f64(bias)
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[3]))
    for dy in range(3):
        for dx in range(3):
            out += np.tensordot(xp[:, dy:dy + h, dx:dx + w, :], kernel[dy, dx], axes=([3], [0]))
    out += bias
    if relu:
        out = np.maximum(out, 0.0)
    return out.astype(np.float32)


def conv3x3_backward(dout, x, kernel):
    """The gradients of conv3x3 (before its activation) in float64: dout
    (N,H,W,Cout) is dL/d(output), x the input -> (dx, dkernel, dbias).

    Each tap's output reads xpad shifted by (dy, dx), so its kernel gets that
    slice's x^T @ dout and the slice gets dout @ kernel[dy, dx]^T."""
    dout, x, kernel = _f64(dout), _f64(x), _f64(kernel)
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for dy in range(3):
        for dx in range(3):
            dk[dy, dx] = np.tensordot(xp[:, dy:dy + h, dx:dx + w, :], dout,
                                      axes=([0, 1, 2], [0, 1, 2]))
            dxp[:, dy:dy + h, dx:dx + w, :] += np.tensordot(dout, kernel[dy, dx],
                                                            axes=([3], [1]))
    return dxp[:, 1:h + 1, 1:w + 1, :], dk, dout.sum(axis=(0, 1, 2))


def bf16_round(a):
    """float32 -> bfloat16 (round to nearest even) -> float32, as vggtl stores the
    bf16 operands: NaN stays NaN, values below FLT_MIN become a signed zero."""
    a = np.asarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    mag = u & 0x7FFFFFFF
    r = np.where(mag > 0x7F800000, u | 0x400000, r)               # NaN: quiet, kept
    r = np.where(mag < 0x00800000, u & 0x80000000, r)              # subnormal: zero
    return (r & 0xFFFF0000).astype(np.uint32).view(np.float32)


def conv3x3_winograd_bf16(x, kernel, bias, relu=True):
    """What a layer computes at ``precision="bf16"``: Winograd F(2x2, 3x3) whose
    transformed input V = B^T d B and kernel U = G g G^T are computed in float32
    (in the core's order of operations, so they are the same numbers) and rounded
    to bfloat16; the 16 products per tile are summed here in float64, the
    output transform A^T M A and the bias in float64."""
    x = np.asarray(x, dtype=np.float32)
    g = np.asarray(kernel, dtype=np.float32)
    n, h, w, _ = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    d = np.pad(x, ((0, 0), (1, 2 * th - h + 1), (1, 2 * tw - w + 1), (0, 0)))
    half = np.float32(0.5)
    # U (4, 4, Cin, Cout): G g over the kernel's rows, then over its columns
    def gt(g0, g1, g2):
        return [g0, (g0 + g1 + g2) * half, (g0 - g1 + g2) * half, g2]
    rows = gt(g[0], g[1], g[2])                        # 4 x (3, Cin, Cout)
    U = np.stack([np.stack(gt(r[0], r[1], r[2])) for r in rows])
    U = bf16_round(U).astype(np.float64)

    def bt(d0, d1, d2, d3):
        return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    out = np.zeros((n, 2 * th, 2 * tw, g.shape[3]))
    AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
    for ty in range(th):
        for tx in range(tw):
            p = d[:, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4, :]    # (n, 4, 4, Cin)
            t = bt(p[:, 0], p[:, 1], p[:, 2], p[:, 3])           # over rows: 4 x (n, 4, Cin)
            V = np.stack([np.stack(bt(r[:, 0], r[:, 1], r[:, 2], r[:, 3]), axis=1) for r in t],
                         axis=1)                                 # (n, 4, 4, Cin)
            V = bf16_round(V).astype(np.float64)
            M = np.einsum("nabc,abco->nabo", V, U)
            out[:, 2 * ty:2 * ty + 2, 2 * tx:2 * tx + 2] = np.einsum("ai,nijo,bj->nabo", AT, M, AT)
    out = out[:, :h, :w] + _f64(bias)
    if relu:
        out = np.maximum(out, 0.0)
    return out.astype(np.float32)


def maxpool2x2(x):
    """2x2 max-pooling, stride 2, 'valid': odd H or W drop the last row / column."""
    x = _f64(x)
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)).astype(np.float32)


def global_pool(x, mode):
    """x (N,H,W,C) -> (N,C): mean ('avg') or max ('max') over H and W."""
    x = _f64(x)
    if mode == "avg":
        return x.mean(axis=(1, 2)).astype(np.float32)
    if mode == "max":
        return x.max(axis=(1, 2)).astype(np.float32)
    raise ValueError(f"mode: expected 'avg' or 'max', got {mode!r}")


def dense(x, kernel, bias, activation="linear"):
    """act(x (N,In) @ kernel (In,Out) + bias (Out,))."""
    return _ACTIVATIONS[activation](_f64(x) @ _f64(kernel) + _f64(bias))


def input_convert(x, scale, shift, reverse_channels=False):
    """x (N,H,W,1|3) -> (N,H,W,3): out[..., c] = x[..., src(c)] * scale[c] + shift[c],
    src(c) = 0 for one channel (grey repeated), 2 - c when reversing, else c."""
    x = _f64(x)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif reverse_channels:
        x = x[..., ::-1]
    return (x * _f64(scale) + _f64(shift)).astype(np.float32)


def preprocess(x, mode):
    """Keras's imagenet_utils.preprocess_input (mode 'caffe' or 'torch'), 'scale' (x/255)
    or None (unchanged); x (N,H,W,1|3) RGB, grey is repeated to 3 channels first."""
    x = _f64(x)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if mode is None:
        y = x
    elif mode == "caffe":  # RGB -> BGR, then subtract the ImageNet mean (BGR order)
        y = x[..., ::-1] - _f64(CAFFE_MEAN_BGR)
    elif mode == "torch":
        y = (x / 255.0 - _f64(TORCH_MEAN)) / _f64(TORCH_STD)
    elif mode == "scale":
        y = x / 255.0
    else:
        raise ValueError(f"mode: unknown {mode!r}")
    return y.astype(np.float32)


_preprocess = preprocess  # vgg16_forward's argument of the same name shadows it


def vgg16_forward(x, weights, layer=None, include_top=False, pooling=None, preprocess=None,
                  bf16_layers=()):
    """The VGG16 network on x (N,H,W,1|3), walking Keras's layer list.

    weights: {name: (kernel, bias)} in Keras layouts. layer: stop after this layer
    (None: block5_pool, or predictions with include_top). pooling ('avg'/'max')
    applies to the output only when layer is None and include_top is False.
    bf16_layers: the conv layers that run :func:`conv3x3_winograd_bf16` (the caller
    says which: where the core runs bf16 is a choice under test, not arithmetic).
    """
    if layer is None:
        layer = "predictions" if include_top else "block5_pool"
    else:
        pooling = None
    a = _preprocess(x, preprocess)
    for name, kind in LAYERS:
        if kind == "conv":
            a = (conv3x3_winograd_bf16 if name in bf16_layers else conv3x3)(a, *weights[name], relu=True)
        elif kind == "pool":
            a = maxpool2x2(a)
        elif kind == "flatten":
            a = a.reshape(len(a), -1)  # NHWC order, as Keras's Flatten
        else:
            a = dense(a, *weights[name], activation="softmax" if name == "predictions" else "relu")
        if name == layer:
            break
    if pooling is not None:
        a = global_pool(a, pooling)
    return a
