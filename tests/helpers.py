"""Helpers shared by the tests (``from tests.helpers import ...``): the backends every
parametrized test runs on, placement checks and traced-memory probes."""
from __future__ import annotations

import gc
import tracemalloc

import pytest

import xpconv

BACKENDS = [
    "numpy",
    "array_api_strict",            # CPU_DEVICE
    "array_api_strict:device1",    # a fake second device: results must stay on it
    "torch",
    "jax",
    "cupy",
]


def make_backend(spec: str) -> xpconv.Device:
    """xpconv.Device for ``spec``, or skip the test with the reason it is unusable."""
    try:
        dev = xpconv.device(spec)
    except ValueError as exc:
        pytest.skip(f"{spec}: {exc}")
    if dev.library == "jax":
        import jax
        jax.config.update("jax_enable_x64", True)  # float64 references need it
    return dev


def assert_on(backend: xpconv.Device, *arrays) -> None:
    """Every array belongs to ``backend``'s library and device (nothing leaked to the host)."""
    from array_api_compat import array_namespace, device
    for a in arrays:
        assert array_namespace(a) is backend.xp, f"{type(a)} is not a {backend.library} array"
        assert device(a) == backend.native, f"array on {device(a)}, expected {backend.native}"


def peak_traced_bytes(fn) -> int:
    """Peak bytes traced by ``tracemalloc`` (NumPy reports its buffers to it) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _nbytes(out) -> int:
    if out is None:
        return 0
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    return out.nbytes


def traced_extra_bytes(fn) -> int:
    """Peak traced bytes while ``fn()`` runs, less the bytes of what it returns.

    One untraced call first, so that lazy imports and caches of a first call are not counted.
    """
    fn()
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - _nbytes(out)


def batch_norm_net(dtype: str, *, image: int = 12, classes: int = 10, device="cpu") -> xpconv.Sequential:
    """A small network with BatchNormalization, seeded: conv 3x3 (4 filters, pad 1) - BN - ReLU -
    max pool 2 - affine; x: (N, 1, image, image) -> (N, classes)."""
    import numpy as np
    rng = np.random.default_rng(0)
    dev = xpconv.device(device)

    def a(v):
        return dev.asarray(np.asarray(v), dtype)
    features = 4 * (image // 2) ** 2
    return xpconv.Sequential([
        ("Conv1", xpconv.Convolution(a(0.3 * rng.standard_normal((4, 1, 3, 3))), a(np.zeros(4)), pad=1)),
        ("BN1", xpconv.BatchNormalization(a(np.ones(4)), a(np.zeros(4)))),
        ("Relu1", xpconv.Relu()),
        ("Pool1", xpconv.Pooling(2, 2)),
        ("Flatten", xpconv.Flatten()),
        ("Affine1", xpconv.Affine(a(0.1 * rng.standard_normal((features, classes))), a(np.zeros(classes))))])
