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

Default (:mod:`xpconv.thread_defaults`, decided once per process): the usable cores
(affinity and container quota), shared by the ranks of an MPI job on this machine;
``XPCONV_NUM_THREADS`` or :func:`set_num_threads` wins. The same decision caps BLAS and
torch for an MPI rank and runs a small pass's matrix products at one BLAS thread
(:func:`ensure_defaults`, :func:`blas_in_pass`); :func:`xpconv.thread_report` says what
was decided and why. ``set_num_threads(1)`` is xpconv without threads (no pool, no
``threadpoolctl`` outside an MPI job).

>>> import xpconv
>>> xpconv.set_num_threads(1)
>>> xpconv.get_num_threads()
1
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import os
import sys
import threading
import warnings

from . import thread_defaults
from .devices import is_host_numpy

ENV_VAR = "XPCONV_NUM_THREADS"
# an op runs on the pool only if its whole batch holds at least this much scratch. Measured
# on a 2-core machine (README, "Threads"): a SimpleConvNet training step got slower on two
# threads with its layers threaded (~7 MB each at batch 100, ~18 MB at 256), as OpenBLAS's
# threads still spin after the matrix products next to them; layers of 50 MB and more gain.
MIN_THREADED_BYTES = 32 * 2**20


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, within its container's CPU quota
    (``os.cpu_count()`` where the affinity is unknown).
    """
    return thread_defaults.machine_cores().usable


def local_ranks() -> int:
    """How many ranks of an MPI job share this machine (1 outside a job), from the launcher's
    environment (:data:`xpconv.thread_defaults.LOCAL_RANK_VARS`): no variable needs to be set
    by hand.
    """
    return thread_defaults.local_ranks()[0]


# the decision for this process (xpconv.thread_defaults): the usable cores, shared by the
# ranks of an MPI job on this machine (each gets its share), unless set explicitly
DECISION = thread_defaults.decide(os.environ, thread_defaults.machine_cores())
if DECISION.bad_env is not None:   # a bad value never stops ``import xpconv``
    warnings.warn(f"{ENV_VAR}={DECISION.bad_env!r} is not a whole number of threads >= 1; ignoring "
                  f"it and using the default of {DECISION.share}", RuntimeWarning, stacklevel=2)
DEFAULT_THREADS = DECISION.share
_num_threads: int = DECISION.workers
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_defaults_lock = threading.Lock()
_blas = None          # threadpoolctl.ThreadpoolController, built on first parallel use
_in_worker = threading.local()   # .active: this thread is running a job of the pool
_applied: dict = {}   # what ensure_defaults set: {"blas": n, "torch": n, "torch_before": n, ...}
_blas_done = False    # the process-wide BLAS decision is applied (or there was nothing to apply)
_torch_done = False   # the torch decision is applied (once torch is imported)


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: it builds its own pool if needed."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def ensure_defaults() -> None:
    """Apply this process's decision (:data:`DECISION`) to BLAS and torch, once; a flag
    check after that.

    BLAS: capped for the whole process at the rank's share in an MPI job with several
    ranks on this machine (``threadpoolctl``), unless a BLAS/OpenMP variable is set.
    torch: only once it is imported (xpconv never imports it for this), capped at the
    rank's share likewise, unless ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set or
    ``torch.set_num_threads`` was called before. One process on a machine keeps the
    libraries' own counts. Called by xpconv's ops and networks and by ``distributed.init``.
    """
    global _blas_done, _torch_done
    if _blas_done and (_torch_done or "torch" not in sys.modules):
        return
    with _defaults_lock:
        torch = None if _torch_done else sys.modules.get("torch")
        if torch is not None and not hasattr(torch, "get_num_threads"):   # torch still importing
            torch = None
        before = None if torch is None else torch.get_num_threads()  # read first: a BLAS cap on
        if not _blas_done:                                            # torch's MKL can change it
            if DECISION.blas is not None:
                from threadpoolctl import threadpool_limits
                threadpool_limits(limits=DECISION.blas, user_api="blas")
                _applied["blas"] = DECISION.blas
            _blas_done = True
        if torch is not None and before is not None:
            n, _ = thread_defaults.torch_threads(DECISION, os.environ, before)
            _applied["torch_before"] = before
            if n is not None and n != before:
                torch.set_num_threads(n)
                _applied["torch"] = n
                try:    # possible only before torch's inter-op pool has started
                    torch.set_num_interop_threads(n)
                    _applied["torch_interop"] = n
                except RuntimeError:
                    pass
            _torch_done = True


def applied() -> dict:
    """What :func:`ensure_defaults` has set so far, e.g. ``{"blas": 1, "torch": 1}``
    (``torch_before``: torch's count before xpconv looked at it).
    """
    return dict(_applied)


def share_cores_between_ranks() -> dict:
    """:func:`ensure_defaults` under its former name (called by :func:`xpconv.distributed.init`);
    returns what was set, e.g. ``{"blas": 1, "torch": 1}``.
    """
    ensure_defaults()
    return {k: v for k, v in _applied.items() if k in ("blas", "torch")}


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
    the pool (an op inside an op, an op inside a micro-batch). Applies the process's
    thread decision on first use (:func:`ensure_defaults`).
    """
    ensure_defaults()
    if _num_threads == 1 or getattr(_in_worker, "active", False) or not is_host_numpy(like):
        return 1
    return _num_threads


def workers_for(like, op_bytes: int) -> int:
    """Workers for one op whose whole batch holds ``op_bytes`` of scratch: ``workers(like)``,
    or 1 for an op smaller than :data:`MIN_THREADED_BYTES` (too small to pay for the threads'
    hand-offs).
    """
    if op_bytes < MIN_THREADED_BYTES:
        ensure_defaults()
        return 1
    return workers(like)


def blas_in_pass(like, samples: int):
    """Context for a network's pass over ``samples`` samples of ``like``'s library: BLAS at
    one thread (``threadpoolctl``, restored after) on host NumPy for a pass of at most
    ``thread_defaults.SMALL_PASS`` samples while xpconv runs more than one thread, as inside
    the workers: such a pass's matrix products are too small to gain much from BLAS's
    threads, whose spinning between them costs the most when other processes want the
    cores. Nothing is changed when a BLAS/OpenMP thread variable is set (it wins), with one
    xpconv thread, on other libraries, inside a worker, or for a larger pass.
    """
    ensure_defaults()
    if (DECISION.blas_in_passes is None or _num_threads == 1 or samples > thread_defaults.SMALL_PASS
            or getattr(_in_worker, "active", False) or not is_host_numpy(like)):
        return contextlib.nullcontext()
    return _blas_limit(DECISION.blas_in_passes)


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
    otherwise, and never with several ranks of an MPI job on this machine (two ranks would
    bind their workers to the same cores).

    Unbound, the workers woken for a job after an idle moment were often put on one core
    for the job's first milliseconds: a SimpleConvNet step of two micro-batches then took
    about what one thread takes (21.7 vs 13.3 ms median, timed beside PyTorch). With fewer
    workers than cores nothing is bound: two processes would bind theirs to the same cores
    and leave the others idle.
    """
    if not binds_workers(n):
        return None
    cores = sorted(thread_defaults.affinity() or ())
    order = itertools.count()

    def bind():
        try:
            os.sched_setaffinity(0, {cores[next(order) % len(cores)]})   # 0: this thread
        except OSError:     # the core left the process's set since: stay unbound
            pass
    return bind


def binds_workers(n: int) -> bool:
    """Whether a pool of ``n`` workers binds each to a core: one worker per usable core, on
    Linux, in a process that is alone on the machine (not one of several MPI ranks here).
    """
    cores = thread_defaults.affinity()
    return cores is not None and n == len(cores) and DECISION.local_ranks == 1


def _blas_limit(n: int):
    """Context: BLAS at ``n`` threads (threadpoolctl; imported on first use), restored after."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController  # lazily: only with threads
        _blas = ThreadpoolController()   # finds the loaded BLAS libraries once
    return _blas.limit(limits=n, user_api="blas")


def _blas_one_thread():
    """Context: BLAS at one thread, restored after."""
    return _blas_limit(1)
