"""compile_step: a compiled step (JAX ``jax.jit``) leaves what an uncompiled step leaves.

Seeded models, 10 Adam steps each way on the same batches; parameters, BatchNormalization's
running statistics and Adam's moments must agree within 1e-10 relative in float64 (1e-5 in
float32), Dropout drawing the same masks. One trace over the 10 steps; no tracer left in
the layers. Other libraries get the plain step.
"""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import batch_norm_net
from xpconv.compile import compile_step
from xpconv.optimizers import Adam, Momentum

jax = pytest.importorskip("jax", reason="the compiled path needs JAX")
jax.config.update("jax_enable_x64", True)

TOL = {"float64": 1e-10, "float32": 1e-5}


def simple(dtype):
    return xpconv.SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3},
                                hidden_size=8, output_size=4, weight_init_std="he", dtype=dtype, seed=0)


def deep_with_dropout(dtype):
    return xpconv.DeepConvNet(input_dim=(1, 8, 8), conv_params=[
        {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 1}] * 6, hidden_size=8, output_size=4,
        dropout_ratio=0.3, dtype=dtype, seed=0)


def with_batch_norm(dtype):
    return batch_norm_net(dtype, image=8, classes=4)


MODELS = {"simple": simple, "deep-dropout": deep_with_dropout, "batchnorm": with_batch_norm}


def batches(n=10, size=6):
    rng = np.random.default_rng(7)
    return [(rng.random((size, 1, 8, 8)), rng.integers(0, 4, size)) for _ in range(n)]


def state_of(net, opt):
    """Every array a step changes, on the host: parameters, buffers, optimizer state."""
    out = {k: xpconv.to_numpy(net.params[k]) for k in net.params.keys()}
    out.update((f"buffer/{k}", xpconv.to_numpy(getattr(layer, attr))) for k, layer, attr in net._buffers())
    out.update((f"{name}/{k}", xpconv.to_numpy(a)) for name in opt._state for k, a in getattr(opt, name).items())
    return out


def assert_close(got, want, tol, skip=()):
    assert got.keys() == want.keys()
    for k in want:
        if k.split("/")[-1] in skip:
            continue
        scale = max(float(np.max(np.abs(want[k]))), 1e-3)   # near-0 arrays (a bias before BN): absolute
        err = float(np.max(np.abs(got[k] - want[k]))) / scale
        assert err <= tol, f"{k}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("make_opt", [Adam, lambda: Momentum(lr=0.05)], ids=["Adam", "Momentum"])
def test_jax_compiled_equals_uncompiled(model, dtype, make_opt):
    compiled, plain = MODELS[model](dtype).to("jax"), MODELS[model](dtype).to("jax")
    opt_c, opt_p = make_opt(), make_opt()
    step = compile_step(compiled, opt_c)
    assert step.compiled
    for x, t in batches():
        loss = step(x, t)
        opt_p.update(plain.params, plain.gradient(x, t))
        assert isinstance(loss, jax.Array) and loss.shape == ()      # a device scalar
        np.testing.assert_allclose(float(loss), float(plain.last_layer.loss), rtol=TOL[dtype])
        # A bias right before BatchNormalization has a 0 gradient plus rounding noise, which
        # Adam scales up to +-lr: it, and the running mean that includes it, are not
        # comparable under Adam (as in test_distributed); Momentum checks them.
        adam = isinstance(opt_c, Adam)
        skip = (("Conv1.b", "BN1.running_mean") if adam else ("Conv1.b",) if dtype == "float32"
                else ()) if model == "batchnorm" else ()
        assert_close(state_of(compiled, opt_c), state_of(plain, opt_p), TOL[dtype], skip)
    assert step.traces == 1                                        # one trace over 10 steps
    assert getattr(opt_c, "iter", 10) == 10
    tracer = jax.core.Tracer
    for layer in list(compiled.layers.values()) + [compiled.last_layer]:
        assert not any(isinstance(v, tracer) for v in vars(layer).values()), layer


def test_jax_dropout_masks_change_every_step():
    """A mask frozen into the program would make two steps on one batch give one loss."""
    net = deep_with_dropout("float64").to("jax")
    step = compile_step(net, Momentum(lr=1e-300))    # ~no step: the loss changes with the mask
    x, t = batches(1)[0]
    losses = {float(step(x, t)) for _ in range(4)}
    assert len(losses) == 4 and step.traces == 1


def test_jax_step_reads_nothing_back():
    """The loss stays on the device: no device-to-host transfer (sync) in a step. (The host
    scalars, Adam's step size and the Dropout masks, are passed in as arguments.)"""
    net = simple("float64").to("jax")
    step = compile_step(net, Adam())
    x, t = (net.device.asarray(a) for a in batches(1)[0])
    step(x, t)
    with jax.transfer_guard_device_to_host("disallow"):
        step(x, t)


@pytest.mark.parametrize("spec", ["cpu", "torch"])
def test_other_libraries_get_the_plain_step(spec):
    pytest.importorskip("torch") if spec == "torch" else None
    net, ref = simple("float64").to(spec), simple("float64").to(spec)
    step, opt = compile_step(net, Adam()), Adam()
    assert not step.compiled
    for x, t in batches(3):
        step(x, t)
        opt.update(ref.params, ref.gradient(x, t))
    assert_close({k: xpconv.to_numpy(net.params[k]) for k in net.params.keys()},
                 {k: xpconv.to_numpy(ref.params[k]) for k in ref.params.keys()}, 0.0)


def test_bad_arguments():
    with pytest.raises(TypeError, match="compile_step"):
        compile_step(object(), Adam())
    with pytest.raises(TypeError, match="compile_step"):
        compile_step(simple("float64"), object())
    with pytest.raises(TypeError, match="compile_step"):
        compile_step(simple("float64"), Adam(), mode=3)


def test_trainer_compile_trains_like_the_plain_trainer():
    """Trainer(compile=True) on JAX: the same training up to rounding (float32, 1e-4)."""
    from tests.helpers import make_backend
    backend = make_backend("jax")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 1, 10, 10)).astype(np.float32)
    t = rng.integers(0, 3, 60)

    def train(compile):
        net = xpconv.SimpleConvNet(input_dim=(1, 10, 10), conv_param={"filter_num": 3, "filter_size": 3},
                                   hidden_size=8, output_size=3, device=backend, seed=0)
        trainer = xpconv.Trainer(net, x, t, x[:20], t[:20], epochs=2, mini_batch_size=20, optimizer="Adam",
                                 optimizer_param={"lr": 0.01}, verbose=False, seed=0, compile=compile)
        return trainer.train()
    plain, compiled = train(False), train(True)
    assert compiled._compiled.compiled and compiled._compiled.traces == 1
    np.testing.assert_allclose(compiled.train_loss_list, plain.train_loss_list, rtol=1e-4)
    for k in plain.network.params:
        np.testing.assert_allclose(xpconv.to_numpy(compiled.network.params[k]),
                                   xpconv.to_numpy(plain.network.params[k]), rtol=1e-4, atol=1e-6)
