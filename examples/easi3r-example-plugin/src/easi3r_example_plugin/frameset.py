"""A tiny frame-set backbone: what a third party writes to bring a VGGT-like network (π³, MapAnything, …).

The network is deliberately small and random (seeded): a patch embedding, then blocks that alternate
attention within each frame and attention across all frames of a window (global attention), a camera token
per frame, a depth head and a camera head. What makes it an easi3r backbone is the class
:class:`TinyFrameSetBackbone` at the bottom:

* ``encode`` embeds every frame once (the features k-means refinement clusters);
* ``decode`` hands :func:`easi3r.frameset.decode_windows` a function that runs one window, calling the
  window's hook ``hook(layer, q, k, v, scale)`` in every global-attention layer with the rotated queries and
  keys of all the window's tokens; the hook captures (patch tokens only) and re-weights;
* the predictions are cameras (camera-to-world, OpenCV axes), intrinsics and depth per frame.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r.frameset import decode_windows
from easi3r.geometry import depth_to_points, make_pose
from easi3r.types import Encoded, FrameSetOutputs, FrameSetPredictions

SPECIAL_TOKENS = 1  # one camera token per frame, before its patch tokens


class Block(nn.Module):
    """Pre-norm attention and MLP; ``hook`` (global blocks) computes the attention itself."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, hook: Any = None, layer: int = 0) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scale = q.shape[-1] ** -0.5
        out = F.scaled_dot_product_attention(q, k, v) if hook is None else hook(layer, q, k, v, scale)
        x = x + self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


class TinyFrameSetNetwork(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 2, patch: int = 8) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.camera_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.frame_blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.global_blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.depth_head = nn.Linear(dim, patch * patch)
        self.camera_head = nn.Linear(dim, 6)  # rotation vector and translation

    def embed(self, images: Tensor) -> Tensor:
        return self.patch_embed(images).flatten(2).transpose(1, 2)  # (T, N, dim)

    def run_window(self, patches: Tensor, hook: Any) -> Tensor:
        """``patches (S, N, dim)`` → tokens ``(S, 1 + N, dim)`` after every frame and global block."""
        frames, _, dim = patches.shape
        x = torch.cat([self.camera_token.expand(frames, -1, -1), patches], dim=1)
        for layer, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            x = frame_block(x)  # each frame alone: a batch of S
            x = global_block(x.reshape(1, -1, dim), hook, layer).reshape(frames, -1, dim)  # all frames
        return x


class TinyFrameSetBackbone:
    """The :class:`easi3r.contracts.FrameSetBackbone` over :class:`TinyFrameSetNetwork`."""

    name = "tiny_frameset"
    kind = "frame_set"

    def __init__(self, seed: int = 0, device: str = "auto", **_core_keys: Any) -> None:
        # checkpoint, precision and batch_size are core recipe keys; random weights ignore them
        torch.manual_seed(seed)
        self.network = TinyFrameSetNetwork().eval()
        self.model = self.network  # what the memory estimate counts
        self.device = "cpu" if device == "auto" else device
        self.patch_size = self.network.patch
        self.global_layers = len(self.network.global_blocks)
        self.global_heads = self.network.global_blocks[0].heads

    @torch.no_grad()
    def encode(self, images: Tensor) -> Encoded:
        height, width = images.shape[-2:]
        grid = (height // self.patch_size, width // self.patch_size)
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        encoded = Encoded(
            tokens=self.network.embed(images.to(self.device)),
            positions=torch.stack([rows.flatten(), cols.flatten()], dim=1),
            grid=grid,
            image_size=(height, width),
        )
        return encoded

    @torch.no_grad()
    def decode(
        self, encoded: Encoded, windows: Tensor, *, capture=None, reweight=None, heads=True, progress=None
    ) -> FrameSetOutputs:
        def forward(start: int, end: int, hook: Any, with_heads: bool) -> FrameSetPredictions | None:
            tokens = self.network.run_window(encoded.tokens[start:end], hook)
            return self._predict(tokens, encoded) if with_heads else None

        return decode_windows(
            encoded,
            windows,
            forward,
            special_tokens=SPECIAL_TOKENS,
            device=self.device,
            capture=capture,
            reweight=reweight,
            heads=heads,
            progress=progress,
        )

    def _predict(self, tokens: Tensor, encoded: Encoded) -> FrameSetPredictions:
        frames = tokens.shape[0]
        (grid_h, grid_w), (height, width) = encoded.grid, encoded.image_size
        patch = self.patch_size
        depth = F.softplus(self.network.depth_head(tokens[:, SPECIAL_TOKENS:])) + 1.0  # (S, N, p²)
        depth = depth.reshape(frames, grid_h, grid_w, patch, patch).permute(0, 1, 3, 2, 4)
        depth = depth.reshape(frames, height, width)
        camera = self.network.camera_head(tokens[:, 0]) * 0.1
        rotation = torch.linalg.matrix_exp(_skew(camera[:, :3]))
        cam2world = make_pose(rotation, camera[:, 3:])
        focal = float(max(height, width))
        intrinsics = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
        intrinsics = intrinsics.expand(frames, 3, 3).clone()
        return FrameSetPredictions(
            cam2world=cam2world,
            intrinsics=intrinsics,
            depth=depth,
            depth_conf=torch.full_like(depth, 2.0),
            pts3d=depth_to_points(depth, intrinsics, cam2world),
            pts3d_conf=torch.full_like(depth, 2.0),
        )


def _skew(w: Tensor) -> Tensor:
    zero = torch.zeros_like(w[:, 0])
    return torch.stack(
        [
            torch.stack([zero, -w[:, 2], w[:, 1]], dim=1),
            torch.stack([w[:, 2], zero, -w[:, 0]], dim=1),
            torch.stack([-w[:, 1], w[:, 0], zero], dim=1),
        ],
        dim=1,
    )
