"""Evaluation metrics as small pure functions over numpy arrays (TUM trajectory I/O is re-exported from
:mod:`easi3r.trajectory_io`, where the aligner and the exporters find it too).

Every function states its alignment and averaging convention in its name or docstring: numbers computed
under different conventions (J averaged over frames or over sequences, depth aligned per frame or per
video, ...) are not comparable and must never be mixed in one table.

Conventions shared by the whole module:

* poses are **camera-to-world** 4×4 matrices stacked as ``(T, 4, 4)``; a camera's position is the
  translation column of its pose;
* the trajectory metrics reproduce evo (``evo_ape`` / ``evo_rpe`` with ``--align --correct_scale``), which
  is what the reference evaluation calls; the tests check them against evo's Python API;
* masks are boolean ``(H, W)`` or ``(T, H, W)`` arrays; any non-zero value (a 0/255 PNG) is foreground;
* problems caused by the data (a trajectory that cannot be aligned, no valid depth pixel, an unreadable
  trajectory file) raise :class:`~easi3r.errors.Easi3RError` subclasses; malformed arguments (wrong
  shapes, unknown option names) raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import binary_dilation
from scipy.spatial import cKDTree

from easi3r.errors import GeometryError
from easi3r.trajectory_io import read_tum, write_tum

__all__ = [
    "ate",
    "dataset_mean",
    "depth_metrics",
    "f_measure",
    "iou",
    "j_mean_recall_per_frame",
    "j_mean_recall_per_sequence",
    "point_accuracy_completion",
    "read_tum",
    "rpe",
    "umeyama_sim3",
    "write_tum",
]

PoseAlign = Literal["sim3", "se3", "none"]
DepthAlign = Literal["median", "lstsq_scale", "lstsq_scale_shift", "none"]

# A frame counts towards the DAVIS J-Recall when its IoU is strictly above this.
_RECALL_THRESHOLD = 0.5
# δ-accuracy thresholds of the depth metrics: δ_k counts pixels with max(p/g, g/p) < 1.25**k.
_DELTA_BASE = 1.25


# --------------------------------------------------------------------------------------------------
# Trajectories
# --------------------------------------------------------------------------------------------------


def umeyama_sim3(
    src: ArrayLike, dst: ArrayLike, with_scale: bool = True
) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """Least-squares similarity ``(s, R, t)`` with ``dst ≈ s·R·src + t`` (Umeyama, PAMI 1991).

    ``src`` and ``dst`` are corresponding ``(N, 3)`` points. ``R`` is a proper rotation (a reflection is
    never returned); with ``with_scale=False`` the fit is rigid and ``s`` is 1. The scale is Umeyama's
    ``trace(D·S) / σ²_src`` with the variance normalised by ``N``, as in evo.

    Raises :class:`~easi3r.errors.GeometryError` when the cross-covariance has fewer than two singular
    values above machine epsilon, the test evo applies before refusing to align; in floating point it
    catches coincident points. For collinear points the rotation about the line is arbitrary (as in
    evo), but the aligned positions, hence ATE and RPE, are not.
    """
    src_pts = _as_points(src, "src")
    dst_pts = _as_points(dst, "dst")
    if src_pts.shape != dst_pts.shape:
        raise ValueError(f"src {src_pts.shape} and dst {dst_pts.shape} must have the same shape")
    src_mean, dst_mean = src_pts.mean(axis=0), dst_pts.mean(axis=0)
    src_c, dst_c = src_pts - src_mean, dst_pts - dst_mean
    n = src_pts.shape[0]
    cov = dst_c.T @ src_c / n
    u, d, vt = np.linalg.svd(cov)
    if np.count_nonzero(d > np.finfo(np.float64).eps) < 2:
        raise GeometryError("Umeyama alignment impossible: degenerate positions (all equal?)")
    # Flip the weakest axis when U·Vᵀ would be a reflection, so that R stays in SO(3).
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rot = (u * sign) @ vt
    scale = float((d * sign).sum() / (np.square(src_c).sum() / n)) if with_scale else 1.0
    trans = dst_mean - scale * rot @ src_mean
    return scale, rot, trans


def ate(pred_c2w: ArrayLike, gt_c2w: ArrayLike, align: PoseAlign = "sim3") -> float:
    """Absolute trajectory error: RMSE over frames of ``‖aligned predicted position − GT position‖``.

    ``align`` is how the prediction is brought onto the ground truth before measuring, fitted on the
    camera positions only: ``"sim3"`` (Umeyama with scale; evo's ``align=True, correct_scale=True``,
    the reference's protocol), ``"se3"`` (rigid Umeyama) or ``"none"``. Equals evo's APE on the
    translation part, RMSE statistic.
    """
    pred, gt = _pose_pair(pred_c2w, gt_c2w)
    aligned = _align_poses(pred, gt, align)
    err = aligned[:, :3, 3] - gt[:, :3, 3]
    return float(np.sqrt(np.mean(np.sum(np.square(err), axis=1))))


def rpe(
    pred_c2w: ArrayLike, gt_c2w: ArrayLike, delta: int = 1, align: PoseAlign = "sim3"
) -> tuple[float, float]:
    """Relative pose error ``(translation RMSE, rotation RMSE in degrees)`` over frame pairs ``(i, i+delta)``.

    Defined as evo's ``evo_rpe`` with ``--delta <delta> --delta_unit f --all_pairs``: for every
    ``i < T - delta`` the error pose is ``E_i = (Q_i⁻¹ Q_{i+δ})⁻¹ (P_i⁻¹ P_{i+δ})`` with ``Q`` the ground
    truth and ``P`` the aligned prediction; the translation error is ``‖t(E_i)‖`` and the rotation error
    the angle of ``R(E_i)`` in degrees; each is reduced by RMSE over pairs.

    ``align`` is applied first, exactly as evo's ``align(correct_scale=...)`` does it: the predicted
    positions are multiplied by the Umeyama scale, then every pose is left-multiplied by the rigid
    part. The rigid part cancels in ``P_i⁻¹ P_{i+δ}``, so only the scale changes the result.
    """
    pred, gt = _pose_pair(pred_c2w, gt_c2w)
    if delta < 1 or delta >= pred.shape[0]:
        raise ValueError(f"delta must be in [1, {pred.shape[0] - 1}] for {pred.shape[0]} poses, got {delta}")
    aligned = _align_poses(pred, gt, align)
    first = np.arange(pred.shape[0] - delta)
    gt_rel = _se3_inverse(gt[first]) @ gt[first + delta]
    pred_rel = _se3_inverse(aligned[first]) @ aligned[first + delta]
    err = _se3_inverse(gt_rel) @ pred_rel
    trans = np.linalg.norm(err[:, :3, 3], axis=1)
    rot = _rotation_angle_deg(err[:, :3, :3])
    return float(np.sqrt(np.mean(np.square(trans)))), float(np.sqrt(np.mean(np.square(rot))))


def dataset_mean(per_sequence: Mapping[str, float]) -> float:
    """Dataset score: the plain (unweighted) mean of per-sequence values, whatever their lengths.

    This is how the reference turns per-sequence ATE/RPE into one number.
    """
    if not per_sequence:
        raise ValueError("dataset_mean needs at least one sequence")
    return float(np.mean([float(v) for v in per_sequence.values()]))


# --------------------------------------------------------------------------------------------------
# Dynamic masks (DAVIS J and F)
# --------------------------------------------------------------------------------------------------


def iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """Jaccard index ``|pred ∧ gt| / |pred ∨ gt|`` of two ``(H, W)`` masks; 1.0 when both are empty (DAVIS)."""
    pred_m, gt_m = _mask_pair(pred, gt, ndim=2)
    return float(_frame_ious(pred_m[None], gt_m[None])[0])


def j_mean_recall_per_frame(preds: ArrayLike, gts: ArrayLike) -> tuple[float, float]:
    """``(J-Mean, J-Recall)`` with **every frame weighted equally** — the Easi3R reference convention.

    ``preds`` and ``gts`` are ``(T, H, W)`` masks. ``JM = (1/T) Σ_t IoU_t`` and
    ``JR = (1/T) Σ_t [IoU_t > 0.5]``. The reference scores a whole dataset this way, treating each frame
    as a DAVIS "object": pass the frames of all sequences concatenated along the first axis, so that long
    sequences weigh more. For the standard per-sequence average use :func:`j_mean_recall_per_sequence`.
    """
    preds_m, gts_m = _mask_pair(preds, gts, ndim=3)
    if preds_m.shape[0] == 0:
        raise ValueError("j_mean_recall_per_frame needs at least one frame")
    j = _frame_ious(preds_m, gts_m)
    return float(j.mean()), float((j > _RECALL_THRESHOLD).mean())


def j_mean_recall_per_sequence(sequences: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> tuple[float, float]:
    """``(J-Mean, J-Recall)`` with **every sequence weighted equally** — the standard DAVIS convention.

    ``sequences`` maps a sequence name to its ``(preds, gts)``, each ``(T_s, H, W)``, all objects merged
    into one foreground (so a sequence is one DAVIS object). With ``S`` sequences,
    ``JM = (1/S) Σ_s (1/T_s) Σ_t IoU_{s,t}`` and ``JR = (1/S) Σ_s (1/T_s) Σ_t [IoU_{s,t} > 0.5]``.
    Every given frame is scored; the DAVIS semi-supervised protocol also drops each sequence's first and
    last frame, which callers who want it do by slicing before the call.
    """
    if not sequences:
        raise ValueError("j_mean_recall_per_sequence needs at least one sequence")
    per_seq = np.array([j_mean_recall_per_frame(p, g) for p, g in sequences.values()])
    return float(per_seq[:, 0].mean()), float(per_seq[:, 1].mean())


def f_measure(pred: ArrayLike, gt: ArrayLike, bound_th: float = 0.008) -> float:
    """DAVIS boundary F-measure ``2PR / (P + R)`` of two ``(H, W)`` masks.

    Boundaries are one-pixel-wide maps (:func:`_boundary_map`). A predicted boundary pixel is correct when
    a GT boundary pixel lies within the tolerance (Euclidean distance ≤ r, i.e. inside the GT boundary
    dilated by a disk of radius r), and symmetrically for recall. The tolerance is
    ``r = ceil(bound_th · √(H² + W²))`` pixels (5 px at 512×288), or ``bound_th`` itself when it is ≥ 1.

    Both boundaries empty gives 1, exactly one empty gives 0. Emptiness is that of the *boundary*: a mask
    covering the whole image has none (the image border is not a boundary), as in the DAVIS toolkit.
    """
    pred_m, gt_m = _mask_pair(pred, gt, ndim=2)
    radius = int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred_m.shape))
    pred_b, gt_b = _boundary_map(pred_m), _boundary_map(gt_m)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    disk = _disk(radius)
    precision = np.count_nonzero(pred_b & binary_dilation(gt_b, structure=disk)) / n_pred
    recall = np.count_nonzero(gt_b & binary_dilation(pred_b, structure=disk)) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


# --------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------


def depth_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: ArrayLike | None = None,
    align: DepthAlign = "median",
    max_depth: float | None = None,
) -> dict[str, float]:
    """Standard depth errors of ``pred`` against ``gt``, both ``(H, W)`` or ``(T, H, W)``.

    Valid pixels: ``gt > 0``, and ``gt < max_depth`` when given, and ``mask`` when given. For a
    ``(T, H, W)`` input all valid pixels of all frames are pooled: **one** alignment for the whole video
    and means over pixels, not over frames (call per frame for per-frame alignment).

    ``align`` fits ``a = s·pred + b`` on the valid pixels: ``"median"`` (``s = median(gt)/median(pred)``,
    ``b = 0``), ``"lstsq_scale"`` (least squares over ``s``, ``b = 0``), ``"lstsq_scale_shift"`` (least
    squares over ``s`` and ``b``) or ``"none"``.

    Returns ``abs_rel = mean(|a−g|/g)``, ``sq_rel = mean((a−g)²/g)``, ``rmse = √mean((a−g)²)``,
    ``log_rmse = √mean((ln a − ln g)²)``, ``delta_k = mean(max(a/g, g/a) < 1.25^k)`` for k = 1, 2, 3, and
    the fitted ``scale`` and ``shift``. A non-positive aligned depth counts as a δ failure and makes
    ``log_rmse`` infinite (no clipping is applied).
    """
    pred_a = np.asarray(pred, dtype=np.float64)
    gt_a = np.asarray(gt, dtype=np.float64)
    if pred_a.shape != gt_a.shape or pred_a.ndim not in (2, 3):
        raise ValueError(f"pred {pred_a.shape} and gt {gt_a.shape} must both be (H, W) or (T, H, W)")
    valid = gt_a > 0
    if max_depth is not None:
        valid &= gt_a < max_depth
    if mask is not None:
        mask_a = np.asarray(mask).astype(bool)
        if mask_a.shape != gt_a.shape:
            raise ValueError(f"mask {mask_a.shape} must have the shape of gt {gt_a.shape}")
        valid &= mask_a
    if not valid.any():
        raise GeometryError("depth_metrics: no valid ground-truth pixel")
    p, g = pred_a[valid], gt_a[valid]
    scale, shift = _fit_depth(p, g, align)
    a = scale * p + shift
    err = a - g
    positive = a > 0
    # Guard the divisions: non-positive depths are failures for δ and infinite for the log error.
    safe_a = np.where(positive, a, 1.0)
    ratio = np.where(positive, np.maximum(safe_a / g, g / safe_a), np.inf)
    log_rmse = float(np.sqrt(np.mean(np.square(np.log(safe_a) - np.log(g))))) if positive.all() else math.inf
    out = {
        "abs_rel": float(np.mean(np.abs(err) / g)),
        "sq_rel": float(np.mean(np.square(err) / g)),
        "rmse": float(np.sqrt(np.mean(np.square(err)))),
        "log_rmse": log_rmse,
    }
    for k in (1, 2, 3):
        out[f"delta_{k}"] = float(np.mean(ratio < _DELTA_BASE**k))
    out["scale"], out["shift"] = scale, shift
    return out


# --------------------------------------------------------------------------------------------------
# 4D points
# --------------------------------------------------------------------------------------------------


def point_accuracy_completion(pred: ArrayLike, gt: ArrayLike) -> dict[str, float]:
    """Nearest-neighbour distances between two point clouds, DyCheck style, in the clouds' own unit.

    ``accuracy`` = mean over predicted points of the distance to the closest GT point; ``completion`` =
    mean over GT points of the distance to the closest predicted point; ``*_median`` are the medians.
    No alignment is done here: align the prediction (poses Sim(3) to GT, depth times that scale) first.
    """
    pred_pts = _as_points(pred, "pred")
    gt_pts = _as_points(gt, "gt")
    if pred_pts.shape[0] == 0 or gt_pts.shape[0] == 0:
        raise ValueError("point_accuracy_completion needs non-empty point clouds")
    to_gt, _ = cKDTree(gt_pts).query(pred_pts)
    to_pred, _ = cKDTree(pred_pts).query(gt_pts)
    return {
        "accuracy": float(np.mean(to_gt)),
        "accuracy_median": float(np.median(to_gt)),
        "completion": float(np.mean(to_pred)),
        "completion_median": float(np.median(to_pred)),
    }


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _as_points(a: ArrayLike, name: str) -> NDArray[np.float64]:
    pts = np.asarray(a, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3) points, got shape {pts.shape}")
    return pts


def _as_poses(a: ArrayLike, name: str) -> NDArray[np.float64]:
    poses = np.asarray(a, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"{name} must be (T, 4, 4) poses, got shape {poses.shape}")
    return poses


def _pose_pair(pred: ArrayLike, gt: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    pred_p, gt_p = _as_poses(pred, "pred_c2w"), _as_poses(gt, "gt_c2w")
    if pred_p.shape != gt_p.shape:
        raise ValueError(f"pred_c2w {pred_p.shape} and gt_c2w {gt_p.shape} must have the same length")
    return pred_p, gt_p


def _align_poses(pred: NDArray[np.float64], gt: NDArray[np.float64], align: PoseAlign) -> NDArray[np.float64]:
    """``pred`` with its positions scaled by s, then left-multiplied by (R, t) — evo's ``align`` order."""
    if align not in ("sim3", "se3", "none"):
        raise ValueError(f"align must be 'sim3', 'se3' or 'none', got {align!r}")
    if align == "none":
        return pred
    scale, rot, trans = umeyama_sim3(pred[:, :3, 3], gt[:, :3, 3], with_scale=align == "sim3")
    out = pred.copy()
    out[:, :3, :3] = rot @ pred[:, :3, :3]
    out[:, :3, 3] = scale * pred[:, :3, 3] @ rot.T + trans
    return out


def _se3_inverse(poses: NDArray[np.float64]) -> NDArray[np.float64]:
    # Closed form (Rᵀ, −Rᵀt) rather than a general inverse: exact for rigid poses, as evo computes it.
    inv = np.zeros_like(poses)
    rot_t = np.swapaxes(poses[:, :3, :3], 1, 2)
    inv[:, :3, :3] = rot_t
    inv[:, :3, 3] = -np.einsum("nij,nj->ni", rot_t, poses[:, :3, 3])
    inv[:, 3, 3] = 1.0
    return inv


def _rotation_angle_deg(rot: NDArray[np.float64]) -> NDArray[np.float64]:
    """Angle of each rotation matrix in degrees (the norm of its log).

    atan2(sin θ, cos θ) with 2 sin θ = ‖vee(R − Rᵀ)‖ and 2 cos θ = tr R − 1, because arccos of the trace
    alone loses half the significant digits for the small angles typical of consecutive frames.
    """
    skew = np.stack(
        [rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]], axis=1
    )
    sin = 0.5 * np.linalg.norm(skew, axis=1)
    cos = 0.5 * (np.trace(rot, axis1=1, axis2=2) - 1.0)
    return np.degrees(np.arctan2(sin, cos))


def _mask_pair(pred: ArrayLike, gt: ArrayLike, ndim: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    pred_m, gt_m = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred_m.shape != gt_m.shape or pred_m.ndim != ndim:
        raise ValueError(f"pred {pred_m.shape} and gt {gt_m.shape} must be equal-shaped {ndim}-D masks")
    return pred_m, gt_m


def _frame_ious(preds: NDArray[np.bool_], gts: NDArray[np.bool_]) -> NDArray[np.float64]:
    """IoU of each ``(T, H, W)`` frame; 1 where the union is empty (nothing to find, nothing found)."""
    inter = np.count_nonzero(preds & gts, axis=(1, 2))
    union = np.count_nonzero(preds | gts, axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _boundary_map(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """One-pixel-wide boundary of a mask, the ``seg2bmap`` definition (Martin et al.) used by DAVIS.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour, counting
    only neighbours inside the image: boundaries sit half a pixel towards the origin from the true
    edge, and the image border is never a boundary.
    """
    bmap = np.zeros_like(mask)
    bmap[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    bmap[:-1, :] |= mask[:-1, :] != mask[1:, :]
    bmap[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return bmap


def _disk(radius: int) -> NDArray[np.bool_]:
    """Disk structuring element: offsets ``(dy, dx)`` with ``dy² + dx² ≤ radius²``."""
    dy, dx = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return dy * dy + dx * dx <= radius * radius


def _fit_depth(pred: NDArray[np.float64], gt: NDArray[np.float64], align: DepthAlign) -> tuple[float, float]:
    """Scale and shift ``(s, b)`` with ``gt ≈ s·pred + b`` under the named convention."""
    if align == "none":
        return 1.0, 0.0
    if align == "median":
        return float(np.median(gt) / np.median(pred)), 0.0
    if align == "lstsq_scale":
        return float(np.dot(pred, gt) / np.dot(pred, pred)), 0.0
    if align == "lstsq_scale_shift":
        design = np.stack([pred, np.ones_like(pred)], axis=1)
        (scale, shift), *_ = np.linalg.lstsq(design, gt, rcond=None)
        return float(scale), float(shift)
    raise ValueError(f"align must be 'median', 'lstsq_scale', 'lstsq_scale_shift' or 'none', got {align!r}")
