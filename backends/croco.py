"""The CroCo-family two-view network (DUSt3R, MonST3R), key-compatible with the official checkpoints.

One file for the whole family, in the order data flows: 2D RoPE, attention, blocks, patch embedding,
then :class:`CroCoStereo`. Module and parameter names equal those of the official
``AsymmetricCroCo3DStereo`` so its state dict loads unchanged (see ``backends/checkpoint.py``).

Differences from the original implementation, none of which changes a number beyond float rounding:
attention runs through ``scaled_dot_product_attention`` (fused, no N×N tensor kept), and every
cross-attention exposes its rotated queries/keys to an :class:`easi3r.attention.AttentionHook`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from easi3r.attention import AttentionHook, fused_attention
from easi3r.backends.heads import DPTHead, LinearHead

LAYER_NORM_EPS = 1e-6


class RoPE2D(nn.Module):
    """2D rotary position embedding: the first half of each head is rotated by the token's row, the
    second half by its column; within a half, dims j and j + d/4 are paired (rotate-half), with
    frequencies base^(-i / (d/4))."""

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = base
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _cos_sin(self, half_dim: int, n_pos: int, device: torch.device, dtype: torch.dtype):
        key = (half_dim, n_pos, device, dtype)
        if key not in self._cache:
            # computed in float64 and cast, so float64 runs are exact and float32 runs round once
            inv_freq = self.base ** (-torch.arange(0, half_dim, 2, dtype=torch.float64) / half_dim)
            angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
            angles = torch.cat((angles, angles), dim=-1)
            self._cache[key] = (angles.cos().to(device, dtype), angles.sin().to(device, dtype))
        return self._cache[key]

    @staticmethod
    def _rotate(x: Tensor, pos1d: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        cos = cos[pos1d][:, None]  # (B, 1, N, d)
        sin = sin[pos1d][:, None]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens ``(B, heads, N, d)``, positions ``(B, N, 2)`` integer (row, col)."""
        if positions.shape[0] > 1 and positions.stride(0) == 0:
            positions = positions[:1]  # one grid expanded over the batch: look the angles up once
        half = tokens.shape[-1] // 2
        cos, sin = self._cos_sin(half, int(positions.max()) + 1, tokens.device, tokens.dtype)
        rows, cols = tokens.chunk(2, dim=-1)
        return torch.cat(
            (
                self._rotate(rows, positions[..., 0], cos, sin),
                self._rotate(cols, positions[..., 1], cos, sin),
            ),
            dim=-1,
        )


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with RoPE, fused."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: Tensor, xpos: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, xpos), self.rope(k, xpos)
        out = fused_attention(q, k, v, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Multi-head cross-attention with RoPE; ``hook`` (set by the backbone adapter) sees the rotated
    queries and keys and computes the attention output, for capture and re-weighting."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.hook: AttentionHook | None = None

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, qpos: Tensor, kpos: Tensor) -> Tensor:
        b, nq, c = query.shape
        q = self.rope(self._heads(self.projq(query)), qpos)
        k = self.rope(self._heads(self.projk(key)), kpos)
        v = self._heads(self.projv(value))
        out = fused_attention(q, k, v, self.scale) if self.hook is None else self.hook(q, k, v, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class Block(nn.Module):
    """Pre-norm ViT encoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, xpos: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), xpos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention on this view, cross-attention to the other view's (normalised) tokens, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D, norm_mem: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=LAYER_NORM_EPS) if norm_mem else nn.Identity()

    def forward(self, x: Tensor, y: Tensor, xpos: Tensor, ypos: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.norm1(x), xpos)
        y_ = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_, y_, xpos, ypos)
        x = x + self.mlp(self.norm3(x))
        return x, y


class PatchEmbed(nn.Module):
    """16×16 patch convolution; tokens in row-major order with integer (row, col) positions."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = images.shape
        p = self.patch_size[0]
        if h % p or w % p:
            raise ValueError(f"image size {h}×{w} is not a multiple of the patch size {p}")
        x = self.proj(images).flatten(2).transpose(1, 2)
        return x, grid_positions(h // p, w // p, images.device).expand(b, -1, -1)


def grid_positions(rows: int, cols: int, device: torch.device | str = "cpu") -> Tensor:
    """(1, rows·cols, 2) integer (row, col) of each token, row-major."""
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    return torch.cartesian_prod(r, c)[None]


def _rope_base(pos_embed: str) -> float:
    if not pos_embed.startswith("RoPE"):
        raise ValueError(f"only RoPE position embeddings are supported, got {pos_embed!r}")
    base = float(pos_embed[len("RoPE") :])
    # the frequencies are base ** (-i / d): a base of 0 or inf would give inf/NaN angles at run time
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"the RoPE base must be positive and finite, got {pos_embed!r}")
    return base


class CroCoStereo(nn.Module):
    """DUSt3R's asymmetric two-view network: a shared ViT encoder, two cross-attending decoders and two
    heads. Accepts the constructor arguments of the official ``AsymmetricCroCo3DStereo``."""

    def __init__(
        self,
        *,
        pos_embed: str = "RoPE100",
        patch_embed_cls: str = "PatchEmbedDust3R",
        img_size: int | Sequence[int] = (512, 512),
        head_type: str = "linear",
        output_mode: str = "pts3d",
        depth_mode: Sequence = ("exp", -math.inf, math.inf),
        conf_mode: Sequence = ("exp", 1, math.inf),
        enc_embed_dim: int = 1024,
        enc_depth: int = 24,
        enc_num_heads: int = 16,
        dec_embed_dim: int = 768,
        dec_depth: int = 12,
        dec_num_heads: int = 12,
        mlp_ratio: float = 4.0,
        norm_im2_in_dec: bool = True,
        patch_size: int = 16,
        landscape_only: bool = False,  # the official loader forces False; accepted and ignored
        freeze: str = "none",  # a training setting; accepted and ignored
    ) -> None:
        super().__init__()
        if patch_embed_cls not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise ValueError(f"unsupported patch embedding {patch_embed_cls!r}")
        if output_mode != "pts3d":
            raise ValueError(f"unsupported output mode {output_mode!r}")
        self.config = dict(
            pos_embed=pos_embed, patch_embed_cls=patch_embed_cls, img_size=img_size, head_type=head_type,
            output_mode=output_mode, depth_mode=tuple(depth_mode), conf_mode=tuple(conf_mode),
            enc_embed_dim=enc_embed_dim, enc_depth=enc_depth, enc_num_heads=enc_num_heads,
            dec_embed_dim=dec_embed_dim, dec_depth=dec_depth, dec_num_heads=dec_num_heads,
            mlp_ratio=mlp_ratio, norm_im2_in_dec=norm_im2_in_dec, patch_size=patch_size,
        )  # fmt: skip
        rope = RoPE2D(_rope_base(pos_embed))
        self.patch_embed = PatchEmbed(patch_size, enc_embed_dim)
        # unused by DUSt3R (CroCo pre-training) but part of every official checkpoint
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_embed_dim))
        self.enc_blocks = nn.ModuleList(
            Block(enc_embed_dim, enc_num_heads, mlp_ratio, rope) for _ in range(enc_depth)
        )
        self.enc_norm = nn.LayerNorm(enc_embed_dim, eps=LAYER_NORM_EPS)
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, rope, norm_im2_in_dec)
            for _ in range(dec_depth)
        )
        self.dec_blocks2 = nn.ModuleList(
            DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, rope, norm_im2_in_dec)
            for _ in range(dec_depth)
        )
        self.dec_norm = nn.LayerNorm(dec_embed_dim, eps=LAYER_NORM_EPS)
        modes = dict(depth_mode=tuple(depth_mode), conf_mode=tuple(conf_mode))
        if head_type == "linear":
            self.downstream_head1 = LinearHead(dec_embed_dim, patch_size, **modes)
            self.downstream_head2 = LinearHead(dec_embed_dim, patch_size, **modes)
        elif head_type == "dpt":
            dims = (enc_embed_dim, dec_embed_dim, dec_embed_dim, dec_embed_dim)
            self.downstream_head1 = DPTHead(dims, dec_depth, patch_size, **modes)
            self.downstream_head2 = DPTHead(dims, dec_depth, patch_size, **modes)
        else:
            raise ValueError(f"unsupported head type {head_type!r}")

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) → tokens (B, N, D_enc) after the final norm, positions (B, N, 2)."""
        x, pos = self.patch_embed(images)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def forward(self, img1: Tensor, img2: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Plain DUSt3R forward of a batch of pairs, as the official model computes it.

        Returns ``(res1, res2)`` with ``pts3d``/``conf`` for view 1 and ``pts3d_in_other_view``/``conf``
        for view 2. The framework uses :class:`backends.adapter.CroCoBackbone` instead, which encodes
        each frame once; this method is the vanilla single-pass baseline.
        """
        shape = img1.shape[-2:]
        tokens, pos = self.encode(torch.cat((img1, img2)))
        e1, e2 = tokens.chunk(2)
        p1, p2 = pos.chunk(2)
        f1, f2 = self.decoder_embed(e1), self.decoder_embed(e2)
        out1, out2 = [e1], [e2]
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            f1, f2 = blk1(f1, f2, p1, p2)[0], blk2(f2, f1, p2, p1)[0]
            out1.append(f1)
            out2.append(f2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        res1 = self.downstream_head1([t.float() for t in out1], shape)
        res2 = self.downstream_head2([t.float() for t in out2], shape)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2
