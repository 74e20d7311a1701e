"""MonST3R's optical-flow prior in the global alignment: parity with the reference's aligner, the flow model
through the registry, and the recipe checks (the prior off by default, on only with SEA-RAFT's weights).

Golden data (``tests/data/golden-flow-loss``): the unmodified reference aligner (Easi3R @ 146a77d,
``PointCloudOptimizer``, batchified) was run on seeded pair predictions of easi3r's synthetic renderer (6
frames of 32×48, pairs at offsets 1 and 2, symmetrised: 18 ordered pairs), with the renderer's dynamic masks
and flow fields injected in place of SEA-RAFT (the true rigid flow, an object motion on dynamic pixels,
noise). Stored: the inputs (float16, used as float32 on both sides), the reference's spanning-tree
initialisation, and, for three settings, the total loss and the flow loss (before weighting and the
threshold; NaN where the term is off) before each of 30 steps.
"""

from __future__ import annotations

import json
import logging
import types

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from easi3r.errors import GeometryError, PluginError, RecipeError
from easi3r.hookspecs import hookimpl
from easi3r.plugins import get_plugin_manager, registry, reset_plugin_manager
from easi3r.recipes import load_recipe, validate_recipe
from easi3r.strategies.global_align import AlignConfig, AlignState, GlobalAlign, GlobalAligner, global_align
from easi3r.strategies.global_align.flow_loss import PairFlows, compute_pair_flows, directed_pairs
from easi3r.types import DynamicMasks, Frames, PairOutputs, PairPredictions

from .helpers import DATA

GOLDEN_FLOW = DATA / "golden-flow-loss"
WEIGHTS = "Tartan-C-T-TSKH-spring540x960-M.pth"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden():
    data = {k: torch.from_numpy(v) for k, v in load_file(str(GOLDEN_FLOW / "reference.safetensors")).items()}
    info = json.loads((GOLDEN_FLOW / "info.json").read_text())
    preds = PairPredictions(
        data["pred1_pts3d"].float(),
        data["pred1_conf"].float(),
        data["pred2_pts3d"].float(),
        data["pred2_conf"].float(),
    )
    init = AlignState(
        data["init/cam2world"], data["init/focals"], data["init/depth"], data["init/pair_poses"]
    )
    flows = PairFlows(data["flows"].float(), data["pairs"])
    return types.SimpleNamespace(data=data, cases=info["cases"], preds=preds, init=init, flows=flows)


def _config(case: dict) -> AlignConfig:
    return AlignConfig(
        iters=case["niter"],
        flow_loss_weight=case["flow_loss_weight"],
        flow_loss_start_epoch=case["flow_loss_start_epoch"],
        flow_loss_thre=case["flow_loss_thre"],
        pxl_thre=case["pxl_thre"],
    )


def _added(flow: np.ndarray, threshold: float) -> np.ndarray:
    """The steps whose flow term entered the loss: on, and not dropped by the threshold."""
    return ~np.isnan(flow) & ~((threshold > 0) & (np.nan_to_num(flow) > threshold))


# --- parity with the reference's aligner ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["demo", "strong", "thresholds"])
def test_golden_flow_loss_parity(golden, case):
    """30 steps from the reference's start: the total loss of every step within 1e-5 (relative), the flow
    term on (and dropped) at the same steps and within 5e-5 — it is a mean of small per-pixel values, and
    the two optimisers' states drift apart by float32 rounding (their pose parametrisations round
    differently); at the same state the terms agree to 1e-7 (the next test)."""
    settings = golden.cases[case]
    data = golden.data
    masks = data["dynamic_masks"]
    result = global_align(
        golden.preds,
        data["pairs"],
        len(masks),
        tuple(masks.shape[1:]),
        config=_config(settings),
        masks=masks,
        init_state=golden.init,
        flows=golden.flows,
    )
    losses, ref_losses = np.array(result.loss_history), data[f"{case}/loss_history"].numpy()
    flow, ref_flow = np.array(result.flow_loss_history), data[f"{case}/flow_loss_history"].numpy()
    loss_err = np.abs(losses - ref_losses) / np.abs(ref_losses)
    flow_err = np.nanmax(np.abs(flow - ref_flow) / np.abs(ref_flow))
    threshold = settings["flow_loss_thre"]
    print(
        f"\n{case}: total loss max rel {loss_err.max():.1e}, flow term max rel {flow_err:.1e}, "
        f"term on {int((~np.isnan(ref_flow)).sum())}/30 steps, added {int(_added(ref_flow, threshold).sum())}"
    )
    assert len(losses) == 30
    assert loss_err.max() <= 1e-5
    assert np.array_equal(np.isnan(flow), np.isnan(ref_flow))
    assert np.array_equal(_added(flow, threshold), _added(ref_flow, threshold))
    assert flow_err <= 5e-5


def test_golden_flow_loss_at_the_start(golden):
    """At the reference's initial state the flow loss is the reference's to float32 rounding."""
    data = golden.data
    masks = data["dynamic_masks"]
    aligner = GlobalAligner(
        golden.preds,
        data["pairs"],
        len(masks),
        golden.init,
        _config(golden.cases["strong"]),
        masks=masks,
        flows=golden.flows,
    )
    with torch.no_grad():
        value = float(aligner.flow_loss(aligner.cam2world(), aligner.intrinsics(), aligner.depth()))
    reference = float(data["strong/flow_loss_history"][0])
    assert abs(value - reference) <= 1e-6 * reference


def test_masks_keep_dynamic_pixels_out(golden):
    """Only static pixels of the source frame count: flow changed on dynamic pixels changes nothing."""
    data = golden.data
    masks = data["dynamic_masks"]
    changed = golden.flows.flows.clone()
    changed[masks[data["pairs"][:, 0]][:, None].expand_as(changed)] += 7.0
    values = []
    for flows in (golden.flows, PairFlows(changed, data["pairs"])):
        aligner = GlobalAligner(
            golden.preds,
            data["pairs"],
            len(masks),
            golden.init,
            _config(golden.cases["strong"]),
            masks=masks,
            flows=flows,
        )
        with torch.no_grad():
            values.append(
                float(aligner.flow_loss(aligner.cam2world(), aligner.intrinsics(), aligner.depth()))
            )
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_one_sided_pairs_get_both_directions():
    pairs = torch.tensor([[0, 1], [1, 2], [2, 1]])
    assert directed_pairs(pairs).tolist() == [[0, 1], [1, 2], [2, 1], [1, 0]]


def test_weight_without_flows_is_an_error(golden):
    data = golden.data
    with pytest.raises(GeometryError, match="optical flow"):
        global_align(golden.preds, data["pairs"], 6, config=AlignConfig(iters=1, flow_loss_weight=0.01))
    missing = PairFlows(golden.flows.flows[:3], data["pairs"][:3])
    with pytest.raises(GeometryError, match="lack the flow from frame"):
        global_align(
            golden.preds,
            data["pairs"],
            6,
            config=AlignConfig(flow_loss_weight=0.01),
            flows=missing,
            init_state=golden.init,
        )


# --- the flow model, through the registry -----------------------------------------------------------------


def _index_frames(n_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Frames whose first pixel says which frame they are (the stand-in flow model reads it)."""
    images = torch.zeros(n_frames, 3, *size)
    images[:, 0, 0, 0] = torch.arange(n_frames) / 10 - 0.5
    return images


@pytest.fixture
def golden_flow_model(golden):
    """A flow model plug-in ``golden_flow`` that returns the golden flows of the frames it is shown."""
    table = {tuple(p): golden.flows.flows[k] for k, p in enumerate(golden.flows.frame_pairs.tolist())}
    calls = []

    class GoldenFlow:
        def __init__(self, shape_bug: bool = False) -> None:
            self.shape_bug = shape_bug

        def __call__(self, images1, images2):
            calls.append(len(images1))
            frames = [((x[:, 0, 0, 0] + 0.5) * 10).round().long().tolist() for x in (images1, images2)]
            flows = torch.stack([table[(i, j)] for i, j in zip(*frames)])
            return flows[..., :-1] if self.shape_bug else flows

    plugin = types.SimpleNamespace(easi3r_flow_models=hookimpl(lambda: {"golden_flow": GoldenFlow}))
    get_plugin_manager(extra_plugins={"golden_flow_plugin": plugin})
    try:
        yield calls
    finally:
        reset_plugin_manager()


def test_flows_come_from_the_registered_model(golden, golden_flow_model):
    data = golden.data
    images = _index_frames(6, tuple(data["dynamic_masks"].shape[1:]))
    model = registry("flow_models").create({"name": "golden_flow"}, key="align.flow_model")
    flows = compute_pair_flows(model, images, data["pairs"])
    assert torch.equal(flows.frame_pairs, data["pairs"])  # symmetrised: each directed pair once, no more
    assert torch.equal(flows.flows, golden.flows.flows)
    assert golden_flow_model == [12, 6]  # 18 directed pairs, 12 a call
    with pytest.raises(PluginError, match=r"flow model 'golden_flow' returned .* a flow model returns"):
        compute_pair_flows(
            registry("flow_models").create({"name": "golden_flow", "shape_bug": True}),
            images,
            data["pairs"],
            name="flow model 'golden_flow'",
        )


def test_aligner_strategy_runs_the_flow_prior(golden, golden_flow_model, caplog):
    data = golden.data
    masks = data["dynamic_masks"]
    frames = Frames(_index_frames(6, tuple(masks.shape[1:])), [f"f{k}" for k in range(6)])
    outputs = PairOutputs(data["pairs"], predictions=golden.preds)
    dynamic = DynamicMasks(masks, torch.zeros(6, 1, 1), torch.zeros(6, 1, 1), 0.5)
    align = GlobalAlign(
        iters=4, flow_loss_weight=0.1, flow_loss_start_epoch=0.0, flow_model={"name": "golden_flow"}
    )
    with caplog.at_level(logging.INFO, logger="easi3r"):
        scene = align(frames, outputs, dynamic)
        align(frames, outputs, dynamic)
    assert scene.depth.shape == masks.shape and bool(torch.isfinite(scene.cam2world).all())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("optical-flow prior of flow model 'golden_flow'" in m for m in messages) == 1
    assert sum("optical flow of 18 frame pairs" in m for m in messages) == 2  # once per alignment
    assert golden_flow_model == [12, 6, 12, 6]


@pytest.mark.slow
def test_a_run_with_the_flow_prior(tmp_path, caplog):
    """The whole pipeline with the flow prior on: the tiny recipe, a zero-flow model as the plug-in."""
    from easi3r.api import run

    from .helpers import FRAMES

    class ZeroFlow:
        def __call__(self, images1, images2):
            return images1.new_zeros(len(images1), 2, *images1.shape[-2:])

    plugin = types.SimpleNamespace(easi3r_flow_models=hookimpl(lambda: {"zero_flow": ZeroFlow}))
    get_plugin_manager(extra_plugins={"zero_flow_plugin": plugin})
    frames = [str(FRAMES / f"0000{i}.jpg") for i in range(3)]
    overrides = ["frames.size=128", "refine.k=4", "align.iters=4", "align.flow_loss_weight=0.01"]
    overrides += [
        "align.flow_loss_start_epoch=0",
        "align.flow_model.name=zero_flow",
        "export.exporters=[masks]",
    ]
    try:
        with caplog.at_level(logging.INFO, logger="easi3r"):
            result = run(frames, "tiny", tmp_path / "out", overrides)
    finally:
        reset_plugin_manager()
    assert bool(torch.isfinite(result.scene.cam2world).all())
    messages = [r.getMessage() for r in caplog.records]
    assert any("optical-flow prior of flow model 'zero_flow'" in m for m in messages)
    assert any("optical flow of 4 frame pairs" in m for m in messages)


# --- recipes: off by default, on only with the weights ------------------------------------------------------


def test_no_flow_prior_by_default_and_said_once(caplog):
    from easi3r.synthetic import make_scene, pair_predictions

    assert AlignConfig().flow_loss_weight == 0
    assert load_recipe("easi3r_dust3r").align.flow_loss_weight == 0
    scene = make_scene(n_frames=3, size=(12, 16), n_objects=0, seed=5)
    pairs = torch.tensor([[0, 1], [1, 2], [1, 0], [2, 1]])
    frames = Frames(scene.images(), ["a", "b", "c"])
    outputs = PairOutputs(pairs, predictions=pair_predictions(scene, pairs))
    align = GlobalAlign(iters=2)
    with caplog.at_level(logging.INFO, logger="easi3r"):
        align(frames, outputs, None)
        align(frames, outputs, None)
    said = [r for r in caplog.records if "no optical-flow prior (align.flow_loss_weight=0)" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [("easi3r_dust3r_demo", []), ("easi3r_dust3r", ["align.flow_loss_weight=0.01"])],
)
def test_flow_prior_without_weights_is_one_line(recipe, overrides):
    with pytest.raises(RecipeError) as caught:
        validate_recipe(load_recipe(recipe, overrides))
    message = str(caught.value)
    assert "\n" not in message and "align.flow_model.checkpoint" in message and WEIGHTS in message


@pytest.mark.parametrize(
    ("flow_model", "key"),
    [
        ("{name: nope}", "align.flow_model.name"),
        ("{name: sea_raft, checkpoint: w.pth, presett: M}", "align.flow_model.presett"),
    ],
)
def test_unusable_flow_model_is_refused_before_the_run(flow_model, key, tmp_path, monkeypatch):
    """validate_recipe (which runs before any frame is read) looks the flow model up and checks its parameters
    against the model's fragment ``flow_model/<name>`` — only when the prior is on."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")  # the weights file exists: its parameters are what is wrong
    overrides = [f"align.flow_model={flow_model}"]
    validate_recipe(load_recipe("easi3r_dust3r", overrides))
    with pytest.raises(RecipeError) as caught:
        validate_recipe(load_recipe("easi3r_dust3r", [*overrides, "align.flow_loss_weight=0.01"]))
    assert "\n" not in str(caught.value) and f"recipe key '{key}" in str(caught.value)


def test_flow_prior_without_weights_in_code():
    with pytest.raises(RecipeError) as caught:
        GlobalAlign(flow_loss_weight=0.01)
    message = str(caught.value)
    assert "\n" not in message and "align.flow_model.checkpoint" in message and WEIGHTS in message
    with pytest.raises(RecipeError, match=r"recipe key 'align\.flow_model\.name': unknown flow model 'nope'"):
        GlobalAlign(flow_loss_weight=0.01, flow_model={"name": "nope"})
    GlobalAlign(flow_model={"name": "nope"})  # the prior is off: the model is never looked up


def test_demo_recipe_is_the_reference_demo(tmp_path):
    (tmp_path / WEIGHTS).write_bytes(b"")
    cfg = load_recipe("easi3r_dust3r_demo", [f"align.flow_model.checkpoint={tmp_path / WEIGHTS}"])
    validate_recipe(cfg)
    align = cfg.align
    assert (align.flow_loss_weight, align.flow_loss_start_epoch, align.flow_loss_thre, align.pxl_thre) == (
        0.01,
        0.1,
        25,
        50,
    )
    assert (
        align.flow_model.name == "sea_raft" and cfg.pairs.cap_window is False and cfg.frames.max_frames == 200
    )
    assert cfg.backbone.name == "dust3r" and align.iters == 300 and align.schedule == "linear"


def test_a_missing_flow_weights_file_is_refused_before_the_run(tmp_path):
    with pytest.raises(RecipeError, match=r"align\.flow_model\.checkpoint': no such file .*nope\.pth"):
        validate_recipe(
            load_recipe("easi3r_dust3r_demo", [f"align.flow_model.checkpoint={tmp_path / 'nope.pth'}"])
        )
