"""Affine, Relu, Sigmoid, Flatten, Dropout, BatchNormalization, softmax and SoftmaxWithLoss
on every backend, against NumPy references, PyTorch (when installed) and float64
central differences."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from array_api_compat import array_namespace

import xpconv
from tests.helpers import assert_on, make_backend
from xpconv.gradcheck import assert_gradients_close, numerical_gradient
from xpconv.layers.basic import Affine, Dropout, Flatten, Relu, Sigmoid
from xpconv.layers.loss import SoftmaxWithLoss, cross_entropy_error, softmax
from xpconv.layers.normalization import BatchNormalization

to_np = xpconv.to_numpy
F64 = dict(rtol=1e-9, atol=1e-12)
F32 = dict(rtol=2e-5, atol=2e-6)


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch not installed: no PyTorch reference")


def tt(a, grad=False):
    """float64 torch tensor from a host array (the PyTorch reference runs on the CPU)."""
    torch = torch_or_skip()
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def numeric(backend, f, a):
    """float64 central differences of scalar function ``f`` (of a backend array) at host ``a``."""
    return to_np(numerical_gradient(f, backend.asarray(a, dtype="float64"), eps=1e-6))


def scalar_of(forward, dout):
    """x -> sum(forward(x) * dout): its gradient is what backward(dout) returns."""
    def f(x):
        out = forward(x)
        return array_namespace(out).sum(out * dout)
    return f


# =============================================================================== Affine

def affine_ref(x, W, b, dout):
    xf = x.reshape(x.shape[0], -1)
    return xf @ W + b, (dout @ W.T).reshape(x.shape), xf.T @ dout, dout.sum(axis=0)


@pytest.mark.parametrize("x_shape", [(4, 6), (2, 3, 2, 2)])
def test_affine_matches_reference(backend, rng, x_shape):
    D = int(np.prod(x_shape[1:]))
    x, W, b = rng.standard_normal(x_shape), rng.standard_normal((D, 5)), rng.standard_normal(5)
    dout = rng.standard_normal((x_shape[0], 5))
    layer = Affine(backend.asarray(W, "float64"), backend.asarray(b, "float64"))
    out = layer.forward(backend.asarray(x, "float64"))
    dx = layer.backward(backend.asarray(dout, "float64"))
    assert_on(backend, out, dx, layer.dW, layer.db)
    assert layer.original_x_shape == x_shape
    ref = affine_ref(x, W, b, dout)
    for got, want in zip((out, dx, layer.dW, layer.db), ref):
        assert tuple(got.shape) == want.shape
        np.testing.assert_allclose(to_np(got), want, **F64)


def test_affine_float32_and_gradcheck(backend, rng):
    x, W, b = rng.standard_normal((3, 2, 2)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    dout = rng.standard_normal((3, 3))
    layer = Affine(backend.asarray(W, "float32"), backend.asarray(b, "float32"))
    out = layer.forward(backend.asarray(x, "float32"))
    dx = layer.backward(backend.asarray(dout, "float32"))
    for a in (out, dx, layer.dW, layer.db):
        assert a.dtype == backend.dtype("float32")
    ref = affine_ref(x, W, b, dout)
    np.testing.assert_allclose(to_np(out), ref[0], **F32)
    np.testing.assert_allclose(to_np(dx), ref[1], **F32)

    # float64 analytic vs central differences, for x, W and b
    d = backend.asarray(dout, "float64")
    W64, b64 = backend.asarray(W, "float64"), backend.asarray(b, "float64")
    layer = Affine(W64, b64)
    layer.forward(backend.asarray(x, "float64"))
    analytic = {"x": layer.backward(d), "W": layer.dW, "b": layer.db}
    num = {
        "x": numeric(backend, scalar_of(lambda v: Affine(W64, b64).forward(v), d), x),
        "W": numeric(backend, scalar_of(
            lambda v: Affine(v, b64).forward(backend.asarray(x, "float64")), d), W),
        "b": numeric(backend, scalar_of(
            lambda v: Affine(W64, v).forward(backend.asarray(x, "float64")), d), b),
    }
    assert_gradients_close(analytic, num, rtol=1e-7)


def test_affine_vs_torch(rng):
    torch = torch_or_skip()
    x, W, b = rng.standard_normal((4, 2, 3)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    dout = rng.standard_normal((4, 5))
    xt, Wt, bt = tt(x, True), tt(W, True), tt(b, True)
    torch.nn.functional.linear(xt.reshape(4, -1), Wt.T, bt).backward(tt(dout))
    layer = Affine(W, b)
    out = layer.forward(x)
    dx = layer.backward(dout)
    want = torch.nn.functional.linear(tt(x).reshape(4, -1), tt(W).T, tt(b)).numpy()
    np.testing.assert_allclose(out, want, **F64)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **F64)
    np.testing.assert_allclose(layer.dW, Wt.grad.numpy(), **F64)
    np.testing.assert_allclose(layer.db, bt.grad.numpy(), **F64)


def test_affine_bad_inputs():
    W, b = np.ones((6, 2)), np.zeros(2)
    with pytest.raises(TypeError, match=r"Affine: expected W with a floating-point dtype"):
        Affine(np.ones((6, 2), dtype=np.int64), b)
    with pytest.raises(ValueError, match=r"Affine: expected W of shape \(D, M\)"):
        Affine(np.ones(6), b)
    with pytest.raises(ValueError, match=r"Affine: expected b of shape \(M,\) = \(2,\).*got \(3,\)"):
        Affine(W, np.zeros(3))
    with pytest.raises(TypeError, match=r"Affine: b has dtype float32 but W has float64"):
        Affine(W, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match=r"got None"):
        Affine(W, None)
    layer = Affine(W, b)
    with pytest.raises(TypeError, match=r"Affine.forward: expected x with a floating-point dtype"):
        layer.forward(np.ones((3, 6), dtype=np.int32))
    with pytest.raises(ValueError, match=r"D=6 features.*got \(3, 5\)"):
        layer.forward(np.ones((3, 5)))
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward(np.ones((3, 2)))
    layer.forward(np.ones((3, 2, 3)))
    with pytest.raises(ValueError, match=r"Affine.backward: expected dout of shape \(3, 2\)"):
        layer.backward(np.ones((3, 3)))


def test_affine_refuses_other_device():
    cpu, dev1 = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    with pytest.raises(ValueError, match=r"Affine: b is on device .*device1.*xpconv never transfers"):
        Affine(cpu.asarray(np.ones((2, 2))), dev1.asarray(np.zeros(2)))
    layer = Affine(cpu.asarray(np.ones((2, 2))), cpu.asarray(np.zeros(2)))
    with pytest.raises(ValueError, match=r"Affine.forward: x is on device"):
        layer.forward(dev1.asarray(np.ones((1, 2))))


# =============================================================================== Relu

def test_relu(backend, rng):
    x = rng.standard_normal((3, 4, 2))
    x[0, 0, 0] = 0.0
    dout = rng.standard_normal(x.shape)
    layer = Relu()
    out = layer.forward(backend.asarray(x, "float32"))
    dx = layer.backward(backend.asarray(dout, "float32"))
    assert_on(backend, out, dx)
    assert out.dtype == dx.dtype == backend.dtype("float32")
    np.testing.assert_allclose(to_np(out), np.maximum(x, 0).astype(np.float32))
    np.testing.assert_allclose(to_np(dx), np.where(x > 0, dout, 0).astype(np.float32))


def test_relu_nan_like_torch(backend):
    torch = torch_or_skip()
    x = np.array([np.nan, -1.0, 0.0, 2.0])
    layer = Relu()
    out = to_np(layer.forward(backend.asarray(x, "float64")))
    dx = to_np(layer.backward(backend.asarray(np.full(4, 3.0), "float64")))
    xt = tt(x, True)
    yt = torch.relu(xt)
    yt.backward(tt(np.full(4, 3.0)))
    np.testing.assert_array_equal(out, yt.detach().numpy())       # NaN stays NaN
    np.testing.assert_array_equal(dx, xt.grad.numpy())            # torch passes dout at NaN
    assert np.isnan(out[0]) and dx[0] == 3.0


def test_relu_bad_inputs():
    with pytest.raises(TypeError, match=r"Relu.forward: expected x with a floating-point dtype.*int64"):
        Relu().forward(np.arange(3))
    layer = Relu()
    with pytest.raises(RuntimeError, match="Relu.backward: call forward first"):
        layer.backward(np.ones(3))
    layer.forward(np.ones(3))
    with pytest.raises(ValueError, match=r"Relu.backward: expected dout of shape \(3,\)"):
        layer.backward(np.ones(4))


# =============================================================================== Sigmoid

def test_sigmoid(backend, rng):
    x = rng.standard_normal((4, 5)) * 3
    dout = rng.standard_normal(x.shape)
    layer = Sigmoid()
    out = layer.forward(backend.asarray(x, "float64"))
    dx = layer.backward(backend.asarray(dout, "float64"))
    assert_on(backend, out, dx)
    ref = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(to_np(out), ref, **F64)
    np.testing.assert_allclose(to_np(dx), dout * ref * (1 - ref), **F64)
    num = numeric(backend, scalar_of(Sigmoid().forward, backend.asarray(dout, "float64")), x)
    assert_gradients_close({"x": dx}, {"x": num}, rtol=1e-7)


def test_sigmoid_large_inputs_no_overflow(backend):
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4])
    layer = Sigmoid()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer.forward(backend.asarray(x, "float32"))
        dx = layer.backward(backend.asarray(np.ones_like(x), "float32"))
    assert out.dtype == backend.dtype("float32")
    o = to_np(out)
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(to_np(dx)))
    np.testing.assert_array_equal(o[[0, 1, 3, 5, 6]], [0.0, 0.0, 0.5, 1.0, 1.0])


def test_sigmoid_vs_torch(rng):
    torch = torch_or_skip()
    x, dout = rng.standard_normal(10) * 5, rng.standard_normal(10)
    xt = tt(x, True)
    torch.sigmoid(xt).backward(tt(dout))
    layer = Sigmoid()
    np.testing.assert_allclose(layer.forward(x), torch.sigmoid(tt(x)).numpy(), **F64)
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), **F64)


# =============================================================================== Flatten

def test_flatten(backend, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = Flatten()
    out = layer.forward(backend.asarray(x, "float32"))
    assert tuple(out.shape) == (2, 60)
    np.testing.assert_array_equal(to_np(out), x.reshape(2, -1).astype(np.float32))
    dx = layer.backward(backend.asarray(x.reshape(2, -1) * 2, "float32"))
    assert_on(backend, out, dx)
    assert dx.dtype == backend.dtype("float32")
    np.testing.assert_array_equal(to_np(dx), (x * 2).astype(np.float32))
    with pytest.raises(ValueError, match=r"Flatten.backward: expected dout of shape \(2, 60\)"):
        layer.backward(backend.asarray(np.ones((2, 59)), "float32"))


# =============================================================================== Dropout

def test_dropout_train_and_test(backend, rng):
    x, dout = rng.standard_normal((4, 50)), rng.standard_normal((4, 50))
    layer = Dropout(0.3, seed=7)
    out = layer.forward(backend.asarray(x, "float32"))
    dx = layer.backward(backend.asarray(dout, "float32"))
    assert_on(backend, out, dx, layer.mask)
    assert out.dtype == dx.dtype == backend.dtype("float32")
    mask = np.random.default_rng(7).random((4, 50)) > 0.3       # the documented host draw
    np.testing.assert_array_equal(to_np(layer.mask), mask)
    np.testing.assert_allclose(to_np(out), (x * mask).astype(np.float32), **F32)
    np.testing.assert_allclose(to_np(dx), (dout * mask).astype(np.float32), **F32)
    assert 0.5 < mask.mean() < 0.85
    # a second draw differs; same seed reproduces the sequence
    second = to_np(layer.forward(backend.asarray(x, "float32")))
    assert not np.array_equal(second, to_np(out))
    again = Dropout(0.3, seed=7)
    np.testing.assert_array_equal(to_np(again.forward(backend.asarray(x, "float32"))), to_np(out))
    # test time: the book's scaling by (1 - ratio), no randomness
    test_out = layer.forward(backend.asarray(x, "float32"), train_flg=False)
    assert test_out.dtype == backend.dtype("float32")
    np.testing.assert_allclose(to_np(test_out), x * 0.7, **F32)
    np.testing.assert_allclose(to_np(layer.backward(backend.asarray(dout, "float32"))),
                               dout * 0.7, **F32)


def test_dropout_bad_inputs():
    for ratio in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match=r"Dropout: expected dropout_ratio in \[0, 1\]"):
            Dropout(ratio)
    with pytest.raises(TypeError, match=r"Dropout.forward: expected x with a floating-point"):
        Dropout(seed=0).forward(np.ones(3, dtype=np.int8))
    layer = Dropout(seed=0)
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward(np.ones(3))
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"Dropout.backward: expected dout of shape \(2, 3\)"):
        layer.backward(np.ones((3, 2)))


# =============================================================================== BatchNormalization

def bn_ref(x, gamma, beta, dout, eps=1e-5):
    """Straightforward NumPy batch norm (training) with the book's step-by-step backward."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    m = x.size // x.shape[1]
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc ** 2).mean(axis=axes, keepdims=True)
    std = np.sqrt(var + eps)
    xn = xc / std
    out = gamma.reshape(shape) * xn + beta.reshape(shape)
    dbeta, dgamma = dout.sum(axis=axes), (xn * dout).sum(axis=axes)
    dxn = gamma.reshape(shape) * dout
    dxc = dxn / std
    dstd = -np.sum(dxn * xc / (std * std), axis=axes, keepdims=True)
    dvar = 0.5 * dstd / std
    dxc = dxc + (2.0 / m) * xc * dvar
    dmu = np.sum(dxc, axis=axes, keepdims=True)
    dx = dxc - dmu / m
    return out, dx, dgamma, dbeta, mu.reshape(-1), var.reshape(-1) * m / (m - 1)


@pytest.mark.parametrize("x_shape", [(6, 4), (3, 2, 3, 3)])
def test_batchnorm_matches_reference(backend, rng, x_shape):
    C = x_shape[1]
    x = rng.standard_normal(x_shape) * 2 + 1
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    dout = rng.standard_normal(x_shape)
    layer = BatchNormalization(backend.asarray(gamma, "float64"), backend.asarray(beta, "float64"))
    out = layer.forward(backend.asarray(x, "float64"))
    dx = layer.backward(backend.asarray(dout, "float64"))
    assert_on(backend, out, dx, layer.dgamma, layer.dbeta, layer.running_mean, layer.running_var)
    ref = bn_ref(x, gamma, beta, dout)
    for got, want in zip((out, dx, layer.dgamma, layer.dbeta), ref):
        np.testing.assert_allclose(to_np(got), want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(to_np(layer.running_mean), 0.1 * ref[4], **F64)
    np.testing.assert_allclose(to_np(layer.running_var), 0.9 + 0.1 * ref[5], **F64)

    # dx against float64 central differences
    g64, b64 = backend.asarray(gamma, "float64"), backend.asarray(beta, "float64")
    num = numeric(backend, scalar_of(lambda v: BatchNormalization(g64, b64).forward(v),
                                     backend.asarray(dout, "float64")), x)
    assert_gradients_close({"x": dx}, {"x": num}, rtol=1e-6, atol=1e-9)


def test_batchnorm_float32_and_inference(backend, rng):
    x = rng.standard_normal((4, 3, 2, 2))
    gamma, beta = np.full(3, 1.5), np.full(3, -0.5)
    rm, rv = np.array([0.1, -0.2, 0.3]), np.array([1.5, 0.5, 2.0])
    layer = BatchNormalization(backend.asarray(gamma, "float32"), backend.asarray(beta, "float32"),
                               running_mean=backend.asarray(rm, "float32"),
                               running_var=backend.asarray(rv, "float32"))
    out = layer.forward(backend.asarray(x, "float32"), train_flg=False)
    dx = layer.backward(backend.asarray(np.ones_like(x), "float32"))
    assert_on(backend, out, dx, layer.running_mean)
    for a in (out, dx, layer.dgamma, layer.running_mean, layer.running_var):
        assert a.dtype == backend.dtype("float32")
    s = (1, 3, 1, 1)
    want = 1.5 * (x - rm.reshape(s)) / np.sqrt(rv.reshape(s) + 1e-5) - 0.5
    np.testing.assert_allclose(to_np(out), want, **F32)
    np.testing.assert_allclose(to_np(dx), np.broadcast_to(1.5 / np.sqrt(rv.reshape(s) + 1e-5),
                                                          x.shape), **F32)
    np.testing.assert_allclose(to_np(layer.running_mean), rm, **F32)   # untouched at test time
    out = layer.forward(backend.asarray(x, "float32"))                  # training, float32
    assert out.dtype == layer.running_var.dtype == backend.dtype("float32")


@pytest.mark.parametrize("x_shape", [(8, 3), (4, 3, 2, 3)])
def test_batchnorm_vs_torch(rng, x_shape):
    torch = torch_or_skip()
    x, dout = rng.standard_normal(x_shape) * 3 - 1, rng.standard_normal(x_shape)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    xt, gt, bt = tt(x, True), tt(gamma, True), tt(beta, True)
    rm_t, rv_t = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    layer = BatchNormalization(gamma, beta, momentum=0.9)
    for step in range(3):   # running stats over several batches
        xs = x + step
        yt = torch.nn.functional.batch_norm(tt(xs), rm_t, rv_t, tt(gamma), tt(beta), training=True,
                                            momentum=0.1, eps=1e-5)
        np.testing.assert_allclose(layer.forward(xs), yt.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(layer.running_mean, rm_t.numpy(), **F64)
    np.testing.assert_allclose(layer.running_var, rv_t.numpy(), **F64)
    # inference with the running statistics
    yt = torch.nn.functional.batch_norm(tt(x), rm_t, rv_t, tt(gamma), tt(beta), training=False,
                                        eps=1e-5)
    np.testing.assert_allclose(layer.forward(x, train_flg=False), yt.numpy(), rtol=1e-8, atol=1e-10)
    # gradients (training)
    torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5).backward(tt(dout))
    layer.forward(x)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(layer.dgamma, gt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(layer.dbeta, bt.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_batchnorm_bad_inputs():
    g, b = np.ones(3), np.zeros(3)
    with pytest.raises(TypeError, match=r"BatchNormalization: expected gamma with a floating-point"):
        BatchNormalization(np.ones(3, dtype=np.int64), b)
    with pytest.raises(ValueError, match=r"expected beta of shape \(3,\) \(gamma's\); got \(4,\)"):
        BatchNormalization(g, np.zeros(4))
    with pytest.raises(ValueError, match=r"expected running_var of shape \(3,\)"):
        BatchNormalization(g, b, running_var=np.ones(2))
    with pytest.raises(ValueError, match=r"expected momentum in \[0, 1\]"):
        BatchNormalization(g, b, momentum=1.5)
    layer = BatchNormalization(g, b)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, D\) \(2-D\) or \(N, C, H, W\)"):
        layer.forward(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"with 3 channels \(gamma's size\); got \(2, 4, 1, 1\)"):
        layer.forward(np.ones((2, 4, 1, 1)))
    with pytest.raises(ValueError, match=r"more than 1 value per feature"):
        layer.forward(np.ones((1, 3)))
    with pytest.raises(TypeError, match=r"BatchNormalization.forward: x has dtype float32"):
        layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward(np.ones((2, 3)))


# =============================================================================== softmax / loss

def log_softmax_ref(x):
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def test_softmax_and_cross_entropy(backend, rng):
    x = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    onehot = np.eye(4)[labels]
    y = softmax(backend.asarray(x, "float64"))
    assert_on(backend, y)
    np.testing.assert_allclose(to_np(y), np.exp(log_softmax_ref(x)), **F64)
    book = -np.sum(np.log(np.exp(log_softmax_ref(x))[np.arange(5), labels] + 1e-7)) / 5
    for t in (backend.asarray(labels, "int64"), backend.asarray(onehot, "float64")):
        e = cross_entropy_error(y, t)
        assert_on(backend, e)
        assert e.ndim == 0
        np.testing.assert_allclose(float(to_np(e)), book, **F64)
    # one sample, 1-D (as in the book)
    e1 = cross_entropy_error(y[1, :], backend.asarray(onehot[1], "float64"))
    np.testing.assert_allclose(float(to_np(e1)), -np.log(np.exp(log_softmax_ref(x))[1, 3] + 1e-7),
                               **F64)


@pytest.mark.parametrize("labels_kind", ["int", "onehot"])
def test_softmax_with_loss(backend, rng, labels_kind):
    x = rng.standard_normal((6, 5)) * 2
    labels = np.array([4, 0, 2, 2, 1, 3])
    onehot = np.eye(5)[labels]
    t = backend.asarray(labels, "int64") if labels_kind == "int" else backend.asarray(onehot, "float64")
    layer = SoftmaxWithLoss()
    loss = layer.forward(backend.asarray(x, "float64"), t)
    dx = layer.backward()
    assert_on(backend, loss, dx, layer.y)
    assert loss.ndim == 0 and layer.loss is loss
    ref_loss = -log_softmax_ref(x)[np.arange(6), labels].mean()
    np.testing.assert_allclose(float(to_np(loss)), ref_loss, **F64)
    np.testing.assert_allclose(to_np(dx), (np.exp(log_softmax_ref(x)) - onehot) / 6, **F64)
    np.testing.assert_allclose(to_np(layer.backward(2.5)), 2.5 * to_np(dx), **F64)
    num = numeric(backend, lambda v: SoftmaxWithLoss().forward(v, t), x)
    assert_gradients_close({"x": dx}, {"x": num}, rtol=1e-6, atol=1e-9)


def test_softmax_with_loss_float32_large_logits(backend, rng):
    x = rng.standard_normal((4, 3)) * 1e4
    x[0] = [1e4, -1e4, 0.0]
    labels = np.array([1, 0, 2, 1])
    layer = SoftmaxWithLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = layer.forward(backend.asarray(x, "float32"), backend.asarray(labels, "int32"))
        dx = layer.backward()
    assert loss.dtype == dx.dtype == layer.y.dtype == backend.dtype("float32")
    assert_on(backend, loss, dx)
    assert np.isfinite(float(to_np(loss))) and np.all(np.isfinite(to_np(dx)))
    ref = -log_softmax_ref(x)[np.arange(4), labels].mean()
    np.testing.assert_allclose(float(to_np(loss)), ref, rtol=1e-5)
    np.testing.assert_allclose(to_np(dx), (np.exp(log_softmax_ref(x)) - np.eye(3)[labels]) / 4,
                               atol=1e-6)
    y = softmax(backend.asarray(x, "float32"))
    assert y.dtype == backend.dtype("float32") and np.all(np.isfinite(to_np(y)))


def test_softmax_with_loss_vs_torch(rng):
    torch = torch_or_skip()
    x, labels = rng.standard_normal((7, 4)) * 4, rng.integers(0, 4, 7)
    xt = tt(x, True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(labels))
    lt.backward(torch.tensor(3.0, dtype=torch.float64))
    layer = SoftmaxWithLoss()
    np.testing.assert_allclose(layer.forward(x, labels), lt.item(), **F64)
    np.testing.assert_allclose(layer.backward(3.0), xt.grad.numpy(), **F64)


def test_loss_bad_labels():
    x = np.zeros((3, 4))
    layer = SoftmaxWithLoss()
    with pytest.raises(ValueError, match=r"expected class labels t in 0\.\.3 \(K=4.*got values in 0\.\.4"):
        layer.forward(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"got values in -1\.\.2"):
        layer.forward(x, np.array([-1, 2, 1]))
    with pytest.raises(TypeError, match=r"expected integer class labels t of shape \(N,\).*float64"):
        layer.forward(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 1\) with N=3, or one-hot targets of "
                                         r"shape \(N, K\) = \(3, 4\); got \(3, 5\)"):
        layer.forward(x, np.zeros((3, 5)))
    with pytest.raises(TypeError, match=r"SoftmaxWithLoss.forward: expected x with a floating"):
        layer.forward(np.zeros((3, 4), dtype=np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"expected x of shape \(N, K\)"):
        layer.forward(np.zeros(4), np.array([0]))
    with pytest.raises(RuntimeError, match="call forward first"):
        layer.backward()
    layer.forward(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"expected dout to be a number or a 0-D array"):
        layer.backward(np.ones(3))
    with pytest.raises(ValueError, match=r"cross_entropy_error: expected class labels t in 0\.\.3"):
        cross_entropy_error(softmax(x), np.array([0, 1, 9]))


def test_loss_labels_one_rule():
    """(N, 1) integer columns are labels (as in the book and Keras); everything else that
    is not (N,) labels or (N, K) targets is refused, before any arithmetic."""
    x = np.random.default_rng(0).standard_normal((3, 4))
    labels = np.array([2, 0, 3])
    ref = SoftmaxWithLoss().forward(x, labels)
    layer = SoftmaxWithLoss()
    np.testing.assert_array_equal(layer.forward(x, labels.reshape(3, 1)), ref)
    np.testing.assert_allclose(layer.backward(), (softmax(x) - np.eye(4)[labels]) / 3, **F64)
    np.testing.assert_array_equal(cross_entropy_error(softmax(x), labels.reshape(3, 1)),
                                  cross_entropy_error(softmax(x), labels))
    for who, f in [("SoftmaxWithLoss.forward", SoftmaxWithLoss().forward),
                   ("cross_entropy_error", lambda y, t: cross_entropy_error(softmax(y), t))]:
        with pytest.raises(ValueError, match=rf"{who}: expected t as integer class labels .*got \(1,\)"):
            f(x, np.array([2]))                                # one label does not broadcast
        with pytest.raises(TypeError, match=rf"{who}: expected integer class labels t .*float64"):
            f(x, labels.reshape(3, 1).astype(float))           # a float column is not (N, K)
        with pytest.raises(TypeError, match=rf"{who}: expected integer class labels t .*bool"):
            f(x, np.array([True, False, True]))
        with pytest.raises(ValueError, match=rf"{who}: expected t as .*got \(3, 1, 1\)"):
            f(x, labels.reshape(3, 1, 1))
        with pytest.raises(ValueError, match=rf"{who}: expected class labels t in 0\.\.3 .*got values in 0\.\.4"):
            f(x, np.array([[0], [4], [1]]))


def test_loss_empty_batch_or_no_classes_is_an_error():
    """No mean loss exists for N = 0 (NumPy warned and gave NaN) or K = 0 (a bare NumPy error)."""
    for who, f in [("SoftmaxWithLoss.forward", SoftmaxWithLoss().forward), ("cross_entropy_error",
                                                                            cross_entropy_error)]:
        with pytest.raises(ValueError, match=rf"{who}: expected .* N >= 1 samples and K >= 1 classes "
                                             r".*got \(0, 4\)"):
            f(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
        with pytest.raises(ValueError, match=rf"{who}: expected .*K >= 1 classes.*got \(3, 0\)"):
            f(np.zeros((3, 0)), np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("kind", ["SoftmaxWithLoss", "cross_entropy_error"])
def test_device_labels_out_of_range_make_the_loss_nan(backend, kind):
    """Device labels are not read back to be range checked (that would stop the device every
    step): a label outside 0..K-1 makes the loss NaN instead, never a wrong finite number."""
    if backend.library == "numpy":
        pytest.skip("host NumPy labels are range checked with an error (test_loss_bad_labels)")
    x = backend.asarray(np.random.default_rng(1).standard_normal((3, 4)), "float32")
    loss = (SoftmaxWithLoss().forward if kind == "SoftmaxWithLoss" else
            lambda y, t: cross_entropy_error(softmax(y), t))
    good = float(to_np(loss(x, backend.asarray(np.array([3, 0, 1]), "int64"))))
    assert np.isfinite(good)
    for bad in ([3, 4, 1], [-1, 0, 1], [0, 7, -2]):
        assert np.isnan(float(to_np(loss(x, backend.asarray(np.array(bad), "int64"))))), bad


def test_softmax_with_loss_forward_is_lean_and_never_syncs():
    """On torch (the GPU launch proxy): the forward with device labels needs no device-to-host
    sync (the old range check read a bool back every step) and at most 16 kernels (was 20;
    15 without the NaN guard of device labels' range); the backward 2."""
    torch = torch_or_skip()
    from tests.torch_counter import count
    x = torch.randn(100, 10, generator=torch.Generator().manual_seed(0))
    t = torch.arange(100) % 10
    layer = SoftmaxWithLoss()
    layer.forward(x, t)                                        # builds the class row once
    with count() as fwd:
        loss = layer.forward(x, t)
    with count() as bwd:
        layer.backward()
    assert fwd.syncs == 0 and bwd.syncs == 0, (fwd.ops, bwd.ops)
    assert fwd.kernels <= 16, fwd.ops
    assert bwd.kernels <= 2, bwd.ops
    ref = torch.nn.functional.cross_entropy(x.double(), t)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


def test_loss_labels_must_share_device():
    cpu, dev1 = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    x = cpu.asarray(np.zeros((2, 3)), "float32")
    with pytest.raises(ValueError, match=r"SoftmaxWithLoss.forward: t is on device .*device1"):
        SoftmaxWithLoss().forward(x, dev1.asarray(np.array([0, 1]), "int64"))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"t is a torch array but x is a array_api_strict array"):
        SoftmaxWithLoss().forward(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("spec", ["numpy", "array_api_strict"])
def test_float32_stays_float32_for_batches_of_65536_and_more(spec):
    """CuPy 13 cast float32 / N (a Python int >= 65,536) to float64; the extras require
    CuPy >= 14 (NEP 50 promotion), and every batch mean here stays in the input's dtype:
    the loss, its gradient and BatchNormalization's statistics and gradients, N = 70,000."""
    dev = make_backend(spec)
    rng = np.random.default_rng(0)
    n, k = 70_000, 3
    x = dev.asarray(rng.standard_normal((n, k)), dtype="float32")
    t = dev.asarray(rng.integers(0, k, n))
    layer = xpconv.SoftmaxWithLoss()
    assert layer.forward(x, t).dtype == dev.xp.float32
    assert layer.backward().dtype == dev.xp.float32
    norm = xpconv.BatchNormalization(dev.asarray(np.ones(k), dtype="float32"),
                                     dev.asarray(np.zeros(k), dtype="float32"))
    assert norm.forward(x, train_flg=True).dtype == dev.xp.float32
    assert norm.backward(x).dtype == dev.xp.float32
    assert norm.dgamma.dtype == norm.running_var.dtype == dev.xp.float32
