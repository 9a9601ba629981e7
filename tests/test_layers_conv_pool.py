"""xpconv.Convolution and xpconv.Pooling: the book's forward/backward layers.

Each layer is checked against the functional ops and the loop references in
tests/naive.py, on every backend (JAX on a subset: it compiles every new op shape).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xpconv
from tests.helpers import BACKENDS, assert_on, make_backend
from tests.naive import (
    avg_pool2d_backward_naive,
    avg_pool2d_naive,
    conv2d_backward_naive,
    conv2d_naive,
    max_pool2d_backward_naive,
    max_pool2d_naive,
    torch_pool_out_size,
)
from xpconv import functional as F, to_numpy

TOL = dict(rtol=1e-10, atol=1e-10)
NOT_JAX = [spec for spec in BACKENDS if spec != "jax"]


def close(actual, expected, **kw):
    np.testing.assert_allclose(to_numpy(actual), expected, **{**TOL, **kw})


def put(backend, a, dtype="float64"):
    return backend.asarray(np.asarray(a), dtype=dtype)


# ============================================================================ Convolution

# (id, x shape, W shape, options, explicit pads for the reference)
CONV = {
    "3x3-s2-pad1-g2": ((3, 4, 7, 5), (6, 2, 3, 3), dict(stride=2, pad=1, groups=2), ((1, 1), (1, 1))),
    "2x3-s21-tblr-dil2-floor": ((2, 3, 6, 9), (4, 3, 2, 3),
                                dict(stride=(2, 1), pad=((1, 0), (2, 1)), dilation=2, rounding="floor"),
                                ((1, 0), (2, 1))),
    "1x1-same-depthwise": ((2, 3, 4, 5), (3, 1, 1, 1), dict(pad="same", groups=3), ((0, 0), (0, 0))),
}


def conv_ref(rng, name, n=None):
    xs, ws, opts, pads = CONV[name]
    xs = (xs[0] if n is None else n, *xs[1:])
    x, W, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    geo = dict(stride=opts.get("stride", 1), pads=pads, dilation=opts.get("dilation", 1),
               groups=opts.get("groups", 1))
    y = conv2d_naive(x, W, b, **geo)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = conv2d_backward_naive(dy, x, W, **geo)
    return dict(x=x, W=W, b=b, y=y, dy=dy, dx=dx, dW=dW, db=db, opts=opts)


@pytest.mark.parametrize("spec, name", [pytest.param(s, n, id=f"{s}-{n}") for n in CONV for s in BACKENDS
                                        if s != "jax" or n == "3x3-s2-pad1-g2"])
def test_convolution_vs_functional_and_naive(spec, name, rng):
    backend = make_backend(spec)
    r = conv_ref(rng, name)
    x, W, b, dy = (put(backend, r[k]) for k in ("x", "W", "b", "dy"))
    layer = xpconv.Convolution(W, b, **r["opts"])
    assert layer.dW is None and layer.db is None
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert_on(backend, y, dx, layer.dW, layer.db)
    assert tuple(y.shape) == r["y"].shape
    assert tuple(dx.shape) == r["x"].shape
    assert tuple(layer.dW.shape) == r["W"].shape and tuple(layer.db.shape) == r["b"].shape
    close(y, r["y"])
    close(dx, r["dx"])
    close(layer.dW, r["dW"])
    close(layer.db, r["db"])
    fdx, fdW, _fdb = F.conv2d_backward(dy, x, W, **r["opts"])
    close(y, to_numpy(F.conv2d(x, W, b, **r["opts"])), rtol=1e-12, atol=1e-12)
    close(dx, to_numpy(fdx), rtol=1e-12, atol=1e-12)
    close(layer.dW, to_numpy(fdW), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", NOT_JAX)
def test_convolution_input_grad_false(spec, rng):
    backend = make_backend(spec)
    r = conv_ref(rng, "3x3-s2-pad1-g2")
    layer = xpconv.Convolution(put(backend, r["W"]), put(backend, r["b"]), **r["opts"], input_grad=False)
    layer.forward(put(backend, r["x"]))
    assert layer.backward(put(backend, r["dy"])) is None
    assert_on(backend, layer.dW, layer.db)
    close(layer.dW, r["dW"])
    close(layer.db, r["db"])


def test_convolution_backward_before_forward():
    layer = xpconv.Convolution(np.ones((2, 1, 3, 3)), np.zeros(2))
    with pytest.raises(RuntimeError, match="Convolution.backward.*forward"):
        layer.backward(np.ones((1, 2, 1, 1)))


@pytest.mark.parametrize("spec", NOT_JAX)
def test_convolution_repeated_batches(spec, rng):
    """One layer, several forward/backward rounds with different batch sizes."""
    backend = make_backend(spec)
    first = conv_ref(rng, "2x3-s21-tblr-dil2-floor")
    layer = xpconv.Convolution(put(backend, first["W"]), put(backend, first["b"]), **first["opts"])
    geo = dict(stride=(2, 1), pads=((1, 0), (2, 1)), dilation=2)
    for n in (3, 1, 2):
        x = rng.standard_normal((n, *first["x"].shape[1:]))
        dy = rng.standard_normal((n, *first["y"].shape[1:]))
        dx, dW, db = conv2d_backward_naive(dy, x, first["W"], **geo)
        close(layer.forward(put(backend, x)), conv2d_naive(x, first["W"], first["b"], **geo))
        close(layer.backward(put(backend, dy)), dx)
        close(layer.dW, dW)
        close(layer.db, db)


@pytest.mark.parametrize("spec", NOT_JAX)
def test_convolution_empty_batch(spec, rng):
    backend = make_backend(spec)
    W, b = put(backend, rng.standard_normal((4, 3, 3, 3))), put(backend, rng.standard_normal(4))
    layer = xpconv.Convolution(W, b, stride=2, pad=1)
    y = layer.forward(put(backend, np.zeros((0, 3, 7, 9))))
    assert tuple(y.shape) == (0, 4, 4, 5)
    dx = layer.backward(put(backend, np.zeros((0, 4, 4, 5))))
    assert_on(backend, y, dx, layer.dW, layer.db)
    assert tuple(dx.shape) == (0, 3, 7, 9)
    np.testing.assert_array_equal(to_numpy(layer.dW), np.zeros((4, 3, 3, 3)))
    np.testing.assert_array_equal(to_numpy(layer.db), np.zeros(4))


# ----------------------------------------------------------------------------- workspace chunking

CHUNK_BACKENDS = ["numpy", "array_api_strict:device1", "torch"]


@pytest.mark.parametrize("spec", CHUNK_BACKENDS)
def test_functional_conv_chunked_matches_default(spec, rng):
    """workspace_limit(1) forces one-sample chunks; results must not change."""
    backend = make_backend(spec)
    r = conv_ref(rng, "2x3-s21-tblr-dil2-floor", n=4)
    x, W, b, dy = (put(backend, r[k]) for k in ("x", "W", "b", "dy"))
    y = F.conv2d(x, W, b, **r["opts"])
    grads = F.conv2d_backward(dy, x, W, **r["opts"])
    with xpconv.workspace_limit(1):
        assert xpconv.get_workspace_limit() == 1
        y1 = F.conv2d(x, W, b, **r["opts"])
        grads1 = F.conv2d_backward(dy, x, W, **r["opts"])
    assert_on(backend, y1, *grads1)
    close(y1, to_numpy(y), rtol=1e-12, atol=1e-12)
    for g1, g in zip(grads1, grads):
        close(g1, to_numpy(g), rtol=1e-12, atol=1e-12)
    close(y1, r["y"])
    close(grads1[1], r["dW"])


@pytest.mark.parametrize("spec", CHUNK_BACKENDS)
def test_layer_conv_chunked_matches_default(spec, rng):
    backend = make_backend(spec)
    r = conv_ref(rng, "3x3-s2-pad1-g2")
    x, W, b, dy = (put(backend, r[k]) for k in ("x", "W", "b", "dy"))
    whole = xpconv.Convolution(W, b, **r["opts"])
    y = whole.forward(x)
    assert whole._cols is not None  # one chunk: the columns are kept for backward
    dx = whole.backward(dy)
    chunked = xpconv.Convolution(W, b, **r["opts"])
    with xpconv.workspace_limit(1):
        y1 = chunked.forward(x)
        assert chunked._cols is None  # several chunks: nothing kept
        dx1 = chunked.backward(dy)
    assert_on(backend, y1, dx1, chunked.dW, chunked.db)
    close(y1, to_numpy(y), rtol=1e-12, atol=1e-12)
    close(dx1, to_numpy(dx), rtol=1e-12, atol=1e-12)
    close(chunked.dW, to_numpy(whole.dW), rtol=1e-12, atol=1e-12)
    close(chunked.db, to_numpy(whole.db), rtol=1e-12, atol=1e-12)
    close(chunked.dW, r["dW"])


@pytest.mark.parametrize("spec", ["numpy", "array_api_strict:device1"])
def test_layer_conv_limit_lowered_between_forward_and_backward(spec, rng):
    """Forward with one chunk (columns kept), backward under a smaller limit: same gradients."""
    backend = make_backend(spec)
    r = conv_ref(rng, "3x3-s2-pad1-g2")
    layer = xpconv.Convolution(put(backend, r["W"]), put(backend, r["b"]), **r["opts"])
    layer.forward(put(backend, r["x"]))
    with xpconv.workspace_limit(1):
        dx = layer.backward(put(backend, r["dy"]))
    close(dx, r["dx"])
    close(layer.dW, r["dW"])
    close(layer.db, r["db"])


# ============================================================================ Pooling

# (id, x shape, Pooling args, explicit pads, torch-style ceil output or None)
POOL = {
    "2x2": ((2, 3, 6, 8), dict(pool_h=2, pool_w=2), ((0, 0), (0, 0)), None),
    "3x3-s2-pad1-ceil": ((1, 2, 6, 8), dict(pool_h=3, pool_w=3, stride=2, pad=1, rounding="ceil"),
                         ((1, 1), (1, 1)),
                         (torch_pool_out_size(6, 3, 2, 1, True), torch_pool_out_size(8, 3, 2, 1, True))),
    "2x3-s21-tblr-floor": ((3, 2, 5, 7), dict(pool_h=2, pool_w=3, stride=(2, 1), pad=((1, 0), (1, 1)),
                                              rounding="floor"), ((1, 0), (1, 1)), None),
    "global": ((2, 3, 4, 5), dict(pool_h=4, pool_w=5), ((0, 0), (0, 0)), None),
}


def pool_ref(rng, name, mode, cip=True, n=None):
    xs, args, pads, out_hw = POOL[name]
    xs = (xs[0] if n is None else n, *xs[1:])
    x = rng.standard_normal(xs)
    k = (args["pool_h"], args["pool_w"])
    s = args.get("stride", k)
    if mode == "max":
        y = max_pool2d_naive(x, k, s, pads, out_hw)
        dy = rng.standard_normal(y.shape)
        dx = max_pool2d_backward_naive(dy, x, k, s, pads, out_hw)
    else:
        y = avg_pool2d_naive(x, k, s, pads, out_hw, cip)
        dy = rng.standard_normal(y.shape)
        dx = avg_pool2d_backward_naive(dy, x, k, s, pads, out_hw, cip)
    return dict(x=x, y=y, dy=dy, dx=dx, args=dict(args, mode=mode, count_include_pad=cip))


def _functional(x, dy, args):
    k = (args["pool_h"], args["pool_w"])
    kw = dict(stride=args.get("stride"), pad=args.get("pad", 0), rounding=args.get("rounding", "exact"))
    if args["mode"] == "max":
        return F.max_pool2d(x, k, **kw), F.max_pool2d_backward(dy, x, k, **kw)
    cip = args["count_include_pad"]
    return (F.avg_pool2d(x, k, **kw, count_include_pad=cip),
            F.avg_pool2d_backward(dy, x, k, **kw, count_include_pad=cip))


POOL_PARAMS = [pytest.param(s, n, m, c, id=f"{s}-{n}-{m}" + ("" if m == "max" else f"-cip{c}"))
               for n in POOL for m, c in (("max", True), ("avg", True), ("avg", False)) for s in BACKENDS
               if s != "jax" or n == "3x3-s2-pad1-ceil"]


@pytest.mark.parametrize("spec, name, mode, cip", POOL_PARAMS)
def test_pooling_vs_functional_and_naive(spec, name, mode, cip, rng):
    backend = make_backend(spec)
    r = pool_ref(rng, name, mode, cip)
    x, dy = put(backend, r["x"]), put(backend, r["dy"])
    layer = xpconv.Pooling(**r["args"])
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert_on(backend, y, dx)
    assert tuple(y.shape) == r["y"].shape and tuple(dx.shape) == r["x"].shape
    close(y, r["y"])
    close(dx, r["dx"])
    fy, fdx = _functional(x, dy, r["args"])
    close(y, to_numpy(fy), rtol=1e-12, atol=1e-12)
    close(dx, to_numpy(fdx), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(POOL))
@pytest.mark.parametrize("spec", CHUNK_BACKENDS)
def test_max_pooling_chunked_matches_naive(spec, name, rng):
    """workspace_limit(1): the max-pool backward goes one sample at a time; same result."""
    backend = make_backend(spec)
    r = pool_ref(rng, name, "max", n=3)
    layer = xpconv.Pooling(**r["args"])
    with xpconv.workspace_limit(1):
        y = layer.forward(put(backend, r["x"]))
        dx = layer.backward(put(backend, r["dy"]))
    assert_on(backend, y, dx)
    close(y, r["y"])
    close(dx, r["dx"])


def test_pooling_backward_before_forward():
    with pytest.raises(RuntimeError, match="Pooling.backward.*forward"):
        xpconv.Pooling(2, 2).backward(np.ones((1, 1, 1, 1)))


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("spec", NOT_JAX)
def test_pooling_repeated_batches(spec, mode):
    backend = make_backend(spec)
    layer = xpconv.Pooling(3, 3, stride=2, pad=1, mode=mode, rounding="ceil", count_include_pad=False)
    for n in (3, 1, 2):
        r = pool_ref(np.random.default_rng(n), "3x3-s2-pad1-ceil", mode, cip=False, n=n)
        close(layer.forward(put(backend, r["x"])), r["y"])
        close(layer.backward(put(backend, r["dy"])), r["dx"])


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("spec", NOT_JAX)
def test_pooling_empty_batch(spec, mode):
    backend = make_backend(spec)
    layer = xpconv.Pooling(2, 2, mode=mode)
    y = layer.forward(put(backend, np.zeros((0, 3, 6, 4))))
    assert tuple(y.shape) == (0, 3, 3, 2)
    dx = layer.backward(put(backend, np.zeros((0, 3, 3, 2))))
    assert_on(backend, y, dx)
    assert tuple(dx.shape) == (0, 3, 6, 4)


def test_jax_without_x64_convolves_without_a_dtype_warning():
    """The gathered im2col's positions are int32 where they fit: JAX without x64 (its
    default) would warn at an int64 request and truncate it."""
    pytest.importorskip("jax")
    code = ("import numpy as np, xpconv\n"
            "net = xpconv.SimpleConvNet(device='jax', seed=0)\n"
            "x = net.device.asarray(np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32))\n"
            "assert net.predict(x).shape == (2, 10)\n")
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
