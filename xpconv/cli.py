"""The ``xpconv`` command: devices, train, filters, convert, selftest, bench."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

MODELS = ("simple", "deep", "lenet")
OPTIMIZERS = ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam")
MAX_CLASSES = 10_000   # labels must be 0..K-1 with K at most this (the output layer has K units)

# Failures a user can cause and fix (bad option, file, data, divergence): one line, exit 1.
# FloatingPointError covers xpconv.TrainingDiverged.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError)


def main(argv=None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "bench":
        args.bench_argv = rest  # every option, --help included, is the benchmark's own
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .trainer import TrainingDiverged
    try:
        return args.run(args)
    except TrainingDiverged as exc:   # with --distributed, every rank stops at the same step
        if _is_root():
            print(f"xpconv {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except EXPECTED_ERRORS as exc:
        _fail_on_this_rank(f"xpconv {args.command}: error: {_one_line(exc)}")
        return 1
    except KeyboardInterrupt:
        print(f"xpconv {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type's name if it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpconv", description="The book's CNN on any Array API device.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("devices", help="list the devices usable here")
    d.set_defaults(run=_devices)

    t = sub.add_parser("train", help="train a network on MNIST (default) or your data",
                       description="Train a network. With no arguments: SimpleConvNet on the full "
                                   "MNIST set if it is cached or can be downloaded, else on the "
                                   "bundled MNIST (8,000 train / 2,000 validation images).")
    t.add_argument("--model", choices=MODELS, default="simple", help="network (default: simple)")
    t.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, torch, jax, ...")
    t.add_argument("--epochs", type=_positive_int, default=20, help="passes over the data (default: 20)")
    t.add_argument("--batch-size", type=_positive_int, default=100, help="mini-batch size (default: 100)")
    t.add_argument("--optimizer", default="Adam", type=_optimizer_name,
                   help=f"one of {', '.join(OPTIMIZERS)} (default: Adam)")
    t.add_argument("--lr", type=float, default=0.001, help="learning rate (default: 0.001)")
    t.add_argument("--data", default=None,
                   help="mnist, mnist-bundled or PATH.npz (x: (N, C, H, W), t: (N,)); "
                        "default: mnist, falling back to mnist-bundled offline")
    t.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling (default: 0)")
    t.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training and test images (quick trials)")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--save", metavar="PATH", help="write the trained parameters here (.npz)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of 'mpiexec -n N' (pip install \"xpconv[mpi]\"); "
                        "--batch-size stays the global batch; each rank uses its own GPU")
    t.add_argument("--transport", choices=("host", "nccl"), default=None,
                   help="with --distributed, how CuPy gradients travel: host (default: through "
                        "host memory, any MPI) or nccl (GPU to GPU through CuPy's NCCL)")
    t.set_defaults(run=_train)

    f = sub.add_parser("filters", help="draw the first layer's filters of saved parameters")
    f.add_argument("params", metavar="PARAMS", help="file written by --save / save_params")
    f.add_argument("--out", default="filters.png", help="image to write (default: filters.png)")
    f.set_defaults(run=_filters)

    c = sub.add_parser("convert", help="convert the book's params.pkl (or any params file) to .npz",
                       description="Read parameters safely (an .npz, or a pickle of the book's "
                                   "parameters: a dict of names to float arrays; nothing in it is run) "
                                   "and write them as an .npz that load_params reads.")
    c.add_argument("source", metavar="SOURCE", help="e.g. the book's ch07/params.pkl")
    c.add_argument("target", metavar="TARGET", help="the .npz to write (written atomically)")
    c.set_defaults(run=_convert)

    s = sub.add_parser("selftest", help="check every op and a training step on a device against NumPy",
                       description="Check every op (conv2d, pooling, im2col/col2im, forward and backward) "
                                   "and a SimpleConvNet gradient step on a device against NumPy float64, "
                                   "time a training step, and print a report (exit code 0: all passed). "
                                   "Attach the --json file to a bug report.")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, torch:cuda, jax, ...")
    s.add_argument("--dtype", choices=("float32", "float64", "float16"), default="float32",
                   help="dtype on the device (default: float32)")
    s.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    s.add_argument("--batch-size", type=_positive_int, default=100,
                   help="batch of the timed training step (default: 100)")
    s.add_argument("--repeat", type=_positive_int, default=10, help="timed steps (default: 10)")
    s.add_argument("--warmup", type=_non_negative_int, default=2,
                   help="untimed steps before them (default: 2)")
    s.set_defaults(run=_selftest)

    b = sub.add_parser("bench", help="benchmark xpconv against the textbook NumPy code and PyTorch "
                                     "(xpconv bench --help)", add_help=False)
    b.set_defaults(run=_bench)  # its options are parsed by xpconv.bench.cli
    return p


# --------------------------------------------------------------------------- commands

def _devices(args) -> int:
    from .devices import _cupy_problem, available_devices, device
    specs = available_devices()
    for spec in specs:
        print(f"{spec:28s} {device(spec).xp.__name__}")
    if not any(s.startswith("cuda") for s in specs):
        print(f"(no CuPy GPU: {_cupy_problem()})")
    return 0


def _train(args) -> int:
    from . import DeepConvNet, LeNet, SimpleConvNet, Trainer
    from .datasets import DatasetUnavailableError, load_dataset
    from .devices import device

    if args.save:
        _check_writable(args.save)     # before any data is loaded or a step is run
    comm = None
    if args.distributed:
        from .distributed import init
        comm = init(transport=args.transport or "host")
    elif args.transport:
        raise ValueError("--transport is for --distributed runs (mpiexec -n N xpconv train "
                         "--distributed --transport nccl)")
    root = comm is None or comm.is_root
    say = print if root else _silent
    dev = device(args.device) if comm is None else comm.local_device(args.device)
    name = args.data or "mnist"
    if root:   # rank 0 loads (and downloads) first; the others then load what it chose
        try:
            (x_train, t_train), (x_test, t_test) = load_dataset(
                name, progressbar=False if args.quiet else None)
        except DatasetUnavailableError as exc:
            if args.data is not None:   # one line; the full message lists every mirror's error
                raise DatasetUnavailableError(f"{str(exc).splitlines()[0]}; --data mnist-bundled works "
                                              f"offline") from None
            if not args.quiet:
                print(f"xpconv train: full MNIST unavailable ({str(exc).splitlines()[0]}); using the "
                      f"bundled MNIST test set instead (8,000 train / 2,000 validation)", file=sys.stderr)
            name = "mnist-bundled"
            (x_train, t_train), (x_test, t_test) = load_dataset(name)
    if comm is not None:
        name = comm.broadcast_object(name)
        if not root:
            (x_train, t_train), (x_test, t_test) = load_dataset(name)
    if args.limit:
        x_train, t_train, x_test, t_test = (a[:args.limit] for a in (x_train, t_train, x_test, t_test))
    classes = _class_count(name, t_train, t_test)
    input_dim = tuple(x_train.shape[1:])
    model_class = {"simple": SimpleConvNet, "deep": DeepConvNet, "lenet": LeNet}[args.model]
    kwargs = dict(input_dim=input_dim, output_size=classes, device=dev, dtype=args.dtype, seed=args.seed)
    network = model_class(**kwargs)
    ranks = "" if comm is None else (f" (global, over {comm.size} rank{'s' if comm.size > 1 else ''}, "
                                    f"transport {comm.transport})")
    say(f"xpconv train: {model_class.__name__} on {dev} ({dev.xp.__name__}), data {name}: "
        f"{len(x_train)} train / {len(x_test)} test images {input_dim}, {args.optimizer} lr={args.lr}, "
        f"batch {args.batch_size}{ranks}, {args.epochs} epochs, seed {args.seed}")
    trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=args.epochs,
                      mini_batch_size=args.batch_size, optimizer=args.optimizer,
                      optimizer_param={"lr": args.lr}, verbose=not args.quiet, seed=args.seed,
                      comm=comm)
    start = time.perf_counter()
    with warnings.catch_warnings():   # a diverging step's overflow: TrainingDiverged says it in one line
        warnings.filterwarnings("ignore", "(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        trainer.train()
    total = time.perf_counter() - start
    per_epoch = sorted(trainer.epoch_seconds)[len(trainer.epoch_seconds) // 2]
    on = f"{dev}" if comm is None else f"{comm.size} ranks ({dev} on rank 0)"
    say(f"summary: test accuracy {trainer.test_acc:.4f} on {len(x_test)} images ({name}); "
        f"{per_epoch:.2f} s/epoch (median), {total:.1f} s in total on {on}")
    if args.save and root:   # the ranks hold the same parameters: rank 0 writes them
        network.save_params(args.save)
        print(f"saved parameters to {args.save} (load with {model_class.__name__}("
              f"input_dim={input_dim}, output_size={classes}).load_params({args.save!r}))")
    if comm is not None:
        comm.barrier()       # no rank reports success before the file is written
    return 0


def _silent(*args, **kwargs) -> None:
    pass


def _is_root() -> bool:
    from .distributed import active
    comm = active()
    return comm is None or comm.is_root


def _fail_on_this_rank(message: str) -> None:
    """Print the error; in a job of several ranks, end them all (the others would wait
    for this one in their next collective)."""
    from .distributed import active
    comm = active()
    if comm is None or comm.size == 1:
        print(message, file=sys.stderr)
        return
    print(f"{message} (rank {comm.rank} of {comm.size}; ending all ranks)", file=sys.stderr)
    comm.abort(1)


def _filters(args) -> int:
    from .plot import save_filter_grid
    from .serialization import load_arrays
    arrays, _ = load_arrays(args.params, who="xpconv filters")
    first = next((k for k, v in arrays.items() if v.ndim == 4), None)
    if first is None:
        raise ValueError(f"{args.params}: no 4-D filter array (FN, C, FH, FW) in it; has {list(arrays)}")
    save_filter_grid(arrays[first], args.out, title=f"{first} of {Path(args.params).name}")
    print(f"wrote {args.out}: {arrays[first].shape[0]} filters of {first} {arrays[first].shape}")
    return 0


def _convert(args) -> int:
    import os
    from .serialization import load_arrays, save_arrays
    arrays, metadata = load_arrays(args.source, who="convert")
    if os.path.exists(args.target) and os.path.samefile(args.source, args.target):
        raise ValueError(f"convert: {args.target} is the same file as {args.source}; write to another path")
    save_arrays(args.target, arrays, metadata={**metadata, "format": "xpconv-params", "version": "1"})
    listing = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    dtypes = "/".join(sorted({str(v.dtype) for v in arrays.values()}))
    print(f"wrote {args.target}: {len(arrays)} arrays ({dtypes}) from {args.source}: {listing}")
    return 0


def _selftest(args) -> int:
    from .selftest import run
    if args.json:
        _check_writable(args.json, option="--json")
    report = run(args.device, dtype=args.dtype, batch_size=args.batch_size, repeat=args.repeat,
                 warmup=args.warmup)
    print(report.format())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0 if report.passed else 1


def _bench(args) -> int:
    from .bench.cli import main as bench_main
    return bench_main(args.bench_argv, prog="xpconv bench")


def _check_writable(path, option="--save") -> None:
    """Output ``path`` of --save or --json: its folder exists and takes a new file; not a folder."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give the name of a file in it")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist; create it first")
    try:   # the only sure test (permissions, read-only file systems): write a file there
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".xpconv-write-test-")
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in the folder {folder} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _class_count(name, t_train, t_test) -> int:
    """K = largest label + 1, for labels 0..K-1; refused when K is huge, labels are sparse or
    there is a single class (before a K-way output layer is allocated)."""
    import numpy
    used = numpy.unique(numpy.concatenate([numpy.asarray(t_train), numpy.asarray(t_test)]))
    classes = int(used[-1]) + 1
    fix = "renumber the labels 0..K-1 (e.g. numpy.unique(t, return_inverse=True))"
    if classes > MAX_CLASSES:
        raise ValueError(f"data {name}: the largest label is {classes - 1}, which would need {classes} output "
                         f"classes; xpconv train takes labels 0..K-1 with K <= {MAX_CLASSES:,}: {fix}")
    if classes > 10 and 2 * len(used) < classes:
        raise ValueError(f"data {name}: labels are not dense: {len(used)} distinct labels but the largest is "
                         f"{classes - 1} ({classes} output classes); {fix}")
    if len(numpy.unique(numpy.asarray(t_train))) < 2:
        raise ValueError(f"data {name}: every training label is {int(t_train[0])}, a single class: "
                         f"nothing to learn; use data with at least 2 classes")
    return classes


# --------------------------------------------------------------------------- argument types

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text}")
    return value


def _optimizer_name(text: str) -> str:
    for name in OPTIMIZERS:
        if name.lower() == text.lower():
            return name
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(OPTIMIZERS)}; got {text!r}")


if __name__ == "__main__":
    sys.exit(main())
