"""Refiners of the dynamic map (method.md §4): smooth it along the backbone's own feature grouping.

Contract (``easi3r_refiners``): ``refine(dynamic_map (T, NH, NW), features (T, NH, NW, D))`` returns
``(refined (T, NH, NW), extras)``; ``extras`` holds tensors kept for inspection.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor

from easi3r.normalize import frame_minmax


def _distinct_rows(x: np.ndarray, limit: int) -> int:
    """``min(limit, number of distinct rows of x)``; stops scanning once ``limit`` is reached, which for
    real features happens within the first ``limit`` rows (a full ``np.unique`` would sort T·N rows)."""
    seen: set[bytes] = set()
    for row in x:
        seen.add(row.tobytes())
        if len(seen) >= limit:
            break
    return len(seen)


class KMeansRefiner:
    """Each token takes the mean dynamic value of its k-means cluster of encoder features.

    k-means (sklearn, k-means++) runs jointly on the features of all tokens of all frames, flattened to
    ``(T·N, D)`` float32 on the CPU, without normalisation; the cluster means are then min-max normalised
    per frame. With the defaults this is the reference's refinement (``n_init="auto"`` is one k-means++
    run since sklearn 1.4; older sklearn ran 10, which gives other clusters).

    ``k`` is lowered to the number of distinct feature vectors when there are fewer (tiny inputs,
    duplicated features): k-means cannot form more non-empty clusters than distinct points.
    Deterministic for a fixed ``seed``. ``extras["labels"]`` is the ``(T, NH, NW)`` int64 cluster index.
    """

    def __init__(self, k: int = 64, seed: int = 42, n_init: int | str = "auto", max_iter: int = 300) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.seed = seed
        self.n_init = n_init
        self.max_iter = max_iter

    def __call__(self, dynamic_map: Tensor, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if dynamic_map.ndim != 3 or features.ndim != 4 or features.shape[:3] != dynamic_map.shape:
            raise ValueError(
                f"expected dynamic_map (T, NH, NW) and features (T, NH, NW, D) on the same grid, got "
                f"{tuple(dynamic_map.shape)} and {tuple(features.shape)}"
            )
        x = features.detach().reshape(-1, features.shape[-1]).to(device="cpu", dtype=torch.float32).numpy()
        k = _distinct_rows(x, limit=self.k)
        labels = KMeans(
            n_clusters=k, random_state=self.seed, n_init=self.n_init, max_iter=self.max_iter
        ).fit_predict(x)

        values = dynamic_map.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
        # sklearn never returns an empty cluster, so every count is positive.
        score = np.bincount(labels, weights=values, minlength=k) / np.bincount(labels, minlength=k)
        refined = torch.from_numpy(score[labels]).to(dtype=dynamic_map.dtype, device=dynamic_map.device)
        refined = frame_minmax(refined.view(dynamic_map.shape))
        labels_t = torch.from_numpy(labels.astype(np.int64)).view(dynamic_map.shape).to(dynamic_map.device)
        return refined, {"labels": labels_t}


class NoRefiner:
    """Leaves the dynamic map as it is."""

    def __call__(self, dynamic_map: Tensor, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return dynamic_map, {}
