"""Networks: the book's SimpleConvNet API, gradients, devices, persistence."""
from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest

import xpconv
from tests.helpers import assert_on, make_backend

TINY = dict(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
            hidden_size=5, output_size=3, weight_init_std=0.3)


def tiny_data(rng, n=4, shape=(1, 8, 8), classes=3):
    return rng.standard_normal((n, *shape)), rng.integers(0, classes, n)


def directional_check(net, x, t, rng, eps=1e-5):
    """Backprop's gradient against a central difference along a random direction.

    L(p + eps v) - L(p - eps v) / (2 eps) must equal sum_k <grad_k, v_k>.
    """
    grads = net.gradient(x, t)
    params = {k: net.params[k] for k in net.params}
    dirs = {k: rng.standard_normal(tuple(p.shape)) for k, p in params.items()}
    dev = net.device

    def loss_at(sign):
        for k, p in params.items():
            net.params[k] = p + sign * eps * dev.asarray(dirs[k], dtype="float64")
        value = float(xpconv.to_numpy(net.loss(x, t)))
        for k, p in params.items():
            net.params[k] = p
        return value

    numeric = (loss_at(+1) - loss_at(-1)) / (2 * eps)
    analytic = sum(float(np.sum(xpconv.to_numpy(grads[k]) * dirs[k])) for k in params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- SimpleConvNet

def test_simple_convnet_has_the_books_interface():
    net = xpconv.SimpleConvNet(seed=0)
    assert list(net.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert set(net.layers) == {"Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"}
    assert isinstance(net.last_layer, xpconv.SoftmaxWithLoss)
    assert net.params["W1"].shape == (30, 1, 5, 5) and net.params["W2"].shape == (30 * 12 * 12, 100)
    assert net.params["W1"].dtype == np.float32
    assert net.params["W1"] is net.layers["Conv1"].W          # one array, two names


@pytest.mark.parametrize("spec", ["numpy", "torch", "array_api_strict:device1", "jax"])
def test_simple_convnet_gradient_matches_numerical_gradient(spec, rng):
    backend = make_backend(spec)
    net = xpconv.SimpleConvNet(**TINY, device=backend, dtype="float64", seed=1)
    x, t = tiny_data(rng)
    analytic = net.gradient(x, t)
    numeric = net.numerical_gradient(x, t, eps=1e-5)
    assert_on(backend, *analytic.values())
    for k in net.params:
        np.testing.assert_allclose(xpconv.to_numpy(analytic[k]), xpconv.to_numpy(numeric[k]),
                                   rtol=1e-5, atol=1e-8, err_msg=k)


def test_simple_convnet_pooling_first_equals_the_books_order(rng):
    """Max pooling commutes with ReLU: the book's order gives the same loss and gradients."""
    net = xpconv.SimpleConvNet(**TINY, dtype="float64", seed=5)
    book = xpconv.Sequential([(k, net.layers[k]) for k in
                              ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]])
    x, t = tiny_data(rng, n=6)
    x[0, 0, :4, :4] = -1.0                                    # windows whose max is <= 0
    ours, theirs = net.gradient(x, t), book.gradient(x, t)
    assert float(net.loss(x, t)) == float(book.loss(x, t))
    names = {"W1": "Conv1.W", "b1": "Conv1.b", "W2": "Affine1.W", "b2": "Affine1.b", "W3": "Affine2.W",
             "b3": "Affine2.b"}
    for k, v in names.items():
        np.testing.assert_array_equal(ours[k], theirs[v], err_msg=k)


@pytest.mark.parametrize("filter_size, pad, stride", [(4, 0, 1), (5, 2, 1), (3, 0, 2), (6, 1, 3)])
def test_simple_convnet_sizes_for_any_filter(filter_size, pad, stride, rng):
    """The book's float division crashes for filter_size=4; every size must work."""
    net = xpconv.SimpleConvNet(conv_param={"filter_num": 4, "filter_size": filter_size, "pad": pad,
                                           "stride": stride}, hidden_size=8, seed=0)
    oh = (28 + 2 * pad - filter_size) // stride + 1
    assert net.params["W2"].shape == (4 * (oh // 2) ** 2, 8)
    x = rng.random((3, 1, 28, 28)).astype(np.float32)
    assert net.predict(x).shape == (3, 10)
    assert set(net.gradient(x, np.array([1, 2, 3]))) == set(net.params)


def test_accuracy_counts_the_last_partial_batch(rng):
    net = xpconv.SimpleConvNet(**TINY, seed=3)
    x, _ = tiny_data(rng, n=7)
    predicted = np.argmax(xpconv.to_numpy(net.predict(x)), axis=1)
    t = predicted.copy()
    t[-1] = (t[-1] + 1) % 3                                # only the last sample is wrong
    assert net.accuracy(x, t, batch_size=3) == pytest.approx(6 / 7)
    one_hot = np.eye(3)[t]
    assert net.accuracy(x, one_hot, batch_size=5) == pytest.approx(6 / 7)


def wrong_first_three(net, x):
    """Labels on which ``net`` is right for all but the first three of ``x``'s samples."""
    t = np.argmax(xpconv.to_numpy(net.predict(x)), axis=1)
    t[:3] = (t[:3] + 1) % 3
    return t


def test_accuracy_labels_follow_one_rule(rng):
    """(N, 1) columns are labels (they were read as one-hot: 2/7 instead of 4/7); lists are
    host data like predict's; labels that fit no form are errors, never a wrong number."""
    net = xpconv.SimpleConvNet(**TINY, seed=3)
    x, _ = tiny_data(rng, n=7)
    t = wrong_first_three(net, x)
    assert net.accuracy(x, t) == pytest.approx(4 / 7)
    assert net.accuracy(x, t.reshape(7, 1), batch_size=2) == pytest.approx(4 / 7)
    assert net.accuracy(x.tolist(), t.tolist()) == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match=r"SimpleConvNet.accuracy: expected t as integer class labels "
                                         r"of shape \(N,\) or \(N, 1\) with N=7.*got \(1,\)"):
        net.accuracy(x, t[:1])                                # one label does not broadcast
    with pytest.raises(ValueError, match=r"expected class labels t in 0\.\.2 \(K=3 classes\); got values in "
                                         r"-1\.\.3"):
        net.accuracy(x, np.concatenate([[3, -1], t[2:]]))
    with pytest.raises(TypeError, match=r"SimpleConvNet.accuracy: expected integer class labels t.*float64"):
        net.accuracy(x, t.astype(np.float64))
    with pytest.raises(ValueError, match=r"targets of shape \(N, K\) = \(7, 3\); got \(7, 4\)"):
        net.accuracy(x, np.eye(4)[t])
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match=rf"accuracy: expected batch_size to be an int >= 1; got {bad}"):
            net.accuracy(x, t, batch_size=bad)


@pytest.mark.parametrize("spec", ["torch", "array_api_strict:device1", "jax"])
def test_accuracy_device_labels_out_of_range_are_an_error(spec, rng):
    """Labels already on the device are range checked there, in the one read-back."""
    backend = make_backend(spec)
    net = xpconv.SimpleConvNet(**TINY, device=backend, seed=3)
    x, _ = tiny_data(rng, n=7)
    t = wrong_first_three(net, x)
    assert net.accuracy(backend.asarray(x, "float32"), backend.asarray(t)) == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match=r"expected class labels t in 0\.\.2 \(K=3 classes\); 2 of 7 "
                                         r"labels are outside"):
        net.accuracy(x, backend.asarray(np.array([0, 1, 2, 9, -1, 0, 1])), batch_size=3)


def test_accuracy_reads_back_once():
    """Correct predictions are counted on the device and read back once per call (was once
    per batch), with device labels too."""
    pytest.importorskip("torch", reason="torch not installed: the sync counter needs it")
    from tests.torch_counter import count
    net = xpconv.Sequential([("Affine", xpconv.Affine(*(xpconv.device("torch").asarray(a, "float32") for a in
                                                          (np.eye(4), np.zeros(4)))))])
    x = np.random.default_rng(0).standard_normal((25, 4))
    t = np.argmax(x, axis=1)
    for labels in (t, net.device.asarray(t)):
        with count() as c:
            assert net.accuracy(x, labels, batch_size=10) == 1.0
        assert c.syncs == 1, c.ops


def test_same_seed_same_network_on_every_backend(backend, rng):
    x, _ = tiny_data(rng, n=5)
    ref = xpconv.to_numpy(xpconv.SimpleConvNet(**TINY, seed=7).predict(x))
    net = xpconv.SimpleConvNet(**TINY, device=backend, seed=7)
    y = net.predict(x)
    assert_on(backend, y)
    np.testing.assert_allclose(xpconv.to_numpy(y), ref, rtol=1e-4, atol=1e-5)
    other = xpconv.to_numpy(xpconv.SimpleConvNet(**TINY, seed=8).predict(x))
    assert not np.allclose(other, ref)


def test_inputs_from_another_device_are_refused(rng):
    dev1 = make_backend("array_api_strict:device1")
    cpu = make_backend("array_api_strict")
    net = xpconv.SimpleConvNet(**TINY, device=dev1, seed=0)
    x, _t = tiny_data(rng)
    with pytest.raises(ValueError, match="SimpleConvNet: x .* on .*device1"):
        net.predict(cpu.asarray(x, dtype="float32"))
    assert_on(dev1, net.predict(dev1.asarray(x, dtype="float32")))   # on its device: fine
    assert_on(dev1, net.predict(x))                                   # host data: moved


def test_to_moves_every_parameter(rng):
    x, _ = tiny_data(rng)
    net = xpconv.SimpleConvNet(**TINY, seed=2)
    ref = xpconv.to_numpy(net.predict(x))
    target = make_backend("array_api_strict:device1")
    assert net.to(target) is net and net.device == target
    assert_on(target, *net.params.values())
    np.testing.assert_allclose(xpconv.to_numpy(net.predict(x)), ref, rtol=1e-6)


def test_params_mapping_checks_shapes():
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    with pytest.raises(ValueError, match=r"params\['W3'\]: expected a float32 numpy array of "
                                         r"shape \(5, 3\) on cpu; got .* shape \(3, 5\)"):
        net.params["W3"] = np.zeros((3, 5), np.float32)
    with pytest.raises(KeyError, match="no parameter 'W9'"):
        net.params["W9"]


# ----------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("src, dst", [("torch", "numpy"), ("numpy", "array_api_strict:device1"),
                                      ("jax", "torch")])
def test_save_on_one_backend_load_on_another(src, dst, tmp_path, rng):
    a, b = make_backend(src), make_backend(dst)
    x, _ = tiny_data(rng)
    saved = xpconv.SimpleConvNet(**TINY, device=a, seed=4)
    path = tmp_path / "params.npz"
    saved.save_params(path)
    loaded = xpconv.SimpleConvNet(**TINY, device=b, seed=5).load_params(path)
    assert_on(b, *loaded.params.values())
    np.testing.assert_allclose(xpconv.to_numpy(loaded.predict(x)), xpconv.to_numpy(saved.predict(x)),
                               rtol=1e-5, atol=1e-6)


def test_load_refuses_another_architecture(tmp_path):
    path = tmp_path / "p.npz"
    xpconv.SimpleConvNet(**TINY, seed=0).save_params(path)
    other = xpconv.SimpleConvNet(**{**TINY, "hidden_size": 6}, seed=0)
    with pytest.raises(ValueError, match="SimpleConvNet.load_params.*W2"):
        other.load_params(path)


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("name", ["params.pkl", "params.npz"])
def test_planted_pickle_is_refused_and_never_run(name, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"W1": _Planted(marker)}))
    net = xpconv.SimpleConvNet(seed=0)
    with pytest.raises(ValueError, match="pickle"):
        net.load_params(path)
    assert not marker.exists()


def test_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "p.npz"
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    net.save_params(path)
    before = path.read_bytes()
    net.params["b3"] = net.params["b3"] + 1

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(OSError, match="disk full"):
        net.save_params(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


# ----------------------------------------------------------------------------- other models

def test_deep_convnet_matches_the_book_and_backpropagates(rng):
    net = xpconv.DeepConvNet(seed=0)
    assert [net.params[f"W{i}"].shape[0] for i in range(1, 7)] == [16, 16, 32, 32, 64, 64]
    assert net.params["W7"].shape == (64 * 4 * 4, 50) and net.params["W8"].shape == (50, 10)
    x = rng.random((2, 1, 28, 28))
    assert net.predict(x).shape == (2, 10)
    small = xpconv.DeepConvNet(input_dim=(1, 12, 12), hidden_size=6, dropout_ratio=0.0,
                               dtype="float64", seed=1)
    directional_check(small, rng.standard_normal((2, 1, 12, 12)), np.array([3, 7]), rng)


@pytest.mark.parametrize("activation, pool", [("relu", "max"), ("sigmoid", "avg")])
def test_lenet_backpropagates(activation, pool, rng):
    net = xpconv.LeNet(activation=activation, pool=pool, dtype="float64", seed=0)
    assert net.predict(rng.random((2, 1, 28, 28))).shape == (2, 10)
    directional_check(net, rng.standard_normal((2, 1, 28, 28)), np.array([0, 9]), rng)


def test_sequential_composes_layers_with_batchnorm(tmp_path, rng):
    dev = xpconv.device("cpu")
    W = lambda *s: dev.asarray(rng.standard_normal(s) * 0.3, dtype="float64")
    net = xpconv.Sequential([
        ("conv", xpconv.Convolution(W(4, 1, 3, 3), W(4), pad="same")),
        ("bn", xpconv.BatchNormalization(dev.asarray(np.ones(4)), dev.asarray(np.zeros(4)))),
        ("relu", xpconv.Relu()),
        ("pool", xpconv.Pooling(2, 2, mode="avg")),
        ("flat", xpconv.Flatten()),
        ("fc", xpconv.Affine(W(4 * 3 * 3, 3), W(3))),
    ])
    assert set(net.params) == {"conv.W", "conv.b", "bn.gamma", "bn.beta", "fc.W", "fc.b"}
    x, t = rng.standard_normal((5, 1, 6, 6)), rng.integers(0, 3, 5)
    directional_check(net, x, t, rng)
    net.gradient(x, t)                                          # updates running statistics
    path = tmp_path / "seq.npz"
    net.save_params(path)
    assert "bn.running_mean" in np.load(path)
    y = xpconv.to_numpy(net.predict(x))
    net.layers["bn"].running_mean = net.layers["bn"].running_mean * 0
    net.load_params(path)
    np.testing.assert_allclose(xpconv.to_numpy(net.predict(x)), y)
