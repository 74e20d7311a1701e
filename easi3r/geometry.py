"""Small, pure geometry helpers shared by the aligners, the synthetic scenes and the evaluation.

Conventions (those of DUSt3R and of the saved outputs):

* cameras follow OpenCV: x right, y down, z forward; poses are **camera-to-world** 4×4 matrices;
* pixel ``(x, y)`` is column ``x``, row ``y`` at integer coordinates, and the centred principal point is
  ``(W/2, H/2)`` (not ``(W-1)/2``), which is what the reference's pixel grid and focal estimator assume;
* quaternions are roma's ``(x, y, z, w)`` order (the reference writes ``w`` first only in its text files);
* depth is the z coordinate in the camera frame (not the ray length).
"""

from __future__ import annotations

from dataclasses import dataclass

import roma
import torch
from torch import Tensor

__all__ = [
    "Scene",
    "depth_to_points",
    "estimate_focal_weiszfeld",
    "invert_pose",
    "make_pose",
    "pixel_grid",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "signed_expm1",
    "signed_log1p",
    "transform_points",
    "weighted_procrustes",
]


@dataclass
class Scene:
    """A reconstructed (or ground-truth) dynamic scene, one entry per frame.

    ``conf`` is kept in the unit it was produced in and ``conf_is_log`` says which: the aligners return
    the raw network confidence (``1 + exp(x)``, max over pairs); the reference *saves* its log.
    """

    cam2world: Tensor  # (T, 4, 4) camera-to-world
    intrinsics: Tensor  # (T, 3, 3) pinhole K
    depth: Tensor  # (T, H, W) z-depth
    conf: Tensor  # (T, H, W) confidence, raw or log (see conf_is_log)
    pts3d: Tensor  # (T, H, W, 3) world points of every pixel
    masks: Tensor | None = None  # (T, H, W) bool, True = dynamic
    conf_is_log: bool = False

    def __post_init__(self) -> None:
        t, h, w = self.depth.shape
        expected = {
            "cam2world": (t, 4, 4),
            "intrinsics": (t, 3, 3),
            "conf": (t, h, w),
            "pts3d": (t, h, w, 3),
        }
        if self.masks is not None:
            expected["masks"] = (t, h, w)
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Scene.{name} must be {shape} to match depth {(t, h, w)}, got {got}")

    def __len__(self) -> int:
        return self.depth.shape[0]

    @property
    def focals(self) -> Tensor:
        """(T,) focal length in pixels (mean of fx and fy)."""
        return self.intrinsics[:, [0, 1], [0, 1]].mean(-1)


# --- rotations and the log-parametrisation of translations ------------------------------------------


def quat_to_rotmat(quat: Tensor) -> Tensor:
    """(..., 4) quaternion, xyzw, any norm → (..., 3, 3) rotation. Normalising here is what lets an
    optimiser move the four numbers freely."""
    return roma.unitquat_to_rotmat(roma.quat_normalize(quat))


def rotmat_to_quat(rot: Tensor) -> Tensor:
    """(..., 3, 3) rotation → (..., 4) unit quaternion, xyzw."""
    return roma.rotmat_to_unitquat(rot)


def signed_log1p(x: Tensor) -> Tensor:
    """sign(x)·log(1+|x|): compresses large translations so one learning rate suits near and far cameras."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def signed_expm1(x: Tensor) -> Tensor:
    """Inverse of :func:`signed_log1p`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def make_pose(rot: Tensor, trans: Tensor, scale: Tensor | float | None = None) -> Tensor:
    """(..., 3, 3) rotation and (..., 3) translation → (..., 4, 4); ``scale`` multiplies the 3×3 block only
    (a similarity ``x ↦ s·R·x + t``)."""
    out = torch.zeros(*rot.shape[:-2], 4, 4, dtype=rot.dtype, device=rot.device)
    if scale is not None:
        rot = rot * torch.as_tensor(scale, dtype=rot.dtype, device=rot.device)[..., None, None]
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1
    return out


def invert_pose(pose: Tensor) -> Tensor:
    """Inverse of rigid (..., 4, 4) poses, without a general matrix inverse."""
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    return make_pose(rot_t, -(rot_t @ pose[..., :3, 3:4])[..., 0])


def transform_points(pose: Tensor, pts: Tensor) -> Tensor:
    """Apply (B, 4, 4) (or (4, 4)) transforms to (B, ..., 3) points (the 3×3 block may hold a scale)."""
    if pose.ndim == 2:
        return pts @ pose[:3, :3].T + pose[:3, 3]
    flat = pts.reshape(pts.shape[0], -1, 3)
    out = flat @ pose[:, :3, :3].transpose(-1, -2) + pose[:, None, :3, 3]
    return out.reshape(pts.shape)


# --- cameras -----------------------------------------------------------------------------------------


def pixel_grid(height: int, width: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """(H, W, 2) pixel coordinates ``(x, y)`` = (column, row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device),
        torch.arange(width, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1)


def depth_to_points(depth: Tensor, intrinsics: Tensor, cam2world: Tensor | None = None) -> Tensor:
    """(T, H, W) depth, (T, 3, 3) K (and optionally (T, 4, 4) camera-to-world) → (T, H, W, 3) points,
    in the camera frame or, when a pose is given, in the world frame."""
    _, h, w = depth.shape
    grid = pixel_grid(h, w, depth.dtype, depth.device)
    focal = intrinsics[:, [0, 1], [0, 1]][:, None, None, :]
    centre = intrinsics[:, :2, 2][:, None, None, :]
    xy = (grid - centre) / focal * depth[..., None]
    pts = torch.cat((xy, depth[..., None]), dim=-1)
    return pts if cam2world is None else transform_points(cam2world, pts)


def estimate_focal_weiszfeld(pts3d: Tensor, pp: Tensor | None = None, n_iter: int = 10) -> Tensor:
    """Focal of (B, H, W, 3) camera-frame pointmaps: argmin_f Σ‖pixel − pp − f·(x, y)/z‖ by iteratively
    re-weighted least squares (Weiszfeld), started from the least-squares solution. (B,) result.

    ``pp`` is (B, 2) or (2,); default the image centre (W/2, H/2). Points with z = 0 vote for nothing.
    """
    b, h, w, _ = pts3d.shape
    if pp is None:
        pp = torch.tensor((w / 2, h / 2), dtype=pts3d.dtype, device=pts3d.device)
    pixels = pixel_grid(h, w, pts3d.dtype, pts3d.device).view(1, -1, 2) - pp.view(-1, 1, 2)
    pts = pts3d.reshape(b, -1, 3)
    xy_over_z = (pts[..., :2] / pts[..., 2:3]).nan_to_num(posinf=0, neginf=0)
    dot_xy_px = (xy_over_z * pixels).sum(-1)
    dot_xy_xy = xy_over_z.square().sum(-1)
    focal = dot_xy_px.mean(1) / dot_xy_xy.mean(1)
    for _ in range(n_iter):
        # weights 1/residual turn the L2 solution into the L1 (geometric-median-like) one
        residual = (pixels - focal.view(-1, 1, 1) * xy_over_z).norm(dim=-1)
        weight = residual.clip(min=1e-8).reciprocal()
        focal = (weight * dot_xy_px).mean(1) / (weight * dot_xy_xy).mean(1)
    return focal.clip(min=0)


# --- registration ------------------------------------------------------------------------------------


def weighted_procrustes(
    src: Tensor, dst: Tensor, weights: Tensor | None = None, with_scale: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity (s, R, t) minimising Σ w·‖s·R·src + t − dst‖² (Umeyama/Kabsch), batched.

    src, dst: (..., N, 3); weights: (..., N) non-negative, None for uniform. Returns s (...), R (..., 3, 3),
    t (..., 3); s is 1 when ``with_scale`` is False.
    """
    if with_scale:
        rot, trans, scale = roma.rigid_points_registration(src, dst, weights=weights, compute_scaling=True)
        return scale, rot, trans
    rot, trans = roma.rigid_points_registration(src, dst, weights=weights)
    return torch.ones(src.shape[:-2], dtype=src.dtype, device=src.device), rot, trans


def sim3_between_cameras(src: Tensor, dst: Tensor) -> Tensor:
    """Similarity (4×4, scale in the 3×3 block) taking cameras ``src`` onto ``dst``, fitted on their centres
    and on points a little ahead of them (so two cameras, or cameras on a line, still fix the rotation)."""

    def anchors(poses: Tensor) -> Tensor:
        centres = poses[:, :3, 3]
        step = torch.pdist(centres.double()).median() / 100 if len(poses) > 1 else torch.tensor(0.01)
        return torch.cat((centres, centres + float(step) * poses[:, :3, 2]))

    s, rot, t = weighted_procrustes(anchors(src), anchors(dst))
    return make_pose(rot, t, s)
