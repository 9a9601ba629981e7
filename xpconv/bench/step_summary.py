"""The reports' section on the training-step cases (issue 19): compiled vs uncompiled, host cost.

It gathers what the step cases measured: the median per contender and case, the ratios
(``X+compiled / X``, xpconv over the baselines), and the issue's targets, each with its
value and whether it was met:

* ``xpconv:jax+compiled / xpconv:jax`` at batch 100: <= 0.5;
* ``xpconv:torch / torch-cpu`` in the host-cost case: <= 1.2 (uncompiled xpconv on torch
  within 1.2x of native PyTorch's host cost);
* ``xpconv:jax+compiled / xpconv:cpu`` at batch 100: <= 1 (compiled JAX at most the NumPy
  step; from the two medians, as no ratio of the run pairs them);
* every ``xpconv:*+compiled`` in the host-cost case: <= 1 ms per step.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .results import CaseResult

TITLE = "Training step: compiled vs uncompiled, host cost"
NOTES = ("step-b100 and step-b1: SimpleConvNet's step with Adam (lr 0.001); on a CPU, step-b1 "
         "still holds the arithmetic (mostly Adam's over the 434k parameters).",
         "step-host: the same layers 1 wide at batch 1, so the time is the host's (Python and "
         "dispatch); xpconv's uncompiled step runs its kernels' GPU paths there (as_on_a_gpu), "
         "what the host of a GPU run executes.",
         "Compiled: xpconv.compile_step (jax.jit, torch.compile), compiled before the warm-up "
         "(the compile is not timed).")


@dataclass(frozen=True)
class Target:
    """A target of issue 19.

    Args:
        subject: a ratio key (``"A / B"``), or an ``fnmatch`` pattern over contender names
            whose medians are held to ``limit`` milliseconds.
        case: the step case's base name (``"step-host"``).
        limit: the largest value that meets the target.
        unit: ``"x"`` (a ratio) or ``"ms"`` (a median).
        what: the target in words.
    """

    subject: str
    case: str
    limit: float
    unit: str
    what: str

    def text(self, subject: str | None = None) -> str:
        """The target in one line, for ``subject`` (a contender matched by a pattern) or its own."""
        limit = f"{self.limit:g}" + (" ms" if self.unit == "ms" else "")
        return f"{subject or self.subject} on {self.case} <= {limit} ({self.what})"


TARGETS = (
    Target("xpconv:jax+compiled / xpconv:jax", "step-b100", 0.5, "x", "JAX: compiled over uncompiled"),
    Target("xpconv:torch / torch-cpu", "step-host", 1.2, "x",
           "uncompiled xpconv on torch within 1.2x of native PyTorch's host cost"),
    Target("xpconv:jax+compiled / xpconv:cpu", "step-b100", 1.0, "x", "compiled JAX at most the NumPy step"),
    Target("xpconv:*+compiled", "step-host", 1.0, "ms", "host cost per step, compiled"),
)


def step_results(results: list[CaseResult]) -> list[CaseResult]:
    """The results of the step cases, in table order."""
    return [res for res in results if res.case.kind == "step"]


def median_rows(steps: list[CaseResult]) -> list[tuple[str, list[str]]]:
    """``(contender, [median ms per step case])``; ``"-"`` where it did not take part."""
    names = list(dict.fromkeys(name for res in steps for name in res.measurements))
    rows = []
    for name in names:
        cells = []
        for res in steps:
            m = res.measurements.get(name)
            cells.append("-" if m is None else "error" if not m.ok else f"{m.median_ms:.3f}")
        rows.append((name, cells))
    return rows


def ratio_rows(steps: list[CaseResult]) -> list[tuple[str, list[str]]]:
    """``(ratio key, [ratio per step case])``, compiled over uncompiled first; ``"-"`` where the
    ratio does not apply, ``"n/a"`` where a median is missing.
    """
    keys = list(dict.fromkeys(key for res in steps for key in res.ratios))
    keys.sort(key=lambda key: "+compiled /" not in key)      # stable: the compiled ratios first
    return [(key, ["-" if key not in res.ratios else _ratio(res.ratios[key]) for res in steps])
            for key in keys]


def _ratio(value: float | None) -> str:
    return "n/a" if not value else f"{value:.2f}"


def target_rows(steps: list[CaseResult]) -> list[tuple[str, str, str]]:
    """``(target, value, verdict)`` for each target and each subject it matched in this run;
    verdict ``"met"``, ``"not met"`` or ``"not measured"``.
    """
    by_case = {res.case.base: res for res in steps}
    rows = []
    for target in TARGETS:
        res = by_case.get(target.case)
        values = [] if res is None else _target_values(target, res)
        if not values:
            rows.append((target.text(), "-", "not measured"))
        for subject, value in values:
            text = target.text(subject)
            if value is None:
                rows.append((text, "-", "not measured"))
            else:
                shown = f"{value:.3f} ms" if target.unit == "ms" else f"{value:.2f}x"
                rows.append((text, shown, "met" if value <= target.limit else "not met"))
    return rows


def _target_values(target: Target, res: CaseResult) -> list[tuple[str, float | None]]:
    if target.unit == "x":
        if target.subject in res.ratios:
            return [(target.subject, res.ratios[target.subject])]
        a, b = (res.measurements.get(name) for name in target.subject.split(" / "))
        if a is None or b is None:                  # a contender not in this run
            return []
        if a.ok and b.ok and a.median_ms and b.median_ms:
            return [(target.subject, a.median_ms / b.median_ms)]
        return [(target.subject, None)]
    return [(name, m.median_ms) for name, m in res.measurements.items()
            if fnmatch.fnmatchcase(name, target.subject)]


def format_text(results: list[CaseResult], compile_backend: str | None) -> list[str]:
    """The section's lines for the screen report (none without step cases)."""
    steps = step_results(results)
    if not steps:
        return []
    names = [res.case.base for res in steps]
    rows = median_rows(steps) + [(f"ratio {key}", cells) for key, cells in ratio_rows(steps)]
    width = max(len(name) for name, _ in rows)
    lines = ["", f"{TITLE} (median ms per step; torch.compile backend: {compile_backend or '-'}):",
             "  " + " " * width + "".join(f"{name:>12}" for name in names)]
    lines += [f"  {name:<{width}}" + "".join(f"{c:>12}" for c in cells) for name, cells in rows]
    lines.append("  targets (issue 19):")
    lines += [f"    {text}: {value}, {verdict}" for text, value, verdict in target_rows(steps)]
    lines += [f"  {note}" for note in NOTES]
    return lines


def format_markdown(results: list[CaseResult], compile_backend: str | None) -> list[str]:
    """The section's Markdown (none without step cases)."""
    steps = step_results(results)
    if not steps:
        return []
    head = "| | " + " | ".join(res.case.base for res in steps) + " |"
    rule = "|---|" + "---:|" * len(steps)
    out = ["", f"## {TITLE}", "", " ".join(NOTES) + f" torch.compile backend: `{compile_backend or '-'}`.",
           "", "Median ms per step:", "", head, rule]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in median_rows(steps)]
    ratios = ratio_rows(steps)
    if ratios:
        out += ["", "Ratios of the medians (< 1: the first is faster):", "", head, rule]
        out += [f"| {key} | " + " | ".join(cells) + " |" for key, cells in ratios]
    out += ["", "Targets (issue 19):", "", "| target | value | |", "|---|---:|---|"]
    out += [f"| {text} | {value} | {verdict} |" for text, value, verdict in target_rows(steps)]
    return out
