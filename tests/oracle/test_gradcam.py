"""vggtl.grad_cam against a PyTorch autograd Grad-CAM on the same weights, and
the plots built on it (plot_grad_cam, plot_top_losses)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vggtl

torch.set_num_threads(2)


def _torch_grad_cam(model, X, layer, class_index=None):
    """Grad-CAM in torch: block by block as torchvision's vgg16, the head on the
    NHWC-flattened (or pooled) block5_pool output, the gradient of the class's
    logit at `layer`'s output by autograd, then ReLU(sum alpha_k A_k) / max and
    F.interpolate(bilinear, align_corners=False) to the input size."""
    base = model.base
    from vggtl.vgg16 import _preprocess_params
    scale, shift, rev = _preprocess_params(base.preprocess)
    x = torch.from_numpy(np.asarray(X, np.float32))
    if x.shape[3] == 1:
        x = x.repeat(1, 1, 1, 3)
    if rev:
        x = x[..., [2, 1, 0]]
    x = x * torch.tensor(scale) + torch.tensor(shift)
    x = x.permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    A = None
    for name in vggtl.LAYER_NAMES[:vggtl.LAYER_NAMES.index("block5_pool") + 1]:
        if "conv" in name:
            k, b = base.get_weights()[name]
            x = torch.relu(F.conv2d(x, torch.from_numpy(k.transpose(3, 2, 0, 1).copy()),
                                    torch.from_numpy(b), padding=1))
        else:
            x = F.max_pool2d(x, 2)
        if name == layer:
            A = x
            A.retain_grad()
    if base.pooling == "avg":
        x = x.mean(dim=(2, 3), keepdim=True)
    elif base.pooling == "max":
        x = x.amax(dim=(2, 3), keepdim=True)
    first = model.layers[0]
    if isinstance(first, vggtl.Flatten):
        z = x.permute(0, 2, 3, 1).reshape(len(x), -1)
    elif isinstance(first, vggtl.GlobalAveragePooling2D):
        z = x.mean(dim=(2, 3))
    else:
        z = x.amax(dim=(2, 3))
    dense = [lay for lay in model.layers[1:] if isinstance(lay, vggtl.Dense)]
    for i, lay in enumerate(dense):
        k, b = model.get_weights()[lay.name]
        z = z @ torch.from_numpy(k) + torch.from_numpy(b)
        if i + 1 < len(dense) and lay.activation == "relu":
            z = torch.relu(z)
    logits = z
    if class_index is None:
        class_index = logits.argmax(1) if logits.shape[1] > 1 else torch.zeros(len(z), dtype=int)
    else:
        class_index = torch.as_tensor(np.broadcast_to(class_index, (len(z),)).copy())
    logits[torch.arange(len(z)), class_index].sum().backward()
    alpha = A.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * A).sum(1, keepdim=True))
    top = cam.amax(dim=(2, 3), keepdim=True)
    cam = torch.where(top > 0, cam / torch.where(top > 0, top, torch.ones_like(top)), cam)
    cam = F.interpolate(cam, size=tuple(X.shape[1:3]), mode="bilinear", align_corners=False)
    return cam[:, 0].detach().numpy()


def _model(shape, head, pooling=None, preprocess="caffe", seed=1):
    base = vggtl.VGG16(weights=None, input_shape=shape, pooling=pooling,
                       preprocess=preprocess, seed=seed)
    return vggtl.TransferModel(base, head=head, seed=seed)


CASES = [
    ((64, 64, 3), [vggtl.Flatten(), vggtl.Dense(8, activation="relu"), vggtl.Dropout(0.3),
                   vggtl.Dense(3, activation="softmax")], None, "block5_conv3", None),
    ((64, 96, 3), [vggtl.GlobalAveragePooling2D(), vggtl.Dense(4, activation="softmax")], None,
     "block4_conv2", 2),
    ((64, 64, 1), [vggtl.GlobalMaxPooling2D(), vggtl.Dense(1, activation="sigmoid")], None,
     "block5_pool", None),
    ((64, 64, 3), [vggtl.Dense(2, activation="softmax")], "avg", "block3_pool", [1, 0, 1]),
]


@pytest.mark.parametrize("shape, head, pooling, layer, ci", CASES)
def test_grad_cam_equals_torch_autograd(rng, shape, head, pooling, layer, ci):
    model = _model(shape, head, pooling)
    X = rng.integers(0, 256, (3,) + shape, dtype=np.uint8)
    got = vggtl.grad_cam(model, X, layer=layer, class_index=ci, batch_size=2)
    ref = _torch_grad_cam(model, X, layer, ci)
    assert got.shape == (3,) + shape[:2] and got.dtype == np.float32
    assert got.min() >= 0.0 and got.max() <= 1.0
    # real maps (a class's evidence can be negative everywhere: a map of zeros)
    assert (got.reshape(3, -1).max(1) > 0.5).sum() >= 2 - (ci is not None)
    assert np.abs(got - ref).max() <= 1e-4, np.abs(got - ref).max()


def test_grad_cam_class_matters_and_errors(rng):
    model = _model((64, 64, 3), [vggtl.GlobalAveragePooling2D(),
                                 vggtl.Dense(3, activation="softmax")])
    X = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    pred = model.predict(X).argmax(1)
    np.testing.assert_array_equal(vggtl.grad_cam(model, X), vggtl.grad_cam(model, X,
                                                                            class_index=pred))
    # int32 (n,) went to the core as a read-only view of itself: "expected a writeable array"
    pred32 = pred.astype(np.int32)
    np.testing.assert_array_equal(vggtl.grad_cam(model, X, class_index=pred32),
                                  vggtl.grad_cam(model, X))
    assert (pred32 == pred).all()  # and the user's array is left as it was
    other = (pred + 1) % 3
    assert not np.allclose(vggtl.grad_cam(model, X, class_index=other),
                           vggtl.grad_cam(model, X, class_index=pred))
    with pytest.raises(ValueError, match="class_index: expected classes in 0..2"):
        vggtl.grad_cam(model, X, class_index=3)
    with pytest.raises(ValueError, match="layer: expected a conv or pool layer"):
        vggtl.grad_cam(model, X, layer="fc1")
    with pytest.raises(ValueError, match="expected images of 64 x 64"):
        vggtl.grad_cam(model, X[:, :40])
    assert vggtl.grad_cam(model, X[:0]).shape == (0, 64, 64)


def test_plot_grad_cam_and_top_losses(rng, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    model = _model((64, 64, 3), [vggtl.GlobalAveragePooling2D(),
                                 vggtl.Dense(2, activation="softmax")])
    model.class_names = ["cat", "dog"]
    X = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    H = vggtl.grad_cam(model, X[:2])
    fig = vggtl.plot_grad_cam(X[:2], H, titles=["a", "b"], path=tmp_path / "cam.png",
                              close=True)
    assert (tmp_path / "cam.png").stat().st_size > 0 and len(fig.axes) == 2
    with pytest.raises(ValueError, match="heatmaps: expected"):
        vggtl.plot_grad_cam(X[:2], H[:1])
    # the worst predictions by the loss of the true class, worst first
    from vggtl.gradcam import top_losses
    idx, losses, probs = top_losses(model, X, y, k=4)
    p_true = model.predict(X)[np.arange(6), y]
    np.testing.assert_array_equal(idx, np.argsort(p_true, kind="stable")[:4])
    np.testing.assert_allclose(losses, -np.log(p_true[idx]), rtol=1e-5)
    fig = vggtl.plot_top_losses(model, X, y, k=4, grad_cam=True, path=tmp_path / "top.png",
                                close=True)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    pred = probs.argmax(1)
    names = ["cat", "dog"]
    assert titles[0].startswith(f"{names[pred[idx[0]]]} / {names[y[idx[0]]]}\n"
                                f"{losses[0]:.2f} / ")
    assert len(titles) == 4 and (tmp_path / "top.png").stat().st_size > 0


def test_glue_refuses_bad_arguments():
    model = _model((32, 32, 3), [vggtl.GlobalAveragePooling2D(),
                                 vggtl.Dense(2, activation="softmax")])
    from vggtl.gradcam import _head_spec_at_block5
    params, spec = model.base._params(False), _head_spec_at_block5(model)
    A = np.zeros((2, 2, 2, 512), np.float32)  # block5_conv3's output at 32 x 32
    ci = np.full(2, -1, np.int32)
    core = vggtl._core.vgg16_grad_cam
    assert core(A, 16, params, spec, ci, 1).shape == (2, 2, 2)
    with pytest.raises(TypeError, match="maps: expected dtype float32"):
        core(A.astype(np.float64), 16, params, spec, ci, 1)
    with pytest.raises(ValueError, match="maps"):
        core(A[..., :256].copy(), 16, params, spec, ci, 1)
    with pytest.raises(TypeError, match="class_index: expected dtype int32"):
        core(A, 16, params, spec, ci.astype(np.int64), 1)
    ro = ci.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="class_index.*writeable"):
        core(A, 16, params, spec, ro, 1)
    with pytest.raises(ValueError, match="layer: expected a conv or pool layer"):
        core(A, 18, params, spec, ci, 1)
    with pytest.raises(ValueError, match="does not lead to the head's input"):
        core(np.zeros((2, 4, 4, 512), np.float32), 16, params, spec, ci, 1)  # 2 x 2 after the pool
    with pytest.raises(ValueError, match="params: expected the 26 conv kernels"):
        core(A, 16, params[:-2], spec, ci, 1)
    with pytest.raises(ValueError):
        core(A, 16, params, spec, np.array([0, 5], np.int32), 1)  # no unit 5
    with pytest.raises(ValueError, match="batch"):
        core(A, 16, params, spec, ci, 0)
