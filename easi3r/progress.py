"""Progress of long work (pair inference, alignment): a bar on a terminal, log lines elsewhere.

On a terminal, a tqdm bar on stderr. Off a terminal (a pipe, a log file, a batch job) a bar's redraws
would fill the file, so a log line is written instead at every 10 % of the work or every 30 s, whichever
comes first: ``easi3r: pass 1: 40/150 pairs (27 %), 12 s``. ``EASI3R_NO_PROGRESS`` turns both off.

tqdm rather than rich: tqdm is already a dependency (and torch's), draws on stderr without taking over the
terminal, and its bars interleave with plain log lines; rich would add a dependency for the same bar.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]

logger = logging.getLogger(__name__)

STEPS = 10  # a line at every tenth of the work ...
EVERY_SECONDS = 30.0  # ... or after this long without one, whichever comes first


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A context manager whose ``update(n)`` advances it: a tqdm bar on a terminal, progress lines in the
    log otherwise, nothing when ``EASI3R_NO_PROGRESS`` is set."""
    if os.environ.get("EASI3R_NO_PROGRESS"):
        return tqdm(total=total, desc=desc, unit=unit, disable=True)
    if _is_terminal(sys.stderr):
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    return LoggedProgress(total, desc, unit)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LoggedProgress:
    """Progress as log lines (INFO), for output that is not a terminal."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.postfix = ""
        self.start = time.monotonic()
        self.last_time = self.start
        self.last_step = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        fraction = self.done / self.total if self.total else 1.0
        step = int(fraction * STEPS)  # in whole steps: float differences would skip some
        if step > self.last_step or now - self.last_time >= EVERY_SECONDS:
            self.last_time, self.last_step = now, step
            postfix = f", {self.postfix}" if self.postfix else ""
            units = "iterations" if self.unit == "it" else f"{self.unit}s"  # "it": tqdm's default unit
            logger.info(
                "%s: %d/%d %s (%d %%), %.0f s%s",
                self.desc,
                self.done,
                self.total,
                units,
                round(100 * fraction),
                now - self.start,
                postfix,
            )

    def set_postfix_str(self, text: str) -> None:
        """Shown at the end of the next line (tqdm's method of that name: the aligner's loss)."""
        self.postfix = text

    def close(self) -> None:
        """Nothing to clear: the lines stay in the log."""

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
