"""Named data sets beside MNIST: Fashion-MNIST and CIFAR-10.

Both are downloaded once with :func:`~xpconv.datasets.mnist.fetch` (size and checksum
verified, atomic, into the same cache as MNIST: ``$XPCONV_DATA`` or
``pooch.os_cache("xpconv")``) and come with their official train/test split.

* ``fashion-mnist``: Zalando's 70,000 grayscale 28x28 images of 10 kinds of clothing, in
  MNIST's IDX format; x (N, 1, 28, 28). Checksums: the MD5s published by Zalando
  Research (and used by torchvision), with each file's byte size.
* ``cifar10``: 60,000 colour 32x32 images of 10 classes; x (N, 3, 32, 32). Read from the
  *binary* version ``cifar-10-binary.tar.gz`` (records of 1 label byte + 3,072 pixel
  bytes, parsed with NumPy), never from the pickled "python version". Checksum: the MD5
  on the CIFAR page, with the byte size.

Offline (no mirror reachable, no cached copy) they raise
:class:`~xpconv.datasets.mnist.DatasetUnavailableError` whose first line says so.
"""
from __future__ import annotations

import os
import sys
import tarfile
from dataclasses import dataclass

import numpy as np

from .._typing import Splits
from .idx import read_idx
from .mnist import default_cache_dir, fetch

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "NAMED_SETS",
    "NamedSet",
    "load_cifar10",
    "load_fashion_mnist",
    "parse_cifar10_batch",
    "read_cifar10_archive",
    "read_fashion_mnist",
]


@dataclass(frozen=True)
class NamedSet:
    """A downloadable data set: its files (name -> (size in bytes, checksum)) and mirrors."""

    name: str
    files: dict
    mirrors: tuple
    classes: tuple
    shape: tuple      # one image, (C, H, W)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

NAMED_SETS = {
    "fashion-mnist": NamedSet(
        name="fashion-mnist",
        files={
            "train-images-idx3-ubyte.gz": (26421880, "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels-idx1-ubyte.gz": (29515, "md5:25c81989df183df01b3e8a0aad5dffbe"),
            "t10k-images-idx3-ubyte.gz": (4422102, "md5:bef4ecab320f06d8554ea6380940ec79"),
            "t10k-labels-idx1-ubyte.gz": (5148, "md5:bb300cfdad3c16e7a12a480ee83cd310"),
        },
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        classes=FASHION_MNIST_CLASSES,
        shape=(1, 28, 28),
    ),
    "cifar10": NamedSet(
        name="cifar10",
        files={"cifar-10-binary.tar.gz": (170052171, "md5:c32a1d4ab5d03f1284b67883e8d87530")},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=CIFAR10_CLASSES,
        shape=(3, 32, 32),
    ),
}

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_BATCH = 10000          # records per batch file
_CIFAR_TRAIN = tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "cifar-10-batches-bin/test_batch.bin"
_OFFLINE = "no network needed: --data mnist-bundled, a folder of images or an .npz file"


def _subfolder(name: str, data_dir) -> os.PathLike:
    """Fashion-MNIST's files share MNIST's names: each named set gets its own subfolder."""
    return default_cache_dir(data_dir) / name


def _fetch_all(spec: NamedSet, data_dir, progressbar) -> dict:
    if progressbar is None:
        progressbar = sys.stderr is not None and sys.stderr.isatty()
    folder = _subfolder(spec.name, data_dir)
    return {name: fetch(name, checksum, size, [base + name for base in spec.mirrors], folder,
                        progressbar=progressbar, offline_hint=_OFFLINE)
            for name, (size, checksum) in spec.files.items()}


def _fashion_part(images: np.ndarray, labels: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28) \
            or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"load_fashion_mnist: {source}: expected uint8 images (N, 28, 28) and labels (N,); "
                         f"got images {images.dtype} {images.shape} and labels {labels.dtype} {labels.shape}")
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"load_fashion_mnist: {source}: expected labels 0..9; got {int(labels.max())}")
    return images[:, None], labels.astype(np.int64)


def read_fashion_mnist(paths: dict) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """uint8 ``((x_train, t_train), (x_test, t_test))``, x (N, 1, 28, 28), from the four IDX files.

    Args:
        paths: file name (as in ``NAMED_SETS["fashion-mnist"].files``) -> path.
    """
    train = _fashion_part(read_idx(paths["train-images-idx3-ubyte.gz"]),
                          read_idx(paths["train-labels-idx1-ubyte.gz"]), "train")
    test = _fashion_part(read_idx(paths["t10k-images-idx3-ubyte.gz"]),
                         read_idx(paths["t10k-labels-idx1-ubyte.gz"]), "t10k")
    return train, test


def parse_cifar10_batch(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte and 3,072 pixel bytes (R, G, B planes).

    Returns:
        ``(x, t)``: x uint8 (N, 3, 32, 32), t int64 (N,).

    Raises:
        ValueError: the size is not a whole number of records, or a label is above 9.
    """
    if len(data) % _CIFAR_RECORD:
        raise ValueError(f"load_cifar10: {source}: expected records of {_CIFAR_RECORD} bytes; got {len(data)} "
                         f"bytes, {len(data) % _CIFAR_RECORD} past the last whole record")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    t = records[:, 0].astype(np.int64)
    if t.size and int(t.max()) > 9:
        raise ValueError(f"load_cifar10: {source}: expected labels 0..9; got {int(t.max())}")
    x = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return x, t


def read_cifar10_archive(path: str | os.PathLike) -> Splits:
    """uint8 ``((x_train, t_train), (x_test, t_test))`` from ``cifar-10-binary.tar.gz``.

    Only the six batch files are read, from the archive in memory (nothing is extracted
    to disk, so member names cannot escape a folder).

    Raises:
        ValueError: not a tar.gz archive, a batch missing or damaged.
    """
    path = os.fspath(path)
    try:
        with tarfile.open(path, "r:gz") as archive:
            batches = {}
            for name in (*_CIFAR_TRAIN, _CIFAR_TEST):
                try:
                    member = archive.getmember(name)
                except KeyError:
                    raise ValueError(f"load_cifar10: {path}: the archive has no {name}") from None
                if not member.isfile():
                    raise ValueError(f"load_cifar10: {path}: {name} is not a regular file")
                if member.size > _CIFAR_BATCH * _CIFAR_RECORD:
                    raise ValueError(f"load_cifar10: {path}: {name} holds {member.size} bytes; a batch "
                                     f"has at most {_CIFAR_BATCH} records of {_CIFAR_RECORD} bytes")
                f = archive.extractfile(member)
                if f is None:
                    raise ValueError(f"load_cifar10: {path}: {name} cannot be read")
                with f:
                    batches[name] = parse_cifar10_batch(f.read(), f"{path}: {name}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"load_cifar10: {path}: not a readable tar.gz archive ({exc})") from None
    x = np.concatenate([batches[n][0] for n in _CIFAR_TRAIN])
    t = np.concatenate([batches[n][1] for n in _CIFAR_TRAIN])
    return (x, t), batches[_CIFAR_TEST]


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *, progressbar: bool | None = None) -> Splits:
    """Fashion-MNIST, downloaded once: uint8 ``((x_train, t_train), (x_test, t_test))``.

    x (60000 | 10000, 1, 28, 28) uint8, t int64; labels 0..9 name
    :data:`FASHION_MNIST_CLASSES`.

    Raises:
        DatasetUnavailableError: no mirror gave a file that passes its checks.
    """
    return read_fashion_mnist(_fetch_all(NAMED_SETS["fashion-mnist"], data_dir, progressbar))


def load_cifar10(data_dir: str | os.PathLike | None = None, *, progressbar: bool | None = None) -> Splits:
    """CIFAR-10, downloaded once: uint8 ``((x_train, t_train), (x_test, t_test))``.

    x (50000 | 10000, 3, 32, 32) uint8, t int64; labels 0..9 name :data:`CIFAR10_CLASSES`.

    Raises:
        DatasetUnavailableError: the archive could not be downloaded and verified.
    """
    paths = _fetch_all(NAMED_SETS["cifar10"], data_dir, progressbar)
    return read_cifar10_archive(paths["cifar-10-binary.tar.gz"])

