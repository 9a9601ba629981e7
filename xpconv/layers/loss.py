"""Softmax, cross-entropy and the book's ``SoftmaxWithLoss`` output layer.

Labels ``t`` follow one rule (``xpconv._checks.check_labels``), as in the book:

* class indices, an integer array of shape (N,) or (N, 1) with values in 0..K-1;
* targets of the same shape as the scores, (N, K): one-hot rows (or any
  probability rows); they are cast to the scores' dtype.

Labels must already be in the scores' library and on their device (xpconv never
moves data silently); only their dtype may differ. Host NumPy labels are range
checked (ValueError). Labels on a device are not, since reading a value back would
stop the device: a label outside 0..K-1 makes the loss NaN instead (never a silent
wrong number). An empty batch (N = 0) or no classes (K = 0) is a ValueError: there
is no mean loss (PyTorch's ``reduction="mean"`` gives NaN for N = 0).
"""
from __future__ import annotations

from typing import Any

from .._kernels.checks import check_array, check_floating, check_labels, check_ndim, check_same_place
from .._kernels.fastpaths import constant
from .._namespace import array_namespace, device
from .._typing import Array
from ..devices import device_scope, is_host_numpy

__all__ = ["softmax", "cross_entropy_error", "SoftmaxWithLoss"]


def softmax(x: Array) -> Array:
    """Softmax over the last axis, ``exp(x - max) / sum(exp(x - max))`` (never overflows).

    Shapes:
        x: (K,) or (N, K)  ->  same shape, each row summing to 1
    """
    who = "softmax"
    check_floating(who, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{who}: expected x of shape (K,) or (N, K); got a 0-D array")
    xp = array_namespace(x)
    with device_scope(x):
        e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
        return e / xp.sum(e, axis=-1, keepdims=True)


def cross_entropy_error(y: Array, t: Array) -> Array:
    """Mean cross-entropy of predicted probabilities ``y`` against labels ``t`` (the book's).

    ``E = -1/N * sum_n sum_k t[n, k] * log(y[n, k] + 1e-7)``; the ``1e-7`` keeps
    ``log(0)`` finite, as in the book. From raw scores, :class:`SoftmaxWithLoss` is
    exact and stable (it works with log-softmax directly).

    Shapes:
        y: (N, K) or (K,) (one sample)    t: (N,) or (N, 1) integer labels or (N, K)
        targets (for 1-D y: a 0-D label or (K,) targets)
        returns a 0-D array of y's dtype (NaN if a device label is outside 0..K-1)
    """
    who = "cross_entropy_error"
    check_floating(who, "y", y)
    if y.ndim == 1:
        xp = array_namespace(y)
        check_array(who, "t", t)
        y = xp.reshape(y, (1, y.shape[0]))
        t = array_namespace(t).reshape(t, (1,) + tuple(t.shape))
    check_ndim(who, "y", y, 2, "(N, K)")
    t = _labels(who, y, t, "y")
    xp = array_namespace(y)
    with device_scope(y):
        log_y = xp.log(y + 1e-7)
        if t.ndim == 2:
            return -_weighted_sum(_cast(t, y), log_y) / y.shape[0]
        mask = _onehot(t, y.shape[1], y)
        return _nan_if_missing(-xp.sum(xp.where(mask, log_y, 0.0)) / y.shape[0], mask, t)


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy loss (the book's output layer).

    The loss is computed from ``log_softmax(x) = s - log(sum_k exp(s))`` with
    ``s = x - max(x)``, so it stays finite and exact for large scores (no
    ``log(y + 1e-7)``). For integer labels,
    ``L = -sum_n log_p[n, t[n]] / N`` with ``log_p = s - log(sum_k exp(s))``.

    Shape:
        forward(x, t):  x (N, K) scores, t (N,) or (N, 1) integer labels or (N, K) targets
            ->  loss, a 0-D array of x's dtype; keeps ``y = softmax(x)``, ``t``, ``loss``.
            N = 0 or K = 0: ValueError. A device label outside 0..K-1: the loss is NaN.
        backward(dout=1):  ->  dx = (y - onehot(t)) / N * dout, (N, K)

    With (N, K) targets, ``dx = (y - t) / N * dout``: exact when each row of ``t`` sums
    to 1 (one-hot or probability rows), as the book assumes.
    """

    def __init__(self):
        self.loss: Any = None
        self.y: Any = None      # softmax output
        self.t: Any = None      # labels as given (integer (N,) or (N, 1), or (N, K) targets)
        self._target: Any = None  # (N, K) targets in x's dtype, for backward
        self._classes: Any = None  # (1, K) row 0..K-1, kept between calls (one op less per step)

    def forward(self, x: Array, t: Array) -> Array:
        who = "SoftmaxWithLoss.forward"
        check_floating(who, "x", x)
        check_ndim(who, "x", x, 2, "(N, K)")
        labels = _labels(who, x, t, "x")
        xp = array_namespace(x)
        N = x.shape[0]
        with device_scope(x):
            shifted = x - xp.max(x, axis=1, keepdims=True)                  # s, (N, K)
            e = xp.exp(shifted)
            total = xp.sum(e, axis=1, keepdims=True)                        # (N, 1)
            self.y = e / total
            if labels.ndim == 2:                                            # (N, K) targets
                self._target = _cast(labels, x)
                self.loss = -_weighted_sum(self._target, shifted - xp.log(total)) / N
            else:
                mask = xp.reshape(labels, (N, 1)) == self._class_row(labels, x)   # (N, K) one-hot
                self._target = xp.astype(mask, x.dtype)
                log_p = shifted - xp.log(total)                             # log_softmax, (N, K)
                # the other classes add 0; a row without its label (a device label outside
                # 0..K-1) adds NaN instead (host NumPy labels were range checked)
                other = 0.0 if is_host_numpy(labels) else _nan_if_empty_row(mask, x)
                self.loss = xp.sum(xp.where(mask, log_p, other)) / (-N)     # -sum_n log_p[n, t[n]] / N
        self.t = t
        return self.loss

    def backward(self, dout: Array | float = 1) -> Array:
        who = "SoftmaxWithLoss.backward"
        if self.y is None:
            raise RuntimeError(f"{who}: call forward first")
        _check_scalar_dout(who, dout, self.y)
        if isinstance(dout, (int, float)):
            dout = float(dout)   # a NumPy float64 scalar would promote float32 results
        with device_scope(self.y):
            return (self.y - self._target) * (dout / self.y.shape[0])

    def __repr__(self) -> str:
        return "SoftmaxWithLoss()"

    def _class_row(self, labels, x):
        """(1, K) classes 0..K-1 in the labels' dtype on x's device, built once."""
        row, K = self._classes, x.shape[1]
        if (row is None or row.shape[1] != K or row.dtype != labels.dtype
                or array_namespace(row) is not array_namespace(x) or device(row) != device(x)):
            row = self._classes = _onehot_classes(labels, K, x)
        return row


# ---------------------------------------------------------------------------- helpers

def _check_scalar_dout(who: str, dout, ref) -> None:
    """``dout`` is a real number or a 0-D array with ``ref``'s library, device and dtype."""
    if isinstance(dout, bool) or not (isinstance(dout, (int, float)) or hasattr(dout, "shape")):
        raise TypeError(f"{who}: expected dout to be a number or a 0-D array; got {dout!r}")
    if isinstance(dout, (int, float)):
        return
    check_floating(who, "dout", dout)
    check_same_place(who, "the loss", ref, dout=dout)
    if dout.ndim != 0:
        raise ValueError(f"{who}: expected dout to be a number or a 0-D array (the loss is a "
                         f"scalar); got shape {tuple(dout.shape)}")


def _labels(who: str, scores, t, name: str):
    """``t`` by the one rule for scores (N, K), in their library and on their device."""
    N, K = scores.shape
    if N == 0 or K == 0:
        raise ValueError(f"{who}: expected {name} of shape (N, K) with N >= 1 samples and K >= 1 "
                         f"classes (an empty batch has no mean loss); got {tuple(scores.shape)}")
    check_array(who, "t", t)
    check_same_place(who, name, scores, same_dtype=False, t=t)   # labels: any dtype
    return check_labels(who, t, N, K)


def _onehot_classes(t, K: int, like):
    """(1, K) row ``0..K-1`` in ``t``'s dtype on ``like``'s device."""
    xp = array_namespace(like)
    return xp.reshape(xp.arange(K, dtype=t.dtype, device=device(like)), (1, K))


def _onehot(t, K: int, like):
    """Boolean (N, K) mask ``mask[n, k] = (t[n] == k)``, without integer-array indexing."""
    return array_namespace(like).reshape(t, (t.shape[0], 1)) == _onehot_classes(t, K, like)


def _nan_if_missing(loss, onehot, t):
    """``loss``, or NaN when a row of ``onehot`` is empty (a label outside 0..K-1), branch-free.

    Host NumPy labels were range checked already; only device labels need it.
    """
    if is_host_numpy(t):
        return loss
    xp = array_namespace(loss)
    found = xp.sum(onehot if onehot.dtype == loss.dtype else xp.astype(onehot, loss.dtype))
    return xp.where(found == t.shape[0], loss, float("nan"))          # found: labels in 0..K-1


def _nan_if_empty_row(mask, like):
    """(N, 1) of ``like``'s dtype: 0 for a row of the boolean (N, K) ``mask`` holding a True,
    NaN for an empty row; branch-free, 2 ops (the 0 and the NaN are device constants).
    """
    xp = array_namespace(like)
    return xp.where(xp.any(mask, axis=1, keepdims=True), constant(0, like), constant(float("nan"), like))


def _cast(t, like):
    """``t`` in ``like``'s dtype (no copy when it already is)."""
    return t if t.dtype == like.dtype else array_namespace(like).astype(t, like.dtype)


def _weighted_sum(target, log_y):
    """``sum_n sum_k target[n, k] * log_y[n, k]`` (0-D), zero-weight entries adding 0."""
    xp = array_namespace(log_y)
    # where(): a zero target times log_y = -inf (a masked class) must add 0, not NaN
    return xp.sum(xp.where(target != 0, target * log_y, 0.0))
