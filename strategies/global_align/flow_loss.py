"""MonST3R's optical-flow prior for the global alignment, as the Easi3R reference computes it.

Read in the Easi3R authors' reference code at commit 146a77d (its aligner is MonST3R's; pointers below are
``file:line`` there, see shared reference-notes.md). Its final alignment adds a term that asks
the camera motion and the depth being optimised to explain an optical-flow network's flow on the static
pixels:

* **which pairs** — every ordered pair ``(i, j)`` of the alignment, in both directions: flow ``i → j`` and
  ``j → i`` (``dust3r/cloud_opt/optimizer.py:140-160``). The reference runs the network twice per pair (12
  pairs a batch), so a symmetrised graph computes every directed flow twice; :func:`compute_pair_flows`
  computes each directed frame pair once (same numbers, half the network calls and memory);
* **the network** — SEA-RAFT, checkpoint ``Tartan-C-T-TSKH-spring540x960-M.pth``, 20 iterations, on the RGB
  frames ×255 (``optimizer.py:132,155-160``); here any registered flow model (``align.flow_model``) on the
  frames in [-1, 1] (:class:`easi3r.contracts.FlowModel`), computed once per alignment, batched;
* **the ego-flow** — from the current depth, poses and intrinsics: relative pose ``R = R_tᵀR_s``,
  ``t = R_tᵀ(T_s − T_t)``, target ``K_t R K_s⁻¹ p + disp·K_t t`` with ``disp = 1/(depth + 1e-6)``, divided
  by ``(z + 1e-6)``, minus ``p`` (``optimizer.py:607-618``, ``dust3r/utils/goem_opt.py:260-273``);
* **the loss of one direction** — smooth-L1 (β = 1) between ego-flow and network flow, both multiplied by
  the static mask of the *source* frame (``¬dynamic``), keeping only the entries (x and y separately) whose
  value is below ``pxl_thre`` (50) on static pixels, summed over all pairs and divided by the number of kept
  entries + 1e-6 (``optimizer.py:22-28,619-623``); the flow loss is the sum of the two directions
  (``optimizer.py:624``);
* **when** — from step ``iters · flow_loss_start_epoch`` on (``step >= …`` in floats, ``optimizer.py:606``;
  the reference takes the product from its ``num_total_iter`` argument, which its scripts set to the number
  of iterations, as here); in a step whose flow loss (before weighting) exceeds ``flow_loss_thre`` the term
  is dropped for that step, unless ``flow_loss_thre`` is 0 (``optimizer.py:626-628``);
* **the total** — ``3D term + temporal_smoothing_weight · smoothness + flow_loss_weight · flow loss``
  (``optimizer.py:640-641``).

Quirks kept, so that the numbers match:

* the forward-backward consistency masks (``OccMask(th=3)``, ``optimizer.py:131,168-169``) are computed by
  the reference but **never used** by the loss; there is no flow confidence either. Every static pixel
  enters, occluded or not, and so nothing here computes them;
* the dynamic masks are the only mask; without any (``passes.masks: false``) every pixel counts as static
  (the reference would crash on ``torch.stack(None)``, or use MonST3R's own flow masks, which are not built
  here);
* the flag set when a step's loss exceeds the threshold (``flow_loss_flag``, ``optimizer.py:628``) is
  never read: each step decides again;
* ``flow_loss_fn='mse'`` is unusable in the reference (assigned to ``self.low_loss_fn``,
  ``optimizer.py:105``), so only smooth-L1 exists here;
* the non-batchified optimiser (``--not_batchify``, ``optimizer.py:686-742``) normalises per pair and divides
  by the number of pairs instead; the released scripts run the batchified one, which is what this is.

Defaults of the recipe keys (``align.flow_loss_*``, ``align.pxl_thre``) are the reference evaluation's
(``dust3r/training.py:107-114``: weight 0.01, start 0.1, threshold 20, per-pixel 50) except the weight,
which is 0 here (the paper presents Easi3R without a flow prior); ``easi3r_dust3r_demo`` sets the demo's
(``demo.py:524-526``: weight 0.01, start 0.1, threshold 25).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r.contracts import FlowModel
from easi3r.errors import GeometryError, PluginError
from easi3r.geometry import pixel_grid

__all__ = ["FLOW_BATCH", "FlowLoss", "PairFlows", "compute_pair_flows", "directed_pairs"]

logger = logging.getLogger(__name__)

FLOW_BATCH = 12  # frame pairs per flow-model call (the reference's chunk size, optimizer.py:137)


@dataclass
class PairFlows:
    """Optical flow between frames: ``flows[f]`` goes from frame ``frame_pairs[f, 0]`` to
    ``frame_pairs[f, 1]``, in pixels ``(dx, dy)`` at the alignment's resolution."""

    flows: Tensor  # (F, 2, H, W) float32
    frame_pairs: Tensor  # (F, 2) int64


def directed_pairs(pairs: Tensor) -> Tensor:
    """(D, 2) every directed frame pair the flow loss needs: the pairs, then the reverses the pairs lack."""
    listed = list(dict.fromkeys(map(tuple, pairs.tolist())))
    present = set(listed)
    reverses = dict.fromkeys((j, i) for i, j in listed if (j, i) not in present)
    return torch.tensor(listed + list(reverses), dtype=torch.int64).view(-1, 2)


@torch.no_grad()
def compute_pair_flows(
    model: FlowModel, images: Tensor, pairs: Tensor, batch_size: int = FLOW_BATCH, name: str = "flow model"
) -> PairFlows:
    """The flow of every directed frame pair of ``pairs`` (:func:`directed_pairs`), ``batch_size`` pairs per
    call of ``model`` on ``images`` (T, 3, H, W) in [-1, 1]; float32 on the images' device. A model that
    returns the wrong shape or non-finite values is a one-line PluginError naming it."""
    wanted = directed_pairs(torch.as_tensor(pairs, dtype=torch.int64))
    height, width = images.shape[-2:]
    start = time.perf_counter()
    logger.info("align: optical flow of %d frame pairs (%s): started", len(wanted), name)
    flows = []
    for chunk in wanted.split(batch_size):
        flow = model(images[chunk[:, 0]], images[chunk[:, 1]])
        if not isinstance(flow, Tensor) or tuple(flow.shape) != (len(chunk), 2, height, width):
            got = tuple(flow.shape) if isinstance(flow, Tensor) else type(flow).__name__
            raise PluginError(
                f"{name} returned {got} for {len(chunk)} pairs of {height}×{width} frames; "
                f"a flow model returns (B, 2, H, W)"
            )
        if not bool(torch.isfinite(flow).all()):
            raise PluginError(f"{name} returned NaN or infinite flow")
        flows.append(flow.float().to(images.device))
    logger.info("align: optical flow: done in %.1f s", time.perf_counter() - start)
    return PairFlows(torch.cat(flows), wanted)


class FlowLoss(nn.Module):
    """The unweighted flow loss of the current cameras and depths (module docstring), for one alignment.

    Each directed frame pair ``s → t`` is evaluated once; ``count_fwd`` / ``count_bwd`` say how many pairs use
    it as their forward (``i → j``) or backward (``j → i``) direction, so that the two sums and their
    normalisers are the reference's, which evaluates every pair's two directions separately.
    """

    def __init__(
        self, flows: PairFlows, pairs: Tensor, size: tuple[int, int], masks: Tensor | None, pxl_thre: float
    ) -> None:
        super().__init__()
        pairs = torch.as_tensor(pairs, dtype=torch.int64)
        wanted = directed_pairs(pairs)
        height, width = size
        n_flows = len(flows.frame_pairs)
        expected = (n_flows, 2, height, width)
        if tuple(flows.flows.shape) != expected or tuple(flows.frame_pairs.shape) != (n_flows, 2):
            raise GeometryError(
                f"flow fields must be ({n_flows}, 2, {height}, {width}) for {n_flows} frame pairs, "
                f"got {tuple(flows.flows.shape)}"
            )
        self.pxl_thre = pxl_thre
        rows = {tuple(p): r for r, p in enumerate(flows.frame_pairs.tolist())}
        missing = [tuple(d) for d in wanted.tolist() if tuple(d) not in rows]
        if missing:
            raise GeometryError(
                f"the flow fields lack the flow from frame {missing[0][0]} to {missing[0][1]}"
            )
        slot = {tuple(d): k for k, d in enumerate(wanted.tolist())}
        count_fwd = torch.zeros(len(wanted))
        count_bwd = torch.zeros(len(wanted))
        for i, j in pairs.tolist():
            count_fwd[slot[(i, j)]] += 1
            count_bwd[slot[(j, i)]] += 1
        index = torch.tensor([rows[tuple(d)] for d in wanted.tolist()], dtype=torch.int64)
        flow = flows.flows.index_select(0, index).float().flatten(2)  # (D, 2, H·W)
        self.register_buffer("src", wanted[:, 0].clone())
        self.register_buffer("tgt", wanted[:, 1].clone())
        self.register_buffer("count_fwd", count_fwd)
        self.register_buffer("count_bwd", count_bwd)
        # the static pixels of each pair's source frame (T, H·W); the network flow is masked once, here
        self.register_buffer("static", None if masks is None else (~masks).flatten(1).float())
        self.register_buffer("flow", flow if masks is None else flow * self.static[self.src][:, None])
        grid = pixel_grid(height, width).view(-1, 2)
        # homogeneous pixel coordinates (3, H·W)
        self.register_buffer("pix", torch.cat((grid, torch.ones(len(grid), 1)), -1).T.contiguous())

    def forward(self, cam2world: Tensor, intrinsics: Tensor, depth: Tensor) -> Tensor:
        """``cam2world (T, 4, 4)``, ``intrinsics (T, 3, 3)``, ``depth (T, H, W)`` → the flow loss (scalar)."""
        src, tgt = self.src, self.tgt
        rot, trans = cam2world[:, :3, :3], cam2world[:, :3, 3:]
        rot_t = rot[tgt].transpose(1, 2)
        rel_rot = rot_t @ rot[src]
        rel_t = rot_t @ (trans[src] - trans[tgt])
        k_t = intrinsics[tgt]
        homography = k_t @ (rel_rot @ torch.linalg.inv(intrinsics)[src])
        disp = 1 / (depth.flatten(1)[src] + 1e-6)
        target = homography @ self.pix + disp[:, None] * (k_t @ rel_t)
        ego = (target / (target[:, 2:] + 1e-6) - self.pix)[:, :2]  # (D, 2, H·W)
        if self.static is None:
            per_pixel = F.smooth_l1_loss(ego, self.flow, reduction="none", beta=1.0)
            kept = torch.ones_like(per_pixel)
        else:
            static = self.static[src][:, None]
            per_pixel = F.smooth_l1_loss(ego * static, self.flow, reduction="none", beta=1.0)
            kept = static.expand_as(per_pixel)
        if self.pxl_thre > 0:
            kept = (per_pixel < self.pxl_thre) * kept
        total = (per_pixel * kept).sum((1, 2))  # (D,)
        n_kept = kept.sum((1, 2))
        forward = (self.count_fwd * total).sum() / ((self.count_fwd * n_kept).sum() + 1e-6)
        backward = (self.count_bwd * total).sum() / ((self.count_bwd * n_kept).sum() + 1e-6)
        return forward + backward
