"""The one sliding-window primitive: conv and pooling both read the input through it.

A window op with kernel (FH, FW) reads, for each kernel tap (i, j), a strided slice
of the padded input::

    xp[:, :, i*dh : i*dh + sh*(OH-1) + 1 : sh, j*dw : j*dw + sw*(OW-1) + 1 : sw]   # (N, C, OH, OW)

``unfold`` stacks those slices into columns; ``fold`` is its adjoint, adding each
tap's (N, C, OH, OW) piece back onto the input positions it came from.
"""
from __future__ import annotations

import array_api_extra as xpx
from array_api_compat import is_torch_array

from .._namespace import array_namespace, device
from .fastpaths import constant, prefers_fewer_ops, take_last, under_compiler
from .geometry import Window2d


def pad(x, geom: Window2d, value: float = 0.0):
    """Pad the last two axes of ``x: (N, C, H, W)`` as ``geom`` says (no copy if no padding)."""
    if not geom.padded:
        return x
    (pt, pb), (pl, pr) = geom.pads
    return xpx.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def taps(geom: Window2d):
    """Yield (k, rows, cols) for each kernel tap, k = i*FW + j, slicing the padded input."""
    for i in range(geom.h.k):
        for j in range(geom.w.k):
            yield i * geom.w.k + j, geom.h.tap(i), geom.w.tap(j)


def unfold(x_padded, geom: Window2d):
    """Columns of a padded input.

    Shapes:
        x_padded: (N, C, Hp, Wp)  ->  cols: (N, C, FH*FW, OH, OW)

    One slice per tap, stacked; where every op has a host cost (a GPU, outside a
    compiler), one gather instead: ``take`` of the flattened padded input at the
    precomputed positions of every tap (1 op and 1 launch, instead of FH*FW slices
    before the stack).
    """
    xp = array_namespace(x_padded)
    if geom.taps > 1 and prefers_fewer_ops(x_padded) and not under_compiler(x_padded):
        N, C, Hp, Wp = x_padded.shape
        index_dtype = xp.int32 if Hp * Wp < 2**31 else xp.int64    # int32: JAX's without x64
        positions = constant(lambda xp, dtype, where: _tap_positions(xp, geom, (Hp, Wp), dtype, where),
                             x_padded, index_dtype, key=("unfold positions", geom, Hp, Wp))
        cols = take_last(xp.reshape(x_padded, (N, C, Hp * Wp)), positions)
        return xp.reshape(cols, (N, C, geom.taps, *geom.out_hw))
    return xp.stack([x_padded[:, :, r, c] for _, r, c in taps(geom)], axis=2)


def _tap_positions(xp, geom: Window2d, padded_hw: tuple[int, int], dtype, where):
    """(FH*FW*OH*OW,) integers of ``dtype``: the flat index in the padded (Hp, Wp) plane that
    tap k reads for output (oh, ow), in (k, oh, ow) order.
    """
    Hp, Wp = padded_hw
    plane = xp.reshape(xp.arange(Hp * Wp, dtype=dtype, device=where), (Hp, Wp))
    picked = xp.stack([plane[r, c] for _, r, c in taps(geom)])             # (K, OH, OW)
    return xp.reshape(picked, (-1,))


def fold(pieces, geom: Window2d, like, shape):
    """Adjoint of ``unfold`` (with the padding cropped): sum pieces back onto the input.

    Args:
        pieces: iterable of (N, C, OH, OW) arrays, the gradient through each tap,
            in tap order k = i*FW + j (consumed in that order, one at a time).
        geom: the window geometry (kernel, stride, padding, dilation, output size).
        like: an array whose dtype and device the result takes.
        shape: (N, C, H, W) of the unpadded input.

    Returns:
        (N, C, H, W) array; what falls into the padding is dropped.
    """
    xp = array_namespace(like)
    # windows that tile the input write every position once: nothing to zero first
    out = (xp.empty if geom.tiles else xp.zeros)(shape, dtype=like.dtype, device=device(like))
    # windows that cannot overlap touch each input position at most once: assign, don't add
    disjoint = all(a.s >= a.d * (a.k - 1) + 1 for a in (geom.h, geom.w))
    pieces = iter(pieces)
    for i in range(geom.h.k):
        rows = geom.h.tap_inside(i)
        for j in range(geom.w.k):
            piece = next(pieces)
            cols = geom.w.tap_inside(j)
            if rows is None or cols is None:
                continue
            out = _put(out, (slice(None), slice(None), rows[0], cols[0]), piece[:, :, rows[1], cols[1]],
                       add=not disjoint)
    return out


def _put(out, index, piece, *, add: bool):
    """``out[index] = piece`` (``+= piece`` when ``add``), in place where the library allows.

    torch writes in place directly (``xpx.at`` inspects the index in ways ``torch.compile``
    cannot trace); every other library goes through ``xpx.at`` (JAX: a new array).
    """
    if is_torch_array(out):
        if add:
            out[index] += piece
        else:
            out[index] = piece
        return out
    at = xpx.at(out)[index]
    return at.add(piece) if add else at.set(piece)


def inside_mask(geom: Window2d, i: int, j: int, like):
    """(OH, OW) bool: where tap (i, j) reads the real input rather than padding."""
    xp = array_namespace(like)
    dev = device(like)

    def axis_mask(axis, t):
        pos = xp.arange(axis.out, device=dev) * axis.s + (t * axis.d - axis.p0)
        return (pos >= 0) & (pos < axis.size)

    return axis_mask(geom.h, i)[:, None] & axis_mask(geom.w, j)[None, :]
