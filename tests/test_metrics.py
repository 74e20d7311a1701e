"""Evaluation metrics: ATE/RPE against evo, J/F/depth/point metrics against their direct definitions,
and TUM trajectory files."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from easi3r.errors import Easi3RError, GeometryError
from easi3r.eval.metrics import (
    _boundary_map,
    ate,
    dataset_mean,
    depth_metrics,
    f_measure,
    iou,
    j_mean_recall_per_frame,
    j_mean_recall_per_sequence,
    point_accuracy_completion,
    read_tum,
    rpe,
    umeyama_sim3,
    write_tum,
)

EVO_TOL = 1e-9


# --------------------------------------------------------------------------------------------------
# Trajectory helpers
# --------------------------------------------------------------------------------------------------


def make_poses(rotations: np.ndarray, positions: np.ndarray) -> np.ndarray:
    poses = np.tile(np.eye(4), (len(positions), 1, 1))
    poses[:, :3, :3] = rotations
    poses[:, :3, 3] = positions
    return poses


def random_trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    """A wandering camera: random-walk positions, orientations drifting by small random rotations."""
    positions = np.cumsum(rng.normal(scale=0.3, size=(n, 3)), axis=0)
    steps = Rotation.from_rotvec(rng.normal(scale=0.2, size=(n, 3)))
    rotations = [Rotation.random(random_state=rng)]
    for step in steps[1:]:
        rotations.append(rotations[-1] * step)
    return make_poses(np.stack([r.as_matrix() for r in rotations]), positions)


def noisy_estimate(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """GT seen through an unknown similarity, plus pose noise: what a reconstruction returns."""
    sim_rot = Rotation.random(random_state=rng).as_matrix()
    scale, shift = rng.uniform(0.2, 5.0), rng.normal(size=3)
    noise_rot = Rotation.from_rotvec(rng.normal(scale=0.05, size=(len(gt), 3))).as_matrix()
    rotations = sim_rot @ gt[:, :3, :3] @ noise_rot
    positions = scale * (gt[:, :3, 3] + rng.normal(scale=0.1, size=(len(gt), 3))) @ sim_rot.T + shift
    return make_poses(rotations, positions)


def similarity(poses: np.ndarray, scale: float, rot: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return make_poses(rot @ poses[:, :3, :3], scale * poses[:, :3, 3] @ rot.T + shift)


@pytest.fixture(scope="module")
def evo() -> SimpleNamespace:
    """evo's Python API (a test-only dependency); the tests that need it skip when it is absent."""
    metrics = pytest.importorskip("evo.core.metrics")
    trajectory = pytest.importorskip("evo.core.trajectory")
    units = pytest.importorskip("evo.core.units")
    geometry = pytest.importorskip("evo.core.geometry")
    file_interface = pytest.importorskip("evo.tools.file_interface")
    return SimpleNamespace(
        metrics=metrics, trajectory=trajectory, units=units, geometry=geometry, file_interface=file_interface
    )


def evo_trajectory(evo: SimpleNamespace, poses: np.ndarray):
    return evo.trajectory.PoseTrajectory3D(
        poses_se3=[p.copy() for p in poses], timestamps=np.arange(len(poses), dtype=float)
    )


def evo_aligned(evo: SimpleNamespace, pred: np.ndarray, gt: np.ndarray, align: str):
    """Reference and estimate trajectories, the estimate aligned the way evo_ape/evo_rpe align it."""
    ref, est = evo_trajectory(evo, gt), evo_trajectory(evo, pred)
    if align != "none":
        est.align(ref, correct_scale=align == "sim3")
    return ref, est


def evo_ate(evo: SimpleNamespace, pred: np.ndarray, gt: np.ndarray, align: str) -> float:
    ape = evo.metrics.APE(evo.metrics.PoseRelation.translation_part)
    ape.process_data(evo_aligned(evo, pred, gt, align))
    return ape.get_statistic(evo.metrics.StatisticsType.rmse)


def evo_rpe(
    evo: SimpleNamespace, pred: np.ndarray, gt: np.ndarray, delta: int, align: str
) -> tuple[float, float]:
    out = []
    for relation in (evo.metrics.PoseRelation.translation_part, evo.metrics.PoseRelation.rotation_angle_deg):
        metric = evo.metrics.RPE(relation, delta=delta, delta_unit=evo.units.Unit.frames, all_pairs=True)
        metric.process_data(evo_aligned(evo, pred, gt, align))
        out.append(metric.get_statistic(evo.metrics.StatisticsType.rmse))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# Umeyama, ATE, RPE
# --------------------------------------------------------------------------------------------------


def test_umeyama_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3))
    rot = Rotation.random(random_state=rng).as_matrix()
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 0.5])
    scale, rot_fit, trans = umeyama_sim3(src, dst)
    assert scale == pytest.approx(2.5, abs=1e-12)
    np.testing.assert_allclose(rot_fit, rot, atol=1e-12)
    np.testing.assert_allclose(trans, [1.0, -2.0, 0.5], atol=1e-12)
    assert umeyama_sim3(src, dst, with_scale=False)[0] == 1.0


def test_umeyama_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    _, rot, _ = umeyama_sim3(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-12)


def test_umeyama_rejects_degenerate_positions() -> None:
    still = np.ones((5, 3))
    with pytest.raises(GeometryError):
        umeyama_sim3(still, still)
    still_poses = make_poses(np.tile(np.eye(3), (5, 1, 1)), still)
    with pytest.raises(GeometryError):
        ate(still_poses, still_poses)
    with pytest.raises(ValueError):
        umeyama_sim3(np.zeros((4, 3)), np.zeros((5, 3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_umeyama_matches_evo(evo: SimpleNamespace, seed: int) -> None:
    rng = np.random.default_rng(seed)
    src, dst = rng.normal(size=(25, 3)), rng.normal(size=(25, 3))
    for with_scale in (True, False):
        rot_e, trans_e, scale_e = evo.geometry.umeyama_alignment(src.T, dst.T, with_scale)
        scale, rot, trans = umeyama_sim3(src, dst, with_scale=with_scale)
        assert scale == pytest.approx(scale_e, abs=EVO_TOL)
        np.testing.assert_allclose(rot, rot_e, atol=EVO_TOL)
        np.testing.assert_allclose(trans, trans_e, atol=EVO_TOL)


@pytest.mark.parametrize("align", ["sim3", "se3", "none"])
def test_identical_trajectories_have_zero_error(align: str) -> None:
    gt = random_trajectory(np.random.default_rng(3), 12)
    assert ate(gt, gt, align=align) == pytest.approx(0.0, abs=1e-12)
    assert rpe(gt, gt, align=align) == pytest.approx((0.0, 0.0), abs=1e-6)


def test_similarity_of_gt_has_zero_error_after_sim3_only() -> None:
    rng = np.random.default_rng(4)
    gt = random_trajectory(rng, 15)
    pred = similarity(gt, 3.0, Rotation.random(random_state=rng).as_matrix(), np.array([5.0, 0.0, -1.0]))
    assert ate(pred, gt) == pytest.approx(0.0, abs=1e-10)
    assert rpe(pred, gt) == pytest.approx((0.0, 0.0), abs=1e-6)
    # A rigid fit cannot undo the factor 3, so the error is then clearly non-zero.
    assert ate(pred, gt, align="se3") > 0.1
    assert rpe(pred, gt, align="se3")[0] > 0.1


def test_known_unaligned_errors() -> None:
    gt = random_trajectory(np.random.default_rng(5), 10)
    # A constant offset of the positions: ATE is its length, relative motion is untouched.
    shifted = gt.copy()
    shifted[:, :3, 3] += [0.3, -0.4, 0.0]
    assert ate(shifted, gt, align="none") == pytest.approx(0.5, abs=1e-12)
    assert rpe(shifted, gt, align="none")[0] == pytest.approx(0.0, abs=1e-12)
    # Static GT camera, prediction turning 2° about z per frame: every relative error is a 2° rotation.
    static = make_poses(np.tile(np.eye(3), (6, 1, 1)), np.zeros((6, 3)))
    yaw = Rotation.from_euler("z", np.arange(6.0)[:, None] * 2.0, degrees=True)
    turning = make_poses(yaw.as_matrix(), np.zeros((6, 3)))
    assert rpe(turning, static, align="none") == pytest.approx((0.0, 2.0), abs=1e-12)
    assert rpe(turning, static, delta=2, align="none") == pytest.approx((0.0, 4.0), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("align", ["sim3", "se3", "none"])
def test_ate_matches_evo(evo: SimpleNamespace, seed: int, align: str) -> None:
    rng = np.random.default_rng(seed)
    gt = random_trajectory(rng, 20)
    pred = noisy_estimate(rng, gt)
    assert ate(pred, gt, align=align) == pytest.approx(evo_ate(evo, pred, gt, align), abs=EVO_TOL)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("align", ["sim3", "se3", "none"])
@pytest.mark.parametrize("delta", [1, 3])
def test_rpe_matches_evo(evo: SimpleNamespace, seed: int, align: str, delta: int) -> None:
    rng = np.random.default_rng(seed)
    gt = random_trajectory(rng, 20)
    pred = noisy_estimate(rng, gt)
    ours = rpe(pred, gt, delta=delta, align=align)
    assert ours == pytest.approx(evo_rpe(evo, pred, gt, delta, align), abs=EVO_TOL)


def test_known_answers_match_evo(evo: SimpleNamespace) -> None:
    rng = np.random.default_rng(6)
    gt = random_trajectory(rng, 10)
    pred = similarity(gt, 0.5, Rotation.random(random_state=rng).as_matrix(), np.ones(3))
    for candidate in (gt, pred):
        assert ate(candidate, gt) == pytest.approx(evo_ate(evo, candidate, gt, "sim3"), abs=EVO_TOL)
        assert rpe(candidate, gt) == pytest.approx(evo_rpe(evo, candidate, gt, 1, "sim3"), abs=EVO_TOL)


def test_pose_argument_errors() -> None:
    gt = random_trajectory(np.random.default_rng(7), 5)
    with pytest.raises(ValueError, match="same length"):
        ate(gt[:4], gt)
    with pytest.raises(ValueError, match="align"):
        ate(gt, gt, align="sim2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delta"):
        rpe(gt, gt, delta=5)


def test_dataset_mean_is_unweighted() -> None:
    assert dataset_mean({"a": 1.0, "b": 2.0, "c": 6.0}) == 3.0
    with pytest.raises(ValueError):
        dataset_mean({})


# --------------------------------------------------------------------------------------------------
# DAVIS J and F
# --------------------------------------------------------------------------------------------------


def rect(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_iou_hand_made_and_empty_masks() -> None:
    pred, gt = rect((6, 6), 1, 1, 2, 2), rect((6, 6), 1, 1, 2, 3)
    assert iou(pred, gt) == pytest.approx(4 / 6)
    empty = np.zeros((6, 6), dtype=bool)
    assert iou(empty, empty) == 1.0
    assert iou(empty, gt) == 0.0
    assert iou(pred, empty) == 0.0
    # 0/255 PNG masks: any non-zero value is foreground.
    assert iou(pred.astype(np.uint8) * 255, gt) == pytest.approx(4 / 6)


def frames_with_ious() -> tuple[np.ndarray, np.ndarray]:
    """Three frames with IoU 1 (both empty), 0.4 and 0.6; plus a frame at exactly 0.5."""
    shape = (5, 10)
    empty = np.zeros(shape, dtype=bool)
    preds = [empty, rect(shape, 0, 0, 1, 2), rect(shape, 0, 0, 1, 3), rect(shape, 0, 0, 1, 2)]
    gts = [empty, rect(shape, 0, 0, 1, 5), rect(shape, 0, 0, 1, 5), rect(shape, 0, 0, 1, 4)]
    return np.stack(preds), np.stack(gts)


def test_j_per_frame_against_definition() -> None:
    preds, gts = frames_with_ious()
    per_frame = [iou(p, g) for p, g in zip(preds, gts)]
    assert per_frame == pytest.approx([1.0, 0.4, 0.6, 0.5])
    jm, jr = j_mean_recall_per_frame(preds, gts)
    assert jm == pytest.approx(np.mean(per_frame))
    assert jr == pytest.approx(2 / 4)  # IoU must be strictly above 0.5


def test_j_per_sequence_weights_sequences_not_frames() -> None:
    preds, gts = frames_with_ious()
    miss = np.zeros_like(gts[1:])  # three frames with nothing predicted: IoU 0
    sequences = {"short": (preds[:1], gts[:1]), "long": (miss, gts[1:])}
    assert j_mean_recall_per_sequence(sequences) == pytest.approx((0.5, 0.5))
    pooled = j_mean_recall_per_frame(np.concatenate([preds[:1], miss]), gts)
    assert pooled == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError):
        j_mean_recall_per_sequence({})


def test_boundary_map_of_a_square() -> None:
    # seg2bmap marks pixels that differ from their E, S or SE neighbour: the last row and column of the
    # square, and the row above / column left of it (boundaries are shifted half a pixel to the origin).
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 1, 0, 0, 1, 0, 0],
            [0, 1, 0, 0, 1, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(_boundary_map(rect((7, 7), 2, 2, 3, 3)), expected)
    # The image border is not a boundary.
    assert not _boundary_map(np.ones((5, 5), dtype=bool)).any()
    half = _boundary_map(rect((4, 4), 0, 0, 4, 2))  # left half: only its vertical edge, on the inner side
    np.testing.assert_array_equal(np.argwhere(half)[:, 1], [1, 1, 1, 1])


def brute_force_f(pred: np.ndarray, gt: np.ndarray, radius: float) -> float:
    """F from the definition: a boundary pixel matches when the other boundary has a pixel within radius."""
    pb, gb = np.argwhere(_boundary_map(pred)), np.argwhere(_boundary_map(gt))
    if len(pb) == 0 or len(gb) == 0:
        return float(len(pb) == len(gb))
    dist = np.linalg.norm(pb[:, None, :] - gb[None, :, :], axis=-1)
    precision = np.mean(dist.min(axis=1) <= radius)
    recall = np.mean(dist.min(axis=0) <= radius)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("seed", range(5))
def test_f_measure_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (30, 40)  # tolerance ceil(0.008 · 50) = 1 px; 0.05 gives 3 px
    blobs = [rng.random(shape) < 0.5 for _ in range(2)]
    pred = rect(shape, 5, 6, 12, 15) ^ (blobs[0] & rect(shape, 10, 10, 10, 10))
    gt = rect(shape, 7, 4, 14, 18) | (blobs[1] & rect(shape, 0, 20, 8, 8))
    for bound_th, radius in ((0.008, 1), (0.05, 3), (2, 2)):
        assert f_measure(pred, gt, bound_th) == pytest.approx(brute_force_f(pred, gt, radius), abs=1e-12)


def test_f_measure_tolerance_at_the_reference_resolution() -> None:
    shape = (288, 512)  # ceil(0.008 · ‖(288, 512)‖) = ceil(4.7) = 5 px
    gt = rect(shape, 100, 100, 80, 150)
    assert f_measure(rect(shape, 100, 105, 80, 150), gt) == 1.0
    assert f_measure(rect(shape, 100, 106, 80, 150), gt) < 1.0


def test_f_measure_empty_masks() -> None:
    empty = np.zeros((20, 20), dtype=bool)
    square = rect((20, 20), 5, 5, 6, 6)
    assert f_measure(empty, empty) == 1.0
    assert f_measure(empty, square) == 0.0
    assert f_measure(square, empty) == 0.0
    assert f_measure(square, square) == 1.0
    # A full-image mask has no boundary, so it scores like an empty one (DAVIS behaviour).
    assert f_measure(np.ones((20, 20), dtype=bool), empty) == 1.0


# --------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------


def direct_depth_metrics(a: np.ndarray, g: np.ndarray) -> dict[str, float]:
    ratio = np.maximum(a / g, g / a)
    return {
        "abs_rel": np.mean(np.abs(a - g) / g),
        "sq_rel": np.mean((a - g) ** 2 / g),
        "rmse": np.sqrt(np.mean((a - g) ** 2)),
        "log_rmse": np.sqrt(np.mean((np.log(a) - np.log(g)) ** 2)),
        "delta_1": np.mean(ratio < 1.25),
        "delta_2": np.mean(ratio < 1.25**2),
        "delta_3": np.mean(ratio < 1.25**3),
    }


@pytest.fixture
def depth_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gt = rng.uniform(1.0, 20.0, size=(3, 8, 9))
    gt[0, :2] = 0.0  # missing ground truth
    pred = gt * rng.uniform(0.7, 1.4, size=gt.shape) * 0.3
    return pred, gt


@pytest.mark.parametrize("align", ["none", "median", "lstsq_scale", "lstsq_scale_shift"])
def test_depth_metrics_against_direct_numpy(depth_pair: tuple[np.ndarray, np.ndarray], align: str) -> None:
    pred, gt = depth_pair
    valid = gt > 0
    p, g = pred[valid], gt[valid]
    scale, shift = {
        "none": (1.0, 0.0),
        "median": (np.median(g) / np.median(p), 0.0),
        "lstsq_scale": (np.sum(p * g) / np.sum(p * p), 0.0),
        "lstsq_scale_shift": tuple(np.polyfit(p, g, 1)),
    }[align]
    ours = depth_metrics(pred, gt, align=align)  # type: ignore[arg-type]
    expected = direct_depth_metrics(scale * p + shift, g)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, rel=1e-10), key
    assert (ours["scale"], ours["shift"]) == pytest.approx((scale, shift), rel=1e-10, abs=1e-12)


def test_depth_alignments_undo_their_own_model() -> None:
    gt = np.random.default_rng(1).uniform(1.0, 10.0, size=(6, 7))
    perfect = {"abs_rel": 0.0, "rmse": 0.0, "log_rmse": 0.0, "delta_1": 1.0}
    for align, pred in (
        ("median", gt * 3.0),
        ("lstsq_scale", gt / 7.0),
        ("lstsq_scale_shift", 2.0 * gt + 1.0),
    ):
        out = depth_metrics(pred, gt, align=align)  # type: ignore[arg-type]
        assert {k: out[k] for k in perfect} == pytest.approx(perfect, abs=1e-12), align


def test_depth_valid_pixels_mask_and_max_depth(depth_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = depth_pair
    mask = np.zeros(gt.shape, dtype=bool)
    mask[1:] = True
    keep = mask & (gt > 0) & (gt < 12.0)
    ours = depth_metrics(pred, gt, mask=mask, align="none", max_depth=12.0)
    assert ours["abs_rel"] == pytest.approx(direct_depth_metrics(pred[keep], gt[keep])["abs_rel"], rel=1e-12)
    # A video is pooled over pixels: the same as one flattened frame.
    flat = depth_metrics(pred.reshape(1, -1), gt.reshape(1, -1))
    assert depth_metrics(pred, gt) == pytest.approx(flat, rel=1e-12)
    with pytest.raises(GeometryError):
        depth_metrics(pred, np.zeros_like(gt))


def test_depth_non_positive_predictions_are_failures() -> None:
    gt = np.full((2, 2), 2.0)
    pred = np.array([[2.0, 2.0], [2.0, -1.0]])
    out = depth_metrics(pred, gt, align="none")
    assert out["delta_3"] == 0.75 and out["log_rmse"] == math.inf


# --------------------------------------------------------------------------------------------------
# 4D points
# --------------------------------------------------------------------------------------------------


def test_point_accuracy_completion_tiny_sets() -> None:
    pred = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    gt = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    # pred→gt: 0 and 1. gt→pred: 0, 2 (to the origin) and 2 (to (1, 0, 0)).
    expected = {"accuracy": 0.5, "accuracy_median": 0.5, "completion": 4 / 3, "completion_median": 2.0}
    assert point_accuracy_completion(pred, gt) == pytest.approx(expected)
    with pytest.raises(ValueError):
        point_accuracy_completion(np.zeros((0, 3)), gt)


# --------------------------------------------------------------------------------------------------
# TUM files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quat_order", ["xyzw", "wxyz"])
def test_tum_round_trip(tmp_path: Path, quat_order: str) -> None:
    rng = np.random.default_rng(8)
    poses = random_trajectory(rng, 7)
    stamps = 1305031102.175304 + np.arange(7) / 30
    path = tmp_path / "traj.txt"
    write_tum(path, stamps, poses, quat_order=quat_order)  # type: ignore[arg-type]
    read_stamps, read_poses = read_tum(path, quat_order=quat_order)  # type: ignore[arg-type]
    np.testing.assert_array_equal(read_stamps, stamps)
    np.testing.assert_allclose(read_poses, poses, atol=1e-14)


def test_read_tum_column_order(tmp_path: Path) -> None:
    s = math.sqrt(0.5)  # 90° about z
    path = tmp_path / "traj.txt"
    path.write_text(f"# timestamp tx ty tz qx qy qz qw\n0.5 1 2 3 0 0 {s} {s}\n\n1.5 4 5 6 0 0 0 2\n")
    stamps, poses = read_tum(path)
    np.testing.assert_array_equal(stamps, [0.5, 1.5])
    np.testing.assert_allclose(poses[0, :3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_array_equal(poses[:, :3, 3], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(poses[1, :3, :3], np.eye(3), atol=1e-15)  # normalised quaternion
    # The reference's w-first file: the same line read as TUM would be a different rotation.
    path.write_text(f"0.5 1 2 3 {s} 0 0 {s}\n")
    np.testing.assert_allclose(read_tum(path, quat_order="wxyz")[1][0, :3, :3], poses[0, :3, :3], atol=1e-15)


def test_read_tum_matches_evo(evo: SimpleNamespace, tmp_path: Path) -> None:
    poses = random_trajectory(np.random.default_rng(9), 5)
    path = tmp_path / "traj.txt"
    write_tum(path, np.arange(5.0), poses)
    theirs = evo.file_interface.read_tum_trajectory_file(str(path))
    np.testing.assert_allclose(np.stack(theirs.poses_se3), read_tum(path)[1], atol=1e-12)


def test_read_tum_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("0 1 2 3 0 0 0\n")
    with pytest.raises(Easi3RError, match="8 columns"):
        read_tum(path)
    with pytest.raises(Easi3RError, match="cannot read"):
        read_tum(tmp_path / "missing.txt")
