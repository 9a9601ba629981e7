"""The GPU launch proxy for the op kernels, measured on torch (CPU and ``meta``).

A ``TorchDispatchMode`` sees every aten op that reaches the backend: each op other than a
view, an allocation or metadata is at least one kernel launch on a GPU, and
``_local_scalar_dense`` / ``is_nonzero`` / ``nonzero`` are blocking device-to-host syncs.
The ``meta`` device gives the counts for large shapes with no compute; the tests make
xpconv treat it as a GPU to check the GPU workspace default.
"""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from xpconv import _backends, functional as F, workspace
from xpconv._kernels import fastpaths

torch = pytest.importorskip("torch", reason="the launch proxy counts torch's aten ops")
from torch.utils._python_dispatch import TorchDispatchMode

# views, allocations without a fill, metadata: no kernel launch
NOT_LAUNCHES = {"view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "slice",
                "select", "unsqueeze", "squeeze", "reshape", "alias", "detach", "lift_fresh",
                "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                "_reshape_alias", "unbind", "split", "view_as", "expand_as"}
SYNCS = {"_local_scalar_dense", "is_nonzero", "nonzero", "item"}


class CountOps(TorchDispatchMode):
    """Counts the aten ops that launch kernels (``ops``) and the blocking syncs (``syncs``),
    with the kernels choosing their paths as on a GPU (``fastpaths.as_on_a_gpu``)."""

    def __init__(self, *, forbid_syncs: bool = False):
        super().__init__()
        self.ops, self.syncs, self.forbid_syncs = [], [], forbid_syncs
        self._as_gpu = fastpaths.as_on_a_gpu()

    def __enter__(self):
        self._as_gpu.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._as_gpu.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCS:
            if self.forbid_syncs:
                raise AssertionError(f"blocking device-to-host sync: aten.{name}")
            self.syncs.append(name)
        elif name not in NOT_LAUNCHES:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def meta_is_a_gpu(monkeypatch):
    """xpconv's torch backend decides "GPU" by device type: let it count meta as one."""
    monkeypatch.setattr(_backends._TorchBackend, "gpu_types", ("cuda", "meta"))
    return xpconv.device("torch:meta")


@pytest.fixture
def chunk_counts(monkeypatch):
    """The number of chunks of every ``workspace.chunked`` call of the conv kernels."""
    from xpconv._kernels import conv as _conv
    counts, real = [], workspace.chunked

    def spy(*args, **kwargs):
        chunks, workers = real(*args, **kwargs)
        counts.append(len(chunks))
        return chunks, workers

    monkeypatch.setattr(_conv, "chunked", spy)
    return counts


def _big_conv(dev_type):
    x = torch.empty((64, 64, 56, 56), device=dev_type)
    w = torch.empty((64, 64, 3, 3), device=dev_type)
    b = torch.empty(64, device=dev_type)
    return x, w, b


def test_workspace_default_is_per_device(meta_is_a_gpu):
    assert workspace.default_limit(xpconv.device("cpu")) == 8 * 2**20
    assert workspace.default_limit(xpconv.device("torch")) == 8 * 2**20
    assert workspace.default_limit(xpconv.device("array_api_strict")) == 8 * 2**20
    assert not xpconv.device("torch").is_gpu and meta_is_a_gpu.is_gpu
    assert workspace.default_limit(meta_is_a_gpu) == 512 * 2**20
    assert workspace.get_workspace_limit(torch.empty(1, device="meta")) == 512 * 2**20
    with xpconv.workspace_limit(2**20):  # an override wins on every device
        assert workspace.get_workspace_limit(meta_is_a_gpu) == 2**20
        assert workspace.get_workspace_limit(np.ones(1)) == 2**20
    assert workspace.get_workspace_limit(meta_is_a_gpu) == 512 * 2**20


def test_big_conv_at_the_gpu_default_is_few_chunks_and_launches(meta_is_a_gpu, chunk_counts):
    """conv 3x3 64->64 pad 1 on (64, 64, 56, 56), forward + backward: <= 2 chunks, <= 40 ops."""
    x, w, b = _big_conv("meta")
    with CountOps(forbid_syncs=True) as count:
        y = F.conv2d(x, w, b, pad=1)
        F.conv2d_backward(torch.empty_like(y), x, w, pad=1)
    assert chunk_counts and max(chunk_counts) <= 2, chunk_counts
    assert len(count.ops) <= 40, (len(count.ops), count.ops)


def test_big_conv_on_a_cpu_device_keeps_the_small_default(chunk_counts):
    x, w, b = _big_conv("meta")  # meta is not a GPU by default: the CPU's 8 MiB
    F.conv2d(x, w, b, pad=1)
    assert chunk_counts == [64]  # one 7 MiB sample per chunk
    with xpconv.workspace_limit(512 * 2**20):
        F.conv2d(x, w, b, pad=1)
    assert chunk_counts[-1] == 1


@pytest.mark.parametrize("shape, budget", [((100, 30, 24, 24), 8), ((100, 64, 7, 7), 9)],
                         ids=["SimpleConvNet-24x24", "floor-7x7"])
def test_block_max_pool_is_a_few_ops_and_never_syncs(shape, budget):
    """2x2 stride 2 max pool, forward + backward: SimpleConvNet's (tiling) and one that
    leaves a row and a column over (rounding="floor").

    Measured: 29 and 30 ops and a sync each before the block path (per-tap masks, a NaN
    probe), 12 and 13 after, 8 and 9 with the window ranks and the zero kept on the
    device (``fastpaths.constant``: built by the first call, counted from the second).
    """
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal(shape), dtype=torch.float32)
    pool = xpconv.Pooling(2, 2, stride=2, rounding="floor")
    with fastpaths.as_on_a_gpu():                         # builds the GPU path's constants
        pool.backward(pool.forward(x))
    with CountOps(forbid_syncs=True) as count:
        pool.backward(pool.forward(x))
    assert len(count.ops) <= budget, (len(count.ops), count.ops)
    assert "arange" not in count.ops and "scalar_tensor" not in count.ops, count.ops


def test_constants_are_built_once_per_device_and_dtype():
    """``fastpaths.constant``: outside NumPy one array per (library, device, dtype, key), of
    the asked dtype on ``like``'s device; NumPy gets a fresh array every call."""
    x32, x64 = torch.ones(3), torch.ones(3, dtype=torch.float64)
    zero = fastpaths.constant(0, x32)
    assert zero is fastpaths.constant(0, x32) and zero.dtype == torch.float32 and zero.ndim == 0
    assert float(zero) == 0.0
    assert fastpaths.constant(0, x64).dtype == torch.float64
    assert fastpaths.constant(0, torch.ones(3, device="meta")).device.type == "meta"
    nan = fastpaths.constant(float("nan"), x32)
    assert nan is fastpaths.constant(float("nan"), x32) and bool(torch.isnan(nan))
    ranks = fastpaths.constant(lambda xp, dtype, where: xp.arange(4, dtype=dtype, device=where), x32,
                             torch.int8, key="test ranks")
    assert ranks is fastpaths.constant(lambda *a: None, x32, torch.int8, key="test ranks")
    assert ranks.dtype == torch.int8 and ranks.tolist() == [0, 1, 2, 3]
    h = np.ones(2, dtype=np.float32)
    assert fastpaths.constant(0, h) is not fastpaths.constant(0, h) and fastpaths.constant(0, h).dtype == np.float32


def test_keep_where_outside_numpy_is_one_op():
    """``keep_where(keep, x)``: one ``where`` (the zero is no fill kernel per call), NaN kept
    where ``keep`` and dropped elsewhere, as ``torch.where``."""
    x = torch.tensor([1.0, float("nan"), float("nan"), -2.0])
    keep = torch.tensor([True, True, False, False])
    fastpaths.keep_where(keep, x)
    with CountOps(forbid_syncs=True) as count:
        out = fastpaths.keep_where(keep, x)
    assert count.ops == ["where"], count.ops
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out.numpy(), torch.where(keep, x, 0.0).numpy())


POOL_CONFIGS = [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((1, 4), (1, 4), 0)]


@pytest.mark.parametrize("kernel, stride, pad", POOL_CONFIGS)
@pytest.mark.parametrize("with_nan", [False, True], ids=["finite", "nan"])
def test_no_sync_in_conv_and_pool_forward_backward(kernel, stride, pad, with_nan):
    rng = np.random.default_rng(1)
    hx = rng.standard_normal((3, 4, 8, 8))
    if with_nan:
        hx[0, 1, 2, :3] = np.nan
    x = torch.tensor(hx)
    w = torch.tensor(rng.standard_normal((5, 4, 3, 3)))
    b = torch.tensor(rng.standard_normal(5))
    conv = xpconv.Convolution(w, b, pad=1)
    pools = [xpconv.Pooling(*((kernel,) * 2 if isinstance(kernel, int) else kernel), stride=stride,
                            pad=pad, mode=mode, rounding="floor") for mode in ("max", "avg")]
    with CountOps(forbid_syncs=True):
        y = conv.forward(x)
        conv.backward(torch.ones_like(y))
        for pool in pools:
            out = pool.forward(x)
            pool.backward(torch.ones_like(out))
        with xpconv.workspace_limit(1):  # the chunked paths too
            y = conv.forward(x)
            conv.backward(torch.ones_like(y))
            for pool in pools:
                out = pool.forward(x)
                pool.backward(torch.ones_like(out))


@pytest.mark.parametrize("spec", ["numpy", "array_api_strict", "torch"])
@pytest.mark.parametrize("cip", [True, False])
def test_float32_stays_float32_for_large_window_counts(spec, cip):
    """A 256 x 256 window (divisor 65,536, where CuPy 13's value-based casting turns
    float32 / int into float64): the average-pool kernels multiply by a host float instead.
    On NumPy >= 2 and torch this holds either way; it pins the output dtype and value."""
    from xpconv._kernels import pool as _pool
    from xpconv._kernels.geometry import window2d
    dev = xpconv.device(spec)
    geom = window2d("test", (256, 256), (256, 256), 256, 0, pooling=True)
    a = dev.asarray(np.full((1, 2, 1, 1), 65536.0), dtype="float32")
    out = _pool._times_inverse_divisor(a, geom, cip)
    assert out.dtype == dev.xp.float32
    np.testing.assert_allclose(xpconv.to_numpy(out), 1.0, rtol=1e-6)
    x = dev.asarray(np.ones((1, 2, 8, 8)), dtype="float32")   # an (OH, OW) divisor array too
    y = F.avg_pool2d(x, 3, pad=1, rounding="ceil", stride=2, count_include_pad=cip)
    dx = F.avg_pool2d_backward(y, x, 3, pad=1, rounding="ceil", stride=2, count_include_pad=cip)
    assert y.dtype == dev.xp.float32 and dx.dtype == dev.xp.float32


def test_lean_softmax_with_loss_matches_torch_cross_entropy():
    """The loss as -sum(where(onehot, log_softmax, E))/N: torch's ``cross_entropy`` and its
    gradient, with huge scores and -inf for classes that are not the label (they add 0,
    never NaN); -inf at the label gives +inf, as in torch."""
    from xpconv.layers.loss import SoftmaxWithLoss
    rng = np.random.default_rng(3)
    hx = rng.standard_normal((6, 5)) * 50
    hx[1, 2] = hx[4, 0] = -np.inf
    t = torch.tensor([0, 1, 4, 2, 3, 1])
    x = torch.tensor(hx, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(x, t)
    ref.backward()
    layer = SoftmaxWithLoss()
    loss = layer.forward(x.detach(), t)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.backward(), x.grad, rtol=1e-12, atol=1e-14)
    hx[3, 2] = -np.inf                                   # the label's own score
    assert float(layer.forward(torch.tensor(hx), t)) == float("inf")
