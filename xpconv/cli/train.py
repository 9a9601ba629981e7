"""``xpconv train``: train a network on MNIST, a bundled set or your data."""
from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .common import (
    MODELS,
    OPTIMIZERS,
    check_free_space,
    check_writable,
    non_negative_int,
    optimizer_name,
    positive_int,
    save_path,
)

MAX_CLASSES = 10_000   # labels must be 0..K-1 with K at most this (the output layer has K units)


def add_parser(sub) -> None:
    """Add the ``train`` command to the subparsers ``sub``."""
    t = sub.add_parser("train", help="train a network on MNIST (default) or your data",
                       description="Train a network. With no arguments: SimpleConvNet on the full "
                                   "MNIST set if it is cached or can be downloaded, else on the "
                                   "bundled MNIST (8,000 train / 2,000 validation images).")
    t.add_argument("--model", choices=MODELS, default="simple", help="network (default: simple)")
    t.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, torch, jax, ...")
    t.add_argument("--epochs", type=positive_int, default=20, help="passes over the data (default: 20)")
    t.add_argument("--batch-size", type=positive_int, default=100, help="mini-batch size (default: 100)")
    t.add_argument("--optimizer", default="Adam", type=optimizer_name,
                   help=f"one of {', '.join(OPTIMIZERS)} (default: Adam)")
    t.add_argument("--lr", type=float, default=0.001, help="learning rate (default: 0.001)")
    t.add_argument("--data", default=None,
                   help="mnist, mnist-bundled, fashion-mnist, cifar10, PATH.npz (x: (N, C, H, W), "
                        "t: (N,)) or DIR (one subfolder of images per class); "
                        "default: mnist, falling back to mnist-bundled offline")
    t.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling (default: 0)")
    t.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="for data without its own test split (an .npz with only x and t, a folder): "
                        "the share drawn per class, seeded, for validation (default: 0.2)")
    t.add_argument("--channels-last", action="store_true",
                   help="the .npz images are (N, H, W, C): transpose them to (N, C, H, W)")
    t.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N training and test images (quick trials); of an .npz, "
                        "only those are read")
    t.add_argument("--allow-non-finite", action="store_true",
                   help="train on float images that hold NaN or Inf (refused by default) with a warning")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--save", metavar="PATH",
                   help="write the trained model here (.npz); a PATH ending in / is a folder: "
                        "PATH/model.npz")
    t.add_argument("--force", action="store_true",
                   help="replace a read-only --save file (refused by default)")
    t.add_argument("--checkpoint", metavar="DIR",
                   help="keep checkpoints in DIR (last.npz, history.csv): written every "
                        "--checkpoint-every steps, at every epoch end and on SIGTERM/SIGINT/SIGHUP; started "
                        "again with the same arguments, training resumes from it, bit for bit")
    t.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="STEPS",
                   help="steps between checkpoints within an epoch (default: 500)")
    t.add_argument("--restart", action="store_true",
                   help="with --checkpoint: ignore a checkpoint in DIR and start over")
    t.add_argument("--log", metavar="PATH", help="write the per-epoch history here (.csv or .jsonl)")
    t.add_argument("--plot", metavar="PNG", help="draw the loss and accuracy curves here (matplotlib)")
    t.add_argument("--lr-schedule", choices=("constant", "step", "cosine", "plateau"), default="constant",
                   help="constant (default); step (x0.1 every 10 epochs); cosine (to 0 at the last "
                        "step); plateau (x0.1 after 3 epochs without a better validation loss)")
    t.add_argument("--warmup", type=non_negative_int, default=0, metavar="STEPS",
                   help="linear learning-rate warm-up over the first STEPS steps (default: 0)")
    t.add_argument("--early-stop", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation loss and keep the "
                        "best epoch's parameters")
    t.add_argument("--compile", action="store_true",
                   help="compile the training step: one jax.jit program on --device jax, one "
                        "torch.compile graph on --device torch (its first step compiles, a minute "
                        "on a small CPU); the plain step on NumPy and CuPy")
    t.add_argument("--keep-best", action="store_true",
                   help="with --checkpoint: also write the best model by validation accuracy to DIR/best.npz")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of 'mpiexec -n N' (python -m pip install \".[mpi]\"); "
                        "--batch-size stays the global batch; each rank uses its own GPU")
    t.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="with --distributed: end the job when a rank waits longer than this in one "
                        "collective (a stopped or hung rank; default: 600)")
    t.add_argument("--transport", choices=("host", "nccl"), default=None,
                   help="with --distributed, how CuPy gradients travel: host (default: through "
                        "host memory, any MPI) or nccl (GPU to GPU through CuPy's NCCL)")
    t.set_defaults(run=run)



def run(args) -> int:
    """Run ``xpconv train`` with the parsed ``args``; returns the exit status."""
    from .. import DeepConvNet, LeNet, SimpleConvNet, Trainer
    from ..datasets import DatasetUnavailableError, load_dataset
    from ..devices import device, is_host_numpy

    if args.save:
        args.save = save_path(args.save)
        check_writable(args.save, force=args.force)     # before any data is loaded or a step is run
    if args.log:
        check_writable(args.log, option="--log")
    if args.plot:
        check_writable(args.plot, option="--plot")
    if args.keep_best and not args.checkpoint:
        raise ValueError("--keep-best writes DIR/best.npz: give --checkpoint DIR")
    if args.restart and not args.checkpoint:
        raise ValueError("--restart is for --checkpoint DIR (it starts over instead of resuming)")
    if not args.distributed:
        from ..distributed import launched_by_mpi, launcher_size
        if launched_by_mpi() and launcher_size() > 1:
            raise ValueError(f"started by an MPI launcher with {launcher_size()} ranks but without "
                             f"--distributed: add --distributed to train one model over the ranks "
                             f"(nothing was trained or written)")
    comm = None
    if args.distributed:
        from ..distributed import init
        comm = init(transport=args.transport or "host", timeout=args.timeout)
    elif args.transport:
        raise ValueError("--transport is for --distributed runs (mpiexec -n N xpconv train "
                         "--distributed --transport nccl)")
    root = comm is None or comm.is_root
    say = print if root else _silent
    dev = device(args.device) if comm is None else comm.local_device(args.device)
    name = args.data or "mnist"
    if root:   # rank 0 loads (and downloads) first; the others then load what it chose
        try:
            data = load_dataset(name, progressbar=False if args.quiet else None, **_load_args(args))
        except DatasetUnavailableError as exc:
            if args.data is not None:   # one line; the full message lists every mirror's error
                raise DatasetUnavailableError(f"{str(exc).splitlines()[0]}; --data mnist-bundled works "
                                              f"offline") from None
            if not args.quiet:
                print(f"xpconv train: full MNIST unavailable ({str(exc).splitlines()[0]}); using the "
                      f"bundled MNIST test set instead (8,000 train / 2,000 validation)", file=sys.stderr)
            name = "mnist-bundled"
            data = load_dataset(name, **_load_args(args))
    if comm is not None:
        name = comm.broadcast_object(name)
        if not root:
            data = load_dataset(name, **_load_args(args))
    (x_train, t_train), (x_test, t_test) = data
    class_names = getattr(data, "classes", None)
    if len(x_train) == 0:
        raise ValueError(f"data {name}: 0 training images; expected at least 1")
    classes = _class_count(name, t_train, t_test)
    input_dim = tuple(x_train.shape[1:])
    model_class = {"simple": SimpleConvNet, "deep": DeepConvNet, "lenet": LeNet}[args.model]
    kwargs = dict(input_dim=input_dim, output_size=classes, device=dev, dtype=args.dtype, seed=args.seed)
    network = model_class(**kwargs)
    if class_names and len(class_names) == classes:
        network.class_names = list(class_names)     # saved with the model: predict names them
    if is_host_numpy(next(iter(network.params.values()))):   # before the first step allocates it
        from ..memory import OPTIMIZER_SLOTS, require, training_bytes
        batch = args.batch_size if comm is None else -(-args.batch_size // comm.size)
        require(training_bytes(network, input_dim, batch, OPTIMIZER_SLOTS.get(args.optimizer, 2)),
                who="xpconv train",
                what=f"training {model_class.__name__} on {'x'.join(map(str, input_dim))} images at batch {batch}",
                hint="use a smaller --batch-size or smaller images")
    if args.save and root:
        check_free_space(args.save, sum(a.nbytes for a in network.state_arrays().values()))
    ranks = "" if comm is None else (f" (global, over {comm.size} rank{'s' if comm.size > 1 else ''}, "
                                    f"transport {comm.transport})")
    say(f"xpconv train: {model_class.__name__} on {dev} ({dev.xp.__name__}), data {name}: "
        f"{len(x_train)} train / {len(x_test)} test images {input_dim}, {args.optimizer} lr={args.lr}, "
        f"batch {args.batch_size}{ranks}, {args.epochs} epochs, seed {args.seed}")
    trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=args.epochs,
                      mini_batch_size=args.batch_size, optimizer=args.optimizer,
                      optimizer_param={"lr": args.lr}, verbose=not args.quiet, seed=args.seed,
                      comm=comm, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                      restart=args.restart, log=args.log, lr_schedule=args.lr_schedule,
                      warmup=args.warmup, early_stop=args.early_stop, keep_best=args.keep_best,
                      compile=args.compile)
    if args.checkpoint and not args.restart and (Path(args.checkpoint) / "last.npz").exists():
        say(f"xpconv train: resuming from {Path(args.checkpoint) / 'last.npz'} (--restart starts over)")
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
    if args.plot and root:
        from ..plot import save_history
        save_history(trainer.history, args.plot)
        print(f"wrote {args.plot}")
    if args.save and root:   # the ranks hold the same parameters: rank 0 writes them
        _save_or_keep(network, args.save, args.checkpoint)
        print(f"saved the model to {args.save} (xpconv.load_model({args.save!r}); xpconv evaluate, "
              f"predict and export take it)")
    if comm is not None:
        comm.barrier()       # no rank reports success before the file is written
    return 0


def _silent(*args, **kwargs) -> None:
    pass


def _save_or_keep(network, path, checkpoint) -> None:
    """Write the trained model to ``path``; if that fails, never lose it: write it to the
    checkpoint folder (or a file in the temporary folder) and say where, in one line.
    """
    try:
        network.save_params(path)
        return
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        real = os.path.realpath(path)
    folder = Path(checkpoint) if checkpoint else Path(tempfile.gettempdir())
    fallback = folder / f"model-unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.npz"
    try:
        network.save_params(fallback)
    except (OSError, ValueError) as exc2:
        raise OSError(f"--save {path}: could not write {real} ({why}), nor the fallback {fallback} "
                      f"({exc2}); the model is lost") from None
    raise OSError(f"--save {path}: could not write {real} ({why}); the trained model is kept in "
                  f"{fallback}")


def _load_args(args) -> dict:
    """load_dataset's keywords from the options (the same on every rank): images stay in
    their stored dtype (8-bit images are scaled per batch; an .npz is memory-mapped where
    stored), only --limit samples are read.
    """
    return dict(val_fraction=args.val_fraction, channels_last=True if args.channels_last else None,
                limit=args.limit, keep_dtype=True, allow_non_finite=args.allow_non_finite)


def _class_count(name, t_train, t_test) -> int:
    """K = largest label + 1, for labels 0..K-1; refused when K is huge, labels are sparse or
    there is a single class (before a K-way output layer is allocated).
    """
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
