"""A restricted reader for the book's parameter pickles (``ch07/params.pkl``, ...).

The book saves parameters with ``pickle.dump(params, f)``: a dict of names
(``"W1"``, ``"b1"``, ...) to floating-point NumPy arrays. Unpickling such a file
with :mod:`pickle` can run any code the file names, so this module reads it the
way PyTorch's ``torch.load(weights_only=True)`` does: an
:class:`pickle.Unpickler` whose ``find_class`` hands out *only* the handful of
stand-ins below, never a real global.

What a pickled NumPy array is made of (NumPy 1 writes ``numpy.core.*``,
NumPy 2 ``numpy._core.*``; both are accepted)::

    _reconstruct(ndarray, (0,), b"b")  then BUILD (1, shape, dtype, is_fortran, data)
    _frombuffer(data, dtype, shape, order)          # protocol 5
    dtype("f8", False, True)            then BUILD (3, "<", None, None, None, -1, -1, 0)
    scalar(dtype, data)                              # a NumPy scalar such as np.float64(1.0)
    _codecs.encode(text, "latin1"), bytes()          # bytes, in protocol 2

Before anything is unpickled, the opcodes are listed (:func:`pickletools.genops`,
which builds nothing): only those such a file uses are allowed (no lists, no
instance-building ``INST``/``OBJ``/``NEWOBJ``, no extensions, persistent ids or
out-of-band buffers) and their number is bounded, so a small file cannot build a
huge number of Python objects. Then each stand-in checks its arguments and returns
an inert record: no NumPy object is built while unpickling. Only after the whole
file has been read is the result checked (a dict of non-empty ``str`` names to
real floating-point arrays, float16/32/64) and are the arrays built from the
records, with the total size bounded before any allocation.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import reprlib

import numpy as np

__all__ = ["read_book_pickle", "PICKLE_PROTOCOLS"]

#: Pickle protocols whose files start with the PROTO opcode ``0x80``.
PICKLE_PROTOCOLS = (2, 3, 4, 5)
_FLOAT_CODES = ("f2", "f4", "f8")          # how NumPy pickles float16/32/64 dtypes
_ENDIAN = ("<", ">", "=", "|")
_MAX_NDIM = 64                             # NumPy's own limit


#: The opcodes that pickles of a dict of NumPy arrays use (protocols 2 to 5).
_OPCODES = frozenset("""
    PROTO FRAME STOP MARK EMPTY_DICT DICT SETITEM SETITEMS EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3
    GLOBAL STACK_GLOBAL REDUCE BUILD MEMOIZE BINPUT LONG_BINPUT BINGET LONG_BINGET NONE NEWTRUE
    NEWFALSE BININT BININT1 BININT2 LONG1 BINUNICODE SHORT_BINUNICODE BINUNICODE8
    SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8
""".split())
#: At most this many opcodes (about 20 per array): bounds the Python objects a file can make.
MAX_OPCODES = 1 << 20


class _Refused(Exception):
    """Raised inside the unpickler; becomes a ValueError naming the file."""


class _DtypeRecord:
    """``numpy.dtype(code, align, copy)``, then its BUILD state (byte order)."""

    def __init__(self, code: str):
        self.dtype = np.dtype(code)        # code is one of _FLOAT_CODES: native byte order
        self._built = False

    def __setstate__(self, state):
        if self._built:
            raise _Refused("a dtype is given its state twice")
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in _ENDIAN
                and state[2:5] == (None, None, None) and state[5:] == (-1, -1, 0)):
            raise _Refused(f"expected the state of a plain floating dtype; got {_short(state)}")
        self._built = True
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _ArrayRecord:
    """An array's shape, dtype, memory order and raw bytes, checked but not yet built."""

    def __init__(self):
        self.shape = None                  # set by __setstate__ (or by _frombuffer/scalar)

    def set(self, shape, dtype, fortran, data):
        if not (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM
                and all(type(d) is int and 0 <= d < 2**63 for d in shape)):
            raise _Refused(f"expected an array shape (a tuple of at most {_MAX_NDIM} ints in 0..2**63-1); "
                           f"got {_short(shape)}")
        if not isinstance(dtype, _DtypeRecord):
            raise _Refused(f"expected a floating dtype; got {_short(dtype)}")
        if not isinstance(fortran, bool):
            raise _Refused(f"expected a bool memory order flag; got {_short(fortran)}")
        if not isinstance(data, (bytes, bytearray)):
            raise _Refused(f"expected the array's raw bytes; got {type(data).__name__}")
        nbytes = math.prod(shape) * dtype.dtype.itemsize
        if len(data) != nbytes:
            raise _Refused(f"an array declares shape {shape} {dtype.dtype.name} ({nbytes} bytes) "
                           f"but holds {len(data)} bytes")
        self.shape, self.dtype, self.fortran, self.data, self.nbytes = shape, dtype.dtype, fortran, data, nbytes

    def __setstate__(self, state):
        if self.shape is not None:
            raise _Refused("an array is given its state twice")
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise _Refused(f"expected an ndarray state (1, shape, dtype, is_fortran, data); got {_short(state)}")
        self.set(*state[1:])

    def build(self) -> np.ndarray:
        flat = np.frombuffer(self.data, dtype=self.dtype, count=math.prod(self.shape))
        return flat.reshape(self.shape, order="F" if self.fortran else "C").astype(
            self.dtype.newbyteorder("="), order="K", copy=True)


_NDARRAY = object()  # what find_class gives for numpy.ndarray: a marker, not the class


def _reconstruct(subtype, shape, tag):
    if subtype is not _NDARRAY or shape != (0,) or tag != b"b":
        raise _Refused(f"expected _reconstruct(numpy.ndarray, (0,), b'b'); got arguments "
                       f"{_short((subtype, shape, tag))}")
    return _ArrayRecord()


def _frombuffer(data, dtype, shape, order):
    if order not in ("C", "F"):
        raise _Refused(f"expected memory order 'C' or 'F'; got {_short(order)}")
    record = _ArrayRecord()
    record.set(shape, dtype, order == "F", data)
    return record


def _scalar(dtype, data):
    record = _ArrayRecord()
    record.set((), dtype, False, data)
    return record


_KINDS = {"b": "bool", "i": "integer", "u": "unsigned integer", "c": "complex", "f": "floating",
          "O": "Python objects", "U": "unicode", "S": "bytes", "V": "structured", "M": "datetime",
          "m": "timedelta"}


def _dtype(code, align=False, copy=False):
    if code not in _FLOAT_CODES or not isinstance(align, bool) or not isinstance(copy, bool):
        kind = _KINDS.get(code[:1], "unknown") if isinstance(code, str) else "unknown"
        raise _Refused(f"expected a float16/32/64 dtype ({', '.join(_FLOAT_CODES)}); got dtype"
                       f"{_short((code, align, copy))} ({kind})")
    return _DtypeRecord(code)


def _empty_bytes(*args):
    if args:
        raise _Refused(f"expected bytes() (empty data, protocol 2); got bytes{_short(args)}")
    return b""


def _encode(text, encoding):
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"expected _codecs.encode(str, 'latin1'); got {_short((text, encoding))}")
    return text.encode("latin1")


_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{(builtins, "bytes"): _empty_bytes for builtins in ("builtins", "__builtin__")},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _GLOBALS[module, name]
        except (KeyError, TypeError):
            raise _Refused(f"it names {module}.{name}, which is not one of the NumPy array "
                           "pieces this reader allows") from None

    def persistent_load(self, pid):
        raise _Refused("it refers to persistent objects")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxstring, _REPR.maxother = 3, 6, 40, 40


def _check_opcodes(data: bytes) -> None:
    """Refuse opcodes outside :data:`_OPCODES`, and more than :data:`MAX_OPCODES` of them."""
    count = 0
    for op, _, pos in pickletools.genops(data):
        if op.name not in _OPCODES:
            raise _Refused(f"it uses the pickle opcode {op.name} at byte {pos}; a pickle of a dict of "
                           "float arrays never does (lists, objects and object arrays are refused)")
        count += 1
        if count > MAX_OPCODES:
            raise _Refused(f"it has more than {MAX_OPCODES} pickle opcodes (MAX_OPCODES)")


def _short(obj) -> str:
    """A bounded repr of untrusted data (no deep recursion, no long strings)."""
    return _REPR.repr(obj)


def read_book_pickle(path: str | os.PathLike, *, who: str, max_bytes: int) -> dict[str, np.ndarray]:
    """Read a pickled dict of name -> floating NumPy array without running code.

    Args:
        path: a pickle of protocol 2 to 5 (first byte ``0x80``), e.g. the book's
            ``ch07/params.pkl``.
        who: the public function, used as the prefix of error messages.
        max_bytes: refuse a file, or a total of array data, larger than this.

    Returns:
        ``{name: array}`` in file order; native byte order, writable copies.

    Raises:
        ValueError: the file holds anything else (other globals, objects, object or
            integer arrays, non-str names, a non-dict), is damaged, or is too large.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{who}: {path}: the file has {size} bytes, more than the limit of "
                         f"{max_bytes} bytes (max_bytes)")
    with open(path, "rb") as f:
        data = f.read(size + 1)            # not max_bytes + 1: read(n) allocates n bytes first
    if len(data) > min(size, max_bytes):
        raise ValueError(f"{who}: {path}: the file changed while it was read")
    if data[:1] != b"\x80" or len(data) < 2 or data[1] not in PICKLE_PROTOCOLS:
        raise ValueError(f"{who}: {path}: expected a pickle of protocol 2 to 5 (first bytes 0x80 0x02..0x05); "
                         f"got first bytes {data[:2]!r}")
    refusal = f"{who}: {path}: refused to load this pickle (nothing in it was run)"
    try:
        _check_opcodes(data)
        result = _Unpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise ValueError(f"{refusal}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError) as exc:
        raise ValueError(f"{refusal}: it is damaged or not a plain pickle of arrays "
                         f"({type(exc).__name__}: {exc})") from None
    if type(result) is not dict:
        raise ValueError(f"{refusal}: expected a dict of name -> floating-point array; got "
                         f"{type(result).__name__}")
    total = 0
    for name, value in result.items():
        if type(name) is not str or not name:
            raise ValueError(f"{refusal}: expected non-empty str names; got {_short(name)}")
        if not isinstance(value, _ArrayRecord) or value.shape is None:
            raise ValueError(f"{refusal}: {name!r}: expected a floating-point NumPy array; got "
                             f"{'an unfinished array' if isinstance(value, _ArrayRecord) else type(value).__name__}")
        total += value.nbytes
    if total > max_bytes:
        raise ValueError(f"{who}: {path}: the arrays hold {total} bytes, more than the limit of "
                         f"{max_bytes} bytes (max_bytes)")
    return {name: record.build() for name, record in result.items()}
