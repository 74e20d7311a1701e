"""VGGT's camera encoding and the geometry that goes with it.

The camera head predicts, per frame, ``absT_quaR_FoV``: nine numbers ``(tx, ty, tz, qx, qy, qz, qw,
fov_h, fov_w)``. ``t`` and the unit quaternion ``q`` (scalar last) give the world-to-camera transform
``x_cam = R(q) x_world + t`` in OpenCV axes (x right, y down, z forward); the first frame of a window is
the world. ``fov_h`` and ``fov_w`` are the vertical and horizontal fields of view in radians; the
principal point is the image centre and pixels are square only if the two agree.

Everything here keeps the dtype of its inputs (float64 in, float64 out) and works on any leading
batch dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """``(..., 4)`` quaternions ``(x, y, z, w)``, not necessarily unit → rotation matrices ``(..., 3, 3)``."""
    x, y, z, w = quaternion.unbind(-1)
    s = 2.0 / (quaternion * quaternion).sum(-1)  # normalises a non-unit quaternion on the way
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quaternion.shape[:-1], 3, 3)


def pose_encoding_to_extrinsics_intrinsics(
    pose_enc: Tensor, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``pose_enc (..., 9)`` and the image's (height, width) in pixels → ``extrinsics (..., 3, 4)``
    world-to-camera ``[R | t]`` (OpenCV) and ``intrinsics (..., 3, 3)`` in pixels, principal point at
    ``(W / 2, H / 2)``."""
    height, width = image_hw
    rotation = quaternion_to_matrix(pose_enc[..., 3:7])
    extrinsics = torch.cat((rotation, pose_enc[..., :3, None]), dim=-1)
    fy = (height / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (width / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    intrinsics = pose_enc.new_zeros(*pose_enc.shape[:-1], 3, 3)
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def unproject_depth(depth: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> Tensor:
    """Depth maps ``(..., H, W)`` or ``(..., H, W, 1)`` → world points ``(..., H, W, 3)``.

    Pixel ``(u, v)`` (column, row, integer indices as in the official code, no half-pixel shift) at
    depth ``d`` is ``((u - cx) d / fx, (v - cy) d / fy, d)`` in the camera, then taken to the world with
    the inverse of ``extrinsics (..., 3, 4)``. Intrinsics ``(..., 3, 3)`` must have zero skew.
    """
    if depth.shape[-1] == 1 and depth.ndim == extrinsics.ndim + 1:
        depth = depth[..., 0]
    height, width = depth.shape[-2:]
    dtype = torch.promote_types(depth.dtype, extrinsics.dtype)
    depth, extrinsics, intrinsics = depth.to(dtype), extrinsics.to(dtype), intrinsics.to(dtype)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=depth.device),
        torch.arange(width, dtype=dtype, device=depth.device),
        indexing="ij",
    )
    fx, fy = intrinsics[..., 0, 0, None, None], intrinsics[..., 1, 1, None, None]
    cx, cy = intrinsics[..., 0, 2, None, None], intrinsics[..., 1, 2, None, None]
    camera = torch.stack(((u - cx) * depth / fx, (v - cy) * depth / fy, depth), dim=-1)
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    # x_world = R^T (x_cam - t), written as a row-vector product: x_cam R - R^T t
    centre = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]
    return camera @ rotation[..., None, :, :] + centre[..., None, None, :]
