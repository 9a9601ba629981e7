"""The machine and software a run measured, and the tag its result files are named by."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from datetime import datetime
from typing import Any

import numpy as np

from .results import error_text


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def gpu_name() -> str | None:
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


def _xpconv_version() -> str | None:
    mod = sys.modules.get("xpconv")
    return getattr(mod, "__version__", None) if mod else _version("xpconv")


def collect_environment(command: str, uses_cuda: bool) -> dict[str, Any]:
    """Machine and software description stored with the results."""
    blas: Any
    try:
        blas = np.show_config(mode="dicts").get("Build Dependencies")
    except Exception as exc:
        blas = {"error": error_text(exc)}
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
    try:    # what xpconv decided for its threads, BLAS and torch, and why
        from xpconv.thread_defaults import thread_report
        env["threads"] = thread_report()
    except Exception as exc:
        env["threads"] = {"error": error_text(exc)}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn": torch.backends.cudnn.allow_tf32}
    if uses_cuda:
        env["gpu"] = gpu_name()
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_tag(env: dict[str, Any], uses_cuda: bool, quick: bool) -> str:
    """``gpu-<gpu name>`` or ``cpu-<cores>core-<cpu short name>`` (+ ``-quick``)."""
    if uses_cuda and env.get("gpu"):
        tag = "gpu-" + _slug(re.sub(r"^NVIDIA\s+", "", env["gpu"]))
    else:
        name = re.sub(r"\((R|TM|r|tm)\)|@.*$|\bCPU\b|\bProcessor\b|\bIntel\b|\bAMD\b|\b\d+-Core\b",
                      " ", env["cpu_model"])
        short = "-".join(_slug(name).split("-")[:3]) or "unknown"
        tag = f"cpu-{env['cpu_cores']}core-{short}"
    return tag + ("-quick" if quick else "")
