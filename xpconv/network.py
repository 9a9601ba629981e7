"""Networks as ordered layers: ``Sequential``, the base of every model in xpconv.

A network owns an ordered dict of layers and a loss layer. Its ``params`` mapping
is a *view* onto the layers' arrays: ``params["W1"]`` reads ``layers["Conv1"].W``,
and assigning ``params["W1"] = new`` rebinds it. So the book's optimizers, which do
``params[key] -= lr * grads[key]``, work in place on NumPy and by rebinding on
libraries whose arrays are immutable (JAX).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Iterable

from array_api_compat import array_namespace, device as array_device, is_array_api_obj

from . import serialization
from .devices import (Device, device as resolve_device, device_of, device_scope, dtype_name,
                      is_host_numpy, to_numpy)
from .gradcheck import numerical_gradient as _numerical_gradient
from .layers.loss import SoftmaxWithLoss

# (array attribute, gradient attribute) of layers that learn
_PARAM_ATTRS = (("W", "dW"), ("b", "db"), ("gamma", "dgamma"), ("beta", "dbeta"))
# arrays a layer keeps that are state but not learned (saved and moved with the model)
_BUFFER_ATTRS = ("running_mean", "running_var")


class Parameters(MutableMapping):
    """Name -> array view of the layers' learnable arrays.

    Setting an entry checks the shape and rebinds the layer's attribute.
    """

    def __init__(self, bindings: "OrderedDict[str, tuple[object, str, str]]"):
        self._bindings = bindings  # name -> (layer, attr, grad_attr)

    def __getitem__(self, name):
        layer, attr, _ = self._binding(name)
        return getattr(layer, attr)

    def __setitem__(self, name, value):
        layer, attr, _ = self._binding(name)
        old = getattr(layer, attr)
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"params[{name!r}]: expected shape {tuple(old.shape)}; got {tuple(value.shape)}")
        setattr(layer, attr, value)

    def __delitem__(self, name):
        raise TypeError("params: parameters belong to layers and cannot be deleted")

    def __iter__(self):
        return iter(self._bindings)

    def __len__(self):
        return len(self._bindings)

    def __repr__(self):
        return "Parameters(" + ", ".join(f"{k}: {tuple(self[k].shape)}" for k in self) + ")"

    def _binding(self, name):
        try:
            return self._bindings[name]
        except KeyError:
            raise KeyError(f"params: no parameter {name!r}; have {list(self._bindings)}") from None


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

    def __init__(self, layers, last_layer=None, *, param_names=None):
        self.layers = OrderedDict(layers)
        self.last_layer = SoftmaxWithLoss() if last_layer is None else last_layer
        self._bindings = OrderedDict()
        if param_names is None:
            for lname, layer in self.layers.items():
                for attr, gattr in _PARAM_ATTRS:
                    if is_array_api_obj(getattr(layer, attr, None)):
                        self._bindings[f"{lname}.{attr}"] = (layer, attr, gattr)
        else:
            grad_of = dict(_PARAM_ATTRS)
            for name, (lname, attr) in param_names.items():
                self._bindings[name] = (self.layers[lname], attr, grad_of[attr])
        self.params = Parameters(self._bindings)
        if not len(self.params):
            raise ValueError(f"{type(self).__name__}: no layer has learnable arrays (W, b, gamma, beta)")
        self.device = self._find_device()

    # ------------------------------------------------------------------ the book's API
    def predict(self, x, train_flg=False):
        """Scores before the loss: (N, ...) -> (N, classes)."""
        x = self._input(x)
        with device_scope(x):
            for layer in self.layers.values():
                x = layer.forward(x, train_flg) if _takes_train_flg(layer) else layer.forward(x)
        return x

    def loss(self, x, t, train_flg=True):
        """Mean loss of the batch, a 0-d array."""
        y = self.predict(x, train_flg)
        return self.last_layer.forward(y, self._labels(t))

    def accuracy(self, x, t, batch_size=100) -> float:
        """Fraction of correct predictions over all N samples (also the last partial batch)."""
        n = x.shape[0]
        if n == 0:
            raise ValueError(f"{type(self).__name__}.accuracy: got an empty batch")
        correct = 0
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)          # slice stops must stay in bounds
            y = self.predict(x[start:stop, ...])
            xp = array_namespace(y)
            tt = self._labels(t[start:stop, ...])
            if tt.ndim != 1:
                tt = xp.argmax(tt, axis=1)
            correct += int(xp.sum(xp.astype(xp.argmax(y, axis=1) == tt, xp.int64)))
        return correct / n

    def gradient(self, x, t):
        """Gradients of ``loss(x, t)`` by backpropagation: ``{name: array like params[name]}``."""
        self.loss(x, t, train_flg=True)
        dout = self.last_layer.backward()
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        return {name: getattr(layer, gattr) for name, (layer, _, gattr) in self._bindings.items()}

    def numerical_gradient(self, x, t, eps=1e-4):
        """Gradients of ``loss(x, t)`` by central differences (slow; for checking)."""
        x, t = self._input(x), self._labels(t)
        grads = {}
        for name in self.params:
            original = self.params[name]

            def loss_at(w, name=name):
                self.params[name] = w
                return self.loss(x, t, train_flg=True)

            grads[name] = _numerical_gradient(loss_at, original, eps=eps)
            self.params[name] = original
        return grads

    # ------------------------------------------------------------------ devices and files
    def to(self, spec) -> "Sequential":
        """Move every parameter and buffer to ``spec`` (a spec string or Device); returns self."""
        target = resolve_device(spec)
        for layer, attr in self._arrays():
            value = getattr(layer, attr)
            setattr(layer, attr, target.asarray(to_numpy(value), dtype=dtype_name(value)))
        self.device = target
        return self

    def state_arrays(self) -> dict:
        """Host copies of every parameter and buffer, by name (what ``save_params`` writes)."""
        out = {name: to_numpy(self.params[name]) for name in self.params}
        out.update((key, to_numpy(getattr(layer, attr))) for key, layer, attr in self._buffers())
        return out

    def save_params(self, path) -> None:
        """Write parameters (and buffers) to ``path`` as an ``.npz`` of host arrays.

        The file is written to a temporary name and renamed, so an existing file is
        never left half-written. Load it on any device with ``load_params``.
        """
        serialization.save_arrays(path, self.state_arrays(), metadata={
            "format": "xpconv-params", "version": "1", "model": type(self).__name__})

    def load_params(self, path) -> "Sequential":
        """Read parameters saved by ``save_params`` (from any device) onto this model's device.

        Names and shapes must match this model. The file's content decides how it is read:
        an ``.npz`` under any name, or the book's ``params.pkl`` through a restricted reader
        that never runs code (see ``xpconv.serialization.load_arrays``).
        """
        slots = [(name, layer, attr) for name, (layer, attr, _) in self._bindings.items()]
        slots += list(self._buffers())
        arrays, _ = serialization.load_arrays(
            path, expected={key: tuple(getattr(layer, attr).shape) for key, layer, attr in slots},
            who=f"{type(self).__name__}.load_params")
        for key, layer, attr in slots:   # params[...] = ... would do the same for parameters
            current = getattr(layer, attr)
            setattr(layer, attr, self.device.asarray(arrays[key], dtype=dtype_name(current)))
        return self

    # ------------------------------------------------------------------ helpers
    def _arrays(self) -> Iterable[tuple[object, str]]:
        """(layer, attribute) of every parameter and buffer."""
        yield from ((layer, attr) for layer, attr, _ in self._bindings.values())
        yield from ((layer, attr) for _, layer, attr in self._buffers())

    def _buffers(self) -> Iterable[tuple[str, object, str]]:
        """("<layer>.<attr>", layer, attr) of every buffer (state saved but not learned)."""
        for lname, layer in self.layers.items():
            for attr in _BUFFER_ATTRS:
                if is_array_api_obj(getattr(layer, attr, None)):
                    yield f"{lname}.{attr}", layer, attr

    def _find_device(self) -> Device:
        first = next(iter(self.params.values()))
        for name, value in self.params.items():
            if array_namespace(value) is not array_namespace(first) or array_device(value) != array_device(first):
                raise ValueError(f"{type(self).__name__}: parameter {name!r} is on {array_device(value)} "
                                 f"but the first parameter is on {array_device(first)}; put all on one device")
        return device_of(first)

    def _input(self, x):
        """Host data -> the model's device (float dtype of the model); device arrays must match."""
        dtype = dtype_name(next(iter(self.params.values())))
        if not is_array_api_obj(x) or is_host_numpy(x):
            return self.device.asarray(x, dtype=dtype)
        self._check_on_device(x, "x")
        return x

    def _labels(self, t):
        if not is_array_api_obj(t) or is_host_numpy(t):
            return self.device.asarray(t)
        self._check_on_device(t, "t")
        return t

    def _check_on_device(self, a, name):
        if array_namespace(a) is not self.device.xp or array_device(a) != self.device.native:
            raise ValueError(
                f"{type(self).__name__}: {name} is a {type(a).__module__.split('.')[0]} array on "
                f"{array_device(a)} but the model is on {self.device}; pass host NumPy data (moved "
                f"for you) or move it: model.device.asarray(xpconv.to_numpy({name}))")

    def __repr__(self) -> str:
        body = "\n".join(f"  ({name}): {layer!r}" for name, layer in self.layers.items())
        return f"{type(self).__name__} on {self.device}\n{body}\n  (loss): {self.last_layer!r}"


def _takes_train_flg(layer) -> bool:
    code = getattr(type(layer).forward, "__code__", None)
    return code is not None and "train_flg" in code.co_varnames[:code.co_argcount]

