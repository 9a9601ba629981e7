"""compile_step: a compiled step (JAX ``jax.jit``, torch ``torch.compile``) leaves what an
uncompiled step leaves.

Seeded models, 10 Adam steps each way on the same batches; parameters, BatchNormalization's
running statistics and Adam's moments must agree within 1e-10 relative in float64 (1e-5 in
float32), Dropout drawing the same masks. One trace over the 10 steps; no tracer left in
the layers (JAX), one graph and no recompile (torch, ``fullgraph=True``: no graph break).
NumPy gets the plain step. Tests of a library that is not installed are skipped.

torch compiles with ``backend="aot_eager"`` here (the graph inductor would get, without
its C++ code generation, too slow for a test on a CPU); inductor is run by hand (see
docs/compile.md).
"""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import batch_norm_net
from xpconv.compile import compile_step
from xpconv.optimizers import Adam, Momentum

try:
    import jax
    jax.config.update("jax_enable_x64", True)
except ImportError:
    jax = None
try:
    import torch
except ImportError:
    torch = None

needs_jax = pytest.mark.skipif(jax is None, reason="the compiled JAX path needs JAX")
needs_torch = pytest.mark.skipif(torch is None, reason="the compiled torch path needs PyTorch")

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


def not_comparable(model, opt, dtype):
    """A bias right before BatchNormalization has a 0 gradient plus rounding noise, which
    Adam scales up to +-lr: it, and the running mean that includes it, are not comparable
    under Adam (as in test_distributed); Momentum checks them (in float64)."""
    if model != "batchnorm":
        return ()
    if isinstance(opt, Adam):
        return ("Conv1.b", "BN1.running_mean")
    return ("Conv1.b",) if dtype == "float32" else ()


@needs_jax
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
        assert_close(state_of(compiled, opt_c), state_of(plain, opt_p), TOL[dtype],
                     not_comparable(model, opt_c, dtype))
    assert step.traces == 1                                        # one trace over 10 steps
    assert getattr(opt_c, "iter", 10) == 10
    tracer = jax.core.Tracer
    for layer in list(compiled.layers.values()) + [compiled.last_layer]:
        assert not any(isinstance(v, tracer) for v in vars(layer).values()), layer


@needs_jax
def test_jax_dropout_masks_change_every_step():
    """A mask frozen into the program would make two steps on one batch give one loss."""
    net = deep_with_dropout("float64").to("jax")
    step = compile_step(net, Momentum(lr=1e-300))    # ~no step: the loss changes with the mask
    x, t = batches(1)[0]
    losses = {float(step(x, t)) for _ in range(4)}
    assert len(losses) == 4 and step.traces == 1


@needs_jax
def test_jax_step_reads_nothing_back():
    """The loss stays on the device: no device-to-host transfer (sync) in a step. (The host
    scalars, Adam's step size and the Dropout masks, are passed in as arguments.)"""
    net = simple("float64").to("jax")
    step = compile_step(net, Adam())
    x, t = (net.device.asarray(a) for a in batches(1)[0])
    step(x, t)
    with jax.transfer_guard_device_to_host("disallow"):
        step(x, t)


def test_numpy_gets_the_plain_step():
    net, ref = simple("float64"), simple("float64")
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
    with pytest.raises(TypeError, match="compile_step"):
        compile_step(simple("float64"), Adam(), backend=["inductor"])


@needs_jax
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


# ---------------------------------------------------------------------------- torch

def graphs_compiled():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def addresses(net, opt):
    """data_ptr of every tensor a step changes: the flat parameter buffers, the buffers and
    the optimizer state (a static address each, as CUDA graphs need)."""
    out = {f"flat/{i}": g.buffer.data_ptr() for i, g in enumerate(net.params.flat)}
    out.update((f"buffer/{k}", getattr(layer, attr).data_ptr()) for k, layer, attr in net._buffers())
    out.update((f"{name}/{k}", a.data_ptr()) for name in opt._state for k, a in getattr(opt, name).items())
    return out


# float64 and float32 are both covered, as are Adam and Momentum, with one compile each
# (a compile costs 5-20 s on a 2-core CPU): SimpleConvNet, DeepConvNet with Dropout (its masks must be the
# uncompiled step's, drawn anew each step) and a network with BatchNormalization
TORCH_CASES = [("simple", "float64", "Adam"), ("deep-dropout", "float64", "Adam"),
               ("batchnorm", "float64", "Momentum"), ("batchnorm", "float32", "Adam")]


@needs_torch
@pytest.mark.parametrize("model, dtype, opt_name", TORCH_CASES)
def test_torch_compiled_equals_uncompiled(model, dtype, opt_name):
    """One graph (fullgraph=True: no graph break) over 10 steps, no recompile when the
    learning rate changes (a schedule), the state of the uncompiled step after every step,
    everything updated in place (same addresses), and an uncompiled step can follow."""
    make_opt = {"Adam": Adam, "Momentum": lambda: Momentum(lr=0.05)}[opt_name]
    compiled, plain = MODELS[model](dtype).to("torch"), MODELS[model](dtype).to("torch")
    opt_c, opt_p = make_opt(), make_opt()
    step = compile_step(compiled, opt_c, backend="aot_eager")
    assert step.compiled
    before = graphs_compiled()
    for i, (x, t) in enumerate(batches()):
        if i == 5:                           # a schedule's new rate: an input, not a constant
            opt_c.lr = opt_p.lr = opt_c.lr / 2
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            loss = step(x, t)
        opt_p.update(plain.params, plain.gradient(x, t))
        assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.device == compiled.device.native
        np.testing.assert_allclose(float(loss), float(plain.last_layer.loss), rtol=TOL[dtype])
        assert_close(state_of(compiled, opt_c), state_of(plain, opt_p), TOL[dtype],
                     not_comparable(model, opt_c, dtype))
        if i == 0:
            where = addresses(compiled, opt_c)
        assert addresses(compiled, opt_c) == where           # updated in place
    assert step.traces == 1 and graphs_compiled() - before == 1
    assert getattr(opt_c, "iter", 10) == 10
    assert all(isinstance(v, float) for k, v in vars(opt_c).items() if k in ("lr", "_lr_t"))
    kept = {(id(layer), attr) for layer, attr, _ in compiled._bindings.values()}
    kept |= {(id(layer), attr) for _, layer, attr in compiled._buffers()} | {(id(compiled.last_layer), "loss")}
    for layer in [*compiled.layers.values(), compiled.last_layer]:      # no cache left: all None
        cached = [k for k, v in vars(layer).items() if isinstance(v, torch.Tensor) and (id(layer), k) not in kept]
        assert not cached, (layer, cached)
    x, t = batches(1, size=6)[0]                 # the uncompiled step takes over the state
    opt_c.update(compiled.params, compiled.gradient(x, t))
    opt_p.update(plain.params, plain.gradient(x, t))
    assert_close(state_of(compiled, opt_c), state_of(plain, opt_p), TOL[dtype], not_comparable(model, opt_c, dtype))


@needs_torch
def test_torch_reduce_overhead_mode_and_device_inputs():
    """mode="reduce-overhead" is passed to torch.compile and marks the tensors the graph
    updates as static addresses. CUDA graphs need a GPU: on the CPU, aot_eager ignores the
    mode (untested on a GPU, see docs/compile.md); the step must still be the plain one's.
    x and labels already on the device are taken as they are."""
    net, ref = simple("float64").to("torch"), simple("float64").to("torch")
    opt, ref_opt = Momentum(lr=0.05), Momentum(lr=0.05)
    step = compile_step(net, opt, mode="reduce-overhead", backend="aot_eager")
    assert step.mode == "reduce-overhead"
    for x, t in batches(3):
        step(torch.as_tensor(x), torch.as_tensor(t))
        ref_opt.update(ref.params, ref.gradient(x, t))
    assert len(step._static) == len(addresses(net, opt)) and step.traces == 1
    assert_close(state_of(net, opt), state_of(ref, ref_opt), TOL["float64"])


@needs_torch
def test_torch_step_does_not_recompile_when_eager_calls_fill_the_memos_later():
    """xpconv keeps per-type answers (namespace, device, dtype) and window geometries in dicts;
    a dict read while torch.compile traces is a guard, so an entry added afterwards by an
    eager call would force a second compile. The memos are filled before the trace, and
    none is read while tracing the geometry."""
    from xpconv import _namespace
    from xpconv._kernels import geometry
    net = simple("float64").to("torch")
    step = compile_step(net, Adam(), backend="aot_eager")
    x, t = batches(n=1, size=4)[0]
    x, t = net.device.asarray(x), net.device.asarray(t)
    for memo in (_namespace._NAMESPACE, _namespace._DEVICE, _namespace._IS_ARRAY,
                 _namespace._REAL_FLOATING, geometry._KNOWN):
        memo.clear()
    for _ in range(3):
        step(x, t)
        net.predict(x)                         # eager: fills every memo it reads
        net.gradient(x, t)
    assert step.traces == 1


@needs_jax
def test_traced_max_pool_backward_scores_in_int32():
    """Op by op the window scores are int8 (the least memory traffic); a compiler fuses them
    away, and XLA's CPU code reduces int8 7x slower than int32, so a trace scores in int32."""
    from xpconv._kernels.geometry import window2d
    from xpconv._kernels.pool import _max_pool2d_backward_blocks
    geom = window2d("test", (4, 4), (2, 2), 2, pooling=True)
    x = jax.numpy.asarray(np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4))
    y, dy = x[:, :, ::2, ::2], jax.numpy.ones((1, 2, 2, 2), dtype=np.float32)
    traced = str(jax.make_jaxpr(lambda x, y, dy: _max_pool2d_backward_blocks(dy, x, y, geom))(x, y, dy))
    assert "i32" in traced and "i8" not in traced
    eager_scores = []
    original = jax.numpy.where

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        eager_scores.append(out.dtype)
        return out
    jax.numpy.where = spy
    try:
        _max_pool2d_backward_blocks(dy, x, y, geom)
    finally:
        jax.numpy.where = original
    assert np.dtype("int8") in eager_scores
