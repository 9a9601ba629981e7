"""Image layout and scaling shared by the loaders.

* Layout: xpconv takes images channels-first, ``x: (N, C, H, W)``. ``(N, H, W)`` gets a
  channel axis ``C = 1``. Channels-last data ``(N, H, W, C)`` with ``C`` in {1, 3} and
  ``H, W > 4`` (as Keras, PIL and TensorFlow store it) is recognised and refused with a
  clear error, unless ``channels_last=True`` asks for the transpose
  ``(N, H, W, C) -> (N, C, H, W)``.
* Scaling: 8-bit images (uint8) become float32 ``x / 255`` in [0, 1]; any other dtype
  becomes float32 unchanged.
"""
from __future__ import annotations

import numpy as np

from .._typing import Splits

__all__ = ["as_nchw", "finish", "looks_channels_last", "to_float"]


def looks_channels_last(shape: tuple[int, ...]) -> bool:
    """True for a 4-d shape that reads as (N, H, W, C): C in {1, 3}, H > 4 and W > 4."""
    return len(shape) == 4 and shape[3] in (1, 3) and shape[1] > 4 and shape[2] > 4


def as_nchw(x: np.ndarray, *, channels_last: bool | None = None, who: str, source: str) -> np.ndarray:
    """Images (N, C, H, W) from (N, C, H, W), (N, H, W) or, with ``channels_last=True``, (N, H, W, C).

    Args:
        x: host images.
        channels_last: None: refuse data that looks channels-last (see the module
            docstring); True: transpose (N, H, W, C) to (N, C, H, W); False: take a 4-d
            ``x`` as (N, C, H, W) whatever its shape.
        who: prefix of error messages: the calling function.
        source: the file the images come from, named in error messages.

    Raises:
        ValueError: ``x`` looks channels-last and ``channels_last`` is None; not 3-d or 4-d.
    """
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(f"{who}: {source}: expected images (N, C, H, W) or (N, H, W); got shape {x.shape}")
    if channels_last:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if channels_last is None and looks_channels_last(x.shape):
        n, h, w, c = x.shape
        raise ValueError(
            f"{who}: {source}: images of shape {x.shape} look channels-last (N, H, W, C) = "
            f"({n}, {h}, {w}, {c}); xpconv takes (N, C, H, W): pass channels_last=True "
            f"(xpconv train --channels-last) to transpose them, or channels_last=False to take "
            f"them as they are: {h} channels of {w}x{c} pixels")
    return x


def to_float(x: np.ndarray, normalize: bool | None = True) -> np.ndarray:
    """float32 images: uint8 scaled by 1/255 (unless ``normalize`` is False); others unchanged."""
    from ..memory import require
    require(x.size * 4, who="to_float", what=f"float32 images {x.shape}",
            hint="keep them in their stored dtype (load_dataset(..., keep_dtype=True); xpconv train does)")
    y = x.astype(np.float32)
    if x.dtype == np.uint8 and normalize in (None, True):
        y /= np.float32(255.0)     # in place: no second float copy
    return y


def finish(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *, normalize: bool | None,
           flatten: bool, one_hot_label: bool, budget: int, who: str, source: str,
           keep_dtype: bool = False) -> Splits:
    """Scale, flatten and one-hot both parts: ``((x, t), (x_val, t_val))`` as the book returns them
    (``keep_dtype``: the images stay in their stored dtype).
    """
    (x, t), (x_val, t_val) = train, val
    if not keep_dtype:
        x, x_val = to_float(x, normalize), to_float(x_val, normalize)
    if flatten:
        x, x_val = x.reshape(len(x), -1), x_val.reshape(len(x_val), -1)
    if one_hot_label:
        k = 1 + max(int(t.max(initial=-1)), int(t_val.max(initial=-1)))
        if (len(t) + len(t_val)) * k * 4 > budget:
            raise ValueError(f"{who}: {source}: one-hot labels for {k} classes would take "
                             f"{(len(t) + len(t_val)) * k * 4} bytes, more than max_bytes={budget}; "
                             "are the labels class indices 0..K-1?")
        t, t_val = (np.eye(k, dtype=np.float32)[labels] for labels in (t, t_val))
    return (x, t), (x_val, t_val)
