"""Safe persistence of named host arrays as ``.npz`` files.

Files are written atomically (temporary file in the same folder, fsync,
``os.replace``). Loading follows the file's content, not its name: an ``.npz``
is read with every header checked before any data (:mod:`xpconv._npz_reader`),
and the book's parameter pickles are read by a restricted reader that never
runs code (:mod:`xpconv._book_pickle`).

File format: a plain uncompressed ``.npz`` (zip of ``.npy`` members, as
``numpy.savez`` writes), one member per array; string metadata is stored as
0-d unicode arrays under names prefixed ``__meta__.``.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np

from .atomic import atomic_write
from .book_pickle import PICKLE_PROTOCOLS, read_book_pickle
from .npz_reader import NpzReader

__all__ = ["save_arrays", "load_arrays", "open_npz", "max_load_bytes", "META_PREFIX",
           "DEFAULT_MAX_LOAD_BYTES", "MAX_LOAD_ENV"]

META_PREFIX = "__meta__."
#: Default cap on the array data one load reads (``max_bytes=None``).
DEFAULT_MAX_LOAD_BYTES = 4 << 30
#: Environment variable (MiB) that overrides :data:`DEFAULT_MAX_LOAD_BYTES`.
MAX_LOAD_ENV = "XPCONV_MAX_LOAD_MB"

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive
_NUMERIC_KINDS = "biufc"


def _as_host_array(name: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. device arrays that refuse implicit copies
        raise TypeError(
            f"save_arrays: array {name!r}: expected a host numpy array; got "
            f"{type(value).__module__}.{type(value).__qualname__} ({exc})"
        ) from exc
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(
            f"save_arrays: array {name!r}: expected a numeric dtype (bool, int, float, complex); "
            f"got {arr.dtype}"
        )
    return arr


def _write_member(archive: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    """Write one ``name.npy`` member, as numpy.savez does."""
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, arr, allow_pickle=False)


def save_arrays(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write named arrays (and string metadata) to an ``.npz`` file atomically.

    The archive is written to a temporary file ``.{name}.xpconv-tmp-*`` in the
    destination folder, fsync'ed, then renamed onto ``path``: an error, Ctrl-C or
    SIGTERM mid-write leaves any existing ``path`` untouched and removes the
    temporary file, and temporary files that a killed earlier save to the same
    path left behind are removed. A symlink is written through (its target is
    replaced). ``path`` is used exactly as given (no ``.npz`` is appended).

    Args:
        path: destination file.
        arrays: name -> numeric host array (bool, integer, floating or complex).
            Names must be non-empty and must not start with ``"__meta__."``.
        metadata: name -> string, e.g. ``{"format": "xpconv-params", "version": "1"}``;
            stored as 0-d unicode arrays named ``"__meta__." + name``.

    Raises:
        ValueError: reserved or empty names.
        TypeError: non-string names or metadata values; object or other
            non-numeric arrays.
    """
    path = os.fspath(path)
    payload: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save_arrays: array names must be non-empty strings; got {name!r}")
        if name.startswith(META_PREFIX):
            raise ValueError(
                f"save_arrays: array name {name!r} starts with the reserved prefix {META_PREFIX!r}"
            )
        payload[name] = _as_host_array(name, value)
    for key, text in (metadata or {}).items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"save_arrays: metadata keys must be non-empty strings; got {key!r}")
        if not isinstance(text, str):
            raise TypeError(
                f"save_arrays: metadata {key!r}: expected str; got {type(text).__name__} {text!r}"
            )
        payload[META_PREFIX + key] = np.array(text, dtype=np.str_)

    with atomic_write(path) as f:
        archive = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
        try:
            for name, arr in payload.items():
                _write_member(archive, name, arr)
        except BaseException:
            # the write failed or was interrupted (Ctrl-C stays a KeyboardInterrupt): the
            # temporary file is discarded, so the archive is not finished; closing it here
            # would raise zipfile's own error in place of this one
            archive.fp = None
            raise
        archive.close()


def max_load_bytes(max_bytes: int | None = None, *, who: str = "load_arrays") -> int:
    """The cap on array data one load may read: ``max_bytes``, else ``XPCONV_MAX_LOAD_MB``, else 4 GiB.

    Args:
        max_bytes: a positive int, or None for the default.
        who: prefix of error messages.

    Raises:
        ValueError: ``max_bytes`` or ``XPCONV_MAX_LOAD_MB`` is not a positive number.
        TypeError: ``max_bytes`` is not an int.
    """
    if max_bytes is None:
        text = os.environ.get(MAX_LOAD_ENV)
        if not text:
            return DEFAULT_MAX_LOAD_BYTES
        try:
            mb = float(text)
        except ValueError:
            mb = float("nan")
        if not (math.isfinite(mb) and mb > 0):
            raise ValueError(f"{who}: expected {MAX_LOAD_ENV} to be a positive number of MiB; got {text!r}")
        return int(mb * 2**20)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"{who}: expected max_bytes to be an int (bytes) or None; got {type(max_bytes).__name__}")
    if max_bytes <= 0:
        raise ValueError(f"{who}: expected max_bytes > 0; got {max_bytes}")
    return int(max_bytes)


def _file_kind(path: str, who: str) -> str:
    """"npz" or "pickle", from the file's first bytes (never from its name)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in _ZIP_MAGICS:
        return "npz"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in PICKLE_PROTOCOLS:
        return "pickle"
    raise ValueError(
        f"{who}: {path}: expected an .npz archive (first bytes 'PK') or a pickle of the book's "
        f"parameters (first byte 0x80); got first bytes {head!r}"
    )


def open_npz(path: str | os.PathLike, *, who: str, max_bytes: int | None = None) -> NpzReader:
    """Open an ``.npz`` for checked, bounded reading; a pickle is refused, never unpickled.

    Args:
        path: the archive (any name: its first bytes decide).
        who: prefix of error messages.
        max_bytes: cap on the array data read through it (see :func:`max_load_bytes`).

    Returns:
        An :class:`xpconv._npz_reader.NpzReader` (a context manager): ``names``,
        ``header(name)`` (shape and dtype, without reading data), ``read(name)``.
    """
    path = os.fspath(path)
    budget = max_load_bytes(max_bytes, who=who)
    if _file_kind(path, who) == "pickle":
        raise ValueError(
            f"{who}: {path}: this is a pickle file; it reads only .npz archives (pickles are never "
            "unpickled here; xpconv's load_params reads the book's parameter pickles safely)"
        )
    return NpzReader(path, who=who, max_bytes=budget)


def load_arrays(
    path: str | os.PathLike,
    *,
    expected: Mapping[str, tuple] | None = None,
    who: str = "load_params",
    max_bytes: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read named arrays from an ``.npz`` or from the book's parameter pickle, safely.

    The file's first bytes decide how it is read, whatever its name:

    * an ``.npz`` (zip; :func:`save_arrays`, ``numpy.savez``): every member's name,
      dtype and shape are checked from the headers before any data is read
      (object arrays refused, total data bounded by ``max_bytes``);
    * a pickle (first byte ``0x80``): read by the restricted reader of
      :mod:`xpconv._book_pickle`, which admits only a dict of str names to
      float16/32/64 NumPy arrays and never runs code.

    Arrays with NaN or Inf values load with a ``RuntimeWarning`` naming them.

    Args:
        path: the file.
        expected: name -> expected shape (a tuple of ints; ``()`` for a scalar),
            or name -> tuple of allowed shapes. When given, the file must hold
            exactly these names with these shapes, each floating point; for an
            ``.npz`` this is checked before any data is read.
        who: prefix of error messages, e.g. the public function calling this.
        max_bytes: cap on the array data read (default: ``XPCONV_MAX_LOAD_MB``
            MiB if set, else 4 GiB).

    Returns:
        ``(arrays, metadata)``: name -> host array in file order (metadata
        members excluded), and the metadata with the ``"__meta__."`` prefix removed.

    Raises:
        ValueError: neither an ``.npz`` nor a pickle; corrupt or truncated file;
            object arrays; a refused pickle; more data than ``max_bytes``; bad
            metadata members; with ``expected``: missing names, unexpected names
            and shape mismatches, all reported in one message.
        TypeError: non-numeric arrays; with ``expected``: non-floating arrays.
    """
    path = os.fspath(path)
    budget = max_load_bytes(max_bytes, who=who)
    expected = None if expected is None else _normalize_expected(expected)
    if _file_kind(path, who) == "pickle":
        arrays = read_book_pickle(path, who=who, max_bytes=budget)
        metadata: dict[str, str] = {}
        if expected is not None:
            _check_expected({k: (a.shape, a.dtype) for k, a in arrays.items()}, expected, path, who)
    else:
        with NpzReader(path, who=who, max_bytes=budget) as npz:
            headers = {name: npz.header(name) for name in npz.names}
            for name, h in headers.items():
                _check_member_kind(name, h, path, who)
            if expected is not None:
                _check_expected({k: (h.shape, h.dtype) for k, h in headers.items()
                                 if not k.startswith(META_PREFIX)}, expected, path, who)
            npz.check_budget(npz.names)
            arrays, metadata = {}, {}
            for name in npz.names:
                if name.startswith(META_PREFIX):
                    metadata[name[len(META_PREFIX):]] = str(npz.read(name)[()])
                else:
                    arrays[name] = npz.read(name)
    warn_non_finite(arrays, who=who, path=path)
    return arrays, metadata


def warn_non_finite(arrays: Mapping[str, np.ndarray], *, who: str, path: str) -> None:
    """Warn (``RuntimeWarning``) naming the floating arrays that hold NaN or Inf."""
    bad = [name for name, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        warnings.warn(f"{who}: {path}: non-finite values (NaN or Inf) in {', '.join(bad)}",
                      RuntimeWarning, stacklevel=3)


def _check_member_kind(name: str, header, path: str, who: str) -> None:
    if name.startswith(META_PREFIX):
        if header.shape != () or header.dtype.kind != "U":
            raise ValueError(
                f"{who}: {path}: metadata member {name!r}: expected a 0-d unicode array; "
                f"got {header.dtype} with shape {header.shape}"
            )
    elif header.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{who}: {path}: array {name!r}: expected a numeric dtype; got {header.dtype}")


def _normalize_expected(expected: Mapping) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Name -> shape, or name -> (shape, shape, ...) -> name -> tuple of allowed shapes."""
    out: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, spec in expected.items():
        spec = tuple(spec)
        if all(isinstance(d, (int, np.integer)) for d in spec):  # one shape; () is a scalar
            out[name] = (tuple(int(d) for d in spec),)
        else:
            out[name] = tuple(tuple(int(d) for d in shape) for shape in spec)
    return out


def _check_expected(found, expected, path, who):
    """``found``: name -> (shape, dtype), from headers or arrays."""
    def fmt(shapes):
        return " or ".join(str(s) for s in shapes)

    problems = []
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    mismatched = [
        f"{name} expected {fmt(shapes)}, got {found[name][0]}"
        for name, shapes in expected.items()
        if name in found and found[name][0] not in shapes
    ]
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"{who}: {path}: arrays do not match the model: " + " | ".join(problems))
    not_float = [f"{name} is {found[name][1]}" for name in expected if found[name][1].kind != "f"]
    if not_float:
        raise TypeError(f"{who}: {path}: expected floating-point parameters; got " + ", ".join(not_float))
