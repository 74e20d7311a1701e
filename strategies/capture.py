"""Attention capture strategies: reduce one cross-attention layer to a map over its key tokens.

``query_mean`` is the default: the mean over all queries of the pre-softmax logits, computed by the
identity mean_q(s·⟨q̃_q, k̃_k⟩) = s·⟨mean_q q̃_q, k̃_k⟩ (method.md §2): O(N·d), no N×N tensor, exact up to
float rounding. ``full_logits`` materialises the logits the way the reference does; it exists as an
oracle for tests and benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def query_mean(decoder: int, layer: int, q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Query-mean of the pre-softmax logits by the mean-query identity: ``(B, heads, Nk)``."""
    # accumulate in float32 at least: a bf16 mean over hundreds of queries loses digits
    dtype = torch.promote_types(q.dtype, torch.float32)
    mean_q = q.to(dtype).mean(dim=2, keepdim=True)  # (B, heads, 1, d)
    return scale * (mean_q @ k.to(dtype).transpose(-1, -2)).squeeze(2)


def full_logits(decoder: int, layer: int, q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Oracle: materialise the (B, heads, Nq, Nk) logits, then average over the queries."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    logits = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * scale
    return logits.mean(dim=2)
