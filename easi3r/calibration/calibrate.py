"""``easi3r calibrate``: which attention statistics separate moving objects, for this backbone and data.

Per labelled sequence: pass 1 with the recipe's backbone and capture, every statistic kept per layer and
head (:mod:`.capture`, memory bounded by the frames); then every candidate map is scored against the
ground truth (:mod:`.ranking`), a mask formula is searched on the selection half (:mod:`.search`) and
scored on the report half, and the whole lot is written to the output folder (:mod:`.report`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from easi3r.calibration.capture import streamed_frame_maps
from easi3r.calibration.ranking import CandidateScore, centre_prior_auc, rank_candidates
from easi3r.calibration.report import write_heatmaps, write_ranking, write_search
from easi3r.calibration.search import (
    LabelledMaps,
    SearchResult,
    candidate_terms,
    formula_recipe,
    search_formula,
    split_sequences,
)
from easi3r.calibration.sequences import LabelledSequence
from easi3r.contracts import Backbone, CaptureStrategy, Threshold
from easi3r.errors import Easi3RError
from easi3r.outputs import claim_output_dir, staged_output_dir
from easi3r.pipeline import pair_graph
from easi3r.recipes import create_strategy

__all__ = ["Calibration", "calibrate"]

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    ranked: list[CandidateScore]
    search: SearchResult
    selection: tuple[str, ...]
    report: tuple[str, ...]


def calibrate(
    sequences: Sequence[LabelledSequence],
    recipe: DictConfig,
    out_dir: str | Path,
    *,
    recipe_ref: str,
    backbone: Backbone | None = None,
    beam_width: int = 4,
    depth: int = 4,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Calibrate on ``sequences`` and write the report into ``out_dir`` (complete or not at all).

    ``recipe_ref`` is how the calibrated recipe names its base (a recipe name, or a path); ``backbone``
    replaces the recipe's (tests plant a signal in one). ``log`` gets the progress lines (default: this
    module's logger).
    """
    log = log or logger.info
    if len(sequences) == 1:  # one sequence: its frames are split, the statistics are the whole sequence's
        log("one sequence: its first and second halves are the selection and the report halves")
    with claim_output_dir(out_dir, overwrite=overwrite, log=log):
        backbone = backbone or create_strategy(recipe, "backbone")
        capture: CaptureStrategy = create_strategy(recipe, "capture")
        threshold: Threshold = create_strategy(recipe, "threshold")
        labelled = [m for s in sequences for m in _pass1(s, recipe, backbone, capture, log)]
        if len(sequences) == 1:
            first, second = sequences[0].halves()
            labelled = _split_frames(labelled[0], first, second)
        selection, report = (tuple(s.name for s in half) for half in split_sequences(labelled))
        terms = candidate_terms(labelled[0].maps)
        log(f"{len(terms)} candidate maps; selection: {', '.join(selection)}; report: {', '.join(report)}")
        ranked = rank_candidates(labelled, terms, selection, threshold, progress=log)
        log(f"searching a formula (beam {beam_width}, up to {depth} factors) on the selection half")
        search = search_formula(labelled, terms, beam_width=beam_width, depth=depth)
        log(f"{search.formula}: AUC {search.selection_auc:.3f} (selection), {search.report_auc:.3f} (report)")
        with staged_output_dir(out_dir, overwrite=overwrite) as staging:
            prior = [centre_prior_auc(s) for s in labelled if s.name in report]
            write_ranking(
                staging / "ranking.md",
                staging / "ranking.json",
                ranked,
                selection,
                report,
                backbone.decoder_heads,
                centre_prior=sum(prior) / len(prior),
            )
            write_heatmaps(
                staging / "heatmaps", ranked, report, backbone.decoder_layers, backbone.decoder_heads
            )
            write_search(staging / "search.json", search)
            scores = {"AUC (report half)": search.report_auc, "AUC (selection half)": search.selection_auc}
            base = _base_reference(recipe_ref, Path(out_dir))
            (staging / "calibrated.yaml").write_text(formula_recipe(search.formula, base, scores))
    return Calibration(ranked, search, selection, report)


def _pass1(
    sequence: LabelledSequence,
    recipe: DictConfig,
    backbone: Backbone,
    capture: CaptureStrategy,
    log: Callable[[str], None],
) -> list[LabelledMaps]:
    start = time.perf_counter()
    pairs = pair_graph(recipe, len(sequence.frames))
    encoded = backbone.encode(sequence.frames.images)
    maps = streamed_frame_maps(
        backbone,
        capture,
        encoded,
        pairs,
        len(sequence.frames),
        corner_fix=recipe.maps.corner_fix,
        chunk_pairs=recipe.scale.chunk_pairs,
    )
    log(
        f"{sequence.name}: {len(sequence.frames)} frames, {len(pairs)} pairs, {time.perf_counter() - start:.1f} s"
    )
    return [LabelledMaps(sequence.name, maps.maps, sequence.masks)]


def _split_frames(
    whole: LabelledMaps, first: LabelledSequence, second: LabelledSequence
) -> list[LabelledMaps]:
    cut = len(first.frames)
    if cut < 1 or len(second.frames) < 1:
        raise Easi3RError(f"{whole.name}: too few frames to split into a selection and a report half")
    return [
        LabelledMaps(part.name, {k: v[span] for k, v in whole.maps.items()}, part.masks)
        for part, span in ((first, slice(0, cut)), (second, slice(cut, None)))
    ]


def _base_reference(recipe_ref: str, out_dir: Path) -> str:
    """How calibrated.yaml (in ``out_dir``) names the recipe it extends: a name as it is, a path relative to
    the output folder (``extends`` takes names and relative paths only)."""
    if not (recipe_ref.endswith((".yaml", ".yml")) or "/" in recipe_ref):
        return recipe_ref
    return os.path.relpath(Path(recipe_ref).resolve(), out_dir.resolve())
