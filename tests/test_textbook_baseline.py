"""The textbook baseline (xpconv.bench.textbook) computes the right thing.

The textbook numbers are quoted as the "before" of every speed-up, so they must
come from a correct implementation of the book's algorithm.  The harness itself
is tested in tests/test_bench.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from xpconv.bench import textbook

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed: no reference convolution")

CONV_SHAPES = [  # (N, C, H, W, FN, K, stride, pad)
    (2, 3, 7, 7, 4, 3, 1, 0),
    (2, 3, 7, 7, 4, 3, 2, 1),   # windows do not tile: the book floors, like torch
    (1, 2, 6, 5, 3, 1, 1, 0),
    (2, 1, 9, 9, 2, 5, 2, 2),
]


@needs_torch
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_convolution_matches_torch(shape):
    N, C, H, W, FN, K, stride, pad = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((FN, C, K, K)).astype(np.float32)
    b = rng.standard_normal(FN).astype(np.float32)

    conv = textbook.Convolution(w, b, stride=stride, pad=pad)
    y = conv.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(dy)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    ty.backward(torch.from_numpy(dy))

    assert y.dtype == dx.dtype == conv.dW.dtype == np.float32
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(conv.dW, tw.grad.numpy(), **tol)
    np.testing.assert_allclose(conv.db, tb.grad.numpy(), **tol)


def naive_max_pool(x, size, stride, dy):
    """Loop reference: max of each window, gradient to its (first) argmax."""
    N, C, H, W = x.shape
    oh, ow = (H - size) // stride + 1, (W - size) // stride + 1
    y = np.empty((N, C, oh, ow), x.dtype)
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    win = x[n, c, i * stride:i * stride + size, j * stride:j * stride + size]
                    r, s = np.unravel_index(np.argmax(win), win.shape)
                    y[n, c, i, j] = win[r, s]
                    dx[n, c, i * stride + r, j * stride + s] += dy[n, c, i, j]
    return y, dx


@pytest.mark.parametrize("size,stride,hw", [(2, 2, 6), (3, 2, 7), (2, 1, 5), (2, 2, 7)])
def test_pooling_matches_naive_loop(size, stride, hw):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, hw, hw)).astype(np.float32)
    pool = textbook.Pooling(size, size, stride=stride)
    y = pool.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.backward(dy)

    y_ref, dx_ref = naive_max_pool(x, size, stride, dy)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 0), (3, 2, 1), (2, 3, 0), (5, 2, 2), (1, 1, 0)])
def test_im2col_col2im_are_adjoint(k, stride, pad):
    """<im2col(x), c> == <x, col2im(c)> for every x and c."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8, 7))
    cols = textbook.im2col(x, k, k, stride, pad)
    c = rng.standard_normal(cols.shape)
    back = textbook.col2im(c, x.shape, k, k, stride, pad)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-10)


@needs_torch
def test_simple_convnet_gradient_matches_torch():
    net = textbook.SimpleConvNet(seed=0, weight_init_std=0.1)
    rng = np.random.default_rng(3)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    t = np.array([1, 7, 3, 0])
    grads = net.gradient(x, t)

    p = {k: torch.tensor(v, requires_grad=True) for k, v in net.params.items()}
    h = F.max_pool2d(F.relu(F.conv2d(torch.from_numpy(x), p["W1"], p["b1"])), 2, 2)
    h = F.relu(h.flatten(1) @ p["W2"] + p["b2"])
    loss = F.cross_entropy(h @ p["W3"] + p["b3"], torch.from_numpy(t))
    loss.backward()

    np.testing.assert_allclose(net.loss(x, t), loss.item(), rtol=1e-4)
    for k, g in grads.items():
        assert g.dtype == np.float32, k
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
