"""Convolution kernels on validated inputs (internal; ``xpconv.functional`` checks and calls them).

Nothing here validates its arguments: the ``*_unchecked`` names say so. Callers pass a
:class:`~xpconv._kernels.geometry.Window2d` computed by ``functional``'s checks, run inside
``device_scope(x)``, and get arrays of the input's dtype on the input's device.

Notation::

    x: (N, C, H, W)     w: (FN, C/G, FH, FW)     y: (N, FN, OH, OW)
    K = FH*FW           P = OH*OW                G = groups
"""
from __future__ import annotations

from .. import threads
from .._namespace import array_namespace, device
from ..devices import is_host_numpy
from ..workspace import chunked, itemsize, set_rows
from . import windows as _windows
from .geometry import Window2d


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

    The batch goes in chunks (``workspace.chunked``; on host NumPy with threads, the
    workers take the chunks); a chunk builds its columns and writes its rows of ``y``.
    """
    xp = array_namespace(x)
    N = x.shape[0]
    FN = w.shape[0]
    OH, OW = geom.out_hw
    wmat = _filter_matrix(w, groups)                                    # (G, FN/G, C/G*K)
    chunks, workers = chunked(N, _sample_scratch(x, w, geom, groups), x)

    def rows(n0, n1, cols):                                              # (n, FN, OH, OW)
        part = xp.reshape(wmat @ cols, (n1 - n0, FN, OH, OW))           # (n, G, FN/G, P) -> (n, FN, OH, OW)
        if b is not None:
            part += xp.reshape(b, (1, FN, 1, 1))
        return part

    if len(chunks) == 1:
        cols = _columns(x, geom, groups)                                # (N, G, C/G*K, P)
        return rows(0, N, cols), (cols if keep_cols else None)
    y = xp.empty((N, FN, OH, OW), dtype=x.dtype, device=device(x))

    def chunk(n0, n1):  # its columns are gone before the chunk after it builds its own
        nonlocal y      # in place where chunks run at once (host NumPy): the same array
        y = set_rows(y, n0, n1, rows(n0, n1, _columns(x[n0:n1, ...], geom, groups)))

    for _ in threads.imap_chunks(chunk, chunks, workers):
        pass
    return y, None


def conv2d_backward_unchecked(dy, x, w, geom: Window2d, groups: int, *, input_grad: bool = True,
                              cols=None):
    """Backward of :func:`conv2d_unchecked`; returns ``(dx, dw, db)``.

    Per chunk of the batch, with ``cols`` (n, G, C/G*K, P) rebuilt unless given::

        dw   += sum_n dy_n @ cols_n.T        (G, FN/G, P) @ (P, C/G*K)
        dcols = w.T @ dy_n                   (C/G*K, FN/G) @ (FN/G, P), then fold -> dx

    On host NumPy, where the chunks depend on the thread count, dw is summed sample
    after sample in the order of the batch (as NumPy sums one chunk's terms), so it is
    bit-identical for every thread count; elsewhere the chunks' sums are added in order.
    A chunk computes its input gradient first, then rebuilds its columns for its dw terms.
    """
    xp = array_namespace(x)
    N, C, H, W = x.shape
    FN = w.shape[0]
    G = groups
    OH, OW = geom.out_hw
    wmat = _filter_matrix(w, groups)
    db = xp.sum(dy, axis=(0, 2, 3))
    chunks, workers = chunked(N, _sample_scratch(x, w, geom, groups), x)
    whole = len(chunks) == 1
    dx = None
    if input_grad and not whole:
        dx = xp.empty(x.shape, dtype=x.dtype, device=device(x))

    def chunk(n0, n1):                                                  # -> (n, G, FN/G, C/G*K)
        nonlocal dx  # in place where chunks run at once (host NumPy): the same array
        n = n1 - n0
        grads = xp.reshape(dy[n0:n1, ...], (n, G, FN // G, OH * OW))    # (n, G, FN/G, P)
        if input_grad:
            dcols = xp.reshape(xp.matrix_transpose(wmat) @ grads, (n, C, geom.taps, OH, OW))
            part = _windows.fold((dcols[:, :, k, ...] for k in range(geom.taps)), geom, x, (n, C, H, W))
            dcols = None   # not del: torch.compile cannot trace deleting a closure's variable
            dx = part if whole else set_rows(dx, n0, n1, part)
            del part
        # columns kept by forward cover the whole batch: usable only as a single chunk
        c = cols if cols is not None and whole else _columns(x[n0:n1, ...], geom, groups)
        return grads @ xp.matrix_transpose(c)

    sample_by_sample = is_host_numpy(x)
    dw = None
    for terms in threads.imap_chunks(chunk, chunks, workers):          # in order: chunk 0, 1, ...
        if dw is None:
            dw = xp.sum(terms, axis=0)
        elif sample_by_sample:   # NumPy sums axis 0 row after row: so does this, continuing it
            for i in range(terms.shape[0]):
                dw += terms[i, ...]
        else:
            dw += xp.sum(terms, axis=0)
        del terms
    return dx, xp.reshape(dw, w.shape), db


def _sample_scratch(x, w, geom: Window2d, groups: int) -> int:
    """Bytes of the largest temporary per sample: the batch is chunked so that each
    temporary of a chunk stays under the workspace limit (at most two are alive at once).

    Temporaries per sample: the columns and the input-gradient columns (C*K*P), the
    padded input (C*Hp*Wp), one chunk's output (FN*P) or input gradient (C*H*W), and the
    per-sample filter gradients summed into dw (FN*C/G*K).
    """
    _N, C, H, W = x.shape
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


def _filter_matrix(w, groups: int):
    """(FN, C/G, FH, FW) -> (G, FN/G, C/G*FH*FW)."""
    xp = array_namespace(w)
    FN, Cg, FH, FW = w.shape
    return xp.reshape(w, (groups, FN // groups, Cg * FH * FW))
