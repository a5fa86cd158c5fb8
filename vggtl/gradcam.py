"""Grad-CAM heatmaps and the k worst predictions: what the model looked at.

    H = vggtl.grad_cam(model, X[:4])                     # (4, H, W) in [0, 1]
    vggtl.plot_grad_cam(X[:4], H, titles=["cat", ...])
    vggtl.plot_top_losses(model, testX, testY, k=9, grad_cam=True)

Grad-CAM (Selvaraju et al., 2017): the gradient of a class's score (the
output layer's pre-activation, the logit) with respect to a layer's output A
is averaged over positions into one weight per channel; the ReLU of the
weighted sum of A's channels, divided by its maximum, is the heatmap, which is
then resized bilinearly to the input's size. The gradient is computed in C
with the kernels that fine-tuning uses.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import _core
from ._arrays import as_images
from .vgg16 import LAYER_NAMES


def _head_spec_at_block5(model):
    """The head's spec reading block5_pool's unpooled output: a base with
    pooling="avg"/"max" becomes the head's own global pooling (the same maps)."""
    spec = model._spec(False)
    h5, w5, c5 = model.base.output_shape(layer="block5_pool")
    spec["input_shape"] = (h5, w5, c5)
    if model.base.pooling is not None:
        spec["input_mode"] = _core.HEAD_GAP if model.base.pooling == "avg" else _core.HEAD_GMP
    return spec


def grad_cam(model, X, layer: str = "block5_conv3", class_index=None,
             batch_size: int = 8) -> np.ndarray:
    """Grad-CAM heatmaps of a :class:`vggtl.TransferModel` for images X.

    ``layer``: a conv (its output after the ReLU) or pool layer of the base,
    block5_conv3 by default (the last convolution, as the paper uses).
    ``class_index``: None (each image's predicted class), an int (that class
    for every image) or one int per image. Returns float32 (N, H, W) in
    [0, 1] at the images' size: 1 where the class's evidence is strongest, all
    0 where the weighted sum is nowhere positive. For a one-unit sigmoid output
    the score is its logit (class 0 is the only index)."""
    from .model import TransferModel
    if not isinstance(model, TransferModel):
        raise TypeError(f"model: expected a vggtl.TransferModel, got {type(model).__name__}")
    X = as_images(X, "X")
    n = len(X)
    base_layers = LAYER_NAMES[:LAYER_NAMES.index("block5_pool") + 1]  # convs and pools
    if not isinstance(layer, str) or layer not in base_layers:
        raise ValueError(f"layer: expected a conv or pool layer of the base, e.g. "
                         f"'block5_conv3', got {layer!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    units = model.output_units
    if class_index is None:
        ci = np.full(n, -1, np.int32)
    else:
        arr = np.asarray(class_index)
        if arr.dtype.kind not in "iu" or arr.ndim > 1 or (arr.ndim == 1 and len(arr) != n):
            raise ValueError(f"class_index: expected None, an int or {n} ints (one per image), "
                             f"got {class_index!r}")
        if arr.size and (arr.min() < 0 or arr.max() >= units):
            raise ValueError(f"class_index: expected classes in 0..{units - 1} (the output has "
                             f"{units} units), got {class_index!r}")
        # a copy always: the core writes the classes it chose back into it
        ci = np.array(np.broadcast_to(arr, (n,)), dtype=np.int32)
    h, w = X.shape[1:3]
    if n == 0:
        return np.zeros((0, h, w), np.float32)
    with model._lock:
        A = model.base.predict(X, batch_size=max(batch_size, 32), layer=layer)
        cam = _core.vgg16_grad_cam(A, LAYER_NAMES.index(layer), model.base._params(False),
                                   _head_spec_at_block5(model), ci, int(batch_size))
    top = cam.reshape(n, -1).max(axis=1)
    cam /= np.where(top > 0, top, 1.0).astype(np.float32)[:, None, None]
    from .data import resize
    out = resize(cam[..., None], (h, w))[..., 0]
    return np.clip(out, 0.0, 1.0, out=out)


_grad_cam = grad_cam  # plot_top_losses has an argument of that name


def _as_display(X) -> np.ndarray:
    """Images to show: uint8 as they are, floats scaled to 0..1 by their range."""
    X = as_images(X, "X")
    if X.shape[3] == 1:
        X = X[..., 0]
    if X.dtype == np.uint8:
        return X
    X = X.astype(np.float32)
    lo, hi = float(X.min()), float(X.max())
    return (X - lo) / (hi - lo) if hi > lo else np.zeros_like(X)


def plot_grad_cam(X, heatmaps, titles: Optional[Sequence[str]] = None, alpha: float = 0.45,
                  cmap: str = "jet", cols: int = 4, path=None, close: bool = False, ax=None):
    """Overlay heatmaps (N, H, W) in [0, 1] (:func:`grad_cam`'s) on images X:
    one panel per image, the heatmap drawn over it with ``alpha`` and ``cmap``.
    ``titles``: one per image. Draws into ``ax`` (one axes, or as many as
    images) or a new figure of ``cols`` columns; ``path`` saves it. Returns
    the figure (needs matplotlib: pip install matplotlib)."""
    from .plots import _finish, _pyplot
    plt = _pyplot("plot_grad_cam")
    imgs = _as_display(X)
    H = np.asarray(heatmaps, dtype=np.float32)
    if H.ndim != 3 or H.shape[0] != len(imgs) or H.shape[1:] != imgs.shape[1:3]:
        raise ValueError(f"heatmaps: expected (N, H, W) = {(len(imgs),) + imgs.shape[1:3]} to "
                         f"match X, got shape {H.shape}")
    if titles is not None and len(titles) != len(imgs):
        raise ValueError(f"titles: expected {len(imgs)} titles, got {len(titles)}")
    n = len(imgs)
    if ax is None:
        cols = max(1, min(int(cols), n))
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        axes = list(axes.ravel())
    else:
        axes = list(np.ravel(ax)) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) < n:
            raise ValueError(f"ax: expected {n} axes (one per image), got {len(axes)}")
        fig = axes[0].figure
    for i, a in enumerate(axes):
        a.axis("off")
        if i >= n:
            continue
        a.imshow(imgs[i], cmap="gray" if imgs[i].ndim == 2 else None)
        a.imshow(H[i], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        if titles is not None:
            a.set_title(str(titles[i]), fontsize=9)
    fig.tight_layout()
    _finish(fig, True, path, None, close, plt)  # written atomically, as every plot
    return fig


def top_losses(model, X, y, k: int = 9):
    """(indices, losses, probabilities) of the k images with the largest loss:
    the cross-entropy of the true class's probability, worst first."""
    probs = model.predict(X)
    truth = _codes(model, y, len(probs))
    if probs.shape[1] == 1:
        p_true = np.where(truth == 1, probs[:, 0], 1.0 - probs[:, 0])
    else:
        p_true = probs[np.arange(len(probs)), truth]
    losses = -np.log(np.clip(p_true.astype(np.float64), 1e-7, 1.0))
    k = int(min(k, len(losses)))
    order = np.argsort(-losses, kind="stable")[:k]
    return order, losses[order], probs


def _codes(model, y, n) -> np.ndarray:
    """Class indices of y as fit reads labels: integer codes, one-hot rows, or
    the model's labels (``classes_``, e.g. strings)."""
    y = np.asarray(y)
    if y.dtype.kind in "USO" and model.classes_ is None:
        raise ValueError("y: string labels, but the model has no classes_ to map them (it "
                         "was not trained on string labels); pass integer class indices")
    return model._class_indices(model._targets(y, n)).astype(np.int64)


def plot_top_losses(model, X, y, k: int = 9, target_names: Optional[Sequence[str]] = None,
                    grad_cam: bool = False, layer: str = "block5_conv3", cols: int = 3,
                    path=None, close: bool = False):
    """The k images with the largest loss, worst first, each titled
    "predicted / actual / loss / probability of the actual class" (fastai's
    ``plot_top_losses``). ``target_names``: the class names (default: the
    model's ``class_names``, else its labels). ``grad_cam=True`` overlays each
    image's Grad-CAM for its predicted class. Returns the figure (matplotlib)."""
    from .plots import _finish, _pyplot
    plt = _pyplot("plot_top_losses")
    Xi = as_images(X, "X")
    order, losses, probs = top_losses(model, Xi, y, k)
    truth = _codes(model, y, len(probs))
    pred = probs.argmax(1) if probs.shape[1] > 1 else (probs[:, 0] > 0.5).astype(np.int64)
    if target_names is None:
        target_names = model.class_names if model.class_names is not None else (
            [str(c) for c in np.asarray(model.classes_).tolist()] if model.classes_ is not None
            else [str(i) for i in range(max(2, probs.shape[1]))])
    names = [str(t) for t in target_names]
    titles = []
    for i, loss in zip(order, losses):
        p = probs[i, truth[i]] if probs.shape[1] > 1 else \
            (probs[i, 0] if truth[i] == 1 else 1.0 - probs[i, 0])
        titles.append(f"{names[pred[i]]} / {names[truth[i]]}\n{loss:.2f} / {p:.2f}")
    sel = Xi[order]
    n = len(order)
    cols = max(1, min(int(cols), n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    if grad_cam and n:
        H = _grad_cam(model, sel, layer=layer,
                      class_index=pred[order] if probs.shape[1] > 1 else 0)
        plot_grad_cam(sel, H, titles=titles, ax=axes.ravel().tolist())
    else:
        imgs = _as_display(sel)
        for j, a in enumerate(axes.ravel()):
            a.axis("off")
            if j < n:
                a.imshow(imgs[j], cmap="gray" if imgs[j].ndim == 2 else None)
                a.set_title(titles[j], fontsize=9)
    fig.suptitle("predicted / actual / loss / probability of actual", fontsize=10)
    fig.tight_layout()
    _finish(fig, True, path, None, close, plt)
    return fig
