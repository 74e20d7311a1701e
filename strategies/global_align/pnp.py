"""Camera from a world pointmap: RANSAC PnP of the points against their own pixels."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from easi3r.geometry import invert_pose, make_pose, pixel_grid

__all__ = ["solve_pnp"]


def solve_pnp(
    world: Tensor,
    valid: Tensor,
    focal: float | None,
    pp: tuple[float, float],
    iterations: int,
    reproj_px: float,
) -> tuple[float, Tensor] | None:
    """RANSAC PnP (SQPnP) of a (H, W, 3) world pointmap seen by its own pixels → (focal, cam2world).

    With ``focal`` None, 21 focals between S/2 and 3S (S = max(H, W)) are tried and the one with the most
    inliers kept. None when fewer than 4 valid pixels or no attempt succeeds.
    """
    if int(valid.sum()) < 4:
        return None
    height, width, _ = world.shape
    pts = world.detach().cpu().numpy()[valid.cpu().numpy()]
    pix = pixel_grid(height, width).numpy()[valid.cpu().numpy()]
    size = max(height, width)
    candidates = [focal] if focal is not None else list(np.geomspace(size / 2, size * 3, 21))
    best: tuple[int, np.ndarray, np.ndarray, float] | None = None
    for f in candidates:
        K = np.float32([(f, 0, pp[0]), (0, f, pp[1]), (0, 0, 1)])
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            pts,
            pix,
            K,
            None,
            iterationsCount=iterations,
            reprojectionError=reproj_px,
            flags=cv2.SOLVEPNP_SQPNP,
        )
        if ok and inliers is not None and (best is None or len(inliers) > best[0]):
            best = len(inliers), rvec, tvec, float(f)
    if best is None:
        return None
    _, rvec, tvec, f = best
    world2cam = make_pose(
        torch.from_numpy(cv2.Rodrigues(rvec)[0]).float(), torch.from_numpy(tvec[:, 0]).float()
    )
    return f, invert_pose(world2cam)
