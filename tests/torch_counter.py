"""Count what reaches torch's backend: kernel ops, and blocking device-to-host syncs.

A GPU launch proxy on the CPU: every aten op that is not a view or metadata would be
at least one kernel launch on CUDA, and every ``_local_scalar_dense`` / ``is_nonzero``
/ ``nonzero`` / ``item`` (and every ``Tensor.numpy()``, a device-to-host copy on a GPU)
would block until the device is done.
"""
from __future__ import annotations

import collections
import contextlib

SYNC_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "nonzero", "item"})
# views, metadata and allocations without compute: not counted as kernels (scalar_tensor
# wraps a Python number on the host, which a CUDA kernel takes as an argument)
_FREE = frozenset({"scalar_tensor", "view", "_unsafe_view", "reshape", "alias", "detach", "expand", "squeeze", "unsqueeze",
                   "permute", "transpose", "t", "slice", "select", "as_strided", "lift_fresh",
                   "_to_copy_view", "empty", "empty_strided", "empty_like", "sym_size", "sym_stride",
                   "sym_numel", "sym_storage_offset", "dim", "is_contiguous", "_reshape_alias",
                   "numpy_T", "unbind", "split"})


class Counts:
    """What ran inside :func:`count`: ``ops`` (Counter of aten op names) and ``syncs``."""

    def __init__(self):
        self.ops: collections.Counter = collections.Counter()
        self.numpy_calls = 0

    @property
    def kernels(self) -> int:
        return sum(n for op, n in self.ops.items() if op not in _FREE and op not in SYNC_OPS)

    @property
    def syncs(self) -> int:
        return sum(self.ops[op] for op in SYNC_OPS) + self.numpy_calls


@contextlib.contextmanager
def count():
    """``with count() as c: ...`` then ``c.kernels``, ``c.syncs``, ``c.ops``."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = Counts()

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    real_numpy = torch.Tensor.numpy

    def counting_numpy(self, *args, **kwargs):
        counts.numpy_calls += 1
        return real_numpy(self, *args, **kwargs)

    torch.Tensor.numpy = counting_numpy
    try:
        with _Mode():
            yield counts
    finally:
        torch.Tensor.numpy = real_numpy
