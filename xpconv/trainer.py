"""Training loop: the book's ``common/trainer.py`` interface, on any device.

A training step never waits for the device: losses stay where they are computed and
are read back together every ``check_every`` steps and at the end of each epoch,
which is also when divergence is checked.
"""
from __future__ import annotations

import math
import sys
import time
import warnings

from array_api_compat import array_namespace, is_array_api_obj

from ._kernels.checks import check_labels
from .devices import device as resolve_device, device_scope, dtype_name, from_host, host_rng, \
    is_host_numpy, to_numpy
from .optimizers import get_optimizer

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """The training loss (or the network's output) became NaN or infinite."""


class Trainer:
    """Mini-batch training of a network with one of the book's optimizers.

    Args:
        network: any model with the book's interface: ``gradient(x, t)``, ``loss(x, t)``,
            ``accuracy(x, t)`` and a ``params`` dict (xpconv's models, or the book's own
            classes); ``predict(x)`` and ``last_layer.loss`` are used when present. If it
            has a ``device`` (xpconv's models), host data is moved there once, in the
            parameters' dtype; otherwise the data is used as given.
        x_train, t_train, x_test, t_test: arrays (host NumPy, or already on the
            network's device). Labels follow one rule: integer labels (N,) or (N, 1) in
            0..K-1, or (N, K) one-hot targets; they are checked once, here.
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
        check_every: read the losses back (one transfer) and check them every this
            many steps; also done at the end of each epoch.
        comm: an ``xpconv.distributed`` communicator for data-parallel training over
            its ranks (``mpiexec -n N``), or None (one process). ``mini_batch_size``
            stays the global batch: each rank takes its contiguous share of every batch,
            the gradients are summed over the ranks before each step, rank 0's
            parameters and shuffling state are broadcast when ``train()`` starts, and
            accuracies count every rank's samples; only rank 0 prints.

    After ``train()``: ``train_loss_list`` (every step), ``train_acc_list``,
    ``test_acc_list`` and ``epoch_seconds`` (one per epoch), ``test_acc`` (final, on
    the whole test set).

    Raises:
        TrainingDiverged: a loss, or the network's output after the last step of an
            epoch, is NaN or infinite; raised before that epoch is evaluated, so
            ``train()`` never returns a broken model.
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param={"lr": 0.01}, evaluate_sample_num_per_epoch=None,
                 verbose=True, *, seed=None, check_every=50, comm=None):
        sizes = [_length(a) for a in (x_train, t_train, x_test, t_test)]
        if sizes[0] != sizes[1] or sizes[2] != sizes[3]:
            raise ValueError(f"Trainer: x and t must have the same length; got train {sizes[0]} vs "
                             f"{sizes[1]}, test {sizes[2]} vs {sizes[3]}")
        if sizes[0] == 0:
            raise ValueError("Trainer: the training set is empty")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                   for v in (epochs, mini_batch_size, check_every)):
            raise ValueError(f"Trainer: expected epochs >= 1, mini_batch_size >= 1 and check_every >= 1 "
                             f"(ints); got {epochs!r}, {mini_batch_size!r}, {check_every!r}")
        self.network = network
        self.x_train, self.x_test = self._place(x_train), self._place(x_test)
        k = self._classes()
        self.t_train = self._place_labels("t_train", t_train, k)
        self.t_test = self._place_labels("t_test", t_test, k)
        self.epochs, self.batch_size, self.check_every = epochs, mini_batch_size, check_every
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
        self._pending: list = []     # this epoch's losses not yet read back (device scalars)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.batch_size)

    def train(self):
        """Run every epoch; returns self."""
        n = self.x_train.shape[0]
        self._distributed_start()
        verbose = self.verbose and self._is_root
        bar = _progress(self.epochs * self.steps_per_epoch, verbose)
        try:
            for epoch in range(1, self.epochs + 1):
                start = time.perf_counter()
                host_order = self.rng.permutation(n)
                order = from_host(host_order, self.x_train)              # one upload per epoch
                for s in range(0, n, self.batch_size):
                    stop = min(s + self.batch_size, n)
                    if self.comm is None:
                        loss = self._step(_take(self.x_train, order[s:stop]), _take(self.t_train, order[s:stop]))
                    else:
                        loss = self._distributed_step(host_order[s:stop])
                    self._pending.append(loss)
                    bar.update(1)
                    if len(self._pending) == self.check_every:
                        self._read_losses(bar, epoch)
                # every rank holds the same parameters and data: the same probe everywhere
                self._read_losses(bar, epoch, last_batch=_take(self.x_train, order[s:stop]))
                self.epoch_seconds.append(time.perf_counter() - start)
                train_acc, test_acc = self._evaluate()
                self.train_acc_list.append(train_acc)
                self.test_acc_list.append(test_acc)
                if verbose:
                    bar.write(f"epoch {epoch:>3}/{self.epochs}: loss {self.train_loss_list[-1]:.4f}  "
                              f"train acc {train_acc:.4f}  test acc {test_acc:.4f}  "
                              f"({self.epoch_seconds[-1]:.1f} s)")
        finally:
            bar.close()
        self.test_acc = self._correct(self.x_test, self.t_test) / self.x_test.shape[0]
        if verbose:
            print(f"=============== Final Test Accuracy ===============\ntest acc: {self.test_acc:.4f}")
        return self

    # ------------------------------------------------------------------ steps and evaluation
    def _step(self, x, t):
        """One optimizer step on a batch; returns its loss as computed (not read back)."""
        grads = self.network.gradient(x, t)
        self.optimizer.update(self.network.params, grads)
        loss = getattr(getattr(self.network, "last_layer", None), "loss", None)
        return self.network.loss(x, t) if loss is None or callable(loss) else loss

    def _evaluate(self) -> tuple[float, float]:
        """(train, test) accuracy of this epoch, on ``evaluate_sample_num_per_epoch`` samples."""
        k = self.evaluate_sample_num_per_epoch
        xs, ts = self.x_train, self.t_train
        xt, tt = self.x_test, self.t_test
        if k is not None:
            k1, k2 = min(k, xs.shape[0]), min(k, xt.shape[0])
            xs, ts, xt, tt = xs[:k1, ...], ts[:k1, ...], xt[:k2, ...], tt[:k2, ...]
        return self._correct(xs, ts) / xs.shape[0], self._correct(xt, tt) / xt.shape[0]

    def _correct(self, x, t) -> int:
        """Number of correct predictions on (x, t), from the network's ``accuracy``; with
        ``comm``, the integer counts of the ranks' disjoint shares, summed (exact)."""
        accuracy = (self.network.accuracy(x, t) if self.comm is None
                    else self.comm.accuracy(self.network, x, t))
        return round(accuracy * x.shape[0])

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

    def _distributed_step(self, batch):
        """One step on this rank's share of ``batch`` (host indices of the global batch):
        the global batch's gradient and loss are summed over the ranks, then the same
        update runs on every rank. Every rank sees the same loss, so a divergence stops
        them all at the same step. Returns the loss (not read back)."""
        grads, loss = self.comm.gradient(self.network, self.x_train, self.t_train, batch)
        self.optimizer.update(self.network.params, grads)
        return loss

    def _read_losses(self, bar, epoch: int, last_batch=None) -> None:
        """Read the pending losses back (one transfer), check them, append them.

        With ``last_batch`` (the end of an epoch), the network's output on it after the
        last update is checked in the same transfer: the last step's own loss was
        computed before its update, so this is what catches that update diverging.
        """
        values, self._pending = self._pending, []
        predict = getattr(self.network, "predict", None)
        probe = last_batch is not None and callable(predict)
        if probe:
            y = predict(last_batch)
            with device_scope(y):
                xp = array_namespace(y)
                values.append(xp.astype(xp.all(xp.isfinite(y)), y.dtype))   # 1: every score finite
        if not values:
            return
        floats = _read_back(values)
        output_finite = floats.pop() == 1 if probe else True
        for loss in floats:
            if not math.isfinite(loss):
                self._diverged(f"the loss became {loss} at step {len(self.train_loss_list) + 1} "
                               f"(epoch {epoch})")
            self.train_loss_list.append(loss)
        if not output_finite:
            self._diverged(f"the network's output became NaN or infinite after step "
                           f"{len(self.train_loss_list)}, the last of epoch {epoch}")
        bar.set_postfix(epoch=epoch, loss=f"{self.train_loss_list[-1]:.4f}", refresh=False)

    def _diverged(self, what: str):
        lr = getattr(self.optimizer, "lr", "?")
        raise TrainingDiverged(
            f"Trainer: {what}; the model diverged. Try a smaller learning rate (now {lr}) or "
            f"another optimizer (e.g. optimizer='Adam', lr=0.001); also check x for NaN/Inf and t for "
            f"labels outside 0..K-1 (a label out of range makes xpconv's loss NaN)")

    # ------------------------------------------------------------------ data
    def _device(self):
        dev = getattr(self.network, "device", None)
        return None if dev is None else resolve_device(dev)

    def _place(self, x):
        """Host data on the network's device in its parameters' dtype; else as given."""
        dev = self._device()
        if is_array_api_obj(x) and not is_host_numpy(x):
            return x
        x = to_numpy(x)
        if dev is None:
            return x
        return dev.asarray(x, dtype=dtype_name(next(iter(self.network.params.values()))))

    def _classes(self):
        """K, the width of the network's output on one sample (None without ``predict``)."""
        predict = getattr(self.network, "predict", None)
        if not callable(predict):
            return None
        y = predict(self.x_train[:1, ...])
        return y.shape[-1] if len(y.shape) == 2 else None

    def _place_labels(self, name: str, t, k):
        """Labels checked by the one rule on the host (once), then put where the data is."""
        host = check_labels("Trainer", to_numpy(t), _length(t), k, name=name, check_values=True)
        if name == "t_train":
            classes = host if host.ndim == 1 else host.argmax(axis=1)
            if classes.min() == classes.max():
                warnings.warn(f"Trainer: every training label is class {int(classes[0])}; the network "
                              f"can only learn to predict that class (accuracy 1.0 means nothing)",
                              UserWarning, stacklevel=3)
        if is_array_api_obj(t) and not is_host_numpy(t):       # already on the device: as given
            return array_namespace(t).reshape(t, tuple(host.shape))
        dev = self._device()
        return host if dev is None else dev.asarray(host)


def _take(a, idx):
    """``a[idx]`` along the first axis, on ``a``'s device."""
    with device_scope(a):
        return array_namespace(a).take(a, idx, axis=0)


def _length(a) -> int:
    """Number of samples: ``a.shape[0]`` for arrays (the Array API has no ``len``), else ``len``."""
    shape = getattr(a, "shape", None)
    return shape[0] if shape else len(a)


def _read_back(values) -> list[float]:
    """Scalars (device arrays, NumPy values or numbers) as floats, with one transfer."""
    first = values[0]
    if is_array_api_obj(first) and not is_host_numpy(first):
        xp = array_namespace(first)
        with device_scope(first):
            values = to_numpy(xp.stack([xp.reshape(v, ()) for v in values]))
    return [float(v) for v in values]


def _progress(total: int, enabled: bool):
    """A tqdm bar, or a silent stand-in with the same methods (also when stderr is not a
    terminal, e.g. a log file, which would collect every redraw; notebooks keep their bar)."""
    if enabled:
        from tqdm.auto import tqdm
        in_notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
        if in_notebook or sys.stderr.isatty():
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
