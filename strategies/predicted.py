"""The aligner ``predicted``: a frame-set backbone's own cameras and depth make the scene, no optimisation.

Each window's predictions live in that window's world (its first camera). A single window is the scene;
longer videos run in overlapping windows, chained into one world by the similarity fitted on the cameras
each window shares with those already placed (:class:`easi3r.windows.Chain`, as window-wise alignment
does for pairwise backbones).
"""

from __future__ import annotations

from typing import Any

from easi3r.errors import RecipeError
from easi3r.geometry import Scene, depth_to_points
from easi3r.types import DynamicMasks, Frames, FrameSetOutputs, FrameSetPredictions
from easi3r.windows import Chain

POINT_SOURCES = ("depth", "head")


class PredictedAligner:
    """``points: depth`` (default, as VGGT's demos do) unprojects the depth with the predicted cameras;
    ``points: head`` keeps the point head's world points and their confidence."""

    kind = "frame_set"

    def __init__(self, points: str = "depth") -> None:
        if points not in POINT_SOURCES:
            raise RecipeError(
                f"recipe key 'align.points' must be one of {', '.join(POINT_SOURCES)}, got {points!r}"
            )
        self.points = points

    def __call__(
        self, frames: Frames, outputs: FrameSetOutputs, masks: DynamicMasks | None, progress_bar: Any
    ) -> Scene:
        if not isinstance(outputs, FrameSetOutputs) or outputs.predictions is None:
            raise RecipeError("align.name=predicted needs a frame-set backbone's predictions")
        windows = [tuple(w) for w in outputs.windows.tolist()]
        chain = Chain(windows)
        for k, prediction in enumerate(outputs.predictions):
            chain.add(k, self.window_scene(prediction))
        return chain.scene(None if masks is None else masks.masks)

    def window_scene(self, prediction: FrameSetPredictions) -> Scene:
        """One window's scene in its own world."""
        if self.points == "head":
            pts3d, conf = prediction.pts3d, prediction.pts3d_conf
        else:
            pts3d = depth_to_points(prediction.depth, prediction.intrinsics, prediction.cam2world)
            conf = prediction.depth_conf
        return Scene(
            cam2world=prediction.cam2world,
            intrinsics=prediction.intrinsics,
            depth=prediction.depth,
            conf=conf,
            pts3d=pts3d,
        )
