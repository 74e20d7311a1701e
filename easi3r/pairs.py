"""Pair graphs: which ordered frame pairs the two-view network sees (method.md §1, reference-notes §5.2).

Graph names:

* ``complete``: every unordered pair;
* ``swin-N``, ``swinstride-N``, ``swin2stride-N``: pairs (i, i+o) for the N offsets
  ``range(1, s·N + 1, s)`` with s = 1, 2, 3 (so ``swinstride-5`` uses offsets 1, 3, 5, 7, 9);
* ``logwin-N``: offsets 1, 2, 4, ..., 2^(N-1);
* ``oneref-R``: (R, j) for every other frame j, view 1 always frame R;

the window graphs take an optional ``-noncyclic`` (the default here) or ``-cyclic`` suffix; cyclic wraps
``i + o`` modulo T (loop closure). The reference reads a name *without* suffix as cyclic; here it is
non-cyclic, and its default graph ``swinstride-5-noncyclic`` spells the suffix out, so it is unaffected.

Order (**quirk** replaced): the reference collects unordered pairs (min, max) in a Python ``set`` and uses its
iteration order; here they are sorted lexicographically. Symmetrisation then appends every pair reversed in
the same order, so ordered pair e and e + P/2 are mutual reverses, as in the reference.

Like the reference, ``oneref`` and ``swin-1`` are not symmetrised unless T = 2. (The reference tests the
prefix ``swin-1``, which also catches ``swin-10`` to ``swin-19``; that slip is not reproduced.) Unlike the
reference, a cyclic offset that wraps onto the frame itself makes no self pair.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from easi3r.errors import Easi3RError

_WINDOW_STRIDES = {"swin": 1, "swinstride": 2, "swin2stride": 3}

_GRAPH_RE = re.compile(
    r"^(?:(?P<complete>complete)"
    r"|(?P<window>swin|swinstride|swin2stride|logwin)-(?P<size>\d+)(?:-(?P<cyc>cyclic|noncyclic))?"
    r"|oneref-(?P<ref>\d+))$"
)

_VALID_FORMS = (
    "complete, swin-N, swinstride-N, swin2stride-N, logwin-N (each optionally -noncyclic or -cyclic), "
    "oneref-R"
)


def make_pairs(graph: str, n_frames: int, *, symmetrize: bool = True, cap_window: bool = False) -> Tensor:
    """(P, 2) int64 ordered pairs (view-1 frame, view-2 frame) of the named graph over ``n_frames`` frames.

    ``cap_window`` applies the reference evaluation script's limit N ≤ max(1, ceil((T-1)/2)) to the window
    size of ``swin*`` and ``logwin`` graphs, keeping their cyclic setting. The capped window is also what
    decides the ``swin-1`` exception, as in the reference, where the capped name is rebuilt before the
    pairs are made.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 2:
        raise Easi3RError(f"a pair graph needs at least 2 frames, got {n_frames!r}")
    match = _GRAPH_RE.match(graph) if isinstance(graph, str) else None
    if match is None:
        raise Easi3RError(f"unknown pair graph {graph!r}; valid forms: {_VALID_FORMS}")

    exempt_from_symmetry = False
    if match["complete"]:
        pairs = [(i, j) for i in range(n_frames) for j in range(i + 1, n_frames)]
    elif match["window"]:
        pairs, exempt_from_symmetry = _sliding_window_graph(graph, match, n_frames, cap_window)
    else:
        pairs, exempt_from_symmetry = _one_reference_graph(graph, int(match["ref"]), n_frames), True

    if symmetrize and (not exempt_from_symmetry or n_frames == 2):
        pairs = pairs + [(j, i) for i, j in pairs]
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def _sliding_window_graph(
    graph: str, match: re.Match[str], n_frames: int, cap_window: bool
) -> tuple[list[tuple[int, int]], bool]:
    """The pairs of a ``swin*`` or ``logwin`` graph, and whether symmetrisation skips them (``swin-1``)."""
    kind, window = match["window"], int(match["size"])
    if window < 1:
        raise Easi3RError(f"pair graph {graph!r}: window size must be >= 1")
    if cap_window:
        window = min(window, max(1, math.ceil((n_frames - 1) / 2)))
    if kind == "logwin":
        offsets = [2**k for k in range(window)]
    else:
        step = _WINDOW_STRIDES[kind]
        offsets = list(range(1, step * window + 1, step))
    pairs = _window_pairs(offsets, n_frames, cyclic=match["cyc"] == "cyclic")
    return pairs, kind == "swin" and window == 1


def _one_reference_graph(graph: str, ref: int, n_frames: int) -> list[tuple[int, int]]:
    """The pairs of a ``oneref-R`` graph."""
    if ref >= n_frames:
        raise Easi3RError(
            f"pair graph {graph!r}: reference frame {ref} is out of range for {n_frames} frames"
        )
    # Directed pairs with the reference as view 1, as in the reference code (not turned into (min, max)).
    return [(ref, j) for j in range(n_frames) if j != ref]


def _window_pairs(offsets: list[int], n_frames: int, *, cyclic: bool) -> list[tuple[int, int]]:
    """Sorted unordered pairs (min, max) linking each frame to the frames ``offsets`` ahead."""
    unordered = set()
    for i in range(n_frames):
        for offset in offsets:
            j = i + offset
            if cyclic:
                j %= n_frames
            elif j >= n_frames:
                continue
            if j != i:
                unordered.add((min(i, j), max(i, j)))
    return sorted(unordered)
