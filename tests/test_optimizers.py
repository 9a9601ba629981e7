"""The book's optimizers against steps computed by hand from their formulas, on every
backend (JAX's immutable arrays included) and through mappings whose ``__setitem__``
must be called."""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import assert_on, make_backend
from xpconv.devices import dtype_name
from xpconv.optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop, get_optimizer

to_np = xpconv.to_numpy

P0 = [1.0, -2.0]
GRADS = [[0.5, -1.0], [0.2, 0.4], [-0.1, 0.3]]   # gradients of steps 1, 2, 3

# Expected parameters after steps 1, 2, 3 (lr=0.1; momentum=0.9; decay_rate=0.99;
# beta1=0.9, beta2=0.999), worked out element by element from the formulas in the
# docstrings, with the book's 1e-7 in the denominators.
EXPECTED = {
    # W -= 0.1 g
    "sgd": ([0.95, -1.9], [0.93, -1.94], [0.94, -1.97]),
    # v = 0.9 v - 0.1 g: v1 = [-.05, .1], v2 = [-.065, .05], v3 = [-.0485, .015]; W += v
    "momentum": ([0.95, -1.9], [0.885, -1.85], [0.8365, -1.835]),
    # same v; W += 0.81 v - 0.19 g
    #   step 1: 1 - .0405 - .095 = .8645;          -2 + .081 + .19 = -1.729
    #   step 2: .8645 - .05265 - .038 = .77385;     -1.729 + .0405 - .076 = -1.7645
    #   step 3: .77385 - .039285 + .019 = .753565;  -1.7645 + .01215 - .057 = -1.80935
    "nesterov": ([0.8645, -1.729], [0.77385, -1.7645], [0.753565, -1.80935]),
    # h = [.25, 1], [.29, 1.16], [.30, 1.25]; W -= 0.1 g / (sqrt(h) + 1e-7)
    #   step 1: 1 - .05/.5000001 = .90000002;  -2 + .1/1.0000001 = -1.90000001
    #   step 2: - .02/sqrt(.29), - .04/sqrt(1.16);  step 3: + .01/sqrt(.3), - .03/sqrt(1.25)
    "adagrad": ([0.900000019999996, -1.900000009999999],
                [0.862860959261136, -1.9371390741871337],
                [0.8811183745113088, -1.9639718875171315]),
    # h = .99 h + .01 g^2: h1 = [.0025, .01] -> step 1 = g / sqrt(h1) * .1 = [1, -1] (less eps)
    "rmsprop": ([1.999996000034976e-06, -1.000000999999],
                [-0.372999227649249, -1.3730025754693629],
                [-0.18876750960018793, -1.6436683122497224]),
    # lr_t = .1 sqrt(1 - .999^t) / (1 - .9^t); m += .1 (g - m); v += .001 (g^2 - v)
    #   step 1: lr_t = sqrt(.001), m = [.05, -.1], v = [.00025, .001] -> W moves by ~lr*sign(g)
    "adam": ([0.900000632451532, -1.900000316226766],
             [0.8101436398802737, -1.8654398329523465],
             [0.753527039163733, -1.8568618622782869]),
}

KWARGS = {"sgd": {}, "momentum": {"momentum": 0.9}, "nesterov": {"momentum": 0.9},
          "adagrad": {}, "rmsprop": {"decay_rate": 0.99}, "adam": {"beta1": 0.9, "beta2": 0.999}}


def make(name):
    return get_optimizer(name, lr=0.1, **KWARGS[name])


def state_arrays(opt):
    """Every array of the optimizer's state (velocities, h, moments)."""
    return [a for attr in ("v", "h", "m") if isinstance(getattr(opt, attr, None), dict)
            for a in getattr(opt, attr).values()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hand_computed_steps(backend, name):
    opt = make(name)
    params = {"W": backend.asarray(P0, "float64")}
    for step, g in enumerate(GRADS):
        opt.update(params, {"W": backend.asarray(g, "float64")})
        assert_on(backend, params["W"], *state_arrays(opt))
        np.testing.assert_allclose(to_np(params["W"]), EXPECTED[name][step], rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name}, step {step + 1}")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_float32_params_and_state_stay_float32(backend, name):
    opt = make(name)
    params = {"W": backend.asarray(P0, "float32"), "b": backend.asarray([[0.5]], "float32")}
    for g in GRADS:
        opt.update(params, {"W": backend.asarray(g, "float32"), "b": backend.asarray([[g[0]]], "float32")})
    for a in (*params.values(), *state_arrays(opt)):
        assert a.dtype == backend.dtype("float32")
    assert_on(backend, *params.values(), *state_arrays(opt))
    np.testing.assert_allclose(to_np(params["W"]), EXPECTED[name][-1], rtol=1e-5, atol=1e-5)


class RecordingParams(dict):
    """A params mapping that stores its arrays elsewhere (like a network rebinding a
    layer's W): only ``__setitem__`` makes an update visible."""

    def __init__(self, holder):
        super().__init__({k: None for k in holder})
        self.holder = holder
        self.set_calls = []

    def __getitem__(self, key):
        return self.holder[key]

    def __setitem__(self, key, value):
        self.set_calls.append(key)
        self.holder[key] = value


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_updates_go_through_setitem(name):
    jax_dev = make_backend("jax")  # immutable arrays: an in-place update could not work at all
    holder = {"W": jax_dev.asarray(P0, "float64"), "b": jax_dev.asarray([0.0], "float64")}
    params = RecordingParams(holder)
    opt = make(name)
    for g in GRADS:
        opt.update(params, {"W": jax_dev.asarray(g, "float64"), "b": jax_dev.asarray([1.0], "float64")})
    assert sorted(params.set_calls) == ["W"] * 3 + ["b"] * 3
    np.testing.assert_allclose(to_np(holder["W"]), EXPECTED[name][-1], rtol=1e-12, atol=1e-14)
    assert_on(jax_dev, holder["W"], holder["b"], *state_arrays(opt))


def test_numpy_updates_in_place_like_the_book():
    """With NumPy the same array object is updated (the book's networks rely on it)."""
    W = np.array(P0)
    params = {"W": W}
    Momentum(lr=0.1).update(params, {"W": np.array(GRADS[0])})
    assert params["W"] is W
    np.testing.assert_allclose(W, EXPECTED["momentum"][0])


def test_state_is_per_parameter_and_lazy():
    opt = Adam()
    assert opt.m == {} and opt.v == {} and opt.iter == 0
    params = {"a": np.ones(2), "b": np.ones((2, 3), np.float32)}
    opt.update(params, {"a": np.ones(2), "b": np.ones((2, 3), np.float32)})
    assert opt.iter == 1
    assert opt.m["b"].shape == (2, 3) and opt.m["b"].dtype == np.float32


def test_get_optimizer():
    for name, cls in [("SGD", SGD), ("momentum", Momentum), ("Nesterov", Nesterov),
                      ("AdaGrad", AdaGrad), ("RMSprop", RMSprop), ("ADAM", Adam)]:
        opt = get_optimizer(name, lr=0.5)
        assert type(opt) is cls and opt.lr == 0.5
    assert get_optimizer("adam").lr == 0.001 and get_optimizer("sgd").lr == 0.01
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'.*'adagrad'.*'sgd'"):
        get_optimizer("adamw")
    with pytest.raises(TypeError):
        get_optimizer("sgd", momentum=0.9)


def test_bad_arguments():
    for lr in (0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"SGD: expected lr"):
            SGD(lr=lr)
    with pytest.raises(ValueError, match=r"Momentum: expected momentum in \[0, 1\)"):
        Momentum(momentum=1.0)
    with pytest.raises(ValueError, match=r"RMSprop: expected decay_rate in \[0, 1\)"):
        RMSprop(decay_rate=-0.5)
    with pytest.raises(ValueError, match=r"Adam: expected beta2 in \[0, 1\)"):
        Adam(beta2=1.5)


def test_bad_keys_shapes_and_places():
    opt = SGD()
    params = {"W": np.ones(2), "b": np.ones(1)}
    with pytest.raises(KeyError, match=r"SGD.update: grads has keys not in params: \['W2'\]"):
        opt.update(params, {"W": np.ones(2), "b": np.ones(1), "W2": np.ones(2)})
    with pytest.raises(KeyError, match=r"SGD.update: no gradient for params \['b'\]"):
        opt.update(params, {"W": np.ones(2)})
    with pytest.raises(ValueError, match=r"grads\['W'\] has shape \(3,\) but params\['W'\] has \(2,\)"):
        opt.update(params, {"W": np.ones(3), "b": np.ones(1)})
    with pytest.raises(TypeError, match=r"grads\['W'\] has dtype float32 but params\['W'\] has float64"):
        opt.update(params, {"W": np.ones(2, np.float32), "b": np.ones(1)})
    np.testing.assert_array_equal(params["W"], [1.0, 1.0])   # nothing updated by a failed call
    cpu, dev1 = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    with pytest.raises(ValueError, match=r"grads\['W'\] is on device .*device1"):
        Adam().update({"W": cpu.asarray([1.0])}, {"W": dev1.asarray([1.0])})


# ----------------------------------------------------------------------------- fused path

FUSED_BACKENDS = ["numpy", "torch", "array_api_strict", "array_api_strict:device1"]
SMALL = dict(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
             hidden_size=5, output_size=3, weight_init_std=0.3)


def random_grads(net, dev, rng, scale=1.0):
    return {k: dev.asarray(scale * rng.standard_normal(tuple(net.params[k].shape)),
                           dtype=dtype_name(net.params[k])) for k in net.params}


@pytest.mark.parametrize("spec", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fused_path_is_bit_for_bit_the_per_key_path(spec, dtype, name):
    dev = make_backend(spec)
    net = xpconv.SimpleConvNet(**SMALL, device=dev, dtype=dtype, seed=0)
    assert net.params.flat is not None                 # the fused path is taken
    plain = {k: dev.asarray(to_np(net.params[k]), dtype=dtype) for k in net.params}  # per key
    fused_opt, key_opt = make(name), make(name)
    rng = np.random.default_rng(7)
    for step in range(4):
        grads = random_grads(net, dev, rng)
        if step == 2:   # the user replaces a state array: the fused path picks it up
            for opt in (fused_opt, key_opt):
                for attr in ("v", "h", "m"):
                    if hasattr(opt, attr):
                        getattr(opt, attr)["W2"] = getattr(opt, attr)["W2"] * 0.5
        fused_opt.update(net.params, grads)
        key_opt.update(plain, grads)
    for k in net.params:
        np.testing.assert_array_equal(to_np(net.params[k]), to_np(plain[k]), err_msg=k)
        assert net.params[k] is net.params.flat[0].views[k]
    for attr in ("v", "h", "m"):
        for k in getattr(key_opt, attr, {}):
            np.testing.assert_array_equal(to_np(getattr(fused_opt, attr)[k]),
                                          to_np(getattr(key_opt, attr)[k]), err_msg=f"{attr}[{k}]")
    assert_on(dev, *net.params.values(), *state_arrays(fused_opt))


def test_fused_adam_is_13_ops_and_sync_free():
    torch_dev = make_backend("torch")
    from xpconv.diagnostics.launches import count_launches
    net = xpconv.SimpleConvNet(device=torch_dev, seed=0)
    grads = random_grads(net, torch_dev, np.random.default_rng(0), 0.01)
    opt = Adam()
    from xpconv._kernels.fastpaths import as_on_a_gpu
    with as_on_a_gpu():
        opt.update(net.params, grads)                  # state is created here, laid out as on a GPU
    with count_launches(forbid_syncs=True) as fused:
        opt.update(net.params, grads)
    plain = dict(net.params)
    with count_launches(forbid_syncs=True) as per_key:
        opt.update(plain, grads)
    assert fused.ops == 10 and fused.syncs == 0, fused.by_op      # concat + 9 for 6 parameters
    assert per_key.ops == 72, per_key.by_op                        # 12 per parameter


# ----------------------------------------------------------------------------- half precision

@pytest.mark.parametrize("spec", ["numpy", "torch"])
@pytest.mark.parametrize("name", ["adam", "adagrad", "rmsprop"])
def test_float16_models_train_without_nan(spec, name):
    """The 1e-7 of AdaGrad/RMSprop/Adam: float16 state let g*g underflow to 0 and the step
    blow up (NaN at step 4 with Adam); the state is float32 for half-precision parameters."""
    from xpconv.datasets import load_bundled_mnist
    dev = make_backend(spec)
    (x, t), _ = load_bundled_mnist(flatten=False)
    net = xpconv.SimpleConvNet(device=dev, dtype="float16", seed=0)
    opt = get_optimizer(name, lr=1e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(8):
        idx = rng.choice(len(x), 16, replace=False)
        opt.update(net.params, net.gradient(x[idx], t[idx]))
        losses.append(float(to_np(net.loss(x[idx], t[idx]))))
    assert np.all(np.isfinite(losses)), losses
    assert all(float(np.abs(to_np(p)).max()) < 10 for p in net.params.values())
    assert net.params["W1"].dtype == dev.dtype("float16")
    assert all(a.dtype == dev.dtype("float32") for a in state_arrays(opt))


# ----------------------------------------------------------------------------- devices

@pytest.mark.parametrize("target", ["torch", "array_api_strict:device1", "jax"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_state_follows_the_network_to_another_device(target, name):
    dev = make_backend(target)
    net = xpconv.SimpleConvNet(**SMALL, dtype="float64", seed=0)
    ref = xpconv.SimpleConvNet(**SMALL, dtype="float64", seed=0)
    opt, ref_opt = make(name), make(name)
    rng = np.random.default_rng(3)
    steps = [random_grads(ref, xpconv.device("cpu"), rng) for _ in range(4)]
    for host_grads in steps[:2]:
        opt.update(net.params, host_grads)
        ref_opt.update(ref.params, host_grads)
    net.to(dev)
    for host_grads in steps[2:]:
        opt.update(net.params, {k: dev.asarray(g) for k, g in host_grads.items()})
        ref_opt.update(ref.params, host_grads)
    assert_on(dev, *net.params.values(), *state_arrays(opt))
    for k in net.params:
        np.testing.assert_allclose(to_np(net.params[k]), ref.params[k], rtol=1e-12, atol=1e-15)
