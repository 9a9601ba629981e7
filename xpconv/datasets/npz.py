"""User image-classification data stored in an ``.npz`` file.

Expected content (read with ``allow_pickle=False``; pickled objects are refused):

* ``x``: images, (N, C, H, W) or (N, H, W) (a channel axis C=1 is added);
  any bool, integer or floating dtype.
* ``t``: integer class labels 0..K-1, shape (N,).
* optionally ``x_test`` and ``t_test`` (same layout): the validation split.
  Without them the last ``val_fraction`` of the samples validate (no shuffle).
"""

from __future__ import annotations

import os

import numpy as np

from ..serialization import load_arrays

__all__ = ["load_npz_dataset"]

_WHO = "load_npz_dataset"


def _images(x: np.ndarray, key: str, path: str) -> np.ndarray:
    if x.dtype.kind not in "buif":
        raise TypeError(f"{_WHO}: {path}: {key!r}: expected a bool, integer or float dtype; got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim != 4:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected shape (N, C, H, W) or (N, H, W); got {x.shape}")
    return x


def _labels(t: np.ndarray, key: str, n: int, path: str) -> np.ndarray:
    if t.dtype.kind not in "iu":
        raise TypeError(f"{_WHO}: {path}: {key!r}: expected integer class labels; got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected shape (N,); got {t.shape}")
    if len(t) != n:
        raise ValueError(f"{_WHO}: {path}: expected one label per image: {n} images but {len(t)} labels in {key!r}")
    if t.size and t.min() < 0:
        raise ValueError(f"{_WHO}: {path}: {key!r}: expected labels >= 0; got {int(t.min())}")
    return t.astype(np.int64)


def _to_float(x: np.ndarray, normalize: bool | None) -> np.ndarray:
    if x.dtype == np.uint8 and normalize in (None, True):
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def load_npz_dataset(path, normalize=None, flatten=False, one_hot_label=False, val_fraction=0.2):
    """Load an image-classification data set from an ``.npz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file (see the module docstring for its keys).
    normalize : bool or None
        None or True: uint8 images are scaled by 1/255 to [0, 1]; other
        dtypes are converted to float32 unchanged.  False: no scaling.
    flatten : bool
        If True, x is (N, C*H*W); else (N, C, H, W).
    one_hot_label : bool
        If True, t is one-hot float32 (N, K) with K = 1 + the largest label
        of both splits; else int64 (N,).
    val_fraction : float
        Fraction in (0, 1) of the samples (the last ones) used for
        validation when the file has no ``x_test``/``t_test``.

    Returns
    -------
    ((x_train, t_train), (x_test, t_test))
        x float32; the "test" slot is the validation split.

    Raises
    ------
    ValueError
        Unreadable, corrupt or pickle file; object arrays; missing keys
        (the message lists the keys present); wrong shapes; label count
        mismatch; negative labels; too few samples to split.
    TypeError
        Non-integer labels or non-numeric images.
    """
    path = os.fspath(path)
    arrays, _ = load_arrays(path, who=_WHO)
    present = sorted(arrays)
    missing = [k for k in ("x", "t") if k not in arrays]
    has_test = [k in arrays for k in ("x_test", "t_test")]
    if any(has_test) and not all(has_test):
        missing += [k for k in ("x_test", "t_test") if k not in arrays]
    if missing:
        raise ValueError(
            f"{_WHO}: {path}: missing key(s) {', '.join(missing)}: expected 'x' and 't' "
            f"(and optionally both 'x_test' and 't_test'); the file holds {present or 'nothing'}"
        )

    x = _images(arrays["x"], "x", path)
    t = _labels(arrays["t"], "t", len(x), path)
    if all(has_test):
        x_val = _images(arrays["x_test"], "x_test", path)
        t_val = _labels(arrays["t_test"], "t_test", len(x_val), path)
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
        t, t_val = (np.eye(k, dtype=np.float32)[labels] for labels in (t, t_val))
    return (x, t), (x_val, t_val)
