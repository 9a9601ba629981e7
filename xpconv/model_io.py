"""Whole-model files: the architecture beside the weights, and :func:`load_model`.

``save_params`` writes, next to the arrays, the model's architecture as JSON metadata
in the same safe ``.npz`` (never a pickle): for SimpleConvNet, DeepConvNet and LeNet
their constructor arguments; for a :class:`~xpconv.Sequential` of xpconv's layers each
layer's type and settings. :func:`load_model` rebuilds the network from the file alone,
as ``keras.models.load_model`` does. Files without an architecture (older files, the
book's ``params.pkl``) load with ``load_params`` into a model built by hand.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from .devices import Device, device as resolve_device
from .serialization import load_arrays

if TYPE_CHECKING:
    from .network import Sequential

__all__ = ["architecture", "load_model"]

# settings of each layer type that a rebuild needs (arrays come from the file)
_LAYER_OPTIONS = {
    "Convolution": ("stride", "pad", "dilation", "groups", "rounding", "input_grad"),
    "Pooling": ("pool_h", "pool_w", "stride", "pad", "mode", "rounding", "count_include_pad"),
    "Affine": (), "Relu": (), "Sigmoid": (), "Flatten": (),
    "Dropout": ("dropout_ratio",),
    "BatchNormalization": ("momentum", "eps"),
}
_LAYER_ARRAYS = {"Convolution": ("W", "b"), "Affine": ("W", "b"),
                 "BatchNormalization": ("gamma", "beta", "running_mean", "running_var")}


def architecture(net: Sequential) -> dict | None:
    """The JSON-able description :func:`load_model` rebuilds ``net`` from, or None when
    ``net`` holds a layer or loss that xpconv cannot rebuild.
    """
    from . import models
    from .layers import SoftmaxWithLoss
    from .network import Sequential
    name = type(net).__name__
    if getattr(models, name, None) is type(net) and hasattr(net, "_config"):
        return {"class": name, "config": net._config}
    if type(net) is not Sequential or type(net.last_layer) is not SoftmaxWithLoss:
        return None
    layers = []
    for lname, layer in net.layers.items():
        kind = type(layer).__name__
        if kind not in _LAYER_OPTIONS or type(layer).__module__.split(".")[0] != "xpconv":
            return None
        layers.append({"name": lname, "type": kind,
                       "options": {k: _jsonable(getattr(layer, k)) for k in _LAYER_OPTIONS[kind]}})
    names = {name: [lname, attr] for name, (lname, attr) in _param_slots(net).items()}
    return {"class": "Sequential", "layers": layers, "param_names": names}


def load_model(path: str | os.PathLike, device: str | Device = "cpu", dtype: str | None = None) -> Sequential:
    """Rebuild the network saved in ``path`` (by ``save_params`` or ``xpconv train --save``)
    on ``device``, with its weights, running statistics and architecture.

    Args:
        path: an ``.npz`` written by ``save_params``.
        device: where the model lives ("cpu", "cuda", "torch", ...).
        dtype: "float32"/"float64"; default: the dtype the weights were saved in.

    Raises:
        ValueError: the file has no architecture (an older file or the book's pickle:
            build the model yourself and call ``load_params``), or it does not fit.
    """
    arrays, metadata = load_arrays(path, who="load_model")
    text = metadata.get("architecture")
    if text is None:
        model = metadata.get("model", "the model")
        raise ValueError(f"load_model: {path} holds weights but no architecture (an older file or the "
                         f"book's params.pkl); build {model} with its arguments and call "
                         f"load_params({os.fspath(path)!r})")
    try:
        arch = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"load_model: {path}: damaged architecture metadata ({exc})") from None
    dtype = dtype or str(next(iter(arrays.values())).dtype)
    dev = resolve_device(device)
    kind = arch.get("class")
    if kind == "Sequential":
        net = _build_sequential(arch, arrays, dev, dtype)
    else:
        from . import models
        cls = getattr(models, str(kind), None)
        if cls is None:
            raise ValueError(f"load_model: {path}: unknown model class {kind!r}")
        # seed 0: the drawn weights are replaced by the file's; Dropout's generator starts at 0
        net = cls(**_tuples(arch["config"]), device=dev, dtype=dtype, seed=0)
    expected = {k: tuple(v.shape) for k, v in net.state_arrays().items()}
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    if expected != got:
        raise ValueError(f"load_model: {path}: the weights do not fit the saved architecture "
                         f"(expected {expected}, got {got})")
    net.load_state_arrays(arrays, who="load_model")
    if "classes" in metadata:
        net.class_names = json.loads(metadata["classes"])
    return net


def _build_sequential(arch: dict, arrays: dict, dev: Device, dtype: str):
    from . import layers as L
    from .network import Sequential
    slots = {(lname, attr): name for name, (lname, attr) in arch["param_names"].items()}
    built = []
    for spec in arch["layers"]:
        kind, lname = spec["type"], spec["name"]
        if kind not in _LAYER_OPTIONS:
            raise ValueError(f"load_model: unknown layer type {kind!r}")
        cls = getattr(L, kind)
        options = _tuples(spec["options"])
        held = {}
        for attr in _LAYER_ARRAYS.get(kind, ()):
            key = slots.get((lname, attr), f"{lname}.{attr}")
            if key in arrays:
                held[attr] = dev.asarray(arrays[key], dtype=dtype)
        if kind in ("Convolution", "Affine"):
            layer = cls(held["W"], held["b"], **options)
        elif kind == "BatchNormalization":
            layer = cls(held["gamma"], held["beta"], running_mean=held.get("running_mean"),
                        running_var=held.get("running_var"), **options)
        elif kind == "Dropout":
            layer = cls(**options, seed=0)
        else:
            layer = cls(**options)
        built.append((lname, layer))
    names = {name: (lname, attr) for name, (lname, attr) in arch["param_names"].items()}
    return Sequential(built, param_names=names)


def _param_slots(net) -> dict:
    """Parameter name -> (layer name, attribute)."""
    where = {id(layer): lname for lname, layer in net.layers.items()}
    return {name: (where[id(layer)], attr) for name, (layer, attr, _) in net._bindings.items()}


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value):
    """JSON lists back to tuples (options such as ``pad=((1, 0), (2, 1))``), dicts kept."""
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return [_tuples(v) for v in value]
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value
