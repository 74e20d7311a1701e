"""Paths to the test data and the tolerance measure shared by the parity tests."""

from __future__ import annotations

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
