"""Paths to the test data and the tolerance measure shared by the parity tests."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"
GOLDEN_NET = DATA / "golden" / "net"
GOLDEN_ALIGN = DATA / "golden" / "align"
FRAMES = DATA / "frames"


def relative_error(actual, expected) -> float:
    """max |a - b| / max |b|: the tolerance measure used by every parity test."""
    a = torch.as_tensor(np.asarray(actual), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


class FakeDist(importlib.metadata.Distribution):
    """An installed distribution that exists only in memory: plug-in tests fake entry points with it
    instead of installing packages."""

    def __init__(self, name: str, version: str, entry_points: dict[str, str], extra: str = "") -> None:
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        self._files = {
            "METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            "entry_points.txt": f"[easi3r]\n{lines}{extra}",
        }

    def read_text(self, filename: str) -> str | None:
        return self._files.get(filename)

    def locate_file(self, path: str) -> Path:
        return Path(path)
