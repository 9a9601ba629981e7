"""Named sets beside MNIST (fashion-mnist, cifar10): checksummed files, parsing, offline errors.

No test touches the network: the files are generated here, with the table's sizes and
checksums patched to theirs, and "offline" is a mirror on a closed local port.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile

import numpy as np
import pytest

from xpconv import cli
from xpconv.datasets import (
    DatasetUnavailableError,
    load_dataset,
    load_evaluation_data,
    named,
)
from xpconv.datasets.named import (
    NAMED_SETS,
    NamedSet,
    parse_cifar10_batch,
    read_cifar10_archive,
)

CLOSED = "http://127.0.0.1:9/"   # the discard port: nothing listens, a connection is refused at once


def idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def _install(monkeypatch, name, folder, blobs):
    """Write ``blobs`` (file name -> bytes) into the cache and point the table at their md5 and size."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for fname, data in blobs.items():
        (folder / fname).write_bytes(data)
        files[fname] = (len(data), "md5:" + hashlib.md5(data).hexdigest())
    spec = NAMED_SETS[name]
    monkeypatch.setitem(NAMED_SETS, name, NamedSet(name, files, (CLOSED,), spec.classes, spec.shape))


def _cifar_batch(rng, n):
    t = rng.integers(0, 10, size=n, dtype=np.uint8)
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([t[:, None], x.reshape(n, -1)], axis=1)
    return records.tobytes(), x, t


def _cifar_tar(batches, skip=()):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, data in batches.items():
            if name in skip:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_table_holds_the_published_checksums():
    fashion = NAMED_SETS["fashion-mnist"].files
    assert fashion["train-images-idx3-ubyte.gz"] == (26421880, "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d")
    assert fashion["t10k-labels-idx1-ubyte.gz"] == (5148, "md5:bb300cfdad3c16e7a12a480ee83cd310")
    assert NAMED_SETS["cifar10"].files == {"cifar-10-binary.tar.gz": (170052171,
                                                                      "md5:c32a1d4ab5d03f1284b67883e8d87530")}
    assert all(m.startswith("https://") for m in NAMED_SETS["cifar10"].mirrors)


def test_fashion_mnist_from_verified_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_tr, t_tr = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20, dtype=np.uint8)
    x_te, t_te = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8)
    _install(monkeypatch, "fashion-mnist", tmp_path / "fashion-mnist", {
        "train-images-idx3-ubyte.gz": idx_gz(x_tr), "train-labels-idx1-ubyte.gz": idx_gz(t_tr),
        "t10k-images-idx3-ubyte.gz": idx_gz(x_te), "t10k-labels-idx1-ubyte.gz": idx_gz(t_te)})
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    (x, t), (xv, tv) = data
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32 and xv.shape == (6, 1, 28, 28)
    np.testing.assert_allclose(x[:, 0], x_tr / 255.0, rtol=1e-6)
    assert t.tolist() == t_tr.tolist() and tv.tolist() == t_te.tolist() and t.dtype == np.int64
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    xe, te, classes = load_evaluation_data("fashion-mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(xe, xv)
    assert te.tolist() == t_te.tolist() and classes == data.classes


def test_cifar10_binary_archive_is_parsed_with_numpy(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    parts = {f"data_batch_{i}.bin": _cifar_batch(rng, 3) for i in range(1, 6)}
    parts["test_batch.bin"] = _cifar_batch(rng, 4)
    blob = _cifar_tar({k: v[0] for k, v in parts.items()})
    _install(monkeypatch, "cifar10", tmp_path / "cifar10", {"cifar-10-binary.tar.gz": blob})
    data = load_dataset("cifar10", data_dir=tmp_path)
    (x, t), (xv, tv) = data
    assert x.shape == (15, 3, 32, 32) and xv.shape == (4, 3, 32, 32)
    want_x = np.concatenate([parts[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    want_t = np.concatenate([parts[f"data_batch_{i}.bin"][2] for i in range(1, 6)])
    np.testing.assert_allclose(x, want_x / 255.0, rtol=1e-6)
    assert t.tolist() == want_t.tolist() and tv.tolist() == parts["test_batch.bin"][2].tolist()
    assert data.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                            "ship", "truck")


def test_cifar10_damaged_archives(tmp_path):
    rng = np.random.default_rng(2)
    batches = {f"data_batch_{i}.bin": _cifar_batch(rng, 2)[0] for i in range(1, 6)}
    batches["test_batch.bin"] = _cifar_batch(rng, 2)[0]
    path = tmp_path / "c.tar.gz"
    path.write_bytes(_cifar_tar(batches, skip=("data_batch_3.bin",)))
    with pytest.raises(ValueError, match="has no cifar-10-batches-bin/data_batch_3.bin"):
        read_cifar10_archive(path)
    batches["test_batch.bin"] += b"\x01\x02"
    path.write_bytes(_cifar_tar(batches))
    with pytest.raises(ValueError, match="records of 3073 bytes.*2 past the last whole record"):
        read_cifar10_archive(path)
    path.write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="not a readable tar.gz archive"):
        read_cifar10_archive(path)
    with pytest.raises(ValueError, match="expected labels 0..9; got 10"):
        parse_cifar10_batch(bytes([10]) + bytes(3072))


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_offline_is_one_clear_line(tmp_path, monkeypatch, capsys, name):
    spec = NAMED_SETS[name]
    monkeypatch.setitem(NAMED_SETS, name, NamedSet(name, spec.files, (CLOSED,), spec.classes, spec.shape))
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, data_dir=tmp_path, progressbar=False)
    first = str(info.value).splitlines()[0]
    assert first.startswith("fetch: could not get") and "1 mirror" in first
    assert "mnist-bundled" in str(info.value)
    monkeypatch.setenv("XPCONV_DATA", str(tmp_path))
    assert cli.main(["train", "--data", name, "--quiet", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpconv train: error: fetch: could not get")
    assert "--data mnist-bundled works offline" in err


def test_a_damaged_cached_file_is_replaced_not_used(tmp_path, monkeypatch):
    """A cached file whose checksum fails is deleted and fetched again (here: offline -> the error)."""
    blob = _cifar_tar({"test_batch.bin": b""})
    _install(monkeypatch, "cifar10", tmp_path / "cifar10", {"cifar-10-binary.tar.gz": blob})
    cached = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    cached.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))       # same size, one bit flipped
    with pytest.raises(DatasetUnavailableError):
        named.load_cifar10(tmp_path, progressbar=False)
    assert not cached.exists()
