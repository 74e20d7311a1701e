"""Labelled sequences to calibrate on: frames as a run loads them, and their ground-truth masks brought onto
the same network pixels (resized and cropped exactly like the frames, nearest-neighbour)."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from easi3r.errors import Easi3RError
from easi3r.eval.datasets import DATASETS, read_mask
from easi3r.frame_geometry import to_network_grid
from easi3r.frames import list_images, load_frames_as
from easi3r.types import Frames

__all__ = ["LabelledSequence", "dataset_sequences", "folder_sequence"]


@dataclass
class LabelledSequence:
    name: str
    frames: Frames
    masks: Tensor  # (T, H, W) bool at the network resolution, True = moving object

    def halves(self) -> tuple[LabelledSequence, LabelledSequence]:
        """The first and the second half of the frames, for a single sequence split into selection and
        report halves (the statistics were computed on the whole sequence; only the scoring is split)."""
        cut = len(self.frames) // 2
        first, second = slice(0, cut), slice(cut, None)
        return self._part(first, "first half"), self._part(second, "second half")

    def _part(self, part: slice, label: str) -> LabelledSequence:
        f = self.frames
        frames = Frames(f.images[part], f.paths[part], f.source_sizes[part], None)
        return LabelledSequence(f"{self.name} ({label})", frames, self.masks[part])


def folder_sequence(source: str | Path, masks: str | Path, recipe: DictConfig) -> LabelledSequence:
    """A folder of frames and a folder of binary masks, one per frame in the same sorted order."""
    source, masks = Path(source), Path(masks)
    for folder, what in ((source, "frames"), (masks, "masks")):
        if not folder.is_dir():
            raise Easi3RError(f"{folder}: not a folder of {what}")
    files, mask_files = list_images(source), list_images(masks)
    if len(mask_files) != len(files):
        raise Easi3RError(f"{masks}: {len(mask_files)} masks for the {len(files)} frames of {source}")
    return _labelled(source.name, files, mask_files, recipe)


def dataset_sequences(
    dataset: str, root: str | Path, recipe: DictConfig, sequences: SequenceOf[str] | None = None
) -> Iterator[LabelledSequence]:
    """The sequences of a dataset the evaluation readers know (``easi3r eval --dataset``), with masks."""
    if dataset not in DATASETS:
        raise Easi3RError(f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
    for seq in DATASETS[dataset](root, sequences):
        if seq.gt_masks is None:
            raise Easi3RError(f"{dataset} sequence {seq.name} has no ground-truth masks to calibrate on")
        yield _labelled(seq.name, seq.frames, seq.gt_masks, recipe)


def _labelled(name: str, files: list[Path], mask_files: list[Path], recipe: DictConfig) -> LabelledSequence:
    f = recipe.frames
    frames = load_frames_as(files, f)
    position = {str(path): k for k, path in enumerate(files)}
    kept = [position[path] for path in frames.paths]  # stride and max_frames drop frames
    grid = [
        to_network_grid(
            read_mask(mask_files[k]),
            frames.source_sizes[t],
            f.size,
            f.crop,
            f.square_ok,
            frames.size,
            f.get("mode", "dust3r"),
        )
        for t, k in enumerate(kept)
    ]
    return LabelledSequence(name, frames, torch.from_numpy(np.stack(grid)))
