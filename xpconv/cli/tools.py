"""The small commands: ``devices``, ``filters``, ``convert``, ``selftest``, ``bench``."""
from __future__ import annotations

from pathlib import Path

from .common import check_writable, non_negative_int, positive_int


def add_parsers(sub) -> None:
    """Add the tool commands (``devices``, ``filters``, ``convert``, ``selftest``, ``plot``, ``bench``) to ``sub``."""
    d = sub.add_parser("devices", help="list the devices usable here")
    d.set_defaults(run=_devices)

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
    s.add_argument("--batch-size", type=positive_int, default=100,
                   help="batch of the timed training step (default: 100)")
    s.add_argument("--repeat", type=positive_int, default=10, help="timed steps (default: 10)")
    s.add_argument("--warmup", type=non_negative_int, default=2,
                   help="untimed steps before them (default: 2)")
    s.set_defaults(run=_selftest)

    h = sub.add_parser("plot", help="draw the loss and accuracy curves of a history.csv",
                       description="Draw the curves of a training history (DIR/history.csv of "
                                   "--checkpoint, or --log PATH.csv) with matplotlib.")
    h.add_argument("history", metavar="HISTORY.csv", help="a history file written by xpconv train")
    h.add_argument("--out", default="curves.png", help="image to write (default: curves.png)")
    h.set_defaults(run=_plot_history)

    b = sub.add_parser("bench", help="benchmark xpconv against the textbook NumPy code and PyTorch "
                                     "(xpconv bench --help)", add_help=False)
    b.set_defaults(run=_bench)  # its options are parsed by xpconv.bench.cli


def _devices(args) -> int:
    from .._backends import cupy_problem as _cupy_problem
    from ..devices import available_devices, device
    specs = available_devices()
    for spec in specs:
        print(f"{spec:28s} {device(spec).xp.__name__}")
    if not any(s.startswith("cuda") for s in specs):
        print(f"(no CuPy GPU: {_cupy_problem()})")
    return 0


def _filters(args) -> int:
    from ..plot import save_filter_grid
    from ..serialization import load_arrays
    arrays, _ = load_arrays(args.params, who="xpconv filters")
    first = next((k for k, v in arrays.items() if v.ndim == 4), None)
    if first is None:
        raise ValueError(f"{args.params}: no 4-D filter array (FN, C, FH, FW) in it; has {list(arrays)}")
    save_filter_grid(arrays[first], args.out, title=f"{first} of {Path(args.params).name}")
    print(f"wrote {args.out}: {arrays[first].shape[0]} filters of {first} {arrays[first].shape}")
    return 0


def _convert(args) -> int:
    import os

    from ..serialization import load_arrays, save_arrays
    arrays, metadata = load_arrays(args.source, who="convert")
    if os.path.exists(args.target) and os.path.samefile(args.source, args.target):
        raise ValueError(f"convert: {args.target} is the same file as {args.source}; write to another path")
    save_arrays(args.target, arrays, metadata={**metadata, "format": "xpconv-params", "version": "1"})
    listing = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    dtypes = "/".join(sorted({str(v.dtype) for v in arrays.values()}))
    print(f"wrote {args.target}: {len(arrays)} arrays ({dtypes}) from {args.source}: {listing}")
    return 0


def _selftest(args) -> int:
    from ..diagnostics.selftest import run
    if args.json:
        check_writable(args.json, option="--json")
    report = run(args.device, dtype=args.dtype, batch_size=args.batch_size, repeat=args.repeat,
                 warmup=args.warmup)
    print(report.format())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0 if report.passed else 1


def _bench(args) -> int:
    from ..bench.cli import main as bench_main
    return bench_main(args.bench_argv, prog="xpconv bench")


def _plot_history(args) -> int:
    import csv

    from ..plot import save_history
    try:
        with open(args.history, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"{args.history}: cannot read it ({exc.strerror or exc})") from None
    if not rows or "train_loss" not in rows[0]:
        raise ValueError(f"{args.history}: not a history written by xpconv train (no train_loss column)")
    save_history(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} epochs")
    return 0
