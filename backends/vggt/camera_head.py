"""VGGT's camera head: the last layer's camera tokens → one 9-number pose encoding per frame.

The camera tokens of all frames form a short sequence that a small transformer trunk refines
iteratively. Each iteration embeds the current estimate (a learned "empty" pose the first time) and
turns it into a shift, a scale and a gate that modulate the normalised camera tokens (adaLN, as in DiT);
the trunk attends across the frames and an MLP predicts an update of the estimate. The result of each
iteration is activated as ``absT_quaR_FoV``: translation and quaternion as they are, the two fields of
view through a ReLU (see :mod:`.pose` for their meaning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r.backends.vggt.layers import Block, Mlp

POSE_DIM = 9  # translation (3), quaternion xyzw (4), field of view (height, width)


class CameraHead(nn.Module):
    """Iterative camera regression from the camera tokens; names follow the official ``camera_head``."""

    def __init__(
        self, dim: int, *, trunk_depth: int, num_heads: int, mlp_ratio: float, init_values: float
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            *(Block(dim, num_heads, mlp_ratio=mlp_ratio, init_values=init_values) for _ in range(trunk_depth))
        )
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, POSE_DIM)

    def forward(self, tokens: Tensor, iterations: int = 4) -> list[Tensor]:
        """``tokens (B, S, P, C)`` of the last aggregator layer → the activated encoding ``(B, S, 9)`` of
        each iteration (the last is the prediction)."""
        camera = self.token_norm(tokens[:, :, 0])
        normalised = self.adaln_norm(camera)
        estimate: Tensor | None = None
        encodings = []
        for _ in range(iterations):
            previous = self.empty_pose_tokens.expand(*camera.shape[:2], -1) if estimate is None else estimate
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(previous)).chunk(3, dim=-1)
            x = camera + gate * (normalised * (1 + scale) + shift)
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            estimate = delta if estimate is None else estimate + delta
            encodings.append(activate_pose(estimate))
        return encodings


def activate_pose(encoding: Tensor) -> Tensor:
    """The official activations of ``absT_quaR_FoV``: translation and quaternion linear, fields of view ReLU."""
    return torch.cat((encoding[..., :7], F.relu(encoding[..., 7:])), dim=-1)
