"""Output folders that are either complete or absent.

Everything a run writes goes into a hidden temporary folder beside the target, which is renamed into
place only when the run succeeded; a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from easi3r.errors import Easi3RError


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
def staged_output_dir(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out_dir``, on failure it is removed."""
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise Easi3RError(f"{out}: cannot write the output folder here ({exc.strerror or exc})") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / out.name)
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(staging, out)
