"""Shared fixtures: every test that takes ``backend`` runs once per Array API backend.

Backends that are not installed or cannot reach their device are skipped, with the
reason, so a CPU-only machine runs numpy, array_api_strict (two devices), torch and
jax, and a GPU machine adds cupy.
"""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
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


@pytest.fixture(params=BACKENDS)
def backend(request) -> xpconv.Device:
    """An xpconv.Device per backend; ``backend.asarray(np_array, dtype="float64")`` moves data."""
    return make_backend(request.param)


@pytest.fixture(autouse=True)
def _every_generator_is_seeded(monkeypatch):
    """A test that draws from an unseeded generator (``default_rng()`` or ``seed=None``, in a
    test or inside xpconv: models, Trainer, Dropout) fails at once instead of flaking."""
    real = np.random.default_rng

    def seeded_only(seed=None):
        if seed is None:
            raise AssertionError("unseeded numpy.random.default_rng(): seed every generator "
                                 "(model seed=, Trainer seed=, Dropout seed=)")
        return real(seed)

    monkeypatch.setattr(np.random, "default_rng", seeded_only)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


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
