"""Training loop: the book's ``common/trainer.py`` interface, on any device."""
from __future__ import annotations

import math
import time

from array_api_compat import array_namespace

from .devices import host_rng, to_numpy
from .optimizers import get_optimizer

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


class Trainer:
    """Mini-batch training of a network with one of the book's optimizers.

    Args:
        network: a model with ``gradient``, ``loss``, ``accuracy``, ``params`` and
            ``device`` (SimpleConvNet, DeepConvNet, LeNet, Sequential).
        x_train, t_train, x_test, t_test: host NumPy arrays; moved to the network's
            device once, before training.
        epochs: passes over the training set; each epoch visits every sample once in
            a fresh random order (the book samples with replacement instead).
        mini_batch_size: samples per step; the last, smaller batch of an epoch is kept.
        optimizer: a name ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam")
            or an optimizer object with ``update(params, grads)``.
        optimizer_param: keyword arguments of the optimizer, e.g. ``{"lr": 0.01}``.
        evaluate_sample_num_per_epoch: evaluate accuracy on this many samples per
            epoch (None: all).
        verbose: show a progress bar and per-epoch accuracies.
        seed: seed of the host RNG that shuffles the batches.
        comm: an ``xpconv.distributed`` communicator for data-parallel training over
            its ranks (``mpiexec -n N``), or None (one process). ``mini_batch_size``
            stays the global batch: each rank takes its contiguous share of every batch,
            the gradients are summed over the ranks before each step, rank 0's
            parameters and shuffling state are broadcast when ``train()`` starts, and
            accuracies count every rank's samples; only rank 0 prints.

    After ``train()``: ``train_loss_list`` (every step), ``train_acc_list``,
    ``test_acc_list`` and ``epoch_seconds`` (one per epoch), ``test_acc`` (final, on
    the whole test set).
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param={"lr": 0.01}, evaluate_sample_num_per_epoch=None,
                 verbose=True, *, seed=None, comm=None):
        if len(x_train) != len(t_train) or len(x_test) != len(t_test):
            raise ValueError(f"Trainer: x and t must have the same length; got train {len(x_train)} vs "
                             f"{len(t_train)}, test {len(x_test)} vs {len(t_test)}")
        if len(x_train) == 0:
            raise ValueError("Trainer: the training set is empty")
        if not (isinstance(epochs, int) and epochs >= 1 and isinstance(mini_batch_size, int)
                and mini_batch_size >= 1):
            raise ValueError(f"Trainer: expected epochs >= 1 and mini_batch_size >= 1 (ints); "
                             f"got {epochs!r}, {mini_batch_size!r}")
        self.network = network
        self.x_train, self.t_train = network._input(x_train), network._labels(t_train)
        self.x_test, self.t_test = network._input(x_test), network._labels(t_test)
        self.epochs, self.batch_size = epochs, mini_batch_size
        self.optimizer = (get_optimizer(optimizer, **optimizer_param) if isinstance(optimizer, str)
                          else optimizer)
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.verbose = verbose
        self.rng = host_rng(seed)
        self.comm = comm
        self.train_loss_list: list[float] = []
        self.train_acc_list: list[float] = []
        self.test_acc_list: list[float] = []
        self.epoch_seconds: list[float] = []
        self.test_acc: float | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.batch_size)

    def train_step(self, x_batch, t_batch) -> float:
        """One optimizer step on a batch already on the device; returns the loss."""
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        return self._record_loss(self.network.last_layer.loss)

    def _record_loss(self, loss) -> float:
        """Append the step's loss; stop with TrainingDiverged if it is NaN or infinite."""
        loss = float(to_numpy(loss))
        if not math.isfinite(loss):
            lr = getattr(self.optimizer, "lr", "?")
            raise TrainingDiverged(
                f"Trainer: the loss became {loss} at step {len(self.train_loss_list) + 1} "
                f"(epoch {len(self.epoch_seconds) + 1}); the model diverged. Try a smaller learning "
                f"rate (now {lr}) or another optimizer (e.g. optimizer='Adam', lr=0.001)")
        self.train_loss_list.append(loss)
        return loss

    def train(self):
        """Run every epoch; returns self."""
        xp = array_namespace(self.x_train)
        n = self.x_train.shape[0]
        self._distributed_start()
        verbose = self.verbose and self._is_root
        bar = _progress(self.epochs * self.steps_per_epoch, verbose)
        try:
            for epoch in range(1, self.epochs + 1):
                start = time.perf_counter()
                order = self.rng.permutation(n)
                for s in range(0, n, self.batch_size):
                    if self.comm is None:
                        idx = self.network.device.asarray(order[s:s + self.batch_size])
                        loss = self.train_step(xp.take(self.x_train, idx, axis=0),
                                               xp.take(self.t_train, idx, axis=0))
                    else:
                        loss = self._distributed_step(order[s:s + self.batch_size])
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", refresh=False)
                self.epoch_seconds.append(time.perf_counter() - start)
                train_acc, test_acc = self._evaluate()
                self.train_acc_list.append(train_acc)
                self.test_acc_list.append(test_acc)
                if verbose:
                    bar.write(f"epoch {epoch:>3}/{self.epochs}: loss {loss:.4f}  train acc {train_acc:.4f}  "
                              f"test acc {test_acc:.4f}  ({self.epoch_seconds[-1]:.1f} s)")
        finally:
            bar.close()
        self.test_acc = self._accuracy(self.x_test, self.t_test)
        if verbose:
            print(f"=============== Final Test Accuracy ===============\ntest acc: {self.test_acc:.4f}")
        return self

    def _evaluate(self) -> tuple[float, float]:
        k = self.evaluate_sample_num_per_epoch
        xs, ts = self.x_train, self.t_train
        xt, tt = self.x_test, self.t_test
        if k is not None:
            k1, k2 = min(k, xs.shape[0]), min(k, xt.shape[0])
            xs, ts, xt, tt = xs[:k1, ...], ts[:k1, ...], xt[:k2, ...], tt[:k2, ...]
        return self._accuracy(xs, ts), self._accuracy(xt, tt)

    # ------------------------------------------------------------------ data parallel (comm)
    # With comm=None these are the one-process behaviour; the work is in xpconv.distributed.
    @property
    def _is_root(self) -> bool:
        """Whether this process prints (rank 0, or the only process)."""
        return self.comm is None or self.comm.rank == 0

    def _distributed_start(self) -> None:
        """Rank 0's parameters, buffers, Dropout generators and shuffling state everywhere."""
        if self.comm is not None:
            self.comm.broadcast_model(self.network)
            self.comm.broadcast_rng(self.rng)

    def _distributed_step(self, batch) -> float:
        """One step on this rank's share of ``batch`` (host indices of the global batch):
        the global batch's gradient and loss are summed over the ranks, then the same
        update runs on every rank. Every rank sees the same loss, so a divergence stops
        them all at the same step."""
        grads, loss = self.comm.gradient(self.network, self.x_train, self.t_train, batch)
        self.optimizer.update(self.network.params, grads)
        return self._record_loss(loss)

    def _accuracy(self, x, t) -> float:
        """Accuracy on (x, t); with comm, integer counts of disjoint shares summed (exact)."""
        if self.comm is None:
            return self.network.accuracy(x, t)
        return self.comm.accuracy(self.network, x, t)


def _progress(total: int, enabled: bool):
    """A tqdm bar, or a silent stand-in with the same methods."""
    if enabled:
        from tqdm.auto import tqdm
        return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    class _Silent:
        def update(self, n):
            pass

        def set_postfix(self, **kw):
            pass

        def write(self, s):
            print(s)

        def close(self):
            pass

    return _Silent()
