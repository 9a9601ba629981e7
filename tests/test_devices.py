"""xpconv.device specs, available_devices, Device.asarray / to_numpy, and import hygiene."""
from __future__ import annotations

import io
import pathlib
import subprocess
import sys
import tokenize
import types

import numpy as np
import pytest

import xpconv
import xpconv._backends as _backends
import xpconv.devices as devices
from tests.helpers import assert_on, make_backend
from xpconv._kernels import fastpaths

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _installed(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _gpu_usable():
    return any(spec.startswith("cuda:") for spec in xpconv.available_devices())


# ----------------------------------------------------------------------------- specs

# spec, library, canonical str(device), module that must be installed
SPECS = [
    ("cpu", "numpy", "cpu", "numpy"),
    ("numpy", "numpy", "cpu", "numpy"),
    ("CPU", "numpy", "cpu", "numpy"),
    ("torch", "torch", "torch:cpu", "torch"),
    ("torch:cpu", "torch", "torch:cpu", "torch"),
    ("jax", "jax", "jax:cpu:0", "jax"),
    ("array_api_strict", "array_api_strict", "array_api_strict:CPU_DEVICE", "array_api_strict"),
    ("array_api_strict:device1", "array_api_strict", "array_api_strict:device1", "array_api_strict"),
]


@pytest.mark.parametrize("spec, library, text, module", SPECS, ids=[s[0] for s in SPECS])
def test_device_spec(spec, library, text, module):
    if not _installed(module):
        pytest.skip(f"{module} is not installed")
    dev = xpconv.device(spec)
    assert isinstance(dev, xpconv.Device)
    assert dev.library == library
    assert str(dev) == text
    assert dev.spec == text
    assert xpconv.device(dev) is dev  # a Device passes through
    if library == "array_api_strict":
        assert str(dev.native).split("'")[1] == text.split(":")[1]
    a = dev.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    assert_on(dev, a)
    assert a.dtype == dev.xp.float32
    np.testing.assert_array_equal(xpconv.to_numpy(a), np.arange(6.0).reshape(2, 3))


def test_device_auto():
    expected = "cuda:0" if _gpu_usable() else "cpu"
    assert str(xpconv.device("auto")) == expected
    assert str(xpconv.device()) == "cpu"


def test_device_default_is_cpu_numpy():
    dev = xpconv.device()
    assert dev.library == "numpy" and isinstance(dev.asarray([1.0, 2.0]), np.ndarray)


@pytest.mark.parametrize("spec, why", [
    ("cuda:x", "expected a GPU index"),
    ("array_api_strict:nowhere", "device1"),     # the message lists the library's devices
    ("nosuchlib", "unknown library 'nosuchlib'"),
    ("numpy:1", "only the 'cpu' device"),
    ("torch:nowhere", ""),
], ids=["cuda:x", "strict:nowhere", "unknown-lib", "numpy:1", "torch:nowhere"])
def test_device_unusable_spec_lists_available(spec, why):
    if spec.startswith("torch") and not _installed("torch"):
        pytest.skip("torch is not installed")
    with pytest.raises(ValueError) as info:
        xpconv.device(spec)
    msg = str(info.value)
    assert repr(spec) in msg
    assert why in msg
    assert "Usable here: " in msg
    for usable in xpconv.available_devices():
        assert usable in msg.split("Usable here: ")[1]


def test_device_cuda_without_cupy_says_why():
    if _gpu_usable():
        pytest.skip("a CUDA GPU is usable here")
    with pytest.raises(ValueError, match=r"device 'cuda' is not usable: CuPy .*Usable here: cpu"):
        xpconv.device("cuda")


@pytest.mark.parametrize("spec", [3, None, ("cpu",)], ids=["int", "None", "tuple"])
def test_device_spec_not_a_string(spec):
    with pytest.raises(TypeError, match=r"device: expected a spec string .*got " + repr(spec).replace("(", r"\(")
                       .replace(")", r"\)")):
        xpconv.device(spec)


# ----------------------------------------------------------------------------- available_devices

def test_available_devices_lists_strings():
    specs = xpconv.available_devices()
    assert isinstance(specs, list) and all(isinstance(s, str) for s in specs)
    assert specs[0] == "cpu"
    for spec in specs:  # every listed spec resolves
        assert isinstance(xpconv.device(spec), xpconv.Device)


class _ExplodingModule(types.ModuleType):
    def __getattr__(self, name):
        raise RuntimeError(f"broken cupy install: no {name}")


def _broken_cupy_by_runtime():
    def get_count():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_count))
    return mod


@pytest.mark.parametrize("make", [_broken_cupy_by_runtime, lambda: _ExplodingModule("cupy")],
                         ids=["getDeviceCount-raises", "attribute-access-raises"])
def test_available_devices_survives_broken_cupy(monkeypatch, make):
    monkeypatch.setitem(sys.modules, "cupy", make())
    monkeypatch.setattr(_backends, "_CUPY_STATUS", None)
    try:
        specs = xpconv.available_devices()
        assert "cpu" in specs and not any(s.startswith("cuda") for s in specs)
        assert str(xpconv.device("auto")) == "cpu"
        with pytest.raises(ValueError, match=r"device 'cuda' is not usable: CuPy is installed but cannot use a GPU"):
            xpconv.device("cuda")
    finally:
        _backends._CUPY_STATUS = None  # let the next caller probe the real CuPy again


# ----------------------------------------------------------------------------- asarray / to_numpy

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_dtype_string_lands_on_device(backend, dtype):
    a = backend.asarray([[1.0, 2.0], [3.0, 4.5]], dtype=dtype)
    assert_on(backend, a)
    assert a.dtype == backend.dtype(dtype) == getattr(backend.xp, dtype)
    b = backend.asarray(np.ones((2, 2), dtype="float64"), dtype=backend.dtype(dtype))  # a dtype object
    assert_on(backend, b)
    assert b.dtype == getattr(backend.xp, dtype)


def test_asarray_of_own_array_stays(backend):
    a = backend.asarray(np.arange(4.0), dtype="float64")
    b = backend.asarray(a)
    assert_on(backend, b)
    np.testing.assert_array_equal(xpconv.to_numpy(b), np.arange(4.0))


def test_dtype_unknown_name(backend):
    with pytest.raises(ValueError, match=r"no dtype named 'float128x'"):
        backend.asarray([1.0], dtype="float128x")


def test_asarray_takes_foreign_cpu_arrays_through_dlpack(backend):
    """Arrays of another library are shared through DLPack (tests/test_dlpack.py has the details)."""
    sources = [s for s in ("numpy", "torch", "jax", "array_api_strict")
               if s != backend.library and _installed(s)]
    assert sources
    for source in sources:
        foreign = make_backend(source).asarray(np.ones(3), dtype="float64")
        if backend.is_gpu and source != "numpy":   # a CPU array is not moved to a GPU implicitly
            with pytest.raises((TypeError, ValueError), match=r"asarray: .*to_numpy"):
                backend.asarray(foreign)
            continue
        assert_on(backend, backend.asarray(foreign))


def test_to_numpy_round_trip(backend, rng):
    host = rng.standard_normal((2, 3, 4))
    for dtype in ("float32", "float64"):
        a = backend.asarray(host, dtype=dtype)
        back = xpconv.to_numpy(a)
        assert isinstance(back, np.ndarray)
        assert back.dtype == np.dtype(dtype) and back.shape == host.shape
        np.testing.assert_array_equal(back, host.astype(dtype))
    view = backend.xp.permute_dims(backend.asarray(host, dtype="float64"), (2, 0, 1))
    np.testing.assert_array_equal(xpconv.to_numpy(view), host.transpose(2, 0, 1))


def test_to_numpy_of_host_values():
    np.testing.assert_array_equal(xpconv.to_numpy(np.arange(3)), np.arange(3))
    assert xpconv.to_numpy(np.float32(2.5)) == np.float32(2.5)


def test_device_str_and_repr_readable():
    dev = xpconv.device("cpu")
    assert str(dev) == "cpu"
    assert repr(dev) == "Device(spec='cpu')"
    assert f"{dev}" == "cpu"


# ----------------------------------------------------------------------------- module hygiene

def _python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_is_lazy():
    code = ("import sys, numpy as np, xpconv\n"
            "x = np.ones((1, 1, 4, 4)); xpconv.functional.conv2d(x, np.ones((1, 1, 3, 3)))\n"
            "xpconv.Pooling(2, 2).forward(x); xpconv.device('cpu')\n"
            "print('torch' in sys.modules, 'jax' in sys.modules, 'cupy' in sys.modules)")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]


@pytest.mark.parametrize("call, needs", [("xpconv.available_devices()", None),
                                         ("xpconv.device('array_api_strict')", "array_api_strict"),
                                         ("xpconv.device('torch')", "torch"),
                                         ("xpconv.device('auto')", None)])
def test_fresh_interpreter_device_calls(call, needs):
    """The first xpconv call in a fresh interpreter (nothing else imported) works, and where
    the library is missing it is one clear ValueError naming it (no ImportError)."""
    out = _python(f"import xpconv\ntry:\n    print({call})\n"
                  f"except ValueError as exc:\n    print('ValueError:', exc)")
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
    if needs is None or _installed(needs):
        assert not out.stdout.startswith("ValueError"), out.stdout
    else:
        assert out.stdout.startswith("ValueError") and needs in out.stdout and "not installed" in out.stdout, out.stdout


def _code_text(path: pathlib.Path) -> str:
    """The file's code with comments and string literals (docstrings, doctests) removed."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING))


OP_MODULES = ["xpconv/functional.py", "xpconv/_kernels/conv.py", "xpconv/_kernels/pool.py",
              "xpconv/_kernels/windows.py", "xpconv/_kernels/checks.py",
              "xpconv/_kernels/geometry.py", "xpconv/workspace.py"]


@pytest.mark.parametrize("path", OP_MODULES + sorted(str(p.relative_to(ROOT))
                                                     for p in (ROOT / "xpconv/layers").glob("*.py")))
def test_only_devices_module_names_numpy_or_cupy(path):
    code = _code_text(ROOT / path)
    for needle in ("import numpy", "from numpy", "numpy .", "cupy"):
        assert needle not in code, f"{path} mentions {needle!r} in its code"


def test_devices_modules_are_where_numpy_and_cupy_live():
    assert "import numpy" in _code_text(ROOT / "xpconv/devices.py")
    assert "cupy" in _code_text(ROOT / "xpconv/_backends.py")


# ----------------------------------------------------------------------------- keep_where

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("mask_shape", [(3, 4, 5), (3, 1, 5), (5,)])
def test_keep_where_fast_and_portable_paths_equal_where_bit_for_bit(dtype, mask_shape):
    """NumPy takes the branch-free bit-mask path; other libraries the portable xp.where
    (array_api_strict, or torch for float16, which array_api_strict lacks)."""
    from xpconv._kernels.fastpaths import keep_where

    if dtype == "float16":
        pytest.importorskip("torch", reason="the portable float16 path is checked on torch")
    other = xpconv.device("torch" if dtype == "float16" else "array_api_strict")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x.ravel()[:6] = [np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).smallest_subnormal, -np.nan]
    keep = rng.random(mask_shape) > 0.5
    expected = np.where(keep, x, np.zeros((), dtype))
    fast = keep_where(keep, x)
    portable = xpconv.to_numpy(keep_where(other.asarray(keep), other.asarray(x)))
    bits = {"float16": np.int16, "float32": np.int32, "float64": np.int64}[dtype]
    assert fast.dtype == x.dtype and fast.shape == expected.shape
    np.testing.assert_array_equal(fast.view(bits), expected.view(bits))
    np.testing.assert_array_equal(portable.view(bits), expected.view(bits))


# ----------------------------------------------------------------------------- backends

def test_every_cpu_device_is_not_a_gpu_and_gets_the_cpu_workspace():
    from xpconv import workspace
    for spec in xpconv.available_devices():
        dev = xpconv.device(spec)
        if spec.startswith("cuda") or ":cuda" in spec or ":gpu" in spec:
            assert dev.is_gpu and workspace.default_limit(dev) == devices.GPU_WORKSPACE
            continue
        assert not dev.is_gpu, spec
        assert workspace.default_limit(dev) == devices.CPU_WORKSPACE == 8 * 2**20
        a = dev.zeros((2, 3))
        assert devices.default_workspace(a) == devices.CPU_WORKSPACE
        assert devices.device_of(a).spec == dev.spec
        with devices.device_scope(a):
            np.testing.assert_array_equal(xpconv.to_numpy(devices.from_host(np.ones(2), a)), np.ones(2))
        dev.synchronize(a)


def test_only_numpy_and_torch_cpu_prefer_many_cheap_ops():
    """NumPy and torch's CPU keep the fast paths (bit masks, separable pooling: torch CPU
    measured 2.5x slower per step with the other); every other library and device gets the
    kernels with fewer, larger ops (a launch or a dispatch per op), and so does torch while
    counting as on a GPU."""
    for spec in xpconv.available_devices():
        dev = xpconv.device(spec)
        cheap_ops = dev.library == "numpy" or (dev.library == "torch" and str(dev.native) == "cpu")
        assert fastpaths.prefers_fewer_ops(dev.zeros((1,))) == (not cheap_ops), spec
        with fastpaths.as_on_a_gpu():
            assert fastpaths.prefers_fewer_ops(dev.zeros((1,))) == (dev.library != "numpy"), spec
