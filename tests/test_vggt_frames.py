"""frames.mode vggt_crop / vggt_pad: VGGT's preprocessing, pixel for pixel (golden digests of the official
function's output, tests/vggt_golden.py), and the recipe key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from easi3r.errors import Easi3RError, RecipeError
from easi3r.frame_geometry import network_geometry, to_network_grid
from easi3r.frames import load_frames, preprocess_image
from easi3r.recipes import load_recipe, validate_recipe

from . import vggt_golden as golden


@pytest.mark.parametrize("mode", golden.PREPROCESS_MODES)
@pytest.mark.parametrize("case", golden.PREPROCESS_CASES)
def test_pixels_equal_the_official_preprocessing(tmp_path, case, mode):
    stored = load_file(golden.PREPROCESS_FILE)
    path = golden.preprocess_image_file(case, tmp_path)
    frames = load_frames([path, path], size=518, mode=f"vggt_{mode}")
    digest, thumbnail = golden.pixel_digest((frames.images[0] + 1) / 2)
    assert torch.equal(thumbnail, stored[f"{case}/{mode}/thumbnail"])
    assert digest == bytes(stored[f"{case}/{mode}/sha256"].tolist()).hex()


def test_sizes_are_multiples_of_14():
    frame = golden.DATA / "frames" / "00000.jpg"  # 854 x 480
    assert load_frames([frame, frame], size=518, mode="vggt_crop").size == (294, 518)
    padded = load_frames([frame, frame], size=518, mode="vggt_pad").images[0]
    assert padded.shape == (3, 518, 518)
    assert bool((padded[:, :112] == 1).all()) and bool((padded[:, -112:] == 1).all())  # white above and below
    assert load_frames([frame, frame], size=140, mode="vggt_crop").size == (84, 140)


def test_bad_mode_or_size():
    frame = golden.DATA / "frames" / "00000.jpg"
    with pytest.raises(
        Easi3RError, match="frames mode must be one of dust3r, vggt_crop, vggt_pad, got 'vggt'"
    ):
        load_frames([frame, frame], mode="vggt")
    with pytest.raises(Easi3RError, match="needs a size that is a multiple of 14"):
        load_frames([frame, frame], size=512, mode="vggt_pad")


def test_recipe_key():
    assert load_recipe("easi3r_dust3r").frames.mode == "dust3r"
    validate_recipe(
        load_recipe("easi3r_dust3r", ["frames.mode=vggt_crop", "frames.size=518"]), check_names=False
    )
    with pytest.raises(RecipeError, match=r"frames\.mode"):
        validate_recipe(load_recipe("easi3r_dust3r", ["frames.mode=vggt"]), check_names=False)


@pytest.mark.parametrize("mode", ["vggt_crop", "vggt_pad"])
@pytest.mark.parametrize("size", [518, 224, 98])
def test_network_geometry_follows_the_vggt_modes(mode: str, size: int) -> None:
    """Masks and ground truth are mapped with the arithmetic of the frames: a blocky mask drawn into a
    frame and the same mask resampled onto the network grid agree, and the padding is static."""
    rng = np.random.default_rng(0)
    for width, height in ((854, 480), (480, 854), (640, 640), (1001, 333), (300, 1200)):
        blocks = np.kron(rng.random((height // 20 + 1, width // 20 + 1)) > 0.5, np.ones((20, 20), dtype=bool))
        blocks = blocks[:height, :width]
        drawn = np.asarray(
            preprocess_image(Image.fromarray(blocks.astype(np.uint8) * 255).convert("RGB"), size, mode=mode)
        )[..., 0]
        resized, box, final = network_geometry(width, height, size, mode=mode)
        assert final == drawn.shape[::-1]
        mapped = to_network_grid(blocks, (width, height), size, True, False, drawn.shape, mode)
        # the network pixels a source pixel landed on (vggt_pad: not its white border)
        x0, y0 = -min(box[0], 0), -min(box[1], 0)
        inside = np.zeros(drawn.shape, dtype=bool)
        inside[y0 : y0 + min(resized[1], final[1]), x0 : x0 + min(resized[0], final[0])] = True
        assert not mapped[~inside].any()
        assert np.mean(mapped[inside] == (drawn[inside] > 127)) > 0.95
