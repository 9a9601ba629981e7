"""Thread defaults (xpconv.thread_defaults, applied by xpconv.threads): the counts decided for
given machines and launcher environments, what wins over them, that BLAS limits are applied
and restored (as threadpoolctl reports them), and two MPI ranks sharing the cores with no
variable set. Deterministic: no timings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import xpconv
from xpconv import thread_defaults as td, threads
from xpconv.network import microbatch
from xpconv.thread_defaults import Cores, decide

THREAD_PREFIXES = ("XPCONV_", "OMP_", "OPENBLAS_", "MKL_", "MPI_LOCAL", "OMPI_", "PMI_", "PMIX_",
                   "SLURM_", "MV2_", "PALS_", "GOMP_", "KMP_")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_PREFIXES)}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _restore_threads():
    old = xpconv.get_num_threads()
    yield
    xpconv.set_num_threads(old)


# ----------------------------------------------------------------------------- decided counts

@pytest.mark.parametrize("env, cores, share", [
    ({}, Cores(affinity=8, machine=8), 8),                                  # one process: every core
    ({}, Cores(affinity=64, machine=64, quota=2.0), 2),                     # docker --cpus=2
    ({}, Cores(affinity=4, machine=4, quota=2.5), 3),                       # a quota rounds up
    ({"MPI_LOCALNRANKS": "2"}, Cores(affinity=2, machine=2), 1),           # mpiexec -n 2, 2 cores
    ({"MPI_LOCALNRANKS": "2"}, Cores(affinity=8, machine=8), 4),
    ({"MPI_LOCALNRANKS": "3"}, Cores(affinity=8, machine=8), 2),           # 8 // 3
    ({"MPI_LOCALNRANKS": "4"}, Cores(affinity=2, machine=2), 1),           # more ranks than cores: 1
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, Cores(affinity=1, machine=2), 1),  # bound to a core each
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, Cores(affinity=8, machine=16), 4),  # bound to a socket each
    ({"MPI_LOCALNRANKS": "2"}, Cores(affinity=64, machine=64, quota=2.0), 1),  # ranks share the quota
], ids=["one-process", "quota", "quota-rounds-up", "2-ranks-2-cores", "2-ranks-8-cores", "3-ranks",
        "oversubscribed", "ompi-core-binding", "ompi-socket-binding", "2-ranks-in-quota"])
def test_decided_counts(env, cores, share):
    d = decide(env, cores)
    assert d.share == share and d.workers == share
    if d.local_ranks > 1:
        assert d.blas == share and "ranks" in d.blas_why     # the process's BLAS: the rank's share
    else:
        assert d.blas is None                                 # one process: the library's own
    assert d.blas_in_passes == 1


@pytest.mark.parametrize("env, ranks, rank, var", [
    ({"MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1"}, 2, 1, "MPI_LOCALNRANKS"),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3"}, 4, 3, "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ({"MV2_COMM_WORLD_LOCAL_SIZE": "2"}, 2, None, "MV2_COMM_WORLD_LOCAL_SIZE"),
    ({"PMI_LOCAL_SIZE": "6", "PMI_LOCAL_RANK": "0"}, 6, 0, "PMI_LOCAL_SIZE"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "1", "SLURM_LOCALID": "1"}, 2, 1,
     "SLURM_STEP_TASKS_PER_NODE"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3"}, 1, None, "SLURM_STEP_TASKS_PER_NODE"),
    ({"SLURM_NTASKS_PER_NODE": "4"}, 4, None, "SLURM_NTASKS_PER_NODE"),
    ({"MPI_LOCALNRANKS": "junk", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 2, None, "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ({"MPI_LOCALNRANKS": "0"}, 1, None, None),
    ({"PMI_RANK": "0", "PMI_SIZE": "2"}, 1, None, None),      # world size alone says nothing of this machine
    ({}, 1, None, None),
])
def test_local_ranks_come_from_the_launchers_variables(env, ranks, rank, var):
    assert td.local_ranks(env) == (ranks, rank, var)


def test_xpconv_num_threads_wins_and_a_bad_value_is_ignored():
    cores = Cores(affinity=8, machine=8)
    d = decide({"XPCONV_NUM_THREADS": "3", "MPI_LOCALNRANKS": "2"}, cores)
    assert (d.workers, d.share, d.blas) == (3, 4, 4) and "explicit" in d.workers_why
    bad = decide({"XPCONV_NUM_THREADS": "two"}, cores)
    assert (bad.workers, bad.bad_env) == (8, "two") and "ignored" in bad.workers_why
    assert decide({"XPCONV_NUM_THREADS": " "}, cores).workers == 8     # blank: unset


@pytest.mark.parametrize("var", td.BLAS_VARS)
def test_a_blas_variable_wins_for_blas(var):
    d = decide({var: "2", "MPI_LOCALNRANKS": "2"}, Cores(affinity=8, machine=8))
    assert d.blas is None and d.blas_in_passes is None and f"{var}=2" in d.blas_why
    assert d.workers == 4                 # xpconv's own workers still take the rank's share


def test_torch_threads():
    alone = decide({}, Cores(affinity=8, machine=8, physical=4))
    two = decide({"MPI_LOCALNRANKS": "2"}, Cores(affinity=8, machine=8, physical=4))
    assert td.torch_threads(alone, {}, 4) == (None, "default: torch's own (one process on this machine)")
    assert td.torch_threads(two, {}, 4)[0] == 4          # torch's default (physical cores) <= share
    assert td.torch_threads(two, {}, 8)[0] == 4          # the logical cores: capped at the share
    n, why = td.torch_threads(two, {}, 3)                # set by the user before: kept
    assert n is None and "torch.set_num_threads(3)" in why
    n, why = td.torch_threads(two, {"OMP_NUM_THREADS": "8"}, 8)
    assert n is None and "OMP_NUM_THREADS=8" in why


def test_the_small_pass_is_the_micro_batch():
    assert td.SMALL_PASS == microbatch.MICRO_BATCH


# ----------------------------------------------------------------------------- the machine

def test_cpu_lists_and_this_machine():
    assert td._cpu_list_count("0-3,8,10-11") == 7 and td._cpu_list_count("5") == 1
    assert td._cpu_list_count("") is None and td._cpu_list_count("a-b") is None
    cores = td.machine_cores()
    assert 1 <= cores.usable <= cores.affinity <= cores.machine
    if hasattr(os, "sched_getaffinity"):
        assert cores.affinity == len(os.sched_getaffinity(0))
    assert threads.usable_cores() == cores.usable


@pytest.mark.parametrize("files, quota", [
    ({"/sys/fs/cgroup/a/cpu.max": "200000 100000"}, 2.0),
    ({"/sys/fs/cgroup/a/cpu.max": "max 100000"}, None),
    ({"/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "150000", "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000"}, 1.5),
    ({"/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "-1", "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
])
def test_cgroup_quota(monkeypatch, files, quota):
    files = {"/proc/self/cgroup": "1:cpu,cpuacct:/a\n0::/a", **files}
    monkeypatch.setattr(td, "read_text", files.get)
    assert td.cgroup_quota() == quota


def test_machine_cpus_from_the_cpuset(monkeypatch):
    files = {"/proc/self/cgroup": "0::/box", "/sys/fs/cgroup/box/cpuset.cpus.effective": "0-1,4"}
    monkeypatch.setattr(td, "read_text", files.get)
    assert td.machine_cpus() == 3
    monkeypatch.setattr(td, "read_text", {}.get)
    assert td.machine_cpus() == (os.cpu_count() or 1)


# ----------------------------------------------------------------------------- applied and restored

def _blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """BLAS at two threads around the test, so that a limit to one can be seen."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _blas_threads():
        pytest.skip("no BLAS library that threadpoolctl sees")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if set(_blas_threads()) != {2}:
            pytest.skip("BLAS does not take two threads here (one core?)")
        yield


def _blas_inside_a_pass(monkeypatch, net, n):
    """BLAS threads seen by the first layer during ``net.gradient`` of ``n`` samples."""
    layer = next(iter(net.layers.values()))
    seen, forward = [], layer.forward
    monkeypatch.setattr(layer, "forward", lambda x, *a, **k: seen.append(_blas_threads()) or forward(x, *a, **k))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    net.gradient(x, rng.integers(0, 10, n))
    return seen


def _net():
    return xpconv.SimpleConvNet((1, 12, 12), {"filter_num": 4, "filter_size": 3, "pad": 0, "stride": 1},
                                hidden_size=8, seed=0)


def test_a_small_pass_runs_blas_at_one_thread_and_restores_it(monkeypatch, two_blas_threads):
    monkeypatch.setattr(threads, "DECISION", decide({}, Cores(affinity=2, machine=2)))
    xpconv.set_num_threads(2)
    seen = _blas_inside_a_pass(monkeypatch, _net(), 8)
    assert seen and all(set(s) == {1} for s in seen)
    assert set(_blas_threads()) == {2}                     # restored after the pass


@pytest.mark.parametrize("why", ["one-xpconv-thread", "explicit-blas-variable", "large-pass"])
def test_blas_is_left_alone(monkeypatch, two_blas_threads, why):
    env = {"OPENBLAS_NUM_THREADS": "2"} if why == "explicit-blas-variable" else {}
    monkeypatch.setattr(threads, "DECISION", decide(env, Cores(affinity=2, machine=2)))
    xpconv.set_num_threads(1 if why == "one-xpconv-thread" else 2)
    net = _net()
    if why == "large-pass":         # a one-pass gradient of more than 64 samples
        monkeypatch.setattr(microbatch, "applies", lambda network, x: False)
    seen = _blas_inside_a_pass(monkeypatch, net, 80 if why == "large-pass" else 8)
    assert seen and all(set(s) == {2} for s in seen)


def test_other_libraries_are_left_alone(monkeypatch, two_blas_threads, backend):
    monkeypatch.setattr(threads, "DECISION", decide({}, Cores(affinity=2, machine=2)))
    xpconv.set_num_threads(2)
    with threads.blas_in_pass(backend.asarray(np.zeros((4, 2))), 4):
        expected = {1} if backend.library == "numpy" else {2}
        assert set(_blas_threads()) == expected
    assert set(_blas_threads()) == {2}


@pytest.mark.parametrize("env, expected", [({"MPI_LOCALNRANKS": "2"}, {1}), ({}, {2}),
                                           ({"MPI_LOCALNRANKS": "2", "OMP_NUM_THREADS": "2"}, {2})],
                         ids=["rank-share", "one-process", "explicit"])
def test_an_mpi_rank_caps_blas_for_the_whole_process(monkeypatch, two_blas_threads, env, expected):
    monkeypatch.setattr(threads, "DECISION", decide(env, Cores(affinity=2, machine=2)))
    monkeypatch.setattr(threads, "_applied", {})
    monkeypatch.setattr(threads, "_blas_done", False)
    monkeypatch.setattr(threads, "_torch_done", True)
    threads.ensure_defaults()
    assert set(_blas_threads()) == expected            # and restored by two_blas_threads after


class _FakeTorch:
    """Stands in for an imported torch: its thread count and the calls xpconv makes."""

    def __init__(self, threads):
        self.threads, self.calls = threads, []

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.calls.append(("intra", n))
        self.threads = n

    def set_num_interop_threads(self, n):
        raise RuntimeError("cannot set number of interop threads after parallel work has started")


@pytest.mark.parametrize("env, before, expected", [
    ({"MPI_LOCALNRANKS": "2"}, 8, [("intra", 4)]),     # torch's default (every core): capped at the share
    ({"MPI_LOCALNRANKS": "2"}, 4, []),                 # already the share (torch divides by itself)
    ({"MPI_LOCALNRANKS": "2"}, 3, []),                 # set by the user before: kept
    ({"MPI_LOCALNRANKS": "2", "OMP_NUM_THREADS": "8"}, 8, []),   # explicit variable: kept
    ({}, 8, []),                                        # one process: torch's own
])
def test_torch_is_capped_once_it_is_imported(monkeypatch, env, before, expected):
    for name in (*td.TORCH_VARS, *td.BLAS_VARS):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(threads, "DECISION", decide(env, Cores(affinity=8, machine=8)))
    monkeypatch.setattr(threads, "_applied", {})
    monkeypatch.setattr(threads, "_blas_done", True)          # BLAS: not part of this test
    monkeypatch.setattr(threads, "_torch_done", False)
    fake = _FakeTorch(before)
    monkeypatch.setitem(sys.modules, "torch", fake)
    threads.ensure_defaults()
    threads.ensure_defaults()                                # once: a second call changes nothing
    assert fake.calls == expected
    assert threads.applied().get("torch") == (expected[0][1] if expected else None)
    assert threads._torch_done


def test_no_binding_with_several_ranks_on_the_machine(monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs sched_getaffinity (Linux)")
    n = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads, "DECISION", decide({}, Cores(affinity=n, machine=n)))
    assert threads.binds_workers(n) and not threads.binds_workers(n + 1)
    monkeypatch.setattr(threads, "DECISION", decide({"MPI_LOCALNRANKS": "2"}, Cores(affinity=n, machine=n)))
    assert not threads.binds_workers(n) and threads._core_binder(n) is None


def test_thread_report_says_what_and_why():
    report = xpconv.thread_report()
    json.dumps(report)                                  # JSON-ready (the bench stores it)
    assert report["xpconv"]["threads"] == xpconv.get_num_threads()
    assert report["cores"]["usable"] == threads.usable_cores()
    assert report["mpi"]["share"] == threads.DECISION.share
    assert report["jax"]["why"].startswith("not controlled")
    before = xpconv.get_num_threads()
    try:   # a count other than the decision's (whatever an earlier test left set)
        xpconv.set_num_threads(threads.DECISION.workers + 1)
        assert xpconv.thread_report()["xpconv"]["why"] == "set_num_threads (explicit)"
    finally:
        xpconv.set_num_threads(before)


# ----------------------------------------------------------------------------- fresh processes

PROBE = ("import json, os, sys, numpy as np, xpconv\n"
         "from xpconv import functional as F\n"
         "{before}\n"
         "F.conv2d(np.ones((2, 1, 4, 4)), np.ones((1, 1, 3, 3)))   # xpconv's first op applies the decision\n"
         "r = xpconv.thread_report()\n"
         "blas = [i['num_threads'] for i in r['blas']['libraries'] if i['user_api'] == 'blas']\n"
         "out = {{'xpconv': r['xpconv']['threads'], 'blas': min(blas) if blas else -1,\n"
         "                  'torch': r['torch'].get('threads'), 'share': r['mpi']['share'],\n"
         "                  'rank': r['mpi']['local_rank'], 'imported': sorted(m for m in ('torch', 'jax')\n"
         "                  if m in sys.modules)}}\n"
         "path = os.environ.get('PROBE_OUT')   # one file per rank: the ranks' stdout lines may interleave\n"
         "text = json.dumps(out)\n"
         "if path:\n"
         "    open(path + os.environ.get('PMI_RANK', '0'), 'w').write(text)\n"
         "print(text)\n")

def _probe(env, before="", prefix=(), timeout=120):
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE.format(before=before)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _probe_ranks(env, prefix, tmp_path, ranks, timeout):
    """The probe's output of each rank, read from one file per rank."""
    env = {**env, "PROBE_OUT": str(tmp_path / "rank")}
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE.format(before="")],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(ranks)]


@pytest.mark.slow
def test_one_process_takes_every_usable_core_and_imports_no_other_library():
    [out] = _probe(_clean_env())
    assert out["xpconv"] == threads.usable_cores() and out["imported"] == []


@pytest.mark.slow
def test_ranks_sharing_a_machine_cap_blas_and_torch():
    pytest.importorskip("torch")
    share = max(1, threads.usable_cores() // 2)
    [out] = _probe(_clean_env(MPI_LOCALNRANKS="2", MPI_LOCALRANKID="1"), before="import torch")
    assert (out["xpconv"], out["blas"], out["share"], out["rank"]) == (share, share, share, 1)
    assert out["torch"] <= share


@pytest.mark.slow
def test_an_explicit_setting_wins_in_a_fresh_process():
    pytest.importorskip("torch")
    env = _clean_env(MPI_LOCALNRANKS="2", XPCONV_NUM_THREADS="3", OPENBLAS_NUM_THREADS="2")
    [out] = _probe(env, before="import torch; torch.set_num_threads(5)")
    assert (out["xpconv"], out["blas"], out["torch"]) == (3, 2, 5)


@pytest.mark.slow
def test_two_mpi_ranks_each_take_half_the_cores_without_any_variable(tmp_path):
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpi4py mpich)")
    share = max(1, threads.usable_cores() // 2)
    outs = _probe_ranks(_clean_env(), (mpiexec, "-n", "2"), tmp_path, 2, timeout=60)
    assert sorted(o["rank"] for o in outs) == [0, 1]
    assert all((o["xpconv"], o["blas"], o["share"]) == (share, share, share) for o in outs), outs


def test_the_bench_records_the_decision():
    from xpconv.bench.environment import collect_environment
    env = collect_environment("test", uses_cuda=False)
    assert env["threads"]["xpconv"]["threads"] == xpconv.get_num_threads()
    assert env["threads"]["mpi"]["share"] == threads.DECISION.share
