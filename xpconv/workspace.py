"""The workspace limit: how much scratch memory one op may use for its column matrix.

im2col-style ops process the batch in chunks so that the columns of one chunk,
``(n, C*FH*FW, OH*OW)``, stay under the limit; the max-pooling backward chunks so
that the input of one chunk ``(n, C, H, W)`` does. Results do not depend on it; only
speed and peak memory do. Default: 8 MiB (measured best on a 2-core CPU: columns that stay in cache), or ``XPCONV_WORKSPACE_MB`` if set.

>>> import xpconv
>>> with xpconv.workspace_limit(16 * 2**20):
...     pass  # ops in here use at most ~16 MiB of columns per chunk
"""
from __future__ import annotations

import contextlib
import os

import array_api_extra as xpx
from array_api_compat import array_namespace

_DEFAULT_BYTES = 8 * 2**20
_limit = int(float(os.environ.get("XPCONV_WORKSPACE_MB", _DEFAULT_BYTES / 2**20)) * 2**20)


def get_workspace_limit() -> int:
    """Current limit in bytes."""
    return _limit


def set_workspace_limit(nbytes: int) -> None:
    """Set the limit in bytes (at least one sample's columns are always used)."""
    global _limit
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1:
        raise ValueError(f"set_workspace_limit: expected a positive int number of bytes; got {nbytes!r}")
    _limit = nbytes


@contextlib.contextmanager
def workspace_limit(nbytes: int):
    """Temporarily set the limit in bytes."""
    old = get_workspace_limit()
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        set_workspace_limit(old)


def batch_chunks(n: int, bytes_per_sample: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into (start, stop) chunks of at most the limit each.

    Always at least one chunk, also for ``n == 0``.
    """
    per_chunk = max(1, _limit // max(bytes_per_sample, 1))
    return [(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)] or [(0, 0)]


def itemsize(x) -> int:
    """Bytes per element of the floating array ``x``."""
    return array_namespace(x).finfo(x.dtype).bits // 8


def set_rows(out, n0: int, n1: int, part):
    """``out[n0:n1] = part`` (one chunk of the batch), in place where the library allows it."""
    return xpx.at(out)[n0:n1, ...].set(part)
