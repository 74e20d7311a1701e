"""The recipe strategy of the ``global`` aligner (:class:`GlobalAlign`): reads the known-camera files,
drives the progress bar and calls :func:`~.optimise.global_align`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from easi3r.errors import GeometryError, one_line
from easi3r.geometry import Scene
from easi3r.types import PairOutputs, PairPredictions

from .config import AlignConfig
from .optimise import Alignment, Progress, global_align

__all__ = ["GlobalAlign", "predictions_of"]


class GlobalAlign:
    """Recipe strategy ``align: {name: global, **AlignConfig fields, known_intrinsics, known_poses}``.

    ``known_intrinsics`` is a text file with one row-major 3×3 matrix (9 numbers) shared by all frames or
    one per frame; ``known_poses`` a camera-to-world trajectory in TUM order (``t x y z qx qy qz qw``), one
    line per frame. Both are held fixed. Called by the pipeline as
    ``align(frames, pair_outputs, masks, progress_bar)``, where ``progress_bar`` is
    :func:`easi3r.progress.progress_bar` (or None).
    """

    def __init__(self, known_intrinsics: str | None = None, known_poses: str | None = None, **params) -> None:
        self.config = AlignConfig(**params)
        self.known_intrinsics = None if known_intrinsics is None else _read_intrinsics(known_intrinsics)
        self.known_poses = None if known_poses is None else _read_poses(known_poses)

    def __call__(self, frames, pair_outputs, masks, progress_bar=None) -> Scene:
        preds = predictions_of(pair_outputs)
        mask_tensor = masks.masks if masks is not None else None
        if progress_bar is None:
            return self._align(frames, pair_outputs, preds, mask_tensor, None).scene
        with progress_bar(total=self.config.iters, desc="alignment", unit="it") as bar:

            def report(step: int, total: int, loss: float) -> None:
                bar.update(1)
                bar.set_postfix_str(f"loss={loss:.4g}")

            return self._align(frames, pair_outputs, preds, mask_tensor, report).scene

    def _align(self, frames, pair_outputs, preds, masks, report: Progress | None) -> Alignment:
        intrinsics, poses = self.known_intrinsics, self.known_poses
        if frames.indices is not None:
            # the frames are a window of a longer video: per-frame known values are the whole video's
            if intrinsics is not None and intrinsics.ndim == 3 and len(intrinsics) > len(frames):
                intrinsics = intrinsics[frames.indices]
            if poses is not None and len(poses) > len(frames):
                poses = poses[frames.indices]
        return global_align(
            preds,
            pair_outputs.pairs,
            len(frames),
            frames.size,
            config=self.config,
            masks=masks,
            known_intrinsics=intrinsics,
            known_poses=poses,
            progress=report,
        )


def _read_intrinsics(path: str) -> Tensor:
    """(3, 3) or (T, 3, 3) from a text file of 9 numbers per row."""
    try:
        values = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise GeometryError(f"known intrinsics {path}: cannot read ({one_line(exc)})") from None
    if values.shape[1] != 9:
        raise GeometryError(
            f"known intrinsics {path}: expected 9 numbers per row (a 3×3 matrix), got {values.shape[1]}"
        )
    matrices = torch.from_numpy(values).float().reshape(-1, 3, 3)
    return matrices[0] if len(matrices) == 1 else matrices


def _read_poses(path: str) -> Tensor:
    """(T, 4, 4) camera-to-world poses from a TUM trajectory file."""
    from easi3r.trajectory_io import read_tum

    _, cam2world = read_tum(path)
    return torch.from_numpy(cam2world).float()


def predictions_of(pair_outputs: PairOutputs) -> PairPredictions:
    """The pair predictions in memory (a streamed pass is read from its cache here: with
    ``scale.align_window`` the pipeline hands each window only its own pairs)."""
    preds = pair_outputs.predictions
    if preds is None:
        raise GeometryError("alignment needs the pair predictions: run pass 2 with the heads on")
    return preds if isinstance(preds, PairPredictions) else preds.select(torch.arange(len(preds)))
