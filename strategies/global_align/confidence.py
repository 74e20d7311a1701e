"""Clean-up of the aligned scene's confidence, as the reference does before saving
(:func:`clean_confidence`)."""

from __future__ import annotations

import torch
from torch import Tensor

from easi3r.geometry import Scene, invert_pose, transform_points

__all__ = ["clean_confidence"]


@torch.no_grad()
def clean_confidence(scene: Scene, tol: float = 0.001, bad_conf: float = 0.0) -> Tensor:
    """(T, H, W) confidence where every point seen *in front of* another frame's surface (closer than
    (1 − tol) of that frame's depth at the pixel it projects to) and less confident than that pixel is
    clipped to ``bad_conf``. Frames are processed in order, each against all others at once, with the
    clipped values of earlier frames, as in the reference."""
    conf = scene.conf.clone()
    n_frames, height, width = conf.shape
    world2cam = invert_pose(scene.cam2world)
    for i in range(n_frames):
        others = torch.tensor([j for j in range(n_frames) if j != i], dtype=torch.int64)
        if len(others) == 0:
            break
        cam = transform_points(world2cam[others], scene.pts3d[i].expand(len(others), height, width, 3))
        z = cam[..., 2]
        proj = cam @ scene.intrinsics[others].transpose(1, 2)[:, None]
        u = (proj[..., 0] / proj[..., 2]).round()
        v = (proj[..., 1] / proj[..., 2]).round()
        visible = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        o, y, x = visible.nonzero(as_tuple=True)
        uu, vv = u[o, y, x].long(), v[o, y, x].long()
        j = others[o]
        hidden = (z[o, y, x] < (1 - tol) * scene.depth[j, vv, uu]) & (conf[i, y, x] < conf[j, vv, uu])
        bad = torch.zeros(height, width, dtype=torch.bool)
        bad[y[hidden], x[hidden]] = True
        conf[i][bad] = conf[i][bad].clip(max=bad_conf)
    return conf
