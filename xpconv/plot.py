"""Pictures (needs the optional ``matplotlib``: ``pip install 'xpconv[plot]'``)."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike


def save_filter_grid(filters: np.ndarray, path: str | os.PathLike, *, columns: int = 8, title: str | None = None) -> None:
    """Draw filters as a grid of grey images, as the book's ``filter_show`` does.

    Args:
        filters: host array (FN, C, FH, FW); channel 0 of each filter is drawn,
            scaled to its own min..max.
        path: image file to write (the format follows the suffix, e.g. ``.png``).
        columns: images per row (at most the number of filters).
        title: a title above the grid, or None.
    """
    plt = _pyplot()
    if filters.ndim != 4:
        raise ValueError(f"save_filter_grid: expected filters (FN, C, FH, FW); got shape {filters.shape}")
    count = filters.shape[0]
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < count:
            ax.imshow(filters[i, 0], cmap="gray_r", interpolation="nearest")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_confusion(confusion: ArrayLike, path: str | os.PathLike, *, classes: Sequence[str] | None = None) -> None:
    """Draw a confusion matrix (rows: true class, columns: predicted) with its counts."""
    import numpy as np
    plt = _pyplot()
    c = np.asarray(confusion)
    k = c.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(1 + 0.5 * k, 1 + 0.5 * k))
    ax.imshow(c, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(c[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if c[i, j] > c.max() / 2 else "black")
    ax.set_xticks(range(k), names, rotation=90)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_misclassified(x: np.ndarray, t: np.ndarray, probs: np.ndarray, wrong: Sequence[int] | np.ndarray,
                       path: str | os.PathLike, *, limit: int = 40) -> None:
    """The book's ``misclassified_mnist.py``: the first ``limit`` misclassified images of
    ``x`` (N, C, H, W), each titled "true -> predicted".
    """
    plt = _pyplot()
    shown = list(wrong[:limit])
    columns = 10
    rows = max(1, math.ceil(len(shown) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns, 1.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, n in zip(axes.flat, shown):
        image = x[n]
        ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray_r",
                  interpolation="nearest")
        ax.set_title(f"{int(t[n])} -> {int(probs[n].argmax())}", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Loss and accuracy curves of a training history (rows of ``Trainer.history`` or of
    ``history.csv``: ``epoch``, ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``).
    """
    plt = _pyplot()

    def column(name):
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in history]
    epochs = column("epoch")
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, ax in (("loss", loss_ax), ("acc", acc_ax)):
        ax.plot(epochs, column(f"train_{name}"), marker="o", label="training")
        ax.plot(epochs, column(f"val_{name}"), marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean loss" if name == "loss" else "accuracy")
        ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("pictures need matplotlib: pip install 'xpconv[plot]'") from None
    return plt
