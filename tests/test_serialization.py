"""Tests for xpconv.serialization: atomic .npz saving and pickle-free loading."""

import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

import xpconv.serialization as serialization
from xpconv.serialization import load_arrays, save_arrays


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "W1": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "b1": np.zeros(4, np.float32),
        "W2": rng.standard_normal((5, 2)),
        "scale": np.float64(2.5),
        "steps": np.arange(3, dtype=np.int64),
        "mask": np.array([True, False]),
        "layer.0.gamma": np.ones(2, np.float16),
    }


META = {"format": "xpconv-params", "version": "1", "model": "SimpleConvNet", "note": "µ ünïcode"}


def test_round_trip(tmp_path):
    path = tmp_path / "model.params"  # no .npz suffix: used exactly as given
    arrays = sample_arrays()
    save_arrays(path, arrays, metadata=META)
    assert sorted(os.listdir(tmp_path)) == ["model.params"]
    loaded, meta = load_arrays(path)
    assert meta == META
    assert list(loaded) == list(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == np.asarray(arr).dtype
        np.testing.assert_array_equal(loaded[name], arr)
    # A plain numpy reader with allow_pickle=False can read it too.
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["__meta__.model"]) == "SimpleConvNet"
        np.testing.assert_array_equal(npz["W1"], arrays["W1"])
    with zipfile.ZipFile(path) as zf:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


def test_save_overwrites_and_accepts_empty(tmp_path):
    path = tmp_path / "p.npz"
    save_arrays(path, {"a": np.ones(3)})
    save_arrays(path, {"b": np.zeros(2)})
    assert list(load_arrays(path)[0]) == ["b"]
    save_arrays(path, {})
    assert load_arrays(path) == ({}, {})


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("existing", [True, False])
def test_save_is_atomic(tmp_path, monkeypatch, existing):
    path = tmp_path / "params.npz"
    if existing:
        save_arrays(path, {"old": np.arange(10.0)}, metadata={"v": "old"})
        before = path.read_bytes()
    real_write = serialization._write_member
    written = []

    def failing_write(archive, name, arr):
        if written:  # the first member is written for real, then we crash
            raise _Boom("disk full")
        written.append(name)
        real_write(archive, name, arr)

    monkeypatch.setattr(serialization, "_write_member", failing_write)
    with pytest.raises(_Boom):
        save_arrays(path, sample_arrays(), metadata=META)
    assert written  # the failure really happened mid-write
    if existing:
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["params.npz"]
    else:
        assert os.listdir(tmp_path) == []


def test_save_failure_in_replace_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "params.npz"
    path.write_bytes(b"precious")

    def failing_replace(src, dst):
        raise OSError("simulated")

    monkeypatch.setattr(serialization.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        save_arrays(path, {"a": np.ones(2)})
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["params.npz"]


@pytest.mark.parametrize(
    "arrays, metadata, exc, word",
    [
        ({"__meta__.x": np.ones(1)}, None, ValueError, "__meta__."),
        ({"w": np.array([1, None], dtype=object)}, None, TypeError, "object"),
        ({"w": np.array(["a", "b"])}, None, TypeError, "<U1"),
        ({"": np.ones(1)}, None, TypeError, "non-empty"),
        ({"w": np.ones(1)}, {"v": 1}, TypeError, "metadata"),
    ],
    ids=["reserved", "object", "unicode", "empty-name", "meta-not-str"],
)
def test_save_refuses_bad_input(tmp_path, arrays, metadata, exc, word):
    with pytest.raises(exc, match=word):
        save_arrays(tmp_path / "p.npz", arrays, metadata=metadata)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------- pickle


class Planted:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_planted_payload_is_live(tmp_path):
    """Control: the payload really runs code when unpickled."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()


@pytest.mark.parametrize("name", ["params.pkl", "params.npz", "params.pickle", "params"])
@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_files_are_refused_not_unpickled(tmp_path, name, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"W1": Planted(marker)}, protocol=protocol))
    with pytest.raises(ValueError) as info:
        load_arrays(path)
    assert not marker.exists()
    msg = str(info.value)
    assert msg.startswith("load_params") and str(path) in msg
    if protocol > 0 or name.endswith((".pkl", ".pickle")):
        assert "never unpickled" in msg and "save_params" in msg


def test_object_array_in_npz_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "params.npz"
    np.savez(path, W1=np.ones(2), evil=np.array([Planted(marker)], dtype=object))
    with pytest.raises(ValueError, match="pickled") as info:
        load_arrays(path, who="load_params")
    assert "'evil'" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "npy"])
def test_unreadable_files(tmp_path, kind):
    path = tmp_path / "p.npz"
    if kind == "text":
        path.write_text("hello")
    elif kind == "truncated":
        save_arrays(path, sample_arrays())
        path.write_bytes(path.read_bytes()[:500])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        with open(path, "wb") as f:  # a .npy file under an .npz name
            np.save(f, np.ones(3))
    with pytest.raises(ValueError) as info:
        load_arrays(path, who="Net.load_params")
    assert str(info.value).startswith("Net.load_params") and str(path) in str(info.value)


def test_bad_metadata_member(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, **{"W": np.ones(1), "__meta__.format": np.arange(3)})
    with pytest.raises(ValueError, match="metadata"):
        load_arrays(path)


# ----------------------------------------------------------------- expected


EXPECTED = {"W1": (4, 1, 3, 3), "b1": (4,), "W2": (5, 2)}


def test_expected_match(tmp_path):
    path = tmp_path / "p.npz"
    save_arrays(path, {k: sample_arrays()[k] for k in EXPECTED})
    arrays, _ = load_arrays(path, expected=EXPECTED)
    assert set(arrays) == set(EXPECTED)
    # a tuple of allowed shapes also works
    load_arrays(path, expected={**EXPECTED, "W2": ((2, 5), (5, 2))})


def test_expected_mismatches_reported_together(tmp_path):
    path = tmp_path / "p.npz"
    save_arrays(path, {"W1": np.zeros((4, 1, 5, 5), np.float32), "W2": np.zeros((5, 2)), "extra": np.ones(1)})
    with pytest.raises(ValueError) as info:
        load_arrays(path, expected=EXPECTED, who="SimpleConvNet.load_params")
    msg = str(info.value)
    assert msg.startswith("SimpleConvNet.load_params")
    assert "missing: b1" in msg
    assert "unexpected: extra" in msg
    assert "W1 expected (4, 1, 3, 3), got (4, 1, 5, 5)" in msg
    assert "W2" not in msg.split("shape mismatch")[1]


def test_expected_float_params(tmp_path):
    path = tmp_path / "p.npz"
    save_arrays(path, {"W1": np.zeros((4, 1, 3, 3), np.int64), "b1": np.zeros(4), "W2": np.zeros((5, 2))})
    with pytest.raises(TypeError, match="W1 is int64"):
        load_arrays(path, expected=EXPECTED)
