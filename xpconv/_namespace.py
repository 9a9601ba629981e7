"""``array_namespace`` and ``device`` of array-api-compat, memoized per array type.

The layers call both several times per op; array-api-compat answers each call by testing
the array against every library it knows (microseconds a call, dozens of calls a step).
What either returns depends only on the array's type, so the answer is kept per type:

* ``array_namespace(*arrays)``: the namespace of the arrays' common type, looked up in a
  dict after the first call; arrays of mixed types, and NumPy arrays of JAX's ``float0``
  dtype (the one value-dependent case: array-api-compat gives them JAX's namespace), go
  to array-api-compat every time.
* ``device(x)``: ``x.device`` for the types whose device is that attribute (torch),
  ``"cpu"`` for NumPy; every other type (JAX, whose traced arrays have none, ...) asks
  array-api-compat every time.
* ``is_array(x)``: ``array_api_compat.is_array_api_obj``, kept per type.
* ``is_real_floating(x)``: ``array_namespace(x).isdtype(x.dtype, "real floating")``, kept
  per (type, dtype).

Nothing is added to the memos while ``torch.compile`` traces: the compiler would guard on
the dict's contents and compile again once a later call adds the entry;
:func:`remember` fills them before a trace.

The results are array-api-compat's own (``tests/test_namespace.py`` checks it for every
installed library).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import array_api_compat

__all__ = ["array_namespace", "device", "is_array", "is_real_floating", "remember", "torch_compiling"]

_NAMESPACE: dict[type, Any] = {}          # array type -> its namespace
_CHECK_DTYPE: set[type] = set()           # types whose namespace also depends on the dtype (NumPy)
_DEVICE: dict[type, Callable[[Any], Any]] = {}
_IS_ARRAY: dict[type, bool] = {}
_REAL_FLOATING: dict[tuple[type, Any], bool] = {}


def array_namespace(*arrays: Any) -> Any:
    """The Array API namespace of ``arrays`` (as ``array_api_compat.array_namespace``)."""
    if len(arrays) == 1:
        x = arrays[0]
        namespace = _NAMESPACE.get(type(x))
        if namespace is not None and (type(x) not in _CHECK_DTYPE or x.dtype.kind != "V"):
            return namespace
    elif arrays:
        kind = type(arrays[0])
        namespace = _NAMESPACE.get(kind)
        if (namespace is not None and all(type(a) is kind for a in arrays)
                and (kind not in _CHECK_DTYPE or all(a.dtype.kind != "V" for a in arrays))):
            return namespace
    namespace = array_api_compat.array_namespace(*arrays)
    if arrays and all(type(a) is type(arrays[0]) for a in arrays):
        _remember(arrays[0], namespace)
    return namespace


def _remember(x: Any, namespace: Any) -> None:
    if _is_float0(x) or torch_compiling():    # float0: JAX's namespace, whatever the type's usual one
        return
    if array_api_compat.is_numpy_array(x):
        _CHECK_DTYPE.add(type(x))
    _NAMESPACE[type(x)] = namespace


def device(x: Any) -> Any:
    """The device of array ``x`` (as ``array_api_compat.device``)."""
    get = _DEVICE.get(type(x))
    if get is None:
        if _is_float0(x) or torch_compiling():
            return array_api_compat.device(x)
        get = _DEVICE[type(x)] = _device_getter(x)
    return get(x)


def _device_getter(x: Any) -> Callable[[Any], Any]:
    if array_api_compat.is_torch_array(x):
        return _device_attribute
    if array_api_compat.is_numpy_array(x):
        return _cpu_unless_float0
    return array_api_compat.device


def _device_attribute(x: Any) -> Any:
    return x.device            # a plain function: torch.compile cannot trace operator.attrgetter


def _cpu_unless_float0(x: Any) -> Any:
    return "cpu" if x.dtype.kind != "V" else array_api_compat.device(x)


def is_array(x: Any) -> bool:
    """Whether ``x`` is an Array API array (as ``array_api_compat.is_array_api_obj``)."""
    known = _IS_ARRAY.get(type(x))
    if known is None:
        known = bool(array_api_compat.is_array_api_obj(x))
        if not torch_compiling():
            _IS_ARRAY[type(x)] = known
    return known


def is_real_floating(x: Any) -> bool:
    """Whether array ``x`` has a real floating-point dtype (float16/32/64, ...)."""
    key = (type(x), x.dtype)
    try:
        known = _REAL_FLOATING.get(key)
    except TypeError:             # an unhashable dtype object
        return bool(array_namespace(x).isdtype(x.dtype, "real floating"))
    if known is None:
        known = bool(array_namespace(x).isdtype(x.dtype, "real floating"))
        if not torch_compiling():
            _REAL_FLOATING[key] = known
    return known


def remember(*arrays: Any) -> None:
    """Fill the memos for these arrays' types and dtypes (before a compiler traces them)."""
    for x in arrays:
        if is_array(x):
            array_namespace(x)
            device(x)
            is_real_floating(x)


def torch_compiling() -> bool:
    """True while ``torch.compile`` traces (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def _is_float0(x: Any) -> bool:
    """A NumPy array of JAX's ``float0`` dtype (a void dtype; no array library has another)."""
    return getattr(getattr(x, "dtype", None), "kind", None) == "V"
