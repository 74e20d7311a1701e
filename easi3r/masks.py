"""From a refined per-frame map to binary masks: upsampled to the frame size, cut at one threshold chosen
jointly over all frames (method.md §4). The threshold itself is a strategy (``easi3r_thresholds``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["masks_from_map", "upsample_map"]


def upsample_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) upsampling of ``(T, NH, NW)`` to ``(T, H, W)``."""
    return F.interpolate(x[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def masks_from_map(
    refined: Tensor, size: tuple[int, int], threshold_fn: Callable[[Tensor], float]
) -> tuple[Tensor, float, Tensor]:
    """Upsample ``refined (T, NH, NW)`` to ``size = (H, W)``, threshold it jointly over all frames.

    Returns ``(masks (T, H, W) bool, threshold, upsampled (T, H, W))`` with ``masks = upsampled >
    threshold``.
    """
    upsampled = upsample_map(refined, size)
    threshold = float(threshold_fn(upsampled))
    masks = upsampled > torch.tensor(threshold, dtype=upsampled.dtype, device=upsampled.device)
    return masks, threshold, upsampled
