"""Where a run's time and memory go: :func:`stage` logs a line as each step starts and ends and records
its elapsed seconds and peak memory into the run's :class:`Timings` (written as ``timings.json``).

Memory is the process's resident set (RSS): its high-water mark at the end of the stage, and by how much
the stage raised it. Linux reports it in ``/proc/self/status`` (``VmHWM``); elsewhere ``getrusage`` gives
the same peak. On a CUDA device the peak of allocated device memory during the stage is recorded too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["StageTime", "Timings", "peak_rss_bytes", "recording", "stage"]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass
class StageTime:
    """One stage of a run: its seconds and memory (MiB)."""

    name: str
    seconds: float
    peak_rss_mib: float | None  # the process's peak RSS when the stage ended
    rss_growth_mib: float | None  # how much the stage raised that peak
    cuda_peak_mib: float | None = None  # peak allocated CUDA memory during the stage


@dataclass
class Timings:
    """The stages of one run, in the order they ended."""

    stages: list[StageTime] = field(default_factory=list)

    def to_json(self) -> dict:
        peaks = [s.peak_rss_mib for s in self.stages if s.peak_rss_mib is not None]
        return {
            "total_seconds": round(sum(s.seconds for s in self.stages), 3),
            "peak_rss_mib": max(peaks) if peaks else None,
            "stages": [asdict(s) for s in self.stages],
        }

    def summary(self) -> list[str]:
        """The closing lines: one per stage, then the total."""
        width = max((len(s.name) for s in self.stages), default=0)
        lines = ["time and peak memory per stage:"]
        for s in self.stages:
            memory = (
                "" if s.peak_rss_mib is None else f"  peak {s.peak_rss_mib:.0f} MiB (+{s.rss_growth_mib:.0f})"
            )
            if s.cuda_peak_mib is not None:
                memory += f", CUDA {s.cuda_peak_mib:.0f} MiB"
            lines.append(f"  {s.name:<{width}}  {s.seconds:8.1f} s{memory}")
        total = self.to_json()
        peak = "" if total["peak_rss_mib"] is None else f", peak memory {total['peak_rss_mib']:.0f} MiB"
        lines.append(f"  {'total':<{width}}  {total['total_seconds']:8.1f} s{peak}")
        return lines


# the recorder of the run in progress in this thread (None: stages are logged but not recorded)
_current: contextvars.ContextVar[Timings | None] = contextvars.ContextVar("easi3r_timings", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Timings]:
    """Record every :func:`stage` entered inside the ``with`` block into one :class:`Timings`."""
    timings = Timings()
    token = _current.set(timings)
    try:
        yield timings
    finally:
        _current.reset(token)


@contextlib.contextmanager
def stage(name: str, *, level: int = logging.INFO) -> Iterator[None]:
    """Log ``name`` as it starts and, with its elapsed time, as it ends; record it in the run's timings.

    ``level`` is the level of both lines (a stage whose failure must stay the only line logs at DEBUG).
    """
    logger.log(level, "%s: started", name)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak_before = peak_rss_bytes()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak_after = peak_rss_bytes()
    growth = None
    if peak_before is not None and peak_after is not None:
        growth = round((peak_after - peak_before) / MIB, 1)
    record = StageTime(
        name=name,
        seconds=round(seconds, 3),
        peak_rss_mib=None if peak_after is None else round(peak_after / MIB, 1),
        rss_growth_mib=growth,
        cuda_peak_mib=round(torch.cuda.max_memory_allocated() / MIB, 1) if cuda else None,
    )
    timings = _current.get()
    if timings is not None:
        timings.stages.append(record)
    logger.log(level, "%s: done in %.1f s", name, seconds)


def peak_rss_bytes() -> int | None:
    """The process's peak resident memory so far, or None where the system does not say."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
