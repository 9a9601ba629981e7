"""Threads on host NumPy (xpconv.threads): the knob, and results that do not depend on it.

Every op and a few training steps are run with 1, 2 and 3 threads and compared bit for
bit; the chunks differ with the thread count (each of n workers takes chunks of 1/n of
the limit), and a small workspace limit makes them many, so the chunks' order on the pool
and the filter gradient's sum over them are exercised.
"""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

import xpconv
from tests.helpers import traced_extra_bytes
from xpconv import functional as F, thread_defaults, threads, workspace
from xpconv.network import microbatch as _microbatch

ROOT = pathlib.Path(__file__).resolve().parents[1]
THREADS = [1, 2, 3]


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """Restores the thread count; ops of any size (the small test shapes use the pool)."""
    monkeypatch.setattr(threads, "MIN_THREADED_BYTES", 0)
    old = xpconv.get_num_threads()
    yield
    xpconv.set_num_threads(old)


def _on_each_thread_count(fn, limit=None):
    """{n: fn()} for each n in THREADS, under the workspace ``limit``."""
    out = {}
    with xpconv.workspace_limit(limit):
        for n in THREADS:
            xpconv.set_num_threads(n)
            out[n] = fn()
    return out


def _assert_bit_identical(results):
    base = results[THREADS[0]]
    for n, got in results.items():
        assert len(got) == len(base)
        for i, (a, b) in enumerate(zip(got, base)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), \
                f"output {i} with {n} threads differs from {THREADS[0]} thread"


class _CountWorkerJobs:
    """Counts the jobs of ``threads.imap_chunks`` that ran on the pool's worker threads."""

    def __init__(self, monkeypatch):
        self.on_workers = 0
        self._lock = threading.Lock()
        real = threads.imap_chunks

        def counting(fn, chunks, n):
            def job(n0, n1):
                if threading.current_thread() is not threading.main_thread():
                    with self._lock:
                        self.on_workers += 1
                return fn(n0, n1)
            return real(job, chunks, n)

        monkeypatch.setattr(threads, "imap_chunks", counting)


# ----------------------------------------------------------------------------- the knob

def test_default_is_the_usable_cores():
    """As ``torch.get_num_threads()``: every core this process may run on (its affinity,
    within a container's CPU quota); ``tests/test_thread_defaults.py`` checks the rules."""
    assert threads.usable_cores() >= 1
    if hasattr(os, "sched_getaffinity"):
        quota = thread_defaults.cgroup_quota()
        affinity = len(os.sched_getaffinity(0))
        assert threads.usable_cores() == (affinity if quota is None else min(affinity, math.ceil(quota)))
    out = _import_with_env("")
    assert out.returncode == 0 and out.stdout.strip() == str(threads.usable_cores()), out.stderr
    assert threads.DEFAULT_THREADS == threads.usable_cores()


def test_set_and_get():
    for n in (1, 2, 5, 1):
        xpconv.set_num_threads(n)
        assert xpconv.get_num_threads() == n


@pytest.mark.parametrize("bad", [0, -1, 2.0, "2", None, True])
def test_set_num_threads_refuses_a_bad_count(bad):
    before = xpconv.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: expected an int number of threads >= 1; got"):
        xpconv.set_num_threads(bad)
    assert xpconv.get_num_threads() == before


def _import_with_env(value):
    env = {**os.environ, "XPCONV_NUM_THREADS": value, "PYTHONPATH": str(ROOT)}
    code = "import xpconv; print(xpconv.get_num_threads())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("value, n", [("1", 1), ("3", 3), (" 2 ", 2)])
def test_env_var_sets_the_count(value, n):
    out = _import_with_env(value)
    assert out.returncode == 0 and out.stdout.strip() == str(n), out.stderr
    assert "XPCONV_NUM_THREADS" not in out.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "two"])
def test_bad_env_var_warns_and_uses_the_default(value):
    out = _import_with_env(value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(threads.DEFAULT_THREADS)
    warning = [line for line in out.stderr.splitlines() if "XPCONV_NUM_THREADS" in line]
    assert warning and repr(value) in warning[0] and "using the default" in warning[0], out.stderr


def test_one_thread_uses_no_pool_and_no_threadpoolctl():
    """1 thread is xpconv without threads: no pool is built, threadpoolctl is never imported."""
    code = ("import sys, numpy as np, xpconv\n"
            "from xpconv import functional as F, threads\n"
            "x = np.ones((64, 3, 16, 16))\n"
            "with xpconv.workspace_limit(2**14):\n"
            "    F.conv2d_backward(F.conv2d(x, np.ones((4, 3, 3, 3))), x, np.ones((4, 3, 3, 3)))\n"
            "    F.max_pool2d(x, 2)\n"
            "print('threadpoolctl' in sys.modules, threads._pool is None)\n")
    env = {**os.environ, "XPCONV_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_chunks_share_the_limit_among_the_workers():
    x = np.zeros(3)
    with xpconv.workspace_limit(1000):
        assert workspace.batch_chunks(7, 200, x) == [(0, 5), (5, 7)]
        assert workspace.batch_chunks(7, 200, x, workers=2) == [(0, 2), (2, 4), (4, 6), (6, 7)]
        assert workspace.batch_chunks(3, 10**6, x, workers=4) == [(0, 1), (1, 2), (2, 3)]  # >= 1 sample
        assert workspace.batch_chunks(0, 200, x, workers=2) == [(0, 0)]


def test_small_ops_and_other_libraries_stay_on_the_calling_thread(backend, monkeypatch):
    """Only host NumPy runs on the pool (other libraries have their own threading), and
    only for an op of at least MIN_THREADED_BYTES."""
    monkeypatch.setattr(threads, "MIN_THREADED_BYTES", 1000)
    xpconv.set_num_threads(3)
    a = backend.asarray(np.zeros(4))
    expected = 3 if isinstance(a, np.ndarray) else 1
    assert threads.workers(a) == expected
    assert threads.workers_for(a, 1000) == expected
    assert threads.workers_for(a, 999) == 1
    chunks, n = workspace.chunked(10, 100, a)
    assert n == expected and chunks == [(0, 10)]   # 1000 bytes: one chunk at the default limit
    with xpconv.workspace_limit(300):
        assert workspace.chunked(10, 100, a) == (workspace.batch_chunks(10, 100, a, expected), expected)


def test_imap_chunks_runs_on_the_pool_in_order():
    xpconv.set_num_threads(2)
    seen = []
    out = list(threads.imap_chunks(lambda n0, n1: seen.append(threading.current_thread()) or n1 - n0,
                                   [(0, 2), (2, 3), (3, 7)], 2))
    assert out == [2, 1, 4]
    assert not any(t is threading.main_thread() for t in seen)
    seen.clear()
    assert list(threads.imap_chunks(lambda n0, n1: seen.append(threading.current_thread()) or n0,
                                    [(0, 2), (2, 3)], 1)) == [0, 2]
    assert seen == [threading.main_thread()] * 2     # one worker: the calling thread


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs sched_getaffinity (Linux) and at least 2 usable cores")
def test_workers_get_a_core_each_when_there_is_one_worker_per_core(monkeypatch):
    cores = sorted(os.sched_getaffinity(0))

    def affinities(n):
        """The affinity of each worker of a new pool of n."""
        monkeypatch.setattr(threads, "_pool", None)
        meet = threading.Barrier(n, timeout=60)       # so that every worker takes one job

        def job(n0, n1):
            meet.wait()
            return os.sched_getaffinity(0)             # 0: the calling thread

        try:
            return list(threads.imap_chunks(job, [(i, i + 1) for i in range(n)], n))
        finally:
            threads._pool.shutdown(wait=True)
            monkeypatch.setattr(threads, "_pool", None)

    bound = affinities(len(cores))
    assert all(len(a) == 1 for a in bound) and sorted(min(a) for a in bound) == cores
    assert all(a == set(cores) for a in affinities(len(cores) + 1))    # oversubscribed: unbound
    assert os.sched_getaffinity(0) == set(cores)                        # the caller stays unbound
    # fewer workers than cores (a core more than there are, as the binder sees them): unbound
    real = os.sched_getaffinity
    with monkeypatch.context() as m:
        m.setattr(os, "sched_getaffinity", lambda pid: set(real(pid)) | {max(cores) + 1})
        assert all(a == set(cores) | {max(cores) + 1} for a in affinities(len(cores)))


def test_an_op_inside_a_job_runs_in_that_worker():
    """Nesting: an op called from a job does not use the pool (no deadlock, no oversubscription)."""
    xpconv.set_num_threads(2)
    x = np.zeros(1)

    def job(n0, n1):
        assert threads.workers_for(x, 10**12) == 1
        return n0

    assert list(threads.imap_chunks(job, [(i, i + 1) for i in range(9)], 2)) == list(range(9))


def test_at_most_n_jobs_run_at_once_and_none_runs_ahead():
    """The memory bound counts n chunks: at most n jobs are running or waiting to be consumed,
    also with a pool built for more threads."""
    import time
    xpconv.set_num_threads(3)
    list(threads.imap_chunks(lambda a, b: None, [(0, 1), (1, 2), (2, 3)], 3))   # a pool of 3 exists
    xpconv.set_num_threads(2)
    lock, active, most, started = threading.Lock(), [0], [0], []
    both = threading.Barrier(2, timeout=60)   # the first two jobs meet: they did run at once

    def job(n0, n1):
        with lock:
            started.append(n0)
            active[0] += 1
            most[0] = max(most[0], active[0])
        if n0 < 2:
            both.wait()
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return n0

    for i in threads.imap_chunks(job, [(i, i + 1) for i in range(6)], 2):
        time.sleep(0.02)              # a slow consumer: the workers must not run ahead of it
        with lock:
            assert max(started) <= i + 1     # n = 2 alive: result i and job i+1
    assert most[0] == 2 and sorted(started) == list(range(6))


def test_an_error_in_a_job_is_raised_after_every_job_has_stopped():
    import time
    xpconv.set_num_threads(2)
    finished = []

    def job(n0, n1):
        if n0 == 1:
            raise ValueError("job 1 failed")
        time.sleep(0.05)
        finished.append(n0)

    with pytest.raises(ValueError, match="job 1 failed"):
        list(threads.imap_chunks(job, [(i, i + 1) for i in range(6)], 2))
    settled = list(finished)
    time.sleep(0.2)
    assert finished == settled and 5 not in finished    # nothing still running, nothing queued ran


def test_blas_is_one_thread_inside_the_pool_and_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="BLAS limits are set with threadpoolctl")
    if not threadpoolctl.threadpool_info():
        pytest.skip("no BLAS library that threadpoolctl sees")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    xpconv.set_num_threads(2)
    inside = list(threads.imap_chunks(
        lambda n0, n1: [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"],
        [(0, 1), (1, 2)], 2))
    assert inside == [[1] * len(before)] * 2
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert after == before


# ----------------------------------------------------------------------------- bit-identical results

DTYPES = [np.float32, np.float64]
# the default (one chunk on one thread at these sizes, a few with more threads), and chunks
# of a few samples each
LIMITS = [None, "small"]


def _small_limit(bytes_per_sample):
    return None if bytes_per_sample is None else 5 * bytes_per_sample


@pytest.mark.parametrize("limit", LIMITS, ids=["default-limit", "small-limit"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("case", [  # C, FN, kernel, stride, pad, groups
    (3, 8, 3, 1, 1, 1), (4, 6, 5, 2, 2, 2), (6, 4, 1, 1, 0, 1)], ids=["3x3", "5x5-s2-g2", "1x1"])
def test_conv_forward_backward_do_not_depend_on_the_thread_count(case, dtype, limit, monkeypatch):
    C, FN, k, s, p, g = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((23, C, 13, 13)).astype(dtype)
    w = rng.standard_normal((FN, C // g, k, k)).astype(dtype)
    b = rng.standard_normal(FN).astype(dtype)
    OH = (13 + 2 * p - k) // s + 1
    dy = rng.standard_normal((23, FN, OH, OH)).astype(dtype)
    count = _CountWorkerJobs(monkeypatch)

    def run():
        y = F.conv2d(x, w, b, stride=s, pad=p, groups=g)
        return (y, *F.conv2d_backward(dy, x, w, stride=s, pad=p, groups=g))

    cols_per_sample = C * k * k * OH * OH * x.itemsize
    results = _on_each_thread_count(run, _small_limit(cols_per_sample) if limit else None)
    _assert_bit_identical(results)
    assert count.on_workers > 0 or not limit   # the chunks did run on the pool (one chunk: no pool)
    np.testing.assert_allclose(results[1][0], _reference_conv(x, w, b, s, p, g), rtol=1e-4, atol=1e-4)


def _reference_conv(x, w, b, s, p, g):
    """Naive grouped convolution, float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    N, _C, H, _W = x.shape
    FN, Cg, k, _ = w.shape
    OH = (H - k) // s + 1
    y = np.empty((N, FN, OH, OH))
    for f in range(FN):
        c0 = f // (FN // g) * Cg
        for i in range(OH):
            for j in range(OH):
                win = x[:, c0:c0 + Cg, i * s:i * s + k, j * s:j * s + k]
                y[:, f, i, j] = np.sum(win * w[f], axis=(1, 2, 3)) + b[f]
    return y


@pytest.mark.parametrize("limit", LIMITS, ids=["default-limit", "small-limit"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("mode, k, s, p", [("max", 2, 2, 0), ("max", 3, 1, 1), ("avg", 3, 2, 1),
                                           ("avg", 2, 2, 0)], ids=["max2", "max3-pad", "avg3-pad", "avg2"])
def test_pooling_does_not_depend_on_the_thread_count(mode, k, s, p, dtype, limit, monkeypatch):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((21, 5, 12, 12)).astype(dtype)
    x[3, 1, 2, :4] = np.nan
    x[7] = np.round(x[7])                         # ties: the first maximum takes the gradient
    OH = (12 + 2 * p - k) // s + 1
    dy = rng.standard_normal((21, 5, OH, OH)).astype(dtype)
    count = _CountWorkerJobs(monkeypatch)
    pool, back = ((F.max_pool2d, F.max_pool2d_backward) if mode == "max"
                  else (F.avg_pool2d, F.avg_pool2d_backward))

    def run():
        return (pool(x, k, stride=s, pad=p, rounding="floor"),
                back(dy, x, k, stride=s, pad=p, rounding="floor"))

    input_per_sample = 5 * 14 * 14 * x.itemsize
    _assert_bit_identical(_on_each_thread_count(run, _small_limit(input_per_sample) if limit else None))
    assert count.on_workers > 0 or not limit


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("limit", LIMITS, ids=["default-limit", "small-limit"])
@pytest.mark.parametrize("batch", [20, 150], ids=["one-pass", "micro-batches"])
def test_training_does_not_depend_on_the_thread_count(dtype, limit, batch, monkeypatch):
    """A few seeded SGD steps of a small SimpleConvNet: bit-identical parameters. A batch of
    150 goes in three micro-batches (xpconv.network.microbatch), which the workers take."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5 * batch // 2, 1, 12, 12)).astype(dtype)
    t = rng.integers(0, 10, x.shape[0])
    parts = []
    real_parts = _microbatch.parts
    monkeypatch.setattr(_microbatch, "parts", lambda n: parts.append(n) or real_parts(n))

    def train():
        net = xpconv.SimpleConvNet(input_dim=(1, 12, 12), conv_param={"filter_num": 6, "filter_size": 3,
                                   "pad": 1, "stride": 1}, hidden_size=20, seed=3, dtype=dtype,
                                   weight_init_std="he")
        opt = xpconv.Momentum(lr=0.05)
        for step in range(4):
            part = slice(batch // 2 * step, batch // 2 * step + batch)
            opt.update(net.params, net.gradient(x[part], t[part]))
        return [xpconv.to_numpy(net.params[name]).copy() for name in sorted(net.params)]

    results = _on_each_thread_count(train, 5 * 6 * 9 * 144 * np.dtype(dtype).itemsize if limit else None)
    _assert_bit_identical(results)
    assert parts == ([] if batch <= _microbatch.MICRO_BATCH else [batch] * 4 * len(THREADS))
    assert not np.array_equal(results[1][0], train_initial(dtype))   # training moved the weights


def train_initial(dtype):
    net = xpconv.SimpleConvNet(input_dim=(1, 12, 12), conv_param={"filter_num": 6, "filter_size": 3,
                               "pad": 1, "stride": 1}, hidden_size=20, seed=3, dtype=dtype,
                               weight_init_std="he")
    return xpconv.to_numpy(net.params[sorted(net.params)[0]])


# ----------------------------------------------------------------------------- memory

@pytest.mark.parametrize("op", ["conv", "max_pool", "avg_pool"])
def test_scratch_stays_bounded_with_threads(op):
    """With 3 threads three chunks run at once: the scratch alive at once is still bounded
    as with one (tests/test_memory.py's bound, traced with tracemalloc)."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((24, 8, 24, 24))
    w = rng.standard_normal((8, 8, 3, 3))
    dy = rng.standard_normal((24, 8, 24 if op == "conv" else 12, 24 if op == "conv" else 12))
    limit = 2**20

    def run():
        if op == "conv":
            return (F.conv2d(x, w, None, pad=1), *F.conv2d_backward(dy, x, w, pad=1))
        pool, back = ((F.max_pool2d, F.max_pool2d_backward) if op == "max_pool"
                      else (F.avg_pool2d, F.avg_pool2d_backward))
        return pool(x, 2), back(dy, x, 2)

    xpconv.set_num_threads(3)
    with xpconv.workspace_limit(limit):
        extra = traced_extra_bytes(run)
    one_sample_cols = 8 * 9 * 24 * 24 * x.itemsize
    assert extra <= 2 * limit + one_sample_cols, f"{extra / 2**20:.2f} MiB"


# ----------------------------------------------------------------------------- bench: 1-thread contenders

def test_bench_one_thread_contenders_round_trip_and_set_their_threads():
    from xpconv.bench import contenders as bench
    one = bench.contender_from_name("xpconv:cpu@1t")
    assert (one.name, one.threads, one.spec) == ("xpconv:cpu@1t", 1, "cpu")
    assert bench.contender_from_name("xpconv:cpu").threads is None
    with pytest.raises(SystemExit, match="unknown contender"):
        bench.contender_from_name("xpconv:cpu@zero")
    assert one.try_setup(), one.error
    xpconv.set_num_threads(2)
    seen = []
    call = one.at_threads(lambda: seen.append(xpconv.get_num_threads()))
    call()
    assert seen == [1] and xpconv.get_num_threads() == 2   # set around the call, restored after


def test_bench_ratios_pair_equal_thread_counts_and_give_the_scaling():
    from xpconv.bench import contenders as bench
    from xpconv.bench.cases import build_cases
    from xpconv.bench.results import CaseResult, Measurement
    from xpconv.bench.runner import ratios
    names = ["xpconv:cpu", "torch-cpu", "xpconv:cpu@1t", "torch-cpu@1t"]
    contenders = [bench.contender_from_name(n) for n in names]
    medians = dict(zip(names, [2.0, 4.0, 3.0, 6.0]))
    result = CaseResult(build_cases(True)[0], {n: Measurement(samples_ms=[m]) for n, m in medians.items()})
    assert ratios(result, contenders) == {
        "xpconv:cpu / torch-cpu": 0.5, "xpconv:cpu@1t / torch-cpu@1t": 0.5,
        "xpconv:cpu@1t / xpconv:cpu": 1.5, "torch-cpu@1t / torch-cpu": 1.5}


def test_samples_near_the_limit_run_on_at_most_two_workers(monkeypatch):
    """One sample's columns between half the limit and the limit: two one-sample chunks at
    once, not one per thread, so the bound still holds with many threads."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((6, 16, 32, 32))
    w = rng.standard_normal((16, 16, 3, 3))
    dy = rng.standard_normal((6, 16, 32, 32))
    one_sample_cols = 16 * 9 * 32 * 32 * x.itemsize
    limit = one_sample_cols * 3 // 2
    count = _CountWorkerJobs(monkeypatch)
    xpconv.set_num_threads(4)
    with xpconv.workspace_limit(limit):
        assert workspace.chunked(6, one_sample_cols, x) == ([(i, i + 1) for i in range(6)], 2)
        extra = traced_extra_bytes(lambda: (F.conv2d(x, w, None, pad=1), *F.conv2d_backward(dy, x, w, pad=1)))
    assert count.on_workers > 0
    assert extra <= 2 * limit + one_sample_cols, f"{extra / 2**20:.2f} MiB"
