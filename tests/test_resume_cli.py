"""``xpconv train --checkpoint``: killed, signalled and refused, as separate processes.

SIGKILL lands at seeded random moments after a checkpoint exists; every restart of the
same command resumes, and the final ``--save`` equals the uninterrupted run's bit for
bit. Every process has a timeout: a hang fails the test instead of stalling CI.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xpconv import checkpoint as ckpt
from xpconv.cli import main as xpconv_main
from xpconv.serialization import load_arrays

pytestmark = pytest.mark.slow     # subprocesses: training runs, MPI jobs (-m 'not slow' skips them)

TRAIN = [sys.executable, "-m", "xpconv.cli", "train", "--data", "mnist-bundled", "--limit", "1000",
         "--epochs", "3", "--batch-size", "20", "--dtype", "float64", "--quiet", "--seed", "1"]
TIMEOUT = 120


def _run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, **kw)


def _arrays(path):
    return load_arrays(path, who="test")[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's saved parameters."""
    path = tmp_path_factory.mktemp("reference") / "whole.npz"
    done = _run(TRAIN + ["--save", str(path)])
    assert done.returncode == 0, done.stderr
    return _arrays(path)


def _wait_for(path, proc, deadline):
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _assert_same(reference, path):
    got = _arrays(path)
    assert got.keys() == reference.keys()
    for k, v in reference.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def _wait_for_a_new_checkpoint(path, before, proc, deadline):
    """Until ``path`` is written again (its mtime differs from ``before``) by ``proc``."""
    while not path.exists() or path.stat().st_mtime_ns == before:
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_killed_at_random_moments_and_resumed_ends_bit_for_bit(tmp_path, reference):
    """Each run is killed at a seeded random moment after it wrote a checkpoint of its own,
    so every kill lands in training, never in start-up."""
    rng = np.random.default_rng(20261204)
    folder, out = tmp_path / "ck", tmp_path / "out.npz"
    last = folder / ckpt.LAST
    command = TRAIN + ["--checkpoint", str(folder), "--checkpoint-every", "7", "--save", str(out)]
    kills = 0
    for _ in range(3):
        before = last.stat().st_mtime_ns if last.exists() else None
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if _wait_for_a_new_checkpoint(last, before, proc, time.monotonic() + TIMEOUT):
                time.sleep(rng.uniform(0.0, 0.3))
                proc.kill()
                kills += proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
        finally:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    assert kills >= 2, "the runs ended before they could be killed: the test proved nothing"
    done = _run(command)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    _assert_same(reference, out)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_sigterm_and_sigint_checkpoint_say_how_to_resume_and_exit(tmp_path, reference, signum, code):
    folder, out = tmp_path / "ck", tmp_path / "out.npz"
    command = TRAIN + ["--checkpoint", str(folder), "--checkpoint-every", "7", "--save", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(folder / ckpt.LAST, proc, time.monotonic() + TIMEOUT)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)            # "within seconds"
    finally:
        proc.kill()
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert f"interrupted by {signal.Signals(signum).name}" in last
    assert "run the same command again to resume" in last and str(folder) in last
    assert "Traceback" not in err and not out.exists()
    done = _run(command)
    assert done.returncode == 0, done.stderr
    _assert_same(reference, out)


def test_a_checkpoint_of_another_run_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "ck"
    first = _run(TRAIN[:-2] + ["--seed", "2", "--epochs", "1", "--checkpoint", str(folder)])
    assert first.returncode == 0, first.stderr
    before = (folder / ckpt.LAST).read_bytes()
    other = _run(TRAIN[:-2] + ["--seed", "2", "--epochs", "1", "--checkpoint", str(folder),
                               "--batch-size", "25", "--save", str(tmp_path / "m.npz")])
    assert other.returncode == 1
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch_size: 20 in the checkpoint, 25 now" in lines[0], other.stderr
    assert (folder / ckpt.LAST).read_bytes() == before and not (tmp_path / "m.npz").exists()
    again = _run(TRAIN[:-2] + ["--seed", "2", "--epochs", "1", "--checkpoint", str(folder),
                               "--batch-size", "25", "--restart"])
    assert again.returncode == 0, again.stderr


def test_a_failing_final_save_keeps_the_trained_model(tmp_path, monkeypatch, capsys):
    import xpconv.network
    target = tmp_path / "model.npz"
    real_save = xpconv.network.Sequential.save_params

    def save_params(self, path="params.pkl"):
        if os.fspath(path) == os.fspath(target):
            raise OSError(28, "No space left on device")
        return real_save(self, path)
    monkeypatch.setattr(xpconv.network.Sequential, "save_params", save_params)
    folder = tmp_path / "ck"
    rc = xpconv_main(["train", "--data", "mnist-bundled", "--limit", "100", "--epochs", "1", "--quiet",
                      "--checkpoint", str(folder), "--save", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert f"could not write {target}" in err[0] and "No space left on device" in err[0]
    kept = err[0].rsplit("kept in ", 1)[1]
    assert kept.startswith(str(folder)) and set(_arrays(kept)) >= {"W1", "b1", "W3"}


def test_mpi_launch_without_distributed_is_refused(tmp_path):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpi4py mpich)")
    out = tmp_path / "m.npz"
    done = _run([mpiexec, "-n", "2", *TRAIN[:-2], "--epochs", "1", "--limit", "100", "--save", str(out)])
    assert done.returncode == 1, done.stderr
    # one line per rank (the two ranks' lines may interleave on the launcher's stderr)
    assert done.stderr.count("add --distributed") == 2 and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()


def _mpiexec():
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpi4py mpich)")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install 'xpconv[mpi]')")
    return mpiexec


def _rank_pids(launcher_pid):
    """The pids of the ranks a launcher started (its grandchildren or children running xpconv)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    children = {int(p) for p, pp, _ in rows if int(pp) == launcher_pid}
    family = children | {int(p) for p, pp, _ in rows if int(pp) in children}
    return sorted(int(p) for p, _, args in rows if int(p) in family and "xpconv.cli" in args)


@pytest.mark.parametrize("target", ["one rank", "the launcher"])
def test_sigint_to_a_rank_or_the_launcher_ends_the_job_and_it_resumes_on_other_ranks(tmp_path, target):
    """2 ranks, SIGINT, then the same command on 3 ranks: float64 within 1e-10 of one process."""
    mpiexec = _mpiexec()
    folder, out, whole = tmp_path / "ck", tmp_path / "out.npz", tmp_path / "whole.npz"
    args = TRAIN[:-2] + ["--seed", "3", "--limit", "600", "--epochs", "2", "--distributed"]
    done = _run([mpiexec, "-n", "1", *args, "--save", str(whole)])
    assert done.returncode == 0, done.stderr
    command = args + ["--checkpoint", str(folder), "--checkpoint-every", "5", "--save", str(out)]
    proc = subprocess.Popen([mpiexec, "-n", "2", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(folder / ckpt.LAST, proc, time.monotonic() + TIMEOUT)
        ranks = _rank_pids(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1] if target == "one rank" else proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)          # ended, not hung in a collective
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert proc.returncode != 0, err
    if target == "one rank":        # mpiexec, interrupted itself, may end its ranks before they print
        assert "interrupted" in err, err
    assert not out.exists()
    done = _run([mpiexec, "-n", "3", *command])
    assert done.returncode == 0, done.stderr
    want, got = _arrays(whole), _arrays(out)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_a_stopped_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    mpiexec = _mpiexec()
    folder = tmp_path / "ck"
    command = TRAIN[:-2] + ["--seed", "3", "--limit", "600", "--epochs", "50", "--distributed",
                            "--timeout", "3", "--checkpoint", str(folder), "--checkpoint-every", "5"]
    proc = subprocess.Popen([mpiexec, "-n", "2", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ranks = []
    try:
        assert _wait_for(folder / ckpt.LAST, proc, time.monotonic() + TIMEOUT)
        ranks = _rank_pids(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGSTOP)           # a stalled rank: alive, silent
        _, err = proc.communicate(timeout=60)
    finally:
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "waited more than 3 s in a collective" in err and "rank 0 of 2" in err, err
    assert ckpt.read(folder / ckpt.LAST).state["global_step"] > 0      # the last checkpoint is whole
