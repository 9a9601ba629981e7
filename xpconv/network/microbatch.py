"""Micro-batches: a network's gradient over a large batch, computed in parts on host NumPy.

``Sequential.gradient`` on host NumPy runs a batch of more than :data:`MICRO_BATCH`
samples through the network in equal parts of at most that many samples (100 samples:
two of 50; 256: four of 64), each part on its own shallow copies of the layers (the
parameters are shared, each copy keeps its own caches: :class:`_Replica`), and adds the
parts' gradients in the order of the batch::

    grad = sum_k grad_k,   grad_k = d/dparams (n_k / N) * loss(part k)     (n_k samples)

With threads (:mod:`xpconv.threads`) the workers take whole parts: each runs the whole
network forward and backward on its part, BLAS at one thread. A SimpleConvNet step's
layers are too small to gain from threads one op at a time (a hand-off costs about as
much as a share of an op's work), a part's whole pass is not; and a part of 64 samples
stays in a core's cache where a batch of 256 does not, so one thread gains too (README,
"Threads").

The parts depend on N only, never on the thread count: results are bit-identical for
every thread count. They differ from a one-pass gradient by rounding only (a sum over
the batch taken in parts).

Only networks whose layers treat every sample on its own (:data:`SAMPLE_WISE`, exact
types) with the softmax loss are split: BatchNormalization (statistics over the batch),
Dropout (one random mask per batch) and layers xpconv does not know keep the whole batch.
"""
from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .. import threads
from .._typing import Array
from ..devices import dtype_name, is_host_numpy
from ..layers import Affine, Convolution, Flatten, Pooling, Relu, Sigmoid, SoftmaxWithLoss

if TYPE_CHECKING:
    from . import Sequential

MICRO_BATCH = 64
SAMPLE_WISE = (Affine, Convolution, Flatten, Pooling, Relu, Sigmoid)

# network -> replicas of its layers, one list per part of the last call
_REPLICAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parts(n: int) -> list[tuple[int, int]]:
    """``range(n)`` as ``ceil(n / MICRO_BATCH)`` contiguous (start, stop) parts whose sizes
    differ by at most one (the first ones larger): 100 -> 50, 50; 130 -> 44, 43, 43.
    """
    count = -(-n // MICRO_BATCH)
    q, r = divmod(n, count)
    bounds = [k * q + min(k, r) for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def applies(network: Sequential, x: Array) -> bool:
    """Whether ``network.gradient(x, t)`` is computed in parts: host NumPy, more than
    ``MICRO_BATCH`` samples, only sample-wise layers and the softmax loss.
    """
    return (is_host_numpy(x) and x.shape[0] > MICRO_BATCH
            and type(network.last_layer) is SoftmaxWithLoss and _sample_wise(network))


def predictions(network: Sequential, x: Array, batches: list[tuple[int, int]]) -> Iterator[Array]:
    """Yield ``network.predict(x[start:stop])`` for each (start, stop) of ``batches``, in
    order. On host NumPy, for a network of sample-wise layers, the workers predict a batch
    each, through shallow copies of the layers made for that batch (the network's own
    layers are not used, so their caches stay as they were); at most one batch per worker
    is alive at once. Each sample's scores are computed as in one pass of its batch.
    """
    on_host = is_host_numpy(next(iter(network.params.values())))
    if not (on_host and is_host_numpy(x) and len(batches) > 1 and _sample_wise(network)):
        for start, stop in batches:
            yield network.predict(x[start:stop, ...])
        return
    layers = list(network.layers.values())

    def predict(start, stop):
        out = x[start:stop, ...]
        if dtype_name(out) == "uint8":      # 8-bit images, scaled one batch at a time
            out = network._input(out)
        for layer in layers:
            out = copy.copy(layer).forward(out)
        return out

    yield from threads.imap_chunks(predict, batches, threads.workers(x))


def one_pass(x: Array) -> AbstractContextManager[Any]:
    """Context for a one-pass ``gradient`` over ``x: (N, ...)``: on host NumPy, a pass of at
    most ``MICRO_BATCH`` samples runs its matrix products at one BLAS thread, as a
    micro-batch does on a worker (``threads.blas_in_pass``; restored after).
    """
    return threads.blas_in_pass(x, x.shape[0])


def _sample_wise(network) -> bool:
    return all(type(layer) in SAMPLE_WISE for layer in network.layers.values())


def gradient(network: Sequential, bindings: Mapping[str, tuple[Any, str, str]], x: Array,
             t: Array) -> dict[str, Array]:
    """The gradient of ``network``'s mean loss over ``x: (N, ...)`` and ``t`` (labels
    already checked for N samples), in parts; like a one-pass ``gradient`` it sets the
    layers' gradients (``dW``, ``db``) and the loss layer's ``loss``.

    Args:
        network: the :class:`~xpconv.network.Sequential` whose layers compute the gradient.
        bindings: ``{name: (layer, attr, grad_attr)}`` of the network's parameters.
        x: the inputs, (N, ...), on the host.
        t: the labels of the N samples, already checked.

    Returns:
        ``{name: gradient}``, new arrays.
    """
    layers = [*network.layers.values(), network.last_layer]
    n = x.shape[0]
    chunks = parts(n)
    replicas = dict(zip((start for start, _ in chunks), _replicas(network, layers, len(chunks))))
    grad_of = [(name, layers.index(layer), gattr) for name, (layer, _, gattr) in bindings.items()]

    def part(start, stop):                        # on a worker, or in order on the caller
        mine = [replica.follow() for replica in replicas[start]]
        *body, loss_layer = mine
        out = x[start:stop, ...]
        for layer in body:
            out = layer.forward(out)
        weight = (stop - start) / n
        loss = loss_layer.forward(out, t[start:stop, ...])
        dout = loss_layer.backward(weight)        # the gradient of weight * loss_k
        for layer in reversed(body):
            dout = layer.backward(dout)
        return {name: getattr(mine[i], gattr) for name, i, gattr in grad_of}, loss * weight

    total: Any = None    # {name: summed gradient} once the first part is in
    loss: Any = None
    for grads, part_loss in threads.imap_chunks(part, chunks, threads.workers(x)):   # in order
        if total is None:        # the first part's arrays: fresh, and owned by its replicas
            total, loss = grads, part_loss
            continue
        added = set()            # one array under two names (tied weights) is added once
        for name, g in grads.items():
            if id(total[name]) not in added:
                total[name] += g
                added.add(id(total[name]))
        loss = loss + part_loss
    for name, (layer, _, gattr) in bindings.items():
        setattr(layer, gattr, total[name])
    network.last_layer.loss = loss
    return dict(total)


class _Replica:
    """A shallow copy of a layer that follows it: the settings and parameters are the
    layer's, the caches (``x``, masks) its own.

    :meth:`follow` rebinds in the copy every attribute that the layer has rebound since
    the last call (a new ``W`` from ``load_params`` or ``params[name] = ...``, a changed
    setting, the caches of a pass of its own). The copy keeps its caches between calls,
    so that its next pass allocates new arrays before the last pass's are freed: freed
    first, they went back to the system and came back page by page (~2 ms of a 17 ms step).
    """

    def __init__(self, layer):
        self.source = layer
        self.layer = copy.copy(layer)
        self._seen = dict(vars(layer))   # the layer's values that the copy has

    def follow(self):
        """The copy, up to date with the layer."""
        seen, mine = self._seen, vars(self.layer)
        for key, value in vars(self.source).items():
            if seen.get(key, _MISSING) is not value:
                mine[key] = seen[key] = value
        return self.layer


_MISSING = object()


def _replicas(network, layers, count: int) -> list[list[_Replica]]:
    """``count`` lists of replicas of ``layers`` (the network's and its loss layer), kept
    for the network's next call; rebuilt when a layer was replaced.
    """
    kept = _REPLICAS.get(network, [])
    if kept and not _same(kept[0], layers):
        kept = []
    kept = kept[:count] + [[_Replica(layer) for layer in layers] for _ in range(count - len(kept))]
    _REPLICAS[network] = kept
    return kept


def _same(replicas, layers) -> bool:
    return len(replicas) == len(layers) and all(r.source is layer for r, layer in zip(replicas, layers))
