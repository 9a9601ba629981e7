"""The restricted reader of the book's parameter pickles: what it admits, what it refuses.

Files of the book's kind (``pickle.dump(params, f)`` of a dict of float64 arrays) are
made here with NumPy and pickle, in NumPy 2's form and in NumPy 1's (``numpy.core``),
for protocols 2 to 5. Planted payloads must be refused with nothing run: a sentinel
file that the payload would create must not exist afterwards.
"""
import os
import pickle
import pickletools
import sys

import numpy as np
import pytest

import xpconv
from tests.helpers import peak_traced_bytes
from xpconv import cli
from xpconv.serialization import load_arrays

try:                                       # where NumPy's pickling helpers live: NumPy 2, then 1
    from numpy._core import multiarray as np_multiarray, numeric as np_numeric
except ImportError:
    from numpy.core import multiarray as np_multiarray, numeric as np_numeric

PROTOCOLS = [2, 3, 4, 5]
TINY = dict(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
            hidden_size=5, output_size=3)


def book_params(seed=0):
    """What the book's SimpleConvNet.save_params pickles, for the TINY network."""
    rng = np.random.default_rng(seed)
    shapes = {"W1": (3, 1, 3, 3), "b1": (3,), "W2": (27, 5), "b2": (5,), "W3": (5, 3), "b3": (3,)}
    return {k: rng.standard_normal(s) for k, s in shapes.items()}


def numpy1_form(data: bytes) -> bytes:
    """The same pickle as NumPy 1 writes it: ``numpy.core.*`` instead of ``numpy._core.*``.

    Protocols 4 and 5 frame the stream; frames are optional, so they are dropped
    first and the length-prefixed module names can change length.
    """
    frames = [pos for op, _, pos in pickletools.genops(data) if op.name == "FRAME"]
    for pos in reversed(frames):
        data = data[:pos] + data[pos + 9:]
    for new, old in ((b"numpy.core.multiarray", b"numpy._core.multiarray"),
                     (b"numpy.core.numeric", b"numpy._core.numeric")):
        data = data.replace(bytes([0x8C, len(old)]) + old, bytes([0x8C, len(new)]) + new)  # protocol 4, 5
        data = data.replace(b"c" + old + b"\n", b"c" + new + b"\n")                         # GLOBAL, 2, 3
    assert b"numpy._core" not in data
    return data


def write_pickle(path, obj, protocol=pickle.DEFAULT_PROTOCOL, form="numpy2", **kwargs):
    data = pickle.dumps(obj, protocol=protocol, **kwargs)
    path.write_bytes(numpy1_form(data) if form == "numpy1" else data)
    return path


@pytest.mark.parametrize("form", ["numpy2", "numpy1"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_book_pickle_loads_into_the_network(tmp_path, protocol, form):
    params = book_params()
    path = write_pickle(tmp_path / "params.pkl", params, protocol, form)
    if form == "numpy1":   # control: the rewritten file is still a valid pickle of the same arrays
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            again = pickle.loads(path.read_bytes())
        assert all(np.array_equal(again[k], v) for k, v in params.items())
    net = xpconv.SimpleConvNet(**TINY, dtype="float64", seed=1).load_params(path)
    for k, v in params.items():
        np.testing.assert_array_equal(xpconv.to_numpy(net.params[k]), v)
    net32 = xpconv.SimpleConvNet(**TINY, seed=1).load_params(path)
    assert net32.params["W1"].dtype == np.float32


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dtypes_orders_scalars_round_trip(tmp_path, protocol):
    rng = np.random.default_rng(3)
    values = {
        "f16": rng.standard_normal((2, 3)).astype(np.float16),
        "f32": rng.standard_normal(4).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
        "big_endian": rng.standard_normal(5).astype(">f8"),
        "strided": rng.standard_normal((4, 4))[::2, ::-1],
        "empty": np.zeros((0, 3)),
        "zero_d": np.array(1.5),
        "scalar": np.float64(-2.0),
    }
    arrays, meta = load_arrays(write_pickle(tmp_path / "p.pkl", values, protocol))
    assert meta == {} and list(arrays) == list(values)
    for k, v in values.items():
        assert arrays[k].dtype == np.asarray(v).dtype.newbyteorder("=") and arrays[k].dtype.isnative
        np.testing.assert_array_equal(arrays[k], v)
        assert arrays[k].flags.writeable
    assert arrays["fortran"].flags.f_contiguous


def test_protocol5_out_of_band_buffers_are_refused(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(book_params(), protocol=5, buffer_callback=lambda b: False))
    with pytest.raises(ValueError, match="refused"):
        load_arrays(path)


def test_converts_on_the_command_line(tmp_path, capsys):
    src = write_pickle(tmp_path / "params.pkl", book_params(), 4, "numpy1")
    dst = tmp_path / "params.npz"
    assert cli.main(["convert", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "params.npz" in out and "6 arrays" in out
    with np.load(dst, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["W2"], book_params()["W2"])
    net = xpconv.SimpleConvNet(**TINY, dtype="float64", seed=1).load_params(dst)
    np.testing.assert_array_equal(xpconv.to_numpy(net.params["b3"]), book_params()["b3"])


def test_convert_failures_are_one_line(tmp_path, capsys):
    bad = write_pickle(tmp_path / "bad.pkl", {"W1": np.arange(3)})
    assert cli.main(["convert", str(bad), str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xpconv convert: error:") and "'i8'" in err
    assert not (tmp_path / "out.npz").exists()
    good = write_pickle(tmp_path / "good.pkl", book_params())
    assert cli.main(["convert", str(good), str(good)]) == 1
    assert "same file" in capsys.readouterr().err
    assert good.read_bytes()[:1] == b"\x80"


# ----------------------------------------------------------------- planted payloads


class SystemCall:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class FakeArray:
    """Pickles as NumPy's own array recipe, with whatever state it is given."""

    def __init__(self, state, subtype=np.ndarray):
        self.state, self.subtype = state, subtype

    def __reduce__(self):
        return (np_multiarray._reconstruct, (self.subtype, (0,), b"b"), self.state)


class FromBuffer:
    """Pickles as protocol 5's ``_frombuffer(data, dtype, shape, order)``."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (np_numeric._frombuffer, self.args)


class PlainObject:
    """Pickled by protocols 2+ with NEWOBJ (an instance built from its class) and BUILD."""

    def __init__(self):
        self.weights = [1.0, 2.0]


@pytest.fixture
def sentinel(tmp_path):
    return tmp_path / "sentinel"


def touch(sentinel):
    return SystemCall(f"touch {sentinel}")


@pytest.mark.skipif(sys.platform == "win32", reason="the payload uses the POSIX touch command")
def test_the_payload_is_live(sentinel):
    """Control: unpickling the payload with pickle really runs the command."""
    pickle.loads(pickle.dumps(touch(sentinel)))
    assert sentinel.exists()


def _payloads(sentinel):
    f8 = np.dtype("f8")
    return {
        "system-call": touch(sentinel),
        "nested-in-dict": {**book_params(), "b9": touch(sentinel)},
        "nested-deeper": {"W1": np.ones(2), "b1": [{"x": (touch(sentinel),)}]},
        "in-array-state": {"W1": FakeArray((1, (1,), f8, False, touch(sentinel)))},
        "object-array": {"W1": np.array([1.0, None], dtype=object)},
        "object-array-payload": {"W1": np.array([touch(sentinel)], dtype=object)},
        "unknown-global": {"W1": np.ones(2), "fn": print},
        "ordered-dict": __import__("collections").OrderedDict(W1=np.ones(2)),
        "subclass": {"W1": np.ones((1, 2)).view(np.recarray)},
        "other-subtype": {"W1": FakeArray((1, (1,), f8, False, b"\0" * 8), subtype=np.ma.MaskedArray)},
        "huge-shape": {"W1": FakeArray((1, (10**12,), f8, False, b"\0" * 8))},
        "huge-frombuffer": {"W1": FromBuffer(b"\0" * 8, f8, (10**6, 10**6), "C")},
        "negative-shape": {"W1": FakeArray((1, (-1,), f8, False, b""))},
        "many-dims": {"W1": FakeArray((1, (2**2000,) * 100, f8, False, b""))},
        "non-str-key": {1: np.ones(2)},
        "bytes-key": {b"W1": np.ones(2)},
        "empty-key": {"": np.ones(2)},
        "int-array": {"W1": np.arange(3)},
        "bool-array": {"W1": np.ones(3, bool)},
        "complex-array": {"W1": np.ones(3, complex)},
        "structured": {"W1": np.zeros(2, dtype=[("a", "f8")])},
        "not-a-dict": [np.ones(2)],
        "bare-array": np.ones(2),
        "value-not-array": {"W1": 1.0},
        "plain-object": {"W1": PlainObject()},
        "float-value": {"W1": 2.5},
    }


PAYLOADS = list(_payloads("x"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", PAYLOADS)
def test_planted_pickles_are_refused_and_never_run(tmp_path, sentinel, kind, protocol):
    path = write_pickle(tmp_path / "params.pkl", _payloads(sentinel)[kind], protocol)
    net, caught = xpconv.SimpleConvNet(**TINY, seed=0), []
    peak = peak_traced_bytes(lambda: caught.append(pytest.raises(ValueError, net.load_params, path)))
    info = caught[0]
    assert not sentinel.exists()
    msg = str(info.value)
    assert msg.startswith("SimpleConvNet.load_params") and str(path) in msg and "\n" not in msg
    assert peak < 8 << 20          # huge declared shapes are refused before anything is allocated


def test_refusals_name_what_was_found(tmp_path, sentinel):
    cases = {"system-call": "posix.system", "unknown-global": "builtins.print", "int-array": "'i8', False, True) (integer)",
             "huge-shape": "(1000000000000,)", "non-str-key": "names", "not-a-dict": "opcode EMPTY_LIST",
             "plain-object": "opcode NEWOBJ",
             "ordered-dict": "collections.OrderedDict", "object-array": "opcode EMPTY_LIST"}
    payloads = _payloads(sentinel)
    for kind, word in cases.items():
        path = write_pickle(tmp_path / f"{kind}.pkl", payloads[kind])
        with pytest.raises(ValueError) as info:
            load_arrays(path, who="load_params")
        if kind == "system-call" and os.name != "posix":
            word = "system"
        assert word in str(info.value), (kind, str(info.value))


def test_limits_and_damage(tmp_path):
    path = write_pickle(tmp_path / "p.pkl", book_params())
    with pytest.raises(ValueError, match="max_bytes"):
        load_arrays(path, max_bytes=1000)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="damaged"):
        load_arrays(path)
    path.write_bytes(b"\x80\x09" + b"\0" * 10)   # not a protocol that exists
    with pytest.raises(ValueError, match="first bytes"):
        load_arrays(path)


def test_number_of_opcodes_is_bounded(tmp_path, monkeypatch):
    import xpconv.serialization.book_pickle as book_pickle

    path = write_pickle(tmp_path / "p.pkl", book_params())
    load_arrays(path)
    monkeypatch.setattr(book_pickle, "MAX_OPCODES", 50)
    with pytest.raises(ValueError, match="more than 50 pickle opcodes"):
        load_arrays(path)


def test_nan_weights_load_with_a_warning(tmp_path):
    params = book_params()
    params["W2"][0, 0] = np.nan
    params["b3"][1] = np.inf
    path = write_pickle(tmp_path / "p.pkl", params)
    with pytest.warns(RuntimeWarning, match="W2, b3"):
        load_arrays(path)
