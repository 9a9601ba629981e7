"""MNIST in the format of "Deep Learning from Scratch" (``load_mnist``).

Two sources:

* :func:`load_mnist` downloads the four official gzip'd IDX files (60,000
  training and 10,000 test images) from public mirrors with :mod:`pooch`,
  verifies each one's size and SHA-256, and caches it.
* :func:`load_bundled_mnist` needs no network: it uses the official MNIST
  test set shipped inside the package, split 8,000 / 2,000.

Both return ``((x_train, t_train), (x_test, t_test))`` like the book.
No pickle caches are written or read.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._typing import Splits
from .idx import parse_idx, read_idx

__all__ = [
    "DatasetUnavailableError",
    "MIRRORS",
    "MNIST_FILES",
    "fetch",
    "load_mnist",
    "load_bundled_mnist",
    "default_cache_dir",
]


class DatasetUnavailableError(RuntimeError):
    """A data set could not be obtained (no mirror worked, or damaged data)."""


#: Mirrors tried in order; each is a base URL the file name is appended to.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: File name -> (size in bytes, sha256) of the official gzip'd IDX files.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

#: Number of bundled test images used as the training split; the rest validate.
BUNDLED_TRAIN_SIZE = 8000

DOWNLOAD_TIMEOUT_S = 15.0
_OFFLINE_HINT = "load_bundled_mnist() (CLI: --data mnist-bundled) works offline"


def default_cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where downloaded files are cached.

    ``data_dir`` if given, else the environment variable ``XPCONV_DATA``,
    else ``pooch.os_cache("xpconv")`` (e.g. ``~/.cache/xpconv`` on Linux).
    """
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("XPCONV_DATA")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("xpconv"))


def _split_hash(checksum: str) -> tuple[str, str]:
    """``"md5:HEX"``, ``"sha256:HEX"`` or a bare SHA-256 ``"HEX"`` -> (algorithm, lower-case hex)."""
    algorithm, _, hexdigest = checksum.rpartition(":")
    return (algorithm or "sha256").lower(), hexdigest.lower()


def _sha256_of(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, sha256: str, size: int) -> str | None:
    """Return None if ``path`` has ``size`` bytes and the digest ``sha256`` (see :func:`fetch`), else why not."""
    got_size = path.stat().st_size
    if got_size != size:
        return f"expected {size} bytes; got {got_size}"
    algorithm, expected = _split_hash(sha256)
    got_sha = _sha256_of(path, algorithm)
    if got_sha != expected:
        return f"expected {algorithm} {expected}; got {got_sha}"
    return None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def fetch(
    filename: str,
    sha256: str,
    size: int,
    urls: Sequence[str],
    cache_dir: str | os.PathLike,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    progressbar: bool = False,
    offline_hint: str = _OFFLINE_HINT,
) -> Path:
    """Get one verified file into ``cache_dir``, downloading it if needed.

    A cached copy is used only if its size and SHA-256 match; a mismatching
    one is deleted.  Each URL is then tried in order with pooch, which writes
    to a temporary file in ``cache_dir`` and moves it into place only when
    the hash matches; a file of the wrong size is deleted as well.

    Parameters
    ----------
    filename : str
        Name of the file in ``cache_dir``.
    sha256 : str
        Expected SHA-256, 64 hex digits; or ``"md5:HEX"`` / ``"sha256:HEX"`` where
        the publisher gives only an MD5 (the size is checked as well).
    size : int
        Expected size in bytes.
    urls : sequence of str
        Full URLs of the file, tried in order.
    cache_dir : str or os.PathLike
        Cache folder, created if missing.
    timeout : float
        Seconds before a connection or read is abandoned.
    progressbar : bool
        Show a tqdm progress bar (named after the file) while downloading.
        pooch's "Downloading data from ..." log lines are silenced either way.
    offline_hint : str
        Last line of the error message: what works without a network.

    Returns:
    -------
    pathlib.Path
        The verified file.

    Raises:
    ------
    DatasetUnavailableError
        If no URL gave a file that passes verification. The first line of the
        message is a one-line summary; the next lines give each URL's error.
    """
    import pooch

    cache_dir = Path(cache_dir)
    target = cache_dir / filename
    if target.is_file():
        if _verify(target, sha256, size) is None:
            return target
        _remove(target)  # damaged or stale: fetch it again

    cache_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)   # no "Downloading data from ..." line per mirror tried
    try:
        for url in urls:
            try:
                bar = _LazyBar(filename) if progressbar and _have_tqdm() else False
                downloader = pooch.HTTPDownloader(progressbar=bar, timeout=timeout)
                algorithm, hexdigest = _split_hash(sha256)
                pooch.retrieve(url, known_hash=f"{algorithm}:{hexdigest}", fname=filename, path=cache_dir,
                               downloader=downloader)
                problem = _verify(target, sha256, size)
                if problem is not None:
                    raise ValueError(f"{target}: {problem}")
                return target
            except Exception as exc:  # network errors, HTTP errors, hash mismatch
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                if target.exists() and _verify(target, sha256, size) is not None:
                    _remove(target)
    finally:
        logger.setLevel(level)
    kinds = ", ".join(dict.fromkeys(e.split(": ")[1] for e in errors)) or "no URLs given"
    mirrors = f"{len(urls)} mirror{'s' if len(urls) != 1 else ''}"
    raise DatasetUnavailableError(
        f"fetch: could not get {filename!r} from any of {mirrors}: {kinds}\n"
        + "".join(f"  tried {e}\n" for e in errors)
        + f"  cache folder: {cache_dir}\n  {offline_hint}."
    )


def _have_tqdm() -> bool:
    return importlib.util.find_spec("tqdm") is not None


class _LazyBar:
    """A tqdm bar named after the file, created only when the download starts.

    pooch sets ``total`` once the server has answered, then calls ``update``,
    ``reset`` and ``close``; so nothing is drawn for a mirror that cannot be reached.
    """

    def __init__(self, desc: str):
        self.desc, self._bar = desc, None

    @property
    def total(self):
        return None if self._bar is None else self._bar.total

    @total.setter
    def total(self, total):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=total or None, desc=self.desc, unit="B", unit_scale=True, leave=True,
                         file=sys.stderr)

    def update(self, n):
        self._bar.update(n)

    def reset(self):
        self._bar.reset()

    def close(self):
        self._bar.close()


def _to_book_format(images, labels, normalize, flatten, one_hot_label, source):
    """uint8 (N, 28, 28) images and (N,) labels -> the book's x, t."""
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{source}: expected uint8 images (N, 28, 28) and labels (N,); got images "
            f"{images.dtype} {images.shape} and labels {labels.dtype} {labels.shape}"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{source}: expected labels 0..9; got max label {int(labels.max())}")
    n = len(images)
    x = images.reshape(n, -1) if flatten else images.reshape(n, 1, *images.shape[1:])
    if normalize:
        x = x.astype(np.float32) / np.float32(255.0)
    t = labels.astype(np.int64)
    if one_hot_label:
        one_hot = np.zeros((n, 10), dtype=np.float32)
        one_hot[np.arange(n), t] = 1.0
        t = one_hot
    return x, t


def load_mnist(normalize: bool = True, flatten: bool = True, one_hot_label: bool = False,
               data_dir: str | os.PathLike | None = None, *, progressbar: bool | None = None) -> Splits:
    """Load the full MNIST set (60,000 train / 10,000 test), downloading it once.

    Parameters
    ----------
    normalize : bool
        If True, x is float32 in [0, 1]; else uint8 in 0..255.
    flatten : bool
        If True, x is (N, 784); else (N, 1, 28, 28).
    one_hot_label : bool
        If True, t is one-hot float32 (N, 10); else int64 (N,).
    data_dir : str or os.PathLike, optional
        Cache folder; default ``$XPCONV_DATA`` or ``pooch.os_cache("xpconv")``.
    progressbar : bool or None
        Show a progress bar per downloaded file; None (default): only when
        stderr is a terminal.

    Returns:
    -------
    ((x_train, t_train), (x_test, t_test))

    Raises:
    ------
    DatasetUnavailableError
        If a file cannot be downloaded and verified from any mirror.
    """
    cache_dir = default_cache_dir(data_dir)
    if progressbar is None:
        progressbar = sys.stderr is not None and sys.stderr.isatty()
    arrays = {}
    for name, (size, sha256) in MNIST_FILES.items():
        path = fetch(name, sha256, size, [base + name for base in MIRRORS], cache_dir, progressbar=progressbar)
        arrays[name] = read_idx(path)
    train = _to_book_format(
        arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"],
        normalize, flatten, one_hot_label, "load_mnist: train",
    )
    test = _to_book_format(
        arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"],
        normalize, flatten, one_hot_label, "load_mnist: t10k",
    )
    return train, test


def _read_bundled(name: str) -> np.ndarray:
    size, sha256 = MNIST_FILES[name]
    resource = importlib.resources.files("xpconv.datasets") / "data" / name
    try:
        data = resource.read_bytes()
    except OSError as exc:
        raise DatasetUnavailableError(
            f"load_bundled_mnist: package data file {name} is missing ({exc}); reinstall xpconv"
        ) from exc
    got_sha = hashlib.sha256(data).hexdigest()
    if len(data) != size or got_sha != sha256:
        raise DatasetUnavailableError(
            f"load_bundled_mnist: package data file {name} is damaged: expected {size} bytes "
            f"with sha256 {sha256}; got {len(data)} bytes with sha256 {got_sha}; reinstall xpconv"
        )
    return parse_idx(data, source=str(resource))


def load_bundled_mnist(normalize: bool = True, flatten: bool = True, one_hot_label: bool = False) -> Splits:
    """Load the MNIST test set shipped with the package; no network needed.

    The 10,000 official test images are split deterministically: the first
    8,000 are the training split and the last 2,000 the validation split
    (returned in the "test" slot).  Do not report these numbers as MNIST
    test accuracy.

    Parameters
    ----------
    normalize, flatten, one_hot_label : bool
        As in :func:`load_mnist`.

    Returns:
    -------
    ((x_train, t_train), (x_test, t_test))
        x_train (8000, 784) or (8000, 1, 28, 28); x_test likewise with 2000.

    Raises:
    ------
    DatasetUnavailableError
        If the package data is missing or fails its SHA-256 check.
    """
    images = _read_bundled("t10k-images-idx3-ubyte.gz")
    labels = _read_bundled("t10k-labels-idx1-ubyte.gz")
    x, t = _to_book_format(images, labels, normalize, flatten, one_hot_label, "load_bundled_mnist")
    k = BUNDLED_TRAIN_SIZE
    return (x[:k], t[:k]), (x[k:], t[k:])
