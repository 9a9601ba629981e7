"""Shared fixtures: every test that takes ``backend`` runs once per Array API backend.

Backends that are not installed or cannot reach their device are skipped, with the
reason, so a CPU-only machine runs numpy, array_api_strict (two devices), torch and
jax, and a GPU machine adds cupy.
"""
from __future__ import annotations

import numpy as np
import pytest

import xpconv
from tests.helpers import BACKENDS, make_backend


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
