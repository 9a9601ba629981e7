"""Typed results of a benchmark run, and their JSON form (``<tag>.json``).

The JSON keys are those of the committed results under the repository's
``bench/results/``: per contender and case ``samples_ms``, ``median_ms``,
``min_ms``, ``max_ms``, ``q1_ms``, ``q3_ms``, ``n_samples``, ``gflops``,
``pct_ceiling``, ``gbps``, ``memory`` (or just ``error``).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .cases import Case


def error_text(exc: BaseException) -> str:
    """One-line description of an exception for the tables."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Measurement:
    """The timed samples of one contender on one case (or on the GEMM), and what follows.

    Args:
        samples_ms: one wall-clock time per timed call, in milliseconds.
        error: why there are no samples (the contender failed), else None.
        n: matrix size of a GEMM-ceiling measurement, else None.
        gflops: achieved GFLOP/s at the median (analytic FLOPs / median time).
        pct_ceiling: ``gflops`` as % of the same contender's GEMM ceiling.
        gbps: effective GB/s at the median (pooling: minimal traffic / median time).
        memory: the memory probe's record (:func:`xpconv.bench.memory.memory_probe`).
    """

    samples_ms: list[float] = field(default_factory=list)
    error: str | None = None
    n: int | None = None
    gflops: float | None = None
    pct_ceiling: float | None = None
    gbps: float | None = None
    memory: dict | None = None

    @classmethod
    def failed(cls, error: str, n: int | None = None) -> Measurement:
        return cls(error=error, n=n)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples_ms)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.ok else None

    @property
    def min_ms(self) -> float | None:
        return min(self.samples_ms) if self.ok else None

    @property
    def max_ms(self) -> float | None:
        return max(self.samples_ms) if self.ok else None

    def quartiles_ms(self) -> tuple[float, float]:
        """(Q1, Q3) of the samples (inclusive method; one sample: itself twice)."""
        s = sorted(self.samples_ms)
        if len(s) == 1:
            return s[0], s[0]
        q = statistics.quantiles(s, n=4, method="inclusive")
        return q[0], q[2]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.n is None else {"n": self.n}
        if self.error is not None:
            return {**out, "error": self.error}
        out["samples_ms"] = list(self.samples_ms)
        if self.ok:
            q1, q3 = self.quartiles_ms()
            out.update(median_ms=self.median_ms, min_ms=self.min_ms, max_ms=self.max_ms,
                       q1_ms=q1, q3_ms=q3, n_samples=len(self.samples_ms))
        for key in ("gflops", "pct_ceiling", "gbps", "memory"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        return cls(samples_ms=list(d.get("samples_ms", [])), error=d.get("error"), n=d.get("n"),
                   gflops=d.get("gflops"), pct_ceiling=d.get("pct_ceiling"), gbps=d.get("gbps"),
                   memory=d.get("memory"))


@dataclass
class Ceiling:
    """A contender's float32 GEMM ceiling: the better of the runs before and after the cases."""

    best: Measurement
    runs: list[Measurement]

    @classmethod
    def from_runs(cls, first: Measurement, last: Measurement | None) -> Ceiling:
        runs = [first, last if last is not None else Measurement.failed("not measured")]
        timed = [r for r in runs if r.gflops is not None]
        return cls(max(timed, key=lambda r: r.gflops or 0.0) if timed else first, runs)

    @property
    def gflops(self) -> float | None:
        return self.best.gflops

    def to_dict(self) -> dict[str, Any]:
        return {**self.best.to_dict(), "runs": [r.to_dict() for r in self.runs]}


@dataclass
class LaunchRecord:
    """GPU launch proxy of one call: aten ops (kernel launches on CUDA) and blocking syncs.

    Counted on torch's CPU backend by :func:`xpconv.diagnostics.launches.count_launches`.
    """

    ops: int | None = None
    syncs: int | None = None
    by_op: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"ops": self.ops, "syncs": self.syncs, "by_op": dict(self.by_op)}


@dataclass
class CaseResult:
    """Every contender's measurement of one case, the ratios, and the launch proxy.

    Args:
        measurements: contender name -> its measurement, in table order.
        ratios: ``"<xpconv contender> / <baseline>"`` -> ratio of the medians (None: missing),
            and ``"<contender>@1t / <contender>"``: its scaling from 1 thread to every core.
        launches: ``"xpconv:torch"`` / ``"torch"`` -> launch proxy of one call (empty: not counted).
    """

    case: Case
    measurements: dict[str, Measurement]
    ratios: dict[str, float | None] = field(default_factory=dict)
    launches: dict[str, LaunchRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.case
        out = {"id": c.id, "label": c.label, "kind": c.kind, "train": c.train, "quick": c.quick,
               "params": c.params, "flops": c.flops(), "bytes": c.bytes_moved(),
               "results": {name: m.to_dict() for name, m in self.measurements.items()},
               "ratios": self.ratios}
        if self.launches:
            out["launch_proxy"] = {name: r.to_dict() for name, r in self.launches.items()}
        return out


@dataclass
class BenchmarkRun:
    """Everything one run measured, with its settings and environment."""

    tag: str
    quick: bool
    settings: dict[str, Any]
    environment: dict[str, Any]
    contenders: dict[str, dict[str, Any]]
    ceilings: dict[str, Ceiling]
    cases: list[CaseResult]
    elapsed_s: float
    launch_note: str | None = None  # why the launch proxy is missing, or None

    def to_dict(self) -> dict[str, Any]:
        out = {"tag": self.tag, "quick": self.quick, "settings": self.settings,
               "environment": self.environment, "contenders": self.contenders,
               "ceilings": {name: c.to_dict() for name, c in self.ceilings.items()},
               "cases": [c.to_dict() for c in self.cases], "elapsed_s": self.elapsed_s}
        if self.launch_note:
            out["launch_proxy_note"] = self.launch_note
        return out
