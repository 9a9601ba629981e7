"""NumPy float64 references of the window ops, written from their definitions.

Independent of xpconv's kernels (padding, ``sliding_window_view`` and ``einsum``, no
im2col): ``xpconv selftest`` compares every op on a device with these, and the tests
check these against plain Python loops (``tests/naive.py``) and PyTorch.

Conventions: ``x: (N, C, H, W)``, ``w: (FN, C / groups, KH, KW)``, explicit padding
``pad = ((top, bottom), (left, right))``, ``stride``/``dilation`` an int or ``(h, w)``;
output sizes ``floor((size + p0 + p1 - d (k - 1) - 1) / s) + 1`` (no rounding rules: the
caller chooses the padding).
"""
from __future__ import annotations

import numpy as np

__all__ = ["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
           "avg_pool2d_backward", "im2col", "col2im"]



def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _windows(x, k, stride, pad, dilation=1, value=0.0):
    """Padded x and its windows (N, C, OH, OW, KH, KW), plus the tap slices of the padded input."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(k), _pair(stride), _pair(dilation)
    xp = np.pad(x, ((0, 0), (0, 0), *pad), constant_values=value)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    oh, ow = (xp.shape[2] - eh) // sh + 1, (xp.shape[3] - ew) // sw + 1
    view = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    win = view[:, :, :sh * (oh - 1) + 1:sh, :sw * (ow - 1) + 1:sw, ::dh, ::dw]

    def tap(i, j):  # the padded positions that kernel tap (i, j) reads, (OH, OW) of them
        return (slice(None), slice(None), slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))

    return xp, win, tap


def _unpad(xp, pad, shape):
    (t, _), (l, _) = pad
    return xp[:, :, t:t + shape[2], l:l + shape[3]]


def conv2d(x, w, b, stride, pad, dilation, groups):
    """y: (N, FN, OH, OW), y[n, f] = b[f] + sum over c in f's group, i, j of
    w[f, c, i, j] x_padded[n, c, s_h oh + d_h i, s_w ow + d_w j].
    """
    N, _C = x.shape[:2]
    FN, Cg, KH, KW = w.shape
    _, win, _ = _windows(x, (KH, KW), stride, pad, dilation)
    oh, ow = win.shape[2:4]
    win = win.reshape(N, groups, Cg, oh, ow, KH, KW)
    y = np.einsum("ngchwij,gfcij->ngfhw", win, w.reshape(groups, FN // groups, Cg, KH, KW))
    return y.reshape(N, FN, oh, ow) + b[None, :, None, None]


def conv2d_backward(dy, x, w, stride, pad, dilation, groups):
    """(dx, dw, db) of :func:`conv2d` for the output gradient ``dy: (N, FN, OH, OW)``."""
    N, C = x.shape[:2]
    FN, Cg, KH, KW = w.shape
    xp, win, tap = _windows(x, (KH, KW), stride, pad, dilation)
    oh, ow = win.shape[2:4]
    dyg = dy.reshape(N, groups, FN // groups, oh, ow)
    wg = w.reshape(groups, FN // groups, Cg, KH, KW)
    dw = np.einsum("ngfhw,ngchwij->gfcij", dyg, win.reshape(N, groups, Cg, oh, ow, KH, KW))
    dxp = np.zeros_like(xp)
    for i in range(KH):
        for j in range(KW):
            dxp[tap(i, j)] += np.einsum("ngfhw,gfc->ngchw", dyg, wg[..., i, j]).reshape(N, C, oh, ow)
    return _unpad(dxp, pad, x.shape), dw.reshape(w.shape), dy.sum(axis=(0, 2, 3))


def max_pool2d(x, k, stride, pad):
    """y: (N, C, OH, OW), the maximum of each window (padding is -inf)."""
    _, win, _ = _windows(x, k, stride, pad, value=-np.inf)
    return win.max(axis=(4, 5))


def max_pool2d_backward(dy, x, k, stride, pad):
    """Each window's gradient to its first maximum (row-major), as PyTorch."""
    kh, kw = _pair(k)
    xp, win, tap = _windows(x, k, stride, pad, value=-np.inf)
    first = win.reshape(*win.shape[:4], kh * kw).argmax(axis=-1)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            dxp[tap(i, j)] += np.where(first == i * kw + j, dy, 0.0)
    return _unpad(dxp, pad, x.shape)


def avg_pool2d(x, k, stride, pad, count_include_pad):
    """(y, divisor): the divisor counts the padding too, or only the real inputs."""
    _, win, _ = _windows(x, k, stride, pad)
    if count_include_pad:
        divisor = np.full(win.shape[2:4], float(np.prod(_pair(k))))
    else:
        divisor = _windows(np.ones((1, 1, *x.shape[2:])), k, stride, pad)[1].sum(axis=(4, 5))[0, 0]
    return win.sum(axis=(4, 5)) / divisor, divisor


def avg_pool2d_backward(dy, x, k, stride, pad, divisor):
    """Gradient of :func:`avg_pool2d`: ``dy / divisor`` added to every tap of its window.

    Shapes: dy (N, C, OH, OW) -> dx (N, C, H, W) like ``x``.
    """
    kh, kw = _pair(k)
    xp, _, tap = _windows(x, k, stride, pad)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            dxp[tap(i, j)] += dy / divisor
    return _unpad(dxp, pad, x.shape)


def im2col(x, k, stride, pad, dilation):
    """Rows (n, oh, ow), columns (c, i, j): the book's layout."""
    _, win, _ = _windows(x, k, stride, pad, dilation)
    N, C, oh, ow, kh, kw = win.shape
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(N * oh * ow, C * kh * kw)


def col2im(col, shape, k, stride, pad, dilation):
    """Adjoint of :func:`im2col`: col (N*OH*OW, C*KH*KW) summed back onto x of ``shape`` (N, C, H, W)."""
    kh, kw = _pair(k)
    xp, win, tap = _windows(np.zeros(shape), k, stride, pad, dilation)
    N, C, oh, ow = win.shape[:4]
    cols = col.reshape(N, oh, ow, C, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    for i in range(kh):
        for j in range(kw):
            xp[tap(i, j)] += cols[..., i, j]
    return _unpad(xp, pad, shape)
