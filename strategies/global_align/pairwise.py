"""The trivial aligner of two frames from one pair (``pairwise``): :func:`pairwise_align` and its recipe
strategy :class:`PairwiseAlign`."""

from __future__ import annotations

import torch
from torch import Tensor

from easi3r.errors import GeometryError
from easi3r.geometry import (
    Scene,
    estimate_focal_weiszfeld,
    invert_pose,
    make_pose,
    transform_points,
    weighted_procrustes,
)
from easi3r.types import PairPredictions

from .checks import check_inputs
from .pnp import solve_pnp
from .recipes import predictions_of

__all__ = ["PairwiseAlign", "pairwise_align"]


def pairwise_align(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int = 2,
    *,
    masks: Tensor | None = None,
    min_conf_thr: float = 2.5,
    pnp_iterations: int = 100,
    pnp_reproj_px: float = 5.0,
) -> Scene:
    """Two frames from the first pair alone: its view 1 is the world (identity pose, depth = z of its
    prediction, focal by Weiszfeld); view 2 is placed by Procrustes of the reverse pair's view-1 points
    onto this pair's view-2 points when the reverse pair exists (focal by Weiszfeld on that pair), else by
    RANSAC PnP with view 1's focal."""
    if n_frames != 2:
        raise GeometryError(f"the pairwise aligner handles exactly 2 frames, got {n_frames}")
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    check_inputs(preds, pairs, n_frames, None, masks)
    i, j = pairs[0].tolist()
    _, height, width, _ = preds.pts3d_1.shape
    centre = torch.tensor((width / 2, height / 2))
    focal_i = float(estimate_focal_weiszfeld(preds.pts3d_1[:1])[0])
    world_j = preds.pts3d_2[0]
    reverse = [e for e, (a, b) in enumerate(pairs.tolist()) if (a, b) == (j, i)]
    if reverse:
        r = reverse[0]
        focal_j = float(estimate_focal_weiszfeld(preds.pts3d_1[r : r + 1])[0])
        _, rot, t = weighted_procrustes(
            preds.pts3d_1[r].reshape(-1, 3), world_j.reshape(-1, 3), preds.conf_1[r].flatten()
        )
        pose_j = make_pose(rot, t)
    else:
        valid = preds.conf_2[0] > min_conf_thr
        if int(valid.sum()) < 4:
            valid = torch.ones_like(valid)
        # one camera filmed both frames (the global aligner's shared-focal default): reuse view 1's focal
        found = solve_pnp(world_j, valid, focal_i, (width / 2, height / 2), pnp_iterations, pnp_reproj_px)
        if found is None:
            raise GeometryError(f"pairwise alignment failed: PnP found no pose for frame {j}")
        focal_j, pose_j = found
    cam2world = torch.zeros(2, 4, 4)
    cam2world[i], cam2world[j] = torch.eye(4), pose_j
    depth = torch.zeros(2, height, width)
    depth[i] = preds.pts3d_1[0, ..., 2]
    depth[j] = transform_points(invert_pose(pose_j), world_j)[..., 2]
    intrinsics = torch.zeros(2, 3, 3)
    intrinsics[i, 0, 0] = intrinsics[i, 1, 1] = focal_i
    intrinsics[j, 0, 0] = intrinsics[j, 1, 1] = focal_j
    intrinsics[:, :2, 2] = centre
    intrinsics[:, 2, 2] = 1
    pts3d = torch.zeros(2, height, width, 3)
    pts3d[i], pts3d[j] = preds.pts3d_1[0], world_j
    conf = torch.zeros(2, height, width)
    conf[i], conf[j] = preds.conf_1[0], preds.conf_2[0]
    return Scene(cam2world, intrinsics, depth, conf, pts3d, masks)


class PairwiseAlign:
    """Recipe strategy ``aligner: {name: pairwise, min_conf_thr, pnp_iterations, pnp_reproj_px}``."""

    def __init__(self, **params) -> None:
        self.params = params

    def __call__(self, frames, pair_outputs, masks, progress_bar=None) -> Scene:
        mask_tensor = masks.masks if masks is not None else None
        preds = predictions_of(pair_outputs)
        return pairwise_align(preds, pair_outputs.pairs, len(frames), masks=mask_tensor, **self.params)
