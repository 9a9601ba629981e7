"""The workspace limit bounds scratch memory (the README's Memory paragraph).

Measured with tracemalloc, which NumPy reports its allocations to. The inputs exist
before tracing starts, so the traced peak is the op's outputs and gradients plus its
scratch; the bound on the scratch is

    peak - (outputs + gradients) <= 2 * limit + one sample's columns (C*K*OH*OW)

(at least one sample goes per chunk, so below one sample's columns the chunk is one
sample). The shapes make every op run in several chunks under the limits used.
"""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import traced_extra_bytes
from xpconv import functional as F

LIMITS = [2**20, 3 * 2**20]


def _one_sample_cols(x, k, out_hw) -> int:
    C = x.shape[1]
    return C * k[0] * k[1] * out_hw[0] * out_hw[1] * x.itemsize


CONV_CASES = {  # x shape, FN, kernel, stride, pad
    "3x3-pad1": ((24, 8, 24, 24), 8, 3, 1, 1),
    "5x5-s2": ((24, 6, 29, 29), 12, 5, 2, 0),
    "1x1-s2": ((24, 16, 24, 24), 16, 1, 2, 0),       # input-gradient chunks bigger than columns
    "deep-3x3": ((24, 16, 6, 6), 64, 3, 1, 1),        # FN > OH*OW: dw terms bigger than columns
}


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv_forward_backward_scratch_is_bounded(case, limit):
    shape, FN, k, s, p = CONV_CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((FN, shape[1], k, k))
    b = rng.standard_normal(FN)
    OH = (shape[2] + 2 * p - k) // s + 1
    dy = rng.standard_normal((shape[0], FN, OH, OH))

    def run():
        y = F.conv2d(x, w, b, stride=s, pad=p, rounding="floor")
        return (y, *F.conv2d_backward(dy, x, w, stride=s, pad=p, rounding="floor"))

    with xpconv.workspace_limit(limit):
        extra = traced_extra_bytes(run)
    bound = 2 * limit + _one_sample_cols(x, (k, k), (OH, OH))
    assert extra <= bound, f"{extra / 2**20:.2f} MiB of scratch > bound {bound / 2**20:.2f} MiB"


def test_convolution_layer_scratch_beyond_its_kept_columns_is_bounded():
    """The layer keeps its forward columns for backward when the batch is one chunk:
    that is the layer's state (at most the limit), on top of the op's bounded scratch."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 8, 24, 24))
    conv = xpconv.Convolution(rng.standard_normal((8, 8, 3, 3)), rng.standard_normal(8), pad=1)
    dy = rng.standard_normal((8, 8, 24, 24))
    limit = 3 * 2**20
    kept = x.shape[0] * _one_sample_cols(x, (3, 3), (24, 24))
    assert kept <= limit  # the whole batch is one chunk: the columns are kept

    def run():
        y = conv.forward(x)
        return y, conv.backward(dy), conv.dW, conv.db

    with xpconv.workspace_limit(limit):
        extra = traced_extra_bytes(run)
    assert extra <= 2 * limit + kept, f"{extra / 2**20:.2f} MiB"


POOL_CASES = {  # kernel, stride, pad
    "3x3-s1-pad1": (3, 1, 1),
    "2x2-s2": (2, 2, 0),
    "3x3-s2-pad1": (3, 2, 1),
}


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=list(POOL_CASES))
def test_pool_forward_backward_scratch_is_bounded(case, mode, limit):
    k, s, p = POOL_CASES[case]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 16, 32, 32))               # 4 MiB of float64
    x[0, 0, 0, :3] = np.nan                                  # NaN windows take the NaN-mask path
    OH = (32 + 2 * p - k) // s + 1
    dy = rng.standard_normal((32, 16, OH, OH))
    forward, backward = {"max": (F.max_pool2d, F.max_pool2d_backward),
                         "avg": (F.avg_pool2d, F.avg_pool2d_backward)}[mode]

    def run():
        return forward(x, k, s, p, rounding="floor"), backward(dy, x, k, s, p, rounding="floor")

    with xpconv.workspace_limit(limit):
        extra = traced_extra_bytes(run)
    bound = 2 * limit + _one_sample_cols(x, (k, k), (OH, OH))
    assert extra <= bound, f"{extra / 2**20:.2f} MiB of scratch > bound {bound / 2**20:.2f} MiB"
