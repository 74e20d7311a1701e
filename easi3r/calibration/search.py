"""Search a mask formula on labelled sequences, and score it on sequences the search never saw.

A candidate formula has the shape of the Easi3R rule: a product of min-max normalised terms, each taken as
``x`` or ``1 - x``, normalised per frame::

    frame_minmax(minmax(channel(src_mean_raw, 17)) * (1 - minmax(src_std)) * ...)

A term is any formula giving one value per frame token; :func:`candidate_terms` lists the four fused maps
and every channel of the four raw ones. A beam search (``beam_width`` products kept, at most ``depth``
factors) adds one factor at a time and keeps the products whose pixel AUC (:func:`~.scores.pixel_auc`,
pooled over the frames of a sequence, averaged over sequences) is highest; it stops early when the best
product gains less than ``min_gain``.

Held-out scoring. The sequences are sorted by name and dealt alternately: the 1st, 3rd, 5th… form the
*selection* half, the 2nd, 4th… the *report* half (:func:`split_sequences`). Every choice is made on the
selection half; the report half is scored once, for the chosen formula only, so its AUC is an honest
estimate: a formula fitted to noise scores about 0.5 there, however well it did on the selection half.

Cost. The factors are min-max normalised once per sequence and kept at token resolution (as small as the
raw maps); each beam entry keeps its running product. The formula multiplies tokens and *then* upsamples
(bilinear, :func:`easi3r.masks.upsample_map`), so the search does too, but only at a fixed-seed sample of
at most ``max_pixels`` pixels per sequence, half moving and half static where the sequence has that many
(the AUC compares moving with static pixels, so sampling each class separately does not bias it). Those
pixels' bilinear weights are taken from ``upsample_map`` itself. The AUCs reported (final and per step)
are exact: the formula text is parsed, evaluated on the maps, upsampled and scored on every pixel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from easi3r.calibration.scores import pixel_auc, rows_auc
from easi3r.errors import Easi3RError
from easi3r.formula import parse
from easi3r.maps import STAT_NAMES
from easi3r.masks import upsample_map
from easi3r.normalize import frame_minmax

__all__ = [
    "LabelledMaps",
    "SearchResult",
    "SearchStep",
    "candidate_terms",
    "formula_auc",
    "formula_recipe",
    "product_formula",
    "search_formula",
    "split_sequences",
]

# Candidate products scored at once are bounded by this many float32 values (some 100 MB in all).
_CHUNK_VALUES = 1 << 21


@dataclass(frozen=True)
class LabelledMaps:
    """One labelled sequence after pass 1: its per-frame maps (:func:`easi3r.maps.frame_maps`: fused
    ``(T, NH, NW)``, raw ``(T, NH, NW, C)``) and its ground truth ``masks (T, H, W)`` bool, True = moving,
    at the network resolution, which is the size the rule's map is upsampled to."""

    name: str
    maps: Mapping[str, Tensor]
    masks: Tensor

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``: the network resolution of the frames and masks."""
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])


@dataclass(frozen=True)
class SearchStep:
    """The best product with one more factor: its formula and its exact AUC on the selection half."""

    formula: str
    selection_auc: float


@dataclass(frozen=True)
class SearchResult:
    """The chosen formula, its exact AUC on both halves, the best formula of each depth, and the split."""

    formula: str
    selection_auc: float
    report_auc: float
    trail: tuple[SearchStep, ...]
    selection: tuple[str, ...]
    report: tuple[str, ...]


def candidate_terms(maps: Mapping[str, Tensor]) -> list[str]:
    """The four fused maps, then ``channel(<stat>_raw, c)`` for every raw map and channel, as present in
    ``maps``: 4 + 4·C terms (C = layers × heads captured)."""
    fused = [name for name in STAT_NAMES if name in maps]
    raw = [
        f"channel({name}, {c})"
        for name in (f"{stat}_raw" for stat in STAT_NAMES)
        if name in maps
        for c in range(maps[name].shape[-1])
    ]
    return fused + raw


def product_formula(factors: Sequence[tuple[str, bool]]) -> str:
    """The formula of a product of ``(term, complement)`` factors, in order: ``minmax(term)``, or
    ``(1 - minmax(term))`` for a complement, multiplied, then ``frame_minmax``."""
    parts = [f"(1 - minmax({term}))" if complement else f"minmax({term})" for term, complement in factors]
    return f"frame_minmax({' * '.join(parts)})"


def split_sequences(
    sequences: Sequence[LabelledMaps],
) -> tuple[list[LabelledMaps], list[LabelledMaps]]:
    """``(selection, report)``: the sequences sorted by name, dealt alternately, the first to selection.

    So each half gets one of every two sequences whatever the order they were given in; with an odd count
    the selection half has one more. Refuses fewer than 2 sequences and repeated names.
    """
    if len(sequences) < 2:
        raise Easi3RError(
            f"calibration needs at least 2 labelled sequences (one to select a formula, one to report its "
            f"score on), got {len(sequences)}"
        )
    names = [sequence.name for sequence in sequences]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise Easi3RError(f"calibration sequences need distinct names; repeated: {', '.join(repeated)}")
    ordered = sorted(sequences, key=lambda sequence: sequence.name)
    return ordered[0::2], ordered[1::2]


def formula_auc(formula: str, sequences: Sequence[LabelledMaps]) -> float:
    """Exact pixel AUC of ``formula``: evaluated on each sequence's maps, upsampled to its masks' size,
    pooled over its frames; the mean over sequences."""
    parsed = parse(formula)
    aucs = [
        pixel_auc(upsample_map(parsed.evaluate(sequence.maps), sequence.size), sequence.masks)
        for sequence in sequences
    ]
    return sum(aucs) / len(aucs)


@dataclass
class _Prepared:
    """One selection sequence, ready for scoring many products: token-level factors, sampled pixels."""

    factors: Tensor  # (K, T, NH, NW) float32: minmax(term) per candidate term
    pixels: Tensor  # (n,) long: the sampled pixels, flat indices into (T, H, W)
    tokens: Tensor  # (S, n) long: flat token indices whose weighted sum is each sampled pixel's value
    weights: Tensor  # (S, n) float32: their bilinear weights
    labels: Tensor  # (n,) bool: ground truth at the sampled pixels


def _check_sequence(sequence: LabelledMaps) -> None:
    masks = sequence.masks
    if masks.ndim != 3 or masks.dtype != torch.bool:
        raise Easi3RError(
            f"sequence '{sequence.name}': masks must be (T, H, W) bool, got {tuple(masks.shape)} {masks.dtype}"
        )
    moving = int(masks.sum())
    if moving in (0, masks.numel()):
        what = "no moving pixel" if moving == 0 else "only moving pixels"
        raise Easi3RError(
            f"sequence '{sequence.name}': its masks have {what}, so no score can tell moving from static"
        )


def _factors(sequence: LabelledMaps, terms: Sequence[str]) -> Tensor:
    """``minmax(term)`` for every term, ``(K, T, NH, NW)`` float32, each checked to be a per-frame map."""
    values = []
    for term in terms:
        formula = parse(f"minmax({term})")
        value = formula.evaluate(sequence.maps)
        # (T, NH, NW): T from the masks, the token grid from the first term (a raw map fails the check)
        grid = tuple(values[0].shape) if values else (len(sequence.masks), *value.shape[1:3])
        formula.check_result(value, grid, on=f"on the maps of sequence '{sequence.name}'")
        values.append(value.float())
    return torch.stack(values)


def _axis_weights(tokens: int, pixels: int) -> tuple[Tensor, Tensor]:
    """For each pixel along one axis, its (at most 2) source tokens and bilinear weights ``(pixels, k)``,
    read off :func:`upsample_map` applied to one-hot token rows, so they are exactly its interpolation."""
    basis = torch.eye(tokens)[:, :, None]  # token k as a frame of a (tokens, 1) map
    weights = upsample_map(basis, (pixels, 1))[:, :, 0].T  # (pixels, tokens)
    top = weights.topk(min(2, tokens), dim=1)
    return top.indices, top.values


def _sample_pixels(masks: Tensor, max_pixels: int | None, seed: int) -> Tensor:
    """Flat pixel indices: all of them, or up to ``max_pixels // 2`` of each class, fixed-seed."""
    flat = masks.flatten()
    if max_pixels is None or flat.numel() <= max_pixels:
        return torch.arange(flat.numel())
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for members in (flat.nonzero().flatten(), (~flat).nonzero().flatten()):
        order = torch.randperm(len(members), generator=generator)[: max_pixels // 2]
        chosen.append(members[order])
    return torch.cat(chosen).sort().values


def _prepare(sequence: LabelledMaps, terms: Sequence[str], max_pixels: int | None, seed: int) -> _Prepared:
    factors = _factors(sequence, terms)
    _, _, grid_h, grid_w = factors.shape
    height, width = sequence.size
    pixels = _sample_pixels(sequence.masks, max_pixels, seed)
    t, y, x = pixels // (height * width), (pixels // width) % height, pixels % width
    rows, row_weights = _axis_weights(grid_h, height)
    cols, col_weights = _axis_weights(grid_w, width)
    tokens = [
        t * grid_h * grid_w + rows[y, a] * grid_w + cols[x, b]
        for a in range(rows.shape[1])
        for b in range(cols.shape[1])
    ]
    weights = [
        row_weights[y, a] * col_weights[x, b] for a in range(rows.shape[1]) for b in range(cols.shape[1])
    ]
    labels = sequence.masks.flatten()[pixels]
    return _Prepared(factors, pixels, torch.stack(tokens), torch.stack(weights), labels)


def _extension_aucs(prepared: _Prepared, running: Tensor | None) -> Tensor:
    """AUC at the sampled pixels of ``running * f`` for every factor ``f``: ``(K, 2)``, column 1 for the
    complement ``1 - f``. ``running`` is the token-level product so far, None for none."""
    n_terms, frames, grid_h, grid_w = prepared.factors.shape
    chunk = max(1, _CHUNK_VALUES // max(frames * grid_h * grid_w, prepared.labels.numel()))
    aucs = torch.empty((n_terms, 2), dtype=torch.float64)
    for start in range(0, n_terms, chunk):
        block = prepared.factors[start : start + chunk]
        for column, factor in enumerate((block, 1 - block)):
            product = factor if running is None else running * factor
            normalised = frame_minmax(product.reshape(-1, grid_h, grid_w)).reshape(len(block), -1)
            sampled = (normalised[:, prepared.tokens] * prepared.weights).sum(dim=1)
            aucs[start : start + chunk, column] = rows_auc(sampled, prepared.labels)
    return aucs


_Factors = tuple[tuple[int, bool], ...]  # a product's factors in order: (term index, complement)


@dataclass(frozen=True)
class _Entry:
    """A product on the beam: its factors and its running token-level product per selection sequence."""

    factors: _Factors
    running: tuple[Tensor, ...] | None


def _extend(entry: _Entry, prepared: Sequence[_Prepared]) -> list[tuple[float, _Factors]]:
    """Every product with one more factor (a term not in it yet, either way round) and its mean AUC."""
    mean = sum(
        _extension_aucs(p, None if entry.running is None else entry.running[i])
        for i, p in enumerate(prepared)
    ) / len(prepared)
    used = {term for term, _ in entry.factors}
    return [
        (float(mean[term, column]), (*entry.factors, (term, bool(column))))
        for term in range(mean.shape[0])
        if term not in used
        for column in (0, 1)
    ]


def _grow(factors: _Factors, prepared: Sequence[_Prepared]) -> _Entry:
    """The beam entry for these factors: their product multiplied left to right, as the formula does."""
    running = []
    for p in prepared:
        product = None
        for term, complement in factors:
            factor = 1 - p.factors[term] if complement else p.factors[term]
            product = factor if product is None else product * factor
        running.append(product)
    return _Entry(factors, tuple(running))


def _beam_search(
    prepared: Sequence[_Prepared], beam_width: int, depth: int, min_gain: float
) -> list[_Factors]:
    """The best product of each depth, in order, until ``depth`` factors or a gain below ``min_gain``."""
    beam = [_Entry((), None)]
    trail: list[_Factors] = []
    best = -math.inf
    for _ in range(depth):
        scored: dict[frozenset[tuple[int, bool]], tuple[float, _Factors]] = {}
        for entry in beam:
            for auc, factors in _extend(entry, prepared):
                # A product does not depend on its factors' order: keep each set once.
                scored.setdefault(frozenset(factors), (auc, factors))
        # Highest AUC first; equal AUCs in factor order, so the result never depends on dict order.
        ranked = sorted(scored.values(), key=lambda item: (-item[0], item[1]))[:beam_width]
        if not ranked or ranked[0][0] < best + min_gain:
            break
        best = ranked[0][0]
        trail.append(ranked[0][1])
        beam = [_grow(factors, prepared) for _, factors in ranked]
    return trail


def search_formula(
    sequences: Sequence[LabelledMaps],
    terms: Sequence[str] | None = None,
    *,
    beam_width: int = 4,
    depth: int = 4,
    min_gain: float = 1e-3,
    max_pixels: int | None = 20_000,
    seed: int = 0,
) -> SearchResult:
    """Search a product formula on the selection half of ``sequences``; score it on the report half.

    ``terms``: the candidate terms (formula text, each one value per frame token); by default
    :func:`candidate_terms` of the first selection sequence's maps. ``max_pixels``: pixels sampled per sequence for
    the search (None: all); ``seed`` fixes the sample. Raises a one-line :class:`Easi3RError` for fewer
    than 2 sequences, masks that are not ``(T, H, W)`` bool or hold one class only, or bad parameters, and a
    :class:`~easi3r.errors.FormulaError` for a term that is not a finite per-frame map of a sequence.
    """
    if beam_width < 1 or depth < 1:
        raise Easi3RError(f"beam width and depth must be at least 1, got {beam_width} and {depth}")
    selection, report = split_sequences(sequences)
    for sequence in sequences:
        _check_sequence(sequence)
    terms = list(candidate_terms(selection[0].maps) if terms is None else terms)
    if not terms:
        raise Easi3RError("no candidate terms to search a formula from")
    prepared = [_prepare(sequence, terms, max_pixels, seed) for sequence in selection]
    trail = [
        product_formula([(terms[term], complement) for term, complement in factors])
        for factors in _beam_search(prepared, beam_width, depth, min_gain)
    ]
    steps = tuple(SearchStep(formula, formula_auc(formula, selection)) for formula in trail)
    chosen = steps[-1]
    return SearchResult(
        formula=chosen.formula,
        selection_auc=chosen.selection_auc,
        report_auc=formula_auc(chosen.formula, report),
        trail=steps,
        selection=tuple(sequence.name for sequence in selection),
        report=tuple(sequence.name for sequence in report),
    )


def formula_recipe(formula: str, base_recipe_name: str, scores: Mapping[str, float]) -> str:
    """YAML text of a recipe that ``easi3r run`` accepts as is: ``extends: <base recipe>`` with
    ``rule: {name: formula, formula: ...}``; ``scores`` (e.g. held-out AUCs) in a comment at the top."""
    lines = ["# Mask formula searched by `easi3r calibrate`; its scores on the held-out (report) sequences:"]
    lines += [f"#   {' '.join(str(name).split())}: {value:.4f}" for name, value in scores.items()]
    # A JSON string is a valid YAML double-quoted scalar: the formula needs no YAML escaping rules here.
    lines += [
        f"extends: {json.dumps(base_recipe_name)}",
        "rule:",
        "  name: formula",
        f"  formula: {json.dumps(formula)}",
    ]
    return "\n".join(lines) + "\n"
