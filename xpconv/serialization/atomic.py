"""Write a file so that it is either entirely the old one or entirely the new one.

:func:`atomic_write` writes to a temporary file next to the target, fsyncs it and
renames it onto the target (``os.replace``). Around that:

* a symlink is written through: its target is replaced, the link stays;
* temporary files are named ``.{name}.xpconv-tmp-XXXXXXXX`` and locked while being
  written (``flock``), so a later write to the same path can recognise the ones a
  killed process left behind (unlocked) and remove them, leaving live ones alone;
* SIGTERM and SIGHUP with their default action (terminate) are deferred until the
  temporary file is removed, then delivered; a handler of the program's own is left alone.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

fcntl: Any
try:
    import fcntl
except ImportError:          # Windows: an open file cannot be deleted, which is the lock
    fcntl = None

__all__ = ["atomic_write", "temp_prefix"]

_TMP_TAG = ".xpconv-tmp-"
_SUFFIX = re.compile(r"[a-z0-9_]{8}")   # what tempfile.mkstemp puts after the prefix


class _Terminated(BaseException):
    """SIGTERM arrived during a write (BaseException, so ``except Exception`` cannot eat it)."""


def temp_prefix(path: Path) -> str:
    """Name prefix of the temporary files written for ``path``."""
    return f".{path.name}{_TMP_TAG}"


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of earlier writes to ``path`` whose process is gone."""
    prefix = temp_prefix(path)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and _SUFFIX.fullmatch(entry.name[len(prefix):])):
            continue
        try:
            if fcntl is None:
                os.unlink(entry.path)        # fails while another process has it open
                continue
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held by a live writer?
                os.unlink(entry.path)
            finally:
                os.close(fd)
        except OSError:                      # locked (in use), vanished, or not ours to delete
            continue


def _locked_temp(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, created and locked by this process."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:   # a cleaner may have removed it between mkstemp and flock: then take another
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


# signals whose default action ends the process: deferred while a temporary file exists
_DEFERRED = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def _sigterm_deferred():
    """While the body runs, SIGTERM and SIGHUP (when they have their default action)
    raise _Terminated; after it, the signal is delivered.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [s for s in _DEFERRED if signal.getsignal(s) is signal.SIG_DFL]
    received = []

    def handler(signum, frame):
        received.append(signum)
        raise _Terminated()

    for s in ours:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in ours:
            signal.signal(s, signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])   # terminates, as it would have without us


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file; when the body returns, it atomically becomes ``path``.

    If the body raises (or the process gets SIGTERM), the temporary file is removed
    and ``path`` is untouched. The new file keeps an existing file's permissions
    (else 0644).

    Args:
        path: the destination; a symlink is followed, so its target is replaced.
    """
    path = Path(os.fspath(path))
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    _remove_stale_temps(path)
    with _sigterm_deferred():
        fd, tmp = _locked_temp(path)
        f = os.fdopen(fd, "wb")
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
                try:  # mkstemp makes 0600 files; keep an existing file's mode, else 0644
                    os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
                except OSError:
                    pass
                if fcntl is None:
                    f.close()           # Windows renames only closed files
                os.replace(tmp, path)   # POSIX: still locked, so no cleaner can take it meanwhile
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Best effort: make the rename durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
