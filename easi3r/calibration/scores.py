"""How well a per-pixel score map separates ground-truth moving pixels: ROC AUC and intersection over union.

Scores and masks may have any shape (typically ``(T, H, W)``, all frames pooled) as long as both have the
same; they are flattened. Everything is exact and O(n log n) (one sort): ties are resolved by group, never
by the order the sort happened to leave them in. Sums are in float64, exact for any realistic pixel count.

An undefined score is NaN rather than an error, so a report can show it next to the others: the AUC of
masks of one class only (all moving or all static), the IoU when neither the masks nor the prediction hold a
pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["best_iou", "iou_at", "pixel_auc", "rows_auc"]


def _flat(scores: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Scores as float64 and masks as bool, both flattened; refuses mismatched, empty or non-finite input."""
    scores, masks = torch.as_tensor(scores), torch.as_tensor(masks)
    if scores.shape != masks.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and masks {tuple(masks.shape)} differ in shape")
    if scores.numel() == 0:
        raise ValueError("no pixels to score")
    scores = scores.detach().to("cpu", torch.float64).flatten()
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain non-finite values")
    return scores, masks.detach().cpu().flatten() != 0


def rows_auc(scores: Tensor, labels: Tensor) -> Tensor:
    """ROC AUC of each row of ``scores (K, n)`` against the same ``labels (n,)`` bool: ``(K,)`` float64.

    The Mann-Whitney statistic on mid-ranks (a tie between a moving and a static pixel counts one half).
    NaN when ``labels`` holds one class only. Rows are sorted in their own dtype (float32 is fine: ties
    are ties of the values the caller has).
    """
    n_rows, n = scores.shape
    positives = int(labels.sum())
    negatives = n - positives
    if positives == 0 or negatives == 0:
        return torch.full((n_rows,), float("nan"), dtype=torch.float64)
    values, order = scores.sort(dim=1)
    position = torch.arange(n, device=scores.device).expand(n_rows, n)
    changes = values[:, 1:] != values[:, :-1]
    edge = torch.ones((n_rows, 1), dtype=torch.bool, device=scores.device)
    # First and last sorted position of each element's group of equal values: its mid-rank is their mean.
    first = torch.where(torch.cat([edge, changes], dim=1), position, 0).cummax(dim=1).values
    last_flags = torch.cat([changes, edge], dim=1)
    last = torch.where(last_flags, position, n - 1).flip(1).cummin(dim=1).values.flip(1)
    mid_rank = (first + last).to(torch.float64) / 2 + 1
    rank_sum = (mid_rank * labels.to(scores.device)[order]).sum(dim=1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def pixel_auc(scores: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> float:
    """ROC AUC of ``scores`` as a detector of ``masks`` (True = moving): the probability that a random
    moving pixel scores above a random static one, ties counting one half. NaN when ``masks`` is all
    True or all False."""
    flat, labels = _flat(scores, masks)
    return float(rows_auc(flat[None], labels)[0])


def best_iou(scores: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> tuple[float, float]:
    """The highest IoU of ``scores > threshold`` with ``masks`` over every threshold that cuts the scores
    differently, and that threshold: ``(iou, threshold)``.

    The thresholds are the distinct score values (each predicts the pixels strictly above it) and
    ``-inf`` (every pixel); among equal IoUs the highest threshold wins. ``(nan, nan)`` when ``masks``
    holds no moving pixel (then the best prediction is empty and its IoU undefined).
    """
    flat, labels = _flat(scores, masks)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan"), float("nan")
    values, order = flat.sort(descending=True)
    hits = labels[order].to(torch.float64).cumsum(0)
    predicted = torch.arange(1, len(values) + 1, dtype=torch.float64)
    # Predicting the top k pixels is a threshold only where the next value is lower (or there is none).
    cuts = torch.cat([values[1:] != values[:-1], torch.tensor([True])])
    iou = torch.where(cuts, hits / (positives + predicted - hits), -1.0)
    k = int(iou.argmax())  # the first maximum: the fewest pixels, the highest threshold
    threshold = float(values[k + 1]) if k + 1 < len(values) else float("-inf")
    # The empty prediction (threshold = the maximum) has IoU 0, never above a cut that holds a hit.
    return float(iou[k]), threshold


def iou_at(scores: Tensor | np.ndarray, masks: Tensor | np.ndarray, threshold: float) -> float:
    """IoU of ``scores > threshold`` (strictly) with ``masks``; NaN when both are empty."""
    flat, labels = _flat(scores, masks)
    predicted = flat > threshold
    union = int((predicted | labels).sum())
    return int((predicted & labels).sum()) / union if union else float("nan")
