"""``Convolution(W, 0)``: a number as the bias, as the book's ch07/apply_filter.py builds it."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import assert_on


@pytest.mark.parametrize("value", [0, 0.5, np.float64(-2.0)])
def test_a_number_is_a_constant_bias_in_W_dtype_and_place(backend, value):
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal((2, 1, 5, 5))
    layer = xpconv.Convolution(backend.asarray(w, "float32"), value)
    assert_on(backend, layer.b)
    assert layer.b.dtype == backend.dtype("float32") and tuple(layer.b.shape) == (4,)
    np.testing.assert_array_equal(xpconv.to_numpy(layer.b), np.full(4, float(value), np.float32))
    reference = xpconv.Convolution(backend.asarray(w, "float32"), backend.asarray(np.full(4, float(value)), "float32"))
    xd = backend.asarray(x, "float32")
    np.testing.assert_array_equal(xpconv.to_numpy(layer.forward(xd)), xpconv.to_numpy(reference.forward(xd)))


def test_a_bool_is_not_a_bias():
    with pytest.raises(TypeError, match=r"Convolution: expected b to be an array .*got bool"):
        xpconv.Convolution(np.ones((4, 1, 3, 3)), True)
