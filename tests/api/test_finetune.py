"""Fine-tuning the top of VGG16: conv and max-pool backward in C, and
TransferModel.fine_tune against PyTorch autograd on the same weights."""
import numpy as np
import pytest
import torch

import vggtl
from vggtl import _kernels, reference

from support.tolerance import CONV_ALGOS as ALGOS, CONV_RTOL as TOL


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


# --- kernels -----------------------------------------------------------------------

# the backward runs the algorithm the forward would for the shape; each forced
# here, against float64 with the forward's bounds (ALGOS, TOL)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("n,h,w,cin,cout", [(2, 7, 5, 3, 4), (1, 6, 6, 16, 8), (3, 9, 8, 8, 5)])
def test_conv3x3_backward_matches_finite_differences(kernels, algo, n, h, w, cin, cout):
    vggtl.set_conv_algo(algo)
    rng = np.random.default_rng(n * 100 + h)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    k = (rng.standard_normal((3, 3, cin, cout)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    g = rng.standard_normal((n, h, w, cout)).astype(np.float32)
    dx, dw, db = _kernels.conv3x3_backward(g, x, k)

    def loss(x_, k_, b_):  # sum(g * conv(x)) in float64, linear so differences are exact
        out = reference.conv3x3(x_, k_, b_, relu=False).astype(np.float64)
        return float((out * g).sum())

    eps = 1e-2
    for (arr, grad, name) in ((x, dx, "dx"), (k, dw, "dw"), (b, db, "db")):
        idx = [tuple(rng.integers(0, s) for s in arr.shape) for _ in range(6)]
        for i in idx:
            args = [x.astype(np.float64), k.astype(np.float64), b.astype(np.float64)]
            j = {"dx": 0, "dw": 1, "db": 2}[name]
            plus, minus = args[j].copy(), args[j].copy()
            plus[i] += eps
            minus[i] -= eps
            a1, a2 = list(args), list(args)
            a1[j], a2[j] = plus, minus
            num = (loss(*a1) - loss(*a2)) / (2 * eps)
            assert abs(num - grad[i]) <= 2e-3 * max(1.0, abs(num)), (name, i, num, grad[i])


@pytest.mark.parametrize("algo", ALGOS)
def test_conv3x3_backward_matches_torch_at_block5_size(kernels, algo):
    vggtl.set_conv_algo(algo)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 14, 14, 512)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 512, 512)) * 0.02).astype(np.float32)
    g = rng.standard_normal((2, 14, 14, 512)).astype(np.float32)
    dx, dw, db = _kernels.conv3x3_backward(g, x, k)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    kt = torch.tensor(k.transpose(3, 2, 0, 1), dtype=torch.float64, requires_grad=True)
    bt = torch.zeros(512, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(xt, kt, bt, padding=1).backward(
        torch.tensor(g.transpose(0, 3, 1, 2), dtype=torch.float64))
    assert rel(dx, xt.grad.numpy().transpose(0, 2, 3, 1)) < TOL[algo]
    assert rel(dw, kt.grad.numpy().transpose(2, 3, 1, 0)) < TOL[algo]
    assert rel(db, bt.grad.numpy()) < 1e-5
    _, dw2, _ = _kernels.conv3x3_backward(g, x, k, need_dx=False)
    np.testing.assert_array_equal(dw2, dw)


def test_maxpool_backward_routes_to_the_first_maximum_and_zeroes_dropped_edges():
    # one window with a tie between top-right and bottom-left: the first in
    # row-major order (top-right) gets the gradient, as TensorFlow and PyTorch do
    x = np.array([[1, 5], [5, 2]], np.float32).reshape(1, 2, 2, 1)
    d = _kernels.maxpool2x2_backward(np.full((1, 1, 1, 1), 3.0, np.float32), x)
    np.testing.assert_array_equal(d[0, :, :, 0], [[0, 3], [0, 0]])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 5, 3)).astype(np.float32)  # odd sizes: last row/col dropped
    g = rng.standard_normal((2, 3, 2, 3)).astype(np.float32)
    d = _kernels.maxpool2x2_backward(g, x)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2, 2).backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(d, xt.grad.numpy().transpose(0, 2, 3, 1))
    assert not d[:, 6].any() and not d[:, :, 4].any()


# --- fine_tune against torch autograd ----------------------------------------------

BLOCK5 = ("block5_conv1", "block5_conv2", "block5_conv3")


def _setup(seed=0, n=6, size=64):
    rng = np.random.default_rng(seed)
    base = vggtl.VGG16(weights=None, input_shape=(size, size, 3), seed=seed)
    X = (rng.random((n, size, size, 3)) * 255).astype(np.uint8)
    y = np.arange(n) % 2
    model = vggtl.TransferModel(base, [vggtl.Flatten(), vggtl.Dense(8, activation="relu"),
                                       vggtl.Dense(2, activation="softmax")], seed=seed)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    return model, X, y


def _torch_tail_and_head(model):
    """block5 + flatten (NHWC order) + the head, as a float64 torch module."""
    w = {**model.base.get_weights(), **model.get_weights()}
    convs = []
    for name in BLOCK5:
        k, b = w[name]
        c = torch.nn.Conv2d(k.shape[2], k.shape[3], 3, padding=1).double()
        with torch.no_grad():
            c.weight.copy_(torch.tensor(k.transpose(3, 2, 0, 1)))
            c.bias.copy_(torch.tensor(b))
        convs.append(c)
    dense = []
    for name in ("dense", "dense_1"):
        k, b = w[name]
        d = torch.nn.Linear(*k.shape).double()
        with torch.no_grad():
            d.weight.copy_(torch.tensor(k.T))
            d.bias.copy_(torch.tensor(b))
        dense.append(d)

    def forward(f4):  # f4: NCHW block4_pool
        h = f4
        for c in convs:
            h = torch.relu(c(h))
        h = torch.nn.functional.max_pool2d(h, 2, 2)
        h = h.permute(0, 2, 3, 1).reshape(len(h), -1)  # Keras's NHWC flatten
        h = torch.relu(dense[0](h))
        return torch.softmax(dense[1](h), dim=1)
    return forward, convs, dense


def _keras_cce(p, y):
    q = p / p.sum(1, keepdim=True)
    return -(y * torch.log(q.clamp(1e-7, 1 - 1e-7))).sum(1).mean()


def test_fine_tune_gradients_of_every_block5_kernel_match_torch():
    model, X, y = _setup()
    F4 = model.base.predict(X, layer="block4_pool")
    forward, convs, dense = _torch_tail_and_head(model)
    yt = torch.nn.functional.one_hot(torch.tensor(y), 2).double()
    loss = _keras_cce(forward(torch.tensor(F4.transpose(0, 3, 1, 2), dtype=torch.float64)), yt)
    loss.backward()
    grads = {n: c.weight.grad.numpy().transpose(2, 3, 1, 0) for n, c in zip(BLOCK5, convs)}
    w0 = model.get_weights()  # head only before fine_tune
    w0.update({n: model.base.get_weights()[n] for n in BLOCK5})
    # one plain SGD step with a learning rate that makes the update comparable to
    # the weights, so (w0 - w1) / lr recovers the gradient to float32 precision
    lr = 0.05 * np.abs(w0["block5_conv3"][0]).max() / np.abs(grads["block5_conv3"]).max()
    model.fine_tune(X, y, unfreeze_from="block5_conv1", optimizer=vggtl.SGD(learning_rate=lr),
                    batch_size=len(X), epochs=1, shuffle=False, verbose=0)
    w1 = model.get_weights()
    for name in BLOCK5:
        g = (w0[name][0].astype(np.float64) - w1[name][0]) / lr
        assert rel(g, grads[name]) < 1e-4, name


@pytest.mark.parametrize("algo", ["im2col", "winograd", "winograd3"])
def test_fine_tune_ten_sgd_steps_match_torch_losses_and_weights(kernels, algo):
    # block 5 trains by the algorithm its maps run forward; forced here for the
    # whole base, so the cut torch starts from is the one fine_tune computes.
    # Some starting points make ten steps sensitive to rounding (a ReLU input
    # near 0 flips): from seed 1's cut im2col's losses end 5e-3 from torch's,
    # from seed 0's both algorithms stay within 1e-6.
    vggtl.set_conv_algo(algo)
    model, X, y = _setup(seed=0)
    F4 = model.base.predict(X, layer="block4_pool")
    forward, convs, dense = _torch_tail_and_head(model)
    params = [p for m in convs + dense for p in m.parameters()]
    # a learning rate at which the loss falls smoothly: at 1e-2 the second step
    # overshoots and kills the ReLUs, and float32 rounding then decides which
    # ones (the weights differed by 3e-4 on AVX-512)
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)  # equal to Keras's for a constant lr
    yt = torch.nn.functional.one_hot(torch.tensor(y), 2).double()
    f4 = torch.tensor(F4.transpose(0, 3, 1, 2), dtype=torch.float64)
    torch_losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = _keras_cce(forward(f4), yt)
        torch_losses.append(loss.item())
        loss.backward()
        opt.step()
    H = model.fine_tune(X, y, unfreeze_from="block5_conv1",
                        optimizer=vggtl.SGD(learning_rate=1e-3, momentum=0.9),
                        batch_size=len(X), epochs=10, shuffle=False, verbose=0)
    assert torch_losses[-1] < 0.9 * torch_losses[0]  # it learns: a trajectory worth comparing
    np.testing.assert_allclose(H.history["loss"], torch_losses, rtol=1e-5)
    w = model.get_weights()
    for name, c in zip(BLOCK5, convs):
        assert rel(w[name][0], c.weight.detach().numpy().transpose(2, 3, 1, 0)) < 1e-4, name


def test_fine_tune_keeps_conv_weights_in_saves_and_predictions(tmp_path):
    model, X, y = _setup(seed=2)
    before = model.base.get_weights()["block5_conv2"][0].copy()
    model.fine_tune(X, y, unfreeze_from="block5_conv1", batch_size=3, epochs=2, verbose=0,
                    optimizer=vggtl.SGD(learning_rate=0.1, momentum=0.9))
    after = model.base.get_weights()["block5_conv2"][0]
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(model.get_weights()["block5_conv2"][0], after)
    model.save(tmp_path / "m.vggtl")
    again = vggtl.load_model(tmp_path / "m.vggtl")
    np.testing.assert_array_equal(again.base.get_weights()["block5_conv2"][0], after)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


def test_unfreezing_a_lower_block_moves_the_cut():
    model, X, y = _setup(seed=3)
    w3 = model.base.get_weights()["block4_conv1"][0].copy()
    model.fine_tune(X, y, unfreeze_from="block4_conv1", batch_size=3, epochs=1, verbose=0,
                    optimizer=vggtl.SGD(learning_rate=0.5))
    assert model.base.trainable_layers[0] == "block4_conv1"
    assert not np.array_equal(w3, model.base.get_weights()["block4_conv1"][0])
    # frozen layers below the cut are untouched
    m2, _, _ = _setup(seed=3)
    np.testing.assert_array_equal(m2.base.get_weights()["block3_conv3"][0],
                                  model.base.get_weights()["block3_conv3"][0])


def test_keras_like_trainable_marks():
    model, X, y = _setup(seed=4)
    for layer in model.base.layers[15:]:  # the tutorial's line: block 5
        layer.trainable = True
    assert model.base.trainable_layers == BLOCK5 + ("block5_pool",)
    H = model.fine_tune(X, y, batch_size=3, epochs=1, verbose=0)
    assert len(H.history["loss"]) == 1


def test_fine_tune_bad_input():
    model, X, y = _setup(seed=5)
    with pytest.raises(ValueError, match="unfreeze_from: expected a layer of the base"):
        model.fine_tune(X, y, unfreeze_from="block6_conv1", verbose=0)
    with pytest.raises(ValueError, match="block1_conv1"):
        model.fine_tune(X, y, unfreeze_from="block1_conv1", verbose=0)
    model.base._trainable = set()
    with pytest.raises(ValueError, match="no layer of the base is trainable"):
        model.fine_tune(X, y, verbose=0)
    model.base.get_layer("block5_conv1").trainable = True  # a gap up to block5_pool
    with pytest.raises(ValueError, match="without gaps"):
        model.fine_tune(X, y, verbose=0)
    fresh = vggtl.TransferModel(model.base, [vggtl.Dense(2, activation="softmax")])
    with pytest.raises(RuntimeError, match="not compiled"):
        fresh.fine_tune(X, y, unfreeze_from="block5_conv1")


def test_fine_tune_reads_the_cut_from_the_cache_and_takes_augmented_views(tmp_path):
    model, X, y = _setup(seed=6, n=8)
    before = _kernels.vgg16_forward_images()
    model.fine_tune(X, y, unfreeze_from="block5_conv1", batch_size=4, epochs=1, verbose=0,
                    cache=str(tmp_path))
    first = _kernels.vgg16_forward_images() - before
    assert first == len(X)  # the cut computed once ...
    before = _kernels.vgg16_forward_images()
    model.fine_tune(X, y, unfreeze_from="block5_conv1", batch_size=4, epochs=1, verbose=0,
                    cache=str(tmp_path))
    assert _kernels.vgg16_forward_images() == before  # ... and read back the second time
    aug = vggtl.Augment(rotation_range=20, horizontal_flip=True, seed=1)
    before = _kernels.vgg16_forward_images()
    H = model.fine_tune(X, y, unfreeze_from="block5_conv1", batch_size=4, epochs=3, verbose=0,
                        cache=str(tmp_path), augment=aug, augment_views=2)
    assert _kernels.vgg16_forward_images() - before == 2 * len(X)  # two views, once each
    assert len(H.history["loss"]) == 3 and np.isfinite(H.history["loss"]).all()


def test_fine_tune_never_keeps_nan_weights():
    # class weights of 1e20 with Adam: the losses stay finite while an update
    # leaves NaN in the head and infinity in the moments; fine_tune returned
    # normally with them (was). It now stops at that epoch's end and keeps the
    # previous epoch's state, which a run of that many epochs reproduces bit for bit.
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 2, 16)

    def tuned(epochs):
        base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3), preprocess="caffe")
        model = vggtl.TransferModel(base, [vggtl.Flatten(), vggtl.Dense(8, activation="relu"),
                                           vggtl.Dense(2, activation="softmax")], cache=False)
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        try:
            model.fine_tune(X, y, unfreeze_from="block5_conv1", optimizer=vggtl.Adam(1e-3),
                            epochs=epochs, batch_size=16, verbose=0,
                            class_weight={0: 1e20, 1: 1.0})
        except FloatingPointError as e:
            return model, e
        return model, None

    model, error = tuned(3)
    assert error is not None and "while the loss stayed finite" in str(error), error
    done = model._epochs_done
    assert done == len(model.history.history["loss"]) >= 1
    w = model.get_weights()
    assert "block5_conv3" in w
    assert all(np.isfinite(a).all() for kb in w.values() for a in kb)
    expect, error = tuned(done)
    assert error is None
    expect = expect.get_weights()
    for k in expect:
        np.testing.assert_array_equal(w[k][0], expect[k][0], err_msg=k)
        np.testing.assert_array_equal(w[k][1], expect[k][1], err_msg=k)


# --- fit keeps block4_pool for the fine_tune that follows ------------------------------

def _fit_then_tune(memory, cache=False, seed=7, change=None, tune_x=None, views=2):
    """fit then fine_tune (augmented, with validation) on one model; returns the
    images the base ran from its input during fine_tune, the memo's bytes after
    fit, and the trained weights."""
    model, X, y = _setup(seed=seed, n=10, size=32)
    Xv = np.ascontiguousarray(X[::-1][:4])
    yv = y[:4]
    if memory is not None:
        model.cut_memory = memory
    aug = vggtl.Augment(rotation_range=20, zoom_range=0.1, horizontal_flip=True, seed=seed)
    model.fit(X, y, batch_size=4, epochs=2, verbose=0, validation_data=(Xv, yv), augment=aug,
              augment_views=views, cache=cache)
    kept = model._cut_memo().nbytes
    if change is not None:
        change(model)
    before = _kernels.vgg16_forward_images()
    model.fine_tune(X if tune_x is None else tune_x, y, unfreeze_from="block5_conv1",
                    batch_size=4, epochs=2, verbose=0, validation_data=(Xv, yv), augment=aug,
                    augment_views=views, cache=cache,
                    optimizer=vggtl.SGD(learning_rate=0.05, momentum=0.9))
    ran = _kernels.vgg16_forward_images() - before
    assert model._cut_memo().nbytes == 0  # dropped once fine_tune has what it needs
    return ran, kept, model.get_weights()


def _same_weights(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0], err_msg=k)
        np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=k)


def test_fine_tune_after_fit_takes_the_cut_fit_computed_and_trains_the_same_bits():
    cut = 2 * 2 * 512 * 4  # block4_pool of a 32 x 32 image, float32
    ran, kept, tuned = _fit_then_tune(memory=None)
    assert kept == (2 * 10 + 4) * cut  # two views of the 10 images, and the 4 validation ones
    assert ran == 0  # fine_tune ran no image from the input
    ran0, kept0, tuned0 = _fit_then_tune(memory=0)
    assert kept0 == 0 and ran0 == 2 * 10 + 4  # the same work, done again
    _same_weights(tuned, tuned0)
    # a budget that holds the first view only: the second and the validation cut are computed
    ran1, kept1, tuned1 = _fit_then_tune(memory=10 * cut)
    assert kept1 == 10 * cut and ran1 == 10 + 4
    _same_weights(tuned1, tuned0)


def test_fine_tune_does_not_take_a_cut_of_other_weights_or_other_images():
    def new_block4(model):
        w = model.base.get_weights()
        k, b = w["block4_conv3"]
        model.base.set_weights({**w, "block4_conv3": (k * 0.5, b)})

    ran, kept, tuned = _fit_then_tune(memory=None, change=new_block4)
    assert kept > 0 and ran == 2 * 10 + 4  # every cut computed again with the new weights
    # block 5 only changed: the cut is still fit's
    ran5, _, _ = _fit_then_tune(memory=None, change=lambda m: m.base.set_weights(
        {**m.base.get_weights(),
         "block5_conv1": tuple(a * 0.5 for a in m.base.get_weights()["block5_conv1"])}))
    assert ran5 == 0
    _, X, _ = _setup(seed=7, n=10, size=32)
    ran, _, _ = _fit_then_tune(memory=None, tune_x=X[::-1].copy())
    assert ran == 2 * 10  # other training images; the validation images are fit's


def test_fine_tune_writes_the_kept_cut_to_the_feature_cache(tmp_path):
    ran, kept, tuned = _fit_then_tune(memory=None, cache=str(tmp_path))
    assert kept > 0 and ran == 0
    ran0, _, tuned0 = _fit_then_tune(memory=0, cache=str(tmp_path / "other"))
    assert ran0 == 2 * 10 + 4
    _same_weights(tuned, tuned0)
    # the entries written from memory are the ones a computation writes: the
    # second cache folder (computed) and the first (from the memo) hold the same bits
    model, X, y = _setup(seed=7, n=10, size=32)
    for folder in (tmp_path, tmp_path / "other"):
        before = _kernels.vgg16_forward_images()
        got = model.base.extract(np.ascontiguousarray(X[::-1][:4]), layer="block4_pool",
                                 cache=str(folder), progress=False)
        assert _kernels.vgg16_forward_images() == before
        np.testing.assert_array_equal(got, model.base.predict(X[::-1][:4], layer="block4_pool"))


@pytest.mark.parametrize("bad", [-1, 1.5, "1GB", True, None])
def test_cut_memory_bad_values(bad):
    model, _, _ = _setup(seed=8, n=2, size=32)
    with pytest.raises(ValueError, match="cut_memory: expected an int >= 0"):
        model.cut_memory = bad
