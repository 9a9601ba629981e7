"""A network's gradient over a large batch in micro-batches (xpconv.network.microbatch).

On host NumPy, ``Sequential.gradient`` splits a batch of more than MICRO_BATCH samples
into equal parts, runs each on replicas of the layers and adds the parts' gradients.
Checked here: the parts, agreement with the one-pass gradient (float64, tight), the
layers' gradients and loss afterwards, weights rebound between calls, the networks that
keep one pass, and bad labels; and ``accuracy``'s batches predicted on the workers.
That the result does not depend on the thread count is
checked with the other ops in test_threads.py.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import xpconv
from xpconv.layers import Affine, BatchNormalization, Dropout, Relu
from xpconv.network import microbatch as _microbatch

SMALL = dict(input_dim=(1, 12, 12), conv_param={"filter_num": 6, "filter_size": 3, "pad": 1, "stride": 1},
             hidden_size=20, weight_init_std="he")


def _net(dtype="float64", seed=3, **kw):
    return xpconv.SimpleConvNet(**SMALL, seed=seed, dtype=dtype, **kw)


def _batch(n, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 12, 12)).astype(dtype), rng.integers(0, 10, n)


def _one_pass(net, x, t, monkeypatch):
    """``net.gradient(x, t)`` in one pass (copies) and its loss."""
    with monkeypatch.context() as m:
        m.setattr(_microbatch, "MICRO_BATCH", 10**9)
        grads = {k: v.copy() for k, v in net.gradient(x, t).items()}
        return grads, float(net.last_layer.loss)


def _assert_one_pass_gradient(got, net, x, t, monkeypatch):
    """``got`` is ``net``'s one-pass gradient on (x, t) up to float64 rounding."""
    ref, _ = _one_pass(net, x, t, monkeypatch)
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-11, atol=1e-14, err_msg=name)


class _CountParts:
    """Counts the micro-batched gradients and their parts."""

    def __init__(self, monkeypatch):
        self.calls, self.parts = 0, []
        real = _microbatch.parts

        def counting(n):
            self.calls += 1
            self.parts.append(real(n))
            return self.parts[-1]

        monkeypatch.setattr(_microbatch, "parts", counting)


@pytest.mark.parametrize("n, sizes", [(1, [1]), (64, [64]), (65, [33, 32]), (100, [50, 50]),
                                      (130, [44, 43, 43]), (256, [64] * 4), (257, [52, 52, 51, 51, 51])])
def test_parts_are_contiguous_and_at_most_micro_batch(n, sizes):
    parts = _microbatch.parts(n)
    assert [stop - start for start, stop in parts] == sizes
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


@pytest.mark.parametrize("n", [65, 130, 200])
def test_gradient_in_parts_equals_the_one_pass_gradient(n, monkeypatch):
    """float64: the parts' sum differs from one pass by rounding only."""
    x, t = _batch(n)
    net = _net()
    count = _CountParts(monkeypatch)
    got = {k: v.copy() for k, v in net.gradient(x, t).items()}
    loss = float(net.last_layer.loss)
    assert count.calls == 1 and len(count.parts[0]) == -(-n // _microbatch.MICRO_BATCH)
    _assert_one_pass_gradient(got, net, x, t, monkeypatch)
    assert loss == pytest.approx(_one_pass(net, x, t, monkeypatch)[1], rel=1e-12)


def test_float32_gradient_in_parts_matches_float64(monkeypatch):
    x, t = _batch(150, "float32")
    got = _net("float32").gradient(x, t)
    ref, _ = _one_pass(_net("float64"), x.astype("float64"), t, monkeypatch)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-4, atol=2e-6, err_msg=name)


def test_layers_get_the_summed_gradients_and_the_batch_loss():
    x, t = _batch(130)
    net = _net()
    grads = net.gradient(x, t)
    assert grads["W1"] is net.layers["Conv1"].dW and grads["b3"] is net.layers["Affine2"].db
    assert float(net.last_layer.loss) == pytest.approx(float(net.loss(x, t)), rel=1e-12)


def test_returned_gradients_are_not_changed_by_the_next_call():
    x, t = _batch(130)
    net = _net()
    first = net.gradient(x, t)
    kept = {k: v.copy() for k, v in first.items()}
    net.gradient(x[::-1].copy(), t[::-1].copy())
    for name in kept:
        np.testing.assert_array_equal(first[name], kept[name])


def test_rebound_weights_are_used_by_the_next_call(tmp_path, monkeypatch):
    """The replicas follow their layers: params[...] = ..., load_params, an optimizer step."""
    x, t = _batch(130)
    net, other = _net(seed=3), _net(seed=4)
    net.gradient(x, t)                                    # replicas built with seed 3's weights
    net.params["W1"] = other.params["W1"].copy()          # rebound
    other.save_params(tmp_path / "p.npz")
    net.load_params(tmp_path / "p.npz")                   # every array rebound
    got = {k: v.copy() for k, v in net.gradient(x, t).items()}
    _assert_one_pass_gradient(got, other, x, t, monkeypatch)
    xpconv.SGD(lr=0.1).update(net.params, got)            # in place
    xpconv.SGD(lr=0.1).update(other.params, got)
    got = net.gradient(x, t)
    _assert_one_pass_gradient(got, other, x, t, monkeypatch)


def test_a_changed_layer_setting_is_used_by_the_next_call(monkeypatch):
    x, t = _batch(130)
    net = _net()
    net.gradient(x, t)
    net.layers["Pool1"].mode = "avg"
    got = {k: v.copy() for k, v in net.gradient(x, t).items()}
    _assert_one_pass_gradient(got, net, x, t, monkeypatch)


def test_a_replaced_layer_is_used_by_the_next_call(monkeypatch):
    x, t = _batch(130)
    net = _net()
    net.gradient(x, t)
    net.layers["Relu1"] = xpconv.layers.Sigmoid()
    got = {k: v.copy() for k, v in net.gradient(x, t).items()}
    _assert_one_pass_gradient(got, net, x, t, monkeypatch)


@pytest.mark.parametrize("make", [
    lambda rng: [("A", Affine(rng.standard_normal((144, 10)), np.zeros(10))), ("D", Dropout(0.3, seed=1))],
    lambda rng: [("A", Affine(rng.standard_normal((144, 10)), np.zeros(10))),
                 ("BN", BatchNormalization(np.ones(10), np.zeros(10)))],
    lambda rng: [("A", Affine(rng.standard_normal((144, 10)), np.zeros(10))), ("R", type("MyRelu", (Relu,), {})())],
], ids=["dropout", "batchnorm", "unknown-layer"])
def test_networks_with_batch_wide_layers_keep_one_pass(make, monkeypatch):
    net = xpconv.Sequential(make(np.random.default_rng(0)))
    x, t = _batch(130)
    count = _CountParts(monkeypatch)
    net.gradient(x, t)
    assert count.calls == 0


def test_other_libraries_keep_one_pass(monkeypatch):
    torch = pytest.importorskip("torch")
    net = _net().to("torch")
    x, t = _batch(130)
    count = _CountParts(monkeypatch)
    net.gradient(torch.asarray(x), torch.asarray(t))
    assert count.calls == 0


def test_small_batches_keep_one_pass(monkeypatch):
    x, t = _batch(_microbatch.MICRO_BATCH)
    count = _CountParts(monkeypatch)
    _net().gradient(x, t)
    assert count.calls == 0


@pytest.mark.parametrize("bad, error, match", [
    (lambda t: t[:-1], ValueError, r"SimpleConvNet.gradient: expected t as integer class labels .* N=130"),
    (lambda t: np.concatenate([t, t]), ValueError, r"SimpleConvNet.gradient: .* N=130"),
    (lambda t: np.where(np.arange(t.size) == 100, 10, t), ValueError, r"expected class labels t in 0..9"),
    (lambda t: t.astype("float32"), TypeError, r"expected integer class labels"),
])
def test_bad_labels_are_refused_for_the_whole_batch(bad, error, match):
    x, t = _batch(130)
    with pytest.raises(error, match=match):
        _net().gradient(x, bad(t))


def test_one_array_under_two_names_is_summed_once(monkeypatch):
    """``param_names`` may name one array twice: its gradient is one array, added once per part."""
    rng = np.random.default_rng(0)
    net = xpconv.Sequential([("A", Affine(rng.standard_normal((144, 10)), np.zeros(10))), ("R", Relu())],
                            param_names={"W": ("A", "W"), "same W": ("A", "W"), "b": ("A", "b")})
    x, t = _batch(130)
    got = {k: v.copy() for k, v in net.gradient(x, t).items()}
    _assert_one_pass_gradient(got, net, x, t, monkeypatch)


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("threads", [1, 2, 3])
def test_accuracy_predicts_the_batches_on_the_workers_as_one_pass_would(threads, monkeypatch):
    x, t = _batch(250, "float32")
    net = _net("float32")
    old = xpconv.get_num_threads()
    try:
        xpconv.set_num_threads(threads)
        ran_on = set()
        real = _microbatch.threads.imap_chunks

        def spy(fn, chunks, n):
            return real(lambda a, b: ran_on.add(threading.current_thread()) or fn(a, b), chunks, n)

        monkeypatch.setattr(_microbatch.threads, "imap_chunks", spy)
        batches = [(0, 100), (100, 200), (200, 250)]
        got = list(_microbatch.predictions(net, x, batches))
        assert (threading.main_thread() in ran_on) == (threads == 1)
        assert net.layers["Conv1"].x is None          # the network's own layers were not used
        ref = [net.predict(x[a:b]) for a, b in batches]
        assert all(np.array_equal(g.view(np.uint8), r.view(np.uint8)) for g, r in zip(got, ref))
        correct = sum(int((np.argmax(r, axis=1) == t[a:b]).sum()) for r, (a, b) in zip(ref, batches))
        assert net.accuracy(x, t) == correct / 250
    finally:
        xpconv.set_num_threads(old)


def test_accuracy_refuses_bad_labels_with_batches_on_the_workers():
    x, t = _batch(250, "float32")
    with pytest.raises(ValueError, match=r"SimpleConvNet.accuracy: expected class labels t in 0..9"):
        _net("float32").accuracy(x, np.where(np.arange(250) == 240, 12, t))
