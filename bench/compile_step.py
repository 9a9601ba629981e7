"""Compiled vs uncompiled training step (issue 19): per-step time and host cost at batch 1.

Run on a quiet machine::

    python bench/compile_step.py            # full: batch 100 and batch 1, 200 steps each
    python bench/compile_step.py --quick    # a smoke run (a few steps; the numbers mean nothing)
    python bench/compile_step.py --quick --torch-backend aot_eager   # no C++ compile: fast

Rows: one per (library, compiled or not, batch). ``step ms`` is the median over repeats of
(wall time of ``steps`` calls of ``step(x, t)``, ending with one wait for the last loss) /
steps. At batch 1 the model's arithmetic is negligible, so this is the host cost per
step (the Python and dispatch overhead a GPU step pays). Targets: JAX compiled / JAX
uncompiled <= 0.5 per SimpleConvNet step; host cost at batch 1, compiled, <= 1 ms.

torch rows: xpconv uncompiled, xpconv through ``compile_step`` (``torch.compile``, backend
``--torch-backend``, default inductor; the compile is the warm-up step and is not timed),
and, for comparison, native PyTorch's uncompiled step on the same architecture
(``torch.nn`` layers, autograd, ``torch.optim.Adam``), labelled ``torch-nn``.
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


def xpconv_step(device, compiled, torch_backend):
    """``(step, device)``: an xpconv SimpleConvNet step with Adam, compiled or not."""
    net = model(device)
    opt = xpconv.Adam()
    if compiled:
        return compile_step(net, opt, backend=torch_backend), net.device

    def step(x, t):
        opt.update(net.params, net.gradient(x, t))
        return net.last_layer.loss
    return step, net.device


def native_torch_step():
    """``(step, device)``: SimpleConvNet's architecture in ``torch.nn`` (conv 30x5x5 - ReLU -
    max pool 2 - affine 100 - ReLU - affine 10, softmax cross-entropy), autograd and
    ``torch.optim.Adam``, float32, uncompiled."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, t):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), t)
        loss.backward()
        opt.step()
        return loss.detach()
    return step, xpconv.device("torch")


def time_step(made, batch, steps, repeats):
    """Median seconds per step of ``made = (step, device)`` at ``batch`` (after one warm-up
    step: the trace or compile)."""
    step, device = made
    rng = np.random.default_rng(0)
    x = device.asarray(rng.random((batch, 1, 28, 28)).astype(np.float32))
    t = device.asarray(rng.integers(0, 10, batch))
    wait(step(x, t))                                  # trace / compile / warm-up
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
    parser.add_argument("--torch-backend", default="inductor",
                        help="torch.compile backend of the compiled torch rows (default inductor)")
    args = parser.parse_args(argv)
    steps, repeats = (2, 1) if args.quick else (args.steps, args.repeats)
    rows = []
    libraries = [lib for lib in ("cpu", "torch", "jax") if lib in xpconv.available_devices()
                 or any(spec.startswith(lib) for spec in xpconv.available_devices())]
    if "jax" in libraries:
        import jax
        jax.config.update("jax_enable_x64", True)
    compilers = {"jax": "jax.jit", "torch": "torch.compile"}
    for batch in (100, 1):
        for lib in libraries:
            plain = time_step(xpconv_step(lib, False, args.torch_backend), batch, steps, repeats)
            rows.append((lib, "no", batch, plain, ""))
            if lib in compilers:
                comp = time_step(xpconv_step(lib, True, args.torch_backend), batch, steps, repeats)
                rows.append((lib, compilers[lib], batch, comp, f"{comp / plain:.2f}"))
            if lib == "torch" and batch == 1:
                rows.append(("torch-nn", "no", batch, time_step(native_torch_step(), batch, steps, repeats), ""))
    print(f"{'library':8} {'compiled':13} {'batch':>5} {'step ms':>9} {'compiled/plain':>15}")
    for lib, comp, batch, sec, ratio in rows:
        print(f"{lib:8} {comp:13} {batch:>5} {sec * 1e3:>9.3f} {ratio:>15}")
    if "torch" in libraries:
        print(f"(torch.compile backend: {args.torch_backend}; torch-nn: native PyTorch, uncompiled)")
    if args.quick:
        print("(--quick: too few steps for the numbers to mean anything)")


if __name__ == "__main__":
    main()
