"""The Pooling layer (the book's ``common/layers.py`` name), max or average."""
from __future__ import annotations

from typing import Any

from .._kernels.checks import check_flag, check_grad
from .._kernels.geometry import ROUNDINGS, check_pad, pair
from .._kernels.pool import (
    avg_pool2d_backward_unchecked,
    avg_pool2d_unchecked,
    max_pool2d_backward_unchecked,
    max_pool2d_unchecked,
)
from .._typing import Array, IntOrPair, Padding
from ..devices import device_scope
from ..functional import _pool_geometry

MODES = ("max", "avg")


class Pooling:
    """2-D max or average pooling with its backward pass.

    Args:
        pool_h, pool_w: window size.
        stride: int, (h, w), or None for the window size (non-overlapping windows).
        pad: int, (ph, pw) or ((top, bottom), (left, right)); at most half the window.
            Max pooling pads with -inf (padding never wins).
        mode: "max" or "avg".
        rounding: "exact" (default: raise if windows do not tile the input), "floor"
            (drop the last partial window) or "ceil" (pad it, PyTorch's ceil_mode=True).
        count_include_pad: average pooling divides by the padded window size (True)
            or by the number of real inputs in it (False).

    Shape:
        forward:  x (N, C, H, W)  ->  (N, C, OH, OW)
        backward: dout (N, C, OH, OW)  ->  dx (N, C, H, W); max pooling sends each
            window's gradient to its first maximum.

    Global pooling: ``Pooling(H, W)``.
    """

    def __init__(self, pool_h: int, pool_w: int, stride: IntOrPair | None = None, pad: Padding = 0,
                 mode: str = "max", rounding: str = "exact", count_include_pad: bool = True) -> None:
        who = "Pooling"
        kernel = pair(who, "pool size", (pool_h, pool_w), minimum=1)
        if stride is not None:
            pair(who, "stride", stride, minimum=1)
        check_pad(who, pad, pool_kernel=kernel)
        if mode not in MODES:
            raise ValueError(f"{who}: expected mode in {MODES}; got {mode!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"{who}: expected rounding in {ROUNDINGS}; got {rounding!r}")
        check_flag(who, "count_include_pad", count_include_pad)
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.mode, self.rounding, self.count_include_pad = mode, rounding, count_include_pad
        self.x: Any = None
        self.out: Any = None
        self._geom: Any = None

    def forward(self, x: Array) -> Array:
        self._geom = _pool_geometry("Pooling", x, (self.pool_h, self.pool_w), self.stride,
                                    self.pad, self.rounding)
        self.x = x
        with device_scope(x):
            if self.mode == "max":
                self.out = max_pool2d_unchecked(x, self._geom)
            else:
                self.out = avg_pool2d_unchecked(x, self._geom, self.count_include_pad)
        return self.out

    def backward(self, dout: Array) -> Array:
        if self.x is None:
            raise RuntimeError("Pooling.backward: call forward first")
        check_grad("Pooling.backward", "dy", dout, self.x, "x", (*self.x.shape[:2], *self._geom.out_hw))
        with device_scope(dout):
            if self.mode == "max":
                return max_pool2d_backward_unchecked(dout, self.x, self.out, self._geom)
            return avg_pool2d_backward_unchecked(dout, self.x, self._geom, self.count_include_pad)

    def __repr__(self) -> str:
        return (f"Pooling({self.pool_h}, {self.pool_w}, stride={self.stride}, pad={self.pad!r}, "
                f"mode={self.mode!r})")
