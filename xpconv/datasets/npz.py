"""User image-classification data stored in an ``.npz`` file.

Expected content (read without unpickling; object arrays and pickle files are refused):

* ``x``: images, (N, C, H, W) or (N, H, W) (a channel axis C=1 is added);
  any bool, integer or floating dtype.
* ``t``: integer class labels 0..K-1, shape (N,).
* optionally ``x_test`` and ``t_test`` (same layout): the validation split.
  Without them the last ``val_fraction`` of the samples validate (no shuffle).

Other members are ignored and never decompressed. Names, dtypes and shapes are
checked from the ``.npy`` headers before any data is read, and the data read is
capped (``max_bytes``; default ``XPCONV_MAX_LOAD_MB`` MiB if set, else 4 GiB).
"""

from __future__ import annotations

import os

import numpy as np

from ..serialization import max_load_bytes, open_npz, warn_non_finite

__all__ = ["load_npz_dataset"]

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


def _images(x: np.ndarray) -> np.ndarray:
    return x[:, None, :, :] if x.ndim == 3 else x


def _labels(t: np.ndarray, key: str, path: str) -> np.ndarray:
    """Labels 0..2**63-1 as int64 (range checked before the cast, so uint64 cannot wrap)."""
    if t.size and t.min() < 0:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected labels >= 0; got {int(t.min())}")
    if t.size and t.dtype.kind == "u" and int(t.max()) > _INT64_MAX:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected labels <= {_INT64_MAX}; got {int(t.max())}")
    return t.astype(np.int64)


def _to_float(x: np.ndarray, normalize: bool | None) -> np.ndarray:
    if x.dtype == np.uint8 and normalize in (None, True):
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def load_npz_dataset(path, normalize=None, flatten=False, one_hot_label=False, val_fraction=0.2, *,
                     max_bytes=None):
    """Load an image-classification data set from an ``.npz`` file.

    Args:
        path: the ``.npz`` file (see the module docstring for its keys).
        normalize: None or True: uint8 images are scaled by 1/255 to [0, 1]; other
            dtypes are converted to float32 unchanged. False: no scaling.
        flatten: if True, x is (N, C*H*W); else (N, C, H, W).
        one_hot_label: if True, t is one-hot float32 (N, K) with K = 1 + the
            largest label of both splits; else int64 (N,).
        val_fraction: fraction in (0, 1) of the samples (the last ones) used for
            validation when the file has no ``x_test``/``t_test``.
        max_bytes: cap on the array data read from the file (and on a one-hot
            array); default ``XPCONV_MAX_LOAD_MB`` MiB if set, else 4 GiB. Raise
            it for a larger data set you trust.

    Returns:
        ``((x_train, t_train), (x_test, t_test))``: x float32; the "test" slot is
        the validation split.

    Raises:
        ValueError: unreadable, corrupt or pickle file; object arrays; missing keys
            (the message lists the keys present); wrong shapes; label count
            mismatch; labels out of range; too few samples to split; more data
            than ``max_bytes``.
        TypeError: non-integer labels or non-numeric images.
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
        npz.check_budget(keys)
        arrays = {k: npz.read(k) for k in keys}
    warn_non_finite(arrays, who=_WHO, path=path)

    x = _images(arrays["x"])
    t = _labels(arrays["t"], "t", path)
    if all(has_test):
        x_val = _images(arrays["x_test"])
        t_val = _labels(arrays["t_test"], "t_test", path)
        if x_val.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{_WHO}: {path}: 'x_test' samples have shape {x_val.shape[1:]}; 'x' samples have {x.shape[1:]}"
            )
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"{_WHO}: expected 0 < val_fraction < 1; got {val_fraction}")
        n_val = min(max(int(round(len(x) * val_fraction)), 1), len(x) - 1)
        if n_val < 1:
            raise ValueError(f"{_WHO}: {path}: expected at least 2 samples to split; got {len(x)}")
        n_train = len(x) - n_val
        x, x_val = x[:n_train], x[n_train:]
        t, t_val = t[:n_train], t[n_train:]

    x, x_val = _to_float(x, normalize), _to_float(x_val, normalize)
    if flatten:
        x, x_val = x.reshape(len(x), -1), x_val.reshape(len(x_val), -1)
    if one_hot_label:
        k = 1 + max(int(t.max(initial=-1)), int(t_val.max(initial=-1)))
        if (len(t) + len(t_val)) * k * 4 > budget:
            raise ValueError(f"{_WHO}: {path}: one-hot labels for {k} classes would take "
                             f"{(len(t) + len(t_val)) * k * 4} bytes, more than max_bytes={budget}; "
                             "are the labels class indices 0..K-1?")
        t, t_val = (np.eye(k, dtype=np.float32)[labels] for labels in (t, t_val))
    return (x, t), (x_val, t_val)
