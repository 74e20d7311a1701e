"""Pair graphs: counts, order, symmetry, the reference's exceptions, and the golden pair set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from easi3r.errors import Easi3RError
from easi3r.pairs import make_pairs

GOLDEN = Path(__file__).parent / "data" / "golden" / "net" / "reference.safetensors"


def as_list(pairs: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in pairs.tolist()]


def assert_symmetrised(pairs: torch.Tensor) -> None:
    half = pairs.shape[0] // 2
    assert pairs.shape[0] == 2 * half
    assert torch.equal(pairs[half:], pairs[:half].flip(1))


def test_default_graph_counts_and_order() -> None:
    pairs = make_pairs("swinstride-5-noncyclic", 50)
    assert pairs.dtype == torch.int64 and pairs.shape == (450, 2)
    first = as_list(pairs[:225])
    assert first == sorted(first) and all(i < j for i, j in first)
    assert {j - i for i, j in first} == {1, 3, 5, 7, 9}
    assert_symmetrised(pairs)
    # Every frame has at most 10 neighbours, 5 at the ends (reference-notes §5.2).
    degree = torch.bincount(pairs[:225].flatten(), minlength=50)
    assert int(degree.max()) == 10 and int(degree[0]) == 5 and int(degree[-1]) == 5


def test_deterministic() -> None:
    for graph in ["swinstride-5-noncyclic", "logwin-3-cyclic", "complete", "oneref-2"]:
        assert torch.equal(make_pairs(graph, 17), make_pairs(graph, 17))


@pytest.mark.parametrize("cap_window", [False, True])
def test_golden_pair_set(cap_window: bool) -> None:
    golden = load_file(str(GOLDEN))["pairs"]
    ours = make_pairs("swinstride-5-noncyclic", 5, cap_window=cap_window)
    assert ours.shape == golden.shape == (12, 2)
    assert set(as_list(ours)) == {(int(i), int(j)) for i, j in golden}
    # The reference's layout: the second half reverses the first, edge by edge.
    g = torch.from_numpy(golden)
    assert torch.equal(g[6:], g[:6].flip(1))
    assert_symmetrised(ours)


def test_cap_window() -> None:
    # swin-4 over 5 frames: offsets 1..4 (10 unordered pairs); capped at ceil(4/2) = 2: offsets 1, 2 (7).
    assert make_pairs("swin-4-noncyclic", 5).shape[0] == 20
    assert make_pairs("swin-4-noncyclic", 5, cap_window=True).shape[0] == 14
    # A cap down to 1 turns swin-5 into swin-1, which the reference leaves unsymmetrised.
    assert as_list(make_pairs("swin-5", 3, cap_window=True)) == [(0, 1), (1, 2)]
    # The cap never binds a graph whose window already fits.
    assert torch.equal(make_pairs("swin-2", 9, cap_window=True), make_pairs("swin-2", 9))


def test_noncyclic_is_default() -> None:
    assert torch.equal(make_pairs("swin-3", 8), make_pairs("swin-3-noncyclic", 8))
    assert not torch.equal(make_pairs("swin-3", 8), make_pairs("swin-3-cyclic", 8))


def test_cyclic() -> None:
    assert as_list(make_pairs("swin-1-cyclic", 4)) == [(0, 1), (0, 3), (1, 2), (2, 3)]
    # Offsets 1, 2 wrap round 5 frames onto every other frame: the complete graph.
    assert set(as_list(make_pairs("swin-2-cyclic", 5))) == set(as_list(make_pairs("complete", 5)))
    # Offset 3 over 3 frames wraps onto the frame itself: skipped, no self pair.
    pairs = make_pairs("swin-3-cyclic", 3)
    assert pairs.shape == (6, 2) and bool((pairs[:, 0] != pairs[:, 1]).all())


def test_strides() -> None:
    first = as_list(make_pairs("swin2stride-2-noncyclic", 8, symmetrize=False))
    assert {j - i for i, j in first} == {1, 4}
    first = as_list(make_pairs("swinstride-3", 8, symmetrize=False))
    assert {j - i for i, j in first} == {1, 3, 5}


def test_logwin() -> None:
    first = as_list(make_pairs("logwin-3", 10, symmetrize=False))
    assert len(first) == 9 + 8 + 6 and {j - i for i, j in first} == {1, 2, 4}
    # Cyclic: each of the 10 frames reaches 1, 2, 4 ahead; 30 distinct unordered pairs.
    assert make_pairs("logwin-3-cyclic", 10).shape == (60, 2)


def test_complete() -> None:
    pairs = make_pairs("complete", 4)
    assert as_list(pairs[:6]) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert_symmetrised(pairs)


def test_oneref_and_swin1_not_symmetrised() -> None:
    assert as_list(make_pairs("oneref-2", 4)) == [(2, 0), (2, 1), (2, 3)]
    assert make_pairs("swin-1", 5).shape == (4, 2)
    # ...except with two frames, where the reference symmetrises them too.
    assert as_list(make_pairs("oneref-0", 2)) == [(0, 1), (1, 0)]
    assert as_list(make_pairs("swin-1", 2)) == [(0, 1), (1, 0)]
    # Only the exact window 1 of plain swin is exempt (not swinstride-1, not swin-10).
    assert make_pairs("swinstride-1", 5).shape == (8, 2)
    assert_symmetrised(make_pairs("swin-10", 12))


def test_symmetrize_false() -> None:
    assert as_list(make_pairs("swin-2", 4, symmetrize=False)) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize(
    "graph",
    [
        "",
        "swin",
        "swin-x",
        "swin-0",
        "oneref",
        "complete-cyclic",
        "oneref-1-cyclic",
        "swin-5-circular",
        "SWIN-5",
        "window-3",
        "swinskip_start-3",
    ],
)
def test_bad_graph_names(graph: str) -> None:
    with pytest.raises(Easi3RError) as info:
        make_pairs(graph, 5)
    message = str(info.value)
    assert "\n" not in message
    assert "valid forms" in message or "window size" in message


def test_bad_frame_counts_and_reference() -> None:
    for n in [0, 1]:
        with pytest.raises(Easi3RError, match="at least 2 frames"):
            make_pairs("complete", n)
    with pytest.raises(Easi3RError, match="out of range"):
        make_pairs("oneref-3", 3)


_KINDS = ["swin", "swinstride", "swin2stride", "logwin"]


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from([*_KINDS, "complete", "oneref"]),
    window=st.integers(1, 12),
    suffix=st.sampled_from(["", "-cyclic", "-noncyclic"]),
    n_frames=st.integers(2, 30),
    symmetrize=st.booleans(),
    cap_window=st.booleans(),
)
def test_pair_invariants(
    kind: str, window: int, suffix: str, n_frames: int, symmetrize: bool, cap_window: bool
) -> None:
    if kind == "complete":
        graph = "complete"
    elif kind == "oneref":
        graph = f"oneref-{window % n_frames}"
    else:
        graph = f"{kind}-{window}{suffix}"
    pairs = make_pairs(graph, n_frames, symmetrize=symmetrize, cap_window=cap_window)
    assert pairs.dtype == torch.int64 and pairs.ndim == 2 and pairs.shape[1] == 2 and len(pairs) > 0
    ordered = as_list(pairs)
    assert all(i != j for i, j in ordered)
    assert all(0 <= i < n_frames and 0 <= j < n_frames for i, j in ordered)
    assert len(set(ordered)) == len(ordered)
    effective = min(window, max(1, math.ceil((n_frames - 1) / 2))) if cap_window else window
    exempt = kind == "oneref" or (kind == "swin" and effective == 1)
    unordered = ordered[: len(ordered) // 2] if symmetrize and (not exempt or n_frames == 2) else ordered
    if len(unordered) < len(ordered):
        assert_symmetrised(pairs)
    assert len({frozenset(p) for p in unordered}) == len(unordered)
    if kind != "oneref":
        assert unordered == sorted(unordered) and all(i < j for i, j in unordered)
    assert torch.equal(pairs, make_pairs(graph, n_frames, symmetrize=symmetrize, cap_window=cap_window))
