"""Frame-set backbones: the Gram capture against its oracle, VGGT4D's key dropping, windows and their home
frames, the ``predicted`` aligner, and the whole pipeline on the example plug-in's tiny frame-set network."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from easi3r.attention import GlobalAttentionHook, Reweight, fused_attention
from easi3r.errors import Easi3RError, RecipeError
from easi3r.geometry import make_pose
from easi3r.strategies.gram_capture import FullGramCapture, GramCapture
from easi3r.strategies.predicted import PredictedAligner
from easi3r.strategies.reweight import drop_dynamic_keys
from easi3r.types import Frames, FrameSetOutputs, FrameSetPredictions
from easi3r.windows import alignment_windows, home_windows

from .helpers import FRAMES

EXAMPLE_SRC = Path(__file__).parents[1] / "examples" / "easi3r-example-plugin" / "src"
MAPS = {
    "qq_mean": {"product": "qq", "stat": "mean", "layers": [0, 1]},
    "qq_std": {"product": "qq", "stat": "std", "layers": [0, 1]},
    "kk_mean": {"product": "kk", "stat": "mean", "layers": [1]},
    "kk_std": {"product": "kk", "stat": "std", "layers": [0]},
    "qk_mean": {"product": "qk", "stat": "mean", "layers": [0]},
    "qk_std": {"product": "qk", "stat": "std", "layers": [1]},
}


def _captured(strategy: GramCapture, qk: list[tuple[torch.Tensor, torch.Tensor]], grid) -> dict:
    window = strategy.window(qk[0][0].shape[0], grid)
    for layer, (q, k) in enumerate(qk):
        window(layer, q, k)
    return window.maps()


@pytest.mark.parametrize(
    ("offsets", "frames"),
    [((-6, -4, -2, 2, 4, 6), 9), ((-6, -4, -2, 2, 4, 6), 4), ((-1, 1), 9), ((-3, 1), 9)],
)
def test_gram_identities_match_the_oracle_in_float64(offsets, frames):
    generator = torch.Generator().manual_seed(1)
    heads, grid, dim = 3, (4, 5), 8
    qk = [
        tuple(
            torch.randn(frames, heads, grid[0] * grid[1], dim, generator=generator, dtype=torch.float64)
            for _ in "qk"
        )
        for _ in range(2)
    ]
    fast = _captured(GramCapture(MAPS, offsets), qk, grid)
    full = _captured(FullGramCapture(MAPS, offsets), qk, grid)
    for name in MAPS:
        assert fast[name].shape == (frames, *grid)
        error = (fast[name] - full[name]).abs().max() / full[name].abs().max()
        assert error <= 1e-10, (name, float(error))


def test_gram_std_is_the_spatial_std_of_the_pooled_similarity_row():
    """One target, one source, one head: the std map is torch.std of the target's Gram row."""
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(2, 1, 6, 4, generator=generator, dtype=torch.float64)
    spec = {"s": {"product": "qq", "stat": "std", "layers": [0]}}
    maps = _captured(GramCapture(spec, (1, -1)), [(q, q)], (2, 3))
    expected = (q[0, 0] @ q[1, 0].T).std(dim=1)
    assert torch.allclose(maps["s"][0].flatten(), expected, rtol=1e-12, atol=0)


def test_gram_refuses_frames_without_sources_and_unseen_layers():
    with pytest.raises(RecipeError, match="no source frame"):
        GramCapture(MAPS, (2,)).window(2, (2, 2))
    window = GramCapture(MAPS, (-1, 1)).window(3, (2, 2))
    window(0, torch.randn(3, 1, 4, 2), torch.randn(3, 1, 4, 2))
    with pytest.raises(RecipeError, match="global layer 1"):
        window.maps()
    with pytest.raises(RecipeError, match=r"capture\.maps\.x\.stat"):
        GramCapture({"x": {"product": "qq", "stat": "median", "layers": [0]}})


def test_drop_dynamic_keys_is_a_softmax_over_static_keys():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 10, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    dynamic = torch.rand(2, 10, generator=generator) > 0.6
    out = drop_dynamic_keys(q, k, v, 0.5, dynamic, dynamic)
    logits = (q @ k.transpose(-1, -2) * 0.5).masked_fill(dynamic[:, None, None, :], float("-inf"))
    assert torch.allclose(out, logits.softmax(-1) @ v, rtol=1e-12, atol=1e-12)
    none = torch.zeros_like(dynamic)
    assert torch.equal(drop_dynamic_keys(q, k, v, 0.5, none, none), fused_attention(q, k, v, 0.5))


def test_global_hook_lays_out_window_tokens_and_masks():
    """The hook hands the capture each frame's patch tokens, and re-weights with special tokens static."""
    frames, special, patches, heads, dim = 3, 2, 4, 2, 5
    tokens = frames * (special + patches)
    x = torch.arange(tokens, dtype=torch.float64)[None, None, :, None].expand(1, heads, tokens, dim)
    seen = {}
    hook = GlobalAttentionHook(
        frames=frames,
        special_tokens=special,
        capture=lambda layer, q, k: seen.update(q=q),
        capture_layers=frozenset({0}),
    )
    hook(0, x, x, x, 1.0)
    assert seen["q"].shape == (frames, heads, patches, dim)
    assert seen["q"][1, 0, :, 0].tolist() == [8.0, 9.0, 10.0, 11.0]  # frame 1 starts at 6, patches at 8
    masks = torch.tensor([[True, False, False, False], [False] * 4, [False, False, False, True]])
    dynamic = Reweight(drop_dynamic_keys, masks).for_window(0, 3, special, "cpu")
    assert dynamic.shape == (1, tokens)
    assert dynamic.nonzero()[:, 1].tolist() == [2, 17]


def test_home_windows_pick_the_deepest_window():
    windows = torch.tensor(alignment_windows(20, 8, 3))
    home = home_windows(windows, 20)
    assert home.tolist() == [0] * 7 + [1] * 5 + [2] * 3 + [3] * 5
    for t, k in enumerate(home.tolist()):
        assert windows[k, 0] <= t < windows[k, 1]


def _window_prediction(poses: torch.Tensor, depth: float) -> FrameSetPredictions:
    n = len(poses)
    intrinsics = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]]).expand(n, 3, 3).clone()
    full = torch.full((n, 12, 16), depth)
    return FrameSetPredictions(poses, intrinsics, full, full + 1, torch.zeros(n, 12, 16, 3), full + 2)


def test_predicted_aligner_chains_windows_by_similarity():
    """Two windows whose worlds differ by a similarity come back in one world, cameras exact."""
    n = 10
    angles = torch.linspace(0, 0.5, n, dtype=torch.float64)
    rot = torch.zeros(n, 3, 3, dtype=torch.float64)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = (
        angles.cos(),
        -angles.sin(),
        angles.sin(),
        angles.cos(),
        1.0,
    )
    truth = make_pose(rot, torch.stack([angles, angles**2, angles * 0], -1))
    windows = torch.tensor([[0, 6], [3, 10]])
    # window 1's world: its first camera at the origin, the scene 2x larger
    to_window1 = torch.linalg.inv(truth[3])
    second = to_window1 @ truth[3:10]
    second[:, :3, 3] *= 2.0
    outputs = FrameSetOutputs(
        windows=windows,
        predictions=[_window_prediction(truth[0:6].float(), 1.0), _window_prediction(second.float(), 2.0)],
    )
    frames = Frames(images=torch.zeros(n, 3, 12, 16), paths=[str(i) for i in range(n)])
    scene = PredictedAligner()(frames, outputs, None, None)
    assert torch.allclose(scene.cam2world.double(), truth, atol=1e-5)
    assert torch.allclose(scene.depth[8], torch.full((12, 16), 1.0), atol=1e-5)  # depth rescaled to window 0
    assert scene.pts3d.shape == (n, 12, 16, 3)


@pytest.fixture
def example_backbone(tmp_path):
    """The example plug-in's module, registered directly (the packaged one is tested in
    test_example_plugin.py). Imported from a copy of its package alone: a build's metadata beside it
    would register its entry point a second time."""
    from easi3r.plugins import get_plugin_manager, reset_plugin_manager

    path = tmp_path / "example_src"
    shutil.copytree(EXAMPLE_SRC / "easi3r_example_plugin", path / "easi3r_example_plugin")
    sys.path.insert(0, str(path))
    try:
        import easi3r_example_plugin.plugin as module

        reset_plugin_manager()
        get_plugin_manager(extra_plugins={"example_direct": types.SimpleNamespace(
            easi3r_backbones=module.easi3r_backbones,
            easi3r_schema_fragments=module.easi3r_schema_fragments,
            easi3r_recipe_dirs=module.easi3r_recipe_dirs,
        )})  # fmt: skip
        yield module
    finally:
        reset_plugin_manager()
        sys.path.remove(str(path))
        for name in [m for m in sys.modules if m.startswith("easi3r_example_plugin")]:
            del sys.modules[name]


def _frames(n: int) -> list[str]:
    return [str(FRAMES / f"{i:05d}.jpg") for i in range(n)]


def test_frame_set_pipeline_end_to_end(example_backbone, tmp_path, caplog):
    from easi3r.api import run

    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        result = run(
            _frames(10),
            "tiny_frameset",
            out,
            ["scale.align_window=6", "scale.align_overlap=3", "export.save_intermediates=true"],
        )
    assert result.unit_name == "windows" and result.pairs.tolist() == [[0, 6], [3, 9], [4, 10]]
    assert set(result.passes) == {"pass1", "pass2"}
    assert result.masks.masks.shape == (10, *result.frames.size)
    assert set(result.masks.maps.maps) >= {"qq_mean_early", "qk_std_first"}
    assert result.scene is not None and len(result.scene) == 10
    assert (out / "frame_predictions.safetensors").is_file() and (out / "scene" / "scene.glb").is_file()
    assert any("window(s) of up to 6 frames; estimated peak memory" in r.message for r in caplog.records)


def test_pass_two_changes_the_geometry(example_backbone):
    from easi3r.frames import load_frames
    from easi3r.pipeline import run
    from easi3r.recipes import load_recipe

    recipe = load_recipe("tiny_frameset")
    frames = load_frames(_frames(6), size=128)
    result = run(recipe, frames)
    first = run(load_recipe("tiny_frameset", ["passes.reweight=false", "passes.pass1_heads=true"]), frames)
    depth1 = first.passes["pass1"].outputs.predictions[0].depth
    depth2 = result.passes["pass2"].outputs.predictions[0].depth
    assert result.masks.masks.any() and not torch.allclose(depth1, depth2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["capture.name=query_mean"], "capture 'query_mean' serves pairwise backbones"),
        (["align.name=global"], "align 'global' serves pairwise backbones"),
        (["reweight.layers=[5]"], "global-attention layers 0 to 1"),
        (["capture.maps.qq_std_late.layers=[7]"], "reads global layer 7, but backbone 'tiny_frameset' has"),
    ],
)
def test_kind_mismatches_are_one_line_errors(example_backbone, overrides, message):
    from easi3r.pipeline import Stages
    from easi3r.recipes import load_recipe

    with pytest.raises(RecipeError, match=message):
        Stages.from_recipe(load_recipe("tiny_frameset", overrides))


def test_frame_set_refuses_the_run_cache(example_backbone, tmp_path):
    from easi3r.api import run

    with pytest.raises(Easi3RError, match="frame-set backbones"):
        run(_frames(4), "tiny_frameset", tmp_path / "out", ["scale.stream=true"])
    assert not (tmp_path / "out").exists()
