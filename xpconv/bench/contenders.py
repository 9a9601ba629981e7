"""The contenders: xpconv on each device, the textbook NumPy baseline, PyTorch.

Each contender is a small adapter that turns a case's host inputs into a
zero-argument callable on its device (:func:`make_case`); a contender that fails
to set up or to run is reported as ``error: ...`` and the run goes on.

Names: ``xpconv:<spec>`` for the xpconv device specs ("cpu" = NumPy, "cuda:N" =
CuPy, "torch", "jax", "array_api_strict"), ``textbook`` (:mod:`xpconv.bench.textbook`,
NumPy on the CPU), ``torch-cpu`` and ``torch-cuda`` (``torch.nn.functional``).

``xpconv:<spec>+compiled`` (JAX and torch specs) is :func:`xpconv.compile_step`'s step,
``jax.jit`` or ``torch.compile`` (``--compile-backend``, default inductor): it takes part
in the step cases only (:meth:`Contender.supports`), and is compiled when its case is
built, before the warm-up (the compile is not timed).

On a CPU of more than one core, ``xpconv:cpu@1t`` and ``torch-cpu@1t`` are the same
contenders on one core (``xpconv.set_num_threads(1)`` with BLAS at one thread too,
``torch.set_num_threads(1)``; set around each call and restored after): beside
``xpconv:cpu`` and ``torch-cpu`` (every usable core) they give each library's scaling,
and the 1-thread comparison.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import textbook
from .cases import Case, case_inputs, split_patterns
from .results import error_text

_FAKE_DEVICES = ("array_api_strict:device1",)  # the same host memory under another name
_IN_PROCESS_BACKENDS = ("cpu", "cuda", "numpy", "cupy")
COMPILED = "+compiled"  # name suffix of xpconv's compiled step (after the spec, before "@1t")
COMPILED_LIBRARIES = ("jax", "torch")  # where compile_step compiles
DEFAULT_COMPILE_BACKEND = "inductor"  # torch.compile's own default
ADAM_LR = 0.001  # the step cases' optimizer: Adam at the book's default rate


def block(out: Any) -> None:
    """Wait for lazily computed results (JAX) inside nested outputs."""
    if isinstance(out, (tuple, list)):
        for o in out:
            block(o)
    elif isinstance(out, dict):
        for o in out.values():
            block(o)
    elif hasattr(out, "block_until_ready"):
        out.block_until_ready()


def thread_suffix(threads: int | None) -> str:
    """``"@<n>t"`` for a contender at n threads, ``""`` at the library's default."""
    return f"@{threads}t" if threads else ""


def spec_class(spec: Any) -> str:
    """"cuda" for GPU device specs / descriptions, else "cpu"."""
    text = str(spec).lower()
    return "cuda" if ("cuda" in text or text.split(":")[0] == "gpu") else "cpu"


class Contender:
    """Base adapter: builds callables for each case kind on one device.

    Attributes:
        name: the name in the tables.
        device_class: "cpu" or "cuda": which GEMM size and which baselines apply.
        is_baseline: a baseline (textbook, torch) rather than xpconv.
        isolated: timed in a process of its own (see :func:`xpconv.bench.runner.run_isolated`).
        error: why setup failed, or None.
        threads: the library's thread count around each call (None: its default).
        uncompiled_name: for a compiled contender, the name of the same step uncompiled
            (their ratio is reported), else None.
    """

    name = "?"
    device_class = "cpu"
    is_baseline = True
    isolated = False
    threads: int | None = None
    uncompiled_name: str | None = None

    def __init__(self):
        self.error: str | None = None

    def get_threads(self) -> int:
        raise NotImplementedError

    def set_threads(self, n: int) -> None:
        raise NotImplementedError

    def at_threads(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` run at ``self.threads`` threads (the count before is restored after it)."""
        if self.threads is None:
            return fn

        def call():
            before = self.get_threads()
            self.set_threads(self.threads)
            try:
                return fn()
            finally:
                self.set_threads(before)
        return call

    def supports(self, case: Case) -> bool:
        """Whether this contender takes part in ``case`` (every case, unless a subclass says not).

        A contender leaves out the cases it does not support: no row, no process, no cost.
        """
        return True

    def setup(self) -> None:
        """Import the library / open the device; may raise."""

    def try_setup(self) -> bool:
        """Run :meth:`setup`, remembering a failure as ``self.error``."""
        try:
            self.setup()
        except Exception as exc:  # reported in the table, the run goes on
            self.error = error_text(exc)
        return self.error is None

    def sync(self, out: Any = None) -> None:
        """Wait until the device has finished (and ``out`` is computed)."""
        block(out)

    def gemm(self, a: np.ndarray, b: np.ndarray) -> Callable[[], Any]:
        raise NotImplementedError

    def conv(self, data: dict, stride: int, pad: int, train: bool) -> Callable[[], Any]:
        raise NotImplementedError

    def pool(self, data: dict, size: int, stride: int, train: bool) -> Callable[[], Any]:
        raise NotImplementedError

    def net(self, data: dict, train: bool) -> Callable[[], Any]:
        raise NotImplementedError

    def step(self, data: dict, filter_num: int, hidden_size: int, gpu_paths: bool) -> Callable[[], Any]:
        """One training step of SimpleConvNet with Adam (lr 0.001): gradient, then update.

        Args:
            data: ``x: (N, 1, 28, 28)``, ``t: (N,)`` labels (:func:`case_inputs`).
            filter_num: the number of filters of the conv (the book's: 30).
            hidden_size: the width of the hidden affine layer (the book's: 100).
            gpu_paths: xpconv's kernels choose their paths as on a GPU (the host-cost case).

        Returns:
            A callable returning the step's loss (and what to wait for).
        """
        raise NotImplementedError


def layer_callable(layer: Any, x: Any, dy: Any, train: bool) -> Callable[[], Any]:
    """``forward`` (and ``backward``) of a book-style layer as a callable."""
    if not train:
        return lambda: layer.forward(x)

    def step():
        y = layer.forward(x)
        return y, layer.backward(dy)
    return step


class TextbookContender(Contender):
    """The book's algorithm in plain NumPy (:mod:`xpconv.bench.textbook`), CPU only."""

    name = "textbook"

    def gemm(self, a, b):
        return lambda: np.matmul(a, b)

    def conv(self, data, stride, pad, train):
        layer = textbook.Convolution(data["w"], data["b"], stride=stride, pad=pad)
        return layer_callable(layer, data["x"], data["dy"], train)

    def pool(self, data, size, stride, train):
        layer = textbook.Pooling(size, size, stride=stride)
        return layer_callable(layer, data["x"], data["dy"], train)

    def net(self, data, train):
        net = textbook.SimpleConvNet(seed=0)
        x, t = data["x"], data["t"]
        return (lambda: net.gradient(x, t)) if train else (lambda: net.predict(x))

    def step(self, data, filter_num, hidden_size, gpu_paths):
        """The book's loop body: ``grads = net.gradient(x, t)``, ``optimizer.update(params, grads)``."""
        net = textbook.SimpleConvNet(conv_param=conv_param(filter_num), hidden_size=hidden_size, seed=0)
        optimizer = textbook.Adam(lr=ADAM_LR)
        x, t = data["x"], data["t"]

        def train_step():
            optimizer.update(net.params, net.gradient(x, t))
            return net.last_layer.loss
        return train_step


def conv_param(filter_num: int) -> dict[str, int]:
    """SimpleConvNet's ``conv_param``: ``filter_num`` filters of 5x5, stride 1, no padding."""
    return {"filter_num": filter_num, "filter_size": 5, "pad": 0, "stride": 1}


def torch_simple_convnet(torch: Any, filter_num: int = 30, hidden_size: int = 100) -> Any:
    """The book's SimpleConvNet architecture as a ``torch.nn`` module (its widths by default).

    Shapes: x (N, 1, 28, 28) -> conv 5x5 (N, filter_num, 24, 24) -> pool (N, filter_num, 12, 12)
    -> (N, hidden_size) -> scores (N, 10).
    """
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, filter_num, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(filter_num * 12 * 12, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 10))


class TorchContender(Contender):
    """PyTorch (``torch.nn.functional``) on "cpu" or "cuda" (cuDNN, no TF32).

    Args:
        device: "cpu" or "cuda".
        threads: torch's thread count around each call (None: its default).
        adam_foreach: ``torch.optim.Adam``'s ``foreach`` in the step cases (None: torch's
            default for the device: one loop over the parameters on a CPU, the multi-tensor
            kernels on a GPU).
    """

    def __init__(self, device: str, threads: int | None = None, adam_foreach: bool | None = None):
        super().__init__()
        self.device = device
        self.device_class = device
        self.threads = threads
        self.adam_foreach = adam_foreach
        self.name = f"torch-{device}" + thread_suffix(threads)
        self.torch = None

    def get_threads(self):
        return self.torch.get_num_threads()

    def set_threads(self, n):
        self.torch.set_num_threads(n)

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

    def step(self, data, filter_num, hidden_size, gpu_paths):
        """PyTorch's training loop body: ``zero_grad``, ``cross_entropy``, ``backward``,
        ``torch.optim.Adam.step``.
        """
        torch, F = self.torch, self.torch.nn.functional
        torch.manual_seed(0)
        model = torch_simple_convnet(torch, filter_num, hidden_size).to(self.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=ADAM_LR, foreach=self.adam_foreach)
        x, t = self._tensor(data["x"]), self._tensor(data["t"])

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), t)
            loss.backward()
            optimizer.step()
            return loss.detach()
        return train_step


class XpconvContender(Contender):
    """xpconv on one device spec ("cpu", "cuda:0", "torch", "jax", ...).

    xpconv on torch, JAX and array-api-strict is ``isolated``: timed in a process of
    its own, so that the library's runtime (JAX's threads slowed NumPy 1.4x when they
    shared one) leaves the main comparison (NumPy/CuPy against the baselines) alone.
    """

    is_baseline = False

    def __init__(self, spec: str, threads: int | None = None):
        super().__init__()
        self.spec = spec
        self.threads = threads
        self.name = f"xpconv:{spec}" + thread_suffix(threads)
        self.device_class = spec_class(spec)
        self.isolated = spec.split(":")[0] not in _IN_PROCESS_BACKENDS
        self.xpconv: Any = None   # the module and the Device, once set up
        self.dev: Any = None

    def get_threads(self):
        return self.xpconv.get_num_threads()

    def set_threads(self, n):
        self.xpconv.set_num_threads(n)

    def at_threads(self, fn):
        """As the base class; and BLAS at the same count (threadpoolctl), as
        ``torch.set_num_threads`` limits torch's own: ``@1t`` is one core.
        """
        call = super().at_threads(fn)
        if self.threads is None:
            return call
        from threadpoolctl import ThreadpoolController
        blas = ThreadpoolController()   # finds the BLAS libraries once, not at every call

        def limited():
            with blas.limit(limits=self.threads, user_api="blas"):
                return call()
        return limited

    def setup(self):
        import xpconv
        self.xpconv = xpconv
        self.dev = xpconv.device(self.spec)
        if spec_class(str(self.dev)) == "cuda":
            self.device_class = "cuda"

    def sync(self, out=None):
        block(out)
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
        return layer_callable(layer, put(data["x"]), put(data["dy"]), train)

    def pool(self, data, size, stride, train):
        layer = self.xpconv.Pooling(size, size, stride=stride)
        return layer_callable(layer, self.dev.asarray(data["x"]), self.dev.asarray(data["dy"]), train)

    def net(self, data, train):
        net = self.xpconv.SimpleConvNet(device=self.spec, seed=0)
        x, t = self.dev.asarray(data["x"]), self.dev.asarray(data["t"])
        return (lambda: net.gradient(x, t)) if train else (lambda: net.predict(x))

    def step(self, data, filter_num, hidden_size, gpu_paths):
        """``train_step(x, t)`` of :meth:`training_step`, returning the loss and the updated
        parameters (JAX's calls return before their work is done: the sync waits for both).

        With ``gpu_paths`` (the host-cost case) the call runs under
        ``xpconv._kernels.fastpaths.as_on_a_gpu()``: the kernels take the paths they take on
        a GPU, which is what a GPU run's host executes. It changes torch's CPU choices only
        (NumPy never prefers fewer ops, JAX always does).
        """
        net = self.xpconv.SimpleConvNet(conv_param=conv_param(filter_num), hidden_size=hidden_size,
                                        device=self.spec, seed=0)
        x, t = self.dev.asarray(data["x"]), self.dev.asarray(data["t"])
        train_step = self.training_step(net, x, t)

        def call():
            loss = train_step(x, t)
            return loss, tuple(net.params.values())
        if not gpu_paths:
            return call
        from xpconv._kernels.fastpaths import as_on_a_gpu

        def call_on_gpu_paths():
            with as_on_a_gpu():
                return call()
        return call_on_gpu_paths

    def training_step(self, net: Any, x: Any, t: Any) -> Callable[[Any, Any], Any]:
        """The uncompiled step: ``Adam.update(net.params, net.gradient(x, t))``, returning the loss.

        ``x`` (N, 1, 28, 28) and ``t`` (N,) are the case's inputs (unused here; a compiled
        step compiles for their shapes).
        """
        optimizer = self.xpconv.Adam(lr=ADAM_LR)

        def train_step(x, t):
            optimizer.update(net.params, net.gradient(x, t))
            return net.last_layer.loss
        return train_step


class CompiledXpconvContender(XpconvContender):
    """xpconv's step through :func:`xpconv.compile_step` (``jax.jit``, ``torch.compile``), on a
    JAX or torch spec; the step cases only.

    The compile (inductor: 20-50 s per input shape on a 2-core CPU; ``aot_eager`` and JAX:
    seconds) runs when the case is built, so the warm-up and the timed calls run the
    compiled program. In the host-cost case the compiled kernels are those a compiler
    traces, which are the GPU paths already.

    Args:
        spec: an xpconv device spec of JAX or torch ("jax", "torch", "torch:cuda:0", ...).
        threads: xpconv's thread count around each call (None: its default).
        compile_backend: ``torch.compile``'s backend (``compile_step(..., backend=)``);
            unused on JAX.
    """

    def __init__(self, spec: str, threads: int | None = None,
                 compile_backend: str = DEFAULT_COMPILE_BACKEND):
        super().__init__(spec, threads)
        self.uncompiled_name = self.name
        self.name = f"xpconv:{spec}{COMPILED}" + thread_suffix(threads)
        self.compile_backend = compile_backend

    def supports(self, case):
        """The step cases only: there is nothing else to compile."""
        return case.kind == "step"

    def setup(self):
        super().setup()
        if self.dev.library not in COMPILED_LIBRARIES:
            raise ValueError(f"{self.name}: compile_step compiles on {' and '.join(COMPILED_LIBRARIES)} "
                             f"only; on {self.dev.library} it is the plain step, xpconv:{self.spec}")

    def training_step(self, net, x, t):
        """``compile_step(net, Adam(lr=0.001), backend=...)``, compiled here by one call on (x, t)."""
        train_step = self.xpconv.compile_step(net, self.xpconv.Adam(lr=ADAM_LR), backend=self.compile_backend)
        self.sync(train_step(x, t))          # the trace and compile, outside the timing
        return train_step


def make_case(contender: Contender, case: Case) -> Callable[[], Any]:
    """Zero-argument callable running ``case`` once on ``contender``.

    Inputs are built (and put on the device) here, outside the timed call.
    """
    data = case_inputs(case)
    p = case.params
    if case.kind == "conv":
        fn = contender.conv(data, p["stride"], p["pad"], case.train)
    elif case.kind == "pool":
        fn = contender.pool(data, p["size"], p["stride"], case.train)
    elif case.kind == "step":
        fn = contender.step(data, p["filter_num"], p["hidden_size"], gpu_paths=case.host_cost)
    else:
        fn = contender.net(data, case.train)
    return contender.at_threads(fn)


def contender_from_name(name: str, compile_backend: str = DEFAULT_COMPILE_BACKEND) -> Contender:
    """Rebuild a contender from its name (in a child process).

    ``compile_backend`` is the ``torch.compile`` backend of a ``+compiled`` contender.
    """
    base, at, count = name.partition("@")
    threads = None
    if at:
        if not (count.endswith("t") and count[:-1].isdigit() and int(count[:-1]) >= 1):
            raise SystemExit(f"unknown contender {name!r} (a thread count is written @<n>t, e.g. @1t)")
        threads = int(count[:-1])
    if base == "textbook" and threads is None:
        return TextbookContender()
    if base.startswith("torch-"):
        return TorchContender(base[len("torch-"):], threads)
    if base.startswith("xpconv:") and base.endswith(COMPILED):
        return CompiledXpconvContender(base[len("xpconv:"):-len(COMPILED)], threads, compile_backend)
    if base.startswith("xpconv:"):
        return XpconvContender(base[len("xpconv:"):], threads)
    raise SystemExit(f"unknown contender {name!r}")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _torch_cuda_available() -> tuple[Any, bool]:
    try:
        import torch
    except Exception:
        return None, False
    return torch, bool(torch.cuda.is_available())


def _matches(spec: str, wanted: str) -> bool:
    return spec == wanted or spec.split(":")[0] == wanted


def xpconv_specs(devices: str | None = None) -> list[str]:
    """The xpconv device specs to benchmark.

    Default: every spec of ``xpconv.available_devices()`` but the fake devices of
    array-api-strict; ``devices`` ("cpu,cuda"): specs equal to an entry or with it
    as prefix before ":" (an entry matching nothing is kept, so its failure shows
    up in the table).
    """
    try:
        import xpconv
        available = [str(s) for s in xpconv.available_devices()]
    except Exception:
        available = None  # xpconv not importable: its contender will show the error
    if available is None:
        _, cuda = _torch_cuda_available()
        available = ["cpu"] + (["cuda:0"] if cuda else [])
    wanted = split_patterns(devices)
    if not wanted:
        return [s for s in available if s not in _FAKE_DEVICES]
    specs = [s for s in available if any(_matches(s, w) for w in wanted)]
    return specs + [w for w in wanted if not any(_matches(s, w) for s in specs)]


def discover_contenders(devices: str | None = None, patterns: str | None = None,
                        compile_backend: str = DEFAULT_COMPILE_BACKEND) -> list[Contender]:
    """Xpconv contenders first (each JAX or torch spec followed by its compiled step), then
    the baselines on the same device classes.

    Args:
        devices: comma-separated xpconv device specs/prefixes (None: every available one).
        patterns: comma-separated ``fnmatch`` patterns over contender names (None: all).
        compile_backend: ``torch.compile``'s backend for ``xpconv:torch+compiled``.
    """
    specs = xpconv_specs(devices)
    contenders: list[Contender] = []
    for s in specs:
        contenders.append(XpconvContender(s))
        if s.split(":")[0] in COMPILED_LIBRARIES:
            contenders.append(CompiledXpconvContender(s, compile_backend=compile_backend))
    # at one thread too, last (on a CPU of more than one core): xpconv's threads are NumPy's only
    one_thread: list[Contender] = []
    if _usable_cores() > 1:
        one_thread += [XpconvContender(s, threads=1) for s in specs if s in ("cpu", "numpy")]
    torch, cuda = _torch_cuda_available()
    if devices:
        classes = {spec_class(d) for d in split_patterns(devices)}
    else:
        classes = {"cpu"} | ({"cuda"} if cuda else set())
    if "cpu" in classes:
        contenders.append(TextbookContender())
        if torch is not None:
            contenders.append(TorchContender("cpu"))
            if _usable_cores() > 1:
                one_thread.append(TorchContender("cpu", threads=1))
    if "cuda" in classes and cuda:
        contenders.append(TorchContender("cuda"))
    contenders += one_thread
    pats = split_patterns(patterns)
    if pats:
        contenders = [c for c in contenders if any(fnmatch.fnmatchcase(c.name, p) for p in pats)]
    return contenders
