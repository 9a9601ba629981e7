"""The data-parallel step in progress, as layers see it (no MPI here).

:mod:`xpconv.distributed` sets the :class:`Shard` of each step with :func:`sharded`;
layers that must act on the whole global batch read it with :func:`current_shard`:
``BatchNormalization`` sums its statistics over the ranks and ``Dropout`` draws the
whole batch's mask and keeps its rows.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any

from .._kernels.fastpaths import torch_compiling

__all__ = ["Shard", "current_shard", "sharded"]


@dataclass(frozen=True)
class Shard:
    """This rank's rows ``[start, stop)`` of a global batch of ``total`` samples.

    Layers that see only their rank's rows but must act on the whole batch read it from
    :func:`current_shard`: ``weight = n / total`` turns this rank's mean-loss gradient
    into its part of the global batch's.
    """

    comm: Any   # the xpconv.distributed.Communicator of the job
    start: int
    stop: int
    total: int

    @property
    def n(self) -> int:
        return self.stop - self.start

    @property
    def weight(self) -> float:
        return self.n / self.total

    def check_rows(self, who: str, x) -> None:
        """``x`` has this shard's number of rows, else a ValueError naming ``who``."""
        if x.shape[0] != self.n:
            raise ValueError(f"{who}: in a distributed step this rank holds rows "
                             f"{self.start}..{self.stop} ({self.n}) of a batch of {self.total}; "
                             f"got x with {x.shape[0]} rows (layers must keep the batch axis)")


_CURRENT_SHARD: contextvars.ContextVar = contextvars.ContextVar("xpconv_shard", default=None)


@contextlib.contextmanager
def sharded(shard: Shard):
    """Context in which :func:`current_shard` returns ``shard`` (set around each step)."""
    token = _CURRENT_SHARD.set(shard)
    try:
        yield shard
    finally:
        _CURRENT_SHARD.reset(token)


def current_shard() -> Shard | None:
    """The shard of the distributed step in progress, or None outside one (and in a step
    that ``torch.compile`` traces: a compiled step runs in one process).
    """
    if torch_compiling():          # torch.compile cannot trace a ContextVar
        return None
    return _CURRENT_SHARD.get()
