"""``easi3r run --masks DIR``: the user's masks replace the pass-1 attention masks (and, with
``--masks-final``, the final ones), brought onto the network pixels like their frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from easi3r.api import run
from easi3r.cli import main
from easi3r.synth import write_synthetic_dataset

from .test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, sequences=1, frames=4, size=(72, 128), seed=3)
    return root / "seq000" / "rgb", root / "seq000" / "masks"


def _truth(masks_dir, size) -> torch.Tensor:
    """The mask files at the network size (the synthetic frames need no crop at this size: 128 × 72 → 256 × 144)."""
    images = [
        Image.open(p).resize((size[1], size[0]), Image.Resampling.NEAREST)
        for p in sorted(masks_dir.iterdir())
    ]
    return torch.from_numpy(np.stack([np.asarray(image) > 0 for image in images]))


@pytest.mark.parametrize("final", [False, True])
def test_user_masks_replace_pass_1_and_optionally_the_final_masks(labelled, tmp_path, final):
    frames, masks = labelled
    result = run(frames, "tiny", None, ["align.name=none"], masks=masks, masks_final=final)
    truth = _truth(masks, result.frames.size)
    assert torch.equal(result.passes["pass1"].masks.masks, truth)
    assert torch.equal(result.masks.masks, truth) == final  # the final masks come from pass 2
    # the attention maps are still there, to compare with
    assert result.passes["pass1"].masks.dynamic_map.shape[0] == 4


def test_user_masks_follow_stride(labelled):
    frames, masks = labelled
    result = run(frames, "tiny", None, ["align.name=none", "frames.stride=2"], masks=masks, masks_final=True)
    assert torch.equal(result.masks.masks, _truth(masks, result.frames.size)[::2])


def test_bad_user_masks_are_one_line(labelled, tmp_path, capsys):
    frames, masks = labelled
    few = tmp_path / "few"
    few.mkdir()
    Image.open(sorted(masks.iterdir())[0]).save(few / "0.png")
    code, _, err = run_cli(
        capsys, "run", str(frames), "-o", str(tmp_path / "out"), "-r", "tiny", "--masks", str(few)
    )
    assert_one_line_error(code, err, "--masks", "1 masks, but the frames need 4")
    code, _, err = run_cli(
        capsys, "run", str(frames), "-o", str(tmp_path / "out"), "-r", "tiny", "--masks-final"
    )
    assert_one_line_error(code, err, "--masks-final needs --masks DIR")
    code, _, err = run_cli(
        capsys, "run", str(frames), "-o", str(tmp_path / "out"), "-r", "dust3r_baseline",
        "--masks", str(masks), "backbone.preset=tiny",
    )  # fmt: skip
    assert_one_line_error(code, err, "derives none")
    assert not (tmp_path / "out").exists()


def test_cli_run_with_masks_writes_them(labelled, tmp_path):
    frames, masks = labelled
    out = tmp_path / "out"
    assert main(["run", str(frames), "-o", str(out), "-r", "tiny", "--masks", str(masks), "--masks-final",
                 "align.name=none"]) == 0  # fmt: skip
    written = [np.asarray(Image.open(p)) > 0 for p in sorted((out / "masks").glob("dynamic_mask_*.png"))]
    truth = _truth(masks, written[0].shape)
    assert np.array_equal(np.stack(written), truth.numpy())
