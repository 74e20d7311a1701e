"""The formula search: a planted signal is found and holds up on held-out sequences, noise does not; the
split is deterministic; the exact formula text is what gets scored; the recipe it writes runs as is."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from easi3r.calibration.scores import pixel_auc
from easi3r.calibration.search import (
    LabelledMaps,
    _prepare,
    candidate_terms,
    formula_auc,
    formula_recipe,
    product_formula,
    search_formula,
    split_sequences,
)
from easi3r.errors import Easi3RError
from easi3r.formula import parse
from easi3r.maps import STAT_NAMES
from easi3r.masks import upsample_map
from easi3r.recipes import load_recipe, validate_recipe

FRAMES, GRID, SIZE, CHANNELS = 6, (12, 16), (48, 64), 6


def _sequence(name: str, seed: int, planted: bool) -> LabelledMaps:
    """Noise maps; when ``planted``, ``src_mean_raw`` channel 3 is the moving region plus tiny noise and
    ``ref_std_raw`` channel 1 its complement. Masks: the moving tokens' upsampled area."""
    g = torch.Generator().manual_seed(seed)
    moving = torch.zeros(FRAMES, *GRID)
    for t in range(FRAMES):  # one random rectangle per frame
        top, left = (int(torch.randint(0, n - 6, (1,), generator=g)) for n in GRID)
        moving[t, top : top + 5, left : left + 6] = 1
    maps = {name: torch.rand(FRAMES, *GRID, generator=g) for name in STAT_NAMES}
    maps.update({f"{n}_raw": torch.rand(FRAMES, *GRID, CHANNELS, generator=g) for n in STAT_NAMES})
    if planted:
        noise = 0.01 * torch.rand(2, FRAMES, *GRID, generator=g)
        maps["src_mean_raw"][..., 3] = moving + noise[0]
        maps["ref_std_raw"][..., 1] = 1 - moving + noise[1]
    return LabelledMaps(name, maps, upsample_map(moving, SIZE) > 0.5)


def test_candidate_terms_are_the_fused_maps_and_every_raw_channel() -> None:
    terms = candidate_terms(_sequence("a", 0, planted=False).maps)
    assert terms[:4] == list(STAT_NAMES)
    assert len(terms) == 4 + 4 * CHANNELS
    assert "channel(src_mean_raw, 5)" in terms and "channel(ref_std_raw, 0)" in terms


def test_product_formula_text() -> None:
    assert product_formula([("src_std", False), ("channel(ref_mean_raw, 17)", True)]) == (
        "frame_minmax(minmax(src_std) * (1 - minmax(channel(ref_mean_raw, 17))))"
    )


def test_split_is_by_name_alternating_and_needs_two_sequences() -> None:
    sequences = [_sequence(name, i, planted=False) for i, name in enumerate("dbeac")]
    selection, report = split_sequences(sequences)
    assert [s.name for s in selection] == ["a", "c", "e"] and [s.name for s in report] == ["b", "d"]
    assert split_sequences(sequences[::-1]) == (selection, report)  # whatever the order given
    with pytest.raises(Easi3RError, match="at least 2 labelled sequences") as info:
        split_sequences(sequences[:1])
    assert "\n" not in str(info.value)
    with pytest.raises(Easi3RError, match="distinct names; repeated: b"):
        split_sequences([sequences[1], sequences[1], sequences[0]])


def test_planted_signal_is_found_and_holds_on_held_out_sequences() -> None:
    sequences = [_sequence(f"seq{i}", i, planted=True) for i in range(4)]
    result = search_formula(sequences, depth=2, max_pixels=2000)
    assert result.selection == ("seq0", "seq2") and result.report == ("seq1", "seq3")
    assert "channel(src_mean_raw, 3)" in result.formula or "channel(ref_std_raw, 1)" in result.formula
    assert result.report_auc >= 0.95 and result.selection_auc >= 0.95
    assert result.trail[-1].formula == result.formula
    # The reported scores are those of the exact formula text, on every pixel.
    report = [s for s in sequences if s.name in result.report]
    by_hand = [
        pixel_auc(upsample_map(parse(result.formula).evaluate(s.maps), s.size), s.masks) for s in report
    ]
    assert result.report_auc == sum(by_hand) / len(by_hand)
    assert result.selection_auc == formula_auc(result.formula, sequences[0::2])


def test_noise_scores_chance_on_held_out_sequences() -> None:
    sequences = [_sequence(f"noise{i}", 10 + i, planted=False) for i in range(6)]
    result = search_formula(sequences, beam_width=3, depth=3, max_pixels=4000)
    assert abs(result.report_auc - 0.5) < 0.1
    assert result.selection_auc > result.report_auc  # chosen for the selection half: optimistic there
    assert len(result.trail) >= 1
    assert [step.selection_auc for step in result.trail] == [
        formula_auc(step.formula, sequences[0::2]) for step in result.trail
    ]


def test_search_refuses_masks_without_both_classes() -> None:
    sequences = [_sequence("a", 0, planted=True), _sequence("b", 1, planted=True)]
    empty = LabelledMaps("b", sequences[1].maps, torch.zeros_like(sequences[1].masks))
    with pytest.raises(Easi3RError, match="sequence 'b': its masks have no moving pixel"):
        search_formula([sequences[0], empty])


def test_sampled_pixels_are_upsample_map_values() -> None:
    sequence = _sequence("a", 0, planted=True)
    prepared = _prepare(sequence, ["channel(src_mean_raw, 3)", "src_std"], max_pixels=1000, seed=0)
    assert len(prepared.pixels) == 1000
    assert int(prepared.labels.sum()) == 500  # half moving, half static
    assert torch.equal(prepared.labels, sequence.masks.flatten()[prepared.pixels])
    for k in range(2):
        sampled = (prepared.factors[k].flatten()[prepared.tokens] * prepared.weights).sum(dim=0)
        expected = upsample_map(prepared.factors[k], SIZE).flatten()[prepared.pixels]
        assert torch.allclose(sampled, expected, atol=1e-6)


def test_formula_recipe_loads_and_validates(tmp_path: Path) -> None:
    formula = "frame_minmax(minmax(channel(src_mean_raw, 17)) * (1 - minmax(ref_std)))"
    text = formula_recipe(formula, "tiny", {"held-out pixel AUC": 0.91234, "selection pixel AUC": 0.95})
    assert text.startswith("#") and "#   held-out pixel AUC: 0.9123" in text
    path = tmp_path / "calibrated.yaml"
    path.write_text(text)
    cfg = load_recipe(str(path))
    validate_recipe(cfg)  # channel 17 is beyond the sample maps' 2 channels: checked on the video
    assert cfg.rule.name == "formula" and cfg.rule.formula == formula
    assert cfg.backbone.preset == "tiny"


def test_search_parameters_are_checked() -> None:
    sequences = [_sequence("a", 0, planted=True), _sequence("b", 1, planted=True)]
    with pytest.raises(Easi3RError, match="at least 1"):
        search_formula(sequences, beam_width=0)
    with pytest.raises(Easi3RError, match="no candidate terms"):
        search_formula(sequences, terms=[])
    assert not math.isnan(search_formula(sequences, terms=["src_std"], depth=1).report_auc)
