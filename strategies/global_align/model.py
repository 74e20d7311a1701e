"""The model of the global alignment: its parameters, their differentiable geometric views and the loss
(:class:`GlobalAligner`), with the fused 3D term (:class:`_PairResidual`) that keeps the loss cheap. The
parametrisation and the loss are described in the package's docstring."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from easi3r.errors import GeometryError
from easi3r.geometry import (
    invert_pose,
    make_pose,
    pixel_grid,
    quat_to_rotmat,
    rotmat_to_quat,
    signed_expm1,
    signed_log1p,
)
from easi3r.types import PairPredictions

from .config import AlignConfig
from .flow_loss import FlowLoss, PairFlows
from .state import AlignState

__all__ = ["GlobalAligner"]


class GlobalAligner(nn.Module):
    """Parameters and loss of the global alignment; the loss is vectorised over all frames and pairs.

    ``extra_loss`` terms receive this module: :meth:`cam2world`, :meth:`focals`, :meth:`intrinsics`,
    :meth:`depth`, :meth:`world_points`, :meth:`pair_poses` are differentiable, and ``iteration`` tells the
    current step (for terms that start late). MonST3R's flow prior is built in: with
    ``config.flow_loss_weight > 0`` and ``flows``, each step's unweighted flow loss is left in
    ``flow_loss_value`` (NaN before it starts; :mod:`.flow_loss`).
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
        flows: PairFlows | None = None,
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
        self.flow_loss: FlowLoss | None = None
        self.flow_loss_value = math.nan
        if config.flow_loss_weight > 0:
            if flows is None:
                raise GeometryError(
                    "align.flow_loss_weight > 0 needs the optical flow of the pairs, both ways"
                )
            self.flow_loss = FlowLoss(flows, pairs, self.size, masks, config.pxl_thre)
            self.flow_loss_start = config.iters * config.flow_loss_start_epoch  # a float, as the reference's

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
        self.flow_loss_value = math.nan
        if self.flow_loss is not None and self.iteration >= self.flow_loss_start:
            flow = self.flow_loss(self.cam2world(), self.intrinsics(), self.depth())
            self.flow_loss_value = float(flow.detach())
            threshold = self.config.flow_loss_thre
            # the reference drops the term for a step whose flow loss exceeds the threshold (flow_loss.py)
            if not (threshold > 0 and self.flow_loss_value > threshold):
                loss = loss + self.config.flow_loss_weight * flow
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
    """(B, 4, 4) transforms (scale allowed in the 3×3 block) applied to (B, N, 3) points, in one call."""
    return torch.baddbmm(trf[:, None, :3, 3], pts, trf[:, :3, :3].transpose(1, 2))
