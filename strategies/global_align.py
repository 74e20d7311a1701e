"""Aligners: pair predictions → one :class:`~easi3r.geometry.Scene` (poses, intrinsics, depth).

``global`` is DUSt3R/MonST3R's global alignment (``method.md`` §6), vectorised over frames and pairs:

* unknowns: per-frame log-depth maps, per-frame camera-to-world poses (quaternion + signed-log1p
  translation), focal stored as ``focal_break·log f`` (one shared focal by default), principal point at
  (W/2, H/2) unless optimised (stored as offset/10), and per-pair similarities (quaternion,
  signed-log1p translation, log-scale) that carry each pair's prediction into the world;
* pair scales are normalised so that their mean log equals ``log(base_scale)``: without it the trivial
  solution "shrink everything to a point" would be free;
* loss = Σ_pairs Σ_pixels log(conf)·‖world point of the frame − pair similarity(pair prediction)‖₂ for both
  views, divided by the total pixel area (pairs × H × W), plus optional temporal smoothness and an optional
  extra term;
* Adam (β = 0.9, 0.9), learning rate decayed linearly (or by cosine) from ``lr`` to ``lr_min``;
* initialised from a maximum spanning tree over pair scores mean(conf₁)·mean(conf₂): weighted Procrustes
  with scale along the tree, focal by Weiszfeld, the poses the tree does not give by RANSAC PnP.

The reference's numbers are reproduced (``tests/test_global_align.py`` checks the golden run); its quirks
are named options whose default keeps the reference behaviour (see :class:`AlignConfig`).
``pairwise`` (two frames, from one pair) is the trivial aligner (``none`` lives in ``aligners.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from torch import Tensor, nn

from easi3r.errors import GeometryError, one_line
from easi3r.geometry import (
    Scene,
    estimate_focal_weiszfeld,
    invert_pose,
    make_pose,
    pixel_grid,
    quat_to_rotmat,
    rotmat_to_quat,
    signed_expm1,
    signed_log1p,
    sim3_between_cameras,
    transform_points,
    weighted_procrustes,
)
from easi3r.types import PairPredictions

__all__ = [
    "AlignConfig",
    "AlignState",
    "Alignment",
    "GlobalAlign",
    "GlobalAligner",
    "PairwiseAlign",
    "clean_confidence",
    "global_align",
    "init_mst",
    "pair_scores",
    "pairwise_align",
]

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass
class AlignConfig:
    """Settings of the ``global`` aligner; defaults are the reference's effective values."""

    iters: int = 300
    lr: float = 0.01
    lr_min: float = 1e-3
    schedule: str = "linear"  # or "cosine"
    init: str = "mst"  # "mst", or "random" (the reference's init=None: random poses, depth ≈ e^-3)
    shared_focal: bool = True
    optimize_pp: bool = False
    focal_break: float = 20.0  # focal parameter = focal_break · log f
    base_scale: float = 0.5  # pair scales are normalised to a geometric mean of this
    min_conf_thr: float = 2.5  # pixels used by the PnP of the initialisation
    pnp_iterations: int = 10
    pnp_reproj_px: float = 5.0
    temporal_smoothing_weight: float = 0.0
    translation_weight: float = 1.0  # inside the temporal term: ‖R_rel − I‖_F + w·‖t_rel‖
    exclude_dynamic: bool = False  # True: dynamic pixels enter neither the 3D term nor the initialisation
    # quirk: the reference estimates the focal of a tree node from the pair processed *before* it (a stale
    # loop variable), so the init focal can come from another frame's pointmap; False uses the node's own pair
    stale_edge_focal: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise GeometryError(f"align schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.init not in ("mst", "random"):
            raise GeometryError(f"align init must be 'mst' or 'random', got {self.init!r}")


@dataclass
class AlignState:
    """A point of the optimisation in plain geometric terms (what a warm start supplies).

    ``pair_poses`` are similarities: the 3×3 block is scale·R, mapping pair p's prediction (in the camera
    of its view 1) into the world. ``principal_points`` None means the image centre.
    """

    cam2world: Tensor  # (T, 4, 4)
    focals: Tensor  # (T,)
    depth: Tensor  # (T, H, W)
    pair_poses: Tensor  # (P, 4, 4)
    principal_points: Tensor | None = None  # (T, 2)

    def to(self, device: str | torch.device) -> AlignState:
        """The same state on ``device``."""
        return AlignState(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


@dataclass
class Alignment:
    """What :func:`global_align` returns."""

    scene: Scene
    loss_history: list[float]  # loss before each step
    lr_history: list[float]  # learning rate of each step
    init: AlignState
    final: AlignState


# --- inputs ------------------------------------------------------------------------------------------


def _to(x: Tensor | None, device: str | torch.device) -> Tensor | None:
    return None if x is None else x.to(device)


def _check_inputs(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int,
    image_size: tuple[int, int] | None,
    masks: Tensor | None,
) -> None:
    """Shape and value checks, each failure a one-line GeometryError."""
    pts1, pts2 = preds.pts3d_1, preds.pts3d_2
    if pts1.ndim != 4 or pts1.shape[-1] != 3 or pts2.shape != pts1.shape:
        raise GeometryError(
            f"pair points must both be (P, H, W, 3), got {tuple(pts1.shape)} and {tuple(pts2.shape)}"
        )
    n_pairs, height, width, _ = pts1.shape
    for name in ("conf_1", "conf_2"):
        if tuple(getattr(preds, name).shape) != (n_pairs, height, width):
            raise GeometryError(
                f"{name} must be {(n_pairs, height, width)}, got {tuple(getattr(preds, name).shape)}"
            )
    if tuple(pairs.shape) != (n_pairs, 2):
        raise GeometryError(
            f"pairs must be ({n_pairs}, 2) to match the predictions, got {tuple(pairs.shape)}"
        )
    if image_size is not None and tuple(image_size) != (height, width):
        raise GeometryError(
            f"pair predictions are {height}×{width} but the frames are {image_size[0]}×{image_size[1]}"
        )
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= n_frames):
        raise GeometryError(f"pair indices must lie in [0, {n_frames}), got {pairs.min()}..{pairs.max()}")
    if bool((pairs[:, 0] == pairs[:, 1]).any()):
        raise GeometryError("a pair links a frame to itself")
    seen = torch.zeros(n_frames, dtype=torch.bool)
    seen[pairs.flatten()] = True
    if not bool(seen.all()):
        raise GeometryError(f"frame {int((~seen).nonzero()[0])} appears in no pair")
    for name in ("pts3d_1", "pts3d_2", "conf_1", "conf_2"):
        if not bool(torch.isfinite(getattr(preds, name)).all()):
            raise GeometryError(f"pair predictions hold NaN or infinite values in {name}")
    if masks is not None and tuple(masks.shape) != (n_frames, height, width):
        raise GeometryError(f"dynamic masks must be {(n_frames, height, width)}, got {tuple(masks.shape)}")


def _check_geometry(preds: PairPredictions, pairs: Tensor, n_frames: int, w1: Tensor, w2: Tensor) -> None:
    """Degenerate scenes: no positive weight at all, a frame with none, or a pair whose points are collinear."""
    if not bool((w1 > 0).any() or (w2 > 0).any()):
        raise GeometryError(
            "degenerate scene: no pixel has a confidence above 1 (all log-confidence weights ≤ 0)"
        )
    per_frame = torch.zeros(n_frames, dtype=w1.dtype)
    per_frame.index_add_(0, pairs[:, 0], (w1 > 0).flatten(1).sum(1).to(w1.dtype))
    per_frame.index_add_(0, pairs[:, 1], (w2 > 0).flatten(1).sum(1).to(w2.dtype))
    if not bool((per_frame > 0).all()):
        frame = int((per_frame == 0).nonzero()[0])
        raise GeometryError(f"frame {frame} has no valid pixel (confidence ≤ 1 or masked out in every pair)")
    # the spread of each pointmap along its three principal axes: two ~0 axes = a line (or a point), which
    # leaves the rotation of a Procrustes registration undetermined
    for view, pts in ((1, preds.pts3d_1), (2, preds.pts3d_2)):
        pts = pts.flatten(1, 2)
        pts = pts[:, :: max(1, pts.shape[1] // 4096)].double()  # a few thousand points decide it, in float64
        spread = torch.linalg.svdvals(pts - pts.mean(1, keepdim=True))
        collinear = spread[:, 1] <= 1e-6 * spread[:, 0].clamp(min=1e-300)
        if bool(collinear.any()):
            p = int(collinear.nonzero()[0])
            i, j = pairs[p].tolist()
            raise GeometryError(
                f"degenerate scene: the view-{view} points of pair {p} ({i}→{j}) are collinear"
            )


def pair_scores(preds: PairPredictions) -> Tensor:
    """(P,) the spanning-tree score of each pair: mean(conf₁)·mean(conf₂), raw confidences."""
    return preds.conf_1.mean((1, 2)) * preds.conf_2.mean((1, 2))


# --- initialisation ----------------------------------------------------------------------------------


def _pnp(
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


def _spanning_tree_order(scores: Tensor, pairs: Tensor, n_frames: int) -> list[tuple[float, int, int]]:
    """Edges of the maximum spanning tree as (score, i, j), ascending (the last is the strongest)."""
    # a later duplicate of an ordered pair overrides an earlier one, as in a dict keyed by the pair
    graph: dict[tuple[int, int], float] = {}
    for (i, j), s in zip(pairs.tolist(), scores.tolist()):
        graph[(i, j)] = s
    rows, cols = zip(*graph)
    weights = -np.asarray(list(graph.values()), dtype=np.float64)
    tree = minimum_spanning_tree(csr_matrix((weights, (rows, cols)), shape=(n_frames, n_frames))).tocoo()
    return sorted(zip((-tree.data).tolist(), tree.row.tolist(), tree.col.tolist()))


def init_mst(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int,
    config: AlignConfig | None = None,
    *,
    im_conf: Tensor | None = None,
    static: Tensor | None = None,
    known_focals: Tensor | None = None,
    known_pp: Tensor | None = None,
    known_poses: Tensor | None = None,
) -> AlignState:
    """The maximum-spanning-tree initialisation. Deterministic (OpenCV's RANSAC is seeded internally).

    ``static`` (T, H, W) bool, when given, restricts Procrustes weights and PnP pixels to static pixels.
    Known focals / principal points replace the Weiszfeld estimates and the centre; known poses are
    reached by a Sim(3) alignment of the tree's cameras (centres and viewing directions) and then kept.
    """
    config = config or AlignConfig()
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    pts1, pts2, conf1, conf2 = preds.pts3d_1, preds.pts3d_2, preds.conf_1, preds.conf_2
    _, height, width, _ = pts1.shape
    if im_conf is None:
        im_conf = preds.frame_confidence(pairs, n_frames)
    w1, w2 = conf1, conf2
    if static is not None:
        w1, w2 = _static_weights(conf1, static[pairs[:, 0]]), _static_weights(conf2, static[pairs[:, 1]])
    centre = torch.tensor((width / 2, height / 2), dtype=pts1.dtype)
    pp = known_pp if known_pp is not None else centre.expand(n_frames, 2)
    edge_of = {(i, j): e for e, (i, j) in enumerate(pairs.tolist())}
    scores = pair_scores(preds)

    def focal_from(e: int) -> float:
        if known_focals is not None:
            return float(known_focals[pairs[e, 0]])
        focal = float(estimate_focal_weiszfeld(pts1[e][None], pp[pairs[e, 0]])[0])
        if not math.isfinite(focal) or focal <= 0:
            # deviation: the reference carries a zero focal into log() and optimises NaNs; points that
            # fit no camera in front of them (random weights) start from a 2·atan(1/2) ≈ 53° field of view
            focal = float(max(height, width))
        return focal

    world: list[Tensor | None] = [None] * n_frames
    poses: list[Tensor | None] = [None] * n_frames
    focals: list[float | None] = [None] * n_frames
    todo = _spanning_tree_order(scores, pairs, n_frames)
    _, i, j = todo.pop()
    last = edge_of[(i, j)]
    world[i], world[j] = pts1[last].clone(), pts2[last].clone()
    poses[i] = torch.eye(4)
    focals[i] = focal_from(last)
    placed = {i, j}
    deferred = 0
    while todo:
        score, i, j = todo.pop()
        if focals[i] is None:
            # the stale edge is the reference's quirk for *estimated* focals; a known focal is the node's own
            stale = config.stale_edge_focal and known_focals is None
            focals[i] = focal_from(last if stale else edge_of[(i, j)])
        e = edge_of[(i, j)]
        if i in placed or j in placed:
            # register the side already in the world, then carry the other side along
            if i in placed:
                s, rot, t = weighted_procrustes(
                    pts1[e].reshape(-1, 3), world[i].reshape(-1, 3), w1[e].flatten()
                )
                world[j] = (s * pts2[e].reshape(-1, 3) @ rot.T + t).view(height, width, 3)
                placed.add(j)
            else:
                s, rot, t = weighted_procrustes(
                    pts2[e].reshape(-1, 3), world[j].reshape(-1, 3), w2[e].flatten()
                )
                world[i] = (s * pts1[e].reshape(-1, 3) @ rot.T + t).view(height, width, 3)
                placed.add(i)
            if poses[i] is None:
                poses[i] = make_pose(rot, t)
            last = e
            deferred = 0
        else:
            todo.insert(0, (score, i, j))
            deferred += 1
            if deferred > len(todo):
                raise GeometryError(
                    "the pair graph is not connected: some frames share no pair with the others"
                )

    # frames the tree gave no focal: their best-scoring pair as view 1
    for e in scores.argsort(descending=True).tolist():
        if focals[pairs[e, 0]] is None:
            focals[pairs[e, 0]] = focal_from(e)
    for n in range(n_frames):
        if poses[n] is None:
            valid = im_conf[n] > config.min_conf_thr
            if static is not None:
                valid &= static[n]
            centre_n = (float(pp[n, 0]), float(pp[n, 1]))
            found = _pnp(world[n], valid, focals[n], centre_n, config.pnp_iterations, config.pnp_reproj_px)
            if found is not None:
                focals[n], poses[n] = found
            else:
                poses[n] = torch.eye(4)
    cam2world = torch.stack(poses).to(pts1.dtype)
    world_pts = torch.stack(world)

    if known_poses is not None:
        trf = sim3_between_cameras(cam2world, known_poses.to(pts1.dtype))
        world_pts = transform_points(trf[None].expand(n_frames, 4, 4), world_pts)
        cam2world = known_poses.to(pts1.dtype)

    # every pair's similarity into the world, in one batched registration
    s, rot, t = weighted_procrustes(pts1.flatten(1, 2), world_pts[pairs[:, 0]].flatten(1, 2), w1.flatten(1))
    factor = 1.0
    if known_poses is None:
        # the optimiser pins the mean log pair-scale to log(base_scale): scale the world to match now
        factor = float(torch.exp(math.log(config.base_scale) - s.log().mean()))
        cam2world = cam2world.clone()
        cam2world[:, :3, 3] *= factor
        world_pts = world_pts * factor
    pair_poses = make_pose(rot, t * factor, s * factor)
    depth = transform_points(invert_pose(cam2world), world_pts)[..., 2]
    focal_t = torch.tensor([float(f) for f in focals], dtype=pts1.dtype)
    if config.shared_focal and known_focals is None:
        focal_t = focal_t.mean().expand(n_frames).clone()
    return AlignState(cam2world, focal_t, depth, pair_poses, None if known_pp is None else pp.clone())


def _static_weights(conf: Tensor, static: Tensor) -> Tensor:
    """Registration weights restricted to static pixels, except for maps with no static pixel at all,
    which keep all of theirs (a registration needs some weight)."""
    weights = conf * static
    empty = weights.flatten(1).sum(1) == 0
    return torch.where(empty[:, None, None], conf, weights)


# --- the optimiser -----------------------------------------------------------------------------------


class GlobalAligner(nn.Module):
    """Parameters and loss of the global alignment; the loss is vectorised over all frames and pairs.

    ``extra_loss`` terms (e.g. a flow prior) receive this module: :meth:`cam2world`, :meth:`focals`,
    :meth:`intrinsics`, :meth:`depth`, :meth:`world_points`, :meth:`pair_poses` are differentiable, and
    ``iteration`` tells the current step (for terms that start late, as MonST3R's flow loss does).
    """

    def __init__(
        self,
        preds: PairPredictions,
        pairs: Tensor,
        n_frames: int,
        state: AlignState,
        config: AlignConfig | None = None,
        *,
        masks: Tensor | None = None,
        known_focals: bool = False,
        known_pp: bool = False,
        known_poses: bool = False,
    ) -> None:
        super().__init__()
        self.config = config = config or AlignConfig()
        pairs = torch.as_tensor(pairs, dtype=torch.int64)
        n_pairs, height, width, _ = preds.pts3d_1.shape
        self.n_frames, self.size = n_frames, (height, width)
        self.iteration = 0
        self.norm_pair_scale = not known_poses  # known poses fix the world's scale themselves
        self.register_buffer("ei", pairs[:, 0].clone())
        self.register_buffer("ej", pairs[:, 1].clone())
        self.register_buffer("pred1", preds.pts3d_1.flatten(1, 2).float())
        self.register_buffer("pred2", preds.pts3d_2.flatten(1, 2).float())
        w1, w2 = preds.conf_1.log().flatten(1), preds.conf_2.log().flatten(1)
        if masks is not None and config.exclude_dynamic:
            static = ~masks.flatten(1)
            w1, w2 = w1 * static[self.ei], w2 * static[self.ej]
        self.register_buffer("w1", w1.float())
        self.register_buffer("w2", w2.float())
        self.register_buffer("grid", pixel_grid(height, width).view(-1, 2))
        self.register_buffer("centre", torch.tensor((width / 2, height / 2)))
        self.area = float(n_pairs * height * width)

        self._check_state(state, n_pairs)
        state = self._normalised(state)
        # a depth ≤ 0 (log NaN or −inf) starts at depth 1, as in the reference
        log_depth = state.depth.float().log().nan_to_num(neginf=0).flatten(1)
        pose = torch.cat(
            (
                rotmat_to_quat(state.cam2world[:, :3, :3].float()),
                signed_log1p(state.cam2world[:, :3, 3].float()),
            ),
            -1,
        )
        focals = state.focals.float()
        if config.shared_focal and not known_focals:
            focals = focals.mean().view(1)
        pp = state.principal_points if state.principal_points is not None else self.centre.expand(n_frames, 2)
        scale = torch.linalg.det(state.pair_poses[:, :3, :3].double()).abs().pow(1 / 3).float()
        rot = state.pair_poses[:, :3, :3].float() / scale[:, None, None]
        pair = torch.cat(
            (
                rotmat_to_quat(rot),
                signed_log1p(state.pair_poses[:, :3, 3].float() / scale[:, None]),
                scale.log()[:, None],
            ),
            -1,
        )
        self.log_depth = nn.Parameter(log_depth)
        self.pose = nn.Parameter(pose, requires_grad=not known_poses)
        self.focal = nn.Parameter(config.focal_break * focals.log(), requires_grad=not known_focals)
        # offsets in tens of pixels, so that one learning rate suits every parameter
        self.pp = nn.Parameter(
            (pp.float() - self.centre) / 10, requires_grad=config.optimize_pp and not known_pp
        )
        self.pair = nn.Parameter(pair)

    def _check_state(self, state: AlignState, n_pairs: int) -> None:
        t, (h, w) = self.n_frames, self.size
        expected = {"cam2world": (t, 4, 4), "focals": (t,), "depth": (t, h, w), "pair_poses": (n_pairs, 4, 4)}
        if state.principal_points is not None:
            expected["principal_points"] = (t, 2)
        for name, shape in expected.items():
            got = tuple(getattr(state, name).shape)
            if got != shape:
                raise GeometryError(f"initial state {name} must be {shape}, got {got}")

    def _normalised(self, state: AlignState) -> AlignState:
        """Rescale a supplied state's world so that its pair scales already meet the normalisation; the
        parametrisation would otherwise silently rescale the pairs but not the cameras and depths."""
        if not self.norm_pair_scale:
            return state
        log_scale = torch.linalg.det(state.pair_poses[:, :3, :3].double()).log() / 3
        factor = float(torch.exp(math.log(self.config.base_scale) - log_scale.mean()))
        if abs(factor - 1) < 1e-6:
            return state
        cam2world = state.cam2world.clone()
        cam2world[:, :3, 3] *= factor
        pair_poses = state.pair_poses.clone()
        pair_poses[:, :3] *= factor
        return AlignState(cam2world, state.focals, state.depth * factor, pair_poses, state.principal_points)

    # -- differentiable views of the parameters --

    def cam2world(self) -> Tensor:
        """(T, 4, 4)."""
        return make_pose(quat_to_rotmat(self.pose[:, :4]), signed_expm1(self.pose[:, 4:]))

    def focals(self) -> Tensor:
        """(T,) in pixels."""
        return (self.focal / self.config.focal_break).exp().expand(self.n_frames)

    def principal_points(self) -> Tensor:
        """(T, 2)."""
        return self.centre + 10 * self.pp

    def intrinsics(self) -> Tensor:
        """(T, 3, 3)."""
        K = torch.zeros(self.n_frames, 3, 3, dtype=self.focal.dtype, device=self.focal.device)
        K[:, 0, 0] = K[:, 1, 1] = self.focals()
        K[:, :2, 2] = self.principal_points()
        K[:, 2, 2] = 1
        return K

    def depth(self) -> Tensor:
        """(T, H, W)."""
        return self.log_depth.exp().view(self.n_frames, *self.size)

    def world_points(self) -> Tensor:
        """(T, H·W, 3): every pixel lifted by its depth, focal and principal point, then posed."""
        depth = self.log_depth.exp()
        focal = self.focals()[:, None, None]
        xy = depth[..., None] * (self.grid - self.principal_points()[:, None]) / focal
        cam = torch.cat((xy, depth[..., None]), -1)
        pose = self.cam2world()
        return _affine(pose, cam)

    def pair_scales(self) -> Tensor:
        """(P,) pair scales, normalised to a geometric mean of ``base_scale`` (unless poses are known)."""
        log_scale = self.pair[:, 7]
        if self.norm_pair_scale:
            log_scale = log_scale + (math.log(self.config.base_scale) - log_scale.mean())
        return log_scale.exp()

    def pair_poses(self) -> Tensor:
        """(P, 4, 4) similarities (scale in the 3×3 block), pair prediction → world."""
        rot = quat_to_rotmat(self.pair[:, :4])
        scale = self.pair_scales()
        # the translation parameter is stored per unit scale, so a scale change moves the whole pair
        return make_pose(rot, signed_expm1(self.pair[:, 4:7]) * scale[:, None], scale)

    def forward(self) -> Tensor:
        """The alignment loss (without ``extra_loss``)."""
        rows = self.world_points().flatten(1)
        trf = self.pair_poses()
        rot, trans = trf[:, :3, :3], trf[:, :3, 3]
        loss = (
            _PairResidual.apply(rows, self.ei, self.pred1, rot, trans, self.w1) / self.area
            + _PairResidual.apply(rows, self.ej, self.pred2, rot, trans, self.w2) / self.area
        )
        if self.config.temporal_smoothing_weight > 0:
            loss = loss + self.config.temporal_smoothing_weight * self.temporal_smoothness()
        return loss

    def temporal_smoothness(self) -> Tensor:
        """Σ over consecutive frames of ‖R_rel − I‖_F + translation_weight·‖t_rel‖."""
        pose = self.cam2world()
        rel = invert_pose(pose[:-1]) @ pose[1:]
        rot_term = (rel[:, :3, :3] - torch.eye(3, dtype=rel.dtype, device=rel.device)).flatten(1).norm(dim=-1)
        return (rot_term + self.config.translation_weight * rel[:, :3, 3].norm(dim=-1)).sum()

    @torch.no_grad()
    def state(self) -> AlignState:
        """The current point as geometry."""
        return AlignState(
            self.cam2world(),
            self.focals().clone(),
            self.depth(),
            self.pair_poses(),
            self.principal_points().clone(),
        )


class _PairResidual(torch.autograd.Function):
    """Σ_p Σ_n w·‖rows[index[p]] − (pred·Rᵀ_p + t_p)‖₂: the 3D term of one view, with its own backward.

    The same arithmetic as composing it from autograd's operators, in about half the time and memory
    (``benchmarks/bench_align.py --hotspots``): autograd keeps a full-size (P, H·W, 3) tensor for the
    gather, the similarity, the subtraction and four more in the norm's backward; here the gathered rows
    become the residual in place, the backward turns the residual into its own gradient in place, and the
    minus signs go onto the small (P, 3, 3) and (P, 3) gradients. The gather is ``index_select`` and its
    gradient ``index_add_`` (a fixed summation order, so runs do not drift apart on several threads; over
    flattened rows, as a many-dimensional ``index_select`` is ~10× slower on CPU). One backward per
    forward: a second one through a retained graph is refused by autograd's version check.
    """

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, index: Tensor, pred: Tensor, rot: Tensor, trans: Tensor, weight: Tensor
    ) -> Tensor:
        diff = rows.index_select(0, index).view(pred.shape)
        diff.baddbmm_(pred, rot.transpose(1, 2), alpha=-1).sub_(trans[:, None])
        dist = torch.linalg.vector_norm(diff, dim=-1)
        ctx.save_for_backward(diff, dist, index, pred, weight)
        ctx.n_rows = rows.shape[0]
        return torch.dot(dist.flatten(), weight.flatten())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        diff, dist, index, pred, weight = ctx.saved_tensors
        # d‖r‖/dr = r/‖r‖; where r = 0 exactly, the clamp gives 0·(huge) = 0, as autograd's norm does
        scale = dist.clamp_(min=1e-30).reciprocal_().mul_(weight).mul_(grad)
        g_diff = diff.mul_(scale[..., None])  # the residual is not needed again: reuse its memory
        g_rows = g_diff.new_zeros(ctx.n_rows, g_diff[0].numel()).index_add_(0, index, g_diff.flatten(1))
        return g_rows, None, None, -torch.bmm(g_diff.transpose(1, 2), pred), -g_diff.sum(1), None


def _affine(trf: Tensor, pts: Tensor) -> Tensor:
    """(B, 4, 4) transforms (scale allowed in the 3×3 block) applied to (B, N, 3) points, fused in one call."""
    return torch.baddbmm(trf[:, None, :3, 3], pts, trf[:, :3, :3].transpose(1, 2))


def _learning_rate(config: AlignConfig, step: int) -> float:
    t = step / config.iters
    if config.schedule == "cosine":
        return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(t * math.pi)) / 2
    return config.lr + (config.lr_min - config.lr) * t


def _optimise(
    aligner: GlobalAligner,
    extra_loss: Callable[[GlobalAligner], Tensor] | None,
    progress: Progress | None,
) -> tuple[list[float], list[float]]:
    config = aligner.config
    params = [p for p in aligner.parameters() if p.requires_grad]
    losses: list[float] = []
    lrs: list[float] = []
    if not params:
        return losses, lrs
    optimiser = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.9))
    for step in range(config.iters):
        lr = _learning_rate(config, step)
        for group in optimiser.param_groups:
            group["lr"] = lr
        aligner.iteration = step
        optimiser.zero_grad()
        loss = aligner()
        if extra_loss is not None:
            loss = loss + extra_loss(aligner)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        lrs.append(lr)
        if progress is not None:
            progress(step + 1, config.iters, losses[-1])
    return losses, lrs


def _known_intrinsics(known: Tensor | None, n_frames: int) -> tuple[Tensor, Tensor] | tuple[None, None]:
    if known is None:
        return None, None
    known = torch.as_tensor(known, dtype=torch.float32)
    if known.shape == (3, 3):
        known = known.expand(n_frames, 3, 3)
    if tuple(known.shape) != (n_frames, 3, 3):
        raise GeometryError(
            f"known intrinsics must be (3, 3) or ({n_frames}, 3, 3), got {tuple(known.shape)}"
        )
    if not bool((known[:, [0, 1], [0, 1]] > 0).all()):
        raise GeometryError("known intrinsics must have positive focal lengths")
    return known[:, [0, 1], [0, 1]].mean(-1), known[:, :2, 2].clone()


def global_align(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int,
    image_size: tuple[int, int] | None = None,
    *,
    config: AlignConfig | None = None,
    masks: Tensor | None = None,
    known_intrinsics: Tensor | None = None,
    known_poses: Tensor | None = None,
    init_state: AlignState | None = None,
    extra_loss: Callable[[GlobalAligner], Tensor] | None = None,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> Alignment:
    """Align ordered pair predictions (view-1 frame points) into one scene.

    ``masks`` (T, H, W) bool are the dynamic masks: carried into the scene, and used by the 3D term only
    with ``config.exclude_dynamic``. ``known_intrinsics`` ((3, 3) or (T, 3, 3); focal = mean of fx, fy, and
    the principal point) and ``known_poses`` ((T, 4, 4) camera-to-world) are held fixed; with known poses
    the pair scales are not normalised. ``init_state`` replaces the initialisation (warm start).
    ``extra_loss(aligner)`` is added to the loss each step: this is where a flow prior plugs in (the
    reference's MonST3R flow loss would be one, started at ``aligner.iteration`` ≥ 0.1·iters).
    ``progress(step, iters, loss)`` is called after each step. The initialisation runs on the CPU (OpenCV);
    the optimisation on ``device`` (default CPU); results come back on the CPU. Raises GeometryError on
    unusable input.
    """
    config = config or AlignConfig()
    pairs = torch.as_tensor(pairs, dtype=torch.int64)
    _check_inputs(preds, pairs, n_frames, image_size, masks)
    focals, pp = _known_intrinsics(known_intrinsics, n_frames)
    if known_poses is not None:
        known_poses = torch.as_tensor(known_poses, dtype=torch.float32)
        if tuple(known_poses.shape) != (n_frames, 4, 4):
            raise GeometryError(f"known poses must be ({n_frames}, 4, 4), got {tuple(known_poses.shape)}")
    static = ~masks if masks is not None and config.exclude_dynamic else None
    w1, w2 = preds.conf_1.log().clamp(min=0), preds.conf_2.log().clamp(min=0)
    if static is not None:
        w1, w2 = w1 * static[pairs[:, 0]], w2 * static[pairs[:, 1]]
    _check_geometry(preds, pairs, n_frames, w1, w2)
    del w1, w2  # 2·P·H·W floats, only for the check: the aligner keeps its own weights
    im_conf = preds.frame_confidence(pairs, n_frames)

    if init_state is None:
        if config.init == "mst":
            init_state = init_mst(
                preds,
                pairs,
                n_frames,
                config,
                im_conf=im_conf,
                static=static,
                known_focals=focals,
                known_pp=pp,
                known_poses=known_poses,
            )
        else:
            init_state = _random_state(preds, pairs, n_frames, config, focals, pp, known_poses)
    elif known_poses is not None or focals is not None:
        init_state = AlignState(
            known_poses if known_poses is not None else init_state.cam2world,
            focals if focals is not None else init_state.focals,
            init_state.depth,
            init_state.pair_poses,
            pp if pp is not None else init_state.principal_points,
        )
    aligner = GlobalAligner(
        preds,
        pairs,
        n_frames,
        init_state,
        config,
        masks=masks,
        known_focals=focals is not None,
        known_pp=pp is not None,
        known_poses=known_poses is not None,
    ).to(device)
    start = aligner.state()
    losses, lrs = _optimise(aligner, extra_loss, progress)
    aligner.cpu()
    start = start.to("cpu")
    final = aligner.state()
    if not all(bool(torch.isfinite(x).all()) for x in (final.cam2world, final.focals, final.depth)):
        raise GeometryError(
            "global alignment diverged (non-finite poses or depth): the pair predictions are degenerate; "
            "check the checkpoint, or skip alignment with align.name=none"
        )
    height, width = aligner.size
    scene = Scene(
        cam2world=final.cam2world,
        intrinsics=aligner.intrinsics().detach(),
        depth=final.depth,
        conf=im_conf,
        pts3d=aligner.world_points().detach().view(n_frames, height, width, 3),
        masks=masks,
    )
    return Alignment(scene, losses, lrs, start, final)


def _random_state(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int,
    config: AlignConfig,
    focals: Tensor | None,
    pp: Tensor | None,
    known_poses: Tensor | None,
) -> AlignState:
    """The reference's starting point without initialisation: log-depth ~ N(−3, 0.1²), random quaternions
    and log-translations ~ N(0, 1), focal max(H, W); pair poses likewise random. Seeded by ``config.seed``."""
    gen = torch.Generator().manual_seed(config.seed)
    n_pairs, height, width, _ = preds.pts3d_1.shape
    depth = (torch.randn(n_frames, height, width, generator=gen) / 10 - 3).exp()

    def random_poses(n: int) -> tuple[Tensor, Tensor]:
        raw = torch.randn(n, 7, generator=gen)
        return quat_to_rotmat(raw[:, :4]), signed_expm1(raw[:, 4:])

    rot, trans = random_poses(n_frames)
    cam2world = known_poses if known_poses is not None else make_pose(rot, trans)
    pair_rot, pair_trans = random_poses(n_pairs)
    pair_scale = torch.randn(n_pairs, generator=gen).exp()
    pair_poses = make_pose(pair_rot, pair_trans * pair_scale[:, None], pair_scale)
    if focals is None:
        focals = torch.full((n_frames,), float(max(height, width)))
    return AlignState(cam2world, focals, depth, pair_poses, pp)


# --- clean-up of the confidence, as the reference does before saving ---------------------------------


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


# --- the trivial aligners ----------------------------------------------------------------------------


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
    _check_inputs(preds, pairs, n_frames, None, masks)
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
        found = _pnp(world_j, valid, focal_i, (width / 2, height / 2), pnp_iterations, pnp_reproj_px)
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


# --- the strategies the plug-in registers (as "global" and "pairwise") ---------------------------------


class GlobalAlign:
    """Recipe strategy ``align: {name: global, **AlignConfig fields, known_intrinsics, known_poses}``.

    ``known_intrinsics`` is a text file with one row-major 3×3 matrix (9 numbers) shared by all frames or
    one per frame; ``known_poses`` a camera-to-world trajectory in TUM order (``t x y z qx qy qz qw``), one
    line per frame. Both are held fixed. Called by the pipeline as
    ``align(frames, pair_outputs, masks, progress_bar)``, where ``progress_bar`` is
    :func:`easi3r.progress.progress_bar` (or None).
    """

    def __init__(self, known_intrinsics: str | None = None, known_poses: str | None = None, **params) -> None:
        self.config = AlignConfig(**params)
        self.known_intrinsics = None if known_intrinsics is None else _read_intrinsics(known_intrinsics)
        self.known_poses = None if known_poses is None else _read_poses(known_poses)

    def __call__(self, frames, pair_outputs, masks, progress_bar=None) -> Scene:
        preds = _predictions_of(pair_outputs)
        mask_tensor = masks.masks if masks is not None else None
        if progress_bar is None:
            return self._align(frames, pair_outputs, preds, mask_tensor, None).scene
        with progress_bar(total=self.config.iters, desc="alignment", unit="it") as bar:

            def report(step: int, total: int, loss: float) -> None:
                bar.update(1)
                bar.set_postfix_str(f"loss={loss:.4g}")

            return self._align(frames, pair_outputs, preds, mask_tensor, report).scene

    def _align(self, frames, pair_outputs, preds, masks, report: Progress | None) -> Alignment:
        intrinsics, poses = self.known_intrinsics, self.known_poses
        if frames.indices is not None:
            # the frames are a window of a longer video: per-frame known values are the whole video's
            if intrinsics is not None and intrinsics.ndim == 3 and len(intrinsics) > len(frames):
                intrinsics = intrinsics[frames.indices]
            if poses is not None and len(poses) > len(frames):
                poses = poses[frames.indices]
        return global_align(
            preds,
            pair_outputs.pairs,
            len(frames),
            frames.size,
            config=self.config,
            masks=masks,
            known_intrinsics=intrinsics,
            known_poses=poses,
            progress=report,
        )


def _read_intrinsics(path: str) -> Tensor:
    """(3, 3) or (T, 3, 3) from a text file of 9 numbers per row."""
    try:
        values = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise GeometryError(f"known intrinsics {path}: cannot read ({one_line(exc)})") from None
    if values.shape[1] != 9:
        raise GeometryError(
            f"known intrinsics {path}: expected 9 numbers per row (a 3×3 matrix), got {values.shape[1]}"
        )
    matrices = torch.from_numpy(values).float().reshape(-1, 3, 3)
    return matrices[0] if len(matrices) == 1 else matrices


def _read_poses(path: str) -> Tensor:
    """(T, 4, 4) camera-to-world poses from a TUM trajectory file."""
    from easi3r.trajectory_io import read_tum

    _, cam2world = read_tum(path)
    return torch.from_numpy(cam2world).float()


class PairwiseAlign:
    """Recipe strategy ``aligner: {name: pairwise, min_conf_thr, pnp_iterations, pnp_reproj_px}``."""

    def __init__(self, **params) -> None:
        self.params = params

    def __call__(self, frames, pair_outputs, masks, progress_bar=None) -> Scene:
        mask_tensor = masks.masks if masks is not None else None
        preds = _predictions_of(pair_outputs)
        return pairwise_align(preds, pair_outputs.pairs, len(frames), masks=mask_tensor, **self.params)


def _predictions_of(pair_outputs) -> PairPredictions:
    """The pair predictions in memory (a streamed pass is read from its cache here: with
    ``scale.align_window`` the pipeline hands each window only its own pairs)."""
    preds = pair_outputs.predictions
    if preds is None:
        raise GeometryError("alignment needs the pair predictions: run pass 2 with the heads on")
    return preds if isinstance(preds, PairPredictions) else preds.select(torch.arange(len(preds)))
