"""A folder of images, one subfolder per class (torchvision ``ImageFolder``, Keras
``image_dataset_from_directory``).

Layout::

    DIR/
      cat/  001.png  002.png ...      label 0  (classes sorted by folder name)
      dog/  a.jpg  b/c.png ...        label 1  (subfolders of a class are searched too)

* Images are the files whose extension is one of :data:`IMAGE_EXTENSIONS` (any case);
  other files and hidden entries (names starting with ``.``) are skipped, as are files
  directly in ``DIR``.
* Colour follows the data: if every image is grayscale (Pillow modes ``1``, ``L``, ``LA``)
  the images are (1, H, W); if any is colour, all are converted to RGB (3, H, W).
  Alpha channels are dropped; palette images are converted to RGB.
* All images must have one size (else a clear error naming two files and their sizes),
  or pass ``size=(H, W)`` to resize every image (bilinear).
* The decoded uint8 images are cached as an ``.npz`` in ``<cache>/image-folders/``
  (``$XPCONV_DATA`` or ``pooch.os_cache("xpconv")``), keyed by the folder's path and by
  each image's relative path, byte size and modification time: change, add or remove an
  image and the folder is read again. The cache is written atomically and read with the
  safe ``.npz`` reader.

Pillow is imported only when a folder is read (``pip install "xpconv[images]"``).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..serialization import load_arrays, max_load_bytes, save_arrays
from .layout import finish
from .result import DataSplits
from .split import check_val_fraction, stratified_split

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "load_image_folder_arrays", "read_image_folder", "scan_image_folder"]

_WHO = "load_image_folder"

#: File extensions read as images (lower case), as torchvision's ``IMG_EXTENSIONS``.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

_GRAY_MODES = ("1", "L", "LA")
_CACHE_FORMAT = "xpconv-image-folder-1"


def _pillow(who: str):
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f'{who}: reading images needs Pillow: pip install "xpconv[images]" '
                          f"(or pip install pillow)") from None
    return Image


def scan_image_folder(root: str | os.PathLike, *, who: str = _WHO) -> tuple[list[str], list[tuple[str, int]]]:
    """The classes and the image files of a folder, without opening any image.

    Args:
        root: the folder (one subfolder per class).
        who: prefix of error messages.

    Returns:
        ``(classes, files)``: class names sorted; ``(relative path, label)`` per image,
        sorted by class, then by path.

    Raises:
        ValueError: not a folder, no class subfolders, or a class without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{who}: {root}: expected a folder with one subfolder of images per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{who}: {root}: expected one subfolder of images per class (e.g. {root}/cat/1.png); "
                         f"found no subfolders")
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = []
        for folder, dirs, names in os.walk(root / name, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.relpath(os.path.join(folder, f), root) for f in names
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ValueError(f"{who}: {root}: class folder {name!r} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
        files += [(rel, label) for rel in sorted(found)]
    return classes, files


def _fingerprint(root: Path, files, size) -> str:
    """A key that changes when an image is added, removed, renamed, resized or modified."""
    entries = []
    for rel, label in files:
        st = os.stat(root / rel)
        entries.append([rel, label, st.st_size, st.st_mtime_ns])
    text = json.dumps({"format": _CACHE_FORMAT, "root": str(root.resolve()), "size": size, "files": entries})
    return hashlib.sha256(text.encode()).hexdigest()


def _fail(path: Path, exc: Exception, who: str) -> ValueError:
    why = str(exc).splitlines()[0] if str(exc) else "corrupt data"
    return ValueError(f"{who}: {path}: cannot read this image ({type(exc).__name__}: {why}); "
                      f"remove or replace the file")


def _header(Image, path: Path, who: str) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode, from the file's header (no pixels decoded)."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except Exception as exc:
        raise _fail(path, exc, who) from None


def _decode(Image, path: Path, mode: str, size, who: str) -> np.ndarray:
    """One image as uint8 (C, H, W) in ``mode`` ("L" or "RGB"), resized to ``size`` = (H, W) if given."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _GRAY_MODES and mode == "RGB":
                img = img.convert("L")       # the gray value in all three channels
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise _fail(path, exc, who) from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_image_folder(root: str | os.PathLike, *, size: tuple[int, int] | None = None, who: str = _WHO,
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image of a class folder (no cache, no split).

    Args:
        root: the folder (see the module docstring).
        size: ``(H, W)`` to resize every image to, or None to require one common size.
        who: prefix of error messages.

    Returns:
        ``(x, t, classes)``: x uint8 (N, C, H, W) with C = 1 (all grayscale) or 3;
        t int64 (N,); the class names, label k is ``classes[k]``.

    Raises:
        ValueError: see :func:`scan_image_folder`; an unreadable image (the message
            names it); 16-bit or floating-point images; images of different sizes
            without ``size`` (names two files).
        ImportError: Pillow is not installed.
    """
    Image = _pillow(who)
    root = Path(root)
    classes, files = scan_image_folder(root, who=who)
    if size is not None:
        size = _check_size(size, who)
    first, gray = None, True
    for rel, _ in files:                 # pass 1: headers only, so a size mismatch is found at once
        dims, mode = _header(Image, root / rel, who)
        if mode in ("I", "F") or mode.startswith("I;"):
            raise ValueError(f"{who}: {root / rel}: a {mode!r} (16-bit or floating-point) image; "
                             f"expected 8-bit grayscale or colour images: convert it to 8 bits")
        gray = gray and mode in _GRAY_MODES
        if first is None:
            first = (rel, dims)
        elif size is None and dims != first[1]:
            (w0, h0), (w1, h1) = first[1], dims
            raise ValueError(f"{who}: {root}: images differ in size: {first[0]} is {w0}x{h0} (WxH) but "
                             f"{rel} is {w1}x{h1}; resize them to one size, or pass size=(H, W) "
                             f"to resize them on loading")
    mode = "L" if gray else "RGB"
    x = np.stack([_decode(Image, root / rel, mode, size, who) for rel, _ in files])   # pass 2: pixels
    t = np.array([label for _, label in files], dtype=np.int64)
    return x, t, classes


def _check_size(size, who) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: expected size=(H, W), two positive ints; got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{who}: expected size=(H, W), two positive ints; got {size!r}")
    return h, w


def _cache_dir(data_dir) -> Path:
    from .mnist import default_cache_dir
    return default_cache_dir(data_dir) / "image-folders"


def _read_cache(path: Path, who: str):
    """(x, t, classes) from a cache file, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        arrays, meta = load_arrays(path, who=who)
        classes = json.loads(meta["classes"])
        x, t = arrays["x"], arrays["t"]
        if (meta.get("format") != _CACHE_FORMAT or x.dtype != np.uint8 or x.ndim != 4 or t.ndim != 1
                or len(x) != len(t) or not isinstance(classes, list)):
            return None
        return x, t.astype(np.int64), [str(c) for c in classes]
    except (ValueError, TypeError, KeyError, OSError):
        return None


def load_image_folder_arrays(root: str | os.PathLike, *, size: tuple[int, int] | None = None,
                             data_dir: str | os.PathLike | None = None, cache: bool = True,
                             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of a class folder, through the cache: uint8 ``(x, t, classes)``, not split.

    As :func:`read_image_folder`, but a cached copy is used when the folder has not
    changed, and a new one is written (atomically) when it has. A cache file that cannot
    be read is ignored and rewritten; a cache folder that cannot be written gives a
    ``RuntimeWarning`` and the data all the same.
    """
    root = Path(os.fspath(root))
    if size is not None:
        size = _check_size(size, _WHO)
    if not cache:
        return read_image_folder(root, size=size, who=_WHO)
    _, files = scan_image_folder(root, who=_WHO)
    key = _fingerprint(root, files, size)
    cache_file = _cache_dir(data_dir) / f"{root.resolve().name or 'root'}-{key[:24]}.npz"
    loaded = _read_cache(cache_file, _WHO)
    if loaded is not None:
        return loaded
    x, t, classes = read_image_folder(root, size=size, who=_WHO)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_arrays(cache_file, {"x": x, "t": t},
                    metadata={"format": _CACHE_FORMAT, "classes": json.dumps(classes),
                              "root": str(root.resolve())})
    except OSError as exc:   # a read-only cache folder: the data is loaded all the same
        warnings.warn(f"{_WHO}: could not write the cache {cache_file} ({exc})", RuntimeWarning, stacklevel=3)
    return x, t, classes


def load_image_folder(root: str | os.PathLike, normalize: bool | None = None, flatten: bool = False,
                      one_hot_label: bool = False, val_fraction: float = 0.2, *, seed: int = 0,
                      size: tuple[int, int] | None = None, data_dir: str | os.PathLike | None = None,
                      cache: bool = True, max_bytes: int | None = None, keep_dtype: bool = False) -> DataSplits:
    """Load a folder of images, one subfolder per class, split for training and validation.

    Args:
        root: the folder (see the module docstring for the layout and the colour rule).
        normalize: None or True: the uint8 images are scaled by 1/255 to [0, 1]; False:
            float32 0..255.
        flatten: if True, x is (N, C*H*W); else (N, C, H, W).
        one_hot_label: if True, t is one-hot float32 (N, K); else int64 (N,).
        val_fraction: share of the images, drawn per class with ``seed``, that validate
            (see :func:`~xpconv.datasets.split.stratified_split`).
        seed: seed of that draw.
        size: ``(H, W)`` to resize every image to; None: they must share one size.
        data_dir: cache folder root (default ``$XPCONV_DATA`` or ``pooch.os_cache("xpconv")``).
        cache: False: neither read nor write the cache.
        max_bytes: cap on the one-hot labels (default as :func:`load_npz_dataset`).
        keep_dtype: the images stay uint8 (scaled per batch by the Trainer and the models).

    Returns:
        ``((x_train, t_train), (x_val, t_val))`` as a :class:`DataSplits` whose
        ``classes`` are the subfolder names.

    Raises:
        ValueError: not a class folder; an unreadable image (named); images of
            different sizes (two named) without ``size``; too few images to split.
        ImportError: Pillow is not installed (``pip install "xpconv[images]"``).
    """
    root = Path(os.fspath(root))
    check_val_fraction(val_fraction, who=_WHO)
    budget = max_load_bytes(max_bytes, who=_WHO)
    x, t, classes = load_image_folder_arrays(root, size=size, data_dir=data_dir, cache=cache)
    train_idx, val_idx = stratified_split(t, val_fraction, seed=seed, who=f"{_WHO}: {root}")
    train, val = finish((x[train_idx], t[train_idx]), (x[val_idx], t[val_idx]), normalize=normalize,
                        flatten=flatten, one_hot_label=one_hot_label, budget=budget, who=_WHO,
                        source=str(root), keep_dtype=keep_dtype)
    return DataSplits(train, val, classes=classes, source=str(root))
