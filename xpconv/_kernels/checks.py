"""Input validation shared by ops and layers.

Every message names who raised it, what was expected and what was given.
"""
from __future__ import annotations

import operator

from .._namespace import array_namespace, device, is_array, is_real_floating
from ..devices import is_host_numpy


def check_array(who: str, name: str, x) -> None:
    """``x`` must be an Array API array (not a list, scalar or None)."""
    if not is_array(x):
        raise TypeError(f"{who}: expected {name} to be an array (NumPy, CuPy, torch, ...); "
                        f"got {type(x).__name__}")


def check_floating(who: str, name: str, x) -> None:
    """``x`` must be a real floating-point array (float16/32/64)."""
    check_array(who, name, x)
    if not is_real_floating(x):
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
        if device(other) != ref_dev and None not in (device(other), ref_dev):   # None: a tracer
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


# ---------------------------------------------------------------------------- class labels

def check_labels(who: str, t, n: int, k: int | None = None, *, name: str = "t",
                 check_values: bool | None = None):
    """The one rule for class labels (losses, ``accuracy``, ``Trainer``); returns ``t`` normalized.

    Accepted, for N samples and K classes:

    * integer class indices of shape (N,) or (N, 1) (a column, as the book and Keras
      allow), values in 0..K-1  ->  returned as (N,);
    * targets of shape (N, K): one-hot or probability rows, any real dtype  ->  as given.

    Anything else raises: TypeError for a non-array or a wrong dtype (float labels that
    are not (N, K) targets, bool, complex), ValueError for a wrong shape or, when the
    values are checked, a label outside 0..K-1.

    Args:
        who: the caller, named in messages (``"SoftmaxWithLoss.forward"``).
        t: the labels, an array of any library.
        n: number of samples N.
        k: number of classes K (None when not known: only ``t >= 0`` is checked, and
            any 2-D integer or floating ``t`` with N rows counts as targets).
        name: the labels' name in messages (``"t"``, ``"t_train"``).
        check_values: check the label range. None (default): only for host NumPy
            arrays, where it costs no device synchronization; device labels are checked
            branch-free by the losses instead (an out-of-range label makes the loss NaN).
    """
    check_array(who, name, t)
    xp = array_namespace(t)
    shape = tuple(t.shape)
    integral = xp.isdtype(t.dtype, "integral")
    expected = (f"integer class labels of shape (N,) or (N, 1) with N={n}, or one-hot targets "
                f"of shape (N, K) = ({n}, {'K' if k is None else k})")
    column = len(shape) == 2 and shape[1] == 1 and (integral or k != 1)   # (N, 1): labels
    if len(shape) == 2 and not column:                                     # (N, K): targets
        if shape[0] != n or (k is not None and shape[1] != k):
            raise ValueError(f"{who}: expected {name} as {expected}; got {shape}")
        if not (integral or xp.isdtype(t.dtype, "real floating")):
            raise TypeError(f"{who}: expected (N, K) targets {name} with a real dtype; got {t.dtype}")
        return t
    if len(shape) not in (1, 2) or shape[0] != n:
        raise ValueError(f"{who}: expected {name} as {expected}; got {shape}")
    if not integral:
        top = "K-1" if k is None else k - 1
        raise TypeError(f"{who}: expected integer class labels {name} of shape (N,) or (N, 1) "
                        f"(values 0..{top}); got dtype {t.dtype}. Cast them, e.g. "
                        f"xp.astype(t, xp.int64); one-hot targets must have shape (N, K)")
    if len(shape) == 2:
        t = xp.reshape(t, (n,))
    if (is_host_numpy(t) if check_values is None else check_values) and n:
        low, high = int(xp.min(t)), int(xp.max(t))
        if low < 0 or (k is not None and high >= k):
            span = "0.." + ("K-1" if k is None else f"{k - 1} (K={k} classes)")
            raise ValueError(f"{who}: expected class labels {name} in {span}; "
                             f"got values in {low}..{high}")
    return t


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
