"""What a plug-in of each registry kind must be: one :class:`~typing.Protocol` per kind.

Every hook in :mod:`easi3r.hookspecs` returns ``{name: factory}``; ``factory(**params)`` (the recipe
section's parameters) returns an object of the kind's protocol below. The core only ever calls these
methods, so a plug-in needs nothing else:

=================================  =====================  ================================================
hook                                recipe key             protocol
=================================  =====================  ================================================
``easi3r_backbones``                ``backbone.name``      :class:`Backbone` or :class:`FrameSetBackbone`
``easi3r_capture_strategies``       ``capture.name``       :class:`CaptureStrategy` or :class:`FrameSetCapture`
``easi3r_mask_rules``               ``rule.name``          :class:`MaskRule`
``easi3r_refiners``                 ``refine.name``        :class:`Refiner`
``easi3r_thresholds``               ``threshold.name``     :class:`Threshold`
``easi3r_reweight_policies``        ``reweight.name``      :class:`ReweightPolicy`
``easi3r_aligners``                 ``align.name``         :class:`Aligner`
``easi3r_exporters``                ``export.exporters``   :class:`Exporter`
``easi3r_flow_models``              ``align.flow_model``   :class:`FlowModel`
=================================  =====================  ================================================

Two kinds of backbone share one pipeline (:mod:`easi3r.pipeline`): a *pairwise* :class:`Backbone` (the
CroCo family: encode every frame once, decode ordered pairs, captures reduce each cross-attention layer to
key-token maps that the core aggregates per frame) and a :class:`FrameSetBackbone` (VGGT-like: one forward
over a window of frames with frame-wise and global attention; a :class:`FrameSetCapture` turns the global
attention into per-frame named maps itself, and the backbone predicts cameras directly). Strategies say
which kind they serve with a ``kind`` attribute (``"pairwise"`` when absent); the pipeline refuses a mix.

Shapes: ``T`` frames, ``P`` ordered pairs, ``(NH, NW)`` the token grid, ``(H, W)`` the frame size, ``B`` a
batch of pairs, ``Nq``/``Nk`` query/key tokens, ``d`` the channels of one attention head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

from easi3r.types import (
    DynamicMasks,
    Encoded,
    FrameMaps,
    Frames,
    FrameSetOutputs,
    PairOutputs,
    PassOutputs,
    Scene,
)

if TYPE_CHECKING:
    from easi3r.attention import Reweight
    from easi3r.pipeline import RunResult

__all__ = [
    "FRAME_SET",
    "PAIRWISE",
    "Aligner",
    "Backbone",
    "CaptureStrategy",
    "Exporter",
    "FlowModel",
    "FrameSetBackbone",
    "FrameSetCapture",
    "MaskRule",
    "Progress",
    "ProgressBar",
    "Refiner",
    "ReweightPolicy",
    "Threshold",
    "WindowCapture",
    "backbone_kind",
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
class WindowCapture(Protocol):
    """One window's capture: called in every global-attention layer, then asked for its maps."""

    def __call__(self, layer: int, q: Tensor, k: Tensor) -> None:
        """``q, k (S, heads, N, d)``: the queries and keys of the window's ``S`` frames, patch tokens only
        (the backbone drops its camera and register tokens), after QK-norm and RoPE."""
        ...

    def maps(self) -> dict[str, Tensor]:
        """``{name: (S, NH, NW)}`` for every frame of the window, once every layer has been seen."""
        ...


@runtime_checkable
class FrameSetCapture(Protocol):
    """Turns a frame-set backbone's global attention into per-frame named maps (pass 1)."""

    kind: str  # "frame_set"
    names: tuple[str, ...]  # the maps it makes: what a mask formula may read
    layers: frozenset[int]  # the global layers it reads (the backbone may skip the others)

    def window(self, frames: int, grid: tuple[int, int]) -> WindowCapture:
        """A capture for one window of ``frames`` frames on a token grid ``(NH, NW)``. It must not build
        a ``(frames·N)²`` matrix: memory O(frames·N·d) at most."""
        ...


@runtime_checkable
class FrameSetBackbone(Protocol):
    """A multi-view network: embeds every frame once, then runs windows of frames through alternating
    frame-wise and global attention and predicts each frame's camera, depth and points.

    In every global-attention layer it hands its rotated q and k to the window's capture (patch tokens
    only) and computes the attention through :class:`easi3r.attention.GlobalAttentionHook`, so that
    re-weighting reaches it."""

    name: str
    kind: str  # "frame_set"
    patch_size: int
    global_layers: int  # re-weighting layers are numbered 0 .. global_layers - 1
    global_heads: int
    device: str

    def encode(self, images: Tensor) -> Encoded:
        """Embed ``(T, 3, H, W)`` frames in [-1, 1], each on its own; ``features()`` are what refinement
        clusters."""
        ...

    def decode(
        self,
        encoded: Encoded,
        windows: Tensor,
        *,
        capture: FrameSetCapture | None = None,
        reweight: Reweight | None = None,
        heads: bool = True,
        progress: Progress | None = None,
    ) -> FrameSetOutputs:
        """Run every window ``[start, end)`` of ``windows (W, 2)``; ``progress`` is called with the frames
        of each finished window."""
        ...


PAIRWISE, FRAME_SET = "pairwise", "frame_set"


def backbone_kind(strategy: object) -> str:
    """:data:`PAIRWISE` or :data:`FRAME_SET` (``"any"`` for a strategy that serves both): which kind of
    backbone a backbone, capture or aligner serves."""
    return str(getattr(strategy, "kind", PAIRWISE))


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
        self, frames: Frames, outputs: PassOutputs, masks: DynamicMasks | None, progress_bar: ProgressBar
    ) -> Scene | None:
        """→ the scene, or None for an aligner that makes none (``none``). Optimising aligners read
        :class:`PairOutputs`; ``predicted`` (``kind = "frame_set"``) reads :class:`FrameSetOutputs`."""
        ...


@runtime_checkable
class Exporter(Protocol):
    """Writes one kind of output file from a finished run."""

    def __call__(self, result: RunResult, out_dir: Path) -> list[Path]:
        """Write into ``out_dir`` (a staging folder renamed into place once every exporter succeeded) and
        return the files written."""
        ...


@runtime_checkable
class FlowModel(Protocol):
    """Dense optical flow between two batches of frames (a prior for the aligner, not a pipeline stage)."""

    def __call__(self, images1: Tensor, images2: Tensor) -> Tensor:
        """``images1, images2 (B, 3, H, W)`` in [-1, 1] (the pipeline's frames) → ``(B, 2, H, W)`` float32
        flow from ``images1`` to ``images2`` in pixels, ``(dx, dy)``, on the images' device."""
        ...
