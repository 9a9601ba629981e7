"""User image-classification data stored in an ``.npz`` file.

Expected content (read without unpickling; object arrays and pickle files are refused):

* ``x``: images, (N, C, H, W) or (N, H, W) (a channel axis C=1 is added);
  any bool, integer or floating dtype. Channels-last (N, H, W, C) data is refused
  with a clear error unless ``channels_last=True`` (see :mod:`.layout`).
* ``t``: integer class labels 0..K-1, shape (N,).
* optionally ``x_test`` and ``t_test`` (same layout): the validation split.
  Without them a seeded, stratified ``val_fraction`` of the samples validates
  (see :mod:`.split`).

Other members are ignored and never decompressed. Names, dtypes and shapes are
checked from the ``.npy`` headers before any data is read, and the data read is
capped (``max_bytes``; default ``XPCONV_MAX_LOAD_MB`` MiB if set, else 4 GiB).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..serialization import max_load_bytes, open_npz
from .layout import as_nchw, finish, to_float
from .result import DataSplits
from .split import check_val_fraction, stratified_split, warn_unseen_classes

__all__ = ["load_npz_dataset", "load_npz_whole"]

_WHO = "load_npz_dataset"


_INT64_MAX = np.iinfo(np.int64).max


def _check_images(npz, key: str, path: str) -> None:
    """From the header alone: a bool/int/float dtype, (N, C, H, W) or (N, H, W)."""
    h = npz.header(key)
    if h.dtype.kind not in "buif":
        raise TypeError(f"{_WHO}: {path}: {key!r}: expected a bool, integer or float dtype; got {h.dtype}")
    if len(h.shape) not in (3, 4):
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected shape (N, C, H, W) or (N, H, W); got {h.shape}")


def _check_labels(npz, key: str, n: int, path: str) -> None:
    """From the header alone: integer labels of shape (n,)."""
    h = npz.header(key)
    if h.dtype.kind not in "iu":
        raise TypeError(f"{_WHO}: {path}: {key!r}: expected integer class labels; got dtype {h.dtype}")
    if len(h.shape) != 1:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected shape (N,); got {h.shape}")
    if h.shape[0] != n:
        raise ValueError(f"{_WHO}: {path}: expected one label per image: {n} images but {h.shape[0]} labels in {key!r}")


def _labels(t: np.ndarray, key: str, path: str) -> np.ndarray:
    """Labels 0..2**63-1 as int64 (range checked before the cast, so uint64 cannot wrap)."""
    if t.size and t.min() < 0:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected labels >= 0; got {int(t.min())}")
    if t.size and t.dtype.kind == "u" and int(t.max()) > _INT64_MAX:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected labels <= {_INT64_MAX}; got {int(t.max())}")
    return t.astype(np.int64)


_SPLITS = {"x": "training", "x_test": "validation"}


def check_finite(x: np.ndarray, *, key: str, who: str, source: str, allow: bool = False) -> None:
    """Refuse floating images holding NaN or Inf (one line: the array, its split, the count);
    with ``allow``, a ``RuntimeWarning`` instead. Counted in chunks, so a memory-mapped
    array is never read into memory whole.
    """
    if x.dtype.kind not in "fc" or x.size == 0:
        return
    step = max(1, (64 << 20) // max(1, x[0].nbytes))
    bad = sum(int(x[i:i + step].size - np.count_nonzero(np.isfinite(x[i:i + step])))
              for i in range(0, len(x), step))
    if not bad:
        return
    what = (f"{who}: {source}: {key!r} (the {_SPLITS.get(key, key)} images) holds {bad} non-finite "
            f"value{'s' if bad > 1 else ''} (NaN or Inf) of {x.size}")
    if not allow:
        raise ValueError(f"{what}; fix the data, or pass allow_non_finite=True "
                         f"(xpconv train --allow-non-finite) to use it anyway")
    warnings.warn(what, RuntimeWarning, stacklevel=3)


def _read(path, channels_last, max_bytes, *, limit=None, mmap=False, allow_non_finite=False,
          split=None):
    """(x, t, x_test or None, t_test or None, budget): images (N, C, H, W) in their stored
    dtype, labels int64.

    ``limit``: read only the first ``limit`` samples of each split; ``split``: a function
    of the labels ``t`` that gives (train, validation) indices, applied before ``limit``
    when the file has no ``x_test`` (then only the selected samples are gathered).
    ``mmap``: stored members are memory-mapped instead of read.
    """
    path = os.fspath(path)
    budget = max_load_bytes(max_bytes, who=_WHO)
    with open_npz(path, who=_WHO, max_bytes=budget) as npz:
        present = sorted(npz.names)
        missing = [k for k in ("x", "t") if k not in present]
        has_test = [k in present for k in ("x_test", "t_test")]
        if any(has_test) and not all(has_test):
            missing += [k for k in ("x_test", "t_test") if k not in present]
        if missing:
            raise ValueError(
                f"{_WHO}: {path}: missing key(s) {', '.join(missing)}: expected 'x' and 't' "
                f"(and optionally both 'x_test' and 't_test'); the file holds {present or 'nothing'}"
            )
        keys = ["x", "t"] + (["x_test", "t_test"] if all(has_test) else [])
        for xk, tk in zip(keys[::2], keys[1::2]):
            _check_images(npz, xk, path)
            _check_labels(npz, tk, npz.header(xk).shape[0], path)
        if npz.header("x").shape[0] == 0:
            raise ValueError(f"{_WHO}: {path}: 'x' holds 0 training images; expected at least 1")
        rows = None if split is not None and not all(has_test) else limit
        npz.check_budget([k for k in keys if not (mmap and npz.is_stored(k))])
        arrays = {k: npz.read(k, rows=rows, mmap=mmap) for k in keys}
    x_val = t_val = None
    t = _labels(arrays["t"], "t", path)
    x = arrays["x"]
    if split is not None and not all(has_test):
        train_idx, val_idx = split(t)
        train_idx, val_idx = train_idx[:limit], val_idx[:limit]
        x, x_val, t, t_val = x[train_idx], x[val_idx], t[train_idx], t[val_idx]
    elif all(has_test):
        x_val, t_val = arrays["x_test"], _labels(arrays["t_test"], "t_test", path)
    for key, images in (("x", x), ("x_test", x_val)):
        if images is not None:
            check_finite(images, key=key, who=_WHO, source=path, allow=allow_non_finite)
    x = as_nchw(x, channels_last=channels_last, who=_WHO, source=f"{path}: 'x'")
    if x_val is not None:
        x_val = as_nchw(x_val, channels_last=channels_last, who=_WHO, source=f"{path}: 'x_test'")
        if x_val.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{_WHO}: {path}: 'x_test' samples have shape {x_val.shape[1:]}; 'x' samples have {x.shape[1:]}"
            )
    return x, t, x_val, t_val, budget


def load_npz_dataset(path: str | os.PathLike, normalize: bool | None = None, flatten: bool = False,
                     one_hot_label: bool = False, val_fraction: float = 0.2, *, max_bytes: int | None = None,
                     seed: int = 0, channels_last: bool | None = None, limit: int | None = None,
                     keep_dtype: bool = False, allow_non_finite: bool = False) -> DataSplits:
    """Load an image-classification data set from an ``.npz`` file.

    Args:
        path: the ``.npz`` file (see the module docstring for its keys).
        normalize: None or True: uint8 images are scaled by 1/255 to [0, 1]; other
            dtypes are converted to float32 unchanged. False: no scaling.
        flatten: if True, x is (N, C*H*W); else (N, C, H, W).
        one_hot_label: if True, t is one-hot float32 (N, K) with K = 1 + the
            largest label of both splits; else int64 (N,).
        val_fraction: fraction in (0, 1) of the samples used for validation when
            the file has no ``x_test``/``t_test``: a stratified draw (see
            :func:`~xpconv.datasets.split.stratified_split`).
        max_bytes: cap on the array data read from the file (and on a one-hot
            array); default ``XPCONV_MAX_LOAD_MB`` MiB if set, else 4 GiB. Raise
            it for a larger data set you trust. Memory-mapped members do not count.
        seed: seed of the validation draw (not used with ``x_test``/``t_test``).
        channels_last: None: refuse images that look (N, H, W, C); True: transpose
            them to (N, C, H, W); False: take 4-d images as (N, C, H, W).
        limit: keep only the first ``limit`` samples of each split; only those are
            read (of a file without ``x_test``: of the split drawn from all labels).
        keep_dtype: return the images in their stored dtype (uint8 stays uint8, a
            quarter of float32) instead of float32; stored (uncompressed) members are
            then memory-mapped, not read. :class:`~xpconv.Trainer` and the models
            scale uint8 by 1/255 one batch at a time.
        allow_non_finite: NaN or Inf in the images gives a ``RuntimeWarning`` instead
            of a ValueError.

    Returns:
        ``((x_train, t_train), (x_test, t_test))`` (a :class:`DataSplits`, whose
        ``classes`` is None): x float32 (or as stored with ``keep_dtype``); the
        "test" slot is the validation split.

    Warns:
        UserWarning: a class occurs in the validation split but not in training.

    Raises:
        ValueError: unreadable, corrupt or pickle file; object arrays; missing keys
            (the message lists the keys present); no training images; wrong shapes;
            label count mismatch; labels out of range; too few samples to split;
            more data than ``max_bytes`` or than the memory available; NaN or Inf in
            the images; channels-last images (``channels_last=None``).
        TypeError: non-integer labels or non-numeric images.
    """
    path = os.fspath(path)
    check_val_fraction(val_fraction, who=_WHO)

    def split(t):
        if len(t) < 2:
            raise ValueError(f"{_WHO}: {path}: expected at least 2 samples to split; got {len(t)}")
        return stratified_split(t, val_fraction, seed=seed, who=f"{_WHO}: {path}")

    x, t, x_val, t_val, budget = _read(path, channels_last, max_bytes, limit=limit, mmap=True,
                                       allow_non_finite=allow_non_finite, split=split)
    warn_unseen_classes(t, t_val, who=_WHO, source=path)
    train, val = finish((x, t), (x_val, t_val), normalize=normalize, flatten=flatten,
                        one_hot_label=one_hot_label, budget=budget, who=_WHO, source=path,
                        keep_dtype=keep_dtype)
    return DataSplits(train, val, source=path)


def load_npz_whole(path: str | os.PathLike, normalize: bool | None = None, *, channels_last: bool | None = None,
                   max_bytes: int | None = None, limit: int | None = None, keep_dtype: bool = False,
                   allow_non_finite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The images to evaluate on: ``x_test``/``t_test`` if the file has them, else all of ``x``, ``t``.

    Args:
        path: the ``.npz`` file.
        normalize: None or True: uint8 images are scaled by 1/255; False: no scaling
            (as in :func:`load_npz_dataset`).
        channels_last: None: refuse images that look (N, H, W, C); True: transpose them
            to (N, C, H, W); False: take 4-d images as (N, C, H, W).
        max_bytes: cap on the array data read from the file (default as in
            :func:`load_npz_dataset`).
        limit: keep only the first ``limit`` samples; only those are read.
        keep_dtype: return the images in their stored dtype instead of float32.
        allow_non_finite: NaN or Inf in the images warns instead of raising.

    Returns:
        ``(x, t)``: x float32 (N, C, H, W) (as stored with ``keep_dtype``), t int64 (N,).
    """
    path = os.fspath(path)
    x, t, x_val, t_val, _ = _read(path, channels_last, max_bytes, limit=limit, mmap=True,
                                  allow_non_finite=allow_non_finite)
    if x_val is not None:
        x, t = x_val, t_val
    return (x if keep_dtype else to_float(x, normalize)), t
