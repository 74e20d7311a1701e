"""How the library's log records reach the terminal when it runs as the ``easi3r`` command.

Every module logs to ``logging.getLogger(__name__)``, under the ``easi3r`` logger; the library itself
installs no handler (an application decides where its logs go). The command installs one handler on
standard error that writes each record as one line, ``easi3r: <message>`` (``easi3r: warning: ...`` for a
warning), keeping the prefixes users already know for the lines of ``eval``, ``calibrate``, ``synth`` and
``demo``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ["LEVELS", "held_until_success", "log_to_stderr"]

LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}

# the prefix of each command's own lines, as they read before the library logged
_PREFIXES = {
    "easi3r.eval": "easi3r eval",
    "easi3r.calibration": "easi3r calibrate",
    "easi3r.synth": "easi3r synth",
    "easi3r.demo": "easi3r demo",
}


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = next(
            (p for name, p in _PREFIXES.items() if record.name == name or record.name.startswith(name + ".")),
            "easi3r",
        )
        warning = "warning: " if record.levelno == logging.WARNING else ""
        return f"{prefix}: {warning}{record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests and callers may replace it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: ``StreamHandler.__init__`` assigns the stream it was given."""


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_until_success() -> Iterator[None]:
    """Hold back what the ``easi3r`` logger's own handlers would write inside the block, and write it once
    the block succeeds: when it fails, its error is the only line (as for a bad checkpoint or recipe).

    Handlers of the root logger (an application's) get the records at once, as always.
    """
    logger = logging.getLogger("easi3r")
    if not logger.handlers:  # nothing of ours to hold back; Python's last-resort warnings stay as they are
        yield
        return
    held = _Held()
    handlers, logger.handlers = logger.handlers, [held]
    try:
        yield
    finally:
        logger.handlers = handlers
    for record in held.records:
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def log_to_stderr(level: int) -> None:
    """Send the ``easi3r`` logger's records of ``level`` and above to standard error, one line each
    (replacing the handler an earlier call installed: ``main`` may run many times in one process)."""
    root = logging.getLogger("easi3r")
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter())
    root.addHandler(handler)
    root.setLevel(level)
