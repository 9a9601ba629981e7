"""Choose a data set by name or path.

Names: ``"mnist"``, ``"mnist-bundled"``, ``"fashion-mnist"``, ``"cifar10"``; paths: a
``.npz`` file (:func:`~xpconv.datasets.npz.load_npz_dataset`) or a folder with one
subfolder of images per class (:func:`~xpconv.datasets.folder.load_image_folder`).
"""

from __future__ import annotations

import os

import numpy as np

from .folder import load_image_folder, load_image_folder_arrays
from .layout import finish
from .mnist import load_bundled_mnist, load_mnist
from .named import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    load_cifar10,
    load_fashion_mnist,
)
from .npz import load_npz_dataset, load_npz_whole
from .result import DataSplits
from .split import check_val_fraction

__all__ = ["DATASET_NAMES", "load_dataset", "load_evaluation_data"]

DATASET_NAMES = ("mnist", "mnist-bundled", "fashion-mnist", "cifar10", "<path>.npz", "<folder of class folders>")

_DIGITS = tuple(str(d) for d in range(10))
_NAMED = {"fashion-mnist": (load_fashion_mnist, FASHION_MNIST_CLASSES), "cifar10": (load_cifar10, CIFAR10_CLASSES)}


def load_dataset(name: str | os.PathLike, *, flatten: bool = False, one_hot_label: bool = False,
                 data_dir: str | os.PathLike | None = None, progressbar: bool | None = None,
                 val_fraction: float = 0.2, seed: int = 0, channels_last: bool | None = None,
                 size: tuple[int, int] | None = None, limit: int | None = None, keep_dtype: bool = False,
                 allow_non_finite: bool = False) -> DataSplits:
    """Load a data set by name or path, normalized to float32.

    Args:
        name: ``"mnist"`` (download the full set), ``"mnist-bundled"`` (offline,
            8,000 / 2,000 split of the bundled test set), ``"fashion-mnist"``,
            ``"cifar10"`` (downloaded once, checksummed), a path ending in ``.npz``
            (see :func:`load_npz_dataset`) or a folder with one subfolder of images
            per class (see :func:`load_image_folder`).
        flatten: if True, x is (N, C*H*W); else (N, C, H, W).
        one_hot_label: if True, t is one-hot float32 (N, K); else int64 (N,).
        data_dir: download and cache folder (default ``$XPCONV_DATA`` or
            ``pooch.os_cache("xpconv")``).
        progressbar: download progress bars (None: when stderr is a terminal).
        val_fraction: for data without its own test split (an ``.npz`` with only
            ``x`` and ``t``, a folder): the share drawn, per class, for validation.
            The named sets keep their official splits.
        seed: seed of that draw.
        channels_last: for an ``.npz``: None refuses (N, H, W, C) images with a clear
            error, True transposes them, False takes 4-d images as (N, C, H, W).
        size: for a folder: ``(H, W)`` to resize every image to.
        limit: keep only the first ``limit`` samples of each split (of an ``.npz``,
            only those are read).
        keep_dtype: images stay in their stored dtype (8-bit images stay uint8, a
            quarter of float32; an ``.npz``'s stored members are memory-mapped);
            :class:`~xpconv.Trainer` and the models scale uint8 by 1/255 per batch.
        allow_non_finite: for an ``.npz``: NaN or Inf in the images warns instead of
            raising.

    Returns:
        ``((x_train, t_train), (x_test, t_test))`` as a :class:`DataSplits` (a 2-tuple)
        whose ``classes`` names the labels (None for an ``.npz``); x float32, 8-bit
        images scaled to [0, 1] (with ``keep_dtype``: as stored).

    Raises:
        ValueError: unknown name (the message lists the choices); see the loaders.
        DatasetUnavailableError: a download failed (offline).
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    check_val_fraction(val_fraction, who="load_dataset")
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"load_dataset: expected limit to be an int >= 1 or None; got {limit!r}")
    if isinstance(name, str) and name.lower().endswith(".npz"):
        return load_npz_dataset(name, normalize=True, flatten=flatten, one_hot_label=one_hot_label,
                                val_fraction=val_fraction, seed=seed, channels_last=channels_last,
                                limit=limit, keep_dtype=keep_dtype, allow_non_finite=allow_non_finite)
    if name == "mnist":
        data = load_mnist(normalize=not keep_dtype, flatten=flatten, one_hot_label=one_hot_label,
                          data_dir=data_dir, progressbar=progressbar)
        data = DataSplits(*data, classes=_DIGITS, source=name)
    elif name == "mnist-bundled":
        data = load_bundled_mnist(normalize=not keep_dtype, flatten=flatten, one_hot_label=one_hot_label)
        data = DataSplits(*data, classes=_DIGITS, source=name)
    elif name in _NAMED:
        loader, classes = _NAMED[name]
        train, test = loader(data_dir, progressbar=progressbar)
        train, test = finish(train, test, normalize=True, flatten=flatten, one_hot_label=one_hot_label,
                             budget=1 << 62, who="load_dataset", source=name, keep_dtype=keep_dtype)
        data = DataSplits(train, test, classes=classes, source=name)
    elif isinstance(name, str) and os.path.isdir(name):
        data = load_image_folder(name, normalize=True, flatten=flatten, one_hot_label=one_hot_label,
                                 val_fraction=val_fraction, seed=seed, size=size, data_dir=data_dir,
                                 keep_dtype=keep_dtype)
    else:
        raise ValueError(f"load_dataset: expected one of {', '.join(DATASET_NAMES)}; got {name!r}"
                         + (" (no such folder)" if isinstance(name, str) and os.sep in name else ""))
    if limit is None:
        return data
    (x, t), (x_test, t_test) = data
    return DataSplits((x[:limit], t[:limit]), (x_test[:limit], t_test[:limit]), classes=data.classes,
                      source=data.source)


def load_evaluation_data(name: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                         progressbar: bool | None = None, channels_last: bool | None = None,
                         size: tuple[int, int] | None = None, keep_dtype: bool = False,
                         ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """The labelled images to evaluate a model on: ``(x, t, classes)``, x float32 (N, C, H, W).

    * a named set: its test split (``mnist-bundled``: its 2,000 validation images);
    * an ``.npz`` with ``x_test``/``t_test``: those; with only ``x`` and ``t``: all of it;
    * a folder of class folders: all of it.

    Args:
        name: a data set name, an ``.npz`` path or a folder of class folders (as in
            :func:`load_dataset`).
        data_dir: download and cache folder (default ``$XPCONV_DATA`` or
            ``pooch.os_cache("xpconv")``).
        progressbar: download progress bars (None: when stderr is a terminal).
        channels_last: for an ``.npz``: None refuses (N, H, W, C) images, True transposes
            them, False takes 4-d images as (N, C, H, W).
        size: for a folder: ``(H, W)`` to resize every image to.
        keep_dtype: images stay in their stored dtype (8-bit images stay uint8).

    Returns:
        ``(x, t, classes)``: t int64 (N,); ``classes`` the label names or None.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if isinstance(name, str) and name.lower().endswith(".npz"):
        x, t = load_npz_whole(name, channels_last=channels_last, keep_dtype=keep_dtype)
        return x, t, None
    if isinstance(name, str) and name not in _NAMED and name not in ("mnist", "mnist-bundled") \
            and os.path.isdir(name):
        x, t, classes = load_image_folder_arrays(name, size=size, data_dir=data_dir)
        (x, t), _ = finish((x, t), (x[:0], t[:0]), normalize=True, flatten=False, one_hot_label=False,
                           budget=1 << 62, who="load_evaluation_data", source=name, keep_dtype=keep_dtype)
        return x, t, tuple(classes)
    data = load_dataset(name, data_dir=data_dir, progressbar=progressbar, keep_dtype=keep_dtype)
    (x, t) = data[1]
    return x, t, data.classes
