"""Sliding-window geometry: option parsing and output sizes.

Notation (as in Chainer's ``get_conv_outsize``), per spatial axis::

    size   input length (H or W)          k  kernel length (FH or FW)
    s      stride                         d  dilation
    p0,p1  padding before / after         ek = d*(k - 1) + 1, the effective kernel
    out    output length (OH or OW)

    rounding="exact":  out = (size + p0 + p1 - ek) / s + 1, which must be an integer
    rounding="floor":  out = floor((size + p0 + p1 - ek) / s) + 1
    rounding="ceil":   out = ceil((size + p0 + p1 - ek) / s) + 1, less one if the last
                       window would start past the input and the padding before it
                       (PyTorch's ``ceil_mode=True``); the last window is padded
    pad="same":        out = ceil(size / s); total padding
                       max((out - 1)*s + ek - size, 0), the smaller half before
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from .._namespace import torch_compiling

ROUNDINGS = ("exact", "floor", "ceil")
PAD_WORDS = ("valid", "same", "full")


@dataclass(frozen=True)
class Axis:
    """Geometry of one spatial axis: input ``size`` -> output ``out``."""

    size: int
    k: int
    s: int
    d: int
    p0: int   # padding before, as given by the user (or "same"/"full")
    p1: int   # padding after, as given
    out: int
    extra: int = 0  # padding added after ``p1`` so the last (ceil-mode) window fits

    @property
    def pad_after(self) -> int:
        """Padding actually applied after the input: ``p1 + extra``."""
        return self.p1 + self.extra

    def tap(self, i: int) -> slice:
        """Slice of the padded axis read by kernel tap ``i``: ``i*d, i*d + s, ...`` (``out`` items)."""
        start = i * self.d
        return slice(start, start + self.s * (self.out - 1) + 1, self.s)

    def tap_inside(self, i: int) -> tuple[slice, slice] | None:
        """For kernel tap ``i``: (input slice, output slice) of the positions that fall
        inside the unpadded input, or None if every position is padding.

        Output position o reads input index o*s + i*d - p0.
        """
        offset = i * self.d - self.p0
        first = max(0, _ceil_div(-offset, self.s))
        last = min(self.out - 1, (self.size - 1 - offset) // self.s)
        if first > last:
            return None
        start = first * self.s + offset
        return (slice(start, last * self.s + offset + 1, self.s), slice(first, last + 1))


@dataclass(frozen=True)
class Window2d:
    """Geometry of a 2-D sliding-window op over (N, C, H, W) input."""

    h: Axis
    w: Axis

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.h.out, self.w.out

    @property
    def taps(self) -> int:
        return self.h.k * self.w.k

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Padding applied: ((top, bottom), (left, right)), ceil-mode extra included."""
        return (self.h.p0, self.h.pad_after), (self.w.p0, self.w.pad_after)

    @property
    def padded(self) -> bool:
        return any(p for pair in self.pads for p in pair)

    @property
    def blocks(self) -> bool:
        """The windows are disjoint blocks side by side from the top-left corner: no
        padding, no overlap, no gap (``s == k`` on both axes); rows and columns past the
        last window (``size - out * k``, from rounding="floor") are left over.
        """
        return not self.padded and all(a.s == a.k and (a.d == 1 or a.k == 1) for a in (self.h, self.w))

    @property
    def tiles(self) -> bool:
        """The windows tile the input exactly: no padding, no overlap, no gap, nothing
        left over (``s == k`` and ``size == out * k`` on both axes).
        """
        return self.blocks and all(a.size == a.out * a.k for a in (self.h, self.w))


_KNOWN: dict = {}          # (who, in_hw, repr of the options) -> Window2d
_KNOWN_MAX = 1024


def window2d(who: str, in_hw, kernel, stride=1, pad=0, dilation=1, rounding="exact",
             *, pooling: bool = False) -> Window2d:
    """Validate the options and compute the geometry of a 2-D window op.

    Geometries are remembered (a layer asks again at every call): the key holds the
    options' ``repr``, so ``2`` and ``2.0`` stay different (the second is refused).

    Args:
        who: name of the calling op or layer, used in error messages.
        in_hw: (H, W) of the input.
        kernel: (FH, FW).
        stride: int or (h, w), each >= 1.
        pad: int, (ph, pw), ((top, bottom), (left, right)), "valid", "same" or "full".
        dilation: int or (h, w), each >= 1: the spacing of the kernel's taps.
        rounding: "exact", "floor" or (pooling only) "ceil".
        pooling: apply pooling's extra rules (ceil allowed; pad <= half the kernel).
    """
    if torch_compiling():      # a memo read under torch.compile is a guard: compute it
        return _window2d(who, in_hw, kernel, stride, pad, dilation, rounding, pooling)
    key = (who, tuple(in_hw), repr((kernel, stride, pad, dilation, rounding, pooling)))
    try:
        found = _KNOWN.get(key)
    except TypeError:          # a symbolic size (torch.compile with dynamic shapes)
        return _window2d(who, in_hw, kernel, stride, pad, dilation, rounding, pooling)
    if found is None:
        found = _window2d(who, in_hw, kernel, stride, pad, dilation, rounding, pooling)
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[key] = found
    return found


def _window2d(who, in_hw, kernel, stride, pad, dilation, rounding, pooling) -> Window2d:
    kh, kw = pair(who, "kernel size", kernel, minimum=1)
    sh, sw = pair(who, "stride", stride, minimum=1)
    dh, dw = pair(who, "dilation", dilation, minimum=1)
    allowed = ROUNDINGS if pooling else ROUNDINGS[:2]
    if rounding not in allowed:
        raise ValueError(f"{who}: expected rounding in {allowed}; got {rounding!r}")
    H, W = in_hw
    if isinstance(pad, str):
        if pad not in PAD_WORDS:
            raise ValueError(f"{who}: expected pad to be an int, (ph, pw), ((top, bottom), "
                             f"(left, right)) or one of {PAD_WORDS}; got {pad!r}")
        h = _axis_from_word(who, "height", H, kh, sh, dh, pad, rounding)
        w = _axis_from_word(who, "width", W, kw, sw, dw, pad, rounding)
    else:
        (pt, pb), (pl, pr) = _pads(who, pad)
        h = _axis(who, "height", H, kh, sh, dh, pt, pb, rounding)
        w = _axis(who, "width", W, kw, sw, dw, pl, pr, rounding)
    if pooling:
        for axis, name in ((h, "height"), (w, "width")):
            if max(axis.p0, axis.p1) > axis.k // 2:
                raise ValueError(f"{who}: pooling padding must be at most half the kernel "
                                 f"({name}: kernel {axis.k}, so pad <= {axis.k // 2}); "
                                 f"got ({axis.p0}, {axis.p1})")
    return Window2d(h, w)


def pair(who: str, name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= ``minimum``."""
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise TypeError(f"{who}: expected {name} to be an int or a pair (h, w) of ints; got {value!r}")
    items = tuple(int(v) for v in items)
    if min(items) < minimum:
        raise ValueError(f"{who}: expected {name} >= {minimum}; got {value!r}")
    return items


def check_pad(who: str, pad, *, pool_kernel=None) -> None:
    """Validate a pad option without an input (for layer constructors).

    ``pool_kernel=(kh, kw)`` adds pooling's rule: explicit padding at most half the kernel.
    """
    if isinstance(pad, str):
        if pad not in PAD_WORDS:
            raise ValueError(f"{who}: expected pad to be an int, (ph, pw), ((top, bottom), "
                             f"(left, right)) or one of {PAD_WORDS}; got {pad!r}")
        return
    pads = _pads(who, pad)
    if pool_kernel is not None:
        for (p0, p1), k, name in zip(pads, pool_kernel, ("height", "width")):
            if max(p0, p1) > k // 2:
                raise ValueError(f"{who}: pooling padding must be at most half the kernel "
                                 f"({name}: kernel {k}, so pad <= {k // 2}); got ({p0}, {p1})")


def _pads(who: str, pad) -> tuple[tuple[int, int], tuple[int, int]]:
    """Int | (ph, pw) | ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if _is_int(pad):
        pads = ((pad, pad), (pad, pad))
    elif isinstance(pad, (tuple, list)) and len(pad) == 2 and all(_is_int(p) for p in pad):
        pads = ((pad[0], pad[0]), (pad[1], pad[1]))
    elif (isinstance(pad, (tuple, list)) and len(pad) == 2
          and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(q) for q in p)
                  for p in pad)):
        pads = (tuple(pad[0]), tuple(pad[1]))
    else:
        raise TypeError(f"{who}: expected pad to be an int, (ph, pw), ((top, bottom), (left, right)) "
                        f"or one of {PAD_WORDS}; got {pad!r}")
    pads = tuple(tuple(int(p) for p in pair_) for pair_ in pads)  # type: ignore[assignment]
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{who}: expected padding >= 0; got {pad!r}")
    return pads


def _axis(who, name, size, k, s, d, p0, p1, rounding) -> Axis:
    ek = d * (k - 1) + 1
    padded = size + p0 + p1
    if ek > padded:
        what = f"kernel {k}" + (f" (dilated to {ek})" if d > 1 else "")
        raise ValueError(f"{who}: {what} is larger than the padded input {name} "
                         f"{size} + {p0} + {p1} = {padded}")
    span = padded - ek
    if rounding == "exact" and span % s:
        raise ValueError(
            f"{who}: windows do not tile the input {name}: (size + pad - effective kernel) / stride "
            f"= ({size} + {p0 + p1} - {ek}) / {s} = {span / s:.4g} is not an integer. Fixes: change "
            f"pad or stride (pad='same' keeps ceil(size/stride)), or pass rounding='floor' to drop "
            f"the last partial window (PyTorch's default)"
            + (" or rounding='ceil' to pad it (PyTorch's ceil_mode=True)" if "pool" in who.lower() else ""))
    if rounding == "ceil":
        out = _ceil_div(span, s) + 1
        if (out - 1) * s >= size + p0:  # last window would start in the padding after
            out -= 1
        extra = max((out - 1) * s + ek - padded, 0)
        return Axis(size, k, s, d, p0, p1, out, extra)
    return Axis(size, k, s, d, p0, p1, span // s + 1)


def _axis_from_word(who, name, size, k, s, d, word, rounding) -> Axis:
    ek = d * (k - 1) + 1
    if word != "same":
        p = ek - 1 if word == "full" else 0
        return _axis(who, name, size, k, s, d, p, p, rounding)
    out = _ceil_div(size, s)  # "same"
    total = max((out - 1) * s + ek - size, 0)
    return Axis(size, k, s, d, total // 2, total - total // 2, out)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def conv_out_size(size: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    """Floor output size of a window op on one axis: ``(size + 2p - d(k-1) - 1) // s + 1``."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


__all__ = ["Axis", "Window2d", "window2d", "pair", "check_pad", "conv_out_size"]
