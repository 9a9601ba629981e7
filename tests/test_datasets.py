"""Tests for xpconv.datasets: IDX reader, MNIST loaders, downloads, npz data sets."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import importlib.resources
import os
import pickle
import socket
import struct
import threading
import zipfile

import numpy as np
import pytest

import xpconv.datasets.mnist as mnist
from tests.helpers import peak_traced_bytes
from xpconv.datasets import (
    DatasetUnavailableError,
    load_bundled_mnist,
    load_dataset,
    load_mnist,
    load_npz_dataset,
    read_idx,
)
from xpconv.datasets.idx import IDX_DTYPES

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def bundled_path(name):
    return importlib.resources.files("xpconv.datasets") / "data" / name


def idx_bytes(arr, code=None):
    """Hand-build an IDX file for ``arr``."""
    if code is None:
        code = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# --------------------------------------------------------------------- read_idx


def test_read_idx_bundled_files():
    with importlib.resources.as_file(bundled_path("t10k-images-idx3-ubyte.gz")) as p:
        images = read_idx(p)
    with importlib.resources.as_file(bundled_path("t10k-labels-idx1-ubyte.gz")) as p:
        labels = read_idx(p)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert images.max() == 255 and images.min() == 0


@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip_each_dtype(tmp_path, code, compress):
    native = IDX_DTYPES[code].newbyteorder("=")
    rng = np.random.default_rng(code)
    if native.kind == "f":
        arr = rng.standard_normal((3, 4, 2)).astype(native)
    else:
        info = np.iinfo(native)
        arr = rng.integers(info.min, info.max, size=(3, 4, 2), endpoint=True).astype(native)
    data = idx_bytes(arr, code)
    # Compression is detected from content: the names deliberately lie.
    path = tmp_path / ("plain.gz" if not compress else "compressed.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == native and out.dtype.isnative
    assert out.shape == (3, 4, 2)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 0  # writable


def test_read_idx_one_dimensional(tmp_path):
    arr = np.arange(7, dtype=np.int32) - 3
    (tmp_path / "v.idx").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "v.idx"), arr)


def _good_idx():
    return idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
    "data, words",
    [
        (_good_idx()[:-1], ["truncated", "24", "23"]),
        (_good_idx() + b"\x00\x00", ["trailing", "24", "26"]),
        (b"\x01" + _good_idx()[1:], ["magic"]),
        (b"\x00\x00\x0a\x03" + _good_idx()[4:], ["0x0A"]),
        (b"\x00\x00\x08\x00", ["dimension"]),
        (_good_idx()[:9], ["truncated header"]),
        (b"\x00\x00", ["4-byte"]),
    ],
    ids=["truncated", "trailing", "bad-magic", "bad-dtype", "ndim0", "short-header", "tiny"],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_rejects_invalid(tmp_path, data, words, compress):
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(ValueError) as info:
        read_idx(path)
    msg = str(info.value)
    assert "read_idx" in msg and str(path) in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_read_idx_corrupt_gzip(tmp_path, damage):
    rng = np.random.default_rng(0)
    packed = bytearray(gzip.compress(idx_bytes(rng.integers(0, 255, (50, 50), dtype=np.uint8))))
    if damage == "truncate":
        packed = packed[: len(packed) // 2]
    else:
        packed[len(packed) // 2] ^= 0xFF
        packed[len(packed) // 2 + 1] ^= 0xFF
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------- load_bundled_mnist


def test_load_bundled_mnist_default():
    (x, t), (xv, tv) = load_bundled_mnist()
    assert x.shape == (8000, 784) and xv.shape == (2000, 784)
    assert x.dtype == np.float32 and xv.dtype == np.float32
    assert t.shape == (8000,) and tv.shape == (2000,)
    assert t.dtype == np.int64 and tv.dtype == np.int64
    assert 0.0 <= x.min() and x.max() == 1.0
    counts = np.bincount(t, minlength=10) + np.bincount(tv, minlength=10)
    assert counts.tolist() == MNIST_TEST_COUNTS


def test_load_bundled_mnist_split_is_first_8000_then_last_2000():
    with importlib.resources.as_file(bundled_path("t10k-images-idx3-ubyte.gz")) as p:
        images = read_idx(p)
    with importlib.resources.as_file(bundled_path("t10k-labels-idx1-ubyte.gz")) as p:
        labels = read_idx(p)
    (x, t), (xv, tv) = load_bundled_mnist(normalize=False, flatten=False)
    assert x.shape == (8000, 1, 28, 28) and xv.shape == (2000, 1, 28, 28)
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0], images[:8000])
    np.testing.assert_array_equal(xv[:, 0], images[8000:])
    np.testing.assert_array_equal(t, labels[:8000])
    np.testing.assert_array_equal(tv, labels[8000:])


def test_load_bundled_mnist_one_hot_and_normalized():
    (x, t), (_xv, tv) = load_bundled_mnist(flatten=False, one_hot_label=True)
    (_, t_int), (_, tv_int) = load_bundled_mnist()
    assert x.shape == (8000, 1, 28, 28) and x.dtype == np.float32
    assert t.shape == (8000, 10) and tv.shape == (2000, 10) and t.dtype == np.float32
    np.testing.assert_array_equal(t.sum(axis=1), 1.0)
    np.testing.assert_array_equal(t.argmax(axis=1), t_int)
    np.testing.assert_array_equal(tv.argmax(axis=1), tv_int)


def test_load_bundled_mnist_detects_damaged_package_data(monkeypatch):
    files = dict(mnist.MNIST_FILES)
    size, _ = files["t10k-labels-idx1-ubyte.gz"]
    files["t10k-labels-idx1-ubyte.gz"] = (size, "0" * 64)
    monkeypatch.setattr(mnist, "MNIST_FILES", files)
    with pytest.raises(DatasetUnavailableError, match="t10k-labels-idx1-ubyte.gz.*damaged"):
        load_bundled_mnist()


# ------------------------------------------------------------------ downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server; yields (folder it serves, base URL)."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


PAYLOAD = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_fetch_downloads_and_verifies(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    path = mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), [url + "f.bin"], cache)
    assert path == cache / "f.bin" and path.read_bytes() == PAYLOAD
    assert sorted(os.listdir(cache)) == ["f.bin"]
    # The verified cached copy is used without the network.
    (root / "f.bin").unlink()
    assert mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), [closed_port_url() + "f.bin"], cache) == path


def test_fetch_rejects_corrupt_download_and_keeps_nothing(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(PAYLOAD[:-100])  # truncated on the server
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError) as info:
        mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), [url + "f.bin"], cache)
    msg = str(info.value)
    assert "f.bin" in msg and url + "f.bin" in msg and "load_bundled_mnist" in msg
    assert not cache.exists() or os.listdir(cache) == []


def test_fetch_checks_size_too(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="bytes"):
        mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD) + 1, [url + "f.bin"], cache)
    assert os.listdir(cache) == []


@pytest.mark.parametrize("cached", [b"garbage", PAYLOAD[:-1] + b"\x00"], ids=["short", "same-size"])
def test_fetch_replaces_corrupt_cached_file(server, tmp_path, cached):
    root, url = server
    (root / "f.bin").write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "f.bin").write_bytes(cached)
    path = mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), [url + "f.bin"], cache)
    assert path.read_bytes() == PAYLOAD
    assert sorted(os.listdir(cache)) == ["f.bin"]


def test_fetch_falls_through_dead_mirrors(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(PAYLOAD)
    urls = [closed_port_url() + "f.bin", url + "missing/f.bin", url + "f.bin"]
    path = mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), urls, tmp_path / "cache", timeout=5)
    assert path.read_bytes() == PAYLOAD


def test_fetch_reports_every_mirror_when_all_fail(tmp_path):
    urls = [closed_port_url() + "f.bin", closed_port_url() + "g/f.bin"]
    with pytest.raises(DatasetUnavailableError) as info:
        mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), urls, tmp_path / "cache", timeout=5)
    assert isinstance(info.value, RuntimeError)
    first, *rest = str(info.value).splitlines()
    assert first == "fetch: could not get 'f.bin' from any of 2 mirrors: ConnectionError"
    for u in urls:
        assert any(line.startswith(f"  tried {u}: ConnectionError") for line in rest)
    assert "load_bundled_mnist" in rest[-1]


def test_fetch_offline_logs_nothing_and_draws_no_bar(tmp_path, capfd):
    import logging

    import pooch

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = pooch.get_logger()
    level = logger.level
    logger.addHandler(handler)
    try:
        with pytest.raises(DatasetUnavailableError):
            mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), [closed_port_url() + "f.bin"] * 3,
                        tmp_path / "cache", timeout=5, progressbar=True)
    finally:
        logger.removeHandler(handler)
    assert records == [] and logger.level == level     # no "Downloading data from ..." lines
    assert capfd.readouterr().err == ""


def test_fetch_shows_a_progress_bar_named_after_the_file(server, tmp_path, capfd):
    root, url = server
    (root / "f.bin").write_bytes(PAYLOAD)
    mnist.fetch("f.bin", PAYLOAD_SHA, len(PAYLOAD), [closed_port_url() + "f.bin", url + "f.bin"],
                tmp_path / "cache", progressbar=True)
    err = capfd.readouterr().err
    assert "f.bin" in err and "100%" in err and "Downloading" not in err


def test_load_mnist_uses_mirrors_and_cache(server, tmp_path, monkeypatch):
    """load_mnist end to end against a fake mirror serving tiny IDX files."""
    root, url = server
    rng = np.random.default_rng(2)
    contents = {
        "train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_bytes(np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8)),
        "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(np.array([5, 6, 7], dtype=np.uint8)),
    }
    files = {}
    for name, data in contents.items():
        packed = gzip.compress(data)
        (root / name).write_bytes(packed)
        files[name] = (len(packed), hashlib.sha256(packed).hexdigest())
    monkeypatch.setattr(mnist, "MNIST_FILES", files)
    monkeypatch.setattr(mnist, "MIRRORS", (closed_port_url(), url))
    monkeypatch.setenv("XPCONV_DATA", str(tmp_path / "envcache"))

    (x, t), (xt, _tt) = load_mnist(one_hot_label=True)
    assert x.shape == (6, 784) and x.dtype == np.float32 and xt.shape == (3, 784)
    assert t.shape == (6, 10) and t.argmax(1).tolist() == [0, 1, 2, 3, 4, 9]
    assert sorted(os.listdir(tmp_path / "envcache")) == sorted(contents)  # no pickle caches

    (x, t), _ = load_mnist(normalize=False, flatten=False, data_dir=tmp_path / "dd")
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.uint8 and t.dtype == np.int64
    assert sorted(os.listdir(tmp_path / "dd")) == sorted(contents)


def test_mnist_constants():
    assert mnist.MNIST_FILES["t10k-images-idx3-ubyte.gz"] == (
        1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6")
    assert mnist.MNIST_FILES["t10k-labels-idx1-ubyte.gz"] == (
        4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")
    assert mnist.MIRRORS[0].startswith("https://ossci-datasets")


# ------------------------------------------------------------- npz data sets


def test_npz_dataset_default_split(tmp_path):
    x = np.arange(10 * 2 * 3 * 3, dtype=np.uint8).reshape(10, 2, 3, 3)
    t = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, t=t)
    (xa, ta), (xb, tb) = load_npz_dataset(tmp_path / "d.npz")
    assert xa.shape == (8, 2, 3, 3) and xb.shape == (2, 2, 3, 3)
    assert xa.dtype == np.float32 and ta.dtype == np.int64
    # a stratified draw: every sample lands in exactly one part, scaled by 1/255, label kept
    both = np.concatenate([xa, xb]).reshape(10, -1)
    order = np.argsort(both[:, 0])
    np.testing.assert_allclose(both[order], x.reshape(10, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([ta, tb])[order], t)
    (xa, _), (xb, _) = load_npz_dataset(tmp_path / "d.npz", normalize=False, val_fraction=0.5)
    assert len(xa) == 5 and len(xb) == 5 and xa.max() > 1


def test_npz_dataset_three_dim_input_flatten_one_hot(tmp_path):
    x = np.random.default_rng(0).random((5, 4, 4)).astype(np.float64)
    np.savez(tmp_path / "d.npz", x=x, t=np.array([0, 2, 1, 1, 0], dtype=np.uint8))
    (xa, ta), (xb, tb) = load_npz_dataset(tmp_path / "d.npz", flatten=False, one_hot_label=True)
    assert xa.shape == (4, 1, 4, 4) and xb.shape == (1, 1, 4, 4)
    kept = [i for i in range(5) if not np.array_equal(x[i].astype(np.float32), xb[0, 0])]
    order = np.argsort(xa[:, 0, 0, 0])              # the parts come shuffled
    np.testing.assert_allclose(xa[order, 0], x[kept][np.argsort(x[kept][:, 0, 0])].astype(np.float32))
    # only classes 0 and 1 have two samples; class 2 (one sample) stays in training
    assert ta.shape == (4, 3) and ta.dtype == np.float32 and tb.tolist() in ([[1, 0, 0]], [[0, 1, 0]])
    (xa, _), _ = load_npz_dataset(tmp_path / "d.npz", flatten=True)
    assert xa.shape == (4, 16)


def test_npz_dataset_explicit_test_split(tmp_path):
    x = np.zeros((6, 1, 2, 2), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, t=np.zeros(6, np.int64),
             x_test=np.full((3, 2, 2), 255, np.uint8), t_test=np.ones(3, np.int32))
    with pytest.warns(UserWarning, match=r"1 class\(es\) in the validation split never occur in training \(1\)"):
        (xa, _ta), (xb, tb) = load_npz_dataset(tmp_path / "d.npz")
    assert xa.shape == (6, 1, 2, 2) and xb.shape == (3, 1, 2, 2)
    assert xb.max() == 1.0 and tb.dtype == np.int64 and tb.tolist() == [1, 1, 1]


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "arrays, exc, words",
    [
        (dict(x=np.zeros((4, 2, 2)), labels=np.zeros(4, int)), ValueError, ["missing", "'t'", "labels"]),
        (dict(x=np.zeros((4, 2)), t=np.zeros(4, int)), ValueError, ["(N, C, H, W)", "(4, 2)"]),
        (dict(x=np.zeros((4, 2, 2)), t=np.zeros(3, int)), ValueError, ["4 images", "3 labels"]),
        (dict(x=np.zeros((4, 2, 2)), t=np.zeros(4, float)), TypeError, ["integer"]),
        (dict(x=np.zeros((4, 2, 2)), t=np.array([0, 1, -1, 0])), ValueError, ["-1"]),
        (dict(x=np.zeros((4, 2, 2)), t=np.zeros((4, 1), int)), ValueError, ["(N,)"]),
        (dict(x=np.zeros((4, 2, 2)), t=np.zeros(4, int), x_test=np.zeros((1, 2, 2))), ValueError, ["t_test"]),
        (dict(x=np.zeros((4, 2, 2)), t=np.zeros(4, int), x_test=np.zeros((1, 3, 3)),
              t_test=np.zeros(1, int)), ValueError, ["x_test"]),
        (dict(x=np.zeros((1, 2, 2)), t=np.zeros(1, int)), ValueError, ["at least 2"]),
    ],
    ids=["missing-key", "ndim", "length", "float-labels", "negative", "label-ndim",
         "half-test", "test-shape", "too-few"],
)
def test_npz_dataset_errors(tmp_path, arrays, exc, words):
    path = _write(tmp_path / "d.npz", **arrays)
    with pytest.raises(exc) as info:
        load_npz_dataset(path)
    msg = str(info.value)
    assert "load_npz_dataset" in msg
    for word in words:
        assert word in msg


def test_npz_dataset_refuses_object_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 2, 2)), t=np.array([0, 1, "two", None], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        load_npz_dataset(path)


@pytest.mark.parametrize("kind", ["text", "truncated", "empty"])
def test_npz_dataset_unreadable_files(tmp_path, kind):
    path = tmp_path / "d.npz"
    if kind == "text":
        path.write_text("x,t\n1,2\n")
    elif kind == "truncated":
        np.savez(path, x=np.zeros((40, 5, 5)), t=np.zeros(40, int))
        path.write_bytes(path.read_bytes()[:3000])
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        load_npz_dataset(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------- load_dataset


def test_load_dataset_bundled_defaults_to_nchw():
    (x, t), (_xv, _tv) = load_dataset("mnist-bundled")
    assert x.shape == (8000, 1, 28, 28) and x.dtype == np.float32 and t.shape == (8000,)
    (x, t), _ = load_dataset("mnist-bundled", flatten=True, one_hot_label=True)
    assert x.shape == (8000, 784) and t.shape == (8000, 10)


def test_load_dataset_npz_and_mnist_dispatch(tmp_path, monkeypatch):
    path = _write(tmp_path / "d.npz", x=np.zeros((5, 3, 3), np.uint8), t=np.zeros(5, int))
    (x, _), _ = load_dataset(str(path))
    assert x.shape == (4, 1, 3, 3) and x.dtype == np.float32
    (x, _), _ = load_dataset(path, flatten=True)
    assert x.shape == (4, 9)

    import xpconv.datasets.registry as registry

    calls = []
    monkeypatch.setattr(registry, "load_mnist", lambda **kw: calls.append(kw) or ("ok", "ok"))
    assert load_dataset("mnist", data_dir="somewhere") == ("ok", "ok")
    assert calls == [dict(normalize=True, flatten=False, one_hot_label=False, data_dir="somewhere",
                          progressbar=None)]


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="mnist-bundled") as info:
        load_dataset("cifar100")
    assert "cifar100" in str(info.value) and "fashion-mnist" in str(info.value)


# ------------------------------------------------- npz data sets: untrusted files


def test_npz_dataset_uint64_labels_cannot_wrap_negative(tmp_path):
    path = _write(tmp_path / "d.npz", x=np.zeros((3, 2, 2)), t=np.array([0, 1, 2**63], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"'t'.*9223372036854775808"):
        load_npz_dataset(path)
    big = 2**63 - 1
    path = _write(tmp_path / "ok.npz", x=np.zeros((4, 2, 2)), t=np.array([0, 1, big, big], dtype=np.uint64))
    (_, t), (_, tv) = load_npz_dataset(path, val_fraction=0.25)
    assert sorted(t.tolist()) == [0, 1, big] and tv.tolist() == [big]


def _npy_member(archive, name, descr, shape, chunks):
    info = zipfile.ZipInfo(name + ".npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        for chunk in chunks:
            f.write(chunk)



def test_npz_dataset_reads_only_what_it_needs_within_a_cap(tmp_path):
    path = _write(tmp_path / "d.npz", x=np.zeros((10, 4, 4), np.uint8), t=np.arange(10) % 2)
    with zipfile.ZipFile(path, "a") as archive:   # 64 MiB of zeros, deflated to ~64 KiB
        _npy_member(archive, "extra", "|u1", (64 << 20,), [bytes(1 << 20)] * 64)
    assert path.stat().st_size < 1 << 20
    peak = peak_traced_bytes(lambda: load_npz_dataset(path))
    assert peak < 4 << 20            # the unused member is never decompressed
    (x, _), _ = load_npz_dataset(path, max_bytes=10 * 16 + 10 * 8)
    assert x.shape == (8, 1, 4, 4)
    load_npz_dataset(path, max_bytes=100)   # stored members are memory-mapped: no data is read
    deflated = tmp_path / "deflated.npz"
    np.savez_compressed(deflated, x=np.zeros((10, 4, 4), np.uint8), t=np.arange(10) % 2)
    with pytest.raises(ValueError, match="max_bytes"):
        load_npz_dataset(deflated, max_bytes=100)


def test_npz_dataset_huge_declared_shape_is_a_clear_error(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        _npy_member(archive, "x", "|u1", (10**6, 1000, 1000), [bytes(16)])
        _npy_member(archive, "t", "<i8", (10**6,), [bytes(16)])
    peak = peak_traced_bytes(lambda: pytest.raises(ValueError, load_npz_dataset, path))
    assert peak < 1 << 20
    with pytest.raises(ValueError, match=r"load_npz_dataset: .*'x' declares shape \(1000000, 1000, 1000\)"):
        load_npz_dataset(path, max_bytes=10**13)


def test_npz_dataset_cap_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"   # deflated: read into memory, so the cap applies
    np.savez_compressed(path, x=np.zeros((10, 32, 32), np.uint8), t=np.zeros(10, int))
    monkeypatch.setenv("XPCONV_MAX_LOAD_MB", "0.001")
    with pytest.raises(ValueError, match="max_bytes"):
        load_npz_dataset(path)
    monkeypatch.setenv("XPCONV_MAX_LOAD_MB", "nan")
    with pytest.raises(ValueError, match="XPCONV_MAX_LOAD_MB.*'nan'"):
        load_npz_dataset(path)
    monkeypatch.setenv("XPCONV_MAX_LOAD_MB", "1")
    (x, _), _ = load_npz_dataset(path)
    assert x.shape == (8, 1, 32, 32)


def test_npz_dataset_one_hot_of_huge_labels_is_refused(tmp_path):
    path = _write(tmp_path / "d.npz", x=np.zeros((4, 2, 2)), t=np.array([0, 1, 10**8, 2]))
    peak = peak_traced_bytes(lambda: pytest.raises(ValueError, load_npz_dataset, path, one_hot_label=True,
                                       max_bytes=1 << 30))
    assert peak < 1 << 20


def test_npz_dataset_refuses_pickles_and_non_finite_images(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(pickle.dumps({"x": np.zeros((4, 2, 2)), "t": np.zeros(4, int)}, protocol=4))
    with pytest.raises(ValueError, match="pickle"):
        load_npz_dataset(path)
    x = np.zeros((4, 2, 2))
    x[1, 0, 0] = np.nan
    path = _write(tmp_path / "n.npz", x=x, t=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"'x' \(the training images\) holds 1 non-finite value"):
        load_npz_dataset(path, val_fraction=0.25, seed=0)
    with pytest.warns(RuntimeWarning, match="holds 1 non-finite value"):
        load_npz_dataset(path, val_fraction=0.25, seed=0, allow_non_finite=True)


def test_npz_dataset_refuses_non_finite_validation_images(tmp_path):
    x, x_test = np.zeros((4, 2, 2), np.float32), np.zeros((3, 2, 2), np.float32)
    x_test[2, 1, 1], x_test[0, 0, 0] = np.inf, np.nan
    path = _write(tmp_path / "v.npz", x=x, t=np.arange(4) % 2, x_test=x_test, t_test=np.arange(3) % 2)
    with pytest.raises(ValueError, match=r"'x_test' \(the validation images\) holds 2 non-finite values"):
        load_npz_dataset(path)


# ------------------------------------------------- channels-last data (N, H, W, C)


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_channels_last_is_recognised_and_transposed(tmp_path, channels):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(10, 9, 8, channels), dtype=np.uint8)     # (N, H, W, C)
    t = np.arange(10) % 2
    path = _write(tmp_path / "hwc.npz", x=x, t=t, x_test=x[:4], t_test=t[:4])
    with pytest.raises(ValueError, match=rf"look channels-last \(N, H, W, C\) = \(10, 9, 8, {channels}\).*"
                                         r"channels_last=True \(xpconv train --channels-last\)"):
        load_npz_dataset(path)
    (xa, _), (xb, _) = load_npz_dataset(path, channels_last=True)
    assert xa.shape == (10, channels, 9, 8) and xb.shape == (4, channels, 9, 8)
    np.testing.assert_allclose(xa, x.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    (xa, _), _ = load_npz_dataset(path, channels_last=False)              # taken as it is
    assert xa.shape == (10, 9, 8, channels)


def test_npz_channels_first_is_not_mistaken_for_channels_last(tmp_path):
    for shape in [(6, 3, 32, 32), (6, 1, 28, 28), (6, 3, 4, 3), (6, 8, 8, 5)]:
        path = _write(tmp_path / "chw.npz", x=np.zeros(shape, np.uint8), t=np.arange(6) % 2)
        (xa, _), _ = load_npz_dataset(path)
        assert xa.shape[1:] == shape[1:]


def test_train_cli_says_channels_last_and_transposes_with_the_flag(tmp_path, capsys):
    from xpconv import cli

    rng = np.random.default_rng(3)
    t = np.arange(40) % 2
    x = rng.integers(0, 40, size=(40, 12, 12, 1), dtype=np.uint8)
    x[t == 1, 2:6] = 250
    path = _write(tmp_path / "hwc.npz", x=x, t=t)
    assert cli.main(["train", "--data", str(path), "--epochs", "1", "--quiet", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "look channels-last" in err and "--channels-last" in err
    assert cli.main(["train", "--data", str(path), "--epochs", "1", "--quiet", "--device", "cpu",
                     "--channels-last"]) == 0
    assert "images (1, 12, 12)" in capsys.readouterr().out


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_limit_reads_the_first_rows_in_either_memory_order(tmp_path, order, compressed):
    """``limit`` reads the first samples, memory-mapped (stored) or decompressed, of C- and
    Fortran-order members alike (the first rows of a Fortran array are not contiguous)."""
    rng = np.random.default_rng(7)
    x = np.asarray(rng.integers(0, 256, (9, 5, 6), dtype=np.uint8), order=order)
    x_test = np.asarray(rng.integers(0, 256, (7, 5, 6), dtype=np.uint8), order=order)
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, t=np.arange(9) % 3, x_test=x_test,
                                                      t_test=np.arange(7) % 3)
    (xs, ts), (xv, tv) = load_npz_dataset(path, limit=4, keep_dtype=True)
    np.testing.assert_array_equal(xs[:, 0], x[:4])
    np.testing.assert_array_equal(xv[:, 0], x_test[:4])
    assert ts.tolist() == [0, 1, 2, 0] and tv.tolist() == [0, 1, 2, 0]
