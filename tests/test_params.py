"""A network's ``params``: assignment checks (library, dtype, device, shape, type) and the
flat buffer per dtype whose views are the layers' arrays."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import assert_on, make_backend
from xpconv.optimizers import SGD

TINY = dict(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
            hidden_size=5, output_size=3, weight_init_std=0.3)


def test_assignment_refuses_a_list():
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    with pytest.raises(TypeError, match=r"params\['b3'\]: expected a float32 numpy array of shape "
                                        r"\(3,\) on cpu; got a list"):
        net.params["b3"] = [0.0, 0.0, 0.0]


def test_assignment_refuses_another_dtype():
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    with pytest.raises(TypeError, match=r"params\['W1'\]: expected a float32 numpy array .* got a "
                                        r"float64 numpy array of shape \(3, 1, 3, 3\).*Cast it"):
        net.params["W1"] = np.zeros((3, 1, 3, 3))
    assert net.params["W1"].dtype == np.float32


def test_assignment_refuses_another_library():
    torch = make_backend("torch")
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    with pytest.raises(TypeError, match=r"params\['b1'\]: expected a float32 numpy array .* got a "
                                        r"float32 torch array of shape \(3,\) on cpu"):
        net.params["b1"] = torch.zeros((3,))
    on_torch = xpconv.SimpleConvNet(**TINY, device="torch", seed=0)
    with pytest.raises(TypeError, match=r"expected a float32 torch array .* got a float32 numpy"):
        on_torch.params["b1"] = np.zeros(3, np.float32)


def test_assignment_refuses_another_device():
    cpu, dev1 = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    net = xpconv.SimpleConvNet(**TINY, device=cpu, seed=0)
    with pytest.raises(ValueError, match=r"params\['b2'\]: expected .* on .*CPU_DEVICE.*; got "
                                         r"a float32 array_api_strict array .*device1"):
        net.params["b2"] = dev1.zeros((5,), "float32")


def test_assignment_of_a_matching_array_rebinds(backend):
    net = xpconv.SimpleConvNet(**TINY, device=backend, seed=0)
    new = backend.asarray(np.full((3,), 0.5), dtype="float32")
    net.params["b3"] = new
    assert net.params["b3"] is new and net.layers["Affine2"].b is new


def flat_backends():
    return ["numpy", "torch", "array_api_strict", "array_api_strict:device1"]


@pytest.mark.parametrize("spec", flat_backends())
def test_parameters_are_views_into_one_buffer(spec):
    dev = make_backend(spec)
    net = xpconv.SimpleConvNet(**TINY, device=dev, seed=0)
    ref = xpconv.SimpleConvNet(**TINY, device="cpu", seed=0)
    (group,) = net.params.flat
    assert group.names == ("W1", "b1", "W2", "b2", "W3", "b3")
    assert group.buffer.shape == (sum(int(np.prod(ref.params[k].shape)) for k in ref.params),)
    assert_on(dev, group.buffer)
    for name in net.params:
        assert net.params[name] is group.views[name]
        np.testing.assert_array_equal(xpconv.to_numpy(net.params[name]), ref.params[name])
    group.buffer *= 0.0                         # an in-place update of the buffer ...
    assert not xpconv.to_numpy(net.layers["Conv1"].W).any()   # ... is the layers' update


@pytest.mark.parametrize("spec", flat_backends())
def test_a_rebound_array_is_copied_into_the_buffer(spec):
    dev = make_backend(spec)
    net = xpconv.SimpleConvNet(**TINY, device=dev, seed=0)
    (group,) = net.params.flat
    new = dev.asarray(np.arange(15.0).reshape(5, 3), dtype="float32")
    net.params["W3"] = new
    net.layers["Affine1"].b = dev.asarray(np.ones(5), dtype="float32")   # around the mapping
    assert net.params.flat == (group,)                                 # same buffer, values copied in
    assert net.params["W3"] is group.views["W3"] and net.layers["Affine1"].b is group.views["b2"]
    np.testing.assert_array_equal(xpconv.to_numpy(net.params["W3"]), np.arange(15.0).reshape(5, 3))
    np.testing.assert_array_equal(xpconv.to_numpy(net.params["b2"]), np.ones(5))


def test_a_changed_shape_around_the_mapping_repacks():
    net = xpconv.Sequential([("A", xpconv.Affine(np.ones((4, 2), np.float32), np.zeros(2, np.float32)))])
    (old,) = net.params.flat
    net.layers["A"].W, net.layers["A"].b = np.ones((4, 3), np.float32), np.zeros(3, np.float32)
    (new,) = net.params.flat
    assert new is not old and new.shapes == ((4, 3), (3,)) and net.layers["A"].W is new.views["A.W"]


def test_one_buffer_per_dtype():
    layers = [("A", xpconv.Affine(np.ones((4, 2), np.float32), np.zeros(2, np.float32))),
              ("B", xpconv.Affine(np.ones((2, 2)), np.zeros(2)))]
    net = xpconv.Sequential(layers)
    groups = net.params.flat
    assert [g.names for g in groups] == [("A.W", "A.b"), ("B.W", "B.b")]
    assert [g.buffer.dtype for g in groups] == [np.float32, np.float64]


def test_no_flat_buffer_on_jax_and_updates_still_work():
    jax_dev = make_backend("jax")
    net = xpconv.SimpleConvNet(**TINY, device=jax_dev, seed=0)
    assert net.params.flat is None
    before = xpconv.to_numpy(net.params["b3"]).copy()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8))
    SGD(lr=1.0).update(net.params, net.gradient(x, np.array([0, 1, 2, 0])))
    assert not np.array_equal(xpconv.to_numpy(net.params["b3"]), before)


def test_tied_weights_stay_one_array():
    W = np.ones((3, 3), np.float32)
    net = xpconv.Sequential([("A", xpconv.Affine(W, np.zeros(3, np.float32))),
                             ("B", xpconv.Affine(W, np.zeros(3, np.float32)))])
    assert net.params.flat is None and net.params["A.W"] is net.params["B.W"]


def test_to_moves_the_buffer():
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    target = make_backend("array_api_strict:device1")
    net.to(target)
    (group,) = net.params.flat
    assert_on(target, group.buffer)
    assert all(net.params[k] is group.views[k] for k in net.params)


def test_state_arrays_are_copies():
    net = xpconv.SimpleConvNet(**TINY, seed=0)
    saved = net.state_arrays()
    net.params.flat[0].buffer[...] = 7.0
    assert not np.any(saved["W1"] == 7.0)


def test_shared_views_are_probed_for_unknown_libraries():
    from xpconv.network import flat as _flat
    strict = make_backend("array_api_strict")
    assert _flat._probe(strict.zeros((2,), "float32")) is True      # NumPy views underneath
    jax_dev = make_backend("jax")
    assert _flat._probe(jax_dev.zeros((2,), "float32")) is False    # immutable: += rebinds
    assert _flat.shares_views(jax_dev.zeros((2,), "float32")) is False
