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
import math
import os
import warnings

_DEFAULT_BYTES = 8 * 2**20
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
        size = f" of {default / 2**20:g} MiB" if isinstance(default, int) else ""
        warnings.warn(f"{ENV_VAR}={text!r} is not a number of MiB > 0; ignoring it and using the "
                      f"default workspace limit{size}", RuntimeWarning, stacklevel=2)
        return default
    return int(nbytes)


_limit = _limit_from_env(_DEFAULT_BYTES)


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
