"""Training loop: the book's ``common/trainer.py`` interface, on any device, durable.

A training step never waits for the device: losses stay where they are computed and
are read back together every ``check_every`` steps and at the end of each epoch,
which is also when divergence is checked.

With ``checkpoint=DIR`` the run survives interruption: a checkpoint
(:mod:`xpconv.checkpoint`) is written every ``checkpoint_every`` steps and at every
epoch end, SIGTERM, SIGINT and SIGHUP write one at the next step boundary and stop, and the
same ``Trainer`` started again on the same DIR continues where the checkpoint was
taken, ending with parameters equal bit for bit to an uninterrupted run's.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy

from . import checkpoint as ckpt
from ._kernels.checks import check_labels
from ._namespace import array_namespace, is_array
from ._typing import Array
from .devices import device as resolve_device, device_scope, dtype_name, from_host, host_rng, is_host_numpy, to_numpy
from .memory import require
from .optimizers import get_optimizer

if TYPE_CHECKING:
    from .distributed import Communicator
    from .schedules import Schedule

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted"]

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                   "samples_per_s")


class TrainingDiverged(FloatingPointError):
    """The training loss (or the network's output) became NaN or infinite."""


# a terminal closing (SIGHUP) stops training like SIGTERM: checkpoint, then exit
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


class TrainingInterrupted(Exception):
    """SIGTERM, SIGINT or SIGHUP stopped training at a step boundary, after a checkpoint was written.

    Attributes:
        signum: the signal (``signal.SIGTERM``, ``signal.SIGINT`` or ``signal.SIGHUP``).
        path: the checkpoint written, or None without ``checkpoint=``.
        exit_code: ``128 + signum`` (143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP), what a
            shell expects.
    """

    def __init__(self, signum: int, path: Path | None, where: str):
        self.signum, self.path, self.exit_code = signum, path, 128 + signum
        name = signal.Signals(signum).name
        saved = (f"checkpoint written to {path} ({where}); run the same command again to resume"
                 if path is not None else f"stopped {where}; no checkpoint (use checkpoint=DIR)")
        super().__init__(f"interrupted by {name}: {saved}")


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
            0..K-1, or (N, K) one-hot targets; they are checked once, here. ``x_test``
            and ``t_test`` may be None (no validation).
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
        checkpoint: a folder for checkpoints (created if missing), or None. When it
            holds a checkpoint of this run, ``train()`` resumes from it; a checkpoint
            of another run is refused (ValueError naming what differs).
        checkpoint_every: also write a checkpoint every this many optimizer steps
            (None: only at epoch ends and on SIGTERM/SIGINT).
        restart: ignore (and replace) a checkpoint in ``checkpoint``.
        log: also write the per-epoch history to this ``.csv`` or ``.jsonl`` file.
        callbacks: objects with any of ``on_step_end(trainer, step)`` and
            ``on_epoch_end(trainer, record)`` (``record``: the epoch's history row).
        lr_schedule: "step", "cosine", "plateau" or an :class:`xpconv.schedules.Schedule`
            (None: constant); ``warmup``: steps of linear warm-up.
        early_stop: stop when the validation loss has not improved for this many epochs,
            and restore the parameters of the best epoch (None: never).
        keep_best: with ``checkpoint``, also write the model of the epoch with the best
            validation accuracy to ``checkpoint/best.npz`` (a model file: ``load_model``).
        compile: run each step through :func:`xpconv.compile_step` (one ``jax.jit`` program
            on JAX, one ``torch.compile`` graph on torch, compiled at the first step of each
            batch size; the plain step on NumPy and CuPy). Not with ``comm``.

    After ``train()``: ``history`` (one dict per epoch: ``epoch``, ``train_loss`` (the
    epoch's mean), ``train_acc``, ``val_loss``, ``val_acc``, ``lr``, ``seconds``,
    ``samples_per_s``), the book's ``train_loss_list`` (every step), ``train_acc_list``,
    ``test_acc_list``, and ``epoch_seconds`` (one per epoch), ``test_acc`` (final, on
    the whole test set; None without one).

    Raises:
        TrainingDiverged: a loss, or the network's output after the last step of an
            epoch, is NaN or infinite; raised before that epoch is evaluated, so
            ``train()`` never returns a broken model.
        TrainingInterrupted: SIGTERM, SIGINT or SIGHUP (with ``checkpoint``), after the checkpoint.
    """

    def __init__(self, network: Any, x_train: Array, t_train: Array, x_test: Array | None = None,
                 t_test: Array | None = None, epochs: int = 20, mini_batch_size: int = 100,
                 optimizer: str | Any = "SGD", optimizer_param: dict[str, float] = {"lr": 0.01},
                 evaluate_sample_num_per_epoch: int | None = None, verbose: bool = True, *,
                 seed: int | None = None, check_every: int = 50, comm: Communicator | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                 restart: bool = False, log: str | os.PathLike | None = None, callbacks: Iterable[Any] = (),
                 lr_schedule: str | Schedule | None = None, warmup: int = 0, early_stop: int | None = None,
                 keep_best: bool = False, compile: bool = False) -> None:
        if (x_test is None) != (t_test is None):
            raise ValueError("Trainer: give both x_test and t_test, or neither")
        sizes = [_length(a) for a in (x_train, t_train)]
        sizes += [0, 0] if x_test is None else [_length(a) for a in (x_test, t_test)]
        if sizes[0] != sizes[1] or sizes[2] != sizes[3]:
            raise ValueError(f"Trainer: x and t must have the same length; got train {sizes[0]} vs "
                             f"{sizes[1]}, test {sizes[2]} vs {sizes[3]}")
        if sizes[0] == 0:
            raise ValueError("Trainer: the training set is empty")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                   for v in (epochs, mini_batch_size, check_every)):
            raise ValueError(f"Trainer: expected epochs >= 1, mini_batch_size >= 1 and check_every >= 1 "
                             f"(ints); got {epochs!r}, {mini_batch_size!r}, {check_every!r}")
        if checkpoint_every is not None and not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
            raise ValueError(f"Trainer: expected checkpoint_every >= 1 (an int) or None; got {checkpoint_every!r}")
        self.network = network
        self._data_digest = _digest(x_train, t_train, x_test, t_test) if checkpoint is not None else None
        self.x_train = self._place(x_train)
        self.x_test = None if x_test is None else self._place(x_test)
        k = self._classes()
        self.t_train = self._place_labels("t_train", t_train, k)
        self.t_test = None if t_test is None else self._place_labels("t_test", t_test, k)
        self.epochs, self.batch_size, self.check_every = epochs, mini_batch_size, check_every
        self.optimizer = (get_optimizer(optimizer, **optimizer_param) if isinstance(optimizer, str)
                          else optimizer)
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.verbose = verbose
        self.seed = seed
        self.rng = host_rng(seed)
        self.comm = comm
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every, self.restart = checkpoint_every, restart
        self.log = None if log is None else Path(log)
        self.callbacks = list(callbacks)
        from .schedules import get_schedule
        self.schedule = get_schedule(lr_schedule, warmup)
        self.schedule.total_steps = epochs * math.ceil(sizes[0] / mini_batch_size)
        self._base_lr = getattr(self.optimizer, "lr", None)
        if early_stop is not None and not (isinstance(early_stop, int) and early_stop >= 1):
            raise ValueError(f"Trainer: expected early_stop >= 1 (epochs, an int) or None; got {early_stop!r}")
        if (early_stop or keep_best) and x_test is None:
            raise ValueError("Trainer: early_stop and keep_best watch the validation set: give x_test and t_test")
        self.early_stop, self.keep_best = early_stop, keep_best
        if compile and comm is not None:
            raise ValueError("Trainer: compile=True is for one process; a distributed step sums "
                             "gradients between the ranks outside the compiled program")
        self._compiled = None
        if compile:
            from .compile import compile_step
            self._compiled = compile_step(network, self.optimizer)
        self._best: dict[str, Any] = {"val_loss": None, "val_acc": None, "bad_epochs": 0, "epoch": None}
        self._best_arrays: dict | None = None      # parameters of the best epoch by validation loss
        self.stopped_early = False
        self.history: list[dict] = []
        self.train_loss_list: list[float] = []
        self.train_acc_list: list[float] = []
        self.test_acc_list: list[float | None] = []
        self.epoch_seconds: list[float] = []
        self.test_acc: float | None = None
        self.resumed_from: tuple[int, int] | None = None   # (epoch, step in epoch) of a resume
        self._pending: list = []     # this epoch's losses not yet read back (device scalars)
        self._stop_signal: int | None = None
        self._epoch, self._step_in_epoch, self._global_step = 1, 0, 0
        self._order: numpy.ndarray | None = None   # the current epoch's permutation (host int64)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.batch_size)

    def train(self) -> Trainer:
        """Run every epoch (from a checkpoint of this run, if ``checkpoint`` holds one);
        returns self.
        """
        n = self.x_train.shape[0]
        self._distributed_start()
        resume = self._load_checkpoint()
        verbose = self.verbose and self._is_root
        done = (self._epoch - 1) * self.steps_per_epoch + self._step_in_epoch
        bar = _progress(self.epochs * self.steps_per_epoch, verbose, initial=done)
        previous = self._install_signal_handlers()
        try:
            for epoch in range(self._epoch, (self._epoch if self.stopped_early else self.epochs + 1)):
                start = time.perf_counter()
                if resume is not None and resume.state["step_in_epoch"] > 0:
                    host_order = numpy.asarray(resume.order, dtype=numpy.int64)
                else:
                    host_order = self.rng.permutation(n)
                resume = None
                self._epoch, self._order = epoch, host_order
                order = from_host(host_order, self.x_train)              # one upload per epoch
                for s in range(self._step_in_epoch * self.batch_size, n, self.batch_size):
                    stop = min(s + self.batch_size, n)
                    self._set_lr(epoch)
                    if self.comm is None:
                        loss = self._step(_take(self.x_train, order[s:stop]), _take(self.t_train, order[s:stop]))
                    else:
                        loss = self._distributed_step(host_order[s:stop])
                    self._pending.append(loss)
                    self._step_in_epoch += 1
                    self._global_step += 1
                    bar.update(1)
                    if len(self._pending) == self.check_every:
                        self._read_losses(bar, epoch)
                    for cb in self.callbacks:
                        if hasattr(cb, "on_step_end"):
                            cb.on_step_end(self, self._global_step)
                    if stop < n and self._stop_signal is not None:
                        self._read_losses(bar, epoch)
                        where = f"epoch {epoch}, step {self._step_in_epoch} of {self.steps_per_epoch}"
                        raise TrainingInterrupted(self._stop_signal, self._save_checkpoint(force=True), where)
                    if (stop < n and self.checkpoint_every is not None
                            and self._global_step % self.checkpoint_every == 0):
                        self._read_losses(bar, epoch)
                        self._save_checkpoint()
                # every rank holds the same parameters and data: the same probe everywhere
                self._read_losses(bar, epoch, last_batch=_take(self.x_train, order[s:stop]))
                self.epoch_seconds.append(time.perf_counter() - start)
                record = self._epoch_record(epoch, n)
                self._epoch, self._step_in_epoch = epoch + 1, 0
                self.schedule.epoch_end(record["val_loss"] if record["val_loss"] is not None
                                        else record["train_loss"])
                self._watch_best(record)
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, record)
                self._save_checkpoint()
                self._write_log()
                if verbose:
                    val = ("" if record["val_acc"] is None else
                           f"  val loss {record['val_loss']:.4f}  val acc {record['val_acc']:.4f}")
                    bar.write(f"epoch {epoch:>3}/{self.epochs}: loss {record['train_loss']:.4f}  "
                              f"train acc {record['train_acc']:.4f}{val}  ({record['seconds']:.1f} s)")
                if self.stopped_early:
                    break
                if self._stop_signal is not None and epoch < self.epochs:
                    raise TrainingInterrupted(self._stop_signal, self._last_path(), f"end of epoch {epoch}")
        finally:
            self._restore_signal_handlers(previous)
            bar.close()
        if self.stopped_early:
            _restore_model(self.network, cast(dict, self._best_arrays))   # set when stopped early
            if verbose:
                print(f"early stop after epoch {self._epoch - 1}: no better validation loss for "
                      f"{self.early_stop} epochs; the parameters of epoch {self._best['epoch']} are restored")
        if self.x_test is not None:
            self.test_acc = self._correct(self.x_test, self.t_test) / self.x_test.shape[0]
            if verbose:
                print(f"=============== Final Test Accuracy ===============\ntest acc: {self.test_acc:.4f}")
        return self

    # ------------------------------------------------------------------ the training record
    def _epoch_record(self, epoch: int, n: int) -> dict:
        """The history row of ``epoch`` (also appended to the book's lists)."""
        spe = self.steps_per_epoch
        losses = self.train_loss_list[(epoch - 1) * spe:epoch * spe]
        sizes = [self.batch_size] * (spe - 1) + [n - (spe - 1) * self.batch_size]
        train_loss = math.fsum(loss * size for loss, size in zip(losses, sizes, strict=True)) / n
        train_acc, test_acc = self._evaluate()
        val_loss = None if self.x_test is None else self._mean_loss(self.x_test, self.t_test)
        seconds = self.epoch_seconds[-1]
        lr = getattr(self.optimizer, "lr", None)
        record = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                  "val_acc": test_acc, "lr": lr, "seconds": seconds,
                  "samples_per_s": n / seconds if seconds > 0 else None}
        self.history.append(record)
        self.train_acc_list.append(train_acc)
        self.test_acc_list.append(test_acc)
        return record

    def _mean_loss(self, x, t, batch_size: int = 1000) -> float:
        """Mean loss over (x, t) in inference mode, in batches read back with one transfer
        (the same on every rank).
        """
        values, sizes = [], []
        for s in range(0, x.shape[0], batch_size):
            e = min(s + batch_size, x.shape[0])       # the Array API has no out-of-bounds slices
            xb, tb = x[s:e, ...], t[s:e, ...]
            try:
                values.append(self.network.loss(xb, tb, train_flg=False))
            except TypeError:                  # the book's networks: loss(x, t)
                values.append(self.network.loss(xb, tb))
            sizes.append(e - s)
        return math.fsum(v * n for v, n in zip(_read_back(values), sizes, strict=True)) / x.shape[0]

    def _write_log(self) -> None:
        """The history so far to ``checkpoint/history.csv`` and ``log`` (rank 0 writes)."""
        if not self._is_root:
            return
        targets = [p for p in (self.checkpoint and self.checkpoint / ckpt.HISTORY, self.log) if p]
        for path in targets:
            write_history(path, self.history)

    # ------------------------------------------------------------------ schedule and early stopping
    def _set_lr(self, epoch: int) -> None:
        """The optimizer's ``lr`` for the next step: the base rate times the schedule's factor."""
        if self._base_lr is not None and (self.schedule.kind != "constant" or self.schedule.warmup):
            self.optimizer.lr = self._base_lr * self.schedule.factor(self._global_step, epoch)

    def _watch_best(self, record: dict) -> None:
        """Early stopping on the validation loss; the best model by validation accuracy."""
        best = self._best
        if self.early_stop is not None:
            if best["val_loss"] is None or record["val_loss"] < best["val_loss"]:
                best.update(val_loss=record["val_loss"], bad_epochs=0, epoch=record["epoch"])
                self._best_arrays = _model_arrays(self.network)
            else:
                best["bad_epochs"] += 1
                self.stopped_early = best["bad_epochs"] >= self.early_stop
        if self.keep_best and self.checkpoint is not None and (
                best["val_acc"] is None or record["val_acc"] > best["val_acc"]):
            best["val_acc"] = record["val_acc"]
            if self._is_root and callable(getattr(self.network, "save_params", None)):
                self.checkpoint.mkdir(parents=True, exist_ok=True)
                self.network.save_params(self.checkpoint / ckpt.BEST)

    # ------------------------------------------------------------------ checkpoints
    def _run_description(self) -> dict:
        """What identifies this run: a checkpoint of another run is refused."""
        params = self.network.params
        opt_settings, _ = _optimizer_state(self.optimizer)
        opt_settings = {k: v for k, v in opt_settings.items() if k != "iter"}
        if self._base_lr is not None:
            opt_settings["lr"] = self._base_lr             # the schedule changes the current one
        return {"model": type(self.network).__name__,
                "parameters": {k: [list(map(int, params[k].shape)), dtype_name(params[k])] for k in params},
                "optimizer": type(self.optimizer).__name__, "optimizer_settings": opt_settings,
                "batch_size": self.batch_size, "seed": self.seed, "data": self._data_digest,
                "schedule": self.schedule.describe(), "early_stop": self.early_stop}

    def _last_path(self) -> Path | None:
        return None if self.checkpoint is None else ckpt.last_path(self.checkpoint)

    def _save_checkpoint(self, force: bool = False) -> Path | None:
        """Write ``last.npz`` (rank 0, or any rank when ``force``: every rank holds the same
        state, and a signalled rank must not wait for rank 0). Returns its path.
        """
        path = self._last_path()
        if path is None or not (self._is_root or force):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        settings, opt_arrays = _optimizer_state(self.optimizer)
        state = {"epoch": self._epoch, "step_in_epoch": self._step_in_epoch,
                 "global_step": self._global_step, "shuffle_rng": self.rng.bit_generator.state,
                 "dropout_rngs": _layer_rngs(self.network), "optimizer_settings": settings,
                 "history": self.history, "train_loss_list": self.train_loss_list,
                 "epoch_seconds": self.epoch_seconds, "schedule": self.schedule.state(),
                 "best": self._best, "stopped_early": self.stopped_early}
        model = _model_arrays(self.network)
        if self._best_arrays is not None:
            model.update((f"best/{k}", v) for k, v in self._best_arrays.items())
        ckpt.write(path, ckpt.Checkpoint(self._run_description(), state, model,
                                         opt_arrays, self._order if self._order is not None else numpy.zeros(0)))
        return path

    def _load_checkpoint(self) -> ckpt.Checkpoint | None:
        """Restore the state of ``checkpoint/last.npz`` if there is one (and not ``restart``)."""
        path = self._last_path()
        if path is None or self.restart or not path.exists():
            return None
        try:
            saved = ckpt.read(path)
        except ValueError as exc:
            raise ValueError(f"Trainer: cannot resume from {path}: {exc}; the file is kept; "
                             f"restart=True (xpconv train --restart) starts over") from None
        differs = ckpt.differences(saved.run, self._run_description())
        if differs:
            raise ValueError(f"Trainer: {path} is a checkpoint of another run ({'; '.join(differs)}); "
                             f"use another checkpoint folder, or restart=True (--restart) to replace it")
        state = saved.state
        if state["epoch"] > self.epochs + (state["step_in_epoch"] == 0) and not state["stopped_early"]:
            raise ValueError(f"Trainer: {path} is at epoch {state['epoch']}, past epochs={self.epochs}")
        best = {k[len("best/"):]: v for k, v in saved.model.items() if k.startswith("best/")}
        _restore_model(self.network, {k: v for k, v in saved.model.items() if not k.startswith("best/")})
        self._best_arrays = best or None
        self.schedule.load_state(state["schedule"])
        self._best, self.stopped_early = state["best"], state["stopped_early"]
        self.optimizer.load_state_dict(state["optimizer_settings"], saved.optimizer)
        self.rng.bit_generator.state = state["shuffle_rng"]
        _restore_layer_rngs(self.network, state["dropout_rngs"])
        self.history = state["history"]
        self.train_loss_list = state["train_loss_list"]
        self.epoch_seconds = state["epoch_seconds"]
        self.train_acc_list = [r["train_acc"] for r in self.history]
        self.test_acc_list = [r["val_acc"] for r in self.history]
        self._epoch, self._step_in_epoch = state["epoch"], state["step_in_epoch"]
        self._global_step = state["global_step"]
        self.resumed_from = (self._epoch, self._step_in_epoch)
        if self.verbose and self._is_root:
            print(f"Trainer: resuming from {path} at epoch {self._epoch}, step {self._step_in_epoch} "
                  f"of {self.steps_per_epoch}", file=sys.stderr)
        return saved

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        """SIGTERM/SIGINT/SIGHUP: stop at the next step boundary with a checkpoint (a second
        SIGINT stops at once). Only with ``checkpoint``, and only on the main thread.
        """
        if self.checkpoint is None or threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum

        return {s: signal.signal(s, handler) for s in _STOP_SIGNALS}

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for s, h in (previous or {}).items():
            signal.signal(s, h)

    # ------------------------------------------------------------------ steps and evaluation
    def _step(self, x, t):
        """One optimizer step on a batch; returns its loss as computed (not read back)."""
        if self._compiled is not None:
            if dtype_name(x) == "uint8":
                x = self.network._input(x)   # the compiled program takes the scaled batch
            return self._compiled(x, t)
        grads = self.network.gradient(x, t)
        self.optimizer.update(self.network.params, grads)
        loss = getattr(getattr(self.network, "last_layer", None), "loss", None)
        return self.network.loss(x, t) if loss is None or callable(loss) else loss

    def _evaluate(self) -> tuple[float, float | None]:
        """(train, test) accuracy of this epoch, on ``evaluate_sample_num_per_epoch`` samples
        (test: None without a test set).
        """
        k = self.evaluate_sample_num_per_epoch
        xs, ts = self.x_train, self.t_train
        xt, tt = self.x_test, self.t_test
        if k is not None:
            k1 = min(k, xs.shape[0])
            xs, ts = xs[:k1, ...], ts[:k1, ...]
            if xt is not None and tt is not None:   # both or neither (checked in __init__)
                k2 = min(k, xt.shape[0])
                xt, tt = xt[:k2, ...], tt[:k2, ...]
        train = self._correct(xs, ts) / xs.shape[0]
        return train, None if xt is None else self._correct(xt, tt) / xt.shape[0]

    def _correct(self, x, t) -> int:
        """Number of correct predictions on (x, t), from the network's ``accuracy``; with
        ``comm``, the integer counts of the ranks' disjoint shares, summed (exact).
        """
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
        them all at the same step. Returns the loss (not read back).
        """
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
        if probe and predict is not None:
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
        """Host data on the network's device in its parameters' dtype (uint8 images stay
        uint8 for xpconv's models, which scale them per batch); else as given.
        """
        dev = self._device()
        if is_array(x) and not is_host_numpy(x):
            return x
        x = to_numpy(x)
        if dev is None:
            return x
        if x.dtype == numpy.uint8 and callable(getattr(self.network, "_input", None)):
            return dev.asarray(x)   # 8-bit images stay 8-bit: the model scales each batch by 1/255
        dtype = dtype_name(next(iter(self.network.params.values())))
        if dev.library != "numpy" or x.dtype != numpy.dtype(dtype):     # a converted copy
            require(x.size * numpy.dtype(dtype).itemsize, who="Trainer", what=f"the data {x.shape} as {dtype}",
                    hint="8-bit images given as uint8 stay uint8 (scaled per batch)")
        return dev.asarray(x, dtype=dtype)

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
        if is_array(t) and not is_host_numpy(t):       # already on the device: as given
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
    if is_array(first) and not is_host_numpy(first):
        xp = array_namespace(first)
        with device_scope(first):
            values = to_numpy(xp.stack([xp.reshape(v, ()) for v in values]))
    return [float(v) for v in values]


def _progress(total: int, enabled: bool, initial: int = 0):
    """A tqdm bar, or a silent stand-in with the same methods (also when stderr is not a
    terminal, e.g. a log file, which would collect every redraw; notebooks keep their bar).
    """
    if enabled:
        from tqdm.auto import tqdm
        in_notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
        if in_notebook or sys.stderr.isatty():
            return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)

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


# ---------------------------------------------------------------------------- state helpers

def write_history(path: str | os.PathLike, history: list[dict]) -> None:
    """The per-epoch history as ``.csv`` (one row per epoch, empty cells for None) or
    ``.jsonl`` (one JSON object per line), by the suffix; written atomically.
    """
    import io
    import json

    from .serialization.atomic import atomic_write
    path = Path(path)
    text = io.StringIO()
    if path.suffix == ".jsonl":
        text.writelines(json.dumps(row) + "\n" for row in history)
    else:
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(HISTORY_COLUMNS)
        writer.writerows([["" if row.get(c) is None else row[c] for c in HISTORY_COLUMNS] for row in history])
    data = text.getvalue().encode()
    with atomic_write(path) as f:
        f.write(data)


def _digest(*arrays) -> str:
    """A short digest of the data (shapes, dtypes and bytes): a checkpoint of other data is refused."""
    h = hashlib.blake2b(digest_size=12)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        host = numpy.ascontiguousarray(to_numpy(a))
        h.update(f"{host.shape}{host.dtype}".encode())
        flat = host.reshape(-1).view(numpy.uint8)
        for i in range(0, flat.size, 64 << 20):   # no copy of the data: a memory map stays one
            h.update(memoryview(flat[i:i + (64 << 20)]))  # type: ignore[arg-type]  # arrays are buffers
    return h.hexdigest()


def _optimizer_state(optimizer) -> tuple[dict, dict]:
    state_dict = getattr(optimizer, "state_dict", None)
    if not callable(state_dict):
        raise TypeError(f"Trainer: checkpoints need an optimizer with state_dict()/load_state_dict() "
                        f"(xpconv's optimizers); got {type(optimizer).__name__}")
    return state_dict()


def _model_arrays(network) -> dict:
    """Host copies of the parameters and buffers (xpconv's models), or of ``params``."""
    state_arrays = getattr(network, "state_arrays", None)
    if callable(state_arrays):
        return state_arrays()
    return {k: to_numpy(v).copy() for k, v in network.params.items()}


def _restore_model(network, arrays: dict) -> None:
    load = getattr(network, "load_state_arrays", None)
    if callable(load):
        load(arrays, who="Trainer (resuming)")
        return
    for k, v in network.params.items():
        network.params[k] = from_host(arrays[k], v) if not is_host_numpy(v) else arrays[k].astype(v.dtype)


def _layers(network) -> dict:
    layers = getattr(network, "layers", None)
    return dict(layers) if isinstance(layers, dict) else {}


def _layer_rngs(network) -> dict:
    """Bit-generator states of the layers' host generators (Dropout), by layer name."""
    return {name: layer._rng.bit_generator.state for name, layer in _layers(network).items()
            if isinstance(getattr(layer, "_rng", None), numpy.random.Generator)}


def _restore_layer_rngs(network, states: dict) -> None:
    layers = _layers(network)
    for name, state in states.items():
        layers[name]._rng.bit_generator.state = state
