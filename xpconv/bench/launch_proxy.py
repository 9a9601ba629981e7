"""GPU launch proxy: kernel ops and blocking syncs of one call, counted on torch's CPU backend.

There is no GPU here to count launches on, so the benchmark counts what would be
launches: one call of each case runs on torch CPU tensors under
:func:`xpconv.diagnostics.launches.count_launches` (a ``TorchDispatchMode``), for xpconv on
torch and for native PyTorch.  ``ops`` are the aten ops that would be at least
one CUDA kernel launch each, ``syncs`` the blocking device-to-host syncs
(``_local_scalar_dense``, ``is_nonzero``, ``nonzero``, ``item``). xpconv is counted at
the workspace limit it gets by default on a GPU (512 MiB), not the CPU's 8 MiB, since
the chunk count decides the op count, and with its kernels' GPU paths (``count_launches``
runs under ``as_on_a_gpu``).

The step cases are counted too: xpconv's uncompiled step (``Adam.update`` after
``gradient``) against native PyTorch's (``torch.optim.Adam``, counted with
``foreach=True``, its default on a GPU: one multi-tensor op per formula rather than one op
per parameter, as its CPU default would count). The compiled contenders are not counted:
the kernels inductor generates run as compiled code, not through torch's dispatcher,
so no dispatch mode sees them (:data:`COMPILED_NOTE`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._kernels.fastpaths import as_on_a_gpu
from ..devices import GPU_WORKSPACE
from ..workspace import workspace_limit
from .cases import Case
from .contenders import Contender, TorchContender, XpconvContender, make_case
from .results import LaunchRecord, error_text

LABEL = "GPU launch proxy: aten ops on torch CPU, xpconv at its GPU workspace default (512 MiB)"
COMPILED_NOTE = ("the compiled contenders (xpconv:*+compiled) are not counted: the kernels inductor "
                 "generates do not pass through torch's dispatcher, so the counter cannot see them")


def launch_counter() -> tuple[Callable[..., Any] | None, str | None]:
    """``(count_launches, None)``, or ``(None, why the proxy cannot be counted)``."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed"
    try:
        from xpconv.diagnostics.launches import count_launches
    except ImportError as exc:
        return None, f"xpconv.diagnostics.launches is not available ({error_text(exc)})"
    return count_launches, None


def proxy_contenders() -> dict[str, Contender]:
    """The two counted: ``"xpconv:torch"`` (xpconv's layers on torch) and ``"torch"`` (native;
    in the step cases ``torch.optim.Adam`` with ``foreach=True``, as torch chooses on a GPU).
    """
    return {"xpconv:torch": XpconvContender("torch"), "torch": TorchContender("cpu", adam_foreach=True)}


def count_call(contender: Contender, case: Case, count_launches: Callable[..., Any]) -> LaunchRecord:
    """Ops and syncs of one call of ``case`` on ``contender``, after one uncounted call.

    The uncounted call keeps lazy initialisation (first-call caches: the constants and
    index arrays of the kernels' GPU paths, the optimizer's state) out of the count, as the
    steady state of a training loop; it takes the GPU paths too, as the counted call does.
    """
    if contender.error:
        return LaunchRecord(error=contender.error)
    try:
        with workspace_limit(GPU_WORKSPACE):      # what a GPU user gets by default
            fn = make_case(contender, case)
            with as_on_a_gpu():
                contender.sync(fn())
            with count_launches() as counted:
                contender.sync(fn())
        return LaunchRecord(ops=int(counted.ops), syncs=int(counted.syncs), by_op=dict(counted.by_op))
    except Exception as exc:  # reported in the table, the run goes on
        return LaunchRecord(error=error_text(exc))


def count_launches_per_case(cases: list[Case], log: Callable[[str], None] = lambda msg: None,
                            ) -> tuple[dict[str, dict[str, LaunchRecord]], str | None]:
    """Launch proxy of every case: ``{case id: {"xpconv:torch": ..., "torch": ...}}`` and a note.

    The note says why nothing was counted (torch or ``xpconv.diagnostics.launches`` missing), else None.
    """
    count_launches, why = launch_counter()
    if count_launches is None:
        return {}, f"{LABEL}: not counted, {why}"
    contenders = proxy_contenders()
    for c in contenders.values():
        c.try_setup()
    counts = {}
    for case in cases:
        log(f"launch proxy {case.id}")
        counts[case.id] = {name: count_call(c, case, count_launches) for name, c in contenders.items()}
    return counts, None
