"""A compiled training step: ``step = compile_step(net, optimizer)``, ``loss = step(x, t)``.

One call does what ``optimizer.update(net.params, net.gradient(x, t))`` does, and returns
the batch's mean loss as a 0-d device array (no read-back to the host).

* **JAX**: the step is one ``jax.jit`` program, traced once per input shape and dtype.
  It is pure: the parameters, the buffers (BatchNormalization's running statistics),
  the optimizer state and the optimizer's host scalars (Adam's bias-corrected step
  size) are its inputs and outputs, written back to ``net.params``, the layers and the
  optimizer after every call.
* **torch**: the step is one ``torch.compile(..., fullgraph=True)`` graph (no graph
  break), compiled once per input shape and dtype. The same traced function as JAX's
  (:meth:`_CompiledStep._pure`) runs on the same inputs; the parameters' flat buffers,
  the buffers and the optimizer state are then updated in place (``copy_``), so they
  keep their addresses (what CUDA graphs, ``mode="reduce-overhead"``, need). The
  optimizer's host scalars are passed in as 0-d device tensors (no recompile when Adam's
  step size or a schedule's ``lr`` changes).
* **NumPy, CuPy, array-api-strict**: the plain (uncompiled) step.

Both compiled paths share the host side (:class:`_CompiledStep`): Dropout masks are drawn
on the host from each layer's own generator before the call (the same draws, in the same
order, as an uncompiled step) and passed in as arguments, so no mask is frozen into the
program; the whole batch is one workspace chunk while tracing; no traced value is left in
the layers' caches after a trace.
"""
from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from . import _namespace
from ._namespace import array_namespace
from .layers.basic import Dropout
from .workspace import workspace_limit

if TYPE_CHECKING:
    from .network import Sequential
    from .optimizers import Optimizer

__all__ = ["compile_step"]

# the workspace limit while a step is traced: the whole batch in one chunk (the compiler
# plans the memory of the whole step; chunks would only add ops)
_ONE_CHUNK = 2**62


def compile_step(net: Sequential, optimizer: Optimizer, *, mode: str | None = None,
                 backend: str | Callable | None = None) -> Callable:
    """A training step for ``net`` and ``optimizer``, compiled where the library compiles.

    Args:
        net: a :class:`~xpconv.network.Sequential` (SimpleConvNet, DeepConvNet, ...).
        optimizer: an :mod:`xpconv.optimizers` optimizer.
        mode: torch's ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs, ...); None
            for the default. Unused by the JAX and uncompiled steps.
        backend: torch's ``torch.compile`` backend, a name or a callable (``"inductor"`` when
            None; ``"aot_eager"`` compiles the same graph without generating code). Unused
            elsewhere.

    Returns:
        ``step(x, t) -> loss``: x (N, C, H, W), t labels (N,) or one-hot (N, K); loss a 0-d
        array on the model's device. ``step.compiled`` says whether it compiles;
        ``step.traces`` counts the traces of the step function (1 over N steps of one
        input shape; 0 for the plain step).

    Raises:
        TypeError: when ``net`` has no ``gradient``/``params`` or ``optimizer`` no ``update``,
            or ``mode`` is not a str or None, or ``backend`` not a str, a callable or None.
    """
    if not (hasattr(net, "gradient") and hasattr(net, "params") and hasattr(net, "layers")):
        raise TypeError(f"compile_step: expected a Sequential network; got {type(net).__name__}")
    if not hasattr(optimizer, "update"):
        raise TypeError(f"compile_step: expected an xpconv optimizer; got {type(optimizer).__name__}")
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"compile_step: expected mode to be a str or None; got {mode!r}")
    if backend is not None and not (isinstance(backend, str) or callable(backend)):
        raise TypeError(f"compile_step: expected backend to be a name, a callable or None; got {backend!r}")
    if net.device.library == "jax":
        return _JaxStep(net, optimizer)
    if net.device.library == "torch":
        return _TorchStep(net, optimizer, mode=mode, backend=backend or "inductor")
    return _PlainStep(net, optimizer)


class _PlainStep:
    """The uncompiled step (NumPy, CuPy, array-api-strict)."""

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


class _CompiledStep:
    """What the JAX and torch steps share: the host side of a call (inputs checked and
    moved, Dropout masks drawn, the optimizer's host step) and the traced function.
    """

    compiled = True

    def __init__(self, net, optimizer):
        self.net, self.optimizer, self.traces = net, optimizer, 0
        self._names = list(net.params.keys())
        self._buffers = [(layer, attr) for _, layer, attr in net._buffers()]
        self._dropouts = [layer for layer in net.layers.values() if isinstance(layer, Dropout)]
        self._mask_shapes: dict = {}        # (x shape, dtype) -> shapes of the Dropout inputs
        kept = {(id(layer), attr) for layer, attr, _ in net._bindings.values()}
        kept |= {(id(layer), attr) for layer, attr in self._buffers}
        # every other attribute of the layers: caches (x, masks, gradients, ...) and settings
        self._slots = [(layer, attr) for layer in [*net.layers.values(), net.last_layer]
                       for attr in vars(layer) if (id(layer), attr) not in kept]

    def _prepare(self, x, t):
        """The host side of a call: ``(x, t, masks)`` on the model's device, the optimizer's
        host step done (Adam's step count and step size).
        """
        net, opt = self.net, self.optimizer
        x = net._input(x)
        t = net._labels("compile_step", t, x.shape[0], None)
        masks = tuple(self._to_device(layer._draw_keep(_Shape(s)))
                      for layer, s in zip(self._dropouts, self._dropout_shapes(x)))
        opt._check(net.params, dict(net.params))
        opt._begin()                                   # host: Adam's step count, lr_t
        return x, t, masks

    def _dropout_shapes(self, x):
        """Shapes of the Dropout layers' inputs for this x (found once per x shape, by
        ``self._eval_shape``: JAX only traces it, torch runs it once; no mask is drawn).
        """
        if not self._dropouts:
            return ()
        key = (tuple(x.shape), str(x.dtype))
        if key not in self._mask_shapes:
            seen = []

            def probe(x):
                try:
                    for layer in self._dropouts:
                        def forward(x, train_flg=True):
                            seen.append(tuple(x.shape))
                            return x
                        layer.forward = forward
                    return self.net.predict(x, train_flg=False)
                finally:
                    for layer in self._dropouts:
                        del layer.forward
                    self._scrub()

            self._eval_shape(probe, x)
            self._mask_shapes[key] = tuple(seen)
        return self._mask_shapes[key]

    def _eval_shape(self, fn, x) -> None:
        raise NotImplementedError

    def _to_device(self, a):
        """Host NumPy array ``a`` on the model's device."""
        return self.net.device.asarray(a)

    def _pure(self, params, buffers, state, scalars, masks, x, t):
        """The step as a function of its arrays (traced by ``jax.jit`` or ``torch.compile``).

        Args:
            params: the parameters, in ``net.params`` order.
            buffers: BatchNormalization's running statistics, in ``net._buffers()`` order.
            state: optimizer state, ``{state name: {param name: array}}``.
            scalars: the optimizer's host scalars, ``{attribute: value}``.
            masks: the Dropout layers' keep-masks (bool, each the shape of its layer's input).
            x: (N, C, H, W) on the model's device.
            t: (N,) labels or (N, K) targets, on the model's device.

        Returns:
            ``(params, buffers, state, loss)`` after the step: new arrays (JAX), or the
            inputs updated in place and new arrays where a layer rebinds (torch).
        """
        self._count_trace()
        net, opt = self.net, self.optimizer
        saved_params = {k: net.params[k] for k in self._names}
        saved_buffers = [getattr(layer, attr) for layer, attr in self._buffers]
        saved_state = {name: dict(getattr(opt, name)) for name in opt._state}
        saved_scalars = {k: getattr(opt, k) for k in scalars}
        try:
            self._bind(dict(zip(self._names, params)), buffers, state)
            for k, v in scalars.items():
                setattr(opt, k, v)
            opt._begin = _nothing                     # done on the host, values passed in
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
                del layer.forward
            del opt._begin
            for k, v in saved_scalars.items():
                setattr(opt, k, v)
            self._bind(saved_params, saved_buffers, saved_state)
            self._scrub()

    def _count_trace(self) -> None:
        """Called while tracing: ``jax.jit`` runs the Python once per trace."""
        self.traces += 1

    def _bind(self, params: dict, buffers, state: dict) -> None:
        """Put ``params`` (name -> array), ``buffers`` and the optimizer ``state`` (state name
        -> param name -> array) into the layers and the optimizer.
        """
        for k, p in params.items():
            layer, attr, _ = self.net._bindings[k]
            setattr(layer, attr, p)
        for (layer, attr), b in zip(self._buffers, buffers):
            setattr(layer, attr, b)
        for name, arrays in state.items():
            getattr(self.optimizer, name).clear()
            getattr(self.optimizer, name).update(arrays)

    def _scrub(self) -> None:
        """Drop every traced value a trace left in the layers' caches (no tracer kept)."""
        for layer, attr in self._slots:
            if self._traced(getattr(layer, attr)):
                setattr(layer, attr, None)

    @staticmethod
    def _traced(value) -> bool:
        raise NotImplementedError


class _JaxStep(_CompiledStep):
    """One ``jax.jit`` program per input shape; see the module docstring."""

    def __init__(self, net, optimizer):
        import jax
        super().__init__(net, optimizer)
        self._jit = jax.jit(self._pure)

    def __call__(self, x, t):
        net, opt = self.net, self.optimizer
        x, t, masks = self._prepare(x, t)
        params = tuple(net.params[k] for k in self._names)
        buffers = tuple(getattr(layer, attr) for layer, attr in self._buffers)
        state = {name: {k: opt._state_array(name, k, p) for k, p in zip(self._names, params)}
                 for name in opt._state}      # zeros from the start: one pytree, one trace
        with workspace_limit(_ONE_CHUNK):     # read while tracing
            params, buffers, state, loss = self._jit(params, buffers, state, _host_scalars(opt),
                                                     masks, x, t)
        self._bind(dict(zip(self._names, params)), buffers, {})
        for name, arrays in state.items():
            getattr(opt, name).update(arrays)
        net.last_layer.loss = loss
        return loss

    def _eval_shape(self, fn, x) -> None:
        import jax
        jax.eval_shape(fn, x)

    @staticmethod
    def _traced(value) -> bool:
        import jax
        return isinstance(value, jax.core.Tracer)


class _TorchStep(_CompiledStep):
    """One ``torch.compile(fullgraph=True)`` graph per input shape; see the module docstring.

    The graph's inputs are the parameters' flat buffers (one 1-D tensor per dtype, whose
    views are the layers' arrays), the buffers, the optimizer state (one tensor per
    parameter, not views of a shared buffer: inputs must not alias), the optimizer's
    scalars as 0-d tensors, the masks, x and t. Everything it changes, it changes in
    place; it returns the loss.
    """

    def __init__(self, net, optimizer, *, mode, backend):
        import torch

        from . import threads
        threads.ensure_defaults()     # applied once, before a trace: a flag check inside it
        super().__init__(net, optimizer)
        self.mode, self.backend = mode, backend
        # one graph per input shape (dynamic=False), as jax.jit traces once per shape
        self._compiled = torch.compile(_own_copy(self._program), fullgraph=True, dynamic=False,
                                       mode=mode, backend=backend)
        self._static: set = set()          # ids of tensors marked as static addresses
        self._own: dict = {}               # (state name, param name) -> the state tensor given
        self._roots: tuple = ()            # ids of the parameter tensors of the last call
        self._remembered: set = set()      # input signatures whose types the memos hold

    def __call__(self, x, t):
        net, opt = self.net, self.optimizer
        x, t, masks = self._prepare(x, t)
        groups = net.params.flat
        if groups is None:          # tied weights: the arrays themselves
            roots, layout = tuple(net.params[k] for k in self._names), None
        else:
            roots = tuple(g.buffer for g in groups)
            layout = tuple((g.names, g.shapes, tuple(g.slices[n] for n in g.names)) for g in groups)
        buffers = tuple(getattr(layer, attr) for layer, attr in self._buffers)
        if tuple(map(id, roots)) != self._roots:     # new parameter arrays (net.to, ...): check all
            self._own.clear()
            self._roots = tuple(map(id, roots))
        state = {name: {k: self._own_state(name, k) for k in self._names} for name in opt._state}
        host = _host_scalars(opt)
        scalars = dict(zip(host, self._to_device(np.asarray(list(host.values()), dtype=np.float64)).unbind(0)))
        if self.mode == "reduce-overhead":
            self._mark_static(roots, buffers, state)
        self._scrub()               # caches read before written (SoftmaxWithLoss's classes)
        signature = (tuple(x.shape), str(x.dtype), tuple(t.shape), str(t.dtype))
        if signature not in self._remembered:   # a new graph: fill the type memos before its
            self._remembered.add(signature)      # trace, which would otherwise guard on them
            _namespace.remember(x, t, *masks, *roots, *buffers, *scalars.values(),
                                *(a for per_name in state.values() for a in per_name.values()))
        try:
            for k, v in scalars.items():    # read by the graph as tensors, not as constants
                setattr(opt, k, v)
            graphs = _graphs_compiled()
            with workspace_limit(_ONE_CHUNK), warnings.catch_warnings():
                # array_api_compat's type checks are lru_cache'd functions of the type: traced as is
                warnings.filterwarnings("ignore", "Dynamo detected a call to a `functools.lru_cache`",
                                        UserWarning)
                loss = self._compiled(roots, layout, buffers, state, scalars, masks, x, t)
            self.traces += _graphs_compiled() - graphs
        finally:
            for k, v in host.items():
                setattr(opt, k, v)
        net.last_layer.loss = loss
        return loss

    def _program(self, roots, layout, buffers, state, scalars, masks, x, t):
        """The compiled function: the parameters as views of ``roots``, then :meth:`_pure`;
        what it rebinds is copied into its input (same address).
        """
        if layout is None:
            params = roots
        else:
            params = tuple(root[a:b].reshape(shape) for root, (_, shapes, spans) in zip(roots, layout)
                           for shape, (a, b) in zip(shapes, spans))
            order = [n for names, _, _ in layout for n in names]
            params = tuple(params[order.index(k)] for k in self._names)
        new_params, new_buffers, new_state, loss = self._pure(params, buffers, state, scalars,
                                                              masks, x, t)
        for old, new in zip(params, new_params):
            if new is not old:
                old.copy_(new)
        for old, new in zip(buffers, new_buffers):
            if new is not old:
                old.copy_(new)
        for name, arrays in state.items():
            for k, old in arrays.items():
                if new_state[name][k] is not old:
                    old.copy_(new_state[name][k])
        return loss

    def _own_state(self, name, key):
        """``optimizer.<name>[key]`` as a tensor of its own (zeros at first; a copy of a view
        into the optimizer's flat buffers), kept in the optimizer: the graph updates it in
        place. Checked once: a tensor this step gave the optimizer is taken as it is.
        """
        opt = self.optimizer
        a = getattr(opt, name).get(key)
        if a is not None and a is self._own.get((name, key)):
            return a
        a = opt._state_array(name, key, self.net.params[key])
        if a._base is not None:       # a view of a fused buffer: inputs must not alias
            a = a.clone()
        getattr(opt, name)[key] = self._own[(name, key)] = a
        return a

    def _count_trace(self) -> None:
        """Nothing while tracing (a change of ``self`` would be replayed by every call): the
        graphs are counted by ``__call__``.
        """

    def _mark_static(self, roots, buffers, state) -> None:
        """CUDA graphs: the tensors the graph updates in place keep their addresses."""
        import torch
        for a in (*roots, *buffers, *(a for arrays in state.values() for a in arrays.values())):
            if id(a) not in self._static:
                torch._dynamo.mark_static_address(a)
                self._static.add(id(a))

    def _eval_shape(self, fn, x) -> None:
        fn(x)           # an eager forward, once per input shape (nothing is drawn)

    def _to_device(self, a):
        """Host NumPy array ``a`` as a tensor on the model's device, without waiting for the
        device: shared on the CPU, an asynchronous copy from pinned memory to a GPU.
        """
        import torch
        host, device = torch.from_numpy(a), self.net.device.native
        if device.type == "cpu":
            return host
        return host.pin_memory().to(device, non_blocking=True)

    @staticmethod
    def _traced(value) -> bool:
        import torch
        return isinstance(value, torch.Tensor)


def _own_copy(method):
    """``method`` bound to the same object, its function given a code object of its own.

    torch.compile keeps its graphs, and its limit on their number (8), per code object: with
    the code of ``_TorchStep._program`` shared, the steps of different models would share
    that limit (and a step might run on a graph traced for another step of the same shape).
    """
    fn = method.__func__
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                             fn.__closure__)
    return types.MethodType(own, method.__self__)


def _graphs_compiled() -> int:
    """Graphs ``torch.compile`` has compiled in this process so far."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def _nothing() -> None:
    """The optimizer's ``_begin`` inside a trace: done on the host before the call."""


def _masked_forward(layer, keep):
    """Dropout's training forward with a keep-mask passed in (a traced bool array)."""
    def forward(x, train_flg=True):
        if not train_flg:
            return Dropout.forward(layer, x, train_flg)
        layer.mask = keep
        layer._scale = array_namespace(keep).astype(keep, x.dtype)
        return x * layer._scale
    return forward


class _Shape:
    """Stands in for an array in ``Dropout._draw_keep``, which reads only ``.shape``."""

    def __init__(self, shape):
        self.shape = shape

