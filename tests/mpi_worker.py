"""The program that tests/test_distributed.py starts under ``mpiexec -n N`` (never pytest).

    python tests/mpi_worker.py train OUT [--reference] [--backends numpy,torch,...]
        trains every CASE on every backend for one epoch (float64, 95 images, global batch
        31: uneven shares 16/15 or 11/10/10, and a last batch of 2 in which a third rank
        has no sample) and writes OUT/<case>-<backend>-rank<r>.npz (parameters, buffers,
        losses, accuracies). --reference: one process, plain Trainer (no communicator).
    python tests/mpi_worker.py raise     rank 1 raises while the others wait in a barrier
    python tests/mpi_worker.py diverge   SGD at lr 1e30: every rank must stop at step 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import xpconv
from xpconv.datasets import load_bundled_mnist
from xpconv.layers import Affine, BatchNormalization, Convolution, Dropout, Flatten, Pooling, Relu

N_TRAIN, N_TEST, BATCH = 95, 40, 31


def data():
    (x, t), (xv, tv) = load_bundled_mnist(flatten=False)
    x, xv = x[:, :, ::2, ::2], xv[:, :, ::2, ::2]            # 14 x 14: small and quick
    return x[:N_TRAIN], t[:N_TRAIN], xv[:N_TEST], tv[:N_TEST]


def simple(dev):
    return xpconv.SimpleConvNet((1, 14, 14), {"filter_num": 4, "filter_size": 3}, hidden_size=16,
                                weight_init_std="he", device=dev, dtype="float64", seed=0)


def deep(dev):
    convs = [{"filter_num": 4, "filter_size": 3, "pad": p, "stride": 1} for p in (1, 1, 1, 2, 1, 1)]
    return xpconv.DeepConvNet((1, 14, 14), convs, hidden_size=16, dropout_ratio=0.3, device=dev,
                              dtype="float64", seed=0)


def batchnorm(dev):
    """conv - BN (per channel) - relu - pool - affine - BN (per feature) - relu - dropout - affine"""
    rng = np.random.default_rng(0)
    a = lambda arr: dev.asarray(arr, dtype="float64")
    return xpconv.Sequential([
        ("Conv", Convolution(a(0.3 * rng.standard_normal((4, 1, 3, 3))), a(np.zeros(4)))),
        ("BN1", BatchNormalization(a(np.ones(4)), a(np.zeros(4)))),
        ("Relu1", Relu()),
        ("Pool", Pooling(2, 2, stride=2)),
        ("Flatten", Flatten()),
        ("Affine1", Affine(a(0.1 * rng.standard_normal((4 * 6 * 6, 16))), a(np.zeros(16)))),
        ("BN2", BatchNormalization(a(1.0 + 0.1 * rng.standard_normal(16)), a(np.zeros(16)))),
        ("Relu2", Relu()),
        ("Dropout", Dropout(0.3, seed=5)),
        ("Affine2", Affine(a(0.1 * rng.standard_normal((16, 10))), a(np.zeros(10)))),
    ])


CASES = {"simple": (simple, "Adam", 0.01), "deep": (deep, "Momentum", 0.05),
         "batchnorm": (batchnorm, "SGD", 0.1)}
BACKENDS = {"numpy": "cpu", "torch": "torch", "array_api_strict": "array_api_strict"}


def train(out: Path, reference: bool, backends: list[str]) -> None:
    comm = None if reference else xpconv.distributed.init()
    rank = 0 if comm is None else comm.rank
    x, t, xv, tv = data()
    for backend in backends:
        dev = xpconv.device(BACKENDS[backend])
        for case, (make, optimizer, lr) in CASES.items():
            net = make(dev)
            trainer = xpconv.Trainer(net, x, t, xv, tv, epochs=1, mini_batch_size=BATCH,
                                     optimizer=optimizer, optimizer_param={"lr": lr},
                                     verbose=False, seed=3, comm=comm).train()
            np.savez(out / f"{case}-{backend}-rank{rank}.npz", **net.state_arrays(),
                     losses=np.array(trainer.train_loss_list),
                     accuracies=np.array([trainer.train_acc_list[-1], trainer.test_acc]))


def fail_on_rank_1() -> None:
    comm = xpconv.distributed.init()
    if comm.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    comm.barrier()                # without the abort, rank 0 would wait here forever
    print(f"rank {comm.rank}: passed the barrier (must not happen)", flush=True)


def diverge() -> int:
    comm = xpconv.distributed.init()
    x, t, xv, tv = data()
    net = xpconv.SimpleConvNet((1, 14, 14), {"filter_num": 4, "filter_size": 3}, hidden_size=16,
                               seed=0)
    trainer = xpconv.Trainer(net, x, t, xv, tv, epochs=2, mini_batch_size=BATCH, optimizer="SGD",
                             optimizer_param={"lr": 1e30}, verbose=False, seed=0, comm=comm)
    try:
        trainer.train()
    except xpconv.TrainingDiverged as exc:
        print(f"rank {comm.rank} stopped: {exc}", flush=True)
        comm.barrier()            # every rank got here: none is left behind in a collective
        return 3
    print(f"rank {comm.rank}: did not diverge", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("train", "raise", "diverge"))
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--reference", action="store_true")
    p.add_argument("--backends", default="numpy")
    args = p.parse_args()
    if args.what == "train":
        train(args.out, args.reference, args.backends.split(","))
        return 0
    if args.what == "raise":
        fail_on_rank_1()
        return 0
    return diverge()


if __name__ == "__main__":
    sys.exit(main())
