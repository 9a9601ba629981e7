"""The validation split of data without its own: seeded, stratified, singletons kept for training."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import xpconv
from xpconv import cli
from xpconv.datasets import load_dataset, load_npz_dataset, stratified_split


@pytest.mark.parametrize("counts", [[50, 30, 20], [7, 7, 7, 7], [99, 1], [3, 2, 1, 1]])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_is_a_partition_stratified_and_keeps_every_class_in_training(counts, fraction):
    t = np.repeat(np.arange(len(counts)), counts)      # sorted by class
    train, val = stratified_split(t, fraction, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(t)))
    assert train.dtype == val.dtype == np.int64
    n_val = min(max(round(len(t) * fraction), 1), len(t) - 1)
    assert abs(len(val) - n_val) <= sum(c == 1 for c in counts)   # singletons cannot validate
    assert set(t[train]) == set(range(len(counts)))                # no class left out of training
    for c, n_c in enumerate(counts):
        in_val = int(np.sum(t[val] == c))
        if n_c == 1:
            assert in_val == 0
        else:
            assert abs(in_val - n_val * n_c / len(t)) < 1 + 1e-9, (c, in_val)


def test_split_is_seeded_and_the_seed_matters():
    t = np.repeat(np.arange(4), 25)
    a = stratified_split(t, 0.2, seed=0)
    b = stratified_split(t, 0.2, seed=0)
    c = stratified_split(t, 0.2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("t, fraction, match", [
    (np.array([0]), 0.2, "at least 2 samples"),
    (np.array([0, 1, 2]), 0.2, "single sample"),
    (np.array([0, 0, 1, 1]), 0.0, "0 < val_fraction < 1"),
    (np.array([0, 0, 1, 1]), 1.0, "0 < val_fraction < 1"),
    (np.array([0, 0, 1, 1]), float("nan"), "0 < val_fraction < 1"),
    (np.zeros((2, 2), int), 0.2, r"shape \(N,\)"),
])
def test_split_errors(t, fraction, match):
    with pytest.raises(ValueError, match=match):
        stratified_split(t, fraction, seed=0)


def _sorted_by_class(tmp_path, n_per_class=40, classes=3, seed=0):
    """A separable data set stored sorted by class: class k is bright in row k."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n_per_class * classes, 1, 8, 8), dtype=np.uint8)
    t = np.repeat(np.arange(classes), n_per_class)
    for k in range(classes):
        x[t == k, 0, 2 * k:2 * k + 2, :] = 250
    path = tmp_path / "sorted.npz"
    np.savez(path, x=x, t=t)
    return path, x, t


def test_parts_are_shuffled_so_a_prefix_mixes_the_classes():
    t = np.repeat(np.arange(4), 50)                   # sorted by class
    train, val = stratified_split(t, 0.2, seed=0)
    assert len(set(t[train[:20]])) == 4 and len(set(t[val[:12]])) >= 3
    assert not np.all(np.diff(train) > 0)


def test_sorted_npz_validates_on_every_class(tmp_path):
    path, _, _t = _sorted_by_class(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "unseen class" warning: every class is trained on
        (_, t_train), (_, t_val) = load_npz_dataset(path)
    assert np.bincount(t_val).tolist() == [8, 8, 8]
    assert np.bincount(t_train).tolist() == [32, 32, 32]
    (_, _), (_, t_val_half) = load_dataset(path, val_fraction=0.5)
    assert np.bincount(t_val_half).tolist() == [20, 20, 20]


def test_sorted_npz_trains_to_a_useful_accuracy(tmp_path, capsys):
    """The case of the issue: the last 20% of a sorted set (one class, never trained on) gave 0.0."""
    path, _, _ = _sorted_by_class(tmp_path)
    code = cli.main(["train", "--data", str(path), "--epochs", "8", "--batch-size", "16", "--device", "cpu",
                     "--quiet", "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    acc = float(out.split("summary: test accuracy ")[1].split()[0])
    assert acc > 0.5, out        # chance is 1/3; the old split could only reach 0.0


def test_explicit_test_split_wins_and_unseen_classes_warn(tmp_path):
    x = np.zeros((6, 1, 5, 5), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, t=np.array([0, 0, 0, 1, 1, 1]), x_test=x[:4], t_test=np.array([0, 1, 2, 2]))
    with pytest.warns(UserWarning, match=r"1 class\(es\) in the validation split never occur in training \(2\)"):
        (xa, _ta), (_xb, tb) = load_npz_dataset(path, val_fraction=0.5)
    assert len(xa) == 6 and tb.tolist() == [0, 1, 2, 2]


def test_cli_val_fraction(tmp_path, capsys):
    path, _, _ = _sorted_by_class(tmp_path, n_per_class=10)
    code = cli.main(["train", "--data", str(path), "--epochs", "1", "--device", "cpu", "--quiet",
                     "--val-fraction", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "15 train / 15 test images" in out
    assert cli.main(["train", "--data", str(path), "--epochs", "1", "--quiet", "--val-fraction", "1.5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val_fraction" in err


def test_split_survives_pickling_of_the_result(tmp_path):
    import pickle
    path, _, _ = _sorted_by_class(tmp_path, n_per_class=5)
    data = load_dataset(path)
    back = pickle.loads(pickle.dumps(data))
    assert isinstance(back, xpconv.datasets.DataSplits) and back.source == data.source
    np.testing.assert_array_equal(back[0][1], data[0][1])
