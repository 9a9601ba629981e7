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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import xpconv
from xpconv.bench import cli as bench_cli, launch_proxy
from xpconv.bench.cases import build_cases, find_case
from xpconv.bench.contenders import discover_contenders, xpconv_specs
from xpconv.bench.results import Measurement
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
    for option in ("--quick", "--devices", "--cases", "--contenders", "--out", "--no-launches"):
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
