"""Procedural scenes: the ground truth is self-consistent, and pair predictions are DUSt3R-like."""

from __future__ import annotations

import pytest
import torch

from easi3r.geometry import depth_to_points, invert_pose, transform_points
from easi3r.synthetic import make_scene, pair_predictions


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_frames=5, size=(24, 32), n_objects=2, seed=0)


@pytest.mark.parametrize("motion", ["orbit", "forward"])
def test_scene_ground_truth_is_consistent(motion):
    sc = make_scene(n_frames=4, size=(20, 30), n_objects=3, motion=motion, seed=1)
    T, H, W = 4, 20, 30
    assert sc.rgb.shape == (T, H, W, 3) and sc.depth.shape == (T, H, W) and sc.pts3d.shape == (T, H, W, 3)
    assert sc.masks.dtype == torch.bool and sc.size == (H, W) and len(sc) == T
    assert bool((sc.depth > 0).all()) and bool(torch.isfinite(sc.pts3d).all())
    assert float(sc.rgb.min()) >= 0 and float(sc.rgb.max()) <= 1
    # world points are the depth lifted through K and the pose
    lifted = depth_to_points(sc.depth.double(), sc.intrinsics.double(), sc.cam2world.double())
    assert torch.allclose(lifted.float(), sc.pts3d, atol=1e-4)
    # the room stays within its walls and the objects show up in some frames but not everywhere
    assert float(sc.pts3d.abs()[..., [0, 2]].max()) <= sc.extent / 2 + 1e-4
    assert 0 < float(sc.masks.float().mean()) < 0.8
    # poses are rigid camera-to-world with the principal point at the centre
    rot = sc.cam2world[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(T, 3, 3), atol=1e-5)
    assert sc.intrinsics[0, :2, 2].tolist() == [W / 2, H / 2]


def test_scene_is_deterministic_and_seeded():
    a = make_scene(n_frames=2, size=(8, 12), seed=3)
    b = make_scene(n_frames=2, size=(8, 12), seed=3)
    c = make_scene(n_frames=2, size=(8, 12), seed=4)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    assert not torch.equal(a.depth, c.depth)


def test_scene_helpers(scene):
    images = scene.images()
    assert images.shape == (5, 3, 24, 32) and float(images.min()) >= -1 and float(images.max()) <= 1
    gt = scene.to_scene()
    assert torch.equal(gt.masks, scene.masks) and torch.equal(gt.cam2world, scene.cam2world)


def test_bad_arguments():
    with pytest.raises(ValueError, match="motion"):
        make_scene(motion="spiral")
    with pytest.raises(ValueError, match="frame"):
        make_scene(n_frames=0)


def test_perfect_pair_predictions_are_scaled_view1_points(scene):
    pairs = torch.tensor([[0, 1], [1, 0], [2, 4], [4, 2]])
    preds = pair_predictions(scene, pairs, seed=5)
    assert preds.pts3d_1.shape == (4, 24, 32, 3) and preds.conf_2.shape == (4, 24, 32)
    assert bool((preds.conf_1 > 1).all()) and bool((preds.conf_2 > 1).all())
    scales = []
    for p, (i, j) in enumerate(pairs.tolist()):
        pose_i = scene.cam2world[i : i + 1].double()
        # view 1 is frame i in its own camera, up to the pair scale
        own = transform_points(invert_pose(pose_i), scene.pts3d[i : i + 1].double())[0]
        scale = float((preds.pts3d_1[p].double().norm(dim=-1) / own.norm(dim=-1)).mean())
        scales.append(scale)
        assert torch.allclose(preds.pts3d_1[p].double() / scale, own, atol=1e-4)
        # view 2 is frame j's points (at time j) in frame i's camera, with the same scale
        other = transform_points(pose_i, preds.pts3d_2[p : p + 1].double() / scale)[0]
        assert torch.allclose(other.float(), scene.pts3d[j], atol=1e-4)
        assert 0.5 <= scale <= 2.0
    assert len(set(round(s, 6) for s in scales)) == 4  # one scale per pair
    # neighbours are more confident than distant frames
    assert float(preds.conf_1[0].mean()) > float(preds.conf_1[2].mean())


def test_perturbed_pair_predictions(scene):
    pairs = torch.tensor([[0, 1], [1, 0]])
    clean = pair_predictions(scene, pairs, seed=0)
    noisy = pair_predictions(scene, pairs, noise=0.01, seed=0)
    rel = ((noisy.pts3d_1 - clean.pts3d_1).norm(dim=-1) / clean.pts3d_1[..., 2]).mean()
    assert 0.005 < float(rel) < 0.03
    outliers = pair_predictions(scene, pairs, outlier_frac=0.2, seed=0)
    moved = (outliers.pts3d_1 - clean.pts3d_1).norm(dim=-1) > 1e-3
    assert 0.15 < float(moved.float().mean()) < 0.25
    assert torch.equal(outliers.conf_1, clean.conf_1)  # outliers keep an ordinary confidence
