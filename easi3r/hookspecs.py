"""Hook specifications: the contract between easi3r and its plug-ins.

A plug-in is a module (or object) with functions marked ``@easi3r.hookimpl`` whose names are those
below. It is found through the entry-point group ``easi3r`` (``[project.entry-points.easi3r]`` in a
``pyproject.toml``); easi3r's own backbones and strategies are registered through that same group.

Registry hooks (``easi3r_<kind>``) return ``{name: factory}``. A recipe section ``{name: X, **params}``
of that kind calls ``factory(**params)``; what the factory returns is the kind's protocol in
:mod:`easi3r.contracts`. Names must be
unique across all installed plug-ins. Registry hooks are called lazily, on first use, and a plug-in
module must not do heavy work (no torch computation, no file reading) at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

PROJECT = "easi3r"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registries: each returns {name: factory} -------------------------------------------------------


@hookspec
def easi3r_backbones() -> dict[str, Any]:
    """Backbones. ``factory(**backbone_section) ->`` :class:`easi3r.contracts.Backbone`."""


@hookspec
def easi3r_capture_strategies() -> dict[str, Any]:
    """Attention capture. ``factory(**params) ->`` :class:`easi3r.contracts.CaptureStrategy`."""


@hookspec
def easi3r_mask_rules() -> dict[str, Any]:
    """Mask rules. ``factory(**params) ->`` :class:`easi3r.contracts.MaskRule`."""


@hookspec
def easi3r_refiners() -> dict[str, Any]:
    """Map refiners. ``factory(**params) ->`` :class:`easi3r.contracts.Refiner`."""


@hookspec
def easi3r_thresholds() -> dict[str, Any]:
    """Thresholds. ``factory(**params) ->`` :class:`easi3r.contracts.Threshold`."""


@hookspec
def easi3r_reweight_policies() -> dict[str, Any]:
    """Re-weighting policies. ``factory(**params) ->`` :class:`easi3r.contracts.ReweightPolicy`."""


@hookspec
def easi3r_aligners() -> dict[str, Any]:
    """Aligners. ``factory(**params) ->`` :class:`easi3r.contracts.Aligner`."""


@hookspec
def easi3r_exporters() -> dict[str, Any]:
    """Exporters. ``factory(**params) ->`` :class:`easi3r.contracts.Exporter`.

    An ``export.exporters`` item is a name or ``{name: X, **params}``; the params are validated by the
    schema fragment ``"export/<name>"``, like a strategy section's."""


@hookspec
def easi3r_flow_models() -> dict[str, Any]:
    """Optical-flow models, for priors such as the aligner's flow loss (``align.flow_model``).
    ``factory(**params) ->`` :class:`easi3r.contracts.FlowModel`."""


# --- resources a plug-in package may ship ----------------------------------------------------------


@hookspec
def easi3r_recipe_dirs() -> list[Path]:
    """Folders of ``*.yaml`` recipes that ``--recipe NAME`` may name."""


@hookspec
def easi3r_schema_fragments() -> dict[str, dict]:
    """JSON-Schema fragments for the parameters of this plug-in's strategies, keyed ``"<section>/<name>"``
    (e.g. ``"refine/kmeans"``). The fragment validates the section without its ``name`` key."""


@hookspec(firstresult=True)
def easi3r_convert_checkpoint(src: Path, dst: Path) -> Path | None:
    """Write the checkpoint ``src`` as a hub folder ``dst`` (``config.json`` + ``model.safetensors``) for
    ``easi3r convert``; return None for a file this plug-in's backbones do not read. First non-None wins."""


# --- lifecycle -------------------------------------------------------------------------------------


@hookspec
def easi3r_check_recipe(recipe: Any) -> None:
    """Called by ``validate_recipe`` once the recipe is valid, before any frame or weight is read: raise a
    one-line :class:`easi3r.errors.Easi3RError` naming the key for a setting of yours that cannot run here
    (a weights file that is missing, an optional package that is not installed)."""


@hookspec
def easi3r_run_start(recipe: Any, frames: Any) -> None:
    """Called once before pass 1 with the resolved recipe and the loaded frames."""


@hookspec(firstresult=True)
def easi3r_masks_ready(masks: Any, frames: Any, recipe: Any, pass_index: int) -> Any:
    """Called whenever a pass's masks are derived. Return a replacement ``DynamicMasks`` (for example
    refined by an external segmenter such as SAM2) or ``None`` to keep them. First non-None wins."""


@hookspec
def easi3r_run_end(result: Any, out_dir: Path) -> None:
    """Called once after the exporters wrote everything into ``out_dir``."""
