"""Data-parallel training (xpconv.distributed): N ranks train like one process.

pytest never runs under mpiexec: it starts ``mpiexec -n 1/2/3`` jobs of tests/mpi_worker.py
(or of the CLI) as subprocesses with timeouts, and compares what they wrote with a
one-process reference. Those tests skip, with the reason, without mpi4py or mpiexec; the
tests at the top need no MPI.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xpconv
from xpconv import distributed
from xpconv.distributed import Communicator, Shard, SingleProcess, sharded

pytestmark = pytest.mark.slow     # subprocesses: training runs, MPI jobs (-m 'not slow' skips them)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi_worker.py"
TIMEOUT = 120          # seconds; a hang fails the test instead of blocking the suite
RTOL = 1e-10           # relative to each array's largest entry
ATOL = 1e-12           # biases before a BatchNormalization: 0 gradient, only rounding noise


class _Rank(Communicator):
    """Rank ``rank`` of ``size`` for the arithmetic of shares (no collectives)."""

    def __init__(self, rank, size):
        super().__init__()
        self.rank, self.size = rank, size


# ============================================================================ without MPI

def test_shares_are_contiguous_cover_the_batch_and_differ_by_at_most_one():
    for size in (1, 2, 3, 4, 7):
        for n in range(0, 23):
            bounds = [_Rank(r, size).share(n) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [_Rank(r, 3).share(100) for r in range(3)] == [(0, 34), (34, 67), (67, 100)]
    assert [_Rank(r, 3).share(2) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]
    order = np.arange(10)[::-1]
    np.testing.assert_array_equal(np.concatenate([_Rank(r, 3).shard(order) for r in range(3)]), order)


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(distributed, "resolve_device", lambda spec: spec)
    for seen, expected in ((4, "cuda:3"), (2, "cuda:1"), (1, "cuda:0")):   # 1: srun's binding
        monkeypatch.setattr(distributed, "_visible_gpus", lambda prefix, seen=seen: seen)
        rank = _Rank(7, 8)
        rank.local_rank = 3
        assert rank.local_device("cuda") == rank.local_device("auto") == expected
        assert rank.local_device("torch:cuda") == "torch:" + expected
        assert rank.local_device("cuda:0") == "cuda:0"                      # an index: as given
    assert rank.local_device("torch") == "torch" and rank.local_device("CPU") == "cpu"


def test_outside_mpiexec_init_is_one_process_without_mpi(monkeypatch):
    for name in distributed._LAUNCHER_VARS + ("SLURM_STEP_NUM_TASKS",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)         # not needed, so never imported
    comm = distributed.init()
    assert isinstance(comm, SingleProcess) and (comm.rank, comm.size) == (0, 1)
    assert distributed.init() is comm and distributed.active() is comm
    a = np.arange(3.0)
    assert comm.sum(a) is a and comm.broadcast(a) is a and comm.sum_ints([2, 5]) == [2, 5]
    with pytest.raises(ValueError, match="already initialised with transport 'host'"):
        distributed.init("nccl")
    with pytest.raises(ValueError, match=r"expected transport in \('host', 'nccl'\)"):
        distributed.init("tcp")


def test_under_mpiexec_without_mpi4py_says_which_extra_to_install(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)         # import mpi4py -> ImportError
    assert distributed.launched_by_mpi()
    with pytest.raises(distributed.DistributedUnavailable,
                       match=r'PMI_RANK is set.*mpi4py is not installed.*pip install "xpconv\[mpi\]"'):
        distributed.init()
    monkeypatch.delenv("PMI_RANK")
    with pytest.raises(distributed.DistributedUnavailable, match=r"asked for.*xpconv\[mpi\]"):
        distributed.init(mpi=True)
    assert distributed.active() is None


def test_one_process_communicator_trains_bit_for_bit_like_no_communicator():
    (x, t), (xv, tv) = xpconv.datasets.load_bundled_mnist(flatten=False)
    x, t, xv, tv = x[:70, :, ::2, ::2], t[:70], xv[:30, :, ::2, ::2], tv[:30]
    runs = []
    for comm in (None, SingleProcess()):
        net = xpconv.DeepConvNet((1, 14, 14), [{"filter_num": 4, "filter_size": 3, "pad": 1,
                                                "stride": 1}] * 6, hidden_size=8, seed=0)
        trainer = xpconv.Trainer(net, x, t, xv, tv, epochs=1, mini_batch_size=32, verbose=False,
                                 seed=1, comm=comm).train()
        runs.append((net.state_arrays(), trainer.train_loss_list, trainer.test_acc))
    (p0, l0, a0), (p1, l1, a1) = runs
    assert l0 == l1 and a0 == a1
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)


def test_layers_check_that_the_shard_matches_their_input():
    shard = Shard(_Rank(1, 2), 16, 31, 31)                     # 15 rows of a batch of 31
    bn = xpconv.BatchNormalization(np.ones(3), np.zeros(3))
    with sharded(shard), pytest.raises(ValueError, match=r"BatchNormalization.forward: .*rows "
                                                         r"16\.\.31 \(15\) of a batch of 31; got x with 4"):
        bn.forward(np.ones((4, 3)))
    with sharded(shard), pytest.raises(ValueError, match=r"Dropout.forward: .*got x with 4 rows"):
        xpconv.Dropout(0.5, seed=0).forward(np.ones((4, 3)))
    assert distributed.current_shard() is None


def test_dropout_in_a_shard_keeps_its_rows_of_the_global_mask():
    x = np.ones((10, 6))
    whole = xpconv.Dropout(0.5, seed=4).forward(x)
    parts = []
    for rank, (start, stop) in enumerate([(0, 4), (4, 7), (7, 10), (10, 10)]):
        with sharded(Shard(_Rank(rank, 4), start, stop, 10)):
            parts.append(xpconv.Dropout(0.5, seed=4).forward(x[start:stop]))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# ============================================================================ under mpiexec

def _mpiexec():
    pytest.importorskip("mpi4py", reason="data-parallel tests need mpi4py and an MPI: "
                                         'pip install "xpconv[mpi]"')
    mpiexec = distributed.find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec found beside Python or on PATH (pip install mpich)")
    return mpiexec


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name in distributed._LAUNCHER_VARS:                   # a clean start for every job
        env.pop(name, None)
    return env


def _run(cmd, timeout=TIMEOUT):
    start = time.monotonic()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    return done, time.monotonic() - start


def _mpi(n, *args, timeout=TIMEOUT):
    return _run([_mpiexec(), "-n", str(n), sys.executable, *args], timeout)


BACKENDS = ["numpy", "torch", "array_api_strict"]
INSTALLED = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
CASES = ["simple", "deep", "batchnorm"]        # SimpleConvNet; DeepConvNet (Dropout); BN


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(n)``: the directory of one worker ``train`` job (n=0: the reference)."""
    runs = {}

    def get(n):
        if n not in runs:
            out = tmp_path_factory.mktemp(f"ranks{n}")
            args = [str(WORKER), "train", str(out), "--backends", ",".join(INSTALLED)]
            if n == 0:
                done, _ = _run([sys.executable, *args, "--reference"])
            else:
                done, _ = _mpi(n, *args)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[n] = out
        return runs[n]

    _mpiexec()
    return get


def _load(directory, case, backend, rank):
    with np.load(directory / f"{case}-{backend}-rank{rank}.npz") as f:
        return {k: f[k] for k in f.files}


def _skip_missing(backend):
    if backend not in INSTALLED:
        pytest.skip(f"{backend} is not installed")


def test_the_data_has_uneven_shares_and_a_rank_without_samples():
    from tests import mpi_worker
    assert mpi_worker.BATCH % 2 == 1                    # 2 ranks: 16 / 15
    assert 0 < mpi_worker.N_TRAIN % mpi_worker.BATCH < 3  # last batch: a 3rd rank gets none


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_rank_is_bit_for_bit_one_process(trained, backend):
    _skip_missing(backend)
    for case in CASES:
        ref, got = _load(trained(0), case, backend, 0), _load(trained(1), case, backend, 0)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{case}: {k}")


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_n_ranks_reproduce_one_process_in_float64(trained, backend, n):
    """Parameters, running statistics and losses within 1e-10 (relative) after an epoch with
    uneven shares (and, on 3 ranks, a rank without samples in the last batch); accuracies
    exactly; and every rank ends with exactly rank 0's parameters."""
    _skip_missing(backend)
    for case in CASES:
        ref = _load(trained(0), case, backend, 0)
        ranks = [_load(trained(n), case, backend, r) for r in range(n)]
        for k in ref:
            if k == "accuracies":
                np.testing.assert_array_equal(ranks[0][k], ref[k], err_msg=case)
                continue
            scale = np.max(np.abs(ref[k]))
            np.testing.assert_allclose(ranks[0][k], ref[k], rtol=0, atol=RTOL * scale + ATOL,
                                       err_msg=f"{case} on {n} ranks: {k}")
            for r in range(1, n):
                np.testing.assert_array_equal(ranks[r][k], ranks[0][k], err_msg=f"{case}: rank {r} {k}")


def test_cli_distributed_reproduces_one_process_and_only_rank_0_prints_and_saves(tmp_path, capsys):
    from xpconv import cli
    _mpiexec()
    (x, t), _ = xpconv.datasets.load_bundled_mnist(normalize=False, flatten=False)
    np.savez(tmp_path / "tiny.npz", x=x[:300, 0], t=t[:300])
    args = ["train", "--data", str(tmp_path / "tiny.npz"), "--dtype", "float64", "--epochs", "1",
            "--batch-size", "31", "--limit", "95", "--quiet"]
    (tmp_path / "one").mkdir()
    (tmp_path / "three").mkdir()
    assert cli.main(args + ["--save", str(tmp_path / "one" / "p.npz")]) == 0
    capsys.readouterr()
    done, _ = _mpi(3, "-m", "xpconv.cli", *args, "--distributed",
                   "--save", str(tmp_path / "three" / "p.npz"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for start in ("xpconv train:", "summary:", "saved the model to"):
        assert sum(line.startswith(start) for line in lines) == 1, done.stdout
    assert "over 3 ranks" in done.stdout
    assert [p.name for p in (tmp_path / "three").iterdir()] == ["p.npz"]
    one, three = np.load(tmp_path / "one" / "p.npz"), np.load(tmp_path / "three" / "p.npz")
    for k in one.files:
        if not k.startswith("__meta__"):
            np.testing.assert_allclose(three[k], one[k], rtol=0,
                                       atol=RTOL * np.max(np.abs(one[k])) + ATOL, err_msg=k)


def test_a_rank_that_raises_ends_the_whole_job():
    """Rank 0 waits in a barrier that rank 1 never reaches: without the abort the job hangs
    and ``subprocess.run`` raises TimeoutExpired (a hang fails; no wall-clock bound beyond)."""
    done, _ = _mpi(2, str(WORKER), "raise")
    assert done.returncode != 0
    assert "rank 1 of 2 failed; aborting all ranks" in done.stderr
    assert "RuntimeError: rank 1 fails on purpose" in done.stderr
    assert "passed the barrier" not in done.stdout


def test_divergence_stops_every_rank_at_the_same_step():
    done, _ = _mpi(2, str(WORKER), "diverge")
    assert done.returncode == 3, done.stdout + done.stderr[-2000:]
    for rank in (0, 1):
        assert f"rank {rank} stopped: Trainer: the loss became" in done.stdout
    assert done.stdout.count("at step 2 (epoch 1)") == 2, done.stdout


def test_selftest_passes_on_every_usable_device():
    done, _ = _mpi(2, "-m", "xpconv.distributed", "--selftest")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "FAILED" not in done.stdout and " ok" in done.stdout
    assert "selftest: 2 rank(s)" in done.stdout


def test_bench_runs_and_reports_every_job():
    done, _ = _run([sys.executable, "-m", "xpconv.distributed", "--bench", "--steps", "2",
                    "--batch-size", "20", "--mpiexec", _mpiexec()])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 ") or "ranks," in line]
    assert len(rows) == 3, done.stdout
