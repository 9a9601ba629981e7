"""Choose a data set by name: ``"mnist"``, ``"mnist-bundled"`` or a ``.npz`` path."""

from __future__ import annotations

import os

from .mnist import load_bundled_mnist, load_mnist
from .npz import load_npz_dataset

__all__ = ["load_dataset", "DATASET_NAMES"]

DATASET_NAMES = ("mnist", "mnist-bundled", "<path>.npz")


def load_dataset(name, *, flatten=False, one_hot_label=False, data_dir=None, progressbar=None):
    """Load a data set by name, normalized to float32.

    Parameters
    ----------
    name : str or os.PathLike
        ``"mnist"`` (download the full set), ``"mnist-bundled"`` (offline,
        8,000 / 2,000 split of the bundled test set), or a path ending in
        ``.npz`` (see :func:`load_npz_dataset`).
    flatten : bool
        If True, x is (N, C*H*W); else (N, C, H, W).
    one_hot_label : bool
        If True, t is one-hot float32 (N, K); else int64 (N,).
    data_dir : str or os.PathLike, optional
        Download cache for ``"mnist"``; ignored otherwise.
    progressbar : bool or None
        Download progress bars for ``"mnist"`` (see :func:`load_mnist`).

    Returns
    -------
    ((x_train, t_train), (x_test, t_test))
        x float32.

    Raises
    ------
    ValueError
        Unknown name (the message lists the choices).
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if name == "mnist":
        return load_mnist(normalize=True, flatten=flatten, one_hot_label=one_hot_label, data_dir=data_dir,
                          progressbar=progressbar)
    if name == "mnist-bundled":
        return load_bundled_mnist(normalize=True, flatten=flatten, one_hot_label=one_hot_label)
    if isinstance(name, str) and name.lower().endswith(".npz"):
        return load_npz_dataset(name, normalize=True, flatten=flatten, one_hot_label=one_hot_label)
    raise ValueError(f"load_dataset: expected one of {', '.join(DATASET_NAMES)}; got {name!r}")
