"""Time per epoch of `xpconv train` with and without --checkpoint (default frequency).

Fresh processes, alternating, medians and spreads of the per-epoch medians each run prints.
Usage: python bench/checkpoint_overhead.py [--pairs 3] [--epochs 3]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile


def epoch_seconds(extra: list[str], epochs: int) -> float:
    done = subprocess.run([sys.executable, "-m", "xpconv.cli", "train", "--data", "mnist-bundled", "--quiet",
                           "--epochs", str(epochs), *extra], capture_output=True, text=True, check=True)
    return float(re.search(r"([0-9.]+) s/epoch \(median\)", done.stdout).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    without, with_ = [], []
    for _ in range(args.pairs):
        without.append(epoch_seconds([], args.epochs))
        with tempfile.TemporaryDirectory() as folder:
            with_.append(epoch_seconds(["--checkpoint", folder], args.epochs))
    for name, xs in (("without --checkpoint", without), ("with --checkpoint", with_)):
        print(f"{name:22s} median {statistics.median(xs):.3f} s/epoch  (runs: {', '.join(f'{x:.3f}' for x in xs)})")
    print(f"ratio with / without: {statistics.median(with_) / statistics.median(without):.3f}")


if __name__ == "__main__":
    main()
