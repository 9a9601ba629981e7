"""Data-parallel training on MPI (mpi4py): the same training, split over processes.

Every rank (process) holds the whole model and the whole data set. Each step, the global
batch of ``B`` samples is cut into contiguous shares, one per rank (100 over 3 ranks: 34,
33, 33), every rank computes the mean gradient and mean loss of its ``n_r`` samples, and one
packed buffer of ``(n_r / B) * gradient`` plus ``(n_r / B) * loss`` is summed over the ranks
(one ``Allreduce``). Every rank then holds the gradient of the global batch and takes the
same optimizer step, so N ranks with global batch B train like one process with batch B.

>>> comm = xpconv.distributed.init()        # size 1 outside mpiexec    # doctest: +SKIP
>>> xpconv.Trainer(net, x, t, xv, tv, comm=comm).train()                # doctest: +SKIP

Start it with ``mpiexec -n 2 python train.py`` (or ``mpiexec -n 2 xpconv train
--distributed``). Layers that need the other ranks' samples read the :class:`Shard` of the
current step from :func:`current_shard`: ``BatchNormalization`` sums its batch statistics
over the ranks (like PyTorch's ``SyncBatchNorm``) and ``Dropout`` draws its mask for the
whole global batch and keeps its share's rows.

Checks (``xpconv/distributed/__main__.py``): ``mpiexec -n 2 python -m xpconv.distributed
--selftest [--transport nccl]`` (every collective on every usable device) and ``python -m
xpconv.distributed --bench`` (1 and 2 ranks against one process with two threads).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy

from .. import _namespace
from .._namespace import array_namespace
from .._typing import Array
from ..devices import Device, device as resolve_device, device_scope, from_host, to_numpy
from ..layers.shard import Shard, current_shard, sharded

if TYPE_CHECKING:
    from ..network import Sequential

__all__ = ["init", "active", "launcher_size", "Communicator", "SingleProcess", "MPICommunicator", "Shard",
           "current_shard", "sharded", "launched_by_mpi", "find_mpiexec", "DistributedUnavailable",
           "MPI_EXTRA", "TRANSPORTS"]

MPI_EXTRA = 'pip install "xpconv[mpi]"'
TRANSPORTS = ("host", "nccl")
# set by mpiexec/mpirun/srun (MPICH/Hydra, PMIx, Open MPI, MVAPICH) in every rank's environment
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                  "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


class DistributedUnavailable(RuntimeError):
    """MPI is needed (the process was started by an MPI launcher, or asked for) but unusable."""


# ============================================================================ the communicator

_WORLD: Communicator | None = None


def init(transport: str = "host", *, mpi: bool | None = None, timeout: float | None = None) -> Communicator:
    """The communicator of all ranks of this job (created once, then returned again).

    Args:
        transport: how CuPy arrays travel: "host" (default; through host memory, works
            with any MPI) or "nccl" (NCCL through ``cupy.cuda.nccl``, GPU to GPU).
            NumPy, torch CPU and array-api-strict arrays go to MPI as buffers directly;
            JAX, torch CUDA and non-contiguous arrays through a host copy.
        mpi: None (default): use MPI when an MPI launcher started this process
            (``mpiexec``, ``srun``), else a single-process communicator that needs no
            MPI. True: MPI even without a launcher (mpi4py must be installed). False:
            always a single process.
        timeout: seconds a rank may wait in one collective (for a stopped or hung rank)
            before it ends the whole job with one line naming itself (None: wait forever).

    With more than one rank, an uncaught exception on any rank prints its traceback and
    aborts the whole job (``MPI_Abort``), so no rank is left waiting for it.

    Raises:
        DistributedUnavailable: MPI is needed but mpi4py or an MPI library is missing;
            the message says what to install.
    """
    global _WORLD
    if transport not in TRANSPORTS:
        raise ValueError(f"xpconv.distributed.init: expected transport in {TRANSPORTS}; "
                         f"got {transport!r}")
    if _WORLD is not None:
        if _WORLD.transport != transport:
            raise ValueError(f"xpconv.distributed.init: already initialised with transport "
                             f"{_WORLD.transport!r}; got {transport!r}")
        return _WORLD
    use_mpi = launched_by_mpi() if mpi is None else bool(mpi)
    from ..threads import share_cores_between_ranks
    share_cores_between_ranks()       # ranks on one machine: each its share of the cores
    world: Communicator
    if use_mpi:
        world = MPICommunicator(_import_mpi().COMM_WORLD, transport)
        if world.size > 1:
            _abort_on_uncaught_exception(world)
            if timeout is not None:
                world.watch_collectives(timeout)
    else:
        world = SingleProcess(transport)
    _WORLD = world
    return world


def active() -> Communicator | None:
    """The communicator made by :func:`init`, or None before it."""
    return _WORLD


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (its variables are in the environment)."""
    if any(name in os.environ for name in _LAUNCHER_VARS):
        return True
    return _int_env("SLURM_STEP_NUM_TASKS") > 1    # srun -n N, whatever its --mpi plugin


def launcher_size() -> int:
    """How many ranks the MPI launcher started (from its environment; 1 if unknown)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
                 "SLURM_STEP_NUM_TASKS"):
        value = _int_env(name)
        if value > 0:
            return value
    return 1


class Communicator:
    """A group of ``size`` ranks; this process is ``rank``. The single-process base.

    Collectives (every rank must call them, in the same order):
    ``sum(a)``/``broadcast(a, root)`` work in place on arrays of any supported library
    and return ``a`` (a new array for JAX, whose arrays are immutable); ``sum_ints``,
    ``broadcast_object`` and ``barrier`` are for host values. Data-parallel steps:
    ``share``/``shard``, ``gradient``, ``allreduce_gradients``, ``accuracy``, ``broadcast_model``,
    ``broadcast_rng``; ``local_device`` picks this rank's GPU.

    Attributes:
        rank, size: this rank and the number of ranks.
        local_rank: this rank's index among the ranks on its machine (its GPU).
        transport: "host" or "nccl" (see :func:`init`).
        seconds_communicating: time spent inside collectives so far (benchmarks).
    """

    rank = 0
    size = 1
    local_rank = 0

    def __init__(self, transport: str = "host"):
        self.transport = transport
        self.seconds_communicating = 0.0

    @property
    def is_root(self) -> bool:
        """True on rank 0, which prints, shows progress and writes files."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait until every rank got here."""

    def sum(self, a: Array) -> Array:
        """Sum ``a`` over the ranks, in place: every rank gets the same sum. Returns ``a``."""
        return a

    def broadcast(self, a: Array, root: int = 0) -> Array:
        """Copy ``root``'s ``a`` into every rank's ``a`` (same shape and dtype). Returns ``a``."""
        return a

    def sum_ints(self, values: Iterable[int]) -> list[int]:
        """Exact sums of Python integers over the ranks (counts)."""
        return [int(v) for v in values]

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """``root``'s small Python object (seeds, generator states, names) on every rank."""
        return obj

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now with exit status ``code``."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # ------------------------------------------------------------------ data parallel
    def share(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, stop)`` of ``n`` items.

        The first ``n % size`` ranks take one more: 100 over 3 ranks is 34, 33, 33; a rank
        may get 0 items (2 over 3 ranks: 1, 1, 0) and still joins every collective.
        """
        q, r = divmod(int(n), self.size)
        start = self.rank * q + min(self.rank, r)
        return start, start + q + (1 if self.rank < r else 0)

    def shard(self, items: Any) -> Any:
        """This rank's contiguous share of ``items`` (a host index array, a list, ...)."""
        start, stop = self.share(len(items))
        return items[start:stop]

    def gradient(self, network: Sequential, x: Array, t: Array,
                 batch: numpy.ndarray) -> tuple[dict[str, Array], Array]:
        """Gradient and mean loss of a global batch, summed over the ranks.

        Args:
            network: a Sequential model (every rank holds the same one).
            x: the whole training set's inputs, already on the network's device.
            t: its labels, on the same device.
            batch: host integer indices of the global batch, the same on every rank
                (a slice of one shared permutation); this rank uses its ``share``.

        Returns:
            ``(grads, loss)``: ``{name: array}`` like ``network.params`` and the 0-D mean
            loss of the global batch, equal on every rank.
        """
        total = len(batch)
        start, stop = self.share(total)
        shard = Shard(self, start, stop, total)
        with sharded(shard):
            if shard.n:
                xp = array_namespace(x)
                with device_scope(x):        # CuPy: gather on this rank's GPU, not the current one
                    idx = network.device.asarray(batch[start:stop])
                    x_share, t_share = xp.take(x, idx, axis=0), xp.take(t, idx, axis=0)
                grads = network.gradient(x_share, t_share)
                loss = network.last_layer.loss
            else:
                grads, loss = _join_without_samples(network, x), None
        return self.allreduce_gradients(grads, loss, shard.weight)

    def allreduce_gradients(self, grads: Mapping[str, Array], loss: Array | None,
                            weight: float) -> tuple[dict[str, Array], Array | None]:
        """Sum ``weight * grads[name]`` and ``weight * loss`` over the ranks: one packed buffer.

        Args:
            grads: ``{name: array}``, the mean gradient over this rank's ``n_r`` samples.
            loss: 0-D array, the mean loss over them; None for a rank without samples.
            weight: ``n_r / B`` (B: the global batch), so that the sums are the global
                batch's mean gradient and mean loss.

        Returns:
            ``(grads, loss)``: new arrays (views into the summed buffer) with the shapes
            and dtypes of ``grads``, and the 0-D summed loss. With one rank, the inputs.
        """
        if self.size == 1:
            return dict(grads), loss
        names = list(grads)
        first = grads[names[0]]
        xp = array_namespace(first)
        dtypes = {grads[k].dtype for k in names}
        dtype = first.dtype if len(dtypes) == 1 else xp.float64
        with device_scope(first):
            parts = [xp.reshape(_as_dtype(xp, grads[k], dtype), (-1,)) for k in names]
            if loss is None:
                parts.append(xp.zeros((1,), dtype=dtype, device=_namespace.device(first)))
            else:
                parts.append(xp.reshape(_as_dtype(xp, loss, dtype), (1,)))
            buffer = xp.concat(parts)
            if weight != 1.0:
                buffer = buffer * weight
            buffer = self.sum(buffer)
            out, offset = {}, 0
            for k in names:
                g = grads[k]
                size = math.prod(g.shape)
                out[k] = _as_dtype(xp, xp.reshape(buffer[offset:offset + size], tuple(g.shape)),
                                   g.dtype)
                offset += size
            return out, buffer[offset]

    def accuracy(self, network: Sequential, x: Array, t: Array, batch_size: int = 100) -> float:
        """Accuracy over all of ``x``: each rank counts its share's correct predictions,
        the integer counts are summed (exact, whatever the shares).
        """
        n = x.shape[0]
        if n == 0:
            raise ValueError(f"{type(self).__name__}.accuracy: got an empty batch")
        start, stop = self.share(n)
        correct = 0
        if stop > start:
            fraction = network.accuracy(x[start:stop, ...], t[start:stop, ...], batch_size)
            correct = round(fraction * (stop - start))   # exact: correct / n * n, n < 2**52
        return self.sum_ints([correct])[0] / n

    def broadcast_model(self, network: Sequential) -> None:
        """Rank ``0``'s parameters, buffers (running statistics) and layer random
        generators (Dropout masks) on every rank.
        """
        for name in list(network.params):
            value = network.params[name]
            new = self.broadcast(value)
            if new is not value:
                network.params[name] = new
        buffers = network._buffers() if hasattr(network, "_buffers") else ()
        for _, layer, attr in buffers:
            value = getattr(layer, attr)
            new = self.broadcast(value)
            if new is not value:
                setattr(layer, attr, new)
        for layer in getattr(network, "layers", {}).values():
            self.broadcast_rng(getattr(layer, "_rng", None))

    def broadcast_rng(self, rng: numpy.random.Generator | None) -> None:
        """Rank 0's state of the host generator ``rng`` on every rank (None: nothing)."""
        if rng is not None and hasattr(rng, "bit_generator"):
            rng.bit_generator.state = self.broadcast_object(rng.bit_generator.state)

    def local_device(self, spec: str | Device = "auto") -> Device:
        """The device of this rank: a GPU spec without an index becomes this rank's GPU.

        "auto" (a GPU when CuPy can use one), "cuda"/"gpu" -> ``cuda:{g}``, "torch:cuda" ->
        ``torch:cuda:{g}``, "jax:gpu" -> ``jax:gpu:{g}`` with ``g = local_rank % (GPUs this
        rank sees)``: one GPU per rank when each sees them all, and GPU 0 when the launcher
        gives each rank one GPU (``srun --gpus-per-task=1``). Start at most one rank per
        GPU (NCCL refuses two ranks on one GPU). Any other spec (also one with an index)
        is used as given.
        """
        if isinstance(spec, Device):
            return spec
        text = str(spec).strip().lower()
        if text == "auto":
            text = "cuda" if _visible_gpus("cuda") > 0 else "cpu"
        prefix = {"cuda": "cuda", "gpu": "cuda", "torch:cuda": "torch:cuda",
                  "jax:gpu": "jax:gpu"}.get(text)
        if prefix is None:
            return resolve_device(text if text == "cpu" else spec)
        count = _visible_gpus(prefix)
        if count == 0:
            return resolve_device(prefix)       # raises: says why no GPU is usable
        return resolve_device(f"{prefix}:{self.local_rank % count}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, transport={self.transport!r})")


class SingleProcess(Communicator):
    """One rank, no MPI: every collective returns its input."""


class MPICommunicator(Communicator):
    """The ranks of an mpi4py communicator (``MPI.COMM_WORLD`` from :func:`init`)."""

    def __init__(self, mpi_comm: Any, transport: str = "host") -> None:
        super().__init__(transport)
        self._MPI = _import_mpi()
        self._comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self.local_rank = mpi_comm.Split_type(self._MPI.COMM_TYPE_SHARED).Get_rank()
        self._nccl_comm: Any = None
        if transport == "nccl":
            _import_nccl()           # fail early, with the reason, on every rank alike

    def barrier(self) -> None:
        with self._timed():
            self._comm.Barrier()

    def sum(self, a: Array) -> Array:
        return self._collective(a, "sum", 0)

    def broadcast(self, a: Array, root: int = 0) -> Array:
        return self._collective(a, "broadcast", root)

    def sum_ints(self, values: Iterable[int]) -> list[int]:
        counts = numpy.array([int(v) for v in values], dtype=numpy.int64)
        with self._timed():
            self._comm.Allreduce(self._MPI.IN_PLACE, counts, op=self._MPI.SUM)
        return [int(v) for v in counts]

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        with self._timed():           # mpi4py pickles it; only ever from a rank of this job
            return self._comm.bcast(obj, root=root)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job with exit status ``code`` (``MPI_Abort``), after a
        moment for the launcher to forward what this rank printed (it drops output still in
        transit when it tears the job down).
        """
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)
        self._comm.Abort(code)

    def watch_collectives(self, timeout: float) -> None:
        """End the job when this rank waits longer than ``timeout`` seconds in one
        collective (another rank stopped, crashed without MPI noticing, or hangs on a file
        system): one line on stderr naming this rank, then ``MPI_Abort`` from a watchdog
        thread, since the waiting thread is blocked inside MPI.
        """
        if timeout <= 0:
            raise ValueError(f"xpconv.distributed: expected a timeout > 0 seconds; got {timeout!r}")

        def watch():
            while True:
                time.sleep(min(1.0, timeout / 4))
                since = self._waiting_since
                if since is not None and time.monotonic() - since > timeout:
                    print(f"xpconv: rank {self.rank} of {self.size} waited more than {timeout:g} s in a "
                          f"collective: another rank is stopped or hung; ending the job (--timeout)",
                          file=sys.stderr, flush=True)
                    self.abort(1)

        threading.Thread(target=watch, name="xpconv-collective-watchdog", daemon=True).start()

    # ------------------------------------------------------------------ helpers
    _waiting_since: float | None = None

    @contextlib.contextmanager
    def _timed(self):
        start = time.perf_counter()
        self._waiting_since = time.monotonic()
        try:
            yield
        finally:
            self._waiting_since = None
            self.seconds_communicating += time.perf_counter() - start

    def _collective(self, a, kind: str, root: int):
        """In-place sum/broadcast of array ``a``: MPI on its memory where MPI can read it,
        NCCL for CuPy with transport "nccl", else through a host copy written back.
        """
        if self.size == 1:
            return a
        with self._timed():
            if self.transport == "nccl" and array_api_compat.is_cupy_array(a):
                return self._nccl(a, kind, root)
            buffer = _mpi_buffer(a)
            if buffer is not None:
                try:
                    self._mpi_op(buffer, kind, root)
                    return a
                except BufferError:   # e.g. a non-contiguous view: take the host path
                    pass
            host = numpy.array(to_numpy(a), order="C", copy=True)
            self._mpi_op(host, kind, root)
            return _write_back(a, host)

    def _mpi_op(self, buffer, kind: str, root: int) -> None:
        if kind == "sum":
            self._comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)
        else:
            self._comm.Bcast(buffer, root=root)

    def _nccl(self, a, kind: str, root: int):
        import cupy
        nccl = _import_nccl()
        with a.device:
            if self._nccl_comm is None:   # collective: every rank reaches it at the same call
                uid = nccl.get_unique_id() if self.rank == 0 else None
                self._nccl_comm = nccl.NcclCommunicator(self.size, self._comm.bcast(uid), self.rank)
            buf = a if a.flags.c_contiguous else cupy.ascontiguousarray(a)
            if buf.size:
                dtype = _nccl_dtype(nccl, buf.dtype)
                stream = cupy.cuda.get_current_stream().ptr
                if kind == "sum":
                    self._nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype,
                                              nccl.NCCL_SUM, stream)
                else:
                    self._nccl_comm.bcast(buf.data.ptr, buf.size, dtype, root, stream)
            if buf is not a:
                a[...] = buf
        return a


def _join_without_samples(network, x) -> dict:
    """A rank whose share of this batch is empty: forward and backward on 0 rows, so that
    it joins the layers' collectives (BatchNormalization) and draws the same random
    numbers (Dropout) as the others; its gradients are zeros.
    """
    xp = array_namespace(x)
    with device_scope(x):
        dout = xp.zeros_like(network.predict(x[:0, ...], train_flg=True))
        for layer in reversed(network.layers.values()):
            dout = layer.backward(dout)
        return {name: xp.zeros_like(p) for name, p in network.params.items()}


# ============================================================================ helpers

def _as_dtype(xp, a, dtype):
    return a if a.dtype == dtype else xp.astype(a, dtype)


def _mpi_buffer(a):
    """``a`` itself where MPI may read and write its memory directly, else None.

    NumPy (C-contiguous, writeable), torch CPU tensors and array-api-strict arrays are
    host memory MPI takes as buffers. JAX arrays are immutable; CuPy and torch CUDA
    memory is on a GPU, which the MPI wheels cannot read.
    """
    if isinstance(a, numpy.ndarray):
        return a if a.flags.c_contiguous and a.flags.writeable else None
    if array_api_compat.is_torch_array(a):
        return a if a.device.type == "cpu" and a.is_contiguous() and not a.requires_grad else None
    if type(a).__module__.split(".")[0] == "array_api_strict":
        return a
    return None


def _write_back(a, host):
    """Host result ``host`` into ``a`` (in place), or as a new array for immutable JAX."""
    new = from_host(host, like=a)
    if array_api_compat.is_jax_array(a):
        return new
    with device_scope(a):
        a[...] = new
    return a


def _import_mpi():
    """``mpi4py.MPI``, or a DistributedUnavailable that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        missing = "mpi4py is not installed" if "mpi4py" in str(exc) else str(exc)
        raise DistributedUnavailable(
            f"xpconv.distributed: MPI is needed ({_why_mpi()}) but {missing}. Install it with "
            f"{MPI_EXTRA} (mpi4py and the MPICH library), or on a cluster build mpi4py "
            f"against the site's MPI (see the README, 'Scaling out')") from None
    except RuntimeError as exc:   # mpi4py without an MPI library: "cannot load MPI library"
        raise DistributedUnavailable(
            f"xpconv.distributed: mpi4py cannot load an MPI library ({exc}). Install one with "
            f"{MPI_EXTRA} (adds the MPICH wheel), or load the site's MPI module") from None
    return MPI


def _why_mpi() -> str:
    found = [name for name in _LAUNCHER_VARS if name in os.environ]
    return f"started by an MPI launcher: {found[0]} is set" if found else "asked for"


def _import_nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedUnavailable(
            f"xpconv.distributed: transport 'nccl' needs CuPy with NCCL ({exc}); install "
            f"\"xpconv[cuda12]\" (or cuda13) and NCCL (pip install nvidia-nccl-cu12), or use "
            f"transport 'host'") from None
    if not getattr(nccl, "available", True):
        raise DistributedUnavailable("xpconv.distributed: this CuPy was built without NCCL; "
                                     "install NCCL (pip install nvidia-nccl-cu12) or use "
                                     "transport 'host'")
    return nccl


def _nccl_dtype(nccl, dtype) -> int:
    names = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
             "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8",
             "int8": "NCCL_INT8"}
    name = names.get(str(dtype))
    if name is None:
        raise TypeError(f"xpconv.distributed: NCCL cannot sum dtype {dtype}; expected one of "
                        f"{', '.join(names)}")
    return getattr(nccl, name)


def _abort_on_uncaught_exception(world: Communicator) -> None:
    """An uncaught exception on this rank prints its traceback, then aborts every rank."""
    def excepthook(kind, value, tb):
        try:
            sys.stderr.write(f"xpconv.distributed: rank {world.rank} of {world.size} failed; "
                             f"aborting all ranks\n")
            traceback.print_exception(kind, value, tb)
        finally:
            world.abort(1)

    sys.excepthook = excepthook


def _visible_gpus(prefix: str) -> int:
    """GPUs this process sees through CuPy ("cuda"), torch ("torch:cuda") or JAX ("jax:gpu")."""
    from .._backends import cupy_gpu_count as _cupy_gpu_count, importable as _importable
    try:
        if prefix == "cuda":
            return _cupy_gpu_count()
        if prefix == "torch:cuda" and _importable("torch"):
            import torch
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        if prefix == "jax:gpu" and _importable("jax"):
            import jax
            return len(jax.devices("gpu"))
    except RuntimeError:    # JAX without a GPU backend
        return 0
    return 0


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def find_mpiexec() -> str | None:
    """The ``mpiexec`` beside this Python (the MPICH wheel's), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")
