"""The typed values that flow between pipeline stages.

frames → :class:`Frames` → pairs (``(P, 2)`` int64 tensor, view-1 index then view-2 index)
→ :class:`Encoded` → :class:`PairOutputs` (captured :class:`PairAttention`, :class:`PairPredictions`)
→ :class:`FrameMaps` → :class:`DynamicMasks` → :class:`Scene`.

A frame-set backbone (VGGT-like) works on windows of frames instead of pairs (``(W, 2)`` half-open
``[start, end)``) and hands back :class:`FrameSetOutputs`: per-frame named maps straight from its capture,
and per-window :class:`FrameSetPredictions` (its own cameras, depth and points).

Images are channel-first network inputs in [-1, 1]; maps are ``(T, NH, NW)`` over the token grid; masks
are ``(T, H, W)`` bool with ``True`` = dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from easi3r.geometry import Scene

__all__ = [
    "DynamicMasks",
    "Encoded",
    "FrameMaps",
    "FrameSetOutputs",
    "FrameSetPredictions",
    "Frames",
    "PairAttention",
    "PairOutputs",
    "PairPredictions",
    "PassOutputs",
    "PredictionStore",
    "Scene",
]


@dataclass
class Frames:
    """Preprocessed video frames, all of one network size."""

    images: Tensor  # (T, 3, H, W) float32 in [-1, 1]
    paths: list[str]  # where each frame came from (file path, or "video.mp4#index")
    source_sizes: list[tuple[int, int]] = field(default_factory=list)  # (W, H) before preprocessing
    indices: list[int] | None = None  # positions in the whole video, when these frames are a window of it

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"frames must be (T, 3, H, W), got {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def window(self, start: int, end: int) -> Frames:
        """Frames ``start:end`` of this clip, remembering where they sit in the whole video."""
        base = self.indices if self.indices is not None else range(len(self))
        return Frames(
            images=self.images[start:end],
            paths=self.paths[start:end],
            source_sizes=self.source_sizes[start:end],
            indices=list(base[start:end]),
        )

    def rgb(self) -> np.ndarray:
        """(T, H, W, 3) uint8 colours, for writers and viewers."""
        # in place on one copy: a long video's frames as float temporaries would triple the memory
        x = self.images.float().clamp(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Encoded:
    """Encoder output of every frame, computed once and shared by all pairs and both passes."""

    tokens: Tensor  # (T, N, D_enc), after the encoder's final norm
    positions: Tensor  # (N, 2) integer (row, col) of each token
    grid: tuple[int, int]  # (NH, NW)
    image_size: tuple[int, int]  # (H, W)

    def features(self) -> Tensor:
        """(T, NH, NW, D_enc): the per-token encoder features used for clustering."""
        return self.tokens.reshape(self.tokens.shape[0], *self.grid, -1)


@dataclass
class PairAttention:
    """Key-side maps captured from the cross-attention of both decoders, one per ordered pair.

    ``decoder1[p]`` lives on the tokens of view 2 of pair p (queries were view-1 tokens);
    ``decoder2[p]`` lives on the tokens of view 1. Channels: c = layer · heads + head.
    """

    decoder1: Tensor  # (P, NH, NW, C)
    decoder2: Tensor  # (P, NH, NW, C)


@dataclass
class PairPredictions:
    """Head outputs of every ordered pair, both in the camera frame of view 1."""

    pts3d_1: Tensor  # (P, H, W, 3) view 1's points
    conf_1: Tensor  # (P, H, W) confidence (1 + exp)
    pts3d_2: Tensor  # (P, H, W, 3) view 2's points in view 1's frame ("pts3d_in_other_view")
    conf_2: Tensor  # (P, H, W)

    def __len__(self) -> int:
        return self.pts3d_1.shape[0]

    def frame_confidence(self, pairs: Tensor, n_frames: int) -> Tensor:
        """(T, H, W) per-frame confidence (the reference's ``im_conf``): the max over every pair
        prediction of that frame, as view 1 or view 2, starting from 0 as the reference does."""
        _, height, width = self.conf_1.shape
        out = torch.zeros(n_frames, height * width, dtype=self.conf_1.dtype)
        for view, conf in ((0, self.conf_1), (1, self.conf_2)):
            index = pairs[:, view, None].expand(-1, height * width)
            out.scatter_reduce_(0, index, conf.flatten(1), reduce="amax")
        return out.view(n_frames, height, width)

    def select(self, indices: Tensor) -> PairPredictions:
        """The predictions of the pairs ``indices`` (the same call reads a disk-backed store)."""
        return PairPredictions(
            self.pts3d_1[indices], self.conf_1[indices], self.pts3d_2[indices], self.conf_2[indices]
        )


class PredictionStore(Protocol):
    """Pair predictions kept elsewhere (on disk: :class:`easi3r.cache.StoredPredictions`), read by pair."""

    def __len__(self) -> int: ...

    def select(self, indices: Tensor) -> PairPredictions:
        """The predictions of the pairs ``indices``, in memory."""
        ...


@dataclass
class PairOutputs:
    """What one decoding pass over a pair list produced."""

    pairs: Tensor  # (P, 2) int64
    attention: PairAttention | None = None
    predictions: PairPredictions | PredictionStore | None = None  # in memory, or read by pair from disk


@dataclass
class FrameSetPredictions:
    """What a frame-set backbone predicts for the frames of one window, in that window's world (the
    frame of its first camera). ``F`` frames of the window, ``(H, W)`` the frame size."""

    cam2world: Tensor  # (F, 4, 4) camera-to-world, OpenCV axes
    intrinsics: Tensor  # (F, 3, 3) pinhole K in pixels of the network input
    depth: Tensor  # (F, H, W) z-depth
    depth_conf: Tensor  # (F, H, W) confidence of the depth
    pts3d: Tensor  # (F, H, W, 3) world points of the point head
    pts3d_conf: Tensor  # (F, H, W) confidence of the points

    def __len__(self) -> int:
        return self.depth.shape[0]


@dataclass
class FrameSetOutputs:
    """What one pass of a frame-set backbone over its windows produced.

    ``maps`` holds every frame's named maps, each frame's taken from the window it sits deepest in
    (:func:`easi3r.windows.home_windows`); ``predictions[k]`` are window ``k``'s.
    """

    windows: Tensor  # (W, 2) int64, half-open [start, end), in order, consecutive ones overlapping
    maps: FrameMaps | None = None
    predictions: list[FrameSetPredictions] | None = None


@dataclass
class FrameMaps:
    """Per-frame maps derived from the pair maps; named maps feed the mask rule."""

    maps: dict[str, Tensor]  # name → (T, NH, NW) (fused) or (T, NH, NW, C) (raw statistics)

    def __getitem__(self, name: str) -> Tensor:
        return self.maps[name]


PassOutputs = PairOutputs | FrameSetOutputs
"""One pass of either kind of backbone."""


@dataclass
class DynamicMasks:
    """The result of mask derivation for one pass."""

    masks: Tensor  # (T, H, W) bool, True = dynamic
    dynamic_map: Tensor  # (T, NH, NW) rule output in [0, 1]
    refined_map: Tensor  # (T, NH, NW) after refinement
    threshold: float  # on the upsampled refined map
    maps: FrameMaps | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)  # e.g. cluster labels, for inspection
