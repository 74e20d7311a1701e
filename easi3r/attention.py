"""The contract between a backbone's cross-attention and the framework.

A backbone calls, for every cross-attention layer of every decoder, one :class:`AttentionHook` with the
already projected and RoPE-rotated queries and keys, the projected values and the softmax scale. The hook
returns the attention output (before the output projection). Two kinds of strategy plug into the hook
(their protocols are in :mod:`easi3r.contracts`):

* a :class:`~easi3r.contracts.CaptureStrategy` reduces (q, k, scale) of one layer to a map over the **key**
  tokens, shape ``(B, heads, Nk)``; the backbone stacks layers and heads into channels
  ``c = layer * heads + head``;
* a :class:`~easi3r.contracts.ReweightPolicy` computes the attention output from (q, k, v, query mask, key
  mask), in the decoders and layers a :class:`Reweight` names.

Shapes: ``q (B, heads, Nq, d)``, ``k, v (B, heads, Nk, d)``, masks ``(B, Nq)`` / ``(B, Nk)`` bool with
``True`` = dynamic token.

A frame-set backbone calls one :class:`GlobalAttentionHook` per window in each global-attention layer with
the q, k, v of all the window's tokens; its capture (:class:`~easi3r.contracts.FrameSetCapture`) sees the
patch tokens frame by frame, and re-weighting uses the same policies as the pairwise case, with the
window's tokens as both queries and keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from easi3r.contracts import CaptureStrategy, ReweightPolicy, WindowCapture


def fused_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Plain softmax attention through the fused kernel (no N×N tensor is kept)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


@dataclass(frozen=True)
class Reweight:
    """Pass 2's re-weighting as one value: the policy, every frame's dynamic tokens, and where it acts.

    ``token_masks`` is ``(T, N)`` bool, ``True`` = dynamic token of frame ``t``; ``decoders`` holds 1
    (view-1 branch, queries in view 1) and/or 2; ``layers`` None means every layer.
    """

    policy: ReweightPolicy
    token_masks: Tensor
    decoders: tuple[int, ...] = (1,)
    layers: tuple[int, ...] | None = None

    def for_pairs(self, pairs: Tensor, device: torch.device | str) -> BatchReweighting:
        """The re-weighting of one batch of ordered ``pairs (B, 2)``, its masks on ``device``."""
        masks = self.token_masks.to(device)
        return BatchReweighting(self, masks[pairs[:, 0]], masks[pairs[:, 1]])

    def for_window(self, start: int, end: int, special_tokens: int, device: torch.device | str) -> Tensor:
        """``(1, S·P)`` bool: the dynamic tokens of frames ``[start, end)`` laid out as a frame-set
        backbone's global attention sees them, each frame's ``special_tokens`` (camera, registers) first
        and never dynamic."""
        masks = self.token_masks[start:end].to(device)
        special = torch.zeros(len(masks), special_tokens, dtype=torch.bool, device=device)
        return torch.cat([special, masks], dim=1).reshape(1, -1)


@dataclass
class BatchReweighting:
    """A :class:`Reweight` for one batch of pairs: ``view1_dynamic``/``view2_dynamic`` are ``(B, N)`` bool.

    For decoder 1 the queries are view-1 tokens and the keys view-2 tokens; decoder 2 swaps them.
    """

    reweight: Reweight
    view1_dynamic: Tensor
    view2_dynamic: Tensor

    def applies(self, decoder: int, layer: int) -> bool:
        layers = self.reweight.layers
        return decoder in self.reweight.decoders and (layers is None or layer in layers)

    def masks(self, decoder: int) -> tuple[Tensor, Tensor]:
        """(query mask, key mask) for a decoder."""
        if decoder == 1:
            return self.view1_dynamic, self.view2_dynamic
        return self.view2_dynamic, self.view1_dynamic


@dataclass
class AttentionHook:
    """What one cross-attention call does with its rotated q, k and v.

    Created by the backbone for one decoder layer of one batch of pairs. It records the capture result
    (if a capture strategy is active) in ``captured`` and returns the (possibly re-weighted) output.
    """

    decoder: int
    layer: int
    capture: CaptureStrategy | None = None
    reweighting: BatchReweighting | None = None
    captured: Tensor | None = field(default=None, repr=False)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if self.capture is not None:
            self.captured = self.capture(self.decoder, self.layer, q, k, scale)
        if self.reweighting is not None and self.reweighting.applies(self.decoder, self.layer):
            query_dynamic, key_dynamic = self.reweighting.masks(self.decoder)
            return self.reweighting.reweight.policy(q, k, v, scale, query_dynamic, key_dynamic)
        return fused_attention(q, k, v, scale)


@dataclass
class GlobalAttentionHook:
    """What one window's global-attention layers do with their rotated q, k and v (frame-set backbones).

    ``frames`` frames of ``special_tokens + N`` tokens each; ``capture`` sees the patch tokens of the layers
    it reads; ``reweight`` (with the window's ``dynamic`` token mask from :meth:`Reweight.for_window`)
    computes the output in its layers.
    """

    frames: int
    special_tokens: int
    capture: WindowCapture | None = None
    capture_layers: frozenset[int] = frozenset()
    reweight: Reweight | None = None
    dynamic: Tensor | None = None

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        if self.capture is not None and layer in self.capture_layers:
            self.capture(layer, self._patches(q), self._patches(k))
        reweight = self.reweight
        if reweight is not None and (reweight.layers is None or layer in reweight.layers):
            return reweight.policy(q, k, v, scale, self.dynamic, self.dynamic)
        return fused_attention(q, k, v, scale)

    def _patches(self, x: Tensor) -> Tensor:
        """``(1, heads, S·P, d)`` → ``(S, heads, N, d)``: each frame's patch tokens."""
        _, heads, _, dim = x.shape
        per_frame = x.reshape(heads, self.frames, -1, dim).transpose(0, 1)
        return per_frame[:, :, self.special_tokens :]


def pixel_to_token_masks(masks: Tensor, patch_size: int) -> Tensor:
    """(T, H, W) bool pixel masks → (T, N) token masks: a token is dynamic if any of its pixels is."""
    return F.max_pool2d(masks.float()[:, None], patch_size).flatten(1) > 0.5


def stack_captured(hooks: list[AttentionHook]) -> Tensor:
    """Stack per-layer captures ``(B, heads, Nk)`` into ``(B, Nk, layers * heads)``, c = layer·heads + head."""
    maps = [h.captured for h in sorted(hooks, key=lambda h: h.layer)]
    if any(m is None for m in maps):
        raise RuntimeError("a capture strategy returned nothing for some layer")
    stacked = torch.stack(maps, dim=1)  # (B, layers, heads, Nk)
    b, n_layers, n_heads, nk = stacked.shape
    return stacked.reshape(b, n_layers * n_heads, nk).transpose(1, 2)
