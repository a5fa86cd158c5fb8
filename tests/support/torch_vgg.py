"""torchvision's VGG16 layers built from Keras-layout weights: the PyTorch oracle of
the whole network (test_torch_parity, and test_winograd's full-size bound)."""
import numpy as np
import torch

from vggtl import reference


def torch_features(weights):
    """torchvision's vgg16().features, built from Keras-layout weights."""
    layers, cin = [], 3
    for name in reference.CONV_LAYERS:
        k, b = weights[name]
        conv = torch.nn.Conv2d(cin, k.shape[3], 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(b))
        layers += [conv, torch.nn.ReLU()]
        if name in ("block1_conv2", "block2_conv2") or name.endswith("conv3"):
            layers.append(torch.nn.MaxPool2d(2, 2))
        cin = k.shape[3]
    return torch.nn.Sequential(*layers).eval()


def torch_top(weights):
    """fc1, fc2, predictions as torch Linear layers (weight = kernel.T)."""
    layers = []
    for name in ("fc1", "fc2", "predictions"):
        k, b = weights[name]
        lin = torch.nn.Linear(k.shape[0], k.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(k).t())
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.Softmax(dim=1) if name == "predictions" else torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()
