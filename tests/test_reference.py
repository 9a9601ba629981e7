"""The vectorized NumPy float64 references of ``xpconv selftest``
(:mod:`xpconv.diagnostics.reference`) against the plain loops of ``tests/naive.py``:
the device check that users run is itself checked against the definitions."""
from __future__ import annotations

import numpy as np
import pytest

from tests.naive import (
    avg_pool2d_backward_naive,
    avg_pool2d_naive,
    col2im_naive,
    conv2d_backward_naive,
    conv2d_naive,
    im2col_naive,
    max_pool2d_backward_naive,
    max_pool2d_naive,
)
from xpconv.diagnostics import reference

# label: x shape, w shape, stride, pad ((top, bottom), (left, right)), dilation, groups
CONV = {
    "3x3 p1": ((2, 3, 6, 5), (4, 3, 3, 3), 1, ((1, 1), (1, 1)), 1, 1),
    "3x2 g2 s(2,1) d(1,2) asym": ((2, 4, 7, 6), (6, 2, 3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    "1x1 s2 depthwise": ((1, 3, 5, 5), (3, 1, 1, 1), 2, ((0, 0), (0, 0)), 1, 3),
}
# label: x shape, kernel, stride, pad
POOL = {
    "2x2 s2": ((2, 3, 6, 6), (2, 2), 2, ((0, 0), (0, 0))),
    "3x3 s2 p1": ((1, 2, 7, 6), (3, 3), 2, ((1, 1), (1, 1))),
    "2x3 s(2,1) asym": ((2, 1, 7, 6), (2, 3), (2, 1), ((1, 0), (1, 1))),
}


def _rng(label: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, label)))


@pytest.mark.parametrize("label", CONV)
def test_conv2d_forward_and_backward_match_the_loops(label):
    x_shape, w_shape, stride, pad, dilation, groups = CONV[label]
    rng = _rng(label)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    y = reference.conv2d(x, w, b, stride, pad, dilation, groups)
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, stride, pad, dilation, groups), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(reference.conv2d_backward(dy, x, w, stride, pad, dilation, groups),
                         conv2d_backward_naive(dy, x, w, stride, pad, dilation, groups), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label", POOL)
def test_max_pool2d_forward_and_backward_match_the_loops(label):
    x_shape, k, stride, pad = POOL[label]
    rng = _rng(label)
    x = rng.integers(-3, 4, x_shape).astype(np.float64)      # ties: the first maximum gets the gradient
    y = reference.max_pool2d(x, k, stride, pad)
    np.testing.assert_array_equal(y, max_pool2d_naive(x, k, stride, pad))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(reference.max_pool2d_backward(dy, x, k, stride, pad),
                               max_pool2d_backward_naive(dy, x, k, stride, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("label", POOL)
def test_avg_pool2d_forward_and_backward_match_the_loops(label, count_include_pad):
    x_shape, k, stride, pad = POOL[label]
    rng = _rng(label)
    x = rng.standard_normal(x_shape)
    y, divisor = reference.avg_pool2d(x, k, stride, pad, count_include_pad)
    np.testing.assert_allclose(y, avg_pool2d_naive(x, k, stride, pad, count_include_pad=count_include_pad),
                               rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(reference.avg_pool2d_backward(dy, x, k, stride, pad, divisor),
                               avg_pool2d_backward_naive(dy, x, k, stride, pad,
                                                         count_include_pad=count_include_pad),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("label", CONV)
def test_im2col_and_col2im_match_the_loops(label):
    x_shape, w_shape, stride, pad, dilation, _ = CONV[label]
    kh, kw = w_shape[2:]
    rng = _rng(label)
    x = rng.standard_normal(x_shape)
    col = reference.im2col(x, (kh, kw), stride, pad, dilation)
    np.testing.assert_array_equal(col, im2col_naive(x, kh, kw, stride, pad, dilation))
    dcol = rng.standard_normal(col.shape)
    np.testing.assert_allclose(reference.col2im(dcol, x_shape, (kh, kw), stride, pad, dilation),
                               col2im_naive(dcol, x_shape, kh, kw, stride, pad, dilation), rtol=1e-12, atol=1e-12)
