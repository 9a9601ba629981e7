"""The book's networks: SimpleConvNet (ch. 7), DeepConvNet (ch. 8) and LeNet-5.

Initial weights are drawn on the host from ``numpy.random.default_rng(seed)`` and
moved to the device once, so one seed gives the same network on every backend.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from ._kernels.checks import as_index
from ._kernels.geometry import window2d
from .devices import Device, device as resolve_device, host_rng
from .layers import Affine, Convolution, Dropout, Flatten, Pooling, Relu, Sigmoid
from .memory import require
from .network import Sequential

__all__ = ["SimpleConvNet", "DeepConvNet", "LeNet"]


_FLOAT_NAMES = ("float16", "float32", "float64")
_CONV_KEYS = ("filter_num", "filter_size", "pad", "stride")


class _Init:
    """Draws weights on the host and puts them on the device with the model's dtype."""

    def __init__(self, who, device, dtype, seed):
        if isinstance(dtype, str) and dtype not in _FLOAT_NAMES:
            raise ValueError(f"{who}: expected dtype in {_FLOAT_NAMES}; got {dtype!r}")
        if seed is not None:
            as_index(who, "seed (None or an int >= 0)", seed, minimum=0)
        self.device = resolve_device(device)
        self.who, self.dtype = who, dtype
        self.rng = host_rng(seed)

    def normal(self, shape, std):
        """Host float64 N(0, std^2) draws of ``shape``, on the device in the model's dtype;
        refused first (one line) if the draw would not fit the memory available.
        """
        count = math.prod(shape)
        require(count * 8 * 3, who=self.who,
                what=f"a weight of shape {shape} ({count:,} values; the input size sets it)",
                hint="use smaller images")
        return self.device.asarray(std * self.rng.standard_normal(shape), dtype=self.dtype)

    def zeros(self, shape):
        return self.device.zeros(shape, dtype=self.dtype)


def _std(who, weight_init_std, fan_in):
    """A finite number > 0, or "he"/"relu" (sqrt(2/fan_in)) or "xavier"/"sigmoid" (sqrt(1/fan_in))."""
    if isinstance(weight_init_std, str):
        scale = {"he": 2.0, "relu": 2.0, "xavier": 1.0, "sigmoid": 1.0}.get(weight_init_std.lower())
        if scale is not None:
            return math.sqrt(scale / fan_in)
    elif (isinstance(weight_init_std, numbers.Real) and not isinstance(weight_init_std, bool)
          and math.isfinite(weight_init_std) and weight_init_std > 0):
        return float(weight_init_std)
    raise ValueError(f"{who}: expected weight_init_std to be a finite number > 0, 'he' or 'xavier'; "
                     f"got {weight_init_std!r}")


def _input_dim(who, input_dim) -> tuple[int, int, int]:
    """(C, H, W) of one image, three ints >= 1."""
    if not isinstance(input_dim, (tuple, list)) or len(input_dim) != 3:
        raise ValueError(f"{who}: expected input_dim (C, H, W) of one image, e.g. (1, 28, 28) for "
                         f"MNIST; got {input_dim!r}")
    C, H, W = (as_index(who, f"input_dim[{i}] ({name})", v, minimum=1)
               for i, (v, name) in enumerate(zip(input_dim, "CHW")))
    return C, H, W


def _conv_param(who, param, name, defaults) -> dict:
    """One conv layer's options: ``defaults`` updated by ``param``; unknown or missing keys refused."""
    if not isinstance(param, dict):
        raise TypeError(f"{who}: expected {name} to be a dict with keys {_CONV_KEYS}; got {param!r}")
    unknown = sorted(set(param) - set(_CONV_KEYS))
    if unknown:
        raise ValueError(f"{who}: unknown {name} key(s) {unknown}; expected some of {_CONV_KEYS}")
    param = {**defaults, **param}
    missing = [key for key in _CONV_KEYS if key not in param]
    if missing:
        raise ValueError(f"{who}: {name} needs the key(s) {missing}; got {sorted(param)}")
    for key in ("filter_num", "filter_size"):
        param[key] = as_index(who, f"{name}[{key!r}]", param[key], minimum=1)
    return param


def _out_hw(who, hw, k, stride=1, pad=0, rounding="floor"):
    """Output (H, W) of a conv or pool with a k x k window."""
    return window2d(who, hw, (k, k), stride, pad, 1, rounding).out_hw


class SimpleConvNet(Sequential):
    """The book's simple ConvNet: conv - relu - pool - affine - relu - affine - softmax.

    A drop-in for ``ch07/simple_convnet.py``: ``params`` (W1, b1, W2, b2, W3, b3),
    ``layers``, ``last_layer``, ``predict``, ``loss``, ``accuracy``, ``gradient``,
    ``numerical_gradient``, ``save_params``, ``load_params``. Unlike the book, sizes
    are computed with integer arithmetic for any filter size, pad and stride (the
    pool drops a last odd row/column, as the book's im2col does), and ``accuracy``
    counts every sample when N is not a multiple of ``batch_size``.

    ``layers`` holds the book's layers under the book's names, but pools before the
    ReLU: max pooling commutes with ReLU (``max(relu(a), relu(b)) = relu(max(a, b))``),
    so outputs and gradients are the same (tested) and the ReLU does a quarter of
    the work.

    Args:
        input_dim: (C, H, W) of one image.
        conv_param: ``filter_num``, ``filter_size``, ``pad``, ``stride``.
        hidden_size, output_size: widths of the two affine layers.
        weight_init_std: std of the initial weights, or "he" / "xavier".
        device: spec string ("cpu", "cuda", "torch", ...) or a Device.
        dtype: "float32" (default) or "float64".
        seed: seed of the host RNG that draws the initial weights.

    Shape:
        x: (N, C, H, W) -> predict: (N, output_size); t: (N,) labels or (N, K) one-hot.
    """

    def __init__(self, input_dim: Sequence[int] = (1, 28, 28),
                 conv_param: dict[str, int] = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},
                 hidden_size: int = 100, output_size: int = 10, weight_init_std: float | str = 0.01, *,
                 device: str | Device = "cpu", dtype: str = "float32", seed: int | None = None) -> None:
        who = type(self).__name__
        C, H, W = _input_dim(who, input_dim)
        conv_param = _conv_param(who, conv_param, "conv_param",
                                 {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1})
        fn, fs = conv_param["filter_num"], conv_param["filter_size"]
        pad, stride = conv_param["pad"], conv_param["stride"]
        hidden_size = as_index(who, "hidden_size", hidden_size, minimum=1)
        output_size = as_index(who, "output_size", output_size, minimum=1)
        _std(who, weight_init_std, 1)      # refuse a bad value before drawing anything
        oh, ow = _out_hw("SimpleConvNet conv", (H, W), fs, stride, pad)
        ph, pw = _out_hw("SimpleConvNet pool", (oh, ow), 2, 2)
        pool_output_size = fn * ph * pw
        init = _Init(who, device, dtype, seed)
        std = lambda fan_in: _std(who, weight_init_std, fan_in)
        W1 = init.normal((fn, C, fs, fs), std(C * fs * fs))
        W2 = init.normal((pool_output_size, hidden_size), std(pool_output_size))
        W3 = init.normal((hidden_size, output_size), std(hidden_size))
        super().__init__([
            ("Conv1", Convolution(W1, init.zeros(fn), stride, pad, rounding="floor", input_grad=False)),
            ("Pool1", Pooling(2, 2, stride=2, rounding="floor")),   # = book's Relu1 -> Pool1
            ("Relu1", Relu()),
            ("Affine1", Affine(W2, init.zeros(hidden_size))),
            ("Relu2", Relu()),
            ("Affine2", Affine(W3, init.zeros(output_size))),
        ], param_names={"W1": ("Conv1", "W"), "b1": ("Conv1", "b"), "W2": ("Affine1", "W"),
                        "b2": ("Affine1", "b"), "W3": ("Affine2", "W"), "b3": ("Affine2", "b")})
        self._config = {"input_dim": [C, H, W], "conv_param": conv_param, "hidden_size": hidden_size,
                        "output_size": output_size}


class DeepConvNet(Sequential):
    """The book's chapter 8 network (~99% on MNIST), He-initialised.

    conv-relu-conv-relu-pool x3 (16, 16, 32, 32, 64, 64 filters of 3x3) -
    affine(hidden) - relu - dropout - affine - dropout - softmax.
    Parameters W1..W8, b1..b8 as in the book.
    """

    def __init__(self, input_dim: Sequence[int] = (1, 28, 28), conv_params: Sequence[dict[str, int]] | None = None,
                 hidden_size: int = 50, output_size: int = 10, dropout_ratio: float = 0.5, *,
                 device: str | Device = "cpu", dtype: str = "float32", seed: int | None = None) -> None:
        conv_params = conv_params if conv_params is not None else [
            {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
            {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
            {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
            {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
            {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
            {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
        ]
        who = type(self).__name__
        C, H, W = _input_dim(who, input_dim)
        image = [C, H, W]
        if not isinstance(conv_params, (list, tuple)) or not conv_params:
            raise TypeError(f"{who}: expected conv_params to be a non-empty list of dicts with keys "
                            f"{_CONV_KEYS}; got {conv_params!r}")
        conv_params = [_conv_param(who, p, f"conv_params[{i}]", {"pad": 0, "stride": 1})
                       for i, p in enumerate(conv_params)]
        hidden_size = as_index(who, "hidden_size", hidden_size, minimum=1)
        output_size = as_index(who, "output_size", output_size, minimum=1)
        init = _Init(who, device, dtype, seed)
        layers, names = [], {}
        for i, p in enumerate(conv_params, start=1):
            k = p["filter_size"]
            w = init.normal((p["filter_num"], C, k, k), math.sqrt(2.0 / (C * k * k)))
            layers += [(f"Conv{i}", Convolution(w, init.zeros(p["filter_num"]), p["stride"], p["pad"],
                                                rounding="floor", input_grad=i > 1)),
                       (f"Relu{i}", Relu())]
            names.update({f"W{i}": (f"Conv{i}", "W"), f"b{i}": (f"Conv{i}", "b")})
            C, (H, W) = p["filter_num"], _out_hw("DeepConvNet conv", (H, W), k, p["stride"], p["pad"])
            if i % 2 == 0:
                layers.append((f"Pool{i // 2}", Pooling(2, 2, stride=2, rounding="floor")))
                H, W = _out_hw("DeepConvNet pool", (H, W), 2, 2)
        n = len(conv_params)
        flat = C * H * W
        layers += [
            (f"Affine{n + 1}", Affine(init.normal((flat, hidden_size), math.sqrt(2.0 / flat)),
                                      init.zeros(hidden_size))),
            (f"Relu{n + 1}", Relu()),
            ("Dropout1", Dropout(dropout_ratio, seed=seed)),
            (f"Affine{n + 2}", Affine(init.normal((hidden_size, output_size), math.sqrt(2.0 / hidden_size)),
                                      init.zeros(output_size))),
            ("Dropout2", Dropout(dropout_ratio, seed=None if seed is None else seed + 1)),
        ]
        names.update({f"W{n + 1}": (f"Affine{n + 1}", "W"), f"b{n + 1}": (f"Affine{n + 1}", "b"),
                      f"W{n + 2}": (f"Affine{n + 2}", "W"), f"b{n + 2}": (f"Affine{n + 2}", "b")})
        super().__init__(layers, param_names=names)
        self._config = {"input_dim": image, "conv_params": conv_params, "hidden_size": hidden_size,
                        "output_size": output_size, "dropout_ratio": float(dropout_ratio)}


class LeNet(Sequential):
    """LeNet-5 (LeCun et al., 1998) on 28x28 input, with the modern defaults.

    conv 6@5x5 pad 2 - act - pool 2 - conv 16@5x5 - act - pool 2 - flatten -
    affine 120 - act - affine 84 - act - affine 10. ``activation`` is "relu"
    (default) or "sigmoid" (closer to the original), ``pool`` "max" or "avg".
    """

    def __init__(self, input_dim: Sequence[int] = (1, 28, 28), output_size: int = 10, activation: str = "relu",
                 pool: str = "max", *, device: str | Device = "cpu", dtype: str = "float32",
                 seed: int | None = None) -> None:
        who = type(self).__name__
        if activation not in ("relu", "sigmoid"):
            raise ValueError(f"{who}: expected activation 'relu' or 'sigmoid'; got {activation!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"{who}: expected pool 'max' or 'avg'; got {pool!r}")
        act = Relu if activation == "relu" else Sigmoid
        C, H, W = _input_dim(who, input_dim)
        config = {"input_dim": [C, H, W], "output_size": output_size, "activation": activation, "pool": pool}
        output_size = as_index(who, "output_size", output_size, minimum=1)
        init = _Init(who, device, dtype, seed)
        gain = 2.0 if activation == "relu" else 1.0
        std = lambda fan_in: math.sqrt(gain / fan_in)
        H, W = _out_hw("LeNet pool", _out_hw("LeNet conv", (H, W), 5, 1, 2), 2, 2)
        H, W = _out_hw("LeNet pool", _out_hw("LeNet conv", (H, W), 5), 2, 2)
        flat = 16 * H * W
        super().__init__([
            ("Conv1", Convolution(init.normal((6, C, 5, 5), std(C * 25)), init.zeros(6), 1, 2,
                                  rounding="floor", input_grad=False)),
            ("Act1", act()),
            ("Pool1", Pooling(2, 2, mode=pool, rounding="floor")),
            ("Conv2", Convolution(init.normal((16, 6, 5, 5), std(150)), init.zeros(16), rounding="floor")),
            ("Act2", act()),
            ("Pool2", Pooling(2, 2, mode=pool, rounding="floor")),
            ("Flatten", Flatten()),
            ("Affine1", Affine(init.normal((flat, 120), std(flat)), init.zeros(120))),
            ("Act3", act()),
            ("Affine2", Affine(init.normal((120, 84), std(120)), init.zeros(84))),
            ("Act4", act()),
            ("Affine3", Affine(init.normal((84, output_size), std(84)), init.zeros(output_size))),
        ])
        self._config = {**config, "output_size": output_size}
