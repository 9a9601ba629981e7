"""Independent references for the window ops: plain Python loops over NumPy float64 arrays.

Nothing here uses xpconv. Every function spells out the definition it implements,
one output element (or one input element) at a time, so that it is obviously right.

Conventions shared by all functions::

    x: (N, C, H, W)    pads = ((top, bottom), (left, right)), explicit ints
    stride, dilation: int or (h, w)
    output sizes: floor((H + top + bottom - dilation*(k-1) - 1) / stride) + 1, unless
    ``out_hw`` is passed (pooling in PyTorch's ceil mode)
"""
from __future__ import annotations

import math

import numpy as np


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(size, k, s, p0, p1, d=1):
    """Floor output length of a window op along one axis."""
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def torch_pool_out_size(size, k, s, p, ceil_mode):
    """Output length of torch's max_pool2d/avg_pool2d (symmetric padding ``p``), from its docs."""
    num = size + 2 * p - k
    out = (math.ceil(num / s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # last window must start inside input or left pad
        out -= 1
    return out


def same_pads(size, k, s, d=1):
    """(before, after) padding of pad="same": out = ceil(size/s), smaller half before."""
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _padded(x, pads, value):
    (t, b), (l, r) = pads
    N, C, H, W = x.shape
    out = np.full((N, C, H + t + b, W + l + r), value, dtype=np.float64)
    out[:, :, t:t + H, l:l + W] = x
    return out


# ----------------------------------------------------------------------------- convolution

def conv2d_naive(x, w, b=None, stride=1, pads=((0, 0), (0, 0)), dilation=1, groups=1):
    """y[n, f, oh, ow] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    N, C, H, W = x.shape
    FN, Cg, FH, FW = w.shape
    assert Cg * groups == C and FN % groups == 0
    xp = _padded(x, pads, 0.0)
    OH = out_size(H, FH, sh, *pads[0], dh)
    OW = out_size(W, FW, sw, *pads[1], dw)
    per_group = FN // groups
    y = np.zeros((N, FN, OH, OW))
    for n in range(N):
        for f in range(FN):
            g = f // per_group
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else float(b[f])
                    for c in range(Cg):
                        for i in range(FH):
                            for j in range(FW):
                                acc += w[f, c, i, j] * xp[n, g * Cg + c, oh * sh + i * dh, ow * sw + j * dw]
                    y[n, f, oh, ow] = acc
    return y


def conv2d_backward_naive(dy, x, w, stride=1, pads=((0, 0), (0, 0)), dilation=1, groups=1):
    """(dx, dw, db) of conv2d_naive, by the chain rule applied to each multiply-add."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    sh, sw = _pair(stride)
    dh, dw_ = _pair(dilation)
    N, _C, H, W = x.shape
    FN, Cg, FH, FW = w.shape
    (t, _), (l, _) = pads
    xp = _padded(x, pads, 0.0)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    _, _, OH, OW = dy.shape
    per_group = FN // groups
    for n in range(N):
        for f in range(FN):
            g = f // per_group
            for oh in range(OH):
                for ow in range(OW):
                    for c in range(Cg):
                        for i in range(FH):
                            for j in range(FW):
                                r, s = oh * sh + i * dh, ow * sw + j * dw_
                                dw[f, c, i, j] += dy[n, f, oh, ow] * xp[n, g * Cg + c, r, s]
                                dxp[n, g * Cg + c, r, s] += dy[n, f, oh, ow] * w[f, c, i, j]
    db = dy.sum(axis=(0, 2, 3))
    return dxp[:, :, t:t + H, l:l + W], dw, db


# ----------------------------------------------------------------------------- im2col

def im2col_naive(x, fh, fw, stride=1, pads=((0, 0), (0, 0)), dilation=1):
    """The book's layout: row (n, oh, ow), column (c, i, j), both row-major."""
    x = np.asarray(x, np.float64)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    N, C, H, W = x.shape
    xp = _padded(x, pads, 0.0)
    OH = out_size(H, fh, sh, *pads[0], dh)
    OW = out_size(W, fw, sw, *pads[1], dw)
    col = np.zeros((N * OH * OW, C * fh * fw))
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                for c in range(C):
                    for i in range(fh):
                        for j in range(fw):
                            col[row, (c * fh + i) * fw + j] = xp[n, c, oh * sh + i * dh, ow * sw + j * dw]
    return col


def col2im_naive(col, input_shape, fh, fw, stride=1, pads=((0, 0), (0, 0)), dilation=1):
    """Adjoint of im2col_naive: add each column entry back where it was read; drop padding."""
    col = np.asarray(col, np.float64)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    N, C, H, W = input_shape
    (t, b), (l, r) = pads
    OH = out_size(H, fh, sh, t, b, dh)
    OW = out_size(W, fw, sw, l, r, dw)
    xp = np.zeros((N, C, H + t + b, W + l + r))
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                row = (n * OH + oh) * OW + ow
                for c in range(C):
                    for i in range(fh):
                        for j in range(fw):
                            xp[n, c, oh * sh + i * dh, ow * sw + j * dw] += col[row, (c * fh + i) * fw + j]
    return xp[:, :, t:t + H, l:l + W]


# ----------------------------------------------------------------------------- pooling

def _pool_setup(x, k, stride, pads, out_hw):
    x = np.asarray(x, np.float64)
    kh, kw = _pair(k)
    sh, sw = _pair(k if stride is None else stride)
    _N, _C, H, W = x.shape
    if out_hw is None:
        out_hw = (out_size(H, kh, sh, *pads[0]), out_size(W, kw, sw, *pads[1]))
    return x, kh, kw, sh, sw, out_hw


def _max_window(x, n, c, oh, ow, kh, kw, sh, sw, pads):
    """(row, col) of the window's winner: PyTorch's loop over the real (unpadded) positions,
    ``if v > best or isnan(v)``; the first real position if nothing beats -inf."""
    H, W = x.shape[2:]
    (t, _), (l, _) = pads
    best, where = -math.inf, None
    for i in range(kh):
        for j in range(kw):
            r, s = oh * sh + i - t, ow * sw + j - l
            if not (0 <= r < H and 0 <= s < W):
                continue  # padding (-inf) never wins
            if where is None:
                where = (r, s)
            v = x[n, c, r, s]
            if v > best or math.isnan(v):
                best, where = v, (r, s)
    return best, where


def max_pool2d_naive(x, k, stride=None, pads=((0, 0), (0, 0)), out_hw=None):
    x, kh, kw, sh, sw, (OH, OW) = _pool_setup(x, k, stride, pads, out_hw)
    N, C = x.shape[:2]
    y = np.empty((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    y[n, c, oh, ow] = _max_window(x, n, c, oh, ow, kh, kw, sh, sw, pads)[0]
    return y


def max_pool2d_backward_naive(dy, x, k, stride=None, pads=((0, 0), (0, 0)), out_hw=None):
    x, kh, kw, sh, sw, (OH, OW) = _pool_setup(x, k, stride, pads, out_hw)
    dy = np.asarray(dy, np.float64)
    N, C = x.shape[:2]
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    r, s = _max_window(x, n, c, oh, ow, kh, kw, sh, sw, pads)[1]
                    dx[n, c, r, s] += dy[n, c, oh, ow]
    return dx


def _avg_window(H, W, oh, ow, kh, kw, sh, sw, pads, count_include_pad):
    """(rows, cols, divisor) of one window, as PyTorch's avg_pool2d computes them."""
    (t, b), (l, r) = pads
    h0, w0 = oh * sh - t, ow * sw - l
    h1, w1 = min(h0 + kh, H + b), min(w0 + kw, W + r)   # the ceil-mode overhang is not counted
    pool_size = (h1 - h0) * (w1 - w0)
    h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
    divisor = pool_size if count_include_pad else (h1 - h0) * (w1 - w0)
    return range(h0, h1), range(w0, w1), divisor


def avg_pool2d_naive(x, k, stride=None, pads=((0, 0), (0, 0)), out_hw=None, count_include_pad=True):
    x, kh, kw, sh, sw, (OH, OW) = _pool_setup(x, k, stride, pads, out_hw)
    N, C, H, W = x.shape
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    rows, cols, div = _avg_window(H, W, oh, ow, kh, kw, sh, sw, pads, count_include_pad)
                    y[n, c, oh, ow] = sum(x[n, c, r, s] for r in rows for s in cols) / div
    return y


def avg_pool2d_backward_naive(dy, x, k, stride=None, pads=((0, 0), (0, 0)), out_hw=None,
                              count_include_pad=True):
    x, kh, kw, sh, sw, (OH, OW) = _pool_setup(x, k, stride, pads, out_hw)
    dy = np.asarray(dy, np.float64)
    N, C, H, W = x.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    rows, cols, div = _avg_window(H, W, oh, ow, kh, kw, sh, sw, pads, count_include_pad)
                    for r in rows:
                        for s in cols:
                            dx[n, c, r, s] += dy[n, c, oh, ow] / div
    return dx


# ----------------------------------------------------------------------------- gradients

def numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar function ``f`` at ``x`` (float64), one element at a time."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for idx in range(flat.size):
        old = flat[idx]
        flat[idx] = old + eps
        fp = float(f(x))
        flat[idx] = old - eps
        fm = float(f(x))
        flat[idx] = old
        gflat[idx] = (fp - fm) / (2 * eps)
    return grad
