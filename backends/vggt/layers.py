"""The pre-norm transformer block VGGT uses everywhere: in DINOv2, in the aggregator and in the camera trunk.

``x + ls1(attn(norm1(x))) + ...``: multi-head self-attention, optionally with a LayerNorm on each head's
queries and keys (QK-norm) and a 2D rotary position embedding, then a GELU MLP, each residual branch
scaled per channel by a learned LayerScale. Parameter names follow the official checkpoint
(``norm1``, ``attn.qkv``, ``attn.q_norm``, ``attn.k_norm``, ``attn.proj``, ``ls1.gamma``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easi3r.backends.croco import RoPE2D

# (q, k, v, scale) -> attention output, all (B, heads, N, head_dim): what a block's attention asks a hook for
AttentionFn = Callable[[Tensor, Tensor, Tensor, float], Tensor]


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT), initialised to ``init_values``."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim if out is None else out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention; QK-norm and RoPE are optional (DINOv2 and the camera trunk use neither)."""

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool, rope: RoPE2D | None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        # the official QK-norm is a LayerNorm over each head's channels with torch's default eps
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None, hook: AttentionFn | None = None) -> Tensor:
        """``x (B, N, C)``, ``pos (B, N, 2)`` integer (row, column) when the block has a RoPE.

        ``hook`` replaces the softmax attention: it gets q and k after QK-norm and RoPE, v, and the
        scale, each ``(B, heads, N, head_dim)``, and returns the attention output of that shape.
        """
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        # no explicit scale: the kernel's default 1/sqrt(head_dim) is the reference's, to the last bit
        out = F.scaled_dot_product_attention(q, k, v) if hook is None else hook(q, k, v, self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        init_values: float,
        qk_norm: bool = False,
        rope: RoPE2D | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: Tensor, pos: Tensor | None = None, hook: AttentionFn | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos, hook))
        return x + self.ls2(self.mlp(self.norm2(x)))
