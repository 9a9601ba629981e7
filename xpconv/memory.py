"""Memory budgets: refuse work that cannot fit before allocating it.

A load or a network that does not fit the machine's memory is refused with one line
that says how much it needs and how much there is, instead of a ``MemoryError``
traceback or a process killed by the kernel.

Available memory (Linux)::

    available = min(MemAvailable of /proc/meminfo, cgroup memory.max - memory.current)

elsewhere (or when unreadable) it is unknown and nothing is refused.

Training memory of a network on host NumPy, estimated (:func:`training_bytes`)::

    params * (2 + optimizer slots)     parameters, gradients, optimizer state
    + 3 * forward(1 sample) * batch     activations kept for backward, their gradients,
                                        and the temporaries of one pass

``forward(1 sample)`` is the peak of NumPy's allocations (``tracemalloc``) while one
zero sample goes through ``predict`` in inference mode (no random number is drawn).

>>> from xpconv.memory import format_bytes
>>> format_bytes(3 * 2**30)
'3.0 GiB'
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .thread_defaults import cgroup_dirs, read_text

if TYPE_CHECKING:
    from .network import Sequential

__all__ = ["OPTIMIZER_SLOTS", "MemoryBudgetError", "available_bytes", "format_bytes", "require", "training_bytes"]


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in binary units: ``'1.5 GiB'``, ``'12.0 MiB'``, ``'512 bytes'``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def _mem_available() -> int | None:
    for line in (read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), or None for no limit."""
    for folder in cgroup_dirs("memory"):
        limit, current = read_text(folder + "/memory.max"), read_text(folder + "/memory.current")
        if limit is None or current is None:
            continue
        if limit == "max":
            return None
        try:
            return max(0, int(limit) - int(current))
        except ValueError:
            return None
    return None


def available_bytes() -> int | None:
    """Memory this process can still allocate without swapping or being killed, in bytes
    (the module docstring's formula), or None where it cannot be read.

    ``XPCONV_MEMORY_MB`` (MiB) overrides it, e.g. to test or to leave room for others.
    """
    override = os.environ.get("XPCONV_MEMORY_MB", "").strip()
    if override:
        try:
            return int(float(override) * 2**20)
        except ValueError:
            raise ValueError(f"XPCONV_MEMORY_MB={override!r}: expected a number of MiB") from None
    values = [v for v in (_mem_available(), _cgroup_room()) if v is not None]
    return min(values) if values else None


def require(nbytes: int, *, who: str, what: str, hint: str = "") -> None:
    """Raise ``MemoryBudgetError`` (a ValueError) if ``nbytes`` exceed the available memory.

    Args:
        nbytes: bytes about to be allocated.
        who: prefix of the message (the function or command).
        what: what needs them, e.g. ``"array 'x' (1000000, 1, 28, 28) uint8"``.
        hint: what the user can do, appended after a semicolon.
    """
    available = available_bytes()
    if available is None or nbytes <= available:
        return
    raise MemoryBudgetError(f"{who}: {what} needs {format_bytes(nbytes)} of memory; "
                            f"{format_bytes(available)} is available" + (f"; {hint}" if hint else "")
                            + " (XPCONV_MEMORY_MB=MiB sets the memory xpconv may use)")


class MemoryBudgetError(ValueError):
    """Work refused before allocation: it needs more memory than is available."""


def training_bytes(network: Sequential, sample_shape: tuple[int, ...], batch: int, optimizer_slots: int = 2) -> int:
    """Estimated bytes to train ``network`` on batches of ``batch`` samples of
    ``sample_shape`` (C, H, W) on host NumPy (the module docstring's formula).

    ``optimizer_slots``: arrays the optimizer keeps per parameter (Adam 2, Momentum 1, SGD 0).
    """
    import tracemalloc

    import numpy

    params = sum(int(p.nbytes) for p in network.params.values())
    dtype = next(iter(network.params.values())).dtype
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        network.predict(numpy.zeros((1, *sample_shape), dtype=dtype), train_flg=False)
        forward = tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()
    return params * (2 + optimizer_slots) + 3 * forward * max(1, batch)


#: arrays an optimizer keeps per parameter (for :func:`training_bytes`)
OPTIMIZER_SLOTS = {"SGD": 0, "Momentum": 1, "Nesterov": 1, "AdaGrad": 1, "RMSprop": 1, "Adam": 2}
