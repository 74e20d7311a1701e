"""Hook implementations: a mask rule ``source_contrast``, a tiny frame-set backbone ``tiny_frameset``,
their parameter schemas, and a recipe folder.

Keep this module light: easi3r imports it at start-up, so the rule's code runs only when it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easi3r import hookimpl


def source_contrast(power: float = 1.0) -> Any:
    """A mask rule from the source side alone: tokens that attract little and varied attention,
    ``((1 - src_mean) * src_std) ** power``, min-max normalised per frame."""

    def rule(maps: Any) -> Any:
        score = ((1 - maps["src_mean"]) * maps["src_std"]) ** power
        flat = score.flatten(1)
        low = flat.min(dim=1).values[:, None, None]
        high = flat.max(dim=1).values[:, None, None]
        return (score - low) / (high - low + 1e-6)

    return rule


@hookimpl
def easi3r_mask_rules() -> dict[str, Any]:
    return {"source_contrast": source_contrast}


def tiny_frameset(**params: Any) -> Any:
    """The frame-set backbone of :mod:`easi3r_example_plugin.frameset` (imported only when used)."""
    from easi3r_example_plugin.frameset import TinyFrameSetBackbone

    return TinyFrameSetBackbone(**params)


@hookimpl
def easi3r_backbones() -> dict[str, Any]:
    return {"tiny_frameset": tiny_frameset}


@hookimpl
def easi3r_schema_fragments() -> dict[str, dict]:
    return {
        "rule/source_contrast": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"power": {"type": "number", "exclusiveMinimum": 0}},
        },
        "backbone/tiny_frameset": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"seed": {"type": "integer", "minimum": 0}},
        },
    }


@hookimpl
def easi3r_recipe_dirs() -> list[Path]:
    return [Path(__file__).parent / "recipes"]
