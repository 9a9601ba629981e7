"""``python -m xpconv.distributed``: checks of data-parallel training on MPI.

mpiexec -n 2 python -m xpconv.distributed --selftest [--transport nccl]
every collective (sum, broadcast, packed gradients; float32 and float64, a
transposed view) on every usable device, each rank on its own GPU
python -m xpconv.distributed --bench [--steps 30] [--batch-size 100] [--ranks 2]
time per step and samples/s: 1 rank and N ranks (1 BLAS thread each) against one
process with N BLAS threads, and the share of the step spent communicating
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy

from ..devices import Device, to_numpy
from . import MPI_EXTRA, TRANSPORTS, Communicator, DistributedUnavailable, find_mpiexec, init

# ============================================================================ selftest

def selftest(comm: Communicator, specs: list[str] | None = None) -> int:
    """Every collective on every usable device, checked against the expected values.

    Run under ``mpiexec -n 2 python -m xpconv.distributed --selftest [--transport nccl]``;
    each rank uses its own GPU. Rank 0 prints one line per device. Returns the exit status.
    """
    from ..devices import available_devices
    if specs is None:
        specs = []
        for spec in available_devices():   # one GPU per rank: this rank's, not all of them
            for gpu in ("cuda", "torch:cuda", "jax:gpu"):
                if spec.startswith(gpu + ":"):
                    spec = gpu
            if spec not in specs:
                specs.append(spec)
    failures = 0
    for spec in specs:
        try:
            dev = comm.local_device(spec)
            problem = _selftest_device(comm, dev)
        except Exception as exc:   # report it and go on with the other devices
            problem = f"{type(exc).__name__}: {exc}"
        bad = comm.sum_ints([problem is not None])[0]
        failures += bad > 0
        if comm.is_root:
            status = "ok" if not bad else f"FAILED on {bad} rank(s)" + (f": {problem}" if problem else "")
            print(f"{spec:26s} transport {comm.transport:5s} {status}", flush=True)
        if problem and not comm.is_root:
            print(f"rank {comm.rank}: {spec}: {problem}", file=sys.stderr, flush=True)
    if comm.is_root:
        print(f"selftest: {comm.size} rank(s), {len(specs) - failures} of {len(specs)} devices ok")
    return 1 if failures else 0


def _selftest_device(comm: Communicator, dev: Device) -> str | None:
    r, n = comm.rank, comm.size
    expected_sum = sum(range(1, n + 1))
    for dtype in ("float32", "float64") if _has_float64(dev) else ("float32",):
        a = dev.asarray(numpy.full((3, 5), r + 1.0), dtype=dtype)
        a = comm.sum(a)
        if not numpy.array_equal(to_numpy(a), numpy.full((3, 5), float(expected_sum))):
            return f"sum({dtype}) gave {to_numpy(a).ravel()[:3]}..., expected {expected_sum}"
        view = dev.xp.permute_dims(dev.asarray(numpy.arange(15.0).reshape(3, 5) * (r + 1),
                                               dtype=dtype), (1, 0))
        view = comm.sum(view)
        if not numpy.array_equal(to_numpy(view), numpy.arange(15.0).reshape(3, 5).T * expected_sum):
            return f"sum of a transposed view ({dtype}) is wrong"
        b = dev.asarray(numpy.full(7, float(r)), dtype=dtype)
        b = comm.broadcast(b, root=n - 1)
        if not numpy.array_equal(to_numpy(b), numpy.full(7, float(n - 1))):
            return f"broadcast({dtype}) from rank {n - 1} gave {to_numpy(b)[:3]}..."
    grads = {"W": dev.asarray(numpy.full((2, 2), r + 1.0), dtype="float32"),
             "b": dev.asarray(numpy.full(2, 2.0 * (r + 1)), dtype="float32")}
    summed, loss = comm.allreduce_gradients(grads, dev.asarray(numpy.array(float(r)), dtype="float32"),
                                            1.0)
    if not (numpy.array_equal(to_numpy(summed["W"]), numpy.full((2, 2), float(expected_sum)))
            and numpy.array_equal(to_numpy(summed["b"]), numpy.full(2, 2.0 * expected_sum))
            and float(to_numpy(loss)) == sum(range(n))):
        return "allreduce_gradients gave wrong sums"
    dev.synchronize()
    return None


def _has_float64(dev: Device) -> bool:
    if dev.library != "jax":
        return True
    import jax
    return bool(jax.config.read("jax_enable_x64"))


# ============================================================================ benchmark

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XPCONV_NUM_THREADS")


def bench(steps: int = 30, batch_size: int = 100, ranks: int = 2, model: str = "simple",
          mpiexec: str | None = None, timeout: float = 600) -> list[dict]:
    """Time per step and samples/s of data-parallel SimpleConvNet training on this machine.

    Runs three jobs, each in fresh processes: 1 rank with 1 BLAS thread, ``ranks`` ranks
    with 1 BLAS thread each, and 1 process (no MPI) with ``ranks`` BLAS threads, and
    reports the share of each step spent in communication (time inside collectives,
    which includes waiting for the slowest rank). Rank 0 prints a Markdown table.
    """
    mpiexec = mpiexec or find_mpiexec()
    if mpiexec is None:
        raise DistributedUnavailable(f"xpconv.distributed --bench: no mpiexec found; {MPI_EXTRA}")
    jobs = [("1 rank, 1 thread", [mpiexec, "-n", "1"], 1),
            (f"{ranks} ranks, 1 thread each", [mpiexec, "-n", str(ranks)], 1),
            (f"1 process, {ranks} threads (no MPI)", [], ranks)]
    rows = []
    for label, launcher, threads in jobs:
        env = dict(os.environ, **{v: str(threads) for v in _THREAD_VARS})
        cmd = launcher + [sys.executable, "-m", "xpconv.distributed", "--bench-worker",
                          "--steps", str(steps), "--batch-size", str(batch_size), "--model", model]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"xpconv.distributed --bench: {label} failed "
                               f"(exit {done.returncode}):\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(dict(job=label, **result))
    print(f"| job ({model}, global batch {batch_size}, {steps} steps) | ranks | s / step | "
          f"samples / s | communication |\n|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['job']} | {row['ranks']} | {row['seconds_per_step']:.4f} | "
              f"{row['samples_per_second']:.0f} | {100 * row['communication_share']:.1f}% |")
    return rows


def _bench_worker(steps: int, batch_size: int, model: str) -> None:
    """One job of :func:`bench`: train ``steps`` steps (after 3 warm-up steps) and print JSON."""
    from .. import DeepConvNet, LeNet, SimpleConvNet
    from ..datasets import load_bundled_mnist
    from ..devices import host_rng
    from ..optimizers import Adam
    comm = init()
    (x, t), _ = load_bundled_mnist(flatten=False)
    net = {"simple": SimpleConvNet, "deep": DeepConvNet, "lenet": LeNet}[model](seed=0)
    comm.broadcast_model(net)
    x, t = net.device.asarray(x, dtype="float32"), net.device.asarray(t)
    optimizer, rng = Adam(), host_rng(0)
    order = rng.permutation(x.shape[0])

    def step(i):
        s = (i * batch_size) % (x.shape[0] - batch_size)
        grads, loss = comm.gradient(net, x, t, order[s:s + batch_size])
        optimizer.update(net.params, grads)
        return float(to_numpy(loss))

    for i in range(3):
        step(i)
    comm.barrier()
    comm.seconds_communicating = 0.0
    start = time.perf_counter()
    for i in range(3, 3 + steps):
        step(i)
    comm.barrier()
    elapsed = time.perf_counter() - start
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "seconds_per_step": elapsed / steps,
                          "samples_per_second": steps * batch_size / elapsed,
                          "communication_share": comm.seconds_communicating / elapsed}), flush=True)


# ============================================================================ command line

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xpconv.distributed``: run ``--selftest`` or ``--bench``; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m xpconv.distributed",
                                description="Checks of xpconv's data-parallel training on MPI.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--selftest", action="store_true",
                      help="under mpiexec: every collective on every usable device")
    what.add_argument("--bench", action="store_true",
                      help="time per step for 1 and N ranks against 1 process with N threads")
    what.add_argument("--bench-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--transport", choices=TRANSPORTS, default="host", help="for --selftest")
    p.add_argument("--devices", nargs="*", default=None, metavar="SPEC",
                   help="--selftest: these device specs (default: every usable one)")
    p.add_argument("--steps", type=int, default=30, help="--bench: timed steps (default 30)")
    p.add_argument("--batch-size", type=int, default=100, help="--bench: global batch (default 100)")
    p.add_argument("--ranks", type=int, default=2, help="--bench: ranks of the parallel job (default 2)")
    p.add_argument("--model", choices=("simple", "deep", "lenet"), default="simple")
    p.add_argument("--mpiexec", default=None, help="--bench: the launcher (default: beside Python)")
    args = p.parse_args(argv)
    if args.selftest:
        return selftest(init(args.transport), args.devices)
    if args.bench_worker:
        _bench_worker(args.steps, args.batch_size, args.model)
        return 0
    bench(args.steps, args.batch_size, args.ranks, args.model, args.mpiexec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
