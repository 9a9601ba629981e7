"""Kernel fast paths that depend on the array library: measured, tested, and each with the
portable Array API path beside it.

- :func:`keep_where`: ``where(keep, x, 0)`` without a branch per element on NumPy.
- :func:`constant`: scalars and small index arrays built once per device (one fill
  kernel fewer per call on a GPU).
- :func:`prefers_fewer_ops`: whether a library pays a fixed cost per op (a GPU kernel
  launch, a JAX dispatch), so that kernels choose fewer, larger ops.
- :func:`take_last`: a gather along the last axis at non-negative positions, one op on
  torch.
"""
from __future__ import annotations

import contextlib
import contextvars

import array_api_compat
import numpy

from .. import _namespace
from .._backends import backend_of
from .._namespace import torch_compiling

__all__ = ["keep_where", "constant", "prefers_fewer_ops", "as_on_a_gpu", "under_compiler",
           "torch_compiling", "take_last"]

_AS_ON_A_GPU = contextvars.ContextVar("xpconv_as_on_a_gpu", default=False)


def prefers_fewer_ops(x) -> bool:
    """True where every op has a fixed cost that dwarfs its work at these sizes (a kernel
    launch on a GPU, a dispatch in JAX): kernels then prefer fewer, larger ops. False on
    NumPy, whose per-op cost is small and whose fast paths are many cheap ops, and on torch's
    CPU, where the fewer but heavier ops measured 2.5x slower per SimpleConvNet step (39 vs
    15.5 ms); :func:`as_on_a_gpu` makes torch choose as on a GPU (the launch proxy).
    """
    backend = backend_of(x)
    return backend.prefers_fewer_ops and (under_compiler(x) or _AS_ON_A_GPU.get() or backend.fewer_ops_on(
        _namespace.device(x)))


def under_compiler(x) -> bool:
    """True while a compiler traces ``x``: a JAX tracer (``jax.jit``; its device is None), or
    any torch tensor while ``torch.compile`` traces (``torch.compiler.is_compiling()``).

    Kernels then take their GPU paths (fewer, larger ops, no read-back to the host) and
    nothing traced is kept in a cache (:func:`constant`).
    """
    if _namespace.device(x) is None:
        return True
    return array_api_compat.is_torch_array(x) and torch_compiling()


@contextlib.contextmanager
def as_on_a_gpu():
    """Kernels choose their paths as they would on a GPU (for counting what a GPU would launch
    on torch's CPU or meta device: :func:`xpconv.diagnostics.launches.count_launches`).
    """
    token = _AS_ON_A_GPU.set(True)
    try:
        yield
    finally:
        _AS_ON_A_GPU.reset(token)


_SAME_SIZE_INT = {2: numpy.int16, 4: numpy.int32, 8: numpy.int64}


def keep_where(keep, x):
    """``where(keep, x, 0)``: ``x`` where ``keep`` is True, else +0 (NaN/Inf kept exactly).

    Shapes broadcast. The portable path is ``xp.where``. On NumPy, whose ``where``
    mispredicts a branch per element on random masks (a ReLU's or a max pool's: ~7x
    slower than arithmetic), the float bits are ANDed with a mask of all-ones/zeros
    instead: the same result, bit for bit, with no branch.
    """
    if (isinstance(x, numpy.ndarray) and isinstance(keep, numpy.ndarray)
            and x.dtype.kind == "f" and x.dtype.itemsize in _SAME_SIZE_INT):
        ints = _SAME_SIZE_INT[x.dtype.itemsize]
        shape = numpy.broadcast_shapes(keep.shape, x.shape)
        bits = numpy.empty(shape, dtype=ints)
        numpy.negative(keep, out=bits, dtype=ints)   # 0 / all ones  (bool -> int: 0 / -1)
        numpy.bitwise_and(bits, x.view(ints), out=bits)
        return bits.view(x.dtype)
    xp = _namespace.array_namespace(x)
    return xp.where(keep, x, constant(0, x))


def take_last(x, positions):
    """``take(x, positions, axis=-1)`` for ``positions``: a 1-D integer array, every entry >= 0.

    The portable path is ``xp.take``. On torch, array-api-compat's ``take`` first maps
    negative indices (3 more ops: a compare, an add and a ``where``, each a launch on a
    GPU); non-negative positions need none of that, and ``x[..., positions]`` is one op.
    """
    if array_api_compat.is_torch_array(x):
        return x[..., positions]
    xp = _namespace.array_namespace(x)
    return xp.take(x, positions, axis=x.ndim - 1)


_CONSTANTS: dict = {}


def constant(value, like, dtype=None, *, key=None):
    """A read-only array of ``like``'s library and device: ``value`` (a number, or what
    ``build()`` returns when ``value`` is a callable), in ``dtype`` (default: ``like``'s).

    Outside NumPy it is built once per (library, device, dtype, ``key``) and reused: a
    Python scalar given to ``where``, or an ``arange``, is otherwise a fill kernel per call
    on a GPU. Never modify the result. NumPy (cheap to build) gets a fresh array.

    Args:
        value: a number, or a callable ``build(xp, dtype, device)`` returning the array.
        like: an array of the library and device wanted.
        dtype: a dtype of ``like``'s namespace; default ``like.dtype``.
        key: what identifies a callable ``value`` (hashable); numbers are their own key.
    """
    dtype = like.dtype if dtype is None else dtype
    where = _namespace.device(like)
    cache_key = None
    if not (isinstance(like, numpy.ndarray) or under_compiler(like)):   # never cache a traced value
        cache_key = (type(like), where, dtype, repr(value) if key is None else key)
        try:
            found = _CONSTANTS.get(cache_key)
        except TypeError:             # an unhashable key: build it every time
            cache_key = found = None
        if found is not None:
            return found
    xp = _namespace.array_namespace(like)
    if callable(value):
        made = value(xp, dtype, where)
    else:
        made = xp.asarray(value, dtype=dtype, device=where)
    if cache_key is not None:
        _CONSTANTS[cache_key] = made
    return made


