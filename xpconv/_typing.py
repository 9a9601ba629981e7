"""Type aliases shared by xpconv's annotations.

Arrays of the Array API libraries (NumPy, CuPy, PyTorch, JAX, array-api-strict) have no
common static type, so an array is annotated ``Array``, an alias of :data:`typing.Any`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, Union

if TYPE_CHECKING:
    import numpy as np

#: an array of any Array API library (``numpy.ndarray``, ``cupy.ndarray``, ``torch.Tensor``, ...)
Array: TypeAlias = Any

#: an int, or a pair of ints (height, width)
IntOrPair: TypeAlias = Union[int, "tuple[int, int]"]

#: a padding option: an int, (ph, pw), ((top, bottom), (left, right)), "valid", "same" or "full"
Padding: TypeAlias = Union[int, "tuple[int, int]", "tuple[tuple[int, int], tuple[int, int]]", str]

#: host data in the book's format: ``((x_train, t_train), (x_test, t_test))``
Splits: TypeAlias = "tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]"
