"""Compiled vs uncompiled training step (issue 19): per-step time and host cost at batch 1.

Run on a quiet machine::

    python bench/compile_step.py            # full: batch 100 and batch 1, 200 steps each
    python bench/compile_step.py --quick    # a smoke run (a few steps; the numbers mean nothing)

Rows: one per (library, compiled or not, batch). ``step ms`` is the median over repeats of
(wall time of ``steps`` calls of ``step(x, t)``, ending with one wait for the last loss) /
steps. At batch 1 the model's arithmetic is negligible, so this is the host cost per
step (the Python and dispatch overhead a GPU step pays). Targets: JAX compiled / JAX
uncompiled <= 0.5 per SimpleConvNet step; host cost at batch 1, compiled, <= 1 ms.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import xpconv
from xpconv.compile import compile_step


def model(device):
    return xpconv.SimpleConvNet(input_dim=(1, 28, 28), hidden_size=100, output_size=10,
                                weight_init_std="he", dtype="float32", seed=0).to(device)


def wait(loss):
    if hasattr(loss, "block_until_ready"):
        loss.block_until_ready()
    else:
        xpconv.to_numpy(loss)


def time_step(device, compiled, batch, steps, repeats):
    net = model(device)
    opt = xpconv.Adam()
    if compiled:
        step = compile_step(net, opt)
    else:
        def step(x, t):
            opt.update(net.params, net.gradient(x, t))
            return net.last_layer.loss
    rng = np.random.default_rng(0)
    x = net.device.asarray(rng.random((batch, 1, 28, 28)).astype(np.float32))
    t = net.device.asarray(rng.integers(0, 10, batch))
    wait(step(x, t))                                  # trace / warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(x, t)
        wait(loss)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: checks the script runs")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    rows = []
    libraries = [lib for lib in ("cpu", "torch", "jax") if lib in xpconv.available_devices()
                 or any(spec.startswith(lib) for spec in xpconv.available_devices())]
    if "jax" in libraries:
        import jax
        jax.config.update("jax_enable_x64", True)
    for batch in (100, 1):
        for lib in libraries:
            plain = time_step(lib, False, batch, steps, repeats)
            rows.append((lib, "no", batch, plain, ""))
            if lib == "jax":
                comp = time_step(lib, True, batch, steps, repeats)
                rows.append((lib, "jax.jit", batch, comp, f"{comp / plain:.2f}"))
    print(f"{'library':8} {'compiled':9} {'batch':>5} {'step ms':>9} {'compiled/plain':>15}")
    for lib, comp, batch, sec, ratio in rows:
        print(f"{lib:8} {comp:9} {batch:>5} {sec * 1e3:>9.3f} {ratio:>15}")
    if args.quick:
        print("(--quick: too few steps for the numbers to mean anything)")


if __name__ == "__main__":
    main()
