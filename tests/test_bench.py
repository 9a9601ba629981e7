"""The benchmark harness (xpconv.bench): it runs end to end, from the package, with its own options.

Nothing here asserts a timing: only that samples, reports and records come out, and
that the launch proxy carries what ``xpconv.diagnostics.launches.count_launches`` counted.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import xpconv
from xpconv.bench import cli as bench_cli, launch_proxy, runner, step_summary, textbook
from xpconv.bench.cases import build_cases, find_case, select_cases
from xpconv.bench.contenders import CompiledXpconvContender, contender_from_name, discover_contenders, xpconv_specs
from xpconv.bench.results import CaseResult, Measurement
from xpconv.bench.timing import time_round_robin
from xpconv.cli import main as xpconv_main

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED = REPO_ROOT / "bench" / "results" / "cpu-2core-xeon.json"
TINY = ["--quick", "--repeat", "1", "--gap", "0", "--gemm-n", "256"]


def test_round_robin_reports_failing_contender():
    def boom():
        raise RuntimeError("no device")

    res = time_round_robin({"ok": (lambda: 1, lambda out: None),
                            "bad": (boom, lambda out: None)}, repeat=2, warmup=1)
    assert len(res["ok"].samples_ms) == 2 and res["ok"].ok
    assert res["bad"] == Measurement(error="RuntimeError: no device")
    assert res["bad"].to_dict() == {"error": "RuntimeError: no device"}


@pytest.mark.skipif(not COMMITTED.is_file(), reason="no committed results in this checkout")
def test_measurement_keeps_the_committed_json_form():
    """Every committed (case, contender) record and GEMM run reads back to the same JSON."""
    data = json.loads(COMMITTED.read_text())
    records = [r for case in data["cases"] for r in case["results"].values()]
    records += [run for c in data["ceilings"].values() for run in c["runs"]]
    assert records
    for record in records:
        assert Measurement.from_dict(record).to_dict() == record


def test_harness_smoke(tmp_path):
    """One tiny case, one repeat, textbook only: JSON, Markdown (and plot) come out."""
    rc = bench_cli.main([*TINY, "--cases", "maxpool/train", "--contenders", "textbook",
                         "--no-launches", "--out", str(tmp_path), "--tag", "smoke"])
    assert rc == 0
    data = json.loads((tmp_path / "smoke.json").read_text())
    (case,) = data["cases"]
    assert case["id"] == "maxpool/train" and data["quick"]
    r = case["results"]["textbook"]
    assert len(r["samples_ms"]) == 1 and r["median_ms"] > 0 and r["gbps"] > 0
    assert r["memory"]["host_extra_mib"] > 0, r["memory"]
    assert data["ceilings"]["textbook"]["gflops"] > 0
    assert data["environment"]["cpu_cores"] >= 1
    assert "maxpool/train" in (tmp_path / "smoke.md").read_text()


def test_harness_times_other_backends_in_their_own_process(tmp_path):
    """xpconv on array-api-strict is isolated: timed by a child process, merged into the table."""
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    rc = bench_cli.main([*TINY, "--cases", "maxpool/infer", "--warmup", "0",
                         "--contenders", "textbook,xpconv:array_api_strict", "--no-memory", "--no-plot",
                         "--no-launches", "--out", str(tmp_path), "--tag", "iso"])
    assert rc == 0
    data = json.loads((tmp_path / "iso.json").read_text())
    (case,) = data["cases"]
    assert list(case["results"]) == ["xpconv:array_api_strict", "textbook"]
    r = case["results"]["xpconv:array_api_strict"]
    assert len(r["samples_ms"]) == 1 and r["median_ms"] > 0
    assert case["ratios"]["xpconv:array_api_strict / textbook"] > 0
    assert data["ceilings"]["xpconv:array_api_strict"]["gflops"] > 0
    assert data["contenders"]["xpconv:array_api_strict"]["error"] is None


def test_default_devices_are_every_backend_but_fake_ones():
    specs = xpconv_specs()
    assert specs[0] == "cpu" and "array_api_strict:device1" not in specs
    assert set(specs) == set(map(str, xpconv.available_devices())) - {"array_api_strict:device1"}
    isolated = {c.name: c.isolated for c in discover_contenders("cpu,torch")}
    assert isolated["xpconv:torch"] and not isolated["xpconv:cpu"] and not isolated["textbook"]


def test_xpconv_bench_help_is_the_benchmarks_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        xpconv_main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: xpconv bench" in out
    for option in ("--quick", "--devices", "--cases", "--contenders", "--out", "--no-launches", "--compile-backend"):
        assert option in out, option


def test_xpconv_bench_passes_every_option_through(capsys):
    assert xpconv_main(["bench", "--devices", "cpu", "--quick", "--list", "--cases", "maxpool"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["maxpool/train", "maxpool/infer"]
    assert "(8, 64, 56, 56)" in lines[0]  # --quick's batch
    assert lines[-1].startswith("contenders: xpconv:cpu, textbook")
    assert "xpconv:jax" not in lines[-1]  # --devices cpu


def test_xpconv_bench_rejects_an_unknown_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        xpconv_main(["bench", "--no-such-option"])
    assert exit_.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_python_m_xpconv_bench_quick_runs_anywhere(tmp_path):
    """``python -m xpconv.bench --devices cpu --quick`` from outside the checkout writes its reports."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(xpconv.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "xpconv.bench", "--devices", "cpu", "--quick",
                           "--cases", "maxpool", "--repeat", "1", "--gap", "0", "--no-plot",
                           "--out", str(out), "--tag", "e2e"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "e2e.json").read_text())
    assert [c["id"] for c in data["cases"]] == ["maxpool/train", "maxpool/infer"]
    assert data["environment"]["command"].startswith("python -m xpconv.bench --devices cpu --quick")
    for case in data["cases"]:
        assert case["results"]["xpconv:cpu"]["median_ms"] > 0
        assert case["results"]["textbook"]["median_ms"] > 0
    assert data["cases"][0]["results"]["xpconv:cpu"]["memory"]["host_extra_mib"] >= 0
    md = (out / "e2e.md").read_text()
    assert "maxpool/train" in md and "GPU launch proxy" in md
    assert "wrote" in proc.stdout and not (tmp_path / "bench-results").exists()


@dataclass
class FakeCount:
    ops: int = 0
    syncs: int = 0
    by_op: collections.Counter = field(default_factory=collections.Counter)


def test_launch_proxy_carries_count_launches_per_case(monkeypatch, tmp_path):
    """The report shows what ``count_launches`` counted for one call, for xpconv on torch and torch."""
    torch = pytest.importorskip("torch", reason="torch is not installed: no launch proxy")
    calls = []

    @contextmanager
    def fake_count_launches(*, forbid_syncs=False):
        counted = FakeCount()
        yield counted
        calls.append(torch.is_grad_enabled())
        counted.ops, counted.syncs = 10 * len(calls), len(calls) - 1
        counted.by_op["mm"] = counted.ops

    monkeypatch.setattr(launch_proxy, "launch_counter", lambda: (fake_count_launches, None))
    rc = bench_cli.main([*TINY, "--cases", "maxpool/infer", "--contenders", "textbook", "--no-memory",
                         "--no-plot", "--out", str(tmp_path), "--tag", "proxy"])
    assert rc == 0 and len(calls) == 2
    data = json.loads((tmp_path / "proxy.json").read_text())
    (case,) = data["cases"]
    assert case["launch_proxy"] == {"xpconv:torch": {"ops": 10, "syncs": 0, "by_op": {"mm": 10}},
                                    "torch": {"ops": 20, "syncs": 1, "by_op": {"mm": 20}}}
    md = (tmp_path / "proxy.md").read_text()
    assert "| maxpool/infer | 10 | 0 | 20 | 1 | 0.50x |" in md


def test_launch_proxy_is_skipped_with_a_note_without_xpconv_launches(monkeypatch):
    monkeypatch.setitem(sys.modules, "xpconv.diagnostics.launches", None)  # import raises ImportError
    counts, note = launch_proxy.count_launches_per_case(build_cases(quick=True))
    assert counts == {}
    assert note.startswith(launch_proxy.LABEL) and "not counted" in note


def test_launch_proxy_counts_real_ops():
    """With the real counter: one quick max-pool call has ops, xpconv on torch and native torch."""
    pytest.importorskip("torch", reason="torch is not installed: no launch proxy")
    pytest.importorskip("xpconv.diagnostics.launches", reason="xpconv.diagnostics.launches is not in this build")
    count_launches, why = launch_proxy.launch_counter()
    assert why is None
    case = find_case("maxpool/train", quick=True)
    for name, contender in launch_proxy.proxy_contenders().items():
        assert contender.try_setup(), contender.error
        record = launch_proxy.count_call(contender, case, count_launches)
        assert record.error is None and record.ops > 0 and record.syncs >= 0, (name, record)


STEP_IDS = ["step-b100/train", "step-b1/train", "step-host/train"]
STEP_RUN = [*TINY, "--warmup", "0", "--cases", "step*", "--compile-backend", "aot_eager", "--no-memory", "--no-plot"]


def test_step_cases_are_train_only_and_keep_their_batches_in_quick_mode():
    for quick in (False, True):
        cases = select_cases(build_cases(quick), "step*")
        assert [c.id for c in cases] == STEP_IDS
        assert [c.params["N"] for c in cases] == [100, 1, 1]
        assert [c.host_cost for c in cases] == [False, False, True]
    ids = {c.id for c in build_cases()}
    assert not any(i.startswith("step") and i.endswith("/infer") for i in ids)
    b100, b1, host = select_cases(build_cases(), "step*")
    assert b100.flops() == find_case("net-b100/train", quick=False).flops() and b1.flops() > 0
    assert host.flops() is None and host.params["filter_num"] == host.params["hidden_size"] == 1
    assert "host cost" in host.label and "Adam" in b100.label
    assert bench_cli.QUICK_CASES == "net-b100,maxpool"     # --quick alone runs no step case


def test_compiled_contender_names_round_trip():
    for name in ("xpconv:jax+compiled", "xpconv:torch+compiled", "xpconv:torch+compiled@1t",
                 "xpconv:cpu", "xpconv:cpu@1t", "xpconv:torch", "torch-cpu", "torch-cpu@1t", "textbook"):
        assert contender_from_name(name).name == name
    compiled = contender_from_name("xpconv:torch+compiled", compile_backend="aot_eager")
    assert isinstance(compiled, CompiledXpconvContender) and compiled.isolated
    assert (compiled.spec, compiled.compile_backend, compiled.uncompiled_name) == ("torch", "aot_eager", "xpconv:torch")
    step, net = find_case("step-host/train", quick=True), find_case("net-b100/train", quick=True)
    assert compiled.supports(step) and not compiled.supports(net)
    assert contender_from_name("xpconv:torch").supports(net)
    names = [c.name for c in discover_contenders("cpu,torch,jax", compile_backend="aot_eager")]
    assert names[:5] == ["xpconv:cpu", "xpconv:torch", "xpconv:torch+compiled", "xpconv:jax", "xpconv:jax+compiled"]
    assert not any("+compiled" in n for n in (c.name for c in discover_contenders("cpu")))
    cpu_compiled = contender_from_name("xpconv:cpu+compiled")
    assert not cpu_compiled.try_setup() and "compiles on jax and torch only" in cpu_compiled.error


def test_compiled_contenders_cost_nothing_without_a_step_case(monkeypatch, tmp_path):
    """No process for a compiled contender when no step case is chosen; no row, no ratio, no ceiling."""
    started = []
    monkeypatch.setattr(runner, "run_isolated", lambda c, opts: started.append(c.name))
    rc = bench_cli.main([*TINY, "--cases", "maxpool/infer", "--contenders", "textbook,xpconv:*+compiled",
                         "--no-memory", "--no-plot", "--no-launches", "--out", str(tmp_path), "--tag", "none"])
    assert rc == 0 and started == []
    data = json.loads((tmp_path / "none.json").read_text())
    (case,) = data["cases"]
    assert list(case["results"]) == ["textbook"] and case["ratios"] == {}
    assert list(data["ceilings"]) == ["textbook"]
    compiling = {f"xpconv:{lib}+compiled" for lib in ("torch", "jax")
                 if lib in [str(s).split(":")[0] for s in xpconv.available_devices()]}
    assert compiling <= set(data["contenders"])      # listed, where installed, yet never started
    assert "Training step" not in (tmp_path / "none.md").read_text()


def test_a_failed_compiled_process_marks_only_its_step_cases(monkeypatch):
    monkeypatch.setattr(runner, "run_child", lambda args, mark: (None, "boom"))
    opts = bench_cli.parse_args([*TINY, "--cases", "maxpool/infer,step-host"])
    (first, timed, last), error = runner.run_isolated(CompiledXpconvContender("torch"), opts)
    failed = {"xpconv:torch+compiled": Measurement(error="isolated run failed (boom)")}
    assert error == "isolated run failed (boom)" and first == last == failed
    assert timed == [failed, {}]   # step-host/train, maxpool/infer


def test_textbook_adam_equals_xpconv_adam():
    """The book's Adam (bench baseline) and xpconv's take the same float32 steps, to rounding."""
    rng = np.random.default_rng(0)
    shapes = {"W1": (3, 1, 5, 5), "b1": (3,), "W2": (48, 8), "b2": (8,)}
    start = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in shapes.items()}
    book, ours = {k: a.copy() for k, a in start.items()}, {k: a.copy() for k, a in start.items()}
    book_adam, our_adam = textbook.Adam(lr=0.01), xpconv.Adam(lr=0.01)
    for _ in range(5):
        grads = {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in shapes.items()}
        book_adam.update(book, grads)
        our_adam.update(ours, grads)
    for k in shapes:
        assert book[k].dtype == np.float32 and book_adam.m[k].dtype == np.float32
        np.testing.assert_allclose(book[k], ours[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(book_adam.m[k], our_adam.m[k], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(book_adam.v[k], our_adam.v[k], rtol=1e-6, atol=1e-8)
        assert not np.array_equal(book[k], start[k])


def _step_result(base: str, medians: dict[str, float], ratios: dict[str, float]) -> CaseResult:
    case = select_cases(build_cases(quick=True), base)[0]
    return CaseResult(case, {n: Measurement(samples_ms=[ms]) for n, ms in medians.items()}, dict(ratios))


def test_step_summary_names_each_target_and_its_verdict():
    results = [_step_result("step-b100", {"xpconv:jax": 50.0, "xpconv:jax+compiled": 20.0, "xpconv:cpu": 25.0},
                            {"xpconv:jax+compiled / xpconv:jax": 0.4}),
               _step_result("step-host", {"xpconv:torch": 3.0, "torch-cpu": 2.0, "xpconv:torch+compiled": 1.5,
                                          "xpconv:jax+compiled": 0.8},
                            {"xpconv:torch / torch-cpu": 1.5})]
    rows = step_summary.target_rows(results)
    assert [(value, verdict) for _, value, verdict in rows] == [
        ("0.40x", "met"), ("1.50x", "not met"), ("0.80x", "met"), ("1.500 ms", "not met"), ("0.800 ms", "met")]
    assert rows[2][0].startswith("xpconv:jax+compiled / xpconv:cpu on step-b100 <= 1 (compiled JAX")   # from the medians
    assert rows[3][0].startswith("xpconv:torch+compiled on step-host <= 1 ms")
    assert step_summary.target_rows(results[:1])[1][2] == "not measured"
    md = "\n".join(step_summary.format_markdown(results, "aot_eager"))
    assert "## " + step_summary.TITLE in md and "| xpconv:jax | 50.000 | - |" in md   # - : not in step-host
    no_step = CaseResult(find_case("maxpool/train", quick=True), {"textbook": Measurement(samples_ms=[1.0])})
    assert step_summary.format_text([no_step], None) == []


def _check_step_run(data: dict, contenders: list[str], ratio: str, ids: list[str] = STEP_IDS) -> None:
    assert [c["id"] for c in data["cases"]] == ids
    assert data["settings"]["compile_backend"] == "aot_eager"
    for case in data["cases"]:
        assert list(case["results"]) == contenders, case["id"]
        for name, r in case["results"].items():
            assert "error" not in r and r["median_ms"] > 0, (case["id"], name, r)
        assert case["ratios"][ratio] > 0


def test_step_cases_numpy_and_jax_compiled_and_not(tmp_path):
    """--cases 'step*' on NumPy, the textbook, and JAX uncompiled and jax.jit-compiled."""
    pytest.importorskip("jax", reason="jax is not installed")
    contenders = ["xpconv:cpu", "xpconv:jax", "xpconv:jax+compiled", "textbook"]
    rc = bench_cli.main([*STEP_RUN, "--contenders", ",".join(contenders), "--no-launches",
                         "--out", str(tmp_path), "--tag", "steps"])
    assert rc == 0
    data = json.loads((tmp_path / "steps.json").read_text())
    _check_step_run(data, contenders, "xpconv:jax+compiled / xpconv:jax")
    assert data["cases"][0]["ratios"]["xpconv:cpu / textbook"] > 0
    md = (tmp_path / "steps.md").read_text()
    assert f"## {step_summary.TITLE}" in md and "| xpconv:jax+compiled / xpconv:jax |" in md
    assert "xpconv:jax+compiled on step-host <= 1 ms" in md


def test_step_cases_torch_compiled_and_not_with_the_launch_proxy(tmp_path):
    """The batch-1 step cases on torch: xpconv uncompiled, compiled (aot_eager) and native PyTorch
    with Adam; the launch proxy counts the steps, the compiled contender is named as not counted.
    (step-b100 is left out: its compile alone takes 10 s here; the JAX test runs it.)
    """
    pytest.importorskip("torch", reason="torch is not installed")
    contenders = ["xpconv:torch", "xpconv:torch+compiled", "torch-cpu"]
    rc = bench_cli.main([*STEP_RUN, "--cases", "step-b1,step-host", "--contenders", ",".join(contenders),
                         "--out", str(tmp_path), "--tag", "tsteps"])
    assert rc == 0
    data = json.loads((tmp_path / "tsteps.json").read_text())
    _check_step_run(data, contenders, "xpconv:torch+compiled / xpconv:torch", STEP_IDS[1:])
    host = data["cases"][1]
    assert host["ratios"]["xpconv:torch / torch-cpu"] > 0
    if "launch_proxy_note" not in data:           # xpconv.diagnostics.launches is in this build
        for case in data["cases"]:
            assert all(r["ops"] > 0 for r in case["launch_proxy"].values()), case["launch_proxy"]
        assert "compiled contenders (xpconv:*+compiled) are not counted" in (tmp_path / "tsteps.md").read_text()


def test_short_calls_are_timed_in_loops_and_reported_per_call():
    from xpconv.bench.timing import LOOP_S, calls_per_sample, time_round_robin
    assert calls_per_sample(0.02) == 1
    assert calls_per_sample(0.001) == round(LOOP_S / 0.001)
    assert calls_per_sample(0.02, loop_below=float("inf"), loop_s=0.25) == 12   # the step cases
    counted = {"calls": 0, "syncs": 0}

    def fn():
        counted["calls"] += 1
        time.sleep(0.001)

    def sync(out=None):
        counted["syncs"] += 1

    m = time_round_robin({"f": (fn, sync)}, repeat=2, warmup=1)["f"]
    assert counted["calls"] > 2 * 20                  # each sample a loop of calls ...
    assert 1.0 <= min(m.samples_ms) and max(m.samples_ms) < 10.0   # ... reported per call
