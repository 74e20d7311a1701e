"""Pass 1 for calibration: every layer's and head's statistics per frame, in memory bounded by the frames.

The pipeline keeps the captured maps of every pair (``(P, NH, NW, C)`` per decoder) and reduces them once
(:func:`easi3r.maps.aggregate_pair_maps`). Calibration wants the same per-frame statistics for every
channel ``c = layer · heads + head``, on sequences long enough that the pair maps would not fit: here pairs
are decoded chunk by chunk and each chunk is folded into per-frame sums and sums of squares (float64), so
memory grows with the frames, never with the pairs. The result equals :func:`easi3r.maps.frame_maps` on the
same pairs to float32 precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from easi3r.contracts import Backbone, CaptureStrategy
from easi3r.maps import STAT_NAMES, fuse_channels
from easi3r.types import Encoded, FrameMaps

__all__ = ["streamed_frame_maps"]


class _Moments:
    """Per-frame count, sum and sum of squares of one side's pair maps."""

    def __init__(self, n_frames: int) -> None:
        self.n_frames = n_frames
        self.count = torch.zeros(n_frames, dtype=torch.float64)
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, maps: Tensor, frame_of_pair: Tensor, corner_fix: bool) -> None:
        if not torch.isfinite(maps).all():  # e.g. an fp16 overflow: it would turn every statistic into NaN
            raise ValueError("captured attention maps contain non-finite values")
        maps = maps.to(torch.promote_types(maps.dtype, torch.float32), copy=True)
        if corner_fix:  # the reference's corner-token overwrite, per pair map, as frame_maps does it
            maps[:, 0, 0, :] = (maps[:, 0, 1, :] + maps[:, 1, 0, :]) / 2
        maps = maps.double()
        if self.sum is None:
            self.sum = torch.zeros((self.n_frames, *maps.shape[1:]), dtype=torch.float64)
            self.sumsq = torch.zeros_like(self.sum)
        self.count.index_add_(0, frame_of_pair, torch.ones(len(frame_of_pair), dtype=torch.float64))
        self.sum.index_add_(0, frame_of_pair, maps)
        self.sumsq.index_add_(0, frame_of_pair, maps * maps)

    def mean_std(self, side: str) -> tuple[Tensor, Tensor]:
        empty = (self.count == 0).nonzero().flatten().tolist()
        if self.sum is None or empty:
            raise ValueError(
                f"frame(s) {empty} have no pair on the {side} side; the pair graph must cover every frame"
            )
        count = self.count.view(-1, 1, 1, 1)
        mean = self.sum / count
        # float64 sums keep E[x²] - E[x]² accurate for logits; one pair gives the "zero" std fallback
        var = ((self.sumsq - count * mean * mean) / (count - 1).clamp(min=1)).clamp(min=0)
        return mean.float(), var.sqrt().float()


def streamed_frame_maps(
    backbone: Backbone,
    capture: CaptureStrategy,
    encoded: Encoded,
    pairs: Tensor,
    n_frames: int,
    *,
    corner_fix: bool = True,
    chunk_pairs: int = 64,
) -> FrameMaps:
    """The eight per-frame maps of :func:`easi3r.maps.frame_maps` (``single_pair_std: zero``), decoded
    ``chunk_pairs`` pairs at a time with ``capture`` and reduced on the fly."""
    src, ref = _Moments(n_frames), _Moments(n_frames)
    pairs = pairs.to(torch.long)
    for start in range(0, len(pairs), chunk_pairs):
        chunk = pairs[start : start + chunk_pairs]
        attention = backbone.decode(encoded, chunk, capture=capture, heads=False).attention
        # decoder 1's maps live on the view-2 frame (the source side), decoder 2's on the view-1 frame
        src.add(attention.decoder1, chunk[:, 1], corner_fix)
        ref.add(attention.decoder2, chunk[:, 0], corner_fix)
    raw = {}
    raw["src_mean"], raw["src_std"] = src.mean_std("source")
    raw["ref_mean"], raw["ref_std"] = ref.mean_std("reference")
    maps = {name: fuse_channels(raw[name]) for name in STAT_NAMES}
    maps.update({f"{name}_raw": raw[name] for name in STAT_NAMES})
    return FrameMaps(maps=maps)
