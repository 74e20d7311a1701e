"""Exporters: the preamble every built-in exporter shares, and the exporters of the final masks, the maps
they came from and overlays, as pictures and as videos (file layout: docs/outputs.md).

Contract (``easi3r_exporters``): ``factory(**params) -> export``; ``export(result, out_dir) -> list[Path]``
returns every file written. The params come from the recipe's ``export.exporters`` item and are checked
by the fragment ``export/<name>`` (``configs/strategies.schema.json``). The exporters here read the final
masks (``result.masks``, the pass the recipe names) and write nothing when a run produced none (the
single-pass baseline). Frame ``t`` is the position in ``result.frames.paths``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, Literal, TypeVar

import numpy as np

from easi3r import writers
from easi3r.frame_geometry import network_geometry
from easi3r.maps import STAT_NAMES

if TYPE_CHECKING:
    from easi3r.pipeline import RunResult
    from easi3r.types import DynamicMasks

# the reference writes its "enlarged" masks with a 3×3 dilation
REFERENCE_DILATE = 3

# frames.py's patch: network sizes are multiples of it

# writers.overlay's default tint: the overview's legend entry for the overlays shows it
_OVERLAY_COLOR = (255, 0, 64)

# the maps video and the overview draw maps at most this wide (tokens stay blocks of several pixels)
_PANEL_WIDTH = 256

InputT = TypeVar("InputT")


class ExporterBase(ABC, Generic[InputT]):
    """What every built-in exporter does before writing: take its input from the run (:meth:`input`),
    write nothing when the run has none, and create its folder under ``out_dir``."""

    folder: ClassVar[str] = ""  # relative to out_dir; "" is out_dir itself

    def __call__(self, result: RunResult, out_dir: Path) -> list[Path]:
        data = self.input(result)
        if data is None:
            return []
        folder = Path(out_dir) / self.folder
        folder.mkdir(parents=True, exist_ok=True)
        return self.write(result, data, folder)

    @staticmethod
    @abstractmethod
    def input(result: RunResult) -> InputT | None:
        """What the exporter writes from, checked against the run's frames; None when the run has none."""

    @abstractmethod
    def write(self, result: RunResult, data: InputT, folder: Path) -> list[Path]:
        """Write the files into ``folder`` and return them."""


class FinalMasksExporter(ExporterBase["DynamicMasks"]):
    """An exporter of the final masks."""

    @staticmethod
    def input(result: RunResult) -> DynamicMasks | None:
        masks = result.masks
        if masks is not None and masks.masks.shape[0] != len(result.frames):
            raise ValueError(f"{masks.masks.shape[0]} masks for {len(result.frames)} frames")
        return masks


def _binary_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


class MaskExporter(FinalMasksExporter):
    """``masks/dynamic_mask_{t:04d}.png`` and ``masks/enlarged_dynamic_mask_{t:04d}.png`` (uint8 0/255).

    ``dilate``: the square kernel of the enlarged masks (0 or 1: an undilated copy). A recipe that does not
    set it passes ``export.dilate`` (:func:`easi3r.api.create_exporters`). ``resolution``: ``network``
    writes the masks at the processing size; ``source`` at each frame's source size (:func:`to_source`),
    dilated there (the kernel counts source pixels).
    """

    folder = "masks"

    def __init__(
        self, dilate: int = REFERENCE_DILATE, resolution: Literal["network", "source"] = "network"
    ) -> None:
        if dilate < 0:
            raise ValueError(f"dilate must be >= 0, got {dilate}")
        if resolution not in ("network", "source"):
            raise ValueError(f"resolution must be 'network' or 'source', got {resolution!r}")
        self.dilate = dilate
        self.resolution = resolution

    def write(self, result: RunResult, masks: DynamicMasks, folder: Path) -> list[Path]:
        written = []
        for t, mask in enumerate(masks.masks.detach().cpu().numpy()):
            if self.resolution == "source":
                mask = to_source(mask, result, t)
            written.append(writers.write_png(folder / f"dynamic_mask_{t:04d}.png", _binary_png(mask)))
            enlarged = writers.dilate(mask, self.dilate)
            written.append(
                writers.write_png(folder / f"enlarged_dynamic_mask_{t:04d}.png", _binary_png(enlarged))
            )
        return written


def to_source(mask: np.ndarray, result: RunResult, t: int) -> np.ndarray:
    """Frame ``t``'s network-size ``(H, W)`` mask at the frame's source size ``(SH, SW)``.

    The inverse of frames.py's preprocessing (:func:`easi3r.frame_geometry.network_geometry`), read from the
    recipe's ``frames`` keys: each source pixel takes the mask pixel its centre maps to (nearest, as
    :func:`easi3r.writers.upsample_nearest`). The border the centre crop cut away was never seen by the
    network: it is 0 (static).
    """
    if not result.frames.source_sizes:
        raise ValueError("resolution: source needs the frames' source sizes (Frames.source_sizes)")
    cfg = result.recipe.frames
    source = result.frames.source_sizes[t]
    resized, box, final = network_geometry(
        *source, cfg.size, cfg.crop, cfg.square_ok, cfg.get("mode", "dust3r")
    )
    rows = _source_to_network(source[1], resized[1], final[1], mask.shape[0], None if box is None else box[1])
    cols = _source_to_network(source[0], resized[0], final[0], mask.shape[1], None if box is None else box[0])
    inside = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    return mask[np.maximum(rows, 0)][:, np.maximum(cols, 0)] & inside


def _source_to_network(source: int, resized: int, final: int, network: int, origin: int | None) -> np.ndarray:
    """Along one axis, the network pixel each source pixel's centre falls in, -1 outside the crop.

    Source → resized is a scaling; the crop shifts by ``origin`` (no crop: scaled to ``final``); a frame
    whose own final size differs from the run's (mixed sizes) was then scaled to ``network``."""
    position = (np.arange(source) + 0.5) * resized / source
    position = position - origin if origin is not None else position * final / resized
    index = np.floor(position * network / final).astype(np.int64)
    return np.where((position >= 0) & (index < network), index, -1)


def token_maps_of(masks: DynamicMasks) -> dict[str, np.ndarray]:
    """The ``(T, NH, NW)`` maps to draw: the four fused statistics (when kept), then the rule's output and
    its refinement. A plug-in that replaces the masks may leave ``maps`` out."""
    fused = {} if masks.maps is None else masks.maps.maps
    drawn = {name: fused[name] for name in STAT_NAMES if name in fused}
    drawn.update(dynamic_map=masks.dynamic_map, refined_map=masks.refined_map)
    return {name: values.detach().float().cpu().numpy() for name, values in drawn.items()}


class MapExporter(FinalMasksExporter):
    """Colour-mapped maps per frame, their raw values in one safetensors file, and ``overview.png``.

    ``overview_columns``: at most this many evenly spaced frames appear in the overview.
    """

    def __init__(self, overview_columns: int = 8) -> None:
        if overview_columns < 1:
            raise ValueError(f"overview_columns must be >= 1, got {overview_columns}")
        self.overview_columns = overview_columns

    def write(self, result: RunResult, masks: DynamicMasks, folder: Path) -> list[Path]:
        size = result.frames.size
        token_maps = token_maps_of(masks)
        written = []
        for name, values in token_maps.items():
            for t, frame_map in enumerate(values):
                image = writers.upsample_nearest(writers.colorize(frame_map), size)
                written.append(writers.write_png(folder / "maps" / name / f"{t:04d}.png", image))
        written.append(writers.write_png(folder / "overview.png", self._overview(result, masks, token_maps)))
        written.append(self._save_values(result, masks, folder / "maps" / "maps.safetensors"))
        return written

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
        legends = dict.fromkeys(token_maps, writers.colorbar)
        legends["mask overlay"] = lambda height: writers.swatch(height, _OVERLAY_COLOR, "dynamic")
        return writers.overview(
            rows,
            column_labels=[f"t={t}" for t in shown],
            max_columns=self.overview_columns,
            thumb_width=_PANEL_WIDTH,
            legends=legends,
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


class OverlayExporter(FinalMasksExporter):
    """``overlays/{t:04d}.png``: the frame with its final mask tinted and outlined."""

    folder = "overlays"

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def write(self, result: RunResult, masks: DynamicMasks, folder: Path) -> list[Path]:
        binary = masks.masks.detach().cpu().numpy()
        return [
            writers.write_png(folder / f"{t:04d}.png", writers.overlay(image, mask, alpha=self.alpha))
            for t, (image, mask) in enumerate(zip(result.frames.rgb(), binary))
        ]


def _check_fps(fps: float) -> float:
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return fps


class OverlayVideoExporter(FinalMasksExporter):
    """``overlays.mp4``: the overlays (:class:`OverlayExporter`) as an H.264 video at ``fps`` frames per
    second, frame ``t`` at ``t / fps`` seconds."""

    def __init__(self, fps: float = 10, alpha: float = 0.5) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.fps = _check_fps(fps)
        self.alpha = alpha

    def write(self, result: RunResult, masks: DynamicMasks, folder: Path) -> list[Path]:
        binary = masks.masks.detach().cpu().numpy()
        # one frame at a time, so a long video is never held as overlays in memory
        frames = (
            writers.overlay(image, mask, alpha=self.alpha) for image, mask in zip(result.frames.rgb(), binary)
        )
        return [writers.write_mp4(folder / "overlays.mp4", frames, self.fps)]


class MapVideoExporter(FinalMasksExporter):
    """``maps.mp4``: per frame the maps of ``maps/`` (:func:`token_maps_of`) side by side, each labelled
    and with its colour scale, as an H.264 video at ``fps`` frames per second."""

    def __init__(self, fps: float = 10) -> None:
        self.fps = _check_fps(fps)

    def write(self, result: RunResult, masks: DynamicMasks, folder: Path) -> list[Path]:
        token_maps = token_maps_of(masks)
        height, width = result.frames.size
        panel_w = min(width, _PANEL_WIDTH)
        panel = (max(1, round(height * panel_w / width)), panel_w)
        frames = (
            writers.side_by_side(
                [
                    (name, writers.upsample_nearest(writers.colorize(values[t]), panel))
                    for name, values in token_maps.items()
                ],
                legend=writers.colorbar,
            )
            for t in range(len(result.frames))
        )
        return [writers.write_mp4(folder / "maps.mp4", frames, self.fps)]
