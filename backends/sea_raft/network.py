"""The SEA-RAFT network: two ResNet encoders, an all-pairs correlation pyramid, a ConvNeXt update operator.

What it computes, for two images at a resolution divisible by 8 (all features live at 1/8 of it):

1. **Context**: one ResNet reads both images stacked on channels (6 inputs); a 3×3 convolution splits its
   output into the initial recurrent state ``net`` and the context features.
2. **Direct initial flow**: the flow head applied to that first state already regresses a flow (and the
   mixture-of-Laplace parameters); iterations refine it instead of starting from zero (the paper's
   "rigid-flow pre-training" makes this initial estimate good).
3. **Correlation pyramid**: a second ResNet (shared by both images) gives matching features; their dot
   products over all pixel pairs, divided by √channels, are pooled over the second image's pixels three
   times by 2×2 averages (4 levels).
4. **Iterations**: at the current flow, a (2r+1)² window is read at each level by bilinear sampling; a
   motion encoder mixes it with the flow; ConvNeXt blocks update the state from
   ``[state, context, motion]``; the flow head adds a flow increment and gives new Laplace parameters.
5. **Convex upsampling**: a full-resolution value is a softmax-weighted mix of the 3×3 neighbourhood of
   its 1/8 cell, with weights predicted from the final state.

Module and parameter names follow the official ``RAFT`` class, so its checkpoints load without renaming
(including its aliases: a residual block's shortcut norm is both ``bn3`` and ``downsample.1``).
Inference only: batch norm uses its running statistics, nothing here is trained.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r.backends.sea_raft.presets import SeaRaftConfig

STRIDE = 8  # features are at 1/8 of the input resolution
_UPSAMPLE_TAPS = 9  # convex upsampling mixes the 3×3 neighbourhood of a cell
_FLOW_HEAD_OUT = 6  # flow (2) + mixture weights (2) + log scales of the two Laplace components (2)
# the official code scales the predicted upsampling logits by 1/4 (a fixed temperature)
_UPSAMPLE_LOGIT_SCALE = 0.25


class FlowOutput(NamedTuple):
    """Full-resolution outputs of :class:`SeaRaft`."""

    flow: Tensor  # (B, 2, H, W) displacement from image 1 to image 2 in pixels, (dx, dy)
    info: Tensor  # (B, 4, H, W) mixture-of-Laplace logits: 2 component weights, then 2 raw log scales


class ResidualBlock(nn.Module):
    """Two 3×3 convolution–batch-norm–ReLU layers plus a shortcut (a strided 1×1 convolution and batch
    norm when the resolution or width changes), ReLU after the sum."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_dim != out_dim:
            # registered under both names, as in the official checkpoints, which store it twice
            self.bn3 = nn.BatchNorm2d(out_dim)
            self.downsample = nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, stride=stride), self.bn3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class ResNetEncoder(nn.Module):
    """A ResNet-18/34 trunk cut after its third stage (1/8 resolution) and a 1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, config: SeaRaftConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, config.initial_dim, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(config.initial_dim)
        widths = (config.initial_dim, *config.block_dims)
        for stage, (depth, stride) in enumerate(zip(config.stage_depths, (1, 2, 2))):
            blocks = [ResidualBlock(widths[stage], widths[stage + 1], stride)]
            blocks += [ResidualBlock(widths[stage + 1], widths[stage + 1], 1) for _ in range(depth - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.final_conv = nn.Conv2d(config.block_dims[-1], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.final_conv(x)


class MotionEncoder(nn.Module):
    """Correlation window and current flow → ``dim`` motion features (the last two are the flow itself)."""

    def __init__(self, corr_channels: int, dim: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 2 * dim, 1)
        self.convc2 = nn.Conv2d(2 * dim, dim + dim // 2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, dim, 7, padding=3)
        self.convf2 = nn.Conv2d(dim, dim // 2, 3, padding=1)
        self.conv = nn.Conv2d(2 * dim, dim - 2, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], dim=1))), flow], dim=1)


class ConvNeXtBlock(nn.Module):
    """7×7 depthwise convolution, channel LayerNorm, a 4× MLP with GELU and a learnt per-channel scale,
    added to the input; then a 1×1 convolution to ``out_dim`` (the block narrows ``[state, inputs]`` to
    the new state)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # layer scale, ConvNeXt's initial value
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * out_dim)
        self.pwconv2 = nn.Linear(4 * out_dim, dim)
        self.final = nn.Conv2d(dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for the norm and the linear layers
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return self.final(x + y.permute(0, 3, 1, 2))


class UpdateBlock(nn.Module):
    """One refinement step of the recurrent state: motion features, then the ConvNeXt blocks."""

    def __init__(self, config: SeaRaftConfig) -> None:
        super().__init__()
        dim = config.dim
        self.encoder = MotionEncoder(config.corr_channels, dim)
        self.refine = nn.ModuleList(ConvNeXtBlock(3 * dim, dim) for _ in range(config.num_blocks))

    def forward(self, net: Tensor, context: Tensor, corr: Tensor, flow: Tensor) -> Tensor:
        inputs = torch.cat([context, self.encoder(flow, corr)], dim=1)
        for block in self.refine:
            net = block(torch.cat([net, inputs], dim=1))
        return net


def correlation_pyramid(fmap1: Tensor, fmap2: Tensor, levels: int) -> list[Tensor]:
    """All-pairs correlation of two ``(B, C, h, w)`` feature maps, pooled over the second map.

    Level ``l`` is ``(B·h·w, 1, h_l, w_l)``, ``h_l = ⌊h / 2^l⌋``: for each pixel of map 1, its dot products
    with map 2 divided by √C, averaged over 2×2 blocks ``l`` times. Pooling the volume equals correlating
    with a pooled map 2 (both are linear), and costs a C-th of the multiplications.
    """
    batch, channels, h, w = fmap1.shape
    corr = torch.bmm(fmap1.flatten(2).transpose(1, 2), fmap2.flatten(2)) / math.sqrt(channels)
    pyramid = [corr.view(batch * h * w, 1, h, w)]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    return pyramid


def lookup(pyramid: list[Tensor], coords: Tensor, radius: int) -> Tensor:
    """Bilinear reads of a ``(2r+1)²`` window around ``coords`` at every level → ``(B, levels·(2r+1)², h, w)``.

    ``coords (B, 2, h, w)`` are (x, y) positions in map 2 at level 0, scaled by ``2^-l`` for level ``l``;
    the window keeps its pixel spacing at every level. Outside the map reads zero. Channel
    ``a·(2r+1) + b`` of a level holds offset ``(x + a - r, y + b - r)``: x varies along the *first* index,
    the order the official weights were trained with.
    """
    batch, _, h, w = coords.shape
    side = 2 * radius + 1
    steps = torch.arange(-radius, radius + 1, device=coords.device, dtype=coords.dtype)
    window = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)  # [a, b] = (a - r, b - r)
    centres = coords.permute(0, 2, 3, 1).reshape(batch * h * w, 1, 1, 2)
    reads = []
    for level, corr in enumerate(pyramid):
        points = centres / 2**level + window
        size = torch.tensor(corr.shape[:1:-1], device=coords.device, dtype=coords.dtype)  # (w_l, h_l)
        # grid_sample's [-1, 1] with align_corners=False puts pixel centre x at (2x + 1) / w - 1
        grid = (2 * points + 1) / size - 1
        sampled = F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        reads.append(sampled.view(batch, h, w, side * side))
    return torch.cat(reads, dim=-1).permute(0, 3, 1, 2)


def convex_upsample(x: Tensor, logits: Tensor) -> Tensor:
    """``x (B, C, h, w)`` → ``(B, C, 8h, 8w)``: each of the 8×8 sub-pixels of a cell is a convex combination
    (softmax of ``logits (B, 9·64, h, w)``) of the cell's 3×3 neighbourhood, zero-padded at the border."""
    batch, channels, h, w = x.shape
    weights = logits.view(batch, _UPSAMPLE_TAPS, STRIDE, STRIDE, h, w).softmax(dim=1)
    neighbours = F.unfold(x, 3, padding=1).view(batch, channels, _UPSAMPLE_TAPS, h, w)
    up = torch.einsum("bkijhw,bckhw->bchiwj", weights, neighbours)
    return up.reshape(batch, channels, STRIDE * h, STRIDE * w)


class SeaRaft(nn.Module):
    """SEA-RAFT for inference: ``forward(image1, image2, iters)`` → :class:`FlowOutput`."""

    def __init__(self, config: SeaRaftConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.cnet = ResNetEncoder(6, 2 * dim, config)
        self.init_conv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1)
        self.upsample_weight = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * dim, _UPSAMPLE_TAPS * STRIDE * STRIDE, 1),
        )
        self.flow_head = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * dim, _FLOW_HEAD_OUT, 3, padding=1)
        )
        self.fnet = ResNetEncoder(3, 2 * dim, config)
        self.update_block = UpdateBlock(config)

    @property
    def min_side(self) -> int:
        """The smallest input side: every pyramid level must keep at least one cell."""
        return STRIDE * 2 ** (self.config.corr_levels - 1)

    def forward(self, image1: Tensor, image2: Tensor, iters: int) -> FlowOutput:
        """Flow from ``image1`` to ``image2``, both ``(B, 3, H, W)`` in [-1, 1] with ``H`` and ``W`` multiples
        of 8 and at least :attr:`min_side`, after ``iters`` refinement steps (0: the direct estimate)."""
        height, width = image1.shape[-2:]
        if (
            image1.shape != image2.shape
            or height % STRIDE
            or width % STRIDE
            or min(height, width) < self.min_side
        ):
            raise ValueError(
                f"SeaRaft needs two images of one shape with sides divisible by {STRIDE} and at least "
                f"{self.min_side}, got {tuple(image1.shape)} and {tuple(image2.shape)}"
            )
        net, context = self.init_conv(self.cnet(torch.cat([image1, image2], dim=1))).chunk(2, dim=1)
        head = self.flow_head(net)
        flow, info = head[:, :2], head[:, 2:]
        if iters > 0:
            # the matching encoder's batch norm uses running statistics: both images go through at once
            fmap1, fmap2 = self.fnet(torch.cat([image1, image2], dim=0)).chunk(2, dim=0)
            pyramid = correlation_pyramid(fmap1, fmap2, self.config.corr_levels)
            h, w = fmap1.shape[-2:]
            ys, xs = torch.meshgrid(
                torch.arange(h, device=flow.device, dtype=flow.dtype),
                torch.arange(w, device=flow.device, dtype=flow.dtype),
                indexing="ij",
            )
            pixels = torch.stack([xs, ys])  # (2, h, w): the (x, y) of every cell of image 1
            for _ in range(iters):
                corr = lookup(pyramid, pixels + flow, self.config.radius)
                net = self.update_block(net, context, corr, flow)
                head = self.flow_head(net)
                flow, info = flow + head[:, :2], head[:, 2:]
        logits = _UPSAMPLE_LOGIT_SCALE * self.upsample_weight(net)
        # a displacement of one cell is 8 pixels at full resolution
        up = convex_upsample(torch.cat([STRIDE * flow, info], dim=1), logits)
        return FlowOutput(up[:, :2], up[:, 2:])
