"""What xpconv needs to know about each array library: one small class per library.

Each :class:`Backend` makes :class:`~xpconv.devices.Device` objects from spec strings,
lists the devices usable here, and knows its library's device scope, synchronization and
copy to the host. Optional libraries are imported only when a spec asks for them.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys

import array_api_compat
import numpy

from . import _namespace, devices as _devices


class Backend:
    """What xpconv needs to know about one array library; one subclass per library.

    Attributes:
        library: the name in spec strings and ``Device.library``.
        prefers_fewer_ops: each op costs a launch or a dispatch (see :func:`prefers_fewer_ops`).
    """

    library = ""
    prefers_fewer_ops = True

    def owns(self, x) -> bool:
        """``x`` is an array of this library."""
        raise NotImplementedError

    def make(self, spec: str, where: str) -> _devices.Device:
        """The Device for ``where`` (the spec's part after the library), or ValueError."""
        raise NotImplementedError

    def available(self) -> list[str]:
        """Spec strings of this library usable here; never raises."""
        return []

    def spec_of(self, native) -> str:
        """Spec string of the library's device object ``native``."""
        raise NotImplementedError

    def is_gpu(self, native) -> bool:
        return False

    def scope(self, native):
        """Context in which new arrays land on ``native``."""
        return contextlib.nullcontext()

    def fewer_ops_on(self, native) -> bool:
        """Whether ``prefers_fewer_ops`` holds on this device (all of them, unless overridden)."""
        return True

    def synchronize(self, native, arrays) -> None:
        """Wait for work queued on ``native`` (and on ``arrays``)."""

    def from_host(self, xp, a, native):
        return xp.asarray(a, device=native)

    def to_numpy(self, x) -> numpy.ndarray:
        return numpy.asarray(x)

    def from_dlpack(self, xp, x, native):
        """``x`` of another library as this library's array, sharing its memory through DLPack.

        No ``device=``: the array stays where it is (the caller checks it landed on
        ``native``), so nothing is copied between devices behind the user's back.
        """
        return xp.from_dlpack(x)


class _NumpyBackend(Backend):
    library = "numpy"
    prefers_fewer_ops = False  # its fast paths (bit masks, separable pooling) are many cheap ops

    def owns(self, x):
        return array_api_compat.is_numpy_array(x)

    def make(self, spec, where):
        if where not in ("", "cpu"):
            unusable(f"numpy:{where}", "NumPy has only the 'cpu' device")
        import array_api_compat.numpy as xp
        return _devices.Device("cpu", xp, "cpu", "numpy")

    def available(self):
        return ["cpu"]

    def spec_of(self, native):
        return "cpu"


class _CupyBackend(Backend):
    """CuPy allocates on the *current* GPU and ignores ``device=``: work runs in its scope."""

    library = "cupy"

    def owns(self, x):
        return array_api_compat.is_cupy_array(x)

    def make(self, spec, where):
        where = where.removeprefix("cuda:").removeprefix("gpu:")
        index = _device_index(spec, where)
        count = cupy_gpu_count()
        if count == 0:
            unusable(spec, cupy_problem() or "no CUDA GPU is usable")
        if index >= count:
            unusable(spec, f"CuPy sees {count} GPU(s) (0..{count - 1})")
        import array_api_compat.cupy as xp
        import cupy
        return _devices.Device(f"cuda:{index}", xp, cupy.cuda.Device(index), "cupy")

    def available(self):
        return [f"cuda:{i}" for i in range(cupy_gpu_count())]

    def spec_of(self, native):
        return f"cuda:{native.id}"

    def is_gpu(self, native):
        return True

    def scope(self, native):
        return native

    def synchronize(self, native, arrays):
        native.synchronize()

    def from_host(self, xp, a, native):
        return xp.asarray(a)  # inside scope(native)

    def to_numpy(self, x):
        return x.get()


class _TorchBackend(Backend):
    library = "torch"
    gpu_types = ("cuda",)  # torch.device types that are GPUs (ROCm builds say "cuda" too)

    def fewer_ops_on(self, native):
        return getattr(native, "type", "cpu") != "cpu"     # a GPU, or meta (which computes nothing)

    def owns(self, x):
        return array_api_compat.is_torch_array(x)

    def make(self, spec, where):
        if not importable("torch"):
            unusable(f"torch:{where}" if where else "torch", "PyTorch is not installed")
        import array_api_compat.torch as xp
        import torch
        try:
            native = torch.device(where or "cpu")
            if native.type == "cuda":
                if not torch.cuda.is_available():
                    raise RuntimeError("torch.cuda.is_available() is False")
                native = torch.device("cuda", native.index or 0)
                torch.empty(0, device=native)  # raises when the index is out of range
            elif native.type != "cpu":
                torch.empty(0, device=native)
        except Exception as exc:  # bad string, missing GPU, ...
            unusable(f"torch:{where}", str(exc).splitlines()[0])
        return _devices.Device(f"torch:{native}", xp, native, "torch")

    def available(self):
        if not importable("torch"):
            return []
        specs = ["torch"]
        with contextlib.suppress(Exception):
            torch = importlib.import_module("torch")
            if torch.cuda.is_available():
                specs += [f"torch:cuda:{i}" for i in range(torch.cuda.device_count())]
        return specs

    def spec_of(self, native):
        return f"torch:{native}"

    def is_gpu(self, native):
        return native.type in self.gpu_types

    def synchronize(self, native, arrays):
        if native.type == "cuda":
            sys.modules["torch"].cuda.synchronize(native)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()


class _JaxBackend(Backend):
    library = "jax"

    def owns(self, x):
        return array_api_compat.is_jax_array(x)

    def make(self, spec, where):
        if not importable("jax"):
            unusable(f"jax:{where}" if where else "jax", "JAX is not installed")
        import jax
        import jax.numpy as xp
        platform, _, index = (where or "cpu").partition(":")
        try:
            native = jax.devices(platform)[_device_index(f"jax:{where}", index)]
        except (RuntimeError, IndexError) as exc:
            unusable(f"jax:{where}", str(exc).splitlines()[0] or "no such device")
        return _devices.Device(f"jax:{platform}:{native.id}", xp, native, "jax")

    def available(self):
        if not importable("jax"):
            return []
        specs = ["jax"]
        with contextlib.suppress(Exception):
            jax = importlib.import_module("jax")
            specs += [f"jax:gpu:{i}" for i in range(len(jax.devices("gpu")))]
        return specs

    def spec_of(self, native):
        if native is None:          # a tracer under jax.jit: no device yet; the default one
            return "jax"
        return f"jax:{native.platform}:{native.id}"

    def is_gpu(self, native):
        return native is not None and native.platform in ("gpu", "cuda", "rocm")

    def synchronize(self, native, arrays):
        for a in arrays:
            a.block_until_ready()


class _StrictBackend(Backend):
    """array-api-strict: the standard and nothing more (NumPy underneath, fake devices)."""

    library = "array_api_strict"

    def owns(self, x):
        return type(x).__module__.split(".")[0] == "array_api_strict"

    def make(self, spec, where):
        if not importable("array_api_strict"):
            unusable("array_api_strict", "array-api-strict is not installed")
        import array_api_strict as xp
        name = where or "CPU_DEVICE"
        devices = xp.__array_namespace_info__().devices()
        known = [d for d in devices if _strict_name(d) == name]
        if not known:
            unusable(f"array_api_strict:{where}", "array-api-strict devices are "
                      + ", ".join(_strict_name(d) for d in devices))
        return _devices.Device(f"array_api_strict:{name}", xp, known[0], "array_api_strict")

    def available(self):
        return ["array_api_strict", "array_api_strict:device1"] if importable("array_api_strict") else []

    def spec_of(self, native):
        return f"array_api_strict:{_strict_name(native)}"

    def to_numpy(self, x):
        xp = _namespace.array_namespace(x)
        return numpy.asarray(x.to_device(xp.Device("CPU_DEVICE")))

    def from_dlpack(self, xp, x, native):
        # its devices are labels on host memory: the data can be shared onto any of them
        return xp.from_dlpack(x, device=native)


class _GenericBackend(Backend):
    """Any other Array API library: no device knowledge beyond the standard."""

    def owns(self, x):
        return True


BACKENDS = {b.library: b for b in (_NumpyBackend(), _CupyBackend(), _TorchBackend(), _JaxBackend(),
                                    _StrictBackend())}
GENERIC = _GenericBackend()


_BACKEND_OF: dict[type, Backend] = {}


def backend_of(x) -> Backend:
    """The backend whose library ``x`` belongs to (the generic one for unknown libraries);
    kept per type, but for NumPy arrays of JAX's ``float0`` (a void dtype), which are JAX's.
    """
    found = _BACKEND_OF.get(type(x))
    if found is not None and getattr(getattr(x, "dtype", None), "kind", None) != "V":
        return found
    found = next((b for b in BACKENDS.values() if b.owns(x)), GENERIC)
    if getattr(getattr(x, "dtype", None), "kind", None) != "V":
        _BACKEND_OF[type(x)] = found
    return found


def _strict_name(native) -> str:
    return str(native).split("'")[1]


# ----------------------------------------------------------------------------- probes

def importable(name: str) -> bool:
    if name in sys.modules:
        return True
    return importlib.util.find_spec(name) is not None


def cupy_gpu_count() -> int:
    """GPUs CuPy can use; 0 when CuPy, the driver or a GPU is missing. Never raises."""
    return _cupy_status()[0]


def cupy_problem() -> str:
    return _cupy_status()[1]


_CUPY_STATUS: tuple[int, str] | None = None


def _cupy_status() -> tuple[int, str]:
    global _CUPY_STATUS
    if _CUPY_STATUS is None:
        if not importable("cupy"):
            _CUPY_STATUS = (0, "CuPy is not installed (pip install 'xpconv[cuda12]' or 'xpconv[cuda13]')")
        else:
            try:
                import cupy
                count = cupy.cuda.runtime.getDeviceCount()
                _CUPY_STATUS = (count, "" if count else "CuPy found no CUDA GPU")
            except Exception as exc:  # no driver, no GPU, broken install
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                _CUPY_STATUS = (0, f"CuPy is installed but cannot use a GPU ({first})")
    return _CUPY_STATUS


def _device_index(spec: str, text: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        unusable(spec, f"expected a GPU index such as 'cuda:0'; got {text!r}")
    return int(text)


def is_foreign_array(obj, library: str) -> bool:
    if isinstance(obj, numpy.ndarray) or not _namespace.is_array(obj):
        return False
    return not BACKENDS[library].owns(obj)


def unusable(spec: str, why: str):
    raise ValueError(f"device {spec!r} is not usable: {why}. "
                     f"Usable here: {', '.join(_devices.available_devices())}")

