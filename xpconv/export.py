"""Take a trained model elsewhere: an ONNX file (:func:`to_onnx`) or a PyTorch module
(:func:`to_torch`) of the inference network.

Both follow the layers in order: Convolution -> Conv / ``nn.Conv2d``, Pooling ->
MaxPool/AveragePool, Affine -> Flatten + Gemm / ``nn.Linear``, Relu, Sigmoid, Flatten,
BatchNormalization in inference form (its running statistics), and Dropout removed
(inference scales nothing: xpconv's Dropout multiplies by ``1 - ratio`` at test time,
which becomes a ``Mul`` / a scale folded into nothing else). The output is the scores
``predict`` returns, (N, K), for any batch size N.

Each layer's padding is taken from a forward pass on one zero image of the model's input
size (``"same"`` and ceil rounding resolved to numbers).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .devices import to_numpy

if TYPE_CHECKING:
    import torch

    from .network import Sequential

__all__ = ["to_onnx", "to_torch"]


def _input_shape(net, input_shape):
    if input_shape is not None:
        return tuple(int(v) for v in input_shape)
    config = getattr(net, "_config", None)
    if config and "input_dim" in config:
        return tuple(config["input_dim"])
    raise ValueError("export: give input_shape=(C, H, W): this model does not record its input size")


def _layers(net, input_shape):
    """(name, layer) in order, after one inference forward that sets every window geometry."""
    C, H, W = _input_shape(net, input_shape)
    net.predict(np.zeros((1, C, H, W), dtype=np.float32))
    return list(net.layers.items()), (C, H, W)


def _host(a) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(a), dtype=np.float32)


def _window(layer):
    g = layer._geom
    pads = [g.h.p0, g.w.p0, g.h.p1, g.w.p1]
    ceil = g.h.extra > 0 or g.w.extra > 0
    return g, pads, ceil


def to_onnx(net: Sequential, path: str | os.PathLike, *, input_shape: Sequence[int] | None = None,
            opset: int = 17) -> None:
    """Write ``net``'s inference network to ``path`` as ONNX (float32, dynamic batch size).

    Input ``x``: (N, C, H, W) float32; output ``scores``: (N, K), what ``predict`` returns.

    Args:
        net: the model (a :class:`~xpconv.Sequential` of xpconv's layers).
        path: the ``.onnx`` file to write (atomically).
        input_shape: (C, H, W) of one image; default: the size the model records
            (xpconv's models do).
        opset: the ONNX opset version of the file.

    Raises:
        ImportError: the ``onnx`` package is missing (``pip install "xpconv[export]"``).
        ValueError: a layer ONNX cannot express as xpconv computes it.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError('export to ONNX needs the onnx package: pip install "xpconv[export]"') from None
    layers, (C, H, W) = _layers(net, input_shape)
    nodes, inits = [], []
    current = "x"

    def init(name, array):
        inits.append(numpy_helper.from_array(_host(array), name))
        return name

    for lname, layer in layers:
        kind, out = type(layer).__name__, f"{lname}_out"
        if kind == "Convolution":
            g, pads, ceil = _window(layer)
            if ceil:
                raise ValueError(f"export: {lname}: a convolution with ceil rounding has no ONNX form")
            nodes.append(helper.make_node("Conv", [current, init(f"{lname}.W", layer.W), init(f"{lname}.b", layer.b)],
                                          [out], kernel_shape=[g.h.k, g.w.k], strides=[g.h.s, g.w.s],
                                          dilations=[g.h.d, g.w.d], pads=pads, group=int(layer.groups)))
        elif kind == "Pooling":
            g, pads, ceil = _window(layer)
            attrs = dict(kernel_shape=[g.h.k, g.w.k], strides=[g.h.s, g.w.s], pads=pads, ceil_mode=int(ceil))
            if layer.mode == "max":
                nodes.append(helper.make_node("MaxPool", [current], [out], **attrs))
            else:
                nodes.append(helper.make_node("AveragePool", [current], [out],
                                              count_include_pad=int(layer.count_include_pad), **attrs))
        elif kind == "Affine":
            flat = f"{lname}_flat"
            nodes.append(helper.make_node("Flatten", [current], [flat], axis=1))
            nodes.append(helper.make_node("Gemm", [flat, init(f"{lname}.W", layer.W), init(f"{lname}.b", layer.b)],
                                          [out]))
        elif kind in ("Relu", "Sigmoid"):
            nodes.append(helper.make_node(kind, [current], [out]))
        elif kind == "Flatten":
            nodes.append(helper.make_node("Flatten", [current], [out], axis=1))
        elif kind == "Dropout":
            scale = init(f"{lname}.scale", np.asarray(1.0 - layer.dropout_ratio))
            nodes.append(helper.make_node("Mul", [current, scale], [out]))
        elif kind == "BatchNormalization":
            names = [init(f"{lname}.{a}", getattr(layer, a)) for a in ("gamma", "beta", "running_mean", "running_var")]
            nodes.append(helper.make_node("BatchNormalization", [current, *names], [out], epsilon=float(layer.eps)))
        else:
            raise ValueError(f"export: layer {lname} ({kind}) has no ONNX form; xpconv exports Convolution, "
                             f"Pooling, Affine, Relu, Sigmoid, Flatten, Dropout and BatchNormalization")
        current = out
    nodes.append(helper.make_node("Identity", [current], ["scores"]))
    k = int(net.predict(np.zeros((1, C, H, W), dtype=np.float32)).shape[-1])
    graph = helper.make_graph(
        nodes, type(net).__name__, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="xpconv")
    onnx.checker.check_model(model)
    from .serialization.atomic import atomic_write
    with atomic_write(path) as f:
        f.write(model.SerializeToString())


def to_torch(net: Sequential, *, input_shape: Sequence[int] | None = None) -> torch.nn.Sequential:
    """An ``torch.nn.Sequential`` equal to ``net`` in inference (``.eval()``), float32 on
    the CPU, with the weights copied in; ``module(x)`` gives ``predict(x)``'s scores.
    """
    import torch
    from torch import nn
    layers, _ = _layers(net, input_shape)

    def tensor(a):
        return torch.from_numpy(_host(a).copy())
    modules = []
    for lname, layer in layers:
        kind = type(layer).__name__
        if kind == "Convolution":
            g, pads, ceil = _window(layer)
            if ceil:
                raise ValueError(f"to_torch: {lname}: a convolution with ceil rounding has no nn.Conv2d form")
            conv: Any = nn.Conv2d(int(layer.W.shape[1]) * int(layer.groups), int(layer.W.shape[0]), (g.h.k, g.w.k),
                                   stride=(g.h.s, g.w.s), dilation=(g.h.d, g.w.d), groups=int(layer.groups))
            conv.weight.data, conv.bias.data = tensor(layer.W), tensor(layer.b)
            modules += [nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])), conv]
        elif kind == "Pooling":
            g, pads, ceil = _window(layer)
            symmetric = pads[0] == pads[2] and pads[1] == pads[3]
            if layer.mode == "max":
                if not symmetric:
                    modules.append(nn.ConstantPad2d((pads[1], pads[3], pads[0], pads[2]), float("-inf")))
                    pads = [0, 0, 0, 0]
                modules.append(nn.MaxPool2d((g.h.k, g.w.k), (g.h.s, g.w.s), (pads[0], pads[1]), ceil_mode=ceil))
            else:
                if not symmetric:
                    raise ValueError(f"to_torch: {lname}: average pooling with asymmetric padding has no "
                                     f"nn.AvgPool2d form")
                modules.append(nn.AvgPool2d((g.h.k, g.w.k), (g.h.s, g.w.s), (pads[0], pads[1]), ceil_mode=ceil,
                                            count_include_pad=bool(layer.count_include_pad)))
        elif kind == "Affine":
            linear = nn.Linear(int(layer.W.shape[0]), int(layer.W.shape[1]))
            linear.weight.data, linear.bias.data = tensor(layer.W).T.contiguous(), tensor(layer.b)
            modules += [nn.Flatten(), linear]
        elif kind == "Relu":
            modules.append(nn.ReLU())
        elif kind == "Sigmoid":
            modules.append(nn.Sigmoid())
        elif kind == "Flatten":
            modules.append(nn.Flatten())
        elif kind == "Dropout":
            # xpconv scales by (1 - ratio) at inference (the book's Dropout), torch by nothing
            modules.append(_Scale(1.0 - layer.dropout_ratio))
        elif kind == "BatchNormalization":
            d = int(layer.gamma.shape[0])
            bn: Any = nn.BatchNorm2d(d, eps=float(layer.eps)) if layer.input_shape is None or len(layer.input_shape) == 4 \
                else nn.BatchNorm1d(d, eps=float(layer.eps))
            bn.weight.data, bn.bias.data = tensor(layer.gamma), tensor(layer.beta)
            bn.running_mean.data, bn.running_var.data = tensor(layer.running_mean), tensor(layer.running_var)
            modules.append(bn)
        else:
            raise ValueError(f"to_torch: layer {lname} ({kind}) has no torch form")
    return nn.Sequential(*modules).eval()


def _scale_module():
    from torch import nn

    class Scale(nn.Module):
        """Multiplies by a constant (xpconv's inference-time Dropout)."""

        def __init__(self, factor: float):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor
    return Scale


def _Scale(factor):
    return _scale_module()(factor)
