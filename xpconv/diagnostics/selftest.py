"""``xpconv selftest``: every op and a training step on one device, checked against NumPy float64.

For the first user with a GPU (or any new device): run ``xpconv selftest --device cuda
--json selftest.json`` and attach the JSON file to a bug report. Each check runs an op of
:mod:`xpconv.functional` on the device, in the device dtype, and compares it with a
reference computed in NumPy float64 from the same (rounded) inputs by
:mod:`xpconv.diagnostics.reference`, written independently of xpconv's kernels::

    error = max |device - reference| / max |reference|      (PASS when error <= tolerance)

The result must also keep the input's dtype, library and device. Then a SimpleConvNet's
loss, gradients and one SGD step are compared with the same network in NumPy float64,
and a training step (``gradient`` + ``Adam.update``) is timed: the median of a few
steps after warm-up, with the device synchronized around each.

>>> report = run("cpu", repeat=2, batch_size=8)          # doctest: +SKIP
>>> print(report.format()); report.passed                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from .. import functional as F
from .._namespace import array_namespace, device as array_device
from ..devices import Device, device as resolve_device, dtype_name, to_numpy
from ..workspace import workspace_limit
from . import reference

__all__ = ["Check", "Report", "run", "TOLERANCES"]

# max |device - reference| / max |reference|, per device dtype. float32 allows for a
# different summation order (cuBLAS, oneDNN); TF32 matmuls (JAX's GPU default) need 1e-3.
TOLERANCES = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2}


@dataclass
class Check:
    """One comparison: ``error`` as in the module docstring, None when the op raised."""

    name: str
    passed: bool
    error: float | None
    tolerance: float
    message: str = ""


@dataclass
class Report:
    """Everything a bug report needs: where it ran, every check, and the timed step
    (``step``: median/min/all times in ms, or ``{"error": ...}`` when the step raised).
    """

    device: str
    library: str
    dtype: str
    environment: dict
    checks: list = field(default_factory=list)
    step: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and "error" not in self.step

    def to_dict(self) -> dict:
        return {"passed": self.passed, **asdict(self)}

    def write_json(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    def format(self) -> str:
        """The one-screen report."""
        env = self.environment
        lines = [f"xpconv selftest: device {self.device} ({env.get('device_name', self.library)}), "
                 f"dtype {self.dtype}",
                 "  " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + f"; {env['platform']}",
                 f"  error = max |device - NumPy float64| / max |NumPy float64|, PASS if <= "
                 f"{TOLERANCES[self.dtype]:g} ({self.dtype}), and dtype, library and device kept",
                 "  cases: kernel, g groups, s stride, d dilation, p ((top, bottom), (left, right));",
                 "  backward: every gradient (conv: dx, dw, db); avg_pool2d: count_include_pad True and "
                 "False; chunked: a workspace limit of one sample",
                 ""]
        width = max([len(c.name) for c in self.checks] + [5])
        lines.append(f"  {'check':<{width}}  {'result':<6} {'error':>9}")
        for c in self.checks:
            error = "-" if c.error is None else f"{c.error:9.2e}"
            lines.append(f"  {c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6} {error:>9}")
            if c.message:
                lines.append(f"      {c.message}")
        lines.append("")
        s = self.step
        if "error" in s:
            lines.append(f"  training step: FAIL: {s['error']}")
        elif s:
            lines.append(f"  training step ({s['model']}, batch {s['batch_size']}, {s['optimizer']}): "
                         f"median {s['median_ms']:.2f} ms, min {s['min_ms']:.2f} ms over {s['repeat']} "
                         f"steps after {s['warmup']} warm-up, device synchronized")
        failed = [c.name for c in self.checks if not c.passed]
        if self.passed:
            lines.append(f"result: PASS, all {len(self.checks)} checks")
        else:
            lines.append(f"result: FAIL, {len(failed)} of {len(self.checks)} checks failed"
                         + ("" if "error" not in s else " and the training step raised"))
        return "\n".join(lines)


# ============================================================================ the run

def run(device="auto", *, dtype="float32", batch_size=100, repeat=10, warmup=2, seed=0) -> Report:
    """Run every check and time a training step on ``device`` (a spec string or Device).

    Args:
        device: where to run: a spec string ("auto", "cpu", "cuda", "torch", ...) or a Device.
        dtype: "float32" (default), "float64" or "float16".
        batch_size: mini-batch of the timed SimpleConvNet step (MNIST-sized input).
        repeat: timed training steps.
        warmup: untimed steps before them.
        seed: seed of every random input and of the networks' weights.
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"selftest: expected dtype in {tuple(TOLERANCES)}; got {dtype!r}")
    for name, value, minimum in (("batch_size", batch_size, 1), ("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"selftest: expected {name} to be an int >= {minimum}; got {value!r}")
    dev = resolve_device(device)
    report = Report(str(dev), dev.library, dtype, _environment(dev))
    checker = _Checker(dev, dtype, np.random.default_rng(seed))
    for name, check in _op_checks(checker):
        report.checks.append(checker.run(name, check))
    for name, check in _network_checks(checker, seed):
        report.checks.append(checker.run(name, check))
    try:
        report.step = _time_step(dev, dtype, batch_size, repeat, warmup, seed)
    except Exception as exc:  # a broken device must still give a report
        report.step = {"error": _one_line(exc)}
    return report


class _Checker:
    """Draws host inputs rounded to the device dtype, moves them, compares results."""

    def __init__(self, dev: Device, dtype: str, rng):
        self.dev, self.dtype, self.rng = dev, dtype, rng
        self.tolerance = TOLERANCES[dtype]

    def host(self, *shape):
        """Random host data, exactly representable in the device dtype, as float64."""
        return self.rng.standard_normal(shape).astype(self.dtype).astype(np.float64)

    def put(self, a):
        return self.dev.asarray(a, dtype=self.dtype)

    def run(self, name, check) -> Check:
        try:
            error = check()
        except Exception as exc:
            return Check(name, False, None, self.tolerance, _one_line(exc))
        return Check(name, bool(error <= self.tolerance), float(error), self.tolerance)

    def error(self, got, ref) -> float:
        """``max |got - ref| / max |ref|`` after checking got's place, dtype and shape."""
        if array_namespace(got) is not self.dev.xp or array_device(got) != self.dev.native:
            raise AssertionError(f"result is a {type(got).__module__.split('.')[0]} array on "
                                 f"{array_device(got)}; expected {self.dev}")
        if dtype_name(got) != self.dtype:
            raise AssertionError(f"result has dtype {dtype_name(got)}; expected {self.dtype}")
        got = to_numpy(got).astype(np.float64)
        if got.shape != ref.shape:
            raise AssertionError(f"result has shape {got.shape}; expected {ref.shape}")
        if not np.isfinite(got).all():
            return math.inf
        scale = float(np.max(np.abs(ref), initial=0.0)) or 1.0
        return float(np.max(np.abs(got - ref), initial=0.0)) / scale

    def errors(self, pairs) -> float:
        return max(self.error(got, ref) for got, ref in pairs)


# ============================================================================ op checks

# Cases: label, x shape, w shape or kernel, options. Labels: kernel, g groups, s stride,
# d dilation, p ((top, bottom), (left, right)). Explicit pads: the reference needs no rules.
CONV_CASES = [
    ("3x3 p1", (2, 3, 8, 8), (4, 3, 3, 3), dict(stride=1, pad=((1, 1), (1, 1)), dilation=1, groups=1)),
    ("3x2 g2 s(2,1) d(1,2) p((1,0),(2,1))", (3, 4, 9, 7), (6, 2, 3, 2),
     dict(stride=(2, 1), pad=((1, 0), (2, 1)), dilation=(1, 2), groups=2)),
]
POOL = ("3x3 s2 p1", (3, 2, 9, 8), (3, 3), dict(stride=2, pad=((1, 1), (1, 1))))
AVG = ("2x3 s(2,1) p((1,0),(1,1))", (2, 3, 7, 6), (2, 3), dict(stride=(2, 1), pad=((1, 0), (1, 1))))
COL = ("3x3 s2 d2 p((2,1),(0,1))", (2, 3, 9, 8), (3, 3), dict(stride=2, pad=((2, 1), (0, 1)), dilation=2))


def _op_checks(c: _Checker):
    for label, x_shape, w_shape, kw in CONV_CASES:
        yield from _conv_checks(c, label, x_shape, w_shape, kw)
    label, x_shape, w_shape, kw = CONV_CASES[1]
    with_chunks = _conv_checks(c, label, x_shape, w_shape, kw)
    yield (f"conv2d fwd+bwd {label} chunked",
           lambda: _in_chunks(lambda: max(check() for _, check in with_chunks)))
    yield from _max_pool_checks(c)
    yield from _avg_pool_checks(c)
    yield from _col_checks(c)


def _in_chunks(fn):
    with workspace_limit(1):       # every op then works one sample at a time
        return fn()


def _conv_checks(c: _Checker, label, x_shape, w_shape, kw):
    x, w, b = c.host(*x_shape), c.host(*w_shape), c.host(w_shape[0])
    opts: dict[str, Any] = dict(kw, rounding="floor")
    y_ref = reference.conv2d(x, w, b, **kw)
    dy = c.host(*y_ref.shape)
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(dy, x, w, **kw)

    def forward():
        return c.error(F.conv2d(c.put(x), c.put(w), c.put(b), **opts), y_ref)

    def backward():
        dx, dw, db = F.conv2d_backward(c.put(dy), c.put(x), c.put(w), **opts)
        return c.errors([(dx, dx_ref), (dw, dw_ref), (db, db_ref)])

    return [(f"conv2d {label}", forward), (f"conv2d backward {label}", backward)]


def _max_pool_checks(c: _Checker):
    label, shape, k, kw = POOL
    x = c.host(*shape)
    y_ref = reference.max_pool2d(x, k, **kw)
    dy = c.host(*y_ref.shape)
    dx_ref = reference.max_pool2d_backward(dy, x, k, **kw)
    opts: dict[str, Any] = dict(kw, rounding="floor")

    def backward():
        return c.error(F.max_pool2d_backward(c.put(dy), c.put(x), k, **opts), dx_ref)

    return [(f"max_pool2d {label}", lambda: c.error(F.max_pool2d(c.put(x), k, **opts), y_ref)),
            (f"max_pool2d backward {label}", backward),
            (f"max_pool2d backward {label} chunked", lambda: _in_chunks(backward))]


def _avg_pool_checks(c: _Checker):
    label, shape, k, kw = AVG
    x = c.host(*shape)
    refs = {cip: reference.avg_pool2d(x, k, **kw, count_include_pad=cip) for cip in (True, False)}
    dy = c.host(*refs[True][0].shape)
    dx_refs = {cip: reference.avg_pool2d_backward(dy, x, k, **kw, divisor=refs[cip][1]) for cip in (True, False)}
    opts: dict[str, Any] = dict(kw, rounding="floor")

    def forward():
        return c.errors([(F.avg_pool2d(c.put(x), k, **opts, count_include_pad=cip), refs[cip][0])
                         for cip in (True, False)])

    def backward():
        return c.errors([(F.avg_pool2d_backward(c.put(dy), c.put(x), k, **opts, count_include_pad=cip),
                          dx_refs[cip]) for cip in (True, False)])

    return [(f"avg_pool2d {label}", forward), (f"avg_pool2d backward {label}", backward)]


def _col_checks(c: _Checker):
    label, shape, (fh, fw), kw = COL
    x = c.host(*shape)
    col_ref = reference.im2col(x, (fh, fw), **kw)
    col = c.host(*col_ref.shape)
    x_ref = reference.col2im(col, shape, (fh, fw), **kw)
    opts: dict[str, Any] = dict(kw, rounding="floor")
    return [(f"im2col {label}", lambda: c.error(F.im2col(c.put(x), fh, fw, **opts), col_ref)),
            (f"col2im {label}", lambda: c.error(F.col2im(c.put(col), shape, fh, fw, **opts), x_ref))]


# ============================================================================ network checks

NET: dict[str, Any] = dict(input_dim=(1, 10, 10), conv_param={"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 1},
           hidden_size=8, output_size=5)


def _network_checks(c: _Checker, seed):
    from ..models import SimpleConvNet
    from ..optimizers import SGD
    x, t = c.host(6, *NET["input_dim"]), c.rng.integers(0, NET["output_size"], 6)
    state: dict = {}

    def networks():
        net = SimpleConvNet(**NET, weight_init_std=0.3, device=c.dev, dtype=c.dtype, seed=seed)
        ref = SimpleConvNet(**NET, weight_init_std=0.3, device="cpu", dtype="float64", seed=seed)
        for name in ref.params:   # the same (rounded) weights
            ref.params[name] = to_numpy(net.params[name]).astype(np.float64)
        return net, ref

    def gradients():
        net, ref = networks()
        loss = net.loss(c.put(x), c.dev.asarray(t))
        ref_loss = ref.loss(x, t)
        grads, ref_grads = net.gradient(c.put(x), c.dev.asarray(t)), ref.gradient(x, t)
        state.update(net=net, ref=ref, grads=grads, ref_grads=ref_grads)
        return max(c.error(loss, np.asarray(to_numpy(ref_loss), dtype=np.float64)),
                   c.errors([(grads[k], to_numpy(ref_grads[k])) for k in ref.params]))

    def sgd_step():
        if "net" not in state:
            gradients()
        net, ref = state["net"], state["ref"]
        SGD(lr=0.1).update(net.params, state["grads"])
        SGD(lr=0.1).update(ref.params, state["ref_grads"])
        return c.errors([(net.params[k], to_numpy(ref.params[k])) for k in ref.params])

    yield "SimpleConvNet loss and gradients (W1..b3)", gradients
    yield "SimpleConvNet SGD step (parameters after it)", sgd_step


def _time_step(dev: Device, dtype, batch_size, repeat, warmup, seed) -> dict:
    from ..models import SimpleConvNet
    from ..optimizers import Adam
    rng = np.random.default_rng(seed)
    net = SimpleConvNet(device=dev, dtype=dtype, seed=seed)       # the book's MNIST network
    x = dev.asarray(rng.random((batch_size, 1, 28, 28)), dtype=dtype)
    t = dev.asarray(rng.integers(0, 10, batch_size))
    optimizer = Adam()
    times = []
    for i in range(warmup + repeat):
        dev.synchronize(x, *net.params.values())
        start = time.perf_counter()
        optimizer.update(net.params, net.gradient(x, t))
        dev.synchronize(*net.params.values())
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return {"model": "SimpleConvNet (1, 28, 28)", "optimizer": "Adam", "batch_size": batch_size,
            "warmup": warmup, "repeat": repeat, "median_ms": statistics.median(times),
            "min_ms": min(times), "times_ms": times}


# ============================================================================ environment

def _environment(dev: Device) -> dict:
    versions = {"xpconv": _version("xpconv"), "python": platform.python_version(), "numpy": np.__version__,
                "array-api-compat": _version("array-api-compat")}
    module = sys.modules.get(dev.library)
    if dev.library != "numpy" and module is not None:
        versions[dev.library] = getattr(module, "__version__", "?")
    env = {"versions": versions, "platform": platform.platform()}
    try:
        if dev.library == "cupy":
            import cupy
            props = cupy.cuda.runtime.getDeviceProperties(dev.native.id)
            env["device_name"] = props["name"].decode()
            env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        elif dev.library == "torch" and dev.native.type == "cuda" and module is not None:
            env["device_name"] = module.cuda.get_device_name(dev.native)
            env["cuda_runtime"] = module.version.cuda
        elif dev.library == "jax":
            env["device_name"] = getattr(dev.native, "device_kind", dev.native.platform)
    except Exception as exc:  # the report must not fail on a driver query
        env["device_name"] = f"unknown ({_one_line(exc)})"
    return env


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())
