"""The Easi3R pipeline, in the order of the paper.

frames → pairs → encode every frame once → pass 1 with attention capture → per-frame maps → mask rule →
refine → threshold → pass 2 with the attention re-weighted by the masks → (masks derived again from the
pass-2 attention, as the reference does) → aligner (all frames, or window by window) → exporters.

Long videos: with a :class:`Stream`, each pass decodes chunks of pairs into the run cache
(:mod:`easi3r.cache`) instead of keeping the predictions in memory, skips the chunks a killed run already
wrote, and deals the chunks over the ranks of a ``torchrun`` job.

Every stage is a strategy from the plug-in registry, chosen by the recipe; every arrow is a typed value
from :mod:`easi3r.types`, so each stage can also be called alone (:func:`derive_masks`, :func:`run_pass`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from easi3r.attention import pixel_to_token_masks
from easi3r.backbone import Backbone
from easi3r.cache import PREDICTION_KEYS, RunCache
from easi3r.distributed import Ranks
from easi3r.errors import RecipeError
from easi3r.formula import EASI3R_RULE, parse
from easi3r.pairs import make_pairs
from easi3r.plugins import get_plugin_manager
from easi3r.progress import progress_bar
from easi3r.recipes import create_strategy
from easi3r.types import DynamicMasks, Encoded, Frames, PairAttention, PairOutputs, Scene


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
        backbone = create_strategy(recipe, "backbone")
        _check_reweight_layers(recipe.reweight.layers, backbone)
        return cls(
            backbone=backbone,
            capture=create_strategy(recipe, "capture"),
            rule=create_strategy(recipe, "rule"),
            refiner=create_strategy(recipe, "refine"),
            threshold=create_strategy(recipe, "threshold"),
            reweight=create_strategy(recipe, "reweight"),
            aligner=create_strategy(recipe, "align"),
        )


def _check_reweight_layers(layers: Sequence[int] | None, backbone: Backbone) -> None:
    # a layer the network does not have would be silently never re-weighted
    wrong = [layer for layer in layers or () if not 0 <= layer < backbone.decoder_layers]
    if wrong:
        raise RecipeError(
            f"recipe key 'reweight.layers' names layer {wrong[0]}, but backbone '{backbone.name}' has "
            f"decoder layers 0 to {backbone.decoder_layers - 1}"
        )


@dataclass
class Stream:
    """Where a streaming run keeps its pair outputs, and which chunks this process decodes."""

    cache: RunCache
    chunk_pairs: int  # a multiple of the backbone batch size, so the batches are those of a plain run
    ranks: Ranks = field(default_factory=Ranks)


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
    stream: Stream | None = None,
) -> PairOutputs:
    """Decode every pair once, capturing attention and/or re-weighting it with ``token_masks``.

    With a ``stream``, pairs are decoded chunk by chunk into the run cache (chunks already there are
    kept, chunks of other ranks are left to them); the captured maps are then gathered from the cache
    and the predictions stay on disk.
    """
    extra: dict[str, Any] = {}
    if token_masks is not None:
        layers = reweight_section.layers
        extra = dict(
            reweight=stages.reweight,
            token_masks=token_masks,
            reweight_decoders=tuple(reweight_section.decoders),
            reweight_layers=None if layers is None else tuple(layers),
        )
    capture_strategy = stages.capture if capture else None
    with progress_bar(total=len(pairs), desc=f"{label}: pairs", unit="pair") as bar:
        if stream is None:
            return stages.backbone.decode(
                encoded, pairs, capture=capture_strategy, heads=heads, progress=bar.update, **extra
            )
        name = label.replace(" ", "")
        # pass-2 chunks depend on the pass-1 masks: a chunk decoded with other masks is not reused
        tag = "" if token_masks is None else hashlib.sha256(token_masks.cpu().numpy().tobytes()).hexdigest()
        bounds = chunk_bounds(len(pairs), stream.chunk_pairs)
        for k, (start, end) in enumerate(bounds):
            if stream.cache.has_chunk(name, start, end, tag) or not stream.ranks.owns(k):
                bar.update(end - start)
                continue
            out = stages.backbone.decode(
                encoded, pairs[start:end], capture=capture_strategy, heads=heads, progress=bar.update, **extra
            )
            stream.cache.save_chunk(name, start, end, _chunk_tensors(out), tag)
    stream.ranks.barrier()  # every rank's chunks are on disk from here on
    attention = None
    if capture:
        maps = [stream.cache.load_chunk(name, s, e, ("maps1", "maps2")) for s, e in bounds]
        attention = PairAttention(
            decoder1=torch.cat([m["maps1"] for m in maps]), decoder2=torch.cat([m["maps2"] for m in maps])
        )
    predictions = stream.cache.predictions(name, bounds) if heads else None
    return PairOutputs(pairs=pairs.to(torch.long).cpu(), attention=attention, predictions=predictions)


def _chunk_tensors(out: PairOutputs) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    if out.attention is not None:
        tensors.update(maps1=out.attention.decoder1, maps2=out.attention.decoder2)
    if out.predictions is not None:
        tensors.update({key: getattr(out.predictions, key) for key in PREDICTION_KEYS})
    return tensors


def chunk_bounds(n_pairs: int, chunk_pairs: int) -> list[tuple[int, int]]:
    """Half-open pair ranges of ``chunk_pairs`` pairs (the last may be shorter)."""
    return [(start, min(start + chunk_pairs, n_pairs)) for start in range(0, n_pairs, chunk_pairs)]


def derive_masks(
    stages: Stages,
    outputs: PairOutputs,
    encoded: Encoded,
    n_frames: int,
    maps_section: DictConfig,
    *,
    rule_section: DictConfig | None = None,
) -> DynamicMasks:
    """Pair maps → four per-frame maps → mask rule → refinement → threshold → pixel masks.

    With the recipe's ``rule_section`` naming a ``formula``, the rule's map is checked (finite, one value
    per frame token) before anything else is spent on it; a bad one is a :class:`FormulaError`.
    """
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
    if rule_section is not None and rule_section.name == "formula":
        # The recipe's check on sample maps cannot foresee every video (e.g. the log of a std that is 0
        # because a frame has one pair): catch it before refinement, thresholding and pass 2.
        formula = parse(rule_section.get("formula", EASI3R_RULE))
        formula.check_result(dynamic, maps["src_mean"].shape, on="on this video's maps")
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


def run(
    recipe: DictConfig, frames: Frames, stages: Stages | None = None, *, stream: Stream | None = None
) -> RunResult:
    """Run the whole pipeline on loaded frames; nothing is written (see :func:`easi3r.api.run`).

    With a ``stream`` the pair outputs go to its cache (and come back from it when resuming); with
    several ranks, the ranks share the pairs and the alignment windows, and rank 0's result has the scene.
    """
    stages = stages or Stages.from_recipe(recipe)
    ranks = stream.ranks if stream is not None else Ranks()
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
        outputs = run_pass(stages, encoded, pairs, capture=False, heads=True, stream=stream)
        result.passes["pass1"] = PassResult(outputs)
    else:
        pass1_heads = passes_cfg.pass1_heads or recipe.export.save_intermediates or not passes_cfg.reweight
        outputs = run_pass(
            stages, encoded, pairs, capture=True, heads=pass1_heads, label="pass 1", stream=stream
        )
        masks = None
        if ranks.is_main:  # one rank derives the masks, so that every rank re-weights with the same ones
            masks = derive_masks(stages, outputs, encoded, len(frames), recipe.maps, rule_section=recipe.rule)
            masks = _masks_ready(masks, frames, recipe, 1)
        masks = ranks.broadcast(masks)
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
                stream=stream,
            )
            masks2 = None
            if from_pass2 and ranks.is_main:
                masks2 = derive_masks(
                    stages, outputs, encoded, len(frames), recipe.maps, rule_section=recipe.rule
                )
                masks2 = _masks_ready(masks2, frames, recipe, 2)
            result.passes["pass2"] = PassResult(outputs, masks2)

    result.scene = align(stages, recipe, frames, result.final_pass.outputs, result.masks, stream)
    return result


def align(
    stages: Stages,
    recipe: DictConfig,
    frames: Frames,
    outputs: PairOutputs,
    masks: DynamicMasks | None,
    stream: Stream | None = None,
) -> Scene | None:
    """The recipe's aligner over all frames at once, or window by window (``scale.align_window``).

    Windows are cached (a resumed run skips the aligned ones) and dealt over the ranks; rank 0 chains
    them. Other ranks get None.
    """
    from easi3r.windows import align_in_windows, alignment_windows

    ranks = stream.ranks if stream is not None else Ranks()
    window = recipe.scale.align_window
    if window is None or len(frames) <= window:
        return stages.aligner(frames, outputs, masks, progress_bar) if ranks.is_main else None
    windows = alignment_windows(len(frames), window, recipe.scale.align_overlap)
    store = stream.cache.window_store(windows) if stream is not None else None
    kwargs = dict(window=window, overlap=recipe.scale.align_overlap, progress_bar=progress_bar, store=store)
    if ranks.world_size == 1:
        return align_in_windows(stages.aligner, frames, outputs, masks, **kwargs)
    align_in_windows(stages.aligner, frames, outputs, masks, only=ranks.owns, **kwargs)
    ranks.barrier()  # every window is in the cache from here on
    return align_in_windows(stages.aligner, frames, outputs, masks, **kwargs) if ranks.is_main else None
