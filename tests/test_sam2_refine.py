"""SAM2 refinement of the masks (strategies/sam2_refine.py) against a stand-in for SAM2's video predictor.

The real ``sam2`` package needs torchvision, whose PyPI build does not match this project's CPU torch, and
its checkpoints cannot be downloaded here. So a fake ``sam2`` package (written to a temporary folder, put
first on ``sys.path``) hands out :class:`StandInPredictor`: SAM2's public video-predictor API, checking its
arguments as SAM2 would and answering with synthetic masks that show which prompts each frame came from.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easi3r.errors import Easi3RError, RecipeError
from easi3r.plugins import get_plugin_manager
from easi3r.recipes import load_recipe, validate_recipe
from easi3r.strategies.sam2_refine import propagate, write_jpeg_video
from easi3r.types import DynamicMasks, Frames

from .helpers import FRAMES

CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
H, W = 32, 48


class StandInPredictor:
    """SAM2's video predictor as far as easi3r uses it; records every call.

    Output of ``propagate_in_video``: on a frame that was prompted, everything (so a caller that kept the
    prompted frames' output would show it); on any other frame, the union of the masks prompted since the
    last ``reset_state`` (so the test can tell which prompts each frame was inferred from).
    """

    def __init__(self, frames: Frames | None = None) -> None:
        self.frames = frames  # when given, the video must show these frames
        self.calls: list[tuple] = []
        self.state: dict | None = None

    def init_state(self, video_path: str) -> dict:
        assert isinstance(video_path, str), "SAM2 reads a folder path"
        names = sorted(p.name for p in Path(video_path).iterdir())
        assert names == [f"{i:05d}.jpg" for i in range(len(names))], "SAM2 sorts <int>.jpg by index"
        video = np.stack([np.asarray(Image.open(Path(video_path) / name).convert("RGB")) for name in names])
        if self.frames is not None:
            assert video.shape == (len(self.frames), *self.frames.size, 3), "the frames at the network's size"
            assert np.abs(video.astype(int) - self.frames.rgb().astype(int)).mean() < 2  # quality-100 JPEG
        self.calls.append(("init_state",))
        self.state = {"prompts": {}, "tracking": False, "frames": video.shape[0], "size": video.shape[1:3]}
        return self.state

    def reset_state(self, inference_state: dict) -> None:
        assert inference_state is self.state
        self.calls.append(("reset_state",))
        inference_state.update(prompts={}, tracking=False)

    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id: int, mask: torch.Tensor) -> tuple:
        assert inference_state is self.state and not inference_state["tracking"]
        assert isinstance(frame_idx, int) and 0 <= frame_idx < inference_state["frames"]
        assert frame_idx not in inference_state["prompts"]
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
        assert mask.shape == inference_state["size"], "a mask at the video's size"
        self.calls.append(("add_new_mask", frame_idx, obj_id))
        inference_state["prompts"][frame_idx] = mask.clone()
        return frame_idx, [obj_id], torch.zeros(1, 1, *mask.shape)

    def propagate_in_video(
        self,
        inference_state: dict,
        start_frame_idx: int | None = None,
        max_frame_num_to_track=None,
        reverse=False,
    ):
        assert inference_state is self.state and inference_state["prompts"], "SAM2 needs a prompt first"
        self.calls.append(("propagate_in_video", start_frame_idx, max_frame_num_to_track, reverse))
        inference_state["tracking"] = True
        prompts = inference_state["prompts"]
        union = torch.stack(list(prompts.values())).any(0)
        order = (
            range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, inference_state["frames"])
        )
        for index in order:
            dynamic = torch.ones_like(union) if index in prompts else union
            yield index, [1], torch.where(dynamic, 10.0, -10.0)[None, None]


def _frames(n: int) -> Frames:
    images = torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(n)) * 2 - 1
    return Frames(images=images, paths=[f"clip.mp4#{i}" for i in range(n)], source_sizes=[(W, H)] * n)


def _attention_masks(n: int) -> torch.Tensor:
    """Frame i: a 6×6 block at column 6·i (no two frames overlap)."""
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    for i in range(n):
        masks[i, 4:10, 6 * i : 6 * i + 6] = True
    return masks


def _expected_sam2(attention: torch.Tensor) -> torch.Tensor:
    """Each frame: the union of the attention masks of the frames of the other parity."""
    odd, even = attention[1::2].any(0), attention[0::2].any(0)
    return torch.stack([odd if i % 2 == 0 else even for i in range(len(attention))])


def _dynamic_masks(n: int) -> DynamicMasks:
    grid = torch.rand(n, 2, 3)
    return DynamicMasks(
        masks=_attention_masks(n),
        dynamic_map=grid,
        refined_map=grid.clone(),
        threshold=0.5,
        extras={"k": grid},
    )


@pytest.fixture
def fake_sam2(tmp_path, monkeypatch):
    """A ``sam2`` package whose ``build_sam2_video_predictor`` records its arguments and returns a
    :class:`StandInPredictor`. Yields ``(built, checkpoint, expected)``: the predictors built, a weights
    file, and a list into which a test puts the frames the predictors must see."""
    site = tmp_path / "site"
    (site / "sam2" / "configs" / "sam2.1").mkdir(parents=True)
    (site / "sam2" / "__init__.py").write_text("")
    (site / "sam2" / "build_sam.py").write_text("build_sam2_video_predictor = None  # set by the test\n")
    (site / "sam2" / CONFIG).write_text("# stand-in\n")
    checkpoint = tmp_path / "sam2.1_hiera_large.pt"
    checkpoint.write_bytes(b"stand-in weights")
    for name in ("sam2", "sam2.build_sam"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    build_sam = importlib.import_module("sam2.build_sam")
    built: list[tuple] = []

    expected: list[Frames] = []

    def build(config_file, ckpt_path=None, device="cuda", **kwargs):
        # SAM2's logging.info() gives a root logger without handlers one of its own (see _build_predictor)
        logging.getLogger().addHandler(logging.NullHandler())
        predictor = StandInPredictor(expected[0] if expected else None)
        built.append((config_file, ckpt_path, device, kwargs, predictor))
        return predictor

    monkeypatch.setattr(build_sam, "build_sam2_video_predictor", build)
    yield built, checkpoint, expected
    for name in ("sam2", "sam2.build_sam"):
        sys.modules.pop(name, None)


def _recipe(checkpoint: Path | None, *more: str):
    overrides = ["sam2.enabled=true", "sam2.device=cpu", *more]
    if checkpoint is not None:
        overrides.append(f"sam2.checkpoint={checkpoint}")
    return load_recipe("easi3r_dust3r", overrides)


def _hook(masks: DynamicMasks, frames: Frames, recipe, pass_index: int):
    return get_plugin_manager().hook.easi3r_masks_ready(
        masks=masks, frames=frames, recipe=recipe, pass_index=pass_index
    )


@pytest.mark.parametrize("n", [2, 5, 6])
def test_each_frame_is_inferred_from_the_other_parity(tmp_path, n):
    """As the reference: odd frames prompt, forward from frame 0, even frames kept; then the reverse."""
    frames = _frames(n)
    predictor = StandInPredictor(frames)
    write_jpeg_video(frames, tmp_path)
    attention = _attention_masks(n)
    out = propagate(predictor, str(tmp_path), attention)
    assert out.dtype == torch.bool and out.shape == (n, H, W)
    assert torch.equal(out, _expected_sam2(attention))
    odd, even = list(range(1, n, 2)), list(range(0, n, 2))
    assert predictor.calls == [
        ("init_state",),
        ("reset_state",),
        *[("add_new_mask", i, 1) for i in odd],
        ("propagate_in_video", 0, None, False),
        ("reset_state",),
        *[("add_new_mask", i, 1) for i in even],
        ("propagate_in_video", 0, None, False),
    ]


def test_hook_refines_the_masks_as_the_union(fake_sam2):
    built, checkpoint, expected = fake_sam2
    frames = _frames(4)
    expected.append(frames)
    masks = _dynamic_masks(4)
    recipe = _recipe(checkpoint)
    validate_recipe(recipe)
    handlers = list(logging.getLogger().handlers)
    refined = _hook(masks, frames, recipe, 1)
    assert logging.getLogger().handlers == handlers  # easi3r's lines are not printed twice afterwards
    sam2 = _expected_sam2(masks.masks)
    assert refined.masks.dtype == torch.bool and refined.masks.shape == (4, H, W)
    assert torch.equal(refined.masks, masks.masks | sam2)
    assert torch.equal(refined.extras["sam2_masks"], sam2)
    assert torch.equal(refined.extras["attention_masks"], masks.masks)
    assert refined.extras["k"] is masks.extras["k"] and refined.dynamic_map is masks.dynamic_map
    assert refined.threshold == masks.threshold
    assert [b[:4] for b in built] == [(CONFIG, str(checkpoint), "cpu", {})]
    # every frame kept its own 6x6 block and gained the two blocks of the other parity's frames
    assert [int(m.sum()) for m in refined.masks] == [3 * 36] * 4


def test_combine_sam2_replaces_only_the_final_masks(fake_sam2):
    """``combine: sam2`` gives SAM2's masks alone as the final ones; pass 2 still re-weights with the union."""
    _, checkpoint, expected = fake_sam2
    frames = _frames(3)
    expected.append(frames)
    masks = _dynamic_masks(3)
    recipe = _recipe(checkpoint, "sam2.combine=sam2")
    sam2 = _expected_sam2(masks.masks)
    assert torch.equal(_hook(masks, frames, recipe, 1).masks, masks.masks | sam2)
    assert torch.equal(_hook(masks, frames, recipe, 2).masks, sam2)
    single = _recipe(checkpoint, "sam2.combine=sam2", "passes.masks_from=pass1")  # pass 1 is then final
    assert torch.equal(_hook(masks, frames, single, 1).masks, sam2)


def test_passes_and_single_frame_leave_masks_alone(fake_sam2):
    built, checkpoint, _ = fake_sam2
    assert _hook(_dynamic_masks(3), _frames(3), _recipe(checkpoint, "sam2.passes=[2]"), 1) is None
    assert _hook(_dynamic_masks(1), _frames(1), _recipe(checkpoint), 1) is None
    assert built == []


def test_off_by_default_leaves_masks_unchanged():
    for name in ("easi3r_dust3r", "easi3r_monst3r", "tiny", "dust3r_baseline"):
        recipe = load_recipe(name)
        assert recipe.sam2.enabled is False and recipe.sam2.checkpoint is None
    recipe = load_recipe("easi3r_dust3r")
    validate_recipe(recipe)
    assert _hook(_dynamic_masks(3), _frames(3), recipe, 1) is None
    del recipe["sam2"]  # a recipe written before the section existed
    validate_recipe(recipe)
    assert _hook(_dynamic_masks(3), _frames(3), recipe, 2) is None


def test_pipeline_runs_with_sam2_in_both_passes(fake_sam2):
    """Through ``easi3r.run``: both passes' masks are refined, pass 2 re-weighting with the refined pass-1 ones."""
    from easi3r.api import run

    built, checkpoint, _ = fake_sam2
    paths = [str(FRAMES / f"0000{i}.jpg") for i in range(3)]
    overrides = ["align.name=none", "frames.size=128", "refine.k=4", "sam2.enabled=true", "sam2.device=cpu"]
    result = run(paths, "tiny", None, [*overrides, f"sam2.checkpoint={checkpoint}"])
    assert len(built) == 2
    for pass_name in ("pass1", "pass2"):
        masks = result.passes[pass_name].masks
        assert masks.masks.shape == (3, *result.frames.size) and masks.masks.dtype == torch.bool
        assert torch.equal(masks.masks, masks.extras["attention_masks"] | masks.extras["sam2_masks"])
        assert torch.equal(masks.extras["sam2_masks"], _expected_sam2(masks.extras["attention_masks"]))


def test_enabled_without_checkpoint_is_one_line_before_frames_are_read(tmp_path):
    from easi3r.api import run

    with pytest.raises(RecipeError) as caught:
        run(str(tmp_path / "missing.mp4"), "easi3r_dust3r", None, ["sam2.enabled=true"])
    message = str(caught.value)
    assert "\n" not in message and "'sam2.checkpoint'" in message and "sam2.1_hiera_large.pt" in message


def test_missing_checkpoint_file_names_it(tmp_path):
    missing = tmp_path / "sam2.1_hiera_large.pt"
    with pytest.raises(
        RecipeError, match=r"'sam2\.checkpoint': file '.*sam2\.1_hiera_large\.pt' does not exist"
    ):
        validate_recipe(_recipe(missing))


def test_enabled_without_the_package_names_the_extra(tmp_path, monkeypatch):
    checkpoint = tmp_path / "sam2.1_hiera_large.pt"
    checkpoint.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "sam2", None)  # as if not installed: find_spec gives None
    with pytest.raises(Easi3RError) as caught:
        validate_recipe(_recipe(checkpoint))
    assert "\n" not in str(caught.value) and "pip install 'easi3r[sam2]'" in str(caught.value)


def test_unknown_config_and_bad_keys_are_refused(fake_sam2):
    _, checkpoint, _ = fake_sam2
    with pytest.raises(
        RecipeError, match=r"'sam2\.config': 'configs/nope\.yaml' is not a model configuration"
    ):
        validate_recipe(_recipe(checkpoint, "sam2.config=configs/nope.yaml"))
    recipe = _recipe(checkpoint)
    recipe.sam2.combine = "intersection"
    with pytest.raises(RecipeError, match=r"'sam2\.combine' must be one of union, sam2"):
        validate_recipe(recipe)
    recipe = _recipe(checkpoint)
    recipe.sam2.checkpont = "x"
    with pytest.raises(
        RecipeError, match=r"'sam2\.checkpont' is not allowed; did you mean 'sam2\.checkpoint'"
    ):
        validate_recipe(recipe)
