"""Numerical gradients and their comparison with backpropagation (the book's gradient check).

``numerical_gradient`` works on any backend, immutable arrays (JAX) included: it never
writes into ``x`` but builds each perturbed copy with ``array_api_extra.at``. Unlike
the book's version, ``f`` must therefore compute from the array it is *given*.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import array_api_extra as xpx

from ._kernels.checks import check_floating
from ._namespace import array_namespace, device
from ._typing import Array
from .devices import device_scope, to_numpy

__all__ = ["numerical_gradient", "max_relative_error", "compare_gradients",
           "assert_gradients_close"]


def numerical_gradient(f: Callable[[Array], Any], x: Array, eps: float = 1e-4) -> Array:
    """Central differences ``(f(x + eps*e_i) - f(x - eps*e_i)) / (2*eps)`` for every element i.

    Args:
        f: function of one array (x's shape, dtype and device) returning a scalar
            (a number or a 0-D array of any backend).
        x: point at which to differentiate; left unchanged.
        eps: step (the book's ``h = 1e-4``). Use float64 ``x`` (and a float64 ``f``):
            in float32 the rounding error of ``f``, ~1e-7 * |f| / eps, is as large as
            typical gradients. A network's ``numerical_gradient`` does this for you: it
            evaluates its loss on a float64 copy of its parameters.

    Returns:
        array like ``x`` (shape, dtype, device) holding ``df/dx``.

    Costs ``2 * x.size`` calls of ``f``: meant for checking small layers.
    """
    who = "numerical_gradient"
    check_floating(who, "x", x)
    if not callable(f):
        raise TypeError(f"{who}: expected f to be a callable returning a scalar; got {type(f).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{who}: expected eps > 0; got {eps!r}")
    xp = array_namespace(x)
    shape = tuple(x.shape)
    grads = []
    with device_scope(x):
        for idx in itertools.product(*(range(n) for n in shape)):  # row-major; () for 0-D
            value = x[idx]
            plus = _scalar(who, f(xpx.at(x)[idx].set(value + eps, copy=True)))
            minus = _scalar(who, f(xpx.at(x)[idx].set(value - eps, copy=True)))
            grads.append((plus - minus) / (2 * eps))
        return xp.reshape(xp.asarray(grads, dtype=x.dtype, device=device(x)), shape)


def max_relative_error(a: Any, b: Any, tiny: float = 1e-30) -> float:
    """``max |a - b| / max(|a| + |b|, tiny)`` over all elements, in float64 on the host.

    ``a`` and ``b`` may belong to different libraries or devices; shapes must match.
    0.0 for empty arrays and where both are exactly 0.
    """
    a64, b64 = _host64(a), _host64(b)
    if tuple(a64.shape) != tuple(b64.shape):
        raise ValueError(f"max_relative_error: shapes differ: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    xp = array_namespace(a64)
    if math.prod(a64.shape) == 0:
        return 0.0
    denom = xp.maximum(xp.abs(a64) + xp.abs(b64), tiny)
    return float(xp.max(xp.abs(a64 - b64) / denom))


def compare_gradients(analytic: dict, numeric: dict) -> dict:
    """Per-key :func:`max_relative_error` of two gradient dicts with the same keys."""
    if set(analytic) != set(numeric):
        raise KeyError(f"compare_gradients: keys differ: only in analytic "
                       f"{sorted(set(analytic) - set(numeric))}, only in numeric "
                       f"{sorted(set(numeric) - set(analytic))}")
    errors = {}
    for key in analytic:
        try:
            errors[key] = max_relative_error(analytic[key], numeric[key])
        except ValueError as exc:
            raise ValueError(f"compare_gradients: key {key!r}: {exc}") from None
    return errors


def assert_gradients_close(analytic: dict, numeric: dict, rtol: float = 1e-5, atol: float = 0.0) -> None:
    """Raise AssertionError naming every key whose relative error exceeds ``rtol``.

    An element also passes when ``|a - b| <= atol`` (use a small ``atol`` where the true
    gradient is 0 and the numerical one is rounding noise).
    """
    failures = []
    for key, err in compare_gradients(analytic, numeric).items():
        if err <= rtol:
            continue
        if atol > 0:
            a64, b64 = _host64(analytic[key]), _host64(numeric[key])
            xp = array_namespace(a64)
            bad = (xp.abs(a64 - b64) > atol) & (
                xp.abs(a64 - b64) > rtol * (xp.abs(a64) + xp.abs(b64)))
            if not bool(xp.any(bad)):
                continue
        failures.append(f"{key!r}: max relative error {err:.3g} > rtol={rtol:g}")
    if failures:
        raise AssertionError("gradients differ: " + "; ".join(failures))


# ---------------------------------------------------------------------------- helpers

def _scalar(who: str, value) -> float:
    host = to_numpy(value)
    if host.size != 1:
        raise ValueError(f"{who}: expected f to return a scalar; got shape {tuple(host.shape)}")
    return float(host.reshape(()))


def _host64(a):
    """``a`` (any library, or a number) as a float64 host array in an Array API namespace."""
    host = to_numpy(a)
    xp = array_namespace(host)
    return xp.astype(xp.asarray(host), xp.float64)
