"""The ``xpconv`` command: devices, train, evaluate, predict, export, filters, convert, selftest, bench.

Each command lives in a module of this package with an ``add_parser(sub)`` that sets
``run``; :func:`main` parses and runs it, turning the expected failures into one line
and exit code 1 (option errors are argparse's: usage and exit code 2).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import model_commands, tools, train
from .common import EXPECTED_ERRORS, end_job, fail_on_this_rank, is_root, one_line

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``xpconv`` command: parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit status."""
    from .._startup import restore
    restore()   # Ctrl-C is KeyboardInterrupt again: the commands stop cleanly on it
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "bench":
        args.bench_argv = rest  # every option, --help included, is the benchmark's own
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ..trainer import TrainingDiverged, TrainingInterrupted
    try:
        return args.run(args)
    except TrainingDiverged as exc:   # with --distributed, every rank stops at the same step
        if is_root():
            print(f"xpconv {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:   # SIGTERM/SIGINT/SIGHUP: the checkpoint is written
        return end_job(f"xpconv {args.command}: {one_line(exc)}", exc.exit_code)
    except EXPECTED_ERRORS as exc:
        fail_on_this_rank(f"xpconv {args.command}: error: {one_line(exc)}")
        return 1
    except KeyboardInterrupt:
        return end_job(f"xpconv {args.command}: interrupted", 130)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpconv", description="The book's CNN on any Array API device.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    tools.add_parsers(sub)
    train.add_parser(sub)
    model_commands.add_parsers(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
