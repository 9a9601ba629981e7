"""The reports of a run: a table on screen, ``<tag>.json``, ``<tag>.md`` and ``<tag>.png``."""
from __future__ import annotations

import json
from pathlib import Path

from . import step_summary
from .contenders import COMPILED
from .launch_proxy import COMPILED_NOTE, LABEL as LAUNCH_LABEL
from .memory import memory_mib
from .results import BenchmarkRun, CaseResult, Measurement
from .timing import LOOP_BELOW_S, LOOP_S, SETTLE_BELOW_S, STEP_LOOP_S

COLUMNS = ["median ms", "min-max ms", "IQR ms", "achieved", "% ceil", "peak MiB"]
LAUNCH_COLUMNS = ["xpconv ops", "xpconv syncs", "torch ops", "torch syncs", "ops ratio"]


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def result_cells(result: CaseResult, m: Measurement) -> list[str] | None:
    """Cells of one (case, contender) row: median, min-max, IQR, rate, % ceiling, memory; None on error."""
    if not m.ok:
        return None
    case = result.case
    if case.flops():
        rate = _fmt(m.gflops, ".1f") + " GF/s"
    else:
        rate = _fmt(m.gbps, ".2f") + " GB/s" if case.bytes_moved() else "-"
    q1, q3 = m.quartiles_ms()
    return [f"{m.median_ms:.1f}", f"{m.min_ms:.1f}-{m.max_ms:.1f}", f"{q1:.1f}-{q3:.1f}", rate,
            _fmt(m.pct_ceiling, ".0f") + ("%" if m.pct_ceiling is not None else ""),
            _fmt(memory_mib(m.memory), ".0f")]


def launch_cells(result: CaseResult) -> list[str]:
    """Kernel ops and blocking syncs per call, xpconv on torch and native torch, and ops ratio."""
    cells = []
    for name in ("xpconv:torch", "torch"):
        r = result.launches.get(name)
        if r is None or r.error:
            cells += ["error" if r is not None else "-", "-"]
        else:
            cells += [str(r.ops), str(r.syncs)]
    x, t = result.launches.get("xpconv:torch"), result.launches.get("torch")
    if x is None or t is None or x.error or t.error or not t.ops or x.ops is None:
        return cells + ["-"]
    return cells + [f"{x.ops / t.ops:.2f}x"]


def _launch_errors(run: BenchmarkRun) -> list[str]:
    return sorted({f"{name}: {r.error}" for res in run.cases for name, r in res.launches.items() if r.error})


def _has_compiled(run: BenchmarkRun) -> bool:
    """Whether a compiled contender measured a case of this run (the launch proxy leaves it out)."""
    return any(name.partition("@")[0].endswith(COMPILED) for res in run.cases for name in res.measurements)


def format_text(run: BenchmarkRun) -> str:
    """The screen report: ceilings, per-case rows, ratios, the training steps, launch proxy."""
    env, settings = run.environment, run.settings
    lines = [f"xpconv benchmark [{run.tag}]" + ("  ** QUICK MODE: reduced batches / repeats **" if run.quick else ""),
             f"{env['cpu_model']}, {env['cpu_cores']} cores; "
             f"repeat {settings['repeat']}, warmup {settings['warmup']}", "",
             "GEMM ceiling (float32 square matmul; best of the runs before and after the cases):"]
    name_width = max([len(name) for name in run.ceilings] + [18])
    for name, c in run.ceilings.items():
        b = c.best
        runs = "/".join(_fmt(r.gflops, ".0f") for r in c.runs)
        row = (f"error: {b.error}" if not b.ok else
               f"n={b.n:<5} {b.gflops:8.1f} GFLOP/s  ({b.median_ms:.1f} ms; before/after: {runs})")
        lines.append(f"  {name:<{name_width}} {row}")
    width = max([len(n) for res in run.cases for n in res.measurements] + [10])
    for res in run.cases:
        lines += ["", f"{res.case.id}: {res.case.label}",
                  "  " + f"{'contender':<{width}} " + "".join(f"{c:>16}" for c in COLUMNS)]
        for name, m in res.measurements.items():
            cells = result_cells(res, m)
            row = f"error: {m.error}"[:100] if cells is None else "".join(f"{c:>16}" for c in cells)
            lines.append(f"  {name:<{width}} {row}")
        for key, ratio in res.ratios.items():
            lines.append(f"  ratio {key}: " + (f"{ratio:.2f}x" if ratio else "n/a"))
        if res.launches:
            cells = launch_cells(res)
            lines.append("  launch proxy per call: " + ", ".join(f"{k} {v}" for k, v in zip(LAUNCH_COLUMNS, cells)))
    lines += step_summary.format_text(run.cases, run.settings.get("compile_backend"))
    if run.launch_note:
        lines += ["", run.launch_note]
    else:
        lines += ["", f"{LAUNCH_LABEL}: kernel ops / blocking syncs of one call, counted with "
                      "xpconv.diagnostics.launches.count_launches"] + [f"  error {e}"[:160] for e in _launch_errors(run)]
        if _has_compiled(run):
            lines.append(f"  {COMPILED_NOTE}")
    lines += ["", f"elapsed {run.elapsed_s:.0f} s"]
    return "\n".join(lines)


def format_markdown(run: BenchmarkRun) -> str:
    """Markdown tables of the same numbers."""
    env, settings = run.environment, run.settings
    out = [f"# xpconv benchmark: `{run.tag}`", ""]
    if run.quick:
        out += ["**Quick mode**: reduced batch sizes for the layer cases and fewer repeats.", ""]
    out += [f"- date: {env['date']}", f"- command: `{env['command']}`",
            f"- CPU: {env['cpu_model']} ({env['cpu_cores']} cores)" + (f"; GPU: {env['gpu']}" if env.get("gpu") else ""),
            "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
            f"- repeat {settings['repeat']}, warm-up {settings['warmup']}; "
            f"{settings['gap_s']} s idle before each sample, plus one untimed call for "
            f"calls under {SETTLE_BELOW_S} s (steady state); a sample of a call under {LOOP_BELOW_S} s, "
            f"and of every training-step case, is a loop of calls (about {LOOP_S} s; {STEP_LOOP_S} s for "
            "the steps) synchronised at its end, per call; contenders alternate round-robin; "
            "xpconv on torch, JAX and array-api-strict is timed in a process of its own, after the others; "
            "median and spread in ms; FLOPs counted analytically (2 per multiply-add); "
            "peak MiB = extra peak memory of one fwd+bwd call in a fresh process", "",
            "## GEMM ceiling (best median of the runs before / after the cases)", "",
            "| contender | n | GFLOP/s | median ms | GFLOP/s before / after |", "|---|---:|---:|---:|---:|"]
    for name, c in run.ceilings.items():
        b = c.best
        runs = " / ".join(_fmt(r.gflops, ".1f") for r in c.runs)
        out.append(f"| {name} | error: {b.error} | | | |" if not b.ok else
                   f"| {name} | {b.n} | {b.gflops:.1f} | {b.median_ms:.1f} | {runs} |")
    out += ["", "## Results", "", "| case | contender | " + " | ".join(COLUMNS) + " |",
            "|---|---|" + "---:|" * len(COLUMNS)]
    for res in run.cases:
        for i, (name, m) in enumerate(res.measurements.items()):
            cells = result_cells(res, m)
            body = (f"error: {m.error} |" + " |" * (len(COLUMNS) - 1)) if cells is None else " | ".join(cells) + " |"
            title = f"**{res.case.id}** {res.case.label}" if i == 0 else ""
            out.append(f"| {title} | {name} | {body}")
    keys = sorted({k for res in run.cases for k in res.ratios})
    if keys:
        out += ["", "## Ratios (xpconv median / baseline median; < 1 means xpconv is faster)", "",
                "Baselines are compared at the same thread count; `C@1t / C` is contender C's "
                "scaling, its median at one thread over its median at every usable core "
                "(> 1: the threads pay); `X+compiled / X` is xpconv's compiled step over the "
                "uncompiled one; `-`: the ratio does not apply to the case.", "",
                "| case | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for res in run.cases:
            cells = ["-" if k not in res.ratios else f"{res.ratios[k]:.2f}" if res.ratios[k] else "n/a" for k in keys]
            out.append(f"| {res.case.id} | " + " | ".join(cells) + " |")
    out += step_summary.format_markdown(run.cases, run.settings.get("compile_backend"))
    out += ["", f"## {LAUNCH_LABEL}", ""]
    if run.launch_note:
        out.append(run.launch_note)
    elif any(res.launches for res in run.cases):
        out += ["Per call of each case, on torch CPU tensors under `xpconv.diagnostics.launches.count_launches` "
                "(after one uncounted call): kernel ops = aten ops that would be at least one CUDA "
                "kernel launch each; syncs = blocking device-to-host syncs. xpconv = xpconv's layers "
                "on torch; torch = native PyTorch (`torch.nn.functional`, SimpleConvNet as an `nn.Module`; "
                "in the step cases `torch.optim.Adam` with `foreach=True`, its default on a GPU; the net "
                "cases have no optimizer step). In the step cases torch's syncs are its Adam reading "
                "its step counts, CPU tensors on a GPU too: not device syncs there."
                + (f" Not counted: {COMPILED_NOTE}." if _has_compiled(run) else ""), "",
                "| case | " + " | ".join(LAUNCH_COLUMNS) + " |", "|---|" + "---:|" * len(LAUNCH_COLUMNS)]
        for res in run.cases:
            if res.launches:
                out.append(f"| {res.case.id} | " + " | ".join(launch_cells(res)) + " |")
        errors = _launch_errors(run)
        if errors:
            out += [""] + [f"- error {e}" for e in errors]
    else:
        out.append("Not counted in this run (`--no-launches`).")
    return "\n".join(out) + "\n"


def write_plot(run: BenchmarkRun, path: Path) -> Path | None:
    """Grouped bars of median time per case and contender (log scale); None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written")
        return None
    cases = run.cases
    names = list(dict.fromkeys(n for res in cases for n in res.measurements))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases)), 5))
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for j, res in enumerate(cases):
            m = res.measurements.get(name)
            if m is not None and m.ok and None not in (m.median_ms, m.min_ms, m.max_ms):
                assert m.median_ms is not None and m.min_ms is not None and m.max_ms is not None
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(m.median_ms)
                lo.append(m.median_ms - m.min_ms)
                hi.append(m.max_ms - m.median_ms)
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("median time per call [ms] (bars: min-max)")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([res.case.id for res in cases], rotation=35, ha="right", fontsize=8)
    ax.set_title(f"xpconv benchmark, {run.tag}" + (" (QUICK)" if run.quick else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(run: BenchmarkRun, out_dir: str | Path, plot: bool = True) -> list[Path]:
    """``<tag>.json``, ``<tag>.md`` and (optionally) ``<tag>.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{run.tag}.json", out_dir / f"{run.tag}.md"]
    paths[0].write_text(json.dumps(run.to_dict(), indent=1, default=str) + "\n")
    paths[1].write_text(format_markdown(run))
    if plot and write_plot(run, out_dir / f"{run.tag}.png"):
        paths.append(out_dir / f"{run.tag}.png")
    return paths
