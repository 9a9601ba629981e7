"""A compiled training step: ``step = compile_step(net, optimizer)``, ``loss = step(x, t)``.

One call does what ``optimizer.update(net.params, net.gradient(x, t))`` does, and returns
the batch's mean loss as a 0-d device array (no read-back to the host).

* **JAX**: the step is one ``jax.jit`` program, traced once per input shape and dtype.
  It is pure: the parameters, the buffers (BatchNormalization's running statistics),
  the optimizer state and the optimizer's host scalars (Adam's bias-corrected step
  size) are its inputs and outputs, written back to ``net.params``, the layers and the
  optimizer after every call. Dropout masks are drawn on the host from each layer's own
  generator before the call (the same draws, in the same order, as an uncompiled step)
  and passed in as arguments, so no mask is frozen into the program.
* **NumPy, CuPy, torch, array-api-strict**: the plain (uncompiled) step.

The torch (``torch.compile``) path is not implemented yet: ``mode`` is accepted and
ignored there (see ``docs/compile.md``).
"""
from __future__ import annotations

from collections.abc import Callable

from .layers.basic import Dropout

__all__ = ["compile_step"]


def compile_step(net, optimizer, *, mode: str | None = None) -> Callable:
    """A training step for ``net`` and ``optimizer``, compiled where the library compiles.

    Args:
        net: a :class:`~xpconv.network.Sequential` (SimpleConvNet, DeepConvNet, ...).
        optimizer: an :mod:`xpconv.optimizers` optimizer.
        mode: compiler mode (torch's ``"reduce-overhead"``, ...); None for the default.
            Accepted for forward compatibility; unused by the JAX and uncompiled steps.

    Returns:
        ``step(x, t) -> loss``: x (N, C, H, W), t labels (N,) or one-hot (N, K); loss a 0-d
        array on the model's device. ``step.traces`` counts the JAX traces (0 elsewhere).

    Raises:
        TypeError: when ``net`` has no ``gradient``/``params`` or ``optimizer`` no ``update``.
    """
    if not (hasattr(net, "gradient") and hasattr(net, "params") and hasattr(net, "layers")):
        raise TypeError(f"compile_step: expected a Sequential network; got {type(net).__name__}")
    if not hasattr(optimizer, "update"):
        raise TypeError(f"compile_step: expected an xpconv optimizer; got {type(optimizer).__name__}")
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"compile_step: expected mode to be a str or None; got {mode!r}")
    if net.device.library == "jax":
        return _JaxStep(net, optimizer)
    return _PlainStep(net, optimizer)


class _PlainStep:
    """The uncompiled step (NumPy, CuPy, torch, array-api-strict)."""

    compiled = False

    def __init__(self, net, optimizer):
        self.net, self.optimizer, self.traces = net, optimizer, 0

    def __call__(self, x, t):
        grads = self.net.gradient(x, t)
        self.optimizer.update(self.net.params, grads)
        return self.net.last_layer.loss


def _host_scalars(opt) -> dict:
    """The optimizer's float settings and per-step host floats (``lr``, Adam's ``_lr_t``)."""
    return {k: v for k, v in vars(opt).items() if isinstance(v, float)}


class _JaxStep:
    """One ``jax.jit`` program per input shape; see the module docstring."""

    compiled = True

    def __init__(self, net, optimizer):
        import jax
        self.net, self.optimizer, self.traces = net, optimizer, 0
        self._names = list(net.params.keys())
        self._buffers = [(layer, attr) for _, layer, attr in net._buffers()]
        self._dropouts = [layer for layer in net.layers.values() if isinstance(layer, Dropout)]
        self._mask_shapes = {}        # (x shape, dtype) -> shapes of the Dropout inputs
        self._jit = jax.jit(self._pure)

    # ------------------------------------------------------------------ host side
    def __call__(self, x, t):
        net, opt = self.net, self.optimizer
        x = net._input(x)
        t = net._labels("compile_step", t, x.shape[0], None)
        masks = tuple(layer._draw_keep(_Shape(s))
                      for layer, s in zip(self._dropouts, self._dropout_shapes(x)))
        params = tuple(net.params[k] for k in self._names)
        opt._check(net.params, dict(zip(self._names, params)))
        opt._begin()                                   # host: Adam's step count, lr_t
        buffers = tuple(getattr(layer, attr) for layer, attr in self._buffers)
        state = {name: {k: opt._state_array(name, k, p) for k, p in zip(self._names, params)}
                 for name in opt._state}      # zeros from the start: one pytree, one trace
        params, buffers, state, loss = self._jit(params, buffers, state, _host_scalars(opt),
                                                 masks, x, t)
        for k, p in zip(self._names, params):
            layer, attr, _ = net._bindings[k]
            setattr(layer, attr, p)
        for (layer, attr), b in zip(self._buffers, buffers):
            setattr(layer, attr, b)
        for name, arrays in state.items():
            getattr(opt, name).update(arrays)
        net.last_layer.loss = loss
        return loss

    def _dropout_shapes(self, x):
        """Shapes of the Dropout layers' inputs for this x (found once by ``jax.eval_shape``)."""
        if not self._dropouts:
            return ()
        key = (tuple(x.shape), str(x.dtype))
        if key not in self._mask_shapes:
            import jax
            seen = []

            def probe(x):
                saved = [(layer, layer.forward) for layer in self._dropouts]
                try:
                    for layer in self._dropouts:
                        def forward(x, train_flg=True, layer=layer):
                            seen.append(tuple(x.shape))
                            return x
                        layer.forward = forward
                    return self.net.predict(x, train_flg=False)
                finally:
                    for layer, _ in saved:
                        del layer.forward
                    _scrub(self.net)

            jax.eval_shape(probe, x)
            self._mask_shapes[key] = tuple(seen)
        return self._mask_shapes[key]

    # ------------------------------------------------------------------ traced
    def _pure(self, params, buffers, state, scalars, masks, x, t):
        """The step as a pure function of its arrays (traced by ``jax.jit``)."""
        self.traces += 1
        net, opt = self.net, self.optimizer
        saved_params = {k: net.params[k] for k in self._names}
        saved_buffers = [getattr(layer, attr) for layer, attr in self._buffers]
        saved_state = {name: dict(getattr(opt, name)) for name in opt._state}
        saved_scalars = _host_scalars(opt)
        saved_begin = opt.__dict__.get("_begin")
        try:
            self._bind(dict(zip(self._names, params)), buffers, state)
            vars(opt).update(scalars)
            opt._begin = lambda: None                 # done on the host, values passed in
            for layer, keep in zip(self._dropouts, masks):
                layer.forward = _masked_forward(layer, keep)
            grads = net.gradient(x, t)
            work = {k: net.params[k] for k in self._names}
            opt.update(work, grads)                    # a dict: the per-key (assigning) path
            new_params = tuple(work[k] for k in self._names)
            new_buffers = tuple(getattr(layer, attr) for layer, attr in self._buffers)
            new_state = {name: {k: getattr(opt, name)[k] for k in state[name]}
                         | {k: a for k, a in getattr(opt, name).items() if k not in state[name]}
                         for name in opt._state}
            loss = net.last_layer.loss
            return new_params, new_buffers, new_state, loss
        finally:
            for layer in self._dropouts:
                layer.__dict__.pop("forward", None)
            if saved_begin is None:
                opt.__dict__.pop("_begin", None)
            else:
                opt._begin = saved_begin
            vars(opt).update(saved_scalars)
            self._bind(saved_params, saved_buffers, saved_state)
            _scrub(net)

    def _bind(self, params: dict, buffers, state: dict) -> None:
        """Put ``params`` (name -> array), ``buffers`` and the optimizer ``state`` (state name
        -> param name -> array) into the layers and the optimizer."""
        for k, p in params.items():
            layer, attr, _ = self.net._bindings[k]
            setattr(layer, attr, p)
        for (layer, attr), b in zip(self._buffers, buffers):
            setattr(layer, attr, b)
        for name, arrays in state.items():
            getattr(self.optimizer, name).clear()
            getattr(self.optimizer, name).update(arrays)


def _masked_forward(layer, keep):
    """Dropout's training forward with a keep-mask passed in (a traced bool array)."""
    def forward(x, train_flg=True):
        if not train_flg:
            return Dropout.forward(layer, x, train_flg)
        layer.mask = keep
        layer._scale = keep.astype(x.dtype)
        return x * layer._scale
    return forward


class _Shape:
    """Stands in for an array in ``Dropout._draw_keep``, which reads only ``.shape``."""

    def __init__(self, shape):
        self.shape = shape


def _scrub(net) -> None:
    """Drop every traced value a trace left in the layers' caches (no tracer kept)."""
    import jax
    for layer in list(net.layers.values()) + [net.last_layer]:
        for k, v in list(vars(layer).items()):
            if isinstance(v, jax.core.Tracer):
                setattr(layer, k, None)
