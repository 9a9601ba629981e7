"""Memory and time to load a large uint8 ``.npz`` and start training on it.

Writes a uint8 set of ``--gib`` GiB (28x28 images, ``x_test`` included) twice, stored
(``numpy.savez``) and deflated (``numpy.savez_compressed``), then runs, each in a fresh
process whose peak resident memory is read from ``os.wait4``:

- ``load``: ``load_dataset(path, keep_dtype=True)`` and one pass over the images (what
  an epoch reads);
- ``limit 100``: ``xpconv train --limit 100 --epochs 1``;
- ``train``: ``xpconv train --epochs 1 --checkpoint DIR --checkpoint-every 10``, killed
  once its first checkpoint is written (load, the checkpoint's data digest, the network
  and 10 steps);
- ``2 ranks``: the same as ``mpiexec -n 2 xpconv train --distributed``, ended with SIGTERM
  once its first checkpoint is written; the peak is the largest rank's (``VmHWM`` of
  ``/proc``, read just before; when ``mpiexec`` is found).

Usage::

    python bench/data_loading.py               # 1 GiB, about a minute
    python bench/data_loading.py --gib 0.25 --keep /tmp/sets
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MEASURE = """
import os, signal, subprocess, sys, time
until, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while until and not os.path.exists(until) and proc.poll() is None:
    time.sleep(0.05)
ranks = 0
if until and proc.poll() is None and cmd[0].endswith("mpiexec"):
    for pid in filter(str.isdigit, os.listdir("/proc")):   # the ranks' peaks so far (VmHWM)
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
            if b"--distributed" in argv and b"xpconv.cli" in argv and not argv[0].endswith(b"mpiexec"):
                status = open(f"/proc/{pid}/status").read()
                ranks = max(ranks, int(status.split("VmHWM:")[1].split()[0]) * 1024)
        except (OSError, IndexError):
            pass
    proc.send_signal(signal.SIGTERM)
elif until and proc.poll() is None:
    proc.send_signal(signal.SIGKILL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), ranks or usage.ru_maxrss * 1024, time.perf_counter() - start)
"""

LOAD = """
import sys, numpy as np
from xpconv.datasets import load_dataset
(x, t), _ = load_dataset(sys.argv[1], keep_dtype=True)
total = 0
for i in range(0, len(x), 10000):
    total += int(x[i:i + 10000].sum(dtype=np.int64))
"""


def measure(cmd: list[str], until: str = "") -> tuple[int, int, float]:
    """(exit code, peak RSS bytes, seconds) of ``cmd``, started from a small process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, until, *cmd], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def write_sets(folder: Path, gib: float) -> dict[str, Path]:
    n = int(gib * 2**30) // 784
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 10:18, 10:18] = (np.arange(n) % 251).astype(np.uint8)[:, None, None]
    arrays = dict(x=x, t=np.arange(n) % 10, x_test=x[:1000], t_test=np.arange(1000) % 10)
    paths = {"stored": folder / "stored.npz", "deflated": folder / "deflated.npz"}
    np.savez(paths["stored"], **arrays)
    np.savez_compressed(paths["deflated"], **arrays)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=1.0, help="size of the image array (default: 1)")
    p.add_argument("--keep", help="write the sets here and keep them (default: a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        paths = write_sets(folder, args.gib)
        print(f"# uint8 set of {args.gib:g} GiB written in {time.perf_counter() - start:.1f} s "
              f"(stored {paths['stored'].stat().st_size / 2**20:.0f} MiB, "
              f"deflated {paths['deflated'].stat().st_size / 2**20:.0f} MiB)\n")
        print("| file | run | peak RSS, MiB | peak / image bytes | seconds |")
        print("|---|---|---:|---:|---:|")
        xpconv = [sys.executable, "-m", "xpconv.cli", "train", "--quiet", "--epochs", "1"]
        image_bytes = int(args.gib * 2**30) // 784 * 784
        for fmt, path in paths.items():
            runs = {
                "load + one pass": ([sys.executable, "-c", LOAD, str(path)], ""),
                "train --limit 100": ([*xpconv, "--data", str(path), "--limit", "100"], ""),
                "train, to the first checkpoint": ([*xpconv, "--data", str(path), "--checkpoint",
                                                    str(folder / f"ck-{fmt}"), "--checkpoint-every", "10"],
                                                   str(folder / f"ck-{fmt}" / "last.npz")),
            }
            mpiexec = shutil.which("mpiexec")
            if mpiexec:
                folder_2 = folder / f"ck2-{fmt}"
                runs["2 ranks (mpiexec), to the first checkpoint"] = (
                    [mpiexec, "-n", "2", *xpconv, "--distributed", "--data", str(path), "--checkpoint",
                     str(folder_2), "--checkpoint-every", "10"], str(folder_2 / "last.npz"))
            for name, (cmd, until) in runs.items():
                code, peak, seconds = measure(cmd, until)
                note = "" if code in (0, -9, 143, -15) else f" (exit {code})"
                print(f"| {fmt} | {name}{note} | {peak / 2**20:.0f} | {peak / image_bytes:.2f} | {seconds:.1f} |")
        if not args.keep:
            for path in paths.values():
                os.unlink(path)


if __name__ == "__main__":
    main()
