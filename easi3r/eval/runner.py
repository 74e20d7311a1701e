"""Benchmark runs: every sequence of a dataset through a recipe, scored against its ground truth.

``evaluate`` runs each sequence with :func:`easi3r.api.run` into ``<out>/<sequence>/`` (the usual run
outputs), scores what the run produced against the ground truth the dataset has, and writes
``<out>/<sequence>/metrics.json``, ``<out>/summary.json`` and ``<out>/summary.md``.

What is scored, and how:

* **masks** (when the dataset has GT masks and the recipe derives masks): the GT is brought onto the
  network grid exactly as the frame was (same resize and centre crop, nearest-neighbour), all objects
  merged. Per sequence: ``JM`` = mean per-frame IoU (1 when both masks are empty), ``JR`` = fraction of
  frames with IoU > 0.5, ``F`` = mean per-frame boundary F-measure. The dataset row follows
  ``mask_convention``: ``"per_frame"`` weighs every frame equally, as the reference's ``mask_metric.py``
  effectively does; ``"per_sequence"`` weighs every sequence equally, the DAVIS benchmark's convention.
* **poses** (GT poses and a scene, i.e. an aligner that produces one): ``ATE``, ``RPE_trans`` and
  ``RPE_rot`` (degrees) after Sim(3) Umeyama alignment, consecutive frames, evo's definitions; the
  dataset row is the plain mean over sequences (the reference's). Both trajectories are also written to
  ``<out>/<sequence>/eval/{pred,gt}_traj_tum.txt`` (TUM order ``t x y z qx qy qz qw``, t = frame index),
  so ``evo_ape tum gt_traj_tum.txt pred_traj_tum.txt -as`` reproduces the ATE.
* **depth** (GT depth and a scene): one alignment per video (``depth_align``), GT brought onto the
  network grid (nearest), GT ≤ 0 and GT ≥ the dataset's ``depth_max`` ignored; the dataset row weighs
  sequences by their valid pixels, as MonST3R's video-depth evaluation does.

A sequence that fails (unreadable frame or ground truth, a run error, a degenerate trajectory) is
recorded with its error and the others are still evaluated; :attr:`Summary.failed` lists them and the
``easi3r eval`` command then exits with status 1, so that scripts notice a partial result.

Started by ``torchrun``, the processes share the sequences out and rank 0 writes the summary
(:mod:`easi3r.distributed`); the files written are those of one process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import traceback
from collections.abc import Callable, Mapping
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from easi3r import distributed
from easi3r.errors import Easi3RError
from easi3r.eval.datasets import DATASETS, Sequence, read_depth, read_mask
from easi3r.eval.metrics import (
    DepthAlign,
    ate,
    dataset_mean,
    depth_metrics,
    f_measure,
    j_mean_recall_per_frame,
    rpe,
    write_tum,
)
from easi3r.frame_geometry import network_geometry, to_network_grid
from easi3r.plugins import did_you_mean, one_line

logger = logging.getLogger(__name__)

__all__ = ["MASK_CONVENTIONS", "SequenceResult", "Summary", "evaluate", "network_geometry", "to_network_grid"]

MaskConvention = Literal["per_frame", "per_sequence"]
MASK_CONVENTIONS: tuple[str, ...] = ("per_frame", "per_sequence")
DEPTH_ALIGNS: tuple[str, ...] = ("median", "lstsq_scale", "lstsq_scale_shift", "none")

_MASK_KEYS = ("JM", "JR", "F")
_POSE_KEYS = ("ATE", "RPE_trans", "RPE_rot")
_DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1", "delta_2", "delta_3")
# (metric key, table header, multiplier, decimals): the paper's tables give J in percent, ATE in metres.
_COLUMNS = (
    ("JM", "JM ↑", 100, 1),
    ("JR", "JR ↑", 100, 1),
    ("F", "F ↑", 100, 1),
    ("ATE", "ATE ↓", 1, 3),
    ("RPE_trans", "RPE trans ↓", 1, 3),
    ("RPE_rot", "RPE rot (°) ↓", 1, 3),
    ("depth_abs_rel", "Abs Rel ↓", 1, 3),
    ("depth_delta_1", "δ<1.25 ↑", 100, 1),
)


@dataclass
class SequenceResult:
    """The outcome of one sequence: its metrics, or the error that stopped it."""

    name: str
    frames: int = 0  # frames scored (those the run kept)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # ground truth that could not be used, and why
    error: str | None = None
    traceback: str | None = None  # only for unexpected exceptions (bugs), to be reported

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Summary:
    """Every sequence's result and the dataset row (``mean``) under the chosen conventions."""

    dataset: str
    root: str
    recipe: str
    overrides: list[str]
    mask_convention: str
    depth_align: str
    sequences: list[SequenceResult]
    mean: dict[str, float]

    @property
    def failed(self) -> list[SequenceResult]:
        return [s for s in self.sequences if not s.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "recipe": self.recipe,
            "overrides": self.overrides,
            "mask_convention": self.mask_convention,
            "depth_align": self.depth_align,
            "sequences": {
                s.name: {
                    key: value
                    for key, value in (
                        ("frames", s.frames),
                        ("metrics", s.metrics),
                        ("notes", s.notes),
                        ("error", s.error),
                        ("traceback", s.traceback),
                    )
                    if value is not None
                }
                for s in self.sequences
            },
            "mean": self.mean,
            "failed": [s.name for s in self.failed],
        }

    def to_markdown(self) -> str:
        """The paper-style table: one row per scored sequence, then the dataset row."""
        scored = [s for s in self.sequences if s.ok]
        columns = [c for c in _COLUMNS if any(c[0] in s.metrics for s in scored)]
        lines = [
            f"# {self.dataset}: {len(scored)} of {len(self.sequences)} sequences scored",
            "",
            f"Recipe `{self.recipe}`"
            + (f", overrides `{' '.join(self.overrides)}`" if self.overrides else "")
            + f". Masks: mean row {self.mask_convention.replace('_', '-')}; depth aligned "
            f"`{self.depth_align}` per video. J and δ in %, ATE and RPE trans in GT units.",
            "",
        ]
        if columns:
            lines.append("| sequence | frames | " + " | ".join(c[1] for c in columns) + " |")
            lines.append("|---|---:|" + "---:|" * len(columns))
            rows = [(s.name, s.frames, s.metrics) for s in scored]
            rows.append(("**mean**", sum(s.frames for s in scored), self.mean))
            for name, frames, metrics in rows:
                cells = [_format(metrics.get(key), scale, digits) for key, _, scale, digits in columns]
                lines.append(f"| {name} | {frames} | " + " | ".join(cells) + " |")
        else:
            lines.append("No metric could be computed (see the notes and errors below).")
        notes = [(s.name, note) for s in scored for note in s.notes]
        if notes:
            lines += ["", "Notes:", ""] + [f"- {name}: {note}" for name, note in notes]
        if self.failed:
            lines += ["", "Failed:", ""] + [f"- {s.name}: {s.error}" for s in self.failed]
        return "\n".join(lines) + "\n"


def evaluate(
    dataset: str,
    root: str | os.PathLike[str],
    recipe: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    overrides: SequenceOf[str] = (),
    sequences: SequenceOf[str] | None = None,
    mask_convention: MaskConvention = "per_frame",
    *,
    depth_align: DepthAlign = "lstsq_scale_shift",
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Run ``recipe`` on the sequences of ``dataset`` under ``root`` and score them (see the module doc).

    ``sequences`` picks sequences by name (``["all"]``: every one found; None: the dataset's standard
    split). ``overrides`` apply to every run, after the overrides the dataset's protocol needs.
    ``log`` receives one line per finished sequence (default: this module's logger). Problems with the arguments, the dataset root or an
    existing ``out_dir`` (without ``overwrite``) raise :class:`Easi3RError` before anything runs.
    """
    from easi3r.devices import check_device
    from easi3r.recipes import load_recipe, validate_recipe

    reader = DATASETS.get(dataset)
    if reader is None:
        raise Easi3RError(
            f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)}){did_you_mean(dataset, DATASETS)}"
        )
    if mask_convention not in MASK_CONVENTIONS:
        raise Easi3RError(
            f"mask convention must be one of {', '.join(MASK_CONVENTIONS)}, got '{mask_convention}'"
        )
    if depth_align not in DEPTH_ALIGNS:
        raise Easi3RError(f"depth alignment must be one of {', '.join(DEPTH_ALIGNS)}, got '{depth_align}'")
    names = reader.sequence_names(root, sequences)
    # A bad recipe or override would fail every sequence the same way: report it once, up front.
    cfg = load_recipe(str(recipe), overrides)
    validate_recipe(cfg)
    check_device(str(cfg.backbone.device))
    out = Path(out_dir)

    def check_out_dir() -> None:
        if out.exists() and not out.is_dir():
            raise Easi3RError(f"{out}: output path exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise Easi3RError(
                f"{out}: output folder exists and is not empty; pass --overwrite to write into it"
            )

    with distributed.join(str(cfg.backbone.device)) as ranks:
        ranks.check_on_main(check_out_dir)
        # the summary records the user's overrides: the per-rank device is not part of the benchmark
        run_overrides = [*overrides, *ranks.overrides()]
        results = []
        for position, name in ranks.shard(list(enumerate(names, 1))):
            result = _evaluate_sequence(
                reader.load, Path(root), name, recipe, run_overrides, out, depth_align
            )
            results.append(result)
            (log or logger.info)(
                f"{ranks.log_prefix}[{position}/{len(names)}] {name}: {_one_line_result(result)}"
            )
        results = ranks.gather(results)

        summary = Summary(
            dataset=dataset,
            root=str(root),
            recipe=str(recipe),
            overrides=list(overrides),
            mask_convention=mask_convention,
            depth_align=depth_align,
            sequences=results,
            mean=_dataset_row([r for r in results if r.ok], mask_convention),
        )
        if ranks.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _write_json(out / "summary.json", summary.to_json())
            (out / "summary.md").write_text(summary.to_markdown())
        # no rank reports the summary before it is written
        ranks.barrier()
    return summary


# --- one sequence ----------------------------------------------------------------------------------


def _evaluate_sequence(
    load: Callable[[Path, str], Sequence],
    root: Path,
    name: str,
    recipe: str | os.PathLike[str],
    overrides: SequenceOf[str],
    out: Path,
    depth_align: DepthAlign,
) -> SequenceResult:
    from easi3r.api import run

    seq_dir = out / name
    ran = False
    try:
        seq = load(root, name)
        # overwrite: the up-front check on out_dir already asked for the user's consent
        result = run(seq.frames, recipe, seq_dir, [*seq.run_overrides, *overrides], overwrite=True)
        ran = True
        scored = _score(seq, result, seq_dir, depth_align)
    except Exception as exc:  # keep going: one sequence's crash must not cost the whole benchmark
        if not ran:
            # outputs of an earlier evaluation of this sequence would pass for this one's
            shutil.rmtree(seq_dir, ignore_errors=True)
        if isinstance(exc, Easi3RError):
            return SequenceResult(name, error=one_line(exc))
        return SequenceResult(
            name, error=f"{type(exc).__name__}: {one_line(exc)}", traceback=traceback.format_exc()
        )
    _write_json(
        seq_dir / "metrics.json",
        {"sequence": name, "frame_indices": scored.frames, "metrics": scored.metrics, "notes": scored.notes},
    )
    return SequenceResult(name, frames=len(scored.frames), metrics=scored.metrics, notes=scored.notes)


@dataclass
class _Scored:
    frames: list[int]  # indices into the sequence's frame list of the frames the run kept
    metrics: dict[str, float]
    notes: list[str]


def _score(seq: Sequence, result: Any, seq_dir: Path, depth_align: DepthAlign) -> _Scored:
    """Every metric the ground truth and the run's outputs allow."""
    position = {str(path): k for k, path in enumerate(seq.frames)}
    kept = [position[path] for path in result.frames.paths]  # stride / max_frames overrides drop frames
    grid = _Grid.of(result)
    scene = result.scene
    metrics: dict[str, float] = {}
    notes: list[str] = []

    if seq.gt_masks is not None:
        if result.masks is None:
            notes.append("GT masks not scored: the recipe derives no masks")
        else:
            pred = result.masks.masks.detach().cpu().numpy().astype(bool)
            gt = np.stack([grid.to_grid(read_mask(seq.gt_masks[k]), t) for t, k in enumerate(kept)])
            metrics["JM"], metrics["JR"] = j_mean_recall_per_frame(pred, gt)
            metrics["F"] = float(np.mean([f_measure(p, g) for p, g in zip(pred, gt)]))

    if scene is None and (seq.gt_poses is not None or seq.gt_depth is not None):
        notes.append("GT poses/depth not scored: the run has no scene (set align.name to an aligner)")
    if seq.gt_poses is not None and scene is not None:
        pred_c2w = scene.cam2world.detach().double().cpu().numpy()
        gt_c2w = seq.gt_poses[kept]
        metrics["ATE"] = ate(pred_c2w, gt_c2w)
        metrics["RPE_trans"], metrics["RPE_rot"] = rpe(pred_c2w, gt_c2w)
        (seq_dir / "eval").mkdir(exist_ok=True)
        write_tum(seq_dir / "eval" / "pred_traj_tum.txt", kept, pred_c2w)
        write_tum(seq_dir / "eval" / "gt_traj_tum.txt", kept, gt_c2w)
    if seq.gt_depth is not None and scene is not None:
        pred_depth = scene.depth.detach().double().cpu().numpy()
        gt_depth = np.stack([grid.to_grid(read_depth(seq.gt_depth[k]), t) for t, k in enumerate(kept)])
        values = depth_metrics(pred_depth, gt_depth, align=depth_align, max_depth=seq.depth_max)
        metrics.update({f"depth_{key}": value for key, value in values.items()})
        valid = gt_depth > 0 if seq.depth_max is None else (gt_depth > 0) & (gt_depth < seq.depth_max)
        metrics["depth_valid_pixels"] = int(valid.sum())
    return _Scored(kept, metrics, notes)


@dataclass
class _Grid:
    """How the run turned its source frames into network inputs."""

    size: int
    crop: bool
    square_ok: bool
    source_sizes: list[tuple[int, int]]  # (W, H) of each kept frame's file
    network_size: tuple[int, int]  # (H, W)
    mode: str = "dust3r"

    @classmethod
    def of(cls, result: Any) -> _Grid:
        f = result.recipe.frames
        sizes = list(result.frames.source_sizes)
        return cls(f.size, f.crop, f.square_ok, sizes, result.frames.size, f.get("mode", "dust3r"))

    def to_grid(self, values: NDArray, t: int) -> NDArray:
        return to_network_grid(
            values, self.source_sizes[t], self.size, self.crop, self.square_ok, self.network_size, self.mode
        )


# --- ground truth on the network grid --------------------------------------------------------------


# --- the dataset row -------------------------------------------------------------------------------


def _dataset_row(results: list[SequenceResult], mask_convention: str) -> dict[str, float]:
    row: dict[str, float] = {}
    for key, have in _results_with(results, _MASK_KEYS):
        if mask_convention == "per_frame":
            # the mean over all frames of all sequences, from the per-sequence frame means
            row[key] = float(np.average([r.metrics[key] for r in have], weights=[r.frames for r in have]))
        else:
            row[key] = dataset_mean({r.name: r.metrics[key] for r in have})
    for key, have in _results_with(results, _POSE_KEYS):
        row[key] = dataset_mean({r.name: r.metrics[key] for r in have})
    for key, have in _results_with(results, [f"depth_{k}" for k in _DEPTH_KEYS]):
        weights = [r.metrics["depth_valid_pixels"] for r in have]
        row[key] = float(np.average([r.metrics[key] for r in have], weights=weights))
    return row


def _results_with(
    results: list[SequenceResult], keys: SequenceOf[str]
) -> list[tuple[str, list[SequenceResult]]]:
    """Each metric key with the results that hold it, in key order; a key that no result holds is left out
    (a metric no sequence could compute has no dataset mean)."""
    having = [(key, [r for r in results if key in r.metrics]) for key in keys]
    return [(key, have) for key, have in having if have]


def _one_line_result(result: SequenceResult) -> str:
    if not result.ok:
        return f"FAILED: {result.error}"
    shown = [f"{k} {_format(result.metrics[k], s, d)}" for k, _, s, d in _COLUMNS if k in result.metrics]
    return ", ".join(shown) or "no metric (see notes)"


def _format(value: float | None, scale: float, digits: int) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    return f"{value * scale:.{digits}f}"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    # Infinity (a log error with a non-positive depth) is written as JSON's common extension, which
    # Python's json reads back.
    path.write_text(json.dumps(data, indent=2) + "\n")
