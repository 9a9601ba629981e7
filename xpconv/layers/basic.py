"""The book's simple layers: Affine, Relu, Sigmoid, Flatten and Dropout.

Each layer has the book's ``forward``/``backward`` interface, takes its namespace
from its input and returns arrays of the input's dtype on the input's device.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from .._kernels.checks import check_array, check_floating, check_grad, check_ndim, check_same_place
from .._kernels.fastpaths import constant, keep_where
from .._namespace import array_namespace
from .._typing import Array
from ..devices import device_scope, from_host, host_rng
from .shard import current_shard

__all__ = ["Affine", "Relu", "Sigmoid", "Flatten", "Dropout"]


def _need_forward(who: str, state) -> None:
    if state is None:
        raise RuntimeError(f"{who}: call forward first")


class Affine:
    """Fully connected layer ``out = x @ W + b``.

    Args:
        W: weights, (D, M).
        b: bias, (M,); same library, device and dtype as W.

    Shape:
        forward:  x (N, D) or (N, d1, d2, ...) with d1*d2*... = D  ->  (N, M)
        backward: dout (N, M)  ->  dx in x's original shape; sets ``dW`` (D, M), ``db`` (M,)

    Like the book, ``forward`` flattens any input to (N, D) and remembers
    ``original_x_shape`` so that ``backward`` can give dx back in that shape.
    """

    def __init__(self, W: Array, b: Array) -> None:
        who = "Affine"
        check_floating(who, "W", W)
        check_ndim(who, "W", W, 2, "(D, M)")
        if b is None:
            raise TypeError(f"{who}: expected b of shape (M,) = ({W.shape[1]},); got None")
        check_same_place(who, "W", W, b=b)
        if tuple(b.shape) != (W.shape[1],):
            raise ValueError(f"{who}: expected b of shape (M,) = ({W.shape[1]},) for W of shape "
                             f"{tuple(W.shape)}; got {tuple(b.shape)}")
        self.W, self.b = W, b
        self.x: Any = None                  # flattened input (N, D), kept for backward
        self.original_x_shape: Any = None
        self.dW: Any = None
        self.db: Any = None

    def forward(self, x: Array) -> Array:
        who = "Affine.forward"
        check_floating(who, "x", x)
        if x.ndim < 1:
            raise ValueError(f"{who}: expected x of shape (N, D) or (N, ...); got a 0-D array")
        check_same_place(who, "W", self.W, x=x)
        xp = array_namespace(x)
        D = self.W.shape[0]
        features = math.prod(x.shape[1:])
        if x.ndim < 2 or features != D:
            raise ValueError(f"{who}: expected x of shape (N, D) with D={D} features "
                             f"(or (N, ...) whose trailing sizes multiply to {D}) for W of shape "
                             f"{tuple(self.W.shape)}; got {tuple(x.shape)}")
        self.original_x_shape = tuple(x.shape)
        with device_scope(x):
            self.x = xp.reshape(x, (x.shape[0], D))                      # (N, D)
            return self.x @ self.W + self.b                              # (N, M)

    def backward(self, dout: Array) -> Array:
        who = "Affine.backward"
        _need_forward(who, self.x)
        check_grad(who, "dout", dout, self.x, "the forward input",
                   (self.x.shape[0], self.W.shape[1]))
        xp = array_namespace(dout)
        with device_scope(dout):
            dx = dout @ xp.matrix_transpose(self.W)                      # (N, D)
            self.dW = xp.matrix_transpose(self.x) @ dout                 # (D, M)
            self.db = xp.sum(dout, axis=0)                               # (M,)
            return xp.reshape(dx, self.original_x_shape)

    def __repr__(self) -> str:
        return f"Affine({self.W.shape[0]}->{self.W.shape[1]})"


class Relu:
    """``out = max(x, 0)``; NaN stays NaN (like ``torch.relu``).

    Keeps the output (not a boolean mask) for backward, which passes ``dout`` where
    ``out`` is not <= 0, again like PyTorch: the gradient is 0 for x <= 0, ``dout``
    for x > 0, and ``dout`` where x is NaN.

    Shape:
        forward:  x (any)  ->  same shape;  backward: dout (same)  ->  dx (same)
    """

    def __init__(self):
        self.out: Any = None

    def forward(self, x: Array) -> Array:
        check_floating("Relu.forward", "x", x)
        xp = array_namespace(x)
        with device_scope(x):
            # maximum propagates NaN; a 0 array, not 0.0: no result_type of a Python scalar
            self.out = xp.maximum(x, constant(0, x))
        return self.out

    def backward(self, dout: Array) -> Array:
        who = "Relu.backward"
        _need_forward(who, self.out)
        check_grad(who, "dout", dout, self.out, "the forward input", self.out.shape)
        with device_scope(dout):
            # out = max(x, 0) is 0 where x <= 0; NaN != 0, so NaN passes, as in torch
            return keep_where(self.out != 0, dout)

    def __repr__(self) -> str:
        return "Relu()"


class Sigmoid:
    """``out = 1 / (1 + exp(-x))``, computed without overflow for any x.

    With ``e = exp(-|x|)`` (never above 1): ``out = 1 / (1 + e)`` for x >= 0 and
    ``e / (1 + e)`` for x < 0. Backward: ``dx = dout * out * (1 - out)``.

    Shape:
        forward:  x (any)  ->  same shape;  backward: dout (same)  ->  dx (same)
    """

    def __init__(self):
        self.out: Any = None

    def forward(self, x: Array) -> Array:
        check_floating("Sigmoid.forward", "x", x)
        xp = array_namespace(x)
        with device_scope(x):
            e = xp.exp(-xp.abs(x))
            self.out = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return self.out

    def backward(self, dout: Array) -> Array:
        who = "Sigmoid.backward"
        _need_forward(who, self.out)
        check_grad(who, "dout", dout, self.out, "the forward input", self.out.shape)
        with device_scope(dout):
            return dout * self.out * (1.0 - self.out)

    def __repr__(self) -> str:
        return "Sigmoid()"


class Flatten:
    """Flattens every sample: (N, d1, d2, ...) -> (N, d1*d2*...), and back in backward.

    Shape:
        forward:  x (N, ...)  ->  (N, prod(...));  backward: dout (N, prod(...))  ->  dx (N, ...)
    """

    def __init__(self):
        self.original_x_shape: Any = None

    def forward(self, x: Array) -> Array:
        who = "Flatten.forward"
        check_array(who, "x", x)
        if x.ndim < 1:
            raise ValueError(f"{who}: expected x of shape (N, ...) with at least 1 dimension; "
                             f"got a 0-D array")
        xp = array_namespace(x)
        self.original_x_shape = tuple(x.shape)
        with device_scope(x):
            return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))   # (N, prod)

    def backward(self, dout: Array) -> Array:
        who = "Flatten.backward"
        _need_forward(who, self.original_x_shape)
        N = self.original_x_shape[0]
        expected = (N, math.prod(self.original_x_shape[1:]))
        check_array(who, "dout", dout)
        if tuple(dout.shape) != expected:
            raise ValueError(f"{who}: expected dout of shape {expected} (the forward output's); "
                             f"got {tuple(dout.shape)}")
        xp = array_namespace(dout)
        with device_scope(dout):
            return xp.reshape(dout, self.original_x_shape)

    def __repr__(self) -> str:
        return "Flatten()"


class Dropout:
    """The book's (non-inverted) dropout.

    Training: ``out = x * mask`` with ``mask`` keeping each element with probability
    ``1 - dropout_ratio``. Test (``train_flg=False``): ``out = x * (1 - dropout_ratio)``,
    so that the expected output matches training. (PyTorch's dropout is "inverted":
    it scales by ``1/(1-p)`` in training and does nothing at test time.)

    The Array API has no random numbers, so the mask is drawn on the host from
    ``numpy.random.default_rng(seed)`` (one generator per layer: each forward draws a
    new mask, reproducibly for a given seed) and moved once to x's device.

    In a distributed step (``xpconv.distributed``), where this rank holds rows
    ``[start, stop)`` of a global batch of B, the mask is drawn for all B rows (every rank's
    generator has rank 0's state, set by the Trainer) and this rank keeps its rows: the
    masks of one process with batch B, whatever the number of ranks.

    Args:
        dropout_ratio: probability of dropping an element, in [0, 1].
        seed: seed (or ``numpy.random.Generator``) for the masks; None for fresh entropy.

    Shape:
        forward:  x (any)  ->  same shape;  backward: dout (same)  ->  dx = dout * mask
    """

    def __init__(self, dropout_ratio: float = 0.5, seed: int | None = None) -> None:
        who = "Dropout"
        if (isinstance(dropout_ratio, bool) or not isinstance(dropout_ratio, numbers.Real)
                or not 0.0 <= dropout_ratio <= 1.0):      # NaN fails the range test too
            raise ValueError(f"{who}: expected dropout_ratio in [0, 1]; got {dropout_ratio!r}")
        self.dropout_ratio: float = float(dropout_ratio)
        self._rng = host_rng(seed)
        self.mask: Any = None              # boolean keep-mask of the last training forward
        self._scale: Any = None            # the same mask (or 1 - ratio at test time) in x's dtype

    def forward(self, x: Array, train_flg: bool = True) -> Array:
        check_floating("Dropout.forward", "x", x)
        xp = array_namespace(x)
        with device_scope(x):
            if train_flg:
                keep = self._draw_keep(x)                                    # host bool
                self.mask = from_host(keep, like=x)
                self._scale = xp.astype(self.mask, x.dtype)
                return x * self._scale
            self.mask = None
            self._scale = 1.0 - self.dropout_ratio
            return x * self._scale

    def _draw_keep(self, x):
        """Host keep-mask of x's shape; in a distributed step, this rank's rows of the
        global batch's mask.
        """
        shape = tuple(x.shape)
        shard = current_shard()
        if shard is None:
            return self._rng.random(shape) > self.dropout_ratio
        shard.check_rows("Dropout.forward", x)
        mask = self._rng.random((shard.total,) + shape[1:]) > self.dropout_ratio
        return mask[shard.start:shard.stop]

    def backward(self, dout: Array) -> Array:
        who = "Dropout.backward"
        _need_forward(who, self._scale)
        check_floating(who, "dout", dout)
        if self.mask is not None:
            check_same_place(who, "the mask (forward input's place)", self._scale, dout=dout)
            if tuple(dout.shape) != tuple(self.mask.shape):
                raise ValueError(f"{who}: expected dout of shape {tuple(self.mask.shape)} "
                                 f"(the forward output's); got {tuple(dout.shape)}")
        with device_scope(dout):
            return dout * self._scale

    def __repr__(self) -> str:
        return f"Dropout(dropout_ratio={self.dropout_ratio})"
