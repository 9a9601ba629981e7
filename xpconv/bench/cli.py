"""Command-line options of the benchmark (``xpconv bench``, ``python -m xpconv.bench``)."""
from __future__ import annotations

import argparse
import shlex
import sys

from .cases import build_cases, select_cases
from .child import ISOLATED_MARK, PROBE_MARK, emit
from .contenders import DEFAULT_COMPILE_BACKEND, discover_contenders
from .timing import DEFAULT_GAP, DEFAULT_REPEAT, DEFAULT_WARMUP, GEMM_SIZE, QUICK_REPEAT

DEFAULT_OUT = "bench-results"
QUICK_CASES = "net-b100,maxpool"  # --quick without --cases: the network (its conv too) and a pool
QUICK_GEMM_N = 512  # --quick checks that it runs; a GEMM this small is a noisy ceiling

DESCRIPTION = """\
Benchmark xpconv against the book's plain NumPy algorithm (the textbook baseline) and
PyTorch: SimpleConvNet, four convolutions and a max pool, forward+backward ("train") and
forward only ("infer"), on every available device and backend (NumPy, CuPy, torch, JAX,
array-api-strict); and SimpleConvNet's whole training step with Adam (step-b100, step-b1,
and step-host, the host cost per step), uncompiled and through xpconv.compile_step
(xpconv:jax+compiled, xpconv:torch+compiled). Contenders alternate round-robin with idle
gaps; a float32 GEMM gives each its ceiling; peak memory is measured in a fresh process;
the GPU launch proxy counts aten ops and blocking syncs per call on torch's CPU backend."""

EPILOG = """\
examples:
  xpconv bench --devices cpu --quick     check that it runs (well under a minute)
  xpconv bench                           the full run (12 minutes on 2 cores, plus inductor's
                                         compiles of the step cases)
  xpconv bench --cases 'conv*' --contenders 'xpconv:*,torch-*'
  xpconv bench --cases 'step*'           training steps, compiled and not, host cost
  xpconv bench --quick --cases 'step*' --compile-backend aot_eager   the same, compiled in seconds
  xpconv bench --list"""


def build_parser(prog: str = "xpconv bench") -> argparse.ArgumentParser:
    """The benchmark's options."""
    ap = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"a check that it runs: batch 4-8 for the layer cases, {QUICK_REPEAT} repeats, "
                         f"a {QUICK_GEMM_N} GEMM, and unless --cases is given only {QUICK_CASES} (--cases '*' for all)")
    ap.add_argument("--devices", help="comma-separated xpconv device specs/prefixes, e.g. cpu,cuda "
                                      "(default: every available device and backend)")
    ap.add_argument("--cases", help="comma-separated patterns over case ids (e.g. conv3x3/train), "
                                    "base names (conv*) or modes (train, infer)")
    ap.add_argument("--contenders", help="comma-separated patterns over contender names "
                                         "(e.g. textbook,torch-*,xpconv:*)")
    ap.add_argument("--repeat", type=int, help=f"timed samples per contender and case "
                                               f"(default {DEFAULT_REPEAT}, --quick {QUICK_REPEAT})")
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                    help=f"untimed calls before timing (default {DEFAULT_WARMUP})")
    ap.add_argument("--gap", type=float, default=DEFAULT_GAP,
                    help=f"idle seconds before each timed call, so the previous library's spinning "
                         f"threads go to sleep (default {DEFAULT_GAP})")
    ap.add_argument("--gemm-n", type=int, help=f"GEMM ceiling matrix size (default {GEMM_SIZE['cpu']} "
                                               f"on CPU, {GEMM_SIZE['cuda']} on CUDA; --quick {QUICK_GEMM_N})")
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help=f"folder for <tag>.json, <tag>.md, <tag>.png (default: ./{DEFAULT_OUT})")
    ap.add_argument("--tag", help="name of the output files (default: from the machine, e.g. cpu-2core-xeon)")
    ap.add_argument("--compile-backend", default=DEFAULT_COMPILE_BACKEND, metavar="NAME",
                    help=f"torch.compile backend of xpconv:torch+compiled in the step cases (default "
                         f"{DEFAULT_COMPILE_BACKEND}: 20-50 s per input shape on a 2-core CPU; aot_eager "
                         f"compiles the same graph without generating code, in seconds)")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory subprocess probes")
    ap.add_argument("--no-launches", dest="launches", action="store_false",
                    help="skip the GPU launch proxy (aten ops and syncs per call on torch CPU)")
    ap.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG plot")
    ap.add_argument("--list", action="store_true", help="list cases and contenders, then exit")
    ap.add_argument("--_memory-probe", dest="memory_probe", nargs=2, metavar=("CONTENDER", "CASE"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--_isolated", dest="isolated", metavar="CONTENDER", help=argparse.SUPPRESS)
    return ap


def parse_args(argv: list[str] | None = None, prog: str = "xpconv bench") -> argparse.Namespace:
    """Options, with the defaults that depend on ``--quick`` filled in."""
    ap = build_parser(prog)
    opts = ap.parse_args(argv)
    if opts.repeat is None:
        opts.repeat = QUICK_REPEAT if opts.quick else DEFAULT_REPEAT
    if opts.quick and opts.cases is None and not (opts.memory_probe or opts.isolated):
        opts.cases = QUICK_CASES
    if opts.quick and opts.gemm_n is None:
        opts.gemm_n = QUICK_GEMM_N
    if opts.repeat < 1 or opts.warmup < 0 or opts.gap < 0:
        ap.error("--repeat must be >= 1, --warmup and --gap >= 0")
    return opts


def main(argv: list[str] | None = None, prog: str = "xpconv bench") -> int:
    """Run the benchmark with these options; returns an exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    opts = parse_args(args, prog)
    if opts.memory_probe:
        from .memory import memory_probe
        contender, case_id = opts.memory_probe
        emit(PROBE_MARK, memory_probe(contender, case_id, opts.quick, opts.compile_backend))
        return 0
    if opts.isolated:
        from .runner import isolated_run
        emit(ISOLATED_MARK, isolated_run(opts.isolated, opts))
        return 0
    if opts.list:
        for case in select_cases(build_cases(opts.quick), opts.cases):
            print(f"{case.id:<18} {case.label}")
        contenders = discover_contenders(opts.devices, opts.contenders, opts.compile_backend)
        print("contenders:", ", ".join(c.name for c in contenders))
        return 0
    from .report import format_text, write_outputs
    from .runner import run_benchmark
    run = run_benchmark(opts, " ".join(shlex.quote(a) for a in [*prog.split(), *args]))
    print(format_text(run))
    for path in write_outputs(run, opts.out, opts.plot):
        print(f"wrote {path}")
    return 0
