"""DINOv2 ViT with register tokens (Oquab et al. 2023; Darcet et al. 2024), VGGT's per-frame patch embedding.

Each frame, ImageNet-normalised, is cut into ``patch × patch`` patches, projected, prefixed with a class
token (which carries position 0 of the learned position table) and register tokens (no position),
and run through pre-norm blocks without RoPE; the final LayerNorm's patch outputs are VGGT's patch
tokens. The learned position table is for a square ``img_size`` grid and is resampled (bicubic,
antialiased) to other grids, exactly as the official model does.

Parameter names follow the official checkpoint under ``aggregator.patch_embed.``: ``cls_token``,
``pos_embed``, ``register_tokens``, ``mask_token`` (only used in training, kept so the state dict
matches), ``patch_embed.proj``, ``blocks.N``, ``norm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r.backends.vggt.layers import Block

LAYER_NORM_EPS = 1e-6  # DINOv2's LayerNorms (the aggregator's use torch's default 1e-5)


class PatchProjection(nn.Module):
    """Non-overlapping ``patch × patch`` convolution: ``(T, 3, H, W)`` → ``(T, H/p · W/p, C)``, row-major."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2(nn.Module):
    """The ViT encoder; :meth:`forward` returns the normalised patch tokens only."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        num_register_tokens: int,
        init_values: float,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size  # side of the square grid the position table was learned on
        self.num_register_tokens = num_register_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchProjection(patch_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, norm_eps=LAYER_NORM_EPS)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def position_table(self, rows: int, cols: int) -> Tensor:
        """``(1, 1 + rows · cols, C)``: the class token's position then the patch grid's, resampled."""
        if rows == cols == self.grid:
            return self.pos_embed
        table = self.pos_embed.float()
        dim = table.shape[-1]
        grid = table[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
        patches = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat((table[:, :1], patches), dim=1).to(self.pos_embed.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """``images (T, 3, H, W)`` ImageNet-normalised → patch tokens ``(T, H/p · W/p, C)``."""
        t, _, height, width = images.shape
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(t, -1, -1), x), dim=1)
        x = x + self.position_table(height // self.patch_size, width // self.patch_size)
        x = torch.cat((x[:, :1], self.register_tokens.expand(t, -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        # the final norm is per token: only the patch tokens' is computed
        return self.norm(x[:, 1 + self.num_register_tokens :])
