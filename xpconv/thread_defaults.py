"""Thread defaults: how many threads xpconv's workers, BLAS and torch use in this process.

Decided once per process from the machine and the MPI launcher's environment; nothing has
to be set by hand, and an explicit setting always wins. Pure functions of an environment
mapping and a :class:`Cores` (so every rule is testable with made-up machines);
:mod:`xpconv.threads` applies them and :func:`thread_report` says what was decided and why.

Notation:
    affinity: CPUs this process may run on (``os.sched_getaffinity``)
    machine:  CPUs of the machine or container (cgroup cpuset; ``os.cpu_count()``)
    quota:    the container's CPU quota in CPUs (cgroup ``cpu.max``), or None
    L:        ranks of an MPI job on this machine (the launcher's variables; 1 outside a job)

    usable = min(affinity, ceil(quota))
    share  = usable                                          (L = 1)
           = max(1, min(usable, min(machine, quota) // L))   (L > 1: the ranks split the machine)

Rules (first match wins):

==================  ===============================================  ===========================
who                 explicit setting (wins)                          default
==================  ===============================================  ===========================
xpconv's workers    ``set_num_threads(n)``, ``XPCONV_NUM_THREADS``   ``share``
BLAS, whole         ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,   L > 1: ``share``;
process             ``MKL_NUM_THREADS``                              L = 1: the library's own
BLAS in a pass of   (same variables)                                 1 (with workers > 1)
<= 64 samples and
in the workers
torch intra-op      ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, or a    L > 1: min(torch's, share);
                    ``torch.set_num_threads`` made before            L = 1: torch's own
==================  ===============================================  ===========================

>>> from xpconv.thread_defaults import Cores, decide
>>> d = decide({"MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1"}, Cores(affinity=8, machine=8))
>>> d.local_ranks, d.local_rank, d.share, d.workers, d.blas
(2, 1, 4, 4, 4)
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass

ENV_VAR = "XPCONV_NUM_THREADS"
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TORCH_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")   # what torch reads at start-up
# read by the thread runtimes when they load (never set by xpconv; reported)
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_THREAD_TIMEOUT", "XLA_FLAGS")
# set by MPI launchers in every rank: (ranks on this machine, this rank's index among them, who)
LOCAL_RANK_VARS = (
    ("MPI_LOCALNRANKS", "MPI_LOCALRANKID", "MPICH Hydra, Intel MPI"),
    ("OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI"),
    ("MV2_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MVAPICH2"),
    ("PMIX_LOCAL_SIZE", "PMIX_LOCAL_RANK", "PMIx"),
    ("PALS_LOCAL_SIZE", "PALS_LOCAL_RANKID", "Cray PALS"),
    ("PMI_LOCAL_SIZE", "PMI_LOCAL_RANK", "Cray PMI"),
    ("SLURM_STEP_TASKS_PER_NODE", "SLURM_LOCALID", "Slurm srun"),
    ("SLURM_NTASKS_PER_NODE", "SLURM_LOCALID", "Slurm"),
)
# the micro-batch size (xpconv.network.microbatch.MICRO_BATCH): a pass of at most this many
# samples is the unit that runs at one BLAS thread, on a worker or on the caller
SMALL_PASS = 64


@dataclass(frozen=True)
class Cores:
    """The CPUs a process sees.

    Attributes:
        affinity: CPUs it may run on (its affinity mask).
        machine: CPUs of the machine or container (shared by the ranks on it).
        quota: the container's CPU quota in CPUs (cgroup), or None for none.
        physical: physical cores among ``affinity`` (torch's default count), or None.
    """

    affinity: int
    machine: int
    quota: float | None = None
    physical: int | None = None

    @property
    def usable(self) -> int:
        """``min(affinity, ceil(quota))``, at least 1."""
        n = self.affinity if self.quota is None else min(self.affinity, math.ceil(self.quota))
        return max(1, n)


@dataclass(frozen=True)
class Decision:
    """What xpconv decided for this process, and why (one sentence per ``*_why``).

    ``blas`` is the whole process's BLAS cap (None: left to the library or to the user's
    variable); ``blas_in_passes`` the BLAS threads inside xpconv's workers and in a
    network's pass of at most ``SMALL_PASS`` samples (None: left as it is).
    """

    cores: Cores
    local_ranks: int
    local_rank: int | None
    ranks_from: str | None
    share: int
    workers: int
    workers_why: str
    blas: int | None
    blas_why: str
    blas_in_passes: int | None
    blas_in_passes_why: str
    bad_env: str | None = None   # an XPCONV_NUM_THREADS that was ignored (warned about at import)


# ----------------------------------------------------------------------------- the machine

def read_text(path: str) -> str | None:
    """The stripped text of a small system file (``/proc``, ``/sys``), or None if unreadable."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_list_count(text: str | None) -> int | None:
    """CPUs in a Linux CPU list ``"0-3,8,10-11"`` (None for an unreadable or empty one)."""
    if not text:
        return None
    count = 0
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        count += (int(hi) - int(lo) + 1) if hi else 1
    return count or None


def cgroup_dirs(controller: str) -> list[str]:
    """This process's cgroup folders for ``controller`` (v2 unified first, then v1), deepest first."""
    dirs = []
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            dirs.append("/sys/fs/cgroup" + path.rstrip("/"))
        elif controller in controllers.split(","):
            dirs.append(f"/sys/fs/cgroup/{controller}" + path.rstrip("/"))
    return dirs + ["/sys/fs/cgroup", f"/sys/fs/cgroup/{controller}"]


def cgroup_quota() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` of v2, ``cpu.cfs_quota_us``
    of v1), or None for no quota (or none readable).
    """
    for folder in cgroup_dirs("cpu"):
        v2 = read_text(folder + "/cpu.max")
        if v2:
            quota, _, period = v2.partition(" ")
            if quota == "max":
                return None
            try:
                return max(int(quota) / int(period), 1.0)
            except (ValueError, ZeroDivisionError):
                return None
        v1 = read_text(folder + "/cpu.cfs_quota_us")
        if v1:
            try:
                q, p = int(v1), int(read_text(folder + "/cpu.cfs_period_us") or "")
            except ValueError:
                return None
            return None if q <= 0 or p <= 0 else max(q / p, 1.0)
    return None


def machine_cpus() -> int:
    """CPUs of the machine or container: its cgroup cpuset, else ``os.cpu_count()``."""
    for folder in cgroup_dirs("cpuset"):
        for name in ("/cpuset.cpus.effective", "/cpuset.effective_cpus"):
            n = _cpu_list_count(read_text(folder + name))
            if n:
                return n
    return max(1, os.cpu_count() or 1)


def affinity() -> set[int] | None:
    """The CPUs this process may run on, or None where the OS does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # no sched_getaffinity on macOS and Windows
        return None


def physical_cores(cpus: set[int] | None) -> int | None:
    """Physical cores among ``cpus`` (Linux sysfs topology), or None where unknown."""
    if not cpus:
        return None
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        core, package = read_text(base + "core_id"), read_text(base + "physical_package_id")
        if core is None:
            return None
        cores.add((package, core))
    return len(cores)


def machine_cores() -> Cores:
    """This process's :class:`Cores`, read from the OS."""
    cpus = affinity()
    machine = machine_cpus()
    allowed = len(cpus) if cpus else machine
    return Cores(affinity=max(1, allowed), machine=max(machine, allowed), quota=cgroup_quota(),
                 physical=physical_cores(cpus))


# ----------------------------------------------------------------------------- the launcher

def _slurm_count_on_node(text: str, node: int) -> int | None:
    """Tasks on node ``node`` from Slurm's ``"2(x3),1"`` (2 on each of 3 nodes, then 1)."""
    counts: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node] if 0 <= node < len(counts) else (counts[0] if counts else None)


def local_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int | None, str | None]:
    """``(L, this rank's index among them or None, the variable read)``: the ranks of an MPI
    job on this machine, from the launcher's variables; ``(1, None, None)`` outside a job.
    """
    env = os.environ if env is None else env
    for size_var, rank_var, _ in LOCAL_RANK_VARS:
        text = env.get(size_var, "").strip()
        if not text:
            continue
        if size_var.startswith("SLURM"):
            node = env.get("SLURM_NODEID", "0").strip()
            n = _slurm_count_on_node(text, int(node) if node.isdigit() else 0)
        else:
            n = int(text) if text.isdigit() else None
        if n is None or n < 1:
            continue
        rank = env.get(rank_var, "").strip()
        return n, (int(rank) if rank.isdigit() else None), size_var
    return 1, None, None


# ----------------------------------------------------------------------------- the decision

def parse_threads(text: str | None) -> int | str | None:
    """``XPCONV_NUM_THREADS``'s value: an int >= 1, None when unset or blank, or the text
    itself when it is not a valid count (to be warned about).
    """
    if text is None or not text.strip():
        return None
    try:
        n = int(text)
    except ValueError:
        return text
    return n if n >= 1 else text


def explicit_blas(env: Mapping[str, str]) -> str | None:
    """The first BLAS/OpenMP thread variable set, as ``NAME=value``, or None."""
    for name in BLAS_VARS:
        if env.get(name, "").strip():
            return f"{name}={env[name].strip()}"
    return None


def decide(env: Mapping[str, str], cores: Cores) -> Decision:
    """The thread counts for a process with environment ``env`` on ``cores`` (module docstring)."""
    n_local, rank, ranks_from = local_ranks(env)
    usable = cores.usable
    if n_local > 1:
        budget = cores.machine if cores.quota is None else min(cores.machine, cores.quota)
        share = max(1, min(usable, int(budget // n_local)))
        split = (f"{usable} usable cores, {cores.machine} on the machine shared by {n_local} ranks "
                 f"({ranks_from}): {share} each")
    else:
        share = usable
        split = (f"the usable cores ({cores.affinity} in the affinity" +
                 (f", a quota of {cores.quota:g}" if cores.quota is not None else "") + ")")

    parsed = parse_threads(env.get(ENV_VAR))
    bad = parsed if isinstance(parsed, str) else None
    if isinstance(parsed, int):
        workers, workers_why = parsed, f"{ENV_VAR}={parsed} (explicit)"
    else:
        workers, workers_why = share, "default: " + split + (
            f"; {ENV_VAR}={bad!r} ignored (not a whole number >= 1)" if bad is not None else "")

    user_blas = explicit_blas(env)
    if user_blas:
        blas, blas_why = None, f"{user_blas} (explicit): left to it"
        in_passes, in_passes_why = None, f"{user_blas} (explicit): left to it outside the workers"
    else:
        if n_local > 1:
            blas, blas_why = share, f"default: this rank's share of the cores ({split})"
        else:
            blas, blas_why = None, "default: the library's own (one process on this machine)"
        in_passes, in_passes_why = 1, (
            f"default: 1 inside xpconv's workers and in a pass of <= {SMALL_PASS} samples while "
            "xpconv runs more than one thread: BLAS threads gain little there and spin while "
            "the rest of the step runs")
    return Decision(cores=cores, local_ranks=n_local, local_rank=rank, ranks_from=ranks_from,
                    share=share, workers=workers, workers_why=workers_why, blas=blas,
                    blas_why=blas_why, blas_in_passes=in_passes, blas_in_passes_why=in_passes_why,
                    bad_env=bad)


def torch_threads(decision: Decision, env: Mapping[str, str], current: int) -> tuple[int | None, str]:
    """Torch's intra-op threads for ``decision``: ``(count to set or None to leave, why)``.

    ``current`` is ``torch.get_num_threads()``. It counts as torch's own default when it is
    the physical, usable or machine's cores, or one of them divided by the local ranks
    (torch divides by them itself under an MPI launcher); any other value was set by the user.
    """
    user = next((f"{v}={env[v].strip()}" for v in TORCH_VARS if env.get(v, "").strip()), None)
    if user:
        return None, f"{user} (explicit, read by torch at start-up): left to it"
    cores = decision.cores
    counts = {cores.affinity, cores.usable, cores.machine} | ({cores.physical} if cores.physical else set())
    # torch (its MKL/OpenMP start-up) already divides its count by the launcher's local ranks
    defaults = counts | {max(1, c // decision.local_ranks) for c in counts} | {decision.share}
    if current not in defaults:
        return None, f"torch.set_num_threads({current}) made before (explicit): left to it"
    if decision.local_ranks <= 1:
        return None, "default: torch's own (one process on this machine)"
    n = min(current, decision.share)
    return n, f"default: this rank's share of the cores ({decision.share}; {decision.local_ranks} ranks)"


# ----------------------------------------------------------------------------- the report

def thread_report() -> dict:
    """What was decided for this process and why, and what each library uses now.

    Returns:
        A JSON-ready dict: ``cores``, ``mpi`` (local ranks), ``xpconv`` (workers), ``blas``
        (the decision and each loaded BLAS library's threads, from threadpoolctl), ``torch``
        and ``jax`` (when imported), and ``runtime_env`` (the wait-policy variables, which
        xpconv never sets).

    >>> import xpconv
    >>> report = xpconv.thread_report()
    >>> report["xpconv"]["threads"] == xpconv.get_num_threads()
    True
    """
    from . import threads
    d = threads.DECISION
    out: dict = {
        "cores": {**asdict(d.cores), "usable": d.cores.usable},
        "mpi": {"local_ranks": d.local_ranks, "local_rank": d.local_rank, "from": d.ranks_from,
                "share": d.share},
        "xpconv": {"threads": threads.get_num_threads(),
                   "why": ("set_num_threads (explicit)" if threads.get_num_threads() != d.workers
                           else d.workers_why),
                   "workers_bound_to_cores": threads.binds_workers(threads.get_num_threads())},
        "blas": {"process": d.blas, "why": d.blas_why, "in_passes": d.blas_in_passes,
                 "in_passes_why": d.blas_in_passes_why, "applied": threads.applied().get("blas"),
                 "libraries": _blas_libraries()},
        "runtime_env": {k: os.environ.get(k) for k in WAIT_VARS},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        applied = threads.applied()
        _, why = torch_threads(d, os.environ, applied.get("torch_before", torch.get_num_threads()))
        out["torch"] = {"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                        "applied": applied.get("torch"), "why": why}
    else:
        out["torch"] = {"imported": False, "why": "set when torch is imported and xpconv runs"}
    out["jax"] = {"imported": "jax" in sys.modules, "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                  "why": "not controlled: XLA sizes its CPU pool from the affinity when its "
                         "backend starts; XLA_FLAGS only count before that"}
    return out


def _blas_libraries() -> list[dict] | str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return [{k: i.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "threading_layer")}
            for i in threadpool_info()]
