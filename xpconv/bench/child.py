"""Running a part of the benchmark in a fresh interpreter (``python -m xpconv.bench``).

The child prints one line ``<mark><json>`` on stdout; progress goes to stderr.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import xpconv

ISOLATED_MARK = "ISOLATED_RUN "
PROBE_MARK = "MEMORY_PROBE "


def child_env() -> dict[str, str]:
    """This environment; for a source checkout, with the folder holding ``xpconv`` first on PYTHONPATH.

    So the child runs the same xpconv as this process wherever it is started from
    (an installed copy is found by the interpreter itself).
    """
    env = dict(os.environ)
    root = Path(xpconv.__file__).resolve().parents[1]
    site_dirs = {Path(d).resolve() for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in site_dirs:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def run_child(args: list[str], mark: str, *, capture_stderr: bool = False,
              timeout: float | None = None) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m xpconv.bench ARGS``; its ``mark`` record (or None) and why not.

    Raises:
        subprocess.TimeoutExpired: the child ran longer than ``timeout`` seconds.
    """
    cmd = [sys.executable, "-m", "xpconv.bench", *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_stderr else None,
                          text=True, timeout=timeout, env=child_env())
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(mark):
            return json.loads(line[len(mark):]), ""
    tail = ((proc.stderr or "").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return None, tail


def emit(mark: str, record: dict[str, Any]) -> None:
    """The child's side: print its record for :func:`run_child`."""
    print(mark + json.dumps(record), flush=True)
