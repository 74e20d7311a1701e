"""Min-max normalisation with the reference's epsilon, the one the maps, the mask rule and refinement share.

``(x - min) / (max - min + 1e-6)``: the epsilon is the reference's (``method.md`` §3-4); it also makes a
constant input normalise to zeros instead of dividing by zero. It is a Python float, so results are
bitwise those of the reference's hard-coded expressions.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["EPS", "frame_minmax", "minmax"]

EPS = 1e-6


def minmax(x: Tensor) -> Tensor:
    """Min-max over the whole tensor."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo + EPS)


def frame_minmax(x: Tensor) -> Tensor:
    """Min-max over each frame of ``(T, ...)`` separately (every axis but the first)."""
    if x.ndim == 0:
        raise ValueError("needs a map with a frame axis, got a single number")
    # reduce over everything but the frame axis, then restore singleton axes so the bounds broadcast
    flat = x.reshape(x.shape[0], -1)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    lo = flat.amin(dim=1).reshape(shape)
    hi = flat.amax(dim=1).reshape(shape)
    return (x - lo) / (hi - lo + EPS)
