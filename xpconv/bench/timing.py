"""Timing: round-robin samples with idle gaps, and the float32 GEMM ceiling.

Each case warms every contender up, then takes ``repeat`` samples, round-robin over
the contenders (the starting contender rotates each round), synchronising the device
before and after every timed call.  An idle gap precedes each sample (other
libraries' spinning threads go to sleep), then, for calls under
:data:`SETTLE_BELOW_S`, one untimed call (steady state, as in a training loop).
Calls under :data:`LOOP_BELOW_S` are timed as a loop of calls lasting about
:data:`LOOP_S`, synchronised once at its end as a training loop is; the sample is the
loop's time per call. The training-step cases are always timed in loops (of about
:data:`STEP_LOOP_S`): a step's steady state is a loop, in which JAX and a GPU overlap one
step's host work with the previous step's device work.
A float32 GEMM measured in the same run, before and after the cases, gives each
contender's ceiling in GFLOP/s.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .results import Ceiling, Measurement, error_text

DEFAULT_REPEAT = 7
QUICK_REPEAT = 3
DEFAULT_WARMUP = 2
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}  # also in --quick: smaller GEMMs are noisy
GEMM_MIN_REPEAT = 5
DEFAULT_GAP = 0.15  # > OpenBLAS's default thread spin time (2**28 cycles)
SETTLE_BELOW_S = 0.25  # calls shorter than this get one untimed call after the gap
LOOP_BELOW_S = 0.01    # calls shorter than this are timed in loops ...
LOOP_S = 0.05          # ... of about this many seconds
STEP_LOOP_S = 0.25     # the training-step cases: every call in loops of about this long

Timed = tuple[Callable[[], Any], Callable[..., None]]  # (call, sync(out=None))


def timed_call(fn: Callable[[], Any], sync: Callable[[Any], None], calls: int = 1) -> float:
    """Seconds per call of ``calls`` calls of ``fn`` in a row, the device synchronised
    before the first and after the last, GC off.
    """
    sync(None)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        sync(out)
        return (time.perf_counter() - start) / calls
    finally:
        if gc_was_on:
            gc.enable()


def calls_per_sample(seconds_per_call: float, loop_below: float = LOOP_BELOW_S,
                     loop_s: float = LOOP_S) -> int:
    """1, or for a call under ``loop_below`` seconds the calls that last about ``loop_s``."""
    if seconds_per_call >= loop_below:
        return 1
    return max(1, round(loop_s / max(seconds_per_call, 1e-6)))


def time_round_robin(fns: dict[str, Timed], repeat: int, warmup: int, gap: float = 0.0, *,
                     loop_below: float = LOOP_BELOW_S, loop_s: float = LOOP_S) -> dict[str, Measurement]:
    """Samples (ms) of every callable, taken round-robin.

    ``fns`` maps name -> (callable, sync).  After ``warmup`` untimed calls each,
    round ``r`` calls the contenders in order, rotated by ``r``, so slow drift
    (thermal, other load) hits all of them alike.  Each timed call is preceded
    by ``gap`` idle seconds, so the worker threads of the previous contender's
    library (OpenBLAS spins ~0.1 s after each call) are asleep and do not steal
    the cores.  For short calls (warm-up under ``SETTLE_BELOW_S``) one untimed
    "settle" call follows the gap, so the sample measures the steady state a
    training loop runs in, not the wake-up of thread pools that the gap put to
    sleep.  Calls under ``loop_below`` seconds are timed in loops of about ``loop_s``
    (:func:`calls_per_sample`), the sample being the time per call.  A contender that raises is dropped, its
    measurement carries the error.
    """
    results = {name: Measurement() for name in fns}
    live, settle, calls = {}, {}, {}
    for name, (fn, sync) in fns.items():
        try:
            start = time.perf_counter()
            for _ in range(max(warmup, 1)):
                sync(fn())
            per_call = (time.perf_counter() - start) / max(warmup, 1)
            settle[name] = per_call < SETTLE_BELOW_S
            calls[name] = calls_per_sample(per_call, loop_below, loop_s)
            live[name] = (fn, sync)
        except Exception as exc:
            results[name] = Measurement.failed(error_text(exc))
    for r in range(repeat):
        names = list(live)
        if not names:
            break
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, sync = live[name]
            time.sleep(gap)
            try:
                if settle[name]:
                    sync(fn())
                results[name].samples_ms.append(1e3 * timed_call(fn, sync, calls[name]))
            except Exception as exc:
                results[name] = Measurement.failed(error_text(exc))
                del live[name]
    return results


def measure_ceilings(contenders: list, repeat: int, warmup: int, gap: float = 0.0,
                     size: int | None = None) -> dict[str, Measurement]:
    """Float32 square GEMM GFLOP/s (``2 n^3 / median``) of every working contender.

    ``size`` overrides the per-device-class matrix size of :data:`GEMM_SIZE`.
    """
    sizes = {k: size or n for k, n in GEMM_SIZE.items()}
    rng = np.random.default_rng(1)
    mats, fns, info = {}, {}, {}
    for c in contenders:
        if c.error:
            info[c.name] = Measurement.failed(c.error)
            continue
        n = sizes[c.device_class]
        if n not in mats:
            mats[n] = (rng.standard_normal((n, n), dtype=np.float32),
                       rng.standard_normal((n, n), dtype=np.float32))
        try:
            fns[c.name] = (c.at_threads(c.gemm(*mats[n])), c.sync)   # at the contender's threads
            info[c.name] = Measurement(n=n)
        except Exception as exc:
            info[c.name] = Measurement.failed(error_text(exc), n=n)
    for name, m in time_round_robin(fns, max(repeat, GEMM_MIN_REPEAT), max(warmup, 2), gap).items():
        m.n = info[name].n
        if m.ok and m.n is not None and m.median_ms is not None:
            m.gflops = 2.0 * m.n ** 3 / (m.median_ms * 1e-3) / 1e9
        info[name] = m
    return info


def best_ceilings(first: dict[str, Measurement], last: dict[str, Measurement]) -> dict[str, Ceiling]:
    """Per contender, the better of the GEMM ceilings measured before and after the cases.

    Taking it twice guards against the machine being slow (or fast) only at the
    start; both measurements stay in the record.
    """
    return {name: Ceiling.from_runs(a, last.get(name)) for name, a in first.items()}
