"""k-means refinement of the dynamic map: golden parity with the reference, and degenerate inputs."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from easi3r.normalize import frame_minmax
from easi3r.strategies.refine import KMeansRefiner, NoRefiner

GOLDEN = Path(__file__).parent / "data" / "golden" / "net" / "reference.safetensors"


@cache
def golden() -> dict[str, np.ndarray]:
    return load_file(str(GOLDEN))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings group the tokens identically (labels may be permuted)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("pass_name", ["pass1", "pass2"])
def test_golden_kmeans(pass_name: str) -> None:
    g = golden()
    refined, extras = KMeansRefiner()(
        torch.from_numpy(g[f"{pass_name}/dynamic_map"]), torch.from_numpy(g[f"{pass_name}/stacked_feat"])
    )
    expected = g[f"{pass_name}/refined_dynamic_map"]
    assert refined.shape == (5, 9, 16) and refined.dtype == torch.float32
    assert np.abs(refined.numpy() - expected).max() / np.abs(expected).max() <= 1e-5
    labels = extras["labels"]
    assert labels.dtype == torch.int64 and labels.shape == (5, 9, 16)
    assert same_partition(labels.numpy(), g[f"{pass_name}/dynamic_map_labels"])


def test_deterministic() -> None:
    g = golden()
    args = torch.from_numpy(g["pass1/dynamic_map"]), torch.from_numpy(g["pass1/stacked_feat"])
    a, ea = KMeansRefiner(k=16)(*args)
    b, eb = KMeansRefiner(k=16)(*args)
    assert torch.equal(a, b) and torch.equal(ea["labels"], eb["labels"])


def test_fewer_tokens_than_clusters() -> None:
    torch.manual_seed(0)
    dynamic = torch.rand(2, 2, 3)
    refined, extras = KMeansRefiner(k=64)(dynamic, torch.randn(2, 2, 3, 8))
    # 12 distinct tokens, 12 clusters: every token is its own cluster, so refining only re-normalises.
    assert len(extras["labels"].unique()) == 12
    torch.testing.assert_close(refined, frame_minmax(dynamic))


def test_all_zero_features_are_finite() -> None:
    torch.manual_seed(0)
    refined, extras = KMeansRefiner()(torch.rand(2, 3, 4), torch.zeros(2, 3, 4, 16))
    # One distinct feature vector → one cluster → one value everywhere → zeros after min-max.
    assert torch.equal(extras["labels"], torch.zeros(2, 3, 4, dtype=torch.int64))
    assert torch.equal(refined, torch.zeros(2, 3, 4))


def test_constant_map_gives_zeros() -> None:
    torch.manual_seed(0)
    refined, _ = KMeansRefiner(k=4)(torch.full((2, 3, 4), 0.5), torch.randn(2, 3, 4, 8))
    assert torch.equal(refined, torch.zeros(2, 3, 4))


def test_no_refiner() -> None:
    dynamic = torch.rand(2, 3, 4)
    refined, extras = NoRefiner()(dynamic, torch.zeros(2, 3, 4, 5))
    assert refined is dynamic and extras == {}


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same grid"):
        KMeansRefiner()(torch.rand(2, 3, 4), torch.rand(2, 4, 3, 8))


@settings(max_examples=15, deadline=None)
@given(
    frames=st.integers(1, 3),
    k=st.integers(1, 8),
    duplicated=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_refined_is_finite_and_in_unit_range(frames: int, k: int, duplicated: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, 2, 3, 4, generator=g)
    if duplicated:  # only two distinct feature vectors
        features = (features > 0).float()[..., :1].expand(-1, -1, -1, 4)
    refined, extras = KMeansRefiner(k=k)(torch.rand(frames, 2, 3, generator=g), features)
    assert torch.isfinite(refined).all()
    assert (refined >= 0).all() and (refined <= 1).all()
    assert int(extras["labels"].max()) < k
