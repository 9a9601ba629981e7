"""The book's optimizers (``common/optimizer.py``): SGD, Momentum, Nesterov, AdaGrad,
RMSprop and Adam, with the same ``update(params, grads)`` interface and formulas.

``params`` and ``grads`` are mappings from names to arrays. Every update is written
back by assignment, ``params[key] = ...`` (an augmented ``params[key] -= ...`` ends
in ``__setitem__`` too), so the optimizers work with immutable arrays (JAX) and with
mappings whose ``__setitem__`` rebinds a layer's array. Where the array library
updates in place (NumPy, CuPy, torch), ``params[key]`` is also modified in place,
as in the book.

Optimizer state (velocities, squared-gradient sums, moments) is created lazily, per
parameter, with ``zeros_like`` on the parameter's device and in its dtype.
"""
from __future__ import annotations

import math

from array_api_compat import array_namespace

from ._checks import check_floating, check_same_place
from .devices import device_scope

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "get_optimizer"]

EPS = 1e-7   # the book's constant in AdaGrad, RMSprop and Adam


class Optimizer:
    """Base class: argument checks and the key/shape/place checks of ``update``."""

    def __init__(self, lr):
        self.lr = _positive(type(self).__name__, "lr", lr)

    def update(self, params, grads) -> None:
        """Apply one step to every parameter in ``params`` (in place / by assignment)."""
        self._check(params, grads)
        for key in list(params.keys()):
            with device_scope(params[key]):
                self._step(params, key, grads[key])

    def _step(self, params, key, grad) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, params, grads) -> None:
        who = f"{type(self).__name__}.update"
        unknown = [k for k in grads.keys() if k not in params]
        if unknown:
            raise KeyError(f"{who}: grads has keys not in params: {unknown}; "
                           f"params has {list(params.keys())}")
        missing = [k for k in params.keys() if k not in grads]
        if missing:
            raise KeyError(f"{who}: no gradient for params {missing}; grads has "
                           f"{list(grads.keys())}")
        for key in params.keys():
            p, g = params[key], grads[key]
            check_floating(who, f"params[{key!r}]", p)
            check_same_place(who, f"params[{key!r}]", p, **{f"grads[{key!r}]": g})
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"{who}: grads[{key!r}] has shape {tuple(g.shape)} but "
                                 f"params[{key!r}] has {tuple(p.shape)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items()
                         if isinstance(v, float) and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent: ``W <- W - lr * dW``.

    >>> import numpy as np
    >>> params, grads = {"W": np.array([1.0, 2.0])}, {"W": np.array([0.5, -1.0])}
    >>> SGD(lr=0.1).update(params, grads); params["W"]
    array([0.95, 2.1 ])
    """

    def __init__(self, lr=0.01):
        super().__init__(lr)

    def _step(self, params, key, grad):
        params[key] -= self.lr * grad


class Momentum(Optimizer):
    """SGD with momentum::

        v <- momentum * v - lr * dW        (v starts at 0)
        W <- W + v
    """

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr)
        self.momentum = _unit(type(self).__name__, "momentum", momentum)
        self.v = {}

    def _step(self, params, key, grad):
        v = self.v[key] if key in self.v else _zeros_like(params[key])
        v = self.momentum * v - self.lr * grad
        self.v[key] = v
        params[key] += v


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient, in the book's form::

        v <- momentum * v - lr * dW        (v starts at 0)
        W <- W + momentum**2 * v - (1 + momentum) * lr * dW
    """

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr)
        self.momentum = _unit(type(self).__name__, "momentum", momentum)
        self.v = {}

    def _step(self, params, key, grad):
        m = self.momentum
        v = self.v[key] if key in self.v else _zeros_like(params[key])
        v = m * v - self.lr * grad
        self.v[key] = v
        params[key] += m * m * v - (1.0 + m) * self.lr * grad


class AdaGrad(Optimizer):
    """AdaGrad: per-element learning rates shrinking with the gradients seen::

        h <- h + dW * dW                   (h starts at 0)
        W <- W - lr * dW / (sqrt(h) + 1e-7)
    """

    def __init__(self, lr=0.01):
        super().__init__(lr)
        self.h = {}

    def _step(self, params, key, grad):
        xp = array_namespace(grad)
        h = self.h[key] if key in self.h else _zeros_like(params[key])
        h = h + grad * grad
        self.h[key] = h
        params[key] -= self.lr * grad / (xp.sqrt(h) + EPS)


class RMSprop(Optimizer):
    """RMSprop: AdaGrad with an exponential moving average of squared gradients::

        h <- decay_rate * h + (1 - decay_rate) * dW * dW      (h starts at 0)
        W <- W - lr * dW / (sqrt(h) + 1e-7)
    """

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr)
        self.decay_rate = _unit(type(self).__name__, "decay_rate", decay_rate)
        self.h = {}

    def _step(self, params, key, grad):
        xp = array_namespace(grad)
        h = self.h[key] if key in self.h else _zeros_like(params[key])
        h = self.decay_rate * h + (1.0 - self.decay_rate) * grad * grad
        self.h[key] = h
        params[key] -= self.lr * grad / (xp.sqrt(h) + EPS)


class Adam(Optimizer):
    """Adam, in the book's form (bias correction folded into the step size)::

        t    <- t + 1                       (once per update call)
        lr_t  = lr * sqrt(1 - beta2**t) / (1 - beta1**t)
        m    <- m + (1 - beta1) * (dW - m)        (m, v start at 0)
        v    <- v + (1 - beta2) * (dW**2 - v)
        W    <- W - lr_t * m / (sqrt(v) + 1e-7)
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr)
        who = type(self).__name__
        self.beta1 = _unit(who, "beta1", beta1)
        self.beta2 = _unit(who, "beta2", beta2)
        self.iter = 0
        self.m = {}
        self.v = {}

    def update(self, params, grads) -> None:
        self._check(params, grads)
        self.iter += 1
        self._lr_t = (self.lr * math.sqrt(1.0 - self.beta2 ** self.iter)
                      / (1.0 - self.beta1 ** self.iter))
        for key in list(params.keys()):
            with device_scope(params[key]):
                self._step(params, key, grads[key])

    def _step(self, params, key, grad):
        xp = array_namespace(grad)
        m = self.m[key] if key in self.m else _zeros_like(params[key])
        v = self.v[key] if key in self.v else _zeros_like(params[key])
        m = m + (1.0 - self.beta1) * (grad - m)
        v = v + (1.0 - self.beta2) * (grad * grad - v)
        self.m[key], self.v[key] = m, v
        params[key] -= self._lr_t * m / (xp.sqrt(v) + EPS)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    """An optimizer by case-insensitive name, e.g. ``get_optimizer("Adam", lr=1e-3)``.

    Names: sgd, momentum, nesterov, adagrad, rmsprop, adam.
    """
    if not isinstance(name, str) or name.strip().lower() not in OPTIMIZERS:
        raise ValueError(f"get_optimizer: unknown optimizer {name!r}; choose one of "
                         f"{sorted(OPTIMIZERS)} (case-insensitive)")
    return OPTIMIZERS[name.strip().lower()](**kwargs)


# ---------------------------------------------------------------------------- helpers

def _zeros_like(p):
    return array_namespace(p).zeros_like(p)


def _real(who: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{who}: expected {name} to be a finite real number; got {value!r}")
    return float(value)


def _positive(who: str, name: str, value) -> float:
    value_f = _real(who, name, value)
    if value_f <= 0:
        raise ValueError(f"{who}: expected {name} > 0; got {value!r}")
    return value_f


def _unit(who: str, name: str, value) -> float:
    value_f = _real(who, name, value)
    if not 0.0 <= value_f < 1.0:
        raise ValueError(f"{who}: expected {name} in [0, 1); got {value!r}")
    return value_f
