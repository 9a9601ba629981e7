"""CuPy allocates on the *current* GPU and ignores ``device=``: so on ``cuda:1`` every
creation function xpconv calls must run inside the input's device scope
(``xpconv.devices.device_scope``). No GPU here, so the rule is checked on array-api-strict's
fake ``device1``: its scope is replaced by one that counts how deep we are, and the
namespace's functions record any call made outside every scope."""
from __future__ import annotations

import contextlib
import traceback

import numpy as np
import pytest

import xpconv
import xpconv._backends as _backends

strict = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")

# creation functions (where the current device decides) and the ops the Trainer and
# accuracy call directly on device arrays
WATCHED = ("asarray", "zeros", "ones", "empty", "full", "arange", "eye", "zeros_like", "ones_like",
           "empty_like", "full_like", "take", "argmax", "sum", "stack", "concat", "astype", "where")


@pytest.fixture
def outside_scope(monkeypatch):
    """Calls of WATCHED functions made outside any device scope: (name, where) pairs."""
    depth, outside = [0], []

    @contextlib.contextmanager
    def counting_scope(native):
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    monkeypatch.setattr(_backends.BACKENDS["array_api_strict"], "scope", counting_scope)
    for name in WATCHED:
        real = getattr(strict, name)

        def watched(*args, _real=real, _name=name, **kwargs):
            if depth[0] == 0:
                caller = next((f for f in reversed(traceback.extract_stack()[:-1])
                               if "/xpconv/" in f.filename and "/tests/" not in f.filename), None)
                if caller is not None:            # a call from xpconv itself, not from the test
                    outside.append((_name, f"{caller.filename.rsplit('/xpconv/', 1)[1]}:{caller.lineno}"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(strict, name, watched)
    return outside


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 12, 12)).astype("float32"), rng.integers(0, 3, n)


def _net():
    return xpconv.SimpleConvNet(input_dim=(1, 12, 12), conv_param={"filter_num": 4, "filter_size": 3},
                                hidden_size=8, output_size=3, device="array_api_strict:device1", seed=0)


def test_training_and_evaluation_run_inside_the_device_scope(outside_scope):
    x, t = _data()
    net = _net()
    xpconv.Trainer(net, x[:40], t[:40], x[40:], t[40:], epochs=1, mini_batch_size=16, optimizer="Adam",
                   verbose=False, seed=0).train()
    net.accuracy(x, t)
    grads = net.gradient(x[:8], t[:8])
    xpconv.Adam().update(net.params, grads)
    assert outside_scope == []


def test_the_watch_catches_work_outside_the_scope(outside_scope):
    """The check can fail: an xpconv call that allocates outside any scope is reported."""
    from xpconv import trainer
    net = _net()
    x = net.device.asarray(_data()[0])
    idx = net.device.asarray(np.arange(4))
    outside_scope.clear()
    with pytest.MonkeyPatch.context() as mp:       # the Trainer's batch gather without its scope
        mp.setattr(trainer, "device_scope", lambda a: contextlib.nullcontext())
        trainer._take(x, idx)
    assert [name for name, _ in outside_scope] == ["take"]
