"""The user's own dynamic masks (``easi3r run --masks DIR``), in place of the attention masks.

As the reference's ``--use_gt_mask``: the masks replace the pass-1 masks, so pass 2 re-weights the
attention of the tokens they cover; with ``--masks-final`` they also replace the final masks that the
aligner and the exporters use. The attention maps are still computed and written, so the two can be
compared. DIR holds one binary mask image per source frame (every non-zero pixel is moving), in the
frames' sorted order; each is resized and cropped exactly like its frame (nearest-neighbour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from easi3r.errors import Easi3RError
from easi3r.eval.datasets import read_mask
from easi3r.frame_geometry import to_network_grid
from easi3r.frames import IMAGE_EXTENSIONS, list_images
from easi3r.types import DynamicMasks, Frames

__all__ = ["UserMasks", "read_user_masks"]


@dataclass(frozen=True)
class UserMasks:
    masks: Tensor  # (T, H, W) bool at the network resolution, True = moving
    final: bool = False  # also the final masks (aligner, exporters), not only pass 1's

    def apply(self, derived: DynamicMasks, pass_index: int) -> DynamicMasks:
        """``derived`` with its masks replaced where the user's masks apply (pass 1, and the final pass
        with ``final``); the maps it was derived from stay, for comparison."""
        if pass_index == 1 or self.final:
            return replace(derived, masks=self.masks.clone())
        return derived


def read_user_masks(
    folder: str | Path, source: str | Path | Sequence[str | Path], frames: Frames, section: DictConfig
) -> Tensor:
    """The masks of ``folder`` for the frames a run loaded from ``source`` with the recipe's ``frames``
    ``section``: ``(T, H, W)`` bool on the network pixels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Easi3RError(f"--masks {folder}: not a folder of mask images")
    files = list_images(folder)
    positions = _source_positions(source, frames)
    needed = max(positions) + 1
    if len(files) < needed:
        raise Easi3RError(
            f"--masks {folder}: {len(files)} masks, but the frames need {needed} (one per source frame)"
        )
    grids = []
    for t, k in enumerate(positions):
        mask = read_mask(files[k])
        grids.append(
            to_network_grid(
                mask,
                frames.source_sizes[t],
                section.size,
                section.crop,
                section.square_ok,
                frames.size,
                section.get("mode", "dust3r"),
            )
        )
    return torch.from_numpy(np.stack(grids))


def _source_positions(source: str | Path | Sequence[str | Path], frames: Frames) -> list[int]:
    """Each loaded frame's position among the source's frames (stride and max_frames skip some)."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        listing = [str(path) for path in list_images(Path(source))]
    elif isinstance(source, (str, Path)) and Path(source).suffix.lower() not in IMAGE_EXTENSIONS:
        return [int(path.rsplit("#", 1)[1]) for path in frames.paths]  # a video: "clip.mp4#12"
    else:
        listing = [str(source)] if isinstance(source, (str, Path)) else [str(path) for path in source]
    position = {path: k for k, path in enumerate(listing)}
    return [position[path] for path in frames.paths]
