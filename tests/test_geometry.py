"""Pure geometry helpers: parametrisations, cameras, registration, the Scene container."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from easi3r.eval.metrics import ate, umeyama_sim3
from easi3r.geometry import (
    Scene,
    depth_to_points,
    estimate_focal_weiszfeld,
    invert_pose,
    make_pose,
    pixel_grid,
    quat_to_rotmat,
    rotmat_to_quat,
    signed_expm1,
    signed_log1p,
    transform_points,
    weighted_procrustes,
)


def _random_similarity(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rot = roma.unitquat_to_rotmat(roma.quat_normalize(torch.randn(4, generator=gen, dtype=torch.float64)))
    return (
        torch.rand(1, generator=gen, dtype=torch.float64)[0] + 0.5,
        rot,
        torch.randn(3, generator=gen, dtype=torch.float64),
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False), min_size=1, max_size=8))
def test_signed_log1p_roundtrip(values):
    x = torch.tensor(values, dtype=torch.float64)
    y = signed_log1p(x)
    assert torch.allclose(signed_expm1(y), x, rtol=1e-10, atol=1e-10)
    assert torch.equal(torch.sign(y), torch.sign(x))  # sign kept, magnitude compressed
    assert bool((y.abs() <= x.abs() + 1e-12).all())


def test_quaternion_roundtrip_and_normalisation():
    gen = torch.Generator().manual_seed(0)
    quat = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    rot = quat_to_rotmat(3.7 * quat)  # any norm is accepted
    assert torch.allclose(
        rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(16, 3, 3), atol=1e-12
    )
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16, dtype=torch.float64))
    assert torch.allclose(quat_to_rotmat(rotmat_to_quat(rot)), rot, atol=1e-12)
    # xyzw: the identity is (0, 0, 0, 1)
    assert torch.allclose(rotmat_to_quat(torch.eye(3)), torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_pose_inverse_and_transform():
    gen = torch.Generator().manual_seed(1)
    rot = quat_to_rotmat(torch.randn(5, 4, generator=gen, dtype=torch.float64))
    pose = make_pose(rot, torch.randn(5, 3, generator=gen, dtype=torch.float64))
    assert torch.allclose(
        invert_pose(pose) @ pose, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), atol=1e-12
    )
    assert torch.allclose(invert_pose(pose), torch.linalg.inv(pose), atol=1e-12)
    pts = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    back = transform_points(invert_pose(pose), transform_points(pose, pts))
    assert torch.allclose(back, pts, atol=1e-12)
    # a similarity keeps its scale in the 3×3 block
    sim = make_pose(rot[0], torch.zeros(3, dtype=torch.float64), 2.0)
    assert torch.allclose(transform_points(sim, pts[0]).norm(dim=-1), 2 * pts[0].norm(dim=-1))


def test_pixel_grid_is_column_row():
    grid = pixel_grid(2, 3)
    assert grid.shape == (2, 3, 2)
    assert grid[1, 2].tolist() == [2.0, 1.0]


def test_depth_to_points_matches_pinhole():
    depth = torch.full((1, 4, 6), 2.0, dtype=torch.float64)
    K = torch.tensor([[[10.0, 0, 3], [0, 12.0, 2], [0, 0, 1]]], dtype=torch.float64)
    pts = depth_to_points(depth, K)
    # pixel (x=5, y=0): ((5-3)/10·2, (0-2)/12·2, 2)
    assert torch.allclose(pts[0, 0, 5], torch.tensor([0.4, -1 / 3, 2.0], dtype=torch.float64))
    pose = make_pose(
        torch.eye(3, dtype=torch.float64)[None], torch.tensor([[1.0, 0, 0]], dtype=torch.float64)
    )
    world = depth_to_points(depth, K, pose)
    assert torch.allclose(world - pts, torch.tensor([1.0, 0, 0], dtype=torch.float64))
    # projecting back lands on the pixel grid
    proj = pts @ K[0].T
    assert torch.allclose(proj[..., :2] / proj[..., 2:], pixel_grid(4, 6, torch.float64))


def test_weighted_procrustes_recovers_similarity_and_ignores_zero_weights():
    gen = torch.Generator().manual_seed(2)
    s, rot, t = _random_similarity(gen)
    src = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    dst = s * src @ rot.T + t
    dst[:20] += 50 * torch.randn(20, 3, generator=gen, dtype=torch.float64)  # outliers, given no weight
    weights = torch.ones(200, dtype=torch.float64)
    weights[:20] = 0
    s2, rot2, t2 = weighted_procrustes(src, dst, weights)
    assert torch.allclose(s2, s) and torch.allclose(rot2, rot, atol=1e-10) and torch.allclose(t2, t)
    # batched, and rigid when asked
    s3, rot3, _ = weighted_procrustes(
        src.expand(3, 200, 3), (src @ rot.T).expand(3, 200, 3), with_scale=False
    )
    assert torch.allclose(s3, torch.ones(3, dtype=torch.float64)) and torch.allclose(rot3[2], rot, atol=1e-10)


def test_ate_is_similarity_invariant():
    """ATE (easi3r.eval.metrics, checked against evo) on poses built with these helpers."""
    gen = torch.Generator().manual_seed(3)
    s, rot, t = _random_similarity(gen)
    gt = make_pose(
        quat_to_rotmat(torch.randn(8, 4, generator=gen, dtype=torch.float64)),
        torch.randn(8, 3, generator=gen, dtype=torch.float64),
    )
    pred = gt.clone()
    pred[:, :3, 3] = s * gt[:, :3, 3] @ rot.T + t
    s2, rot2, t2 = umeyama_sim3(pred[:, :3, 3].numpy(), gt[:, :3, 3].numpy())
    assert abs(s2 * s - 1.0) < 1e-10
    assert np.allclose(s2 * pred[:, :3, 3].numpy() @ rot2.T + t2, gt[:, :3, 3].numpy())
    assert ate(pred, gt) < 1e-10
    shifted = gt.clone()
    shifted[0, :3, 3] += torch.tensor([1.0, 0, 0], dtype=torch.float64)
    assert 0.1 < ate(shifted, gt) < 1 / math.sqrt(8)


def test_weiszfeld_focal_exact_and_robust():
    depth = 1 + torch.rand(2, 12, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    pts = depth_to_points(depth, K)
    assert torch.allclose(estimate_focal_weiszfeld(pts), torch.full((2,), 20.0, dtype=torch.float64))
    pts[:, :2, :3] *= torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)  # a few wild points
    assert torch.allclose(
        estimate_focal_weiszfeld(pts), torch.full((2,), 20.0, dtype=torch.float64), rtol=0.02
    )


def test_scene_validates_shapes():
    T, H, W = 2, 3, 4
    scene = Scene(
        torch.eye(4).expand(T, 4, 4),
        torch.eye(3).expand(T, 3, 3) * 5,
        torch.ones(T, H, W),
        torch.ones(T, H, W),
        torch.zeros(T, H, W, 3),
    )
    assert len(scene) == T and scene.focals.tolist() == [5.0, 5.0] and not scene.conf_is_log
    with pytest.raises(ValueError, match="pts3d"):
        Scene(scene.cam2world, scene.intrinsics, scene.depth, scene.conf, torch.zeros(T, H, W + 1, 3))
    with pytest.raises(ValueError, match="masks"):
        Scene(
            scene.cam2world, scene.intrinsics, scene.depth, scene.conf, scene.pts3d, torch.zeros(T, H, W + 1)
        )
