"""The command line, end to end on a tiny budget."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xpconv
from xpconv import cli
from xpconv.datasets import DatasetUnavailableError, load_bundled_mnist


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    (x, t), _ = load_bundled_mnist(normalize=False, flatten=False)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=x[:300, 0], t=t[:300])            # (N, H, W) uint8 is accepted
    return path


def test_devices_lists_cpu(capsys):
    assert cli.main(["devices"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("cpu")


def test_train_save_load_and_filters(tiny_npz, tmp_path, capsys):
    params = tmp_path / "model.npz"
    code = cli.main(["train", "--data", str(tiny_npz), "--epochs", "2", "--batch-size", "30",
                     "--device", "cpu", "--quiet", "--save", str(params)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "summary: test accuracy" in out and "s/epoch" in out
    net = xpconv.SimpleConvNet(seed=1).load_params(params)
    x = np.load(tiny_npz)["x"][-60:, None] / 255.0
    assert net.accuracy(x, np.load(tiny_npz)["t"][-60:]) > 0.3   # learned something in 2 epochs
    pytest.importorskip("matplotlib", reason="xpconv filters needs the optional matplotlib")
    image = tmp_path / "filters.png"
    assert cli.main(["filters", str(params), "--out", str(image)]) == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["deep", "lenet"])
def test_train_other_models(model, tiny_npz, capsys):
    code = cli.main(["train", "--model", model, "--data", str(tiny_npz), "--epochs", "1", "--limit", "60",
                     "--device", "array_api_strict:device1", "--quiet"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("quiet", [False, True])
def test_default_data_falls_back_to_bundled_offline(monkeypatch, capsys, quiet):
    def offline(*args, **kwargs):
        raise DatasetUnavailableError("fetch: could not get 'train-images-idx3-ubyte.gz' from any of "
                                      "3 mirrors: ConnectionError\n  tried https://a: ConnectionError: long\n")

    monkeypatch.setattr("xpconv.datasets.registry.load_mnist", offline)
    assert cli.main(["train", "--epochs", "1", "--limit", "100"] + ["--quiet"] * quiet) == 0
    captured = capsys.readouterr()
    assert "mnist-bundled" in captured.out
    fallback = [line for line in captured.err.splitlines() if "MNIST" in line]
    if quiet:
        assert fallback == []
    else:
        assert fallback == ["xpconv train: full MNIST unavailable (fetch: could not get "
                            "'train-images-idx3-ubyte.gz' from any of 3 mirrors: ConnectionError); "
                            "using the bundled MNIST test set instead (8,000 train / 2,000 validation)"]
    monkeypatch.setattr("xpconv.datasets.registry.load_mnist", offline)
    assert cli.main(["train", "--data", "mnist", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data mnist-bundled works offline" in err


def test_errors_are_reported_not_raised(capsys, tmp_path):
    assert cli.main(["train", "--device", "nowhere", "--limit", "10"]) == 1
    assert "device 'nowhere' is not usable" in capsys.readouterr().err
    bad = tmp_path / "model.pkl"
    bad.write_bytes(b"\x80\x04junk")
    assert cli.main(["filters", str(bad)]) == 1
    assert "pickle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--epochs", "0"])


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "xpconv.cli", "devices"], capture_output=True, text=True)
    assert result.returncode == 0 and "cpu" in result.stdout
