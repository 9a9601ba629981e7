"""Threads on host NumPy: the batch chunks of the window ops run on a pool of workers.

NumPy's element-wise work (building columns, col2im, pooling masks) runs on one core;
its matrix products already use every core (BLAS). With ``n > 1`` threads, a window op
on a large batch cuts it into chunks of a ``1/n`` share of the workspace limit each
(``workspace.batch_chunks``) and ``n`` workers take the chunks one after another
(:func:`imap_chunks`; NumPy releases the GIL in its loops), with BLAS limited to one
thread per worker while they run (``threadpoolctl``), so the workers and BLAS's own
threads do not compete for the cores. ``n`` chunks of ``1/n`` of the limit are alive at
once: the same bound as one chunk on one thread (a sample of half the limit or more gets
at most two workers: ``workspace.chunked``). Small ops (:data:`MIN_THREADED_BYTES`) stay
on the calling thread. A network's gradient over a batch of more than 64 samples goes in
micro-batches (:mod:`xpconv.network.microbatch`), and the workers take whole micro-batches: each
runs every layer on its part, as one op on one thread.

Results do not depend on the thread count, bit for bit: each chunk writes its own rows of
a preallocated output, and sums over the batch (a convolution's filter gradient) are
taken sample after sample in the order of the batch, whatever the chunks.

Other libraries (torch, JAX, CuPy, array-api-strict) keep their own threading: their
chunks are computed one after another, at the whole limit each.

Default: the usable cores (:func:`usable_cores`), or ``XPCONV_NUM_THREADS``.
``set_num_threads(1)`` is xpconv without threads (no pool, no ``threadpoolctl``).

>>> import xpconv
>>> xpconv.set_num_threads(1)
>>> xpconv.get_num_threads()
1
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import threading
import warnings

from .devices import is_host_numpy

ENV_VAR = "XPCONV_NUM_THREADS"
# an op runs on the pool only if its whole batch holds at least this much scratch. Measured
# on a 2-core machine (README, "Threads"): a SimpleConvNet training step got slower on two
# threads with its layers threaded (~7 MB each at batch 100, ~18 MB at 256), as OpenBLAS's
# threads still spin after the matrix products next to them; layers of 50 MB and more gain.
MIN_THREADED_BYTES = 32 * 2**20


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


# set by MPI launchers (MPICH/Hydra, Open MPI, MVAPICH, Slurm) in every rank: ranks on this machine
_LOCAL_RANK_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                    "SLURM_NTASKS_PER_NODE")
_BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def local_ranks() -> int:
    """How many ranks of an MPI job share this machine (1 outside a job), from the launcher's
    environment: no variable needs to be set by hand."""
    for name in _LOCAL_RANK_VARS:
        text = os.environ.get(name, "").split("(")[0].split(",")[0].strip()   # Slurm: "2(x3)"
        if text.isdigit() and int(text) >= 1:
            return int(text)
    return 1


# the default: the usable cores, shared by the ranks of an MPI job on this machine (each gets
# cores / local ranks), so that ranks never fight over the cores (as torch.get_num_threads()
# for one process)
DEFAULT_THREADS = max(1, usable_cores() // local_ranks())
_num_threads: int = _threads_from_env(DEFAULT_THREADS)
_pool: concurrent.futures.ThreadPoolExecutor | None = None
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


def share_cores_between_ranks() -> dict:
    """In an MPI job with several ranks on this machine, limit BLAS (``threadpoolctl``) and
    torch (when imported) to this rank's share of the cores, as xpconv's own threads are:
    ``usable cores // local ranks``. An explicit setting wins: nothing is changed for BLAS
    when ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` is set, nor for
    torch when ``torch.set_num_threads`` was given another count than torch's default.
    Called by :func:`xpconv.distributed.init`. Returns what was set, e.g.
    ``{"blas": 1, "torch": 1}``."""
    import sys
    done: dict = {}
    if local_ranks() <= 1:
        return done
    share = DEFAULT_THREADS
    if not any(os.environ.get(v) for v in _BLAS_VARS):
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=share, user_api="blas")
        done["blas"] = share
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() == usable_cores():
        torch.set_num_threads(share)
        done["torch"] = share
    return done


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
    """Workers that jobs on ``like``'s arrays run on: the thread count on host NumPy, 1 for
    every other library (they have their own threading), and 1 when called from a job of
    the pool (an op inside an op, an op inside a micro-batch)."""
    if _num_threads == 1 or getattr(_in_worker, "active", False) or not is_host_numpy(like):
        return 1
    return _num_threads


def workers_for(like, op_bytes: int) -> int:
    """Workers for one op whose whole batch holds ``op_bytes`` of scratch: ``workers(like)``,
    or 1 for an op smaller than :data:`MIN_THREADED_BYTES` (too small to pay for the threads'
    hand-offs)."""
    return 1 if op_bytes < MIN_THREADED_BYTES else workers(like)


def imap_chunks(fn, chunks: list[tuple[int, int]], n: int):
    """Yield ``fn(start, stop)`` for each chunk, in the order of ``chunks``.

    With ``n > 1`` the jobs run on the pool, at most ``n`` at once, counting a result
    the consumer is working on (so at most ``n`` chunks' scratch and results are alive),
    BLAS at one thread per worker while they run. The jobs must be independent (each
    writes its own rows, or returns its result). With ``n == 1``: one after another, in
    the calling thread.
    """
    if n == 1 or len(chunks) == 1:
        for start, stop in chunks:
            yield fn(start, stop)
        return

    def job(chunk):
        _in_worker.active = True
        try:
            return fn(*chunk)
        finally:
            _in_worker.active = False

    pool, todo = _get_pool(n), iter(chunks)
    running: collections.deque = collections.deque()
    try:
        with _blas_one_thread():
            for chunk in itertools.islice(todo, n):
                running.append(pool.submit(job, chunk))
            while running:
                yield running.popleft().result()
                following = next(todo, None)   # handed out once the consumer is done with a result
                if following is not None:
                    running.append(pool.submit(job, following))
    finally:   # an error, or a consumer that stops early: no job is left writing
        for future in running:
            future.cancel()
        concurrent.futures.wait(running)


def _get_pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of at least ``n`` workers (kept for later calls; replaced by a larger one)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=False)   # its running jobs finish; its threads then exit
            _pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="xpconv",
                                                          initializer=_core_binder(n))
            _pool_size = n
        return _pool


def _core_binder(n: int):
    """The pool's initializer: it binds each new worker to a core of its own, in the order
    the workers start, when there is one worker per usable core (Linux); None (no binding)
    otherwise.

    Unbound, the workers woken for a job after an idle moment were often put on one core
    for the job's first milliseconds: a SimpleConvNet step of two micro-batches then took
    about what one thread takes (21.7 vs 13.3 ms median, timed beside PyTorch). With fewer
    workers than cores nothing is bound: two processes would bind theirs to the same cores
    and leave the others idle.
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # no sched_getaffinity on macOS and Windows
        return None
    if n != len(cores):
        return None
    order = itertools.count()

    def bind():
        try:
            os.sched_setaffinity(0, {cores[next(order) % len(cores)]})   # 0: this thread
        except OSError:     # the core left the process's set since: stay unbound
            pass
    return bind


def _blas_one_thread():
    """Context: BLAS at one thread (threadpoolctl; imported on first use)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController  # lazily: only with threads
        _blas = ThreadpoolController()   # finds the loaded BLAS libraries once
    return _blas.limit(limits=1, user_api="blas")
