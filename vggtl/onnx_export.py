"""A TransferModel as one ONNX graph: :meth:`vggtl.TransferModel.export`.

The graph takes the images as vggtl's ``predict`` does, NHWC (N, H, W, C) of
the model's input size with C its 1 or 3 channels, uint8 (the default) or
float32 pixels in 0..255, and returns the head's output (the softmax or sigmoid
probabilities): input conversion (grey to three channels, RGB to BGR and the
affine preprocessing of ``base.preprocess``), the 13 convolutions with their
ReLUs and 5 max-pools, the base's global pooling, the head's input layer and
its Dense layers (Dropout is the identity at inference). It is written with
the ``onnx`` package (``pip install onnx``); vggtl itself never runs it.
"""
from __future__ import annotations

import os

import numpy as np

OPSET = 17


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError("model.export needs the onnx package to write ONNX files: pip install "
                          "onnx (or pip install -e \".[onnx]\" from the checkout)") from None
    return onnx, TensorProto, helper, numpy_helper


def build(model, input_dtype: str = "uint8"):
    """The ``onnx.ModelProto`` of a TransferModel (see the module's docstring)."""
    from .layers import Dense, Dropout, Flatten, GlobalAveragePooling2D
    from .vgg16 import _LAYERS, _preprocess_params
    onnx, TensorProto, helper, numpy_helper = _onnx()
    if input_dtype not in ("uint8", "float32"):
        raise ValueError(f"input_dtype: expected 'uint8' or 'float32', got {input_dtype!r}")
    base = model.base
    if base.input_shape is None:
        raise ValueError("model: the base needs a fixed input_shape to be exported")
    h, w, c = base.input_shape
    nodes, inits = [], []
    names = iter(range(1 << 30))

    def const(value, dtype=np.float32, name=None):
        n = name or f"const_{next(names)}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def node(op, inputs, **attrs):
        out = f"{op.lower()}_{next(names)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    # input conversion: out[..., k] = x[..., map[k]] * scale[k] + shift[k] (input.c)
    scale, shift, rev = _preprocess_params(base.preprocess)
    x = node("Cast", ["images"], to=TensorProto.FLOAT)
    index = [0, 0, 0] if c == 1 else ([2, 1, 0] if rev else [0, 1, 2])
    if index != [0, 1, 2]:
        x = node("Gather", [x, const(index, np.int64)], axis=3)
    x = node("Mul", [x, const(scale)])
    x = node("Add", [x, const(shift)])
    x = node("Transpose", [x], perm=[0, 3, 1, 2])  # NCHW for Conv
    # the base up to block5_pool
    for name, kind, *_ in _LAYERS:
        if kind == "conv":
            k, b = base._weights[name]
            wk = const(np.ascontiguousarray(k.transpose(3, 2, 0, 1)), name=f"{name}/kernel")
            wb = const(b, name=f"{name}/bias")
            x = node("Conv", [x, wk, wb], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            x = node("Relu", [x])
        elif kind == "pool":
            x = node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        if name == "block5_pool":
            break
    if base.pooling is not None:  # the base's own global pooling: (N, 512, 1, 1)
        x = node("GlobalAveragePool" if base.pooling == "avg" else "GlobalMaxPool", [x])
    # the head's input layer, on the NHWC features Keras flattens
    first = model.layers[0]
    if isinstance(first, Flatten):
        x = node("Transpose", [x], perm=[0, 2, 3, 1])
        x = node("Flatten", [x], axis=1)
    else:
        x = node("GlobalAveragePool" if isinstance(first, GlobalAveragePooling2D)
                 else "GlobalMaxPool", [x])
        x = node("Flatten", [x], axis=1)
    for layer in model.layers[1:]:
        if isinstance(layer, Dropout):
            continue  # the identity at inference
        assert isinstance(layer, Dense)
        k, b = model._weights[layer.name]
        x = node("Gemm", [x, const(k, name=f"{layer.name}/kernel"),
                          const(b, name=f"{layer.name}/bias")])
        if layer.activation == "relu":
            x = node("Relu", [x])
        elif layer.activation == "softmax":
            x = node("Softmax", [x], axis=-1)
        elif layer.activation == "sigmoid":
            x = node("Sigmoid", [x])
    nodes.append(helper.make_node("Identity", [x], ["probabilities"]))
    elem = TensorProto.UINT8 if input_dtype == "uint8" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, model.name or "vggtl",
        [helper.make_tensor_value_info("images", elem, ["N", h, w, c])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["N", model.output_units])],
        initializer=inits)
    from . import __version__
    proto = helper.make_model(graph, producer_name="vggtl", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    names_meta = model.class_names if model.class_names is not None else (
        None if model.classes_ is None else [str(v) for v in np.asarray(model.classes_).tolist()])
    if names_meta is not None:
        import json
        helper.set_model_props(proto, {"class_names": json.dumps(names_meta)})
    onnx.checker.check_model(proto)
    return proto


def export(model, path, input_dtype: str = "uint8") -> str:
    """Write the model's ONNX graph to ``path`` atomically; returns the path."""
    from ._atomic import atomic_write_bytes
    path = os.fspath(path)
    proto = build(model, input_dtype)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
