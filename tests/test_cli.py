"""The command line, end to end on a tiny budget."""
from __future__ import annotations

import os
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


# ----------------------------------------------------------------------------- expected failures:
# one line on stderr, no traceback, exit code 1

def one_line_error(capsys, code, *needles):
    captured = capsys.readouterr()
    assert code == 1, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xpconv train: error: "), captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def npz_with(tmp_path):
    """Write an .npz of 40 tiny 1x8x8 images with the given labels (and optionally NaN images)."""
    def make(t, nan=False):
        rng = np.random.default_rng(0)
        x = rng.random((len(t), 1, 8, 8)).astype("float32")
        if nan:
            x[:] = np.nan
        path = tmp_path / "data.npz"
        np.savez(path, x=x, t=np.asarray(t))
        return str(path)
    return make


TRAIN = ["train", "--epochs", "1", "--batch-size", "10", "--device", "cpu", "--quiet"]


def test_divergence_is_one_line(tiny_npz, capsys):
    code = cli.main([*TRAIN, "--data", str(tiny_npz), "--limit", "100", "--optimizer", "SGD",
                     "--lr", "1e30", "--seed", "0"])
    one_line_error(capsys, code, "loss became", "learning rate")


def test_divergence_in_a_fresh_process_prints_exactly_one_line(tiny_npz):
    """No traceback and no overflow warnings on the real stderr, only the error line."""
    result = subprocess.run([sys.executable, "-m", "xpconv.cli", *TRAIN, "--data", str(tiny_npz),
                             "--limit", "100", "--optimizer", "SGD", "--lr", "1e30"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("xpconv train: error: Trainer: the loss became")


def test_nan_in_the_data_is_refused_in_one_line(npz_with, capsys):
    code = cli.main([*TRAIN, "--data", npz_with(np.arange(40) % 2, nan=True)])
    one_line_error(capsys, code, "'x' (the training images) holds", "non-finite", "--allow-non-finite")


@pytest.mark.filterwarnings("ignore:load_npz_dataset.*non-finite:RuntimeWarning")   # the data is bad on purpose
def test_nan_in_the_data_allowed_diverges_in_one_line(npz_with, capsys):
    code = cli.main([*TRAIN, "--data", npz_with(np.arange(40) % 2, nan=True), "--allow-non-finite"])
    one_line_error(capsys, code, "loss became nan")


@pytest.mark.parametrize("top", [10**8, 10**4])
def test_huge_labels_are_refused_before_building_the_network(npz_with, capsys, monkeypatch, top):
    def no_network(*args, **kwargs):
        raise AssertionError("a network was built")

    monkeypatch.setattr(xpconv, "SimpleConvNet", no_network)
    t = np.arange(40) % 2
    t[-1] = top
    code = cli.main([*TRAIN, "--data", npz_with(t)])
    one_line_error(capsys, code, f"largest label is {top}", "K <= 10,000", "renumber")


def test_sparse_labels_are_refused(npz_with, capsys):
    code = cli.main([*TRAIN, "--data", npz_with(np.arange(40) % 2 * 500)])
    one_line_error(capsys, code, "labels are not dense", "2 distinct labels", "501 output classes")


def test_single_class_is_refused(npz_with, capsys):
    code = cli.main([*TRAIN, "--data", npz_with(np.full(40, 3))])
    one_line_error(capsys, code, "single class")


def test_labels_with_a_few_gaps_train(npz_with, capsys):
    t = np.arange(40) % 4 * 2                   # 0, 2, 4, 6: 7 classes, 4 used (e.g. a --limit subset)
    assert cli.main([*TRAIN, "--data", npz_with(t)]) == 0, capsys.readouterr().err


def _no_training(monkeypatch):
    def no_train(self):
        raise AssertionError("training ran before the save path was checked")
    monkeypatch.setattr(xpconv.Trainer, "train", no_train)


def test_save_into_a_missing_folder_fails_before_training(tiny_npz, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    target = tmp_path / "missing" / "model.npz"
    code = cli.main([*TRAIN, "--data", str(tiny_npz), "--save", str(target)])
    line = one_line_error(capsys, code, "does not exist", str(target.parent))
    assert ".tmp" not in line and not target.parent.exists()


def test_save_onto_a_folder_fails_before_training(tiny_npz, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    code = cli.main([*TRAIN, "--data", str(tiny_npz), "--save", str(tmp_path)])
    one_line_error(capsys, code, "is a folder")


def test_save_under_a_file_fails_before_training(tiny_npz, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    (tmp_path / "plain").write_text("not a folder")
    code = cli.main([*TRAIN, "--data", str(tiny_npz), "--save", str(tmp_path / "plain" / "model.npz")])
    one_line_error(capsys, code, "does not exist")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders: needs an unprivileged user")
def test_save_into_a_read_only_folder_fails_before_training(tiny_npz, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code = cli.main([*TRAIN, "--data", str(tiny_npz), "--save", str(folder / "model.npz")])
    finally:
        folder.chmod(0o700)
    one_line_error(capsys, code, "cannot write in the folder")
    assert list(folder.iterdir()) == []


def test_save_path_check_leaves_nothing_behind(tiny_npz, tmp_path, capsys):
    target = tmp_path / "model.npz"
    assert cli.main([*TRAIN, "--data", str(tiny_npz), "--limit", "60", "--save", str(target)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_missing_data_file_is_one_line(tmp_path, capsys):
    code = cli.main([*TRAIN, "--data", str(tmp_path / "nothing.npz")])
    one_line_error(capsys, code)


def test_save_is_refused_up_front_when_the_disk_is_too_full(monkeypatch, tmp_path):
    """check_free_space: the model's size plus 10% and 1 MiB must be free in the target folder."""
    import collections
    import shutil

    from xpconv.cli.common import check_free_space
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30, 3 * 2**20))
    check_free_space(tmp_path / "model.npz", 2**20)                    # 2.1 MiB needed: fits
    with pytest.raises(ValueError, match=r"--save .*model\.npz: 3\.0 MiB free in .*, the model needs "
                                         r"about 12\.0 MiB; free some space or save elsewhere"):
        check_free_space(tmp_path / "model.npz", 10 * 2**20)
