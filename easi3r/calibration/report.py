"""What ``easi3r calibrate`` writes: the ranked candidates (Markdown and JSON), a layers × heads AUC map
per statistic, the search's trail and the calibrated recipe."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from easi3r.calibration.ranking import CandidateScore
from easi3r.calibration.search import SearchResult
from easi3r.maps import STAT_NAMES
from easi3r.writers import write_png

__all__ = ["write_heatmaps", "write_ranking", "write_search"]

_CHANNEL = re.compile(r"^channel\((\w+)_raw, (\d+)\)$")
_METRICS = (("auc", "AUC"), ("best_iou", "IoU (best threshold)"), ("iou", "IoU (recipe threshold)"))


def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def write_ranking(
    path_md: Path,
    path_json: Path,
    ranked: Sequence[CandidateScore],
    selection: Sequence[str],
    report: Sequence[str],
    heads: int,
    centre_prior: float,
    top: int = 40,
) -> None:
    """The ranking, best first (by selection AUC): Markdown with the ``top`` rows, JSON with every row.
    ``centre_prior`` is the report half's AUC of the distance to the image centre, the bar to clear."""
    lines = [
        "# Candidate maps, ranked",
        "",
        f"Ranked by pixel AUC on the selection half ({', '.join(selection)}); the report half "
        f"({', '.join(report)}) was never used for any choice: its columns are the honest estimate.",
        "A candidate marked `1 - x` separates moving pixels by low values; its orientation was chosen on the "
        "selection half.",
        "",
        f"Baseline: a map that only knows the distance to the image centre scores AUC {_number(centre_prior)} "
        "on the report half. A candidate near it may see where objects usually are, not that they move.",
        "",
        "| rank | candidate | layer | head | orientation | AUC (selection) | AUC (report) "
        "| IoU best thr. (report) | IoU recipe thr. (report) |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    rows = []
    for rank, score in enumerate(ranked, 1):
        layer, head = _layer_head(score.term, heads)
        row = {
            "rank": rank,
            "candidate": score.term,
            "layer": layer,
            "head": head,
            "orientation": "1 - x" if score.flipped else "x",
            "selection": {key: _json_number(score.mean(key, selection)) for key, _ in _METRICS},
            "report": {key: _json_number(score.mean(key, report)) for key, _ in _METRICS},
            "per_sequence": {
                name: {key: _json_number(value) for key, value in values.items()}
                for name, values in score.per_sequence.items()
            },
        }
        rows.append(row)
        if rank <= top:
            lines.append(
                f"| {rank} | `{score.term}` | {'' if layer is None else layer} | {'' if head is None else head} "
                f"| {row['orientation']} | {_number(score.mean('auc', selection))} "
                f"| {_number(score.mean('auc', report))} | {_number(score.mean('best_iou', report))} "
                f"| {_number(score.mean('iou', report))} |"
            )
    if len(ranked) > top:
        lines += ["", f"{len(ranked) - top} more candidates in `{path_json.name}`."]
    path_md.write_text("\n".join(lines) + "\n")
    document = {
        "selection": list(selection),
        "report": list(report),
        "centre_prior_auc": _json_number(centre_prior),
        "candidates": rows,
    }
    path_json.write_text(json.dumps(document, indent=1) + "\n")


def _layer_head(term: str, heads: int) -> tuple[int | None, int | None]:
    match = _CHANNEL.match(term)
    if match is None:
        return None, None
    channel = int(match.group(2))
    return channel // heads, channel % heads


_CELL = 44
_MARGIN = 64


def write_heatmaps(
    folder: Path, ranked: Sequence[CandidateScore], report: Sequence[str], layers: int, heads: int
) -> list[Path]:
    """One PNG per statistic: the report half's AUC (as ``x``, not oriented) of every layer and head, red
    above 0.5, blue below, white at 0.5, the value written in each cell."""
    written = []
    for stat in STAT_NAMES:
        grid = np.full((layers, heads), np.nan)
        for score in ranked:
            match = _CHANNEL.match(score.term)
            if match is None or match.group(1) != stat:
                continue
            auc = score.mean("auc", report)
            channel = int(match.group(2))
            grid[channel // heads, channel % heads] = 1 - auc if score.flipped else auc
        written.append(
            write_png(folder / f"{stat}.png", _heatmap(grid, f"{stat}: AUC per layer (rows) and head"))
        )
    return written


def _heatmap(grid: np.ndarray, title: str) -> np.ndarray:
    layers, heads = grid.shape
    width = max(_MARGIN + heads * _CELL + 8, 420)
    canvas = np.full((_MARGIN + layers * _CELL + 30, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, title, (6, 22), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "blue < 0.5 (1 - x separates), white = 0.5 (chance), red > 0.5", (6, 44), font, 0.4,
                (60, 60, 60), 1, cv2.LINE_AA)  # fmt: skip
    for layer in range(layers):
        y = _MARGIN + layer * _CELL
        cv2.putText(canvas, f"L{layer}", (6, y + 28), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for head in range(heads):
            x = _MARGIN - 24 + head * _CELL
            value = grid[layer, head]
            colour = (200, 200, 200) if math.isnan(value) else _diverging(value)
            cv2.rectangle(canvas, (x, y), (x + _CELL - 2, y + _CELL - 2), colour, -1)
            label = "–" if math.isnan(value) else f"{value:.2f}"
            cv2.putText(canvas, label, (x + 4, y + 27), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for head in range(heads):
        x = _MARGIN - 24 + head * _CELL
        cv2.putText(canvas, f"h{head}", (x + 10, _MARGIN + layers * _CELL + 18), font, 0.4, (0, 0, 0), 1)
    return canvas


def _diverging(auc: float) -> tuple[int, int, int]:
    """RGB: white at 0.5, full red at 1, full blue at 0."""
    strength = min(abs(auc - 0.5) * 2, 1.0)
    fade = round(255 * (1 - strength))
    return (255, fade, fade) if auc >= 0.5 else (fade, fade, 255)


def write_search(path: Path, result: SearchResult) -> None:
    document = {
        "formula": result.formula,
        "selection_auc": _json_number(result.selection_auc),
        "report_auc": _json_number(result.report_auc),
        "selection": list(result.selection),
        "report": list(result.report),
        "trail": [
            {"formula": s.formula, "selection_auc": _json_number(s.selection_auc)} for s in result.trail
        ],
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
