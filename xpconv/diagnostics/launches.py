"""The GPU launch proxy: kernel launches and blocking syncs of torch code, counted on the CPU.

No GPU is needed to see how a training step would behave on one. The same torch code
runs under a ``TorchDispatchMode`` that sees every aten op reaching the backend:

* an **op** is every aten op except views (``OpOverload.is_view``), in-place metadata
  changes (``torch.Tag.inplace_view``), allocations without a fill and metadata queries
  (``NOT_KERNELS``); on a CUDA device each would be at least one kernel launch (~5 us
  each). Profiler markers (``profiler::_record_function_*``) are not ops;
* a **sync** is an op whose result the host must wait for: ``_local_scalar_dense``
  (behind ``item()``, ``float(t)``, ``bool(t)``, ``if t:``), and every op tagged
  ``data_dependent_output`` or ``dynamic_output_shape`` (``equal``, ``nonzero``,
  ``masked_select``, ``unique``...); a copy from a device tensor to the CPU; and
  ``Tensor.numpy()`` / ``Tensor.tolist()`` (which never reach the dispatcher).
  Syncs are not counted in ``ops``.

On torch's ``meta`` device the counts come without any compute (large shapes cost
nothing); there a sync reads as 0 / False so that the block can go on.

>>> from xpconv.diagnostics.launches import count_launches                        # doctest: +SKIP
>>> with count_launches(forbid_syncs=True) as count:                   # doctest: +SKIP
...     grads = net.gradient(x, t); opt.update(net.params, grads)
>>> count.ops, count.syncs, count.by_op.most_common(3)                  # doctest: +SKIP
"""
from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .._kernels.fastpaths import as_on_a_gpu

__all__ = ["LaunchCount", "count_launches", "simple_convnet_step_counts", "NOT_KERNELS"]

# aten ops that launch no kernel besides views (``OpOverload.is_view``) and in-place
# metadata changes (``torch.Tag.inplace_view``): allocations without a fill, and
# metadata queries. Names are overload packets (``aten.<name>``).
NOT_KERNELS = frozenset({
    "empty", "empty_strided", "empty_like", "empty_permuted", "new_empty", "new_empty_strided",
    "_unsafe_view", "resize_", "set_", "lift_fresh",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "is_contiguous",
    "is_same_size", "is_strides_like_format", "is_non_overlapping_and_dense",
})
_NOT_OPS_NAMESPACES = frozenset({"profiler"})   # record_function markers (nn.Module, optim)
_SCALAR_READS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal"})
_SYNC_NAMES = _SCALAR_READS | {"nonzero"}


@dataclass
class LaunchCount:
    """What a block of torch code sent to the backend.

    Attributes:
        ops: aten ops that would launch at least one kernel (syncs not included).
        syncs: blocking device->host syncs.
        by_op: ``Counter`` of op names (``"aten.add.Tensor"``, syncs included).
        host_ops: ops left out because they touched only CPU tensors while ``device``
            was set to another device (host-side scalars such as ``torch.optim``'s step
            counters); 0 when ``device`` is None.
    """

    ops: int = 0
    syncs: int = 0
    by_op: Counter = field(default_factory=Counter)
    host_ops: int = 0

    def __str__(self) -> str:
        top = ", ".join(f"{name} x{n}" for name, n in self.by_op.most_common(6))
        return f"{self.ops} kernel ops, {self.syncs} syncs ({top})"


@contextmanager
def count_launches(*, forbid_syncs: bool = False, device: str | None = None) -> Iterator[LaunchCount]:
    """Count aten ops reaching the torch backend (each would be >= 1 CUDA kernel launch) and
    blocking device->host syncs, while the block runs torch code.

    Args:
        forbid_syncs: raise ``RuntimeError`` at the first sync, naming the op and the
            line of the block's code that caused it.
        device: a torch device type ("meta", "cuda", "cpu"). When given, ops that touch no
            tensor of that type (only CPU tensors: host-side bookkeeping) are not kernel
            launches; they are counted in ``host_ops``, and a scalar read of a CPU tensor is
            not a sync. None (default) counts every op (a run on the CPU).

    Yields:
        a :class:`LaunchCount`, filled in while the block runs.

    Blocks nest (an inner block's ops count in the outer one too). ``Tensor.numpy`` and
    ``Tensor.tolist`` are wrapped while a block runs: measure from one thread.

    Raises:
        ModuleNotFoundError: PyTorch is not installed.
    """
    try:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError as exc:   # pragma: no cover - exercised in the bare environment
        raise ModuleNotFoundError("xpconv.diagnostics.launches.count_launches: the GPU launch proxy needs "
                                  "PyTorch (pip install torch)") from exc
    count = LaunchCount()
    on_meta = device == "meta"

    def sync(name: str) -> None:
        count.syncs += 1
        count.by_op[name] += 1
        if forbid_syncs:
            where = "".join(traceback.format_list(_user_frames()))
            raise RuntimeError(f"count_launches(forbid_syncs=True): blocking device->host sync "
                               f"{name} at\n{where}")

    def devices_of(args, kwargs, out=None):
        found = []
        for a in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(a, torch.Tensor):
                found.append(a.device.type)
        return found

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace in _NOT_OPS_NAMESPACES:
                return func(*args, **kwargs)
            name = func.overloadpacket.__name__
            if (name in _SYNC_NAMES or torch.Tag.data_dependent_output in func.tags
                    or (torch.Tag.dynamic_output_shape in func.tags and not _integer_gather(name, args, torch))):
                if device is None or device in devices_of(args, kwargs):
                    sync(str(func))
                    if on_meta and name in _SCALAR_READS:
                        return _fake_scalar(args)
                return func(*args, **kwargs)
            out = func(*args, **kwargs)
            touched = devices_of(args, kwargs, out)
            if device is not None and touched and device not in touched:
                count.host_ops += 1
            elif name in ("_to_copy", "copy_") and _moves_to_host(func, args, out, torch):
                sync(str(func))
            elif not (func.is_view or torch.Tag.inplace_view in func.tags or name in NOT_KERNELS):
                count.ops += 1
                count.by_op[str(func)] += 1
            return out

    originals = {name: getattr(torch.Tensor, name) for name in ("numpy", "tolist")}

    def host_read(name):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            if device is None or self.device.type == device:
                sync(f"Tensor.{name}")
            return original(self, *args, **kwargs)
        return wrapper

    try:
        for name in originals:
            setattr(torch.Tensor, name, host_read(name))
        with _Counter(), as_on_a_gpu():      # the kernels' paths as on a GPU
            yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _integer_gather(name: str, args, torch) -> bool:
    """``aten.index`` with integer index tensors only: its output shape is the indices' (a
    gather, no sync); boolean indices give a data-dependent shape (a ``nonzero``: a sync).
    """
    if name != "index" or len(args) < 2:
        return False
    indices = [i for i in args[1] if i is not None]
    return bool(indices) and all(isinstance(i, torch.Tensor) and not i.dtype.is_floating_point
                                 and i.dtype not in (torch.bool, torch.uint8) for i in indices)


def _moves_to_host(func, args, out, torch) -> bool:
    """A copy from a non-CPU tensor into a CPU tensor (device -> host: the host waits)."""
    src = args[1] if func.overloadpacket.__name__ == "copy_" else args[0]
    dst = args[0] if func.overloadpacket.__name__ == "copy_" else out
    return (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
            and src.device.type not in ("cpu", "meta") and dst.device.type == "cpu")


def _fake_scalar(args):
    """What a scalar read of a meta tensor gives: 0 of its kind (nothing was computed)."""
    x = args[0] if args else None
    if getattr(x, "dtype", None) is not None and x.dtype.is_floating_point:
        return 0.0
    if getattr(x, "dtype", None) is not None and str(x.dtype) == "torch.bool":
        return False
    return 0


def _user_frames():
    """The stack without this module's and torch's own frames: where the sync came from."""
    frames = traceback.extract_stack()[:-2]
    keep = [f for f in frames if "/torch/" not in f.filename and f.filename != __file__
            and "contextlib" not in f.filename]
    return keep[-6:]


# ---------------------------------------------------------------------------- SimpleConvNet step

def simple_convnet_step_counts(batch: int = 100, device: str = "meta", *, seed: int = 0) -> dict:
    """Kernel ops and syncs of one SimpleConvNet training step, xpconv vs native PyTorch.

    xpconv: ``SimpleConvNet(device="torch:<device>", seed=seed)``, ``grads =
    net.gradient(x, t); Adam().update(net.params, grads)``. Native: the same network as
    an ``nn.Module`` (Conv2d(1, 30, 5), ReLU, MaxPool2d(2), Linear(4320, 100), ReLU,
    Linear(100, 10), ``cross_entropy``) with ``torch.optim.Adam(foreach=True)``:
    ``zero_grad(set_to_none=True)``, forward, ``backward``, ``step``. x (batch, 1, 28, 28)
    and t (batch,) are already on the device. Each side runs one step first (optimizer
    state is created then) and the second, steady-state step is counted.

    Args:
        batch: N.
        device: "meta" (default: no compute; ops on CPU tensors, such as torch.optim's
            step counters, are host work and left out) or "cpu" (every op counted, so
            the native side also shows torch.optim's CPU step counters: 1 op and one
            scalar read per parameter).
        seed: weights and data.

    Returns:
        ``{"xpconv": LaunchCount, "torch": LaunchCount}``.
    """
    import numpy
    import torch

    from ..models import SimpleConvNet
    from ..optimizers import Adam

    if device not in ("meta", "cpu"):
        raise ValueError(f"simple_convnet_step_counts: expected device 'meta' or 'cpu'; got {device!r}")
    rng = numpy.random.default_rng(seed)
    x_host = rng.standard_normal((batch, 1, 28, 28)).astype(numpy.float32)
    t_host = rng.integers(0, 10, batch)
    mode = "meta" if device == "meta" else None

    net = SimpleConvNet(device=f"torch:{device}", seed=seed)
    x, t = net.device.asarray(x_host), net.device.asarray(t_host)
    opt = Adam()
    results = {}
    for _ in range(2):
        with count_launches(device=mode) as counted:
            grads = net.gradient(x, t)
            opt.update(net.params, grads)
    results["xpconv"] = counted

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 30, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(4320, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10)).to(device)
    native_opt = torch.optim.Adam(model.parameters(), foreach=True)
    xt, tt = torch.as_tensor(x_host, device=device), torch.as_tensor(t_host, device=device)
    for _ in range(2):
        with count_launches(device=mode) as counted:
            native_opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xt), tt)
            loss.backward()
            native_opt.step()
    results["torch"] = counted
    return results
