"""Reader for the IDX file format used by MNIST.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element
type code, ``NN`` the number of dimensions), then ``NN`` big-endian uint32
dimension sizes, then the elements in C order, big-endian.  The file may be
gzip-compressed; compression is detected from the gzip magic bytes
``1f 8b``, never from the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

__all__ = ["read_idx", "parse_idx"]

#: IDX element type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        The file.  Gzip compression is detected from the first two bytes.

    Returns:
    -------
    numpy.ndarray
        A new, writable, native-endian array whose shape is the dimensions
        stored in the header and whose dtype follows the type code
        (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
        0x0E float64).

    Raises:
    ------
    ValueError
        If the gzip stream is corrupt, or the header or payload is not valid
        IDX (bad magic, unknown type code, zero dimensions, truncated or
        trailing bytes).  The message names the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return parse_idx(data, source=path)


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (gzip-compressed or raw).

    Parameters
    ----------
    data : bytes
        The file content.
    source : str
        Name used in error messages (usually the file path).

    Returns:
    -------
    numpy.ndarray
        See :func:`read_idx`.
    """
    where = f"read_idx: {source}"
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise ValueError(f"{where}: corrupt or truncated gzip stream ({exc})") from exc

    if len(data) < 4:
        raise ValueError(f"{where}: expected a 4-byte IDX magic number; got {len(data)} bytes in total")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{where}: expected magic starting with bytes 00 00; got {data[:4].hex(' ')}"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{where}: expected an element type code in ({known}); got 0x{code:02X}")
    if ndim < 1:
        raise ValueError(f"{where}: expected at least 1 dimension; got {ndim}")

    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{where}: truncated header: expected {header_size} bytes for {ndim} dimensions; "
            f"got {len(data)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header_size
    if got < expected:
        raise ValueError(
            f"{where}: truncated payload: expected {expected} bytes for shape {dims} of "
            f"{dtype.newbyteorder('=').name}; got {got} bytes"
        )
    if got > expected:
        raise ValueError(
            f"{where}: {got - expected} trailing bytes: expected {expected} payload bytes for "
            f"shape {dims} of {dtype.newbyteorder('=').name}; got {got} bytes"
        )
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_size)
    # astype copies: the result is writable and does not keep ``data`` alive.
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(dims)
