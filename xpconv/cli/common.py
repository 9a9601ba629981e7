"""What the ``xpconv`` commands share: option types, output checks, one-line errors."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

MODELS = ("simple", "deep", "lenet")
OPTIMIZERS = ("SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam")

# Failures a user can cause and fix (bad option, file, data, divergence): one line, exit 1.
# FloatingPointError covers xpconv.TrainingDiverged. Option errors are argparse's: usage, exit 2.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError, MemoryError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type's name if it has none)."""
    if isinstance(exc, MemoryError) and not str(exc):
        return "out of memory (MemoryError); use a smaller --batch-size, fewer or smaller images"
    return " ".join(str(exc).split()) or type(exc).__name__


def is_root() -> bool:
    """Whether this process prints and writes files: rank 0 of a distributed job, or no job."""
    from ..distributed import active
    comm = active()
    return comm is None or comm.is_root


def fail_on_this_rank(message: str) -> None:
    """Print the error; in a job of several ranks, end them all (the others would wait
    for this one in their next collective).
    """
    from ..distributed import active
    comm = active()
    if comm is None or comm.size == 1:
        print(message, file=sys.stderr)
        return
    print(f"{message} (rank {comm.rank} of {comm.size}; ending all ranks)", file=sys.stderr)
    comm.abort(1)


def save_path(path: str) -> str:
    """--save's file: ``PATH`` as given, or ``PATH/model.npz`` for a PATH that ends in a
    separator (the folder is created if its parent exists).
    """
    if path.endswith(("/", os.sep)):
        folder = Path(path)
        if not folder.is_dir():
            if not folder.parent.is_dir():
                raise ValueError(f"--save {path}: the folder {folder.parent} does not exist; create it first")
            folder.mkdir()
        return str(folder / "model.npz")
    return path


def check_writable(path, option="--save", *, force: bool = False) -> None:
    """Output ``path`` of --save, --log, --plot or --json: its folder exists and takes a new
    file; not a folder; an existing read-only file only with ``force``. A symlink is checked
    where it points (the file that will be written).
    """
    target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    folder = target.parent
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give the name of a file in it"
                         + (" (or end it with / to write model.npz there)" if option == "--save" else ""))
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if target.exists() and not force and (not target.stat().st_mode & 0o222 or not os.access(target, os.W_OK)):
        raise ValueError(f"{option} {path}: the file is read-only; it is left as it is (--force replaces it)")
    try:   # the only sure test (permissions, read-only file systems): create a file there,
        # one without a name where the OS allows (O_TMPFILE), so that a kill leaves nothing
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in the folder {folder} "
                         f"({exc.strerror or exc})") from None


def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text}")
    return value


def non_negative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text}")
    return value


def optimizer_name(text: str) -> str:
    """Argparse type: an optimizer name, case-insensitive, spelled as in ``OPTIMIZERS``."""
    for name in OPTIMIZERS:
        if name.lower() == text.lower():
            return name
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(OPTIMIZERS)}; got {text!r}")


def check_free_space(path, nbytes: int, option="--save") -> None:
    """The folder of ``path`` has room for ``nbytes`` (plus 10% and 1 MiB), else a ValueError."""
    target = Path(os.path.realpath(path))
    need = int(nbytes * 1.1) + 2**20
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return
    if free < need:
        from ..memory import format_bytes
        raise ValueError(f"{option} {path}: {format_bytes(free)} free in {target.parent}, the model "
                         f"needs about {format_bytes(need)}; free some space or save elsewhere")


def end_job(message: str, code: int) -> int:
    """Print ``message`` and return ``code``; in a job of several ranks, end them all with
    that code (a rank that returned would leave the others waiting in a collective).
    """
    from ..distributed import active
    print(message, file=sys.stderr)
    comm = active()
    if comm is not None and comm.size > 1:
        comm.abort(code)
    return code
