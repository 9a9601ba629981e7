"""Pictures (needs the optional ``matplotlib``: ``pip install 'xpconv[plot]'``)."""
from __future__ import annotations

import math


def save_filter_grid(filters, path, *, columns: int = 8, title: str | None = None) -> None:
    """Draw filters as a grid of grey images, as the book's ``filter_show`` does.

    Args:
        filters: host array (FN, C, FH, FW); channel 0 of each filter is drawn,
            scaled to its own min..max.
        path: image file to write (the format follows the suffix, e.g. ``.png``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("drawing filters needs matplotlib: pip install 'xpconv[plot]'") from None
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
