"""Exporters: write the final masks, the maps they came from, and overlays (file layout: docs/outputs.md).

Contract (``easi3r_exporters``): ``factory(**params) -> export``; ``export(result, out_dir) -> list[Path]``
returns every file written. All three read the final masks (``result.masks``, the pass the recipe names)
and write nothing when a run produced none (the single-pass baseline). Frame ``t`` is the position in
``result.frames.paths``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import OmegaConf

from easi3r import writers
from easi3r.strategies.aggregate import STAT_NAMES

if TYPE_CHECKING:
    from easi3r.pipeline import RunResult
    from easi3r.types import DynamicMasks

# the reference writes its "enlarged" masks with a 3×3 dilation
REFERENCE_DILATE = 3


def _binary_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _check_frames(result: RunResult, masks: DynamicMasks) -> None:
    if masks.masks.shape[0] != len(result.frames):
        raise ValueError(f"{masks.masks.shape[0]} masks for {len(result.frames)} frames")


class MaskExporter:
    """``masks/dynamic_mask_{t:04d}.png`` and ``masks/enlarged_dynamic_mask_{t:04d}.png`` (uint8 0/255).

    ``dilate``: the square kernel of the enlarged masks; ``None`` takes ``export.dilate`` from the recipe
    (reference: 3).
    """

    def __init__(self, dilate: int | None = None) -> None:
        self.dilate = dilate

    def __call__(self, result: RunResult, out_dir: Path) -> list[Path]:
        masks = result.masks
        if masks is None:
            return []
        _check_frames(result, masks)
        kernel = self.dilate
        if kernel is None:
            kernel = OmegaConf.select(result.recipe, "export.dilate", default=REFERENCE_DILATE)
        folder = Path(out_dir) / "masks"
        written = []
        for t, mask in enumerate(masks.masks.detach().cpu().numpy()):
            written.append(writers.write_png(folder / f"dynamic_mask_{t:04d}.png", _binary_png(mask)))
            enlarged = writers.dilate(mask, kernel)
            written.append(
                writers.write_png(folder / f"enlarged_dynamic_mask_{t:04d}.png", _binary_png(enlarged))
            )
        return written


class MapExporter:
    """Colour-mapped maps per frame, their raw values in one safetensors file, and ``overview.png``.

    ``overview_columns``: at most this many evenly spaced frames appear in the overview.
    """

    def __init__(self, overview_columns: int = 8) -> None:
        self.overview_columns = overview_columns

    def __call__(self, result: RunResult, out_dir: Path) -> list[Path]:
        masks = result.masks
        if masks is None:
            return []
        _check_frames(result, masks)
        out_dir = Path(out_dir)
        size = result.frames.size
        token_maps = self._token_maps(masks)
        written = []
        for name, values in token_maps.items():
            for t, frame_map in enumerate(values):
                image = writers.upsample_nearest(writers.colorize(frame_map), size)
                written.append(writers.write_png(out_dir / "maps" / name / f"{t:04d}.png", image))
        written.append(writers.write_png(out_dir / "overview.png", self._overview(result, masks, token_maps)))
        written.append(self._save_values(result, masks, out_dir / "maps" / "maps.safetensors"))
        return written

    @staticmethod
    def _token_maps(masks: DynamicMasks) -> dict[str, np.ndarray]:
        """The ``(T, NH, NW)`` maps to draw: the four fused statistics (when kept), then the rule's output
        and its refinement. A plug-in that replaces the masks may leave ``maps`` out."""
        fused = {} if masks.maps is None else masks.maps.maps
        drawn = {name: fused[name] for name in STAT_NAMES if name in fused}
        drawn.update(dynamic_map=masks.dynamic_map, refined_map=masks.refined_map)
        return {name: values.detach().float().cpu().numpy() for name, values in drawn.items()}

    def _overview(
        self, result: RunResult, masks: DynamicMasks, token_maps: dict[str, np.ndarray]
    ) -> np.ndarray:
        # only the shown frames are built at full size, so long videos cost no more than 8 frames
        shown = writers.spread_indices(len(result.frames), self.overview_columns)
        rgb = result.frames.rgb()[shown]
        binary = masks.masks.detach().cpu().numpy()[shown]
        size = result.frames.size
        rows = [("RGB", list(rgb))]
        rows += [
            (name, [writers.upsample_nearest(writers.colorize(values[t]), size) for t in shown])
            for name, values in token_maps.items()
        ]
        rows.append(("mask overlay", [writers.overlay(image, mask) for image, mask in zip(rgb, binary)]))
        return writers.overview(
            rows, column_labels=[f"t={t}" for t in shown], max_columns=self.overview_columns
        )

    @staticmethod
    def _save_values(result: RunResult, masks: DynamicMasks, path: Path) -> Path:
        own = {"dynamic_map": masks.dynamic_map, "refined_map": masks.refined_map, "masks": masks.masks}
        maps = {} if masks.maps is None else masks.maps.maps
        clash = sorted(own.keys() & maps.keys())
        if clash:
            raise ValueError(f"per-frame map names {clash} clash with the keys of maps.safetensors")
        metadata = {"frames": json.dumps(list(result.frames.paths)), "threshold": repr(masks.threshold)}
        return writers.save_safetensors(path, {**maps, **own}, metadata)


class OverlayExporter:
    """``overlays/{t:04d}.png``: the frame with its final mask tinted and outlined."""

    def __init__(self, alpha: float = 0.5) -> None:
        self.alpha = alpha

    def __call__(self, result: RunResult, out_dir: Path) -> list[Path]:
        masks = result.masks
        if masks is None:
            return []
        _check_frames(result, masks)
        folder = Path(out_dir) / "overlays"
        binary = masks.masks.detach().cpu().numpy()
        return [
            writers.write_png(folder / f"{t:04d}.png", writers.overlay(image, mask, alpha=self.alpha))
            for t, (image, mask) in enumerate(zip(result.frames.rgb(), binary))
        ]
