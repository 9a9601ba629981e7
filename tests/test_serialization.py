"""Tests for xpconv.serialization: atomic .npz saving and safe, bounded loading."""

import contextlib
import os
import pathlib
import pickle
import signal
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import xpconv.serialization as serialization
from tests.helpers import peak_traced_bytes
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


# ------------------------------------------------------------ content, not name


def test_npz_saved_under_a_pkl_name_loads(tmp_path):
    """The book's visualize_filter.py saves and loads "params.pkl"."""
    import xpconv
    tiny = dict(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
                hidden_size=5, output_size=3)
    net = xpconv.SimpleConvNet(**tiny, seed=0)
    net.save_params(tmp_path / "params.pkl")
    other = xpconv.SimpleConvNet(**tiny, seed=1).load_params(tmp_path / "params.pkl")
    for k in net.params:
        np.testing.assert_array_equal(xpconv.to_numpy(other.params[k]), xpconv.to_numpy(net.params[k]))


def test_pickles_of_other_things_are_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}.npz"
        path.write_bytes(pickle.dumps({"W1": Planted(marker)}, protocol=protocol))
        with pytest.raises(ValueError, match="refused") as info:
            load_arrays(path)
        assert str(info.value).startswith(f"load_params: {path}")
        assert "it names" in str(info.value)   # getattr (protocol 2) or pathlib.Path.touch
    assert not marker.exists()


def test_protocol0_pickle_is_not_read(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"W1": Planted(marker)}, protocol=0))
    with pytest.raises(ValueError, match="first bytes") as info:
        load_arrays(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_nan_weights_warn(tmp_path):
    path = tmp_path / "p.npz"
    save_arrays(path, {"W1": np.array([1.0, np.nan]), "b1": np.zeros(2), "W2": np.array([np.inf])})
    with pytest.warns(RuntimeWarning, match=r"non-finite .* in W1, W2$"):
        load_arrays(path)


# -------------------------------------------------- bounded, header-checked reads


def _write_npy_member(archive, name, header, chunks=(), compress=zipfile.ZIP_DEFLATED):
    """A member ``name.npy`` with a hand-written .npy ``header`` and data ``chunks``."""
    info = zipfile.ZipInfo(name + ".npy")
    info.compress_type = compress
    with archive.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            f.write(chunk)


def _zeros_member(archive, name, mib):
    """A real deflated member of ``mib`` MiB of zeros (about 1000x smaller in the file)."""
    _write_npy_member(archive, name, {"descr": "|u1", "fortran_order": False, "shape": (mib << 20,)},
                      [bytes(1 << 20)] * mib)



def _raises(exc, match, fn):
    def run():
        with pytest.raises(exc, match=match):
            fn()
    return run


def test_unexpected_big_member_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "params.npz"
    save_arrays(path, {k: sample_arrays()[k] for k in EXPECTED})
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        _zeros_member(archive, "extra", 64)
    assert path.stat().st_size < 1 << 20            # 64 MiB when decompressed
    peak = peak_traced_bytes(_raises(ValueError, "unexpected: extra", lambda: load_arrays(path, expected=EXPECTED)))
    assert peak < 4 << 20
    # without a model to compare with, the byte limit refuses it, also before reading
    peak = peak_traced_bytes(_raises(ValueError, "max_bytes", lambda: load_arrays(path, max_bytes=8 << 20)))
    assert peak < 4 << 20
    with pytest.raises(ValueError, match="XPCONV_MAX_LOAD_MB"):
        os.environ[serialization.MAX_LOAD_ENV] = "lots"
        try:
            load_arrays(path)
        finally:
            del os.environ[serialization.MAX_LOAD_ENV]


def test_huge_declared_shape_is_a_clear_error(tmp_path):
    path = tmp_path / "params.npz"
    with zipfile.ZipFile(path, "w") as archive:
        _write_npy_member(archive, "W1", {"descr": "<f8", "fortran_order": False, "shape": (10**12,)},
                          [bytes(8)])
    for limit in (None, 10**14):
        peak = peak_traced_bytes(_raises(ValueError, r"declares shape \(1000000000000,\) float64",
                                   lambda limit=limit: load_arrays(path, max_bytes=limit)))
        assert peak < 1 << 20


def test_byte_limit_counts_every_member(tmp_path):
    path = tmp_path / "d.npz"
    save_arrays(path, {"a": np.zeros(1000), "b": np.zeros(1000)})
    load_arrays(path, max_bytes=16000)
    with pytest.raises(ValueError, match="16000 bytes .* more than the limit of 15999 bytes"):
        load_arrays(path, max_bytes=15999)
    for bad, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="max_bytes"):
            load_arrays(path, max_bytes=bad)


def _patch_central_size(path, member, size):
    """Make the zip's central directory claim ``size`` uncompressed bytes for ``member``."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    while data[entry + 46:entry + 46 + len(member)] != member.encode():
        entry = data.index(b"PK\x01\x02", entry + 4)
    struct.pack_into("<I", data, entry + 24, size)
    path.write_bytes(bytes(data))


def test_member_longer_than_its_headers_say_is_not_decompressed(tmp_path):
    path = tmp_path / "p.npz"
    header = {"descr": "|u1", "fortran_order": False, "shape": (8,)}
    with zipfile.ZipFile(path, "w") as archive:   # 8 bytes declared, 32 MiB of stream
        info = zipfile.ZipInfo("W.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for _ in range(32):
                f.write(bytes(1 << 20))
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo("W.npy").file_size - (32 << 20)
    _patch_central_size(path, "W.npy", offset + 8)
    peak = peak_traced_bytes(_raises(ValueError, "corrupt", lambda: load_arrays(path)))
    assert peak < 4 << 20


@pytest.mark.parametrize("kind", ["not-npy", "duplicate", "bzip2", "object", "structured", "v3"])
def test_members_are_checked_before_reading(tmp_path, kind):
    path = tmp_path / "p.npz"
    with zipfile.ZipFile(path, "w") as archive:
        if kind == "not-npy":
            archive.writestr("notes.txt", "hello")
        elif kind == "duplicate":
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)   # zipfile warns about the duplicate
                for _ in range(2):
                    _write_npy_member(archive, "W", {"descr": "<f8", "fortran_order": False, "shape": (1,)},
                                      [bytes(8)])
        elif kind == "bzip2":
            _write_npy_member(archive, "W", {"descr": "<f8", "fortran_order": False, "shape": (1,)},
                              [bytes(8)], compress=zipfile.ZIP_BZIP2)
        elif kind == "object":
            _write_npy_member(archive, "W", {"descr": "|O", "fortran_order": False, "shape": (1,)}, [bytes(8)])
        elif kind == "structured":
            _write_npy_member(archive, "W", {"descr": [("a", "<f8")], "fortran_order": False, "shape": (1,)},
                              [bytes(8)])
        else:
            with archive.open("W.npy", "w") as f:
                f.write(b"\x93NUMPY\x03\x00" + bytes(8))
    words = {"not-npy": "notes.txt", "duplicate": "twice", "bzip2": "compression method",
             "object": "pickled", "structured": "structured", "v3": "version"}
    with pytest.raises(ValueError, match=words[kind]) as info:
        load_arrays(path)
    assert str(info.value).startswith(f"load_params: {path}")


def test_fortran_and_big_endian_members(tmp_path):
    path = tmp_path / "p.npz"
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    big = np.arange(4, dtype=">i4")
    np.savez_compressed(path, f=f, big=big, meta=np.float16(3))
    arrays, _ = load_arrays(path)
    np.testing.assert_array_equal(arrays["f"], f)
    assert arrays["f"].flags.f_contiguous
    np.testing.assert_array_equal(arrays["big"], big)
    assert arrays["big"].dtype.isnative and arrays["big"].dtype == np.int32
    assert arrays["meta"].shape == () and arrays["meta"].dtype == np.float16


# ------------------------------------------------- killed saves, signals, symlinks

_SLOW_SAVE = """
import sys, time
import numpy as np
import xpconv.serialization as s
real = s._write_member
def slow(archive, name, arr):
    real(archive, name, arr)
    print("writing", flush=True)
    time.sleep(120)
s._write_member = slow
s.save_arrays(sys.argv[1], {"a": np.ones(1000), "b": np.zeros(10)})
"""


def _temps(folder):
    return sorted(n for n in os.listdir(folder) if ".xpconv-tmp-" in n)


@contextlib.contextmanager
def _saving_in_another_process(path):
    """A process that is in the middle of saving to ``path`` (until it is killed)."""
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(serialization.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline() == "writing\n"
        assert len(_temps(path.parent)) == 1
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()


needs_signals = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@needs_signals
def test_temps_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "params.npz"
    save_arrays(path, {"old": np.arange(3.0)})
    before = path.read_bytes()
    for _ in range(2):   # each save removes what the killed one before it left: no pile-up
        with _saving_in_another_process(path) as proc:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        assert len(_temps(tmp_path)) == 1 and path.read_bytes() == before   # what a SIGKILL leaves
    (tmp_path / ".params.npz.tmp").write_bytes(b"not ours")
    (tmp_path / ".other.npz.xpconv-tmp-abcdefgh").write_bytes(b"another file's")
    save_arrays(path, {"new": np.ones(2)})
    assert sorted(os.listdir(tmp_path)) == [".other.npz.xpconv-tmp-abcdefgh", ".params.npz.tmp", "params.npz"]
    assert list(load_arrays(path)[0]) == ["new"]


@needs_signals
def test_a_save_in_progress_is_left_alone(tmp_path):
    path = tmp_path / "params.npz"
    with _saving_in_another_process(path):
        live = _temps(tmp_path)
        save_arrays(path, {"mine": np.ones(2)})       # must not delete the other one's temp
        assert _temps(tmp_path) == live
    assert list(load_arrays(path)[0]) == ["mine"]


@needs_signals
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_during_a_save_leaves_no_temp(tmp_path, signum):
    signum = getattr(signal, signum)
    path = tmp_path / "params.npz"
    save_arrays(path, {"old": np.arange(3.0)})
    before = path.read_bytes()
    with _saving_in_another_process(path) as proc:
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == -signum    # still ends as the signal does
    assert _temps(tmp_path) == [] and path.read_bytes() == before


def test_ctrl_c_during_a_save_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    path = tmp_path / "params.npz"
    save_arrays(path, {"old": np.arange(3.0)})
    before = path.read_bytes()
    open_member, handles = zipfile.ZipFile.open, []

    def interrupted(self, *args, **kwargs):
        handles.append(open_member(self, *args, **kwargs))  # Ctrl-C right after a member is opened
        raise KeyboardInterrupt                              # for writing: zipfile's close would refuse

    monkeypatch.setattr(zipfile.ZipFile, "open", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        save_arrays(path, {"new": np.ones(4)})
    assert info.value.__context__ is None
    monkeypatch.setattr(zipfile.ZipFile, "open", open_member)
    assert _temps(tmp_path) == [] and path.read_bytes() == before


@needs_signals
def test_sigterm_handler_is_restored(tmp_path):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    save_arrays(tmp_path / "p.npz", {"a": np.ones(1)})
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_save_writes_through_a_symlink(tmp_path):
    real_dir = tmp_path / "runs"
    real_dir.mkdir()
    target = real_dir / "best.npz"
    save_arrays(target, {"old": np.ones(1)})
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.relpath(target, tmp_path))
    save_arrays(link, {"new": np.zeros(2)})
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert list(load_arrays(target)[0]) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "runs"] and os.listdir(real_dir) == ["best.npz"]
