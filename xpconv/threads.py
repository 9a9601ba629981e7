"""Threads on host NumPy: the batch chunks of the window ops run on a pool of workers.

NumPy's element-wise work (building columns, col2im, pooling masks) runs on one core;
its matrix products already use every core (BLAS). With ``n > 1`` threads, the window
ops split each chunk of the batch (``workspace.batch_chunks``) into ``n`` parts of rows
that run at once on a pool of ``n`` workers (NumPy releases the GIL in its loops), with
BLAS limited to one thread per worker while they run (``threadpoolctl``), so the
workers and BLAS's own threads do not compete for the cores.

Results do not depend on the thread count, bit for bit: each part writes its own rows of
a preallocated output, and sums over the batch (a convolution's filter gradient) are taken
in the same order over the same chunks whatever the number of threads (the chunking
depends on the workspace limit only).

Other libraries (torch, JAX, CuPy, array-api-strict) keep their own threading: their
parts are the chunks themselves, computed one after another.

Default: 1 (no threads), or ``XPCONV_NUM_THREADS``. Measured on a 2-core machine, two
threads did not make these ops faster (README, "Threads"), so threads are opt-in:
``set_num_threads(usable_cores())``. ``set_num_threads(1)`` is xpconv without threads (no
pool, no ``threadpoolctl``).

>>> import xpconv
>>> xpconv.set_num_threads(1)
>>> xpconv.get_num_threads()
1
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
import warnings

from .devices import is_host_numpy

ENV_VAR = "XPCONV_NUM_THREADS"
# a part of a chunk holds at least this much scratch (smaller jobs run on fewer threads):
# a guess from noisy measurements on a loaded 2-core machine (README, "Threads"), where
# SimpleConvNet's batch-100 layers (parts of 1-3 MB) got slower on two threads
MIN_PART_BYTES = 4 * 2**20


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # no sched_getaffinity on macOS and Windows
        return max(1, os.cpu_count() or 1)


def _threads_from_env(default: int) -> int:
    """``XPCONV_NUM_THREADS`` (an int >= 1), else ``default``.

    A bad value never stops ``import xpconv``: it is ignored with a warning.
    """
    text = os.environ.get(ENV_VAR)
    if text is None or not text.strip():
        return default
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        warnings.warn(f"{ENV_VAR}={text!r} is not a whole number of threads >= 1; ignoring it and "
                      f"using the default of {default}", RuntimeWarning, stacklevel=2)
        return default
    return n


# opt-in: two threads measured no faster than one on this project's 2-core machine
DEFAULT_THREADS = 1
_num_threads: int = _threads_from_env(DEFAULT_THREADS)
_pool: "concurrent.futures.ThreadPoolExecutor | None" = None
_pool_size = 0
_pool_lock = threading.Lock()
_blas = None          # threadpoolctl.ThreadpoolController, built on first parallel use
_in_worker = threading.local()   # .active: this thread is running a job of the pool


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: it builds its own pool if needed."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def get_num_threads() -> int:
    """Threads the window ops use on host NumPy (as ``torch.get_num_threads``)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n >= 1`` threads on host NumPy from now on; 1: no thread pool.

    Results are bit-identical for every ``n``; only speed changes.
    """
    global _num_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: expected an int number of threads >= 1; got {n!r}")
    _num_threads = n   # a pool of another size is replaced on its next use (1: none is used)


def workers(like) -> int:
    """Workers the window ops on ``like``'s arrays run on: the thread count on host NumPy,
    1 for every other library (they have their own threading)."""
    return _num_threads if _num_threads > 1 and is_host_numpy(like) else 1


def split(chunks: "list[tuple[int, int]]", like, bytes_per_sample: int = 0) -> "list[tuple[int, int]]":
    """Each (start, stop) chunk split into ``workers(like)`` parts of near-equal rows, fewer
    where a part would hold less than :data:`MIN_PART_BYTES` of scratch
    (``bytes_per_sample`` per row: a job too small to pay for a thread's hand-off);
    with one worker, ``chunks`` itself.

    >>> split([(0, 5), (5, 7)], like)     # doctest: +SKIP  (two workers)
    [(0, 2), (2, 5), (5, 6), (6, 7)]
    """
    n = workers(like)
    if n == 1 or getattr(_in_worker, "active", False):
        return chunks
    parts = []
    for start, stop in chunks:
        rows = stop - start
        big_enough = rows * bytes_per_sample // MIN_PART_BYTES if MIN_PART_BYTES > 0 else rows
        k = max(1, min(n, rows, big_enough))
        bounds = [start + rows * i // k for i in range(k + 1)]
        parts += list(zip(bounds[:-1], bounds[1:]))
    return parts


def map_chunks(fn, chunks: "list[tuple[int, int]]", like) -> list:
    """``[fn(start, stop) for start, stop in chunks]``, on the pool on host NumPy.

    The jobs must be independent (each writes its own rows, or returns its result):
    with more than one worker they run at once, BLAS at one thread per worker; the
    results come back in the order of ``chunks``. Called from a job (an op inside an
    op), it runs its jobs in that worker, one after another.
    """
    if workers(like) == 1 or len(chunks) == 1 or getattr(_in_worker, "active", False):
        return [fn(start, stop) for start, stop in chunks]

    def job(chunk):
        _in_worker.active = True
        try:
            return fn(*chunk)
        finally:
            _in_worker.active = False

    with _blas_one_thread():
        return list(_get_pool().map(job, chunks))


def _get_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The pool of ``_num_threads`` workers (one of another size is replaced: a larger one
    would run more parts at once than the workspace limit allows for)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != _num_threads:
            if _pool is not None:
                _pool.shutdown(wait=False)   # its running jobs finish; its threads then exit
            _pool = concurrent.futures.ThreadPoolExecutor(_num_threads, thread_name_prefix="xpconv")
            _pool_size = _num_threads
        return _pool


def _blas_one_thread():
    """Context: BLAS at one thread (threadpoolctl; imported on first use)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController  # lazily: only with threads
        _blas = ThreadpoolController()   # finds the loaded BLAS libraries once
    return _blas.limit(limits=1, user_api="blas")
