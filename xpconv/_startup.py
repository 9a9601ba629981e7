"""Ctrl-C while the ``xpconv`` command starts (imports the library): one line and exit
code 130, not a traceback from deep inside an import.

Imported first by ``xpconv/__init__.py``. Only in the ``xpconv`` command's process (its
``sys.argv[0]``), and only while SIGINT has Python's default handler: a program that
imports xpconv keeps its own Ctrl-C behaviour. :func:`xpconv.cli.main` puts Python's
default handler back (KeyboardInterrupt) once the command runs.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


def interrupted(signum, frame) -> None:
    """SIGINT during start-up: say so in one line and exit 130 (128 + SIGINT)."""
    sys.stderr.write("xpconv: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def restore() -> None:
    """Python's default SIGINT handler again, if :func:`interrupted` is installed."""
    if signal.getsignal(signal.SIGINT) is interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if (os.path.basename(sys.argv[0] if sys.argv else "") in ("xpconv", "xpconv.exe")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, interrupted)
