"""VGGT's aggregator: alternating frame-wise and global attention over a window of frames.

Every frame's patch tokens (from :class:`~.dinov2.DinoV2`) are prefixed with one camera token and
``num_register_tokens`` register tokens, learned twice: one set for the first frame of the window (the
reference frame, whose camera defines the world) and one for all other frames. Then ``depth`` times: a
*frame* block attends within each frame (tokens ``(S, P, C)``), a *global* block attends across all the
window's tokens (``(1, S·P, C)``). Both use QK-norm and a 2D RoPE on the patch positions; the special
tokens sit at position (0, 0) and the patches at (row + 1, column + 1), so a rotation never mixes them up.

Layer ``i``'s output is the frame block's and the global block's tokens side by side, ``(1, S, P, 2C)``;
the heads read a few of those layers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import Tensor, nn

from easi3r.backends.croco import RoPE2D
from easi3r.backends.vggt.dinov2 import DinoV2
from easi3r.backends.vggt.layers import Block

# ImageNet statistics, which DINOv2 was trained with; VGGT takes images in [0, 1] and applies them itself
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (layer, q, k, v, scale) -> attention output: what a global block asks a caller-supplied hook for
GlobalAttentionHook = Callable[[int, Tensor, Tensor, Tensor, float], Tensor]


class Aggregator(nn.Module):
    """Patch embedding plus the alternating-attention trunk; the two are separate steps (:meth:`embed`
    works frame by frame, :meth:`forward` on a window) so that frames are embedded once however many
    windows they take part in."""

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
        dino_depth: int,
        dino_init_values: float,
        rope_freq: float,
        qk_norm: bool,
        init_values: float,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.patch_start_idx = 1 + num_register_tokens  # camera token, registers, then the patches
        # [:, 0] for the window's first frame, [:, 1] for every other frame
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, dim))
        self.patch_embed = DinoV2(
            img_size=img_size,
            patch_size=patch_size,
            dim=dim,
            depth=dino_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_register_tokens=num_register_tokens,
            init_values=dino_init_values,
        )
        rope = RoPE2D(rope_freq)
        self.frame_blocks = nn.ModuleList(
            self._block(dim, num_heads, mlp_ratio, init_values, qk_norm, rope) for _ in range(depth)
        )
        self.global_blocks = nn.ModuleList(
            self._block(dim, num_heads, mlp_ratio, init_values, qk_norm, rope) for _ in range(depth)
        )

    @staticmethod
    def _block(
        dim: int, heads: int, mlp_ratio: float, init_values: float, qk_norm: bool, rope: RoPE2D
    ) -> Block:
        return Block(dim, heads, mlp_ratio=mlp_ratio, init_values=init_values, qk_norm=qk_norm, rope=rope)

    def embed(self, images: Tensor) -> Tensor:
        """``images (T, 3, H, W)`` in [0, 1], sides multiples of the patch size → patch tokens ``(T, N, C)``."""
        height, width = images.shape[-2:]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (T, 3, H, W), got {tuple(images.shape)}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        # float32 constants like the official buffers; not buffers here, so that a network built on the
        # meta device and given a checkpoint's tensors (load_state_dict(assign=True)) has nothing left unset
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return self.patch_embed((images - mean) / std)

    def special_tokens(self, frames: int) -> Tensor:
        """``(S, 1 + registers, C)``: the first frame's camera and register tokens, then the others'."""
        tokens = torch.cat((self.camera_token, self.register_token), dim=2)[0]  # (2, 1 + R, C)
        return torch.cat((tokens[:1], tokens[1:].expand(frames - 1, -1, -1)), dim=0)

    def positions(self, rows: int, cols: int, device: torch.device) -> Tensor:
        """``(P, 2)`` integer (row, column) of one frame's tokens: (0, 0) for the special tokens, then the
        patches row-major, shifted by one."""
        grid = torch.cartesian_prod(torch.arange(rows, device=device), torch.arange(cols, device=device)) + 1
        return torch.cat((grid.new_zeros(self.patch_start_idx, 2), grid), dim=0)

    def forward(
        self,
        patch_tokens: Tensor,
        grid: tuple[int, int],
        attention_hook: GlobalAttentionHook | None = None,
        keep: Collection[int] | None = None,
    ) -> list[Tensor | None]:
        """Run one window: ``patch_tokens (S, N, C)`` of its frames, ``grid`` = (rows, cols) of patches.

        Returns ``depth`` entries, entry ``i`` the layer-``i`` tokens ``(1, S, P, 2C)`` if ``i`` is in
        ``keep`` (None keeps all) and None otherwise. ``attention_hook(i, q, k, v, scale)``, if given,
        computes the attention of global block ``i`` (q and k after QK-norm and RoPE, all
        ``(1, heads, S·P, head_dim)``); frame blocks never call it.
        """
        frames, count, dim = patch_tokens.shape
        rows, cols = grid
        if rows * cols != count:
            raise ValueError(f"{count} patch tokens do not form a {rows}x{cols} grid")
        tokens = torch.cat((self.special_tokens(frames).to(patch_tokens.dtype), patch_tokens), dim=1)
        per_frame = tokens.shape[1]
        pos = self.positions(rows, cols, tokens.device)
        frame_pos = pos.expand(frames, -1, -1)
        global_pos = pos.repeat(frames, 1)[None]
        outputs: list[Tensor | None] = []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens, frame_pos)
            frame_out = tokens
            hook = None if attention_hook is None else _bind_layer(attention_hook, i)
            tokens = self.global_blocks[i](tokens.reshape(1, frames * per_frame, dim), global_pos, hook)
            tokens = tokens.reshape(frames, per_frame, dim)
            kept = keep is None or i in keep
            outputs.append(torch.cat((frame_out, tokens), dim=-1)[None] if kept else None)
        return outputs


def _bind_layer(hook: GlobalAttentionHook, layer: int) -> Callable[[Tensor, Tensor, Tensor, float], Tensor]:
    def attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        return hook(layer, q, k, v, scale)

    return attention
