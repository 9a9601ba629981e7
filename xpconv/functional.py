"""Pure functions: im2col/col2im, convolution and pooling with their backward passes.

Each function validates its arguments (clear errors naming it) and dispatches to the
unchecked kernels in ``xpconv._conv`` and ``xpconv._pool`` inside the input's device scope.

Notation::

    x: (N, C, H, W)          input                 w: (FN, C/groups, FH, FW)   filters
    y: (N, FN, OH, OW)       output                b: (FN,)                     bias
    K = FH*FW                kernel taps           P = OH*OW                    output positions

Output sizes follow ``xpconv._kernels.geometry`` (``OH = (H + pt + pb - dh*(FH-1) - 1) / sh + 1``
with ``rounding`` deciding what happens when that is not an integer).

Every function takes its namespace from its inputs and returns arrays of the
input's dtype on the input's device; nothing is moved between devices.
"""
from __future__ import annotations

from collections.abc import Sequence

from ._kernels import conv as _conv, pool as _pool
from ._kernels.checks import check_floating, check_grad, check_ndim, check_same_place
from ._kernels.geometry import Window2d, _is_int, pair, window2d
from ._typing import Array, IntOrPair, Padding
from .devices import device_scope

__all__ = [
    "im2col", "col2im",
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
]


# ============================================================================ im2col

def im2col(x: Array, filter_h: int, filter_w: int, stride: IntOrPair = 1, pad: Padding = 0,
           dilation: IntOrPair = 1, rounding: str = "exact") -> Array:
    """Unfold every filter window of ``x`` into a row (the book's layout).

    Shapes:
        x: (N, C, H, W)  ->  col: (N*OH*OW, C*FH*FW)
        row index (n, oh, ow), column index (c, fh, fw), both row-major.
    """
    geom = _input_geometry("im2col", x, (filter_h, filter_w), stride, pad, dilation, rounding)
    with device_scope(x):
        return _conv.im2col_unchecked(x, geom)


def col2im(col: Array, input_shape: Sequence[int], filter_h: int, filter_w: int,
           stride: IntOrPair = 1, pad: Padding = 0, dilation: IntOrPair = 1, rounding: str = "exact") -> Array:
    """Adjoint of :func:`im2col`: add every row back onto its window.

    Overlapping windows sum; entries that fall into the padding are dropped.

    Shapes:
        col: (N*OH*OW, C*FH*FW)  ->  (N, C, H, W) = input_shape
    """
    who = "col2im"
    check_floating(who, "col", col)
    check_ndim(who, "col", col, 2, "(N*OH*OW, C*FH*FW)")
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4
            or not all(_is_int(s) and s >= 0 for s in input_shape)):
        raise ValueError(f"{who}: expected input_shape (N, C, H, W) of 4 ints >= 0; got {input_shape!r}")
    N, C, H, W = (int(s) for s in input_shape)
    geom = window2d(who, (H, W), (filter_h, filter_w), stride, pad, dilation, rounding)
    OH, OW = geom.out_hw
    expected = (N * OH * OW, C * geom.taps)
    if tuple(col.shape) != expected:
        raise ValueError(f"{who}: expected col of shape {expected} for input_shape {tuple(input_shape)} "
                         f"(OH, OW = {OH}, {OW}); got {tuple(col.shape)}")
    with device_scope(col):
        return _conv.col2im_unchecked(col, geom, (N, C, H, W))


# ============================================================================ convolution

def conv2d(x: Array, w: Array, b: Array | None = None, stride: IntOrPair = 1, pad: Padding = 0,
           dilation: IntOrPair = 1, groups: int = 1, rounding: str = "exact") -> Array:
    """2-D cross-correlation (what deep learning calls convolution).

    ``y[n, f, oh, ow] = b[f] + sum_{c, i, j} w[f, c, i, j] * xp[n, g*C/G + c, oh*sh + i*dh, ow*sw + j*dw]``
    where ``xp`` is the padded input and ``g = f // (FN/G)`` the filter's group.

    Shapes:
        x: (N, C, H, W)    w: (FN, C/groups, FH, FW)    b: (FN,) or None
        y: (N, FN, OH, OW)

    Args:
        x: input, (N, C, H, W).
        w: filters, (FN, C/groups, FH, FW).
        b: bias, (FN,), or None for no bias.
        stride: int or (h, w).
        pad: int, (ph, pw), ((top, bottom), (left, right)), "valid", "same" or "full".
        dilation: int or (h, w): spacing between the filter taps.
        groups: split C and FN into this many groups (groups=C: depthwise).
        rounding: "exact" (default; raise if the windows do not tile the input) or "floor".
    """
    geom = _conv_geometry("conv2d", x, w, b, stride, pad, dilation, groups, rounding)
    with device_scope(x):
        y, _ = _conv.conv2d_unchecked(x, w, b, geom, groups)
        return y


def conv2d_backward(dy: Array, x: Array, w: Array, stride: IntOrPair = 1, pad: Padding = 0,
                    dilation: IntOrPair = 1, groups: int = 1, rounding: str = "exact",
                    *, input_grad: bool = True) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`conv2d` given ``dy = dL/dy``.

    Returns:
        (dx, dw, db): shapes of x, w and (FN,); ``dx`` is None when ``input_grad=False``
        (a first layer needs no input gradient). ``db = sum(dy, axes (N, OH, OW))``.
    """
    geom = _conv_geometry("conv2d_backward", x, w, None, stride, pad, dilation, groups, rounding)
    check_grad("conv2d_backward", "dy", dy, x, "x", (x.shape[0], w.shape[0], *geom.out_hw))
    with device_scope(x):
        return _conv.conv2d_backward_unchecked(dy, x, w, geom, groups, input_grad=input_grad)


# ============================================================================ pooling

def max_pool2d(x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None, pad: Padding = 0,
               rounding: str = "exact") -> Array:
    """Max over each window; padding is -inf, so it never wins.

    ``y[n, c, oh, ow] = max_{i, j} xp[n, c, oh*sh + i, ow*sw + j]``; NaN propagates.

    Shapes:
        x: (N, C, H, W)  ->  y: (N, C, OH, OW)

    Args:
        x: input, (N, C, H, W).
        kernel_size: int or (kh, kw).
        stride: int, (h, w) or None (= kernel_size).
        pad: as for conv2d, at most half the kernel on each side.
        rounding: "exact" (default), "floor" or "ceil" (PyTorch's ceil_mode=True).
    """
    geom = _pool_geometry("max_pool2d", x, kernel_size, stride, pad, rounding)
    with device_scope(x):
        return _pool.max_pool2d_unchecked(x, geom)


def max_pool2d_backward(dy: Array, x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None,
                        pad: Padding = 0, rounding: str = "exact") -> Array:
    """Gradient of :func:`max_pool2d`: each window's ``dy`` goes to its first maximum
    (row-major order within the window; a NaN counts as the maximum), as in PyTorch.
    """
    geom = _pool_geometry("max_pool2d_backward", x, kernel_size, stride, pad, rounding)
    check_grad("max_pool2d_backward", "dy", dy, x, "x", (*x.shape[:2], *geom.out_hw))
    with device_scope(x):
        return _pool.max_pool2d_backward_unchecked(dy, x, None, geom)   # y recomputed per chunk


def avg_pool2d(x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None, pad: Padding = 0,
               rounding: str = "exact", count_include_pad: bool = True) -> Array:
    """Mean over each window.

    ``y = sum(window) / divisor``; the divisor counts the window's positions inside the
    input plus its padding (``count_include_pad=True``, the extra ceil-mode padding
    excluded, as PyTorch does) or inside the input only.

    Shapes:
        x: (N, C, H, W)  ->  y: (N, C, OH, OW)
    """
    geom = _pool_geometry("avg_pool2d", x, kernel_size, stride, pad, rounding)
    with device_scope(x):
        return _pool.avg_pool2d_unchecked(x, geom, count_include_pad)


def avg_pool2d_backward(dy: Array, x: Array, kernel_size: IntOrPair, stride: IntOrPair | None = None,
                        pad: Padding = 0, rounding: str = "exact", count_include_pad: bool = True) -> Array:
    """Gradient of :func:`avg_pool2d`: ``dy / divisor`` spread evenly over each window."""
    geom = _pool_geometry("avg_pool2d_backward", x, kernel_size, stride, pad, rounding)
    check_grad("avg_pool2d_backward", "dy", dy, x, "x", (*x.shape[:2], *geom.out_hw))
    with device_scope(x):
        return _pool.avg_pool2d_backward_unchecked(dy, x, geom, count_include_pad)


# ============================================================================ validation

def _input_geometry(who, x, kernel, stride, pad, dilation, rounding, *, pooling=False) -> Window2d:
    check_floating(who, "x", x)
    check_ndim(who, "x", x, 4, "(N, C, H, W)")
    return window2d(who, tuple(x.shape[2:]), kernel, stride, pad, dilation, rounding, pooling=pooling)


def _pool_geometry(who, x, kernel_size, stride, pad, rounding) -> Window2d:
    kernel = pair(who, "kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None else stride
    return _input_geometry(who, x, kernel, stride, pad, 1, rounding, pooling=True)


def _conv_geometry(who, x, w, b, stride, pad, dilation, groups, rounding, *, w_name="w") -> Window2d:
    check_floating(who, "x", x)
    check_floating(who, w_name, w)
    check_ndim(who, "x", x, 4, "(N, C, H, W)")
    check_ndim(who, w_name, w, 4, "(FN, C/groups, FH, FW)")
    check_same_place(who, "x", x, **{w_name: w, "b": b})
    check_conv_shapes(who, tuple(x.shape), tuple(w.shape), None if b is None else tuple(b.shape), groups)
    return window2d(who, tuple(x.shape[2:]), tuple(w.shape[2:]), stride, pad, dilation, rounding)


def check_conv_shapes(who: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                      b_shape: tuple[int, ...] | None, groups: int) -> None:
    """Channels, groups and bias of a convolution agree (shapes as tuples)."""
    if not _is_int(groups):
        raise TypeError(f"{who}: expected groups to be an int; got {groups!r}")
    if groups < 1:
        raise ValueError(f"{who}: expected groups >= 1; got {groups}")
    FN, Cg = w_shape[:2]
    C = x_shape[1]
    if C % groups or FN % groups:
        raise ValueError(f"{who}: groups={groups} must divide both the input channels C={C} "
                         f"and the filter count FN={FN}")
    if Cg * groups != C:
        raise ValueError(f"{who}: channel mismatch: x has C={C} channels, so W must have shape "
                         f"(FN, C/groups={C // groups}, FH, FW); got W of shape {w_shape} "
                         f"(groups={groups})")
    if b_shape is not None and b_shape != (FN,):
        raise ValueError(f"{who}: expected b of shape (FN,) = ({FN},); got {b_shape}")
