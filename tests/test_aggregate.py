"""Pair maps → four per-frame maps: golden parity with the reference, and NaN-proof edge cases."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from easi3r.maps import STAT_NAMES, aggregate_pair_maps, frame_maps, fuse_channels
from easi3r.types import PairAttention

GOLDEN = Path(__file__).parent / "data" / "golden" / "net" / "reference.safetensors"
# Our name → the reference's (its "i" side is decoder 1 = source, "j" is decoder 2 = reference, "var" a std).
REFERENCE_NAMES = {"src_mean": "i_mean", "src_std": "i_var", "ref_mean": "j_mean", "ref_std": "j_var"}


@cache
def golden() -> dict[str, np.ndarray]:
    return load_file(str(GOLDEN))


def golden_attention(pass_name: str) -> tuple[PairAttention, torch.Tensor]:
    g = golden()
    attention = PairAttention(
        decoder1=torch.from_numpy(g[f"{pass_name}/pred1_cross_atten_maps_k"]),
        decoder2=torch.from_numpy(g[f"{pass_name}/pred2_cross_atten_maps_k"]),
    )
    return attention, torch.from_numpy(g["pairs"])


def rel_err(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.numpy() - b).max() / np.abs(b).max())


def looped_stats(maps: torch.Tensor, frame_of_pair: torch.Tensor, n_frames: int) -> list[torch.Tensor]:
    """The obvious per-frame loop (torch.std, Bessel), as an independent check of the vectorised code."""
    maps = maps.clone()
    maps[:, 0, 0] = (maps[:, 0, 1] + maps[:, 1, 0]) / 2
    means, stds = [], []
    for t in range(n_frames):
        group = maps[frame_of_pair == t].double()
        means.append(group.mean(0))
        stds.append(group.std(0) if len(group) > 1 else torch.zeros_like(group[0]))
    return [torch.stack(means).float(), torch.stack(stds).float()]


@pytest.mark.parametrize("pass_name", ["pass1", "pass2"])
def test_golden_raw_and_fused(pass_name: str) -> None:
    attention, pairs = golden_attention(pass_name)
    maps = frame_maps(attention, pairs, 5)
    g = golden()
    for ours, theirs in REFERENCE_NAMES.items():
        raw = g[f"{pass_name}/cross_att_k_{theirs}_raw"]
        fused = g[f"{pass_name}/cross_att_k_{theirs}_fused"]
        assert maps[f"{ours}_raw"].shape == (5, 9, 16, 9)
        assert maps[ours].shape == (5, 9, 16)
        assert rel_err(maps[f"{ours}_raw"], raw) <= 1e-5, ours
        assert rel_err(maps[ours], fused) <= 1e-5, ours


def test_vectorised_equals_loop() -> None:
    attention, pairs = golden_attention("pass1")
    raw = aggregate_pair_maps(attention, pairs, 5)
    src = looped_stats(attention.decoder1, pairs[:, 1], 5)
    ref = looped_stats(attention.decoder2, pairs[:, 0], 5)
    for name, expected in zip(STAT_NAMES, [*src, *ref]):
        torch.testing.assert_close(raw[name], expected, rtol=1e-5, atol=1e-5)


def test_corner_fix_only_touches_token_00() -> None:
    attention, pairs = golden_attention("pass1")
    fixed = aggregate_pair_maps(attention, pairs, 5, corner_fix=True)
    plain = aggregate_pair_maps(attention, pairs, 5, corner_fix=False)
    for name in STAT_NAMES:
        diff = (fixed[name] != plain[name]).any(dim=(0, 3))
        assert diff[0, 0] and diff.sum() == 1


def test_std_is_accurate_for_large_offsets() -> None:
    # A tiny spread on top of a large logit: the E[x²]-E[x]² shortcut would lose it in float32.
    torch.manual_seed(0)
    maps = 1000.0 + 1e-2 * torch.randn(4, 3, 3, 2)
    attention = PairAttention(decoder1=maps, decoder2=maps)
    pairs = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])
    raw = aggregate_pair_maps(attention, pairs, 2, corner_fix=False)
    expected = maps.double()[[1, 3]].std(0)
    torch.testing.assert_close(raw["ref_std"][1].double(), expected, rtol=1e-3, atol=0)


def test_half_precision_maps_give_float32_stats() -> None:
    attention, pairs = golden_attention("pass1")
    half = PairAttention(decoder1=attention.decoder1.half(), decoder2=attention.decoder2.half())
    raw = aggregate_pair_maps(half, pairs, 5)
    expected = aggregate_pair_maps(
        PairAttention(decoder1=half.decoder1.double(), decoder2=half.decoder2.double()), pairs, 5
    )
    for name in STAT_NAMES:
        assert raw[name].dtype == torch.float32
        torch.testing.assert_close(raw[name].double(), expected[name], rtol=1e-5, atol=1e-6)


def test_one_pair_per_frame_is_finite() -> None:
    torch.manual_seed(0)
    attention = PairAttention(decoder1=torch.randn(2, 3, 4, 5), decoder2=torch.randn(2, 3, 4, 5))
    maps = frame_maps(attention, torch.tensor([[0, 1], [1, 0]]), 2)
    for name in STAT_NAMES:
        assert torch.isfinite(maps[name]).all() and torch.isfinite(maps[f"{name}_raw"]).all()
        assert (maps[name] >= 0).all() and (maps[name] <= 1).all()
    assert (maps["src_std_raw"] == 0).all() and (maps["ref_std_raw"] == 0).all()
    # Frame 1 is view 2 of pair 0 only: its source mean is that pair's (corner-fixed) decoder-1 map.
    torch.testing.assert_close(maps["src_mean_raw"][1, 1:, 1:], attention.decoder1[0, 1:, 1:])


def test_constant_maps_give_zeros() -> None:
    attention = PairAttention(decoder1=torch.full((4, 3, 3, 2), 7.0), decoder2=torch.full((4, 3, 3, 2), -2.0))
    maps = frame_maps(attention, torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]]), 2)
    for name in STAT_NAMES:
        assert torch.equal(maps[name], torch.zeros(2, 3, 3))


def test_fuse_constant_is_zero() -> None:
    assert torch.equal(fuse_channels(torch.full((2, 3, 4, 5), 3.5)), torch.zeros(2, 3, 4))


def test_fuse_matches_stepwise_definition() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 6) * 10
    y = (x - x.min()) / (x.max() - x.min() + 1e-6)
    y = y.mean(-1)
    y = (y - y.min()) / (y.max() - y.min() + 1e-6)
    torch.testing.assert_close(fuse_channels(x), y)


def test_frame_without_pair_raises() -> None:
    attention = PairAttention(decoder1=torch.randn(2, 3, 3, 2), decoder2=torch.randn(2, 3, 3, 2))
    with pytest.raises(ValueError, match=r"frame\(s\) \[2\]"):
        aggregate_pair_maps(attention, torch.tensor([[0, 1], [1, 0]]), 3)


def test_bad_inputs_raise() -> None:
    attention = PairAttention(decoder1=torch.randn(2, 3, 3, 2), decoder2=torch.randn(2, 3, 3, 2))
    pairs = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="outside"):
        aggregate_pair_maps(attention, torch.tensor([[0, 2], [2, 0]]), 2)
    with pytest.raises(ValueError, match="single_pair_std"):
        aggregate_pair_maps(attention, pairs, 2, single_pair_std="nan")
    attention.decoder1[0, 1, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        aggregate_pair_maps(attention, pairs, 2)


@settings(max_examples=25, deadline=None)
@given(
    n_frames=st.integers(2, 4),
    extra_pairs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=5),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_fused_maps_are_finite_and_in_unit_range(
    n_frames: int, extra_pairs: list[tuple[int, int]], scale: float, seed: int
) -> None:
    # A ring in both directions covers every frame on both sides; extra pairs make the counts uneven.
    ring = [(t, (t + 1) % n_frames) for t in range(n_frames)]
    pairs = [*ring, *[(j, i) for i, j in ring]]
    pairs += [(i % n_frames, j % n_frames) for i, j in extra_pairs if i % n_frames != j % n_frames]
    g = torch.Generator().manual_seed(seed)
    shape = (len(pairs), 2, 3, 2)
    attention = PairAttention(
        decoder1=scale * torch.randn(shape, generator=g), decoder2=scale * torch.randn(shape, generator=g)
    )
    maps = frame_maps(attention, torch.tensor(pairs), n_frames)
    for name in STAT_NAMES:
        assert torch.isfinite(maps[name]).all()
        assert (maps[name] >= 0).all() and (maps[name] <= 1).all()
