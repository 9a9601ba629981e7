"""Convolution kernels on validated inputs (internal; ``xpconv.functional`` checks and calls them).

Nothing here validates its arguments: the ``*_unchecked`` names say so. Callers pass a
:class:`~xpconv._geometry.Window2d` computed by ``functional``'s checks, run inside
``device_scope(x)``, and get arrays of the input's dtype on the input's device.

Notation::

    x: (N, C, H, W)     w: (FN, C/G, FH, FW)     y: (N, FN, OH, OW)
    K = FH*FW           P = OH*OW                G = groups
"""
from __future__ import annotations

import array_api_extra as xpx
from array_api_compat import array_namespace, device

from . import _windows, threads
from ._geometry import Window2d
from .workspace import batch_chunks, itemsize, set_rows


def im2col_unchecked(x, geom: Window2d):
    """(N, C, H, W) -> (N*OH*OW, C*FH*FW), rows (n, oh, ow), columns (c, fh, fw)."""
    xp = array_namespace(x)
    N, C = x.shape[:2]
    OH, OW = geom.out_hw
    cols = _windows.unfold(_windows.pad(x, geom), geom)                # (N, C, K, OH, OW)
    cols = xp.permute_dims(cols, (0, 3, 4, 1, 2))                       # (N, OH, OW, C, K)
    return xp.reshape(cols, (N * OH * OW, C * geom.taps))


def col2im_unchecked(col, geom: Window2d, shape):
    """Adjoint of :func:`im2col_unchecked`: (N*OH*OW, C*FH*FW) -> ``shape`` (N, C, H, W)."""
    xp = array_namespace(col)
    N, C, H, W = shape
    OH, OW = geom.out_hw
    cols = xp.reshape(col, (N, OH, OW, C, geom.taps))
    cols = xp.permute_dims(cols, (0, 3, 4, 1, 2))                       # (N, C, K, OH, OW)
    return _windows.fold((cols[:, :, k, ...] for k in range(geom.taps)), geom, col, (N, C, H, W))


def conv2d_unchecked(x, w, b, geom: Window2d, groups: int, *, keep_cols: bool = False):
    """Convolution on validated inputs; returns ``(y, cols)``.

    ``cols`` is the column tensor (N, G, C/G*K, P) when ``keep_cols`` and the whole
    batch fits in one workspace chunk (backward then reuses it), else None.

    The batch goes in chunks (``workspace.batch_chunks``), each split among the threads
    on host NumPy (``threads.split``); a part builds its columns (into the kept ones,
    when kept) and writes its rows of ``y``.
    """
    xp = array_namespace(x)
    N = x.shape[0]
    FN = w.shape[0]
    OH, OW = geom.out_hw
    wmat = _filter_matrix(w, groups)                                    # (G, FN/G, C/G*K)
    scratch = _sample_scratch(x, w, geom, groups)
    chunks = batch_chunks(N, scratch, x)

    def rows(n0, n1, cols):                                              # (n, FN, OH, OW)
        part = xp.reshape(wmat @ cols, (n1 - n0, FN, OH, OW))           # (n, G, FN/G, P) -> (n, FN, OH, OW)
        if b is not None:
            part += xp.reshape(b, (1, FN, 1, 1))
        return part

    if len(chunks) == 1 and threads.split(chunks, x, scratch) == chunks:
        cols = _columns(x, geom, groups)                                # (N, G, C/G*K, P)
        return rows(0, N, cols), (cols if keep_cols else None)
    y = xp.empty((N, FN, OH, OW), dtype=x.dtype, device=device(x))
    kept = _kept_columns(x, geom, groups) if keep_cols and len(chunks) == 1 else None

    def part(n0, n1):
        nonlocal y, kept  # in place where parts run at once (host NumPy): the same arrays
        if kept is None:
            cols = _columns(x[n0:n1, ...], geom, groups)  # this part's: gone before the next part's
        else:
            kept = _fill_columns(kept, n0, n1, x, geom)
            cols = kept[n0:n1, ...]
        y = set_rows(y, n0, n1, rows(n0, n1, cols))

    for chunk in chunks:   # one chunk's parts at once, the chunks one after another
        threads.map_chunks(part, threads.split([chunk], x, scratch), x)
    return y, kept


def conv2d_backward_unchecked(dy, x, w, geom: Window2d, groups: int, *, input_grad: bool = True,
                              cols=None):
    """Backward of :func:`conv2d_unchecked`; returns ``(dx, dw, db)``.

    Per chunk of the batch, with ``cols`` (n, G, C/G*K, P) rebuilt unless given::

        dw   += sum_n dy_n @ cols_n.T        (G, FN/G, P) @ (P, C/G*K)
        dcols = w.T @ dy_n                   (C/G*K, FN/G) @ (FN/G, P), then fold -> dx

    A chunk is split among host NumPy's threads (``threads.split``): its parts' terms
    are computed at once, then summed sample after sample in order, as one sum over the
    chunk is; the chunks' sums are added in order. So dw is bit-identical for every
    thread count (the chunks depend on the workspace limit only). The columns of a
    chunk are dropped before its input-gradient columns are built.
    """
    xp = array_namespace(x)
    N, C, H, W = x.shape
    FN = w.shape[0]
    G = groups
    OH, OW = geom.out_hw
    wmat = _filter_matrix(w, groups)
    db = xp.sum(dy, axis=(0, 2, 3))
    scratch = _sample_scratch(x, w, geom, groups)
    chunks = batch_chunks(N, scratch, x)
    whole = len(chunks) == 1 and threads.split(chunks, x, scratch) == chunks   # one part: no copies
    dx = None
    if input_grad and not whole:
        dx = xp.empty(x.shape, dtype=x.dtype, device=device(x))

    def grads(n0, n1):                                                  # (n, G, FN/G, P)
        return xp.reshape(dy[n0:n1, ...], (n1 - n0, G, FN // G, OH * OW))

    def dw_terms(n0, n1):                                               # (n, G, FN/G, C/G*K)
        # columns kept by forward cover the whole batch: usable only as a single chunk
        if cols is not None and len(chunks) == 1:
            c = cols[n0:n1, ...]
        else:
            c = _columns(x[n0:n1, ...], geom, groups)
        return grads(n0, n1) @ xp.matrix_transpose(c)

    def dx_rows(n0, n1):                                                # (n, C, H, W)
        n = n1 - n0
        dcols = xp.reshape(xp.matrix_transpose(wmat) @ grads(n0, n1), (n, C, geom.taps, OH, OW))
        return _windows.fold((dcols[:, :, k, ...] for k in range(geom.taps)), geom, x, (n, C, H, W))

    def dx_part(n0, n1):
        nonlocal dx  # in place where parts run at once (host NumPy): the same array
        dx = set_rows(dx, n0, n1, dx_rows(n0, n1))

    dw = None
    for chunk in chunks:                                                # in order: chunk 0, 1, ...
        parts = threads.split([chunk], x, scratch)
        part_dw = None
        for terms in threads.map_chunks(dw_terms, parts, x):           # the chunk's parts, in order
            if part_dw is None:
                part_dw = xp.sum(terms, axis=0)
            else:  # NumPy sums axis 0 row after row: so does this, continuing the same sum
                for i in range(terms.shape[0]):
                    part_dw += terms[i, ...]
            del terms
        if dw is None:
            dw = part_dw
        else:
            dw += part_dw
        del part_dw
        if input_grad:
            if whole:
                dx = dx_rows(0, N)
            else:
                threads.map_chunks(dx_part, parts, x)
    return dx, xp.reshape(dw, w.shape), db


def _sample_scratch(x, w, geom: Window2d, groups: int) -> int:
    """Bytes of the largest temporary per sample: the batch is chunked so that each
    temporary of a chunk stays under the workspace limit (at most two are alive at once).

    Temporaries per sample: the columns and the input-gradient columns (C*K*P), the
    padded input (C*Hp*Wp), one chunk's output (FN*P) or input gradient (C*H*W), and the
    per-sample filter gradients summed into dw (FN*C/G*K).
    """
    N, C, H, W = x.shape
    FN = w.shape[0]
    (pt, pb), (pl, pr) = geom.pads
    P = geom.h.out * geom.w.out
    largest = max(C * geom.taps * P, C * (H + pt + pb) * (W + pl + pr), FN * P, C * H * W,
                  FN * (C // groups) * geom.taps)
    return largest * itemsize(x)


def _columns(x, geom: Window2d, groups: int):
    """(n, C, H, W) -> columns (n, G, C/G*K, P), the layout the matmuls want."""
    xp = array_namespace(x)
    n, C = x.shape[:2]
    OH, OW = geom.out_hw
    if geom.taps == 1:  # 1x1 kernel: a strided view, no stacking
        _, r, c = next(_windows.taps(geom))
        cols = _windows.pad(x, geom)[:, :, r, c]
    else:
        cols = _windows.unfold(_windows.pad(x, geom), geom)              # (n, C, K, OH, OW)
    return xp.reshape(cols, (n, groups, C // groups * geom.taps, OH * OW))


def _kept_columns(x, geom: Window2d, groups: int):
    """The columns (N, G, C/G*K, P) of the whole batch, for the parts of a forward to fill
    (:func:`_fill_columns`); a 1x1 kernel's are a view of ``x``, filled already."""
    xp = array_namespace(x)
    N, C = x.shape[:2]
    if geom.taps == 1:
        return _columns(x, geom, groups)
    OH, OW = geom.out_hw
    return xp.empty((N, groups, C // groups * geom.taps, OH * OW), dtype=x.dtype, device=device(x))


def _fill_columns(kept, n0: int, n1: int, x, geom: Window2d):
    """Rows n0:n1 of the columns from :func:`_kept_columns`, written tap by tap (what
    :func:`_columns` stacks), with no copy of the part's own; returns ``kept``."""
    if geom.taps == 1:
        return kept
    xp = array_namespace(x)
    N, C = x.shape[:2]
    OH, OW = geom.out_hw
    cols = xp.reshape(kept, (N, C, geom.taps, OH, OW))                  # a view: C/G*K = (c, k)
    x_padded = _windows.pad(x[n0:n1, ...], geom)
    for k, r, c in _windows.taps(geom):
        cols = xpx.at(cols)[n0:n1, :, k, ...].set(x_padded[:, :, r, c])
    return xp.reshape(cols, kept.shape)


def _filter_matrix(w, groups: int):
    """(FN, C/G, FH, FW) -> (G, FN/G, C/G*FH*FW)."""
    xp = array_namespace(w)
    FN, Cg, FH, FW = w.shape
    return xp.reshape(w, (groups, FN // groups, Cg * FH * FW))
