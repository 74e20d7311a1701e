"""The Python API: ``easi3r.run`` is the ``easi3r run`` command without argument parsing."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from easi3r.cache import PREDICTION_KEYS, StoredPredictions
from easi3r.contracts import FRAME_SET, backbone_kind
from easi3r.devices import check_device
from easi3r.distributed import Ranks
from easi3r.errors import ArchitectureError, Easi3RError
from easi3r.estimate import available_memory, estimate_frame_set, estimate_run
from easi3r.execution import Execution, open_streamed
from easi3r.frames import load_frames_as
from easi3r.logs import held_until_success
from easi3r.outputs import claim_output_dir, staged_output_dir
from easi3r.pipeline import RunResult, Stages, work_units
from easi3r.pipeline import run as run_pipeline
from easi3r.plugins import get_plugin_manager, registry
from easi3r.recipes import (
    apply_overrides,
    exporter_sections,
    load_recipe,
    resolved_recipe_yaml,
    validate_recipe,
)
from easi3r.timing import Timings, recording, stage
from easi3r.types import Frames, FrameSetOutputs, PairPredictions
from easi3r.user_masks import UserMasks, read_user_masks
from easi3r.windows import alignment_windows

if TYPE_CHECKING:
    from easi3r.contracts import Exporter

logger = logging.getLogger(__name__)


def run(
    source: str | Path | Sequence[str | Path],
    recipe: str | Path | DictConfig = "easi3r_dust3r",
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    overwrite: bool = False,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    keep_cache: bool = False,
    ranks: Ranks | None = None,
    log: Callable[[str], None] | None = None,
    masks: str | Path | None = None,
    masks_final: bool = False,
) -> RunResult:
    """Load frames from ``source`` (folder, file list or video), run the recipe and, if ``out_dir`` is
    given, write every output there (the folder appears only when the run succeeded).

    ``recipe`` is a name, a YAML path or an already composed recipe; ``overrides`` apply to it either way.
    A second run into the same ``out_dir`` (or run cache) is refused while this one runs.

    Long videos: when the recipe streams (``scale.stream``), pair outputs go to the run cache
    ``cache_dir`` (default ``OUT.cache`` beside ``out_dir``, else a temporary folder), which is removed
    once the outputs are written unless ``keep_cache``; ``resume`` continues the run a crash left in that
    cache. ``ranks`` (the processes of a ``torchrun`` job) share the pairs; rank 0 writes the outputs.
    ``log`` receives the memory estimate line (default: this module's logger). ``masks`` is a folder of the
    user's own masks, one per source frame, that replace the attention masks of pass 1 (and, with
    ``masks_final``, the final ones too; :mod:`easi3r.user_masks`). Each stage is logged as it starts and
    ends; the time and peak memory of each are logged at the end and written as ``timings.json``.
    """
    ranks = ranks or Ranks()
    log = log or logger.info
    if isinstance(recipe, DictConfig):
        cfg = recipe.copy()
        apply_overrides(cfg, overrides)
    else:
        cfg = load_recipe(str(recipe), overrides)
    validate_recipe(cfg)
    check_device(str(cfg.backbone.device))
    # what the run holds (the output folder's lock, the cache's lock, a throw-away cache) until it ends
    with contextlib.ExitStack() as held:
        timings = held.enter_context(recording())
        if out_dir is not None:

            def claim() -> None:  # before the frames are read: a second run is refused at once
                held.enter_context(claim_output_dir(out_dir, overwrite=overwrite, log=log))

            ranks.check_on_main(claim)
        # at DEBUG: a bad input or checkpoint fails here, and its error stays the only line the run prints
        with stage("load frames", level=logging.DEBUG):
            frames = load_frames_as(source, cfg.frames)
        user_masks = None
        if masks is not None:
            if not cfg.passes.masks:
                raise Easi3RError(
                    "--masks replaces the attention masks, but this recipe derives none (passes.masks)"
                )
            user_masks = UserMasks(read_user_masks(masks, source, frames, cfg.frames), final=masks_final)
        # its warnings (random weights) wait for success: a recipe error found here stays the only line
        with stage("build backbone", level=logging.DEBUG), held_until_success():
            try:
                stages = Stages.from_recipe(cfg)
            except ArchitectureError as exc:  # say which recipe wanted which network
                named = "" if isinstance(recipe, DictConfig) else f"recipe '{recipe}', "
                raise ArchitectureError(f"{named}backbone '{cfg.backbone.name}': {exc}") from None
        pairs = work_units(cfg, stages.backbone, len(frames))
        cache_root = Path(cache_dir) if cache_dir is not None else None
        if cache_root is None and out_dir is not None:
            cache_root = Path(out_dir).parent / f"{Path(out_dir).name}.cache"
        execution = Execution()
        if _streams(cfg, frames, pairs, stages, cache_root, resume, ranks, log):
            if cache_root is None:  # nothing to resume later without a named place: a throw-away cache
                cache_root = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="easi3r-cache-")))
            execution = open_streamed(
                cfg,
                frames,
                stages.backbone,
                cache_root,
                resume=resume,
                overwrite=overwrite,
                ranks=ranks,
                held=held,
                log=log,
            )
        result = run_pipeline(cfg, frames, stages, pairs=pairs, execution=execution, user_masks=user_masks)
        if ranks.is_main:
            if out_dir is not None:
                _write(result, out_dir, overwrite, timings)
            if execution.cache is not None and not keep_cache:
                execution.cache.remove()
            for line in timings.summary():
                logger.info(line)
        ranks.barrier()  # no rank leaves while rank 0 still reads the cache the ranks share
    return result


def _streams(
    cfg: DictConfig,
    frames: Frames,
    pairs: Tensor,
    stages: Stages,
    cache_root: Path | None,
    resume: bool,
    ranks: Ranks,
    log: Callable[[str], None],
) -> bool:
    """Whether the run streams to the cache; prints the memory estimate first (rank 0)."""
    if backbone_kind(stages.backbone) == FRAME_SET:
        return _frame_set_in_memory(cfg, frames, pairs, stages, resume, ranks, log)
    window = cfg.scale.align_window
    windows = None
    if window is not None and len(frames) > window:
        windows = alignment_windows(len(frames), window, cfg.scale.align_overlap)
    estimate = estimate_run(cfg, frames.images, pairs, stages.backbone, windows)
    available = available_memory()
    stream = cfg.scale.stream
    if stream == "auto":
        stream = available is not None and estimate.pair_outputs > available // 4
    if resume or ranks.world_size > 1:
        if resume and cache_root is None:
            raise Easi3RError("--resume needs the cache of the run: give its output folder or --cache")
        if cfg.scale.stream is False:
            why = "--resume" if resume else "sharing the pairs of one video over processes"
            raise Easi3RError(f"{why} needs the run cache: drop scale.stream=false")
        stream = True
    if ranks.is_main:
        log(estimate.describe(stream, cache_root or "a temporary folder", available))
        advice = estimate.advice(stream, available)
        if advice is not None:
            log(advice)
    return bool(stream)


def _frame_set_in_memory(
    cfg: DictConfig,
    frames: Frames,
    windows: Tensor,
    stages: Stages,
    resume: bool,
    ranks: Ranks,
    log: Callable[[str], None],
) -> bool:
    """A frame-set backbone's windows run in memory (their outputs are per frame, not per pair): say the
    estimate, and refuse what needs the run cache."""
    if resume or ranks.world_size > 1 or cfg.scale.stream is True:
        why = "--resume" if resume else "torchrun" if ranks.world_size > 1 else "scale.stream=true"
        raise Easi3RError(
            f"{why} needs the run cache, which frame-set backbones (backbone '{cfg.backbone.name}') do not "
            "use yet: their windows run in memory"
        )
    estimate = estimate_frame_set(frames.images, windows, stages.backbone)
    available = available_memory()
    if ranks.is_main:
        log(estimate.describe(available))
        advice = estimate.advice(available)
        if advice is not None:
            log(advice)
    return False


def _write(result: RunResult, out_dir: str | Path, overwrite: bool, timings: Timings) -> None:
    with staged_output_dir(out_dir, overwrite=overwrite) as staging:
        with stage("write outputs"):
            write_outputs(result, staging)
        # last, so that it holds the writing too; times differ from run to run, the other outputs do not
        (staging / "timings.json").write_text(json.dumps(timings.to_json(), indent=2) + "\n")
    get_plugin_manager().hook.easi3r_run_end(result=result, out_dir=Path(out_dir))


def write_outputs(result: RunResult, out_dir: Path) -> list[Path]:
    """``run.yaml``, the pair predictions, the intermediates if asked, and every exporter's files."""
    from easi3r.intermediates import intermediates
    from easi3r.writers import save_safetensors

    exporters = create_exporters(result.recipe)  # before writing: a bad parameter leaves nothing half-done
    written = [out_dir / "run.yaml"]
    written[0].write_text(resolved_recipe_yaml(result.recipe))
    outputs = result.final_pass.outputs
    if isinstance(outputs, FrameSetOutputs):
        if outputs.predictions is not None:
            written.append(write_frame_set_predictions(out_dir / "frame_predictions.safetensors", outputs))
    elif outputs.predictions is not None:
        path = out_dir / "pair_predictions.safetensors"
        written.append(write_pair_predictions(path, result.pairs, outputs.predictions))
    if result.recipe.export.save_intermediates:
        tensors, metadata = intermediates(result)
        path = out_dir / "intermediates.safetensors"
        save_safetensors(path, tensors, metadata)
        written.append(path)
    for export in exporters:
        written.extend(export(result, out_dir))
    return written


def create_exporters(recipe: DictConfig) -> list[Exporter]:
    """The exporters of ``export.exporters``, in order, built with their items' params.

    ``export.dilate`` is the masks exporter's ``dilate`` unless its item sets one: the key predates
    exporter params, and the built-in recipes and existing run.yaml files set it there.
    """
    export = OmegaConf.to_container(recipe.export, resolve=True)
    exporters = []
    for i, section in enumerate(exporter_sections(export)):
        if section["name"] == "masks":
            section.setdefault("dilate", export["dilate"])
        exporters.append(registry("exporters").create(section, key=f"export.exporters[{i}]"))
    return exporters


def write_frame_set_predictions(path: Path, outputs: FrameSetOutputs) -> Path:
    """``windows`` and each window's predictions as ``windowK/NAME`` (cameras in that window's world)."""
    from easi3r.intermediates import FRAME_SET_KEYS
    from easi3r.writers import save_safetensors

    tensors = {"windows": outputs.windows}
    for k, prediction in enumerate(outputs.predictions or ()):
        tensors |= {f"window{k}/{name}": getattr(prediction, name) for name in FRAME_SET_KEYS}
    return save_safetensors(path, tensors)


def write_pair_predictions(
    path: Path, pairs: Tensor, predictions: PairPredictions | StoredPredictions
) -> Path:
    """``pairs`` and the four prediction tensors; a streamed pass is copied chunk by chunk."""
    from easi3r.writers import save_safetensors, save_safetensors_streamed

    if isinstance(predictions, PairPredictions):
        tensors = {key: getattr(predictions, key) for key in PREDICTION_KEYS}
        return save_safetensors(path, {"pairs": pairs, **tensors})
    first = predictions.select(torch.tensor([0]))
    layout = {"pairs": (pairs.dtype, tuple(pairs.shape))}
    for key in PREDICTION_KEYS:
        row = getattr(first, key)
        layout[key] = (row.dtype, (len(predictions), *row.shape[1:]))

    def blocks() -> Iterator[tuple[str, int, Tensor]]:
        yield "pairs", 0, pairs
        for start, tensors in predictions.iter_chunks():
            for key, rows in tensors.items():
                yield key, start, rows

    return save_safetensors_streamed(path, layout, blocks())
