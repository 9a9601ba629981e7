"""Thread defaults without any variable set: ranks of an MPI job on one machine share its
cores (xpconv's threads, BLAS and torch), and an explicit setting always wins."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from xpconv import threads

pytestmark = pytest.mark.slow     # subprocesses: training runs, MPI jobs (-m 'not slow' skips them)

PROBE = ("import xpconv, threadpoolctl; xpconv.threads.share_cores_between_ranks(); "
         "blas = [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']; "
         "print(xpconv.get_num_threads(), min(blas) if blas else -1)")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XPCONV_", "OMP_", "OPENBLAS_NUM", "MKL_", "MPI_LOCAL", "OMPI_", "PMI_", "SLURM_"))}
    env.update(extra)
    return env


@pytest.mark.parametrize("variable,value,ranks", [
    ("MPI_LOCALNRANKS", "2", 2), ("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 4), ("SLURM_NTASKS_PER_NODE", "3(x2)", 3),
    ("MPI_LOCALNRANKS", "junk", 1)])
def test_local_ranks_come_from_the_launchers_variables(monkeypatch, variable, value, ranks):
    for name in threads._LOCAL_RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert threads.local_ranks() == ranks


def _probe(env, *prefix):
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return [tuple(map(int, line.split())) for line in done.stdout.split("\n") if line.strip()]


def test_one_process_takes_every_usable_core():
    [(xpconv_threads, _)] = _probe(_clean_env())
    assert xpconv_threads == threads.usable_cores()


def test_ranks_sharing_a_machine_each_take_their_share_and_bound_blas():
    share = max(1, threads.usable_cores() // 2)
    assert _probe(_clean_env(MPI_LOCALNRANKS="2")) == [(share, share)]


def test_an_explicit_setting_wins():
    env = _clean_env(MPI_LOCALNRANKS="2", XPCONV_NUM_THREADS="3", OPENBLAS_NUM_THREADS="2")
    assert _probe(env) == [(3, 2)]


def test_two_mpi_ranks_share_the_cores_without_any_variable(tmp_path):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpi4py mpich)")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install 'xpconv[mpi]')")
    share = max(1, threads.usable_cores() // 2)
    # each rank writes its own file: the ranks' stdout lines may interleave
    probe = ("import os, xpconv, threadpoolctl; xpconv.distributed.init(); "
             "blas = [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']; "
             f"out = open(os.path.join({str(tmp_path)!r}, 'rank' + os.environ['PMI_RANK']), 'w'); "
             "out.write(f'{xpconv.get_num_threads()} {min(blas) if blas else -1}'); out.close()")
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, env=_clean_env())
    assert done.returncode == 0, done.stderr
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [f"{share} {share}"] * 2
