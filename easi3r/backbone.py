"""What the pipeline needs from a two-view backbone.

A backbone encodes every frame once, then decodes batches of ordered pairs from the cached encodings,
optionally capturing its cross-attention (pass 1) and re-weighting it (pass 2). ``backends/`` provides
the CroCo-family implementation registered as ``dust3r`` and ``monst3r``; a new network family plugs in
by returning an object with this interface from an ``easi3r_backbones`` factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

from easi3r.attention import CaptureStrategy, ReweightPolicy
from easi3r.types import Encoded, PairOutputs

Progress = Callable[[int], None]  # called with the number of pairs just finished


@runtime_checkable
class Backbone(Protocol):
    name: str
    patch_size: int
    decoder_layers: int
    decoder_heads: int
    device: str

    def encode(self, images: Tensor) -> Encoded:
        """Encode ``(T, 3, H, W)`` frames in [-1, 1]; the result depends on nothing but the frame."""
        ...

    def decode(
        self,
        encoded: Encoded,
        pairs: Tensor,
        *,
        capture: CaptureStrategy | None = None,
        reweight: ReweightPolicy | None = None,
        token_masks: Tensor | None = None,
        heads: bool = True,
        progress: Progress | None = None,
        reweight_decoders: tuple[int, ...] = (1,),
        reweight_layers: tuple[int, ...] | None = None,
    ) -> PairOutputs:
        """Run the decoders (and heads if asked) on ordered ``pairs`` ``(P, 2)``.

        ``token_masks`` ``(T, N)`` bool marks dynamic tokens per frame; it is required with ``reweight``,
        which applies to the cross-attention of ``reweight_decoders`` (1: queries in view 1) in
        ``reweight_layers`` (None: all layers).
        """
        ...
