"""Networks as ordered layers: ``Sequential``, the base of every model in xpconv.

A network owns an ordered dict of layers and a loss layer. Its ``params`` mapping
is a *view* onto the layers' arrays: ``params["W1"]`` reads ``layers["Conv1"].W``,
and assigning ``params["W1"] = new`` rebinds it. So the book's optimizers, which do
``params[key] -= lr * grads[key]``, work in place on NumPy and by rebinding on
libraries whose arrays are immutable (JAX). The arrays themselves are views into one
flat buffer per dtype (``params.flat``), so that xpconv's optimizers update them all
with a handful of ops.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from .. import serialization
from .._kernels.checks import check_labels
from .._namespace import array_namespace, device as array_device, is_array
from .._typing import Array
from ..devices import Device, device as resolve_device, device_of, device_scope, dtype_name, is_host_numpy, to_numpy
from ..gradcheck import numerical_gradient as _numerical_gradient
from ..layers.loss import SoftmaxWithLoss
from . import microbatch as _microbatch
from .flat import FlatGroup, by_dtype, layout_key, shares_views

# (array attribute, gradient attribute) of layers that learn
_PARAM_ATTRS = (("W", "dW"), ("b", "db"), ("gamma", "dgamma"), ("beta", "dbeta"))
# arrays a layer keeps that are state but not learned (saved and moved with the model)
_BUFFER_ATTRS = ("running_mean", "running_var")


class Parameters(MutableMapping):
    """Name -> array view of the layers' learnable arrays, kept in one flat buffer per dtype.

    ``params[name]`` is the layer's array (``layers["Conv1"].W``). Setting an entry
    checks that the value is an array of the model's library, device, dtype and shape
    (``TypeError``/``ValueError`` naming the entry otherwise) and rebinds the layer's
    attribute.

    Where the library has views that share memory (NumPy, CuPy, torch, array-api-strict),
    the arrays are views into one 1-D buffer per dtype (:attr:`flat`), so an optimizer
    updates every parameter with a handful of ops on the buffer. An array assigned since
    (``params[name] = a``, ``load_params``) is copied into the buffer at the next use of
    :attr:`flat`, and the layer gets its view back. JAX (immutable arrays) keeps
    separate arrays and ``flat`` is None.
    """

    def __init__(self, bindings: OrderedDict[str, tuple[object, str, str]]):
        self._bindings = bindings  # name -> (layer, attr, grad_attr)
        self._groups: tuple[FlatGroup, ...] | None = None   # once packed; None: separate arrays

    def __getitem__(self, name):
        layer, attr, _ = self._binding(name)
        return getattr(layer, attr)

    def __setitem__(self, name, value):
        layer, attr, _ = self._binding(name)
        _check_assignment(f"params[{name!r}]", getattr(layer, attr), value)
        setattr(layer, attr, value)

    def __delitem__(self, name):
        raise TypeError("params: parameters belong to layers and cannot be deleted")

    def __iter__(self):
        return iter(self._bindings)

    def __len__(self):
        return len(self._bindings)

    def __repr__(self):
        return "Parameters(" + ", ".join(f"{k}: {tuple(self[k].shape)}" for k in self) + ")"

    @property
    def flat(self) -> tuple[FlatGroup, ...] | None:
        """The parameters as 1-D buffers, one :class:`~xpconv.network.flat.FlatGroup` per dtype.

        ``group.views[name]`` is ``params[name]``; updating ``group.buffer`` in place
        updates the layers. Arrays rebound since the last call are copied into their
        slices first (one op each). None where the library has no shared views (JAX),
        where two entries are one array (tied weights), or where the arrays are not in
        one library and device.
        """
        current = self._current()
        groups = self._groups
        if groups is None:
            return None
        for group in groups:
            for name in group.names:
                value = current[name]
                if value is group.views[name]:
                    continue
                if _layout_key((name,), value) != _layout_key((name,), group.views[name]):
                    return self.pack()        # rebound around the checks: start over
                group.store(name, value)
                layer, attr, _ = self._bindings[name]
                setattr(layer, attr, group.views[name])
        return groups

    def pack(self) -> tuple[FlatGroup, ...] | None:
        """(Re)build the flat buffers from the layers' current arrays and bind the views."""
        current = self._current()
        values = list(current.values())
        first = values[0]
        xp, dev = array_namespace(first), array_device(first)
        if (not shares_views(first) or len({id(v) for v in values}) < len(values)
                or any(array_namespace(v) is not xp or array_device(v) != dev for v in values)):
            self._groups = None
            return None
        with device_scope(first):
            self._groups = tuple(FlatGroup.pack(arrays) for arrays in by_dtype(current))
        for group in self._groups:
            for name, view in group.views.items():
                layer, attr, _ = self._bindings[name]
                setattr(layer, attr, view)
        return self._groups

    def _current(self) -> dict:
        return {name: getattr(layer, attr) for name, (layer, attr, _) in self._bindings.items()}

    def _binding(self, name):
        try:
            return self._bindings[name]
        except KeyError:
            raise KeyError(f"params: no parameter {name!r}; have {list(self._bindings)}") from None


def _layout_key(names, a):
    return layout_key(names, [tuple(a.shape)], a)


def _describe(value) -> str:
    """"a float32 torch array of shape (2, 3) on cpu", or "a list"."""
    if not is_array(value):
        return f"a {type(value).__name__}"
    return (f"a {dtype_name(value)} {type(value).__module__.split('.')[0]} array of shape "
            f"{tuple(value.shape)} on {array_device(value)}")


def _check_assignment(who: str, old, value) -> None:
    """``value`` may replace ``old``: same library, dtype, device and shape."""
    expected, got = _describe(old), _describe(value)
    if not is_array(value) or array_namespace(value) is not array_namespace(old):
        raise TypeError(f"{who}: expected {expected}; got {got}. Put it on the model's device "
                        f"first: net.device.asarray(xpconv.to_numpy(value), dtype={dtype_name(old)!r})")
    if value.dtype != old.dtype:
        raise TypeError(f"{who}: expected {expected}; got {got}. Cast it first, e.g. "
                        f"xp.astype(value, xp.{dtype_name(old)})")
    if array_device(value) != array_device(old):
        raise ValueError(f"{who}: expected {expected}; got {got}. Move it to {array_device(old)} "
                         f"first -- xpconv never transfers silently")
    if tuple(value.shape) != tuple(old.shape):
        raise ValueError(f"{who}: expected {expected}; got {got}")


class Sequential:
    """Layers applied in order, then a loss layer; the book's network interface.

    Args:
        layers: ``[(name, layer), ...]`` or an ordered dict; each layer has
            ``forward``/``backward`` (``forward(x, train_flg)`` for Dropout and
            BatchNormalization).
        last_layer: loss layer with ``forward(y, t)``/``backward()``
            (default ``SoftmaxWithLoss()``).
        param_names: optional ``{name: (layer_name, attr)}`` to name parameters as
            the book does (``"W1": ("Conv1", "W")``); by default ``"<layer>.<attr>"``.

    Every learnable array (``W``, ``b``, ``gamma``, ``beta``) must live on one device;
    ``device`` is taken from them. Inputs given as host NumPy arrays are moved there.

    >>> net = Sequential([("Affine1", Affine(W, b)), ("Relu1", Relu())])   # doctest: +SKIP
    >>> grads = net.gradient(x, t)                                          # doctest: +SKIP
    """

    def __init__(self, layers: Iterable[tuple[str, Any]] | Mapping[str, Any], last_layer: Any = None, *,
                 param_names: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.layers = OrderedDict(layers)
        self.last_layer = SoftmaxWithLoss() if last_layer is None else last_layer
        self._bindings = OrderedDict()
        if param_names is None:
            for lname, layer in self.layers.items():
                for attr, gattr in _PARAM_ATTRS:
                    if is_array(getattr(layer, attr, None)):
                        self._bindings[f"{lname}.{attr}"] = (layer, attr, gattr)
        else:
            grad_of = dict(_PARAM_ATTRS)
            for name, (lname, attr) in param_names.items():
                self._bindings[name] = (self.layers[lname], attr, grad_of[attr])
        self.params = Parameters(self._bindings)
        if not len(self.params):
            raise ValueError(f"{type(self).__name__}: no layer has learnable arrays (W, b, gamma, beta)")
        self.device = self._find_device()
        self.params.pack()   # the layers' arrays become views into one buffer per dtype

    # ------------------------------------------------------------------ the book's API
    def predict(self, x: Array, train_flg: bool = False) -> Array:
        """Scores before the loss: (N, ...) -> (N, classes); one sample (C, H, W) -> (classes,).
        Input by the rule of :meth:`_input` (uint8 scaled by 1/255, host data moved).
        """
        single = self._is_single(x)
        x = self._input(x)
        with device_scope(x):
            for layer in self.layers.values():
                x = layer.forward(x, train_flg) if _takes_train_flg(layer) else layer.forward(x)
        return x[0, ...] if single else x

    def predict_proba(self, x: Array) -> Array:
        """Class probabilities ``softmax(predict(x))``: x (N, C, H, W) -> (N, K); one sample
        (C, H, W) -> (K,).
        """
        from ..layers.loss import softmax
        return softmax(self.predict(x))

    def predict_classes(self, x: Array) -> Array:
        """The most likely class, ``argmax(predict(x))``: x (N, C, H, W) -> (N,) integers; one
        sample (C, H, W) -> a 0-d array.
        """
        y = self.predict(x)
        return array_namespace(y).argmax(y, axis=-1)

    def _is_single(self, x) -> bool:
        channels = self._input_channels()
        ndim = len(x.shape) if hasattr(x, "shape") else len(to_numpy(x).shape)
        return channels is not None and (ndim == 3 or (ndim == 2 and channels == 1))

    def loss(self, x: Array, t: Array, train_flg: bool = True) -> Array:
        """Mean loss of the batch, a 0-d array; ``t`` by the label rule of ``accuracy``."""
        y = self.predict(x, train_flg)
        if isinstance(self.last_layer, SoftmaxWithLoss):   # class labels: checked on the host
            t = self._labels(f"{type(self).__name__}.loss", t, y.shape[0], y.shape[-1])
        elif not is_array(t) or is_host_numpy(t):  # another loss: its own rule
            t = self.device.asarray(t)
        return self.last_layer.forward(y, t)

    def accuracy(self, x: Array, t: Array, batch_size: int = 100) -> float:
        """Fraction of the N samples whose highest score is their label's class.

        Every sample counts, also those of a last partial batch. Labels follow one rule:
        integer labels of shape (N,) or (N, 1) in 0..K-1, or (N, K) one-hot targets (their
        argmax). Host data (NumPy arrays, lists) is moved to the model's device once;
        correct predictions are counted there and read back once. On host NumPy, the
        workers of ``xpconv.set_num_threads`` predict a batch each (``xpconv.network.microbatch``).
        """
        who = f"{type(self).__name__}.accuracy"
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{who}: expected batch_size to be an int >= 1; got {batch_size!r}")
        host_labels = not is_array(t) or is_host_numpy(t)
        # 8-bit host images (a memory map, say) are scaled one batch at a time, never whole
        x = x if _is_host_uint8_batch(x) else self._input(x)
        n = x.shape[0]
        if n == 0:
            raise ValueError(f"{who}: got an empty batch")
        xp, correct, outside = self.device.xp, 0, 0
        batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        for (start, stop), y in zip(batches, _microbatch.predictions(self, x, batches)):
            k = y.shape[-1]
            if start == 0:                             # K is known: check the labels once, move once
                t = self._labels(who, t, n, k)
            with device_scope(y):
                tt = t[start:stop, ...]
                if tt.ndim == 2:
                    tt = xp.argmax(tt, axis=1)
                correct = correct + xp.sum(xp.astype(xp.argmax(y, axis=1) == tt, xp.int64))
                if not host_labels:                    # unchecked device labels: count those outside
                    outside = outside + xp.sum(xp.astype((tt < 0) | (tt >= k), xp.int64))
        with device_scope(y):                          # one read-back for the whole set
            counts = [int(v) for v in to_numpy(xp.stack([correct] if host_labels else [correct, outside]))]
        if counts[1:] and counts[1]:
            raise ValueError(f"{who}: expected class labels t in 0..{k - 1} (K={k} classes); "
                             f"{counts[1]} of {n} labels are outside")
        return counts[0] / n

    def gradient(self, x: Array, t: Array) -> dict[str, Array]:
        """Gradients of ``loss(x, t)`` by backpropagation: ``{name: array like params[name]}``.

        On host NumPy a batch of more than 64 samples goes through the network in equal
        micro-batches (``xpconv.network.microbatch``; the workers of ``xpconv.set_num_threads``
        take them), when every layer treats each sample on its own: the same gradients
        up to rounding, bit-identical for every thread count. The layers get the summed
        gradients (``dW``, ``db``) and ``last_layer.loss`` the batch's mean loss; their
        caches (``x``, masks) are then the micro-batches', not the network's layers'.
        """
        x = self._input(x)
        if _microbatch.applies(self, x):
            t = self._labels(f"{type(self).__name__}.gradient", t, x.shape[0], None)
            return _microbatch.gradient(self, self._bindings, x, t)
        with _microbatch.one_pass(x):   # BLAS at one thread for a small pass (xpconv.threads)
            self.loss(x, t, train_flg=True)
            dout = self.last_layer.backward()
            for layer in reversed(self.layers.values()):
                dout = layer.backward(dout)
        return {name: getattr(layer, gattr) for name, (layer, _, gattr) in self._bindings.items()}

    def numerical_gradient(self, x: Array, t: Array, eps: float = 1e-4) -> dict[str, Array]:
        """Gradients of ``loss(x, t)`` by central differences, in float64 whatever the dtype.

        The loss is evaluated on a float64 copy of every parameter and buffer and of
        ``x`` (as the model sees it: a float32 model's ``x`` is rounded to float32
        first, as in ``gradient``), on the model's device. So the differences carry
        float64 rounding, not float32's, whose error ``~1e-7 * |loss| / eps`` would be
        as large as the gradients themselves. The model is left exactly as it was
        (running statistics included). Costs two forward passes per parameter element:
        meant for checking small models (the book's ``gradient_check.py``).

        Returns:
            ``{name: float64 array of params[name]'s shape, on the model's device}``.
        """
        who = f"{type(self).__name__}.numerical_gradient"
        xp = self.device.xp
        originals = [(layer, attr, getattr(layer, attr)) for layer, attr in self._arrays()]
        grads = {}
        try:
            with self.device.scope():                  # CuPy: the copies on the model's GPU
                for layer, attr, value in originals:
                    setattr(layer, attr, xp.astype(value, xp.float64))
                x = xp.astype(self._input(x), xp.float64)
            t = self._labels(who, t, x.shape[0], self.predict(x).shape[-1])
            for name, (layer, attr, _) in self._bindings.items():
                base = getattr(layer, attr)

                def loss_at(w, layer=layer, attr=attr):
                    setattr(layer, attr, w)
                    return self.loss(x, t, train_flg=True)

                grads[name] = _numerical_gradient(loss_at, base, eps=eps)
                setattr(layer, attr, base)
        finally:
            for layer, attr, value in originals:
                setattr(layer, attr, value)
        return grads

    # ------------------------------------------------------------------ devices and files
    def to(self, spec: str | Device) -> Sequential:
        """Move every parameter and buffer to ``spec`` (a spec string or Device); returns self."""
        target = resolve_device(spec)
        for layer, attr in self._arrays():
            value = getattr(layer, attr)
            setattr(layer, attr, target.asarray(to_numpy(value), dtype=dtype_name(value)))
        self.device = target
        self.params.pack()
        return self

    def state_arrays(self) -> dict:
        """Host copies of every parameter and buffer, by name (what ``save_params`` writes).

        Copies, never views of the model's memory: later training does not change them.
        """
        out = {name: to_numpy(self.params[name]).copy() for name in self.params}
        out.update((key, to_numpy(getattr(layer, attr)).copy()) for key, layer, attr in self._buffers())
        return out

    def save_params(self, path: str | os.PathLike = "params.pkl") -> None:
        """Write parameters (and buffers) to ``path`` as an ``.npz`` of host arrays (the
        book's default name, ``params.pkl``, holds an ``.npz`` too: loading goes by content).

        The file is written to a temporary name and renamed, so an existing file is
        never left half-written. Load it on any device with ``load_params``.
        """
        import json

        from ..model_io import architecture
        metadata = {"format": "xpconv-params", "version": "1", "model": type(self).__name__}
        arch = architecture(self)
        if arch is not None:           # load_model rebuilds the network from the file alone
            metadata["architecture"] = json.dumps(arch)
        names = getattr(self, "class_names", None)
        if names:
            metadata["classes"] = json.dumps([str(c) for c in names])
        serialization.save_arrays(path, self.state_arrays(), metadata=metadata)

    def load_params(self, path: str | os.PathLike = "params.pkl") -> Sequential:
        """Read parameters saved by ``save_params`` (from any device) onto this model's device.

        Names and shapes must match this model. The file's content decides how it is read:
        an ``.npz`` under any name, or the book's ``params.pkl`` through a restricted reader
        that never runs code (see ``xpconv.serialization.load_arrays``).
        """
        arrays, _ = serialization.load_arrays(
            path, expected={key: tuple(getattr(layer, attr).shape) for key, layer, attr in self._slots()},
            who=f"{type(self).__name__}.load_params")
        return self.load_state_arrays(arrays)

    def load_state_arrays(self, arrays: dict, *, who: str | None = None) -> Sequential:
        """Set every parameter and buffer from host arrays named as :meth:`state_arrays`
        names them (the inverse of ``state_arrays``), on this model's device and dtypes.

        Raises:
            ValueError: a name missing or extra, or a shape that differs.
        """
        who = who or f"{type(self).__name__}.load_state_arrays"
        slots = self._slots()
        names = {key for key, _, _ in slots}
        if set(arrays) != names:
            raise ValueError(f"{who}: the arrays do not fit this model: missing {sorted(names - set(arrays))}, "
                             f"extra {sorted(set(arrays) - names)}")
        for key, layer, attr in slots:
            if tuple(arrays[key].shape) != tuple(getattr(layer, attr).shape):
                raise ValueError(f"{who}: {key} has shape {tuple(arrays[key].shape)}; this model's is "
                                 f"{tuple(getattr(layer, attr).shape)}")
        for key, layer, attr in slots:   # params[...] = ... would do the same for parameters
            current = getattr(layer, attr)
            setattr(layer, attr, self.device.asarray(arrays[key], dtype=dtype_name(current)))
        return self

    def _slots(self) -> list:
        """("<name>", layer, attr) of every parameter and buffer."""
        return ([(name, layer, attr) for name, (layer, attr, _) in self._bindings.items()]
                + list(self._buffers()))

    # ------------------------------------------------------------------ helpers
    def _arrays(self) -> Iterable[tuple[object, str]]:
        """(layer, attribute) of every parameter and buffer."""
        yield from ((layer, attr) for layer, attr, _ in self._bindings.values())
        yield from ((layer, attr) for _, layer, attr in self._buffers())

    def _buffers(self) -> Iterable[tuple[str, object, str]]:
        """("<layer>.<attr>", layer, attr) of every buffer (state saved but not learned)."""
        for lname, layer in self.layers.items():
            for attr in _BUFFER_ATTRS:
                if is_array(getattr(layer, attr, None)):
                    yield f"{lname}.{attr}", layer, attr

    def _find_device(self) -> Device:
        first_name, first = next(iter(self.params.items()))
        for name, value in self.params.items():
            if array_namespace(value) is not array_namespace(first) or array_device(value) != array_device(first):
                raise ValueError(f"{type(self).__name__}: parameter {name!r} is on {_place(value)} "
                                 f"but the first parameter, {first_name!r}, is on {_place(first)}; "
                                 f"put all on one device (e.g. model.to('cpu'))")
        return device_of(first)

    def _input(self, x):
        """The model's input, by one rule everywhere (predict, loss, accuracy, gradient).

        The rule:

        * host data (NumPy, lists) moves to the model's device in the model's dtype; an
          array of another library is shared through DLPack where the device allows
          (``Device.asarray``); arrays of this library must be on this device;
        * 8-bit images (uint8) become ``x / 255`` in the model's dtype, as the data
          loaders scale them; other dtypes are taken as they are;
        * a model whose first layer is a convolution takes one sample ``(C, H, W)`` (or
          ``(H, W)`` for one channel) as a batch of one; channels-last data
          ``(N, H, W, C)`` is refused with a message that says how to transpose it.
        """
        dtype = dtype_name(next(iter(self.params.values())))
        host = not is_array(x) or is_host_numpy(x)
        if host or array_namespace(x) is not self.device.xp:
            is_uint8 = hasattr(x, "dtype") and dtype_name(x) == "uint8"
            x = self.device.asarray(x) if is_uint8 else self.device.asarray(x, dtype=dtype)
        else:
            self._check_on_device(x, "x")
        x = self._as_batch(x)
        if dtype_name(x) == "uint8":
            xp = array_namespace(x)
            with device_scope(x):
                x = xp.astype(x, self.device.dtype(dtype))
                return x / xp.asarray(255.0, dtype=x.dtype, device=array_device(x))
        return x

    def _input_channels(self) -> int | None:
        """C of the (N, C, H, W) input when the first layer is a convolution, else None."""
        first = next(iter(self.layers.values()))
        W = getattr(first, "W", None)
        if W is None or len(W.shape) != 4:
            return None
        return int(W.shape[1]) * int(getattr(first, "groups", 1))

    def _as_batch(self, x):
        """One (C, H, W) or (H, W) sample as a batch of one; channels-last refused."""
        channels = self._input_channels()
        if channels is None:
            return x
        xp = array_namespace(x)
        if len(x.shape) == 2 and channels == 1:
            return xp.reshape(x, (1, 1, *x.shape))
        if len(x.shape) == 3:
            if x.shape[0] != channels and x.shape[-1] == channels:
                raise ValueError(f"{type(self).__name__}: x of shape {tuple(x.shape)} looks channels-last "
                                 f"(H, W, C); the model takes (C, H, W) with C={channels}: transpose it "
                                 f"(x.transpose(2, 0, 1))")
            return xp.reshape(x, (1, *x.shape))
        if len(x.shape) == 4 and x.shape[1] != channels and x.shape[-1] == channels:
            raise ValueError(f"{type(self).__name__}: x of shape {tuple(x.shape)} looks channels-last "
                             f"(N, H, W, C); the model takes (N, C, H, W) with C={channels}: transpose it "
                             f"(x.transpose(0, 3, 1, 2), or xpconv train --channels-last)")
        return x

    def _labels(self, who, t, n, k):
        """Class labels by the one rule (``check_labels``), normalized, on the model's device.

        Host data (NumPy, lists) is checked on the host, values included, and then moved;
        labels already on the device are checked by shape and dtype only (no sync).
        """
        if not is_array(t):
            t = to_numpy(t)
        elif not is_host_numpy(t) and array_namespace(t) is not self.device.xp:
            t = self.device.asarray(t)      # another library's labels: shared where the device allows
        if is_host_numpy(t):
            return self.device.asarray(check_labels(who, t, n, k))
        self._check_on_device(t, "t")
        return check_labels(who, t, n, k)

    def _check_on_device(self, a, name):
        where = array_device(a)                  # None: a tracer under a compiler (jax.jit)
        if array_namespace(a) is not self.device.xp or (where is not None and where != self.device.native):
            raise ValueError(
                f"{type(self).__name__}: {name} is on {_place(a)} but the model is on "
                f"{_place(self.device)}; pass host NumPy data (moved for you) or "
                f"move it: model.device.asarray(xpconv.to_numpy({name}))")

    def __repr__(self) -> str:
        body = "\n".join(f"  ({name}): {layer!r}" for name, layer in self.layers.items())
        return f"{type(self).__name__} on {self.device}\n{body}\n  (loss): {self.last_layer!r}"


def _place(where) -> str:
    """A device spec that names the library: ``"torch:cpu"``, ``"cpu (numpy)"``, ``"cuda:0 (cupy)"``.

    ``where``: a Device or an array.
    """
    if not isinstance(where, Device):
        try:
            where = device_of(where)
        except (TypeError, ValueError):
            return f"{array_device(where)} ({type(where).__module__.split('.')[0]})"
    return where.spec if where.spec.startswith(where.library) else f"{where.spec} ({where.library})"


def _takes_train_flg(layer) -> bool:
    code = getattr(type(layer).forward, "__code__", None)
    return code is not None and "train_flg" in code.co_varnames[:code.co_argcount]


def _is_host_uint8_batch(x) -> bool:
    """Host NumPy uint8 images (N, ...): scaled per batch by ``_input``."""
    return is_array(x) and is_host_numpy(x) and dtype_name(x) == "uint8" and x.ndim >= 2
