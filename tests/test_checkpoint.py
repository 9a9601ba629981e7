"""Durable training: checkpoints that resume bit for bit, refusals, the training record.

In-process tests stop a run with an exception from a callback (as a crash would) and
start a new Trainer on the same checkpoint folder; the parameters at the end must equal
an uninterrupted run's exactly (``np.array_equal``, not a tolerance).
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import xpconv
from tests.helpers import batch_norm_net
from xpconv import checkpoint as ckpt
from xpconv.datasets import load_bundled_mnist


@pytest.fixture(scope="module")
def data():
    (x, t), (xv, tv) = load_bundled_mnist(flatten=False)
    return x[:240, :, 8:20, 8:20].copy(), t[:240], xv[:60, :, 8:20, 8:20].copy(), tv[:60]


def simple(dtype, device="cpu"):
    return xpconv.SimpleConvNet(input_dim=(1, 12, 12), conv_param={"filter_num": 4, "filter_size": 3},
                                hidden_size=16, weight_init_std="he", dtype=dtype, seed=0, device=device)


def deep_with_dropout(dtype):
    return xpconv.DeepConvNet(input_dim=(1, 12, 12), conv_params=[
        {"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 1}] * 6, hidden_size=16,
        dropout_ratio=0.3, dtype=dtype, seed=0)


def with_batch_norm(dtype):
    return batch_norm_net(dtype)


MODELS = {"simple": simple, "deep-dropout": deep_with_dropout, "batchnorm": with_batch_norm}


class StopAt:
    """A callback that raises after ``step`` optimizer steps (a crash between two steps)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step):
        if step == self.step:
            raise RuntimeError("stopped by the test")


def run(model, data, folder=None, *, epochs=3, stop=None, optimizer="Adam", **kw):
    x, t, xv, tv = data
    trainer = xpconv.Trainer(model, x, t, xv, tv, epochs=epochs, mini_batch_size=25, optimizer=optimizer,
                             optimizer_param={"lr": 0.01}, verbose=False, seed=3, checkpoint=folder,
                             callbacks=[StopAt(stop)] if stop else [], **kw)
    trainer.train()
    return trainer


def params(net):
    return {k: xpconv.to_numpy(v) for k, v in net.state_arrays().items()}


@pytest.mark.parametrize("name,dtype,optimizer,every", [
    ("simple", "float32", "Adam", 4), ("simple", "float64", "Momentum", None),
    ("deep-dropout", "float32", "Adam", 3), ("batchnorm", "float64", "Adam", 5),
    ("batchnorm", "float32", "Momentum", 2)])
def test_resumed_run_is_the_uninterrupted_run_bit_for_bit(tmp_path, data, name, dtype, optimizer, every):
    whole = run(MODELS[name](dtype), data, optimizer=optimizer)
    # stops mid-epoch (10 steps per epoch), at an epoch end and mid-epoch again; each resume is
    # a new model and a new Trainer, as a new process would build them
    stops = [7, 20, 23]
    for stop in stops:
        with pytest.raises(RuntimeError, match="stopped by the test"):
            run(MODELS[name](dtype), data, tmp_path, stop=stop, optimizer=optimizer, checkpoint_every=every)
    resumed = run(MODELS[name](dtype), data, tmp_path, optimizer=optimizer, checkpoint_every=every)
    assert resumed.resumed_from is not None
    want, got = params(whole.network), params(resumed.network)
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert resumed.train_loss_list == whole.train_loss_list
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert resumed.test_acc == whole.test_acc


@pytest.mark.parametrize("spec", ["torch", "jax"])
def test_resume_is_bit_for_bit_on_other_deterministic_cpu_backends(tmp_path, data, spec):
    """torch's and JAX's CPU kernels are deterministic: a resumed run is the same there too."""
    from tests.helpers import make_backend
    backend = make_backend(spec)
    dtype = "float32"
    whole = run(simple(dtype, backend), data)
    with pytest.raises(RuntimeError):
        run(simple(dtype, backend), data, tmp_path, stop=13, checkpoint_every=4)
    resumed = run(simple(dtype, backend), data, tmp_path, checkpoint_every=4)
    for k, v in params(whole.network).items():
        np.testing.assert_array_equal(params(resumed.network)[k], v, err_msg=k)


def test_a_stop_without_checkpoint_every_resumes_from_the_last_epoch_end(tmp_path, data):
    whole = run(simple("float64"), data)
    with pytest.raises(RuntimeError):
        run(simple("float64"), data, tmp_path, stop=15)      # epoch 2, step 5: epoch 1's end is kept
    saved = ckpt.read(tmp_path / ckpt.LAST)
    assert (saved.state["epoch"], saved.state["step_in_epoch"]) == (2, 0)
    resumed = run(simple("float64"), data, tmp_path)
    for k, v in params(whole.network).items():
        np.testing.assert_array_equal(params(resumed.network)[k], v)


def test_a_checkpoint_of_another_run_is_refused_and_kept(tmp_path, data):
    run(simple("float32"), data, tmp_path, epochs=1)
    before = (tmp_path / ckpt.LAST).read_bytes()
    x, t, xv, tv = data
    other = xpconv.Trainer(simple("float32"), x, t, xv, tv, epochs=2, mini_batch_size=20, optimizer="Adam",
                           optimizer_param={"lr": 0.01}, verbose=False, seed=3, checkpoint=tmp_path)
    with pytest.raises(ValueError, match=r"another run \(batch_size: 25 in the checkpoint, 20 now\)"):
        other.train()
    with pytest.raises(ValueError, match=r"optimizer_settings"):
        xpconv.Trainer(simple("float32"), x, t, xv, tv, epochs=2, mini_batch_size=25, optimizer="Adam",
                       optimizer_param={"lr": 0.02}, verbose=False, seed=3, checkpoint=tmp_path).train()
    with pytest.raises(ValueError, match=r"data: "):
        xpconv.Trainer(simple("float32"), x[:200], t[:200], xv, tv, epochs=2, mini_batch_size=25,
                       optimizer="Adam", optimizer_param={"lr": 0.01}, verbose=False, seed=3,
                       checkpoint=tmp_path).train()
    with pytest.raises(ValueError, match=r"parameters: .*float64"):
        run(simple("float64"), data, tmp_path, epochs=2)
    assert (tmp_path / ckpt.LAST).read_bytes() == before


def test_restart_replaces_the_checkpoint(tmp_path, data):
    run(simple("float32"), data, tmp_path, epochs=1)
    trainer = run(simple("float32"), data, tmp_path, epochs=1, restart=True)
    assert trainer.resumed_from is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_checkpoint_is_a_clear_error_never_a_silent_restart(tmp_path, data, damage):
    run(simple("float32"), data, tmp_path, epochs=1)
    path = tmp_path / ckpt.LAST
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:len(raw) // 2], "garbage": b"\x00" * 100, "empty": b""}[damage])
    damaged = path.read_bytes()
    with pytest.raises(ValueError, match=r"cannot resume from .*last\.npz.*restart"):
        run(simple("float32"), data, tmp_path, epochs=2)
    assert path.read_bytes() == damaged


def test_history_records_the_mean_epoch_loss_and_validation(tmp_path, data):
    trainer = run(simple("float64"), data, tmp_path, epochs=2, log=tmp_path / "log.jsonl")
    assert [r["epoch"] for r in trainer.history] == [1, 2]
    steps = trainer.steps_per_epoch
    for i, record in enumerate(trainer.history):
        losses = trainer.train_loss_list[i * steps:(i + 1) * steps]
        sizes = [25] * (steps - 1) + [240 - 25 * (steps - 1)]                # the last batch is smaller
        assert record["train_loss"] == pytest.approx(np.average(losses, weights=sizes), rel=1e-12)
        assert record["train_loss"] != pytest.approx(losses[-1])              # not the last batch's
        assert record["val_acc"] == trainer.test_acc_list[i] and 0 <= record["val_acc"] <= 1
        assert record["val_loss"] > 0 and record["lr"] == 0.01 and record["samples_per_s"] > 0
    with open(tmp_path / ckpt.HISTORY) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_loss"]) for r in rows] == [r["train_loss"] for r in trainer.history]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["val_loss"] for line in lines] == [r["val_loss"] for r in trainer.history]


def test_a_trainer_without_a_test_set_has_no_validation_columns(data):
    x, t, _, _ = data
    trainer = xpconv.Trainer(simple("float32"), x, t, epochs=1, mini_batch_size=40, optimizer="Adam",
                             optimizer_param={"lr": 0.01}, verbose=False, seed=0).train()
    assert trainer.history[0]["val_acc"] is None and trainer.history[0]["val_loss"] is None
    assert trainer.test_acc is None and trainer.train_acc_list[0] > 0


def test_optimizer_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((8, 1, 12, 12)).astype("float32"), rng.integers(0, 10, 8)
    for name in ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"]:
        net, opt = simple("float32"), xpconv.get_optimizer(name, lr=0.01)
        for _ in range(2):
            opt.update(net.params, net.gradient(x, t))
        settings, arrays = opt.state_dict()
        twin = simple("float32").load_state_arrays({k: v.copy() for k, v in net.state_arrays().items()})
        twin_opt = xpconv.get_optimizer(name, lr=0.5)
        twin_opt.load_state_dict(json.loads(json.dumps(settings)), {k: v.copy() for k, v in arrays.items()})
        for _ in range(2):
            opt.update(net.params, net.gradient(x, t))
            twin_opt.update(twin.params, twin.gradient(x, t))
        for k in net.params:
            np.testing.assert_array_equal(xpconv.to_numpy(twin.params[k]), xpconv.to_numpy(net.params[k]),
                                          err_msg=f"{name} {k}")
    with pytest.raises(ValueError, match="unknown state array 'q/W1'"):
        xpconv.Adam().load_state_dict({}, {"q/W1": np.zeros(3)})


@pytest.mark.parametrize("schedule", ["step", "cosine", "plateau"])
def test_schedules_set_the_learning_rate_and_resume_bit_for_bit(tmp_path, data, schedule):
    from xpconv.schedules import Schedule
    def make():
        return Schedule(schedule, warmup=4, step_size=1, gamma=0.5, patience=1, reduce_by=0.5)
    whole = run(simple("float64"), data, lr_schedule=make())
    lrs = [r["lr"] for r in whole.history]
    if schedule == "step":
        assert lrs == [0.01, 0.005, 0.0025]
    elif schedule == "cosine":
        assert lrs[0] > lrs[1] > lrs[2] and lrs[-1] < 0.01 * 0.01     # the last step: near 0
    with pytest.raises(RuntimeError):
        run(simple("float64"), data, tmp_path, stop=13, checkpoint_every=3, lr_schedule=make())
    resumed = run(simple("float64"), data, tmp_path, checkpoint_every=3, lr_schedule=make())
    assert [r["lr"] for r in resumed.history] == lrs
    for k, v in params(whole.network).items():
        np.testing.assert_array_equal(params(resumed.network)[k], v, err_msg=k)


def test_warmup_ramps_the_first_steps():
    from xpconv.schedules import Schedule
    s = Schedule("constant", warmup=4)
    assert [s.factor(i, 1) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="expected kind in"):
        Schedule("linear")


class Worsen:
    """Makes the validation loss grow after every epoch (a large step out of the minimum)."""

    def on_epoch_end(self, trainer, record):
        for k in trainer.network.params:
            trainer.network.params[k] = trainer.network.params[k] * 1.5


def test_early_stop_restores_the_best_epoch_and_resumes(tmp_path, data):
    x, t, xv, tv = data

    def trainer(folder=None, epochs=8, callbacks=(Worsen(),), **kw):
        return xpconv.Trainer(simple("float64"), x, t, xv, tv, epochs=epochs, mini_batch_size=25,
                              optimizer="SGD", optimizer_param={"lr": 1e-9}, verbose=False, seed=0,
                              early_stop=2, callbacks=list(callbacks), checkpoint=folder, **kw)
    whole = trainer().train()
    assert whole.stopped_early and len(whole.history) == 3          # best at 1, then 2 worse epochs
    losses = [r["val_loss"] for r in whole.history]
    assert losses[0] < losses[1] < losses[2]
    first = trainer(epochs=1, callbacks=()).train()                  # epoch 1 alone, not worsened
    for k, v in params(first.network).items():
        np.testing.assert_array_equal(params(whole.network)[k], v)   # the best epoch's parameters
    with pytest.raises(RuntimeError):
        trainer(tmp_path, keep_best=True, callbacks=(Worsen(), StopAt(25))).train()      # in epoch 3
    resumed = trainer(tmp_path, keep_best=True).train()
    assert resumed.stopped_early and len(resumed.history) == 3
    for k, v in params(whole.network).items():
        np.testing.assert_array_equal(params(resumed.network)[k], v)
    assert xpconv.load_model(tmp_path / ckpt.BEST).predict(xv).shape == (60, 10)


def test_train_flags_for_schedules_best_model_and_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'xpconv[plot]')")
    from xpconv.cli import main
    folder = tmp_path / "ck"
    rc = main(["train", "--data", "mnist-bundled", "--limit", "200", "--epochs", "2", "--quiet",
               "--checkpoint", str(folder), "--keep-best", "--lr-schedule", "cosine", "--warmup", "3",
               "--early-stop", "3", "--plot", str(tmp_path / "c.png"), "--log", str(tmp_path / "h.csv")])
    assert rc == 0
    assert (tmp_path / "c.png").stat().st_size > 1000 and (folder / ckpt.BEST).exists()
    assert (tmp_path / "h.csv").read_text() == (folder / ckpt.HISTORY).read_text()
    assert main(["plot", str(folder / ckpt.HISTORY), "--out", str(tmp_path / "d.png")]) == 0
    assert main(["plot", str(tmp_path / "c.png")]) == 1
    assert main(["train", "--keep-best", "--epochs", "1"]) == 1
    assert "--keep-best writes DIR/best.npz" in capsys.readouterr().err
