"""What a plug-in of each registry kind must be: one :class:`~typing.Protocol` per kind.

Every hook in :mod:`easi3r.hookspecs` returns ``{name: factory}``; ``factory(**params)`` (the recipe
section's parameters) returns an object of the kind's protocol below. The core only ever calls these
methods, so a plug-in needs nothing else:

=================================  =====================  ================================================
hook                                recipe key             protocol
=================================  =====================  ================================================
``easi3r_backbones``                ``backbone.name``      :class:`Backbone`
``easi3r_capture_strategies``       ``capture.name``       :class:`CaptureStrategy`
``easi3r_mask_rules``               ``rule.name``          :class:`MaskRule`
``easi3r_refiners``                 ``refine.name``        :class:`Refiner`
``easi3r_thresholds``               ``threshold.name``     :class:`Threshold`
``easi3r_reweight_policies``        ``reweight.name``      :class:`ReweightPolicy`
``easi3r_aligners``                 ``align.name``         :class:`Aligner`
``easi3r_exporters``                ``export.exporters``   :class:`Exporter`
=================================  =====================  ================================================

Shapes: ``T`` frames, ``P`` ordered pairs, ``(NH, NW)`` the token grid, ``(H, W)`` the frame size, ``B`` a
batch of pairs, ``Nq``/``Nk`` query/key tokens, ``d`` the channels of one attention head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

from easi3r.types import DynamicMasks, Encoded, FrameMaps, Frames, PairOutputs, Scene

if TYPE_CHECKING:
    from easi3r.attention import Reweight
    from easi3r.pipeline import RunResult

__all__ = [
    "Aligner",
    "Backbone",
    "CaptureStrategy",
    "Exporter",
    "MaskRule",
    "Progress",
    "ProgressBar",
    "Refiner",
    "ReweightPolicy",
    "Threshold",
]

Progress = Callable[[int], None]
"""Called with the number of pairs just finished."""

ProgressBar = Callable[..., Any]
"""``progress_bar(total=, desc=, unit=)``: a context manager whose ``update(n)`` advances it."""


@runtime_checkable
class CaptureStrategy(Protocol):
    """Reduces one cross-attention layer to a map over its key tokens (pass 1)."""

    def __call__(self, decoder: int, layer: int, q: Tensor, k: Tensor, scale: float) -> Tensor:
        """``q (B, heads, Nq, d)``, ``k (B, heads, Nk, d)`` (projected and rotated) → ``(B, heads, Nk)``, a
        statistic of the pre-softmax logits for every key token. It must not build the ``Nq × Nk`` logits
        in full for long sequences: stream them or use an identity (O(N·d))."""
        ...


@runtime_checkable
class ReweightPolicy(Protocol):
    """Computes a cross-attention output in which dynamic tokens are re-weighted (pass 2)."""

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, scale: float, query_dynamic: Tensor, key_dynamic: Tensor
    ) -> Tensor:
        """``q (B, heads, Nq, d)``, ``k, v (B, heads, Nk, d)``, masks ``(B, Nq)`` / ``(B, Nk)`` bool with
        ``True`` = dynamic → ``(B, heads, Nq, d)``, the output before the output projection."""
        ...


@runtime_checkable
class Backbone(Protocol):
    """A two-view network: encodes every frame once, then decodes batches of ordered pairs from the cached
    encodings, calling the framework's attention hook (:class:`easi3r.attention.AttentionHook`) in every
    cross-attention layer so that captures and re-weighting reach it."""

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
        reweight: Reweight | None = None,
        heads: bool = True,
        progress: Progress | None = None,
    ) -> PairOutputs:
        """Run the decoders (and the heads if asked) on ordered ``pairs (P, 2)``, capturing the
        cross-attention with ``capture`` and re-weighting it as ``reweight`` says."""
        ...


@runtime_checkable
class MaskRule(Protocol):
    """Combines the per-frame maps into one dynamic map (e.g. the recipe's ``rule.formula``)."""

    def __call__(self, maps: FrameMaps) -> Tensor:
        """→ ``(T, NH, NW)`` finite values; higher means more likely dynamic."""
        ...


@runtime_checkable
class Refiner(Protocol):
    """Smooths the dynamic map along the backbone's own feature grouping."""

    def __call__(self, dynamic_map: Tensor, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``dynamic_map (T, NH, NW)``, ``features (T, NH, NW, D)`` → ``(refined (T, NH, NW), extras)``;
        ``extras`` holds tensors kept for inspection (written to the intermediates)."""
        ...


@runtime_checkable
class Threshold(Protocol):
    """Chooses one threshold for all frames; the masks are ``values > threshold`` (strict)."""

    def __call__(self, values: Tensor) -> float:
        """``values (T, H, W)``, the upsampled refined map → a finite threshold."""
        ...


@runtime_checkable
class Aligner(Protocol):
    """Turns the final pass's pair predictions into a scene (cameras, depth, points)."""

    def __call__(
        self, frames: Frames, outputs: PairOutputs, masks: DynamicMasks | None, progress_bar: ProgressBar
    ) -> Scene | None:
        """→ the scene, or None for an aligner that makes none (``none``)."""
        ...


@runtime_checkable
class Exporter(Protocol):
    """Writes one kind of output file from a finished run."""

    def __call__(self, result: RunResult, out_dir: Path) -> list[Path]:
        """Write into ``out_dir`` (a staging folder renamed into place once every exporter succeeded) and
        return the files written."""
        ...
