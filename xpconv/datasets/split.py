"""The validation split of a data set that has none: a seeded, stratified shuffle.

Rule (used by the ``.npz`` and image-folder loaders when the data holds no
``x_test``/``t_test``):

* ``n_val = round(N * val_fraction)`` samples validate, at least 1 and at most N - 1;
* each class gives its share: ``n_val * n_c / N`` rounded by largest remainder, so
  the class proportions of both parts follow the whole set's;
* every class keeps at least one sample in training, so a class with a single
  sample goes to training;
* which samples of a class validate, and the order of both parts, are drawn with
  ``numpy.random.default_rng(seed)``: the same data and seed give the same split on
  every machine.

A data set sorted by class (all 0s, then all 1s, ...) therefore splits as well as a
shuffled one; taking the last 20% instead would validate on classes never trained on.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["check_val_fraction", "stratified_split", "warn_unseen_classes"]


def check_val_fraction(val_fraction: float, *, who: str) -> float:
    """``val_fraction`` as a float in (0, 1), or ValueError naming ``who``."""
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: expected val_fraction to be a number in (0, 1); got {val_fraction!r}") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"{who}: expected 0 < val_fraction < 1; got {val_fraction}")
    return value


def stratified_split(t: np.ndarray, val_fraction: float = 0.2, *, seed: int = 0,
                     who: str = "stratified_split") -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train/validation split (see the module docstring).

    Args:
        t: integer class labels, shape (N,).
        val_fraction: share of the samples that validate, in (0, 1).
        seed: seed of the host generator that picks the validation samples.
        who: prefix of error messages.

    Returns:
        ``(train_idx, val_idx)``: int64 index arrays, each in a seeded random order (so
        that the first samples of a part, e.g. ``xpconv train --limit``, mix the
        classes even when the data is stored sorted by class); together they are
        ``0..N-1`` once each.

    Raises:
        ValueError: fewer than 2 samples, ``val_fraction`` outside (0, 1), or no class
            with 2 or more samples (nothing could validate without leaving a class
            out of training).
    """
    t = np.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"{who}: expected labels of shape (N,); got {t.shape}")
    fraction = check_val_fraction(val_fraction, who=who)
    n = len(t)
    if n < 2:
        raise ValueError(f"{who}: expected at least 2 samples to split into training and validation; got {n}")
    classes, inverse, counts = np.unique(t, return_inverse=True, return_counts=True)
    n_val = min(max(round(n * fraction), 1), n - 1)
    # largest-remainder allocation of n_val over the classes, each capped at count - 1
    cap = counts - 1
    exact = n_val * counts / n
    share = np.minimum(np.floor(exact).astype(np.int64), cap)
    left = n_val - int(share.sum())
    order = np.lexsort((np.arange(len(classes)), -(exact - np.floor(exact))))   # largest remainder first
    while left > 0 and (share < cap).any():
        for c in order:
            if left == 0:
                break
            if share[c] < cap[c]:
                share[c] += 1
                left -= 1
    if share.sum() == 0:
        raise ValueError(f"{who}: cannot hold out a validation split: each of the {len(classes)} classes has "
                         f"a single sample, and every class keeps one for training; add samples or give "
                         f"an explicit validation set (x_test, t_test)")
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(n, dtype=bool)
    for c in range(len(classes)):
        if share[c]:
            members = np.flatnonzero(inverse == c)
            val_mask[rng.choice(members, size=int(share[c]), replace=False)] = True
    train_idx, val_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    return rng.permutation(train_idx).astype(np.int64), rng.permutation(val_idx).astype(np.int64)


def warn_unseen_classes(t_train: np.ndarray, t_val: np.ndarray, *, who: str, source: str) -> None:
    """``UserWarning`` when validation holds classes that training lacks (they can never be right)."""
    unseen = np.setdiff1d(np.asarray(t_val), np.asarray(t_train))
    if unseen.size:
        shown = ", ".join(str(int(c)) for c in unseen[:10]) + (", ..." if unseen.size > 10 else "")
        warnings.warn(f"{who}: {source}: {unseen.size} class(es) in the validation split never occur in "
                      f"training ({shown}); the model cannot learn them", UserWarning, stacklevel=3)
