"""Pixel scores of a map against ground-truth masks: exact ROC AUC with ties, best and fixed-threshold IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from easi3r.calibration.scores import best_iou, iou_at, pixel_auc, rows_auc


def _data(seed: int, levels: int | None = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (few distinct values when ``levels``, so many ties) correlated with random masks."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(3, 7, 9, generator=g) < 0.3
    scores = masks.float() * 0.5 + torch.rand(3, 7, 9, generator=g)
    if levels is not None:
        scores = (scores * levels).floor() / levels
    return scores, masks


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 2, 4, 16])
def test_pixel_auc_matches_sklearn_with_ties(seed: int, levels: int | None) -> None:
    scores, masks = _data(seed, levels)
    expected = roc_auc_score(masks.flatten().numpy(), scores.flatten().numpy())
    assert pixel_auc(scores, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auc(scores.numpy(), masks.numpy()) == pytest.approx(expected, abs=1e-12)


def test_pixel_auc_extremes_and_constant_scores() -> None:
    masks = torch.tensor([False, False, True, True])
    assert pixel_auc(torch.tensor([0.0, 1.0, 2.0, 3.0]), masks) == 1.0
    assert pixel_auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), masks) == 0.0
    assert pixel_auc(torch.zeros(4), masks) == 0.5  # every pair tied: one half each


@pytest.mark.parametrize("value", [True, False])
def test_pixel_auc_of_one_class_is_nan(value: bool) -> None:
    assert math.isnan(pixel_auc(torch.rand(2, 3), torch.full((2, 3), value)))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_auc(torch.rand(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-finite"):
        best_iou(torch.tensor([0.0, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="no pixels"):
        iou_at(torch.empty(0), torch.empty(0, dtype=torch.bool), 0.5)


def test_rows_auc_scores_each_row_like_pixel_auc() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(50, generator=g) < 0.4
    rows = (torch.rand(6, 50, generator=g) * 5).round()  # ties within every row
    expected = [roc_auc_score(labels.numpy(), row.numpy()) for row in rows]
    assert rows_auc(rows, labels).tolist() == pytest.approx(expected, abs=1e-12)


def _brute_force_best_iou(scores: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    thresholds = sorted({float(v) for v in scores.flatten()} | {-math.inf}, reverse=True)
    ious = [iou_at(scores, masks, t) for t in thresholds]
    best = max(ious)
    return best, thresholds[ious.index(best)]  # the highest threshold among the best


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 3, 8])
def test_best_iou_matches_brute_force(seed: int, levels: int | None) -> None:
    scores, masks = _data(seed, levels)
    iou, threshold = best_iou(scores, masks)
    expected_iou, expected_threshold = _brute_force_best_iou(scores, masks)
    assert iou == pytest.approx(expected_iou, abs=1e-12)
    assert threshold == expected_threshold
    assert iou_at(scores, masks, threshold) == pytest.approx(iou, abs=1e-12)


def test_best_iou_edges() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    # a perfect cut: strictly above the highest static score
    assert best_iou(scores, torch.tensor([False, False, True, True])) == (1.0, pytest.approx(0.2))
    # every pixel moving: only "everything" is perfect, below every score
    assert best_iou(scores, torch.ones(4, dtype=torch.bool)) == (1.0, -math.inf)
    iou, threshold = best_iou(scores, torch.zeros(4, dtype=torch.bool))
    assert math.isnan(iou) and math.isnan(threshold)


def test_iou_at_is_strict() -> None:
    scores = np.array([0.0, 0.5, 0.5, 1.0])
    masks = np.array([False, True, True, True])
    assert iou_at(scores, masks, 0.5) == pytest.approx(1 / 3)  # 0.5 is not above 0.5
    assert iou_at(scores, masks, 0.4) == 1.0
    assert math.isnan(iou_at(scores, np.zeros(4, dtype=bool), 2.0))  # nothing predicted, nothing moving
