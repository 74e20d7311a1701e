"""Registers easi3r's built-in stages through the ``easi3r`` entry points, like any third-party plug-in.

Factories import their implementation on first call, so loading this plug-in costs nothing.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from omegaconf import OmegaConf

from easi3r.hookspecs import hookimpl


def _formula_rule(formula: str | None = None) -> Any:
    """Mask rule given as a formula over the named per-frame maps (parsed now, so errors show early)."""
    from easi3r.formula import EASI3R_RULE, parse

    parsed = parse(EASI3R_RULE if formula is None else formula)

    def rule(maps: Any) -> Any:
        dynamic = parsed.evaluate(maps.maps)
        # The recipe's check on sample maps cannot foresee every video (e.g. the log of a std that is 0
        # because a frame has one pair): refuse the map here, before refinement, thresholding and pass 2.
        frame_grid = next(iter(maps.maps.values())).shape[:3]  # (T, NH, NW), whichever maps there are
        parsed.check_result(dynamic, frame_grid, on="on this video's maps")
        return dynamic

    return rule


def _lazy(module: str, attribute: str) -> Any:
    """A factory that imports ``easi3r.strategies.<module>.<attribute>`` when called."""

    def factory(**params: Any) -> Any:
        import importlib

        target = getattr(importlib.import_module(f"easi3r.strategies.{module}"), attribute)
        return target(**params) if isinstance(target, type) else _function(target, params)

    factory.__name__ = attribute
    return factory


def _function(fn: Any, params: dict[str, Any]) -> Any:
    """Plain-function strategies take no parameters."""
    if params:
        raise TypeError(f"{fn.__name__}() takes no parameters, got {', '.join(params)}")
    return fn


@hookimpl
def easi3r_capture_strategies() -> dict[str, Any]:
    return {
        "query_mean": _lazy("capture", "query_mean"),
        "full_logits": _lazy("capture", "full_logits"),
        "gram": _lazy("gram_capture", "GramCapture"),
        "gram_full": _lazy("gram_capture", "FullGramCapture"),
    }


@hookimpl
def easi3r_mask_rules() -> dict[str, Any]:
    return {"formula": _formula_rule}


@hookimpl
def easi3r_refiners() -> dict[str, Any]:
    return {"kmeans": _lazy("refine", "KMeansRefiner"), "none": _lazy("refine", "NoRefiner")}


@hookimpl
def easi3r_thresholds() -> dict[str, Any]:
    return {
        "adaptive_multiotsu": _lazy("threshold", "AdaptiveMultiOtsu"),
        "otsu": _lazy("threshold", "Otsu"),
        "fixed": _lazy("threshold", "Fixed"),
    }


@hookimpl
def easi3r_reweight_policies() -> dict[str, Any]:
    return {
        "zero_dynamic_keys": _lazy("reweight", "zero_dynamic_keys"),
        "drop_dynamic_keys": _lazy("reweight", "drop_dynamic_keys"),
        "post_softmax_oracle": _lazy("reweight", "post_softmax_oracle"),
    }


@hookimpl
def easi3r_aligners() -> dict[str, Any]:
    return {
        "none": _lazy("aligners", "NoAligner"),
        "predicted": _lazy("predicted", "PredictedAligner"),
        "global": _lazy("global_align", "GlobalAlign"),
        "pairwise": _lazy("global_align", "PairwiseAlign"),
    }


@hookimpl
def easi3r_exporters() -> dict[str, Any]:
    return {
        "masks": _lazy("exporters", "MaskExporter"),
        "maps": _lazy("exporters", "MapExporter"),
        "overlays": _lazy("exporters", "OverlayExporter"),
        "overlays_video": _lazy("exporters", "OverlayVideoExporter"),
        "maps_video": _lazy("exporters", "MapVideoExporter"),
        "trajectory": _lazy("scene_exporters", "TrajectoryExporter"),
        "depth": _lazy("scene_exporters", "DepthExporter"),
        "pointcloud": _lazy("scene_exporters", "PointCloudExporter"),
        "colmap": _lazy("scene_exporters", "ColmapExporter"),
        "nerfstudio": _lazy("scene_exporters", "NerfstudioExporter"),
        "rerun": _lazy("scene_exporters", "RerunExporter"),
        "scene": _lazy("scene_exporters", "SceneExporter"),
    }


@hookimpl
def easi3r_schema_fragments() -> dict[str, dict]:
    text = resources.files("easi3r.configs").joinpath("strategies.schema.json").read_text()
    return {key: value for key, value in json.loads(text).items() if not key.startswith("$")}


# SAM2 refinement of the masks (the recipe's ``sam2`` section, off by default): its module, and the sam2
# package, are imported only when the section is enabled.


def _sam2_enabled(recipe: Any) -> bool:
    return bool(OmegaConf.select(recipe, "sam2.enabled", default=False))


@hookimpl
def easi3r_check_recipe(recipe: Any) -> None:
    if _sam2_enabled(recipe):
        from easi3r.strategies.sam2_refine import check_recipe

        check_recipe(recipe)
    _check_flow_prior(recipe)


def _check_flow_prior(recipe: Any) -> None:
    """The global aligner's flow prior (``align.flow_loss_weight > 0``) names a usable flow model."""
    align = OmegaConf.select(recipe, "align")
    if align is None or align.get("name") != "global" or not align.get("flow_loss_weight", 0) > 0:
        return
    from easi3r.strategies.global_align.recipes import check_flow_model

    section = align.get("flow_model")
    check_flow_model(None if section is None else OmegaConf.to_container(section), align.flow_loss_weight)


@hookimpl
def easi3r_masks_ready(masks: Any, frames: Any, recipe: Any, pass_index: int) -> Any:
    if not _sam2_enabled(recipe):
        return None
    from easi3r.strategies.sam2_refine import refine_masks

    return refine_masks(masks, frames, recipe, pass_index)
