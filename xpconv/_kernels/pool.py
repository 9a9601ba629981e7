"""Pooling kernels on validated inputs (internal; ``xpconv.functional`` checks and calls them).

Nothing here validates its arguments: the ``*_unchecked`` names say so. Callers pass a
:class:`~xpconv._kernels.geometry.Window2d` computed by ``functional``'s checks, run inside
``device_scope(x)``, and get arrays of the input's dtype on the input's device.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW); K = kh*kw taps per window, Hp, Wp the
padded input's size. Every op goes through the batch in chunks (``workspace.map_batch``)
so that the scratch alive at once stays under twice the workspace limit, the bound the
README promises (a convolution's two temporaries of at most the limit each); what is
alive at once per sample is counted next to each kernel.

Two ways to pool, chosen per library (``devices.prefers_fewer_ops``):

* per tap (NumPy; and any library when the windows overlap or are padded): many cheap
  ops on strided slices, separable for the max (columns, then rows);
* blocks (the other libraries, when the windows are disjoint blocks: ``Window2d.blocks``,
  e.g. 2x2 stride 2): the input viewed as (N, C, OH, kh, OW, kw) and reduced over the
  window axes, a handful of ops in all: a GPU's kernel launches, not its arithmetic,
  bound these small layers.

Outside NumPy no op reads an array's value on the host (no device sync), whatever the
input holds.
"""
from __future__ import annotations

from typing import Any

import array_api_extra as xpx

from .._namespace import array_namespace, device
from ..workspace import itemsize, map_batch
from . import windows as _windows
from .fastpaths import constant, keep_where, prefers_fewer_ops, under_compiler
from .geometry import Window2d

_BOOL_BYTES = 1


def _chunk_by(alive_per_sample: int) -> int:
    """Bytes per sample to chunk by, so that what is alive at once is at most twice the limit."""
    return max(1, alive_per_sample // 2)


# ============================================================================ max

def max_pool2d_unchecked(x, geom: Window2d):
    """Max over each window (padding is -inf; NaN propagates)."""
    N, C = x.shape[:2]
    if geom.blocks and prefers_fewer_ops(x):
        return _max_pool2d_blocks(x, geom)
    (Hp, Wp), (OH, OW) = _padded_hw(geom), geom.out_hw
    # alive at once: the padded input, then two running maxima of the column pass (Hp, OW),
    # or the column result and two running maxima of the row pass (OH, OW)
    cols_pass = min(2, geom.w.k - 1) * Hp * OW
    rows_pass = (Hp * OW if geom.w.k > 1 else 0) + min(2, geom.h.k - 1) * OH * OW
    scratch = C * ((Hp * Wp if geom.padded else 0) + max(cols_pass, rows_pass)) * itemsize(x)
    return map_batch(lambda xc: _max_pool2d_separable(xc, geom), (x,), (N, C, OH, OW), _chunk_by(scratch))


def _max_pool2d_separable(x, geom: Window2d):
    """Max over the window's columns, then over its rows: kh + kw - 2 maximum ops."""
    xp = array_namespace(x)
    x = _windows.pad(x, geom, value=-float("inf"))
    y = None
    for j in range(geom.w.k):                      # (n, C, Hp, OW)
        tap = x[:, :, :, geom.w.tap(j)]
        y = tap if y is None else xp.maximum(y, tap)
    rows: Any = y
    y = None
    for i in range(geom.h.k):                      # (n, C, OH, OW)
        tap = rows[:, :, geom.h.tap(i), :]
        y = tap if y is None else xp.maximum(y, tap)
    return xp.asarray(y, copy=True) if geom.taps == 1 else y


def _max_pool2d_blocks(x, geom: Window2d):
    """Disjoint windows: one reduction over the window axes of (N, C, OH, kh, OW, kw)."""
    xp = array_namespace(x)
    return xp.max(_window_view(x, geom), axis=(3, 5))


def max_pool2d_backward_unchecked(dy, x, y, geom: Window2d):
    """Backward of max pooling given the forward output ``y`` (None: recomputed, a chunk
    of the batch at a time).

    As PyTorch: a window's gradient goes to its first maximum in row-major order; in a
    window holding NaN (so ``y`` is NaN) it goes to the last NaN.
    """
    _N, C, H, W = x.shape
    (Hp, Wp), (OH, OW) = _padded_hw(geom), geom.out_hw
    size = itemsize(x)
    kernel: Any
    if geom.blocks and prefers_fewer_ops(x):
        kernel = _max_pool2d_backward_blocks
        # at most: hit (bool) and two scores, input-sized; a cropped copy and the cropped dx
        # when rows or columns are left over
        scratch = C * H * W * (_BOOL_BYTES + 2 * _score_bytes(geom.taps) + (0 if geom.tiles else 2 * size))
    else:
        kernel = _max_pool2d_backward_taps
        # the padded input, dx of the chunk, a piece and its add; per tap a NaN mask, and
        # hit/first/taken/inside masks
        scratch = (C * ((Hp * Wp if geom.padded else 0) + H * W + 2 * OH * OW) * size
                   + C * (geom.taps + 4) * OH * OW * _BOOL_BYTES)
    if y is not None:
        return map_batch(lambda *a: kernel(*a, geom), (dy, x, y), x.shape, _chunk_by(scratch))

    def recomputed(dy, x):
        return kernel(dy, x, max_pool2d_unchecked(x, geom), geom)

    return map_batch(recomputed, (dy, x), x.shape, _chunk_by(scratch + C * OH * OW * size))


def _max_pool2d_backward_taps(dy, x, y, geom: Window2d):
    """Per tap, a mask of the window's first maximum (or last NaN), then fold."""
    xp = array_namespace(x)
    x_padded = _windows.pad(x, geom, value=-float("inf"))
    taps = [x_padded[:, :, r, c] for _, r, c in _windows.taps(geom)]
    # NaN windows are rare: NumPy reads on the host whether there are any (free there,
    # and it skips K masks); other libraries build the masks always, with no sync.
    if prefers_fewer_ops(x) or bool(xp.any(xp.isnan(y))):
        last_nan = _last_nan_masks(taps)
    else:
        last_nan = None

    def pieces():
        taken = None
        for k, tap in enumerate(taps):
            hit = tap == y                                   # never true for NaN
            if geom.padded:  # a -inf of the padding must not take a real -inf's gradient
                hit = hit & _windows.inside_mask(geom, k // geom.w.k, k % geom.w.k, x)
            first = hit if taken is None else hit & ~taken
            taken = hit if taken is None else taken | hit
            if last_nan is not None:
                first = first | last_nan[k]
            yield keep_where(first, dy)

    return _windows.fold(pieces(), geom, x, tuple(x.shape))


def _last_nan_masks(taps):
    """Per tap: NaN here and in no later tap of the window (PyTorch's choice among NaNs)."""
    xp = array_namespace(taps[0])
    masks, later = [None] * len(taps), None
    for k in reversed(range(len(taps))):
        nan = xp.isnan(taps[k])
        masks[k] = nan if later is None else nan & ~later
        later = nan if later is None else later | nan
    return masks


def _max_pool2d_backward_blocks(dy, x, y, geom: Window2d):
    """Disjoint windows, branch-free: each position gets a score, the window's best takes dy.

    With k = i*kw + j the tap's row-major index within its window::

        score = -(k + 1)  where x == y (a maximum: the first has the highest score)
                  k + 1   where x is NaN (only in windows whose y is NaN: the last wins)
                -(K + 1)  elsewhere (never the best: every window has a maximum or a NaN)
        dx = where(score == max(score over the window), dy, 0)

    Rows and columns past the last window (rounding="floor") get 0.

    The scores are the smallest integer type that holds them (memory traffic, op by op);
    under a compiler, which fuses them away, int32: XLA's CPU code reduces int8 7x slower
    (the jitted SimpleConvNet step at batch 100: 26.0 -> 14.6 ms on 2 cores).
    """
    xp = array_namespace(x)
    kh, kw = geom.h.k, geom.w.k
    xw = _window_view(x, geom)                                           # (n, C, OH, kh, OW, kw)
    y6 = xp.reshape(y, (*y.shape[:3], 1, y.shape[3], 1))
    score_bytes = 4 if under_compiler(x) else _score_bytes(geom.taps)
    score_dtype = {1: xp.int8, 2: xp.int16, 4: xp.int32}[score_bytes]
    # the ranks are built once per device (constants: no arange, no fill per call)
    rank = constant(lambda xp, dtype, where: xp.reshape(
        xp.arange(1, geom.taps + 1, dtype=dtype, device=where), (kh, 1, kw)), x, score_dtype,
        key=("max_pool2d rank", kh, kw))
    neg_rank = constant(lambda xp, dtype, where: -rank, x, score_dtype, key=("max_pool2d -rank", kh, kw))
    low = constant(-(geom.taps + 1), x, score_dtype)
    score = xp.where(xw == y6, neg_rank, xp.where(xp.isnan(xw), rank, low))
    best = score == xp.max(score, axis=(3, 5), keepdims=True)
    dx = keep_where(best, xp.reshape(dy, y6.shape))
    n, C = x.shape[:2]
    dx = xp.reshape(dx, (n, C, geom.h.out * kh, geom.w.out * kw))
    if geom.tiles:
        return dx
    return xpx.pad(dx, ((0, 0), (0, 0), (0, geom.h.size - geom.h.out * kh), (0, geom.w.size - geom.w.out * kw)))


def _score_bytes(taps: int) -> int:
    """Bytes of the smallest integer type that holds the scores -(K + 1) .. K + 1 exactly."""
    return 1 if taps < 127 else 2 if taps < 32767 else 4


def _window_view(x, geom: Window2d):
    """(n, C, H, W) -> (n, C, OH, kh, OW, kw), for disjoint windows (``Window2d.blocks``);
    what lies past the last window is cropped (a copy then, where the library needs one).
    """
    xp = array_namespace(x)
    n, C = x.shape[:2]
    (OH, kh), (OW, kw) = (geom.h.out, geom.h.k), (geom.w.out, geom.w.k)
    if not geom.tiles:
        x = x[:, :, :OH * kh, :OW * kw]
    return xp.reshape(x, (n, C, OH, kh, OW, kw))


# ============================================================================ average

def avg_pool2d_unchecked(x, geom: Window2d, count_include_pad: bool):
    """Mean over each window: the sum over taps times 1/divisor."""
    N, C = x.shape[:2]
    (Hp, Wp), (OH, OW) = _padded_hw(geom), geom.out_hw
    scratch = C * ((Hp * Wp if geom.padded else 0) + OH * OW) * itemsize(x)   # padded input, the sum
    return map_batch(lambda xc: _avg_pool2d_chunk(xc, geom, count_include_pad), (x,), (N, C, OH, OW),
                     _chunk_by(scratch))


def _avg_pool2d_chunk(x, geom: Window2d, count_include_pad: bool):
    xp = array_namespace(x)
    x_padded = _windows.pad(x, geom)
    total = None
    for _, r, c in _windows.taps(geom):
        tap = x_padded[:, :, r, c]
        if total is None:
            total = xp.asarray(tap, copy=True)
        else:
            total += tap
    return _times_inverse_divisor(total, geom, count_include_pad)


def avg_pool2d_backward_unchecked(dy, x, geom: Window2d, count_include_pad: bool):
    """Backward of mean pooling: ``dy / divisor`` spread evenly over each window."""
    _N, C, H, W = x.shape
    OH, OW = geom.out_hw
    scratch = C * (H * W + 2 * OH * OW) * itemsize(x)       # dx of the chunk, the share, an add
    return map_batch(lambda d, xc: _avg_pool2d_backward_chunk(d, xc, geom, count_include_pad),
                     (dy, x), x.shape, _chunk_by(scratch))


def _avg_pool2d_backward_chunk(dy, x, geom: Window2d, count_include_pad: bool):
    share = _times_inverse_divisor(dy, geom, count_include_pad)
    return _windows.fold((share for _ in range(geom.taps)), geom, x, tuple(x.shape))


def _times_inverse_divisor(a, geom: Window2d, count_include_pad: bool):
    """``a / divisor``, the divisor counting each window's positions.

    A whole-window divisor is a multiplication by ``1.0 / K`` computed on the host: an
    array divided by a Python int is float64 on CuPy 13 for int >= 65,536 (value-based
    casting); a Python float keeps the array's dtype everywhere.
    """
    if count_include_pad and not (geom.h.extra or geom.w.extra):
        return a * (1.0 / geom.taps)
    return a / _divisor_counts(geom, count_include_pad, a)


def _divisor_counts(geom: Window2d, count_include_pad: bool, like):
    """(OH, OW) array of ``like``'s dtype: positions counted per window near the edges."""
    xp = array_namespace(like)

    def counts(axis):  # (out,) windows' positions inside the counted region of this axis
        lo, hi = (-axis.p0, axis.size + axis.p1) if count_include_pad else (0, axis.size)
        start = xp.arange(axis.out, device=device(like)) * axis.s - axis.p0
        return sum(xp.astype((start + i * axis.d >= lo) & (start + i * axis.d < hi), like.dtype)
                   for i in range(axis.k))

    return counts(geom.h)[:, None] * counts(geom.w)[None, :]


def _padded_hw(geom: Window2d) -> tuple[int, int]:
    (pt, pb), (pl, pr) = geom.pads
    return geom.h.size + pt + pb, geom.w.size + pl + pr
