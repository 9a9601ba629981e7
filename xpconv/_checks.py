"""Input validation shared by ops and layers.

Every message names who raised it, what was expected and what was given.
"""
from __future__ import annotations

import operator

from array_api_compat import array_namespace, device, is_array_api_obj


def check_array(who: str, name: str, x) -> None:
    """``x`` must be an Array API array (not a list, scalar or None)."""
    if not is_array_api_obj(x):
        raise TypeError(f"{who}: expected {name} to be an array (NumPy, CuPy, torch, ...); "
                        f"got {type(x).__name__}")


def check_floating(who: str, name: str, x) -> None:
    """``x`` must be a real floating-point array (float16/32/64)."""
    check_array(who, name, x)
    xp = array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{who}: expected {name} with a floating-point dtype "
                        f"(float32, float64, float16); got {x.dtype}. Convert it first, "
                        f"e.g. x.astype('float32') or xp.astype(x, xp.float32)")


def check_ndim(who: str, name: str, x, ndim: int, layout: str) -> None:
    """``x.ndim`` must be ``ndim``; ``layout`` is shown in the message, e.g. "(N, C, H, W)"."""
    if x.ndim != ndim:
        raise ValueError(f"{who}: expected {name} of shape {layout} ({ndim}-D); "
                         f"got shape {tuple(x.shape)} ({x.ndim}-D)")


def check_same_place(who: str, ref_name: str, ref, *, same_dtype: bool = True, **others) -> None:
    """Arrays in ``others`` must share ``ref``'s library, device and (if ``same_dtype``) dtype.

    Nothing is ever moved silently: the message says how to move it.
    """
    ref_xp, ref_dev = array_namespace(ref), device(ref)
    for name, other in others.items():
        if other is None:
            continue
        check_array(who, name, other)
        xp = array_namespace(other)
        if xp is not ref_xp:
            raise TypeError(
                f"{who}: {name} is a {_library(other)} array but {ref_name} is a {_library(ref)} "
                f"array; put both in one library (e.g. xpconv.device(spec).asarray(xpconv.to_numpy(a)))")
        if device(other) != ref_dev:
            raise ValueError(
                f"{who}: {name} is on device {device(other)} but {ref_name} is on {ref_dev}; "
                f"move one of them (e.g. a.to_device(...)) -- xpconv never transfers silently")
        if same_dtype and other.dtype != ref.dtype:
            raise TypeError(f"{who}: {name} has dtype {other.dtype} but {ref_name} has {ref.dtype}; "
                            f"cast one of them so both match")


def check_grad(who: str, name: str, grad, ref, ref_name: str, shape) -> None:
    """A gradient flowing back: floating, in ``ref``'s place, of the forward output's ``shape``."""
    check_floating(who, name, grad)
    check_same_place(who, ref_name, ref, **{name: grad})
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{who}: expected {name} of shape {tuple(shape)} (the forward output's); "
                         f"got {tuple(grad.shape)}")


def _library(x) -> str:
    return type(x).__module__.split(".")[0]


def check_flag(who: str, name: str, value) -> None:
    """``value`` must be a real bool (a truthy string such as "False" is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{who}: expected {name} to be True or False; "
                        f"got {value!r} ({type(value).__name__})")


def as_index(who: str, name: str, value, *, minimum: int) -> int:
    """An integer (Python int or NumPy integer scalar, not bool) >= ``minimum``, as an int."""
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)
    except TypeError:
        raise TypeError(f"{who}: expected {name} to be an int; got {value!r} "
                        f"({type(value).__name__})") from None
    if index < minimum:
        raise ValueError(f"{who}: expected {name} >= {minimum}; got {index}")
    return index
