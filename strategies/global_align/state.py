"""A point of the global alignment in plain geometric terms (:class:`AlignState`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["AlignState"]


@dataclass
class AlignState:
    """A point of the optimisation in plain geometric terms (what a warm start supplies).

    ``pair_poses`` are similarities: the 3×3 block is scale·R, mapping pair p's prediction (in the camera
    of its view 1) into the world. ``principal_points`` None means the image centre.
    """

    cam2world: Tensor  # (T, 4, 4)
    focals: Tensor  # (T,)
    depth: Tensor  # (T, H, W)
    pair_poses: Tensor  # (P, 4, 4)
    principal_points: Tensor | None = None  # (T, 2)

    def to(self, device: str | torch.device) -> AlignState:
        """The same state on ``device``."""
        return AlignState(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


def _to(x: Tensor | None, device: str | torch.device) -> Tensor | None:
    return None if x is None else x.to(device)
