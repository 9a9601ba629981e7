"""Named arrays of one dtype kept as views into one 1-D buffer.

Elementwise work on all of them (an optimizer step) is then a handful of ops on the
buffer instead of a handful per array: on a GPU, a handful of kernel launches.

``FlatGroup(names, shapes, buffer)`` cuts ``buffer`` (1-D, ``sum(sizes)`` elements) into
``views[name] = reshape(buffer[start:stop], shape)``. That needs a library whose slices
and reshapes share memory with the buffer and whose arrays can be updated in place:
:func:`shares_views` says which do (NumPy, CuPy, torch; array-api-strict when a probe
shows it; never JAX, whose arrays are immutable).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from .._namespace import array_namespace, device as array_device
from .._typing import Array
from ..devices import device_scope, dtype_name, to_numpy


class FlatGroup:
    """``views[name]``: ``shapes[i]``-shaped views into the 1-D ``buffer``, in ``names`` order.

    Attributes:
        names: tuple of names, in buffer order.
        shapes: their shapes.
        buffer: 1-D array, ``sum(prod(shape))`` elements.
        views: ``{name: reshape(buffer[start:stop], shape)}``.
        key: ``(names, shapes, dtype name, library, device)``: equal keys, same layout.
    """

    def __init__(self, names: Iterable[str], shapes: Iterable[Iterable[int]], buffer: Array) -> None:
        xp = array_namespace(buffer)
        self.names, self.shapes, self.buffer = tuple(names), tuple(map(tuple, shapes)), buffer
        self.slices, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            stop = start + math.prod(shape)
            self.slices[name] = (start, stop)
            start = stop
        if tuple(buffer.shape) != (start,):
            raise ValueError(f"FlatGroup: expected a 1-D buffer of {start} elements; got shape "
                             f"{tuple(buffer.shape)}")
        self.views = {name: xp.reshape(buffer[a:b], shape)
                      for (name, (a, b)), shape in zip(self.slices.items(), self.shapes)}
        self.key = layout_key(self.names, self.shapes, buffer)

    @classmethod
    def pack(cls, arrays: Mapping) -> FlatGroup:
        """A new buffer holding copies of ``arrays`` (one dtype, library and device): one ``concat``."""
        names = list(arrays)
        return cls(names, [tuple(arrays[n].shape) for n in names], gather(arrays, names))

    def gather(self, arrays: Mapping[str, Array]) -> Array:
        """``arrays[name]`` for every name, flattened and concatenated like ``buffer`` (1 op)."""
        return gather(arrays, self.names)

    def store(self, name: str, value: Array) -> None:
        """Copy ``value`` (``shapes[name]``-shaped) into its slice of the buffer (1 op)."""
        a, b = self.slices[name]
        self.buffer[a:b] = array_namespace(value).reshape(value, (b - a,))


def gather(arrays: Mapping[str, Array], names: Sequence[str]) -> Array:
    """``concat([reshape(arrays[n], (-1,)) for n in names])``: a new 1-D array (1 op)."""
    first = arrays[names[0]]
    xp = array_namespace(first)
    return xp.concat([xp.reshape(arrays[n], (math.prod(arrays[n].shape),)) for n in names])


def layout_key(names: Iterable[str], shapes: Iterable[Iterable[int]], like: Array) -> tuple:
    """What must match for two groups to share a layout (and optimizer state)."""
    return (tuple(names), tuple(map(tuple, shapes)), dtype_name(like), type(like).__module__,
            str(array_device(like)))


def by_dtype(arrays: Mapping) -> list[dict]:
    """``arrays`` split by dtype, in order of first appearance (order kept within each)."""
    groups: dict = {}
    for name, a in arrays.items():
        groups.setdefault(dtype_name(a), {})[name] = a
    return list(groups.values())


_SHARES: dict = {}


def shares_views(like: Array) -> bool:
    """Whether views of a buffer of ``like``'s library alias it under in-place updates.

    Known for NumPy, CuPy and torch (yes) and JAX (no: immutable arrays); any other
    library is probed once: ``view += 1`` on a view of a small buffer must change it.
    """
    module = type(like).__module__.split(".")[0]
    if module in ("numpy", "cupy", "torch"):
        return True
    if module in ("jax", "jaxlib"):
        return False
    if module not in _SHARES:
        _SHARES[module] = _probe(like)
    return _SHARES[module]


def _probe(like) -> bool:
    xp = array_namespace(like)
    try:
        with device_scope(like):
            buffer = xp.zeros((4,), dtype=like.dtype, device=array_device(like))
            view = xp.reshape(buffer[1:3], (2, 1))
            view += 1
        return to_numpy(buffer).tolist() == [0, 1, 1, 0]
    except Exception:   # no in-place ops, read-only views, ...
        return False
