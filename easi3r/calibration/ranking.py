"""Every candidate map scored against the ground truth, ranked on the selection half, reported on the other.

A candidate is one formula term (:func:`~.search.candidate_terms`): a fused map, or one channel (a layer
and head) of a raw statistic. Each is min-max normalised over its sequence, upsampled to the frames
(bilinear, as the masks are) and scored per sequence: pixel AUC, IoU at its best threshold, and IoU at the
recipe's own threshold (e.g. the adaptive multi-Otsu). A candidate whose AUC on the selection half is
below 0.5 separates as ``1 - x``: its orientation is chosen there and kept for the report half.

Scores use a fixed-seed sample of at most ``max_pixels`` pixels per sequence (every pixel of a smaller
sequence), the same pixels for every candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from easi3r.calibration.scores import best_iou, iou_at, rows_auc
from easi3r.calibration.search import LabelledMaps
from easi3r.formula import parse
from easi3r.masks import upsample_map
from easi3r.normalize import minmax

__all__ = ["CandidateScore", "centre_prior_auc", "rank_candidates"]

_TERMS_AT_ONCE = 16  # candidates upsampled together: bounds memory at 16 × max_pixels floats


@dataclass
class CandidateScore:
    term: str  # the formula text that reads it, e.g. "channel(src_mean_raw, 7)"
    flipped: bool  # True: it separates as 1 - x (decided on the selection half)
    per_sequence: dict[str, dict[str, float]] = field(default_factory=dict)  # name → auc, best_iou, iou

    def mean(self, metric: str, names: Sequence[str]) -> float:
        values = [self.per_sequence[name][metric] for name in names]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    @property
    def oriented(self) -> str:
        return f"1 - {self.term}" if self.flipped else self.term


def _sample(masks: Tensor, max_pixels: int, seed: int) -> Tensor:
    count = masks.numel()
    if count <= max_pixels:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:max_pixels].sort().values


def _values(sequence: LabelledMaps, terms: Sequence[str], pixels: Tensor) -> Tensor:
    """(K, n): each term normalised over the sequence, upsampled, at the sampled pixels."""
    maps = torch.stack([minmax(parse(term).evaluate(sequence.maps).float()) for term in terms], dim=1)
    t, k, nh, nw = maps.shape
    up = upsample_map(maps.reshape(t * k, nh, nw), sequence.size).reshape(t, k, -1)
    return up.transpose(0, 1).reshape(k, -1)[:, pixels]


def rank_candidates(
    sequences: Sequence[LabelledMaps],
    terms: Sequence[str],
    selection: Sequence[str],
    threshold: Callable[[Tensor], float],
    *,
    max_pixels: int = 1_000_000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[CandidateScore]:
    """Score every term on every sequence and rank them by oriented AUC on the ``selection`` sequences."""
    scores = {term: CandidateScore(term, flipped=False) for term in terms}
    raw: dict[str, dict[str, Tensor]] = {}
    for sequence in sequences:
        pixels = _sample(sequence.masks, max_pixels, seed)
        labels = sequence.masks.reshape(-1)[pixels]
        raw[sequence.name] = {"labels": labels, "pixels": pixels}
        for start in range(0, len(terms), _TERMS_AT_ONCE):
            chunk = terms[start : start + _TERMS_AT_ONCE]
            values = _values(sequence, chunk, pixels)
            for term, auc in zip(chunk, rows_auc(values, labels).tolist()):
                scores[term].per_sequence[sequence.name] = {"auc": auc}
        if progress is not None:
            progress(f"{sequence.name}: {len(terms)} candidates scored")
    for score in scores.values():
        score.flipped = score.mean("auc", selection) < 0.5
    # the IoUs need the orientation, which the selection half has just fixed
    for sequence in sequences:
        labels, pixels = raw[sequence.name]["labels"], raw[sequence.name]["pixels"]
        for start in range(0, len(terms), _TERMS_AT_ONCE):
            chunk = terms[start : start + _TERMS_AT_ONCE]
            for term, values in zip(chunk, _values(sequence, chunk, pixels)):
                score = scores[term]
                entry = score.per_sequence[sequence.name]
                if score.flipped:
                    values, entry["auc"] = 1 - values, 1 - entry["auc"]
                entry["best_iou"] = best_iou(values, labels)[0]
                entry["iou"] = iou_at(values, labels, threshold(values))
    return sorted(scores.values(), key=lambda s: -s.mean("auc", selection))


def centre_prior_auc(sequence: LabelledMaps) -> float:
    """The AUC of a map that knows nothing but the distance to the image centre: what a candidate must
    beat before it can be said to see motion (moving objects are often near the centre of the frame)."""
    height, width = sequence.size
    rows = torch.linspace(-1, 1, height)[:, None]
    cols = torch.linspace(-1, 1, width)[None, :]
    prior = -(rows**2 + cols**2)
    return float(rows_auc(prior.expand(sequence.masks.shape).reshape(1, -1), sequence.masks.reshape(-1))[0])
