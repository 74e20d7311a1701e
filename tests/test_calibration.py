"""easi3r calibrate: pass-1 statistics per layer and head in bounded memory, scored against ground truth."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from easi3r.calibration.calibrate import calibrate
from easi3r.calibration.capture import streamed_frame_maps
from easi3r.calibration.sequences import LabelledSequence
from easi3r.cli import main
from easi3r.frames import load_frames
from easi3r.maps import frame_maps
from easi3r.pipeline import pair_graph
from easi3r.recipes import create_strategy, load_recipe
from easi3r.synthetic import make_scene
from easi3r.types import Encoded, Frames, PairAttention, PairOutputs

from .helpers import FRAMES


@pytest.fixture(scope="module")
def tiny():
    recipe = load_recipe("tiny")
    backbone = create_strategy(recipe, "backbone")
    capture = create_strategy(recipe, "capture")
    frames = load_frames(sorted(FRAMES.glob("*.jpg"))[:6], size=recipe.frames.size)
    return recipe, backbone, capture, frames


@pytest.mark.parametrize("chunk_pairs", [1, 7, 1000])
def test_streamed_statistics_equal_the_pipelines(tiny, chunk_pairs):
    recipe, backbone, capture, frames = tiny
    pairs = pair_graph(recipe, len(frames))
    encoded = backbone.encode(frames.images)
    whole = backbone.decode(encoded, pairs, capture=capture, heads=False)
    expected = frame_maps(whole.attention, whole.pairs, len(frames))
    streamed = streamed_frame_maps(backbone, capture, encoded, pairs, len(frames), chunk_pairs=chunk_pairs)
    assert streamed.maps.keys() == expected.maps.keys()
    for name, value in expected.maps.items():
        torch.testing.assert_close(streamed[name], value, rtol=1e-5, atol=1e-6, msg=name)


# --- a planted signal is found -----------------------------------------------------------------------

PLANTED_LAYER, PLANTED_HEAD = 2, 1


class PlantedBackbone:
    """A stand-in backbone (the :class:`~easi3r.contracts.Backbone` contract) whose decoder-1 map at one
    layer and head is exactly each source frame's ground truth (the moving share of every token's pixels),
    and noise everywhere else."""

    name, patch_size, decoder_layers, decoder_heads, device = "planted", 16, 3, 2, "cpu"

    def __init__(self, token_masks: dict[bytes, Tensor]) -> None:
        self.token_masks = token_masks  # image bytes → (N,) moving share of each token's pixels
        self.generator = torch.Generator().manual_seed(0)

    def encode(self, images: Tensor) -> Encoded:
        height, width = images.shape[-2:]
        grid = (height // 16, width // 16)
        tokens = torch.stack([self.token_masks[image.numpy().tobytes()] for image in images])[..., None]
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        return Encoded(tokens, torch.stack((rows, cols), -1).reshape(-1, 2), grid, (height, width))

    def decode(
        self, encoded: Encoded, pairs: Tensor, *, capture=None, reweight=None, heads=True, progress=None
    ):
        channels = self.decoder_layers * self.decoder_heads
        shape = (len(pairs), *encoded.grid, channels)
        decoder1 = torch.randn(shape, generator=self.generator)
        decoder2 = torch.randn(shape, generator=self.generator)
        planted = PLANTED_LAYER * self.decoder_heads + PLANTED_HEAD
        source_masks = encoded.tokens[pairs[:, 1], :, 0].reshape(len(pairs), *encoded.grid)
        decoder1[..., planted] = 4 * source_masks + 0.1 * decoder1[..., planted]
        return PairOutputs(pairs=pairs, attention=PairAttention(decoder1, decoder2))


def _synthetic_sequences(count: int) -> list[LabelledSequence]:
    sequences = []
    for k in range(count):
        scene = make_scene(n_frames=6, size=(64, 96), n_objects=2, seed=k)
        frames = Frames(scene.images(), [f"seq{k}#{t}" for t in range(6)], [(96, 64)] * 6)
        sequences.append(LabelledSequence(f"seq{k}", frames, scene.masks))
    return sequences


@pytest.mark.slow
def test_a_planted_signal_is_ranked_first_and_the_formula_finds_it(tmp_path):
    sequences = _synthetic_sequences(4)
    token_masks = {
        image.numpy().tobytes(): F.avg_pool2d(s.masks[t : t + 1, None].float(), 16).flatten()  # coverage
        for s in sequences
        for t, image in enumerate(s.frames.images)
    }
    result = calibrate(
        sequences,
        load_recipe("tiny"),
        tmp_path / "out",
        recipe_ref="tiny",
        backbone=PlantedBackbone(token_masks),
    )
    planted = PLANTED_LAYER * PlantedBackbone.decoder_heads + PLANTED_HEAD
    assert result.ranked[0].term == f"channel(src_mean_raw, {planted})"
    assert result.ranked[0].mean("auc", result.report) > 0.95
    assert result.search.report_auc >= 0.95
    assert f"channel(src_mean_raw, {planted})" in result.search.formula
    report = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert (report["candidates"][0]["layer"], report["candidates"][0]["head"]) == (
        PLANTED_LAYER,
        PLANTED_HEAD,
    )
    assert sorted(p.name for p in (tmp_path / "out" / "heatmaps").iterdir()) == [
        "ref_mean.png", "ref_std.png", "src_mean.png", "src_std.png",
    ]  # fmt: skip


@pytest.mark.slow
def test_calibrate_command_on_synthetic_sequences_then_run_its_recipe(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "report"
    assert main(["synth", "-o", str(data), "--sequences", "4", "--frames", "5", "--size", "64x96"]) == 0
    code = main(["calibrate", "--dataset", "synthetic", "--root", str(data), "--sequences", "all", "-o", str(out),
                 "--recipe", "tiny", "--beam", "2", "--depth", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "calibrated.yaml", "heatmaps", "ranking.json", "ranking.md", "search.json",
    ]  # fmt: skip
    search = json.loads((out / "search.json").read_text())
    assert search["selection"] == ["seq000", "seq002"] and search["report"] == ["seq001", "seq003"]
    # the calibrated recipe runs unchanged
    frames = data / "seq001" / "rgb"
    assert main(["run", str(frames), "-o", str(tmp_path / "run"), "--recipe", str(out / "calibrated.yaml"),
                 "align.name=none"]) == 0  # fmt: skip
    run = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert run["rule"]["formula"] == search["formula"]


def test_calibrate_errors_are_one_line(tmp_path, capsys):
    code = main(["calibrate", "-o", str(tmp_path / "out"), "--recipe", "tiny"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "easi3r: error: give either SOURCE --masks GT_DIR, or --dataset NAME --root DIR"
    )
    code = main(["calibrate", str(FRAMES), "-o", str(tmp_path / "out"), "--recipe", "tiny"])
    assert code == 2
    assert "--masks GT_DIR is needed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
