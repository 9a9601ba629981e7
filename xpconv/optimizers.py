"""The book's optimizers (``common/optimizer.py``): SGD, Momentum, Nesterov, AdaGrad,
RMSprop and Adam, with the same ``update(params, grads)`` interface and formulas.

``params`` and ``grads`` are mappings from names to arrays. Two paths, same results
bit for bit (each rule is written once and applied to both):

* **fused**: when ``params`` offers flat buffers (a network's ``params.flat``: one 1-D
  buffer per dtype whose views are the layers' arrays), the gradients are gathered into
  one buffer (one ``concat``) and the rule runs once on the whole buffer, in place: a
  handful of ops per step instead of a handful per parameter (Adam: 10 ops for any
  number of parameters instead of 12 per parameter, its two moments updated together
  where each op costs a launch; 13 on NumPy).
* **per key**: otherwise (a plain dict, JAX's immutable arrays) every update is written
  back by assignment, ``params[key] += step`` (``__setitem__`` is called), so mappings
  whose ``__setitem__`` rebinds a layer's array work too. Where the library updates in
  place (NumPy, CuPy, torch), ``params[key]`` is modified in place, as in the book.

Optimizer state (velocities, squared-gradient sums, moments) is created lazily with
zeros on the parameter's device, in its dtype, except for half precision (float16,
bfloat16): there it is kept in float32, so that the squared gradients do not underflow
to 0 and ``m / (sqrt(v) + 1e-7)`` does not blow up (the step is computed in float32 and
rounded once to the parameter's dtype). State follows the parameters: an array on
another device or library (after ``net.to(...)``) is moved there, values kept, at the
next ``update``. Per-parameter state is always readable by key (``opt.m["W1"]``); on the
fused path those arrays are views into the optimizer's flat state buffers.

Bias correction (Adam) and every other scalar are host floats: no device ops.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping

from ._kernels.checks import check_floating, check_same_place
from ._kernels.fastpaths import constant, prefers_fewer_ops
from ._namespace import array_namespace, device as array_device
from ._typing import Array
from .devices import device_of, device_scope, dtype_name, to_numpy
from .network.flat import FlatGroup, gather

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "get_optimizer"]

EPS = 1e-7   # the book's constant in AdaGrad, RMSprop and Adam


class Optimizer:
    """Base class: argument checks, the two update paths and the state bookkeeping.

    A subclass names its per-parameter state dicts in ``_state`` and writes its rule
    once in ``_rule(grad, state)``: it updates ``state[name]`` with augmented
    assignments (in place where the library allows, rebinding otherwise) and returns
    the step to *add* to the parameter.
    """

    _state: tuple = ()

    def __init__(self, lr: float) -> None:
        self.lr = _positive(type(self).__name__, "lr", lr)
        for name in self._state:
            setattr(self, name, {})
        self._flat_state: dict = {}   # (state name, param names) -> (param layout key, FlatGroup)

    def update(self, params: MutableMapping[str, Array], grads: Mapping[str, Array]) -> None:
        """Apply one step to every parameter in ``params`` (in place / by assignment)."""
        self._check(params, grads)
        self._begin()
        groups = _flat_groups(params)
        if groups is None:
            for key in list(params.keys()):
                with device_scope(params[key]):
                    self._step_key(params, key, grads[key])
        else:
            for group in groups:
                with device_scope(group.buffer):
                    self._step_flat(group, grads)

    def state_dict(self) -> tuple[dict, dict]:
        """The optimizer's state as ``(settings, arrays)``: settings are the host numbers
        (``lr``, ``momentum``, Adam's step count ``iter``, ...), arrays are host copies of
        the per-parameter state, named ``"<state>/<param>"`` (``"m/W1"``, ``"v/W1"``).

        :meth:`load_state_dict` of the same class restores it exactly (bit for bit), so a
        resumed training run takes the very steps of an uninterrupted one.
        """
        settings = {k: v for k, v in vars(self).items()
                    if not k.startswith("_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        arrays = {f"{name}/{key}": to_numpy(a).copy()
                  for name in self._state for key, a in getattr(self, name).items()}
        return settings, arrays

    def load_state_dict(self, settings: dict, arrays: dict) -> None:
        """Restore a :meth:`state_dict`; the arrays move to each parameter's device at the
        next ``update`` (host arrays are taken as they are until then).
        """
        who = f"{type(self).__name__}.load_state_dict"
        unknown = [k for k in settings if not hasattr(self, k) or k.startswith("_")]
        if unknown:
            raise ValueError(f"{who}: unknown settings {unknown} for {type(self).__name__}")
        for k, v in settings.items():
            setattr(self, k, type(getattr(self, k))(v))
        for name in self._state:
            getattr(self, name).clear()
        self._flat_state.clear()
        for full, a in arrays.items():
            name, _, key = full.partition("/")
            if name not in self._state or not key:
                raise ValueError(f"{who}: unknown state array {full!r}; {type(self).__name__} keeps "
                                 f"{', '.join(self._state) or 'no arrays'}")
            getattr(self, name)[key] = a
        if hasattr(self, "_stacked"):
            self._stacked.clear()

    def _begin(self) -> None:
        """Host-side work once per ``update`` (Adam: the step count and bias correction)."""

    def _rule(self, grad, state: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def _step_key(self, params, key, grad) -> None:
        p = params[key]
        state = {name: self._state_array(name, key, p) for name in self._state}
        step = self._rule(_as(grad, _state_dtype(p)) if state else grad, state)
        for name, value in state.items():
            getattr(self, name)[key] = value
        params[key] += _as(step, p.dtype)

    def _step_flat(self, group: FlatGroup, grads) -> None:
        p = group.buffer
        grad = group.gather(grads)
        state = {name: self._flat_buffer(name, group) for name in self._state}
        step = self._rule(_as(grad, _state_dtype(p)) if state else grad, state)
        for name, value in state.items():
            _, flat = self._flat_state[(name, group.names)]
            if value is not flat.buffer:     # a library that rebinds: new views
                self._bind_flat(name, group, FlatGroup(group.names, group.shapes, value))
        p += _as(step, p.dtype)

    def _state_array(self, name, key, p):
        """``getattr(self, name)[key]``: zeros at first, moved to ``p``'s place if it is elsewhere."""
        xp, dtype = array_namespace(p), _state_dtype(p)
        a = getattr(self, name).get(key)
        if a is None:
            return xp.zeros(tuple(p.shape), dtype=dtype, device=array_device(p))
        if array_namespace(a) is not xp or array_device(a) != array_device(p) or a.dtype != dtype:
            a = device_of(p).asarray(to_numpy(a), dtype=dtype_name(p) if dtype == p.dtype else "float32")
        if tuple(a.shape) != tuple(p.shape):
            raise ValueError(f"{type(self).__name__}.update: state {name}[{key!r}] has shape "
                             f"{tuple(a.shape)} but params[{key!r}] has {tuple(p.shape)}; use a new "
                             f"optimizer for a new model")
        return a

    def _flat_buffer(self, name, group: FlatGroup):
        """The flat state buffer of ``group``; its views are the entries of ``getattr(self, name)``."""
        held, per_key = self._flat_state.get((name, group.names)), getattr(self, name)
        if held is not None and held[0] == group.key and all(
                per_key.get(n) is held[1].views[n] for n in group.names):
            return held[1].buffer
        p = group.buffer
        if not any(n in per_key for n in group.names):
            xp = array_namespace(p)
            flat = FlatGroup(group.names, group.shapes, xp.zeros(tuple(p.shape), dtype=_state_dtype(p),
                                                                 device=array_device(p)))
        else:       # state from the per-key path, another device, or replaced by the user
            flat = FlatGroup.pack({n: self._state_array(name, n, group.views[n]) for n in group.names})
        self._bind_flat(name, group, flat)
        return flat.buffer

    def _bind_flat(self, name, group, flat: FlatGroup) -> None:
        self._flat_state[(name, group.names)] = (group.key, flat)
        getattr(self, name).update(flat.views)

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

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)

    def _rule(self, grad, state):
        return -self.lr * grad                      # 1 op (+1 to add it)


class Momentum(Optimizer):
    """SGD with momentum.

    The update::

        v <- momentum * v - lr * dW        (v starts at 0)
        W <- W + v
    """

    _state = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = _unit(type(self).__name__, "momentum", momentum)

    def _rule(self, grad, state):
        state["v"] *= self.momentum
        state["v"] -= self.lr * grad
        return state["v"]


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient, in the book's form.

    The update::

        v <- momentum * v - lr * dW        (v starts at 0)
        W <- W + momentum**2 * v - (1 + momentum) * lr * dW
    """

    _state = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = _unit(type(self).__name__, "momentum", momentum)

    def _rule(self, grad, state):
        m = self.momentum
        state["v"] *= m
        state["v"] -= self.lr * grad
        return m * m * state["v"] - (1.0 + m) * self.lr * grad


class AdaGrad(Optimizer):
    """AdaGrad: per-element learning rates shrinking with the gradients seen.

    The update::

        h <- h + dW * dW                   (h starts at 0)
        W <- W - lr * dW / (sqrt(h) + 1e-7)
    """

    _state = ("h",)

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__(lr)

    def _rule(self, grad, state):
        xp = array_namespace(grad)
        state["h"] += grad * grad
        return -self.lr * grad / (xp.sqrt(state["h"]) + EPS)


class RMSprop(Optimizer):
    """RMSprop: AdaGrad with an exponential moving average of squared gradients.

    The update::

        h <- decay_rate * h + (1 - decay_rate) * dW * dW      (h starts at 0)
        W <- W - lr * dW / (sqrt(h) + 1e-7)
    """

    _state = ("h",)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99) -> None:
        super().__init__(lr)
        self.decay_rate = _unit(type(self).__name__, "decay_rate", decay_rate)

    def _rule(self, grad, state):
        xp = array_namespace(grad)
        state["h"] *= self.decay_rate
        state["h"] += (1.0 - self.decay_rate) * grad * grad
        return -self.lr * grad / (xp.sqrt(state["h"]) + EPS)


class Adam(Optimizer):
    """Adam, in the book's form (bias correction folded into the step size).

    The update::

        t    <- t + 1                       (once per update call)
        lr_t  = lr * sqrt(1 - beta2**t) / (1 - beta1**t)     (a host float)
        m    <- m + (1 - beta1) * (dW - m)        (m, v start at 0)
        v    <- v + (1 - beta2) * (dW**2 - v)
        W    <- W - lr_t * m / (sqrt(v) + 1e-7)

    12 ops per parameter on the per-key path. On the fused path, for all parameters of one
    dtype: 9 (+1 to gather the gradients), m and v being the rows of one buffer (see
    :meth:`_step_flat`); on NumPy 12 (+1).
    """

    _state = ("m", "v")
    m: dict
    v: dict

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999) -> None:
        super().__init__(lr)
        who = type(self).__name__
        self.beta1 = _unit(who, "beta1", beta1)
        self.beta2 = _unit(who, "beta2", beta2)
        self.iter = 0
        self._stacked: dict = {}   # param names -> (layout key, (2, n) moments, m group, v group)

    def _begin(self):
        self.iter += 1
        self._lr_t = (self.lr * math.sqrt(1.0 - self.beta2 ** self.iter)
                      / (1.0 - self.beta1 ** self.iter))

    def _rule(self, grad, state):
        # the formulas of the class docstring, each temporary updated in place: the same
        # operations (and bits) with half the allocations
        xp = array_namespace(grad)
        m, v = state["m"], state["v"]
        d = grad - m
        d *= 1.0 - self.beta1
        m += d
        d = grad * grad
        d -= v
        d *= 1.0 - self.beta2
        v += d
        state["m"], state["v"] = m, v      # the same arrays, or new ones on JAX (immutable)
        root = xp.sqrt(v)
        root += EPS
        step = m * -self._lr_t
        step /= root
        return step

    def _step_flat(self, group: FlatGroup, grads) -> None:
        """The fused step with m and v as the two rows of one (2, n) buffer, where ops cost a launch.

        Used where ``prefers_fewer_ops``: both moments move in the same 3 ops::

            G   = [g, g*g]                 (gathered twice in one concat, squared in place)
            MV += [[1 - beta1], [1 - beta2]] * (G - MV)

        elementwise the very operations of :meth:`_rule` (the same results, bit for bit);
        10 ops in all instead of 13. NumPy keeps the plain fused rule (no doubled gather).
        """
        p = group.buffer
        if not prefers_fewer_ops(p):
            return super()._step_flat(group, grads)
        xp, dtype = array_namespace(p), _state_dtype(p)
        n = p.shape[0]
        moments = self._stacked_moments(group)                                  # (2, n): m, v
        g2 = xp.reshape(_as(gather(grads, group.names + group.names), dtype), (2, n))
        squares = g2[1, :]
        squares *= squares                                                      # g*g, in place
        rates = constant(lambda xp, dtype, where: xp.reshape(
            xp.asarray([1.0 - self.beta1, 1.0 - self.beta2], dtype=dtype, device=where), (2, 1)),
            p, dtype, key=("Adam rates", self.beta1, self.beta2))
        moments += rates * (g2 - moments)
        step = -self._lr_t * moments[0, :] / (xp.sqrt(moments[1, :]) + EPS)
        p += _as(step, p.dtype)

    def _stacked_moments(self, group: FlatGroup):
        """The (2, n) buffer whose rows hold m and v of ``group``; ``self.m``/``self.v`` entries
        are views into it. Rebuilt (values kept) when the layout changed or a user replaced
        an entry.
        """
        held = self._stacked.get(group.names)
        if held is not None and held[0] == group.key and all(
                self.m.get(n) is held[2].views[n] and self.v.get(n) is held[3].views[n]
                for n in group.names):
            return held[1]
        p = group.buffer
        xp = array_namespace(p)
        if not any(n in self.m or n in self.v for n in group.names):
            moments = xp.zeros((2, p.shape[0]), dtype=_state_dtype(p), device=array_device(p))
        else:       # state from the per-key path, another device, or replaced by the user
            rows = [FlatGroup.pack({n: self._state_array(name, n, group.views[n])
                                    for n in group.names}).buffer for name in ("m", "v")]
            moments = xp.stack(rows)
        m, v = (FlatGroup(group.names, group.shapes, moments[i, :]) for i in range(2))
        self.m.update(m.views)
        self.v.update(v.views)
        self._stacked[group.names] = (group.key, moments, m, v)
        return moments


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam}


def get_optimizer(name: str, **kwargs: float) -> Optimizer:
    """An optimizer by case-insensitive name, e.g. ``get_optimizer("Adam", lr=1e-3)``.

    Names: sgd, momentum, nesterov, adagrad, rmsprop, adam.
    """
    if not isinstance(name, str) or name.strip().lower() not in OPTIMIZERS:
        raise ValueError(f"get_optimizer: unknown optimizer {name!r}; choose one of "
                         f"{sorted(OPTIMIZERS)} (case-insensitive)")
    return OPTIMIZERS[name.strip().lower()](**kwargs)


# ---------------------------------------------------------------------------- helpers

def _flat_groups(params):
    """``params.flat`` when it is a tuple of flat groups covering exactly ``params``; else None."""
    groups = getattr(params, "flat", None)
    if not isinstance(groups, tuple) or not all(isinstance(g, FlatGroup) for g in groups):
        return None
    names = [n for g in groups for n in g.names]
    return groups if len(names) == len(params) and set(names) == set(params.keys()) else None


def _state_dtype(p):
    """State dtype for parameter ``p``: its own, but float32 for half precision."""
    xp = array_namespace(p)
    return xp.float32 if xp.finfo(p.dtype).bits < 32 else p.dtype


def _as(a, dtype):
    """``a`` in ``dtype`` (no op when it already is)."""
    return a if a.dtype == dtype else array_namespace(a).astype(a, dtype)


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
