"""The Easi3R pipeline, in the order of the paper.

frames → pairs → encode every frame once → pass 1 with attention capture → per-frame maps → mask rule →
refine → threshold → pass 2 with the attention re-weighted by the masks → (masks derived again from the
pass-2 attention, as the reference does) → aligner → exporters.

Every stage is a strategy from the plug-in registry, chosen by the recipe; every arrow is a typed value
from :mod:`easi3r.types`, so each stage can also be called alone (:func:`derive_masks`, :func:`run_pass`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from easi3r.attention import pixel_to_token_masks
from easi3r.backbone import Backbone
from easi3r.pairs import make_pairs
from easi3r.plugins import get_plugin_manager
from easi3r.progress import progress_bar
from easi3r.recipes import create_strategy
from easi3r.types import DynamicMasks, Encoded, Frames, PairOutputs, Scene


@dataclass
class Stages:
    """The strategies a recipe selects, instantiated."""

    backbone: Backbone
    capture: Any
    rule: Callable
    refiner: Callable
    threshold: Callable
    reweight: Any
    aligner: Callable

    @classmethod
    def from_recipe(cls, recipe: DictConfig) -> Stages:
        return cls(
            backbone=create_strategy(recipe, "backbone"),
            capture=create_strategy(recipe, "capture"),
            rule=create_strategy(recipe, "rule"),
            refiner=create_strategy(recipe, "refine"),
            threshold=create_strategy(recipe, "threshold"),
            reweight=create_strategy(recipe, "reweight"),
            aligner=create_strategy(recipe, "align"),
        )


@dataclass
class PassResult:
    """One decoding pass over all pairs and the masks derived from its attention (if any)."""

    outputs: PairOutputs
    masks: DynamicMasks | None = None


@dataclass
class RunResult:
    recipe: DictConfig
    frames: Frames
    pairs: Tensor
    encoded: Encoded
    passes: dict[str, PassResult] = field(default_factory=dict)
    scene: Scene | None = None  # set by the aligner

    @property
    def masks(self) -> DynamicMasks | None:
        """The final masks: those of the pass the recipe names (``passes.masks_from``)."""
        chosen = self.passes.get(self.recipe.passes.masks_from) or self.passes.get("pass1")
        return None if chosen is None else chosen.masks

    @property
    def final_pass(self) -> PassResult:
        return self.passes["pass2"] if "pass2" in self.passes else self.passes["pass1"]


def run_pass(
    stages: Stages,
    encoded: Encoded,
    pairs: Tensor,
    *,
    capture: bool,
    heads: bool,
    token_masks: Tensor | None = None,
    reweight_section: DictConfig | None = None,
    label: str = "pass",
) -> PairOutputs:
    """Decode every pair once, capturing attention and/or re-weighting it with ``token_masks``."""
    extra: dict[str, Any] = {}
    if token_masks is not None:
        layers = reweight_section.layers
        extra = dict(
            reweight=stages.reweight,
            token_masks=token_masks,
            reweight_decoders=tuple(reweight_section.decoders),
            reweight_layers=None if layers is None else tuple(layers),
        )
    with progress_bar(total=len(pairs), desc=f"{label}: pairs", unit="pair") as bar:
        return stages.backbone.decode(
            encoded,
            pairs,
            capture=stages.capture if capture else None,
            heads=heads,
            progress=bar.update,
            **extra,
        )


def derive_masks(
    stages: Stages, outputs: PairOutputs, encoded: Encoded, n_frames: int, maps_section: DictConfig
) -> DynamicMasks:
    """Pair maps → four per-frame maps → mask rule → refinement → threshold → pixel masks."""
    from easi3r.strategies.aggregate import frame_maps
    from easi3r.strategies.threshold import masks_from_map

    maps = frame_maps(
        outputs.attention,
        outputs.pairs,
        n_frames,
        corner_fix=maps_section.corner_fix,
        single_pair_std=maps_section.single_pair_std,
    )
    dynamic = stages.rule(maps)
    refined, extras = stages.refiner(dynamic, encoded.features().float().cpu())
    masks, threshold, upsampled = masks_from_map(refined, encoded.image_size, stages.threshold)
    return DynamicMasks(
        masks=masks,
        dynamic_map=dynamic,
        refined_map=refined,
        threshold=float(threshold),
        maps=maps,
        extras={**extras, "upsampled_refined_map": upsampled},
    )


def _masks_ready(masks: DynamicMasks, frames: Frames, recipe: DictConfig, pass_index: int) -> DynamicMasks:
    """Let a plug-in (e.g. an external segmenter) replace the masks."""
    replaced = get_plugin_manager().hook.easi3r_masks_ready(
        masks=masks, frames=frames, recipe=recipe, pass_index=pass_index
    )
    return masks if replaced is None else replaced


def run(recipe: DictConfig, frames: Frames, stages: Stages | None = None) -> RunResult:
    """Run the whole pipeline on loaded frames; nothing is written (see :func:`easi3r.api.run`)."""
    stages = stages or Stages.from_recipe(recipe)
    hooks = get_plugin_manager().hook
    hooks.easi3r_run_start(recipe=recipe, frames=frames)
    torch.manual_seed(recipe.seed)
    passes_cfg = recipe.passes
    pairs = make_pairs(
        recipe.pairs.graph,
        len(frames),
        symmetrize=recipe.pairs.symmetrize,
        cap_window=recipe.pairs.cap_window,
    )
    encoded = stages.backbone.encode(frames.images)
    result = RunResult(recipe=recipe, frames=frames, pairs=pairs, encoded=encoded)

    if not passes_cfg.masks:  # single-pass baseline: plain predictions, no attention, no masks
        result.passes["pass1"] = PassResult(run_pass(stages, encoded, pairs, capture=False, heads=True))
    else:
        pass1_heads = passes_cfg.pass1_heads or recipe.export.save_intermediates or not passes_cfg.reweight
        outputs = run_pass(stages, encoded, pairs, capture=True, heads=pass1_heads, label="pass 1")
        masks = _masks_ready(
            derive_masks(stages, outputs, encoded, len(frames), recipe.maps), frames, recipe, 1
        )
        result.passes["pass1"] = PassResult(outputs, masks)
        if passes_cfg.reweight:
            from_pass2 = passes_cfg.masks_from == "pass2"
            outputs = run_pass(
                stages,
                encoded,
                pairs,
                capture=from_pass2,
                heads=True,
                token_masks=pixel_to_token_masks(masks.masks, stages.backbone.patch_size),
                reweight_section=recipe.reweight,
                label="pass 2",
            )
            masks2 = None
            if from_pass2:
                masks2 = derive_masks(stages, outputs, encoded, len(frames), recipe.maps)
                masks2 = _masks_ready(masks2, frames, recipe, 2)
            result.passes["pass2"] = PassResult(outputs, masks2)

    result.scene = stages.aligner(frames, result.final_pass.outputs, result.masks, progress_bar)
    return result
