"""Running a part of the benchmark in a fresh interpreter (``python -m xpconv.bench``).

The child prints one line ``<mark><json>`` on stdout; progress goes to stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import xpconv

ISOLATED_MARK = "ISOLATED_RUN "
PROBE_MARK = "MEMORY_PROBE "


def child_env() -> dict[str, str]:
    """This environment, with the folder holding this ``xpconv`` first on PYTHONPATH.

    So the child runs the same xpconv as this process (a source checkout or an
    installed copy) wherever it is started from.
    """
    root = str(Path(xpconv.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
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
