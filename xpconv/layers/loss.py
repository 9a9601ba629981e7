"""Softmax, cross-entropy and the book's ``SoftmaxWithLoss`` output layer.

Labels ``t`` come in two forms, as in the book:

* class indices, an integer array of shape (N,) with values in 0..K-1;
* targets of the same shape as the scores, (N, K): one-hot rows (or any
  probability rows); they are cast to the scores' dtype.

Labels must already be in the scores' library and on their device (xpconv never
moves data silently); only their dtype may differ.
"""
from __future__ import annotations

from array_api_compat import array_namespace, device

from .._checks import check_array, check_floating, check_ndim, check_same_place
from ..devices import device_scope

__all__ = ["softmax", "cross_entropy_error", "SoftmaxWithLoss"]


def softmax(x):
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


def cross_entropy_error(y, t):
    """Mean cross-entropy of predicted probabilities ``y`` against labels ``t`` (the book's).

    ``E = -1/N * sum_n sum_k t[n, k] * log(y[n, k] + 1e-7)``; the ``1e-7`` keeps
    ``log(0)`` finite, as in the book. From raw scores, :class:`SoftmaxWithLoss` is
    exact and stable (it works with log-softmax directly).

    Shapes:
        y: (N, K) or (K,) (one sample)    t: (N,) integer labels or (N, K) targets
        (for 1-D y: a 0-D label or (K,) targets)
        returns a 0-D array of y's dtype
    """
    who = "cross_entropy_error"
    check_floating(who, "y", y)
    if y.ndim == 1:
        xp = array_namespace(y)
        check_array(who, "t", t)
        y = xp.reshape(y, (1, y.shape[0]))
        t = array_namespace(t).reshape(t, (1,) + tuple(t.shape))
    check_ndim(who, "y", y, 2, "(N, K)")
    xp = array_namespace(y)
    with device_scope(y):
        logy = xp.log(y + 1e-7)
        return -_pick(who, logy, t, y_name="y") / y.shape[0]


class SoftmaxWithLoss:
    """Softmax followed by the mean cross-entropy loss (the book's output layer).

    The loss is computed from ``log_softmax(x) = x - max - log(sum(exp(x - max)))``,
    so it stays finite and exact for large scores (no ``log(y + 1e-7)``).

    Shape:
        forward(x, t):  x (N, K) scores, t (N,) integer labels or (N, K) targets
            ->  loss, a 0-D array of x's dtype; keeps ``y = softmax(x)``, ``t``, ``loss``
        backward(dout=1):  ->  dx = (y - onehot(t)) / N * dout, (N, K)

    With (N, K) targets, ``dx = (y - t) / N * dout``: exact when each row of ``t`` sums
    to 1 (one-hot or probability rows), as the book assumes.
    """

    def __init__(self):
        self.loss = None
        self.y = None      # softmax output
        self.t = None      # labels as given (integer (N,) or (N, K) targets)
        self._target = None  # (N, K) targets in x's dtype, for backward

    def forward(self, x, t):
        who = "SoftmaxWithLoss.forward"
        check_floating(who, "x", x)
        check_ndim(who, "x", x, 2, "(N, K)")
        xp = array_namespace(x)
        with device_scope(x):
            shifted = x - xp.max(x, axis=-1, keepdims=True)
            log_sum = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
            log_y = shifted - log_sum                                     # log_softmax, (N, K)
            self.loss = -_pick(who, log_y, t, y_name="x") / x.shape[0]
            self.y = xp.exp(log_y)
            self._target = _targets(x, t)
        self.t = t
        return self.loss

    def backward(self, dout=1):
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


def _check_labels(who: str, y, t, y_name: str) -> bool:
    """Validate ``t`` against scores/probabilities ``y`` (N, K); True for integer labels."""
    check_array(who, "t", t)
    check_same_place(who, y_name, y, same_dtype=False, t=t)   # labels: any dtype
    xp = array_namespace(y)
    N, K = y.shape
    if tuple(t.shape) == (N, K):
        if not (xp.isdtype(t.dtype, "real floating") or xp.isdtype(t.dtype, "integral")):
            raise TypeError(f"{who}: expected (N, K) targets t with a real dtype; got {t.dtype}")
        return False
    if t.ndim != 1 or t.shape[0] != N:
        raise ValueError(f"{who}: expected t as integer labels of shape (N,) = ({N},) or one-hot "
                         f"targets of shape (N, K) = ({N}, {K}) to match {y_name}; "
                         f"got {tuple(t.shape)}")
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(f"{who}: expected integer class labels t of shape (N,) (values 0..{K - 1}); "
                        f"got dtype {t.dtype}. Cast them, e.g. xp.astype(t, xp.int64); "
                        f"one-hot targets must have shape (N, K) = ({N}, {K})")
    if N and bool(xp.any((t < 0) | (t >= K))):
        bad = [int(v) for v in (xp.min(t), xp.max(t))]
        raise ValueError(f"{who}: expected class labels t in 0..{K - 1} (K={K} classes in "
                         f"{y_name}); got values in {bad[0]}..{bad[1]}")
    return True


def _onehot_mask(t, K: int, like):
    """Boolean (N, K) mask ``mask[n, k] = (t[n] == k)``, without integer-array indexing."""
    xp = array_namespace(like)
    classes = xp.arange(K, device=device(like))
    if t.dtype != classes.dtype:
        t = xp.astype(t, classes.dtype)
    return xp.reshape(t, (t.shape[0], 1)) == xp.reshape(classes, (1, K))


def _pick(who: str, log_y, t, y_name: str):
    """``sum_n sum_k t[n, k] * log_y[n, k]`` (0-D), with zero-weight entries contributing 0."""
    xp = array_namespace(log_y)
    if _check_labels(who, log_y, t, y_name):
        mask = _onehot_mask(t, log_y.shape[1], log_y)
        return xp.sum(xp.where(mask, log_y, 0.0))
    target = t if t.dtype == log_y.dtype else xp.astype(t, log_y.dtype)
    # where(): a zero target times log_y = -inf (a masked class) must add 0, not NaN
    return xp.sum(xp.where(target != 0, target * log_y, 0.0))


def _targets(x, t):
    """(N, K) targets in x's dtype (one-hot rows for integer labels)."""
    xp = array_namespace(x)
    if tuple(t.shape) == tuple(x.shape):
        return t if t.dtype == x.dtype else xp.astype(t, x.dtype)
    return xp.astype(_onehot_mask(t, x.shape[1], x), x.dtype)
