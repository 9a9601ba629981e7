"""Reading untrusted ``.npz`` archives with every size known before any data is read.

An ``.npz`` is a zip of ``.npy`` members (``numpy.savez``). :class:`NpzReader`
lists the members from the zip's central directory, parses each member's ``.npy``
header (magic, dtype, shape: at most a few KiB decompressed) and checks, before
any array data is decompressed:

* the member is ``<name>.npy``, stored or deflated, not encrypted, not repeated;
* the dtype is a plain (non-object, non-structured) one;
* the zip's uncompressed size equals header + ``prod(shape) * itemsize``;
* the data still fits the caller's byte budget (``max_bytes``).

Data is then read in 1 MiB chunks into an array allocated once, so at most the
declared size (plus a chunk) is ever decompressed: zipfile stops at the size the
zip declares, and a member whose stream ends early or whose CRC does not match
is refused. Before that allocation the memory it needs is checked against the
memory available (:func:`xpconv.memory.require`).

A stored (uncompressed) member can instead be memory-mapped (``read(name,
mmap=True)``): the array is a read-only view of the file, whose pages the OS reads
when they are touched and shares between processes. ``read(name, rows=N)`` reads
only the first N entries of the first axis (a deflated member is decompressed only
that far).
"""
from __future__ import annotations

import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

from ..memory import format_bytes, require

__all__ = ["NpzReader", "NpyHeader"]

_CHUNK = 1 << 20
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_LOCAL_HEADER = struct.Struct("<4s22xHH")   # signature, ..., name length, extra length
# what a damaged archive raises from zipfile (NotImplementedError: an unknown "version
# needed" or compression; tokenize.TokenError: a damaged .npy header dict)
_DAMAGED = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, RuntimeError,
            NotImplementedError, struct.error, tokenize.TokenError)
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


@dataclass(frozen=True)
class NpyHeader:
    """What a member's ``.npy`` header declares, read without reading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int        # bytes of magic + header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _size(nbytes: int) -> str:
    """Bytes in words: ``8000000000000 bytes (7.3 TiB)``."""
    return f"{nbytes} bytes" + (f" ({format_bytes(nbytes)})" if nbytes >= 1 << 10 else "")


class NpzReader:
    """An ``.npz`` opened for checked, bounded reading; use as a context manager.

    Args:
        path: the archive.
        who: prefix of error messages (the public function).
        max_bytes: budget of array data that :meth:`read` may allocate in total.

    Attributes:
        names: member names without ``.npy``, in archive order.

    Raises:
        ValueError: not a zip archive; a member that is not ``<name>.npy``, is
            repeated, encrypted or compressed other than stored/deflated.
    """

    def __init__(self, path: str, *, who: str, max_bytes: int):
        self.path, self.who, self.budget = path, who, max_bytes
        try:
            self._zip = zipfile.ZipFile(path)
        except _DAMAGED as exc:
            raise self._error(f"not a readable .npz (zip) archive: {exc}") from None
        try:
            self._infos = self._members()
        except BaseException:
            self._zip.close()
            raise
        self.names = list(self._infos)
        self._headers: dict[str, NpyHeader] = {}

    def _members(self) -> dict[str, zipfile.ZipInfo]:
        infos = {}
        for info in self._zip.infolist():
            name = info.filename[:-4]
            if not info.filename.endswith(".npy") or not name:
                raise self._error(f"member {info.filename!r} is not a .npy array (expected <name>.npy)")
            if name in infos:
                raise self._error(f"member {info.filename!r} appears twice")
            if info.flag_bits & 0x1:
                raise self._error(f"member {info.filename!r} is encrypted")
            if info.compress_type not in _METHODS:
                raise self._error(f"member {info.filename!r}: expected a stored or deflated member; "
                                  f"got zip compression method {info.compress_type}")
            infos[name] = info
        return infos

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def _error(self, what: str) -> ValueError:
        return ValueError(f"{self.who}: {self.path}: {what}")

    def header(self, name: str) -> NpyHeader:
        """Parse and check member ``name``'s ``.npy`` header (reads only the header)."""
        if name not in self._headers:
            with self._open(name) as fp:
                self._headers[name] = self._parse_header(name, fp)
        return self._headers[name]

    def _open(self, name):
        try:
            return self._zip.open(self._infos[name])
        except _DAMAGED as exc:
            raise self._error(f"array {name!r} is corrupt or truncated: {exc}") from None

    def _parse_header(self, name: str, fp) -> NpyHeader:
        try:
            version = npy_format.read_magic(fp)
            if version not in _HEADER_READERS:
                raise ValueError(f"expected .npy format version 1.0 or 2.0; got {version[0]}.{version[1]}")
            shape, fortran_order, dtype = _HEADER_READERS[version](fp)
            data_offset = fp.tell()
        except (ValueError, SyntaxError, tokenize.TokenError, TypeError) as exc:
            raise self._error(f"array {name!r} has no valid .npy header: {exc}") from None
        except _DAMAGED as exc:
            raise self._error(f"array {name!r} is corrupt or truncated: {exc}") from None
        if dtype.hasobject:
            raise self._error(f"array {name!r} holds pickled Python objects (dtype {dtype}); it will not "
                              "be loaded (files are read without unpickling)")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise self._error(f"array {name!r}: expected a plain dtype; got the structured dtype {dtype}")
        header = NpyHeader(tuple(shape), dtype, bool(fortran_order), data_offset)
        declared = self._infos[name].file_size
        if declared != data_offset + header.nbytes:
            raise self._error(
                f"array {name!r} declares shape {header.shape} {dtype} ({_size(header.nbytes)} of data) "
                f"but the archive holds {_size(declared - data_offset)} for it")
        return header

    def check_budget(self, names: Collection[str]) -> None:
        """Refuse now if reading all of ``names`` would exceed the byte budget."""
        total = sum(self.header(name).nbytes for name in names)
        if total > self.budget:
            biggest = max(names, key=lambda n: self.header(n).nbytes)
            h = self.header(biggest)
            raise self._error(
                f"the arrays declare {_size(total)} of data (largest: {biggest!r}, shape {h.shape} {h.dtype}), "
                f"more than the limit of {_size(self.budget)} (max_bytes; raise it if you trust the file)")

    def is_stored(self, name: str) -> bool:
        """Whether member ``name`` is stored uncompressed (so it can be memory-mapped)."""
        return self._infos[name].compress_type == zipfile.ZIP_STORED

    def read(self, name: str, *, rows: int | None = None, mmap: bool = False) -> np.ndarray:
        """Read member ``name`` as an array, within the byte budget.

        Args:
            name: the member, without ``.npy``.
            rows: read only the first ``rows`` entries of the first axis (all: None).
            mmap: for a stored member, a read-only memory map of the file instead of a
                copy in memory (in the file's byte order); a deflated member is read.
        """
        header = self.header(name)
        shape = header.shape
        if rows is not None and shape and rows < shape[0]:
            shape = (rows, *shape[1:])
        if mmap and self.is_stored(name):
            return self._map(name, header)[:shape[0]] if shape else self._map(name, header)
        if header.fortran_order and shape != header.shape:   # the first rows are not contiguous
            return self.read(name)[:shape[0]]
        nbytes = math.prod(shape) * header.dtype.itemsize
        if nbytes > self.budget:
            self.check_budget([name])
        self.budget -= nbytes
        require(nbytes, who=self.who, what=f"{self.path}: array {name!r} {shape} {header.dtype}",
                hint="store it uncompressed (numpy.savez) so that it is memory-mapped" if not self.is_stored(name)
                else "")
        try:
            flat = np.empty(nbytes, dtype=np.uint8)
        except MemoryError:
            raise self._error(f"array {name!r}: not enough memory for {_size(nbytes)}") from None
        view = memoryview(flat)  # type: ignore[arg-type]  # numpy arrays are buffers
        try:
            with self._open(name) as fp:
                fp.read(header.data_offset)
                pos = 0
                while pos < nbytes:
                    chunk = fp.read(min(_CHUNK, nbytes - pos))
                    if not chunk:
                        raise EOFError(f"data ends after {pos} of {nbytes} bytes")
                    view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                if shape == header.shape and fp.read(1):   # zipfile stops at the declared size
                    raise ValueError("more data than its header declares")
        except _DAMAGED as exc:
            raise self._error(f"array {name!r} is corrupt or truncated: {exc}") from None
        arr = flat.view(header.dtype).reshape(shape, order="F" if header.fortran_order else "C")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr

    def _map(self, name: str, header: NpyHeader) -> np.ndarray:
        """A read-only memory map of stored member ``name``'s data (the whole array: a slice
        of its first rows is a view that reads only their pages, in C and in Fortran order).
        """
        info = self._infos[name]
        try:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                raise ValueError("no local file header where the central directory points")
            offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + header.data_offset
            if header.nbytes == 0:
                return np.empty(header.shape, dtype=header.dtype)
            return np.memmap(self.path, dtype=header.dtype, mode="r", offset=offset, shape=header.shape,
                             order="F" if header.fortran_order else "C")
        except _DAMAGED as exc:
            raise self._error(f"array {name!r} is corrupt or truncated: {exc}") from None
