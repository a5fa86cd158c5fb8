"""vggtl against PyTorch with the same weights: the oracle at full size (224 x 224),
where the NumPy reference would be slow. torch is a required test extra."""
import numpy as np
import torch

import vggtl

from support.torch_vgg import torch_features, torch_top

torch.set_num_threads(2)


def run_features(net, x_nhwc):
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return y.permute(0, 2, 3, 1).contiguous().numpy()  # NCHW -> NHWC


def test_features_224(rng, close, base_model, conv_weights):
    X = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    got = base_model.predict(X)
    ref = run_features(torch_features(conv_weights), X.astype(np.float32))
    assert got.shape == ref.shape == (2, 7, 7, 512)
    assert (ref > 0).mean() > 0.3
    close(got, ref)


def test_features_50_grey_scaled(rng, close, conv_weights):
    # the tutorial's case: 50 x 50 grey uint8 images, X / 255
    model = vggtl.VGG16(weights=conv_weights, preprocess="scale")
    G = rng.integers(0, 256, (4, 50, 50), dtype=np.uint8)
    got = model.predict(G)
    x = np.repeat(G[..., None], 3, axis=3).astype(np.float32) / np.float32(255.0)
    ref = run_features(torch_features(conv_weights), x)
    assert got.shape == ref.shape == (4, 1, 1, 512)
    close(got, ref)


def test_block4_pool_50_caffe(rng, close, conv_weights):
    model = vggtl.VGG16(weights=conv_weights, preprocess="caffe")
    X = rng.integers(0, 256, (4, 50, 50, 3), dtype=np.uint8)
    got = model.predict(X, layer="block4_pool")
    x = X[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    ref = run_features(torch_features(conv_weights)[:24], x)  # up to block4_pool
    assert got.shape == ref.shape == (4, 3, 3, 512)
    close(got, ref)


def test_full_network_with_top_224(rng, close, top_model):
    w = top_model.get_weights()
    X = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    feats = run_features(torch_features(w), X.astype(np.float32))
    flat = torch.from_numpy(feats.reshape(2, -1))  # flatten in NHWC order, as Keras
    top = torch_top(w)
    with torch.no_grad():
        fc2 = top[:4](flat).numpy()
        probs = top(flat).numpy()
    close(top_model.predict(X, layer="fc2"), fc2)
    got = top_model.predict(X)
    assert got.shape == probs.shape == (2, top_model.classes)
    assert probs.max() > 0.5
    close(got, probs)
    np.testing.assert_array_equal(got.argmax(axis=1), probs.argmax(axis=1))
