"""Upsampling and thresholds, and the whole mask derivation end to end against the reference."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from easi3r.maps import frame_maps
from easi3r.masks import masks_from_map, upsample_map
from easi3r.normalize import frame_minmax
from easi3r.strategies.refine import KMeansRefiner
from easi3r.strategies.threshold import AdaptiveMultiOtsu, Fixed, Otsu
from easi3r.types import PairAttention

GOLDEN = Path(__file__).parent / "data" / "golden" / "net" / "reference.safetensors"
SIZE = (144, 256)


@cache
def golden() -> dict[str, np.ndarray]:
    return load_file(str(GOLDEN))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("pass_name", ["pass1", "pass2"])
def test_golden_upsample_threshold_masks(pass_name: str) -> None:
    g = golden()
    masks, threshold, upsampled = masks_from_map(
        torch.from_numpy(g[f"{pass_name}/refined_dynamic_map"]), SIZE, AdaptiveMultiOtsu()
    )
    assert np.abs(upsampled.numpy() - g[f"{pass_name}/upsampled_refined_dynamic_map"]).max() <= 1e-6
    assert abs(threshold - float(g[f"{pass_name}/otsu_threshold"][0])) <= 1e-6
    assert masks.dtype == torch.bool and masks.shape == (5, *SIZE)
    assert np.array_equal(masks.numpy(), g[f"{pass_name}/dynamic_masks"])


@pytest.mark.parametrize("pass_name", ["pass1", "pass2"])
def test_golden_end_to_end(pass_name: str) -> None:
    """Captured pair maps → four maps → dynamic map → k-means → adaptive Otsu → masks."""
    g = golden()
    attention = PairAttention(
        decoder1=torch.from_numpy(g[f"{pass_name}/pred1_cross_atten_maps_k"]),
        decoder2=torch.from_numpy(g[f"{pass_name}/pred2_cross_atten_maps_k"]),
    )
    maps = frame_maps(attention, torch.from_numpy(g["pairs"]), 5)
    dynamic = frame_minmax(
        (1 - maps["src_mean"]) * maps["src_std"] * maps["ref_mean"] * (1 - maps["ref_std"])
    )
    np.testing.assert_allclose(dynamic.numpy(), g[f"{pass_name}/dynamic_map"], rtol=0, atol=1e-5)
    refined, _ = KMeansRefiner()(dynamic, torch.from_numpy(g[f"{pass_name}/stacked_feat"]))
    masks, _, _ = masks_from_map(refined, SIZE, AdaptiveMultiOtsu())
    assert iou(masks.numpy(), g[f"{pass_name}/dynamic_masks"]) >= 0.99


def test_upsample_is_bilinear_half_pixel() -> None:
    x = torch.tensor([[[0.0, 1.0]]])
    up = upsample_map(x, (1, 4))
    # align_corners=False: output pixel centres at 0.25 and 0.75 of an input pixel; edges are clamped.
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_adaptive_picks_best_score_and_highest_threshold() -> None:
    # Three levels. n=2 splits {0} | {0.5, 1}: means 0, 0.7 → var 0.1225 / √2 ≈ 0.087; n=3 splits all
    # three: means 0, 0.5, 1 → var 1/6 / √3 ≈ 0.096, so n=3 wins and its highest threshold separates
    # 0.5 from 1. n=4 is impossible (3 levels) and skipped.
    values = torch.tensor([0.0] * 50 + [0.5] * 30 + [1.0] * 20).view(1, 10, 10)
    assert 0.0 < AdaptiveMultiOtsu(classes=(2,))(values) < 0.5
    assert 0.5 <= AdaptiveMultiOtsu()(values) < 1.0
    assert AdaptiveMultiOtsu()(values) == AdaptiveMultiOtsu(classes=(3,))(values)
    assert int((values > AdaptiveMultiOtsu()(values)).sum()) == 20


def test_adaptive_two_levels_skips_impossible_classes() -> None:
    values = torch.tensor([0.2] * 30 + [0.9] * 10).view(1, 5, 8)
    threshold = AdaptiveMultiOtsu()(values)
    assert 0.2 <= threshold < 0.9
    assert int((values > threshold).sum()) == 10


@pytest.mark.parametrize("fn", [AdaptiveMultiOtsu(), Otsu()])
def test_constant_map_gives_empty_mask(fn: object) -> None:
    values = torch.full((2, 3, 4), 0.25)
    masks, threshold, _ = masks_from_map(values, (6, 8), fn)
    assert threshold == pytest.approx(0.25) and not masks.any()


def test_otsu_and_fixed() -> None:
    values = torch.tensor([0.1] * 20 + [0.8] * 12).view(2, 4, 4)
    assert 0.1 <= Otsu()(values) < 0.8
    assert Fixed()(values) == 0.35 and Fixed(0.6)(values) == 0.6


def test_non_finite_values_raise() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        AdaptiveMultiOtsu()(torch.tensor([[[0.0, float("nan")]]]))


@settings(max_examples=20, deadline=None)
@given(frames=st.integers(1, 3), levels=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_thresholds_are_finite(frames: int, levels: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    refined = torch.randint(0, levels, (frames, 2, 3), generator=g).float() / max(levels - 1, 1)
    for fn in (AdaptiveMultiOtsu(), Otsu()):
        masks, threshold, upsampled = masks_from_map(refined, (4, 6), fn)
        assert np.isfinite(threshold)
        assert torch.equal(masks, upsampled > threshold)
        assert torch.isfinite(upsampled).all() and (upsampled >= 0).all() and (upsampled <= 1).all()
