"""Safe persistence of named host arrays as ``.npz`` files.

Files are written atomically (temporary file in the same folder, fsync,
``os.replace``) and read with ``allow_pickle=False``.  Pickle files are
recognised and refused; nothing here ever unpickles.

File format: a plain uncompressed ``.npz`` (zip of ``.npy`` members, as
``numpy.savez`` writes), one member per array; string metadata is stored as
0-d unicode arrays under names prefixed ``__meta__.``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["save_arrays", "load_arrays", "META_PREFIX"]

META_PREFIX = "__meta__."

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_NUMERIC_KINDS = "biufc"


def _pickle_refusal(who: str, path: str) -> ValueError:
    return ValueError(
        f"{who}: {path}: this is a pickle file; pickle files are never unpickled by xpconv "
        "because unpickling can run arbitrary code. If you trust the file, load it yourself "
        "with pickle in a trusted context and save the arrays with save_params (an .npz)."
    )


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

    The archive is written to a temporary file in the destination folder,
    flushed and fsync'ed, then moved onto ``path`` with ``os.replace``; an
    error mid-write leaves any existing ``path`` untouched and removes the
    temporary file.  ``path`` is used exactly as given (no ``.npz`` is
    appended).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    arrays : Mapping[str, numpy.ndarray]
        Name -> numeric host array (bool, integer, floating or complex).
        Names must be non-empty and must not start with ``"__meta__."``.
    metadata : Mapping[str, str], optional
        Name -> string, e.g. ``{"format": "xpconv-params", "version": "1"}``;
        stored as 0-d unicode arrays named ``"__meta__." + name``.

    Raises
    ------
    ValueError
        Reserved or empty names.
    TypeError
        Non-string names or metadata values; object or other non-numeric arrays.
    """
    path = Path(os.fspath(path))
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

    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, arr in payload.items():
                    _write_member(archive, name, arr)
            f.flush()
            os.fsync(f.fileno())
        try:  # mkstemp makes 0600 files; keep an existing file's mode, else 0644
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Best effort: make the rename durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _normalize_expected(expected: Mapping) -> dict[str, tuple[tuple[int, ...], ...]]:
    """name -> shape, or name -> (shape, shape, ...) -> name -> tuple of allowed shapes."""
    out = {}
    for name, spec in expected.items():
        spec = tuple(spec)
        if all(isinstance(d, (int, np.integer)) for d in spec):  # one shape; () is a scalar
            out[name] = (tuple(int(d) for d in spec),)
        else:
            out[name] = tuple(tuple(int(d) for d in shape) for shape in spec)
    return out


def _open_npz(path: str, who: str):
    """Check the file's first bytes, then open it with np.load(allow_pickle=False)."""
    if path.lower().endswith(_PICKLE_SUFFIXES):
        raise _pickle_refusal(who, path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":  # pickle protocol 2+ opcode
        raise _pickle_refusal(who, path)
    if head not in _ZIP_MAGICS:
        raise ValueError(
            f"{who}: {path}: expected an .npz (zip) archive starting with 'PK'; "
            f"got first bytes {head!r}"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{who}: {path}: not a readable .npz archive (corrupt or truncated): {exc}") from exc


def _read_member(npz, key: str, path: str, who: str) -> np.ndarray:
    try:
        arr = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object arrays" in str(exc).lower():
            raise ValueError(
                f"{who}: {path}: array {key!r} holds pickled Python objects; it will not be "
                "loaded (files are read with allow_pickle=False)"
            ) from exc
        raise ValueError(f"{who}: {path}: array {key!r} is corrupt: {exc}") from exc
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{who}: {path}: array {key!r} is corrupt or truncated: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{who}: {path}: member {key!r} is not a .npy array")
    return arr


def load_arrays(
    path: str | os.PathLike,
    *,
    expected: Mapping[str, tuple] | None = None,
    who: str = "load_params",
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read an ``.npz`` written by :func:`save_arrays` (or ``numpy.savez``) safely.

    Never unpickles: ``.pkl``/``.pickle`` names and files whose first byte is
    the pickle protocol opcode ``0x80`` are refused, anything that is not a
    zip archive is refused, and the archive is read with
    ``allow_pickle=False`` (object arrays are refused).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    expected : Mapping[str, tuple], optional
        Name -> expected shape (a tuple of ints; ``()`` for a scalar), or
        name -> tuple of allowed shapes.  When given, the file must hold
        exactly these names with these shapes, and each must be floating point.
    who : str
        Prefix of error messages, e.g. the public function calling this.

    Returns
    -------
    arrays : dict[str, numpy.ndarray]
        Name -> host array, in file order; metadata members excluded.
    metadata : dict[str, str]
        Metadata with the ``"__meta__."`` prefix removed.

    Raises
    ------
    ValueError
        Pickle file; not a zip; corrupt or truncated archive; object arrays;
        bad metadata members; with ``expected``: missing names, unexpected
        names and shape mismatches, all reported in one message.
    TypeError
        Non-numeric arrays; with ``expected``: non-floating arrays.
    """
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    metadata: dict[str, str] = {}
    with _open_npz(path, who) as npz:
        for key in npz.files:
            arr = _read_member(npz, key, path, who)
            if key.startswith(META_PREFIX):
                if arr.ndim != 0 or arr.dtype.kind != "U":
                    raise ValueError(
                        f"{who}: {path}: metadata member {key!r}: expected a 0-d unicode array; "
                        f"got {arr.dtype} with shape {arr.shape}"
                    )
                metadata[key[len(META_PREFIX):]] = str(arr[()])
                continue
            if arr.dtype.kind not in _NUMERIC_KINDS:
                raise TypeError(f"{who}: {path}: array {key!r}: expected a numeric dtype; got {arr.dtype}")
            arrays[key] = arr

    if expected is not None:
        _check_expected(arrays, _normalize_expected(expected), path, who)
    return arrays, metadata


def _check_expected(arrays, expected, path, who):
    def fmt(shapes):
        return " or ".join(str(s) for s in shapes)

    problems = []
    missing = [name for name in expected if name not in arrays]
    unexpected = [name for name in arrays if name not in expected]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    mismatched = [
        f"{name} expected {fmt(shapes)}, got {arrays[name].shape}"
        for name, shapes in expected.items()
        if name in arrays and arrays[name].shape not in shapes
    ]
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"{who}: {path}: arrays do not match the model: " + " | ".join(problems))
    not_float = [f"{name} is {arrays[name].dtype}" for name in expected if arrays[name].dtype.kind != "f"]
    if not_float:
        raise TypeError(f"{who}: {path}: expected floating-point parameters; got " + ", ".join(not_float))
