"""Re-weighting policies for pass 2: the attention output with dynamic tokens re-weighted.

``zero_dynamic_keys`` is the reference's semantics (method.md §5): after the softmax, the weight of
(static query, dynamic key) is set to 0 without renormalising; dynamic queries are untouched. It is
computed by the value-zeroing identity — ordinary attention in which the projected values of dynamic
keys are zeroed, used for static queries — with two fused attention calls and no N×N tensor.
``post_softmax_oracle`` does it literally on the full attention matrix, for tests.

``drop_dynamic_keys`` is VGGT4D's second pass (docs/method-vggt4d.md): every query, dynamic or not, attends
to the static keys only (the softmax renormalised over them), computed on the gathered static keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

from easi3r.attention import fused_attention


def zero_dynamic_keys(
    q: Tensor, k: Tensor, v: Tensor, scale: float, query_dynamic: Tensor, key_dynamic: Tensor
) -> Tensor:
    """Static queries ignore dynamic keys' values (weights zeroed after the softmax, not renormalised)."""
    full = fused_attention(q, k, v, scale)
    if not bool(key_dynamic.any()):
        return full
    static_values = v * (~key_dynamic)[:, None, :, None].to(v.dtype)
    masked = fused_attention(q, k, static_values, scale)
    return torch.where(query_dynamic[:, None, :, None], full, masked)


def post_softmax_oracle(
    q: Tensor, k: Tensor, v: Tensor, scale: float, query_dynamic: Tensor, key_dynamic: Tensor
) -> Tensor:
    """Oracle: softmax, zero (static query, dynamic key) entries, multiply by the values."""
    attn = ((q @ k.transpose(-1, -2)) * scale).softmax(dim=-1)
    drop = (~query_dynamic)[:, None, :, None] & key_dynamic[:, None, None, :]
    return attn.masked_fill(drop, 0.0) @ v


def drop_dynamic_keys(
    q: Tensor, k: Tensor, v: Tensor, scale: float, query_dynamic: Tensor, key_dynamic: Tensor
) -> Tensor:
    """All queries attend to the static keys only: the dynamic keys are removed before the softmax."""
    if not bool(key_dynamic.any()):
        return fused_attention(q, k, v, scale)
    out = []
    for b in range(q.shape[0]):  # each item keeps its own static keys; frame-set windows come one at a time
        keep = (~key_dynamic[b]).nonzero()[:, 0]
        out.append(fused_attention(q[b : b + 1], k[b : b + 1, :, keep], v[b : b + 1, :, keep], scale))
    return torch.cat(out)
