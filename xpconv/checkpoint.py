"""Training checkpoints: everything the rest of a run depends on, in one safe ``.npz``.

A checkpoint folder holds ``last.npz`` (the latest checkpoint), ``best.npz`` (with
``keep_best``: the one of the epoch with the best validation accuracy) and
``history.csv`` (one row per finished epoch). Each ``.npz`` is written atomically
(a temporary file renamed over the old one: never half a checkpoint, never a
corrupted previous one) and read back with the same header-checked reader as
model files (:func:`xpconv.serialization.load_arrays`; no pickle, nothing run).

File format (``format = "xpconv-checkpoint"``, ``version = "1"``)::

    arrays    model/<name>          parameters and buffers (running statistics)
              optimizer/<s>/<name>  per-parameter optimizer state (Adam's m and v, ...)
              order                 (N,) int64: the current epoch's permutation
    metadata  run                   JSON: what identifies the run (model, parameter
                                    shapes and dtypes, optimizer and its settings,
                                    batch size, seed, a digest of the data, schedule)
              state                 JSON: position (epoch, step in epoch, global step),
                                    the shuffling generator, every Dropout generator,
                                    optimizer settings (Adam's step count), schedule,
                                    early stopping, the history so far

A checkpoint resumes only the run it was written by: :func:`differences` names what
differs between the saved run and the new one.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .serialization import load_arrays, save_arrays

__all__ = ["FORMAT", "VERSION", "LAST", "BEST", "HISTORY", "Checkpoint", "write", "read", "differences"]

FORMAT = "xpconv-checkpoint"
VERSION = "1"
LAST = "last.npz"
BEST = "best.npz"
HISTORY = "history.csv"


@dataclass
class Checkpoint:
    """A checkpoint as read back: see the module docstring for each part."""

    run: dict
    state: dict
    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    order: np.ndarray


def write(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (the old file stays whole until the rename)."""
    arrays = {f"model/{k}": v for k, v in checkpoint.model.items()}
    arrays.update((f"optimizer/{k}", v) for k, v in checkpoint.optimizer.items())
    arrays["order"] = np.asarray(checkpoint.order, dtype=np.int64)
    save_arrays(path, arrays, metadata={
        "format": FORMAT, "version": VERSION,
        "run": json.dumps(checkpoint.run, sort_keys=True),
        "state": json.dumps(checkpoint.state)})


def read(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`write`.

    Raises:
        ValueError: not a checkpoint, another format version, a truncated or corrupted
            file (the message names the file and what is wrong).
    """
    who = f"checkpoint {path}"
    arrays, metadata = load_arrays(path, who=who)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{who}: not an xpconv checkpoint (format {metadata.get('format')!r})")
    if metadata.get("version") != VERSION:
        raise ValueError(f"{who}: checkpoint format version {metadata.get('version')!r}; this xpconv "
                         f"reads version {VERSION}")
    try:
        run, state = json.loads(metadata["run"]), json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{who}: damaged metadata ({exc})") from None
    if "order" not in arrays:
        raise ValueError(f"{who}: damaged: no 'order' array")
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    optimizer = {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    return Checkpoint(run, state, model, optimizer, arrays["order"])


def differences(saved: dict, current: dict) -> list[str]:
    """What differs between two runs' descriptions, e.g. ``["batch_size: 100 in the
    checkpoint, 50 now"]`` (empty: the same run).
    """
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a != b:
            out.append(f"{key}: {_short(a)} in the checkpoint, {_short(b)} now")
    return out


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def last_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / LAST
