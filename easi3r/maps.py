"""From per-pair key-side attention maps to the four per-frame maps (method.md §3), a fixed step of the method.

Every ordered pair (i, j) contributes two maps: decoder 1's map lives on frame j's tokens (frame j seen as
the *source*, paper A^src) and decoder 2's map lives on frame i's tokens (frame i seen as the *reference*,
A^ref). Per frame and per side we take the mean and the unbiased standard deviation over the frame's pairs,
then fuse the C channels into one map.

Names in the returned :class:`~easi3r.types.FrameMaps` (the mask rule reads the fused ones):

* ``src_mean``, ``src_std``, ``ref_mean``, ``ref_std``: fused, ``(T, NH, NW)`` in [0, 1];
* ``src_mean_raw``, ``src_std_raw``, ``ref_mean_raw``, ``ref_std_raw``: raw statistics, ``(T, NH, NW, C)``.

Reference names: ``cross_att_k_i_*`` = ``src_*``, ``cross_att_k_j_*`` = ``ref_*``, and its ``var`` is our
``std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from easi3r.normalize import minmax
from easi3r.types import FrameMaps, PairAttention

SINGLE_PAIR_STD_FALLBACKS = ("zero",)
STAT_NAMES = ("src_mean", "src_std", "ref_mean", "ref_std")


def aggregate_pair_maps(
    attention: PairAttention,
    pairs: Tensor,
    n_frames: int,
    *,
    corner_fix: bool = True,
    single_pair_std: str = "zero",
) -> dict[str, Tensor]:
    """Per-frame mean and unbiased std of the pair maps, for both sides.

    ``pairs`` is ``(P, 2)`` (view-1 frame, view-2 frame), aligned with ``attention.decoder1/2`` ``(P, NH,
    NW, C)`` of any float dtype (the statistics are at least float32). Decoder-1 maps are grouped by the
    view-2 frame (``src_*``), decoder-2 maps by the view-1 frame (``ref_*``). Returns ``{"src_mean",
    "src_std", "ref_mean", "ref_std"}``, each ``(T, NH, NW, C)``.

    ``corner_fix`` (reference quirk, default on): before the statistics, token (0, 0) of every pair map is
    replaced by the mean of tokens (0, 1) and (1, 0), all channels.

    ``single_pair_std``: what the std of a frame that has exactly one pair on a side is. The unbiased std
    of one sample is undefined (the reference emits NaN, which then poisons every map); ``"zero"`` gives 0.

    Raises ``ValueError`` when a frame has no pair on a side, when a pair names a frame outside
    ``[0, n_frames)``, or when a map holds a non-finite value.
    """
    if single_pair_std not in SINGLE_PAIR_STD_FALLBACKS:
        raise ValueError(
            f"single_pair_std must be one of {SINGLE_PAIR_STD_FALLBACKS}, got {single_pair_std!r}"
        )
    pairs = torch.as_tensor(pairs, dtype=torch.long, device=attention.decoder1.device)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2), got {tuple(pairs.shape)}")
    for name, maps in (("decoder1", attention.decoder1), ("decoder2", attention.decoder2)):
        if maps.ndim != 4 or maps.shape[0] != pairs.shape[0]:
            raise ValueError(
                f"attention.{name} must be (P={pairs.shape[0]}, NH, NW, C), got {tuple(maps.shape)}"
            )
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= n_frames):
        raise ValueError(f"pairs name frames outside [0, {n_frames})")

    src_mean, src_std = _grouped_stats(attention.decoder1, pairs[:, 1], n_frames, corner_fix, "source")
    ref_mean, ref_std = _grouped_stats(attention.decoder2, pairs[:, 0], n_frames, corner_fix, "reference")
    return {"src_mean": src_mean, "src_std": src_std, "ref_mean": ref_mean, "ref_std": ref_std}


def _grouped_stats(
    maps: Tensor, frame_of_pair: Tensor, n_frames: int, corner_fix: bool, side: str
) -> tuple[Tensor, Tensor]:
    """Mean and unbiased std of ``maps (P, NH, NW, C)`` over the pairs of each frame."""
    if not torch.isfinite(maps).all():
        # A NaN/inf here (e.g. an fp16 overflow in the backbone) would silently turn every map into NaN.
        raise ValueError(f"{side}-side attention maps contain non-finite values")
    if corner_fix and (maps.shape[1] < 2 or maps.shape[2] < 2):
        raise ValueError(f"corner_fix needs a token grid of at least 2×2, got {tuple(maps.shape[1:3])}")
    # Reduced-precision captures (bf16/fp16 backbones) would lose the small spread between pairs in the
    # sums, so the statistics are at least float32. The corner fix writes in place: copy the caller's maps.
    maps = maps.to(torch.promote_types(maps.dtype, torch.float32), copy=corner_fix)
    if corner_fix:
        maps[:, 0, 0, :] = (maps[:, 0, 1, :] + maps[:, 1, 0, :]) / 2

    counts = torch.bincount(frame_of_pair, minlength=n_frames)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"frame(s) {empty} have no pair on the {side} side; the pair graph must cover every frame"
        )
    shape = (n_frames, *maps.shape[1:])
    per_frame = counts.to(maps.dtype).view(-1, 1, 1, 1)

    mean = torch.zeros(shape, dtype=maps.dtype, device=maps.device).index_add_(0, frame_of_pair, maps)
    mean = mean / per_frame
    # Second pass on centred values: E[x²]-E[x]² cancels catastrophically when the spread is small
    # compared with the logits' magnitude.
    centred = maps - mean[frame_of_pair]
    sq = torch.zeros(shape, dtype=maps.dtype, device=maps.device).index_add_(
        0, frame_of_pair, centred * centred
    )
    # A single pair has a zero sum of squares, so clamping the Bessel denominator to 1 yields the
    # documented "zero" fallback instead of 0/0.
    std = (sq / (per_frame - 1).clamp(min=1)).sqrt()
    return mean, std


def fuse_channels(x: Tensor) -> Tensor:
    """Fuse ``(T, NH, NW, C)`` into ``(T, NH, NW)`` in [0, 1].

    Min-max over the whole tensor (all frames, tokens and channels), mean over channels, min-max again
    over all frames; both normalisations use ``(x - min) / (max - min + 1e-6)``, so a constant tensor
    gives zeros.
    """
    return minmax(minmax(x).mean(dim=-1))


def frame_maps(
    attention: PairAttention,
    pairs: Tensor,
    n_frames: int,
    *,
    corner_fix: bool = True,
    single_pair_std: str = "zero",
) -> FrameMaps:
    """The eight per-frame maps: fused ``src_mean`` … ``ref_std`` and raw ``src_mean_raw`` … ``ref_std_raw``.

    Options are those of :func:`aggregate_pair_maps`.
    """
    raw = aggregate_pair_maps(
        attention, pairs, n_frames, corner_fix=corner_fix, single_pair_std=single_pair_std
    )
    maps = {name: fuse_channels(raw[name]) for name in STAT_NAMES}
    maps.update({f"{name}_raw": raw[name] for name in STAT_NAMES})
    return FrameMaps(maps=maps)


def sample_frame_maps(*, corner_fix: bool = True, single_pair_std: str = "zero") -> FrameMaps:
    """Small maps made by :func:`frame_maps` from seeded random attention, like real ones.

    They have every name a mask rule can read, the real shapes (fused ``(T, NH, NW)``, raw ``(T, NH, NW,
    C)``) and value ranges (fused maps hold an exact 0), so a formula can be tried on them before a run
    pays for frames and weights (:func:`easi3r.formula.check_rule`). 3 frames, all 6 ordered pairs (two
    per frame and side, so no std falls back to zero), a 4×5 token grid and 2 channels: distinct sizes,
    so a formula that mixes axes fails here as it would on a video.
    """
    n_frames, grid, channels = 3, (4, 5), 2
    pairs = torch.tensor([(i, j) for i in range(n_frames) for j in range(n_frames) if i != j])
    generator = torch.Generator().manual_seed(0)
    shape = (len(pairs), *grid, channels)
    attention = PairAttention(
        decoder1=torch.randn(shape, generator=generator), decoder2=torch.randn(shape, generator=generator)
    )
    return frame_maps(attention, pairs, n_frames, corner_fix=corner_fix, single_pair_std=single_pair_std)


def sample_named_maps(names: Sequence[str]) -> dict[str, Tensor]:
    """Seeded ``(3, 4, 5)`` standard-normal maps under ``names``: what a frame-set capture's raw
    statistics look like to a formula check (any sign, no fixed range)."""
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(3, 4, 5, generator=generator, dtype=torch.float32) for name in names}
