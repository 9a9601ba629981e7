"""Benchmark harness: xpconv against the textbook NumPy baseline and PyTorch.

Usage::

    python bench/run.py [--quick] [--devices cpu,cuda]
                        [--cases PATTERNS] [--contenders PATTERNS]
                        [--repeat N] [--warmup N] [--out bench/results] [--tag TAG]
                        [--no-memory] [--no-plot] [--list]

Contenders
    ``xpconv:<spec>`` for the xpconv device specs (default: every spec of
    ``xpconv.available_devices()``: "cpu" = NumPy, "cuda:N" = CuPy, and torch, JAX
    and array-api-strict where installed, leaving out array-api-strict's fake
    second device), ``textbook`` (``bench/textbook.py``, NumPy on the CPU),
    ``torch-cpu`` and ``torch-cuda`` (when torch / CUDA are there).  Each
    contender is a small adapter; :func:`make_case` turns (contender, case) into
    a zero-argument callable.  A contender that fails is reported as
    ``error: ...`` and the run goes on.

Cases (float32)
    SimpleConvNet training step (``net.gradient``) at batch 100 and 256, four
    convolution shapes and a 2x2 max pool, each forward+backward ("train") and
    forward only ("infer").  ``--quick`` keeps the SimpleConvNet batches but
    shrinks the batch of the large layer cases (the labels show the shapes).

Timing
    Each case warms every contender up, then takes ``--repeat`` samples,
    round-robin over the contenders (the starting contender rotates each round),
    synchronising the device before and after every timed call.  An idle gap
    precedes each sample (other libraries' spinning threads go to sleep), then,
    for calls under 0.25 s, one untimed call (steady state, as in a training loop).  Median and
    spread (min-max, IQR) are reported.  A float32 GEMM measured in the same run
    gives each contender's ceiling in GFLOP/s; convolution/affine cases report
    achieved GFLOP/s (multiply-adds counted analytically) and % of ceiling, the
    pooling case reports effective GB/s.  Peak extra memory of the train cases is
    measured once per contender in a fresh subprocess (``--_memory-probe``).

Outputs
    A table on screen and ``<out>/<tag>.json`` (every sample plus environment),
    ``<out>/<tag>.md`` and ``<out>/<tag>.png``.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` and `xpconv` importable
    sys.path.insert(0, str(REPO_ROOT))

from bench import textbook  # noqa: E402

MIB = 2.0 ** 20
DEFAULT_REPEAT = 7
QUICK_REPEAT = 3
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}  # also in --quick: smaller GEMMs are noisy
GEMM_MIN_REPEAT = 5
DEFAULT_GAP = 0.15  # > OpenBLAS's default thread spin time (2**28 cycles)
SETTLE_BELOW_S = 0.25  # calls shorter than this get one untimed call after the gap
PROBE_MARK = "MEMORY_PROBE "
ISOLATED_MARK = "ISOLATED_RUN "


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

@dataclass
class Case:
    """One benchmark case: what to run (kind + shapes) and in which mode."""

    base: str
    kind: str  # "net" | "conv" | "pool"
    train: bool  # forward+backward (True) or forward only (False)
    params: dict = field(default_factory=dict)
    quick: bool = False

    @property
    def id(self):
        return f"{self.base}/{'train' if self.train else 'infer'}"

    @property
    def label(self):
        p = self.params
        mode = "fwd+bwd" if self.train else "fwd"
        if self.kind == "net":
            what = "train step" if self.train else "predict"
            return f"SimpleConvNet {what}, batch {p['N']}"
        if self.kind == "conv":
            return (f"conv {p['K']}x{p['K']} {p['C']}->{p['FN']} s{p['stride']} p{p['pad']}, "
                    f"N={p['N']} {p['H']}x{p['W']}, {mode}")
        return (f"maxpool {p['size']}x{p['size']} s{p['stride']} on "
                f"({p['N']}, {p['C']}, {p['H']}, {p['W']}), {mode}")

    def flops(self):
        """Analytic FLOPs (2 per multiply-add) of the work the case needs, or None.

        Convolutions: forward, plus dW and dx when training.  SimpleConvNet:
        conv forward (+ dW), both affines forward (+ dW, dx); the input image
        needs no gradient, so dx of the first conv is not counted (the
        textbook computes it anyway, uncredited).  Pooling: None.
        """
        p = self.params
        if self.kind == "conv":
            oh, ow = conv_out(p["H"], p["K"], p["stride"], p["pad"]), conv_out(p["W"], p["K"], p["stride"], p["pad"])
            fwd = 2 * p["N"] * oh * ow * p["FN"] * p["C"] * p["K"] * p["K"]
            return 3 * fwd if self.train else fwd
        if self.kind == "net":
            n = p["N"]
            conv = 2 * n * 24 * 24 * 30 * 1 * 5 * 5
            affine = 2 * n * 4320 * 100 + 2 * n * 100 * 10
            return 2 * conv + 3 * affine if self.train else conv + affine
        return None

    def bytes_moved(self):
        """Minimal float32 traffic of the pooling case (read x, write y; and back)."""
        if self.kind != "pool":
            return None
        p = self.params
        oh = conv_out(p["H"], p["size"], p["stride"], 0)
        ow = conv_out(p["W"], p["size"], p["stride"], 0)
        once = 4 * p["N"] * p["C"] * (p["H"] * p["W"] + oh * ow)
        return 2 * once if self.train else once


def conv_out(size, k, stride, pad):
    """Output length of a convolution/pooling window along one axis."""
    return (size + 2 * pad - k) // stride + 1


# (base name, kind, full-size params, batch used by --quick)
BASE_CASES = [
    ("net-b100", "net", dict(N=100), 100),
    ("net-b256", "net", dict(N=256), 256),
    ("conv3x3", "conv", dict(N=64, C=64, H=56, W=56, FN=64, K=3, stride=1, pad=1), 8),
    ("conv1x1", "conv", dict(N=64, C=64, H=56, W=56, FN=128, K=1, stride=1, pad=0), 8),
    ("conv3x3s2", "conv", dict(N=64, C=64, H=56, W=56, FN=128, K=3, stride=2, pad=1), 8),
    ("conv7x7s2", "conv", dict(N=32, C=3, H=224, W=224, FN=64, K=7, stride=2, pad=3), 4),
    ("maxpool", "pool", dict(N=64, C=64, H=56, W=56, size=2, stride=2), 8),
]


def build_cases(quick=False):
    """All cases: every base case in train mode, then every one in infer mode."""
    cases = []
    for train in (True, False):
        for base, kind, params, quick_n in BASE_CASES:
            p = dict(params, N=quick_n) if quick else dict(params)
            cases.append(Case(base, kind, train, p, quick))
    return cases


def select_cases(cases, patterns):
    """Cases whose id, base name or mode ("train"/"infer") matches a pattern."""
    if not patterns:
        return list(cases)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]

    def hit(case):
        keys = (case.id, case.base, case.id.split("/")[1])
        return any(fnmatch.fnmatchcase(k, p) for p in pats for k in keys)

    chosen = [c for c in cases if hit(c)]
    if not chosen:
        raise SystemExit(f"no case matches {patterns!r}; try --list")
    return chosen


def case_inputs(case, seed=0):
    """Host float32 NumPy inputs of a case, the same for every contender."""
    rng = np.random.default_rng(seed)
    p = case.params

    def randn(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    if case.kind == "net":
        return {"x": rng.random((p["N"], 1, 28, 28), dtype=np.float32),
                "t": rng.integers(0, 10, size=p["N"]).astype(np.int64)}
    if case.kind == "conv":
        oh, ow = conv_out(p["H"], p["K"], p["stride"], p["pad"]), conv_out(p["W"], p["K"], p["stride"], p["pad"])
        fan_in = p["C"] * p["K"] * p["K"]
        return {"x": randn(p["N"], p["C"], p["H"], p["W"]),
                "w": randn(p["FN"], p["C"], p["K"], p["K"], scale=(2.0 / fan_in) ** 0.5),
                "b": randn(p["FN"], scale=0.1),
                "dy": randn(p["N"], p["FN"], oh, ow)}
    oh, ow = conv_out(p["H"], p["size"], p["stride"], 0), conv_out(p["W"], p["size"], p["stride"], 0)
    return {"x": randn(p["N"], p["C"], p["H"], p["W"]), "dy": randn(p["N"], p["C"], oh, ow)}


# --------------------------------------------------------------------------
# Contenders (adapters)
# --------------------------------------------------------------------------

def _block(out):
    """Wait for lazily computed results (JAX) inside nested outputs."""
    if isinstance(out, (tuple, list)):
        for o in out:
            _block(o)
    elif isinstance(out, dict):
        for o in out.values():
            _block(o)
    elif hasattr(out, "block_until_ready"):
        out.block_until_ready()


def _error_text(exc):
    """One-line description of an exception for the tables."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Contender:
    """Base adapter: builds callables for each case kind on one device."""

    name = "?"
    device_class = "cpu"
    is_baseline = True
    isolated = False  # timed in a process of its own (see run_isolated)

    def __init__(self):
        self.error = None

    def setup(self):
        """Import the library / open the device; may raise."""

    def try_setup(self):
        """Run :meth:`setup`, remembering a failure as ``self.error``."""
        try:
            self.setup()
        except Exception as exc:  # reported in the table, the run goes on
            self.error = _error_text(exc)
        return self.error is None

    def sync(self, out=None):
        """Wait until the device has finished (and ``out`` is computed)."""
        _block(out)

    def gemm(self, a, b):
        raise NotImplementedError

    def conv(self, data, stride, pad, train):
        raise NotImplementedError

    def pool(self, data, size, stride, train):
        raise NotImplementedError

    def net(self, data, train):
        raise NotImplementedError


class TextbookContender(Contender):
    """The book's algorithm in plain NumPy (``bench/textbook.py``), CPU only."""

    name = "textbook"

    def gemm(self, a, b):
        return lambda: np.matmul(a, b)

    def conv(self, data, stride, pad, train):
        layer = textbook.Convolution(data["w"], data["b"], stride=stride, pad=pad)
        return _layer_callable(layer, data["x"], data["dy"], train)

    def pool(self, data, size, stride, train):
        layer = textbook.Pooling(size, size, stride=stride)
        return _layer_callable(layer, data["x"], data["dy"], train)

    def net(self, data, train):
        net = textbook.SimpleConvNet(seed=0)
        x, t = data["x"], data["t"]
        return (lambda: net.gradient(x, t)) if train else (lambda: net.predict(x))


def _layer_callable(layer, x, dy, train):
    """``forward`` (and ``backward``) of a book-style layer as a callable."""
    if not train:
        return lambda: layer.forward(x)

    def step():
        y = layer.forward(x)
        return y, layer.backward(dy)
    return step


class TorchContender(Contender):
    """PyTorch (``torch.nn.functional``) on "cpu" or "cuda" (cuDNN)."""

    def __init__(self, device):
        super().__init__()
        self.device = device
        self.device_class = device
        self.name = f"torch-{device}"
        self.torch = None

    def setup(self):
        import torch
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda is not available")
            # Compare float32 with float32: no TF32 in cuDNN / cuBLAS.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        self.torch = torch

    def sync(self, out=None):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _tensor(self, a, grad=False):
        t = self.torch.from_numpy(a).to(self.device)
        return t.requires_grad_(True) if grad else t

    def gemm(self, a, b):
        ta, tb = self._tensor(a), self._tensor(b)
        return lambda: self.torch.matmul(ta, tb)

    def conv(self, data, stride, pad, train):
        F = self.torch.nn.functional
        x, w, b = (self._tensor(data[k], grad=train) for k in ("x", "w", "b"))
        return self._op_callable(lambda: F.conv2d(x, w, b, stride=stride, padding=pad),
                                 (x, w, b), self._tensor(data["dy"]), train)

    def pool(self, data, size, stride, train):
        F = self.torch.nn.functional
        x = self._tensor(data["x"], grad=train)
        return self._op_callable(lambda: F.max_pool2d(x, size, stride),
                                 (x,), self._tensor(data["dy"]), train)

    def _op_callable(self, op, leaves, dy, train):
        """Forward only under inference_mode, or forward + ``y.backward(dy)``."""
        if not train:
            def forward():
                with self.torch.inference_mode():
                    return op()
            return forward

        def step():
            for leaf in leaves:
                leaf.grad = None
            op().backward(dy)
            return tuple(leaf.grad for leaf in leaves)
        return step

    def net(self, data, train):
        torch, F = self.torch, self.torch.nn.functional
        torch.manual_seed(0)
        model = torch_simple_convnet(torch).to(self.device)
        x, t = self._tensor(data["x"]), self._tensor(data["t"])
        if not train:
            def predict():
                with torch.inference_mode():
                    return model(x)
            return predict

        def step():
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), t)
            loss.backward()
            return loss
        return step


def torch_simple_convnet(torch):
    """The book's SimpleConvNet architecture as a ``torch.nn`` module."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 30, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))


class XpconvContender(Contender):
    """xpconv on one device spec ("cpu", "cuda:0", "torch", "jax", ...)."""

    is_baseline = False

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.name = f"xpconv:{spec}"
        self.device_class = spec_class(spec)
        # xpconv on torch, JAX, array-api-strict: its own process, so that the library's
        # runtime (JAX's threads slowed NumPy 1.4x when they shared one) leaves the
        # main comparison (NumPy/CuPy against the baselines) alone
        self.isolated = spec.split(":")[0] not in ("cpu", "cuda", "numpy", "cupy")
        self.xpconv = None
        self.dev = None

    def setup(self):
        import xpconv
        self.xpconv = xpconv
        self.dev = xpconv.device(self.spec)
        if spec_class(str(self.dev)) == "cuda":
            self.device_class = "cuda"

    def sync(self, out=None):
        _block(out)
        self.dev.synchronize()

    def gemm(self, a, b):
        xp = self.dev.xp
        da, db = self.dev.asarray(a), self.dev.asarray(b)
        return lambda: xp.matmul(da, db)

    def conv(self, data, stride, pad, train):
        put = self.dev.asarray
        kwargs = {}
        k, size = data["w"].shape[-1], data["x"].shape[-1]
        if (size + 2 * pad - k) % stride:  # the book and PyTorch floor; xpconv asks to say so
            kwargs["rounding"] = "floor"
        layer = self.xpconv.Convolution(put(data["w"]), put(data["b"]), stride=stride, pad=pad, **kwargs)
        return _layer_callable(layer, put(data["x"]), put(data["dy"]), train)

    def pool(self, data, size, stride, train):
        layer = self.xpconv.Pooling(size, size, stride=stride)
        return _layer_callable(layer, self.dev.asarray(data["x"]), self.dev.asarray(data["dy"]), train)

    def net(self, data, train):
        net = self.xpconv.SimpleConvNet(device=self.spec, seed=0)
        x, t = self.dev.asarray(data["x"]), self.dev.asarray(data["t"])
        return (lambda: net.gradient(x, t)) if train else (lambda: net.predict(x))


def spec_class(spec):
    """"cuda" for GPU device specs / descriptions, else "cpu"."""
    text = str(spec).lower()
    return "cuda" if ("cuda" in text or text.split(":")[0] == "gpu") else "cpu"


def make_case(contender, case):
    """Zero-argument callable running ``case`` once on ``contender``.

    Inputs are built (and put on the device) here, outside the timed call.
    """
    data = case_inputs(case)
    p = case.params
    if case.kind == "conv":
        return contender.conv(data, p["stride"], p["pad"], case.train)
    if case.kind == "pool":
        return contender.pool(data, p["size"], p["stride"], case.train)
    return contender.net(data, case.train)


def contender_from_name(name):
    """Rebuild a contender from its name (used by the memory probe)."""
    if name == "textbook":
        return TextbookContender()
    if name.startswith("torch-"):
        return TorchContender(name[len("torch-"):])
    if name.startswith("xpconv:"):
        return XpconvContender(name[len("xpconv:"):])
    raise SystemExit(f"unknown contender {name!r}")


def _torch_cuda_available():
    try:
        import torch
    except Exception:
        return None, False
    return torch, bool(torch.cuda.is_available())


_FAKE_DEVICES = ("array_api_strict:device1",)


def xpconv_specs(devices=None):
    """The xpconv device specs to benchmark.

    Default: every spec of ``xpconv.available_devices()`` but the fake devices of
    array-api-strict (the same host memory under another name); ``devices``
    ("cpu,cuda"): specs equal to an entry or with it as prefix before ":" (an
    entry matching nothing is kept, so its failure shows up in the table).
    """
    try:
        import xpconv
        available = [str(s) for s in xpconv.available_devices()]
    except Exception:
        available = None  # xpconv not importable: its contender will show the error
    if available is None:
        _, cuda = _torch_cuda_available()
        available = ["cpu"] + (["cuda:0"] if cuda else [])
    if not devices:
        return [s for s in available if s not in _FAKE_DEVICES]
    wanted = [d.strip() for d in devices.split(",") if d.strip()]
    specs = [s for s in available if any(s == w or s.split(":")[0] == w for w in wanted)]
    return specs + [w for w in wanted if not any(s == w or s.split(":")[0] == w for s in specs)]


def discover_contenders(devices=None, patterns=None):
    """xpconv contenders first, then the baselines on the same device classes."""
    specs = xpconv_specs(devices)
    contenders = [XpconvContender(s) for s in specs]
    torch, cuda = _torch_cuda_available()
    if devices:
        classes = {spec_class(d) for d in devices.split(",") if d.strip()}
    else:
        classes = {"cpu"} | ({"cuda"} if cuda else set())
    if "cpu" in classes:
        contenders.append(TextbookContender())
        if torch is not None:
            contenders.append(TorchContender("cpu"))
    if "cuda" in classes and cuda:
        contenders.append(TorchContender("cuda"))
    if patterns:
        pats = [p.strip() for p in patterns.split(",") if p.strip()]
        contenders = [c for c in contenders if any(fnmatch.fnmatchcase(c.name, p) for p in pats)]
    return contenders


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

def timed_call(fn, sync):
    """Seconds taken by one call of ``fn``, device synchronised on both sides."""
    sync(None)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        out = fn()
        sync(out)
        return time.perf_counter() - start
    finally:
        if gc_was_on:
            gc.enable()


def time_round_robin(fns, repeat, warmup, gap=0.0):
    """Samples (ms) of every callable, taken round-robin.

    ``fns`` maps name -> (callable, sync).  After ``warmup`` untimed calls each,
    round ``r`` calls the contenders in order, rotated by ``r``, so slow drift
    (thermal, other load) hits all of them alike.  Each timed call is preceded
    by ``gap`` idle seconds, so the worker threads of the previous contender's
    library (OpenBLAS spins ~0.1 s after each call) are asleep and do not steal
    the cores.  For short calls (warm-up under ``SETTLE_BELOW_S``) one untimed
    "settle" call follows the gap, so the sample measures the steady state a
    training loop runs in, not the wake-up of thread pools that the gap put to
    sleep.  A contender that raises is dropped and reported as ``{"error": ...}``.
    """
    results = {name: {"samples_ms": []} for name in fns}
    live, settle = {}, {}
    for name, (fn, sync) in fns.items():
        try:
            start = time.perf_counter()
            for _ in range(warmup):
                sync(fn())
            settle[name] = (time.perf_counter() - start) / max(warmup, 1) < SETTLE_BELOW_S
            live[name] = (fn, sync)
        except Exception as exc:
            results[name] = {"error": _error_text(exc)}
    for r in range(repeat):
        names = list(live)
        if not names:
            break
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, sync = live[name]
            time.sleep(gap)
            try:
                if settle[name]:
                    sync(fn())
                results[name]["samples_ms"].append(1e3 * timed_call(fn, sync))
            except Exception as exc:
                results[name] = {"error": _error_text(exc)}
                del live[name]
    return results


def summarize(samples):
    """Median, min, max and quartiles of a list of samples (ms)."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median_ms": statistics.median(s), "min_ms": s[0], "max_ms": s[-1],
            "q1_ms": q[0], "q3_ms": q[2], "n_samples": len(s)}


def best_ceilings(first, last):
    """Per contender, the better of the GEMM ceilings measured before and after the cases.

    Taking it twice guards against the machine being slow (or fast) only at
    the start; both measurements stay in the record.
    """
    out = {}
    for name, a in first.items():
        b = last.get(name, {})
        runs = [r for r in (a, b) if "gflops" in r]
        best = dict(max(runs, key=lambda r: r["gflops"])) if runs else dict(a)
        best["runs"] = [a, b]
        out[name] = best
    return out


def measure_ceilings(contenders, repeat, warmup, gap=0.0, size=None):
    """Float32 square GEMM GFLOP/s of every working contender (its ceiling).

    ``size`` overrides the per-device-class matrix size of ``GEMM_SIZE``.
    """
    sizes = {k: size or n for k, n in GEMM_SIZE.items()}
    rng = np.random.default_rng(1)
    mats, fns, info = {}, {}, {}
    for c in contenders:
        if c.error:
            info[c.name] = {"error": c.error}
            continue
        n = sizes[c.device_class]
        if n not in mats:
            mats[n] = (rng.standard_normal((n, n), dtype=np.float32),
                       rng.standard_normal((n, n), dtype=np.float32))
        try:
            fns[c.name] = (c.gemm(*mats[n]), c.sync)
            info[c.name] = {"n": n}
        except Exception as exc:
            info[c.name] = {"error": _error_text(exc)}
    for name, res in time_round_robin(fns, max(repeat, GEMM_MIN_REPEAT), max(warmup, 2), gap).items():
        info[name].update(res)
        if "error" not in res:
            info[name].update(summarize(res["samples_ms"]))
            n = info[name]["n"]
            info[name]["gflops"] = 2.0 * n ** 3 / (info[name]["median_ms"] * 1e-3) / 1e9
    return info


# --------------------------------------------------------------------------
# Memory probe (runs in a fresh subprocess)
# --------------------------------------------------------------------------

def _current_rss():
    """Resident set size now, in bytes (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss():
    """The RSS high-water mark in bytes: VmHWM of this process's address space.

    (``ru_maxrss`` is not used directly: on Linux it also keeps the high water
    of the parent's image this process was forked from before ``exec``.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss():
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _GpuPeak:
    """Extra device memory of one call: torch's allocator peak, CuPy's pool growth."""

    def __init__(self):
        torch = sys.modules.get("torch")
        self.torch = torch if torch is not None and torch.cuda.is_initialized() else None
        self.cupy = sys.modules.get("cupy")

    def start(self):
        if self.torch:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.torch_base = self.torch.cuda.memory_allocated()
        if self.cupy:
            self.cupy.cuda.Device().synchronize()
            pool = self.cupy.get_default_memory_pool()
            pool.free_all_blocks()  # the pool then only grows to the call's high water
            self.cupy_base = pool.total_bytes()

    def stop(self):
        out = {}
        if self.torch:
            self.torch.cuda.synchronize()
            out["torch_cuda_extra_mib"] = (self.torch.cuda.max_memory_allocated() - self.torch_base) / MIB
        if self.cupy:
            self.cupy.cuda.Device().synchronize()
            out["cupy_pool_extra_mib"] = (self.cupy.get_default_memory_pool().total_bytes()
                                          - self.cupy_base) / MIB
        return out


def memory_probe(contender_name, case_id, quick):
    """Peak extra memory of one call of a case, measured in this (fresh) process.

    Host: RSS after building the inputs is the baseline; the kernel's peak is
    reset there (``clear_refs``) so setup transients do not count; the case
    runs once; peak RSS (VmHWM) - baseline is the extra.  CUDA contenders get one
    untimed warm-up call first (cuDNN autotuning workspaces) and report the
    device allocator's peak too.
    """
    contender = contender_from_name(contender_name)
    contender.setup()
    case = {c.id: c for c in build_cases(quick)}[case_id]
    fn = make_case(contender, case)
    if contender.device_class == "cuda":
        contender.sync(fn())  # warm-up: lazy init, autotuning
    gpu = _GpuPeak() if contender.device_class == "cuda" else None
    contender.sync(None)
    gc.collect()
    baseline = _current_rss()
    reset = _reset_peak_rss()
    if gpu:
        gpu.start()
    out = fn()
    contender.sync(out)
    peak = _peak_rss()
    record = {"host_extra_mib": max(peak - baseline, 0) / MIB,
              "host_baseline_mib": baseline / MIB,
              "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "method": "VmHWM after clear_refs reset" if reset else "VmHWM (peak not reset)"}
    if gpu:
        record.update(gpu.stop())
    return record


def run_memory_probe(contender_name, case_id, quick, timeout=600):
    """Run :func:`memory_probe` in a fresh interpreter; its record or an error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-probe", contender_name, case_id]
    if quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"error": f"memory probe failed: {tail}"}


def memory_mib(record):
    """The number to show for a probe record: device extra on GPU, else host extra."""
    if not record or "error" in record:
        return None
    for key in ("cupy_pool_extra_mib", "torch_cuda_extra_mib", "host_extra_mib"):
        if key in record:
            return record[key]
    return None


# --------------------------------------------------------------------------
# Derived numbers
# --------------------------------------------------------------------------

def case_record(case, timed, ceilings):
    """JSON record of a case: stats, GFLOP/s (or GB/s) and % of ceiling per contender."""
    flops, nbytes = case.flops(), case.bytes_moved()
    results = {}
    for name, res in timed.items():
        r = dict(res)
        if "error" not in r:
            r.update(summarize(r["samples_ms"]))
            seconds = r["median_ms"] * 1e-3
            if flops:
                r["gflops"] = flops / seconds / 1e9
                ceiling = ceilings.get(name, {}).get("gflops")
                r["pct_ceiling"] = 100.0 * r["gflops"] / ceiling if ceiling else None
            if nbytes:
                r["gbps"] = nbytes / seconds / 1e9
        results[name] = r
    return {"id": case.id, "label": case.label, "kind": case.kind, "train": case.train,
            "quick": case.quick, "params": case.params, "flops": flops, "bytes": nbytes,
            "results": results}


def add_ratios(record, contenders):
    """xpconv median / baseline median for every baseline on the same device class."""
    res = record["results"]
    ratios = {}
    for x in contenders:
        if x.is_baseline:
            continue
        for b in contenders:
            if not b.is_baseline or b.device_class != x.device_class:
                continue
            mx, mb = res.get(x.name, {}).get("median_ms"), res.get(b.name, {}).get("median_ms")
            ratios[f"{x.name} / {b.name}"] = mx / mb if mx and mb else None
    record["ratios"] = ratios


# --------------------------------------------------------------------------
# Environment and tag
# --------------------------------------------------------------------------

def cpu_model():
    """The CPU's model name from /proc/cpuinfo (or platform)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores():
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(*dists):
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def gpu_name():
    """Name of CUDA device 0 (via torch or CuPy), or None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            return name.decode() if isinstance(name, bytes) else name
        except Exception:
            return None
    return None


def collect_environment(command, uses_cuda):
    """Machine and software description stored with the results."""
    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies")
    except Exception as exc:
        blas = {"error": _error_text(exc)}
    env = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "os_cpu_count": os.cpu_count(),
        "versions": {"numpy": np.__version__, "torch": _version("torch"),
                     "cupy": _version("cupy", "cupy-cuda12x", "cupy-cuda11x", "cupy-cuda13x"),
                     "jax": _version("jax"), "xpconv": _xpconv_version()},
        "numpy_blas": blas,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                 "MKL_NUM_THREADS") if k in os.environ},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn": torch.backends.cudnn.allow_tf32}
    if uses_cuda:
        env["gpu"] = gpu_name()
    return env


def _xpconv_version():
    mod = sys.modules.get("xpconv")
    return getattr(mod, "__version__", None) if mod else _version("xpconv")


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_tag(env, uses_cuda, quick):
    """``gpu-<gpu name>`` or ``cpu-<cores>core-<cpu short name>`` (+ ``-quick``)."""
    if uses_cuda and env.get("gpu"):
        tag = "gpu-" + _slug(re.sub(r"^NVIDIA\s+", "", env["gpu"]))
    else:
        name = re.sub(r"\((R|TM|r|tm)\)|@.*$|\bCPU\b|\bProcessor\b|\bIntel\b|\bAMD\b|\b\d+-Core\b",
                      " ", env["cpu_model"])
        short = "-".join(_slug(name).split("-")[:3]) or "unknown"
        tag = f"cpu-{env['cpu_cores']}core-{short}"
    return tag + ("-quick" if quick else "")


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def result_cells(case, r):
    """Cells of one (case, contender) row: median, min-max, IQR, rate, %ceiling, memory."""
    if "error" in r:
        return None
    rate = (_fmt(r.get("gflops"), ".1f") + " GF/s") if case["flops"] else (
        _fmt(r.get("gbps"), ".2f") + " GB/s" if case["bytes"] else "-")
    return [f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}-{r['max_ms']:.1f}",
            f"{r['q1_ms']:.1f}-{r['q3_ms']:.1f}", rate,
            _fmt(r.get("pct_ceiling"), ".0f") + ("%" if r.get("pct_ceiling") is not None else ""),
            _fmt(memory_mib(r.get("memory")), ".0f")]


COLUMNS = ["median ms", "min-max ms", "IQR ms", "achieved", "% ceil", "peak MiB"]


def format_text(results):
    """The screen report: ceilings, per-case rows, ratios."""
    lines = [f"xpconv benchmark [{results['tag']}]"
             + ("  ** QUICK MODE: reduced batches / repeats **" if results["quick"] else ""),
             f"{results['environment']['cpu_model']}, {results['environment']['cpu_cores']} cores; "
             f"repeat {results['settings']['repeat']}, warmup {results['settings']['warmup']}", "",
             "GEMM ceiling (float32 square matmul; best of the runs before and after the cases):"]
    for name, c in results["ceilings"].items():
        runs = "/".join(_fmt(r.get("gflops"), ".0f") for r in c.get("runs", []))
        lines.append(f"  {name:<18} " + (f"error: {c['error']}" if "error" in c else
                                         f"n={c['n']:<5} {c['gflops']:8.1f} GFLOP/s  "
                                         f"({c['median_ms']:.1f} ms; before/after: {runs})"))
    width = max([len(n) for case in results["cases"] for n in case["results"]] + [10])
    for case in results["cases"]:
        lines += ["", f"{case['id']}: {case['label']}",
                  "  " + f"{'contender':<{width}} " + "".join(f"{c:>16}" for c in COLUMNS)]
        for name, r in case["results"].items():
            cells = result_cells(case, r)
            row = f"error: {r['error']}"[:100] if cells is None else "".join(f"{c:>16}" for c in cells)
            lines.append(f"  {name:<{width}} {row}")
        for key, ratio in case.get("ratios", {}).items():
            lines.append(f"  ratio {key}: " + (f"{ratio:.2f}x" if ratio else "n/a"))
    lines += ["", f"elapsed {results['elapsed_s']:.0f} s"]
    return "\n".join(lines)


def format_markdown(results):
    """Markdown tables of the same numbers."""
    env = results["environment"]
    out = [f"# xpconv benchmark: `{results['tag']}`", ""]
    if results["quick"]:
        out += ["**Quick mode**: reduced batch sizes for the layer cases and fewer repeats.", ""]
    out += [f"- date: {env['date']}", f"- command: `{env['command']}`",
            f"- CPU: {env['cpu_model']} ({env['cpu_cores']} cores)" + (f"; GPU: {env['gpu']}" if env.get("gpu") else ""),
            "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
            f"- repeat {results['settings']['repeat']}, warm-up {results['settings']['warmup']}; "
            f"{results['settings']['gap_s']} s idle before each sample, plus one untimed call for "
            f"calls under {SETTLE_BELOW_S} s (steady state); contenders alternate round-robin; "
            "xpconv on torch, JAX and array-api-strict is timed in a process of its own, after the others; "
            "median and spread in ms; FLOPs counted analytically (2 per multiply-add); "
            "peak MiB = extra peak memory of one fwd+bwd call in a fresh process", "",
            "## GEMM ceiling (best median of the runs before / after the cases)", "",
            "| contender | n | GFLOP/s | median ms | GFLOP/s before / after |", "|---|---:|---:|---:|---:|"]
    for name, c in results["ceilings"].items():
        runs = " / ".join(_fmt(r.get("gflops"), ".1f") for r in c.get("runs", []))
        out.append(f"| {name} | error: {c['error']} | | | |" if "error" in c else
                   f"| {name} | {c['n']} | {c['gflops']:.1f} | {c['median_ms']:.1f} | {runs} |")
    out += ["", "## Results", "", "| case | contender | " + " | ".join(COLUMNS) + " |",
            "|---|---|" + "---:|" * len(COLUMNS)]
    for case in results["cases"]:
        for i, (name, r) in enumerate(case["results"].items()):
            cells = result_cells(case, r)
            body = (f"error: {r['error']} |" + " |" * (len(COLUMNS) - 1)) if cells is None else " | ".join(cells) + " |"
            title = f"**{case['id']}** {case['label']}" if i == 0 else ""
            out.append(f"| {title} | {name} | {body}")
    keys = sorted({k for case in results["cases"] for k in case.get("ratios", {})})
    if keys:
        out += ["", "## Ratios (xpconv median / baseline median; < 1 means xpconv is faster)", "",
                "| case | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for case in results["cases"]:
            vals = [case["ratios"].get(k) for k in keys]
            out.append(f"| {case['id']} | " + " | ".join(f"{v:.2f}" if v else "n/a" for v in vals) + " |")
    return "\n".join(out) + "\n"


def write_plot(results, path):
    """Grouped bars of median time per case and contender (log scale)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written")
        return None
    cases = results["cases"]
    names = list(dict.fromkeys(n for c in cases for n in c["results"]))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases)), 5))
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for j, case in enumerate(cases):
            r = case["results"].get(name, {})
            if "median_ms" in r:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(r["median_ms"])
                lo.append(r["median_ms"] - r["min_ms"])
                hi.append(r["max_ms"] - r["median_ms"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call [ms] (bars: min-max)")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c["id"] for c in cases], rotation=35, ha="right", fontsize=8)
    ax.set_title(f"xpconv benchmark, {results['tag']}" + (" (QUICK)" if results["quick"] else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results, out_dir, plot=True):
    """``<tag>.json``, ``<tag>.md`` and (optionally) ``<tag>.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / results["tag"]
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[1].write_text(format_markdown(results))
    if plot and write_plot(results, stem.with_suffix(".png")):
        paths.append(stem.with_suffix(".png"))
    return paths


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_benchmark(opts, command):
    """Run everything ``opts`` asks for and return the results dict."""
    t_start = time.perf_counter()
    contenders = discover_contenders(opts.devices, opts.contenders)
    if not contenders:
        raise SystemExit("no contender selected")
    for c in contenders:
        if not c.isolated and not c.try_setup():   # an isolated one sets up in its own process
            log(f"[{c.name}] unavailable: {c.error}")
    cases = select_cases(build_cases(opts.quick), opts.cases)
    log(f"contenders: {', '.join(c.name for c in contenders)}; {len(cases)} cases; "
        f"repeat {opts.repeat}" + (" (QUICK)" if opts.quick else ""))

    together = [c for c in contenders if not c.isolated]
    first, timed, last = time_all(together, cases, opts)
    for c in contenders:
        if c.isolated:
            log(f"== {c.name}: every case again, in a process of its own")
            part = run_isolated(c, opts)
            c.error = part["error"]
            for merged, own in zip((first, *timed, last), (part["first"], *part["timed"], part["last"])):
                merged.update(own)
    timed = [{c.name: t[c.name] for c in contenders} for t in timed]   # table order
    ceilings = best_ceilings(first, last)
    records = [case_record(case, res, ceilings) for case, res in zip(cases, timed)]

    if opts.memory:
        for case, rec in zip(cases, records):
            if not case.train:
                continue
            for name, r in rec["results"].items():
                if "error" not in r:
                    log(f"memory probe {name} {case.id}")
                    r["memory"] = run_memory_probe(name, case.id, opts.quick)
    for rec in records:
        add_ratios(rec, contenders)

    uses_cuda = any(c.device_class == "cuda" and not c.error for c in contenders)
    env = collect_environment(command, uses_cuda)
    return {
        "tag": opts.tag or machine_tag(env, uses_cuda, opts.quick),
        "quick": opts.quick,
        "settings": {"repeat": opts.repeat, "warmup": opts.warmup, "gap_s": opts.gap, "memory": opts.memory,
                     "devices": opts.devices},
        "environment": env,
        "contenders": {c.name: {"device_class": c.device_class, "baseline": c.is_baseline,
                                "error": c.error} for c in contenders},
        "ceilings": ceilings,
        "cases": records,
        "elapsed_s": time.perf_counter() - t_start,
    }


def time_all(contenders, cases, opts):
    """GEMM ceilings before, every case, ceilings after: ``(first, [timed per case], last)``."""
    first = measure_ceilings(contenders, opts.repeat, opts.warmup, opts.gap, opts.gemm_n)
    timed = [time_case(case, contenders, opts) for case in cases]
    last = measure_ceilings(contenders, opts.repeat, opts.warmup, opts.gap, opts.gemm_n)
    return first, timed, last


def isolated_run(contender_name, opts):
    """:func:`time_all` for one contender, in this (fresh) process."""
    contender = contender_from_name(contender_name)
    contender.try_setup()
    first, timed, last = time_all([contender], select_cases(build_cases(opts.quick), opts.cases), opts)
    return {"first": first, "timed": timed, "last": last, "error": contender.error}


def run_isolated(contender, opts):
    """Run :func:`isolated_run` in a fresh interpreter with the same options.

    Returns its ``{"first", "timed", "last", "error"}``; on failure, the error in each place.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_isolated", contender.name,
           "--repeat", str(opts.repeat), "--warmup", str(opts.warmup), "--gap", str(opts.gap)]
    for flag, value in (("--cases", opts.cases), ("--gemm-n", opts.gemm_n)):
        if value is not None:
            cmd += [flag, str(value)]
    if opts.quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)  # progress on stderr
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(ISOLATED_MARK):
            return json.loads(line[len(ISOLATED_MARK):])
    text = f"isolated run failed (exit status {proc.returncode})"
    error = {contender.name: {"error": text}}
    n_cases = len(select_cases(build_cases(opts.quick), opts.cases))
    return {"first": error, "timed": [error] * n_cases, "last": error, "error": text}


def time_case(case, contenders, opts):
    """Build every contender's callable for ``case``, time them, free them.

    Returns name -> {"samples_ms": [...]} or {"error": ...} for every contender.
    """
    log(f"== {case.id}: {case.label}")
    fns, errors = {}, {}
    for c in contenders:
        if c.error:
            errors[c.name] = {"error": c.error}
            continue
        try:
            fns[c.name] = (make_case(c, case), c.sync)
        except Exception as exc:
            errors[c.name] = {"error": _error_text(exc)}
    timed = time_round_robin(fns, opts.repeat, opts.warmup, opts.gap)
    del fns
    gc.collect()
    merged = {c.name: timed.get(c.name) or errors[c.name] for c in contenders}
    for name, r in merged.items():
        log(f"   {name:<16} " + (f"error: {r['error']}"[:100] if "error" in r else
                                 f"{statistics.median(r['samples_ms']):9.1f} ms"))
    return merged


def parse_args(argv=None):
    """Command-line options (``--repeat`` defaults to 7, or 3 with ``--quick``)."""
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller batches for the layer cases and 3 repeats")
    ap.add_argument("--devices", help="comma-separated xpconv device specs/prefixes, e.g. cpu,cuda "
                                      "(default: every available device and backend)")
    ap.add_argument("--cases", help="comma-separated patterns over case ids (e.g. conv3x3/train), "
                                    "base names (conv*) or modes (train, infer)")
    ap.add_argument("--contenders", help="comma-separated patterns over contender names "
                                         "(e.g. textbook,torch-*,xpconv:*)")
    ap.add_argument("--repeat", type=int, help=f"timed samples per contender and case "
                                               f"(default {DEFAULT_REPEAT}, --quick {QUICK_REPEAT})")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    ap.add_argument("--gap", type=float, default=DEFAULT_GAP,
                    help=f"idle seconds before each timed call, so the previous library's "
                         f"spinning threads go to sleep (default {DEFAULT_GAP})")
    ap.add_argument("--gemm-n", type=int, help=f"GEMM ceiling matrix size (default {GEMM_SIZE['cpu']} "
                                               f"on CPU, {GEMM_SIZE['cuda']} on CUDA)")
    ap.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"), help="output folder")
    ap.add_argument("--tag", help="machine tag used for the output file names")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory subprocess probes")
    ap.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plot")
    ap.add_argument("--list", action="store_true", help="list cases and contenders, then exit")
    ap.add_argument("--_memory-probe", dest="memory_probe", nargs=2, metavar=("CONTENDER", "CASE"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--_isolated", dest="isolated", metavar="CONTENDER", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.repeat is None:
        opts.repeat = QUICK_REPEAT if opts.quick else DEFAULT_REPEAT
    if opts.repeat < 1 or opts.warmup < 0 or opts.gap < 0:
        ap.error("--repeat must be >= 1, --warmup and --gap >= 0")
    return opts


def main(argv=None):
    """Entry point (``python bench/run.py`` / ``xpconv bench``); returns an exit status."""
    opts = parse_args(argv)
    if opts.memory_probe:
        record = memory_probe(*opts.memory_probe, opts.quick)
        print(PROBE_MARK + json.dumps(record), flush=True)
        return 0
    if opts.isolated:
        print(ISOLATED_MARK + json.dumps(isolated_run(opts.isolated, opts)), flush=True)
        return 0
    if opts.list:
        for case in select_cases(build_cases(opts.quick), opts.cases):
            print(f"{case.id:<18} {case.label}")
        print("contenders:", ", ".join(c.name for c in discover_contenders(
            opts.devices, opts.contenders)))
        return 0
    args = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(shlex.quote(a) for a in ["python", "bench/run.py", *args])
    results = run_benchmark(opts, command)
    print(format_text(results))
    for path in write_outputs(results, opts.out, opts.plot):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
