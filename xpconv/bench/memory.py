"""Peak extra memory of one call of a case, measured in a fresh subprocess.

Host: the resident set size (RSS) after building the inputs is the baseline; the
kernel's high-water mark is reset there (``/proc/self/clear_refs``) so setup
transients do not count; the case runs once; peak RSS (VmHWM) - baseline is the
extra.  CUDA contenders get one untimed warm-up call first (cuDNN autotuning
workspaces) and report the device allocator's peak too.
"""
from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
from typing import Any

from .cases import find_case
from .child import PROBE_MARK, run_child
from .contenders import DEFAULT_COMPILE_BACKEND, contender_from_name, make_case

MIB = 2.0 ** 20


def current_rss() -> int:
    """Resident set size now, in bytes (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
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


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class GpuPeak:
    """Extra device memory of one call: torch's allocator peak, CuPy's pool growth."""

    def __init__(self):
        torch = sys.modules.get("torch")
        self.torch = torch if torch is not None and torch.cuda.is_initialized() else None
        self.cupy = sys.modules.get("cupy")

    def start(self) -> None:
        if self.torch:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.torch_base = self.torch.cuda.memory_allocated()
        if self.cupy:
            self.cupy.cuda.Device().synchronize()
            pool = self.cupy.get_default_memory_pool()
            pool.free_all_blocks()  # the pool then only grows to the call's high water
            self.cupy_base = pool.total_bytes()

    def stop(self) -> dict[str, float]:
        out = {}
        if self.torch:
            self.torch.cuda.synchronize()
            out["torch_cuda_extra_mib"] = (self.torch.cuda.max_memory_allocated() - self.torch_base) / MIB
        if self.cupy:
            self.cupy.cuda.Device().synchronize()
            out["cupy_pool_extra_mib"] = (self.cupy.get_default_memory_pool().total_bytes()
                                          - self.cupy_base) / MIB
        return out


def memory_probe(contender_name: str, case_id: str, quick: bool,
                 compile_backend: str = DEFAULT_COMPILE_BACKEND) -> dict[str, Any]:
    """Peak extra memory of one call of a case, measured in this (fresh) process.

    A compiled contender compiles while the case is built, before the baseline: the
    compiler's memory is not counted, the compiled step's is.

    Returns:
        ``host_extra_mib``, ``host_baseline_mib``, ``ru_maxrss_mib``, ``method``, and on
        CUDA ``torch_cuda_extra_mib`` / ``cupy_pool_extra_mib``.
    """
    contender = contender_from_name(contender_name, compile_backend)
    contender.setup()
    fn = make_case(contender, find_case(case_id, quick))
    if contender.device_class == "cuda":
        contender.sync(fn())  # warm-up: lazy init, autotuning
    gpu = GpuPeak() if contender.device_class == "cuda" else None
    contender.sync(None)
    gc.collect()
    baseline = current_rss()
    reset = reset_peak_rss()
    if gpu:
        gpu.start()
    out = fn()
    contender.sync(out)
    peak = peak_rss()
    record = {"host_extra_mib": max(peak - baseline, 0) / MIB,
              "host_baseline_mib": baseline / MIB,
              "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "method": "VmHWM after clear_refs reset" if reset else "VmHWM (peak not reset)"}
    if gpu:
        record.update(gpu.stop())
    return record


def run_memory_probe(contender_name: str, case_id: str, quick: bool,
                     compile_backend: str = DEFAULT_COMPILE_BACKEND, timeout: float = 600) -> dict[str, Any]:
    """Run :func:`memory_probe` in a fresh interpreter; its record or ``{"error": ...}``."""
    args = (["--_memory-probe", contender_name, case_id, "--compile-backend", compile_backend]
            + (["--quick"] if quick else []))
    try:
        record, why = run_child(args, PROBE_MARK, capture_stderr=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout} s"}
    return record if record is not None else {"error": f"memory probe failed: {why}"}


def memory_mib(record: dict[str, Any] | None) -> float | None:
    """The number to show for a probe record: device extra on GPU, else host extra."""
    if not record or "error" in record:
        return None
    for key in ("cupy_pool_extra_mib", "torch_cuda_extra_mib", "host_extra_mib"):
        if key in record:
            return record[key]
    return None
