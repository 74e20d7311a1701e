"""Gram-similarity capture from a frame-set backbone's global attention (VGGT4D-style, docs/method-vggt4d.md).

For a target frame ``t`` and its source frames ``s = t + o`` (``o`` in ``offsets``, inside the window), one
global layer gives, per head ``h``, the similarities ``a_{t,h,i} · b_{s,h,j}`` between the target's token
``i`` and the source's token ``j``, where ``(a, b)`` is ``(q, q)``, ``(k, k)`` or ``(q, k)`` (rotated, after
QK-norm, no softmax scale). Averaged over heads and sources they form a row ``g_i(j)`` per target token:

* ``mean``: the average of ``g_i`` over the source tokens ``j``: a dot product of ``a_i`` with the mean
  source vector, O(N·d);
* ``std``: the unbiased standard deviation of ``g_i`` over ``j``: ``sqrt(u_iᵀ C u_i)`` with ``u_i`` the
  target vector of all heads and ``C`` the ``(heads·d)²`` covariance of the source vectors (each averaged
  over the sources), O(N·d²) per frame; no ``N × N`` matrix.

A named map is one ``(product, stat)`` averaged over its ``layers``; the recipe names the maps
(``capture.maps``) and the mask formula reads them. ``gram_full`` builds the Gram matrices themselves: an
oracle for tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from easi3r.errors import RecipeError

PRODUCTS = ("qq", "kk", "qk")
STATS = ("mean", "std")
VGGT4D_OFFSETS = (-6, -4, -2, 2, 4, 6)
_COVARIANCE_FLOATS = 2**24  # covariances held at once (64 MB in float32): 16 targets of VGGT-1B's 1024²


@dataclass(frozen=True)
class GramMap:
    """One named map: statistic ``stat`` of the ``product`` similarities, averaged over ``layers``."""

    name: str
    product: str
    stat: str
    layers: tuple[int, ...]


class GramCapture:
    """The frame-set capture strategy ``gram``: ``maps`` names the maps (``{name: {product, stat,
    layers}}``), ``offsets`` the source frames of each target frame."""

    kind = "frame_set"
    full = False  # the oracle subclass builds the Gram matrices

    def __init__(
        self, maps: Mapping[str, Mapping[str, object]], offsets: Sequence[int] = VGGT4D_OFFSETS
    ) -> None:
        self.specs = tuple(_spec(name, body) for name, body in maps.items())
        if not self.specs:
            raise RecipeError("recipe key 'capture.maps' is empty; name at least one map")
        self.offsets = tuple(int(o) for o in offsets)
        if not self.offsets or 0 in self.offsets:
            raise RecipeError(
                f"recipe key 'capture.offsets' must be non-zero frame offsets, got {list(offsets)}"
            )
        self.names = tuple(spec.name for spec in self.specs)
        self.layers = frozenset(layer for spec in self.specs for layer in spec.layers)

    def window(self, frames: int, grid: tuple[int, int]) -> WindowGram:
        return WindowGram(self, frames, grid)


class FullGramCapture(GramCapture):
    """The oracle ``gram_full``: builds every target-source Gram matrix (tests only, O(N²) per pair)."""

    full = True


def _spec(name: str, body: Mapping[str, object]) -> GramMap:
    where = f"capture.maps.{name}"
    product, stat, layers = body.get("product"), body.get("stat"), body.get("layers")
    if product not in PRODUCTS:
        raise RecipeError(
            f"recipe key '{where}.product' must be one of {', '.join(PRODUCTS)}, got {product!r}"
        )
    if stat not in STATS:
        raise RecipeError(f"recipe key '{where}.stat' must be one of {', '.join(STATS)}, got {stat!r}")
    if not isinstance(layers, Sequence) or not layers or any(not isinstance(x, int) or x < 0 for x in layers):
        raise RecipeError(f"recipe key '{where}.layers' must list global layers (integers >= 0)")
    return GramMap(name, str(product), str(stat), tuple(layers))


class WindowGram:
    """The capture of one window: sums each map over its layers as the layers come."""

    def __init__(self, strategy: GramCapture, frames: int, grid: tuple[int, int]) -> None:
        self.strategy = strategy
        self.frames = frames
        self.grid = grid
        self.sums: dict[str, Tensor] = {}
        self.seen: dict[str, set[int]] = {spec.name: set() for spec in strategy.specs}
        self.sources = _source_matrix(frames, strategy.offsets)  # (S, S) weights: mean over sources

    def __call__(self, layer: int, q: Tensor, k: Tensor) -> None:
        """``q, k (S, heads, N, d)``, this window's patch tokens of global layer ``layer``."""
        specs = [spec for spec in self.strategy.specs if layer in spec.layers]
        if not specs:
            return
        dtype = torch.promote_types(q.dtype, torch.float32)
        frames, heads, tokens, dim = q.shape
        # every head side by side: (S, N, heads·d), so a head-averaged similarity is one dot product
        flat = {
            name: x.to(dtype).transpose(1, 2).reshape(frames, tokens, heads * dim)
            for name, x in (("q", q), ("k", k))
        }
        weights = self.sources.to(device=q.device, dtype=dtype)
        pooled: dict[str, Tensor] = {}  # source vectors averaged over each target's sources and the heads
        for spec in specs:
            source = spec.product[1]
            if source not in pooled:
                mixed = weights @ flat[source].reshape(frames, -1)
                pooled[source] = mixed.reshape(frames, tokens, heads * dim) / heads
            if self.strategy.full:
                vectors = {"q": q.to(dtype), "k": k.to(dtype)}
                value = _full_stat(vectors[spec.product[0]], vectors[source], weights, spec.stat)
            else:
                value = _stat(flat[spec.product[0]], pooled[source], spec.stat)
            self.sums[spec.name] = self.sums.get(spec.name, 0) + value
            self.seen[spec.name].add(layer)

    def maps(self) -> dict[str, Tensor]:
        out = {}
        for spec in self.strategy.specs:
            missing = sorted(set(spec.layers) - self.seen[spec.name])
            if missing:
                raise RecipeError(
                    f"recipe key 'capture.maps.{spec.name}.layers' names global layer {missing[0]}, which "
                    "the backbone never ran"
                )
            mean = self.sums[spec.name] / len(spec.layers)
            out[spec.name] = mean.reshape(self.frames, *self.grid).cpu()
        return out


def _source_matrix(frames: int, offsets: Sequence[int]) -> Tensor:
    """``(S, S)``: row ``t`` averages the frames ``t + o`` inside the window (VGGT4D drops the others)."""
    weights = torch.zeros(frames, frames, dtype=torch.float64)
    for o in offsets:
        if abs(o) < frames:  # a farther offset reaches outside the window for every frame
            t = torch.arange(max(0, -o), min(frames, frames - o))
            weights[t, t + o] = 1.0
    counts = weights.sum(1, keepdim=True)
    if bool((counts == 0).any()):
        t = int((counts[:, 0] == 0).nonzero()[0])
        raise RecipeError(
            f"frame {t} of a window of {frames} frames has no source frame at offsets {list(offsets)} "
            "(recipe key 'capture.offsets'): give more frames per window"
        )
    return weights / counts


def _stat(targets: Tensor, pooled: Tensor, stat: str) -> Tensor:
    """``(S, N)``: ``stat`` over the source tokens of each target token's similarities to the pooled
    source vectors, by identities. ``targets, pooled (S, N, C)``."""
    frames, tokens, channels = targets.shape
    centre = pooled.mean(dim=1, keepdim=True)  # (S, 1, C)
    if stat == "mean":
        return (targets * centre).sum(-1)
    out = torch.empty(frames, tokens, dtype=targets.dtype, device=targets.device)
    step = max(1, _COVARIANCE_FLOATS // (channels * channels))  # targets whose C×C covariances fit at once
    for start in range(0, frames, step):
        part = slice(start, start + step)
        centred = pooled[part] - centre[part]
        covariance = centred.transpose(1, 2) @ centred / (tokens - 1)
        out[part] = ((targets[part] @ covariance) * targets[part]).sum(-1).clamp(min=0).sqrt()
    return out


def _full_stat(target: Tensor, source: Tensor, weights: Tensor, stat: str) -> Tensor:
    """Oracle of :func:`_stat` from the raw ``(S, heads, N, d)`` vectors: every target-source Gram
    matrix of every head, built, averaged over heads and sources, and reduced over the source tokens."""
    rows = []
    for t in range(target.shape[0]):
        sources = [s for s in range(source.shape[0]) if weights[t, s] != 0]
        grams = [weights[t, s] * (target[t] @ source[s].transpose(1, 2)).mean(0) for s in sources]
        gram = torch.stack(grams).sum(0)  # (N, N): target token × source token
        rows.append(gram.mean(-1) if stat == "mean" else gram.std(-1))
    return torch.stack(rows)
