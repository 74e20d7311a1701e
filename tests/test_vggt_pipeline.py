"""The VGGT4D-style recipe end to end on the tiny VGGT: every exporter, windows chained, the estimate line,
and the checkpoint of the wrong family refused in one line naming the recipe."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from easi3r.api import run
from easi3r.errors import ArchitectureError
from easi3r.geometry import sim3_between_cameras
from easi3r.plugins import registry
from easi3r.trajectory_io import read_tum

from .helpers import FRAMES, GOLDEN_NET


@pytest.mark.slow
def test_vggt4d_tiny_writes_every_export(tmp_path, caplog):
    out = tmp_path / "out"
    exporters = registry("exporters").names()
    with caplog.at_level(logging.INFO):
        result = run(
            FRAMES,
            "vggt4d_tiny",
            out,
            [f"export.exporters=[{','.join(exporters)}]", "export.save_intermediates=true"],
        )
    frames = len(result.frames)
    assert result.frames.size == (126, 224)  # VGGT's crop mode at width 224: multiples of 14
    assert frames == 12 and result.pairs.tolist() == [[0, 12]]  # one window: scale.align_window is 12
    assert result.scene is not None and len(result.scene) == frames
    assert torch.isfinite(result.scene.pts3d).all()
    predictions = load_file(out / "frame_predictions.safetensors")
    assert predictions["windows"].tolist() == result.pairs.tolist()
    assert predictions["window0/cam2world"].shape[1:] == (4, 4)
    intermediates = load_file(out / "intermediates.safetensors")
    assert intermediates["pass1/maps/qq_mean_early"].shape == (frames, 9, 16)
    assert intermediates["pass2/atten_mask_input"].shape == (frames, 126, 224)
    for path in ("masks", "maps", "overlays", "overlays.mp4", "maps.mp4", "scene/scene.glb", "scene/colmap"):
        assert (out / path).exists(), path
    assert len(read_tum(out / "scene" / "trajectory_tum.txt")[0]) == frames
    assert len(json.loads(next(out.rglob("transforms.json")).read_text())["frames"]) == frames
    assert any(p.suffix == ".rrd" for p in out.rglob("*"))
    line = next(r.message for r in caplog.records if "estimated peak memory" in r.message)
    assert f"{frames} frames of 224×126 in" in line and "one window's forward" in line


@pytest.mark.slow
def test_windows_chain_into_one_world():
    """Two windows sharing frames 3–5: the scene keeps window 0's cameras and moves window 1's other
    frames into window 0's world by the similarity fitted on the shared ones."""
    result = run(
        FRAMES, "vggt4d_tiny", None, ["scale.align_window=6", "scale.align_overlap=3", "frames.max_frames=9"]
    )
    assert result.pairs.tolist() == [[0, 6], [3, 9]]
    first, second = result.final_pass.outputs.predictions
    scene = result.scene.cam2world
    assert torch.allclose(scene[:6], first.cam2world, atol=1e-6)
    sim = sim3_between_cameras(second.cam2world[:3].double(), first.cam2world[3:6].double())
    moved = sim @ second.cam2world[3:].double()
    assert torch.allclose(scene[6:, :3, 3].double(), moved[:, :3, 3], atol=1e-4)


def test_a_dust3r_checkpoint_is_refused_by_a_vggt_recipe(tmp_path):
    with pytest.raises(
        ArchitectureError, match=r"recipe 'vggt4d_tiny', backbone 'vggt': checkpoint .* CroCo"
    ):
        run(
            FRAMES,
            "vggt4d_tiny",
            tmp_path / "out",
            [f"backbone.checkpoint={GOLDEN_NET / 'weights.pth'}", "frames.max_frames=3"],
        )
    assert not (tmp_path / "out").exists()
