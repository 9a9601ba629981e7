"""Training: the loss goes down, on every backend; divergence stops with a clear error."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import xpconv
from xpconv.datasets import load_bundled_mnist


@pytest.fixture(scope="module")
def small_mnist():
    (x, t), (xv, tv) = load_bundled_mnist(flatten=False)
    return x[:600], t[:600], xv[:200], tv[:200]


def small_net(device="cpu"):
    return xpconv.SimpleConvNet(conv_param={"filter_num": 8, "filter_size": 5}, hidden_size=32, weight_init_std="he",
                                device=device, seed=0)


def test_training_reduces_the_loss_and_learns(small_mnist):
    x, t, xv, tv = small_mnist
    trainer = xpconv.Trainer(small_net(), x, t, xv, tv, epochs=3, mini_batch_size=50,
                             optimizer="Adam", optimizer_param={"lr": 0.002}, verbose=False, seed=0)
    trainer.train()
    losses = trainer.train_loss_list
    assert len(losses) == 3 * 12 and len(trainer.test_acc_list) == 3 == len(trainer.epoch_seconds)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert trainer.test_acc > 0.7                    # 10 classes: chance is 0.1


@pytest.mark.parametrize("spec", ["jax", "array_api_strict:device1", "torch"])
def test_training_runs_on_other_backends_like_on_numpy(spec, small_mnist):
    """Same seed, same data order: the same losses on every backend (jax arrays are immutable)."""
    from tests.helpers import assert_on, make_backend
    backend = make_backend(spec)
    x, t, xv, tv = (a[:200] for a in small_mnist)
    runs = {}
    for dev in ("cpu", backend):
        net = small_net(dev)
        trainer = xpconv.Trainer(net, x, t, xv, tv, epochs=1, mini_batch_size=50, optimizer="Momentum",
                                 verbose=False, seed=1)
        runs[str(dev)] = trainer.train().train_loss_list
    assert_on(backend, *net.params.values())
    np.testing.assert_allclose(runs[str(backend)], runs["cpu"], rtol=2e-3)
    assert runs["cpu"][-1] < runs["cpu"][0]


def test_every_optimizer_trains(small_mnist):
    x, t, xv, tv = (a[:200] for a in small_mnist)
    for name, lr in [("SGD", 0.1), ("Momentum", 0.05), ("Nesterov", 0.05), ("AdaGrad", 0.05),
                     ("RMSprop", 0.002), ("Adam", 0.002)]:
        trainer = xpconv.Trainer(small_net(), x, t, xv, tv, epochs=2, mini_batch_size=20, optimizer=name,
                                 optimizer_param={"lr": lr}, verbose=False, seed=0).train()
        assert np.mean(trainer.train_loss_list[-5:]) < np.mean(trainer.train_loss_list[:5]), name


@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")   # it diverges on purpose
def test_divergence_stops_with_a_clear_error(small_mnist):
    """At lr=1e30 the first SGD step overflows float32 weights, so the second loss is NaN or
    Inf for any seed (checked for seeds 0..29); the run is seeded all the same."""
    x, t, xv, tv = small_mnist
    trainer = xpconv.Trainer(small_net(), x, t, xv, tv, epochs=2, optimizer="SGD",
                             optimizer_param={"lr": 1e30}, verbose=False, seed=0)
    with pytest.raises(xpconv.TrainingDiverged, match=r"loss became (nan|inf) at step 2 .*learning rate"):
        trainer.train()
    assert len(trainer.train_loss_list) == 1


def test_bad_arguments(small_mnist):
    x, t, xv, tv = small_mnist
    with pytest.raises(ValueError, match="same length"):
        xpconv.Trainer(small_net(), x, t[:-1], xv, tv)
    with pytest.raises(ValueError, match="epochs >= 1"):
        xpconv.Trainer(small_net(), x, t, xv, tv, epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        xpconv.Trainer(small_net(), x, t, xv, tv, optimizer="Adamax")


# ----------------------------------------------------------------------------- divergence, always caught

def test_divergence_on_the_last_step_is_caught_before_evaluation(small_mnist):
    """One step at lr=1e38: its own loss is finite (computed before the update), but the update
    leaves a network whose output is NaN. That was returned as trained, with an accuracy."""
    x, t, xv, tv = (a[:100] for a in small_mnist)
    trainer = xpconv.Trainer(small_net(), x, t, xv, tv, epochs=1, mini_batch_size=100, optimizer="SGD",
                             optimizer_param={"lr": 1e38}, verbose=False, seed=0)
    with np.errstate(all="ignore"), pytest.raises(
            xpconv.TrainingDiverged, match=r"output became NaN or infinite after step 1, the last of epoch 1"
                                           r".*learning rate \(now 1e\+38\)"):
        trainer.train()
    assert trainer.train_loss_list and np.isfinite(trainer.train_loss_list).all()
    assert trainer.train_acc_list == [] and trainer.test_acc is None      # nothing evaluated


def test_cli_train_never_saves_a_diverged_model(small_mnist, tmp_path):
    from xpconv import cli
    x, t = small_mnist[0][:60], small_mnist[1][:60]
    data, out = tmp_path / "data.npz", tmp_path / "params.npz"
    np.savez(data, x=x, t=t)
    with np.errstate(all="ignore"), contextlib.suppress(xpconv.TrainingDiverged, SystemExit):
        cli.main(["train", "--data", str(data), "--epochs", "1", "--batch-size", "100", "--device", "cpu",
                  "--optimizer", "SGD", "--lr", "1e38", "--quiet", "--save", str(out)])
    assert not out.exists()


def test_losses_read_back_in_groups_are_the_same_losses(small_mnist):
    """Losses stay on the device and are read back every check_every steps: every step's loss
    is in train_loss_list all the same, and the run is the same for any check_every."""
    x, t, xv, tv = (a[:200] for a in small_mnist)
    runs = [xpconv.Trainer(small_net(), x, t, xv, tv, epochs=2, mini_batch_size=30, optimizer="Adam",
                           optimizer_param={"lr": 0.002}, verbose=False, seed=4, check_every=k).train()
            for k in (1, 3, 50)]
    assert len(runs[0].train_loss_list) == 2 * 7
    for run in runs[1:]:
        assert run.train_loss_list == runs[0].train_loss_list
        assert run.test_acc_list == runs[0].test_acc_list and run.test_acc == runs[0].test_acc
    with pytest.raises(ValueError, match="check_every >= 1"):
        xpconv.Trainer(small_net(), x, t, xv, tv, check_every=0)


# ----------------------------------------------------------------------------- labels, checked once

def test_labels_follow_one_rule_and_are_checked_when_the_trainer_is_made(small_mnist):
    x, t, xv, tv = (a[:100] for a in small_mnist)
    bad = tv.copy()
    bad[7] = 10                                          # 10 classes: 0..9
    with pytest.raises(ValueError, match=r"Trainer: expected class labels t_test in 0\.\.9 \(K=10 classes\); "
                                         r"got values in 0\.\.10"):
        xpconv.Trainer(small_net(), x, t, xv, bad, verbose=False, seed=0)    # gave test_acc=0.0
    with pytest.raises(TypeError, match=r"Trainer: expected integer class labels t_train"):
        xpconv.Trainer(small_net(), x, t.astype(np.float32), xv, tv, verbose=False, seed=0)
    with pytest.raises(ValueError, match=r"Trainer: expected t_train as .*one-hot targets of shape "
                                         r"\(N, K\) = \(100, 10\); got \(100, 3\)"):
        xpconv.Trainer(small_net(), x, np.eye(3)[t % 3], xv, tv, verbose=False, seed=0)
    runs = [xpconv.Trainer(small_net(), x, labels, xv, tv_labels, epochs=1, mini_batch_size=25,
                           verbose=False, seed=0).train()
            for labels, tv_labels in [(t, tv), (t.reshape(-1, 1), tv.reshape(-1, 1)), (np.eye(10)[t], tv)]]
    for run in runs[1:]:
        np.testing.assert_allclose(run.train_loss_list, runs[0].train_loss_list, rtol=1e-6)
        assert run.test_acc == runs[0].test_acc


def test_data_already_on_the_device_is_used_where_it_is(small_mnist):
    """Device arrays (no len() in the Array API) stay on the device; their labels are checked
    once, here, by one read-back, and (N, 1) columns work there too."""
    from tests.helpers import assert_on, make_backend
    dev = make_backend("array_api_strict:device1")
    x, t, xv, tv = (a[:60] for a in small_mnist)
    on = [dev.asarray(x, "float32"), dev.asarray(t.reshape(-1, 1)), dev.asarray(xv, "float32"), dev.asarray(tv)]
    trainer = xpconv.Trainer(small_net(dev), *on, epochs=1, mini_batch_size=20, verbose=False, seed=0)
    assert_on(dev, trainer.x_train, trainer.t_train)
    assert tuple(trainer.t_train.shape) == (60,)
    host = xpconv.Trainer(small_net(dev), x, t, xv, tv, epochs=1, mini_batch_size=20, verbose=False, seed=0)
    np.testing.assert_allclose(trainer.train().train_loss_list, host.train().train_loss_list, rtol=1e-6)
    bad = dev.asarray(np.where(np.arange(60) == 5, -1, tv))
    with pytest.raises(ValueError, match=r"Trainer: expected class labels t_test in 0\.\.9"):
        xpconv.Trainer(small_net(dev), on[0], on[1], on[2], bad, verbose=False, seed=0)


def test_single_class_training_data_warns(small_mnist):
    x, _t, xv, tv = (a[:50] for a in small_mnist)
    with pytest.warns(UserWarning, match=r"Trainer: every training label is class 3"):
        xpconv.Trainer(small_net(), x, np.full(50, 3), xv, tv, verbose=False, seed=0)


# ----------------------------------------------------------------------------- any network with the book's interface

class BookTwoLayerNet:
    """The book's ch05 ``TwoLayerNet`` interface in plain NumPy: ``params``, ``predict``,
    ``loss``, ``accuracy``, ``gradient``; no ``device`` and nothing from xpconv."""

    def __init__(self, input_size, hidden_size, output_size, seed):
        rng = np.random.default_rng(seed)
        self.params = {"W1": 0.5 * rng.standard_normal((input_size, hidden_size)), "b1": np.zeros(hidden_size),
                       "W2": 0.5 * rng.standard_normal((hidden_size, output_size)), "b2": np.zeros(output_size)}
        self.seen = set()              # types of the batches it was given

    def predict(self, x):
        self.seen.add(type(x))
        h = np.maximum(x @ self.params["W1"] + self.params["b1"], 0)
        return h @ self.params["W2"] + self.params["b2"]

    def _softmax_and_onehot(self, x, t):
        y = self.predict(x)
        y = np.exp(y - y.max(axis=1, keepdims=True))
        return y / y.sum(axis=1, keepdims=True), np.eye(y.shape[1])[t]

    def loss(self, x, t):
        y, onehot = self._softmax_and_onehot(x, t)
        return -np.sum(onehot * np.log(y + 1e-7)) / x.shape[0]

    def accuracy(self, x, t):
        y = np.argmax(self.predict(x), axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def gradient(self, x, t):
        p = self.params
        a1 = x @ p["W1"] + p["b1"]
        h = np.maximum(a1, 0)
        y, onehot = self._softmax_and_onehot(x, t)
        dy = (y - onehot) / x.shape[0]
        dh = (dy @ p["W2"].T) * (a1 > 0)
        return {"W1": x.T @ dh, "b1": dh.sum(axis=0), "W2": h.T @ dy, "b2": dy.sum(axis=0)}


def test_trainer_trains_a_plain_numpy_network_with_the_books_interface():
    """The Trainer called the private ``_input`` of xpconv's models; now it uses only the book's
    interface and leaves host data alone for a network without a ``device``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 2))
    t = (x[:, 0] * x[:, 1] > 0).astype(np.int64)                       # XOR-like: needs the hidden layer
    net = BookTwoLayerNet(2, 16, 2, seed=0)
    trainer = xpconv.Trainer(net, x[:200], t[:200], x[200:], t[200:], epochs=30, mini_batch_size=20,
                             optimizer="adam", optimizer_param={"lr": 0.02}, verbose=False, seed=0).train()
    assert net.seen == {np.ndarray}
    assert len(trainer.train_loss_list) == 30 * 10
    assert np.mean(trainer.train_loss_list[-10:]) < 0.5 * np.mean(trainer.train_loss_list[:10])
    assert trainer.test_acc > 0.85 and trainer.test_acc == trainer.test_acc_list[-1]


# ----------------------------------------------------------------------------- no waiting for the device

def affine_net(device):
    rng = np.random.default_rng(0)
    dev = xpconv.device(device)
    return xpconv.Sequential([
        ("Affine1", xpconv.Affine(dev.asarray(0.5 * rng.standard_normal((8, 16)), "float32"), dev.zeros(16))),
        ("Relu1", xpconv.Relu()),
        ("Affine2", xpconv.Affine(dev.asarray(0.5 * rng.standard_normal((16, 4)), "float32"), dev.zeros(4)))])


def test_a_training_step_never_waits_for_the_device(monkeypatch):
    """On torch (the GPU proxy), counting blocking device-to-host syncs: none in a step's
    gradient and update (the loss's label check read a bool back every step), and inside
    train() only one read-back per check_every steps, one at each epoch's end, one per
    accuracy and one for the validation loss (was 2 per step: the label check and float(loss)). The permutation of each
    epoch is uploaded once."""
    pytest.importorskip("torch", reason="torch not installed: the sync counter needs it")
    import xpconv.trainer
    from tests.torch_counter import count
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    t = np.argmax(x[:, :4], axis=1)
    net = affine_net("torch")
    xd, td = net.device.asarray(x[:10]), net.device.asarray(t[:10])
    net.gradient(xd, td)
    with count() as step:
        xpconv.SGD(lr=0.1).update(net.params, net.gradient(xd, td))
    assert step.syncs == 0, step.ops

    uploads = []
    real_from_host = xpconv.trainer.from_host
    monkeypatch.setattr(xpconv.trainer, "from_host", lambda a, like: uploads.append(a) or real_from_host(a, like))
    epochs, steps, k = 2, 40, 10
    trainer = xpconv.Trainer(net, x, t, x[:100], t[:100], epochs=epochs, mini_batch_size=10, optimizer="SGD",
                             optimizer_param={"lr": 0.1}, verbose=False, seed=0, check_every=k)
    with count() as run:
        trainer.train()
    assert run.syncs <= epochs * (steps // k + 1 + 3) + 1, run.ops
    assert len(uploads) == epochs
    assert len(trainer.train_loss_list) == epochs * steps and np.isfinite(trainer.train_loss_list).all()
    assert trainer.train_loss_list[-1] < trainer.train_loss_list[0]


def test_verbose_training_into_a_log_file_has_epoch_lines_but_no_bar_redraws(small_mnist, capsys):
    """stderr is not a terminal under pytest (as in `xpconv train > log 2>&1`): no tqdm redraws
    pile up there, and the per-epoch lines still reach stdout."""
    x, t, xv, tv = (a[:100] for a in small_mnist)
    xpconv.Trainer(small_net(), x, t, xv, tv, epochs=2, mini_batch_size=20, verbose=True, seed=0).train()
    out, err = capsys.readouterr()
    assert "epoch   1/2" in out and "epoch   2/2" in out and "Final Test Accuracy" in out
    assert "step/s" not in err and "\r" not in err, err[:200]


@pytest.mark.parametrize("spec", ["cpu", "torch", "jax"])
def test_uint8_images_train_as_their_scaled_floats_bit_for_bit(spec, tmp_path):
    """8-bit images stay uint8 (a memory map here) and are scaled per batch: the same bits
    as training on the loaders' float32 x / 255 (JAX: to float32 rounding)."""
    from tests.helpers import make_backend
    dev = make_backend(spec)
    (x8, t), (xv8, tv) = load_bundled_mnist(normalize=False, flatten=False)
    x8, t, xv8, tv = x8[:300], t[:300], xv8[:100], tv[:100]
    np.save(tmp_path / "x.npy", x8)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    runs = {}
    for name, (x, xv) in {"uint8": (mapped, xv8), "float": (x8.astype(np.float32) / np.float32(255),
                                                             xv8.astype(np.float32) / np.float32(255))}.items():
        net = small_net(dev)
        trainer = xpconv.Trainer(net, x, t, xv, tv, epochs=2, mini_batch_size=64, optimizer="Adam",
                                 optimizer_param={"lr": 0.002}, verbose=False, seed=3).train()
        runs[name] = (trainer.train_loss_list, trainer.history[-1]["train_acc"], trainer.test_acc,
                      {k: xpconv.to_numpy(v) for k, v in net.params.items()})
    if spec == "jax":   # XLA turns x / 255 into x * (1/255): equal to float32 rounding, not in every bit
        np.testing.assert_allclose(runs["uint8"][0], runs["float"][0], rtol=1e-5)
        for k, v in runs["float"][3].items():
            np.testing.assert_allclose(runs["uint8"][3][k], v, rtol=1e-4, atol=1e-6)
        return
    assert runs["uint8"][0] == runs["float"][0] and runs["uint8"][1:3] == runs["float"][1:3]
    for k, v in runs["float"][3].items():
        np.testing.assert_array_equal(runs["uint8"][3][k], v)
