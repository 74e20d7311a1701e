"""The Easi3R pipeline, in the order of the paper (method.md).

frames → pairs → encode every frame once → pass 1 with attention capture → per-frame maps → mask rule →
refine → threshold → masks → pass 2 with the attention re-weighted by the masks → masks again from the
pass-2 attention (as the reference does) → aligner.

The same order serves both kinds of backbone (:mod:`easi3r.contracts`): a pairwise one decodes ordered
pairs and the core aggregates its pair maps per frame; a frame-set one runs windows of frames, its capture
hands back per-frame maps, and its own cameras make the scene (aligner ``predicted``).

Every stage is a plug-in chosen by the recipe (:class:`Stages`, typed by :mod:`easi3r.contracts`) and every
arrow is a typed value from :mod:`easi3r.types`, so each step can also be called alone (:func:`derive_masks`).
How the passes run (in memory, streamed through the run cache, over ``torchrun`` ranks) is the business
of :mod:`easi3r.execution`; writing the outputs is :mod:`easi3r.api`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import Tensor

from easi3r.attention import Reweight, pixel_to_token_masks
from easi3r.contracts import (
    FRAME_SET,
    Aligner,
    Backbone,
    CaptureStrategy,
    FrameSetBackbone,
    FrameSetCapture,
    MaskRule,
    Refiner,
    ReweightPolicy,
    Threshold,
    backbone_kind,
)
from easi3r.errors import RecipeError
from easi3r.execution import Execution
from easi3r.maps import frame_maps
from easi3r.masks import masks_from_map
from easi3r.pairs import make_pairs
from easi3r.plugins import get_plugin_manager
from easi3r.recipes import create_strategy
from easi3r.timing import stage
from easi3r.types import DynamicMasks, Encoded, FrameMaps, Frames, FrameSetOutputs, PassOutputs, Scene
from easi3r.user_masks import UserMasks
from easi3r.windows import alignment_windows


@dataclass
class Stages:
    """The strategies a recipe selects, instantiated."""

    backbone: Backbone | FrameSetBackbone
    capture: CaptureStrategy | FrameSetCapture
    rule: MaskRule
    refiner: Refiner
    threshold: Threshold
    reweight: ReweightPolicy
    aligner: Aligner

    @classmethod
    def from_recipe(cls, recipe: DictConfig) -> Stages:
        backbone = create_strategy(recipe, "backbone")
        _check_reweight_layers(recipe.reweight.layers, backbone)
        stages = cls(
            backbone=backbone,
            capture=create_strategy(recipe, "capture"),
            rule=create_strategy(recipe, "rule"),
            refiner=create_strategy(recipe, "refine"),
            threshold=create_strategy(recipe, "threshold"),
            reweight=create_strategy(recipe, "reweight"),
            aligner=create_strategy(recipe, "align"),
        )
        _check_kinds(recipe, stages)
        return stages


def _check_reweight_layers(layers: Sequence[int] | None, backbone: Backbone | FrameSetBackbone) -> None:
    # a layer the network does not have would be silently never re-weighted
    if backbone_kind(backbone) == FRAME_SET:
        count, what = backbone.global_layers, "global-attention layers"
    else:
        count, what = backbone.decoder_layers, "decoder layers"
    wrong = [layer for layer in layers or () if not 0 <= layer < count]
    if wrong:
        raise RecipeError(
            f"recipe key 'reweight.layers' names layer {wrong[0]}, but backbone '{backbone.name}' has "
            f"{what} 0 to {count - 1}"
        )


def _check_kinds(recipe: DictConfig, stages: Stages) -> None:
    """A capture or aligner made for the other kind of backbone, or a capture reading global layers the
    backbone lacks, would fail deep in a pass: say so now."""
    backbone = stages.backbone
    kind = backbone_kind(backbone)
    for section, strategy in (("capture", stages.capture), ("align", stages.aligner)):
        serves = backbone_kind(strategy)
        if serves not in (kind, "any"):
            raise RecipeError(
                f"recipe key '{section}.name': {section} '{recipe[section].name}' serves {serves} "
                f"backbones, but backbone '{backbone.name}' is {kind}"
            )
    if kind == FRAME_SET and max(stages.capture.layers, default=0) >= backbone.global_layers:
        raise RecipeError(
            f"recipe key 'capture': capture '{recipe.capture.name}' reads global layer "
            f"{max(stages.capture.layers)}, but backbone '{backbone.name}' has global-attention layers 0 to "
            f"{backbone.global_layers - 1}"
        )


@dataclass
class PassResult:
    """One decoding pass over all pairs and the masks derived from its attention (if any)."""

    outputs: PassOutputs
    masks: DynamicMasks | None = None


@dataclass
class RunResult:
    recipe: DictConfig
    frames: Frames
    pairs: Tensor  # what the backbone decoded: ordered pairs, or frame windows [start, end) (frame-set)
    encoded: Encoded
    passes: dict[str, PassResult] = field(default_factory=dict)
    scene: Scene | None = None  # set by the aligner

    @property
    def masks(self) -> DynamicMasks | None:
        """The final masks: those of the pass the recipe names (``passes.masks_from``)."""
        chosen = self.passes.get(self.recipe.passes.masks_from) or self.passes.get("pass1")
        return None if chosen is None else chosen.masks

    @property
    def unit_name(self) -> str:
        """What :attr:`pairs` holds: ``"pairs"``, or ``"windows"`` of frames for a frame-set backbone."""
        return "windows" if isinstance(self.final_pass.outputs, FrameSetOutputs) else "pairs"

    @property
    def final_pass(self) -> PassResult:
        return self.passes["pass2"] if "pass2" in self.passes else self.passes["pass1"]


def run(
    recipe: DictConfig,
    frames: Frames,
    stages: Stages | None = None,
    *,
    pairs: Tensor | None = None,
    execution: Execution | None = None,
    user_masks: UserMasks | None = None,
) -> RunResult:
    """Run the whole method on loaded frames; nothing is written (see :func:`easi3r.api.run`).

    ``pairs`` defaults to the recipe's pair graph (a frame-set backbone's: its windows of frames);
    ``execution`` to one process, in memory. ``user_masks`` replace the attention masks of pass 1 (and, if
    they say so, the final ones).
    """
    stages = stages or Stages.from_recipe(recipe)
    execution = execution or Execution()
    get_plugin_manager().hook.easi3r_run_start(recipe=recipe, frames=frames)
    torch.manual_seed(recipe.seed)
    passes, backbone = recipe.passes, stages.backbone
    pairs = work_units(recipe, backbone, len(frames)) if pairs is None else pairs
    with stage("encode"):
        encoded = backbone.encode(frames.images)  # once per frame, shared by every pair and both passes
    result = RunResult(recipe=recipe, frames=frames, pairs=pairs, encoded=encoded)

    if not passes.masks:  # the single-pass baseline: plain predictions, no attention, no masks
        with stage("pass 1"):
            result.passes["pass1"] = PassResult(execution.decode(backbone, encoded, pairs))
    else:
        heads = passes.pass1_heads or recipe.export.save_intermediates or not passes.reweight
        with stage("pass 1"):
            outputs = execution.decode(
                backbone, encoded, pairs, capture=stages.capture, heads=heads, label="pass 1"
            )
        # derived once and shared, so that pass 2 re-weights with the same masks wherever it runs
        with stage("masks"):
            masks = execution.on_main(
                lambda: derive_masks(stages, recipe, frames, outputs, encoded, 1, user_masks), share=True
            )
        result.passes["pass1"] = PassResult(outputs, masks)
        if passes.reweight:
            reweight = reweight_by(masks, stages, recipe.reweight)
            from_pass2 = passes.masks_from == "pass2"
            capture = stages.capture if from_pass2 else None
            with stage("pass 2"):
                outputs = execution.decode(
                    backbone, encoded, pairs, capture=capture, reweight=reweight, label="pass 2"
                )
            masks = None
            if from_pass2:
                with stage("masks (pass 2)"):
                    masks = execution.on_main(
                        lambda: derive_masks(stages, recipe, frames, outputs, encoded, 2, user_masks),
                        share=False,
                    )
            result.passes["pass2"] = PassResult(outputs, masks)

    with stage("align"):
        result.scene = execution.align(
            stages.aligner, frames, result.final_pass.outputs, result.masks, recipe.scale
        )
    return result


def reweight_by(masks: DynamicMasks, stages: Stages, section: DictConfig) -> Reweight:
    """Pass 2's re-weighting: the recipe's policy on the tokens the masks cover, in its decoders and layers."""
    layers = None if section.layers is None else tuple(section.layers)
    token_masks = pixel_to_token_masks(masks.masks, stages.backbone.patch_size)
    return Reweight(stages.reweight, token_masks, tuple(section.decoders), layers)


def work_units(recipe: DictConfig, backbone: Backbone | FrameSetBackbone, n_frames: int) -> Tensor:
    """What the backbone decodes in each pass: ordered pairs, or windows of frames for a frame-set one."""
    if backbone_kind(backbone) == FRAME_SET:
        return frame_windows(recipe, n_frames)
    return pair_graph(recipe, n_frames)


def frame_windows(recipe: DictConfig, n_frames: int) -> Tensor:
    """``(W, 2)`` half-open windows of frames a frame-set backbone runs apart (``scale.align_window``
    frames sharing ``scale.align_overlap``, chained later by Sim(3)); one window of every frame when
    ``scale.align_window`` is null or the video is shorter."""
    scale = recipe.scale
    if scale.align_window is None or n_frames <= scale.align_window:
        return torch.tensor([[0, n_frames]])
    return torch.tensor(alignment_windows(n_frames, scale.align_window, scale.align_overlap))


def pair_graph(recipe: DictConfig, n_frames: int) -> Tensor:
    """The ordered pairs ``(P, 2)`` the recipe's ``pairs`` section makes of ``n_frames`` frames."""
    section = recipe.pairs
    return make_pairs(section.graph, n_frames, symmetrize=section.symmetrize, cap_window=section.cap_window)


def derive_masks(
    stages: Stages,
    recipe: DictConfig,
    frames: Frames,
    outputs: PassOutputs,
    encoded: Encoded,
    pass_index: int,
    user_masks: UserMasks | None = None,
) -> DynamicMasks:
    """Captured maps → per-frame maps → mask rule → refinement → threshold → pixel masks (or the user's)
    → the masks hook."""
    maps = per_frame_maps(recipe, outputs, len(frames))
    dynamic = stages.rule(maps)
    refined, extras = stages.refiner(dynamic, encoded.features().float().cpu())
    masks, threshold, upsampled = masks_from_map(refined, encoded.image_size, stages.threshold)
    derived = DynamicMasks(
        masks=masks,
        dynamic_map=dynamic,
        refined_map=refined,
        threshold=float(threshold),
        maps=maps,
        extras={**extras, "upsampled_refined_map": upsampled},
    )
    if user_masks is not None:
        derived = user_masks.apply(derived, pass_index)
    # a plug-in (e.g. an external segmenter) may replace them
    replaced = get_plugin_manager().hook.easi3r_masks_ready(
        masks=derived, frames=frames, recipe=recipe, pass_index=pass_index
    )
    return derived if replaced is None else replaced


def per_frame_maps(recipe: DictConfig, outputs: PassOutputs, n_frames: int) -> FrameMaps:
    """The named maps a mask rule reads: a frame-set capture made them per frame already; a pairwise
    backbone's pair maps are aggregated per frame (method.md §3)."""
    if isinstance(outputs, FrameSetOutputs):
        if outputs.maps is None:
            raise ValueError("this pass ran without a capture: it has no maps")
        return outputs.maps
    return frame_maps(
        outputs.attention,
        outputs.pairs,
        n_frames,
        corner_fix=recipe.maps.corner_fix,
        single_pair_std=recipe.maps.single_pair_std,
    )
