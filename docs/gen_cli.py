"""Write docs/cli.md from the ``xpconv`` command's parsers (tests/test_docs.py checks it is current).

Run: ``python docs/gen_cli.py``.
"""
from __future__ import annotations

import argparse
import os
import pathlib


def render() -> str:
    from xpconv.cli import _parser
    os.environ["COLUMNS"] = "100"          # argparse wraps at the terminal's width: fix it
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["# Command line", "",
           "Generated from the parsers by `docs/gen_cli.py`. Every command prints `--help`. Expected",
           "failures print one line, `xpconv COMMAND: error: ...`, and exit with 1; option errors print",
           "the usage and exit with 2, as argparse does; SIGINT exits with 130, SIGTERM with 143 and SIGHUP with 129.", ""]
    for name, sub in subparsers.choices.items():
        if name == "bench":
            text = "Options: `xpconv bench --help` (parsed by `xpconv.bench.cli`)."
        else:
            text = "```text\n" + sub.format_help().rstrip() + "\n```"
        out += [f"## xpconv {name}", "", text, ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    pathlib.Path(__file__).with_name("cli.md").write_text(render())
