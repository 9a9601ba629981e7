"""numerical_gradient and the gradient comparison helpers."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from xpconv.gradcheck import (assert_gradients_close, compare_gradients, max_relative_error,
                              numerical_gradient)

from conftest import assert_on

to_np = xpconv.to_numpy


def test_sum_of_squares_gives_2x(backend, rng):
    x_host = rng.standard_normal((3, 4))
    x = backend.asarray(x_host, "float64")
    g = numerical_gradient(lambda v: backend.xp.sum(v * v), x)
    assert_on(backend, g)
    assert g.dtype == x.dtype and tuple(g.shape) == (3, 4)
    np.testing.assert_allclose(to_np(g), 2 * x_host, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(to_np(x), x_host)          # x left unchanged


def test_elementwise_function_and_odd_shapes(backend):
    x_host = np.array([[0.3], [-1.2]])[None]                     # (1, 2, 1)
    g = numerical_gradient(lambda v: backend.xp.sum(backend.xp.sin(v) * 3.0),
                           backend.asarray(x_host, "float64"), eps=1e-5)
    np.testing.assert_allclose(to_np(g), 3 * np.cos(x_host), rtol=1e-8)
    g0 = numerical_gradient(lambda v: v ** 3, backend.asarray(np.array(2.0), "float64"))
    assert tuple(g0.shape) == ()
    np.testing.assert_allclose(float(to_np(g0)), 12.0, rtol=1e-7)


def test_float32_and_python_scalar_results():
    x = np.array([1.0, -2.0], np.float32)
    g = numerical_gradient(lambda v: float(v[0]) * 2 + float(v[1]) ** 2, x, eps=1e-2)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, [2.0, -4.0], rtol=1e-3)


def test_numerical_gradient_bad_inputs():
    with pytest.raises(TypeError, match="numerical_gradient: expected x with a floating-point"):
        numerical_gradient(lambda v: 0.0, np.arange(3))
    with pytest.raises(ValueError, match="expected eps > 0"):
        numerical_gradient(lambda v: 0.0, np.ones(2), eps=0)
    with pytest.raises(ValueError, match="expected f to return a scalar; got shape"):
        numerical_gradient(lambda v: v, np.ones(2))
    with pytest.raises(TypeError, match="expected f to be a callable"):
        numerical_gradient(None, np.ones(2))


def test_max_relative_error():
    assert max_relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert max_relative_error(np.zeros(3), np.zeros(3)) == 0.0
    # |1 - 1.1| / 2.1 and |-2 - 2| / 4 = 1
    assert max_relative_error(np.array([1.0, -2.0]), np.array([1.1, 2.0])) == pytest.approx(1.0)
    assert max_relative_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1)
    assert max_relative_error(np.zeros(0), np.zeros(0)) == 0.0
    torch = pytest.importorskip("torch")     # different libraries compare on the host
    assert max_relative_error(torch.tensor([1.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        max_relative_error(np.ones(2), np.ones(3))


def test_compare_and_assert_gradients_close():
    analytic = {"W": np.array([1.0, 2.0]), "b": np.array([0.5])}
    numeric = {"W": np.array([1.0, 2.0 + 1e-9]), "b": np.array([0.6])}
    errors = compare_gradients(analytic, numeric)
    assert set(errors) == {"W", "b"}
    assert errors["W"] == pytest.approx(1e-9 / 4, rel=1e-3)
    assert errors["b"] == pytest.approx(0.1 / 1.1)
    assert_gradients_close({"W": analytic["W"]}, {"W": numeric["W"]}, rtol=1e-8)
    with pytest.raises(AssertionError, match=r"'b': max relative error 0\.0909 > rtol=1e-05") as info:
        assert_gradients_close(analytic, numeric, rtol=1e-5)
    assert "'W'" not in str(info.value)
    with pytest.raises(KeyError, match=r"only in analytic \['b'\], only in numeric \['c'\]"):
        compare_gradients(analytic, {"W": numeric["W"], "c": numeric["b"]})
    # atol: tiny absolute differences around a zero gradient pass
    assert_gradients_close({"x": np.array([1e-12, 1.0])}, {"x": np.array([-1e-12, 1.0])},
                           rtol=1e-6, atol=1e-10)
    with pytest.raises(AssertionError, match="'x'"):
        assert_gradients_close({"x": np.array([1e-12, 1.0])}, {"x": np.array([-1e-12, 1.0])},
                               rtol=1e-6)
