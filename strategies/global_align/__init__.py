"""Aligners: pair predictions → one :class:`~easi3r.geometry.Scene` (poses, intrinsics, depth).

``global`` is DUSt3R/MonST3R's global alignment (``method.md`` §6), vectorised over frames and pairs:

* unknowns: per-frame log-depth maps, per-frame camera-to-world poses (quaternion + signed-log1p
  translation), focal stored as ``focal_break·log f`` (one shared focal by default), principal point at
  (W/2, H/2) unless optimised (stored as offset/10), and per-pair similarities (quaternion,
  signed-log1p translation, log-scale) that carry each pair's prediction into the world;
* pair scales are normalised so that their mean log equals ``log(base_scale)``: without it the trivial
  solution "shrink everything to a point" would be free;
* loss = Σ_pairs Σ_pixels log(conf)·‖world point of the frame − pair similarity(pair prediction)‖₂ for both
  views, divided by the total pixel area (pairs × H × W), plus optional temporal smoothness and an optional
  extra term;
* Adam (β = 0.9, 0.9), learning rate decayed linearly (or by cosine) from ``lr`` to ``lr_min``;
* initialised from a maximum spanning tree over pair scores mean(conf₁)·mean(conf₂): weighted Procrustes
  with scale along the tree, focal by Weiszfeld, the poses the tree does not give by RANSAC PnP.

The reference's numbers are reproduced (``tests/test_global_align.py`` checks the golden run); its quirks
are named options whose default keeps the reference behaviour (see :class:`AlignConfig`).
``pairwise`` (two frames, from one pair) is the trivial aligner (``none`` lives in ``aligners.py``).

One module per part: ``config`` (:class:`AlignConfig`), ``state`` (:class:`AlignState`), ``checks``
(input checks), ``pnp`` (RANSAC PnP), ``init`` (spanning-tree and random initialisation), ``model``
(:class:`GlobalAligner` and its fused residual), ``optimise`` (:func:`global_align`), ``confidence``
(:func:`clean_confidence`), ``pairwise`` (the two-frame aligner) and ``recipes`` (:class:`GlobalAlign`).
"""

from .confidence import clean_confidence
from .config import AlignConfig
from .init import init_mst, pair_scores
from .model import GlobalAligner
from .optimise import Alignment, global_align
from .pairwise import PairwiseAlign, pairwise_align
from .recipes import GlobalAlign
from .state import AlignState

__all__ = [
    "AlignConfig",
    "AlignState",
    "Alignment",
    "GlobalAlign",
    "GlobalAligner",
    "PairwiseAlign",
    "clean_confidence",
    "global_align",
    "init_mst",
    "pair_scores",
    "pairwise_align",
]
