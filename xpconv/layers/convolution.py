"""The Convolution layer (the book's ``common/layers.py`` name and interface)."""
from __future__ import annotations

import numbers
from typing import Any

from .._kernels.checks import as_index, check_flag, check_floating, check_grad, check_ndim, check_same_place
from .._kernels.conv import conv2d_backward_unchecked, conv2d_unchecked
from .._kernels.geometry import ROUNDINGS, check_pad, pair
from .._namespace import array_namespace, device
from .._typing import Array, IntOrPair, Padding
from ..devices import device_scope
from ..functional import _conv_geometry, check_conv_shapes


class Convolution:
    """2-D convolution layer with its backward pass.

    Args:
        W: filters, (FN, C/groups, FH, FW).
        b: bias, (FN,); a number means that value for every filter (the book's
            ``Convolution(W, 0)``), a (FN,) array in W's dtype and on W's device.
        stride, dilation: int or (h, w).
        pad: int, (ph, pw), ((top, bottom), (left, right)), "valid", "same" or "full".
        groups: channel groups (groups=C: depthwise).
        rounding: "exact" (raise when windows do not tile the input) or "floor".
        input_grad: compute ``dx`` in ``backward`` (False for a first layer, which
            needs none; ``backward`` then returns None).

    Shape:
        forward:  x (N, C, H, W)  ->  (N, FN, OH, OW)
        backward: dout (N, FN, OH, OW)  ->  dx (N, C, H, W); sets ``dW`` (like W), ``db`` (FN,)

    >>> import numpy as np, xpconv
    >>> conv = xpconv.Convolution(np.ones((8, 3, 3, 3), "float32"), np.zeros(8, "float32"), pad=1)
    >>> conv.forward(np.ones((2, 3, 5, 5), "float32")).shape
    (2, 8, 5, 5)
    """

    def __init__(self, W: Array, b: Array | None, stride: IntOrPair = 1, pad: Padding = 0,
                 dilation: IntOrPair = 1, groups: int = 1, rounding: str = "exact",
                 input_grad: bool = True) -> None:
        who = "Convolution"
        check_floating(who, "W", W)
        check_ndim(who, "W", W, 4, "(FN, C/groups, FH, FW)")
        if isinstance(b, numbers.Real) and not isinstance(b, bool):    # a constant bias
            xp = array_namespace(W)
            with device_scope(W):
                b = xp.full((W.shape[0],), float(b), dtype=W.dtype, device=device(W))
        check_same_place(who, "W", W, b=b)
        if b is None:
            raise TypeError(f"{who}: expected b of shape (FN,) = ({W.shape[0]},); got None")
        groups = as_index(who, "groups", groups, minimum=1)   # NumPy integers too
        check_conv_shapes(who, (1, W.shape[1] * groups, 1, 1), tuple(W.shape), tuple(b.shape), groups)
        pair(who, "stride", stride, minimum=1)
        pair(who, "dilation", dilation, minimum=1)
        check_pad(who, pad)
        if rounding not in ROUNDINGS[:2]:
            raise ValueError(f"{who}: expected rounding in {ROUNDINGS[:2]}; got {rounding!r}")
        check_flag(who, "input_grad", input_grad)
        self.W, self.b = W, b
        self.stride, self.pad, self.dilation, self.groups = stride, pad, dilation, groups
        self.rounding, self.input_grad = rounding, input_grad
        self.dW: Any = None
        self.db: Any = None
        self.x: Any = None            # kept for backward
        self._cols: Any = None        # columns kept when the batch fit in one workspace chunk
        self._geom: Any = None

    def forward(self, x: Array) -> Array:
        self._geom = _conv_geometry("Convolution", x, self.W, self.b, self.stride, self.pad,
                                    self.dilation, self.groups, self.rounding, w_name="W")
        self.x = x
        with device_scope(x):
            y, self._cols = conv2d_unchecked(x, self.W, self.b, self._geom, self.groups, keep_cols=True)
        return y

    def backward(self, dout: Array) -> Array | None:
        if self.x is None:
            raise RuntimeError("Convolution.backward: call forward first")
        check_grad("Convolution.backward", "dy", dout, self.x, "x", (self.x.shape[0], self.W.shape[0],
                                                         *self._geom.out_hw))
        with device_scope(dout):
            dx, self.dW, self.db = conv2d_backward_unchecked(
                dout, self.x, self.W, self._geom, self.groups, input_grad=self.input_grad, cols=self._cols)
        self._cols = None
        return dx

    def __repr__(self) -> str:
        FN, Cg, FH, FW = self.W.shape
        return (f"Convolution({Cg * self.groups}->{FN}, kernel=({FH}, {FW}), stride={self.stride}, "
                f"pad={self.pad!r}, dilation={self.dilation}, groups={self.groups})")
