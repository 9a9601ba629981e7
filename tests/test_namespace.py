"""The memoized ``array_namespace`` and ``device`` answer as array-api-compat's do, for every
installed library, on first and later calls, and for the cases that are not memoized."""
from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

from xpconv import _namespace
from xpconv.devices import available_devices


def test_namespace_and_device_are_array_api_compats(backend):
    dev = backend
    x = dev.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    i = dev.asarray(np.arange(3))
    for _ in range(2):          # the first call fills the memo, the second reads it
        assert _namespace.array_namespace(x) is array_api_compat.array_namespace(x)
        assert _namespace.array_namespace(x, i) is array_api_compat.array_namespace(x, i)
        assert _namespace.device(x) == array_api_compat.device(x)
        assert _namespace.device(i) == array_api_compat.device(i)


def test_mixed_libraries_are_refused_as_array_api_compat_refuses():
    torch = pytest.importorskip("torch")
    a, b = np.zeros(2), torch.zeros(2)
    _namespace.array_namespace(a), _namespace.array_namespace(b)   # both types memoized
    with pytest.raises(TypeError):
        array_api_compat.array_namespace(a, b)
    with pytest.raises(TypeError):
        _namespace.array_namespace(a, b)


def test_a_jax_float0_array_gets_jaxs_namespace_even_after_numpy_is_memoized():
    jax = pytest.importorskip("jax")
    _namespace.array_namespace(np.zeros(2))
    zero_grad = np.zeros(2, dtype=jax.dtypes.float0)
    assert _namespace.array_namespace(zero_grad) is array_api_compat.array_namespace(zero_grad)
    assert _namespace.array_namespace(zero_grad) is not _namespace.array_namespace(np.zeros(2))
    assert _namespace.device(zero_grad) == array_api_compat.device(zero_grad)


def test_a_traced_jax_array_has_no_device_and_jaxs_namespace():
    jax = pytest.importorskip("jax")
    if "jax" not in [str(s).split(":")[0] for s in available_devices()]:
        pytest.skip("xpconv sees no JAX device")
    seen = {}

    def f(x):
        seen["device"] = _namespace.device(x)
        seen["namespace"] = _namespace.array_namespace(x)
        return x

    jax.jit(f)(jax.numpy.ones(2))
    assert seen["device"] is None
    assert seen["namespace"] is array_api_compat.array_namespace(jax.numpy.ones(2))


def test_the_package_asks_the_memoized_functions():
    """Every module takes array_namespace, device and is_array from xpconv._namespace (the
    memos), not from array-api-compat directly, which answers each call by testing every library."""
    import pathlib
    import re

    import xpconv
    root = pathlib.Path(xpconv.__file__).parent
    direct = re.compile(r"from array_api_compat import [^\n]*\b(array_namespace|device|is_array_api_obj)\b"
                        r"|array_api_compat\.(array_namespace|device|is_array_api_obj)\(")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "_namespace.py" and direct.search(p.read_text())]
    assert offenders == []
