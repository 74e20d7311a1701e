"""Global alignment: golden parity with the reference optimiser, recovery of synthetic ground truth,
the options (known intrinsics / poses, warm start, dynamic masks, hooks) and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from easi3r.errors import GeometryError
from easi3r.eval import metrics
from easi3r.geometry import Scene, invert_pose, make_pose
from easi3r.strategies.global_align import (
    AlignConfig,
    AlignState,
    GlobalAlign,
    GlobalAligner,
    PairwiseAlign,
    clean_confidence,
    global_align,
    init_mst,
    pairwise_align,
)
from easi3r.synthetic import make_scene, pair_predictions
from easi3r.types import DynamicMasks, Frames, PairOutputs, PairPredictions

from .helpers import GOLDEN_ALIGN

pytestmark = pytest.mark.usefixtures("one_thread")


def sym_pairs(n_frames: int, offsets=(1, 2, 3)) -> torch.Tensor:
    """Ordered pairs (i, i+o) then their reverses, as the reference's symmetrised graphs."""
    pairs = sorted((i, i + o) for o in offsets for i in range(n_frames) if i + o < n_frames)
    return torch.tensor(pairs + [(j, i) for i, j in pairs])


# --- golden parity -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_align():
    data = {k: torch.from_numpy(v) for k, v in load_file(str(GOLDEN_ALIGN / "reference.safetensors")).items()}
    preds = PairPredictions(
        data["pass2/pred1_pts3d"],
        data["pass2/pred1_conf"],
        data["pass2/pred2_pts3d_in_other_view"],
        data["pass2/pred2_conf"],
    )
    return data, preds


def _golden_init(data) -> AlignState:
    return AlignState(
        data["ga/init_cam2world"],
        data["ga/init_focals"].flatten(),
        data["ga/init_depthmaps"],
        data["ga/init_pw_poses"],  # similarities: the normalised pair scale sits in the 3×3 block
    )


def test_golden_optimiser_parity(golden_align):
    data, preds = golden_align
    result = global_align(
        preds, data["pairs"], 5, (80, 160), config=AlignConfig(iters=30), init_state=_golden_init(data)
    )
    losses, ref_losses = np.array(result.loss_history), data["ga/loss_history"].numpy()
    print(f"\nloss history: max |diff| {np.abs(losses - ref_losses).max():.2e} (first {ref_losses[0]:.4f})")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(result.lr_history, data["ga/lr_history"].numpy(), rtol=1e-12)

    size = float(data["ga/depthmaps"].median())  # the scene's scale: its median depth
    ate = metrics.ate(result.scene.cam2world, data["ga/cam2world"])
    focal_err = abs(float(result.scene.focals[0] / data["ga/focals"][0, 0]) - 1)
    depth_err = float(((result.scene.depth - data["ga/depthmaps"]).abs() / data["ga/depthmaps"]).max())
    print(
        f"final: ATE {ate / size:.2e} of the median depth, focal error {focal_err:.2e}, depth rel {depth_err:.2e}"
    )
    assert ate <= 1e-3 * size
    assert focal_err <= 0.01
    assert torch.allclose(result.scene.cam2world, data["ga/cam2world"], atol=1e-4)
    assert torch.allclose(result.final.pair_poses, data["ga/pw_poses"], atol=1e-4)
    assert torch.allclose(result.scene.intrinsics, data["ga/intrinsics"], rtol=1e-5)
    assert depth_err < 1e-3
    assert torch.allclose(result.scene.conf, data["ga/im_conf"])


def test_golden_confidence_cleaning(golden_align):
    data, _ = golden_align
    scene = Scene(
        data["ga/cam2world"],
        data["ga/intrinsics"],
        data["ga/depthmaps"],
        data["ga/im_conf"],
        data["ga/pts3d"],
    )
    cleaned, reference = clean_confidence(scene), data["ga/im_conf_after_clean"]
    # The reference rounds projected pixel coordinates, so a point that lands within float32 noise of a
    # half-integer in another frame may be compared with either neighbour, depending on the CPU's
    # summation order (seen: v = 8.500001 on one machine, 8.4999995 on another). Such rounding ties are
    # the only pixels allowed to differ, they are rare (about 30 of 64,000 pixels here lie within 8 float32
    # ulps of a tie), and each one differs exactly by the clipping decision (one side clipped to 0, the
    # other kept the raw confidence).
    ties = _rounding_ties(scene, ulps=8)
    differ = cleaned != reference
    print(f"\n{int(differ.sum())} of {differ.numel()} pixels differ, {int(ties.sum())} rounding ties")
    assert int(ties.sum()) <= 1e-3 * ties.numel()
    assert not (differ & ~ties).any()
    kept = torch.where(cleaned[differ] == 0, reference[differ], cleaned[differ])
    assert torch.equal(kept, scene.conf[differ])
    assert torch.equal(torch.minimum(cleaned[differ], reference[differ]), torch.zeros(int(differ.sum())))


def _rounding_ties(scene: Scene, ulps: float) -> torch.Tensor:
    """(T, H, W) pixels whose point projects into another frame's image within ``ulps`` float32 rounding
    units of a pixel coordinate ending in .5, where rounding to the nearest pixel is a coin toss."""
    n_frames, height, width = scene.conf.shape
    world2cam = invert_pose(scene.cam2world).double()
    ties = torch.zeros(n_frames, height, width, dtype=torch.bool)
    for i in range(n_frames):
        for j in range(n_frames):
            if i == j:
                continue
            cam = scene.pts3d[i].double() @ world2cam[j, :3, :3].T + world2cam[j, :3, 3]
            proj = cam @ scene.intrinsics[j].double().T
            uv = proj[..., :2] / proj[..., 2:]
            inside = (cam[..., 2] > 0) & (uv[..., 0] > -1) & (uv[..., 0] < width) & (uv[..., 1] > -1)
            inside &= uv[..., 1] < height
            atol = ulps * torch.finfo(torch.float32).eps * uv.abs().clamp(min=1)
            near_half = ((uv - uv.floor()) - 0.5).abs() < atol
            ties[i] |= inside & near_half.any(dim=-1)
    return ties


def test_golden_mst_initialisation(golden_align):
    """The tree part (root, focal, pair similarities, frames placed by Procrustes) matches; frames placed by
    RANSAC PnP need not (see the printout: 10 RANSAC iterations on a random-weights pointmap with ~5% inliers,
    where a 1e-6 relative change of the input points moves the pose by ~0.8)."""
    data, preds = golden_align
    init = init_mst(preds, data["pairs"], 5)
    ref = _golden_init(data)
    assert torch.allclose(init.focals, ref.focals, rtol=1e-5)
    assert torch.allclose(init.pair_poses, ref.pair_poses, atol=1e-3)
    depth = init.depth.log().nan_to_num(neginf=0).exp()  # what the parametrisation turns z ≤ 0 into
    report = []
    for frame in range(5):
        pose_diff = float((init.cam2world[frame] - ref.cam2world[frame]).abs().max())
        depth_rel = float(((depth[frame] - ref.depth[frame]).abs() / ref.depth[frame]).median())
        report.append(f"frame {frame}: pose max|diff| {pose_diff:.1e}, depth median rel {depth_rel:.1e}")
    print("\nMST init vs reference:\n  " + "\n  ".join(report))
    # frames 3 (root) and 4 come from the tree; 0, 1, 2 from PnP
    for frame in (3, 4):
        assert torch.allclose(init.cam2world[frame], ref.cam2world[frame], atol=1e-3)
        assert float(((depth[frame] - ref.depth[frame]).abs() / ref.depth[frame]).median()) < 1e-4
    # same loss level as the reference's own initialisation (PnP frames included)
    loss = float(GlobalAligner(preds, data["pairs"], 5, init)().detach())
    print(f"init loss {loss:.4f} vs reference {float(data['ga/init_loss'][0]):.4f}")
    assert loss < 1.5 * float(data["ga/init_loss"][0])


def test_frame_confidence_is_max_over_pairs(golden_align):
    data, preds = golden_align
    assert torch.equal(preds.frame_confidence(data["pairs"], 5), data["ga/im_conf"])


# --- synthetic ground truth --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    scene = make_scene(n_frames=6, size=(32, 48), n_objects=2, seed=0)
    pairs = sym_pairs(6, (1, 3, 5))
    return scene, pairs, pair_predictions(scene, pairs, seed=0)


def _errors(scene, result):
    ate = metrics.ate(result.scene.cam2world, scene.cam2world) / scene.extent
    focal = abs(float(result.scene.focals[0] / scene.intrinsics[0, 0, 0]) - 1)
    return ate, focal


def test_recovers_ground_truth_from_perfect_predictions(synthetic):
    scene, pairs, preds = synthetic
    result = global_align(preds, pairs, 6, (32, 48), masks=scene.masks)
    ate, focal = _errors(scene, result)
    print(f"\nperfect predictions: ATE {ate:.1e} of the room, focal error {focal:.1e}")
    assert ate <= 1e-3 and focal <= 5e-3
    assert result.loss_history[-1] < 0.01 * max(result.loss_history)
    assert torch.equal(result.scene.masks, scene.masks)
    # the scene is self-consistent: world points are the depth lifted by K and the pose
    h, w = 32, 48
    xs = torch.arange(w, dtype=torch.float32).expand(h, w)
    cam = invert_pose(result.scene.cam2world)
    local = torch.einsum("tij,thwj->thwi", cam[:, :3, :3], result.scene.pts3d) + cam[:, None, None, :3, 3]
    K = result.scene.intrinsics
    assert torch.allclose(local[..., 2], result.scene.depth, rtol=1e-4)
    u = K[:, 0, 0, None, None] * local[..., 0] / local[..., 2] + K[:, 0, 2, None, None]
    assert torch.allclose(u, xs.expand_as(u), atol=1e-2)


def test_forward_motion_is_recovered_too():
    scene = make_scene(n_frames=5, size=(24, 32), n_objects=1, motion="forward", seed=2)
    pairs = sym_pairs(5, (1, 2))
    result = global_align(pair_predictions(scene, pairs, seed=1), pairs, 5, config=AlignConfig(iters=100))
    ate, focal = _errors(scene, result)
    print(f"\nforward motion: ATE {ate:.1e}, focal error {focal:.1e}")
    assert ate <= 1e-3 and focal <= 5e-3


def test_degrades_gracefully_with_noise_and_outliers(synthetic):
    scene, pairs, _ = synthetic
    rows = []
    for noise, outliers, max_ate, max_focal in ((0.01, 0.0, 2e-3, 5e-3), (0.01, 0.1, 0.05, 0.12)):
        preds = pair_predictions(scene, pairs, noise=noise, outlier_frac=outliers, seed=0)
        result = global_align(preds, pairs, 6)
        ate, focal = _errors(scene, result)
        ate0 = metrics.ate(result.init.cam2world, scene.cam2world) / scene.extent
        rows.append(
            f"noise {noise}, outliers {outliers}: ATE {ate0:.1e} (init) → {ate:.1e}, focal error {focal:.1e}"
        )
        assert ate <= max_ate and focal <= max_focal
    print("\n" + "\n".join(rows))


# --- options -----------------------------------------------------------------------------------------


def test_known_intrinsics_are_held(synthetic):
    scene, pairs, preds = synthetic
    K = scene.intrinsics[0].clone()
    K[0, 0] = K[1, 1] = K[0, 0] * 1.02  # slightly wrong on purpose: it must stay as given
    K[0, 2] += 1.0
    result = global_align(preds, pairs, 6, known_intrinsics=K, config=AlignConfig(iters=20))
    assert torch.allclose(result.scene.intrinsics, K.expand(6, 3, 3))
    assert torch.allclose(result.init.focals, K[0, 0].expand(6))
    with pytest.raises(GeometryError, match=r"known intrinsics must be \(3, 3\) or \(6, 3, 3\)"):
        global_align(preds, pairs, 6, known_intrinsics=torch.eye(3).expand(5, 3, 3))


def test_known_poses_are_held_and_fix_the_scale(synthetic):
    scene, pairs, preds = synthetic
    result = global_align(preds, pairs, 6, known_poses=scene.cam2world, config=AlignConfig(iters=30))
    assert torch.allclose(result.scene.cam2world, scene.cam2world, atol=1e-6)
    # metric poses make the depth metric (pair scales are free, not normalised)
    for depth, bound in ((result.init.depth, 1e-4), (result.scene.depth, 5e-3)):
        assert float(((depth - scene.depth).abs() / scene.depth).median()) < bound
    with pytest.raises(GeometryError, match="known poses"):
        global_align(preds, pairs, 6, known_poses=scene.cam2world[:5])


def test_warm_start_and_zero_iterations(synthetic):
    scene, pairs, preds = synthetic
    init = init_mst(preds, pairs, 6)
    same = global_align(preds, pairs, 6, init_state=init, config=AlignConfig(iters=0))
    assert same.loss_history == [] and torch.allclose(same.scene.cam2world, init.cam2world, atol=1e-6)
    # a warm start in another global scale is brought to the normalised scale, not distorted
    scaled = AlignState(init.cam2world.clone(), init.focals, init.depth * 3, init.pair_poses.clone())
    scaled.cam2world[:, :3, 3] *= 3
    scaled.pair_poses[:, :3] *= 3
    again = global_align(preds, pairs, 6, init_state=scaled, config=AlignConfig(iters=0))
    assert torch.allclose(again.scene.cam2world, init.cam2world, atol=1e-4)
    assert torch.allclose(again.scene.depth, init.depth, rtol=1e-4)
    # warm start from the ground truth: already at the optimum
    gt_scale = init.depth.mean() / scene.depth.mean()
    world2cam = invert_pose(scene.cam2world)[pairs[:, 0]]
    scales = preds.pts3d_1[:, 0, 0].norm(dim=-1) / (
        torch.einsum("pij,pj->pi", world2cam[:, :3, :3], scene.pts3d[pairs[:, 0], 0, 0]) + world2cam[:, :3, 3]
    ).norm(dim=-1)
    gt_c2w = scene.cam2world.clone()
    gt_c2w[:, :3, 3] *= gt_scale
    pair_poses = gt_c2w[pairs[:, 0]].clone()
    pair_poses[:, :3, :3] *= (gt_scale / scales)[:, None, None]
    gt_state = AlignState(gt_c2w, scene.intrinsics[:, 0, 0], scene.depth * gt_scale, pair_poses)
    warm = global_align(preds, pairs, 6, init_state=gt_state, config=AlignConfig(iters=5))
    assert warm.loss_history[0] < 1e-3


def test_deterministic_and_seeded(synthetic):
    _, pairs, preds = synthetic
    a = global_align(preds, pairs, 6, config=AlignConfig(iters=10))
    b = global_align(preds, pairs, 6, config=AlignConfig(iters=10))
    assert a.loss_history == b.loss_history and torch.equal(a.scene.depth, b.scene.depth)
    r1 = global_align(preds, pairs, 6, config=AlignConfig(iters=5, init="random", seed=1))
    r2 = global_align(preds, pairs, 6, config=AlignConfig(iters=5, init="random", seed=1))
    r3 = global_align(preds, pairs, 6, config=AlignConfig(iters=5, init="random", seed=2))
    assert r1.loss_history == r2.loss_history and r1.loss_history != r3.loss_history


def test_dynamic_pixels_leave_the_3d_term_only_when_asked(synthetic):
    scene, pairs, preds = synthetic
    init = init_mst(preds, pairs, 6)
    broken = PairPredictions(preds.pts3d_1.clone(), preds.conf_1, preds.pts3d_2.clone(), preds.conf_2)
    broken.pts3d_1[scene.masks[pairs[:, 0]]] *= 2.0  # nonsense on the moving objects only
    broken.pts3d_2[scene.masks[pairs[:, 1]]] *= 0.5

    def loss(p, exclude):
        aligner = GlobalAligner(p, pairs, 6, init, AlignConfig(exclude_dynamic=exclude), masks=scene.masks)
        return float(aligner().detach())

    assert loss(broken, exclude=True) == pytest.approx(loss(preds, exclude=True), abs=1e-6)
    assert loss(broken, exclude=False) > loss(preds, exclude=False) + 0.1  # the reference default
    result = global_align(broken, pairs, 6, masks=scene.masks, config=AlignConfig(exclude_dynamic=True))
    ate, focal = _errors(scene, result)
    assert ate <= 1e-3 and focal <= 5e-3


def test_hooks_temporal_term_schedule_and_device(synthetic):
    _, pairs, preds = synthetic
    calls, steps = [], []

    def extra(aligner: GlobalAligner) -> torch.Tensor:
        calls.append(aligner.iteration)
        return aligner.focals().mean() * 0  # differentiable, changes nothing

    config = AlignConfig(iters=6, schedule="cosine", temporal_smoothing_weight=0.1)
    result = global_align(
        preds,
        pairs,
        6,
        config=config,
        extra_loss=extra,
        progress=lambda s, n, loss: steps.append((s, n)),
        device="cpu",
    )
    assert calls == list(range(6)) and steps == [(k, 6) for k in range(1, 7)]
    assert result.lr_history[0] == pytest.approx(0.01) and result.lr_history[3] == pytest.approx(0.0055)
    init = init_mst(preds, pairs, 6)
    aligner = GlobalAligner(preds, pairs, 6, init, AlignConfig(temporal_smoothing_weight=1.0))
    plain = GlobalAligner(preds, pairs, 6, init)
    with torch.no_grad():
        assert float(aligner()) == pytest.approx(
            float(plain()) + float(aligner.temporal_smoothness()), rel=1e-5
        )
    still = AlignState(torch.eye(4).expand(6, 4, 4), init.focals, init.depth, init.pair_poses)
    assert float(GlobalAligner(preds, pairs, 6, still).temporal_smoothness().detach()) == pytest.approx(
        0, abs=1e-5
    )


def test_stale_edge_focal_quirk_switch(synthetic):
    _, pairs, preds = synthetic
    quirk = init_mst(preds, pairs, 6, AlignConfig(shared_focal=False))
    fixed = init_mst(preds, pairs, 6, AlignConfig(shared_focal=False, stale_edge_focal=False))
    # perfect pinhole predictions: every pointmap gives the same focal, so both agree here
    assert torch.allclose(quirk.focals, fixed.focals, rtol=1e-4)


# --- pairwise and the strategy wrappers --------------------------------------------------------------


def test_pairwise_two_frames():
    scene = make_scene(n_frames=2, size=(24, 32), n_objects=1, seed=3)
    gt_rel = (invert_pose(scene.cam2world[:1]) @ scene.cam2world[1:])[0]
    # with the reverse pair frame 1 is placed by Procrustes, without it by PnP: both exact on perfect input
    for pairs in (torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 1]])):
        out = pairwise_align(pair_predictions(scene, pairs, seed=2), pairs, 2)
        assert torch.allclose(out.cam2world[0], torch.eye(4))
        rel = out.cam2world[1]
        assert torch.allclose(rel[:3, :3], gt_rel[:3, :3], atol=1e-3)
        direction = rel[:3, 3] / rel[:3, 3].norm()
        assert torch.allclose(direction, gt_rel[:3, 3] / gt_rel[:3, 3].norm(), atol=1e-3)
        assert torch.allclose(out.intrinsics[:, 0, 0], scene.intrinsics[:, 0, 0], rtol=1e-3)
        assert torch.allclose(out.pts3d[1], pair_predictions(scene, pairs, seed=2).pts3d_2[0])
    with pytest.raises(GeometryError, match="exactly 2 frames"):
        pairwise_align(pair_predictions(scene, pairs), pairs, 3)


def test_strategy_wrappers():
    scene = make_scene(n_frames=3, size=(16, 24), n_objects=1, seed=4)
    pairs = sym_pairs(3, (1, 2))
    frames = Frames(scene.images(), [f"f{k}" for k in range(3)])
    outputs = PairOutputs(pairs, predictions=pair_predictions(scene, pairs))
    masks = DynamicMasks(scene.masks, torch.zeros(3, 1, 1), torch.zeros(3, 1, 1), 0.5)
    seen = []

    class Bar:
        def __init__(self, total, desc, unit):
            seen.append(total)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            seen.append(n)

        def set_postfix_str(self, text):
            pass

    out = GlobalAlign(iters=4)(frames, outputs, masks, Bar)
    assert isinstance(out, Scene) and out.depth.shape == (3, 16, 24) and seen == [4, 1, 1, 1, 1]
    assert torch.equal(out.masks, scene.masks)
    two = Frames(scene.images()[:2], ["a", "b"])
    two_pairs = torch.tensor([[0, 1], [1, 0]])
    assert (
        PairwiseAlign()(
            two, PairOutputs(two_pairs, predictions=pair_predictions(scene, two_pairs)), None
        ).depth.shape[0]
        == 2
    )
    with pytest.raises(GeometryError, match="pair predictions"):
        GlobalAlign()(frames, PairOutputs(pairs), masks)
    with pytest.raises(GeometryError, match="schedule"):
        GlobalAlign(schedule="step")


# --- errors ------------------------------------------------------------------------------------------


def _tiny():
    scene = make_scene(n_frames=3, size=(12, 16), n_objects=0, seed=5)
    pairs = sym_pairs(3, (1,))
    return scene, pairs, pair_predictions(scene, pairs)


def _with(preds: PairPredictions, **changes) -> PairPredictions:
    fields = {k: getattr(preds, k).clone() for k in ("pts3d_1", "conf_1", "pts3d_2", "conf_2")}
    fields.update(changes)
    return PairPredictions(**fields)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("low_conf", "no pixel has a confidence above 1"),
        ("dead_frame", "frame 2 has no valid pixel"),
        ("collinear", "collinear"),
        ("nan", "NaN"),
        ("missing_frame", "frame 3 appears in no pair"),
        ("disconnected", "not connected"),
        ("masks", "dynamic masks must be"),
        ("size", "frames are"),
        ("state", "initial state depth"),
    ],
)
def test_geometry_errors(case, message):
    scene, pairs, preds = _tiny()
    n_frames, kwargs = 3, {}
    if case == "low_conf":
        preds = _with(preds, conf_1=torch.ones_like(preds.conf_1), conf_2=torch.full_like(preds.conf_2, 0.9))
    elif case == "dead_frame":
        conf_1, conf_2 = preds.conf_1.clone(), preds.conf_2.clone()
        conf_1[pairs[:, 0] == 2] = 1.0
        conf_2[pairs[:, 1] == 2] = 1.0
        preds = _with(preds, conf_1=conf_1, conf_2=conf_2)
    elif case == "collinear":
        line = torch.linspace(1, 2, 12 * 16).view(12, 16, 1) * torch.tensor([1.0, 2.0, 3.0])
        pts = preds.pts3d_1.clone()
        pts[1] = line
        preds = _with(preds, pts3d_1=pts)
    elif case == "nan":
        pts = preds.pts3d_2.clone()
        pts[0, 0, 0, 0] = float("nan")
        preds = _with(preds, pts3d_2=pts)
    elif case == "missing_frame":
        n_frames = 4
    elif case == "disconnected":
        scene = make_scene(n_frames=4, size=(12, 16), n_objects=0, seed=5)
        pairs = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]])
        preds, n_frames = pair_predictions(scene, pairs), 4
    elif case == "masks":
        kwargs["masks"] = torch.zeros(3, 12, 15, dtype=torch.bool)
    elif case == "size":
        kwargs["image_size"] = (16, 12)
    elif case == "state":
        state = AlignState(
            torch.eye(4).expand(3, 4, 4),
            torch.ones(3),
            torch.ones(3, 12, 15),
            make_pose(torch.eye(3), torch.zeros(3)).expand(4, 4, 4),
        )
        kwargs["init_state"] = state
    with pytest.raises(GeometryError, match=message) as info:
        global_align(preds, pairs, n_frames, **kwargs)
    assert "\n" not in str(info.value)


def test_points_that_fit_no_camera_start_from_a_default_focal():
    """Pointmaps behind the camera (as random weights give) make the Weiszfeld focal 0, which the reference
    turns into NaN; here the initialisation falls back to max(H, W) and the result stays finite."""
    scene, pairs, preds = _tiny()
    n = len(scene)
    flipped = _with(preds, pts3d_1=preds.pts3d_1 * torch.tensor([1.0, 1.0, -1.0]),
                    pts3d_2=preds.pts3d_2 * torch.tensor([1.0, 1.0, -1.0]))  # fmt: skip
    result = global_align(flipped, pairs, n, config=AlignConfig(iters=5))
    height, width = preds.pts3d_1.shape[1:3]
    assert torch.isfinite(result.scene.cam2world).all() and torch.isfinite(result.scene.depth).all()
    assert torch.allclose(result.init.focals, torch.full_like(result.init.focals, float(max(height, width))))


def test_fused_residual_equals_the_autograd_composition_in_float64():
    """The 3D term's hand-written backward against autograd on the same operators (and gradcheck)."""
    from easi3r.strategies.global_align.model import _affine, _PairResidual

    g = torch.Generator().manual_seed(0)
    n_frames, n_pairs, n_pix = 4, 6, 10
    rows = torch.randn(n_frames, n_pix * 3, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 1, 2, 3, 1, 0])
    pred = torch.randn(n_pairs, n_pix, 3, generator=g, dtype=torch.float64)
    rot = torch.randn(n_pairs, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    trans = torch.randn(n_pairs, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(n_pairs, n_pix, generator=g, dtype=torch.float64)
    weight[0, :3] = 0  # masked pixels

    fused = _PairResidual.apply(rows, index, pred, rot, trans, weight)
    trf = torch.cat(
        (torch.cat((rot, trans[..., None]), -1), torch.zeros(n_pairs, 1, 4, dtype=torch.float64)), 1
    )
    composed = ((rows.index_select(0, index).view_as(pred) - _affine(trf, pred)).norm(dim=-1) * weight).sum()
    assert torch.allclose(fused, composed, rtol=1e-13)
    grads = torch.autograd.grad(fused, (rows, rot, trans))
    expected = torch.autograd.grad(composed, (rows, rot, trans))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-11, atol=1e-13)
    # the backward reuses the residual's memory for its gradient: a second backward through the same
    # graph is refused by autograd's version check instead of returning wrong numbers
    again = _PairResidual.apply(rows, index, pred, rot, trans, weight)
    torch.autograd.grad(again, (rows,), retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(again, (rows,))
