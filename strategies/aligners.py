"""Aligners that need no optimisation. ``none`` keeps the pair predictions as they are (masks and pair
outputs are still written); the global and pairwise aligners live in ``global_align/``."""

from __future__ import annotations

from typing import Any


class NoAligner:
    """Skip alignment: the run produces masks and pair predictions, no scene."""

    kind = "any"  # serves both kinds of backbone

    def __call__(self, frames: Any, outputs: Any, masks: Any, progress: Any) -> None:
        return None
