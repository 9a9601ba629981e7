"""The driver: every case on every contender, isolated backends in their own process, then
the derived numbers (GFLOP/s, % of ceiling, GB/s, ratios), memory probes and launch proxy.
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
import time

from .cases import Case, build_cases, select_cases
from .child import ISOLATED_MARK, run_child
from .contenders import Contender, contender_from_name, discover_contenders, make_case
from .environment import collect_environment, machine_tag
from .launch_proxy import count_launches_per_case
from .memory import run_memory_probe
from .results import BenchmarkRun, CaseResult, Measurement, error_text
from .timing import STEP_LOOP_S, best_ceilings, measure_ceilings, time_round_robin

TimedParts = tuple[dict[str, Measurement], list[dict[str, Measurement]], dict[str, Measurement]]


def log(msg: str) -> None:
    """Print ``msg`` to stderr at once (stdout carries the results)."""
    print(msg, file=sys.stderr, flush=True)


def chosen_cases(opts: argparse.Namespace) -> list[Case]:
    """The benchmark cases that ``opts`` selects (``--quick`` sizes, ``--cases`` names)."""
    return select_cases(build_cases(opts.quick), opts.cases)


def time_case(case: Case, contenders: list[Contender], opts: argparse.Namespace) -> dict[str, Measurement]:
    """Build every contender's callable for ``case``, time them, free them.

    Returns:
        contender name -> its measurement (samples, or the error), in ``contenders`` order;
        the contenders that do not support ``case`` are left out.
    """
    contenders = [c for c in contenders if c.supports(case)]
    if not contenders:
        return {}
    log(f"== {case.id}: {case.label}")
    fns, errors = {}, {}
    for c in contenders:
        if c.error:
            errors[c.name] = Measurement.failed(c.error)
            continue
        try:
            fns[c.name] = (make_case(c, case), c.sync)
        except Exception as exc:
            errors[c.name] = Measurement.failed(error_text(exc))
    loops = {"loop_below": math.inf, "loop_s": STEP_LOOP_S} if case.kind == "step" else {}
    timed = time_round_robin(fns, opts.repeat, opts.warmup, opts.gap, **loops)
    del fns
    gc.collect()
    merged = {c.name: timed.get(c.name) or errors[c.name] for c in contenders}
    for name, m in merged.items():
        log(f"   {name:<16} " + (f"error: {m.error}"[:100] if m.error else f"{m.median_ms:9.1f} ms"))
    return merged


def time_all(contenders: list[Contender], cases: list[Case], opts: argparse.Namespace) -> TimedParts:
    """GEMM ceilings before, every case, ceilings after: ``(first, [timed per case], last)``."""
    first = measure_ceilings(contenders, opts.repeat, opts.warmup, opts.gap, opts.gemm_n)
    timed = [time_case(case, contenders, opts) for case in cases]
    last = measure_ceilings(contenders, opts.repeat, opts.warmup, opts.gap, opts.gemm_n)
    return first, timed, last


def _parts_to_json(first, timed, last, error) -> dict:
    dump = lambda part: {name: m.to_dict() for name, m in part.items()}
    return {"first": dump(first), "timed": [dump(t) for t in timed], "last": dump(last), "error": error}


def isolated_run(contender_name: str, opts: argparse.Namespace) -> dict:
    """:func:`time_all` for one contender, in this (fresh) process, as JSON for the parent."""
    contender = contender_from_name(contender_name, opts.compile_backend)
    contender.try_setup()
    first, timed, last = time_all([contender], chosen_cases(opts), opts)
    return _parts_to_json(first, timed, last, contender.error)


def run_isolated(contender: Contender, opts: argparse.Namespace) -> tuple[TimedParts, str | None]:
    """Run :func:`isolated_run` in a fresh interpreter with the same options.

    Returns:
        ``((first, timed, last), error)``; on failure, the error in each place.
    """
    args = ["--_isolated", contender.name, "--repeat", str(opts.repeat), "--warmup", str(opts.warmup),
            "--gap", str(opts.gap), "--compile-backend", opts.compile_backend]
    for flag, value in (("--cases", opts.cases), ("--gemm-n", opts.gemm_n)):
        if value is not None:
            args += [flag, str(value)]
    if opts.quick:
        args.append("--quick")
    record, why = run_child(args, ISOLATED_MARK)
    if record is None:
        text = f"isolated run failed ({why})"
        failed = {contender.name: Measurement.failed(text)}
        timed = [dict(failed) if contender.supports(case) else {} for case in chosen_cases(opts)]
        return (failed, timed, dict(failed)), text
    load = lambda part: {name: Measurement.from_dict(d) for name, d in part.items()}
    return (load(record["first"]), [load(t) for t in record["timed"]], load(record["last"])), record["error"]


def case_result(case: Case, timed: dict[str, Measurement], ceilings: dict) -> CaseResult:
    """Add GFLOP/s (or GB/s) at the median and % of the contender's ceiling."""
    flops, nbytes = case.flops(), case.bytes_moved()
    for name, m in timed.items():
        if not m.ok or m.median_ms is None:
            continue
        seconds = m.median_ms * 1e-3
        if flops:
            m.gflops = flops / seconds / 1e9
            ceiling = ceilings[name].gflops if name in ceilings else None
            m.pct_ceiling = 100.0 * m.gflops / ceiling if ceiling else None
        if nbytes:
            m.gbps = nbytes / seconds / 1e9
    return CaseResult(case, timed)


def ratios(result: CaseResult, contenders: list[Contender]) -> dict[str, float | None]:
    """Median ratios: ``"X+compiled / X"`` for each compiled contender (compiled median /
    uncompiled median), ``"X / B"`` for each xpconv contender X and each baseline B on the
    same device class and at the same thread count (xpconv median / baseline median), and
    ``"C@1t / C"`` for each contender C also run at one thread (its speed-up from 1 thread
    to its default, every usable core). Contenders that do not take part in the case
    have no ratio there.
    """
    def median(c):
        m = result.measurements.get(c.name)
        return m.median_ms if m is not None else None

    contenders = [c for c in contenders if c.supports(result.case)]
    by_name = {c.name: c for c in contenders}
    out = {}
    for compiled in contenders:
        plain = by_name.get(compiled.uncompiled_name or "")
        if plain is not None:
            mc, mp = median(compiled), median(plain)
            out[f"{compiled.name} / {plain.name}"] = mc / mp if mc and mp else None
    for x in contenders:
        if x.is_baseline:
            continue
        for b in contenders:
            if not b.is_baseline or b.device_class != x.device_class or b.threads != x.threads:
                continue
            mx, mb = median(x), median(b)
            out[f"{x.name} / {b.name}"] = mx / mb if mx and mb else None
    for one in contenders:
        default = by_name.get(one.name.partition("@")[0]) if one.threads == 1 else None
        if default is not None:
            m1, mn = median(one), median(default)
            out[f"{one.name} / {default.name}"] = m1 / mn if m1 and mn else None
    return out


def run_benchmark(opts: argparse.Namespace, command: str) -> BenchmarkRun:
    """Run everything ``opts`` asks for."""
    t_start = time.perf_counter()
    contenders = discover_contenders(opts.devices, opts.contenders, opts.compile_backend)
    if not contenders:
        raise SystemExit("no contender selected")
    for c in contenders:
        if not c.isolated and not c.try_setup():   # an isolated one sets up in its own process
            log(f"[{c.name}] unavailable: {c.error}")
    cases = chosen_cases(opts)
    log(f"contenders: {', '.join(c.name for c in contenders)}; {len(cases)} cases; "
        f"repeat {opts.repeat}" + (" (QUICK)" if opts.quick else ""))

    first, timed, last = time_all([c for c in contenders if not c.isolated], cases, opts)
    for c in contenders:
        if not c.isolated:
            continue
        if not any(c.supports(case) for case in cases):
            log(f"== {c.name}: none of the chosen cases is one it runs (no process started)")
            continue
        log(f"== {c.name}: its cases, in a process of its own")
        (own_first, own_timed, own_last), c.error = run_isolated(c, opts)
        first.update(own_first)
        last.update(own_last)
        for merged, own in zip(timed, own_timed):
            merged.update(own)
    ceilings = best_ceilings(first, last)
    results = [case_result(case, {c.name: t[c.name] for c in contenders if c.name in t}, ceilings)  # table order
               for case, t in zip(cases, timed)]

    if opts.memory:
        for res in results:
            if not res.case.train:
                continue
            for name, m in res.measurements.items():
                if m.error is None:
                    log(f"memory probe {name} {res.case.id}")
                    m.memory = run_memory_probe(name, res.case.id, opts.quick, opts.compile_backend)
    for res in results:
        res.ratios = ratios(res, contenders)

    launch_note = None
    if opts.launches:
        counts, launch_note = count_launches_per_case(cases, log)
        for res in results:
            res.launches = counts.get(res.case.id, {})
        if launch_note:
            log(launch_note)

    uses_cuda = any(c.device_class == "cuda" and not c.error for c in contenders)
    env = collect_environment(command, uses_cuda)
    return BenchmarkRun(
        tag=opts.tag or machine_tag(env, uses_cuda, opts.quick),
        quick=opts.quick,
        settings={"repeat": opts.repeat, "warmup": opts.warmup, "gap_s": opts.gap, "memory": opts.memory,
                  "devices": opts.devices, "launches": opts.launches, "compile_backend": opts.compile_backend},
        environment=env,
        contenders={c.name: {"device_class": c.device_class, "baseline": c.is_baseline, "error": c.error}
                    for c in contenders},
        ceilings=ceilings,
        cases=results,
        elapsed_s=time.perf_counter() - t_start,
        launch_note=launch_note)
