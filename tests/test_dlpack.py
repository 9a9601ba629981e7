"""Device.asarray takes arrays of other libraries through DLPack: shared where it can, refused clearly where not."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import xpconv
from tests.helpers import assert_on, make_backend

LIBRARIES = ["numpy", "torch", "jax", "array_api_strict", "array_api_strict:device1"]
PAIRS = [(s, t) for s in LIBRARIES for t in LIBRARIES if s.split(":")[0] != t.split(":")[0]]


def _device(spec):
    spec = "numpy" if spec == "cpu" else spec
    if importlib.util.find_spec(spec.split(":")[0]) is None:
        pytest.skip(f"{spec} is not installed")
    return make_backend("cpu" if spec == "numpy" else spec)


def _foreign(spec, host):
    """``host`` as an array of library ``spec`` (a NumPy array for "numpy")."""
    if spec == "numpy":
        return host.copy()
    return _device(spec).asarray(host)


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{s}->{t}" for s, t in PAIRS])
def test_every_cpu_pair_lands_on_the_target(source, target, rng):
    dst = _device(target)
    host = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out = dst.asarray(_foreign(source, host))
    assert_on(dst, out)
    np.testing.assert_array_equal(xpconv.to_numpy(out), host)
    conv = dst.asarray(_foreign(source, host), dtype="float64")      # dtype= still converts
    assert_on(dst, conv)
    assert conv.dtype == dst.dtype("float64")
    np.testing.assert_array_equal(xpconv.to_numpy(conv), host.astype(np.float64))


def test_numpy_from_torch_shares_memory():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    a = xpconv.device("cpu").asarray(t)
    assert isinstance(a, np.ndarray) and np.shares_memory(a, t.numpy())
    t[0, 0] = 42.0                       # a write on one side shows on the other: no copy was made
    assert a[0, 0] == 42.0
    a[1, 2] = -1.0
    assert t[1, 2].item() == -1.0
    b = xpconv.device("cpu").asarray(t, dtype="float64")          # a conversion must copy
    assert b.dtype == np.float64 and not np.shares_memory(b, t.numpy())


def test_torch_from_jax_and_strict_keep_values_and_order(rng):
    torch_dev = _device("torch")
    host = rng.standard_normal((3, 5))
    for source in ("jax", "array_api_strict"):
        view = _foreign(source, host)
        out = torch_dev.asarray(view, dtype="float64")
        np.testing.assert_array_equal(xpconv.to_numpy(out), host)


def test_a_tensor_that_requires_grad_is_refused_with_the_way_out():
    torch = pytest.importorskip("torch")
    t = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match=r"cpu.asarray: cannot share a torch.Tensor on torch:cpu through DLPack "
                                        r"\(.*detach.*\); move it first"):
        xpconv.device("cpu").asarray(t)
    np.testing.assert_array_equal(xpconv.device("cpu").asarray(t.detach()), np.ones(3))


def test_complex_data_for_a_real_dtype_is_refused():
    torch = pytest.importorskip("torch")
    t = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    for spec in ("cpu", "array_api_strict"):
        dev = _device(spec)
        with pytest.raises(TypeError, match="imaginary part"):
            dev.asarray(t, dtype="float32")
        assert dev.xp.isdtype(dev.asarray(t).dtype, "complex floating")


def test_another_device_is_refused_not_moved(monkeypatch):
    """Shared memory that lands elsewhere than the target (another GPU, another strict device) is an error."""
    torch = pytest.importorskip("torch")
    strict = _device("array_api_strict:device1")
    from xpconv import _backends

    # array-api-strict's devices are labels on host memory, so sharing onto device1 is allowed;
    # a backend whose import leaves the data on its own device must be refused:
    monkeypatch.setattr(_backends._StrictBackend, "from_dlpack", lambda self, xp, x, native: xp.from_dlpack(x))
    with pytest.raises(ValueError, match=r"array_api_strict:device1.asarray: a torch.Tensor on torch:cpu is not on "
                                         r"array_api_strict:device1: .*never moves it between devices"):
        strict.asarray(torch.ones(2))


def test_a_gpu_array_is_refused_by_numpy():
    cupy_dev = None
    for spec in ("cuda", "torch:cuda"):
        try:
            cupy_dev = xpconv.device(spec)
            break
        except ValueError:
            continue
    if cupy_dev is None:
        pytest.skip("no GPU here (CuPy or torch CUDA): a GPU array cannot be built")
    gpu = cupy_dev.asarray(np.ones(3, np.float32))
    with pytest.raises((TypeError, ValueError), match=r"cpu.asarray: .*to_numpy"):
        xpconv.device("cpu").asarray(gpu)


def test_a_numpy_model_runs_on_a_torch_tensor_through_its_device():
    torch = pytest.importorskip("torch")
    net = xpconv.SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_num": 2, "filter_size": 3, "pad": 0,
                                                                "stride": 1},
                               hidden_size=5, output_size=3, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((4, 1, 8, 8), generator=gen)
    y = net.predict(net.device.asarray(x))
    np.testing.assert_allclose(xpconv.to_numpy(y), xpconv.to_numpy(net.predict(x.numpy())), rtol=1e-6)


def test_layers_still_refuse_mixing_libraries_in_one_op():
    torch = pytest.importorskip("torch")
    from xpconv import functional as F

    x = np.ones((1, 1, 4, 4), np.float32)
    w = torch.ones((1, 1, 3, 3))
    with pytest.raises((TypeError, ValueError), match="one library"):
        F.conv2d(x, w)
