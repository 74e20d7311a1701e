"""Window-wise alignment of long videos: align overlapping windows of frames apart, then chain them.

Global alignment of all T frames at once needs memory and time that grow with the number of pairs (about
80 bytes per pair and pixel), which rules it out for videos of hundreds of frames. Here the video is cut into
overlapping windows of frames; each window is aligned on its own (its frames and every pair whose two
frames both lie in it), and the windows are chained into one world by a similarity fitted on the cameras
they share. This is a named deviation from the reference, which aligns all frames at once; the default
recipe keeps that (no windows).

Window 0 defines the world; each later window is moved onto the frames already placed, which keep their
values, so errors of one window's fit carry into the next (a chain, not a joint optimisation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import roma
import torch
from torch import Tensor

from easi3r.errors import GeometryError
from easi3r.geometry import Scene, make_pose, sim3_between_cameras, transform_points
from easi3r.types import DynamicMasks, Frames, PairOutputs

__all__ = [
    "Chain",
    "WindowStore",
    "align_in_windows",
    "alignment_windows",
    "home_windows",
    "stitch",
    "window_inputs",
]

logger = logging.getLogger(__name__)

Aligner = Callable[[Frames, PairOutputs, DynamicMasks | None, Any], Scene]


class WindowStore(Protocol):
    """Where aligned windows are kept, so that an interrupted run, or the ranks of a distributed one, can
    pick up the windows already aligned instead of aligning them again."""

    def load(self, k: int) -> Scene | None:
        """Window ``k``'s scene, or None when it has not been aligned yet."""

    def save(self, k: int, scene: Scene) -> None:
        """Keep window ``k``'s scene."""


def alignment_windows(n_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open frame ranges ``[start, end)`` covering ``0..n_frames``, consecutive ones sharing ``overlap``
    frames; the last is moved back to end at ``n_frames`` at full length (so it may share more).

    A chaining similarity needs at least two shared cameras, hence ``overlap ≥ 2``, and a window must hold
    frames beyond those it shares, hence ``overlap < window``.
    """
    if window < 3:
        raise GeometryError(f"alignment window must hold at least 3 frames, got {window}")
    if overlap < 2:
        raise GeometryError(
            f"alignment windows must overlap by at least 2 frames (a similarity needs two shared cameras), "
            f"got {overlap}"
        )
    if overlap >= window:
        raise GeometryError(
            f"alignment window overlap ({overlap}) must be smaller than the window ({window})"
        )
    if n_frames < 1:
        raise GeometryError(f"alignment windows need at least one frame, got {n_frames}")
    if n_frames <= window:
        return [(0, n_frames)]
    stride = window - overlap
    windows = [(start, start + window) for start in range(0, n_frames - window, stride)]
    return [*windows, (n_frames - window, n_frames)]


def home_windows(windows: Tensor, n_frames: int) -> Tensor:
    """``(T,)`` for each frame the window it sits deepest in (farthest from that window's ends; the
    earlier window on a tie): where a frame-set capture sees most of the frame's neighbours."""
    frames = torch.arange(n_frames)[:, None]
    start, end = windows[:, 0][None], windows[:, 1][None]
    inside = (frames >= start) & (frames < end)
    depth = torch.minimum(frames - start, end - 1 - frames)
    depth = torch.where(inside, depth, torch.full_like(depth, -1))
    if bool((depth.max(dim=1).values < 0).any()):
        raise GeometryError("the windows leave a frame uncovered")
    return depth.argmax(dim=1)  # argmax returns the first maximum: the earlier window on a tie


def window_inputs(
    frames: Frames, outputs: PairOutputs, masks: DynamicMasks | None, start: int, end: int
) -> tuple[Frames, PairOutputs, DynamicMasks | None]:
    """The aligner's inputs restricted to frames ``[start, end)``: those frames, the pairs with both frames
    inside (in their original order, re-indexed from 0) and their predictions, and the masks of the frames.

    Predictions are taken with ``select`` so that a disk-backed store reads only the window's pairs; the
    attention maps are dropped (alignment does not use them).
    """
    sub_frames = frames.window(start, end)
    pairs = outputs.pairs
    inside = ((pairs >= start) & (pairs < end)).all(1)
    index = inside.nonzero()[:, 0]
    sub_pairs = pairs[index] - start
    seen = torch.zeros(end - start, dtype=torch.bool)
    seen[sub_pairs.flatten()] = True
    if not bool(seen.all()):
        frame = sub_frames.indices[int((~seen).nonzero()[0])]
        raise GeometryError(
            f"frame {frame} shares no pair with the other frames of its alignment window [{start}, {end}); "
            "use a larger scale.align_window"
        )
    predictions = None if outputs.predictions is None else outputs.predictions.select(index)
    sub_outputs = PairOutputs(pairs=sub_pairs, attention=None, predictions=predictions)
    sub_masks = None
    if masks is not None:
        sub_masks = DynamicMasks(
            masks=masks.masks[start:end],
            dynamic_map=masks.dynamic_map[start:end],
            refined_map=masks.refined_map[start:end],
            threshold=masks.threshold,
        )
    return sub_frames, sub_outputs, sub_masks


def stitch(scenes: list[Scene], windows: list[tuple[int, int]], masks: Tensor | None = None) -> Scene:
    """One scene from per-window scenes: window 0 is the world; every later window is moved by the
    similarity that takes its cameras on the frames already placed onto theirs, and contributes its other
    frames (placed frames keep their values). ``masks`` (T, H, W), when given, become the scene's masks."""
    if len(scenes) != len(windows) or not scenes:
        raise GeometryError(f"stitching needs one scene per window, got {len(scenes)} for {len(windows)}")
    chain = Chain(windows)
    for k, scene in enumerate(scenes):
        chain.add(k, scene)
    return chain.scene(masks)


class Chain:
    """Window scenes chained into one as they come, in window order (:func:`stitch`, one at a time).

    Only the chained scene is kept, not the windows: for a long video the windows together hold more
    than the scene itself. The similarity is fitted in float64: an error in one link carries into every
    later window.
    """

    def __init__(self, windows: list[tuple[int, int]]) -> None:
        self.windows = windows
        self.n_frames = max(end for _, end in windows)
        self.placed = torch.zeros(self.n_frames, dtype=torch.bool)
        self.next = 0
        self.parts: dict[str, Tensor] = {}
        self.conf_is_log: bool | None = None

    def add(self, k: int, scene: Scene) -> None:
        start, end = self.windows[k]
        if k != self.next:
            raise GeometryError(f"window {k} came before window {self.next}: windows chain in order")
        if len(scene) != end - start:
            raise GeometryError(f"window {k} [{start}, {end}) has a scene of {len(scene)} frames")
        if self.conf_is_log is None:
            self.conf_is_log = scene.conf_is_log
            n = self.n_frames
            self.parts = {
                "cam2world": torch.zeros(n, 4, 4, dtype=torch.float64),
                **{
                    name: getattr(scene, name).new_zeros(n, *getattr(scene, name).shape[1:])
                    for name in ("intrinsics", "depth", "conf", "pts3d")
                },
            }
        elif scene.conf_is_log != self.conf_is_log:
            raise GeometryError("window scenes disagree on whether their confidence is a log")
        parts = self.parts
        poses = scene.cam2world.double()
        shared = self.placed[start:end].nonzero()[:, 0]
        new = (~self.placed[start:end]).nonzero()[:, 0]
        if k == 0:
            sim = torch.eye(4, dtype=torch.float64)
        elif len(shared) < 2:
            raise GeometryError(
                f"alignment window {k} [{start}, {end}) shares {len(shared)} frame(s) with the windows before "
                "it; chaining needs at least 2"
            )
        else:
            sim = sim3_between_cameras(poses[shared], parts["cam2world"][start + shared])
        scale = torch.linalg.det(sim[:3, :3]).pow(1 / 3)
        rot = sim[:3, :3] / scale
        frames = start + new
        # camera rotation R_S·R, re-orthonormalised; centre s·R_S·t + t_S
        parts["cam2world"][frames] = make_pose(
            roma.special_procrustes(rot @ poses[new, :3, :3]), transform_points(sim, poses[new, :3, 3])
        )
        parts["depth"][frames] = (scene.depth[new].double() * scale).to(parts["depth"].dtype)
        parts["pts3d"][frames] = transform_points(sim, scene.pts3d[new].double()).to(parts["pts3d"].dtype)
        parts["conf"][frames] = scene.conf[new]
        parts["intrinsics"][frames] = scene.intrinsics[new]
        self.placed[frames] = True
        self.next += 1

    def scene(self, masks: Tensor | None = None) -> Scene:
        if self.next < len(self.windows):
            raise GeometryError(f"{len(self.windows) - self.next} alignment window(s) not chained yet")
        if not bool(self.placed.all()):
            raise GeometryError(
                f"the alignment windows leave frame {int((~self.placed).nonzero()[0])} uncovered"
            )
        parts = self.parts
        return Scene(
            cam2world=parts["cam2world"].to(parts["depth"].dtype),
            intrinsics=parts["intrinsics"],
            depth=parts["depth"],
            conf=parts["conf"],
            pts3d=parts["pts3d"],
            masks=masks,
            conf_is_log=bool(self.conf_is_log),
        )


def align_in_windows(
    aligner: Aligner,
    frames: Frames,
    outputs: PairOutputs,
    masks: DynamicMasks | None,
    *,
    window: int,
    overlap: int,
    progress_bar: Callable[..., Any] | None = None,
    store: WindowStore | None = None,
    only: Callable[[int], bool] | None = None,
) -> Scene | None:
    """Align the video window by window with ``aligner(frames, pair_outputs, masks, progress_bar)`` and
    chain the windows into one scene.

    A window found in ``store`` is not aligned again; a newly aligned one is saved there. With ``only``,
    just the windows k with ``only(k)`` true are aligned (and saved), nothing is chained and the result
    is None: that is a distributed rank's share, chained later by rank 0 from the store.
    """
    windows = alignment_windows(len(frames), window, overlap)
    chain = Chain(windows)
    reused = 0
    for k, (start, end) in enumerate(windows):
        scene = store.load(k) if store is not None else None
        reused += scene is not None
        if scene is None and (only is None or only(k)):
            scene = aligner(*window_inputs(frames, outputs, masks, start, end), progress_bar)
            if scene is None:  # an aligner that makes no scene (``none``): nothing to chain
                return None
            if store is not None:
                store.save(k, scene)
        if only is None:
            chain.add(k, scene)
    if reused:  # windows an interrupted run (or another rank) aligned
        logger.info("alignment: reused %d of %d windows from the cache", reused, len(windows))
    return None if only is not None else chain.scene(masks.masks if masks is not None else None)
