"""Output folders that are either complete or absent, and one run at a time per output folder.

Everything a run writes goes into a hidden temporary folder beside the target (``.OUT.partial-*``), which
is renamed into place only when the run succeeded; a failed or interrupted run leaves nothing behind.
A run holds the lock file ``.OUT.lock`` beside the target from start to end, so that a second run into the
same folder is refused at once, and so that the next run knows that ``.OUT.partial-*`` / ``.OUT.old-*``
folders a killed run left are no live run's and may go.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from easi3r.errors import Easi3RError

__all__ = ["check_output_dir", "claim_output_dir", "hold_lock", "staged_output_dir", "write_error"]

logger = logging.getLogger(__name__)


# The reference demo keeps the points whose raw confidence (1 + exp(x)) exceeds 1.1 in its GLB; the
# point-cloud exporters and the viewer show the same points.
REFERENCE_GLB_MIN_CONF = 1.1


def check_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> None:
    """Refuse a target that is a file, or a non-empty folder without ``overwrite`` (before any work)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Easi3RError(f"{out}: output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise Easi3RError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        why = "is not a folder" if not ancestor.is_dir() else "is not writable"
        raise Easi3RError(f"{out}: cannot write the output folder here ({ancestor} {why})")


@contextmanager
def hold_lock(target: str | Path, doing: str) -> Iterator[None]:
    """Hold the lock file ``.NAME.lock`` beside ``target`` for the duration, or refuse at once.

    The refusal names the holder: "TARGET: another easi3r run (pid P on HOST) is ``doing``". The lock is
    an ``flock``, not the file's existence: the system drops it when its holder dies (``kill -9``
    included), so a lock file a killed run left behind stops nobody. Missing parent folders are created
    and, when they are empty again at the end, removed.
    """
    target = Path(target)
    created = []
    folder = target.absolute().parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    path = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, target, doing)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield
    finally:
        # unlink while still holding the lock: a run that opened the file meanwhile then sees that the
        # file it locked is gone, and locks a new one (see _lock)
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        _remove_empty(created)


def _lock(path: Path, target: Path, doing: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, the holder's pid and host written in."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Easi3RError(
                f"{target}: cannot create the lock file {path} ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").split()
            os.close(fd)
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
            raise Easi3RError(f"{target}: another easi3r run{who} is {doing}") from None
        except OSError as exc:
            os.close(fd)
            raise Easi3RError(f"{target}: cannot lock {path} ({exc.strerror or exc})") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: start over
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise write_error(target, path.name, exc, "free some space and run again") from None
    return fd


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def claim_output_dir(
    out_dir: str | Path, *, overwrite: bool = False, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Check ``out_dir`` and hold its lock for the duration of a run.

    Holding the lock proves that no live run is writing ``out_dir``: the staging folders an interrupted
    run left beside it are removed here, each with one ``log`` line (default: this module's logger).
    """
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite)
    with hold_lock(out, "writing this output folder"):
        stale = re.compile(rf"\.{re.escape(out.name)}\.(partial|old)-.+")
        for entry in sorted(out.parent.iterdir()):
            kind = stale.fullmatch(entry.name)
            if kind is None or not entry.is_dir():
                continue
            try:
                shutil.rmtree(entry)
            except OSError as exc:
                raise Easi3RError(f"{out}: cannot remove {entry} ({exc.strerror or exc})") from None
            what = "partial" if kind[1] == "partial" else "replaced"
            (log or logger.info)(f"removed a stale {what} output {entry.name} (left by an interrupted run)")
        yield


@contextmanager
def staged_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out_dir``, on failure it is removed.

    The caller holds :func:`claim_output_dir`. An ``OSError`` while writing into the folder (a full disk)
    becomes one line naming the file.
    """
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise Easi3RError(f"{out}: cannot write the output folder here ({exc.strerror or exc})") from None
    try:
        yield staging
    except OSError as exc:
        file = _file_being_written(exc, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if file is None and exc.errno not in _FULL:
            raise  # not a write into the outputs: not the user's disk, a bug
        raise write_error(
            out, file or "the outputs", exc, "nothing was written; free some space and run again"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = None
    try:
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
        os.replace(staging, out)
    except OSError as exc:
        if retired is not None and (retired / out.name).exists() and not out.exists():
            os.replace(retired / out.name, out)  # the earlier outputs stay as they were
        shutil.rmtree(staging, ignore_errors=True)
        raise Easi3RError(f"{out}: cannot move the outputs into place ({exc.strerror or exc})") from None
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


def write_error(target: Path, file: str | Path, exc: OSError, advice: str) -> Easi3RError:
    """One line for a failed write of ``file`` into ``target``; a full disk says so, and ``advice``."""
    if exc.errno in _FULL:
        return Easi3RError(f"{target}: {_FULL[exc.errno]} while writing {file} ({advice})")
    return Easi3RError(f"{target}: cannot write {file} ({exc.strerror or exc})")


def _file_being_written(exc: OSError, staging: Path) -> str | None:
    """The file under ``staging`` that ``exc`` came from, relative to it; None when it is not one.

    An ``OSError`` names its file only when opening failed; a write that hit a full disk does not. The
    writer's frames still hold what it was writing (a path, or an open file), so they are searched,
    innermost first. This works for any exporter, including plug-ins' (PIL, numpy, ``Path.write_text``).
    """
    candidates: list[object] = [exc.filename]
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        candidates.extend(frame.f_locals.values())
    root = os.path.abspath(staging)
    for value in candidates:
        if isinstance(value, io.IOBase):
            value = getattr(value, "name", None)
        if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
            continue
        path = os.path.abspath(value)
        if path.startswith(root + os.sep) and not os.path.isdir(path):
            return os.path.relpath(path, root)
    return None
