"""Classification metrics of a model on labelled data: accuracy, mean loss, the confusion
matrix and per-class precision, recall and F1 (host NumPy; the model's scores are read
back once per batch).

    confusion[i, j] = number of samples of true class i predicted as j   (rows: true class)
    precision_k = C[k, k] / sum_i C[i, k]    recall_k = C[k, k] / sum_j C[k, j]
    F1_k = 2 precision_k recall_k / (precision_k + recall_k)     (0 where undefined)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._typing import Array
from .devices import to_numpy

if TYPE_CHECKING:
    from .network import Sequential

__all__ = ["Evaluation", "evaluate", "confusion_matrix"]


@dataclass
class Evaluation:
    """What :func:`evaluate` measured. ``per_class``: one dict per class with
    ``precision``, ``recall``, ``f1`` and ``support`` (true samples of the class).
    """

    n: int
    accuracy: float
    loss: float
    confusion: list[list[int]]
    per_class: list[dict]
    classes: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A text report: totals, then one line per class."""
        names = self.classes or [str(k) for k in range(len(self.confusion))]
        width = max(5, *(len(n) for n in names))
        lines = [f"accuracy {self.accuracy:.4f}  mean loss {self.loss:.4f}  on {self.n} samples", "",
                 f"{'class':>{width}}  precision  recall      f1  support"]
        for name, c in zip(names, self.per_class, strict=True):
            lines.append(f"{name:>{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}"
                         f"  {c['support']:7d}")
        return "\n".join(lines)


def confusion_matrix(t: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(k, k) int64 counts, rows the true class: ``C[t[n], predicted[n]] += 1``."""
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (np.asarray(t, np.int64), np.asarray(predicted, np.int64)), 1)
    return out


def evaluate(net: Sequential, x: Array, t: Array, *, batch_size: int = 500,
             classes: Sequence[str] | None = None) -> tuple[Evaluation, np.ndarray]:
    """Evaluate ``net`` on (x, t): x (N, C, H, W) host data (uint8 by the model's rule),
    t (N,) integer labels. Returns the :class:`Evaluation` and the (N, K) float64
    probabilities (host), for pictures such as the misclassified grid.
    """
    t = np.asarray(t).astype(np.int64).reshape(-1)
    n = len(t)
    if n == 0:
        raise ValueError("evaluate: no samples")
    probs = np.concatenate([to_numpy(net.predict_proba(x[s:s + batch_size])).astype(np.float64)
                            for s in range(0, n, batch_size)])
    k = probs.shape[1]
    if t.min() < 0 or t.max() >= k:
        raise ValueError(f"evaluate: labels must be 0..{k - 1} for this {k}-class model; got {t.min()}..{t.max()}")
    predicted = probs.argmax(axis=1)
    confusion = confusion_matrix(t, predicted, k)
    loss = float(-np.mean(np.log(probs[np.arange(n), t] + 1e-7)))     # the book's cross-entropy
    per_class = []
    for c in range(k):
        tp, col, row = confusion[c, c], confusion[:, c].sum(), confusion[c, :].sum()
        precision = tp / col if col else 0.0
        recall = tp / row if row else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"precision": float(precision), "recall": float(recall), "f1": float(f1),
                          "support": int(row)})
    ev = Evaluation(n=n, accuracy=float((predicted == t).mean()), loss=loss, confusion=confusion.tolist(),
                    per_class=per_class, classes=list(classes) if classes is not None else None)
    return ev, probs
