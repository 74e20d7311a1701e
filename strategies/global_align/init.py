"""Starting points of the global alignment: the reference's maximum-spanning-tree initialisation
(:func:`init_mst`) and its random start (:func:`random_state`, ``init: random``).

The spanning tree runs over pair scores mean(conf₁)·mean(conf₂): weighted Procrustes with scale along
the tree, focal by Weiszfeld, the poses the tree does not give by RANSAC PnP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from torch import Tensor

from easi3r.errors import GeometryError
from easi3r.geometry import (
    estimate_focal_weiszfeld,
    invert_pose,
    make_pose,
    quat_to_rotmat,
    signed_expm1,
    sim3_between_cameras,
    transform_points,
    weighted_procrustes,
)
from easi3r.types import PairPredictions

from .config import AlignConfig
from .pnp import solve_pnp
from .state import AlignState

__all__ = ["init_mst", "pair_scores", "random_state"]


def pair_scores(preds: PairPredictions) -> Tensor:
    """(P,) the spanning-tree score of each pair: mean(conf₁)·mean(conf₂), raw confidences."""
    return preds.conf_1.mean((1, 2)) * preds.conf_2.mean((1, 2))


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
    if im_conf is None:
        im_conf = preds.frame_confidence(pairs, n_frames)
    edges = _Edges.of(preds, pairs, n_frames, static, known_focals, known_pp)
    scores = pair_scores(preds)
    tree = _grow_tree(edges, _spanning_tree_order(scores, pairs, n_frames), n_frames, config.stale_edge_focal)
    _focals_off_tree(edges, scores, tree.focals)
    _poses_by_pnp(edges, tree, im_conf, static, config)
    dtype = preds.pts3d_1.dtype
    cam2world = torch.stack(tree.poses).to(dtype)
    world_pts = torch.stack(tree.world)
    if known_poses is not None:
        cam2world, world_pts = _onto_known_poses(cam2world, world_pts, known_poses.to(dtype))
    # known poses fix the world's scale; otherwise the optimiser will pin the pair scales to base_scale
    base_scale = config.base_scale if known_poses is None else None
    pair_poses, cam2world, world_pts = _pair_similarities(edges, cam2world, world_pts, base_scale)
    depth = transform_points(invert_pose(cam2world), world_pts)[..., 2]
    focals = torch.tensor([float(f) for f in tree.focals], dtype=dtype)
    if config.shared_focal and known_focals is None:
        focals = focals.mean().expand(n_frames).clone()
    return AlignState(cam2world, focals, depth, pair_poses, None if known_pp is None else edges.pp.clone())


@dataclass
class _Edges:
    """The pair predictions as the tree walks them: edge e is pair e, frame pairs[e, 0] → pairs[e, 1]."""

    pts1: Tensor  # (P, H, W, 3)
    pts2: Tensor  # (P, H, W, 3)
    w1: Tensor  # (P, H, W) Procrustes weights of view 1
    w2: Tensor  # (P, H, W) Procrustes weights of view 2
    pairs: Tensor  # (P, 2)
    pp: Tensor  # (T, 2) principal points
    known_focals: Tensor | None  # (T,)
    index: dict[tuple[int, int], int] = field(init=False)  # (i, j) → e; a later duplicate pair wins

    def __post_init__(self) -> None:
        self.index = {(i, j): e for e, (i, j) in enumerate(self.pairs.tolist())}

    @classmethod
    def of(
        cls,
        preds: PairPredictions,
        pairs: Tensor,
        n_frames: int,
        static: Tensor | None,
        known_focals: Tensor | None,
        known_pp: Tensor | None,
    ) -> _Edges:
        """Raw confidences as weights (only static pixels' with ``static``), the image centre as the
        principal point unless known."""
        w1, w2 = preds.conf_1, preds.conf_2
        if static is not None:
            w1, w2 = _static_weights(w1, static[pairs[:, 0]]), _static_weights(w2, static[pairs[:, 1]])
        _, height, width, _ = preds.pts3d_1.shape
        centre = torch.tensor((width / 2, height / 2), dtype=preds.pts3d_1.dtype)
        pp = known_pp if known_pp is not None else centre.expand(n_frames, 2)
        return cls(preds.pts3d_1, preds.pts3d_2, w1, w2, pairs, pp, known_focals)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.pts1.shape[1], self.pts1.shape[2]

    def focal(self, e: int) -> float:
        """The focal of edge ``e``'s view-1 frame: known, or by Weiszfeld on the edge's view-1 points."""
        if self.known_focals is not None:
            return float(self.known_focals[self.pairs[e, 0]])
        focal = float(estimate_focal_weiszfeld(self.pts1[e][None], self.pp[self.pairs[e, 0]])[0])
        if not math.isfinite(focal) or focal <= 0:
            # deviation: the reference carries a zero focal into log() and optimises NaNs; points that
            # fit no camera in front of them (random weights) start from a 2·atan(1/2) ≈ 53° field of view
            focal = float(max(self.size))
        return focal


@dataclass
class _Tree:
    """Per frame, what the tree has found so far (None until found): world pointmap, pose, focal."""

    world: list[Tensor | None]  # (H, W, 3)
    poses: list[Tensor | None]  # (4, 4) camera-to-world
    focals: list[float | None]
    placed: set[int]  # frames whose world pointmap is known

    @classmethod
    def empty(cls, n_frames: int) -> _Tree:
        return cls([None] * n_frames, [None] * n_frames, [None] * n_frames, set())


def _static_weights(conf: Tensor, static: Tensor) -> Tensor:
    """Registration weights restricted to static pixels, except for maps with no static pixel at all,
    which keep all of theirs (a registration needs some weight)."""
    weights = conf * static
    empty = weights.flatten(1).sum(1) == 0
    return torch.where(empty[:, None, None], conf, weights)


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


def _grow_tree(
    edges: _Edges, todo: list[tuple[float, int, int]], n_frames: int, stale_edge_focal: bool
) -> _Tree:
    """Place the frames along the tree's edges (``todo``, consumed from its strongest end): the strongest
    edge's view-1 camera is the world; an edge with neither frame placed yet goes to the back of the queue.
    Each edge's view-1 frame gets its pose and focal on the way."""
    tree = _Tree.empty(n_frames)
    _, i, j = todo.pop()
    last = edges.index[(i, j)]
    tree.world[i], tree.world[j] = edges.pts1[last].clone(), edges.pts2[last].clone()
    tree.poses[i] = torch.eye(4)
    tree.focals[i] = edges.focal(last)
    tree.placed = {i, j}
    # the stale edge is the reference's quirk for *estimated* focals; a known focal is the node's own
    stale = stale_edge_focal and edges.known_focals is None
    deferred = 0
    while todo:
        score, i, j = todo.pop()
        e = edges.index[(i, j)]
        if tree.focals[i] is None:
            tree.focals[i] = edges.focal(last if stale else e)
        if i not in tree.placed and j not in tree.placed:
            todo.insert(0, (score, i, j))
            deferred += 1
            if deferred > len(todo):
                raise GeometryError(
                    "the pair graph is not connected: some frames share no pair with the others"
                )
            continue
        rot, t = _carry_along(edges, tree, e, i, j)
        if tree.poses[i] is None:
            tree.poses[i] = make_pose(rot, t)
        last = e
        deferred = 0
    return tree


def _carry_along(edges: _Edges, tree: _Tree, e: int, i: int, j: int) -> tuple[Tensor, Tensor]:
    """Register edge ``e``'s placed side onto the world, then carry its other side along. Returns the
    rotation and translation of frame i's camera in the world: both views' points are in that camera."""
    if i in tree.placed:
        source, target, weight, other, new = edges.pts1[e], tree.world[i], edges.w1[e], edges.pts2[e], j
    else:
        source, target, weight, other, new = edges.pts2[e], tree.world[j], edges.w2[e], edges.pts1[e], i
    s, rot, t = weighted_procrustes(source.reshape(-1, 3), target.reshape(-1, 3), weight.flatten())
    tree.world[new] = (s * other.reshape(-1, 3) @ rot.T + t).view(*edges.size, 3)
    tree.placed.add(new)
    return rot, t


def _focals_off_tree(edges: _Edges, scores: Tensor, focals: list[float | None]) -> None:
    """Frames the tree gave no focal (never a view 1 along it): their best-scoring pair as view 1."""
    for e in scores.argsort(descending=True).tolist():
        if focals[edges.pairs[e, 0]] is None:
            focals[edges.pairs[e, 0]] = edges.focal(e)


def _poses_by_pnp(
    edges: _Edges, tree: _Tree, im_conf: Tensor, static: Tensor | None, config: AlignConfig
) -> None:
    """Frames the tree gave no pose: RANSAC PnP of their world points on their confident (static) pixels,
    which also sets their focal; the identity where PnP fails."""
    for n in range(len(tree.poses)):
        if tree.poses[n] is not None:
            continue
        valid = im_conf[n] > config.min_conf_thr
        if static is not None:
            valid &= static[n]
        centre = (float(edges.pp[n, 0]), float(edges.pp[n, 1]))
        found = solve_pnp(
            tree.world[n], valid, tree.focals[n], centre, config.pnp_iterations, config.pnp_reproj_px
        )
        if found is not None:
            tree.focals[n], tree.poses[n] = found
        else:
            tree.poses[n] = torch.eye(4)


def _onto_known_poses(cam2world: Tensor, world_pts: Tensor, known_poses: Tensor) -> tuple[Tensor, Tensor]:
    """The tree's world moved by the Sim(3) that best takes its cameras onto the known ones, which then
    replace them."""
    trf = sim3_between_cameras(cam2world, known_poses)
    world_pts = transform_points(trf[None].expand(len(world_pts), 4, 4), world_pts)
    return known_poses, world_pts


def _pair_similarities(
    edges: _Edges, cam2world: Tensor, world_pts: Tensor, base_scale: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Every pair's similarity into the world, in one batched registration → (pair poses, cam2world, world
    points). With ``base_scale``, the world is rescaled so that the mean log pair scale is log(base_scale),
    which the optimiser pins it to."""
    s, rot, t = weighted_procrustes(
        edges.pts1.flatten(1, 2), world_pts[edges.pairs[:, 0]].flatten(1, 2), edges.w1.flatten(1)
    )
    factor = 1.0
    if base_scale is not None:
        factor = float(torch.exp(math.log(base_scale) - s.log().mean()))
        cam2world = cam2world.clone()
        cam2world[:, :3, 3] *= factor
        world_pts = world_pts * factor
    return make_pose(rot, t * factor, s * factor), cam2world, world_pts


def random_state(
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
