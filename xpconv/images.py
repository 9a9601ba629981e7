"""Images and arrays as model input, for ``xpconv predict``: PNG/JPEG through Pillow
(imported only here; ``pip install "xpconv[images]"``) and ``.npy`` arrays.

8-bit images stay uint8 (the model scales them by 1/255, as the data loaders do); float
arrays are taken as they are.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["read_input"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_input(path: str | os.PathLike, channels: int, size: tuple[int, int], *, resize: bool = False) -> np.ndarray:
    """One file as model input: an image -> (1, C, H, W) uint8; an ``.npy`` -> (1, C, H, W)
    for one sample ((C, H, W) or (H, W)) or (N, C, H, W) for a batch.

    Args:
        path: an image file (PNG, JPEG, ...; see ``IMAGE_SUFFIXES``) or an ``.npy`` array.
        channels: the model's C (1: grayscale, 3: RGB; images are converted).
        size: the model's (H, W); an image of another size is an error, or resized
            (bilinear) with ``resize``.
        resize: resize an image of another size to ``size`` instead of refusing it
            (images only; an ``.npy`` must fit).

    Raises:
        ValueError: unreadable or corrupt file, or a size/shape that does not fit.
    """
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
        if x.ndim == 2 and channels == 1:
            x = x[None]
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != (channels, *size):
            raise ValueError(f"{path}: array of shape {x.shape}; the model takes ({channels}, {size[0]}, "
                             f"{size[1]}) per sample, (N, {channels}, {size[0]}, {size[1]}) for a batch")
        return x
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise ValueError(f"{path}: expected an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy array")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ValueError('reading images needs Pillow: pip install "xpconv[images]"') from None
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size[1], size[0]):
                if not resize:
                    raise ValueError(f"{path}: image of {img.size[0]}x{img.size[1]} pixels; the model takes "
                                     f"{size[1]}x{size[0]} (use --resize)")
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            x = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    if channels not in (1, 3):
        raise ValueError(f"{path}: the model takes {channels} channels; images give 1 (L) or 3 (RGB)")
    x = x[None, None] if channels == 1 else x.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x)
