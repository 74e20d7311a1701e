"""Thresholds turning the refined map into binary masks (method.md §4).

Contract (``easi3r_thresholds``): ``threshold(values (T, H, W)) -> float``; the mask is ``values >
threshold`` (strict), computed jointly over all frames. Every threshold here returns a finite number for
any finite input; a constant input gets the constant itself, so its mask is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.filters import threshold_multiotsu, threshold_otsu
from torch import Tensor


def _flat_values(values: Tensor) -> np.ndarray:
    # skimage warns on (…, 3|4)-shaped inputs ("looks like RGB"), and the threshold is joint over all
    # frames anyway, so it always sees a flat vector.
    flat = values.detach().reshape(-1).cpu().numpy()
    if flat.size == 0:
        raise ValueError("cannot threshold an empty map")
    if not np.isfinite(flat).all():
        raise ValueError("cannot threshold a map with non-finite values")
    return flat


class AdaptiveMultiOtsu:
    """The reference's adaptive multi-Otsu threshold.

    For each n in ``classes``: skimage multi-Otsu thresholds (``bins`` bins), the regions they define
    (``np.digitize``), the unweighted mean of each region, and the score ``population variance of the n
    means / sqrt(n)``. The first n with the highest score wins (ties go to the earlier n); its highest
    threshold is returned.

    An n is skipped when the values, once binned, have fewer distinct levels than n classes (skimage
    refuses) or when one of its regions is empty (its mean, hence its score, is undefined). If every n is
    skipped, the values have a single level: the threshold is then the maximum value, so no pixel is
    above it.
    """

    def __init__(self, classes: Sequence[int] = (2, 3, 4), bins: int = 256) -> None:
        if not classes or min(classes) < 2:
            raise ValueError(f"classes must be a non-empty list of counts >= 2, got {list(classes)}")
        self.classes = tuple(classes)
        self.bins = bins

    def __call__(self, values: Tensor) -> float:
        flat = _flat_values(values)
        best_score, best_threshold = -np.inf, None
        for n in self.classes:
            try:
                thresholds = threshold_multiotsu(flat, classes=n, nbins=self.bins)
            except ValueError:  # fewer binned levels than classes
                continue
            regions = np.digitize(flat, bins=thresholds)
            counts = np.bincount(regions, minlength=n)
            if (counts == 0).any():
                continue
            means = np.bincount(regions, weights=flat, minlength=n) / counts
            score = np.var(means) / np.sqrt(n)
            if score > best_score:  # strict: on a tie the earlier n stays, as argmax would keep it
                best_score, best_threshold = score, thresholds[-1]
        if best_threshold is None:
            return float(flat.max())
        return float(best_threshold)


class Otsu:
    """Plain two-class Otsu over all frames (skimage ``threshold_otsu``); a constant map gets its value."""

    def __init__(self, bins: int = 256) -> None:
        self.bins = bins

    def __call__(self, values: Tensor) -> float:
        # skimage itself returns the value for a constant input.
        return float(threshold_otsu(_flat_values(values), nbins=self.bins))


class Fixed:
    """A constant threshold (the reference's unused ``motion_mask_thre`` is 0.35)."""

    def __init__(self, value: float = 0.35) -> None:
        self.value = float(value)

    def __call__(self, values: Tensor) -> float:
        return self.value
