"""Batch normalization (the book's ``BatchNormalization``, per channel like PyTorch)."""
from __future__ import annotations

import math
from typing import Any

from .._kernels.checks import check_floating, check_grad, check_ndim, check_same_place
from .._namespace import array_namespace
from .._typing import Array
from ..devices import device_scope
from .shard import current_shard

__all__ = ["BatchNormalization"]


class BatchNormalization:
    """Batch normalization with learned scale ``gamma`` and shift ``beta``.

    ``out = gamma * (x - mean) / sqrt(var + eps) + beta``, per feature of a 2-D input and
    per channel of a 4-D input (statistics over N, H and W, like PyTorch's
    ``BatchNorm2d``; the book instead flattens 4-D input to (N, C*H*W) and normalises
    every pixel separately).

    Training (``train_flg=True``) normalises with the batch mean and the *biased*
    batch variance, then updates the running statistics as PyTorch does::

        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var  = momentum * running_var  + (1 - momentum) * var * m / (m - 1)

    where ``m`` is the number of values per feature (N, or N*H*W) and ``var * m/(m-1)``
    is the unbiased variance. The book's ``momentum`` is the weight of the *old*
    value, so the default 0.9 equals PyTorch's ``momentum=0.1``. Inference
    (``train_flg=False``) normalises with the running statistics. They start as
    zeros (mean) and ones (variance), like PyTorch, unless given.

    Backward (training), with ``xn`` the normalised input and means over the ``m``
    values of each feature::

        dx     = gamma / sqrt(var + eps) * (dout - mean(dout) - xn * mean(dout * xn))
        dgamma = sum(dout * xn),  dbeta = sum(dout)

    After an inference forward, backward treats the running statistics as constants:
    ``dx = gamma / sqrt(running_var + eps) * dout``.

    In a distributed step (``xpconv.distributed``; the Trainer with ``comm=`` sets it),
    where this rank holds rows ``[start, stop)`` of a global batch of B, the statistics are
    those of the whole global batch, as PyTorch's ``SyncBatchNorm`` does: the sums of ``x``
    and then of ``(x - mean)**2`` are summed over the ranks (two passes, as above), and in
    backward so are ``sum(dout)`` and ``sum(dout * xn)`` (weighted by ``n_r / B``, since each
    rank's ``dout`` is that of its own mean loss). So N ranks compute what one process
    computes on the global batch; ``m`` counts the values of the whole batch.

    Args:
        gamma, beta: scale and shift, (D,) or (C,).
        momentum: weight of the old running statistics, in [0, 1] (book: 0.9).
        running_mean, running_var: initial running statistics, (D,) or (C,).
        eps: added to the variance (PyTorch's default 1e-5; the book uses 1e-6).

    Shape:
        forward:  x (N, D) or (N, C, H, W)  ->  same shape
        backward: dout (same)  ->  dx (same); sets ``dgamma``, ``dbeta`` like gamma
    """

    def __init__(self, gamma: Array, beta: Array, momentum: float = 0.9, running_mean: Array | None = None,
                 running_var: Array | None = None, eps: float = 1e-5) -> None:
        who = "BatchNormalization"
        check_floating(who, "gamma", gamma)
        check_ndim(who, "gamma", gamma, 1, "(D,) or (C,)")
        check_same_place(who, "gamma", gamma, beta=beta, running_mean=running_mean,
                         running_var=running_var)
        if beta is None:
            raise TypeError(f"{who}: expected beta of shape {tuple(gamma.shape)}; got None")
        for name, arr in (("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
            if arr is not None and tuple(arr.shape) != tuple(gamma.shape):
                raise ValueError(f"{who}: expected {name} of shape {tuple(gamma.shape)} (gamma's); "
                                 f"got {tuple(arr.shape)}")
        if (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"{who}: expected momentum in [0, 1] (weight of the old running "
                             f"statistics; the book uses 0.9); got {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{who}: expected eps > 0; got {eps!r}")
        xp = array_namespace(gamma)
        with device_scope(gamma):
            if running_mean is None:
                running_mean = xp.zeros_like(gamma)
            if running_var is None:
                running_var = xp.ones_like(gamma)
        self.gamma, self.beta = gamma, beta
        self.momentum, self.eps = float(momentum), float(eps)
        self.running_mean, self.running_var = running_mean, running_var
        self.input_shape: Any = None
        self.batch_size: Any = None
        self.xn: Any = None                 # normalised input, kept for backward
        self.std: Any = None                # sqrt(var + eps), broadcastable against x
        self._train: Any = None
        self._shard: Any = None             # the distributed step's shard of the last forward
        self.dgamma: Any = None
        self.dbeta: Any = None

    def forward(self, x: Array, train_flg: bool = True) -> Array:
        who = "BatchNormalization.forward"
        check_floating(who, "x", x)
        if x.ndim not in (2, 4):
            raise ValueError(f"{who}: expected x of shape (N, D) (2-D) or (N, C, H, W) (4-D); "
                             f"got shape {tuple(x.shape)} ({x.ndim}-D)")
        check_same_place(who, "gamma", self.gamma, x=x)
        D = self.gamma.shape[0]
        if x.shape[1] != D:
            layout = "(N, D)" if x.ndim == 2 else "(N, C, H, W)"
            raise ValueError(f"{who}: expected x of shape {layout} with {D} "
                             f"{'features' if x.ndim == 2 else 'channels'} (gamma's size); "
                             f"got {tuple(x.shape)}")
        axes, shape = _axes_and_shape(x.ndim, D)
        m = math.prod([x.shape[i] for i in axes])   # values per feature (a list: torch.compile)
        shard = current_shard() if train_flg else None
        if shard is not None and shard.comm.size == 1:
            shard = None                          # one rank: the batch is all here
        if shard is not None:
            shard.check_rows(who, x)
            m = shard.total * math.prod(x.shape[2:])   # values per feature, all ranks
        xp = array_namespace(x)
        self.input_shape = tuple(x.shape)
        self.batch_size = x.shape[0]
        self._shard = shard
        with device_scope(x):
            if train_flg:
                if m < 2:
                    raise ValueError(f"{who}: training needs more than 1 value per "
                                     f"{'feature' if x.ndim == 2 else 'channel'} to estimate a "
                                     f"variance; got x of shape {tuple(x.shape)}"
                                     + (f" (batch of {shard.total} over the ranks)" if shard else ""))
                if shard is None:
                    mu = xp.mean(x, axis=axes)                            # (D,)
                    xc = x - xp.reshape(mu, shape)
                    var = xp.mean(xc * xc, axis=axes)                     # biased, (D,)
                else:                                                     # over all ranks
                    mu = shard.comm.sum(xp.sum(x, axis=axes)) / m
                    xc = x - xp.reshape(mu, shape)
                    var = shard.comm.sum(xp.sum(xc * xc, axis=axes)) / m
                self.std = xp.sqrt(xp.reshape(var, shape) + self.eps)
                self.xn = xc / self.std
                mom = self.momentum
                self.running_mean = mom * self.running_mean + (1.0 - mom) * mu
                self.running_var = mom * self.running_var + (1.0 - mom) * (m / (m - 1)) * var
            else:
                self.std = xp.sqrt(xp.reshape(self.running_var, shape) + self.eps)
                self.xn = (x - xp.reshape(self.running_mean, shape)) / self.std
            self._train = bool(train_flg)
            return xp.reshape(self.gamma, shape) * self.xn + xp.reshape(self.beta, shape)

    def backward(self, dout: Array) -> Array:
        who = "BatchNormalization.backward"
        if self.xn is None:
            raise RuntimeError(f"{who}: call forward first")
        check_grad(who, "dout", dout, self.xn, "the forward input", self.input_shape)
        xp = array_namespace(dout)
        axes, shape = _axes_and_shape(dout.ndim, self.gamma.shape[0])
        with device_scope(dout):
            self.dbeta = xp.sum(dout, axis=axes)
            self.dgamma = xp.sum(dout * self.xn, axis=axes)
            scale = xp.reshape(self.gamma, shape) / self.std
            if not self._train:
                return scale * dout
            if self._shard is None:
                mean_dout = xp.mean(dout, axis=axes, keepdims=True)
                mean_dout_xn = xp.mean(dout * self.xn, axis=axes, keepdims=True)
                return scale * (dout - mean_dout - self.xn * mean_dout_xn)
            return scale * self._synced_backward(dout, axes, shape)

    def _synced_backward(self, dout, axes, shape):
        """``dout - mean(dout) - xn * mean(dout * xn)`` with the means over all ranks.

        Rank r's ``dout`` is the gradient of its own mean loss, ``1 / w_r`` times its part
        of the global loss's (``w_r = n_r / B``). The global sums are
        ``S = sum_r w_r * sum(dout_r)`` (one all-reduce for both), and
        ``S / m / w_r = S / m_r`` with ``m_r`` this rank's values per feature brings the
        means back to this rank's scale.
        """
        xp = array_namespace(dout)
        D = self.gamma.shape[0]
        sums = self._shard.comm.sum(xp.concat([self.dbeta, self.dgamma]) * self._shard.weight)
        m_r = math.prod([dout.shape[i] for i in axes])
        if m_r == 0:                              # no rows here: joined the sum, nothing to do
            return dout
        mean_dout = xp.reshape(sums[:D], shape) / m_r
        mean_dout_xn = xp.reshape(sums[D:], shape) / m_r
        return dout - mean_dout - self.xn * mean_dout_xn

    def __repr__(self) -> str:
        return (f"BatchNormalization({self.gamma.shape[0]}, momentum={self.momentum}, "
                f"eps={self.eps})")


def _axes_and_shape(ndim: int, D: int):
    """Reduction axes and the broadcast shape of per-feature arrays."""
    if ndim == 2:
        return (0,), (1, D)
    return (0, 2, 3), (1, D, 1, 1)
