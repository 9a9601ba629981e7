"""Default thread settings against hand-tuned ones, on a quiet machine and beside one
competing CPU-bound process.

Every sample is a fresh process; the settings alternate within each round (default, then
each tuned setting), so a slow spell of the machine hits all of them. Rows:

- SimpleConvNet ``gradient`` + Adam, float32, at batch 32, 100, 256, on NumPy and on
  ``device="torch"``, and the same step in plain PyTorch (``torch-native``: PyTorch's own
  degradation beside a competing process, the reference for xpconv on torch): one child
  process per setting and library measures all three batch sizes (the median of its timed
  steps, after warm-up steps);
- ``mpiexec -n 2 xpconv train --distributed --epochs 1 --limit N`` (the epoch's seconds
  from ``--log``), when ``mpiexec`` is found.

"default" sets no thread variable (``XPCONV_*``, ``OMP_*``, ``OPENBLAS_*``, ``MKL_*`` are
removed); each "tuned" setting sets them by hand (e.g. ``XPCONV_NUM_THREADS=2`` with BLAS
at one thread, or everything at one thread). The best tuned setting is the one with the
lowest median; the ratio printed is default / best tuned (target: <= 1.15 on a quiet
machine). The contended block runs the same beside ``python -c "while True: pass"``.

Run on a quiet machine (nothing else running)::

    python bench/thread_defaults.py              # about 3-4 minutes on 2 cores
    python bench/thread_defaults.py --quick      # checks that it runs (~1 minute)
    python bench/thread_defaults.py --json out.json

Each row prints the median and the spread (min-max) of the samples in milliseconds, for
the default and for each tuned setting, and the ratio. ``xpconv.thread_report()`` of a
default child is printed first (what was decided and why).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

THREAD_PREFIXES = ("XPCONV_", "OMP_", "OPENBLAS_", "MKL_", "GOMP_", "KMP_")
BATCHES = (32, 100, 256)
XPCONV_CLI = "import sys; from xpconv.cli import main; sys.exit(main(sys.argv[1:]))"   # the xpconv command


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without thread variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_PREFIXES)}
    env.update(settings)
    return env


def tuned_settings(cores: int, mpi_ranks: int = 1) -> dict[str, dict[str, str]]:
    """The hand-tuned settings compared with the default: name -> variables."""
    share = str(max(1, cores // mpi_ranks))
    one = {"XPCONV_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    if mpi_ranks > 1 or cores == 1:
        return {f"all at {share}": {k: share for k in one}}
    return {f"xpconv {share}, BLAS 1": {**one, "XPCONV_NUM_THREADS": share},
            "all at 1": one,
            f"all at {share}": {k: share for k in one}}


# ----------------------------------------------------------------------------- the child

def child(library: str, batches: list[int], min_time: float, warmup: int) -> dict:
    """Median seconds of a SimpleConvNet gradient + Adam step per batch size, in this process."""
    import numpy as np

    import xpconv
    out: dict = {"report": xpconv.thread_report(), "seconds": {}}
    rng = np.random.default_rng(0)
    if library == "torch-native":
        out["seconds"] = _native_torch(batches, min_time, warmup, rng)
        return out
    for n in batches:
        net = xpconv.SimpleConvNet(device="cpu" if library == "numpy" else library, seed=0)
        opt = xpconv.Adam(lr=0.001)
        x = rng.random((n, 1, 28, 28), dtype=np.float32)
        t = rng.integers(0, 10, n)
        x, t = net.device.asarray(x), net.device.asarray(t)

        def step(net=net, opt=opt, x=x, t=t):
            opt.update(net.params, net.gradient(x, t))
        out["seconds"][str(n)] = _time_steps(step, min_time, warmup)
    out["report"] = xpconv.thread_report()     # after the steps: torch's threads are applied then
    return out


def _time_steps(step, min_time: float, warmup: int) -> float:
    """Median seconds of ``step()`` over at least 5 calls and ``min_time`` s, after warm-up."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _native_torch(batches: list[int], min_time: float, warmup: int, rng) -> dict:
    """The same step in plain PyTorch (nn.Module, torch.optim.Adam): PyTorch's own behaviour
    with and without a competing process, the reference for xpconv on torch."""
    import numpy as np
    import torch

    from xpconv.bench.contenders import torch_simple_convnet
    seconds = {}
    for n in batches:
        torch.manual_seed(0)
        model = torch_simple_convnet(torch)
        opt = torch.optim.Adam(model.parameters(), lr=0.001)
        x = torch.from_numpy(rng.random((n, 1, 28, 28), dtype=np.float32))
        t = torch.from_numpy(rng.integers(0, 10, n))

        def step(model=model, opt=opt, x=x, t=t):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), t).backward()
            opt.step()
        seconds[str(n)] = _time_steps(step, min_time, warmup)
    return seconds


def run_child(library: str, env: dict[str, str], batches: list[int], min_time: float, warmup: int,
              timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", library, "--batches",
           ",".join(map(str, batches)), "--min-time", str(min_time), "--warmup", str(warmup)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"child {library} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_mpi_train(env: dict[str, str], limit: int, mpiexec: str, timeout: float) -> float:
    """Seconds of the one epoch of ``mpiexec -n 2 xpconv train --distributed``."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "history.jsonl")
        cmd = [mpiexec, "-n", "2", sys.executable, "-c", XPCONV_CLI, "train", "--distributed",
               "--epochs", "1", "--limit", str(limit), "--data", "mnist-bundled", "--quiet",
               "--log", log]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        if done.returncode != 0:
            raise RuntimeError(f"mpiexec train failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        with open(log) as f:
            return float(json.loads(f.read().strip().splitlines()[-1])["seconds"])


# ----------------------------------------------------------------------------- the runs

@contextlib.contextmanager
def competitor(active: bool):
    """One CPU-bound process running beside the measurements (ended by its pid after)."""
    if not active:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait(timeout=30)


def measure(args, contended: bool, cores: int, mpiexec: str | None) -> list[dict]:
    """Rows ``{"work", "contended", "samples": {setting: [seconds...]}}``."""
    rows: dict[str, dict] = {}

    def add(work: str, setting: str, seconds: float):
        rows.setdefault(work, {"work": work, "contended": contended, "samples": {}})
        rows[work]["samples"].setdefault(setting, []).append(seconds)

    with competitor(contended):
        for library in args.libraries:
            settings = {"default": {}, **tuned_settings(cores)}
            for _ in range(args.rounds):
                for name, variables in settings.items():
                    out = run_child(library, clean_env(**variables), args.batches, args.min_time,
                                    args.warmup, args.timeout)
                    if name == "default" and not args.reports.get(library):
                        args.reports[library] = out["report"]
                    for n, s in out["seconds"].items():
                        what = ("native PyTorch step" if library == "torch-native" else
                                f"xpconv {library} gradient+Adam")
                        add(f"{what}, batch {n}", name, s)
        if mpiexec and args.limit > 0:
            settings = {"default": {}, **tuned_settings(cores, mpi_ranks=2)}
            for _ in range(args.rounds):
                for name, variables in settings.items():
                    add(f"mpiexec -n 2 xpconv train --distributed --limit {args.limit} (epoch)", name,
                        run_mpi_train(clean_env(**variables), args.limit, mpiexec, args.timeout))
    return list(rows.values())


def summarize(row: dict) -> dict:
    """Median and spread per setting, the best tuned setting and default / best tuned."""
    stats = {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
             for name, v in row["samples"].items()}
    tuned = {k: s for k, s in stats.items() if k != "default"}
    best = min(tuned, key=lambda k: tuned[k]["median"])
    return {**row, "stats": stats, "best_tuned": best,
            "ratio": stats["default"]["median"] / tuned[best]["median"]}


def print_table(rows: list[dict]) -> None:
    print("| work | machine | default, ms (min-max) | best tuned | tuned, ms (min-max) | default / tuned |")
    print("|---|---|---:|---|---:|---:|")
    for r in rows:
        d, t = r["stats"]["default"], r["stats"][r["best_tuned"]]
        print(f"| {r['work']} | {'1 competing process' if r['contended'] else 'quiet'} | "
              f"{1e3 * d['median']:.1f} ({1e3 * d['min']:.1f}-{1e3 * d['max']:.1f}) | {r['best_tuned']} | "
              f"{1e3 * t['median']:.1f} ({1e3 * t['min']:.1f}-{1e3 * t['max']:.1f}) | {r['ratio']:.2f} |")
    print("\nEvery tuned setting (median ms):")
    for r in rows:
        others = ", ".join(f"{k} {1e3 * s['median']:.1f}" for k, s in r["stats"].items())
        print(f"- {r['work']} ({'contended' if r['contended'] else 'quiet'}): {others}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks that it runs")
    p.add_argument("--rounds", type=int, default=3, help="samples per setting and row (default: 3)")
    p.add_argument("--libraries", default="numpy,torch,torch-native",
                   help="comma-separated: numpy, torch (xpconv on torch), torch-native (plain PyTorch)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--min-time", type=float, default=0.3, help="timed seconds per batch size and child")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--limit", type=int, default=3000, help="training images of the mpiexec row (0: no row)")
    p.add_argument("--no-contended", action="store_true", help="skip the block beside a competing process")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.batches, args.min_time, args.warmup)))
        return 0
    if args.quick:
        args.rounds, args.min_time, args.warmup, args.limit = 1, 0.05, 1, min(args.limit, 300)
        args.batches = [8, 70]       # one pass and two micro-batches
    args.libraries = [lib for lib in args.libraries.split(",") if lib]
    import importlib.util
    if importlib.util.find_spec("torch") is None and any(lib.startswith("torch") for lib in args.libraries):
        print("torch not installed: its rows are skipped", file=sys.stderr)
        args.libraries = [lib for lib in args.libraries if not lib.startswith("torch")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        print("no mpiexec: the MPI row is skipped", file=sys.stderr)
    args.reports = {}
    start = time.perf_counter()
    rows = measure(args, False, cores, mpiexec)
    if not args.no_contended:
        rows += measure(args, True, cores, mpiexec)
    rows = [summarize(r) for r in rows]
    print(f"# thread defaults vs hand-tuned ({cores} usable cores, {args.rounds} rounds, "
          f"{time.perf_counter() - start:.0f} s)\n")
    print("thread_report() of a default child:\n```json\n" + json.dumps(args.reports, indent=1) + "\n```\n")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "reports": args.reports, "cores": cores}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
