"""numerical_gradient and the gradient comparison helpers."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import assert_on
from xpconv.gradcheck import assert_gradients_close, compare_gradients, max_relative_error, numerical_gradient

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


# ----------------------------------------------------------------------------- a network's check

BOOK_CHECK = dict(input_dim=(1, 10, 10), conv_param={"filter_num": 10, "filter_size": 3, "pad": 0, "stride": 1},
                  hidden_size=10, output_size=10, weight_init_std=0.01)


def test_books_gradient_check_is_meaningful_on_a_float32_model():
    """The book's ch07/gradient_check.py on xpconv's default float32 SimpleConvNet, its (1, 1)
    label column included: the numerical gradient is taken in float64, so backprop and it
    agree to float32 rounding (in float32 the differences were as large as the gradients)."""
    network = xpconv.SimpleConvNet(**BOOK_CHECK, seed=0)
    x = np.random.default_rng(0).random(100).reshape((1, 1, 10, 10))
    t = np.array([1]).reshape((1, 1))
    grad_num = network.numerical_gradient(x, t)
    grad_backprop = network.gradient(x, t)
    for key in grad_num:
        a, b = to_np(grad_backprop[key]), to_np(grad_num[key])
        diff = np.average(np.abs(a - b))                     # what the book's script prints
        assert diff <= 1e-3 * np.average(np.abs(a)), (key, diff, np.average(np.abs(a)))
        assert grad_num[key].dtype == np.float64 and b.shape == a.shape


@pytest.mark.parametrize("spec", ["numpy", "torch", "array_api_strict:device1"])
def test_network_numerical_gradient_is_the_float64_one_and_leaves_the_model_alone(spec):
    """A float32 model's numerical gradient is its float64 copy's (same weights, upcast), on
    the model's device; parameters and running statistics come back untouched."""
    from tests.helpers import make_backend
    backend = make_backend(spec)
    rng = np.random.default_rng(2)
    host = {"W1": rng.standard_normal((6, 5)), "b1": rng.standard_normal(5), "g": np.ones(5),
            "be": np.zeros(5), "W2": rng.standard_normal((5, 3)), "b2": np.zeros(3)}
    x, t = rng.standard_normal((4, 6)), np.array([0, 2, 1, 2])

    def model(dtype):          # the same float32 weights, in float32 or float64
        put = {k: backend.asarray(v.astype(np.float32), dtype) for k, v in host.items()}
        return xpconv.Sequential([("A1", xpconv.Affine(put["W1"], put["b1"])),
                                  ("BN", xpconv.BatchNormalization(put["g"], put["be"])),
                                  ("R", xpconv.Relu()), ("A2", xpconv.Affine(put["W2"], put["b2"]))])

    net32, net64 = model("float32"), model("float64")
    before = {k: to_np(v).copy() for k, v in net32.state_arrays().items()}
    objects = {k: net32.params[k] for k in net32.params}
    num32, num64 = net32.numerical_gradient(x, t), net64.numerical_gradient(x, t)
    for k in num64:
        assert_on(backend, num32[k])
        assert num32[k].dtype == backend.dtype("float64")
        np.testing.assert_allclose(to_np(num32[k]), to_np(num64[k]), rtol=1e-7, atol=1e-10, err_msg=k)
    assert all(net32.params[k] is objects[k] for k in objects)
    for k, v in net32.state_arrays().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
        assert v.dtype == np.float32, k
