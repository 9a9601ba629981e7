"""The workspace limit: how much scratch memory one op may use per chunk of the batch.

Window ops process the batch in chunks so that one chunk's largest temporary (the
columns ``(n, C*FH*FW, OH*OW)`` of a convolution, the padded input of a pooling, ...)
stays under the limit. Results do not depend on it; only speed and peak memory do.
On host NumPy with threads (:mod:`xpconv.threads`), ``n`` chunks of ``1/n`` of the limit
run at once, so the scratch alive at once stays about one limit's whatever the thread count.

Default, per device (:func:`default_limit`): 8 MiB on a CPU (NumPy, torch CPU, JAX CPU,
array-api-strict; measured best on a 2-core CPU: columns that stay in cache) and a fixed
512 MiB on a GPU (CuPy, torch CUDA, JAX GPU: a big layer's batch in one or two chunks,
so few kernel launches). ``XPCONV_WORKSPACE_MB``, :func:`set_workspace_limit` and
:func:`workspace_limit` override it on every device.

>>> import xpconv
>>> with xpconv.workspace_limit(16 * 2**20):
...     pass  # ops in here use at most ~16 MiB of columns per chunk
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import array_api_extra as xpx

from . import threads
from ._namespace import array_namespace, device
from ._typing import Array
from .devices import CPU_WORKSPACE, GPU_WORKSPACE, Device, default_workspace

ENV_VAR = "XPCONV_WORKSPACE_MB"


def _limit_from_env(default):
    """``XPCONV_WORKSPACE_MB`` (MiB, a finite number > 0) in bytes, else ``default``.

    A bad value never stops ``import xpconv``: it is ignored with a warning.
    """
    text = os.environ.get(ENV_VAR)
    if text is None or not text.strip():
        return default
    try:
        nbytes = float(text) * 2**20
    except ValueError:
        nbytes = math.nan
    if not math.isfinite(nbytes) or nbytes < 1:
        size = (f" of {default / 2**20:g} MiB" if isinstance(default, int) else
                f" ({CPU_WORKSPACE // 2**20} MiB on a CPU, {GPU_WORKSPACE // 2**20} MiB on a GPU)")
        warnings.warn(f"{ENV_VAR}={text!r} is not a number of MiB > 0; ignoring it and using the "
                      f"default workspace limit{size}", RuntimeWarning, stacklevel=2)
        return default
    return int(nbytes)


# the override on every device (None: the per-device default)
_override: int | None = _limit_from_env(None)


def default_limit(where: Device | Array | None = None) -> int:
    """The default limit in bytes for ``where`` (a Device or an array; None: the CPU)."""
    return CPU_WORKSPACE if where is None else default_workspace(where)


def get_workspace_limit(where: Device | Array | None = None) -> int:
    """Current limit in bytes for ``where`` (a Device or an array; None: the CPU): the
    override if one is set, else :func:`default_limit`.
    """
    return _override if _override is not None else default_limit(where)


def set_workspace_limit(nbytes: int | None) -> None:
    """Set the limit in bytes on every device (at least one sample is always processed
    per chunk); None restores the per-device default.
    """
    global _override
    if nbytes is not None and (not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1):
        raise ValueError(f"set_workspace_limit: expected a positive int number of bytes or None; "
                         f"got {nbytes!r}")
    _override = nbytes


@contextlib.contextmanager
def workspace_limit(nbytes: int | None) -> Iterator[None]:
    """Temporarily set the limit in bytes (None: the per-device default)."""
    old = _override
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        set_workspace_limit(old)


def batch_chunks(n: int, bytes_per_sample: int, like: Device | Array | None = None,
                 workers: int = 1) -> list[tuple[int, int]]:
    """Split ``range(n)`` into (start, stop) chunks of at most the limit for ``like``'s
    device each, or a ``1/workers`` share of it when ``workers`` chunks run at once (at
    least one sample per chunk).

    Always at least one chunk, also for ``n == 0``.
    """
    per_chunk = max(1, get_workspace_limit(like) // workers // max(bytes_per_sample, 1))
    return [(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)] or [(0, 0)]


def chunked(n: int, bytes_per_sample: int, like: Array) -> tuple[list[tuple[int, int]], int]:
    """The chunks of an op over a batch of ``n`` samples and the workers that take them
    (``threads.workers_for``: more than one only on host NumPy, for a large op).

    The workers' chunks alive at once hold at most the limit plus one sample: fewer
    workers where one sample's scratch is a large share of the limit (two for a sample
    of half the limit or more, one for a sample larger than the limit: raise the limit
    for more).
    """
    per_sample = max(bytes_per_sample, 1)
    workers = min(threads.workers_for(like, n * bytes_per_sample),
                  1 + get_workspace_limit(like) // per_sample)
    return batch_chunks(n, bytes_per_sample, like, workers), workers


def itemsize(x: Array) -> int:
    """Bytes per element of the floating array ``x``."""
    return array_namespace(x).finfo(x.dtype).bits // 8


def set_rows(out: Array, n0: int, n1: int, part: Array) -> Array:
    """``out[n0:n1] = part`` (one chunk of the batch), in place where the library allows it."""
    return xpx.at(out)[n0:n1, ...].set(part)


def map_batch(kernel: Callable[..., Array], arrays: Sequence[Array], out_shape: tuple[int, ...],
              bytes_per_sample: int) -> Array:
    """``kernel(*arrays)``, computed for one chunk of the batch (axis 0 of every array) at
    a time and assembled into one array of ``out_shape`` (dtype and device of ``arrays[0]``).

    Each chunk's result is written and dropped before the next chunk is computed, so the
    scratch alive at once is one chunk's (plus that chunk's result). On host NumPy with
    threads, ``n`` workers take chunks of ``1/n`` of the limit (``threads.imap_chunks``):
    what is alive at once is still about one limit's worth.
    """
    like = arrays[0]
    chunks, workers = chunked(out_shape[0], bytes_per_sample, like)
    if len(chunks) == 1:
        return kernel(*arrays)
    xp = array_namespace(like)
    out = xp.empty(out_shape, dtype=like.dtype, device=device(like))

    def part(n0, n1):
        nonlocal out  # in place where chunks run at once (host NumPy): the same array
        out = set_rows(out, n0, n1, kernel(*(a[n0:n1, ...] for a in arrays)))

    for _ in threads.imap_chunks(part, chunks, workers):
        pass
    return out
