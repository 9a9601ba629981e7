"""Learning-rate schedules for :class:`~xpconv.Trainer` (what torch's schedulers and Keras'
callbacks give), each with its state as JSON so a resumed run continues it exactly.

The learning rate of optimizer step ``s`` (0-based, counted over the whole run) in epoch
``e`` (1-based) is ``base_lr * factor(s, e) * warmup(s)``::

    "step"     factor = gamma ** ((e - 1) // step_size)                 (every step_size epochs)
    "cosine"   factor = 0.5 * (1 + cos(pi * s / total_steps))           (to 0 at the last step)
    "plateau"  factor *= reduce_by when the validation loss has not improved for `patience`
               epochs (torch's ReduceLROnPlateau; the training loss without a test set)
    warmup(s)  = min(1, (s + 1) / warmup_steps)                          (linear, 0 steps: none)
"""
from __future__ import annotations

import math

__all__ = ["Schedule", "get_schedule", "SCHEDULES"]

SCHEDULES = ("constant", "step", "cosine", "plateau")


class Schedule:
    """A learning-rate factor per step; see the module docstring for the formulas.

    Args:
        kind: "constant", "step", "cosine" or "plateau".
        warmup: steps of linear warm-up (0: none).
        step_size, gamma: "step": multiply by ``gamma`` every ``step_size`` epochs.
        patience, reduce_by, min_factor: "plateau".
    """

    def __init__(self, kind: str = "constant", *, warmup: int = 0, step_size: int = 10, gamma: float = 0.1,
                 patience: int = 3, reduce_by: float = 0.1, min_factor: float = 1e-4):
        if kind not in SCHEDULES:
            raise ValueError(f"Schedule: expected kind in {SCHEDULES}; got {kind!r}")
        for name, value in (("warmup", warmup), ("step_size", step_size), ("patience", patience)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "warmup" else 1):
                raise ValueError(f"Schedule: expected {name} to be an int >= {0 if name == 'warmup' else 1}; "
                                 f"got {value!r}")
        self.kind, self.warmup = kind, warmup
        self.step_size, self.gamma = step_size, float(gamma)
        self.patience, self.reduce_by, self.min_factor = patience, float(reduce_by), float(min_factor)
        self.total_steps = 1
        self._plateau: dict = {"factor": 1.0, "best": None, "bad_epochs": 0}

    def describe(self) -> dict:
        """The settings (part of a run's identity: a checkpoint with others is refused)."""
        return {"kind": self.kind, "warmup": self.warmup, "step_size": self.step_size, "gamma": self.gamma,
                "patience": self.patience, "reduce_by": self.reduce_by, "min_factor": self.min_factor}

    def factor(self, step: int, epoch: int) -> float:
        """The learning-rate factor of optimizer step ``step`` (0-based) in ``epoch`` (1-based)."""
        if self.kind == "step":
            f = self.gamma ** ((epoch - 1) // self.step_size)
        elif self.kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        elif self.kind == "plateau":
            f = self._plateau["factor"]
        else:
            f = 1.0
        if self.warmup:
            f *= min(1.0, (step + 1) / self.warmup)
        return f

    def epoch_end(self, monitored: float) -> None:
        """After an epoch: "plateau" watches ``monitored`` (lower is better)."""
        if self.kind != "plateau":
            return
        p = self._plateau
        if p["best"] is None or monitored < p["best"]:
            p["best"], p["bad_epochs"] = monitored, 0
        else:
            p["bad_epochs"] += 1
            if p["bad_epochs"] >= self.patience:
                p["factor"] = max(p["factor"] * self.reduce_by, self.min_factor)
                p["bad_epochs"] = 0

    def state(self) -> dict:
        return dict(self._plateau)

    def load_state(self, state: dict) -> None:
        self._plateau = dict(state)


def get_schedule(schedule: str | Schedule | None, warmup: int = 0) -> Schedule:
    """A :class:`Schedule` from a name (or None: constant), or the given one."""
    if isinstance(schedule, Schedule):
        return schedule
    return Schedule(schedule or "constant", warmup=warmup)
