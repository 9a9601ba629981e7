"""xpconv.functional against the loop references in tests/naive.py and torch.nn.functional.

Every op, forward and backward, runs on every backend of the ``backend`` fixture. Inputs
are drawn on the host and moved with ``backend.asarray``; results are compared in NumPy.
The references are computed once per case (they are plain Python loops).
"""
from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

import xpconv
from tests.helpers import BACKENDS, assert_on, make_backend
from tests.naive import (
    avg_pool2d_backward_naive,
    avg_pool2d_naive,
    col2im_naive,
    conv2d_backward_naive,
    conv2d_naive,
    im2col_naive,
    max_pool2d_backward_naive,
    max_pool2d_naive,
    numerical_grad,
    same_pads,
    torch_pool_out_size,
)
from xpconv import functional as F, to_numpy
from xpconv._kernels.geometry import window2d

TOL = {
    "float64": dict(rtol=1e-10, atol=1e-10),
    "float32": dict(rtol=1e-4, atol=1e-4),
    "float16": dict(rtol=1e-2, atol=5e-2),
}


# ----------------------------------------------------------------------------- helpers

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def explicit_pads(pad, hw, k, stride=1, dilation=1):
    """Any pad form -> ((top, bottom), (left, right)), worked out independently of xpconv."""
    k, s, d = _pair(k), _pair(stride), _pair(dilation)
    if pad == "valid":
        return (0, 0), (0, 0)
    if pad == "full":
        return tuple((d[a] * (k[a] - 1),) * 2 for a in range(2))
    if pad == "same":
        return tuple(same_pads(hw[a], k[a], s[a], d[a]) for a in range(2))
    if isinstance(pad, int):
        return (pad, pad), (pad, pad)
    if isinstance(pad[0], int):
        return (pad[0], pad[0]), (pad[1], pad[1])
    return tuple(tuple(p) for p in pad)


def seeded(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def put(backend, a, dtype="float64", layout="contiguous"):
    """Host array -> backend array; layout "permuted" or "strided" gives a non-contiguous view."""
    a = np.asarray(a)
    if layout == "contiguous":
        return backend.asarray(a, dtype=dtype)
    if layout == "permuted":  # stored as (N, H, W, C), viewed as (N, C, H, W)
        stored = backend.asarray(np.ascontiguousarray(np.moveaxis(a, 1, -1)), dtype=dtype)
        out = backend.xp.permute_dims(stored, (0, 3, 1, 2))
    else:  # "strided": every other element of a twice as wide array
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],))
        wide[..., ::2] = a
        out = backend.asarray(wide, dtype=dtype)[..., ::2]
    if backend.library == "numpy" and out.size:
        assert not out.flags.c_contiguous
    if backend.library == "torch" and out.numel():
        assert not out.is_contiguous()
    return out


def close(actual, expected, dtype="float64", **kw):
    np.testing.assert_allclose(to_numpy(actual).astype(np.float64), expected, **{**TOL[dtype], **kw})


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed: no torch.nn.functional reference")


def grid(cases, on_jax):
    """(spec, case) params: every case on every backend but JAX, which runs only the
    cases named in ``on_jax`` (it compiles each new op shape, seconds per case)."""
    return [pytest.param(spec, case, id=f"{spec}-{case.id}") for case in cases for spec in BACKENDS
            if spec != "jax" or case.id in on_jax]


NOT_JAX = [spec for spec in BACKENDS if spec != "jax"]  # for the costlier single-case tests


def check_placed(backend, dtype, *arrays):
    assert_on(backend, *arrays)
    for a in arrays:
        assert a.dtype == backend.dtype(dtype), f"{a.dtype} != {dtype}"


# ============================================================================ convolution

@dataclass(frozen=True)
class ConvCase:
    id: str
    N: int
    C: int
    hw: tuple
    FN: int
    k: tuple
    stride: object = 1
    pad: object = 0
    dilation: object = 1
    groups: int = 1
    rounding: str = "exact"
    layout: str = "contiguous"

    @property
    def pads(self):
        return explicit_pads(self.pad, self.hw, self.k, self.stride, self.dilation)

    @property
    def kw(self):
        return dict(stride=self.stride, pad=self.pad, dilation=self.dilation, groups=self.groups,
                    rounding=self.rounding)


CONV_CASES = [
    ConvCase("1x1-s2-pad1-floor", 3, 2, (5, 4), 3, (1, 1), stride=2, pad=1, rounding="floor"),
    ConvCase("3x3-s2-pad1", 1, 3, (7, 5), 4, (3, 3), stride=2, pad=1),
    ConvCase("3x3-s21-padhw-dil2-g2", 3, 4, (9, 6), 6, (3, 3), stride=(2, 1), pad=(1, 0),
             dilation=2, groups=2),
    ConvCase("5x5-s3-padtblr-floor", 2, 2, (8, 11), 3, (5, 5), stride=3, pad=((2, 1), (0, 2)),
             rounding="floor"),
    ConvCase("2x3-same-depthwise", 3, 3, (5, 6), 6, (2, 3), pad="same", groups=3),
    ConvCase("3x3-full-s2-floor", 1, 2, (4, 5), 2, (3, 3), stride=2, pad="full", rounding="floor"),
    ConvCase("2x3-valid-s3-dil12-floor", 2, 2, (7, 9), 2, (2, 3), stride=3, pad="valid",
             dilation=(1, 2), rounding="floor"),
    ConvCase("3x3-same-s2-dil2-g2", 2, 4, (6, 7), 4, (3, 3), stride=2, pad="same", dilation=2, groups=2),
    ConvCase("5x5-pad2-permuted", 3, 2, (6, 5), 3, (5, 5), pad=2, layout="permuted"),
    ConvCase("2x3-s3-depthwise-strided-floor", 1, 4, (7, 8), 4, (2, 3), stride=3, pad=(1, 1),
             groups=4, rounding="floor", layout="strided"),
    ConvCase("3x3-batch0", 0, 2, (5, 6), 3, (3, 3), pad=1),
]


@functools.cache
def conv_data(case: ConvCase):
    """Host inputs and naive float64 results of one conv case."""
    rng = seeded(case.id)
    x = rng.standard_normal((case.N, case.C, *case.hw))
    w = rng.standard_normal((case.FN, case.C // case.groups, *case.k))
    b = rng.standard_normal(case.FN)
    geo = dict(stride=case.stride, pads=case.pads, dilation=case.dilation, groups=case.groups)
    y = conv2d_naive(x, w, b, **geo)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward_naive(dy, x, w, **geo)
    return dict(x=x, w=w, b=b, y=y, dy=dy, dx=dx, dw=dw, db=db)


@pytest.mark.parametrize("spec, case", grid(CONV_CASES, {"3x3-s21-padhw-dil2-g2",
                                                         "2x3-s3-depthwise-strided-floor"}))
def test_conv2d_forward_backward_vs_naive(spec, case):
    backend = make_backend(spec)
    d = conv_data(case)
    x = put(backend, d["x"], layout=case.layout)
    w = put(backend, d["w"], layout="strided" if case.layout != "contiguous" else "contiguous")
    b = put(backend, d["b"])
    y = F.conv2d(x, w, b, **case.kw)
    check_placed(backend, "float64", y)
    assert tuple(y.shape) == d["y"].shape
    close(y, d["y"])
    dx, dw, db = F.conv2d_backward(put(backend, d["dy"]), x, w, **case.kw)
    check_placed(backend, "float64", dx, dw, db)
    assert tuple(dx.shape) == d["x"].shape and tuple(dw.shape) == d["w"].shape
    close(dx, d["dx"])
    close(dw, d["dw"])
    close(db, d["db"])


def test_conv2d_without_bias(backend):
    case = CONV_CASES[2]
    d = conv_data(case)
    y = F.conv2d(put(backend, d["x"]), put(backend, d["w"]), None, **case.kw)
    close(y, d["y"] - d["b"][None, :, None, None])


def test_conv2d_backward_input_grad_false(backend):
    case = CONV_CASES[1]
    d = conv_data(case)
    dx, dw, db = F.conv2d_backward(put(backend, d["dy"]), put(backend, d["x"]), put(backend, d["w"]),
                                   **case.kw, input_grad=False)
    assert dx is None
    close(dw, d["dw"])
    close(db, d["db"])


def _torch_conv(torch, d, case, requires_grad=True):
    import torch.nn.functional as tF
    x = torch.tensor(d["x"], requires_grad=requires_grad)
    w = torch.tensor(d["w"], requires_grad=requires_grad)
    b = torch.tensor(d["b"], requires_grad=requires_grad)
    (t, bo), (l, r) = case.pads
    y = tF.conv2d(tF.pad(x, (l, r, t, bo)), w, b, stride=_pair(case.stride),
                  dilation=_pair(case.dilation), groups=case.groups)
    return x, w, b, y


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.id)
def test_conv2d_vs_torch(case):
    torch = torch_or_skip()
    d = conv_data(case)
    x, w, b, y = _torch_conv(torch, d, case)
    y.backward(torch.tensor(d["dy"]))
    ours = F.conv2d(d["x"], d["w"], d["b"], **case.kw)
    close(ours, y.detach().numpy())
    dx, dw, db = F.conv2d_backward(d["dy"], d["x"], d["w"], **case.kw)
    close(dx, x.grad.numpy())
    close(dw, w.grad.numpy())
    close(db, b.grad.numpy())


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_conv2d_same_size_and_split_vs_torch(k, stride):
    torch = torch_or_skip()
    import torch.nn.functional as tF
    rng = seeded(f"same{k}{stride}")
    H, W = 7, 8
    x, w = rng.standard_normal((2, 3, H, W)), rng.standard_normal((2, 3, k, k))
    y = F.conv2d(x, w, pad="same", stride=stride)
    assert y.shape == (2, 2, math.ceil(H / stride), math.ceil(W / stride))
    total_h = max((math.ceil(H / stride) - 1) * stride + k - H, 0)
    total_w = max((math.ceil(W / stride) - 1) * stride + k - W, 0)
    padded = tF.pad(torch.tensor(x), (total_w // 2, total_w - total_w // 2,
                                      total_h // 2, total_h - total_h // 2))
    close(y, tF.conv2d(padded, torch.tensor(w), stride=stride).numpy())


@pytest.mark.parametrize("hw, kernel, stride, pad, rounding, tiles", [
    ((6, 8), (2, 2), (2, 2), 0, "exact", True),
    ((6, 9), (3, 3), (3, 3), 0, "exact", True),
    ((4, 5), (1, 1), (1, 1), 0, "exact", True),
    ((5, 8), (2, 2), (2, 2), 0, "floor", False),     # a last row left over
    ((6, 8), (2, 2), (1, 1), 0, "exact", False),     # overlapping
    ((7, 7), (3, 3), (3, 3), 1, "exact", False),     # padded
    ((9, 9), (2, 2), (3, 3), 0, "floor", False),     # gaps
])
def test_window_geometry_tiles(hw, kernel, stride, pad, rounding, tiles):
    """``tiles`` (so fold may skip zeroing) only when every input position lies in exactly
    one window; it may say False for some that do (padded ones)."""
    geom = window2d("test", hw, kernel, stride, pad, 1, rounding)
    assert geom.tiles is tiles
    cover = np.zeros(hw, dtype=int)
    for oh in range(geom.h.out):
        for ow in range(geom.w.out):
            top, left = oh * stride[0] - geom.h.p0, ow * stride[1] - geom.w.p0
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    if 0 <= top + i < hw[0] and 0 <= left + j < hw[1]:
                        cover[top + i, left + j] += 1
    assert bool((cover == 1).all()) is (tiles or geom.padded)


def test_conv2d_exact_rounding_tiles(backend):
    """rounding="exact" where the windows tile: same result as floor, and as the reference."""
    case = CONV_CASES[1]  # 7x5, 3x3, stride 2, pad 1 tiles exactly
    d = conv_data(case)
    x, w = put(backend, d["x"]), put(backend, d["w"])
    exact = F.conv2d(x, w, put(backend, d["b"]), stride=2, pad=1, rounding="exact")
    floor = F.conv2d(x, w, put(backend, d["b"]), stride=2, pad=1, rounding="floor")
    close(exact, d["y"])
    close(floor, d["y"])


# ----------------------------------------------------------------------------- dtypes

DTYPE_CASE = CONV_CASES[2]


def _dtype_backend(backend, dtype):
    if dtype == "float16" and backend.library not in ("numpy", "torch"):
        pytest.skip(f"float16 is checked on numpy and torch only, not {backend.library}")
    return backend


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_conv2d_dtypes(backend, dtype):
    _dtype_backend(backend, dtype)
    case = DTYPE_CASE
    d = conv_data(case)
    hx, hw_, hb, hdy = (d[k].astype(dtype).astype(np.float64) for k in ("x", "w", "b", "dy"))
    geo = dict(stride=case.stride, pads=case.pads, dilation=case.dilation, groups=case.groups)
    x, w, b, dy = (put(backend, a, dtype) for a in (hx, hw_, hb, hdy))
    y = F.conv2d(x, w, b, **case.kw)
    dx, dw, db = F.conv2d_backward(dy, x, w, **case.kw)
    check_placed(backend, dtype, y, dx, dw, db)
    scale = dict(float32=1, float16=4)[dtype]  # dw sums N*OH*OW products
    close(y, conv2d_naive(hx, hw_, hb, **geo), dtype)
    rdx, rdw, rdb = conv2d_backward_naive(hdy, hx, hw_, **geo)
    close(dx, rdx, dtype)
    close(dw, rdw, dtype, atol=TOL[dtype]["atol"] * scale)
    close(db, rdb, dtype, atol=TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("spec", NOT_JAX)
def test_pool_and_im2col_dtypes(spec, dtype):
    backend = make_backend(spec)
    _dtype_backend(backend, dtype)
    rng = seeded("pool-dtype")
    hx = rng.standard_normal((2, 3, 6, 7)).astype(dtype).astype(np.float64)
    pads = ((1, 1), (1, 1))
    out_hw = (torch_pool_out_size(6, 3, 2, 1, True), torch_pool_out_size(7, 3, 2, 1, True))
    hdy = rng.standard_normal((2, 3, *out_hw)).astype(dtype).astype(np.float64)
    x, dy = put(backend, hx, dtype), put(backend, hdy, dtype)
    kw = dict(stride=2, pad=1, rounding="ceil")
    outs = {
        "max": (F.max_pool2d(x, 3, **kw), max_pool2d_naive(hx, 3, 2, pads, out_hw)),
        "dmax": (F.max_pool2d_backward(dy, x, 3, **kw), max_pool2d_backward_naive(hdy, hx, 3, 2, pads, out_hw)),
        "avg": (F.avg_pool2d(x, 3, **kw, count_include_pad=False),
                avg_pool2d_naive(hx, 3, 2, pads, out_hw, count_include_pad=False)),
        "davg": (F.avg_pool2d_backward(dy, x, 3, **kw, count_include_pad=False),
                 avg_pool2d_backward_naive(hdy, hx, 3, 2, pads, out_hw, count_include_pad=False)),
    }
    col = F.im2col(x, 3, 2, stride=2, pad=1, rounding="floor")
    hcol = im2col_naive(hx, 3, 2, 2, pads)
    outs["im2col"] = (col, hcol)
    outs["col2im"] = (F.col2im(col, (2, 3, 6, 7), 3, 2, stride=2, pad=1, rounding="floor"),
                      col2im_naive(hcol, (2, 3, 6, 7), 3, 2, 2, pads))
    for name, (ours, ref) in outs.items():
        check_placed(backend, dtype, ours)
        close(ours, ref, dtype, err_msg=name)


# ============================================================================ pooling

@dataclass(frozen=True)
class PoolCase:
    id: str
    N: int
    C: int
    hw: tuple
    k: object
    stride: object = None
    pad: object = 0
    rounding: str = "exact"
    layout: str = "contiguous"

    @property
    def pads(self):
        return explicit_pads(self.pad, self.hw, self.k, self.k if self.stride is None else self.stride)

    @property
    def out_hw(self):
        """PyTorch's output size (ceil mode) or None for the floor size."""
        if self.rounding != "ceil":
            return None
        k, s = _pair(self.k), _pair(self.k if self.stride is None else self.stride)
        return tuple(torch_pool_out_size(self.hw[a], k[a], s[a], self.pads[a][0], True) for a in range(2))

    @property
    def kw(self):
        return dict(stride=self.stride, pad=self.pad, rounding=self.rounding)

    @property
    def symmetric(self):
        return all(p0 == p1 for p0, p1 in self.pads)


POOL_CASES = [
    PoolCase("2x2", 2, 3, (6, 8), 2),
    PoolCase("3x3-s2-pad1", 1, 2, (7, 5), 3, stride=2, pad=1),
    PoolCase("2x3-s21-padhw-floor", 3, 2, (5, 7), (2, 3), stride=(2, 1), pad=(1, 1), rounding="floor"),
    PoolCase("3x3-s3-padtblr-floor", 2, 1, (8, 7), 3, stride=3, pad=((1, 0), (0, 1)), rounding="floor"),
    PoolCase("5x5-s1-pad2", 1, 2, (5, 6), 5, stride=1, pad=2),
    PoolCase("1x1-s2-floor", 2, 2, (5, 4), 1, stride=2, rounding="floor"),
    PoolCase("2x2-s1-same", 1, 2, (4, 5), 2, stride=1, pad="same"),
    PoolCase("3x3-s2-valid-floor", 1, 1, (6, 7), 3, stride=2, pad="valid", rounding="floor"),
    PoolCase("global", 3, 2, (4, 5), (4, 5)),
    PoolCase("ceil-3x3-s2", 2, 2, (6, 7), 3, stride=2, rounding="ceil"),
    PoolCase("ceil-3x3-s2-pad1", 1, 2, (6, 8), 3, stride=2, pad=1, rounding="ceil"),
    PoolCase("ceil-2x2-s2-pad1-lastdropped", 1, 1, (5, 6), 2, stride=2, pad=1, rounding="ceil"),
    PoolCase("ceil-3x2-s3-pad1", 2, 1, (7, 5), (3, 2), stride=(3, 2), pad=(1, 1), rounding="ceil"),
    PoolCase("3x3-s2-pad1-permuted", 2, 3, (7, 7), 3, stride=2, pad=1, layout="permuted"),
    PoolCase("2x2-strided", 1, 2, (4, 6), 2, layout="strided"),
    PoolCase("2x2-batch0", 0, 2, (4, 6), 2),
]


@functools.cache
def pool_data(case: PoolCase):
    rng = seeded(case.id)
    x = rng.standard_normal((case.N, case.C, *case.hw))
    s = case.k if case.stride is None else case.stride
    y = max_pool2d_naive(x, case.k, s, case.pads, case.out_hw)
    dy = rng.standard_normal(y.shape)
    out = dict(x=x, dy=dy, max=y, dmax=max_pool2d_backward_naive(dy, x, case.k, s, case.pads, case.out_hw))
    for cip in (True, False):
        out["avg", cip] = avg_pool2d_naive(x, case.k, s, case.pads, case.out_hw, cip)
        out["davg", cip] = avg_pool2d_backward_naive(dy, x, case.k, s, case.pads, case.out_hw, cip)
    return out


POOL_ON_JAX = {"ceil-3x3-s2-pad1", "3x3-s3-padtblr-floor"}


@pytest.mark.parametrize("spec, case", grid(POOL_CASES, POOL_ON_JAX))
def test_max_pool2d_vs_naive(spec, case):
    backend = make_backend(spec)
    d = pool_data(case)
    x, dy = put(backend, d["x"], layout=case.layout), put(backend, d["dy"])
    y = F.max_pool2d(x, case.k, **case.kw)
    dx = F.max_pool2d_backward(dy, x, case.k, **case.kw)
    check_placed(backend, "float64", y, dx)
    assert tuple(y.shape) == d["max"].shape and tuple(dx.shape) == d["x"].shape
    close(y, d["max"])
    close(dx, d["dmax"])


@pytest.mark.parametrize("cip", [True, False], ids=["count_include_pad", "exclude_pad"])
@pytest.mark.parametrize("spec, case", grid(POOL_CASES, POOL_ON_JAX))
def test_avg_pool2d_vs_naive(spec, case, cip):
    backend = make_backend(spec)
    d = pool_data(case)
    x, dy = put(backend, d["x"], layout=case.layout), put(backend, d["dy"])
    y = F.avg_pool2d(x, case.k, **case.kw, count_include_pad=cip)
    dx = F.avg_pool2d_backward(dy, x, case.k, **case.kw, count_include_pad=cip)
    check_placed(backend, "float64", y, dx)
    assert tuple(y.shape) == d["avg", cip].shape
    close(y, d["avg", cip])
    close(dx, d["davg", cip])


def _torch_pool(torch, op, x, case, **extra):
    """torch pooling on a host array; asymmetric pads are applied with F.pad first."""
    import torch.nn.functional as tF
    xt = torch.tensor(x, requires_grad=True)
    k = _pair(case.k)
    s = _pair(case.k if case.stride is None else case.stride)
    if case.symmetric:
        inp, padding = xt, tuple(p0 for p0, _ in case.pads)
    else:
        (t, b), (l, r) = case.pads
        inp, padding = tF.pad(xt, (l, r, t, b), value=-math.inf if op == "max" else 0.0), 0
    fn = tF.max_pool2d if op == "max" else tF.avg_pool2d
    return xt, fn(inp, k, s, padding, ceil_mode=case.rounding == "ceil", **extra)


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.id)
def test_pools_vs_torch(case):
    torch = torch_or_skip()
    d = pool_data(case)
    xt, yt = _torch_pool(torch, "max", d["x"], case)
    yt.backward(torch.tensor(d["dy"]))
    close(F.max_pool2d(d["x"], case.k, **case.kw), yt.detach().numpy())
    close(F.max_pool2d_backward(d["dy"], d["x"], case.k, **case.kw), xt.grad.numpy())
    for cip in (True, False):
        if not case.symmetric and not cip:
            continue  # torch cannot exclude an asymmetric padding; the naive test covers it
        xt, yt = _torch_pool(torch, "avg", d["x"], case, count_include_pad=cip)
        yt.backward(torch.tensor(d["dy"]))
        close(F.avg_pool2d(d["x"], case.k, **case.kw, count_include_pad=cip), yt.detach().numpy())
        close(F.avg_pool2d_backward(d["dy"], d["x"], case.k, **case.kw, count_include_pad=cip),
              xt.grad.numpy())


@pytest.mark.parametrize("spec", NOT_JAX)
def test_global_pooling(spec, rng):
    backend = make_backend(spec)
    hx = rng.standard_normal((3, 4, 5, 6))
    x = put(backend, hx)
    close(F.max_pool2d(x, (5, 6)), hx.max(axis=(2, 3), keepdims=True))
    close(F.avg_pool2d(x, (5, 6)), hx.mean(axis=(2, 3), keepdims=True))
    dy = rng.standard_normal((3, 4, 1, 1))
    close(F.avg_pool2d_backward(put(backend, dy), x, (5, 6)), np.broadcast_to(dy / 30, hx.shape))
    onehot = (hx == hx.max(axis=(2, 3), keepdims=True)) * dy
    close(F.max_pool2d_backward(put(backend, dy), x, (5, 6)), onehot)


@pytest.mark.parametrize("op", [F.max_pool2d, F.avg_pool2d], ids=["max", "avg"])
def test_pool_1x1_output_is_not_a_view_of_x(op, rng):
    """A 1x1 window reads x through a strided view; the result must still be a new array."""
    x = rng.standard_normal((2, 3, 5, 7))
    y = op(x, 1, stride=2)
    assert not np.shares_memory(y, x)
    close(y, x[:, :, ::2, ::2])


@pytest.mark.parametrize("spec", NOT_JAX)
def test_max_pool_ties_go_to_first(spec, rng):
    backend = make_backend(spec)
    hx = rng.integers(0, 2, size=(2, 2, 6, 6)).astype(np.float64)  # many ties
    dy = rng.standard_normal((2, 2, 3, 3))
    dx = F.max_pool2d_backward(put(backend, dy), put(backend, hx), 3, stride=2, pad=1, rounding="floor")
    close(dx, max_pool2d_backward_naive(dy, hx, 3, 2, ((1, 1), (1, 1))))


def test_max_pool_ties_vs_torch(rng):
    torch = torch_or_skip()
    case = PoolCase("ties", 2, 2, (6, 6), 3, stride=2, pad=1, rounding="floor")
    hx = rng.integers(0, 2, size=(2, 2, 6, 6)).astype(np.float64)
    dy = rng.standard_normal((2, 2, 3, 3))
    xt, yt = _torch_pool(torch, "max", hx, case)
    yt.backward(torch.tensor(dy))
    close(F.max_pool2d_backward(dy, hx, 3, stride=2, pad=1, rounding="floor"), xt.grad.numpy())


# ----------------------------------------------------------------------------- NaN / Inf

@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_conv2d_nan_inf_like_torch(backend, rng):
    torch = torch_or_skip()
    import torch.nn.functional as tF
    hx = rng.standard_normal((2, 2, 6, 7))
    hx[0, 0, 1, 2] = np.nan
    hx[0, 1, 4, 4] = np.inf
    hx[1, 0, 0, 0] = -np.inf
    hx[1, 1, 5, 6] = np.inf
    hx[1, 0, 2, 5] = np.inf
    hx[1, 1, 2, 5] = -np.inf
    hw_ = rng.uniform(0.5, 1.5, size=(3, 2, 3, 3)) * rng.choice([-1.0, 1.0], size=(3, 2, 3, 3))
    ref = tF.conv2d(torch.tensor(hx), torch.tensor(hw_), padding=1).numpy()
    ours = to_numpy(F.conv2d(put(backend, hx), put(backend, hw_), pad=1))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    assert np.isnan(ref).any() and np.isinf(ref).any()
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], **TOL["float64"])


def _nan_inf_input(rng):
    hx = rng.standard_normal((2, 2, 6, 6))
    hx[0, 0, 0, 1] = np.nan      # one NaN per window (2x2, stride 2)
    hx[0, 1, 3, 3] = np.nan
    hx[1, 0, 2, 2] = np.inf
    hx[1, 1, 4, 5] = -np.inf
    hx[1, 1, 0:2, 0:2] = -np.inf  # a whole window of -inf
    return hx


@pytest.mark.parametrize("limit", [None, 1], ids=["one-chunk", "chunk-per-sample"])
def test_max_pool_nan_inf_like_torch(backend, rng, limit):
    """Also one sample per chunk: sample 0 (NaN) and sample 1 (no NaN) take different paths."""
    torch = torch_or_skip()
    import torch.nn.functional as tF
    hx = _nan_inf_input(rng)
    dy = rng.standard_normal((2, 2, 3, 3))
    xt = torch.tensor(hx, requires_grad=True)
    yt = tF.max_pool2d(xt, 2)
    yt.backward(torch.tensor(dy))
    x = put(backend, hx)
    with xpconv.workspace_limit(limit or xpconv.get_workspace_limit()):
        close(F.max_pool2d(x, 2), yt.detach().numpy())
        close(F.max_pool2d_backward(put(backend, dy), x, 2), xt.grad.numpy())


@pytest.mark.parametrize("spec", NOT_JAX)
def test_avg_pool_nan_inf_like_torch(spec, rng):
    backend = make_backend(spec)
    torch = torch_or_skip()
    import torch.nn.functional as tF
    hx = _nan_inf_input(rng)
    ref = tF.avg_pool2d(torch.tensor(hx), 3, 2, 1, ceil_mode=True).numpy()
    ours = to_numpy(F.avg_pool2d(put(backend, hx), 3, stride=2, pad=1, rounding="ceil"))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    close(ours, ref)


@pytest.mark.parametrize("spec", NOT_JAX)
def test_max_pool_several_nans_in_window_like_torch(spec):
    backend = make_backend(spec)
    """PyTorch's loop is ``if (val > maxval || isnan(val))``: the LAST NaN of a window wins."""
    torch = torch_or_skip()
    import torch.nn.functional as tF
    hx = np.array([[[[1.0, np.nan, 2.0, np.nan]]]])
    xt = torch.tensor(hx, requires_grad=True)
    tF.max_pool2d(xt, (1, 4)).backward(torch.ones(1, 1, 1, 1, dtype=torch.float64))
    ours = F.max_pool2d_backward(put(backend, np.ones((1, 1, 1, 1))), put(backend, hx), (1, 4))
    close(ours, xt.grad.numpy())
    close(ours, max_pool2d_backward_naive(np.ones((1, 1, 1, 1)), hx, (1, 4)))


def test_max_pool_neg_inf_with_padding_like_torch(backend):
    torch = torch_or_skip()
    import torch.nn.functional as tF
    hx = np.full((1, 2, 3, 4), -np.inf)
    hx[0, 1, 1, 1] = 0.5
    dy = np.arange(1, 1 + 2 * 2 * 3, dtype=np.float64).reshape(1, 2, 2, 3)
    xt = torch.tensor(hx, requires_grad=True)
    yt = tF.max_pool2d(xt, 3, 2, 1, ceil_mode=True)
    yt.backward(torch.tensor(dy))
    x = put(backend, hx)
    y = F.max_pool2d(x, 3, stride=2, pad=1, rounding="ceil")
    dx = F.max_pool2d_backward(put(backend, dy), x, 3, stride=2, pad=1, rounding="ceil")
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    assert to_numpy(dx).sum() == dy.sum()  # every window's gradient reached a real element


# ============================================================================ im2col / col2im

@dataclass(frozen=True)
class ColCase:
    id: str
    N: int
    C: int
    hw: tuple
    k: tuple
    stride: object = 1
    pad: object = 0
    dilation: object = 1
    rounding: str = "exact"
    layout: str = "contiguous"

    @property
    def pads(self):
        return explicit_pads(self.pad, self.hw, self.k, self.stride, self.dilation)

    @property
    def kw(self):
        return dict(stride=self.stride, pad=self.pad, dilation=self.dilation, rounding=self.rounding)


COL_CASES = [
    ColCase("3x3-overlap-pad1", 2, 3, (5, 4), (3, 3), pad=1),
    ColCase("3x3-s2-padtblr-floor", 1, 2, (6, 7), (3, 3), stride=2, pad=((1, 0), (2, 1)), rounding="floor"),
    ColCase("2x3-s21-same", 3, 2, (5, 6), (2, 3), stride=(2, 1), pad="same"),
    ColCase("3x2-dil2-s3-full-floor", 1, 2, (6, 5), (3, 2), stride=3, pad="full", dilation=2, rounding="floor"),
    ColCase("1x1-s2-floor", 2, 3, (5, 4), (1, 1), stride=2, rounding="floor"),
    ColCase("5x5-pad2-permuted", 2, 2, (5, 6), (5, 5), pad=2, layout="permuted"),
    ColCase("3x3-batch0", 0, 2, (4, 4), (3, 3), pad=1),
]


@functools.cache
def col_data(case: ColCase):
    rng = seeded(case.id)
    x = rng.standard_normal((case.N, case.C, *case.hw))
    geo = dict(stride=case.stride, pads=case.pads, dilation=case.dilation)
    col = im2col_naive(x, *case.k, **geo)
    c = rng.standard_normal(col.shape)
    return dict(x=x, col=col, c=c, back=col2im_naive(c, x.shape, *case.k, **geo))


@pytest.mark.parametrize("spec, case", grid(COL_CASES, {"3x3-s2-padtblr-floor"}))
def test_im2col_col2im_vs_naive(spec, case):
    backend = make_backend(spec)
    d = col_data(case)
    x = put(backend, d["x"], layout=case.layout)
    col = F.im2col(x, *case.k, **case.kw)
    back = F.col2im(put(backend, d["c"], layout="strided" if case.layout != "contiguous" else "contiguous"),
                    d["x"].shape, *case.k, **case.kw)
    check_placed(backend, "float64", col, back)
    assert tuple(col.shape) == d["col"].shape and tuple(back.shape) == d["x"].shape
    close(col, d["col"])
    close(back, d["back"])


@pytest.mark.parametrize("case", COL_CASES, ids=lambda c: c.id)
def test_im2col_col2im_adjoint(backend, case):
    """<im2col(x), c> == <x, col2im(c)> for random x and c."""
    d = col_data(case)
    col = to_numpy(F.im2col(put(backend, d["x"]), *case.k, **case.kw))
    back = to_numpy(F.col2im(put(backend, d["c"]), d["x"].shape, *case.k, **case.kw))
    lhs, rhs = float(np.sum(col * d["c"])), float(np.sum(d["x"] * back))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", COL_CASES, ids=lambda c: c.id)
def test_im2col_col2im_vs_torch_unfold_fold(case):
    torch = torch_or_skip()
    import torch.nn.functional as tF
    d = col_data(case)
    N, C, H, W = d["x"].shape
    (t, b), (l, r) = case.pads
    kh, kw = case.k
    opts = dict(kernel_size=case.k, dilation=_pair(case.dilation), stride=_pair(case.stride))
    cols = tF.unfold(tF.pad(torch.tensor(d["x"]), (l, r, t, b)), **opts)       # (N, C*K, L)
    ref = cols.permute(0, 2, 1).reshape(-1, C * kh * kw).numpy()
    close(F.im2col(d["x"], *case.k, **case.kw), ref)
    L = cols.shape[2]
    c = torch.tensor(d["c"]).reshape(N, L, C * kh * kw).permute(0, 2, 1)
    folded = tF.fold(c, output_size=(H + t + b, W + l + r), **opts)[:, :, t:t + H, l:l + W]
    close(F.col2im(d["c"], d["x"].shape, *case.k, **case.kw), folded.numpy())


# ============================================================================ numerical gradients

GRAD_BACKENDS = ["numpy", "array_api_strict:device1"]


def _scalar(backend, fn, r):
    """x (host) -> float(sum(fn(x) * r)), computed with xpconv on ``backend``."""
    return lambda a: float(np.sum(to_numpy(fn(backend.asarray(a, dtype="float64"))) * r))


@pytest.mark.parametrize("spec", GRAD_BACKENDS)
def test_conv2d_grads_numerical(spec):
    backend = make_backend(spec)
    rng = seeded("conv-numgrad")
    x, w, b = rng.standard_normal((2, 4, 5, 4)), rng.standard_normal((4, 2, 2, 3)), rng.standard_normal(4)
    kw = dict(stride=(2, 1), pad=((1, 0), (1, 2)), dilation=(1, 2), groups=2, rounding="floor")
    r = rng.standard_normal(to_numpy(F.conv2d(put(backend, x), put(backend, w), **kw)).shape)
    X, Wt, B = put(backend, x), put(backend, w), put(backend, b)
    dx, dw, db = F.conv2d_backward(put(backend, r), X, Wt, **kw)
    close(dx, numerical_grad(_scalar(backend, lambda a: F.conv2d(a, Wt, B, **kw), r), x), rtol=1e-6, atol=1e-7)
    close(dw, numerical_grad(_scalar(backend, lambda a: F.conv2d(X, a, B, **kw), r), w), rtol=1e-6, atol=1e-7)
    close(db, numerical_grad(_scalar(backend, lambda a: F.conv2d(X, Wt, a, **kw), r), b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", GRAD_BACKENDS)
@pytest.mark.parametrize("op", ["max", "avg", "avg-exclude-pad"])
def test_pool_grads_numerical(spec, op):
    backend = make_backend(spec)
    rng = seeded("pool-numgrad")
    x = rng.permutation(np.arange(2 * 2 * 5 * 6)).reshape(2, 2, 5, 6) * 0.1 + rng.uniform(0, 0.01, (2, 2, 5, 6))
    kw = dict(stride=2, pad=1, rounding="ceil")
    if op == "max":
        fwd = lambda a: F.max_pool2d(a, 3, **kw)
        bwd = lambda dy, a: F.max_pool2d_backward(dy, a, 3, **kw)
    else:
        cip = op == "avg"
        fwd = lambda a: F.avg_pool2d(a, 3, **kw, count_include_pad=cip)
        bwd = lambda dy, a: F.avg_pool2d_backward(dy, a, 3, **kw, count_include_pad=cip)
    r = rng.standard_normal(to_numpy(fwd(put(backend, x))).shape)
    close(bwd(put(backend, r), put(backend, x)), numerical_grad(_scalar(backend, fwd, r), x),
          rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", GRAD_BACKENDS)
def test_im2col_col2im_grads_numerical(spec):
    """im2col's gradient is col2im, and col2im's is im2col (both linear)."""
    backend = make_backend(spec)
    rng = seeded("col-numgrad")
    x = rng.standard_normal((1, 2, 4, 5))
    kw = dict(stride=2, pad=1, dilation=1, rounding="floor")
    c = rng.standard_normal(to_numpy(F.im2col(put(backend, x), 3, 2, **kw)).shape)
    g = F.col2im(put(backend, c), x.shape, 3, 2, **kw)
    close(g, numerical_grad(_scalar(backend, lambda a: F.im2col(a, 3, 2, **kw), c), x), rtol=1e-6, atol=1e-7)
    g = F.im2col(put(backend, x), 3, 2, **kw)
    close(g, numerical_grad(_scalar(backend, lambda a: F.col2im(a, x.shape, 3, 2, **kw), x), c),
          rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel", [2, (2, 3), (3, 1)], ids=["2x2", "2x3", "3x1"])
def test_max_pool_disjoint_windows_with_leftover_like_torch(backend, rng, kernel):
    """stride = kernel with rounding="floor" leaving rows/columns over (7x9 input): the
    block path on libraries other than NumPy; ties, NaN (several in a window), -inf."""
    torch = torch_or_skip()
    import torch.nn.functional as tF
    hx = np.round(rng.standard_normal((2, 3, 7, 9)), 0)     # rounded: ties in many windows
    hx[0, 0, 0, :2] = np.nan
    hx[0, 0, 1, 0] = np.nan
    hx[1, 2, 2:4, 3:6] = -np.inf
    hx[0, 1, 6, :] = 100.0                                  # past the last window row (2x2, 3x1)
    k = _pair(kernel)
    dy = rng.standard_normal((2, 3, 7 // k[0], 9 // k[1]))
    xt = torch.tensor(hx, requires_grad=True)
    yt = tF.max_pool2d(xt, k)
    yt.backward(torch.tensor(dy))
    x = put(backend, hx)
    y = F.max_pool2d(x, k, rounding="floor")
    dx = F.max_pool2d_backward(put(backend, dy), x, k, rounding="floor")
    assert_on(backend, y, dx)
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    close(dx, max_pool2d_backward_naive(dy, hx, k))


def test_remembered_geometry_still_refuses_what_it_would_refuse():
    """window2d remembers geometries by the options' repr: 2 and 2.0 are different keys, so a
    float stride is refused after the int stride's geometry was remembered, and before."""
    for _ in range(2):
        with pytest.raises(TypeError, match="stride"):
            window2d("conv", (9, 9), (3, 3), 2.0)
        assert window2d("conv", (9, 9), (3, 3), 2).out_hw == (4, 4)
    assert window2d("conv", (9, 9), (3, 3), 2) is window2d("conv", (9, 9), (3, 3), 2)
    with pytest.raises(ValueError, match="do not tile"):   # nor does another shape pass
        window2d("conv", (8, 8), (3, 3), 2)
