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
lives in one small class per library, in :mod:`xpconv._backends`.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy

from . import _namespace
from ._backends import (
    BACKENDS as _BACKENDS,
    GENERIC as _GENERIC,
    Backend as _Backend,
    backend_of as _backend_of,
    cupy_gpu_count as _cupy_gpu_count,
    is_foreign_array as _is_foreign_array,
    unusable as _unusable,
)
from ._typing import Array

__all__ = ["Device", "device", "available_devices", "to_numpy", "device_scope", "from_host",
           "device_of", "dtype_name", "is_host_numpy", "host_rng", "default_workspace",
           "CPU_WORKSPACE", "GPU_WORKSPACE"]

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

    def asarray(self, obj: Any, dtype: Any = None) -> Array:
        """Put ``obj`` (host data or an array of this library) on this device.

        ``dtype`` may be a dtype of this namespace or a name such as ``"float32"``.
        Host NumPy data of any layout and byte order is accepted (copied to native
        order and C layout where the library needs it); complex data is refused
        for a real ``dtype`` rather than losing its imaginary part.

        An array of another library (a torch tensor for a NumPy device, a CuPy array
        for torch on the same GPU, ...) is taken through DLPack (``from_dlpack``),
        without a copy when the memory can be shared (then writes to one show in the
        other) and no ``dtype`` conversion is asked for. Memory is never moved between
        devices implicitly: an array that this library cannot read where it lies (a GPU
        array for NumPy), or that lands elsewhere than this device, is refused.

        Args:
            obj: host data (a NumPy array, a scalar, nested lists) or an array of any
                supported library.
            dtype: a dtype of this namespace, a dtype name, or None to keep ``obj``'s.

        Raises:
            TypeError: the array cannot be shared through DLPack (its device, a torch
                tensor that requires grad, ...); the message says how to move it.
            ValueError: shared, it would sit on another device than this one.
        """
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        if _is_foreign_array(obj, self.library):
            obj = self._from_dlpack(obj)
            if (dtype is not None and self.xp.isdtype(obj.dtype, "complex floating")
                    and not self.xp.isdtype(dtype, "complex floating")):
                raise TypeError(f"{self}.asarray: got complex data ({obj.dtype}) for the real dtype "
                                f"{dtype}, which would drop the imaginary part; pass x.real or abs(x)")
        if isinstance(obj, (numpy.ndarray, numpy.generic)):
            if (obj.dtype.kind == "c" and dtype is not None
                    and not self.xp.isdtype(dtype, "complex floating")):
                raise TypeError(f"{self}.asarray: got complex data ({obj.dtype}) for the real dtype "
                                f"{dtype}, which would drop the imaginary part; pass x.real or abs(x)")
            if not obj.dtype.isnative:     # torch, JAX and array-api-strict refuse it
                obj = obj.astype(obj.dtype.newbyteorder("="))
            if self.library != "numpy" and any(s < 0 for s in obj.strides):   # torch refuses it
                obj = numpy.ascontiguousarray(obj)
            if self.library == "torch" and isinstance(obj, numpy.ndarray) and not obj.flags.writeable:
                # a read-only array (a memory map): torch would share it and warn; it gets a copy
                with self.scope():
                    return self.xp.asarray(obj, dtype=dtype, device=self.native, copy=True)
        with self.scope():
            if self.library == "cupy":  # CuPy allocates on the current GPU (the scope)
                return self.xp.asarray(obj, dtype=dtype)
            return self.xp.asarray(obj, dtype=dtype, device=self.native)

    def _from_dlpack(self, obj):
        """``obj`` of another library as an array of this one, sharing memory through DLPack."""
        what = f"a {type(obj).__module__}.{type(obj).__name__}"
        try:
            where = f" on {_backend_of(obj).spec_of(_namespace.device(obj))}"
        except Exception:
            where = ""
        how = ("move it first: to this device with its own library (e.g. torch's x.to(...), "
               "jax.device_put), or through the host with xpconv.to_numpy(x)")
        try:
            with self.scope():
                out = _BACKENDS[self.library].from_dlpack(self.xp, obj, self.native)
        except Exception as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise TypeError(f"{self}.asarray: cannot share {what}{where} through DLPack ({why}); {how}") from None
        if _namespace.device(out) != self.native:
            raise ValueError(f"{self}.asarray: {what}{where} is not on {self}: DLPack shares memory in place "
                             f"and never moves it between devices; {how}")
        return out

    def zeros(self, shape: int | tuple[int, ...], dtype: Any = "float32") -> Array:
        """A new array of zeros on this device; ``dtype`` a name or a dtype of this namespace."""
        if isinstance(dtype, str):
            dtype = self.dtype(dtype)
        with self.scope():
            if self.library == "cupy":
                return self.xp.zeros(shape, dtype=dtype)
            return self.xp.zeros(shape, dtype=dtype, device=self.native)

    def dtype(self, name: str) -> Any:
        """The namespace's dtype called ``name`` (``"float32"``, ``"float64"``, ...)."""
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise ValueError(f"device {self}: no dtype named {name!r}") from None

    def scope(self) -> AbstractContextManager[Any]:
        """Context in which new arrays of this namespace land on this device."""
        return _BACKENDS[self.library].scope(self.native)

    def synchronize(self, *arrays: Array) -> None:
        """Wait until work queued on this device (and on ``arrays``) is done."""
        _BACKENDS[self.library].synchronize(self.native, arrays)

    @property
    def is_gpu(self) -> bool:
        """True for a GPU device (CuPy, torch CUDA, JAX GPU)."""
        return _BACKENDS[self.library].is_gpu(self.native)


def device(spec: str | Device = "cpu") -> Device:
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


def to_numpy(x: Any) -> numpy.ndarray:
    """Copy any supported array (NumPy, CuPy, torch, JAX, array-api-strict) to host NumPy."""
    if isinstance(x, numpy.ndarray) or numpy.isscalar(x) or not _namespace.is_array(x):
        return numpy.asarray(x)
    return _backend_of(x).to_numpy(x)


def from_host(a: numpy.ndarray, like: Array) -> Array:
    """Put host array ``a`` on the namespace and device of array ``like``."""
    xp = _namespace.array_namespace(like)
    native = _namespace.device(like)
    backend = _backend_of(like)
    with backend.scope(native):
        return backend.from_host(xp, a, native)


def device_of(x: Array) -> Device:
    """The :class:`Device` that array ``x`` lives on."""
    backend = _backend_of(x)
    if backend is _GENERIC:
        raise TypeError(f"device_of: unsupported array type {type(x).__module__}.{type(x).__name__}")
    return device(backend.spec_of(_namespace.device(x)))


def dtype_name(x: Array) -> str:
    """Name of ``x``'s dtype, the same for every library: ``"float32"``, ``"int64"``, ..."""
    name = getattr(x.dtype, "name", None)
    return name if isinstance(name, str) else str(x.dtype).rsplit(".", 1)[-1]


def host_rng(seed: Any = None) -> numpy.random.Generator:
    """Host random generator (the Array API has none): ``numpy.random.default_rng(seed)``.

    Draw on the host, then move once with :func:`from_host` or ``Device.asarray``.
    """
    return numpy.random.default_rng(seed)


def is_host_numpy(x: Any) -> bool:
    """True for a NumPy array (host data that a model moves to its device)."""
    return isinstance(x, numpy.ndarray)


def device_scope(x: Array) -> AbstractContextManager[Any]:
    """Context in which allocations follow ``x``'s device.

    Needed for CuPy, whose creation functions allocate on the *current* GPU and
    ignore ``device=``; a no-op for every other library.
    """
    return _backend_of(x).scope(_namespace.device(x))




CPU_WORKSPACE = 8 * 2**20     # columns that stay in a CPU's cache (measured best on 2 cores)
GPU_WORKSPACE = 512 * 2**20   # a big conv's whole batch in one chunk: few kernel launches




def default_workspace(where: Device | Array) -> int:
    """Default workspace limit in bytes for a :class:`Device` or an array's device:
    ``GPU_WORKSPACE`` (512 MiB) on a GPU, ``CPU_WORKSPACE`` (8 MiB) elsewhere.
    """
    backend: _Backend
    if isinstance(where, Device):
        backend, native = _BACKENDS[where.library], where.native
    else:
        backend, native = _backend_of(where), _namespace.device(where)
    return GPU_WORKSPACE if backend.is_gpu(native) else CPU_WORKSPACE


