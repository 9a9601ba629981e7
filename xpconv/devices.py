"""Device specs -> Array API namespaces.

This is the only module that names NumPy or CuPy. Everything else in xpconv takes
its namespace from its inputs (``array_namespace(x)``) and allocates with the
input's dtype and device.

Spec strings::

    "cpu"                       NumPy on the host
    "cuda", "cuda:N"            CuPy on GPU N (default 0)
    "auto"                      "cuda" when a GPU is usable, else "cpu"
    "<library>[:<device>]"      any installed Array API library, e.g.
                                "numpy", "cupy:1", "torch", "torch:cuda:0",
                                "jax", "jax:gpu:0", "array_api_strict",
                                "array_api_strict:device1"

Optional libraries are imported only when a spec asks for them. What xpconv needs to
know about each library (its devices, GPU or not, scope, synchronize, copy to the host)
lives in one small ``_Backend`` class per library, at the end of this module.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy

__all__ = ["Device", "device", "available_devices", "to_numpy", "device_scope", "from_host",
           "device_of", "dtype_name", "is_host_numpy", "host_rng", "keep_where", "constant",
           "prefers_fewer_ops", "default_workspace", "CPU_WORKSPACE", "GPU_WORKSPACE"]

_ALIASES = {"np": "numpy", "cp": "cupy", "pytorch": "torch", "jax.numpy": "jax",
            "strict": "array_api_strict", "array-api-strict": "array_api_strict"}


@dataclass(frozen=True)
class Device:
    """An Array API namespace together with one of its devices.

    Attributes:
        spec: canonical spec string, e.g. ``"cpu"``, ``"cuda:0"``, ``"torch:cpu"``.
        xp: the array-api-compat namespace of the library.
        native: the library's own device object (``torch.device``,
            ``cupy.cuda.Device``, ``array_api_strict.Device``, ...).
        library: "numpy", "cupy", "torch", "jax" or "array_api_strict".
    """

    spec: str
    xp: Any = field(repr=False)
    native: Any = field(repr=False)
    library: str = field(repr=False, default="numpy")

    def __str__(self) -> str:
        return self.spec

    def asarray(self, obj, dtype=None):
        """Put ``obj`` (host data or an array of this library) on this device.

        ``dtype`` may be a dtype of this namespace or a name such as ``"float32"``.
        Arrays of another library are refused: convert them with :func:`to_numpy`.
        Host NumPy data of any layout and byte order is accepted (copied to native
        order and C layout where the library needs it); complex data is refused
        for a real ``dtype`` rather than losing its imaginary part.
        """
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if _is_foreign_array(obj, self.library):
            raise TypeError(
                f"{self}.asarray: got a {type(obj).__module__}.{type(obj).__name__}; "
                f"move it to the host first with xpconv.to_numpy(x)")
        if isinstance(obj, (numpy.ndarray, numpy.generic)):
            if (obj.dtype.kind == "c" and dtype is not None
                    and not self.xp.isdtype(dtype, "complex floating")):
                raise TypeError(f"{self}.asarray: got complex data ({obj.dtype}) for the real dtype "
                                f"{dtype}, which would drop the imaginary part; pass x.real or abs(x)")
            if not obj.dtype.isnative:     # torch, JAX and array-api-strict refuse it
                obj = obj.astype(obj.dtype.newbyteorder("="))
            if self.library != "numpy" and any(s < 0 for s in obj.strides):   # torch refuses it
                obj = numpy.ascontiguousarray(obj)
        with self.scope():
            if self.library == "cupy":  # CuPy allocates on the current GPU (the scope)
                return self.xp.asarray(obj, dtype=dtype)
            return self.xp.asarray(obj, dtype=dtype, device=self.native)

    def zeros(self, shape, dtype="float32"):
        """A new array of zeros on this device; ``dtype`` a name or a dtype of this namespace."""
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        with self.scope():
            if self.library == "cupy":
                return self.xp.zeros(shape, dtype=dtype)
            return self.xp.zeros(shape, dtype=dtype, device=self.native)

    def dtype(self, name: str):
        """The namespace's dtype called ``name`` (``"float32"``, ``"float64"``, ...)."""
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise ValueError(f"device {self}: no dtype named {name!r}") from None

    def scope(self):
        """Context in which new arrays of this namespace land on this device."""
        return _BACKENDS[self.library].scope(self.native)

    def synchronize(self, *arrays) -> None:
        """Wait until work queued on this device (and on ``arrays``) is done."""
        _BACKENDS[self.library].synchronize(self.native, arrays)

    @property
    def is_gpu(self) -> bool:
        """True for a GPU device (CuPy, torch CUDA, JAX GPU)."""
        return _BACKENDS[self.library].is_gpu(self.native)


def device(spec: "str | Device" = "cpu") -> Device:
    """Resolve a spec string (see module docstring) to a :class:`Device`.

    Raises:
        ValueError: unknown or unusable spec; the message lists the usable ones.
    """
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device: expected a spec string such as 'cpu' or 'cuda:0'; got {spec!r}")
    text = spec.strip().lower() if spec.strip().lower() in ("auto", "cpu", "gpu") else spec.strip()
    if text == "auto":
        return device("cuda") if _cupy_gpu_count() > 0 else device("cpu")
    if text == "cpu":
        return _BACKENDS["numpy"].make("cpu", "cpu")
    if text == "gpu" or text == "cuda" or text.startswith("cuda:"):
        return _BACKENDS["cupy"].make(spec, text.partition(":")[2])
    library, _, where = text.partition(":")
    library = _ALIASES.get(library.lower(), library.lower())
    if library not in _BACKENDS:
        _unusable(spec, f"unknown library {library!r}")
    return _BACKENDS[library].make(spec, where)


def available_devices() -> list[str]:
    """Spec strings usable here, e.g. ``["cpu", "cuda:0", "torch", ...]``.

    Never raises: a library that is missing or cannot reach its device is left out.
    """
    return [spec for backend in _BACKENDS.values() for spec in backend.available()]


def to_numpy(x) -> numpy.ndarray:
    """Copy any supported array (NumPy, CuPy, torch, JAX, array-api-strict) to host NumPy."""
    if isinstance(x, numpy.ndarray) or numpy.isscalar(x) or not array_api_compat.is_array_api_obj(x):
        return numpy.asarray(x)
    return _backend_of(x).to_numpy(x)


def from_host(a: numpy.ndarray, like):
    """Put host array ``a`` on the namespace and device of array ``like``."""
    xp = array_api_compat.array_namespace(like)
    native = array_api_compat.device(like)
    backend = _backend_of(like)
    with backend.scope(native):
        return backend.from_host(xp, a, native)


def device_of(x) -> Device:
    """The :class:`Device` that array ``x`` lives on."""
    backend = _backend_of(x)
    if backend is _GENERIC:
        raise TypeError(f"device_of: unsupported array type {type(x).__module__}.{type(x).__name__}")
    return device(backend.spec_of(array_api_compat.device(x)))


def dtype_name(x) -> str:
    """Name of ``x``'s dtype, the same for every library: ``"float32"``, ``"int64"``, ..."""
    name = getattr(x.dtype, "name", None)
    return name if isinstance(name, str) else str(x.dtype).rsplit(".", 1)[-1]


def host_rng(seed=None) -> numpy.random.Generator:
    """Host random generator (the Array API has none): ``numpy.random.default_rng(seed)``.

    Draw on the host, then move once with :func:`from_host` or ``Device.asarray``.
    """
    return numpy.random.default_rng(seed)


def is_host_numpy(x) -> bool:
    """True for a NumPy array (host data that a model moves to its device)."""
    return isinstance(x, numpy.ndarray)


def device_scope(x):
    """Context in which allocations follow ``x``'s device.

    Needed for CuPy, whose creation functions allocate on the *current* GPU and
    ignore ``device=``; a no-op for every other library.
    """
    return _backend_of(x).scope(array_api_compat.device(x))


_AS_ON_A_GPU = contextvars.ContextVar("xpconv_as_on_a_gpu", default=False)


def prefers_fewer_ops(x) -> bool:
    """True where every op has a fixed cost that dwarfs its work at these sizes (a kernel
    launch on a GPU, a dispatch in JAX): kernels then prefer fewer, larger ops. False on
    NumPy, whose per-op cost is small and whose fast paths are many cheap ops, and on torch's
    CPU, where the fewer but heavier ops measured 2.5x slower per SimpleConvNet step (39 vs
    15.5 ms); :func:`as_on_a_gpu` makes torch choose as on a GPU (the launch proxy)."""
    backend = _backend_of(x)
    return backend.prefers_fewer_ops and (_AS_ON_A_GPU.get() or backend.fewer_ops_on(
        array_api_compat.device(x)))


@contextlib.contextmanager
def as_on_a_gpu():
    """Kernels choose their paths as they would on a GPU (for counting what a GPU would launch
    on torch's CPU or meta device: :func:`xpconv.launches.count_launches`)."""
    token = _AS_ON_A_GPU.set(True)
    try:
        yield
    finally:
        _AS_ON_A_GPU.reset(token)


def default_workspace(where) -> int:
    """Default workspace limit in bytes for a :class:`Device` or an array's device:
    ``GPU_WORKSPACE`` (512 MiB) on a GPU, ``CPU_WORKSPACE`` (8 MiB) elsewhere."""
    if isinstance(where, Device):
        backend, native = _BACKENDS[where.library], where.native
    else:
        backend, native = _backend_of(where), array_api_compat.device(where)
    return GPU_WORKSPACE if backend.is_gpu(native) else CPU_WORKSPACE


# ----------------------------------------------------------------------------- fast paths

_SAME_SIZE_INT = {2: numpy.int16, 4: numpy.int32, 8: numpy.int64}


def keep_where(keep, x):
    """``where(keep, x, 0)``: ``x`` where ``keep`` is True, else +0 (NaN/Inf kept exactly).

    Shapes broadcast. The portable path is ``xp.where``. On NumPy, whose ``where``
    mispredicts a branch per element on random masks (a ReLU's or a max pool's: ~7x
    slower than arithmetic), the float bits are ANDed with a mask of all-ones/zeros
    instead: the same result, bit for bit, with no branch.
    """
    if (isinstance(x, numpy.ndarray) and isinstance(keep, numpy.ndarray)
            and x.dtype.kind == "f" and x.dtype.itemsize in _SAME_SIZE_INT):
        ints = _SAME_SIZE_INT[x.dtype.itemsize]
        shape = numpy.broadcast_shapes(keep.shape, x.shape)
        bits = numpy.empty(shape, dtype=ints)
        numpy.negative(keep, out=bits, dtype=ints)   # 0 / all ones  (bool -> int: 0 / -1)
        numpy.bitwise_and(bits, x.view(ints), out=bits)
        return bits.view(x.dtype)
    xp = array_api_compat.array_namespace(x)
    return xp.where(keep, x, constant(0, x))


_CONSTANTS: dict = {}


def constant(value, like, dtype=None, *, key=None):
    """A read-only array of ``like``'s library and device: ``value`` (a number, or what
    ``build()`` returns when ``value`` is a callable), in ``dtype`` (default: ``like``'s).

    Outside NumPy it is built once per (library, device, dtype, ``key``) and reused: a
    Python scalar given to ``where``, or an ``arange``, is otherwise a fill kernel per call
    on a GPU. Never modify the result. NumPy (cheap to build) gets a fresh array.

    Args:
        value: a number, or a callable ``build(xp, dtype, device)`` returning the array.
        like: an array of the library and device wanted.
        dtype: a dtype of ``like``'s namespace; default ``like.dtype``.
        key: what identifies a callable ``value`` (hashable); numbers are their own key.
    """
    xp = array_api_compat.array_namespace(like)
    dtype = like.dtype if dtype is None else dtype
    where = array_api_compat.device(like)
    if callable(value):
        build = value
    else:
        def build(xp, dtype, where):
            return xp.asarray(value, dtype=dtype, device=where)
    if isinstance(like, numpy.ndarray):
        return build(xp, dtype, where)
    cache_key = (type(like).__module__, str(where), str(dtype), repr(value) if key is None else key)
    try:
        found = _CONSTANTS.get(cache_key)
    except TypeError:                 # an unhashable key: build it every time
        return build(xp, dtype, where)
    if found is None:
        found = _CONSTANTS[cache_key] = build(xp, dtype, where)
    return found


# ----------------------------------------------------------------------------- backends

CPU_WORKSPACE = 8 * 2**20     # columns that stay in a CPU's cache (measured best on 2 cores)
GPU_WORKSPACE = 512 * 2**20   # a big conv's whole batch in one chunk: few kernel launches


class _Backend:
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

    def make(self, spec: str, where: str) -> Device:
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


class _NumpyBackend(_Backend):
    library = "numpy"
    prefers_fewer_ops = False  # its fast paths (bit masks, separable pooling) are many cheap ops

    def owns(self, x):
        return array_api_compat.is_numpy_array(x)

    def make(self, spec, where):
        if where not in ("", "cpu"):
            _unusable(f"numpy:{where}", "NumPy has only the 'cpu' device")
        import array_api_compat.numpy as xp
        return Device("cpu", xp, "cpu", "numpy")

    def available(self):
        return ["cpu"]

    def spec_of(self, native):
        return "cpu"


class _CupyBackend(_Backend):
    """CuPy allocates on the *current* GPU and ignores ``device=``: work runs in its scope."""

    library = "cupy"

    def owns(self, x):
        return array_api_compat.is_cupy_array(x)

    def make(self, spec, where):
        where = where.removeprefix("cuda:").removeprefix("gpu:")
        index = _device_index(spec, where)
        count = _cupy_gpu_count()
        if count == 0:
            _unusable(spec, _cupy_problem() or "no CUDA GPU is usable")
        if index >= count:
            _unusable(spec, f"CuPy sees {count} GPU(s) (0..{count - 1})")
        import array_api_compat.cupy as xp
        import cupy
        return Device(f"cuda:{index}", xp, cupy.cuda.Device(index), "cupy")

    def available(self):
        return [f"cuda:{i}" for i in range(_cupy_gpu_count())]

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


class _TorchBackend(_Backend):
    library = "torch"
    gpu_types = ("cuda",)  # torch.device types that are GPUs (ROCm builds say "cuda" too)

    def fewer_ops_on(self, native):
        return getattr(native, "type", "cpu") != "cpu"     # a GPU, or meta (which computes nothing)

    def owns(self, x):
        return array_api_compat.is_torch_array(x)

    def make(self, spec, where):
        if not _importable("torch"):
            _unusable(f"torch:{where}" if where else "torch", "PyTorch is not installed")
        import torch
        import array_api_compat.torch as xp
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
            _unusable(f"torch:{where}", str(exc).splitlines()[0])
        return Device(f"torch:{native}", xp, native, "torch")

    def available(self):
        if not _importable("torch"):
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


class _JaxBackend(_Backend):
    library = "jax"

    def owns(self, x):
        return array_api_compat.is_jax_array(x)

    def make(self, spec, where):
        if not _importable("jax"):
            _unusable(f"jax:{where}" if where else "jax", "JAX is not installed")
        import jax
        import jax.numpy as xp
        platform, _, index = (where or "cpu").partition(":")
        try:
            native = jax.devices(platform)[_device_index(f"jax:{where}", index)]
        except (RuntimeError, IndexError) as exc:
            _unusable(f"jax:{where}", str(exc).splitlines()[0] or "no such device")
        return Device(f"jax:{platform}:{native.id}", xp, native, "jax")

    def available(self):
        if not _importable("jax"):
            return []
        specs = ["jax"]
        with contextlib.suppress(Exception):
            jax = importlib.import_module("jax")
            specs += [f"jax:gpu:{i}" for i in range(len(jax.devices("gpu")))]
        return specs

    def spec_of(self, native):
        return f"jax:{native.platform}:{native.id}"

    def is_gpu(self, native):
        return native.platform in ("gpu", "cuda", "rocm")

    def synchronize(self, native, arrays):
        for a in arrays:
            a.block_until_ready()


class _StrictBackend(_Backend):
    """array-api-strict: the standard and nothing more (NumPy underneath, fake devices)."""

    library = "array_api_strict"

    def owns(self, x):
        return type(x).__module__.split(".")[0] == "array_api_strict"

    def make(self, spec, where):
        if not _importable("array_api_strict"):
            _unusable("array_api_strict", "array-api-strict is not installed")
        import array_api_strict as xp
        name = where or "CPU_DEVICE"
        devices = xp.__array_namespace_info__().devices()
        known = [d for d in devices if _strict_name(d) == name]
        if not known:
            _unusable(f"array_api_strict:{where}", "array-api-strict devices are "
                      + ", ".join(_strict_name(d) for d in devices))
        return Device(f"array_api_strict:{name}", xp, known[0], "array_api_strict")

    def available(self):
        return ["array_api_strict", "array_api_strict:device1"] if _importable("array_api_strict") else []

    def spec_of(self, native):
        return f"array_api_strict:{_strict_name(native)}"

    def to_numpy(self, x):
        xp = array_api_compat.array_namespace(x)
        return numpy.asarray(x.to_device(xp.Device("CPU_DEVICE")))


class _GenericBackend(_Backend):
    """Any other Array API library: no device knowledge beyond the standard."""

    def owns(self, x):
        return True


_BACKENDS = {b.library: b for b in (_NumpyBackend(), _CupyBackend(), _TorchBackend(), _JaxBackend(),
                                    _StrictBackend())}
_GENERIC = _GenericBackend()


def _backend_of(x) -> _Backend:
    """The backend whose library ``x`` belongs to (the generic one for unknown libraries)."""
    for backend in _BACKENDS.values():
        if backend.owns(x):
            return backend
    return _GENERIC


def _strict_name(native) -> str:
    return str(native).split("'")[1]


# ----------------------------------------------------------------------------- probes

def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    return importlib.util.find_spec(name) is not None


def _cupy_gpu_count() -> int:
    """GPUs CuPy can use; 0 when CuPy, the driver or a GPU is missing. Never raises."""
    return _cupy_status()[0]


def _cupy_problem() -> str:
    return _cupy_status()[1]


_CUPY_STATUS: "tuple[int, str] | None" = None


def _cupy_status() -> tuple[int, str]:
    global _CUPY_STATUS
    if _CUPY_STATUS is None:
        if not _importable("cupy"):
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
        _unusable(spec, f"expected a GPU index such as 'cuda:0'; got {text!r}")
    return int(text)


def _is_foreign_array(obj, library: str) -> bool:
    if isinstance(obj, numpy.ndarray) or not array_api_compat.is_array_api_obj(obj):
        return False
    return not _BACKENDS[library].owns(obj)


def _unusable(spec: str, why: str):
    raise ValueError(f"device {spec!r} is not usable: {why}. "
                     f"Usable here: {', '.join(available_devices())}")
