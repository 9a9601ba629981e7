"""``xpconv selftest``: it runs on every CPU device, every check passes there, and it fails
(exit code 1) when an op is broken. Timings are printed, never asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest

import xpconv
from tests.helpers import make_backend
from xpconv import cli, functional as F
from xpconv.diagnostics import selftest

CPU_DEVICES = ["cpu", "array_api_strict", "array_api_strict:device1", "torch", "jax"]
QUICK = ["--batch-size", "4", "--repeat", "1", "--warmup", "0"]   # JAX compiles every new op shape


@pytest.mark.parametrize("spec", CPU_DEVICES)
def test_selftest_passes_on_every_cpu_device(spec, tmp_path, capsys):
    make_backend(spec)   # skips a device that is not usable here, with the reason
    path = tmp_path / "selftest.json"
    code = cli.main(["selftest", "--device", spec, "--json", str(path), *QUICK])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(path.read_text())
    assert report["passed"] is True and report["dtype"] == "float32"
    assert report["device"] == str(xpconv.device(spec))
    names = [c["name"] for c in report["checks"]]
    for op in ("conv2d", "conv2d backward", "max_pool2d", "max_pool2d backward", "avg_pool2d",
               "avg_pool2d backward", "im2col", "col2im", "SimpleConvNet loss and gradients",
               "SimpleConvNet SGD step"):
        assert any(name.startswith(op + " ") for name in names), op
    lines = out.splitlines()
    for check in report["checks"]:
        assert check["passed"] and 0 <= check["error"] <= check["tolerance"], check
        row = [line.split() for line in lines if line.startswith(f"  {check['name']}  ")]
        assert len(row) == 1 and row[0][-2] == "PASS", (check["name"], out)
    assert report["step"]["batch_size"] == 4 and len(report["step"]["times_ms"]) == 1
    assert report["environment"]["versions"]["numpy"] == np.__version__
    assert "FAIL" not in out
    assert "result: PASS" in out and "training step" in out


def test_selftest_float64_passes_with_the_tight_tolerance():
    report = selftest.run("cpu", dtype="float64", batch_size=2, repeat=1, warmup=0)
    assert report.passed, report.format()
    assert all(c.tolerance == selftest.TOLERANCES["float64"] for c in report.checks)


@pytest.mark.parametrize("spec", ["cpu", "array_api_strict"])
def test_a_broken_op_fails_the_selftest(spec, monkeypatch, tmp_path, capsys):
    make_backend(spec)
    real = F.max_pool2d
    monkeypatch.setattr(F, "max_pool2d", lambda *a, **k: real(*a, **k) + 0.01)   # slightly off
    path = tmp_path / "report.json"
    code = cli.main(["selftest", "--device", spec, "--json", str(path), *QUICK])
    out = capsys.readouterr().out
    assert code == 1, out
    failed = [c for c in json.loads(path.read_text())["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["max_pool2d 3x3 s2 p1"]
    assert failed[0]["error"] > failed[0]["tolerance"]
    assert "result: FAIL, 1 of 14 checks failed" in out


def test_a_wrong_gradient_and_a_raising_op_fail(monkeypatch):
    real = F.conv2d_backward

    def doubled_dw(*args, **kwargs):
        dx, dw, db = real(*args, **kwargs)
        return dx, 2 * dw, db

    def raises(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(F, "conv2d_backward", doubled_dw)
    monkeypatch.setattr(F, "col2im", raises)
    report = selftest.run("cpu", batch_size=2, repeat=1, warmup=0)
    assert not report.passed
    failed = {c.name: c for c in report.checks if not c.passed}
    assert set(failed) == {"conv2d backward 3x3 p1", "conv2d backward 3x2 g2 s(2,1) d(1,2) p((1,0),(2,1))",
                           "conv2d fwd+bwd 3x2 g2 s(2,1) d(1,2) p((1,0),(2,1)) chunked",
                           "col2im 3x3 s2 d2 p((2,1),(0,1))"}
    assert failed["col2im 3x3 s2 d2 p((2,1),(0,1))"].error is None
    assert "illegal memory access" in failed["col2im 3x3 s2 d2 p((2,1),(0,1))"].message
    assert "illegal memory access" in report.format()


def test_a_result_in_the_wrong_dtype_fails(monkeypatch):
    real = F.im2col
    monkeypatch.setattr(F, "im2col", lambda *a, **k: real(*a, **k).astype("float64"))
    failed = [c for c in selftest.run("cpu", batch_size=2, repeat=1, warmup=0).checks if not c.passed]
    assert [c.name for c in failed] == ["im2col 3x3 s2 d2 p((2,1),(0,1))"]
    assert "dtype float64; expected float32" in failed[0].message


def test_a_failing_training_step_fails_the_selftest(monkeypatch):
    def broken(self, *args, **kwargs):
        raise FloatingPointError("overflow")

    monkeypatch.setattr(xpconv.Adam, "update", broken)
    report = selftest.run("cpu", batch_size=2, repeat=1, warmup=0)
    assert all(c.passed for c in report.checks) and not report.passed
    assert "overflow" in report.step["error"] and "training step: FAIL" in report.format()


def test_selftest_bad_arguments_are_one_line(tmp_path, capsys):
    assert cli.main(["selftest", "--device", "nowhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device 'nowhere' is not usable" in err[0]
    assert cli.main(["selftest", "--json", str(tmp_path / "missing" / "r.json")]) == 1
    assert "--json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["selftest", "--dtype", "int8"])
    with pytest.raises(ValueError, match=r"selftest: expected dtype in"):
        selftest.run("cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"selftest: expected repeat to be an int >= 1; got 0"):
        selftest.run("cpu", repeat=0)
