"""Input checks of the aligners: shapes, values and degenerate scenes, each failure a one-line
:class:`~easi3r.errors.GeometryError`; known cameras are checked and converted here too."""

from __future__ import annotations

import torch
from torch import Tensor

from easi3r.errors import GeometryError
from easi3r.types import PairPredictions

__all__ = ["check_geometry", "check_inputs", "check_known_poses", "split_known_intrinsics"]


def check_inputs(
    preds: PairPredictions,
    pairs: Tensor,
    n_frames: int,
    image_size: tuple[int, int] | None,
    masks: Tensor | None,
) -> None:
    """Shape and value checks, each failure a one-line GeometryError."""
    pts1, pts2 = preds.pts3d_1, preds.pts3d_2
    if pts1.ndim != 4 or pts1.shape[-1] != 3 or pts2.shape != pts1.shape:
        raise GeometryError(
            f"pair points must both be (P, H, W, 3), got {tuple(pts1.shape)} and {tuple(pts2.shape)}"
        )
    n_pairs, height, width, _ = pts1.shape
    for name in ("conf_1", "conf_2"):
        if tuple(getattr(preds, name).shape) != (n_pairs, height, width):
            raise GeometryError(
                f"{name} must be {(n_pairs, height, width)}, got {tuple(getattr(preds, name).shape)}"
            )
    if tuple(pairs.shape) != (n_pairs, 2):
        raise GeometryError(
            f"pairs must be ({n_pairs}, 2) to match the predictions, got {tuple(pairs.shape)}"
        )
    if image_size is not None and tuple(image_size) != (height, width):
        raise GeometryError(
            f"pair predictions are {height}×{width} but the frames are {image_size[0]}×{image_size[1]}"
        )
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= n_frames):
        raise GeometryError(f"pair indices must lie in [0, {n_frames}), got {pairs.min()}..{pairs.max()}")
    if bool((pairs[:, 0] == pairs[:, 1]).any()):
        raise GeometryError("a pair links a frame to itself")
    seen = torch.zeros(n_frames, dtype=torch.bool)
    seen[pairs.flatten()] = True
    if not bool(seen.all()):
        raise GeometryError(f"frame {int((~seen).nonzero()[0])} appears in no pair")
    for name in ("pts3d_1", "pts3d_2", "conf_1", "conf_2"):
        if not bool(torch.isfinite(getattr(preds, name)).all()):
            raise GeometryError(f"pair predictions hold NaN or infinite values in {name}")
    if masks is not None and tuple(masks.shape) != (n_frames, height, width):
        raise GeometryError(f"dynamic masks must be {(n_frames, height, width)}, got {tuple(masks.shape)}")


def check_geometry(preds: PairPredictions, pairs: Tensor, n_frames: int, w1: Tensor, w2: Tensor) -> None:
    """Degenerate scenes: no positive weight at all, a frame with none, or a pair with collinear points."""
    if not bool((w1 > 0).any() or (w2 > 0).any()):
        raise GeometryError(
            "degenerate scene: no pixel has a confidence above 1 (all log-confidence weights ≤ 0)"
        )
    per_frame = torch.zeros(n_frames, dtype=w1.dtype)
    per_frame.index_add_(0, pairs[:, 0], (w1 > 0).flatten(1).sum(1).to(w1.dtype))
    per_frame.index_add_(0, pairs[:, 1], (w2 > 0).flatten(1).sum(1).to(w2.dtype))
    if not bool((per_frame > 0).all()):
        frame = int((per_frame == 0).nonzero()[0])
        raise GeometryError(f"frame {frame} has no valid pixel (confidence ≤ 1 or masked out in every pair)")
    # the spread of each pointmap along its three principal axes: two ~0 axes = a line (or a point), which
    # leaves the rotation of a Procrustes registration undetermined
    for view, pts in ((1, preds.pts3d_1), (2, preds.pts3d_2)):
        pts = pts.flatten(1, 2)
        pts = pts[:, :: max(1, pts.shape[1] // 4096)].double()  # a few thousand points decide it, in float64
        spread = torch.linalg.svdvals(pts - pts.mean(1, keepdim=True))
        collinear = spread[:, 1] <= 1e-6 * spread[:, 0].clamp(min=1e-300)
        if bool(collinear.any()):
            p = int(collinear.nonzero()[0])
            i, j = pairs[p].tolist()
            raise GeometryError(
                f"degenerate scene: the view-{view} points of pair {p} ({i}→{j}) are collinear"
            )


def split_known_intrinsics(known: Tensor | None, n_frames: int) -> tuple[Tensor, Tensor] | tuple[None, None]:
    """Known intrinsics ((3, 3) shared, or (T, 3, 3)) as (T,) focals (mean of fx, fy) and (T, 2) principal
    points; (None, None) when none are known."""
    if known is None:
        return None, None
    known = torch.as_tensor(known, dtype=torch.float32)
    if known.shape == (3, 3):
        known = known.expand(n_frames, 3, 3)
    if tuple(known.shape) != (n_frames, 3, 3):
        raise GeometryError(
            f"known intrinsics must be (3, 3) or ({n_frames}, 3, 3), got {tuple(known.shape)}"
        )
    if not bool((known[:, [0, 1], [0, 1]] > 0).all()):
        raise GeometryError("known intrinsics must have positive focal lengths")
    return known[:, [0, 1], [0, 1]].mean(-1), known[:, :2, 2].clone()


def check_known_poses(known: Tensor | None, n_frames: int) -> Tensor | None:
    """Known (T, 4, 4) camera-to-world poses as float32, or None when none are known."""
    if known is None:
        return None
    known = torch.as_tensor(known, dtype=torch.float32)
    if tuple(known.shape) != (n_frames, 4, 4):
        raise GeometryError(f"known poses must be ({n_frames}, 4, 4), got {tuple(known.shape)}")
    return known
